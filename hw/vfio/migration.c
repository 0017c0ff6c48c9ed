/*
 * VFIO device migration, protocol v2 with pre-copy: the core
 *
 * Moves one VFIO device through a migration (the stream is described in
 * include/hw/vfio/vfio-migration.h).  The core owns what it knows of the
 * device's migration state, the data fd of the current transfer session
 * and the chunk buffer; it asks everything of the device through
 * VFIOMigrationOps, so a unit test can drive it over a fake device.
 *
 * Source, with pre-copy:
 *   RUNNING -> PRE_COPY (save_setup; the initial and dirty bytes are
 *   read while the guest runs) -> [PRE_COPY_P2P] -> STOP_COPY (the VM
 *   stops for the switchover; the same fd goes on) -> STOP (after the
 *   last chunk).
 * Source, without:
 *   RUNNING -> [RUNNING_P2P] -> STOP (the VM stops) -> STOP_COPY
 *   (complete) -> STOP.
 * A cancelled or failed migration puts the device where the VM is:
 *   RUNNING, or STOP.
 * Destination:
 *   RUNNING -> RESUMING (load_setup) -> STOP (when the config section
 *   comes, which follows all device data: the kernel checks the state
 *   there, so a bad stream fails the incoming migration rather than the
 *   guest's start) -> RUNNING (the VM starts).
 *
 * A state change that fails puts the device in the recover state the
 * caller names; when that fails too, or the caller has none, the device
 * is reset, which the kernel defines as leaving it RUNNING.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qemu/error-report.h"
#include "qapi/error.h"
#include "migration/migration.h"
#include "migration/qemu-file.h"
#include "migration/savevm.h"
#include "hw/vfio/vfio-migration.h"
#include "trace.h"

/* The smallest chunk buffer, whatever the device's estimate */
#define BUFFER_MIN       (4 * KiB)

static const char *const state_names[] = {
    [VFIO_DEVICE_STATE_ERROR] = "ERROR",
    [VFIO_DEVICE_STATE_STOP] = "STOP",
    [VFIO_DEVICE_STATE_RUNNING] = "RUNNING",
    [VFIO_DEVICE_STATE_STOP_COPY] = "STOP_COPY",
    [VFIO_DEVICE_STATE_RESUMING] = "RESUMING",
    [VFIO_DEVICE_STATE_RUNNING_P2P] = "RUNNING_P2P",
    [VFIO_DEVICE_STATE_PRE_COPY] = "PRE_COPY",
    [VFIO_DEVICE_STATE_PRE_COPY_P2P] = "PRE_COPY_P2P",
};

const char *vfio_mig_state_name(uint32_t state)
{
    if (state < ARRAY_SIZE(state_names) && state_names[state]) {
        return state_names[state];
    }
    return "UNKNOWN";
}

bool vfio_mig_is_running(const VFIOMigration *mig)
{
    return mig->device_state == VFIO_DEVICE_STATE_RUNNING ||
           mig->device_state == VFIO_DEVICE_STATE_RUNNING_P2P;
}

bool vfio_mig_is_precopy(const VFIOMigration *mig)
{
    return mig->device_state == VFIO_DEVICE_STATE_PRE_COPY ||
           mig->device_state == VFIO_DEVICE_STATE_PRE_COPY_P2P;
}

/* The states in which the kernel keeps a data transfer session open */
static bool state_has_session(uint32_t state)
{
    return state == VFIO_DEVICE_STATE_PRE_COPY ||
           state == VFIO_DEVICE_STATE_PRE_COPY_P2P ||
           state == VFIO_DEVICE_STATE_STOP_COPY ||
           state == VFIO_DEVICE_STATE_RESUMING;
}

VFIOMigration *vfio_mig_new(const VFIOMigrationOps *ops, void *dev,
                            const char *name, uint64_t mig_flags,
                            bool allow_precopy)
{
    VFIOMigration *mig = g_new0(VFIOMigration, 1);

    mig->ops = ops;
    mig->dev = dev;
    mig->name = g_strdup(name);
    mig->mig_flags = mig_flags;
    mig->precopy = allow_precopy && (mig_flags & VFIO_MIGRATION_PRE_COPY);
    /* Where the kernel leaves a device when it is opened or reset */
    mig->device_state = VFIO_DEVICE_STATE_RUNNING;
    mig->data_fd = -1;
    return mig;
}

static void vfio_mig_close_session(VFIOMigration *mig)
{
    if (mig->data_fd >= 0) {
        mig->ops->close(mig->dev, mig->data_fd);
        mig->data_fd = -1;
    }
}

static void vfio_mig_free_buffer(VFIOMigration *mig)
{
    g_free(mig->buffer);
    mig->buffer = NULL;
    mig->buffer_size = 0;
}

void vfio_mig_free(VFIOMigration *mig)
{
    vfio_mig_close_session(mig);
    vfio_mig_free_buffer(mig);
    g_free(mig->name);
    g_free(mig);
}

/* One SET_STATE.  A new fd starts a session; a state without one ends it. */
static int vfio_mig_request(VFIOMigration *mig, uint32_t state)
{
    int fd = -1;
    int ret = mig->ops->set_state(mig->dev, state, &fd);

    if (ret) {
        trace_vfio_mig_set_state_failed(mig->name,
                                        vfio_mig_state_name(state), ret);
        return ret;
    }
    trace_vfio_mig_set_state(mig->name, vfio_mig_state_name(mig->device_state),
                             vfio_mig_state_name(state), fd >= 0);
    mig->device_state = state;
    if (fd >= 0) {
        vfio_mig_close_session(mig);
        mig->data_fd = fd;
    } else if (!state_has_session(state)) {
        vfio_mig_close_session(mig);
    }
    return 0;
}

static void vfio_mig_reset(VFIOMigration *mig)
{
    int ret;

    vfio_mig_close_session(mig);
    ret = mig->ops->reset(mig->dev);
    if (ret) {
        /* Nothing else to try: migrations of this device will refuse */
        error_report("%s: device reset after a failed state change failed: "
                     "%s", mig->name, strerror(-ret));
        mig->device_state = VFIO_DEVICE_STATE_ERROR;
        return;
    }
    trace_vfio_mig_reset(mig->name);
    mig->device_state = VFIO_DEVICE_STATE_RUNNING;
}

/*
 * After a failed SET_STATE the device may be anywhere along the path the
 * kernel took: ask it, so that the recovery starts from the truth.
 */
static void vfio_mig_resync_state(VFIOMigration *mig)
{
    uint32_t state;

    if (!mig->ops->get_state(mig->dev, &state)) {
        mig->device_state = state;
        if (!state_has_session(state)) {
            vfio_mig_close_session(mig);
        }
    }
}

int vfio_mig_set_state(VFIOMigration *mig, uint32_t new_state,
                       uint32_t recover_state, Error **errp)
{
    uint32_t from = mig->device_state;
    int ret;

    if (new_state == from) {
        return 0;
    }
    ret = vfio_mig_request(mig, new_state);
    if (!ret) {
        return 0;
    }
    error_setg_errno(errp, -ret, "%s: failed to change the device state "
                     "from %s to %s", mig->name, vfio_mig_state_name(from),
                     vfio_mig_state_name(new_state));
    vfio_mig_resync_state(mig);
    if (recover_state != VFIO_DEVICE_STATE_ERROR &&
        mig->device_state != VFIO_DEVICE_STATE_ERROR &&
        (mig->device_state == recover_state ||
         !vfio_mig_request(mig, recover_state))) {
        return ret;
    }
    vfio_mig_reset(mig);
    return ret;
}

int vfio_mig_vm_prepare(VFIOMigration *mig, bool running, Error **errp)
{
    uint32_t target;

    if (!(mig->mig_flags & VFIO_MIGRATION_P2P)) {
        return 0;
    }
    if (running) {
        target = VFIO_DEVICE_STATE_RUNNING_P2P;
    } else if (vfio_mig_is_precopy(mig)) {
        target = VFIO_DEVICE_STATE_PRE_COPY_P2P;
    } else if (vfio_mig_is_running(mig)) {
        target = VFIO_DEVICE_STATE_RUNNING_P2P;
    } else {
        return 0;
    }
    trace_vfio_mig_vm_prepare(mig->name, running);
    return vfio_mig_set_state(mig, target, VFIO_DEVICE_STATE_ERROR, errp);
}

int vfio_mig_vm_change(VFIOMigration *mig, bool running, RunState state,
                       Error **errp)
{
    uint32_t target;

    if (running) {
        target = VFIO_DEVICE_STATE_RUNNING;
    } else if (vfio_mig_is_precopy(mig) &&
               (state == RUN_STATE_FINISH_MIGRATE ||
                state == RUN_STATE_PAUSED)) {
        /* The switchover: what pre-copy left goes out from STOP_COPY */
        target = VFIO_DEVICE_STATE_STOP_COPY;
    } else {
        target = VFIO_DEVICE_STATE_STOP;
    }
    trace_vfio_mig_vm_change(mig->name, running, RunState_str(state),
                             vfio_mig_state_name(target));
    return vfio_mig_set_state(mig, target, VFIO_DEVICE_STATE_ERROR, errp);
}

int vfio_mig_ended(VFIOMigration *mig, bool vm_running, Error **errp)
{
    trace_vfio_mig_ended(mig->name, vm_running);
    return vfio_mig_set_state(mig, vm_running ? VFIO_DEVICE_STATE_RUNNING :
                              VFIO_DEVICE_STATE_STOP,
                              VFIO_DEVICE_STATE_ERROR, errp);
}

/*
 * Source side
 */

static uint64_t vfio_mig_stop_copy_size(VFIOMigration *mig)
{
    uint64_t bytes;

    if (mig->ops->stop_copy_size(mig->dev, &bytes)) {
        return VFIO_MIG_STOP_COPY_SIZE_UNKNOWN;
    }
    return bytes;
}

/* Ask the kernel what pre-copy data is left; trace it as it shrinks. */
static void vfio_mig_query_precopy(VFIOMigration *mig)
{
    uint64_t initial, dirty;

    if (!vfio_mig_is_precopy(mig) || mig->data_fd < 0 ||
        mig->ops->precopy_info(mig->dev, mig->data_fd, &initial, &dirty)) {
        return;
    }
    if (initial != mig->precopy_init_size ||
        dirty != mig->precopy_dirty_size) {
        trace_vfio_mig_precopy_info(mig->name, initial, dirty);
    }
    mig->precopy_init_size = initial;
    mig->precopy_dirty_size = dirty;
}

/* Without PRECOPY_INFO answers, count what was read off the estimate. */
static void vfio_mig_account_read(VFIOMigration *mig, uint64_t bytes)
{
    uint64_t from_initial = MIN(bytes, mig->precopy_init_size);

    mig->precopy_init_size -= from_initial;
    mig->precopy_dirty_size -= MIN(bytes - from_initial,
                                   mig->precopy_dirty_size);
}

/*
 * A reset of the device (by the guest, or system_reset) ends its data
 * session behind the core's back: the kernel puts it in RUNNING and the
 * fd stops matching the device.  Check before trusting the fd.
 */
static int vfio_mig_check_state(VFIOMigration *mig)
{
    uint32_t state;
    int ret = mig->ops->get_state(mig->dev, &state);

    if (ret) {
        error_report("%s: cannot read the device's migration state: %s",
                     mig->name, strerror(-ret));
        return ret;
    }
    if (state != mig->device_state) {
        error_report("%s: the device is in %s, not %s: it was reset during "
                     "the migration", mig->name, vfio_mig_state_name(state),
                     vfio_mig_state_name(mig->device_state));
        mig->device_state = state;
        if (!state_has_session(state)) {
            vfio_mig_close_session(mig);
        }
        return -ESTALE;
    }
    return 0;
}

/*
 * One chunk of device data into the stream: its size, 0 when the device
 * has nothing more for now, or a negative errno.
 */
static ssize_t vfio_mig_save_chunk(QEMUFile *f, VFIOMigration *mig)
{
    ssize_t n = mig->ops->read(mig->dev, mig->data_fd, mig->buffer,
                               mig->buffer_size);

    /*
     * The end of what the device has now.  The uAPI says a PRE_COPY read
     * fails with ENOMSG there, and mlx5 and hisi-acc do so; mtty returns
     * 0, as every driver does at the end of STOP_COPY.  Both mean the
     * same, and neither is an error.
     */
    if (n == 0 || n == -ENOMSG) {
        return 0;
    }
    if (n < 0) {
        error_report("%s: reading the device's migration data failed: %s",
                     mig->name, strerror(-n));
        return n;
    }
    qemu_put_be64(f, VFIO_MIG_FLAG_DEV_DATA_STATE);
    qemu_put_be64(f, n);
    qemu_put_buffer(f, mig->buffer, n);
    mig->bytes += n;
    trace_vfio_mig_save_chunk(mig->name, n);
    return qemu_file_get_error(f) ?: n;
}

static int vfio_mig_save_prepare(void *opaque, Error **errp)
{
    VFIOMigration *mig = opaque;

    if (migrate_postcopy_ram()) {
        error_setg(errp, "%s: VFIO migration is not supported with postcopy "
                   "migration", mig->name);
        return -EOPNOTSUPP;
    }
    if (migrate_background_snapshot()) {
        error_setg(errp, "%s: VFIO migration is not supported with "
                   "background snapshot", mig->name);
        return -EOPNOTSUPP;
    }
    if (mig->device_state == VFIO_DEVICE_STATE_ERROR) {
        error_setg(errp, "%s: the device is in the ERROR state and cannot "
                   "migrate", mig->name);
        return -EIO;
    }
    return 0;
}

static int vfio_mig_save_setup(QEMUFile *f, void *opaque)
{
    VFIOMigration *mig = opaque;
    uint64_t stop_copy = vfio_mig_stop_copy_size(mig);
    Error *err = NULL;

    mig->buffer_size = MAX(MIN(stop_copy, VFIO_MIG_CHUNK_MAX),
                           BUFFER_MIN);
    mig->buffer = g_malloc(mig->buffer_size);
    mig->bytes = 0;
    mig->initial_data_sent = false;
    mig->precopy_init_size = mig->precopy_dirty_size = 0;
    qemu_put_be64(f, VFIO_MIG_FLAG_DEV_SETUP_STATE);

    /* A stopped VM's device has nothing to pre-copy: complete does it all */
    if (mig->precopy && vfio_mig_is_running(mig)) {
        int ret = vfio_mig_set_state(mig, VFIO_DEVICE_STATE_PRE_COPY,
                                     mig->device_state, &err);
        if (ret) {
            error_report_err(err);
            return ret;
        }
        vfio_mig_query_precopy(mig);
    }
    qemu_put_be64(f, VFIO_MIG_FLAG_END_OF_STATE);
    trace_vfio_mig_save_setup(mig->name, mig->buffer_size, stop_copy);
    return qemu_file_get_error(f);
}

/*
 * MIG_DATA_SIZE's stop-copy size already counts the pre-copy bytes not
 * read yet: adding PRECOPY_INFO's on top (as upstream did until 8.2)
 * counts them twice and delays convergence.
 */
static void vfio_mig_save_pending(QEMUFile *f, void *opaque,
                                  uint64_t threshold_size,
                                  uint64_t *res_precopy_only,
                                  uint64_t *res_compatible,
                                  uint64_t *res_postcopy_only)
{
    VFIOMigration *mig = opaque;
    uint64_t stop_copy = vfio_mig_stop_copy_size(mig);

    *res_precopy_only += stop_copy;
    vfio_mig_query_precopy(mig);
    trace_vfio_mig_pending(mig->name, stop_copy, mig->precopy_init_size,
                           mig->precopy_dirty_size);
}

static bool vfio_mig_is_active_iterate(void *opaque)
{
    return vfio_mig_is_precopy(opaque);
}

/*
 * One chunk of pre-copy data a round: the core gives every handler its
 * turn, so RAM and the device share the link.  Says truthfully whether
 * data is left (0) or not (1).
 */
static int vfio_mig_save_iterate(QEMUFile *f, void *opaque)
{
    VFIOMigration *mig = opaque;
    ssize_t n;
    int ret;

    ret = vfio_mig_check_state(mig);
    if (ret) {
        return ret;
    }
    n = vfio_mig_save_chunk(f, mig);
    if (n < 0) {
        return n;
    }
    if (n == 0) {
        mig->precopy_init_size = mig->precopy_dirty_size = 0;
    } else {
        vfio_mig_account_read(mig, n);
    }
    vfio_mig_query_precopy(mig);

    if (migrate_switchover_ack() && !mig->initial_data_sent &&
        !mig->precopy_init_size) {
        qemu_put_be64(f, VFIO_MIG_FLAG_DEV_INIT_DATA_SENT);
        mig->initial_data_sent = true;
        trace_vfio_mig_init_data_sent(mig->name);
    } else {
        qemu_put_be64(f, VFIO_MIG_FLAG_END_OF_STATE);
    }
    trace_vfio_mig_save_iterate(mig->name, n, mig->precopy_init_size,
                                mig->precopy_dirty_size);
    ret = qemu_file_get_error(f);
    if (ret) {
        return ret;
    }
    return !mig->precopy_init_size && !mig->precopy_dirty_size;
}

/*
 * The VM's stop must have stopped the device, and a device that sent
 * pre-copy data must still be in that session: a new STOP_COPY session
 * would send the whole state again after the part already sent.
 */
static int vfio_mig_check_stopped(VFIOMigration *mig)
{
    if (vfio_mig_is_running(mig) || vfio_mig_is_precopy(mig)) {
        error_report("%s: the device is still in %s at the switchover: the "
                     "VM's stop did not stop it", mig->name,
                     vfio_mig_state_name(mig->device_state));
        return -EIO;
    }
    if (mig->bytes && mig->device_state != VFIO_DEVICE_STATE_STOP_COPY) {
        error_report("%s: the device's pre-copy session ended before the "
                     "switchover (the device is in %s)", mig->name,
                     vfio_mig_state_name(mig->device_state));
        return -EIO;
    }
    return 0;
}

static int vfio_mig_save_complete(QEMUFile *f, void *opaque)
{
    VFIOMigration *mig = opaque;
    uint64_t before = mig->bytes;
    Error *err = NULL;
    ssize_t n;
    int ret;

    ret = vfio_mig_check_state(mig);
    if (ret) {
        return ret;
    }
    ret = vfio_mig_check_stopped(mig);
    if (ret) {
        return ret;
    }
    /* Without pre-copy, the VM's stop left the device in STOP */
    ret = vfio_mig_set_state(mig, VFIO_DEVICE_STATE_STOP_COPY,
                             VFIO_DEVICE_STATE_STOP, &err);
    if (ret) {
        error_report_err(err);
        return ret;
    }
    do {
        n = vfio_mig_save_chunk(f, mig);
    } while (n > 0);
    if (n < 0) {
        return n;
    }
    qemu_put_be64(f, VFIO_MIG_FLAG_END_OF_STATE);
    ret = qemu_file_get_error(f);
    if (ret) {
        return ret;
    }
    trace_vfio_mig_save_complete(mig->name, mig->bytes - before);
    ret = vfio_mig_set_state(mig, VFIO_DEVICE_STATE_STOP,
                             VFIO_DEVICE_STATE_ERROR, &err);
    if (ret) {
        error_report_err(err);
    }
    return ret;
}

static void vfio_mig_save_config(QEMUFile *f, void *opaque)
{
    VFIOMigration *mig = opaque;

    qemu_put_be64(f, VFIO_MIG_FLAG_DEV_CONFIG_STATE);
    mig->ops->save_config(mig->dev, f);
    qemu_put_be64(f, VFIO_MIG_FLAG_END_OF_STATE);
    trace_vfio_mig_save_config(mig->name);
}

/* The device's state is left to vfio_mig_ended() or the VM's state. */
static void vfio_mig_save_cleanup(void *opaque)
{
    VFIOMigration *mig = opaque;

    vfio_mig_close_session(mig);
    vfio_mig_free_buffer(mig);
    mig->precopy_init_size = mig->precopy_dirty_size = 0;
    trace_vfio_mig_save_cleanup(mig->name, mig->bytes);
}

/*
 * Destination side
 */

static bool vfio_mig_switchover_ack_needed(void *opaque)
{
    VFIOMigration *mig = opaque;

    return mig->precopy;
}

static int vfio_mig_load_setup(QEMUFile *f, void *opaque)
{
    VFIOMigration *mig = opaque;
    Error *err = NULL;
    int ret;

    ret = vfio_mig_set_state(mig, VFIO_DEVICE_STATE_RESUMING,
                             mig->device_state, &err);
    if (ret) {
        error_report_err(err);
        return ret;
    }
    if (mig->data_fd < 0) {
        error_report("%s: the device gave no data fd for RESUMING",
                     mig->name);
        return -EINVAL;
    }
    mig->buffer_size = BUFFER_MIN;
    mig->buffer = g_malloc(mig->buffer_size);
    mig->bytes = 0;
    mig->switchover_approved = false;
    return 0;
}

static int vfio_mig_load_cleanup(void *opaque)
{
    VFIOMigration *mig = opaque;

    vfio_mig_close_session(mig);
    vfio_mig_free_buffer(mig);
    trace_vfio_mig_load_cleanup(mig->name, mig->bytes);
    return 0;
}

static int vfio_mig_truncated(VFIOMigration *mig, QEMUFile *f)
{
    int ret = qemu_file_get_error(f);

    error_report("%s: the device's migration stream is truncated",
                 mig->name);
    return ret ? ret : -EIO;
}

/* All of @len, however little the device takes at a time. */
static int vfio_mig_write_all(VFIOMigration *mig, const uint8_t *buf,
                              size_t len)
{
    while (len) {
        ssize_t n = mig->ops->write(mig->dev, mig->data_fd, buf, len);

        if (n <= 0) {
            error_report("%s: the device refused its migration data: %s",
                         mig->name, n ? strerror(-n) : "nothing written");
            return n ? n : -EIO;
        }
        buf += n;
        len -= n;
    }
    return 0;
}

/*
 * Room for a whole chunk, so that one the stream cuts short never reaches
 * the device: the buffer grows to the largest chunk seen, in doublings.
 */
static void vfio_mig_reserve(VFIOMigration *mig, size_t size)
{
    if (size > mig->buffer_size) {
        g_free(mig->buffer);
        mig->buffer_size = MIN(MAX(size, mig->buffer_size * 2),
                               VFIO_MIG_CHUNK_MAX);
        mig->buffer = g_malloc(mig->buffer_size);
    }
}

static int vfio_mig_load_chunk(QEMUFile *f, VFIOMigration *mig)
{
    uint64_t size = qemu_get_be64(f);
    int ret;

    if (qemu_file_get_error(f)) {
        return vfio_mig_truncated(mig, f);
    }
    if (mig->device_state != VFIO_DEVICE_STATE_RESUMING ||
        mig->data_fd < 0) {
        error_report("%s: device data in the stream while the device is in "
                     "%s, not RESUMING", mig->name,
                     vfio_mig_state_name(mig->device_state));
        return -EINVAL;
    }
    if (size > VFIO_MIG_CHUNK_MAX) {
        error_report("%s: a device data chunk of %" PRIu64 " bytes, more "
                     "than the %" PRIu64 " a source writes", mig->name, size,
                     (uint64_t)VFIO_MIG_CHUNK_MAX);
        return -EINVAL;
    }
    trace_vfio_mig_load_chunk(mig->name, size);
    vfio_mig_reserve(mig, size);
    if (qemu_get_buffer(f, mig->buffer, size) != size ||
        qemu_file_get_error(f)) {
        return vfio_mig_truncated(mig, f);
    }
    ret = vfio_mig_write_all(mig, mig->buffer, size);
    if (ret) {
        return ret;
    }
    mig->bytes += size;
    return 0;
}

static int vfio_mig_load_init_data_sent(VFIOMigration *mig)
{
    int ret;

    if (!migrate_switchover_ack()) {
        error_report("%s: the stream says the initial data was sent, but "
                     "switchover-ack is not enabled", mig->name);
        return -EINVAL;
    }
    if (mig->switchover_approved) {
        error_report("%s: the stream says twice that the initial data was "
                     "sent", mig->name);
        return -EINVAL;
    }
    mig->switchover_approved = true;
    trace_vfio_mig_approve_switchover(mig->name, mig->bytes);
    /* A device that does not pre-copy here was not counted: no approval */
    if (!vfio_mig_switchover_ack_needed(mig)) {
        return 0;
    }
    ret = qemu_loadvm_approve_switchover();
    if (ret) {
        error_report("%s: could not approve the switchover: %s", mig->name,
                     strerror(-ret));
    }
    return ret;
}

/*
 * The config section follows every byte of device data: end RESUMING
 * first, so that the kernel checks the state it was given now and a bad
 * one fails the incoming migration.
 */
static int vfio_mig_load_config(QEMUFile *f, VFIOMigration *mig)
{
    Error *err = NULL;
    int ret;

    if (mig->device_state == VFIO_DEVICE_STATE_RESUMING) {
        ret = vfio_mig_set_state(mig, VFIO_DEVICE_STATE_STOP,
                                 VFIO_DEVICE_STATE_ERROR, &err);
        if (ret) {
            error_append_hint(&err, "The device refused the state it was "
                              "sent.\n");
            error_report_err(err);
            return ret;
        }
    }
    ret = mig->ops->load_config(mig->dev, f);
    if (ret) {
        error_report("%s: loading the device's config failed: %s",
                     mig->name, strerror(-ret));
    }
    trace_vfio_mig_load_config(mig->name, ret);
    return ret;
}

static int vfio_mig_load_state(QEMUFile *f, void *opaque, int version_id)
{
    VFIOMigration *mig = opaque;
    int ret = 0;

    while (!ret) {
        uint64_t marker = qemu_get_be64(f);

        if (qemu_file_get_error(f)) {
            return vfio_mig_truncated(mig, f);
        }
        trace_vfio_mig_load_marker(mig->name, marker);
        switch (marker) {
        case VFIO_MIG_FLAG_END_OF_STATE:
            return 0;
        case VFIO_MIG_FLAG_DEV_SETUP_STATE:
            break;
        case VFIO_MIG_FLAG_DEV_DATA_STATE:
            ret = vfio_mig_load_chunk(f, mig);
            break;
        case VFIO_MIG_FLAG_DEV_INIT_DATA_SENT:
            /* It ends the iteration's section, as END_OF_STATE would */
            return vfio_mig_load_init_data_sent(mig);
        case VFIO_MIG_FLAG_DEV_CONFIG_STATE:
            ret = vfio_mig_load_config(f, mig);
            break;
        default:
            error_report("%s: unknown marker 0x%016" PRIx64 " in the "
                         "device's migration stream", mig->name, marker);
            return -EINVAL;
        }
    }
    return ret;
}

const SaveVMHandlers vfio_mig_savevm_handlers = {
    .save_prepare = vfio_mig_save_prepare,
    .save_setup = vfio_mig_save_setup,
    .save_live_pending = vfio_mig_save_pending,
    .is_active_iterate = vfio_mig_is_active_iterate,
    .save_live_iterate = vfio_mig_save_iterate,
    .save_live_complete_precopy = vfio_mig_save_complete,
    .save_state = vfio_mig_save_config,
    .save_cleanup = vfio_mig_save_cleanup,
    .switchover_ack_needed = vfio_mig_switchover_ack_needed,
    .load_setup = vfio_mig_load_setup,
    .load_state = vfio_mig_load_state,
    .load_cleanup = vfio_mig_load_cleanup,
};
