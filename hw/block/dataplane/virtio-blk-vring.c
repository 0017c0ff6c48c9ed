/*
 * virtio-blk's dataplane on Ferry's vring engine
 *
 * See virtio-blk-vring.h for what it owns and what stays the core's.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/iov.h"
#include "block/aio.h"
#include "hw/virtio/virtio-blk.h"
#include "hw/virtio/virtio-bus.h"
#include "hw/virtio/vring-engine-as.h"
#include "sysemu/block-backend.h"
#include "standard-headers/linux/virtio_config.h"
#include "virtio-blk-vring.h"
#include "trace.h"

typedef struct VirtIOBlockVringQueue {
    VirtIOBlockVring *owner;
    VirtQueue *vq;
    unsigned int index;
    bool running;           /* the driver set the queue up */
    bool polling;           /* between poll begin and end: no kicks */
    bool error_reported;
    VRing vr;
    VRingAS mem;
    VRingElem elem;         /* the chain being popped */
} VirtIOBlockVringQueue;

struct VirtIOBlockVring {
    VirtIOBlock *vblk;
    unsigned int nvqs;
    VirtIOBlockVringQueue *queues;
};

/* Why the core's path runs @vblk's queues, or NULL: the engine can */
static const char *virtio_blk_vring_unsupported(VirtIOBlock *vblk)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(vblk);

    if (!vblk->conf.iothread) {
        return "no iothread";
    }
    if (!vblk->conf.vring_engine) {
        return "x-vring-engine=off";
    }
    if (virtio_vdev_has_feature(vdev, VIRTIO_F_RING_PACKED)) {
        return "packed ring negotiated";
    }
    if (virtio_vdev_has_feature(vdev, VIRTIO_F_IOMMU_PLATFORM) &&
        virtio_bus_device_iommu_enabled(vdev)) {
        return "behind a vIOMMU";
    }
    return NULL;
}

/* Mark the device broken once for a queue the driver broke */
static void virtio_blk_vring_error(VirtIOBlockVringQueue *q)
{
    if (!q->error_reported) {
        q->error_reported = true;
        trace_virtio_blk_vring_error(q->owner->vblk, q->index, q->vr.error);
        virtio_error(VIRTIO_DEVICE(q->owner->vblk), "%s", q->vr.error);
    }
}

static void virtio_blk_vring_queue_start(VirtIOBlockVring *v, unsigned int n)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(v->vblk);
    VirtIOBlockVringQueue *q = &v->queues[n];
    unsigned int num = virtio_queue_get_num(vdev, n);
    uint64_t desc = virtio_queue_get_desc_addr(vdev, n);
    uint64_t avail = virtio_queue_get_avail_addr(vdev, n);
    uint64_t used = virtio_queue_get_used_addr(vdev, n);
    uint16_t last_avail_idx, used_idx;

    q->owner = v;
    q->vq = virtio_get_queue(vdev, n);
    q->index = n;
    /* Like the core, a queue the driver did not set up is not run */
    if (!num || !desc) {
        return;
    }
    virtio_queue_get_split_indices(vdev, n, &last_avail_idx, &used_idx);
    vring_as_init(&q->mem, vdev->dma_as, num, desc, avail, used);
    if (vring_setup(&q->vr, &vring_as_ops, &q->mem, num, desc, avail, used,
                   vdev->guest_features, virtio_is_big_endian(vdev),
                   last_avail_idx, used_idx) < 0) {
        virtio_blk_vring_error(q);
    }
    q->running = true;
}

VirtIOBlockVring *virtio_blk_vring_start(VirtIOBlock *vblk)
{
    const char *why = virtio_blk_vring_unsupported(vblk);
    VirtIOBlockVring *v;
    unsigned int n;

    if (why) {
        trace_virtio_blk_vring_fallback(vblk, why);
        return NULL;
    }
    v = g_new0(VirtIOBlockVring, 1);
    v->vblk = vblk;
    v->nvqs = vblk->conf.num_queues;
    v->queues = g_new0(VirtIOBlockVringQueue, v->nvqs);
    for (n = 0; n < v->nvqs; n++) {
        virtio_blk_vring_queue_start(v, n);
    }
    trace_virtio_blk_vring_start(vblk, v->nvqs);
    return v;
}

void virtio_blk_vring_stop(VirtIOBlockVring *v)
{
    VirtIODevice *vdev = VIRTIO_DEVICE(v->vblk);
    unsigned int n;

    for (n = 0; n < v->nvqs; n++) {
        VirtIOBlockVringQueue *q = &v->queues[n];

        if (!q->running) {
            continue;
        }
        trace_virtio_blk_vring_stop(v->vblk, n, q->vr.last_avail_idx,
                                    q->vr.used_idx);
        virtio_queue_set_split_indices(vdev, n, q->vr.last_avail_idx,
                                       q->vr.used_idx);
        vring_as_destroy(&q->mem);
    }
    g_free(v->queues);
    g_free(v);
}

/*
 * Unmap @elem's buffers the way the core would (address_space_unmap()),
 * marking every writable one dirty whole: the block layer may have
 * written any of it.
 */
static void virtio_blk_vring_unmap(VirtIOBlockVringQueue *q,
                                   VirtQueueElement *elem)
{
    unsigned int i;

    for (i = 0; i < elem->out_num; i++) {
        vring_as_ops.unmap(&q->mem, elem->out_sg[i].iov_base,
                           elem->out_sg[i].iov_len, false, 0);
    }
    for (i = 0; i < elem->in_num; i++) {
        vring_as_ops.unmap(&q->mem, elem->in_sg[i].iov_base,
                           elem->in_sg[i].iov_len, true,
                           elem->in_sg[i].iov_len);
    }
}

/*
 * A VirtIOBlockReq whose element is laid out and mapped as the core's
 * virtqueue_pop() would make it, in one allocation.
 */
static VirtIOBlockReq *virtio_blk_vring_req_new(VirtIOBlockVringQueue *q)
{
    VRingElem *e = &q->elem;
    unsigned int n = e->out_num + e->in_num;
    VirtIOBlockReq *req = g_malloc(sizeof(*req) + n * sizeof(struct iovec) +
                                   n * sizeof(hwaddr));
    struct iovec *sg = (struct iovec *)(req + 1);
    hwaddr *addr = (hwaddr *)(sg + n);
    VirtQueueElement *elem = &req->elem;
    unsigned int i;

    memcpy(sg, e->iov, n * sizeof(*sg));
    for (i = 0; i < n; i++) {
        addr[i] = e->gpa[i];
    }
    *elem = (VirtQueueElement) {
        .index = e->head,
        .ndescs = 1,
        .out_num = e->out_num,
        .in_num = e->in_num,
        .out_sg = sg,
        .in_sg = sg + e->out_num,
        .out_addr = addr,
        .in_addr = addr + e->out_num,
    };
    virtio_blk_init_request(q->owner->vblk, q->vq, req);
    return req;
}

static VirtIOBlockReq *virtio_blk_vring_pop(VirtIOBlockVringQueue *q)
{
    int r;

    if (virtio_device_disabled(VIRTIO_DEVICE(q->owner->vblk))) {
        return NULL;
    }
    r = vring_pop(&q->vr, &q->elem);
    if (r < 0) {
        virtio_blk_vring_error(q);
    }
    return r > 0 ? virtio_blk_vring_req_new(q) : NULL;
}

/*
 * Pop and submit everything available, with kicks disabled meanwhile
 * (unless polling has them disabled already); re-enabling re-reads the
 * avail index, so a chain made available in between is not missed.
 */
static void virtio_blk_vring_process(VirtIOBlockVringQueue *q)
{
    VirtIOBlock *s = q->owner->vblk;
    MultiReqBuffer mrb = {};
    VirtIOBlockReq *req;
    int more;

    /* A broken device does not touch its rings until reset */
    if (virtio_device_disabled(VIRTIO_DEVICE(s))) {
        return;
    }
    aio_context_acquire(blk_get_aio_context(s->blk));
    blk_io_plug(s->blk);
    do {
        if (!q->polling) {
            vring_set_notification(&q->vr, false);
        }
        while ((req = virtio_blk_vring_pop(q))) {
            if (virtio_blk_handle_request(req, &mrb)) {
                /* virtio_error() was called: the device is broken */
                virtio_blk_vring_unmap(q, &req->elem);
                g_free(req);
                break;
            }
        }
        more = q->polling ? 0 : vring_set_notification(&q->vr, true);
        /* A broken device pops nothing: do not spin on what is there */
    } while (more > 0 && !virtio_device_disabled(VIRTIO_DEVICE(s)));
    if (more < 0) {
        virtio_blk_vring_error(q);
    }
    if (mrb.num_reqs) {
        virtio_blk_submit_multireq(s, &mrb);
    }
    blk_io_unplug(s->blk);
    aio_context_release(blk_get_aio_context(s->blk));
}

static void virtio_blk_vring_kick(void *opaque)
{
    VirtIOBlockVringQueue *q = opaque;

    if (event_notifier_test_and_clear(virtio_queue_get_host_notifier(q->vq))) {
        virtio_blk_vring_process(q);
    }
}

static bool virtio_blk_vring_poll(void *opaque)
{
    VirtIOBlockVringQueue *q = opaque;

    return vring_has_avail(&q->vr);
}

static void virtio_blk_vring_poll_ready(void *opaque)
{
    virtio_blk_vring_process(opaque);
}

static void virtio_blk_vring_poll_begin(void *opaque)
{
    VirtIOBlockVringQueue *q = opaque;

    q->polling = true;
    if (!virtio_device_disabled(VIRTIO_DEVICE(q->owner->vblk))) {
        vring_set_notification(&q->vr, false);
    }
}

static void virtio_blk_vring_poll_end(void *opaque)
{
    VirtIOBlockVringQueue *q = opaque;

    q->polling = false;
    /* The AioContext polls once more after this: no chain is missed */
    if (!virtio_device_disabled(VIRTIO_DEVICE(q->owner->vblk))) {
        vring_set_notification(&q->vr, true);
    }
}

void virtio_blk_vring_attach(VirtIOBlockVring *v, AioContext *ctx)
{
    unsigned int n;

    for (n = 0; n < v->nvqs; n++) {
        VirtIOBlockVringQueue *q = &v->queues[n];
        int fd = event_notifier_get_fd(virtio_queue_get_host_notifier(q->vq));

        if (!q->running) {
            continue;
        }
        aio_set_fd_handler(ctx, fd, true, virtio_blk_vring_kick, NULL,
                           virtio_blk_vring_poll, virtio_blk_vring_poll_ready,
                           q);
        aio_set_fd_poll(ctx, fd, virtio_blk_vring_poll_begin,
                        virtio_blk_vring_poll_end);
    }
}

void virtio_blk_vring_detach(VirtIOBlockVring *v, AioContext *ctx)
{
    unsigned int n;

    for (n = 0; n < v->nvqs; n++) {
        VirtIOBlockVringQueue *q = &v->queues[n];

        if (!q->running) {
            continue;
        }
        aio_set_fd_handler(ctx,
                           event_notifier_get_fd(
                               virtio_queue_get_host_notifier(q->vq)),
                           true, NULL, NULL, NULL, NULL, NULL);
        q->polling = false;
        /* A kick that came before the handler went: serve it now */
        virtio_blk_vring_kick(q);
    }
}

void virtio_blk_vring_push(VirtIOBlockVring *v, VirtIOBlockReq *req)
{
    VirtIOBlockVringQueue *q = &v->queues[virtio_get_queue_index(req->vq)];

    virtio_blk_vring_unmap(q, &req->elem);
    if (vring_push(&q->vr, req->elem.index, req->in_len) < 0) {
        virtio_blk_vring_error(q);
    }
}

void virtio_blk_vring_notify(VirtIOBlockVring *v, unsigned int n)
{
    VirtIOBlockVringQueue *q = &v->queues[n];
    VirtIODevice *vdev = VIRTIO_DEVICE(v->vblk);

    if (!q->running || q->vr.published_used_idx == q->vr.used_idx) {
        return;
    }
    if (vring_publish(&q->vr) < 0) {
        virtio_blk_vring_error(q);
        return;
    }
    if (vring_should_notify(&q->vr)) {
        trace_virtio_blk_vring_notify(v->vblk, n, q->vr.used_idx);
        /* ISR bit 0, as virtio_notify_irqfd() sets it (old Windows) */
        virtio_set_isr(vdev, 0x1);
        event_notifier_set(virtio_queue_get_guest_notifier(q->vq));
    }
}
