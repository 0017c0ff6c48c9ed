/*
 * vCPU dirty page rate limit ("dirty limit")
 *
 * What the rest of QEMU calls: the vCPU loops of accel/kvm and accel/tcg
 * (dirtylimit_vcpu_execute(), dirtylimit_vcpu_serve_signal()), the
 * migration core and its statistics, and migration/dirtyrate.c.  The
 * QMP and HMP commands are declared by the generated QAPI headers and
 * monitor/hmp.h; TCG's write-path hooks by sysemu/dirtylimit-tcg.h.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef SYSEMU_DIRTYLIMIT_H
#define SYSEMU_DIRTYLIMIT_H

/**
 * dirtylimit_in_service: true while any vCPU has a dirty page rate limit.
 * Cheap enough for every KVM_RUN.
 */
bool dirtylimit_in_service(void);

/**
 * dirtylimit_supported: true when vCPU dirty rates can be limited: under
 * multi-threaded TCG, or under KVM (dirty ring or dirty bitmap).
 */
bool dirtylimit_supported(void);

/**
 * dirtylimit_vcpu_execute: charge @cpu for the pages it dirtied since its
 * last charge and sleep the penalty its controller prescribes.  Called
 * by the vCPU thread before entering the guest, without the BQL.  Returns
 * early when the vCPU is asked to stop or to run queued work.
 */
void dirtylimit_vcpu_execute(CPUState *cpu);

/**
 * dirtylimit_vcpu_serve_signal: called by a vCPU thread when KVM_RUN was
 * interrupted by a signal, or TCG's loop by cpu_exit().  If the dirty
 * limit asked for it, and nothing else wants the vCPU, sleep the penalty
 * it owes and return true: the vCPU goes straight back into the guest,
 * without the BQL.  Otherwise return false and let the vCPU leave as
 * usual.
 */
bool dirtylimit_vcpu_serve_signal(CPUState *cpu);

/*
 * The migration's plan for the dirty limit (softmmu/dirtylimit-migration.c),
 * called by the migration core while the dirty-limit capability is on.
 */

/**
 * dirtylimit_migration_progress: the migration thread's report, about
 * every 100 ms, that it sends at @link_rate bytes/s.  In the first pass
 * this measures the guest and, as soon as the measurement shows that
 * the migration cannot finish within 1.5 passes, limits the vCPUs.
 * Called without the BQL; takes it to act.
 */
void dirtylimit_migration_progress(uint64_t link_rate);

/**
 * dirtylimit_migration_sync_wanted: true, once, after the plan limited the
 * vCPUs in the middle of a pass: the migration should sync its dirty
 * bitmap now, so that pages the guest dirtied at full speed before are
 * resent only if they were already sent.  Migration thread.
 */
bool dirtylimit_migration_sync_wanted(void);

/**
 * dirtylimit_migration_stalled: two bitmap syncs in a row showed that the
 * guest dirties faster than the migration sends (auto-converge's
 * trigger): limit the vCPUs if the plan did not, or halve the quota it
 * chose.  A vcpu-dirty-limit set by the user is used as it is.  BQL held.
 */
void dirtylimit_migration_stalled(void);

/**
 * dirtylimit_migration_end: the migration completed, failed or was
 * cancelled: remove every limit it set and forget its plan.  BQL held.
 */
void dirtylimit_migration_end(void);

/**
 * dirtylimit_throttle_time_per_round: the longest penalty (us) a vCPU
 * slept in the last feedback period.
 */
uint64_t dirtylimit_throttle_time_per_round(void);

/**
 * dirtylimit_ring_full_time: how long (us) a dirty ring takes to fill at
 * the limited vCPUs' average measured dirty rate; 0 when they dirty
 * nothing.
 */
uint64_t dirtylimit_ring_full_time(void);

#endif
