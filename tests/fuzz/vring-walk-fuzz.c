/*
 * libFuzzer target: Ferry's vring engine against a hostile driver
 *
 * The input describes one split virtqueue and a session of a driver and
 * a device on it, over the unit test's fake guest memory (three regions
 * with guard bytes, tests/unit/vring-fake-memory.h).  A 6-byte header:
 *
 *   0     queue size, 1 << (b % 16)
 *   1     features: 1 INDIRECT_DESC, 2 EVENT_IDX, 4 VERSION_1,
 *         8 NOTIFY_ON_EMPTY, 16 legacy big-endian ring
 *   2     map chunk (short mappings everywhere), chunks[b % 16]
 *   3     where the descriptor table, avail and used rings lie: 2 bits
 *         each, selecting aligned, misaligned, across the two adjacent
 *         regions or running out of RAM (see place())
 *   4-5   starting index of the driver and the device (little-endian)
 *
 * then operations, each an opcode byte (b % 16) and its arguments, all
 * little-endian (missing bytes read as 0):
 *
 *   0  DESC   u16 i, u64 addr, u32 len, u16 flags, u16 next: main table
 *   1  IDESC  u8 table (of 4), u8 i, then as DESC: an indirect table
 *   2  AVAIL  u16 head: make it available, publish avail->idx
 *   3  AIDX   u16: write avail->idx (the driver's index too)
 *   4  AFLAGS u16: write avail->flags
 *   5  UEVENT u16: write used_event
 *   6  RAW    u24 where (region where >> 16 % 3, offset where & 0xffff),
 *             u8 len (% 64), bytes
 *   7  POP    u8 n: pop up to n % 16 + 1 chains
 *   8  PUSH   u8 n, u32 len: push the n % 16 + 1 oldest popped chains
 *   9  PUBLISH
 *   10 NOTIFY  vring_should_notify()
 *   11 KICKS   u8 on: vring_set_notification(on & 1)
 *   12 UNPOP   u8 n: unmap and give back the n % 4 + 1 newest
 *   13 UNMAP   unmap the oldest popped chain still mapped
 *   14 CHUNK   u8: change the map chunk
 *   15 PASS    what a device's handler does: disable kicks, pop, push and
 *              publish everything, notify, re-enable kicks and re-check
 *
 * The device keeps up to NSLOTS popped chains mapped (writing a pattern
 * in their writable buffers) and fewer than MAX_POPS pops in all.  The
 * invariants, any failure of which is a crash: every iovec lies inside
 * one fake region, at the guest address the element gives for it; the
 * guards never change; only writable buffers of popped chains and the
 * used ring are ever written back dirty, and every byte that changed is
 * dirty; nothing stays mapped but the chains the device holds, and
 * nothing at the end; a queue never has more than its size of chains
 * popped and not pushed; what push, publish and set_notification wrote
 * reads back; vring_has_avail() says whether the pop that follows finds
 * a chain; and a call that fails breaks the queue with its errno and a
 * message, after which every call fails with -EIO, the message stays and
 * guest memory is not touched again.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "hw/virtio/vring-engine.h"
#include "../unit/vring-fake-memory.h"

#define MAX_POPS    512
#define NSLOTS      4
#define TABLE_CAP   64      /* descriptors an input sets per indirect table */

static const uint64_t chunks[16] = {
    0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 7, 8, 24, 4096
};

typedef struct Input {
    const uint8_t *p;
    size_t left;
} Input;

typedef struct InFlight {
    uint16_t head;
    int slot;               /* its mapped element, or -1 */
} InFlight;

static FakeMem mem, shadow;         /* the device's memory, the driver's */
static uint8_t allowed[NREGIONS][REGION_SIZE]; /* may be written back */
static VRingElem elems[NSLOTS];
static bool slot_busy[NSLOTS];
static InFlight flight[MAX_POPS];
static unsigned int lo, hi, pops;   /* flight[lo, hi) popped, not pushed */
static VRing vr;
static uint64_t used_lo, used_size;    /* where the used ring lies */
static const char *broken_msg;
static uint64_t broken_maps;

static uint64_t take(Input *in, int bytes)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < bytes; i++) {
        if (in->left) {
            v |= (uint64_t)*in->p++ << (8 * i);
            in->left--;
        }
    }
    return v;
}

/* The unmap that checks what is written back before passing it on */
static void check_unmap(void *opaque, void *host, uint64_t len,
                        bool is_write, uint64_t access_len)
{
    uint64_t gpa;
    int r;

    if (access_len) {
        assert(gpa_of(&mem, host, access_len, &gpa));
        /* (modulo 2^64: a ring may wrap around the address space) */
        if (gpa - used_lo >= used_size ||
            gpa - used_lo + access_len > used_size) {
            for (r = 0; region_base[r] + REGION_SIZE <= gpa; r++) {
                continue;
            }
            assert(!memchr(&allowed[r][gpa - region_base[r]], 0,
                           access_len));
        }
    }
    fake_ops.unmap(opaque, host, len, is_write, access_len);
}

static VRingMemOps ops;          /* fake_ops.map, check_unmap */

static void mem_reset(FakeMem *m, unsigned int num, uint64_t avail,
                      bool big_endian, uint16_t idx)
{
    int i;

    for (i = 0; i < NREGIONS; i++) {
        memset(m->block[i] + GUARD, 0, REGION_SIZE);
        if (m->maps) {
            memset(m->dirty[i], 0, REGION_SIZE);
        }
    }
    m->chunk = 0;
    m->mapped = 0;
    m->maps = 0;
    m->lenient = true;
    m->big_endian = big_endian;
    m->num = num;
    m->avail = avail;
    m->avail_idx = idx;
}

/* Where the rings lie: the candidates of each, by 2 bits of the layout */
static uint64_t place(int which, unsigned int sel, unsigned int num)
{
    static const uint64_t fixed[3][4] = {
        { 0x1000, 0, 0x101000, 0 },
        { 0x6000, 0x6001, 0, 0x104000 },
        { 0x8000, 0x8002, 0, 0 },
    };
    uint64_t n = num;

    if (fixed[which][sel]) {
        return fixed[which][sel];
    }
    switch (which * 4 + sel) {
    case 1:     /* descriptor table across regions 0 and 1 */
        return 0x10000 - 8 * n - 8;
    case 3:     /* its second half out of RAM */
        return 0x20000 - 8 * n;
    case 6:     /* avail ring across regions 0 and 1, misaligned */
        return 0x10000 - n - 3;
    case 10:    /* used ring across regions 0 and 1, misaligned */
        return 0x10000 - 4 * n - 3;
    default:    /* 11: its second half out of RAM */
        return 0x20000 - 4 * n;
    }
}

static const uint64_t tables[4] = { 0x9000, 0xfff8, 0x108000, 0x1fff8 };

static void mark_allowed(const struct iovec *iov)
{
    uint64_t gpa;
    int r;

    assert(gpa_of(&mem, iov->iov_base, iov->iov_len, &gpa));
    for (r = 0; region_base[r] + REGION_SIZE <= gpa; r++) {
        continue;
    }
    memset(&allowed[r][gpa - region_base[r]], 1, iov->iov_len);
}

static void unmap_slot(unsigned int i)
{
    int s = flight[i].slot;

    if (s >= 0) {
        vring_elem_unmap(&vr, &elems[s]);
        slot_busy[s] = false;
        flight[i].slot = -1;
    }
}

static void unmap_oldest(void)
{
    unsigned int i;

    for (i = lo; i < hi; i++) {
        if (flight[i].slot >= 0) {
            unmap_slot(i);
            return;
        }
    }
}

static void check_mapped(void)
{
    int s, n = 0;

    for (s = 0; s < NSLOTS; s++) {
        if (slot_busy[s]) {
            n += elems[s].out_num + elems[s].in_num;
        }
    }
    assert(mem.mapped == n);
}

/* After a call that returned @r: a failure breaks, broken stays broken */
static void check_broken(bool was_broken, int r)
{
    if (was_broken) {
        assert(r == -EIO);
        assert(vr.broken && vr.error == broken_msg);
        assert(mem.maps == broken_maps);
        return;
    }
    if (r >= 0) {
        assert(!vr.broken);
        return;
    }
    assert(vr.broken && vr.error && *vr.error);
    assert(r == -EFAULT || r == -EOVERFLOW || r == -ERANGE ||
           r == -ELOOP || r == -EMLINK || r == -EBADMSG ||
           r == -EMSGSIZE || r == -EACCES || r == -ENXIO ||
           r == -ENOBUFS || r == -ENOSPC);
    broken_msg = vr.error;
    broken_maps = mem.maps;
}

/* Pop one chain; returns what vring_pop() did */
static int do_pop(void)
{
    bool was_broken = vr.broken, avail;
    VRingElem *e;
    unsigned int i;
    int s, r;

    if (pops >= MAX_POPS) {
        return 0;
    }
    for (s = 0; s < NSLOTS && slot_busy[s]; s++) {
        continue;
    }
    if (s == NSLOTS) {
        unmap_oldest();
        for (s = 0; slot_busy[s]; s++) {
            continue;
        }
    }
    e = &elems[s];
    avail = vring_has_avail(&vr);
    r = vring_pop(&vr, e);
    check_broken(was_broken, r);
    /* The polling hint agrees with the pop (no driver in between) */
    assert(avail ? r != 0 : r <= 0);
    if (r <= 0) {
        assert(e->out_num == 0 && e->in_num == 0);
        return r;
    }
    assert(r == 1);
    pops++;
    assert(e->head < vr.num);
    assert(e->out_num + e->in_num <= VRING_MAX_IOV);
    for (i = 0; i < e->out_num + e->in_num; i++) {
        uint64_t gpa;

        assert(e->iov[i].iov_len);
        assert(gpa_of(&mem, e->iov[i].iov_base, e->iov[i].iov_len, &gpa));
        assert(e->gpa[i] == gpa);
    }
    /* The device fills what the driver gave it to fill */
    for (i = e->out_num; i < e->out_num + e->in_num; i++) {
        mark_allowed(&e->iov[i]);
        memset(e->iov[i].iov_base, 0x5a ^ i, e->iov[i].iov_len);
    }
    slot_busy[s] = true;
    flight[hi].head = e->head;
    flight[hi].slot = s;
    hi++;
    /* Never more chains in flight than the queue has entries */
    assert(hi - lo <= vr.num);
    return r;
}

static void do_push(unsigned int n, uint32_t len)
{
    while (n-- && lo < hi) {
        bool was_broken = vr.broken;
        uint16_t at = vr.used_idx % vr.num;
        int r;

        unmap_slot(lo);
        r = vring_push(&vr, flight[lo].head, len);
        check_broken(was_broken, r);
        if (r < 0) {
            return;
        }
        lo++;
        assert(gr32(&mem, used_lo + 4 + 8 * at) == flight[lo - 1].head);
        assert(gr32(&mem, used_lo + 8 + 8 * at) == len);
    }
}

static void do_publish(void)
{
    bool was_broken = vr.broken;
    int r = vring_publish(&vr);

    check_broken(was_broken, r);
    if (r == 0) {
        assert(gr16(&mem, used_lo + 2) == vr.used_idx);
    }
}

static void do_notify(void)
{
    bool was_broken = vr.broken;
    bool n = vring_should_notify(&vr);

    if (was_broken) {
        assert(!n);
    }
    check_broken(was_broken, was_broken ? -EIO : 0);
}

static int do_kicks(bool on)
{
    bool was_broken = vr.broken;
    int r = vring_set_notification(&vr, on);

    check_broken(was_broken, r);
    if (r < 0) {
        return r;
    }
    assert(r == 0 || (on && r == 1));
    if (vring_has_feature(&vr, VRING_F_EVENT_IDX)) {
        if (on) {
            assert(gr16(&mem, used_lo + 4 + 8 * (uint64_t)vr.num) ==
                   vr.last_avail_idx);
        }
    } else {
        assert(gr16(&mem, used_lo) == (on ? 0 : VRING_USED_NO_NOTIFY));
    }
    return r;
}

static void do_unpop(unsigned int n)
{
    unsigned int i = 0;

    while (i < n && hi > lo) {
        unmap_slot(--hi);
        i++;
    }
    vring_unpop(&vr, i);
}

static void do_pass(void)
{
    int rounds;

    do_kicks(false);
    for (rounds = 0; rounds < 4; rounds++) {
        while (do_pop() > 0) {
            do_push(1, 0x100);
        }
        do_publish();
        do_notify();
        if (do_kicks(true) != 1) {
            return;
        }
        do_kicks(false);
    }
}

/* The driver's write of @v to avail->idx, avail->flags or used_event */
static void driver_w16(uint64_t gpa, uint16_t v)
{
    gw16(&mem, gpa, v);
    gw16(&shadow, gpa, v);
}

static void op(Input *in)
{
    unsigned int code = take(in, 1) % 16, n, i;
    uint64_t table, gpa, addr;
    uint32_t len;
    uint16_t flags, next;
    uint8_t buf[64];

    switch (code) {
    case 0:
    case 1:
        if (code == 0) {
            table = vr.desc;
            i = take(in, 2) % vr.num;
        } else {
            table = tables[take(in, 1) % 4];
            i = take(in, 1) % TABLE_CAP;
        }
        addr = take(in, 8);
        len = take(in, 4);
        flags = take(in, 2);
        next = take(in, 2);
        set_desc(&mem, table, i, addr, len, flags, next);
        set_desc(&shadow, table, i, addr, len, flags, next);
        break;
    case 2:
        n = take(in, 2);
        make_avail(&mem, n);
        make_avail(&shadow, n);
        break;
    case 3:
        mem.avail_idx = shadow.avail_idx = take(in, 2);
        driver_w16(vr.avail + 2, mem.avail_idx);
        break;
    case 4:
        driver_w16(vr.avail, take(in, 2));
        break;
    case 5:
        driver_w16(vr.avail + 4 + 2 * (uint64_t)vr.num, take(in, 2));
        break;
    case 6:
        gpa = take(in, 3);
        gpa = region_base[(gpa >> 16) % NREGIONS] + (gpa & 0xffff);
        n = MIN(take(in, 1) % 64, in->left);
        memcpy(buf, in->p, n);
        in->p += n;
        in->left -= n;
        gcopy(&mem, gpa, buf, n, true);
        gcopy(&shadow, gpa, buf, n, true);
        break;
    case 7:
        n = take(in, 1) % 16 + 1;
        while (n-- && do_pop() > 0) {
            continue;
        }
        break;
    case 8:
        n = take(in, 1) % 16 + 1;
        do_push(n, take(in, 4));
        break;
    case 9:
        do_publish();
        break;
    case 10:
        do_notify();
        break;
    case 11:
        do_kicks(take(in, 1) & 1);
        break;
    case 12:
        do_unpop(take(in, 1) % 4 + 1);
        break;
    case 13:
        unmap_oldest();
        break;
    case 14:
        mem.chunk = chunks[take(in, 1) % 16];
        break;
    default:
        do_pass();
        break;
    }
    check_mapped();
}

/* Every byte the device changed was written back dirty */
static void check_changes(void)
{
    int r;
    size_t off, j;

    for (r = 0; r < NREGIONS; r++) {
        const uint8_t *a = mem.block[r] + GUARD, *b = shadow.block[r] + GUARD;

        for (off = 0; off < REGION_SIZE; off += 4096) {
            if (!memcmp(a + off, b + off, 4096)) {
                continue;
            }
            for (j = off; j < off + 4096; j++) {
                assert(a[j] == b[j] || mem.dirty[r][j]);
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool initialized;
    Input in = { data, size };
    unsigned int num, feat, layout, i;
    uint64_t features = 0, desc, avail, used;
    uint16_t idx;
    bool be;

    if (!initialized) {
        mem_init(&mem, 1, 0);
        mem_init(&shadow, 1, 0);
        ops.map = fake_ops.map;
        ops.unmap = check_unmap;
        initialized = true;
    }
    num = 1u << (take(&in, 1) % 16);
    feat = take(&in, 1);
    features |= feat & 1 ? VRING_F_INDIRECT_DESC : 0;
    features |= feat & 2 ? VRING_F_EVENT_IDX : 0;
    features |= feat & 4 ? VRING_F_VERSION_1 : 0;
    features |= feat & 8 ? VRING_F_NOTIFY_ON_EMPTY : 0;
    be = (feat & 16) && !(feat & 4);
    i = take(&in, 1);
    layout = take(&in, 1);
    idx = take(&in, 2);
    desc = place(0, layout & 3, num);
    avail = place(1, (layout >> 2) & 3, num);
    used = place(2, (layout >> 4) & 3, num);

    mem_reset(&mem, num, avail, be, idx);
    mem_reset(&shadow, num, avail, be, idx);
    if (pops) {
        memset(allowed, 0, sizeof(allowed));
    }
    memset(slot_busy, 0, sizeof(slot_busy));
    lo = hi = pops = 0;
    used_lo = used;
    used_size = 6 + 8 * (uint64_t)num;
    broken_msg = NULL;
    assert(vring_setup(&vr, &ops, &mem, num, desc, avail, used, features,
                      feat & 16, idx, idx) == 0);
    assert(vr.big_endian == be);
    /* The driver's and the device's indices agree at the start */
    driver_w16(avail + 2, idx);
    driver_w16(used + 2, idx);
    mem.chunk = chunks[i % 16];

    while (in.left) {
        op(&in);
    }

    for (i = lo; i < hi; i++) {
        unmap_slot(i);
    }
    assert(mem.mapped == 0);
    assert(mem_guards_intact(&mem));
    check_changes();
    return 0;
}
