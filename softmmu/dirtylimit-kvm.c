/*
 * vCPU dirty page rate limit: what the two KVM backends share
 *
 * Owns each vCPU's run-budget timer and the signal that makes a running
 * vCPU leave KVM_RUN to serve a penalty.  Both use SIG_IPI, which
 * interrupts KVM_RUN; qemu_cpu_kick() is not used: a kick marks the vCPU
 * wanted by the rest of QEMU, and it would take the BQL to return.
 *
 * The budget timer is aimed at the vCPU thread and armed there, on the
 * CPU that runs the vCPU, so it fires on time even when the host's other
 * CPUs are idle and slow to wake.  Only the vCPU thread arms, disarms or
 * tests it, so its state needs no lock.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "exec/memory.h"
#include "hw/core/cpu.h"
#include "dirtylimit-internal.h"
#include "dirtylimit-kvm.h"

#ifndef HAVE_SIGEV_NOTIFY_THREAD_ID
#define sigev_notify_thread_id _sigev_un._tid
#endif

typedef struct DirtyLimitKvmVcpu {
    timer_t timer;
    int tid;                        /* the timer signals it; 0: no timer */
    bool armed;
    int64_t end_ns;                 /* when it is due, if armed */
} DirtyLimitKvmVcpu;

static DirtyLimitKvmVcpu *dirtylimit_kvm_vcpus;

void dirtylimit_kvm_init(int max_cpus)
{
    dirtylimit_kvm_vcpus = g_new0(DirtyLimitKvmVcpu, max_cpus);
}

void dirtylimit_kvm_start(void)
{
    /* The dirty ring only records pages while dirty logging is on. */
    memory_global_dirty_log_start(GLOBAL_DIRTY_LIMIT);
}

void dirtylimit_kvm_stop(void)
{
    memory_global_dirty_log_stop(GLOBAL_DIRTY_LIMIT);
}

/* Aim @k's timer at the calling thread; false if it cannot be made. */
static bool dirtylimit_kvm_timer_here(DirtyLimitKvmVcpu *k)
{
    int tid = qemu_get_thread_id();
    struct sigevent sev = {
        .sigev_notify = SIGEV_THREAD_ID,
        .sigev_signo = SIG_IPI,
    };

    if (k->tid == tid) {
        return true;
    }
    if (k->tid) {
        timer_delete(k->timer);         /* another vCPU thread's */
        k->tid = 0;
    }
    sev.sigev_notify_thread_id = tid;
    if (timer_create(CLOCK_MONOTONIC, &sev, &k->timer)) {
        return false;
    }
    k->tid = tid;
    return true;
}

void dirtylimit_kvm_budget_arm(CPUState *cpu, int64_t ns)
{
    DirtyLimitKvmVcpu *k = &dirtylimit_kvm_vcpus[cpu->cpu_index];
    struct itimerspec its = { };

    /* A timer past its time has fired, whether or not it was served. */
    if ((k->armed && get_clock() < k->end_ns) ||
        !dirtylimit_kvm_timer_here(k)) {
        return;
    }
    its.it_value.tv_sec = ns / NANOSECONDS_PER_SECOND;
    its.it_value.tv_nsec = ns % NANOSECONDS_PER_SECOND;
    k->end_ns = get_clock() + ns;
    k->armed = !timer_settime(k->timer, 0, &its, NULL);
}

/* A timer firing while the vCPU sleeps would interrupt its next run. */
void dirtylimit_kvm_budget_disarm(CPUState *cpu)
{
    DirtyLimitKvmVcpu *k = &dirtylimit_kvm_vcpus[cpu->cpu_index];
    static const struct itimerspec off;

    if (k->armed) {
        k->armed = false;
        timer_settime(k->timer, 0, &off, NULL);
    }
}

bool dirtylimit_kvm_budget_expired(CPUState *cpu)
{
    DirtyLimitKvmVcpu *k = &dirtylimit_kvm_vcpus[cpu->cpu_index];

    if (!k->armed || get_clock() < k->end_ns) {
        return false;
    }
    k->armed = false;
    return true;
}

void dirtylimit_kvm_charge_running(CPUState *cpu)
{
    if (dirtylimit_vcpu_charge(cpu) > 0 && cpu != current_cpu) {
        dirtylimit_vcpu_owes(cpu);
        pthread_kill(cpu->thread->thread, SIG_IPI);
    }
}
