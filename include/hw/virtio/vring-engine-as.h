/*
 * Ferry's vring engine over a QEMU AddressSpace
 *
 * The accessor (VRingMemOps) that lets the vring engine reach a device's
 * guest memory through its DMA AddressSpace.  The three ring areas are
 * MemoryRegionCaches set up once when the queue starts, so reading the
 * avail ring and the descriptor table, and writing the used ring, costs
 * no address translation; the used ring's writes are marked dirty (and,
 * under TCG, invalidate translated code) through the cache.  Everything
 * else (indirect tables, request buffers) is translated on each map,
 * accepted only when it is RAM the device may access directly (never a
 * bounce buffer: the engine does no I/O to MMIO), and holds a reference
 * on its MemoryRegion until unmapped, exactly as address_space_map()
 * does, so an element mapped here and one mapped by the virtio core are
 * unmapped the same way (address_space_unmap(): dirty logging included).
 *
 * A range that is not contiguous in host memory (two RAM regions meet in
 * it) maps short: the engine splits it.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VIRTIO_VRING_ENGINE_AS_H
#define HW_VIRTIO_VRING_ENGINE_AS_H

#include "exec/memory.h"
#include "hw/virtio/vring-engine.h"

typedef struct VRingASArea {
    uint64_t gpa;
    MemoryRegionCache cache;
} VRingASArea;

typedef struct VRingAS {
    AddressSpace *as;
    VRingASArea desc, avail, used;
} VRingAS;

extern const VRingMemOps vring_as_ops;

/*
 * Set up @mem for a split queue of @num entries at @desc, @avail, @used
 * in @as (the device's DMA address space).  Context: BQL held.
 */
void vring_as_init(VRingAS *mem, AddressSpace *as, unsigned int num,
                   uint64_t desc, uint64_t avail, uint64_t used);

/* Release the ring areas; every buffer must have been unmapped */
void vring_as_destroy(VRingAS *mem);

#endif
