/*
 * Ferry's vring engine over a QEMU AddressSpace
 *
 * See include/hw/virtio/vring-engine-as.h.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/rcu.h"
#include "exec/memory.h"
#include "hw/virtio/vring-engine-as.h"

static void vring_as_area_init(VRingASArea *area, AddressSpace *as,
                               uint64_t gpa, uint64_t len, bool is_write)
{
    area->gpa = gpa;
    /*
     * Not RAM leaves the cache without a pointer; a boundary in the area
     * leaves it short, serving the area's first part: the rest maps
     * through vring_as_map_ram(), which refuses what is not RAM.
     */
    address_space_cache_init(&area->cache, as, gpa, len, is_write);
}

void vring_as_init(VRingAS *mem, AddressSpace *as, unsigned int num,
                   uint64_t desc, uint64_t avail, uint64_t used)
{
    mem->as = as;
    /* virtio 1.1 2.6: the areas' sizes, with the event index fields */
    vring_as_area_init(&mem->desc, as, desc, 16 * (uint64_t)num, false);
    vring_as_area_init(&mem->avail, as, avail, 6 + 2 * (uint64_t)num, false);
    vring_as_area_init(&mem->used, as, used, 6 + 8 * (uint64_t)num, true);
}

void vring_as_destroy(VRingAS *mem)
{
    address_space_cache_destroy(&mem->desc.cache);
    address_space_cache_destroy(&mem->avail.cache);
    address_space_cache_destroy(&mem->used.cache);
}

/* The host pointer for @gpa in @area's cache, or NULL when outside it */
static void *vring_as_area_ptr(VRingASArea *area, uint64_t gpa,
                               uint64_t *plen, bool is_write)
{
    uint64_t off = gpa - area->gpa;

    if (!area->cache.ptr || off >= area->cache.len ||
        (is_write && !area->cache.is_write)) {
        return NULL;
    }
    *plen = MIN(*plen, area->cache.len - off);
    return (uint8_t *)area->cache.ptr + off;
}

static VRingASArea *vring_as_area_of_host(VRingAS *mem, void *host)
{
    VRingASArea *areas[] = { &mem->desc, &mem->avail, &mem->used };
    int i;

    for (i = 0; i < ARRAY_SIZE(areas); i++) {
        uint8_t *p = areas[i]->cache.ptr;

        if (p && (uint8_t *)host >= p && (uint8_t *)host < p +
            areas[i]->cache.len) {
            return areas[i];
        }
    }
    return NULL;
}

/*
 * Translate and reference like address_space_map(), but only RAM the
 * device may access directly, one MemoryRegion at a time.
 */
static void *vring_as_map_ram(VRingAS *mem, uint64_t gpa, uint64_t *plen,
                              bool is_write)
{
    hwaddr xlat, l = *plen;
    MemoryRegion *mr;
    void *host;

    RCU_READ_LOCK_GUARD();
    mr = address_space_translate(mem->as, gpa, &xlat, &l, is_write,
                                 MEMTXATTRS_UNSPECIFIED);
    if (!l || !memory_access_is_direct(mr, is_write)) {
        return NULL;
    }
    host = qemu_map_ram_ptr(mr->ram_block, xlat);
    /*
     * The same RAM reached at another address (an alias) inside a ring
     * area: the area's cache holds it, and unmap will find it there.
     */
    if (!vring_as_area_of_host(mem, host)) {
        memory_region_ref(mr);
    }
    *plen = l;
    return host;
}

static void *vring_as_map(void *opaque, uint64_t gpa, uint64_t *plen,
                          bool is_write)
{
    VRingAS *mem = opaque;
    void *host;

    host = vring_as_area_ptr(&mem->avail, gpa, plen, is_write);
    if (!host) {
        host = vring_as_area_ptr(&mem->desc, gpa, plen, is_write);
    }
    if (!host) {
        host = vring_as_area_ptr(&mem->used, gpa, plen, is_write);
    }
    return host ? host : vring_as_map_ram(mem, gpa, plen, is_write);
}

static void vring_as_unmap(void *opaque, void *host, uint64_t len,
                           bool is_write, uint64_t access_len)
{
    VRingAS *mem = opaque;
    VRingASArea *area = vring_as_area_of_host(mem, host);

    if (!area) {
        address_space_unmap(mem->as, host, len, is_write, access_len);
    } else if (is_write && access_len) {
        address_space_cache_invalidate(&area->cache,
                                       (uint8_t *)host -
                                       (uint8_t *)area->cache.ptr,
                                       access_len);
    }
}

const VRingMemOps vring_as_ops = {
    .map = vring_as_map,
    .unmap = vring_as_unmap,
};
