/*
 * vCPU dirty page rate limit: the KVM dirty log backend
 *
 * KVM without a dirty ring: the controller thread harvests the VM's
 * dirty log (kvm_dirty_log_harvest()), which says which pages were
 * dirtied but not by whom.  Each harvest's pages are shared among the
 * vCPUs in proportion to the CPU time their threads used since the last
 * one (dirtylimit_share()): a halted or penalised vCPU uses none and is
 * charged none, and vCPUs that dirty alike are each charged what they
 * dirtied.  Penalties are signalled and served as with the ring.
 *
 * Owns each vCPU's CPU-time accounting for the sharing and the lock that
 * serialises harvests, since a vCPU whose run budget ran out harvests
 * the log itself.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/lockable.h"
#include "qemu/rcu.h"
#include "qemu/thread.h"
#include "hw/core/cpu.h"
#include "sysemu/kvm.h"
#include "sysemu/kvm-dirty-ring.h"
#include "sysemu/dirtylimit-controller.h"
#include "dirtylimit-internal.h"
#include "dirtylimit-kvm.h"

/*
 * A vCPU runs unchecked from one harvest to the next, and each penalty
 * it is signalled to serve costs an exit that the sharing counts as its
 * use.  Small quotas need small batches, large ones few signals: harvest
 * every DIRTYLIMIT_LOG_US_PER_MB us per MB/s of the smallest quota,
 * within these bounds.
 */
#define DIRTYLIMIT_LOG_HARVEST_MIN_US   500
#define DIRTYLIMIT_LOG_HARVEST_MAX_US   2000
#define DIRTYLIMIT_LOG_US_PER_MB        20

/*
 * CPU time the vCPU thread spent serving penalties, its CPU time net of
 * that at the last harvest, its use since then, and the fraction of a
 * page (of that use) not yet charged.
 */
typedef struct DirtyLimitLogVcpu {
    int64_t penalty_cpu_ns;
    int64_t thread_ns;
    int64_t thread_used_ns;
    int64_t share_remainder;
} DirtyLimitLogVcpu;

static struct {
    DirtyLimitLogVcpu *vcpus;       /* max_cpus entries */
    QemuMutex lock;                 /* serialises harvests and the sharing */
    bool harvested;                 /* past the first harvest */
} dirtylimit_log;

static bool dirtylimit_log_usable(Error **errp)
{
    return kvm_enabled() && !kvm_dirty_ring_enabled();
}

static void dirtylimit_log_init(int max_cpus)
{
    dirtylimit_log.vcpus = g_new0(DirtyLimitLogVcpu, max_cpus);
    qemu_mutex_init(&dirtylimit_log.lock);
    dirtylimit_kvm_init(max_cpus);
}

static void dirtylimit_log_start(void)
{
    dirtylimit_kvm_start();
    dirtylimit_log.harvested = false;
}

static int64_t dirtylimit_log_harvest_interval_us(void)
{
    return MAX(DIRTYLIMIT_LOG_HARVEST_MIN_US,
               MIN(DIRTYLIMIT_LOG_HARVEST_MAX_US,
                   dirtylimit_smallest_quota_mb() * DIRTYLIMIT_LOG_US_PER_MB));
}

static void dirtylimit_log_penalty_cpu_time(CPUState *cpu, int64_t ns)
{
    qatomic_add(&dirtylimit_log.vcpus[cpu->cpu_index].penalty_cpu_ns, ns);
}

/* @clock's time in nanoseconds, 0 if it cannot be read. */
static int64_t dirtylimit_log_clock_ns(clockid_t clock)
{
    struct timespec ts;

    if (clock_gettime(clock, &ts)) {
        return 0;
    }
    return ts.tv_sec * NANOSECONDS_PER_SECOND + ts.tv_nsec;
}

/*
 * CPU time @cpu's thread used other than serving penalties: running the
 * guest (or, on hosts such as PVM, emulating it) and exits.
 */
static int64_t dirtylimit_log_thread_ns(CPUState *cpu, DirtyLimitLogVcpu *l)
{
    clockid_t clock;

    if (!cpu->thread || pthread_getcpuclockid(cpu->thread->thread, &clock)) {
        return 0;
    }
    return dirtylimit_log_clock_ns(clock) - qatomic_read(&l->penalty_cpu_ns);
}

/*
 * Share @pages among the vCPUs by the CPU time each used since the last
 * harvest, adding each share to CPUState::dirty_pages; the fraction of a
 * page left over is kept for the next harvest.
 */
static void dirtylimit_log_share(uint64_t pages)
{
    int64_t total_ns = 0;
    CPUState *cpu;

    CPU_FOREACH(cpu) {
        DirtyLimitLogVcpu *l;
        int64_t now_ns;

        if (!dirtylimit_vcpu_tracked(cpu)) {
            continue;
        }
        l = &dirtylimit_log.vcpus[cpu->cpu_index];
        /*
         * A nap in progress is published only when it ends; until then
         * keep the old mark, so its cost is not counted as use.
         */
        now_ns = dirtylimit_log_thread_ns(cpu, l);
        l->thread_used_ns = MAX(0, now_ns - l->thread_ns);
        l->thread_ns = MAX(l->thread_ns, now_ns);
        total_ns += l->thread_used_ns;
    }
    CPU_FOREACH(cpu) {
        if (dirtylimit_vcpu_tracked(cpu)) {
            DirtyLimitLogVcpu *l = &dirtylimit_log.vcpus[cpu->cpu_index];

            qatomic_add(&cpu->dirty_pages,
                        dirtylimit_share(pages, l->thread_used_ns, total_ns,
                                         &l->share_remainder));
        }
    }
}

/*
 * Harvest the VM's dirty log, share it among the vCPUs and charge the
 * limited ones.  The first harvest only starts the log afresh: it holds
 * whatever was dirty before the limit began (with
 * KVM_DIRTY_LOG_INITIALLY_SET, all of memory).
 */
static void dirtylimit_log_harvest(void)
{
    uint64_t pages;
    CPUState *cpu;

    QEMU_LOCK_GUARD(&dirtylimit_log.lock);
    pages = kvm_dirty_log_harvest();
    WITH_RCU_READ_LOCK_GUARD() {
        if (!dirtylimit_log.harvested) {
            dirtylimit_log.harvested = true;
            pages = 0;
        }
        dirtylimit_log_share(pages);
        CPU_FOREACH(cpu) {
            if (dirtylimit_vcpu_running(cpu)) {
                dirtylimit_kvm_charge_running(cpu);
            }
        }
    }
}

/* The dirty log is the VM's: harvested and shared as by the thread. */
static void dirtylimit_log_harvest_self(CPUState *cpu)
{
    dirtylimit_log_harvest();
}

static const DirtyLimitBackend dirtylimit_log_backend = {
    .name = "kvm-dirty-log",
    .usable = dirtylimit_log_usable,
    .init = dirtylimit_log_init,
    .start = dirtylimit_log_start,
    .stop = dirtylimit_kvm_stop,
    .harvest_interval_us = dirtylimit_log_harvest_interval_us,
    .harvest = dirtylimit_log_harvest,
    .harvest_self = dirtylimit_log_harvest_self,
    .budget_arm = dirtylimit_kvm_budget_arm,
    .budget_disarm = dirtylimit_kvm_budget_disarm,
    .budget_expired = dirtylimit_kvm_budget_expired,
    .penalty_cpu_time = dirtylimit_log_penalty_cpu_time,
};

static void __attribute__((constructor)) dirtylimit_log_register(void)
{
    dirtylimit_backend_register(&dirtylimit_log_backend);
}
