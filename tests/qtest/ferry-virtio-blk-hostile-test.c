/*
 * Ferry virtio-blk hostile-ring qtest
 *
 * A guest that breaks the split-ring rules must get its virtio-blk
 * device marked broken (virtio_error: VIRTIO_CONFIG_S_NEEDS_RESET in the
 * device status) and nothing else: QEMU keeps running, nothing outside
 * the request's buffers changes in guest RAM, a second virtio-blk device
 * in the same IOThread keeps doing real I/O, and after a reset the broken
 * device works again (SPEC section 3).
 *
 * Both devices are virtio-blk-pci, modern-only (NEEDS_RESET exists only
 * with VERSION_1), in one IOThread.  Each case resets the hostile device
 * and builds its rings by hand.  Every ring, table, header and buffer
 * lives in an "arena" of guest RAM filled with a guard pattern and
 * shadowed here; after the case every arena byte that the device had no
 * business writing must still hold what the test put there.  The cases
 * of a mode share one QEMU (starting one per case took most of the
 * time): what a case leaves behind is what the next one starts from.
 *
 * Guest RAM is two NUMA nodes, each its own memory-backend-ram: the
 * machine's RAM is then a container of two host allocations, so guest
 * memory is not contiguous in host memory at the nodes' boundary.  The
 * numa-* cases put a descriptor table, an indirect table (one of its
 * descriptors split by the boundary) and a data buffer across it, and the
 * data must make a correct round trip through the disk.
 *
 * Every case runs with the device's default virtqueue path ("default":
 * Ferry's vring engine) and with BASE_PATH_DEVICE_OPTS ("engine-off":
 * the base's generic virtio core), each held to its own expectations
 * (Case's engine_expect and base_expect).  As long as virtio-blk-pci has
 * no ENGINE_PROPERTY the engine is not there: the default path is the
 * base's and is held to base_expect, and the engine-off cases skip.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/units.h"
#include "libqtest.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qlist.h"
#include "libqos/libqos-pc.h"
#include "libqos/libqos-spapr.h"
#include "libqos/virtio.h"
#include "libqos/virtio-pci.h"
#include "standard-headers/linux/virtio_blk.h"
#include "standard-headers/linux/virtio_config.h"
#include "standard-headers/linux/virtio_pci.h"
#include "standard-headers/linux/virtio_ring.h"

/*
 * The extra -device options that select the base's generic virtqueue
 * path instead of Ferry's vring engine.  The "engine-off" cases run only
 * when virtio-blk-pci has the property they name (ENGINE_PROPERTY).
 */
#define BASE_PATH_DEVICE_OPTS   "x-vring-engine=off"
#define ENGINE_PROPERTY         "x-vring-engine"

#define DISK_SIZE               (16 * 1024 * 1024)
#define ARENA_SIZE              0x8000
#define WAIT_US                 (5 * 1000 * 1000)
#define OUTSIDE_RAM             (1ULL << 40)

/* Offsets in a device's arena */
#define A_DESC                  0x0000
#define A_AVAIL                 0x1000
#define A_USED                  0x2000
#define A_HDR                   0x3000
#define A_DATA                  0x3100
#define A_STATUS                0x4200
#define A_TABLE1                0x4400
#define A_TABLE2                0x5800
#define A_MISC                  0x6000
/* The arena across the NUMA boundary: [boundary - 8 KiB, + 12 KiB) */
#define B_ARENA_BEFORE          0x2000
#define B_ARENA_SIZE            0x5000

#define DESC_R                  0
#define DESC_W                  VRING_DESC_F_WRITE
#define NEXT                    VRING_DESC_F_NEXT

typedef enum Expect {
    REFUSE,                 /* NEEDS_RESET, the request not completed */
    COMPLETE,               /* completed correctly, no NEEDS_RESET */
    COMPLETE_OR_REFUSE,     /* either, cleanly */
    REFUSE_LATE,            /* NEEDS_RESET, maybe after stale entries */
} Expect;

typedef struct Arena {
    uint64_t gpa;
    uint64_t size;
    uint8_t *shadow;
} Arena;

typedef struct Range {
    uint64_t gpa, len;
} Range;

typedef struct Dev {
    QVirtioPCIDevice *pci;
    QVirtioDevice *vd;
    QVirtQueue *vq;
    Arena *arena;
    uint16_t avail_idx;
    uint16_t used_idx;
} Dev;

typedef struct Layout {
    const char *machine;
    unsigned ram_mb;        /* two NUMA nodes of half of it each */
} Layout;

typedef struct T {
    QOSState *qs;
    QTestState *qts;
    Dev hostile, sibling;
    GPtrArray *arenas;
    GArray *writable;       /* Range: what the device may write */
    uint64_t boundary;      /* where the second node's RAM starts */
    uint64_t ram_end;
    bool engine;            /* expectations of the engine, not the base */
    /* the hostile request's head and device-writable length */
    uint16_t head;
    uint32_t in_len;
} T;

typedef struct Mode {
    const char *name;
    const char *device_opts;
    bool needs_property;    /* ENGINE_PROPERTY */
} Mode;

typedef struct Case {
    const char *name;
    /*
     * builds and submits the hostile request, and sets T's head and
     * in_len for the case where the device completes it
     */
    void (*run)(T *t);
    Expect engine_expect, base_expect;
} Case;

typedef struct CaseRun {
    const Mode *mode;
    const Case *c;
} CaseRun;

static char *disk_paths[2];
static bool engine_present;
/* The QEMU of the mode being run: the cases of a mode share one */
static T *machine;
static const Mode *machine_mode;

/* Guest memory, every write mirrored into the arenas' shadows */

static void gw(T *t, uint64_t gpa, const void *buf, uint64_t len)
{
    qtest_memwrite(t->qts, gpa, buf, len);
    for (guint i = 0; i < t->arenas->len; i++) {
        Arena *a = g_ptr_array_index(t->arenas, i);
        uint64_t lo = MAX(gpa, a->gpa), hi = MIN(gpa + len, a->gpa + a->size);

        if (lo < hi) {
            memcpy(a->shadow + (lo - a->gpa), (const uint8_t *)buf + (lo - gpa),
                   hi - lo);
        }
    }
}

static void gw16(T *t, uint64_t gpa, uint16_t v)
{
    v = cpu_to_le16(v);
    gw(t, gpa, &v, 2);
}

static uint16_t gr16(T *t, uint64_t gpa)
{
    uint16_t v;

    qtest_memread(t->qts, gpa, &v, 2);
    return le16_to_cpu(v);
}

static uint32_t gr32(T *t, uint64_t gpa)
{
    uint32_t v;

    qtest_memread(t->qts, gpa, &v, 4);
    return le32_to_cpu(v);
}

static uint8_t gr8(T *t, uint64_t gpa)
{
    uint8_t v;

    qtest_memread(t->qts, gpa, &v, 1);
    return v;
}

static void gfill(T *t, uint64_t gpa, uint8_t byte, uint64_t len)
{
    g_autofree uint8_t *buf = g_malloc(len);

    memset(buf, byte, len);
    gw(t, gpa, buf, len);
}

static Arena *arena_new(T *t, uint64_t gpa, uint64_t size)
{
    Arena *a = g_new0(Arena, 1);
    g_autofree uint8_t *fill = g_malloc(size);

    for (uint64_t i = 0; i < size; i++) {
        fill[i] = 0xa5 ^ (uint8_t)(i * 7 + (i >> 8));
    }
    a->gpa = gpa;
    a->size = size;
    a->shadow = g_malloc(size);
    g_ptr_array_add(t->arenas, a);
    gw(t, gpa, fill, size);
    return a;
}

static void allow_write(T *t, uint64_t gpa, uint64_t len)
{
    Range r = { gpa, len };

    g_array_append_val(t->writable, r);
}

/* used->flags is the device's to change at any time (kick suppression) */
static bool used_flags(Dev *d, uint64_t gpa)
{
    return d->vq && gpa - d->vq->used < 2;
}

static bool writable(T *t, uint64_t gpa)
{
    if (used_flags(&t->hostile, gpa) || used_flags(&t->sibling, gpa)) {
        return true;
    }
    for (guint i = 0; i < t->writable->len; i++) {
        Range *r = &g_array_index(t->writable, Range, i);

        if (gpa >= r->gpa && gpa - r->gpa < r->len) {
            return true;
        }
    }
    return false;
}

/*
 * Every arena byte outside the writable ranges must hold what the test
 * put there; then the writable ranges' current contents become the
 * expected ones, and the ranges are forgotten.
 */
static void check_arenas(T *t, const char *when)
{
    for (guint i = 0; i < t->arenas->len; i++) {
        Arena *a = g_ptr_array_index(t->arenas, i);
        g_autofree uint8_t *now = g_malloc(a->size);

        qtest_bufread(t->qts, a->gpa, now, a->size);
        for (uint64_t off = 0; off < a->size; off++) {
            if (now[off] != a->shadow[off] && !writable(t, a->gpa + off)) {
                g_test_message("%s: guest byte 0x%" PRIx64 " changed from "
                               "0x%02x to 0x%02x", when, a->gpa + off,
                               a->shadow[off], now[off]);
                g_assert_not_reached();
            }
        }
        memcpy(a->shadow, now, a->size);
    }
    g_array_set_size(t->writable, 0);
}

/* Rings, by hand, in little endian: the devices are modern-only */

static void desc(T *t, uint64_t table, unsigned i, uint64_t addr,
                 uint32_t len, uint16_t flags, uint16_t next)
{
    struct vring_desc d = {
        .addr = cpu_to_le64(addr),
        .len = cpu_to_le32(len),
        .flags = cpu_to_le16(flags),
        .next = cpu_to_le16(next),
    };

    gw(t, table + 16 * (uint64_t)i, &d, sizeof(d));
}

/*
 * Give the queue @desc_gpa/@avail/@used (the device re-reads them when
 * the queue is enabled again), with empty rings.
 */
static void queue_place(T *t, Dev *d, uint64_t desc_gpa, uint64_t avail,
                        uint64_t used)
{
    unsigned n = d->vq->size;

    d->vq->desc = desc_gpa;
    d->vq->avail = avail;
    d->vq->used = used;
    gfill(t, desc_gpa, 0, 16 * n);
    gfill(t, avail, 0, 6 + 2 * n);
    gfill(t, used, 0, 6 + 8 * n);
    d->vd->bus->queue_select(d->vd, 0);
    d->vd->bus->set_queue_address(d->vd, d->vq);
    qpci_io_writew(d->pci->pdev, d->pci->bar, d->pci->common_cfg_offset +
                   offsetof(struct virtio_pci_common_cfg, queue_enable), 1);
    d->avail_idx = d->used_idx = 0;
}

/* Driver initialization, with the queue in the device's arena */
static void dev_init(T *t, Dev *d)
{
    uint64_t features;

    qvirtio_reset(d->vd);
    qvirtio_set_acknowledge(d->vd);
    qvirtio_set_driver(d->vd);
    features = qvirtio_get_features(d->vd);
    g_assert(features & (1ULL << VIRTIO_F_VERSION_1));
    features &= ~(QVIRTIO_F_BAD_FEATURE | (1ULL << VIRTIO_RING_F_EVENT_IDX) |
                  (1ULL << VIRTIO_BLK_F_SCSI));
    features |= 1ULL << VIRTIO_RING_F_INDIRECT_DESC;
    qvirtio_set_features(d->vd, features);
    g_assert(!qvirtio_is_big_endian(d->vd));
    if (!d->vq) {
        d->vq = qvirtqueue_setup(d->vd, &t->qs->alloc, 0);
        g_assert_cmpuint(16 * d->vq->size, <=, A_AVAIL - A_DESC);
    }
    queue_place(t, d, d->arena->gpa + A_DESC, d->arena->gpa + A_AVAIL,
                d->arena->gpa + A_USED);
}

/* DRIVER_OK, also when the device already wants a reset */
static void dev_ok(Dev *d)
{
    d->vd->bus->set_status(d->vd, d->vd->bus->get_status(d->vd) |
                           VIRTIO_CONFIG_S_DRIVER_OK);
}

static void submit_head(T *t, Dev *d, uint16_t head)
{
    gw16(t, d->vq->avail + 4 + 2 * (d->avail_idx % d->vq->size), head);
    d->avail_idx++;
    gw16(t, d->vq->avail + 2, d->avail_idx);
    d->vd->bus->virtqueue_kick(d->vd, d->vq);
}

static bool needs_reset(Dev *d)
{
    return d->vd->bus->get_status(d->vd) & VIRTIO_CONFIG_S_NEEDS_RESET;
}

/*
 * Wait until the device completes a request or reports NEEDS_RESET.
 * True when a request completed.
 */
static bool wait_outcome(T *t, Dev *d)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_US;

    for (;;) {
        if (gr16(t, d->vq->used + 2) != d->used_idx) {
            return true;
        }
        if (needs_reset(d)) {
            return false;
        }
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(200);
    }
}

/* The completion of @head with @in_len device-writable bytes */
static void check_completed(T *t, Dev *d, uint16_t head, uint32_t in_len,
                            uint64_t status_gpa)
{
    uint64_t elem = d->vq->used + 4 + 8 * (d->used_idx % d->vq->size);

    g_assert_cmpuint(gr16(t, d->vq->used + 2), ==, (uint16_t)(d->used_idx + 1));
    g_assert_cmpuint(gr32(t, elem), ==, head);
    g_assert_cmpuint(gr32(t, elem + 4), ==, in_len);
    g_assert_cmpuint(gr8(t, status_gpa), ==, VIRTIO_BLK_S_OK);
    g_assert(!needs_reset(d));
    d->used_idx++;
}

static void pattern(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = seed * 131 + i * 7 + (i >> 9);
    }
}

static void blk_hdr(T *t, uint64_t gpa, uint32_t type, uint64_t sector)
{
    struct virtio_blk_outhdr hdr = {
        .type = cpu_to_le32(type),
        .ioprio = 0,
        .sector = cpu_to_le64(sector),
    };

    gw(t, gpa, &hdr, sizeof(hdr));
}

/*
 * One well-formed request of @len bytes at @data: header, data, status in
 * descriptors 0..2 of the device's table; wait for it and check it.
 */
static void request(T *t, Dev *d, uint32_t type, uint64_t sector,
                    uint64_t data, uint32_t len)
{
    uint64_t a = d->arena->gpa;
    bool in = type == VIRTIO_BLK_T_IN;

    blk_hdr(t, a + A_HDR, type, sector);
    gfill(t, a + A_STATUS, 0xff, 1);
    desc(t, d->vq->desc, 0, a + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, d->vq->desc, 1, data, len, (in ? DESC_W : DESC_R) | NEXT, 2);
    desc(t, d->vq->desc, 2, a + A_STATUS, 1, DESC_W, 0);
    allow_write(t, d->vq->used, 6 + 8 * d->vq->size);
    allow_write(t, a + A_STATUS, 1);
    if (in) {
        allow_write(t, data, len);
    }
    submit_head(t, d, 0);
    g_assert(wait_outcome(t, d));
    check_completed(t, d, 0, in ? len + 1 : 1, a + A_STATUS);
    check_arenas(t, "well-formed request");
}

/* Write @len bytes at sector @sector, read them back, compare */
static void round_trip(T *t, Dev *d, uint64_t sector, unsigned seed)
{
    uint64_t data = d->arena->gpa + A_DATA;
    g_autofree uint8_t *out = g_malloc(4096);
    g_autofree uint8_t *back = g_malloc(4096);

    pattern(out, 4096, seed);
    gw(t, data, out, 4096);
    request(t, d, VIRTIO_BLK_T_OUT, sector, data, 4096);
    gfill(t, data, 0, 4096);
    request(t, d, VIRTIO_BLK_T_IN, sector, data, 4096);
    qtest_memread(t->qts, data, back, 4096);
    g_assert_cmpmem(back, 4096, out, 4096);
}

static void check_running(T *t)
{
    QDict *resp = qtest_qmp(t->qts, "{ 'execute': 'query-status' }");
    QDict *ret = qdict_get_qdict(resp, "return");

    g_assert_cmpstr(qdict_get_str(ret, "status"), ==, "running");
    qobject_unref(resp);
}

static void dev_find(T *t, Dev *d, int slot)
{
    d->pci = virtio_pci_new(t->qs->pcibus,
                            &(QPCIAddress) { .devfn = QPCI_DEVFN(slot, 0) });
    g_assert_nonnull(d->pci);
    g_assert_cmpint(d->pci->vdev.device_type, ==, VIRTIO_ID_BLOCK);
    qvirtio_pci_device_enable(d->pci);
    d->vd = &d->pci->vdev;
    d->arena = arena_new(t, guest_alloc(&t->qs->alloc, ARENA_SIZE),
                         ARENA_SIZE);
}

static T *start(const Mode *mode)
{
    T *t = g_new0(T, 1);
    const char *arch = qtest_get_arch();
    bool ppc = g_str_equal(arch, "ppc64");
    /* pseries wants NUMA nodes in multiples of 256 MiB */
    Layout l = ppc ? (Layout) { "pseries," PSERIES_DEFAULT_CAPABILITIES, 512 }
                   : (Layout) { "pc", 256 };
    const char *opts = mode->device_opts;
    g_autofree char *cmd = g_strdup_printf(
        "-machine %s -m %uM "
        "-object memory-backend-ram,id=ram0,size=%uM "
        "-object memory-backend-ram,id=ram1,size=%uM "
        "-numa node,nodeid=0,memdev=ram0 -numa node,nodeid=1,memdev=ram1 "
        "-object iothread,id=io0 "
        "-drive if=none,id=hostile,file=%s,format=raw "
        "-drive if=none,id=sibling,file=%s,format=raw "
        "-device virtio-blk-pci,id=hblk,drive=hostile,iothread=io0,"
        "addr=04.0,disable-legacy=on,disable-modern=off%s%s "
        "-device virtio-blk-pci,id=sblk,drive=sibling,iothread=io0,"
        "addr=05.0,disable-legacy=on,disable-modern=off%s%s",
        l.machine, l.ram_mb, l.ram_mb / 2, l.ram_mb / 2,
        disk_paths[0], disk_paths[1],
        *opts ? "," : "", opts, *opts ? "," : "", opts);

    t->qs = ppc ? qtest_spapr_boot("%s", cmd) : qtest_pc_boot("%s", cmd);
    t->qts = t->qs->qts;
    t->arenas = g_ptr_array_new();
    t->writable = g_array_new(false, false, sizeof(Range));
    t->boundary = (uint64_t)l.ram_mb / 2 * MiB;
    t->ram_end = (uint64_t)l.ram_mb * MiB;
    t->engine = engine_present && !mode->needs_property;
    dev_find(t, &t->hostile, 4);
    dev_find(t, &t->sibling, 5);
    dev_init(t, &t->sibling);
    dev_ok(&t->sibling);
    return t;
}

static void finish(T *t)
{
    for (guint i = 0; i < t->arenas->len; i++) {
        Arena *a = g_ptr_array_index(t->arenas, i);

        g_free(a->shadow);
        g_free(a);
    }
    g_ptr_array_free(t->arenas, true);
    g_array_free(t->writable, true);
    qos_object_destroy((QOSGraphObject *)t->hostile.pci);
    qos_object_destroy((QOSGraphObject *)t->sibling.pci);
    g_free(t->hostile.vq);
    g_free(t->sibling.vq);
    qtest_shutdown(t->qs);
    g_free(t);
}

/*
 * The hostile cases.  Each sets up the hostile device (dev_init, then
 * its own ring layout, then dev_ok), submits one request and returns;
 * HA is the hostile device's arena.
 */

#define H(t)        (&(t)->hostile)
#define HA(t)       ((t)->hostile.arena->gpa)
#define HDESC(t)    ((t)->hostile.vq->desc)

static void hostile_begin(T *t)
{
    dev_init(t, H(t));
    dev_ok(H(t));
    gfill(t, HA(t) + A_STATUS, 0xff, 1);
}

/* 0 -> 1 -> 0 */
static void case_desc_loop(T *t)
{
    hostile_begin(t);
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_OUT, 0);
    desc(t, HDESC(t), 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, HDESC(t), 1, HA(t) + A_DATA, 512, DESC_R | NEXT, 0);
    submit_head(t, H(t), 0);
}

/* Every descriptor of the table in one chain, and on round again */
static void case_chain_longer_than_queue(T *t)
{
    unsigned n;

    hostile_begin(t);
    n = H(t)->vq->size;
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_OUT, 0);
    desc(t, HDESC(t), 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    for (unsigned i = 1; i < n; i++) {
        desc(t, HDESC(t), i, HA(t) + A_DATA + 2 * i, 2, DESC_R | NEXT,
             (i + 1) % n);
    }
    submit_head(t, H(t), 0);
}

/*
 * A well-formed write whose indirect table holds queue size + 2
 * descriptors (the header, 512 bytes in 2-byte pieces, the status): the
 * driver "MUST NOT create a descriptor chain longer than the Queue Size
 * of the device" (virtio 1.1 2.6.5.3.1).
 */
static void case_indirect_longer_than_queue(T *t)
{
    unsigned n;
    uint64_t table = HA(t) + A_TABLE1;

    hostile_begin(t);
    n = H(t)->vq->size;
    g_assert_cmpuint(16 * (n + 2), <=, A_TABLE2 - A_TABLE1);
    g_assert_cmpuint(2 * n, ==, 512);
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_OUT, 0);
    desc(t, table, 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    for (unsigned i = 1; i <= n; i++) {
        desc(t, table, i, HA(t) + A_DATA + 2 * (i - 1), 2, DESC_R | NEXT,
             i + 1);
    }
    desc(t, table, n + 1, HA(t) + A_STATUS, 1, DESC_W, 0);
    desc(t, HDESC(t), 0, table, 16 * (n + 2), VRING_DESC_F_INDIRECT, 0);
    submit_head(t, H(t), 0);
}

static void case_head_out_of_range(T *t)
{
    hostile_begin(t);
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_OUT, 0);
    desc(t, HDESC(t), 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, HDESC(t), 1, HA(t) + A_DATA, 512, DESC_R | NEXT, 2);
    desc(t, HDESC(t), 2, HA(t) + A_STATUS, 1, DESC_W, 0);
    submit_head(t, H(t), H(t)->vq->size);
}

static void case_write_before_read(T *t)
{
    hostile_begin(t);
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_OUT, 0);
    desc(t, HDESC(t), 0, HA(t) + A_HDR, 16, DESC_W | NEXT, 1);
    desc(t, HDESC(t), 1, HA(t) + A_DATA, 512, DESC_R | NEXT, 2);
    desc(t, HDESC(t), 2, HA(t) + A_STATUS, 1, DESC_W, 0);
    submit_head(t, H(t), 0);
}

/* An indirect table whose second descriptor is itself indirect */
static void case_nested_indirect(T *t)
{
    uint64_t t1 = HA(t) + A_TABLE1, t2 = HA(t) + A_TABLE2;

    hostile_begin(t);
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_IN, 0);
    desc(t, t2, 0, HA(t) + A_DATA, 512, DESC_W | NEXT, 1);
    desc(t, t2, 1, HA(t) + A_STATUS, 1, DESC_W, 0);
    desc(t, t1, 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, t1, 1, t2, 32, VRING_DESC_F_INDIRECT, 0);
    desc(t, HDESC(t), 0, t1, 32, VRING_DESC_F_INDIRECT, 0);
    submit_head(t, H(t), 0);
}

static void case_indirect_len_not_16(T *t)
{
    uint64_t t1 = HA(t) + A_TABLE1;

    hostile_begin(t);
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_IN, 0);
    desc(t, t1, 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, t1, 1, HA(t) + A_DATA, 512, DESC_W | NEXT, 2);
    desc(t, t1, 2, HA(t) + A_STATUS, 1, DESC_W, 0);
    desc(t, HDESC(t), 0, t1, 40, VRING_DESC_F_INDIRECT, 0);
    submit_head(t, H(t), 0);
}

/* A read whose data buffer is far above RAM */
static void case_buffer_outside_ram(T *t)
{
    hostile_begin(t);
    t->in_len = 513;
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_IN, 0);
    desc(t, HDESC(t), 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, HDESC(t), 1, OUTSIDE_RAM, 512, DESC_W | NEXT, 2);
    desc(t, HDESC(t), 2, HA(t) + A_STATUS, 1, DESC_W, 0);
    submit_head(t, H(t), 0);
}

/* A read into 512 bytes of which the first 256 are the end of RAM */
static void case_buffer_straddles_ram_end(T *t)
{
    uint64_t buf = t->ram_end - 256;

    arena_new(t, t->ram_end - 0x2000, 0x2000);
    hostile_begin(t);
    t->in_len = 513;
    allow_write(t, buf, 256);
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_IN, 0);
    desc(t, HDESC(t), 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, HDESC(t), 1, buf, 512, DESC_W | NEXT, 2);
    desc(t, HDESC(t), 2, HA(t) + A_STATUS, 1, DESC_W, 0);
    submit_head(t, H(t), 0);
}

/* A well-formed request, with avail->idx moved by queue size + 1 */
static void case_avail_idx_jump(T *t)
{
    Dev *d = H(t);

    hostile_begin(t);
    blk_hdr(t, HA(t) + A_HDR, VIRTIO_BLK_T_OUT, 0);
    desc(t, HDESC(t), 0, HA(t) + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, HDESC(t), 1, HA(t) + A_DATA, 512, DESC_R | NEXT, 2);
    desc(t, HDESC(t), 2, HA(t) + A_STATUS, 1, DESC_W, 0);
    d->avail_idx += d->vq->size + 1;
    gw16(t, d->vq->avail + 2, d->avail_idx);
    d->vd->bus->virtqueue_kick(d->vd, d->vq);
}

/*
 * Zero-length descriptors in a write and a read, pointing outside RAM
 * and into guarded RAM, one of them after the status byte: skipped, they
 * map nothing and take no data, and the status is still the last byte of
 * the last non-empty writable buffer.  The read must bring back the
 * written data.  Runs both requests; the harness sees the read.
 */
static void case_zero_length(T *t)
{
    uint64_t a = HA(t);
    uint8_t out[512], back[512];

    hostile_begin(t);
    t->in_len = 513;    /* the harness checks the read's completion */
    pattern(out, sizeof(out), 77);
    gw(t, a + A_DATA, out, sizeof(out));
    blk_hdr(t, a + A_HDR, VIRTIO_BLK_T_OUT, 3);
    desc(t, HDESC(t), 0, a + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, HDESC(t), 1, OUTSIDE_RAM, 0, DESC_R | NEXT, 2);
    desc(t, HDESC(t), 2, a + A_DATA, 512, DESC_R | NEXT, 3);
    desc(t, HDESC(t), 3, a + A_MISC, 0, DESC_R | NEXT, 4);
    desc(t, HDESC(t), 4, a + A_STATUS, 1, DESC_W | NEXT, 5);
    desc(t, HDESC(t), 5, a + A_MISC + 16, 0, DESC_W, 0);
    allow_write(t, a + A_STATUS, 1);
    allow_write(t, H(t)->vq->used, 6 + 8 * H(t)->vq->size);
    submit_head(t, H(t), 0);
    if (!wait_outcome(t, H(t))) {
        return;     /* refused: the harness checks how */
    }
    check_completed(t, H(t), 0, 1, a + A_STATUS);

    gfill(t, a + A_DATA, 0, 512);
    gfill(t, a + A_STATUS, 0xff, 1);
    blk_hdr(t, a + A_HDR, VIRTIO_BLK_T_IN, 3);
    desc(t, HDESC(t), 0, a + A_HDR, 16, DESC_R | NEXT, 1);
    desc(t, HDESC(t), 1, a + A_MISC + 32, 0, DESC_R | NEXT, 2);
    desc(t, HDESC(t), 2, a + A_DATA, 256, DESC_W | NEXT, 3);
    desc(t, HDESC(t), 3, OUTSIDE_RAM, 0, DESC_W | NEXT, 4);
    desc(t, HDESC(t), 4, a + A_DATA + 256, 256, DESC_W | NEXT, 5);
    desc(t, HDESC(t), 5, a + A_STATUS, 1, DESC_W | NEXT, 6);
    desc(t, HDESC(t), 6, a + A_MISC + 48, 0, DESC_W, 0);
    allow_write(t, a + A_DATA, 512);
    submit_head(t, H(t), 0);
    if (!wait_outcome(t, H(t))) {
        return;
    }
    qtest_memread(t->qts, a + A_DATA, back, sizeof(back));
    g_assert_cmpmem(back, sizeof(back), out, sizeof(out));
}

/*
 * Guest memory not contiguous in host memory: the numa-* cases write
 * 4 KiB through the hostile device and read them back; the request
 * structures they place across the nodes' boundary are the descriptor
 * table, an indirect table, or the data buffer.
 */
static void numa_round_trip(T *t, uint64_t table, unsigned first,
                            bool indirect, uint64_t data)
{
    Dev *d = H(t);
    uint64_t a = HA(t);
    uint8_t out[4096], back[4096];

    for (int pass = 0; pass < 2; pass++) {
        bool in = pass == 1;
        uint16_t head = indirect ? 0 : first;

        t->head = head;
        t->in_len = in ? 4097 : 1;

        if (in) {
            gfill(t, data, 0, sizeof(back));
        } else {
            pattern(out, sizeof(out), 91);
            gw(t, data, out, sizeof(out));
        }
        blk_hdr(t, a + A_HDR, in ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT, 40);
        gfill(t, a + A_STATUS, 0xff, 1);
        desc(t, table, first, a + A_HDR, 16, DESC_R | NEXT, first + 1);
        desc(t, table, first + 1, data, 4096, (in ? DESC_W : DESC_R) | NEXT,
             first + 2);
        desc(t, table, first + 2, a + A_STATUS, 1, DESC_W, 0);
        if (indirect) {
            desc(t, d->vq->desc, 0, table, 48, VRING_DESC_F_INDIRECT, 0);
        }
        allow_write(t, d->vq->used, 6 + 8 * d->vq->size);
        allow_write(t, a + A_STATUS, 1);
        if (in) {
            allow_write(t, data, 4096);
        }
        submit_head(t, d, head);
        if (!wait_outcome(t, d)) {
            return;     /* refused: the harness checks how */
        }
        if (!in) {
            check_completed(t, d, head, 1, a + A_STATUS);
            check_arenas(t, "numa write");
        }
    }
    qtest_memread(t->qts, data, back, sizeof(back));
    g_assert_cmpmem(back, sizeof(back), out, sizeof(out));
}

/* The descriptor table across the boundary, the chain across it too */
static void case_numa_desc_table(T *t)
{
    Dev *d = H(t);
    unsigned n;
    uint64_t b = t->boundary;

    arena_new(t, b - B_ARENA_BEFORE, B_ARENA_SIZE);
    dev_init(t, d);
    n = d->vq->size;
    queue_place(t, d, b - 8 * n, b + 0x1000, b + 0x2000);
    dev_ok(d);
    numa_round_trip(t, d->vq->desc, n / 2 - 1, false, HA(t) + A_DATA);
}

/* An indirect table whose second descriptor is split by the boundary */
static void case_numa_indirect_table(T *t)
{
    arena_new(t, t->boundary - B_ARENA_BEFORE, B_ARENA_SIZE);
    hostile_begin(t);
    numa_round_trip(t, t->boundary - 24, 0, true, HA(t) + A_DATA);
}

/* 4 KiB of data, half in each node */
static void case_numa_data_buffer(T *t)
{
    arena_new(t, t->boundary - B_ARENA_BEFORE, B_ARENA_SIZE);
    hostile_begin(t);
    numa_round_trip(t, HDESC(t), 0, false, t->boundary - 2048);
}

static const Case cases[] = {
    { "desc-loop", case_desc_loop, REFUSE, REFUSE },
    { "chain-longer-than-queue", case_chain_longer_than_queue,
      REFUSE, REFUSE },
    /* the base bounds an indirect chain by its table, not the queue */
    { "indirect-longer-than-queue", case_indirect_longer_than_queue,
      REFUSE, COMPLETE_OR_REFUSE },
    { "head-out-of-range", case_head_out_of_range, REFUSE, REFUSE },
    { "write-before-read", case_write_before_read, REFUSE, REFUSE },
    { "nested-indirect", case_nested_indirect, REFUSE, REFUSE },
    { "indirect-len-not-16", case_indirect_len_not_16, REFUSE, REFUSE },
    /*
     * the base maps what is not RAM through the one bounce buffer of
     * address_space_map(): the read "completes", its data dropped
     */
    { "buffer-outside-ram", case_buffer_outside_ram,
      REFUSE, COMPLETE_OR_REFUSE },
    { "buffer-straddles-ram-end", case_buffer_straddles_ram_end,
      REFUSE, COMPLETE_OR_REFUSE },
    /*
     * the base's pop checks only that the ring is not empty: it pops the
     * queue size's worth of (stale) entries, then says "Virtqueue size
     * exceeded"
     */
    { "avail-idx-jump", case_avail_idx_jump, REFUSE, REFUSE_LATE },
    /*
     * the base refuses zero-sized buffers ("zero sized buffers are not
     * allowed"); the engine skips them
     */
    { "zero-length", case_zero_length, COMPLETE, COMPLETE_OR_REFUSE },
    /*
     * the base maps the descriptor table and indirect tables as one
     * MemoryRegionCache each, which stops at the boundary ("Cannot map
     * desc", "Cannot map indirect buffer")
     */
    /*
     * The queue's own table across the boundary is refused by the core
     * when the driver sets the queue up, before any engine runs: the
     * rings are the core's device state, each kept as one
     * MemoryRegionCache whose accessors assert they stay inside it.
     * The engine reads a split table correctly (the unit test's
     * desc-straddle case); an indirect table it walks itself (below).
     */
    { "numa-desc-table", case_numa_desc_table, REFUSE, COMPLETE_OR_REFUSE },
    { "numa-indirect-table", case_numa_indirect_table,
      COMPLETE, COMPLETE_OR_REFUSE },
    { "numa-data-buffer", case_numa_data_buffer, COMPLETE, COMPLETE },
};

/*
 * Wait for NEEDS_RESET, then reset the device: the reset drains the
 * requests it may still have in flight, which write their status late.
 */
static void settle(T *t, Dev *d)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_US;

    while (!needs_reset(d)) {
        g_assert(g_get_monotonic_time() < deadline);
        g_usleep(1000);
    }
    qvirtio_reset(d->vd);
}

static void run_case(const void *opaque)
{
    const CaseRun *cr = opaque;
    T *t;
    Dev *h;
    Expect expect;
    bool completed;
    uint64_t a;

    if (cr->mode->needs_property && !engine_present) {
        g_test_skip("virtio-blk-pci has no " ENGINE_PROPERTY " property");
        return;
    }
    if (machine && machine_mode != cr->mode) {
        finish(machine);
        machine = NULL;
    }
    if (!machine) {
        machine = start(cr->mode);
        machine_mode = cr->mode;
    }
    t = machine;
    h = H(t);
    /* only the two devices' arenas outlive a case */
    while (t->arenas->len > 2) {
        Arena *extra = g_ptr_array_remove_index(t->arenas,
                                                t->arenas->len - 1);

        g_free(extra->shadow);
        g_free(extra);
    }
    t->head = 0;
    t->in_len = 1;
    expect = t->engine ? cr->c->engine_expect : cr->c->base_expect;

    cr->c->run(t);
    a = HA(t);
    /*
     * the device may always set used->flags; nothing else unless it
     * completes the request
     */
    allow_write(t, h->vq->used, 4);
    completed = wait_outcome(t, h);
    if (expect == REFUSE_LATE) {
        settle(t, h);
        g_test_message("%s: the device was marked broken (used index %u)",
                       cr->c->name, gr16(t, h->vq->used + 2));
        allow_write(t, h->vq->used, 6 + 8 * h->vq->size);
        allow_write(t, a + A_STATUS, 1);
    } else if (completed) {
        g_test_message("%s: the request completed", cr->c->name);
        g_assert(expect != REFUSE);
        allow_write(t, h->vq->used, 6 + 8 * h->vq->size);
        allow_write(t, a + A_STATUS, 1);
        check_completed(t, h, t->head, t->in_len, a + A_STATUS);
    } else {
        g_test_message("%s: the device was marked broken", cr->c->name);
        g_assert(expect != COMPLETE);
        g_assert(needs_reset(h));
        g_assert_cmpuint(gr16(t, h->vq->used + 2), ==, h->used_idx);
    }
    /* the in-buffers a case allowed stay allowed, whatever happened */
    check_arenas(t, cr->c->name);
    check_running(t);

    /* the other device in the same IOThread does real I/O */
    round_trip(t, &t->sibling, 64, 1);

    /* after a reset the hostile device works again */
    dev_init(t, h);
    g_assert(!needs_reset(h));
    dev_ok(h);
    round_trip(t, h, 128, 2);
    g_assert(!needs_reset(h));
    g_assert(!needs_reset(&t->sibling));
    check_running(t);
}

static bool device_has_property(const char *typename, const char *prop)
{
    QTestState *qts = qtest_init("-machine none");
    QDict *resp = qtest_qmp(qts, "{ 'execute': 'device-list-properties',"
                            " 'arguments': { 'typename': %s } }", typename);
    QList *props = qdict_get_qlist(resp, "return");
    const QListEntry *e;
    bool found = false;

    QLIST_FOREACH_ENTRY(props, e) {
        QDict *p = qobject_to(QDict, qlist_entry_obj(e));

        found |= g_str_equal(qdict_get_str(p, "name"), prop);
    }
    qobject_unref(resp);
    qtest_quit(qts);
    return found;
}

static char *disk_create(void)
{
    char *path;
    int fd = g_file_open_tmp("ferry-hostile.XXXXXX", &path, NULL);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, DISK_SIZE), ==, 0);
    close(fd);
    return path;
}

int main(int argc, char **argv)
{
    static const Mode modes[] = {
        { "default", "", false },
        { "engine-off", BASE_PATH_DEVICE_OPTS, true },
    };
    static CaseRun runs[ARRAY_SIZE(modes) * ARRAY_SIZE(cases)];
    int ret, n = 0;

    g_test_init(&argc, &argv, NULL);
    if (!qtest_has_device("virtio-blk-pci")) {
        return g_test_run();
    }
    engine_present = device_has_property("virtio-blk-pci", ENGINE_PROPERTY);
    for (size_t m = 0; m < ARRAY_SIZE(modes); m++) {
        for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
            g_autofree char *path = g_strdup_printf(
                "/ferry-virtio-blk-hostile/%s/%s", modes[m].name,
                cases[c].name);

            runs[n] = (CaseRun) { &modes[m], &cases[c] };
            qtest_add_data_func(path, &runs[n++], run_case);
        }
    }
    disk_paths[0] = disk_create();
    disk_paths[1] = disk_create();
    ret = g_test_run();
    if (machine) {
        finish(machine);
    }
    for (int i = 0; i < 2; i++) {
        unlink(disk_paths[i]);
        g_free(disk_paths[i]);
    }
    return ret;
}
