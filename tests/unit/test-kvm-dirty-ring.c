/*
 * Unit tests of the overrun dirty-ring recovery (accel/kvm/kvm-dirty-ring.c)
 *
 * The rings are plain arrays laid out as KVM lays them out, in the states
 * KVM leaves them in: consistent rings must never be touched, and an
 * overrun ring must have exactly its empty run at the fetch index handed
 * back as collected.  A fake KVM reset index (the kernel's
 * kvm_dirty_ring_reset() loop) checks that a stuck reset is moved on,
 * whether the harvest behind it ended at a full ring or while the vCPU
 * goes on pushing, without ever handing back a slot beyond it.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "sysemu/kvm-dirty-ring.h"

#define RING_SIZE 64

static struct kvm_dirty_gfn ring[RING_SIZE];

static void fill(uint32_t from, uint32_t count, uint32_t flags)
{
    for (uint32_t i = 0; i < count; i++) {
        ring[(from + i) % RING_SIZE].flags = flags;
        ring[(from + i) % RING_SIZE].offset = from + i;
    }
}

static void test_consistent_ring_untouched(void)
{
    memset(ring, 0, sizeof(ring));
    fill(10, 20, KVM_DIRTY_GFN_F_DIRTY);
    g_assert_cmpuint(kvm_dirty_ring_skip_lost(ring, RING_SIZE, 10), ==, 0);
    g_assert_cmpuint(ring[10].flags, ==, KVM_DIRTY_GFN_F_DIRTY);
}

static void test_empty_ring_untouched(void)
{
    uint32_t dirty, collected;

    memset(ring, 0, sizeof(ring));
    g_assert_cmpuint(kvm_dirty_ring_skip_lost(ring, RING_SIZE, 5), ==, 0);
    kvm_dirty_ring_census(ring, RING_SIZE, &dirty, &collected);
    g_assert_cmpuint(dirty, ==, 0);
    g_assert_cmpuint(collected, ==, 0);
}

static void test_lost_run_is_skipped(void)
{
    uint32_t dirty, collected;

    memset(ring, 0, sizeof(ring));
    /* fetch at 40: 7 slots lost, then dirty entries wrapping the end */
    fill(47, 50, KVM_DIRTY_GFN_F_DIRTY);
    g_assert_cmpuint(kvm_dirty_ring_skip_lost(ring, RING_SIZE, 40), ==, 7);
    for (uint32_t i = 40; i < 47; i++) {
        g_assert_cmpuint(ring[i].flags, ==, KVM_DIRTY_GFN_F_RESET);
    }
    kvm_dirty_ring_census(ring, RING_SIZE, &dirty, &collected);
    g_assert_cmpuint(dirty, ==, 50);
    g_assert_cmpuint(collected, ==, 7);
}

static void test_fetch_index_wraps(void)
{
    memset(ring, 0, sizeof(ring));
    /* fetch index far past the ring size, lost run crossing the end */
    fill(3, 4, KVM_DIRTY_GFN_F_DIRTY);
    g_assert_cmpuint(kvm_dirty_ring_skip_lost(ring, RING_SIZE,
                                              100 * RING_SIZE + 60), ==, 7);
    g_assert_cmpuint(ring[63].flags, ==, KVM_DIRTY_GFN_F_RESET);
    g_assert_cmpuint(ring[0].flags, ==, KVM_DIRTY_GFN_F_RESET);
    g_assert_cmpuint(ring[3].flags, ==, KVM_DIRTY_GFN_F_DIRTY);
}

static void test_collected_slots_are_not_dirty(void)
{
    memset(ring, 0, sizeof(ring));
    /* harvested-but-not-reset slots ahead do not count as dirty */
    fill(20, 10, KVM_DIRTY_GFN_F_RESET);
    g_assert_cmpuint(kvm_dirty_ring_skip_lost(ring, RING_SIZE, 15), ==, 0);
    fill(30, 1, KVM_DIRTY_GFN_F_DIRTY);
    g_assert_cmpuint(kvm_dirty_ring_skip_lost(ring, RING_SIZE, 15), ==, 15);
}

/* KVM's reset: reset collected slots from the reset index on. */
static uint32_t kvm_reset_index;

static void fake_kvm_reset(void *opaque)
{
    struct kvm_dirty_gfn *gfn;

    for (;;) {
        gfn = &ring[kvm_reset_index % RING_SIZE];
        if (gfn->flags != KVM_DIRTY_GFN_F_RESET) {
            return;
        }
        gfn->flags = 0;
        kvm_reset_index++;
    }
}

static void test_stuck_reset_is_moved_on(void)
{
    uint32_t i;

    memset(ring, 0, sizeof(ring));
    /* reset index 10, 5 entries lost at 10..14, collected 15..60 */
    kvm_reset_index = 10;
    fill(15, 46, KVM_DIRTY_GFN_F_RESET);
    g_assert_cmpuint(kvm_dirty_ring_unstick_reset(ring, RING_SIZE, 61,
                                                  fake_kvm_reset, NULL),
                     ==, 5);
    g_assert_cmpuint(kvm_reset_index, ==, 61);
    for (i = 0; i < RING_SIZE; i++) {
        g_assert_cmpuint(ring[i].flags, ==, 0);
    }
}

static void test_stuck_reset_behind_running_vcpu(void)
{
    uint32_t i;

    /*
     * As traced on PVM after an unnoticed overrun: KVM reset a whole lap
     * and stopped at 10, on 13 slots it had emptied itself; the harvest
     * since collected 23..40 and the running vCPU has pushed 41..45.
     */
    memset(ring, 0, sizeof(ring));
    kvm_reset_index = 10;
    fill(23, 18, KVM_DIRTY_GFN_F_RESET);
    fill(41, 5, KVM_DIRTY_GFN_F_DIRTY);
    g_assert_cmpuint(kvm_dirty_ring_unstick_reset(ring, RING_SIZE, 41,
                                                  fake_kvm_reset, NULL),
                     ==, 13);
    g_assert_cmpuint(kvm_reset_index, ==, 41);
    for (i = 41; i < 46; i++) {
        g_assert_cmpuint(ring[i].flags, ==, KVM_DIRTY_GFN_F_DIRTY);
    }
}

static void test_stuck_reset_wraps(void)
{
    memset(ring, 0, sizeof(ring));
    /* fetch index past several laps; lost run 62..1, collected 2..39 */
    kvm_reset_index = 7 * RING_SIZE + 62;
    fill(2, 38, KVM_DIRTY_GFN_F_RESET);
    g_assert_cmpuint(kvm_dirty_ring_unstick_reset(ring, RING_SIZE,
                                                  8 * RING_SIZE + 40,
                                                  fake_kvm_reset, NULL),
                     ==, 4);
    g_assert_cmpuint(kvm_reset_index, ==, 8 * RING_SIZE + 40);
}

static void test_stuck_reset_ahead_of_fetch(void)
{
    /*
     * As seen on PVM: from the fetch index, 3 empty slots (KVM stuck at
     * the second), 44 collected, then 17 empty up to the fetch index.
     */
    memset(ring, 0, sizeof(ring));
    kvm_reset_index = 11;
    fill(13, 44, KVM_DIRTY_GFN_F_RESET);
    g_assert_cmpuint(kvm_dirty_ring_unstick_reset(ring, RING_SIZE, 10,
                                                  fake_kvm_reset, NULL),
                     ==, 2);
    g_assert_cmpuint(kvm_reset_index, ==, 57);
    g_assert_cmpuint(ring[10].flags, ==, 0);
}

static void test_pending_reset_needs_no_hand_back(void)
{
    memset(ring, 0, sizeof(ring));
    /* a consistent ring whose collected slots KVM has not reset yet */
    kvm_reset_index = 20;
    fill(20, 10, KVM_DIRTY_GFN_F_RESET);
    g_assert_cmpuint(kvm_dirty_ring_unstick_reset(ring, RING_SIZE, 30,
                                                  fake_kvm_reset, NULL),
                     ==, 0);
    g_assert_cmpuint(kvm_reset_index, ==, 30);
    /* ... and an empty consistent ring is left alone */
    g_assert_cmpuint(kvm_dirty_ring_unstick_reset(ring, RING_SIZE, 30,
                                                  fake_kvm_reset, NULL),
                     ==, 0);
    g_assert_cmpuint(kvm_reset_index, ==, 30);
}

static void test_stuck_behind_dirty_slot_gives_up(void)
{
    memset(ring, 0, sizeof(ring));
    /* a dirty slot behind the collected run: not an overrun to undo */
    kvm_reset_index = 10;
    fill(10, 1, KVM_DIRTY_GFN_F_DIRTY);
    fill(11, 9, KVM_DIRTY_GFN_F_RESET);
    g_assert_cmpuint(kvm_dirty_ring_unstick_reset(ring, RING_SIZE, 20,
                                                  fake_kvm_reset, NULL),
                     ==, 0);
    g_assert_cmpuint(ring[10].flags, ==, KVM_DIRTY_GFN_F_DIRTY);
    g_assert_cmpuint(kvm_reset_index, ==, 10);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/kvm/dirty-ring/consistent-ring-untouched",
                    test_consistent_ring_untouched);
    g_test_add_func("/kvm/dirty-ring/empty-ring-untouched",
                    test_empty_ring_untouched);
    g_test_add_func("/kvm/dirty-ring/lost-run-skipped",
                    test_lost_run_is_skipped);
    g_test_add_func("/kvm/dirty-ring/fetch-index-wraps",
                    test_fetch_index_wraps);
    g_test_add_func("/kvm/dirty-ring/collected-slots-not-dirty",
                    test_collected_slots_are_not_dirty);
    g_test_add_func("/kvm/dirty-ring/stuck-reset-moved-on",
                    test_stuck_reset_is_moved_on);
    g_test_add_func("/kvm/dirty-ring/stuck-reset-behind-running-vcpu",
                    test_stuck_reset_behind_running_vcpu);
    g_test_add_func("/kvm/dirty-ring/stuck-reset-wraps",
                    test_stuck_reset_wraps);
    g_test_add_func("/kvm/dirty-ring/stuck-reset-ahead-of-fetch",
                    test_stuck_reset_ahead_of_fetch);
    g_test_add_func("/kvm/dirty-ring/pending-reset-no-hand-back",
                    test_pending_reset_needs_no_hand_back);
    g_test_add_func("/kvm/dirty-ring/stuck-behind-dirty-gives-up",
                    test_stuck_behind_dirty_slot_gives_up);
    return g_test_run();
}
