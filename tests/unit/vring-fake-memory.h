/*
 * A fake guest memory and a tiny driver side for Ferry's vring engine
 *
 * Shared by the unit test (tests/unit/test-vring-engine.c) and the fuzz
 * target (tests/fuzz/vring-walk-fuzz.c); this header is its whole
 * interface.
 *
 * Guest RAM is NREGIONS regions of REGION_SIZE bytes at region_base[],
 * each its own g_malloc block with GUARD bytes of GUARD_BYTE around it
 * (which must never change), so that a range crossing two regions that
 * are adjacent in the guest (0 and 1) is not contiguous in host memory.
 * fake_ops is the engine's accessor over a FakeMem (its opaque): map
 * returns short lengths at region ends (or every m->chunk bytes when
 * set) and NULL outside the regions; unmap checks that the range lies in
 * one region and marks its first access_len bytes dirty (one byte per
 * guest byte in m->dirty[]).  m->mapped counts maps not yet unmapped,
 * m->maps every map.
 *
 * The driver side reads and writes guest memory directly (split at
 * region ends), in the ring's byte order (m->big_endian), and makes
 * chains available on the avail ring of m->num entries at m->avail.
 * When m->lenient is set (the fuzzer, whose rings may lie partly outside
 * RAM), driver writes outside RAM are dropped; otherwise they, like every
 * other failed check here, are a g_assert() failure.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef TESTS_UNIT_VRING_FAKE_MEMORY_H
#define TESTS_UNIT_VRING_FAKE_MEMORY_H

#include "hw/virtio/vring-engine.h"

#define GUARD       256
#define GUARD_BYTE  0xa5
#define NREGIONS    3
#define REGION_SIZE 0x10000

/* RAM: [0, 64K) and [64K, 128K) adjacent in guest, apart in host; 1M.. */
extern const uint64_t region_base[NREGIONS];

typedef struct FakeMem {
    uint8_t *block[NREGIONS];   /* GUARD, REGION_SIZE bytes, GUARD */
    uint8_t *dirty[NREGIONS];   /* one byte per guest byte */
    uint64_t chunk;             /* largest length a map returns, 0: none */
    int mapped;                 /* maps not yet unmapped */
    uint64_t maps;              /* maps so far */
    bool lenient;               /* drop driver writes outside RAM */
    bool big_endian;            /* the driver's ring layout */
    unsigned int num;           /* the driver's queue size */
    uint64_t avail;             /* the driver's avail ring */
    uint16_t avail_idx;         /* the driver's */
} FakeMem;

extern const VRingMemOps fake_ops;

/* Allocate and clear @m's regions, for a driver of @num entries */
void mem_init(FakeMem *m, unsigned int num, uint64_t avail);
/* Whether every guard byte is intact */
bool mem_guards_intact(FakeMem *m);
/* Check that nothing is mapped and the guards are intact, then free */
void mem_free(FakeMem *m);

/*
 * The host address of guest @gpa, with the bytes left in its region in
 * *@avail and the region in *@reg; NULL when @gpa is not RAM.
 */
uint8_t *host_of(FakeMem *m, uint64_t gpa, uint64_t *avail, int *reg);
/*
 * The guest address of host [@host, @host + @len) in *@gpa, or false
 * when that range is not inside one region.
 */
bool gpa_of(FakeMem *m, const void *host, uint64_t len, uint64_t *gpa);

/* The driver's side: plain copies, split at region ends */
void gcopy(FakeMem *m, uint64_t gpa, void *buf, size_t len, bool wr);
/* Whether guest [@gpa, @gpa + @len) is all RAM and all dirty */
bool gdirty(FakeMem *m, uint64_t gpa, size_t len);
void gw16(FakeMem *m, uint64_t gpa, uint16_t v);
void gw32(FakeMem *m, uint64_t gpa, uint32_t v);
void gw64(FakeMem *m, uint64_t gpa, uint64_t v);
uint16_t gr16(FakeMem *m, uint64_t gpa);
uint32_t gr32(FakeMem *m, uint64_t gpa);
/* Descriptor @i of the table at @table */
void set_desc(FakeMem *m, uint64_t table, unsigned int i, uint64_t addr,
              uint32_t len, uint16_t flags, uint16_t next);
/* Put @head in the next avail entry, then publish avail->idx */
void make_avail(FakeMem *m, uint16_t head);
/* Fill guest [@gpa, @gpa + @len) with the pattern @seed + i * 7 */
void fill(FakeMem *m, uint64_t gpa, size_t len, uint8_t seed);

#endif
