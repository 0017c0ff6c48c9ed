/*
 * vCPU dirty page rate limit: the TCG backend, counting each vCPU's writes
 *
 * Under KVM a limited vCPU's dirty pages are counted by harvesting its
 * dirty ring; TCG has no ring, so this file counts them in TCG's own
 * write path.  It owns the "armed" bitmap, one bit per target page of the
 * ram_addr space: while a limited vCPU maps an armed page for writing,
 * its TLB entry carries TLB_NOTDIRTY (accel/tcg/cputlb.c asks
 * dirtylimit_tcg_write_trapped()), so its first write to the page takes
 * the slow path, where dirtylimit_tcg_note_write() disarms the page,
 * counts it in CPUState::dirty_pages, and whenever the vCPU has dirtied
 * a slice of its quota charges it and, if it owes a penalty, makes it
 * leave the TB loop to pay it.
 * Once per epoch (the backend's harvest()) the controller thread
 * re-arms every page and the limited
 * vCPUs' TLBs are flagged again (dirtylimit_tcg_arm_tlb()), the way a
 * migration bitmap sync does, so the count is "pages newly dirtied per
 * epoch": the semantics of a dirty ring harvested every epoch.
 *
 * Only limited vCPUs ever trap, and the bitmap is separate from the
 * DIRTY_MEMORY_* bitmaps, so counting never clears a dirty bit that
 * migration or display still need.  The bitmap is global: a page that
 * two limited vCPUs write in one epoch is counted for the first.
 *
 * calc-dirty-rate's dirty-ring and dirty-bitmap modes measure with the
 * same counts (dirtylimit_tcg_measure_start()): for the measurement
 * every vCPU traps, not only the limited ones, and a thread of its own
 * starts the epochs (1 ms ones) while no dirty limit's controller does.  The
 * dirty-ring mode reads each vCPU's CPUState::dirty_pages, as it does
 * under KVM; the dirty-bitmap mode counts the pages written at least once
 * during the measurement in a window bitmap.  A limited vCPU is counted
 * and charged exactly as without the measurement: the epochs are the
 * controller's whenever it runs.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bitmap.h"
#include "qemu/rcu.h"
#include "qemu/thread.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "exec/exec-all.h"
#include "exec/ramlist.h"
#include "exec/ramblock.h"
#include "exec/target_page.h"
#include "hw/boards.h"
#include "hw/core/cpu.h"
#include "qapi/error.h"
#include "sysemu/tcg.h"
#include "sysemu/dirtylimit-tcg.h"
#include "dirtylimit-internal.h"
#include "trace.h"

typedef struct ArmedPages {
    struct rcu_head rcu;
    uint64_t npages;                /* pages of ram_addr space covered */
    unsigned long bits[];           /* set: trap the page's next write */
} ArmedPages;

/*
 * The measurement's epoch while no dirty limit runs.  A page rewritten
 * within an epoch counts once, so the epoch must be shorter than the
 * time a vCPU takes to come back to a page: a TCG vCPU rewrites 50 MiB
 * in about 2 ms.  While a dirty limit runs, its controller's 5 ms epochs
 * are used instead (shorter ones would charge its vCPUs more).
 */
#define DIRTYLIMIT_TCG_MEASURE_EPOCH_US 1000
/*
 * The dirty limit's counting epoch, and the share of the quota a vCPU
 * may dirty between charges.  The epoch is as short as the interval
 * between harvests of a 4096-entry ring, so a page rewritten within it
 * counts once, as the ring would record it.
 */
#define DIRTYLIMIT_TCG_EPOCH_US         5000
#define DIRTYLIMIT_TCG_SLICE_US         2000
/* ... and at most a large dirty ring's worth, however large the quota. */
#define DIRTYLIMIT_TCG_SLICE_MAX_PAGES  4096

static struct {
    ArmedPages *armed;              /* RCU; grows with the RAM, never shrinks */
    bool counting;                  /* read locklessly by vCPUs */
    bool limiting;                  /* the dirty limit counts (BQL) */
    bool measuring;                 /* every vCPU traps; read locklessly */
    unsigned epoch;                 /* bumped by every re-arm */
    int64_t epoch_ns;               /* when it was; read locklessly */
    unsigned *tlb_epoch;            /* per cpu_index: epoch it re-armed */
    uint64_t *slice_pages;          /* per cpu_index: pages between charges */
    ArmedPages *window;             /* RCU; set: written while measuring */
    uint64_t window_pages;          /* bits set in window */
    QemuThread measure_thread;      /* epochs while nothing else starts them */
    bool measure_quit;
} dirtylimit_tcg;

static uint64_t dirtylimit_tcg_page(ram_addr_t addr)
{
    return addr >> qemu_target_page_bits();
}

/* Pages needed to cover every RAMBlock, hot-plugged ones included. */
static uint64_t dirtylimit_tcg_ram_pages(void)
{
    ram_addr_t end = 0;
    RAMBlock *block;

    RCU_READ_LOCK_GUARD();
    RAMBLOCK_FOREACH(block) {
        end = MAX(end, block->offset + block->max_length);
    }
    return DIV_ROUND_UP(end, qemu_target_page_size());
}

/* Does @cpu's writes need counting: limited, or a measurement is on? */
static bool dirtylimit_tcg_counts(CPUState *cpu)
{
    return qatomic_read(&dirtylimit_tcg.measuring) ||
           dirtylimit_vcpu_limited(cpu);
}

uint8_t *dirtylimit_tcg_counted;

bool dirtylimit_tcg_page_armed(ram_addr_t addr)
{
    ArmedPages *armed = qatomic_rcu_read(&dirtylimit_tcg.armed);
    uint64_t page = dirtylimit_tcg_page(addr);

    return page < armed->npages && test_bit(page, armed->bits);
}

/*
 * Refresh dirtylimit_tcg_counted[] for @cpu; true if it is counted.  A
 * limit set or lifted between two epochs takes effect at the next one.
 * The controller's re-arm may store "counted" just after a cancel (under
 * the BQL) stored the opposite; so it looks at "counting" again after its
 * store, while the cancel clears "counting" before its own store.
 */
static bool dirtylimit_tcg_update_counted(CPUState *cpu)
{
    uint8_t *counted = &dirtylimit_tcg_counted[cpu->cpu_index];

    if (!qatomic_read(&dirtylimit_tcg.counting) ||
        !dirtylimit_tcg_counts(cpu)) {
        qatomic_set(counted, false);
        return false;
    }
    qatomic_set(counted, true);
    smp_mb();   /* the store before the second look at "counting" */
    if (!qatomic_read(&dirtylimit_tcg.counting)) {
        qatomic_set(counted, false);
        return false;
    }
    return true;
}

/*
 * Flag @cpu's writable TLB entries TLB_NOTDIRTY (one walk of the whole
 * TLB, whichever RAMBlock an entry maps), once per @epoch.  A vCPU that
 * takes trapped writes re-arms its own TLB at the first one of an epoch:
 * from another thread the walk would spin on the TLB lock, which a vCPU
 * busy filling its TLB holds nearly all the time (spinning that costs half
 * a core).  The controller thread re-arms only the quiet ones.
 */
static void dirtylimit_tcg_arm_tlb(CPUState *cpu, unsigned epoch)
{
    unsigned *seen = &dirtylimit_tcg.tlb_epoch[cpu->cpu_index];

    if (qatomic_xchg(seen, epoch) != epoch) {
        tlb_reset_dirty(cpu, 0, RAM_ADDR_MAX);
    }
}

/*
 * A page counted in an epoch of the measurement: record it in the
 * window, which is never re-armed, so the window counts each page once.
 */
static void dirtylimit_tcg_note_window(uint64_t page)
{
    ArmedPages *window = qatomic_rcu_read(&dirtylimit_tcg.window);
    unsigned long mask = BIT_MASK(page);

    if (window && page < window->npages &&
        !(qatomic_fetch_or(&window->bits[BIT_WORD(page)], mask) & mask)) {
        qatomic_inc(&dirtylimit_tcg.window_pages);
    }
}

/*
 * Start a new counting epoch: every page is armed again and counted
 * vCPUs' TLBs trap their next write to any RAM page.
 */
static void dirtylimit_tcg_rearm(void)
{
    ArmedPages *armed;
    CPUState *cpu;
    unsigned epoch;

    if (!qatomic_read(&dirtylimit_tcg.counting)) {
        return;
    }
    RCU_READ_LOCK_GUARD();
    qatomic_set(&dirtylimit_tcg.epoch_ns, get_clock());
    armed = qatomic_rcu_read(&dirtylimit_tcg.armed);
    /* Arm first: a TLB entry filled after its reset below then traps. */
    bitmap_set_atomic(armed->bits, 0, armed->npages);
    epoch = qatomic_fetch_inc(&dirtylimit_tcg.epoch);
    CPU_FOREACH(cpu) {
        /*
         * A vCPU that took no trapped write in the epoch that just ended
         * will not re-arm itself: its TLB is quiet and the walk cheap.
         * Its mark is left alone, so that if it starts trapping it still
         * re-arms itself (once more) at its first trapped write.
         */
        if (dirtylimit_tcg_update_counted(cpu) &&
            qatomic_read(&dirtylimit_tcg.tlb_epoch[cpu->cpu_index]) != epoch) {
            tlb_reset_dirty(cpu, 0, RAM_ADDR_MAX);
        }
    }
}

/*
 * The measurement's thread starts its epochs, but on a loaded host a
 * thread that sleeps 1 ms may wake tens of milliseconds later, and a vCPU
 * that has counted every page meanwhile would run on uncounted (at a
 * load average of 6 on two cores the rate reads 20 % to 80 % low).  A counted
 * vCPU therefore starts an overdue epoch itself; not while a dirty limit
 * runs, whose controller's epochs are the only ones.
 */
static void dirtylimit_tcg_measure_epoch(void)
{
    int64_t start = qatomic_read(&dirtylimit_tcg.epoch_ns);
    int64_t now = get_clock();

    if (!qatomic_read(&dirtylimit_tcg.limiting) &&
        now - start > 2 * DIRTYLIMIT_TCG_MEASURE_EPOCH_US * SCALE_US &&
        qatomic_cmpxchg(&dirtylimit_tcg.epoch_ns, start, now) == start) {
        dirtylimit_tcg_rearm();
    }
}

/*
 * Once limited @cpu has dirtied a slice of its quota since its last
 * charge, charge it in place; true if it then owes a penalty and should
 * leave the TB loop to pay it.  A vCPU below its quota never leaves.
 */
static bool dirtylimit_tcg_charge_slice(CPUState *cpu)
{
    if (!dirtylimit_vcpu_limited(cpu) ||
        dirtylimit_vcpu_uncharged(cpu) <
        qatomic_read(&dirtylimit_tcg.slice_pages[cpu->cpu_index])) {
        return false;
    }
    if (dirtylimit_vcpu_charge(cpu) <= 0) {
        return false;
    }
    dirtylimit_vcpu_owes(cpu);
    return true;
}

void dirtylimit_tcg_note_write(CPUState *cpu, ram_addr_t addr)
{
    ArmedPages *armed;
    uint64_t page = dirtylimit_tcg_page(addr);

    if (!dirtylimit_tcg_write_trapped(cpu, addr)) {
        return;
    }
    dirtylimit_tcg_arm_tlb(cpu, qatomic_read(&dirtylimit_tcg.epoch));
    armed = qatomic_rcu_read(&dirtylimit_tcg.armed);
    if (!bitmap_test_and_clear_atomic(armed->bits, page, 1)) {
        return;                     /* another vCPU counted it first */
    }
    /* Only this vCPU's thread writes its count. */
    qatomic_set(&cpu->dirty_pages, cpu->dirty_pages + 1);
    if (qatomic_read(&dirtylimit_tcg.measuring)) {
        dirtylimit_tcg_note_window(page);
        dirtylimit_tcg_measure_epoch();
    }
    if (dirtylimit_tcg_charge_slice(cpu)) {
        /* Leave the TB loop at the next TB; tcg_cpus_exec() serves it. */
        cpu_exit(cpu);
    }
}

/* Start counting, or start afresh (BQL held).  Arms every page. */
static void dirtylimit_tcg_count(void)
{
    uint64_t npages = dirtylimit_tcg_ram_pages();
    ArmedPages *old = dirtylimit_tcg.armed;

    if (!old || old->npages < npages) {
        ArmedPages *armed = g_malloc0(sizeof(*armed) +
                                      BITS_TO_LONGS(npages) * sizeof(long));

        armed->npages = npages;
        qatomic_rcu_set(&dirtylimit_tcg.armed, armed);
        if (old) {
            g_free_rcu(old, rcu);
        }
    }
    if (!dirtylimit_tcg.tlb_epoch) {
        MachineState *ms = MACHINE(qdev_get_machine());

        dirtylimit_tcg.tlb_epoch = g_new0(unsigned, ms->smp.max_cpus);
        qatomic_set(&dirtylimit_tcg_counted,
                    g_new0(uint8_t, ms->smp.max_cpus));
    }
    /* No vCPU's mark matches: the re-arm below arms every counted TLB. */
    qatomic_set(&dirtylimit_tcg.epoch, dirtylimit_tcg.epoch + 2);
    trace_dirtylimit_tcg_start(npages);
    qatomic_set(&dirtylimit_tcg.counting, true);
    dirtylimit_tcg_rearm();
}

/* Stop counting unless the limit or a measurement still counts (BQL). */
static void dirtylimit_tcg_uncount(void)
{
    /*
     * TLB entries still flagged TLB_NOTDIRTY take the slow path once
     * more and lose the flag there (dirtylimit_tcg_write_trapped() is
     * false from now on); the bitmap stays for vCPUs still looking at it.
     */
    if (!dirtylimit_tcg.limiting && !dirtylimit_tcg.measuring) {
        CPUState *cpu;

        qatomic_set(&dirtylimit_tcg.counting, false);
        smp_mb();   /* see dirtylimit_tcg_update_counted() */
        CPU_FOREACH(cpu) {
            dirtylimit_tcg_update_counted(cpu);
        }
        trace_dirtylimit_tcg_stop();
    }
}

static void dirtylimit_tcg_start(void)
{
    dirtylimit_tcg.limiting = true;
    dirtylimit_tcg_count();
}

static void dirtylimit_tcg_stop(void)
{
    dirtylimit_tcg.limiting = false;
    dirtylimit_tcg_uncount();
}

/*
 * Start the epochs of a measurement while no dirty limit's controller
 * thread does (it re-arms on its own schedule, which must stay its own).
 */
static void *dirtylimit_tcg_measure_thread(void *opaque)
{
    rcu_register_thread();
    while (!qatomic_read(&dirtylimit_tcg.measure_quit)) {
        g_usleep(DIRTYLIMIT_TCG_MEASURE_EPOCH_US);
        if (!qatomic_read(&dirtylimit_tcg.limiting)) {
            dirtylimit_tcg_rearm();
        }
    }
    rcu_unregister_thread();
    return NULL;
}

void dirtylimit_tcg_measure_start(void)
{
    uint64_t npages;
    ArmedPages *window;

    qemu_mutex_lock_iothread();
    assert(!dirtylimit_tcg.measuring);
    npages = dirtylimit_tcg_ram_pages();
    window = g_malloc0(sizeof(*window) + BITS_TO_LONGS(npages) * sizeof(long));
    window->npages = npages;
    qatomic_set(&dirtylimit_tcg.window_pages, 0);
    qatomic_rcu_set(&dirtylimit_tcg.window, window);
    qatomic_set(&dirtylimit_tcg.measuring, true);
    dirtylimit_tcg_count();
    qatomic_set(&dirtylimit_tcg.measure_quit, false);
    qemu_thread_create(&dirtylimit_tcg.measure_thread, "dirtyrate-tcg",
                       dirtylimit_tcg_measure_thread, NULL,
                       QEMU_THREAD_JOINABLE);
    qemu_mutex_unlock_iothread();
}

uint64_t dirtylimit_tcg_measure_stop(void)
{
    ArmedPages *window;

    /*
     * Join without the BQL: the thread's rcu_unregister_thread() waits
     * for a grace period in progress, and a TCG vCPU inside cpu_exec()'s
     * RCU critical section may be waiting for the BQL: joining under it
     * would deadlock.
     */
    qatomic_set(&dirtylimit_tcg.measure_quit, true);
    qemu_thread_join(&dirtylimit_tcg.measure_thread);
    qemu_mutex_lock_iothread();
    assert(dirtylimit_tcg.measuring);
    qatomic_set(&dirtylimit_tcg.measuring, false);
    window = dirtylimit_tcg.window;
    qatomic_rcu_set(&dirtylimit_tcg.window, NULL);
    g_free_rcu(window, rcu);
    dirtylimit_tcg_uncount();
    qemu_mutex_unlock_iothread();
    return qatomic_read(&dirtylimit_tcg.window_pages);
}

/*
 * Round-robin TCG runs every vCPU in one thread: one vCPU's penalty would
 * stop them all.
 */
static bool dirtylimit_tcg_usable(Error **errp)
{
    if (!tcg_enabled()) {
        return false;
    }
    if (!qemu_tcg_mttcg_enabled()) {
        error_setg(errp, "dirty page limit under TCG requires multi-threaded"
                   " TCG (-accel tcg,thread=multi)");
        return false;
    }
    return true;
}

static void dirtylimit_tcg_init(int max_cpus)
{
    dirtylimit_tcg.slice_pages = g_new0(uint64_t, max_cpus);
}

/* TCG counts as the vCPU writes; the interval is its counting epoch. */
static int64_t dirtylimit_tcg_harvest_interval_us(void)
{
    return DIRTYLIMIT_TCG_EPOCH_US;
}

static void dirtylimit_tcg_set_quota(int cpu_index, uint64_t quota)
{
    qatomic_set(&dirtylimit_tcg.slice_pages[cpu_index],
                MIN(DIRTYLIMIT_TCG_SLICE_MAX_PAGES,
                    MAX(1, quota / qemu_target_page_size() *
                           DIRTYLIMIT_TCG_SLICE_US / G_USEC_PER_SEC)));
}

static const DirtyLimitBackend dirtylimit_tcg_backend = {
    .name = "tcg",
    .usable = dirtylimit_tcg_usable,
    .init = dirtylimit_tcg_init,
    .start = dirtylimit_tcg_start,
    .stop = dirtylimit_tcg_stop,
    .harvest_interval_us = dirtylimit_tcg_harvest_interval_us,
    .harvest = dirtylimit_tcg_rearm,
    .set_quota = dirtylimit_tcg_set_quota,
};

static void __attribute__((constructor)) dirtylimit_tcg_register(void)
{
    dirtylimit_backend_register(&dirtylimit_tcg_backend);
}
