/*
 * Unit tests of Ferry's vring engine over a fake guest memory
 *
 * Guest RAM is three regions, each its own g_malloc block with guard
 * bytes around it (which must never change), so that a range crossing
 * two regions is not contiguous in host memory: the accessor returns
 * short lengths at region ends (or at every CHUNK bytes when asked to)
 * and fails outside the regions.  A tiny driver side builds rings in it.
 * Both live in vring-fake-memory.c, shared with the fuzz target.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "hw/virtio/vring-engine.h"
#include "vring-fake-memory.h"

#define NUM         16

#define DESC        0x1000
#define AVAIL       (DESC + 16 * NUM)
#define USED        0x2000
#define NOWHERE     0x50000

/* Check that IOV[0..N) holds LEN bytes made by fill(SEED) */
static void check_iov(const struct iovec *iov, unsigned n, size_t len,
                      uint8_t seed)
{
    size_t off = 0;
    unsigned i, j;

    for (i = 0; i < n; i++) {
        const uint8_t *p = iov[i].iov_base;

        for (j = 0; j < iov[i].iov_len; j++, off++) {
            g_assert_cmphex(p[j], ==, (uint8_t)(seed + off * 7));
        }
    }
    g_assert_cmpuint(off, ==, len);
}

static void setup(FakeMem *m, VRing *vr, uint64_t features)
{
    mem_init(m, NUM, AVAIL);
    g_assert_cmpint(vring_setup(vr, &fake_ops, m, NUM, DESC, AVAIL, USED,
                               features, false, 0, 0), ==, 0);
}

static void teardown(FakeMem *m)
{
    mem_free(m);
}

/*
 * out 16 bytes + in 32 bytes; pop, write, push, publish, empty; the
 * queue's descriptor table at @desc
 */
static void do_basic_at(uint64_t desc, uint64_t chunk, bool legacy_be,
                        uint64_t features)
{
    FakeMem m;
    VRing vr;
    g_autofree VRingElem *e = g_new0(VRingElem, 1);
    uint16_t be_check;

    mem_init(&m, NUM, AVAIL);
    m.big_endian = legacy_be && !(features & VRING_F_VERSION_1);
    g_assert_cmpint(vring_setup(&vr, &fake_ops, &m, NUM, desc, AVAIL, USED,
                               features, legacy_be, 0, 0), ==, 0);
    fill(&m, 0x3000, 16, 1);
    set_desc(&m, desc, 3, 0x3000, 16, VRING_DESC_NEXT, 5);
    set_desc(&m, desc, 5, 0x4000, 32, VRING_DESC_WRITE, 0);
    make_avail(&m, 3);
    m.chunk = chunk;

    g_assert_cmpint(vring_pop(&vr, e), ==, 1);
    g_assert_cmpuint(e->head, ==, 3);
    g_assert_cmpuint(e->out_num, ==, chunk ? 16 / chunk : 1);
    g_assert_cmpuint(e->in_num, ==, chunk ? 32 / chunk : 1);
    check_iov(e->iov, e->out_num, 16, 1);
    memset(e->iov[e->out_num].iov_base, 0x5a, e->iov[e->out_num].iov_len);
    vring_elem_unmap(&vr, e);
    g_assert_cmpint(vring_push(&vr, 3, 32), ==, 0);
    g_assert_cmpint(vring_publish(&vr), ==, 0);
    g_assert_cmpint(vring_pop(&vr, e), ==, 0);
    m.chunk = 0;

    g_assert_cmpuint(gr16(&m, USED + 2), ==, 1);
    g_assert_cmpuint(gr32(&m, USED + 4), ==, 3);
    g_assert_cmpuint(gr32(&m, USED + 8), ==, 32);
    /* the in-buffer and the used ring are dirty, the out-buffer is not */
    g_assert(gdirty(&m, 0x4000, 32));
    g_assert(gdirty(&m, USED + 2, 10));
    g_assert(!gdirty(&m, 0x3000, 1));
    /* raw check of the layout: used->idx in the expected byte order */
    gcopy(&m, USED + 2, &be_check, 2, false);
    g_assert_cmphex(be_check, ==, m.big_endian ? cpu_to_be16(1) :
                    cpu_to_le16(1));
    teardown(&m);
}

static void do_basic(uint64_t chunk, bool legacy_be, uint64_t features)
{
    do_basic_at(DESC, chunk, legacy_be, features);
}

static void test_basic(void)
{
    do_basic(0, false, VRING_F_VERSION_1);
}

static void test_basic_byte_split(void)
{
    /* every map returns one byte: ring fields and descriptors copied */
    do_basic(1, false, VRING_F_VERSION_1);
    do_basic(8, false, VRING_F_VERSION_1);
}

static void test_legacy_endian(void)
{
    do_basic(0, true, 0);                   /* legacy big-endian ring */
    do_basic(0, false, 0);                  /* legacy little-endian */
    do_basic(0, true, VRING_F_VERSION_1);   /* 1.0+: always little */
}

static void do_indirect(uint64_t table, bool chained)
{
    FakeMem m;
    VRing vr;
    g_autofree VRingElem *e = g_new0(VRingElem, 1);
    unsigned first = 0;

    setup(&m, &vr, VRING_F_VERSION_1 | VRING_F_INDIRECT_DESC);
    fill(&m, 0x3000, 100, 9);
    if (chained) {
        /* 1.1: a direct descriptor, then one referring to the table */
        set_desc(&m, DESC, 0, 0x3000, 40, VRING_DESC_NEXT, 1);
        set_desc(&m, DESC, 1, table, 3 * 16, VRING_DESC_INDIRECT, 0);
        set_desc(&m, table, 0, 0x3000 + 40, 60, VRING_DESC_NEXT, 2);
        first = 1;
    } else {
        set_desc(&m, DESC, 0, table, 3 * 16, VRING_DESC_INDIRECT, 0);
        set_desc(&m, table, 0, 0x3000, 100, VRING_DESC_NEXT, 2);
    }
    set_desc(&m, table, 2, 0x4000, 10, VRING_DESC_WRITE | VRING_DESC_NEXT,
             1);
    set_desc(&m, table, 1, 0x4100, 20, VRING_DESC_WRITE, 0);
    make_avail(&m, 0);

    g_assert_cmpint(vring_pop(&vr, e), ==, 1);
    g_assert_cmpuint(e->out_num, ==, 1 + first);
    g_assert_cmpuint(e->in_num, ==, 2);
    check_iov(e->iov, e->out_num, 100, 9);
    g_assert_cmpuint(e->iov[e->out_num].iov_len, ==, 10);
    g_assert_cmpuint(e->iov[e->out_num + 1].iov_len, ==, 20);
    vring_elem_unmap(&vr, e);
    g_assert(gdirty(&m, 0x4000, 10) && gdirty(&m, 0x4100, 20));
    teardown(&m);
}

static void test_indirect(void)
{
    do_indirect(0x5000, false);
    do_indirect(0x5000, true);
}

static void test_indirect_straddle(void)
{
    /* descriptor 1 of the table crosses from region 0 into region 1 */
    do_indirect(0x10000 - 24, false);
    do_indirect(0x10000 - 8, true);
}

/*
 * The queue's descriptor table across the boundary of two regions
 * (adjacent in the guest, apart in the host): descriptor 3 straddles it.
 */
static void test_desc_straddle(void)
{
    do_basic_at(0x10000 - 3 * 16 - 8, 0, false, VRING_F_VERSION_1);
}

static void test_buffer_straddle(void)
{
    FakeMem m;
    VRing vr;
    g_autofree VRingElem *e = g_new0(VRingElem, 1);

    setup(&m, &vr, VRING_F_VERSION_1);
    fill(&m, 0xff00, 0x200, 3);
    set_desc(&m, DESC, 0, 0xff00, 0x200, VRING_DESC_NEXT, 1);
    set_desc(&m, DESC, 1, 0xfff0, 0x20, VRING_DESC_WRITE, 0);
    make_avail(&m, 0);
    g_assert_cmpint(vring_pop(&vr, e), ==, 1);
    g_assert_cmpuint(e->out_num, ==, 2);
    g_assert_cmpuint(e->iov[0].iov_len, ==, 0x100);
    check_iov(e->iov, 2, 0x200, 3);
    g_assert_cmpuint(e->in_num, ==, 2);
    memset(e->iov[2].iov_base, 1, e->iov[2].iov_len);
    memset(e->iov[3].iov_base, 1, e->iov[3].iov_len);
    vring_elem_unmap(&vr, e);
    g_assert(gdirty(&m, 0xfff0, 0x20));
    teardown(&m);
}

static void push_n(VRing *vr, FakeMem *m, unsigned n)
{
    g_autofree VRingElem *e = g_new0(VRingElem, 1);
    unsigned i;

    for (i = 0; i < n; i++) {
        set_desc(m, DESC, i % NUM, 0x4000, 8, VRING_DESC_WRITE, 0);
        make_avail(m, i % NUM);
        g_assert_cmpint(vring_pop(vr, e), ==, 1);
        vring_elem_unmap(vr, e);
        g_assert_cmpint(vring_push(vr, e->head, 8), ==, 0);
    }
}

static void test_batching(void)
{
    FakeMem m;
    VRing vr;

    setup(&m, &vr, VRING_F_VERSION_1);
    push_n(&vr, &m, 5);
    g_assert_cmpuint(gr16(&m, USED + 2), ==, 0);    /* not yet visible */
    g_assert_cmpuint(gr32(&m, USED + 4 + 8 * 4), ==, 4);
    g_assert_cmpint(vring_publish(&vr), ==, 0);
    g_assert_cmpuint(gr16(&m, USED + 2), ==, 5);
    g_assert(vring_should_notify(&vr));             /* one notification */
    teardown(&m);
}

static void test_no_interrupt(void)
{
    FakeMem m;
    VRing vr;

    setup(&m, &vr, VRING_F_VERSION_1);
    push_n(&vr, &m, 1);
    vring_publish(&vr);
    g_assert(vring_should_notify(&vr));
    gw16(&m, AVAIL, VRING_AVAIL_NO_INTERRUPT);
    push_n(&vr, &m, 1);
    vring_publish(&vr);
    g_assert(!vring_should_notify(&vr));
    teardown(&m);

    /* legacy NOTIFY_ON_EMPTY overrides NO_INTERRUPT once drained */
    setup(&m, &vr, VRING_F_NOTIFY_ON_EMPTY);
    gw16(&m, AVAIL, VRING_AVAIL_NO_INTERRUPT);
    push_n(&vr, &m, 1);
    vring_publish(&vr);
    g_assert(vring_should_notify(&vr));
    g_assert(!vring_should_notify(&vr));        /* nothing new since */
    teardown(&m);
}

static void test_no_notify(void)
{
    FakeMem m;
    VRing vr;

    setup(&m, &vr, VRING_F_VERSION_1);
    g_assert_cmpint(vring_set_notification(&vr, false), ==, 0);
    g_assert_cmpuint(gr16(&m, USED), ==, VRING_USED_NO_NOTIFY);
    g_assert_cmpint(vring_set_notification(&vr, true), ==, 0);
    g_assert_cmpuint(gr16(&m, USED), ==, 0);
    /* a chain made available while notifications were off: re-check */
    vring_set_notification(&vr, false);
    set_desc(&m, DESC, 0, 0x4000, 8, VRING_DESC_WRITE, 0);
    make_avail(&m, 0);
    g_assert_cmpint(vring_set_notification(&vr, true), ==, 1);
    teardown(&m);
}

static void test_event_idx(void)
{
    FakeMem m;
    VRing vr;
    setup(&m, &vr, VRING_F_VERSION_1 | VRING_F_EVENT_IDX);
    /* the first decision always notifies (nothing signalled yet) */
    push_n(&vr, &m, 1);
    vring_publish(&vr);
    g_assert(vring_should_notify(&vr));
    /* the driver wants an interrupt when used_idx passes 3 */
    gw16(&m, AVAIL + 4 + 2 * NUM, 3);
    push_n(&vr, &m, 1);                 /* used 2: not yet */
    vring_publish(&vr);
    g_assert(!vring_should_notify(&vr));
    push_n(&vr, &m, 2);                 /* used 4: crossed 3 */
    vring_publish(&vr);
    g_assert(vring_should_notify(&vr));
    push_n(&vr, &m, 1);                 /* used 5: event 3 already passed */
    vring_publish(&vr);
    g_assert(!vring_should_notify(&vr));
    /* avail_event: written as last_avail_idx when enabling */
    g_assert_cmpint(vring_set_notification(&vr, true), ==, 0);
    g_assert_cmpuint(gr16(&m, USED + 4 + 8 * NUM), ==, 5);
    teardown(&m);

    /* wrap-around: the indices cross 65535 -> 0 */
    mem_init(&m, NUM, AVAIL);
    m.avail_idx = 65533;
    gw16(&m, AVAIL + 2, m.avail_idx);
    gw16(&m, USED + 2, 65533);
    g_assert_cmpint(vring_setup(&vr, &fake_ops, &m, NUM, DESC, AVAIL, USED,
                               VRING_F_VERSION_1 | VRING_F_EVENT_IDX, false,
                               65533, 65533), ==, 0);
    push_n(&vr, &m, 1);
    vring_publish(&vr);
    g_assert(vring_should_notify(&vr));         /* 65534, first */
    gw16(&m, AVAIL + 4 + 2 * NUM, 0);           /* notify after 0 */
    push_n(&vr, &m, 2);                         /* 65534 -> 0 */
    vring_publish(&vr);
    g_assert_cmpuint(gr16(&m, USED + 2), ==, 0);
    g_assert(!vring_should_notify(&vr));
    push_n(&vr, &m, 1);                         /* 0 -> 1: crossed 0 */
    vring_publish(&vr);
    g_assert(vring_should_notify(&vr));
    /* a signalled_used lapped while suppressed must not suppress more */
    vr.used_idx += 40000;                       /* as if pushed */
    vring_publish(&vr);
    vr.used_idx += 30000;                       /* passes 1 again */
    vring_publish(&vr);
    g_assert(vring_should_notify(&vr));
    teardown(&m);
}

/* Hostile guests: each case, its error, and nothing touched outside */
typedef void (*BuildFn)(FakeMem *m, VRing *vr);

static void hostile(BuildFn build, int err, uint64_t chunk)
{
    FakeMem m;
    VRing vr;
    g_autofree VRingElem *e = g_new0(VRingElem, 1);
    const char *msg;

    setup(&m, &vr, VRING_F_VERSION_1 | VRING_F_INDIRECT_DESC);
    build(&m, &vr);
    m.chunk = chunk;
    g_assert_cmpint(vring_pop(&vr, e), ==, err);
    g_assert(vr.broken);
    g_assert_nonnull(vr.error);
    g_assert_cmpuint(e->out_num + e->in_num, ==, 0);
    g_assert_cmpint(m.mapped, ==, 0);
    msg = vr.error;
    /* broken stays broken */
    g_assert_cmpint(vring_pop(&vr, e), ==, -EIO);
    g_assert(vr.error == msg);
    teardown(&m);
}

static void b_loop(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x4000, 8, VRING_DESC_NEXT, 1);
    set_desc(m, DESC, 1, 0x4000, 8, VRING_DESC_NEXT, 0);
    make_avail(m, 0);
}

static void b_indirect_loop(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x5000, 32, VRING_DESC_INDIRECT, 0);
    set_desc(m, 0x5000, 0, 0x4000, 8, VRING_DESC_NEXT, 1);
    set_desc(m, 0x5000, 1, 0x4000, 8, VRING_DESC_NEXT, 1);
    make_avail(m, 0);
}

static void b_head_oor(FakeMem *m, VRing *vr)
{
    make_avail(m, NUM);
}

static void b_next_oor(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x4000, 8, VRING_DESC_NEXT, NUM);
    make_avail(m, 0);
}

static void b_indirect_next_oor(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x5000, 32, VRING_DESC_INDIRECT, 0);
    set_desc(m, 0x5000, 0, 0x4000, 8, VRING_DESC_NEXT, 2);
    make_avail(m, 0);
}

static void b_write_before_read(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x4000, 8, VRING_DESC_WRITE | VRING_DESC_NEXT, 1);
    set_desc(m, DESC, 1, 0x3000, 8, 0, 0);
    make_avail(m, 0);
}

static void b_nested_indirect(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x5000, 16, VRING_DESC_INDIRECT, 0);
    set_desc(m, 0x5000, 0, 0x6000, 16, VRING_DESC_INDIRECT, 0);
    make_avail(m, 0);
}

static void b_indirect_len(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x5000, 24, VRING_DESC_INDIRECT, 0);
    make_avail(m, 0);
}

static void b_indirect_zero(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x5000, 0, VRING_DESC_INDIRECT, 0);
    make_avail(m, 0);
}

static void b_indirect_next(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x5000, 16, VRING_DESC_INDIRECT | VRING_DESC_NEXT,
             1);
    make_avail(m, 0);
}

static void b_indirect_unnegotiated(FakeMem *m, VRing *vr)
{
    vr->features &= ~VRING_F_INDIRECT_DESC;
    set_desc(m, DESC, 0, 0x5000, 16, VRING_DESC_INDIRECT, 0);
    make_avail(m, 0);
}

static void b_outside_ram(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x3000, 8, VRING_DESC_NEXT, 1);
    set_desc(m, DESC, 1, NOWHERE, 8, VRING_DESC_WRITE, 0);
    make_avail(m, 0);
}

static void b_straddle_out_of_ram(FakeMem *m, VRing *vr)
{
    /* starts in region 1, runs into the hole after it */
    set_desc(m, DESC, 0, 0x20000 - 8, 16, 0, 0);
    make_avail(m, 0);
}

static void b_wrap_address(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, UINT64_MAX - 4, 16, 0, 0);
    make_avail(m, 0);
}

static void b_indirect_outside(FakeMem *m, VRing *vr)
{
    set_desc(m, DESC, 0, 0x20000 - 16, 32, VRING_DESC_INDIRECT, 0);
    set_desc(m, 0x20000 - 16, 0, 0x3000, 8, VRING_DESC_NEXT, 1);
    make_avail(m, 0);
}

static void b_desc_outside(FakeMem *m, VRing *vr)
{
    vr->desc = NOWHERE;
    make_avail(m, 0);
}

static void b_avail_jump(FakeMem *m, VRing *vr)
{
    gw16(m, AVAIL + 2, NUM + 1);
}

static void b_too_many_iov(FakeMem *m, VRing *vr)
{
    /* with 1-byte mappings, a 2000-byte buffer needs 2000 iovecs */
    set_desc(m, DESC, 0, 0x6000, 2000, 0, 0);
    make_avail(m, 0);
}

static void test_hostile(void)
{
    hostile(b_loop, -ELOOP, 0);
    hostile(b_indirect_loop, -ELOOP, 0);
    hostile(b_head_oor, -ERANGE, 0);
    hostile(b_next_oor, -ENXIO, 0);
    hostile(b_indirect_next_oor, -ENXIO, 0);
    hostile(b_write_before_read, -EACCES, 0);
    hostile(b_nested_indirect, -EMLINK, 0);
    hostile(b_indirect_len, -EMSGSIZE, 0);
    hostile(b_indirect_zero, -EMSGSIZE, 0);
    hostile(b_indirect_next, -EBADMSG, 0);
    hostile(b_indirect_unnegotiated, -EBADMSG, 0);
    hostile(b_outside_ram, -EFAULT, 0);
    hostile(b_straddle_out_of_ram, -EFAULT, 0);
    hostile(b_wrap_address, -EFAULT, 0);
    hostile(b_indirect_outside, -EFAULT, 0);
    hostile(b_desc_outside, -EFAULT, 0);
    hostile(b_avail_jump, -EOVERFLOW, 0);
    hostile(b_too_many_iov, -ENOBUFS, 1);
    /* the same with every mapping split into 4-byte pieces */
    hostile(b_loop, -ELOOP, 4);
    hostile(b_nested_indirect, -EMLINK, 4);
    hostile(b_straddle_out_of_ram, -EFAULT, 4);
}

static void test_too_many_in_flight(void)
{
    FakeMem m;
    VRing vr;
    g_autofree VRingElem *e = g_new0(VRingElem, 1);
    unsigned i;

    /* the driver makes NUM chains available, then the same heads again */
    setup(&m, &vr, VRING_F_VERSION_1);
    set_desc(&m, DESC, 0, 0x4000, 8, VRING_DESC_WRITE, 0);
    for (i = 0; i < NUM; i++) {
        make_avail(&m, 0);
        g_assert_cmpint(vring_pop(&vr, e), ==, 1);
        vring_elem_unmap(&vr, e);
    }
    make_avail(&m, 0);
    g_assert_cmpint(vring_pop(&vr, e), ==, -ENOSPC);
    g_assert(vr.broken && vr.error);
    teardown(&m);

    /* after a push, one more may be popped */
    setup(&m, &vr, VRING_F_VERSION_1);
    set_desc(&m, DESC, 0, 0x4000, 8, VRING_DESC_WRITE, 0);
    for (i = 0; i < NUM; i++) {
        make_avail(&m, 0);
        g_assert_cmpint(vring_pop(&vr, e), ==, 1);
        vring_elem_unmap(&vr, e);
    }
    g_assert_cmpint(vring_push(&vr, 0, 8), ==, 0);
    make_avail(&m, 0);
    g_assert_cmpint(vring_pop(&vr, e), ==, 1);
    vring_elem_unmap(&vr, e);
    teardown(&m);
}

static void test_zero_length(void)
{
    FakeMem m;
    VRing vr;
    g_autofree VRingElem *e = g_new0(VRingElem, 1);

    /* policy: skipped, but counted toward the chain bound */
    setup(&m, &vr, VRING_F_VERSION_1);
    set_desc(&m, DESC, 0, NOWHERE, 0, VRING_DESC_NEXT, 1);
    set_desc(&m, DESC, 1, 0x4000, 8, VRING_DESC_WRITE | VRING_DESC_NEXT, 2);
    set_desc(&m, DESC, 2, 0x4100, 0, VRING_DESC_WRITE, 0);
    make_avail(&m, 0);
    g_assert_cmpint(vring_pop(&vr, e), ==, 1);
    g_assert_cmpuint(e->out_num, ==, 0);
    g_assert_cmpuint(e->in_num, ==, 1);
    vring_elem_unmap(&vr, e);
    teardown(&m);

    /* a loop of zero-length descriptors still ends */
    setup(&m, &vr, VRING_F_VERSION_1);
    set_desc(&m, DESC, 0, 0x4000, 0, VRING_DESC_NEXT, 0);
    make_avail(&m, 0);
    g_assert_cmpint(vring_pop(&vr, e), ==, -ELOOP);
    teardown(&m);
}

static void test_init(void)
{
    VRing vr;

    g_assert_cmpint(vring_setup(&vr, &fake_ops, NULL, 0, 0, 0, 0, 0, false,
                               0, 0), ==, -EINVAL);
    g_assert_cmpint(vring_setup(&vr, &fake_ops, NULL, 24, 0, 0, 0, 0, false,
                               0, 0), ==, -EINVAL);
    g_assert_cmpint(vring_setup(&vr, &fake_ops, NULL, 65536, 0, 0, 0, 0,
                               false, 0, 0), ==, -EINVAL);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/vring-engine/init", test_init);
    g_test_add_func("/vring-engine/basic", test_basic);
    g_test_add_func("/vring-engine/basic-byte-split", test_basic_byte_split);
    g_test_add_func("/vring-engine/legacy-endian", test_legacy_endian);
    g_test_add_func("/vring-engine/indirect", test_indirect);
    g_test_add_func("/vring-engine/indirect-straddle", test_indirect_straddle);
    g_test_add_func("/vring-engine/buffer-straddle", test_buffer_straddle);
    g_test_add_func("/vring-engine/desc-straddle", test_desc_straddle);
    g_test_add_func("/vring-engine/batching", test_batching);
    g_test_add_func("/vring-engine/no-interrupt", test_no_interrupt);
    g_test_add_func("/vring-engine/no-notify", test_no_notify);
    g_test_add_func("/vring-engine/event-idx", test_event_idx);
    g_test_add_func("/vring-engine/zero-length", test_zero_length);
    g_test_add_func("/vring-engine/hostile", test_hostile);
    g_test_add_func("/vring-engine/too-many-in-flight",
                    test_too_many_in_flight);
    return g_test_run();
}
