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
 * With --defsym SMP=1 the guest also starts the second vCPU (INIT-SIPI
 * through the local APIC, entering at a copy of ap_trampoline at 0x8000)
 * and the range is split: vCPU 0 dirties [DIRTY_START, middle) and counts
 * at PASS_COUNTER printing 'P', vCPU 1 dirties [middle, DIRTY_END) and
 * counts at PASS_COUNTER + 4 printing 'Q'.  Each half has the pattern
 * above, so each vCPU's progress can be measured on its own.
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
        .ifndef SMP
        .set    SMP, 0
        .endif
        .set    DIRTY_MID, (DIRTY_END_MB / 2) * 0x100000
        .set    AP_ENTRY, 0x8000
        .set    LAPIC_ICR_LOW, 0xfee00300

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
        mov     $0x7c00, %esp
        call    flat_segments
        movl    $0, PASS_COUNTER
        mov     $DIRTY_START, %ecx
        mov     $DIRTY_END, %ebp
        .if SMP
        movl    $0, PASS_COUNTER + 4
        mov     $ap_trampoline, %esi    /* position-independent: copy it */
        mov     $AP_ENTRY, %edi
        mov     $(ap_trampoline_end - ap_trampoline), %ecx
        rep movsb
        movl    $0x000c4500, LAPIC_ICR_LOW      /* INIT, all but self */
        call    settle
        movl    $0x000c4600 + AP_ENTRY / 0x1000, LAPIC_ICR_LOW  /* SIPI */
        mov     $DIRTY_START, %ecx
        mov     $DIRTY_MID, %ebp
        .endif
        mov     $PASS_COUNTER, %esi
        mov     $'P', %bl
        jmp     dirty_forever

        .if SMP
ap_protected:
        mov     $0x6c00, %esp           /* before the first push */
        call    flat_segments
        mov     $DIRTY_MID, %ecx
        mov     $DIRTY_END, %ebp
        mov     $PASS_COUNTER + 4, %esi
        mov     $'Q', %bl
        jmp     dirty_forever

settle:
        mov     $0x100000, %ecx
1:      loop    1b
        ret
        .endif

flat_segments:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        ret

/* Dirty [%ecx, %ebp) forever, counting passes at (%esi), printing %bl. */
dirty_forever:
        mov     $COM1, %dx
        mov     $'F', %al
        out     %al, (%dx)
next_pass:
        mov     %ecx, %edi
dirty_page:
        incb    (%edi)
        add     $0x1000, %edi
        cmp     %ebp, %edi
        jb      dirty_page
        incl    (%esi)
        testl   $15, (%esi)
        jnz     next_pass
        mov     %bl, %al
        out     %al, (%dx)
        jmp     next_pass

        .if SMP
        .code16
/* Runs at AP_ENTRY in real mode; only absolute addresses inside. */
ap_trampoline:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        lgdtl   gdt_desc
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmpl   $0x08, $ap_protected
ap_trampoline_end:
        .code32
        .endif

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
