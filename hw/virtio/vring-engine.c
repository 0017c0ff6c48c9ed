/*
 * Ferry's vring engine: split virtqueues over an abstract guest memory
 *
 * See include/hw/virtio/vring-engine.h for what it owns and why.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bswap.h"
#include "hw/virtio/vring-engine.h"

/* Layout of the split ring (virtio 1.1 2.6) */
#define DESC_SIZE           16
#define AVAIL_IDX(vr)       ((vr)->avail + 2)
#define AVAIL_RING(vr, i)   ((vr)->avail + 4 + 2 * (uint64_t)(i))
#define USED_EVENT(vr)      AVAIL_RING(vr, (vr)->num)
#define USED_IDX(vr)        ((vr)->used + 2)
#define USED_RING(vr, i)    ((vr)->used + 4 + 8 * (uint64_t)(i))
#define AVAIL_EVENT(vr)     USED_RING(vr, (vr)->num)

typedef struct VRingDesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} VRingDesc;

static int vring_fail(VRing *vr, int err, const char *msg)
{
    vr->broken = true;
    vr->error = msg;
    return err;
}

/*
 * Copy guest [gpa, gpa + len) to or from @buf, split wherever the
 * accessor's mappings end.  False when any part is not guest RAM.
 */
static bool vring_copy(VRing *vr, uint64_t gpa, void *buf, uint64_t len,
                       bool is_write)
{
    uint8_t *p = buf;

    if (gpa + len < gpa) {
        return false;
    }
    while (len) {
        uint64_t l = len;
        void *host = vr->ops->map(vr->opaque, gpa, &l, is_write);

        if (!host || !l) {
            return false;
        }
        l = MIN(l, len);
        if (is_write) {
            memcpy(host, p, l);
        } else {
            memcpy(p, host, l);
        }
        vr->ops->unmap(vr->opaque, host, l, is_write, is_write ? l : 0);
        gpa += l;
        p += l;
        len -= l;
    }
    return true;
}

static uint16_t vring_to16(const VRing *vr, uint16_t v)
{
    return vr->big_endian ? be16_to_cpu(v) : le16_to_cpu(v);
}

static uint32_t vring_to32(const VRing *vr, uint32_t v)
{
    return vr->big_endian ? be32_to_cpu(v) : le32_to_cpu(v);
}

static uint64_t vring_to64(const VRing *vr, uint64_t v)
{
    return vr->big_endian ? be64_to_cpu(v) : le64_to_cpu(v);
}

/*
 * A 16-bit ring field: one single-copy-atomic load when the field is
 * contiguous in host memory (it is naturally aligned), else a copy.
 */
static bool vring_ld16(VRing *vr, uint64_t gpa, uint16_t *val)
{
    uint64_t l = 2;
    uint16_t *host = vr->ops->map(vr->opaque, gpa, &l, false);
    uint16_t v;

    if (host && l >= 2 && !((uintptr_t)host & 1)) {
        v = qatomic_read(host);
        vr->ops->unmap(vr->opaque, host, l, false, 0);
    } else {
        if (host) {
            vr->ops->unmap(vr->opaque, host, l, false, 0);
        }
        if (!vring_copy(vr, gpa, &v, 2, false)) {
            return false;
        }
    }
    *val = vring_to16(vr, v);
    return true;
}

static bool vring_st16(VRing *vr, uint64_t gpa, uint16_t val)
{
    uint64_t l = 2;
    uint16_t v = vr->big_endian ? cpu_to_be16(val) : cpu_to_le16(val);
    uint16_t *host = vr->ops->map(vr->opaque, gpa, &l, true);

    if (host && l >= 2 && !((uintptr_t)host & 1)) {
        qatomic_set(host, v);
        vr->ops->unmap(vr->opaque, host, l, true, 2);
        return true;
    }
    if (host) {
        vr->ops->unmap(vr->opaque, host, l, true, 0);
    }
    return vring_copy(vr, gpa, &v, 2, true);
}

/*
 * Descriptor @i of @table, copied out of guest memory before any field
 * is looked at: from @host when the table is mapped whole, else through
 * vring_copy(), which splits at the mappings' ends.
 */
static bool vring_read_desc(VRing *vr, uint64_t table, const uint8_t *host,
                            unsigned int i, VRingDesc *d)
{
    uint8_t raw[DESC_SIZE];
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;

    if (host) {
        memcpy(raw, host + (uint64_t)i * DESC_SIZE, DESC_SIZE);
    } else if (!vring_copy(vr, table + (uint64_t)i * DESC_SIZE, raw,
                           DESC_SIZE, false)) {
        return false;
    }
    memcpy(&addr, raw, 8);
    memcpy(&len, raw + 8, 4);
    memcpy(&flags, raw + 12, 2);
    memcpy(&next, raw + 14, 2);
    d->addr = vring_to64(vr, addr);
    d->len = vring_to32(vr, len);
    d->flags = vring_to16(vr, flags);
    d->next = vring_to16(vr, next);
    return true;
}

int vring_setup(VRing *vr, const VRingMemOps *ops, void *opaque,
               unsigned int num, uint64_t desc, uint64_t avail, uint64_t used,
               uint64_t features, bool legacy_big_endian,
               uint16_t last_avail_idx, uint16_t used_idx)
{
    memset(vr, 0, sizeof(*vr));
    if (!num || num > VRING_MAX_NUM || (num & (num - 1))) {
        return vring_fail(vr, -EINVAL, "virtqueue size is not a power of 2 "
                          "up to 32768");
    }
    vr->ops = ops;
    vr->opaque = opaque;
    vr->num = num;
    vr->desc = desc;
    vr->avail = avail;
    vr->used = used;
    vr->features = features;
    vr->big_endian = !(features & VRING_F_VERSION_1) && legacy_big_endian;
    vr->last_avail_idx = last_avail_idx;
    vr->shadow_avail_idx = last_avail_idx;
    vr->used_idx = used_idx;
    vr->published_used_idx = used_idx;
    return 0;
}

/*
 * The one read of avail->idx for a pass, checked against last_avail_idx,
 * then the read barrier that orders it before the ring entries and the
 * descriptors they name.
 */
static int vring_read_avail_idx(VRing *vr)
{
    uint16_t idx;

    if (!vring_ld16(vr, AVAIL_IDX(vr), &idx)) {
        return vring_fail(vr, -EFAULT, "virtqueue avail ring not in guest "
                          "RAM");
    }
    if ((uint16_t)(idx - vr->last_avail_idx) > vr->num) {
        return vring_fail(vr, -EOVERFLOW, "virtqueue avail index jumped by "
                          "more than the queue size");
    }
    vr->shadow_avail_idx = idx;
    /* The avail index before the ring entries and descriptors it covers */
    smp_rmb();
    return 0;
}

static void vring_unmap_iov(VRing *vr, struct iovec *iov, unsigned int n,
                            bool is_write)
{
    unsigned int i;

    for (i = 0; i < n; i++) {
        vr->ops->unmap(vr->opaque, iov[i].iov_base, iov[i].iov_len, is_write,
                       is_write ? iov[i].iov_len : 0);
    }
}

void vring_elem_unmap(VRing *vr, VRingElem *elem)
{
    vring_unmap_iov(vr, elem->iov, elem->out_num, false);
    vring_unmap_iov(vr, elem->iov + elem->out_num, elem->in_num, true);
    elem->out_num = elem->in_num = 0;
}

/* Append guest [addr, addr + len) to @elem as one or more iovecs */
static int vring_map_buf(VRing *vr, VRingElem *elem, uint64_t addr,
                         uint32_t len, bool is_write)
{
    uint64_t left = len;

    if (addr + left < addr) {
        return vring_fail(vr, -EFAULT, "virtqueue buffer wraps around the "
                          "address space");
    }
    while (left) {
        unsigned int n = elem->out_num + elem->in_num;
        uint64_t l = left;
        void *host;

        if (n >= VRING_MAX_IOV) {
            return vring_fail(vr, -ENOBUFS, "virtqueue element needs too "
                              "many iovecs");
        }
        host = vr->ops->map(vr->opaque, addr, &l, is_write);
        if (!host || !l) {
            return vring_fail(vr, -EFAULT, "virtqueue buffer not in guest "
                              "RAM");
        }
        elem->iov[n].iov_base = host;
        elem->iov[n].iov_len = MIN(l, left);
        elem->gpa[n] = addr;
        if (is_write) {
            elem->in_num++;
        } else {
            elem->out_num++;
        }
        addr += elem->iov[n].iov_len;
        left -= elem->iov[n].iov_len;
    }
    return 0;
}

/* An indirect table mapped whole for the walk, when it is contiguous */
typedef struct VRingIndirect {
    uint8_t *host;
    uint64_t len;
} VRingIndirect;

static void vring_map_indirect(VRing *vr, VRingIndirect *ind, uint64_t gpa,
                               uint32_t len)
{
    uint64_t l = len;

    ind->host = vr->ops->map(vr->opaque, gpa, &l, false);
    ind->len = l;
    if (ind->host && l < len) {
        /* Split in host memory: read it descriptor by descriptor */
        vr->ops->unmap(vr->opaque, ind->host, l, false, 0);
        ind->host = NULL;
    }
}

/*
 * Walk the chain at @head: descriptors of the queue's table, the last of
 * which may refer to an indirect table (1.1 2.6.5.3.2: "zero or more
 * normal chained descriptors followed by a single descriptor with
 * VIRTQ_DESC_F_INDIRECT").  Each table bounds the number of descriptors
 * walked in it by its size, which catches loops.
 */
static int vring_walk_chain(VRing *vr, unsigned int head, VRingElem *elem,
                            VRingIndirect *ind)
{
    uint64_t table = vr->desc;
    unsigned int max = vr->num, i = head, count = 0, total = 0;
    bool indirect = false;
    VRingDesc d;
    int r;

    for (;;) {
        if (++count > max) {
            return vring_fail(vr, -ELOOP, "virtqueue descriptor chain loops "
                              "or is longer than its table");
        }
        if (!vring_read_desc(vr, table, ind->host, i, &d)) {
            return vring_fail(vr, -EFAULT, "virtqueue descriptor table not "
                              "in guest RAM");
        }
        if (d.flags & VRING_DESC_INDIRECT) {
            if (indirect) {
                return vring_fail(vr, -EMLINK, "virtqueue nested indirect "
                                  "descriptor");
            }
            if (!vring_has_feature(vr, VRING_F_INDIRECT_DESC)) {
                return vring_fail(vr, -EBADMSG, "virtqueue indirect "
                                  "descriptor without INDIRECT_DESC");
            }
            if (d.flags & VRING_DESC_NEXT) {
                return vring_fail(vr, -EBADMSG, "virtqueue indirect "
                                  "descriptor with NEXT");
            }
            if (!d.len || d.len % DESC_SIZE) {
                return vring_fail(vr, -EMSGSIZE, "virtqueue indirect table "
                                  "length not a non-zero multiple of 16");
            }
            if (d.len / DESC_SIZE > VRING_MAX_INDIRECT) {
                return vring_fail(vr, -EMSGSIZE, "virtqueue indirect table "
                                  "too large");
            }
            table = d.addr;
            vring_map_indirect(vr, ind, table, d.len);
            max = d.len / DESC_SIZE;
            i = 0;
            count = 0;
            indirect = true;
            continue;
        }
        /*
         * 1.1 2.6.5.3.1: no chain longer than the queue, counting the
         * descriptors of an indirect table instead of the one naming it.
         */
        if (++total > vr->num) {
            return vring_fail(vr, -ELOOP, "virtqueue descriptor chain "
                              "longer than the queue");
        }
        if (d.flags & VRING_DESC_WRITE) {
            r = vring_map_buf(vr, elem, d.addr, d.len, true);
        } else if (elem->in_num) {
            return vring_fail(vr, -EACCES, "virtqueue readable descriptor "
                              "after a writable one");
        } else {
            r = vring_map_buf(vr, elem, d.addr, d.len, false);
        }
        if (r < 0) {
            return r;
        }
        if (!(d.flags & VRING_DESC_NEXT)) {
            return 0;
        }
        if (d.next >= max) {
            return vring_fail(vr, -ENXIO, "virtqueue next descriptor index "
                              "out of range");
        }
        i = d.next;
    }
}

static int vring_walk(VRing *vr, unsigned int head, VRingElem *elem)
{
    VRingIndirect ind = { NULL, 0 };
    int r = vring_walk_chain(vr, head, elem, &ind);

    if (ind.host) {
        vr->ops->unmap(vr->opaque, ind.host, ind.len, false, 0);
    }
    return r;
}

int vring_pop(VRing *vr, VRingElem *elem)
{
    uint16_t head;
    int r;

    elem->out_num = elem->in_num = 0;
    if (vr->broken) {
        return -EIO;
    }
    if (vr->last_avail_idx == vr->shadow_avail_idx) {
        r = vring_read_avail_idx(vr);
        if (r < 0) {
            return r;
        }
        if (vr->last_avail_idx == vr->shadow_avail_idx) {
            return 0;
        }
    }
    if ((uint16_t)(vr->last_avail_idx - vr->used_idx) >= vr->num) {
        return vring_fail(vr, -ENOSPC, "virtqueue has more elements in use "
                          "than its size");
    }
    if (!vring_ld16(vr, AVAIL_RING(vr, vr->last_avail_idx % vr->num),
                    &head)) {
        return vring_fail(vr, -EFAULT, "virtqueue avail ring not in guest "
                          "RAM");
    }
    if (head >= vr->num) {
        return vring_fail(vr, -ERANGE, "virtqueue head index out of range");
    }
    elem->head = head;
    r = vring_walk(vr, head, elem);
    if (r < 0) {
        vring_unmap_iov(vr, elem->iov, elem->out_num + elem->in_num, false);
        elem->out_num = elem->in_num = 0;
        return r;
    }
    vr->last_avail_idx++;
    return 1;
}

bool vring_has_avail(VRing *vr)
{
    uint16_t idx;

    if (vr->broken) {
        return false;
    }
    if (vr->shadow_avail_idx != vr->last_avail_idx) {
        return true;
    }
    return vring_ld16(vr, AVAIL_IDX(vr), &idx) && idx != vr->last_avail_idx;
}

void vring_unpop(VRing *vr, unsigned int n)
{
    vr->last_avail_idx -= n;
}

int vring_push(VRing *vr, unsigned int head, uint32_t len)
{
    uint32_t e[2];

    if (vr->broken) {
        return -EIO;
    }
    e[0] = vr->big_endian ? cpu_to_be32(head) : cpu_to_le32(head);
    e[1] = vr->big_endian ? cpu_to_be32(len) : cpu_to_le32(len);
    if (!vring_copy(vr, USED_RING(vr, vr->used_idx % vr->num), e, sizeof(e),
                    true)) {
        return vring_fail(vr, -EFAULT, "virtqueue used ring not in guest "
                          "RAM");
    }
    vr->used_idx++;
    return 0;
}

int vring_publish(VRing *vr)
{
    uint16_t old = vr->published_used_idx, new = vr->used_idx;

    if (vr->broken) {
        return -EIO;
    }
    /* The used elements before the index that makes them visible */
    smp_wmb();
    if (!vring_st16(vr, USED_IDX(vr), new)) {
        return vring_fail(vr, -EFAULT, "virtqueue used ring not in guest "
                          "RAM");
    }
    vr->published_used_idx = new;
    /* signalled_used was lapped: it no longer says anything about old */
    if ((uint16_t)(new - vr->signalled_used) < (uint16_t)(new - old)) {
        vr->signalled_used_valid = false;
    }
    return 0;
}

/* virtio 1.1 2.6.7.1: was the driver's event index crossed in (old, new]? */
static bool vring_need_event(uint16_t event, uint16_t new, uint16_t old)
{
    return (uint16_t)(new - event - 1) < (uint16_t)(new - old);
}

bool vring_should_notify(VRing *vr)
{
    uint16_t old, new, v;
    bool valid;

    if (vr->broken) {
        return false;
    }
    /* The used index write before the driver's suppression fields */
    smp_mb();
    if (vring_has_feature(vr, VRING_F_NOTIFY_ON_EMPTY) &&
        vr->published_used_idx != vr->signalled_used &&
        vring_ld16(vr, AVAIL_IDX(vr), &v) && v == vr->last_avail_idx) {
        vr->signalled_used = vr->published_used_idx;
        vr->signalled_used_valid = true;
        return true;
    }
    if (!vring_has_feature(vr, VRING_F_EVENT_IDX)) {
        if (!vring_ld16(vr, vr->avail, &v)) {
            return true;
        }
        return !(v & VRING_AVAIL_NO_INTERRUPT);
    }
    old = vr->signalled_used;
    valid = vr->signalled_used_valid;
    new = vr->signalled_used = vr->published_used_idx;
    vr->signalled_used_valid = true;
    if (!valid || !vring_ld16(vr, USED_EVENT(vr), &v)) {
        return true;
    }
    return vring_need_event(v, new, old);
}

int vring_set_notification(VRing *vr, bool enable)
{
    bool ok;
    int r;

    if (vr->broken) {
        return -EIO;
    }
    if (vring_has_feature(vr, VRING_F_EVENT_IDX)) {
        /* With EVENT_IDX, disabling is simply not moving avail_event */
        ok = !enable || vring_st16(vr, AVAIL_EVENT(vr), vr->last_avail_idx);
    } else {
        ok = vring_st16(vr, vr->used, enable ? 0 : VRING_USED_NO_NOTIFY);
    }
    if (!ok) {
        return vring_fail(vr, -EFAULT, "virtqueue used ring not in guest "
                          "RAM");
    }
    if (!enable) {
        return 0;
    }
    /* The enable before the re-check: else a kick can be lost */
    smp_mb();
    r = vring_read_avail_idx(vr);
    if (r < 0) {
        return r;
    }
    return vr->shadow_avail_idx != vr->last_avail_idx;
}
