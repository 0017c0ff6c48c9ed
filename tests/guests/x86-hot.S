/*
 * x86-hot: a boot-sector guest that rewrites a small working set of
 * pages as fast as TCG can store, for tests/functional/test_tcg_dirty.py.
 *
 * Loaded by the BIOS at 0x7c00 from a 512-byte raw disk.  It switches to
 * 32-bit flat protected mode (no paging, interrupts off), prints 'F' on
 * COM1 and then loops forever: pass p (from 1) stores the 32-bit value
 * p at the start of every 4 KiB page of the hot set [HOT_START,
 * HOT_START + HOT_PAGES pages), in ascending order, and then at
 * PASS_COUNTER, in the code's own page.
 *
 * The hot pages' TCG TLB entries stay resident and writable for as long
 * as the guest runs: HOT_PAGES is far below the 256 entries of an x86
 * TCG TLB (64 at the least after a resize), and the hot pages' TLB
 * indices, 8..39 modulo 64 (the TLB is direct-mapped, its size a power
 * of two), are not that of page 7 (the code, the GDT, the counter).
 * That is the case where a dirty-bitmap sync that takes a page's
 * migration bit without re-arming TCG's dirty tracking loses every
 * later write to the page.
 *
 * Page 7 holds translated code, and TCG records every store to such a
 * page (its entry keeps TLB_NOTDIRTY while the code is there), bug or no
 * bug: the counter keeps a migration from converging until the test
 * raises the downtime limit, so the hot pages' lost writes pile up.
 *
 * Build (tests/guests/build): as --32, ld -Ttext=0x7c00 --oformat=binary.
 */
        .set    COM1, 0x3f8
        .set    HOT_START, 0x108000
        .set    HOT_PAGES, 32
        .set    HOT_END, HOT_START + HOT_PAGES * 0x1000
        .set    PASS_COUNTER, 0x7e00

        .code16
        .globl  _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        lgdtl   gdt_desc
        in      $0x92, %al              /* fast A20 gate */
        or      $2, %al
        out     %al, $0x92
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmpl   $0x08, $protected

        .code32
protected:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $COM1, %dx
        mov     $'F', %al
        out     %al, (%dx)
        xor     %eax, %eax
next_pass:
        inc     %eax
        mov     $HOT_START, %edi
store:
        mov     %eax, (%edi)
        add     $0x1000, %edi
        cmp     $HOT_END, %edi
        jb      store
        mov     %eax, PASS_COUNTER
        jmp     next_pass

        .p2align 3
gdt:
        .quad   0                       /* null */
        .quad   0x00cf9a000000ffff      /* 0x08: flat 32-bit code */
        .quad   0x00cf92000000ffff      /* 0x10: flat 32-bit data */
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt

        .org    510
        .byte   0x55, 0xaa
