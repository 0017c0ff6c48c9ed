/*
 * x86-dirty: a boot-sector guest that dirties memory at a known pattern.
 *
 * Loaded by the BIOS at 0x7c00 from a 512-byte raw disk.  It switches to
 * 32-bit flat protected mode and then loops forever: each pass increments
 * the first byte of every 4 KiB page in [DIRTY_START, DIRTY_END) in
 * ascending order and then the 32-bit pass counter at PASS_COUNTER.
 * It prints 'F' on COM1 once when it starts dirtying and 'P' every 16
 * passes.
 *
 * At any instant the page bytes are therefore "v+1 for a prefix of the
 * pages, v for the rest" (mod 256): a test that stops the guest anywhere,
 * on the source or after migration on the destination, can check that no
 * page write was lost or misplaced.  The counter at PASS_COUNTER tells the
 * progress of the guest from its own point of view.
 *
 * Build (tests/guests/build): as --32 --defsym DIRTY_END_MB=N, then
 * ld -Ttext=0x7c00 --oformat=binary.
 */
        .set    COM1, 0x3f8
        .set    PASS_COUNTER, 0x7e00
        .set    DIRTY_START, 0x100000
        .ifndef DIRTY_END_MB
        .set    DIRTY_END_MB, 100
        .endif
        .set    DIRTY_END, DIRTY_END_MB * 0x100000

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
        mov     $0x7c00, %esp
        movl    $0, PASS_COUNTER
        mov     $COM1, %dx
        mov     $'F', %al
        out     %al, (%dx)
next_pass:
        mov     $DIRTY_START, %edi
dirty_page:
        incb    (%edi)
        add     $0x1000, %edi
        cmp     $DIRTY_END, %edi
        jb      dirty_page
        incl    PASS_COUNTER
        testl   $15, PASS_COUNTER
        jnz     next_pass
        mov     $'P', %al
        out     %al, (%dx)
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
