/*
 * Ferry's vring engine: split virtqueues over an abstract guest memory
 *
 * What it owns: the device side of one split virtqueue as described by
 * the virtio 1.1 specification, section 2.6 "Split Virtqueues", plus the
 * legacy (pre-1.0) interface whose ring fields are in the guest's native
 * endianness.  That is: reading the available ring (the avail index read
 * once per pass, then a read barrier), walking a descriptor chain (direct
 * descriptors, optionally followed by one descriptor that refers to an
 * indirect table, never nested) into readable and writable iovecs with
 * every check a hostile guest calls for, writing used elements and
 * publishing the used index once for a batch (after a write barrier),
 * and deciding notifications both ways (full barriers, EVENT_IDX with the
 * wrap-safe comparison).
 *
 * What it does not own, and stays the virtio core's: the device state
 * (features, queue addresses and sizes are given to vring_setup() from
 * VirtQueue/VirtIODevice), migration (the indices are handed back to the
 * core, which migrates them as always) and reset.
 *
 * The engine never dereferences a guest-physical address itself: every
 * access goes through a VRingMemOps accessor, which may return less than
 * asked when guest memory is not contiguous in host memory (a range
 * crossing two RAM regions).  Ring fields and descriptors are read
 * through a copy that splits at such boundaries; buffers become several
 * iovecs.  The engine touches only what the accessor mapped.
 *
 * Errors are a negative errno, distinct per kind, plus a static message
 * (vr->error) that the caller passes to virtio_error(); the queue is then
 * broken until vring_setup() is called again.
 *
 * Zero-length descriptors are skipped (they still count toward the chain
 * bound, so a chain of them cannot loop): the specification does not
 * forbid them, they carry no data, and skipping cannot map anything.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VIRTIO_VRING_ENGINE_H
#define HW_VIRTIO_VRING_ENGINE_H

/* Feature bits the engine tests, as masks of the 64-bit feature word */
#define VRING_F_INDIRECT_DESC   (1ULL << 28)
#define VRING_F_EVENT_IDX       (1ULL << 29)
#define VRING_F_NOTIFY_ON_EMPTY (1ULL << 24)
#define VRING_F_VERSION_1       (1ULL << 32)

/* Descriptor and ring flags (virtio 1.1 2.6.5, 2.6.6, 2.6.8) */
#define VRING_DESC_NEXT         1
#define VRING_DESC_WRITE        2
#define VRING_DESC_INDIRECT     4
#define VRING_AVAIL_NO_INTERRUPT 1
#define VRING_USED_NO_NOTIFY    1

/* Largest queue (1.1: 32768) and the bound on iovecs per element */
#define VRING_MAX_NUM           32768
#define VRING_MAX_IOV           1024
/* Largest indirect table, in descriptors */
#define VRING_MAX_INDIRECT      VRING_MAX_IOV

typedef struct VRingMemOps {
    /*
     * Map guest-physical [@gpa, @gpa + *@plen) for reading, or for
     * writing when @is_write.  Return the host pointer and set *@plen to
     * the length contiguous from there (at most what was asked, possibly
     * less), or return NULL when @gpa is not guest RAM.
     */
    void *(*map)(void *opaque, uint64_t gpa, uint64_t *plen, bool is_write);
    /*
     * Release a mapping of @len bytes; when @is_write, the first
     * @access_len bytes were written and must be marked dirty.
     */
    void (*unmap)(void *opaque, void *host, uint64_t len, bool is_write,
                  uint64_t access_len);
} VRingMemOps;

typedef struct VRing {
    const VRingMemOps *ops;
    void *opaque;
    unsigned int num;
    uint64_t desc, avail, used;     /* guest-physical addresses */
    uint64_t features;
    bool big_endian;                /* the ring's fields */

    uint16_t last_avail_idx;        /* next avail entry to pop */
    uint16_t shadow_avail_idx;      /* avail->idx as last read */
    uint16_t used_idx;              /* next used entry to fill */
    uint16_t published_used_idx;    /* used->idx as last written */
    uint16_t signalled_used;        /* used_idx at the last notify */
    bool signalled_used_valid;

    bool broken;
    const char *error;              /* for virtio_error() */
} VRing;

/*
 * A popped chain: out_num readable iovecs, then in_num writable ones;
 * gpa[i] is where iov[i] starts in guest-physical memory (what the virtio
 * core migrates for an element still in use).
 */
typedef struct VRingElem {
    unsigned int head;
    unsigned int out_num, in_num;
    struct iovec iov[VRING_MAX_IOV];
    uint64_t gpa[VRING_MAX_IOV];
} VRingElem;

static inline bool vring_has_feature(const VRing *vr, uint64_t mask)
{
    return (vr->features & mask) == mask;
}

/*
 * Set up @vr for a queue of @num entries (a power of two) at the given
 * addresses, with the negotiated @features; @legacy_big_endian is the
 * legacy ring's endianness (ignored with VRING_F_VERSION_1: little).
 * The indices start at @last_avail_idx / @used_idx (the core's).
 * Returns 0 or -EINVAL.
 */
int vring_setup(VRing *vr, const VRingMemOps *ops, void *opaque,
               unsigned int num, uint64_t desc, uint64_t avail, uint64_t used,
               uint64_t features, bool legacy_big_endian,
               uint16_t last_avail_idx, uint16_t used_idx);

/*
 * Pop the next available chain into @elem.  Returns 1 when popped, 0 when
 * the ring is empty, or a negative errno (vr->error says why; the queue
 * is broken).  A driver that makes more chains available than the queue
 * holds while the device still uses them breaks the queue (-ENOSPC):
 * the number of elements in use is bounded by the queue size.
 */
int vring_pop(VRing *vr, VRingElem *elem);

/*
 * Whether the driver made chains available since the last pop: a hint
 * for polling (one read of avail->idx, no barrier; vring_pop() decides).
 */
bool vring_has_avail(VRing *vr);

/* Unmap @elem's buffers, marking every writable one dirty */
void vring_elem_unmap(VRing *vr, VRingElem *elem);

/* Give back @n popped elements without using them (they will pop again) */
void vring_unpop(VRing *vr, unsigned int n);

/*
 * Fill the next used element with @head and @len, unpublished.  Returns 0
 * or -EFAULT when the used ring is not guest RAM.
 */
int vring_push(VRing *vr, unsigned int head, uint32_t len);

/* Write barrier, then publish used->idx for everything pushed so far */
int vring_publish(VRing *vr);

/*
 * Whether to notify the driver for what was published: full barrier,
 * then avail->flags (NO_INTERRUPT) or used_event (EVENT_IDX).
 */
bool vring_should_notify(VRing *vr);

/*
 * Enable (or disable) driver notifications (kicks): avail_event with
 * EVENT_IDX, else used->flags NO_NOTIFY.  When enabling, a full barrier
 * and a re-read of avail->idx follow: returns 1 when chains became
 * available meanwhile (process them: no kick will come for them), 0 when
 * not, or a negative errno.
 */
int vring_set_notification(VRing *vr, bool enable);

#endif
