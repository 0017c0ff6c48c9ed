/*
 * vCPU dirty page rate limit: the KVM dirty ring backend
 *
 * With a dirty ring (-accel kvm,dirty-ring-size=N) each vCPU's dirty
 * pages are its own.  Every few milliseconds the controller thread
 * harvests each limited vCPU's ring while the vCPU runs
 * (kvm_dirty_ring_reap_vcpu() counts the pages in CPUState::dirty_pages),
 * so rings are harvested long before they fill; a ring that overflows
 * anyway is recovered by accel/kvm/kvm-all.c.  The harvested pages are
 * charged to the vCPU, which is signalled only when it owes a penalty.
 * Pages a vCPU harvests itself at a ring-full exit are charged by
 * dirtylimit_vcpu_execute() before it re-enters; a vCPU whose run budget
 * ran out harvests its own ring (softmmu/dirtylimit-kvm.c).
 *
 * No state of its own: the ring is KVM's, the budget timers are
 * softmmu/dirtylimit-kvm.c's.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/rcu.h"
#include "hw/core/cpu.h"
#include "sysemu/kvm.h"
#include "sysemu/kvm-dirty-ring.h"
#include "dirtylimit-internal.h"
#include "dirtylimit-kvm.h"

static bool dirtylimit_ring_usable(Error **errp)
{
    return kvm_enabled() && kvm_dirty_ring_enabled();
}

/*
 * Well before a vCPU at full speed fills half its ring (0.65 M pages/s
 * fill 4096 entries in about 6 ms).
 */
static int64_t dirtylimit_ring_harvest_interval_us(void)
{
    return MAX(500, MIN(5000, kvm_dirty_ring_size() / 2));
}

/* Harvest every limited vCPU's ring and charge it, from this thread. */
static void dirtylimit_ring_harvest(void)
{
    CPUState *cpu;

    WITH_RCU_READ_LOCK_GUARD() {
        CPU_FOREACH(cpu) {
            if (dirtylimit_vcpu_running(cpu)) {
                kvm_dirty_ring_reap_vcpu(cpu);
                dirtylimit_kvm_charge_running(cpu);
            }
        }
    }
}

/* The vCPU's ring is its own: it harvests it as the thread would. */
static void dirtylimit_ring_harvest_self(CPUState *cpu)
{
    kvm_dirty_ring_reap_vcpu(cpu);
    dirtylimit_vcpu_charge(cpu);
}

static const DirtyLimitBackend dirtylimit_ring = {
    .name = "kvm-dirty-ring",
    .usable = dirtylimit_ring_usable,
    .init = dirtylimit_kvm_init,
    .start = dirtylimit_kvm_start,
    .stop = dirtylimit_kvm_stop,
    .harvest_interval_us = dirtylimit_ring_harvest_interval_us,
    .harvest = dirtylimit_ring_harvest,
    .harvest_self = dirtylimit_ring_harvest_self,
    .budget_arm = dirtylimit_kvm_budget_arm,
    .budget_disarm = dirtylimit_kvm_budget_disarm,
    .budget_expired = dirtylimit_kvm_budget_expired,
    .ring_size = kvm_dirty_ring_size,
};

static void __attribute__((constructor)) dirtylimit_ring_register(void)
{
    dirtylimit_backend_register(&dirtylimit_ring);
}
