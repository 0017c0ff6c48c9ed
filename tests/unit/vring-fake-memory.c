/*
 * A fake guest memory and a tiny driver side for Ferry's vring engine
 *
 * See vring-fake-memory.h for what it models.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "vring-fake-memory.h"

const uint64_t region_base[NREGIONS] = { 0, 0x10000, 0x100000 };

uint8_t *host_of(FakeMem *m, uint64_t gpa, uint64_t *avail, int *reg)
{
    int i;

    for (i = 0; i < NREGIONS; i++) {
        if (gpa >= region_base[i] && gpa < region_base[i] + REGION_SIZE) {
            *avail = region_base[i] + REGION_SIZE - gpa;
            *reg = i;
            return m->block[i] + GUARD + (gpa - region_base[i]);
        }
    }
    return NULL;
}

bool gpa_of(FakeMem *m, const void *host, uint64_t len, uint64_t *gpa)
{
    const uint8_t *p = host;
    int i;

    for (i = 0; i < NREGIONS; i++) {
        const uint8_t *start = m->block[i] + GUARD;

        if (p >= start && p < start + REGION_SIZE) {
            if (len > (uint64_t)(start + REGION_SIZE - p)) {
                return false;
            }
            *gpa = region_base[i] + (p - start);
            return true;
        }
    }
    return false;
}

static void *fake_map(void *opaque, uint64_t gpa, uint64_t *plen,
                      bool is_write)
{
    FakeMem *m = opaque;
    uint64_t avail;
    int reg;
    uint8_t *host = host_of(m, gpa, &avail, &reg);

    if (!host) {
        return NULL;
    }
    *plen = MIN(*plen, avail);
    if (m->chunk) {
        *plen = MIN(*plen, m->chunk);
    }
    m->mapped++;
    m->maps++;
    return host;
}

static void fake_unmap(void *opaque, void *host, uint64_t len, bool is_write,
                       uint64_t access_len)
{
    FakeMem *m = opaque;
    uint8_t *p = host;
    int i;

    g_assert_cmpint(m->mapped, >, 0);
    m->mapped--;
    for (i = 0; i < NREGIONS; i++) {
        uint8_t *start = m->block[i] + GUARD;

        if (p >= start && p < start + REGION_SIZE) {
            g_assert_cmpuint(p + len - start, <=, REGION_SIZE);
            g_assert_cmpuint(access_len, <=, len);
            g_assert(is_write || !access_len);
            memset(m->dirty[i] + (p - start), 1, access_len);
            return;
        }
    }
    g_assert_not_reached();
}

const VRingMemOps fake_ops = {
    .map = fake_map,
    .unmap = fake_unmap,
};

void mem_init(FakeMem *m, unsigned int num, uint64_t avail)
{
    int i;

    memset(m, 0, sizeof(*m));
    for (i = 0; i < NREGIONS; i++) {
        m->block[i] = g_malloc0(REGION_SIZE + 2 * GUARD);
        memset(m->block[i], GUARD_BYTE, GUARD);
        memset(m->block[i] + GUARD + REGION_SIZE, GUARD_BYTE, GUARD);
        m->dirty[i] = g_malloc0(REGION_SIZE);
    }
    m->num = num;
    m->avail = avail;
}

bool mem_guards_intact(FakeMem *m)
{
    int i, j;

    for (i = 0; i < NREGIONS; i++) {
        for (j = 0; j < GUARD; j++) {
            if (m->block[i][j] != GUARD_BYTE ||
                m->block[i][GUARD + REGION_SIZE + j] != GUARD_BYTE) {
                return false;
            }
        }
    }
    return true;
}

void mem_free(FakeMem *m)
{
    int i;

    g_assert_cmpint(m->mapped, ==, 0);
    g_assert(mem_guards_intact(m));
    for (i = 0; i < NREGIONS; i++) {
        g_free(m->block[i]);
        g_free(m->dirty[i]);
    }
}

void gcopy(FakeMem *m, uint64_t gpa, void *buf, size_t len, bool wr)
{
    uint8_t *b = buf;

    while (len) {
        uint64_t avail;
        int reg;
        uint8_t *host = host_of(m, gpa, &avail, &reg);
        size_t l;

        if (!host) {
            g_assert(m->lenient);
            gpa++;
            b++;
            len--;
            continue;
        }
        l = MIN(len, avail);
        if (wr) {
            memcpy(host, b, l);
        } else {
            memcpy(b, host, l);
        }
        gpa += l;
        b += l;
        len -= l;
    }
}

bool gdirty(FakeMem *m, uint64_t gpa, size_t len)
{
    for (; len; gpa++, len--) {
        uint64_t avail;
        int reg;

        g_assert(host_of(m, gpa, &avail, &reg));
        if (!m->dirty[reg][gpa - region_base[reg]]) {
            return false;
        }
    }
    return true;
}

void gw16(FakeMem *m, uint64_t gpa, uint16_t v)
{
    v = m->big_endian ? cpu_to_be16(v) : cpu_to_le16(v);
    gcopy(m, gpa, &v, 2, true);
}

void gw32(FakeMem *m, uint64_t gpa, uint32_t v)
{
    v = m->big_endian ? cpu_to_be32(v) : cpu_to_le32(v);
    gcopy(m, gpa, &v, 4, true);
}

void gw64(FakeMem *m, uint64_t gpa, uint64_t v)
{
    v = m->big_endian ? cpu_to_be64(v) : cpu_to_le64(v);
    gcopy(m, gpa, &v, 8, true);
}

uint16_t gr16(FakeMem *m, uint64_t gpa)
{
    uint16_t v = 0;

    gcopy(m, gpa, &v, 2, false);
    return m->big_endian ? be16_to_cpu(v) : le16_to_cpu(v);
}

uint32_t gr32(FakeMem *m, uint64_t gpa)
{
    uint32_t v = 0;

    gcopy(m, gpa, &v, 4, false);
    return m->big_endian ? be32_to_cpu(v) : le32_to_cpu(v);
}

void set_desc(FakeMem *m, uint64_t table, unsigned int i, uint64_t addr,
              uint32_t len, uint16_t flags, uint16_t next)
{
    uint64_t d = table + 16 * (uint64_t)i;

    gw64(m, d, addr);
    gw32(m, d + 8, len);
    gw16(m, d + 12, flags);
    gw16(m, d + 14, next);
}

void make_avail(FakeMem *m, uint16_t head)
{
    gw16(m, m->avail + 4 + 2 * (uint64_t)(m->avail_idx % m->num), head);
    m->avail_idx++;
    gw16(m, m->avail + 2, m->avail_idx);
}

void fill(FakeMem *m, uint64_t gpa, size_t len, uint8_t seed)
{
    g_autofree uint8_t *b = g_malloc(len);
    size_t i;

    for (i = 0; i < len; i++) {
        b[i] = seed + i * 7;
    }
    gcopy(m, gpa, b, len, true);
}
