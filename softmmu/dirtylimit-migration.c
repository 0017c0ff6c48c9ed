/*
 * Dirty limit during migration: when it engages, and at what quota
 *
 * Owns the migration's plan for the dirty limit (SPEC section 1, the
 * migration integration and "beyond upstream").  Upstream limits the
 * vCPUs only once two bitmap syncs in a row showed that the guest dirties
 * faster than the migration sends, at the fixed vcpu-dirty-limit: a busy
 * guest is then sent two or three times over before anything slows it.
 * Here, as soon as the first pass has started, every vCPU's dirty pages
 * are counted (a limit too high to act, dirtylimit_migration_count());
 * DIRTYLIMIT_PLAN_COUNT_MS later the measured rates, the link rate, what
 * remains of the pass and the downtime limit tell
 * (softmmu/dirtylimit-plan.c) whether the migration can finish within
 * 1.5 passes.  If not, the vCPUs are limited at once, to the rate the
 * link and the downtime allow, or to vcpu-dirty-limit when the user set
 * it, and the dirty bitmap is synced once more: a page written at any
 * time during a pass is sent again in the next one, so without that
 * sync the few hundred milliseconds at full speed before the limit
 * engaged would leave the guest's whole working set dirty.  If the
 * migration can finish in time, counting stops and the guest runs free.
 * Auto-converge's trigger still acts afterwards: a stalled migration
 * limits the vCPUs if the plan did not, and halves the planned quota if
 * it did.  When the migration ends every limit it set is removed.
 *
 * Threads: dirtylimit_migration_progress() and
 * dirtylimit_migration_sync_wanted() run in the migration thread, progress
 * without the BQL (it takes it to act; the completion stage's reports,
 * under the BQL, are ignored); dirtylimit_migration_stalled()
 * runs in the migration thread under the BQL; dirtylimit_migration_end()
 * runs in the main thread once the migration thread has been joined.
 * So the plan is never touched by two threads at once.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "exec/target_page.h"
#include "hw/core/cpu.h"
#include "migration/migration.h"
#include "migration/ram.h"
#include "sysemu/dirtylimit.h"
#include "sysemu/dirtylimit-controller.h"
#include "sysemu/dirtylimit-plan.h"
#include "dirtylimit-internal.h"
#include "trace.h"

/*
 * How long the vCPUs are counted before the plan decides: a few hundred
 * harvests of a dirty ring or TCG counting epochs, little enough of the
 * first pass of any guest worth limiting.
 */
#define DIRTYLIMIT_PLAN_COUNT_MS        100

typedef enum {
    DIRTYLIMIT_PLAN_IDLE,           /* nothing measured yet */
    DIRTYLIMIT_PLAN_COUNTING,       /* counting the vCPUs' dirty pages */
    DIRTYLIMIT_PLAN_DECIDED,        /* limited or not; only stalls act */
} DirtyLimitPlanPhase;

static struct {
    DirtyLimitPlanPhase phase;
    int64_t count_start_ns;
    GArray *start_pages;            /* CPUState::dirty_pages, by cpu_index */
    uint64_t link_rate;             /* bytes/s at the last progress report */
    uint64_t quota_mb;              /* the quota the plan engaged, or 0 */
    bool sync_wanted;               /* engaged since the last bitmap sync */
} plan;

static uint64_t dirtylimit_migration_period_ms(void)
{
    return migrate_get_current()->parameters.x_vcpu_dirty_limit_period;
}

/* The user's vcpu-dirty-limit, or 0 to let the plan choose. */
static uint64_t dirtylimit_migration_user_quota(void)
{
    MigrationState *s = migrate_get_current();

    return s->vcpu_dirty_limit_set ? s->parameters.vcpu_dirty_limit : 0;
}

static uint64_t dirtylimit_migration_allowed_rate(void)
{
    return dirtylimit_plan_allowed_rate(plan.link_rate, ram_bytes_remaining(),
        migrate_get_current()->parameters.downtime_limit * SCALE_MS);
}

static void dirtylimit_migration_start_counting(void)
{
    CPUState *cpu;

    qemu_mutex_lock_iothread();
    dirtylimit_migration_count(dirtylimit_migration_period_ms());
    plan.start_pages = g_array_new(false, true, sizeof(uint64_t));
    CPU_FOREACH(cpu) {
        uint64_t pages = qatomic_read(&cpu->dirty_pages);

        g_array_insert_val(plan.start_pages, plan.start_pages->len, pages);
    }
    qemu_mutex_unlock_iothread();
    plan.count_start_ns = get_clock();
    plan.phase = DIRTYLIMIT_PLAN_COUNTING;
}

/* Each vCPU's dirty rate (bytes/s) since counting started; their number. */
static unsigned dirtylimit_migration_rates(uint64_t *rates, int64_t now)
{
    int64_t elapsed = MAX(1, now - plan.count_start_ns);
    unsigned n = 0;
    CPUState *cpu;

    CPU_FOREACH(cpu) {
        if (n < plan.start_pages->len) {
            uint64_t pages = qatomic_read(&cpu->dirty_pages) -
                             g_array_index(plan.start_pages, uint64_t, n);

            rates[n++] = pages * qemu_target_page_size() *
                         NANOSECONDS_PER_SECOND / elapsed;
        }
    }
    return n;
}

static void dirtylimit_migration_decide(int64_t now)
{
    uint64_t allowed = dirtylimit_migration_allowed_rate();
    g_autofree uint64_t *rates = g_new0(uint64_t, plan.start_pages->len);
    unsigned i, n = dirtylimit_migration_rates(rates, now);
    uint64_t total = 0, level, quota_mb = 0;

    for (i = 0; i < n; i++) {
        total += rates[i];
    }
    level = dirtylimit_plan_level(allowed, rates, n);
    if (level) {
        quota_mb = dirtylimit_migration_user_quota() ?:
                   MAX(1, level / DIRTYLIMIT_BYTES_PER_MB);
    }
    trace_dirtylimit_migration_plan(total / DIRTYLIMIT_BYTES_PER_MB,
                                    plan.link_rate / DIRTYLIMIT_BYTES_PER_MB,
                                    ram_bytes_remaining() >> 20,
                                    allowed / DIRTYLIMIT_BYTES_PER_MB,
                                    quota_mb);
    qemu_mutex_lock_iothread();
    if (quota_mb) {
        dirtylimit_migration_engage(quota_mb, dirtylimit_migration_period_ms());
        plan.sync_wanted = true;
    } else {
        dirtylimit_migration_release();
    }
    qemu_mutex_unlock_iothread();
    plan.quota_mb = quota_mb;
    plan.phase = DIRTYLIMIT_PLAN_DECIDED;
}

void dirtylimit_migration_progress(uint64_t link_rate)
{
    int64_t now = get_clock();

    plan.link_rate = link_rate;
    /*
     * The completion stage reports too (huge pages are rate-limited page
     * by page), with the BQL held and the guest stopped: nothing to plan.
     */
    if (plan.phase == DIRTYLIMIT_PLAN_DECIDED || !link_rate ||
        qemu_mutex_iothread_locked()) {
        return;
    }
    if (plan.phase == DIRTYLIMIT_PLAN_IDLE) {
        /* Past the first pass already (a tiny guest): leave it to stalls. */
        if (ram_counters.dirty_sync_count > 1) {
            plan.phase = DIRTYLIMIT_PLAN_DECIDED;
            return;
        }
        dirtylimit_migration_start_counting();
        return;
    }
    if (now - plan.count_start_ns >= DIRTYLIMIT_PLAN_COUNT_MS * SCALE_MS) {
        dirtylimit_migration_decide(now);
    }
}

bool dirtylimit_migration_sync_wanted(void)
{
    bool wanted = plan.sync_wanted;

    plan.sync_wanted = false;
    return wanted;
}

void dirtylimit_migration_stalled(void)
{
    uint64_t quota_mb = dirtylimit_migration_user_quota();

    if (!quota_mb && plan.quota_mb) {
        quota_mb = MAX(1, plan.quota_mb / 2);
    } else if (!quota_mb) {
        unsigned ncpus = 0;
        CPUState *cpu;

        CPU_FOREACH(cpu) {
            ncpus++;
        }
        quota_mb = MAX(1, dirtylimit_migration_allowed_rate() / MAX(1, ncpus) /
                          DIRTYLIMIT_BYTES_PER_MB);
    }
    trace_dirtylimit_migration_stalled(plan.quota_mb, quota_mb);
    dirtylimit_migration_engage(quota_mb, dirtylimit_migration_period_ms());
    if (!dirtylimit_migration_user_quota()) {
        plan.quota_mb = quota_mb;
    }
    plan.phase = DIRTYLIMIT_PLAN_DECIDED;
}

void dirtylimit_migration_end(void)
{
    dirtylimit_migration_release();
    if (plan.start_pages) {
        g_array_free(plan.start_pages, true);
    }
    memset(&plan, 0, sizeof(plan));
}
