/*
 * KVM dirty ring: recovery from an overrun ring
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef SYSEMU_KVM_DIRTY_RING_H
#define SYSEMU_KVM_DIRTY_RING_H

#include <linux/kvm.h>

/**
 * kvm_dirty_ring_skip_lost: step over the entries an overrun ring lost
 * @gfns: a vCPU's dirty ring (its vCPU may be running: KVM pushes in
 *        order, so an empty slot followed by a dirty one is only seen on
 *        an overrun ring)
 * @size: number of entries in the ring (a power of two)
 * @fetch: userspace's fetch index into the ring
 *
 * When the slot at @fetch is empty but a dirty slot follows it, KVM pushed
 * more entries than the ring holds and its reset index fell behind: the
 * empty run can never be harvested, so KVM keeps reporting the ring full.
 * Mark the empty run collected so that KVM_RESET_DIRTY_RINGS moves past it.
 *
 * Returns the number of entries skipped (the entries the overrun lost), or
 * 0 when the ring is consistent.
 */
uint32_t kvm_dirty_ring_skip_lost(struct kvm_dirty_gfn *gfns, uint32_t size,
                                  uint32_t fetch);

/**
 * kvm_dirty_ring_unstick_reset: move KVM's reset index past the empty
 * slots an overrun left behind the collected run
 * @gfns: a vCPU's dirty ring, just harvested (its vCPU may be running)
 * @size: number of entries in the ring
 * @fetch: userspace's fetch index
 * @reset: issues KVM_RESET_DIRTY_RINGS
 * @opaque: passed to @reset
 *
 * Called when a full ring has nothing to harvest and no lost run at
 * @fetch, or when a reset freed fewer entries than were collected.
 * Resets the rings; if a collected run, nearest at or after
 * @fetch, still follows an empty slot, KVM's reset index is stuck in the
 * empty run in front of it: hands those empty slots back as collected,
 * nearest first, resetting after each, until the run is reset.  The first
 * slot that lets KVM move is its reset index, so no slot beyond it is
 * ever handed back.
 *
 * Returns the number of slots handed back (entries the overrun lost).
 */
uint32_t kvm_dirty_ring_unstick_reset(struct kvm_dirty_gfn *gfns,
                                      uint32_t size, uint32_t fetch,
                                      void (*reset)(void *opaque),
                                      void *opaque);

/**
 * kvm_dirty_ring_census: count a ring's slots by state, for diagnostics
 * @gfns: the ring
 * @size: number of entries
 * @dirty: set to the number of dirty (unharvested) slots
 * @collected: set to the number of slots harvested but not yet reset
 */
void kvm_dirty_ring_census(struct kvm_dirty_gfn *gfns, uint32_t size,
                           uint32_t *dirty, uint32_t *collected);

/**
 * kvm_dirty_ring_reap_vcpu: harvest @cpu's dirty ring into the KVM slots'
 * dirty bitmaps and reset it, counting the pages in @cpu->dirty_pages.
 * Safe from any thread while the vCPU runs; takes the KVM slots lock,
 * not the BQL.  Implemented in accel/kvm/kvm-all.c.
 *
 * Returns the number of pages harvested.
 */
uint64_t kvm_dirty_ring_reap_vcpu(CPUState *cpu);

/**
 * kvm_dirty_log_harvest: without a dirty ring, fetch the KVM dirty log of
 * every logging slot into QEMU's dirty bitmaps and start the log afresh
 * (with manual protection, by clearing what was fetched).  Safe from any
 * thread; takes the KVM slots lock, not the BQL.  Implemented in
 * accel/kvm/kvm-all.c.
 *
 * Returns the number of pages dirtied since the previous harvest, or 0
 * when the dirty ring is in use.
 */
uint64_t kvm_dirty_log_harvest(void);

#endif
