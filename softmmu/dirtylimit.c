/*
 * vCPU dirty page rate limit ("dirty limit"): the core
 *
 * Caps how fast each vCPU may dirty guest memory so that a busy guest
 * becomes migratable without slowing vCPUs that dirty little.  This file
 * owns the per-vCPU limits, the controller thread, the penalties and the
 * QMP/HMP commands; the penalty itself is computed by the pure controller
 * in softmmu/dirtylimit-controller.c, and what each vCPU dirtied is
 * counted by one backend (softmmu/dirtylimit-internal.h): the KVM dirty
 * ring, the KVM dirty log or TCG's write path.
 *
 * How it works:
 *  - Every harvest interval the controller thread has the backend count
 *    what each limited vCPU dirtied (in CPUState::dirty_pages) and charge
 *    it to the vCPU's leaky bucket: the vCPU's dirty rate cannot exceed
 *    its quota over any interval, however small the quota.
 *  - Only when the bucket prescribes a penalty is the vCPU made to leave
 *    the guest, and it serves the penalty there, without the BQL
 *    (dirtylimit_vcpu_serve_signal()); a vCPU below its quota is never
 *    stopped at all.  Pages a vCPU counted itself (a ring-full exit) are
 *    charged by dirtylimit_vcpu_execute() before it re-enters.
 *  - At a small quota a harvest interval of free running is seconds of
 *    allowance, which the vCPU would dirty at once and then sleep off.
 *    Under a backend that only counts by harvesting, a vCPU that is
 *    about to run after a penalty arms a timer for its run budget
 *    (dirtylimit_controller_run_budget(), 50 ms of allowance): unless a
 *    harvest charged it first, the timer interrupts the guest, and the
 *    vCPU harvests and charges itself and serves what it owes.
 *  - Once a period the thread feeds the measured rate back to each
 *    controller, which trims the bucket so the measured rate sits at the
 *    quota, and reports it as current-rate.
 *
 * Locking: the QMP/HMP commands and the migration hooks run under the
 * BQL; a vCPU's controller is guarded by its own mutex, so vCPU threads
 * and the controller thread never take the BQL here.
 *
 * Copyright (c) 2026 Ferry developers
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
#include "exec/target_page.h"
#include "hw/boards.h"
#include "hw/core/cpu.h"
#include "monitor/hmp.h"
#include "monitor/monitor.h"
#include "sysemu/dirtylimit.h"
#include "sysemu/dirtylimit-controller.h"
#include "dirtylimit-internal.h"
#include "trace.h"

/* Feedback period of limits set by the user (migration sets its own). */
#define DIRTYLIMIT_DEFAULT_PERIOD_MS    1000
/*
 * Longest nap between checks for a stop request while penalised.  A KVM
 * vCPU's nap ends at once when it is kicked (SIG_IPI interrupts it); a
 * TCG vCPU is kicked without a signal and notices within a nap.  Naps of
 * 1 ms would wake the thread a thousand times a second, which costs the
 * other vCPU of a two-vCPU TCG guest about 10 %.
 */
#define DIRTYLIMIT_NAP_NS               (10 * SCALE_MS)
/*
 * current-rate is measured over the last few feedback periods: a vCPU
 * held to a few MB/s dirties a ring's worth in bursts a second or more
 * apart, so a single period can hold none or two of them.
 */
#define DIRTYLIMIT_RATE_WINDOW          4
/* One backend per accelerator flavour: ring, dirty log, TCG. */
#define DIRTYLIMIT_MAX_BACKENDS         4

typedef struct DirtyLimitVcpu {
    QemuMutex lock;                 /* guards ctl and the page counts */
    DirtyLimitController ctl;
    bool limited;                   /* read locklessly by the vCPU */
    bool by_migration;              /* set by dirtylimit_migration_engage */
    bool counting_only;             /* dirtylimit_migration_count: no quota */
    bool sleeping;                  /* serving a penalty: dirties nothing */
    bool penalty_signalled;         /* asked to leave and serve a penalty */
    uint64_t quota_mb;
    uint64_t charged_pages;         /* CPUState::dirty_pages charged so far */
    uint64_t period_pages;          /* CPUState::dirty_pages at period start */
    /* (time, dirty_pages) at the last period ends, for current-rate */
    int64_t window_ns[DIRTYLIMIT_RATE_WINDOW];
    uint64_t window_pages[DIRTYLIMIT_RATE_WINDOW];
    unsigned window_next;
    uint64_t current_rate;          /* bytes/s over the window */
    /*
     * The run budget, for backends with one (vCPU thread only): arm at
     * the next entry into the guest, budgets in a row that found
     * nothing, and, while it harvests itself, when it stopped dirtying.
     */
    bool budget_probe;
    unsigned budget_backoff;
    int64_t stopped_ns;
} DirtyLimitVcpu;

static struct {
    const DirtyLimitBackend *backends[DIRTYLIMIT_MAX_BACKENDS];
    int nbackends;
    const DirtyLimitBackend *backend;   /* chosen by dirtylimit_state_init */
    DirtyLimitVcpu *vcpus;          /* max_cpus entries, allocated once */
    int max_cpus;
    int nlimited;                   /* under the BQL */
    bool in_service;                /* read locklessly */
    int64_t period_ns;              /* read locklessly */
    QemuThread thread;
    bool thread_running;            /* under the BQL */
    bool thread_quit;
} dirtylimit;

void dirtylimit_backend_register(const DirtyLimitBackend *backend)
{
    assert(dirtylimit.nbackends < DIRTYLIMIT_MAX_BACKENDS);
    dirtylimit.backends[dirtylimit.nbackends++] = backend;
}

/*
 * The backend that serves the running accelerator, or NULL with @errp
 * set: to the reason a backend gave, or else to the base's message.
 */
static const DirtyLimitBackend *dirtylimit_backend_find(Error **errp)
{
    Error *why = NULL;
    int i;

    for (i = 0; i < dirtylimit.nbackends; i++) {
        if (dirtylimit.backends[i]->usable(why ? NULL : &why)) {
            error_free(why);
            return dirtylimit.backends[i];
        }
    }
    if (why) {
        error_propagate(errp, why);
    } else {
        /* not upstream's "requires KVM with ... dirty-ring-size": untrue */
        error_setg(errp, "dirty page limit requires KVM or multi-threaded TCG");
    }
    return NULL;
}

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
    return dirtylimit_backend_find(NULL) != NULL;
}

bool dirtylimit_vcpu_tracked(CPUState *cpu)
{
    return dirtylimit_vcpu(cpu) != NULL;
}

bool dirtylimit_vcpu_limited(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

    return v && qatomic_read(&v->limited);
}

bool dirtylimit_vcpu_running(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

    return v && qatomic_read(&v->limited) && !qatomic_read(&v->sleeping);
}

uint64_t dirtylimit_vcpu_uncharged(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

    return v ? qatomic_read(&cpu->dirty_pages) -
               qatomic_read(&v->charged_pages) : 0;
}

void dirtylimit_vcpu_owes(CPUState *cpu)
{
    qatomic_set(&dirtylimit.vcpus[cpu->cpu_index].penalty_signalled, true);
}

uint64_t dirtylimit_smallest_quota_mb(void)
{
    uint64_t smallest = DIRTYLIMIT_MAX_RATE_MB;
    int i;

    for (i = 0; i < dirtylimit.max_cpus; i++) {
        if (qatomic_read(&dirtylimit.vcpus[i].limited)) {
            smallest = MIN(smallest,
                           qatomic_read(&dirtylimit.vcpus[i].quota_mb));
        }
    }
    return smallest;
}

/* True when something other than the dirty limit wants the vCPU. */
static bool dirtylimit_vcpu_wanted(CPUState *cpu)
{
    return qatomic_read(&cpu->stop) || qatomic_read(&cpu->exit_request) ||
           qatomic_read(&cpu->thread_kicked) ||
           !QSIMPLEQ_EMPTY_ATOMIC(&cpu->work_list);
}

/* The calling thread's CPU time in nanoseconds, 0 if it cannot be read. */
static int64_t dirtylimit_thread_cpu_ns(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)) {
        return 0;
    }
    return ts.tv_sec * NANOSECONDS_PER_SECOND + ts.tv_nsec;
}

/*
 * Hand the backend the CPU time the vCPU thread spent napping since
 * *@mark, if it wants it, and move the mark.
 */
static void dirtylimit_vcpu_nap_cpu_time(CPUState *cpu, int64_t *mark)
{
    int64_t now = dirtylimit_thread_cpu_ns();

    dirtylimit.backend->penalty_cpu_time(cpu, now - *mark);
    *mark = now;
}

/*
 * Sleep @ns, in naps, unless the vCPU is wanted or lost its limit.
 * Returns true if the whole penalty was served.  The CPU time the naps
 * cost is handed to the backend as it is spent: the dirty log's sharing
 * must not mistake it for guest execution.
 */
static bool dirtylimit_vcpu_nap(CPUState *cpu, DirtyLimitVcpu *v, int64_t ns)
{
    bool cpu_time = dirtylimit.backend->penalty_cpu_time != NULL;
    int64_t end = get_clock() + ns;
    int64_t mark = cpu_time ? dirtylimit_thread_cpu_ns() : 0;

    for (;;) {
        int64_t left = end - get_clock();

        if (cpu_time) {
            dirtylimit_vcpu_nap_cpu_time(cpu, &mark);
        }
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
 * A vCPU that harvests itself is charged as of when it stopped dirtying:
 * the controller learns its speed from the time it ran, and waiting for
 * the dirty log's lock is no part of that.
 */
int64_t dirtylimit_vcpu_charge(CPUState *cpu)
{
    DirtyLimitVcpu *v = &dirtylimit.vcpus[cpu->cpu_index];
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

/*
 * The vCPU is about to run: have it interrupted when its run budget runs
 * out, so that it dirties a small part of its allowance at a time
 * instead of a harvest interval at full speed.  At large quotas the
 * budget is longer than the harvest interval and the timer only catches
 * late harvests (the dirty log's take milliseconds, and a sleeping thread
 * on this host can wake milliseconds late), at the cost of one timer per
 * penalty.  It is armed when the vCPU gets a limit, after a penalty, and
 * after a budget that prescribed none.  A budget in which the vCPU
 * dirtied nothing means it is idle, or that it did not get to run (on a
 * busy host the timer can fire before the thread is back in the guest):
 * the next is twice as long, and none is armed once that is as long as
 * the harvest interval, so an idle vCPU is left alone after a few.
 */
static void dirtylimit_vcpu_arm_budget(CPUState *cpu, DirtyLimitVcpu *v)
{
    const DirtyLimitBackend *b = dirtylimit.backend;
    int64_t budget;

    if (!b->budget_arm || !qatomic_read(&v->limited)) {
        return;
    }
    qemu_mutex_lock(&v->lock);
    budget = dirtylimit_controller_run_budget(&v->ctl);
    qemu_mutex_unlock(&v->lock);
    if (v->budget_backoff) {
        budget <<= MIN(v->budget_backoff, 20);
        if (budget >= b->harvest_interval_us() * SCALE_US) {
            return;
        }
    }
    if (budget > 0) {
        b->budget_arm(cpu, budget);
    }
}

static int64_t dirtylimit_vcpu_wakeup(DirtyLimitVcpu *v)
{
    int64_t sleep_ns;

    qemu_mutex_lock(&v->lock);
    sleep_ns = dirtylimit_controller_wakeup(&v->ctl, get_clock());
    qemu_mutex_unlock(&v->lock);
    return sleep_ns;
}

/*
 * Sleep whatever penalty the vCPU owes, in the vCPU thread, which then
 * runs the guest.  Returns true if it owed any.
 */
static bool dirtylimit_vcpu_serve(CPUState *cpu, DirtyLimitVcpu *v)
{
    int64_t sleep_ns = dirtylimit_vcpu_wakeup(v);

    if (sleep_ns <= 0) {
        return false;
    }
    if (dirtylimit.backend->budget_disarm) {
        /* A timer firing while the vCPU sleeps would cut its next run. */
        dirtylimit.backend->budget_disarm(cpu);
    }
    trace_dirtylimit_vcpu_execute(cpu->cpu_index, sleep_ns / SCALE_US);
    qatomic_set(&v->sleeping, true);
    while (sleep_ns > 0 && dirtylimit_vcpu_nap(cpu, v, sleep_ns)) {
        sleep_ns = dirtylimit_vcpu_wakeup(v);
    }
    qatomic_set(&v->sleeping, false);
    cpu->throttle_us_per_full =
        dirtylimit_controller_last_sleep_ns(&v->ctl) / SCALE_US;
    v->budget_backoff = 0;
    dirtylimit_vcpu_arm_budget(cpu, v);
    return true;
}

void dirtylimit_vcpu_execute(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);

    if (!v || !qatomic_read(&v->limited)) {
        return;
    }
    qatomic_set(&v->penalty_signalled, false);
    dirtylimit_vcpu_charge(cpu);
    if (!dirtylimit_vcpu_serve(cpu, v) &&
        qatomic_xchg(&v->budget_probe, false)) {
        dirtylimit_vcpu_arm_budget(cpu, v);
    }
}

/*
 * A vCPU whose run budget ran out, outside the guest: have the backend
 * count what it dirtied and charge it, as the controller thread would
 * have at its next harvest.  Returns true if the vCPU had dirtied
 * anything since its last charge.
 */
static bool dirtylimit_vcpu_harvest_self(CPUState *cpu, DirtyLimitVcpu *v)
{
    uint64_t charged = qatomic_read(&v->charged_pages);

    if (!qatomic_read(&v->limited)) {
        return false;
    }
    v->stopped_ns = get_clock();
    dirtylimit.backend->harvest_self(cpu);
    v->stopped_ns = 0;
    return qatomic_read(&v->charged_pages) != charged;
}

/* True if @cpu's run budget ran out; *@dirtied: it dirtied since. */
static bool dirtylimit_vcpu_budget_spent(CPUState *cpu, DirtyLimitVcpu *v,
                                         bool *dirtied)
{
    const DirtyLimitBackend *b = dirtylimit.backend;

    *dirtied = false;
    if (!b->budget_expired || !b->budget_expired(cpu)) {
        return false;
    }
    *dirtied = dirtylimit_vcpu_harvest_self(cpu, v);
    return true;
}

bool dirtylimit_vcpu_serve_signal(CPUState *cpu)
{
    DirtyLimitVcpu *v = dirtylimit_vcpu(cpu);
    bool penalty, budget, dirtied;

    if (!v) {
        return false;
    }
    penalty = qatomic_xchg(&v->penalty_signalled, false);
    budget = dirtylimit_vcpu_budget_spent(cpu, v, &dirtied);
    if (!penalty && !budget) {
        return false;
    }
    if (dirtylimit_vcpu_wanted(cpu)) {
        /*
         * It leaves the guest anyway; dirtylimit_vcpu_execute() serves,
         * and arms the next budget.
         */
        if (budget) {
            qatomic_set(&v->budget_probe, true);
        }
        return false;
    }
    if (!dirtylimit_vcpu_serve(cpu, v) && budget) {
        /* Below its quota, for now: another budget. */
        v->budget_backoff = dirtied ? 0 : v->budget_backoff + 1;
        dirtylimit_vcpu_arm_budget(cpu, v);
    }
    return true;
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
        dirtylimit.backend->harvest();
        g_usleep(dirtylimit.backend->harvest_interval_us());
    }
    rcu_unregister_thread();
    return NULL;
}

/* Choose the backend and make the per-vCPU state, once; false if none. */
static bool dirtylimit_state_init(void)
{
    MachineState *ms = MACHINE(qdev_get_machine());
    int i;

    if (dirtylimit.vcpus) {
        return true;
    }
    dirtylimit.backend = dirtylimit_backend_find(NULL);
    if (!dirtylimit.backend) {
        return false;
    }
    dirtylimit.max_cpus = ms->smp.max_cpus;
    trace_dirtylimit_backend(dirtylimit.backend->name, dirtylimit.max_cpus);
    if (dirtylimit.backend->init) {
        dirtylimit.backend->init(dirtylimit.max_cpus);
    }
    dirtylimit.vcpus = g_new0(DirtyLimitVcpu, dirtylimit.max_cpus);
    for (i = 0; i < dirtylimit.max_cpus; i++) {
        qemu_mutex_init(&dirtylimit.vcpus[i].lock);
    }
    dirtylimit.period_ns = DIRTYLIMIT_DEFAULT_PERIOD_MS * SCALE_MS;
    return true;
}

/* Start or stop the controller thread as limits come and go (BQL held). */
static void dirtylimit_update_service(void)
{
    bool want = dirtylimit.nlimited > 0;

    qatomic_set(&dirtylimit.in_service, want);
    if (want && !dirtylimit.thread_running) {
        dirtylimit.backend->start();
        qatomic_set(&dirtylimit.thread_quit, false);
        qemu_thread_create(&dirtylimit.thread, "dirtylimit",
                           dirtylimit_thread, NULL, QEMU_THREAD_JOINABLE);
        dirtylimit.thread_running = true;
    } else if (!want && dirtylimit.thread_running) {
        /* The thread never takes the BQL, so joining under it is safe. */
        qatomic_set(&dirtylimit.thread_quit, true);
        qemu_thread_join(&dirtylimit.thread);
        dirtylimit.thread_running = false;
        dirtylimit.backend->stop();
    }
}

/* Give @v, the state of @cpu (may be NULL), a quota (lock held). */
static void dirtylimit_vcpu_set_quota(DirtyLimitVcpu *v, CPUState *cpu,
                                      uint64_t quota)
{
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
}

static void dirtylimit_set_vcpu(int cpu_index, uint64_t quota_mb,
                                bool by_migration)
{
    DirtyLimitVcpu *v = &dirtylimit.vcpus[cpu_index];
    CPUState *cpu = qemu_get_cpu(cpu_index);
    uint64_t quota = quota_mb * DIRTYLIMIT_BYTES_PER_MB;

    trace_dirtylimit_set_vcpu(cpu_index, quota_mb);
    qemu_mutex_lock(&v->lock);
    dirtylimit_vcpu_set_quota(v, cpu, quota);
    qatomic_set(&v->quota_mb, quota_mb);
    if (dirtylimit.backend->set_quota) {
        dirtylimit.backend->set_quota(cpu_index, quota);
    }
    v->by_migration = by_migration;
    v->counting_only = false;
    qatomic_set(&v->limited, true);
    qemu_mutex_unlock(&v->lock);
    /*
     * Through dirtylimit_vcpu_execute(), the vCPU arms its run budget, so
     * that even its first batch is small.
     */
    if (cpu && dirtylimit.backend->budget_arm) {
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

    if (!dirtylimit_backend_find(errp)) {
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
    if (!dirtylimit_state_init()) {
        return;
    }
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

    if (!dirtylimit_state_init()) {
        return;
    }
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

    if (!dirtylimit_state_init()) {
        return;
    }
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
    uint64_t sum = 0, ring_pages = 0;
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
    if (sum && dirtylimit.backend->ring_size) {
        ring_pages = dirtylimit.backend->ring_size();
    }
    if (!ring_pages || sum / n == 0) {
        return 0;
    }
    return ring_pages * qemu_target_page_size() * G_USEC_PER_SEC / (sum / n);
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
