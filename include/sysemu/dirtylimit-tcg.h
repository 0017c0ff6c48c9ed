/*
 * vCPU dirty page rate limit under TCG: the hooks in TCG's write path
 *
 * What accel/tcg/cputlb.c and migration/dirtyrate.c call in
 * softmmu/dirtylimit-tcg.c, which counts each vCPU's first write to a
 * page per epoch; the dirty limit itself reaches that file through its
 * backend table.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef SYSEMU_DIRTYLIMIT_TCG_H
#define SYSEMU_DIRTYLIMIT_TCG_H

#include "exec/cpu-common.h"
#include "hw/core/cpu.h"

/*
 * By cpu_index, nonzero while that vCPU's writes are counted (it is
 * limited, or calc-dirty-rate measures); NULL until counting first
 * starts.  Kept by softmmu/dirtylimit-tcg.c, refreshed every epoch.  It
 * is here only for dirtylimit_tcg_write_trapped(), which every TLB fill
 * of a writable page calls: a vCPU that is not counted pays one load.
 */
extern uint8_t *dirtylimit_tcg_counted;

/**
 * dirtylimit_tcg_page_armed: true when the page at @addr has not been
 * counted yet in this epoch.
 */
bool dirtylimit_tcg_page_armed(ram_addr_t addr);

/**
 * dirtylimit_tcg_write_trapped: true when @cpu's next write to the page
 * at @addr must be counted, so its TLB entry needs TLB_NOTDIRTY.  Called
 * by accel/tcg/cputlb.c when it maps a RAM page for writing.
 */
static inline bool dirtylimit_tcg_write_trapped(CPUState *cpu,
                                                ram_addr_t addr)
{
    uint8_t *counted = qatomic_read(&dirtylimit_tcg_counted);

    return counted && qatomic_read(&counted[cpu->cpu_index]) &&
           dirtylimit_tcg_page_armed(addr);
}

/**
 * dirtylimit_tcg_note_write: count @cpu's write to the page at @addr if
 * it is the vCPU's first to it this epoch, charge the vCPU whenever it
 * has dirtied a slice of its quota, and make it leave the TB loop when it
 * then owes a penalty.  Called by
 * accel/tcg/cputlb.c's slow path for writes to TLB_NOTDIRTY pages, in
 * the vCPU thread, within cpu_exec().
 */
void dirtylimit_tcg_note_write(CPUState *cpu, ram_addr_t addr);

/**
 * dirtylimit_tcg_measure_start: count every vCPU's writes for
 * calc-dirty-rate (called without the BQL, which it takes): each vCPU's
 * pages newly dirtied per epoch in CPUState::dirty_pages, as a dirty ring
 * harvested every epoch would, and the pages written at least once until
 * dirtylimit_tcg_measure_stop(), as a dirty bitmap would.  The epochs are
 * the dirty limit controller's while it runs, so a limited vCPU is counted
 * and charged as before, and 1 ms ones started by a thread of the
 * measurement otherwise.
 */
void dirtylimit_tcg_measure_start(void);

/**
 * dirtylimit_tcg_measure_stop: end the measurement (called without the
 * BQL, which it takes) and return the number of pages written at least
 * once since it started.
 */
uint64_t dirtylimit_tcg_measure_stop(void);

#endif
