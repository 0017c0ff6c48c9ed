/*
 * virtio-blk's dataplane on Ferry's vring engine
 *
 * What it owns: running a virtio-blk device's split virtqueues in its
 * IOThread through the vring engine (hw/virtio/vring-engine.c) instead
 * of the virtio core's virtqueue_pop()/virtqueue_push(): the kick and
 * poll handlers, popping chains into VirtIOBlockReqs that virtio-blk
 * handles as always, pushing completions, and publishing the used index
 * and notifying the driver when the dataplane asks (per completion with
 * EVENT_IDX, once per queue per batch without).
 *
 * What stays the virtio core's: the device state.  The engine takes each
 * queue's indices from the core when the dataplane starts and hands them
 * back when it stops, after the block layer drained the device's
 * requests; an element popped here is a VirtQueueElement mapped the
 * core's way, so virtio-blk's migration state (requests held by
 * werror/rerror=stop), reset and a later push by the core handle it as
 * their own.
 *
 * Used for a device with iothread= and x-vring-engine=on (the default),
 * unless the device sits behind a vIOMMU or negotiated the packed ring
 * (trace event virtio_blk_vring_fallback says which).
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_BLOCK_DATAPLANE_VIRTIO_BLK_VRING_H
#define HW_BLOCK_DATAPLANE_VIRTIO_BLK_VRING_H

#include "hw/virtio/virtio-blk.h"

typedef struct VirtIOBlockVring VirtIOBlockVring;

/*
 * Take @vblk's queues over, or return NULL when the engine is not used
 * for this device (the core's path then runs them).  Context: BQL held,
 * the dataplane starting, no handler attached yet.
 */
VirtIOBlockVring *virtio_blk_vring_start(VirtIOBlock *vblk);

/* Attach (detach) the queues' kick and poll handlers in @ctx */
void virtio_blk_vring_attach(VirtIOBlockVring *v, AioContext *ctx);
void virtio_blk_vring_detach(VirtIOBlockVring *v, AioContext *ctx);

/* Complete @req: unmap its buffers, fill its used element */
void virtio_blk_vring_push(VirtIOBlockVring *v, VirtIOBlockReq *req);

/* Publish queue @n's used elements; notify the driver if it asks */
void virtio_blk_vring_notify(VirtIOBlockVring *v, unsigned int n);

/*
 * Hand the queues back to the virtio core and free @v.  Context: BQL
 * held, handlers detached, the device's requests drained, everything
 * pushed published (virtio_blk_vring_notify()).
 */
void virtio_blk_vring_stop(VirtIOBlockVring *v);

#endif
