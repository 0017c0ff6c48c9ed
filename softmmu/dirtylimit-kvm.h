/*
 * vCPU dirty page rate limit: what the two KVM backends share
 *
 * Both KVM backends (softmmu/dirtylimit-ring.c, softmmu/dirtylimit-log.c)
 * learn what a vCPU dirtied only when they harvest, so both run a limited
 * vCPU on a run budget (a timer that interrupts KVM_RUN), and both make a
 * running vCPU leave KVM_RUN with SIG_IPI to serve a penalty.  This is
 * that shared part, in softmmu/dirtylimit-kvm.c.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef SOFTMMU_DIRTYLIMIT_KVM_H
#define SOFTMMU_DIRTYLIMIT_KVM_H

/* Allocate the run budgets' state for @max_cpus vCPUs, once. */
void dirtylimit_kvm_init(int max_cpus);

/* Start or stop KVM's dirty tracking for the dirty limit (BQL held). */
void dirtylimit_kvm_start(void);
void dirtylimit_kvm_stop(void);

/* DirtyLimitBackend's budget_* operations; vCPU thread only. */
void dirtylimit_kvm_budget_arm(CPUState *cpu, int64_t ns);
void dirtylimit_kvm_budget_disarm(CPUState *cpu);
bool dirtylimit_kvm_budget_expired(CPUState *cpu);

/*
 * Charge a running limited vCPU, and signal it if it owes a penalty (not
 * the vCPU charging itself: it serves next).
 */
void dirtylimit_kvm_charge_running(CPUState *cpu);

#endif
