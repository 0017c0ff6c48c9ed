/*
 * KVM dirty ring: recovery from an overrun ring
 *
 * KVM reserves 64 entries of each vCPU's dirty ring past its soft limit and
 * relies on every vCPU noticing the soft-full request before it pushes
 * that many more.  Some hypervisors (PVM's batch instruction emulator)
 * check the request only after a batch, push past the end of the ring and
 * overwrite entries that userspace had not harvested.  KVM's reset index
 * then lags userspace's fetch index, the slot at the fetch index stays
 * empty, and every KVM_RUN exits with KVM_EXIT_DIRTY_RING_FULL while there
 * is nothing to collect: a livelock that a client following the rules
 * cannot leave.
 *
 * An overrun can also leave KVM's reset index on an empty slot in front
 * of entries userspace already collected (the ring wrapped over entries
 * that were collected but not yet reset, and KVM's reset stopped a lap
 * short).  Every slot is empty or collected, KVM_RESET_DIRTY_RINGS resets
 * nothing, and the ring stays full.  From the ring alone the stuck reset
 * index cannot be told from the free slots before it, so the empty slots
 * in front of the collected run are handed back one at a time, nearest
 * first, with a reset after each, until KVM moves: the slot that lets it
 * move is its reset index, and no slot KVM has yet to push is ever handed
 * back.
 *
 * The same stuck reset index also outlives an overrun that a harvest did
 * not notice: when the ring wraps over entries nobody harvested, the next
 * harvest collects the new entries in their place and KVM resets a whole
 * lap, up to the overwritten slots, which it still counts as pushed.
 * Every later reset stops there, so harvesting frees nothing until the
 * ring is full again, and with PVM's overshoot each lap overruns anew: the
 * vCPU exits ring-full once per lap however often it is harvested.  A
 * reset that frees fewer entries than were just collected reveals it.
 *
 * These helpers work on one ring at a time; the vCPU may be running, as
 * KVM pushes entries in order and a run is only skipped when the slot at
 * the fetch index is still empty after a later slot was seen dirty, and
 * the slots handed back to a stuck reset index lie behind the fetch index,
 * where KVM pushes again only a whole lap later.  They
 * do not touch KVM or QEMU state, so the walk can be unit-tested over a
 * fake ring; the caller (accel/kvm/kvm-all.c) resets the ring and,
 * because the skipped entries named pages that were dirtied, marks all
 * guest memory dirty.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "sysemu/kvm-dirty-ring.h"

static uint32_t gfn_flags(struct kvm_dirty_gfn *gfn)
{
    /* Pairs with the store-release in KVM's kvm_dirty_ring_push(). */
    return qatomic_load_acquire(&gfn->flags);
}

uint32_t kvm_dirty_ring_skip_lost(struct kvm_dirty_gfn *gfns, uint32_t size,
                                  uint32_t fetch)
{
    uint32_t distance, i;

    if (gfn_flags(&gfns[fetch & (size - 1)]) & KVM_DIRTY_GFN_F_DIRTY) {
        return 0;
    }
    for (distance = 1; distance < size; distance++) {
        uint32_t flags = gfn_flags(&gfns[(fetch + distance) & (size - 1)]);

        if (flags & KVM_DIRTY_GFN_F_DIRTY) {
            break;
        }
    }
    /*
     * KVM publishes entries in order: if the slot at the fetch index is
     * dirty now, it was merely pushed while we looked (a running vCPU),
     * and the ring is consistent.
     */
    if (distance == size ||
        gfn_flags(&gfns[fetch & (size - 1)]) & KVM_DIRTY_GFN_F_DIRTY) {
        return 0;
    }
    for (i = 0; i < distance; i++) {
        qatomic_store_release(&gfns[(fetch + i) & (size - 1)].flags,
                              KVM_DIRTY_GFN_F_RESET);
    }
    return distance;
}

/*
 * Find the collected slot nearest at or after @fetch that follows an
 * empty one: the start of the run KVM's reset is stuck in front of.
 */
static bool kvm_dirty_ring_find_stuck_run(struct kvm_dirty_gfn *gfns,
                                          uint32_t size, uint32_t fetch,
                                          uint32_t *start)
{
    uint32_t i;

    for (i = 0; i < size; i++) {
        uint32_t at = fetch + i;

        if (gfn_flags(&gfns[at & (size - 1)]) == KVM_DIRTY_GFN_F_RESET &&
            !gfn_flags(&gfns[(at - 1) & (size - 1)])) {
            *start = at;
            return true;
        }
    }
    return false;
}

uint32_t kvm_dirty_ring_unstick_reset(struct kvm_dirty_gfn *gfns,
                                      uint32_t size, uint32_t fetch,
                                      void (*reset)(void *opaque),
                                      void *opaque)
{
    uint32_t handed = 0, start;

    reset(opaque);
    if (!kvm_dirty_ring_find_stuck_run(gfns, size, fetch, &start)) {
        return 0;
    }
    while (handed < size - 1 &&
           gfn_flags(&gfns[start & (size - 1)]) == KVM_DIRTY_GFN_F_RESET) {
        struct kvm_dirty_gfn *gfn = &gfns[(start - handed - 1) & (size - 1)];

        /* A slot that KVM pushes meanwhile is not handed back. */
        if (qatomic_cmpxchg(&gfn->flags, 0, KVM_DIRTY_GFN_F_RESET)) {
            break;
        }
        handed++;
        reset(opaque);
    }
    return handed;
}

void kvm_dirty_ring_census(struct kvm_dirty_gfn *gfns, uint32_t size,
                           uint32_t *dirty, uint32_t *collected)
{
    uint32_t i;

    *dirty = *collected = 0;
    for (i = 0; i < size; i++) {
        uint32_t flags = gfn_flags(&gfns[i]);

        *dirty += !!(flags & KVM_DIRTY_GFN_F_DIRTY);
        *collected += !!(flags & KVM_DIRTY_GFN_F_RESET);
    }
}
