/*
 * ppc64-hot: the pseries twin of x86-hot.S, for
 * tests/functional/test_tcg_dirty.py.
 *
 * A 32-bit big-endian ELF that QEMU loads with -kernel at kernel-addr
 * (0x400000) and the Virtual Open Firmware (-machine pseries,x-vof=on)
 * enters in real mode; it never calls the firmware back.  It loops
 * forever: pass p (from 1) stores the 32-bit value p at the start of
 * every 4 KiB page of the hot set [HOT_START, HOT_START + HOT_PAGES
 * pages), in ascending order, and then at offset COUNTER of its own
 * code's page.
 *
 * The hot pages' TCG TLB entries stay resident and writable for as long
 * as the guest runs: HOT_PAGES is far below the 256 entries of the TLB
 * (64 at the least after a resize), and the hot pages' TLB indices,
 * 8..39 modulo 64 (the TLB is direct-mapped, its size a power of two),
 * are not that of the code's page (0 modulo 64).  That is the case
 * where a dirty-bitmap sync that takes a page's migration bit without
 * re-arming TCG's dirty tracking loses every later write to the page.
 *
 * The counter's page holds translated code, and TCG records every store
 * to such a page (its entry keeps TLB_NOTDIRTY while the code is there),
 * bug or no bug: it keeps a migration from converging until the test
 * raises the downtime limit, so the hot pages' lost writes pile up.
 * The code is position independent; it finds its page from the link
 * register.
 *
 * Build (tests/guests/build): powerpc64-linux-gnu-as -a32 -mbig,
 * powerpc64-linux-gnu-ld -m elf32ppc -Ttext=0.
 */
        .set    HOT_START, 0x1008000
        .set    HOT_PAGES, 32
        .set    HOT_END, HOT_START + HOT_PAGES * 0x1000
        .set    COUNTER, 0x800

        .text
        .globl  _start
_start:
        bl      1f
1:      mflr    10
        rlwinm  10, 10, 0, 0, 19        /* r10: the code's page */
        li      5, 0                    /* r5: the pass */
        lis     8, HOT_END@h
        ori     8, 8, HOT_END@l
next_pass:
        addi    5, 5, 1
        lis     9, HOT_START@h
        ori     9, 9, HOT_START@l
store:
        stw     5, 0(9)
        addi    9, 9, 0x1000
        cmplw   9, 8
        blt     store
        stw     5, COUNTER(10)
        b       next_pass
