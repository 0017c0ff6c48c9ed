/*
 * vCPU dirty page rate limit ("dirty limit")
 *
 * Caps how fast each vCPU may dirty guest memory so that a busy guest
 * becomes migratable without slowing vCPUs that dirty little.  This file
 * owns the per-vCPU limits, the controller thread and the QMP/HMP
 * commands; the penalty itself is computed by the pure controller in
 * softmmu/dirtylimit-controller.c.
 *
 * How it works with the KVM dirty ring:
 *  - Every few milliseconds the controller thread harvests each limited
 *    vCPU's dirty ring while the vCPU runs (accel/kvm/kvm-all.c counts
 *    the pages in CPUState::dirty_pages), so rings are harvested long
 *    before they fill; a ring that overflows anyway is recovered by
 *    kvm-all.c.  The harvested pages are charged to the vCPU's leaky
 *    bucket: the vCPU's dirty rate cannot exceed its quota over any
 *    interval, however small the quota.
 *  - Only when the bucket prescribes a penalty does the thread signal the
 *    vCPU, which serves it where KVM_RUN returned, without the BQL
 *    (dirtylimit_vcpu_serve_signal()); a vCPU below its quota is never
 *    stopped at all.  Pages a vCPU harvests itself at a ring-full exit
 *    are charged by dirtylimit_vcpu_execute() before it re-enters.
 *  - At a small quota a harvest interval of free running is seconds of
 *    allowance, which the vCPU would dirty at once and then sleep off.
 *    A vCPU that is about to run after a penalty arms a timer for its
 *    run budget (dirtylimit_controller_run_budget(), 50 ms of allowance):
 *    unless a harvest charged it first, the timer's SIG_IPI interrupts
 *    KVM_RUN, and the vCPU harvests and charges itself and serves what
 *    it owes.
 *  - Once a period the thread feeds the measured rate back to each
 *    controller, which trims the bucket so the measured rate sits at the
 *    quota, and reports it as current-rate.
 *
 * KVM without a dirty ring: the controller thread harvests the VM's dirty
 * log instead (kvm_dirty_log_harvest()), which says which pages were
 * dirtied but not by whom.  Each harvest's pages are shared among the
 * vCPUs in proportion to the CPU time their threads used since the last
 * one: a halted or penalised vCPU uses none and is charged none, and
 * vCPUs that dirty alike are each charged what they dirtied.  Penalties
 * are signalled and served as with the ring.
 *
 * Under TCG, softmmu/dirtylimit-tcg.c counts each limited vCPU's first
 * write to a page per epoch in TCG's write path; whenever the vCPU has
 * dirtied a slice of its quota it is charged there, and leaves the TB
 * loop only to pay a penalty it owes: the same leaky bucket, paid in time
 * slices rather than at ring-full exits.  The controller thread starts a
 * new epoch where it would harvest.
 *
 * Locking: the QMP/HMP commands and the migration hooks run under the
 * BQL; a vCPU's controller is guarded by its own mutex, so vCPU threads
 * and the controller thread never take the BQL here.
 *
 * Copyright (c) 2026 The Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qmp/qerror.h"
#include "qapi/qapi-commands-migration.h"
#include "qapi/qmp/qdict.h"
#include "qemu/main-loop.h"
#include "qemu/rcu.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "exec/memory.h"
#include "exec/target_page.h"
#include "hw/boards.h"
#include "hw/core/cpu.h"
#include "monitor/hmp.h"
#include "monitor/monitor.h"
#include "sysemu/kvm.h"
#include "sysemu/tcg.h"
#include "sysemu/dirtylimit.h"
#include "sysemu/dirtylimit-controller.h"
#include "sysemu/dirtylimit-tcg.h"
#include "sysemu/kvm-dirty-ring.h"
#include "trace.h"

/* Feedback period of limits set by the user (migration sets its own). */
#define DIRTYLIMIT_DEFAULT_PERIOD_MS    1000
/* Largest quota accepted, in MB/s: far above any memory bandwidth. */
#define DIRTYLIMIT_MAX_RATE_MB          (1 << 20)
/*
 * Longest nap between checks for a stop request while penalised.  A KVM
 * vCPU's nap ends at once when it is kicked (SIG_IPI interrupts it); a
 * TCG vCPU is kicked without a signal and notices within a nap.  Naps of
 * 1 ms woke the thread a thousand times a second and cost the other vCPU
 * of the two-vCPU guest about 10 % under TCG.
 */
#define DIRTYLIMIT_NAP_NS               (10 * SCALE_MS)
/*
 * current-rate is measured over the last few feedback periods: a vCPU
 * held to a few MB/s dirties a ring's worth in bursts a second or more
 * apart, so a single period can hold none or two of them.
 */
#define DIRTYLIMIT_RATE_WINDOW          4
/*
 * TCG: a counting epoch, and the share of the quota a vCPU may dirty
 * between charges.  The epoch is as short as the interval between
 * harvests of a 4096-entry ring, so a page rewritten within it counts
 * once, as the ring would record it.
 */
#define DIRTYLIMIT_TCG_EPOCH_US         5000
#define DIRTYLIMIT_TCG_SLICE_US         2000
/* ... and at most a large dirty ring's worth, however large the quota. */
#define DIRTYLIMIT_TCG_SLICE_MAX_PAGES  4096
/*
 * KVM dirty log: a vCPU runs unchecked from one harvest to the next, and
 * each penalty it is signalled to serve costs an exit that the sharing
 * counts as its use.  Small quotas need small batches, large ones few
 * signals: harvest every DIRTYLIMIT_LOG_US_PER_MB us per MB/s of the
 * smallest quota, within these bounds.
 */
#define DIRTYLIMIT_LOG_HARVEST_MIN_US   500
#define DIRTYLIMIT_LOG_HARVEST_MAX_US   2000
#define DIRTYLIMIT_LOG_US_PER_MB        20

typedef struct DirtyLimitVcpu {
    QemuMutex lock;                 /* guards ctl and the page counts */
    DirtyLimitController ctl;
    bool limited;                   /* read locklessly by the vCPU */
    bool by_migration;              /* set by dirtylimit_migration_engage */
    bool counting_only;             /* dirtylimit_migration_count: no quota */
    bool sleeping;                  /* serving a penalty: dirties nothing */
    bool penalty_signalled;         /* asked to leave and serve a penalty */
    uint64_t quota_mb;
    uint64_t slice_pages;           /* TCG: pages dirtied between charges */
    uint64_t charged_pages;         /* CPUState::dirty_pages charged so far */
    uint64_t period_pages;          /* CPUState::dirty_pages at period start */
    /* (time, dirty_pages) at the last period ends, for current-rate */
    int64_t window_ns[DIRTYLIMIT_RATE_WINDOW];
    uint64_t window_pages[DIRTYLIMIT_RATE_WINDOW];
    unsigned window_next;
    uint64_t current_rate;          /* bytes/s over the window */
    /*
     * KVM dirty log: CPU time the vCPU thread spent serving penalties,
     * its CPU time net of that at the last harvest, its use since then,
     * and the fraction of a page (of that use) not yet charged.
     */
    int64_t penalty_cpu_ns;
    int64_t thread_ns;
    int64_t thread_used_ns;
    int64_t share_remainder;
    /*
     * KVM: the run budget's timer, which sends SIG_IPI to the vCPU thread
     * budget_tid (0: none made yet), and when it is due if it is armed.
     * Only the vCPU thread arms it; budget_armed is read by it alone.
     */
#ifdef CONFIG_LINUX
    timer_t budget_timer;
#endif
    int budget_tid;
    bool budget_armed;
    int64_t budget_end_ns;
    bool budget_probe;              /* arm at the next entry into KVM_RUN */
    unsigned budget_backoff;        /* budgets in a row that found nothing */
    int64_t stopped_ns;             /* harvesting itself: it stopped then */
} DirtyLimitVcpu;

static struct {
    DirtyLimitVcpu *vcpus;          /* max_cpus entries, allocated once */
    int max_cpus;
    int nlimited;                   /* under the BQL */
    bool in_service;                /* read locklessly */
    int64_t period_ns;              /* read locklessly */
    QemuThread thread;
    bool thread_running;            /* under the BQL */
    bool thread_quit;
    bool log_harvested;             /* KVM dirty log: past the first */
    /*
     * KVM dirty log: serialises harvests and the sharing state, as a vCPU
     * whose run budget ran out harvests the log itself.
     */
    QemuMutex log_lock;
} dirtylimit;

#if defined(CONFIG_LINUX) && !defined(HAVE_SIGEV_NOTIFY_THREAD_ID)
#define sigev_notify_thread_id _sigev_un._tid
#endif

static int64_t dirtylimit_harvest_interval_us(void);
static bool dirtylimit_vcpu_harvest_self(CPUState *cpu, DirtyLimitVcpu *v);

bool dirtylimit_in_service(void)
{
    return qatomic_read(&dirtylimit.in_service);
}

static DirtyLimitVcpu *dirtylimit_vcpu(CPUState *cpu)
{
    if (!dirtylimit_in_service() || cpu->cpu_index >= dirtylimit.max_cpus) {
        return NULL;
    }
    return &dirtylimit.vcpus[cpu->cpu_index];
}

bool dirtylimit_supported(void)
{
    /*
     * Round-robin TCG runs every vCPU in one thread: one vCPU's penalty
     * would stop them all.
     */
    return (tcg_enabled() && qemu_tcg_mttcg_enabled()) || kvm_enabled();
}

bool dirtylimit_vcpu_limited(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

    return v && qatomic_read(&v->limited);
}

/* True when something other than the dirty limit wants the vCPU. */
static bool dirtylimit_vcpu_wanted(CPUState *cpu)
{
    return qatomic_read(&cpu->stop) || qatomic_read(&cpu->exit_request) ||
           qatomic_read(&cpu->thread_kicked) ||
           !QSIMPLEQ_EMPTY_ATOMIC(&cpu->work_list);
}

/* @clock's time in nanoseconds, 0 if it cannot be read. */
static int64_t dirtylimit_clock_ns(clockid_t clock)
{
    struct timespec ts;

    if (clock_gettime(clock, &ts)) {
        return 0;
    }
    return ts.tv_sec * NANOSECONDS_PER_SECOND + ts.tv_nsec;
}

/*
 * Sleep @ns, in naps, unless the vCPU is wanted or lost its limit.
 * Returns true if the whole penalty was served.  The CPU time the naps
 * cost is published as it is spent: the dirty log's sharing must not
 * mistake it for guest execution.
 */
static bool dirtylimit_vcpu_nap(CPUState *cpu, DirtyLimitVcpu *v, int64_t ns)
{
    int64_t end = get_clock() + ns;
    int64_t cpu_ns = dirtylimit_clock_ns(CLOCK_THREAD_CPUTIME_ID);

    for (;;) {
        int64_t left = end - get_clock();
        int64_t now_cpu_ns = dirtylimit_clock_ns(CLOCK_THREAD_CPUTIME_ID);

        qatomic_add(&v->penalty_cpu_ns, now_cpu_ns - cpu_ns);
        cpu_ns = now_cpu_ns;
        if (left <= 0) {
            return true;
        }
        if (dirtylimit_vcpu_wanted(cpu) || !qatomic_read(&v->limited)) {
            return false;
        }
        /* Not g_usleep(): it would sleep on through a kick's signal. */
        nanosleep(&(struct timespec) {
                      .tv_nsec = MIN(left, DIRTYLIMIT_NAP_NS) }, NULL);
    }
}

/*
 * Charge what @cpu dirtied since its last charge; returns the penalty.
 * A vCPU that harvests itself is charged as of when it stopped dirtying:
 * the controller learns its speed from the time it ran, and waiting for
 * the dirty log's lock is no part of that.
 */
static int64_t dirtylimit_vcpu_charge(CPUState *cpu, DirtyLimitVcpu *v)
{
    int64_t now = cpu == current_cpu && v->stopped_ns ? v->stopped_ns
                                                      : get_clock();
    uint64_t pages, bytes;
    int64_t sleep_ns;

    qemu_mutex_lock(&v->lock);
    pages = qatomic_read(&cpu->dirty_pages);
    bytes = (pages - v->charged_pages) * qemu_target_page_size();
    qatomic_set(&v->charged_pages, pages);
    sleep_ns = dirtylimit_controller_charge(&v->ctl, bytes, now);
    qemu_mutex_unlock(&v->lock);
    return sleep_ns;
}

bool dirtylimit_vcpu_charge_slice(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

    if (!v || !qatomic_read(&v->limited) ||
        qatomic_read(&cpu->dirty_pages) - qatomic_read(&v->charged_pages) <
        qatomic_read(&v->slice_pages)) {
        return false;
    }
    /* Charged in place: the vCPU leaves the TB loop only if it owes. */
    if (dirtylimit_vcpu_charge(cpu, v) <= 0) {
        return false;
    }
    qatomic_set(&v->penalty_signalled, true);
    return true;
}

/*
 * KVM: the vCPU is about to run: have it interrupted (SIG_IPI, as the
 * controller's penalties) when its run budget runs out, so that it
 * dirties a small part of its allowance at a time instead of a harvest
 * interval at full speed.  At large quotas the budget is longer than the
 * harvest interval and the timer only catches late harvests (the dirty
 * log's take milliseconds, and a sleeping thread on this host can wake
 * milliseconds late), at the cost of one timer per penalty.  The timer is
 * aimed at the calling thread and armed there, on the CPU that runs the
 * vCPU, so it fires on time even when the host's other CPUs are idle and
 * slow to wake.  It is armed when the vCPU gets a limit, after a penalty,
 * and after a budget that prescribed none.  A budget in which the vCPU
 * dirtied nothing means it is idle, or that it did not get to run (on a
 * busy host the timer can fire before the thread is back in KVM_RUN): the
 * next is twice as long, and none is armed once that is as long as the
 * harvest interval, so an idle vCPU is left alone after a few.
 */
static void dirtylimit_vcpu_arm_budget(DirtyLimitVcpu *v)
{
#ifdef CONFIG_LINUX
    struct itimerspec its = { };
    int tid = qemu_get_thread_id();
    int64_t budget;

    /* A timer past its time has fired, whether or not it was served. */
    if (!kvm_enabled() || !qatomic_read(&v->limited) ||
        (v->budget_armed && get_clock() < v->budget_end_ns)) {
        return;
    }
    qemu_mutex_lock(&v->lock);
    budget = dirtylimit_controller_run_budget(&v->ctl);
    qemu_mutex_unlock(&v->lock);
    if (v->budget_backoff) {
        budget <<= MIN(v->budget_backoff, 20);
        if (budget >= dirtylimit_harvest_interval_us() * SCALE_US) {
            return;
        }
    }
    if (budget <= 0) {
        return;
    }
    if (v->budget_tid != tid) {
        struct sigevent sev = {
            .sigev_notify = SIGEV_THREAD_ID,
            .sigev_signo = SIG_IPI,
        };

        if (v->budget_tid) {
            timer_delete(v->budget_timer);      /* another vCPU thread's */
            v->budget_tid = 0;
        }
        sev.sigev_notify_thread_id = tid;
        if (timer_create(CLOCK_MONOTONIC, &sev, &v->budget_timer)) {
            return;
        }
        v->budget_tid = tid;
    }
    its.it_value.tv_sec = budget / NANOSECONDS_PER_SECOND;
    its.it_value.tv_nsec = budget % NANOSECONDS_PER_SECOND;
    v->budget_end_ns = get_clock() + budget;
    v->budget_armed = !timer_settime(v->budget_timer, 0, &its, NULL);
#endif
}

/* A timer firing while the vCPU sleeps would interrupt its next run. */
static void dirtylimit_vcpu_disarm_budget(DirtyLimitVcpu *v)
{
#ifdef CONFIG_LINUX
    static const struct itimerspec off;

    if (v->budget_armed) {
        v->budget_armed = false;
        timer_settime(v->budget_timer, 0, &off, NULL);
    }
#endif
}

/*
 * Sleep whatever penalty the vCPU owes, in the vCPU thread, which then
 * runs the guest.  Returns true if it owed any.
 */
static bool dirtylimit_vcpu_serve(CPUState *cpu, DirtyLimitVcpu *v)
{
    int64_t sleep_ns;

    qemu_mutex_lock(&v->lock);
    sleep_ns = dirtylimit_controller_wakeup(&v->ctl, get_clock());
    qemu_mutex_unlock(&v->lock);
    if (sleep_ns > 0) {
        dirtylimit_vcpu_disarm_budget(v);
        trace_dirtylimit_vcpu_execute(cpu->cpu_index, sleep_ns / SCALE_US);
        qatomic_set(&v->sleeping, true);
        while (sleep_ns > 0 && dirtylimit_vcpu_nap(cpu, v, sleep_ns)) {
            qemu_mutex_lock(&v->lock);
            sleep_ns = dirtylimit_controller_wakeup(&v->ctl, get_clock());
            qemu_mutex_unlock(&v->lock);
        }
        qatomic_set(&v->sleeping, false);
        cpu->throttle_us_per_full =
            dirtylimit_controller_last_sleep_ns(&v->ctl) / SCALE_US;
        v->budget_backoff = 0;
        dirtylimit_vcpu_arm_budget(v);
        return true;
    }
    return false;
}

void dirtylimit_vcpu_execute(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

    if (!v || !qatomic_read(&v->limited)) {
        return;
    }
    qatomic_set(&v->penalty_signalled, false);
    dirtylimit_vcpu_charge(cpu, v);
    if (!dirtylimit_vcpu_serve(cpu, v) &&
        qatomic_xchg(&v->budget_probe, false)) {
        dirtylimit_vcpu_arm_budget(v);
    }
}

bool dirtylimit_vcpu_serve_signal(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);
    bool penalty, budget, dirtied = false;

    if (!v) {
        return false;
    }
    penalty = qatomic_xchg(&v->penalty_signalled, false);
    budget = v->budget_armed && get_clock() >= v->budget_end_ns;
    if (budget) {
        /* The run budget ran out: charge what the vCPU dirtied since. */
        v->budget_armed = false;
        dirtied = dirtylimit_vcpu_harvest_self(cpu, v);
    }
    if (!penalty && !budget) {
        return false;
    }
    if (dirtylimit_vcpu_wanted(cpu)) {
        /*
         * It leaves KVM_RUN anyway; dirtylimit_vcpu_execute() serves, and
         * arms the next budget.
         */
        if (budget) {
            qatomic_set(&v->budget_probe, true);
        }
        return false;
    }
    if (!dirtylimit_vcpu_serve(cpu, v) && budget) {
        /* Below its quota, for now: another budget. */
        v->budget_backoff = dirtied ? 0 : v->budget_backoff + 1;
        dirtylimit_vcpu_arm_budget(v);
    }
    return true;
}

static int64_t dirtylimit_log_harvest_interval_us(void)
{
    uint64_t smallest = DIRTYLIMIT_MAX_RATE_MB;
    int i;

    for (i = 0; i < dirtylimit.max_cpus; i++) {
        if (qatomic_read(&dirtylimit.vcpus[i].limited)) {
            smallest = MIN(smallest,
                           qatomic_read(&dirtylimit.vcpus[i].quota_mb));
        }
    }
    return MAX(DIRTYLIMIT_LOG_HARVEST_MIN_US,
               MIN(DIRTYLIMIT_LOG_HARVEST_MAX_US,
                   smallest * DIRTYLIMIT_LOG_US_PER_MB));
}

/*
 * Harvest interval: well before a vCPU at full speed fills half its ring
 * (0.65 M pages/s fill 4096 entries in about 6 ms).  TCG counts as the
 * vCPU writes, and the interval is its counting epoch.  The dirty log's
 * interval depends on the quotas (above).
 */
static int64_t dirtylimit_harvest_interval_us(void)
{
    if (!kvm_enabled()) {
        return DIRTYLIMIT_TCG_EPOCH_US;
    }
    if (!kvm_dirty_ring_enabled()) {
        return dirtylimit_log_harvest_interval_us();
    }
    return MAX(500, MIN(5000, kvm_dirty_ring_size() / 2));
}

/*
 * Signal @cpu to leave KVM_RUN without qemu_cpu_kick(): a kick marks the
 * vCPU wanted by the rest of QEMU, and it would take the BQL to return.
 */
static void dirtylimit_vcpu_signal(CPUState *cpu)
{
#ifdef CONFIG_KVM
    pthread_kill(cpu->thread->thread, SIG_IPI);
#endif
}

/*
 * Charge a running limited vCPU, and signal it if it owes a penalty (not
 * the vCPU charging itself: it serves next).
 */
static void dirtylimit_charge_running_vcpu(CPUState *cpu, DirtyLimitVcpu *v)
{
    if (dirtylimit_vcpu_charge(cpu, v) > 0 && cpu != current_cpu) {
        qatomic_set(&v->penalty_signalled, true);
        dirtylimit_vcpu_signal(cpu);
    }
}

/* KVM: harvest every limited vCPU's ring and charge it, from this thread. */
static void dirtylimit_harvest_rings(void)
{
    CPUState *cpu;

    WITH_RCU_READ_LOCK_GUARD() {
        CPU_FOREACH(cpu) {
            DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

            if (!v || !qatomic_read(&v->limited) ||
                qatomic_read(&v->sleeping)) {
                continue;
            }
#ifdef CONFIG_KVM
            kvm_dirty_ring_reap_vcpu(cpu);
#endif
            dirtylimit_charge_running_vcpu(cpu, v);
        }
    }
}

/*
 * CPU time @cpu's thread used other than serving penalties: running the
 * guest (or, on hosts such as PVM, emulating it) and exits.
 */
static int64_t dirtylimit_vcpu_thread_ns(CPUState *cpu, DirtyLimitVcpu *v)
{
    clockid_t clock;

    if (!cpu->thread || pthread_getcpuclockid(cpu->thread->thread, &clock)) {
        return 0;
    }
    return dirtylimit_clock_ns(clock) - qatomic_read(&v->penalty_cpu_ns);
}

/*
 * Share @pages among the vCPUs by the CPU time each used since the last
 * harvest, adding each share to CPUState::dirty_pages; the fraction of a
 * page left over is kept for the next harvest.
 */
static void dirtylimit_share_dirty_log(uint64_t pages)
{
    int64_t total_ns = 0;
    CPUState *cpu;

    CPU_FOREACH(cpu) {
        DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);
        int64_t now_ns;

        if (!v) {
            continue;
        }
        /*
         * A nap in progress is published only when it ends; until then
         * keep the old mark, so its cost is not counted as use.
         */
        now_ns = dirtylimit_vcpu_thread_ns(cpu, v);
        v->thread_used_ns = MAX(0, now_ns - v->thread_ns);
        v->thread_ns = MAX(v->thread_ns, now_ns);
        total_ns += v->thread_used_ns;
    }
    CPU_FOREACH(cpu) {
        DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

        if (v) {
            qatomic_add(&cpu->dirty_pages,
                        dirtylimit_share(pages, v->thread_used_ns, total_ns,
                                         &v->share_remainder));
        }
    }
}

/*
 * KVM without a dirty ring: harvest the VM's dirty log, share it among
 * the vCPUs and charge the limited ones.  The first harvest only starts
 * the log afresh: it holds whatever was dirty before the limit began
 * (with KVM_DIRTY_LOG_INITIALLY_SET, all of memory).
 */
static void dirtylimit_harvest_dirty_log(void)
{
    uint64_t pages = 0;
    CPUState *cpu;

    QEMU_LOCK_GUARD(&dirtylimit.log_lock);
#ifdef CONFIG_KVM
    pages = kvm_dirty_log_harvest();
#endif
    WITH_RCU_READ_LOCK_GUARD() {
        if (!dirtylimit.log_harvested) {
            dirtylimit.log_harvested = true;
            pages = 0;
        }
        dirtylimit_share_dirty_log(pages);
        CPU_FOREACH(cpu) {
            DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

            if (v && qatomic_read(&v->limited) &&
                !qatomic_read(&v->sleeping)) {
                dirtylimit_charge_running_vcpu(cpu, v);
            }
        }
    }
}

/*
 * A vCPU whose run budget ran out, outside KVM_RUN: harvest what it
 * dirtied and charge it, as the controller thread would have at its next
 * harvest.  Its ring is its own; the dirty log is the VM's, so it is
 * harvested and shared as by the controller thread.  Returns true if the
 * vCPU had dirtied anything since its last charge.
 */
static bool dirtylimit_vcpu_harvest_self(CPUState *cpu, DirtyLimitVcpu *v)
{
    uint64_t charged = qatomic_read(&v->charged_pages);

    if (!kvm_enabled() || !qatomic_read(&v->limited)) {
        return false;
    }
    v->stopped_ns = get_clock();
    if (kvm_dirty_ring_enabled()) {
#ifdef CONFIG_KVM
        kvm_dirty_ring_reap_vcpu(cpu);
#endif
        dirtylimit_vcpu_charge(cpu, v);
    } else {
        dirtylimit_harvest_dirty_log();
    }
    v->stopped_ns = 0;
    return qatomic_read(&v->charged_pages) != charged;
}

/* Record a period end and measure the rate over the window (lock held). */
static void dirtylimit_measure(DirtyLimitVcpu *v, int64_t now, uint64_t pages)
{
    unsigned oldest = v->window_next % DIRTYLIMIT_RATE_WINDOW;

    if (v->window_next >= DIRTYLIMIT_RATE_WINDOW &&
        now > v->window_ns[oldest]) {
        v->current_rate = (pages - v->window_pages[oldest]) *
                          qemu_target_page_size() * NANOSECONDS_PER_SECOND /
                          (now - v->window_ns[oldest]);
    } else {
        v->current_rate = dirtylimit_controller_current_rate(&v->ctl);
    }
    v->window_ns[oldest] = now;
    v->window_pages[oldest] = pages;
    v->window_next++;
}

static void dirtylimit_feedback_all(int64_t period_ns)
{
    CPUState *cpu;

    WITH_RCU_READ_LOCK_GUARD() {
        CPU_FOREACH(cpu) {
            DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);
            uint64_t pages;

            if (!v || !qatomic_read(&v->limited)) {
                continue;
            }
            qemu_mutex_lock(&v->lock);
            pages = qatomic_read(&cpu->dirty_pages);
            dirtylimit_controller_feedback(&v->ctl,
                (pages - v->period_pages) * qemu_target_page_size(),
                period_ns);
            v->period_pages = pages;
            dirtylimit_measure(v, get_clock(), pages);
            qemu_mutex_unlock(&v->lock);
        }
    }
}

static void dirtylimit_tcg_counting_epoch(void)
{
#ifdef CONFIG_TCG
    dirtylimit_tcg_rearm();
#endif
}

/* Start counting the vCPUs' dirty pages, or stop (BQL held). */
static void dirtylimit_count_dirty_pages(bool on)
{
    if (kvm_enabled()) {
        /* The dirty ring only records pages while dirty logging is on. */
        if (on) {
            memory_global_dirty_log_start(GLOBAL_DIRTY_LIMIT);
        } else {
            memory_global_dirty_log_stop(GLOBAL_DIRTY_LIMIT);
        }
        return;
    }
#ifdef CONFIG_TCG
    if (on) {
        dirtylimit_tcg_start();
    } else {
        dirtylimit_tcg_stop();
    }
#endif
}

static void *dirtylimit_thread(void *opaque)
{
    int64_t period_start = get_clock();

    rcu_register_thread();
    while (!qatomic_read(&dirtylimit.thread_quit)) {
        int64_t now = get_clock();

        if (now - period_start >= qatomic_read(&dirtylimit.period_ns)) {
            dirtylimit_feedback_all(now - period_start);
            period_start = now;
        }
        if (kvm_enabled() && kvm_dirty_ring_enabled()) {
            dirtylimit_harvest_rings();
        } else if (kvm_enabled()) {
            dirtylimit_harvest_dirty_log();
        } else {
            dirtylimit_tcg_counting_epoch();
        }
        g_usleep(dirtylimit_harvest_interval_us());
    }
    rcu_unregister_thread();
    return NULL;
}

static void dirtylimit_state_init(void)
{
    MachineState *ms = MACHINE(qdev_get_machine());
    int i;

    if (dirtylimit.vcpus) {
        return;
    }
    dirtylimit.max_cpus = ms->smp.max_cpus;
    dirtylimit.vcpus = g_new0(DirtyLimitVcpu, dirtylimit.max_cpus);
    for (i = 0; i < dirtylimit.max_cpus; i++) {
        qemu_mutex_init(&dirtylimit.vcpus[i].lock);
    }
    qemu_mutex_init(&dirtylimit.log_lock);
    dirtylimit.period_ns = DIRTYLIMIT_DEFAULT_PERIOD_MS * SCALE_MS;
}

/* Start or stop the controller thread as limits come and go (BQL held). */
static void dirtylimit_update_service(void)
{
    bool want = dirtylimit.nlimited > 0;

    qatomic_set(&dirtylimit.in_service, want);
    if (want && !dirtylimit.thread_running) {
        dirtylimit_count_dirty_pages(true);
        dirtylimit.log_harvested = false;
        qatomic_set(&dirtylimit.thread_quit, false);
        qemu_thread_create(&dirtylimit.thread, "dirtylimit",
                           dirtylimit_thread, NULL, QEMU_THREAD_JOINABLE);
        dirtylimit.thread_running = true;
    } else if (!want && dirtylimit.thread_running) {
        /* The thread never takes the BQL, so joining under it is safe. */
        qatomic_set(&dirtylimit.thread_quit, true);
        qemu_thread_join(&dirtylimit.thread);
        dirtylimit.thread_running = false;
        dirtylimit_count_dirty_pages(false);
    }
}

static void dirtylimit_set_vcpu(int cpu_index, uint64_t quota_mb,
                                bool by_migration)
{
    DirtyLimitVcpu *v = &dirtylimit.vcpus[cpu_index];
    CPUState *cpu = qemu_get_cpu(cpu_index);
    uint64_t quota = quota_mb * DIRTYLIMIT_BYTES_PER_MB;

    trace_dirtylimit_set_vcpu(cpu_index, quota_mb);
    qemu_mutex_lock(&v->lock);
    if (qatomic_read(&v->limited)) {
        dirtylimit_controller_set_quota(&v->ctl, quota, get_clock());
        /* What the vCPU dirtied so far fell under the old quota. */
        if (cpu) {
            qatomic_set(&v->charged_pages, qatomic_read(&cpu->dirty_pages));
        }
        /* A rate measured while only counting is not the limit's. */
        if (v->counting_only) {
            v->window_next = 0;
        }
    } else {
        dirtylimit_controller_init(&v->ctl, quota, get_clock());
        v->charged_pages = v->period_pages = cpu ? cpu->dirty_pages : 0;
        v->window_next = 0;
        v->current_rate = 0;
        dirtylimit.nlimited++;
    }
    qatomic_set(&v->quota_mb, quota_mb);
    qatomic_set(&v->slice_pages,
                MIN(DIRTYLIMIT_TCG_SLICE_MAX_PAGES,
                    MAX(1, quota / qemu_target_page_size() *
                           DIRTYLIMIT_TCG_SLICE_US / G_USEC_PER_SEC)));
    v->by_migration = by_migration;
    v->counting_only = false;
    qatomic_set(&v->limited, true);
    qemu_mutex_unlock(&v->lock);
    /*
     * KVM: through dirtylimit_vcpu_execute(), the vCPU arms its run
     * budget, so that even its first batch is small.
     */
    if (cpu && kvm_enabled()) {
        v->budget_backoff = 0;
        qatomic_set(&v->budget_probe, true);
        qemu_cpu_kick(cpu);
    }
}

static void dirtylimit_clear_vcpu(int cpu_index)
{
    DirtyLimitVcpu *v = &dirtylimit.vcpus[cpu_index];
    CPUState *cpu = qemu_get_cpu(cpu_index);

    if (!qatomic_read(&v->limited)) {
        return;
    }
    qemu_mutex_lock(&v->lock);
    qatomic_set(&v->limited, false);
    dirtylimit_controller_set_quota(&v->ctl, 0, get_clock());
    qatomic_set(&v->quota_mb, 0);
    v->by_migration = false;
    qemu_mutex_unlock(&v->lock);
    dirtylimit.nlimited--;
    if (cpu) {
        cpu->throttle_us_per_full = 0;
        qemu_cpu_kick(cpu);     /* end a penalty being served */
    }
}

static bool dirtylimit_migration_owns_limits(void)
{
    int i;

    for (i = 0; dirtylimit.vcpus && i < dirtylimit.max_cpus; i++) {
        if (qatomic_read(&dirtylimit.vcpus[i].limited) &&
            dirtylimit.vcpus[i].by_migration) {
            return true;
        }
    }
    return false;
}

/* The checks shared by set and cancel; false with @errp set on error. */
static bool dirtylimit_check_cpu_index(bool has_cpu_index, int64_t cpu_index,
                                       Error **errp)
{
    MachineState *ms = MACHINE(qdev_get_machine());

    if (has_cpu_index && (cpu_index < 0 || cpu_index >= ms->smp.max_cpus)) {
        error_setg(errp, "incorrect cpu index specified");
        return false;
    }
    return true;
}

void qmp_set_vcpu_dirty_limit(bool has_cpu_index, int64_t cpu_index,
                              uint64_t dirty_rate, Error **errp)
{
    int i;

    if (tcg_enabled() && !qemu_tcg_mttcg_enabled()) {
        error_setg(errp, "dirty page limit under TCG requires multi-threaded"
                   " TCG (-accel tcg,thread=multi)");
        return;
    }
    if (!dirtylimit_supported()) {
        /* The base's message, stray quote included, for compatibility. */
        error_setg(errp, "dirty page limit feature requires KVM with"
                   " accelerator property 'dirty-ring-size' set'");
        return;
    }
    if (!dirtylimit_check_cpu_index(has_cpu_index, cpu_index, errp)) {
        return;
    }
    if (dirty_rate > DIRTYLIMIT_MAX_RATE_MB) {
        error_setg(errp, QERR_INVALID_PARAMETER_VALUE, "dirty-rate",
                   "a rate of at most 1048576 MB/s");
        return;
    }
    if (dirtylimit_migration_owns_limits()) {
        error_setg(errp, "can't set dirty page rate limit while migration is"
                   " running");
        return;
    }
    if (!dirty_rate) {
        qmp_cancel_vcpu_dirty_limit(has_cpu_index, cpu_index, errp);
        return;
    }
    dirtylimit_state_init();
    for (i = 0; i < dirtylimit.max_cpus; i++) {
        if (!has_cpu_index || i == cpu_index) {
            dirtylimit_set_vcpu(i, dirty_rate, false);
        }
    }
    dirtylimit_update_service();
}

void qmp_cancel_vcpu_dirty_limit(bool has_cpu_index, int64_t cpu_index,
                                 Error **errp)
{
    int i;

    if (!dirtylimit_supported()) {
        return;
    }
    if (!dirtylimit_check_cpu_index(has_cpu_index, cpu_index, errp)) {
        return;
    }
    if (!dirtylimit_in_service()) {
        return;
    }
    if (dirtylimit_migration_owns_limits()) {
        error_setg(errp, "can't cancel dirty page rate limit while migration"
                   " is running");
        return;
    }
    for (i = 0; i < dirtylimit.max_cpus; i++) {
        if (!has_cpu_index || i == cpu_index) {
            dirtylimit_clear_vcpu(i);
        }
    }
    dirtylimit_update_service();
}

DirtyLimitInfoList *qmp_query_vcpu_dirty_limit(Error **errp)
{
    DirtyLimitInfoList *head = NULL, **tail = &head;
    int i;

    if (!dirtylimit_in_service()) {
        return NULL;
    }
    for (i = 0; i < dirtylimit.max_cpus; i++) {
        DirtyLimitVcpu *v = &dirtylimit.vcpus[i];
        DirtyLimitInfo *info;

        if (!qatomic_read(&v->limited) || v->counting_only) {
            continue;
        }
        info = g_new0(DirtyLimitInfo, 1);
        info->cpu_index = i;
        qemu_mutex_lock(&v->lock);
        info->limit_rate = v->quota_mb;
        /* Rounded: a vCPU held at 1 MB/s measures 0.99 as often as 1.01. */
        info->current_rate = (v->current_rate + DIRTYLIMIT_BYTES_PER_MB / 2) /
                             DIRTYLIMIT_BYTES_PER_MB;
        qemu_mutex_unlock(&v->lock);
        QAPI_LIST_APPEND(tail, info);
    }
    return head;
}

void dirtylimit_migration_engage(uint64_t quota_mb, uint64_t period_ms)
{
    int i;

    dirtylimit_state_init();
    qatomic_set(&dirtylimit.period_ns, period_ms * SCALE_MS);
    for (i = 0; i < dirtylimit.max_cpus; i++) {
        DirtyLimitVcpu *v = &dirtylimit.vcpus[i];

        if (!qatomic_read(&v->limited) || v->by_migration ||
            v->quota_mb > quota_mb) {
            dirtylimit_set_vcpu(i, quota_mb, true);
        }
    }
    dirtylimit_update_service();
}

void dirtylimit_migration_count(uint64_t period_ms)
{
    int i;

    dirtylimit_state_init();
    qatomic_set(&dirtylimit.period_ns, period_ms * SCALE_MS);
    for (i = 0; i < dirtylimit.max_cpus; i++) {
        DirtyLimitVcpu *v = &dirtylimit.vcpus[i];

        if (!qatomic_read(&v->limited)) {
            dirtylimit_set_vcpu(i, DIRTYLIMIT_MAX_RATE_MB, true);
            v->counting_only = true;
        }
    }
    dirtylimit_update_service();
}

void dirtylimit_migration_release(void)
{
    int i;

    for (i = 0; dirtylimit.vcpus && i < dirtylimit.max_cpus; i++) {
        if (dirtylimit.vcpus[i].by_migration) {
            dirtylimit_clear_vcpu(i);
        }
    }
    if (dirtylimit.vcpus) {
        qatomic_set(&dirtylimit.period_ns,
                    DIRTYLIMIT_DEFAULT_PERIOD_MS * SCALE_MS);
        dirtylimit_update_service();
    }
}

uint64_t dirtylimit_throttle_time_per_round(void)
{
    int64_t longest = 0;
    int i;

    for (i = 0; dirtylimit_in_service() && i < dirtylimit.max_cpus; i++) {
        DirtyLimitVcpu *v = &dirtylimit.vcpus[i];

        if (qatomic_read(&v->limited)) {
            qemu_mutex_lock(&v->lock);
            longest = MAX(longest,
                          dirtylimit_controller_last_sleep_ns(&v->ctl));
            qemu_mutex_unlock(&v->lock);
        }
    }
    return longest / SCALE_US;
}

uint64_t dirtylimit_ring_full_time(void)
{
    uint64_t sum = 0, ring_bytes;
    int i, n = 0;

    for (i = 0; dirtylimit_in_service() && i < dirtylimit.max_cpus; i++) {
        DirtyLimitVcpu *v = &dirtylimit.vcpus[i];

        if (qatomic_read(&v->limited)) {
            qemu_mutex_lock(&v->lock);
            sum += v->current_rate;
            qemu_mutex_unlock(&v->lock);
            n++;
        }
    }
    if (!sum || !kvm_enabled()) {
        return 0;
    }
    ring_bytes = (uint64_t)kvm_dirty_ring_size() * qemu_target_page_size();
    return ring_bytes * G_USEC_PER_SEC / (sum / n);
}

void hmp_set_vcpu_dirty_limit(Monitor *mon, const QDict *qdict)
{
    int64_t dirty_rate = qdict_get_int(qdict, "dirty_rate");
    int64_t cpu_index = qdict_get_try_int(qdict, "cpu_index", -1);
    Error *err = NULL;

    if (dirty_rate < 0) {
        monitor_printf(mon, "invalid dirty page limit %" PRId64 "\n",
                       dirty_rate);
        return;
    }
    qmp_set_vcpu_dirty_limit(cpu_index != -1, cpu_index, dirty_rate, &err);
    if (err) {
        hmp_handle_error(mon, err);
        return;
    }
    monitor_printf(mon, "[Please use 'info vcpu_dirty_limit' to query "
                   "dirty limit for virtual CPU]\n");
}

void hmp_cancel_vcpu_dirty_limit(Monitor *mon, const QDict *qdict)
{
    int64_t cpu_index = qdict_get_try_int(qdict, "cpu_index", -1);
    Error *err = NULL;

    qmp_cancel_vcpu_dirty_limit(cpu_index != -1, cpu_index, &err);
    if (err) {
        hmp_handle_error(mon, err);
        return;
    }
    monitor_printf(mon, "[Please use 'info vcpu_dirty_limit' to query "
                   "dirty limit for virtual CPU]\n");
}

void hmp_info_vcpu_dirty_limit(Monitor *mon, const QDict *qdict)
{
    DirtyLimitInfoList *head, *limit;

    if (!dirtylimit_in_service()) {
        monitor_printf(mon, "Dirty page limit not enabled!\n");
        return;
    }
    head = qmp_query_vcpu_dirty_limit(NULL);
    for (limit = head; limit; limit = limit->next) {
        monitor_printf(mon, "vcpu[%" PRIi64 "], limit rate %" PRIi64
                       " (MB/s), current rate %" PRIi64 " (MB/s)\n",
                       limit->value->cpu_index, limit->value->limit_rate,
                       limit->value->current_rate);
    }
    qapi_free_DirtyLimitInfoList(head);
}
