/*
 * vCPU dirty page rate limit: what the dirty limit's own files share
 *
 * The core (softmmu/dirtylimit.c) owns the limits, the controllers, the
 * controller thread and the penalties; it learns what each vCPU dirtied
 * from exactly one backend, chosen once by DirtyLimitBackend::usable():
 *
 *  - softmmu/dirtylimit-ring.c: KVM with a dirty ring, harvested per vCPU;
 *  - softmmu/dirtylimit-log.c: KVM without one, the VM's dirty log shared
 *    among the vCPUs by the CPU time they used;
 *  - softmmu/dirtylimit-tcg.c: multi-threaded TCG, counting in TCG's
 *    write path.
 *
 * A backend registers its table from a constructor, so the core names no
 * accelerator and calls no backend function directly.  Backends call the
 * core only through the services declared here; the migration's plan
 * (softmmu/dirtylimit-migration.c) calls the core's migration entry
 * points.  Nothing outside these files includes this header: the rest of
 * QEMU uses include/sysemu/dirtylimit.h.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef SOFTMMU_DIRTYLIMIT_INTERNAL_H
#define SOFTMMU_DIRTYLIMIT_INTERNAL_H

/* Largest quota accepted, in MB/s: far above any memory bandwidth. */
#define DIRTYLIMIT_MAX_RATE_MB          (1 << 20)

/*
 * How the core counts and charges dirty pages under one accelerator.
 * Every backend sets the mandatory operations; an optional one left NULL
 * means the backend does not need that service.  Unless said otherwise
 * an operation runs in the controller thread or under the BQL.
 */
typedef struct DirtyLimitBackend {
    const char *name;
    /*
     * True if the backend serves the running accelerator.  A backend that
     * recognises its accelerator but cannot limit it sets @errp (may be
     * NULL) to say why.
     */
    bool (*usable)(Error **errp);
    /* Allocate per-vCPU state for @max_cpus vCPUs, once (optional). */
    void (*init)(int max_cpus);
    /*
     * Start or stop counting dirty pages as the first limit comes or the
     * last one goes (BQL held).
     */
    void (*start)(void);
    void (*stop)(void);
    /* Controller thread: the time between two harvest() calls. */
    int64_t (*harvest_interval_us)(void);
    /* Controller thread: count what the vCPUs dirtied and charge them. */
    void (*harvest)(void);
    /*
     * vCPU thread, its run budget spent: count what it dirtied and charge
     * it, as harvest() would.  Backends that charge as the vCPU writes
     * leave this and the budget_* operations NULL: no run budget.
     */
    void (*harvest_self)(CPUState *cpu);
    /*
     * The vCPU's run budget (vCPU thread): interrupt it in @ns unless a
     * timer is still pending; cancel the timer; true once a due timer
     * fired, which it clears.
     */
    void (*budget_arm)(CPUState *cpu, int64_t ns);
    void (*budget_disarm)(CPUState *cpu);
    bool (*budget_expired)(CPUState *cpu);
    /* @cpu_index got a quota of @quota bytes/s, lock held (optional). */
    void (*set_quota)(int cpu_index, uint64_t quota);
    /* vCPU thread: it spent @ns of CPU time serving a penalty (optional). */
    void (*penalty_cpu_time)(CPUState *cpu, int64_t ns);
    /* Entries in each vCPU's dirty ring; NULL or 0: no ring. */
    uint32_t (*ring_size)(void);
} DirtyLimitBackend;

/* Make @backend known to the core; from a constructor. */
void dirtylimit_backend_register(const DirtyLimitBackend *backend);

/*
 * The core's services to its backends.  A vCPU is "tracked" while a limit
 * is in service and the vCPU has per-vCPU state (cpu_index < max_cpus);
 * only tracked vCPUs can be limited.
 */
bool dirtylimit_vcpu_tracked(CPUState *cpu);
bool dirtylimit_vcpu_limited(CPUState *cpu);
/* Limited, and not serving a penalty: it may be dirtying memory. */
bool dirtylimit_vcpu_running(CPUState *cpu);
/* Pages added to CPUState::dirty_pages since @cpu was last charged. */
uint64_t dirtylimit_vcpu_uncharged(CPUState *cpu);
/*
 * Charge limited @cpu for the pages it dirtied since its last charge and
 * return the penalty (ns) it owes.  Any thread; takes the vCPU's lock.
 */
int64_t dirtylimit_vcpu_charge(CPUState *cpu);
/* Have @cpu serve its penalty when it next leaves the guest. */
void dirtylimit_vcpu_owes(CPUState *cpu);
/* The smallest quota of any limited vCPU, DIRTYLIMIT_MAX_RATE_MB if none. */
uint64_t dirtylimit_smallest_quota_mb(void);

/*
 * The core's entry points for the migration's plan.  BQL held.
 *
 * dirtylimit_migration_engage: limit every vCPU to @quota_mb MB/s for the
 * migration in progress, with a feedback period of @period_ms.  Limits
 * set this way are removed by dirtylimit_migration_release().
 *
 * dirtylimit_migration_count: count what every vCPU without a limit
 * dirties (in CPUState::dirty_pages), as a limit would, but never slow it
 * down, for the migration in progress to measure the guest.  Such vCPUs
 * are not listed by query-vcpu-dirty-limit; dirtylimit_migration_engage()
 * gives them a quota, dirtylimit_migration_release() stops counting.
 *
 * dirtylimit_migration_release: remove the limits migration set, when it
 * completes, fails or is cancelled.  Limits set by the user stay.
 */
void dirtylimit_migration_engage(uint64_t quota_mb, uint64_t period_ms);
void dirtylimit_migration_count(uint64_t period_ms);
void dirtylimit_migration_release(void);

#endif
