/*
 * VFIO device migration: the kernel's uAPI and QEMU's plumbing
 *
 * Probes a VFIODevice for the migration uAPI v2 (VFIO_DEVICE_FEATURE_
 * MIGRATION), gives the core (hw/vfio/migration.c) its device operations
 * as ioctls on the device fd and read/write on the data fd, registers the
 * core's savevm handlers, follows the VM's run state (with a P2P step
 * for all devices before any of them stops or starts), and puts the
 * device back where the VM is when a migration fails or is cancelled.
 * A device that cannot migrate gets a migration blocker, or fails to
 * realize when enable-migration=on.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <sys/ioctl.h>
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qapi/error.h"
#include "exec/address-spaces.h"
#include "hw/qdev-core.h"
#include "hw/vfio/vfio-common.h"
#include "migration/blocker.h"
#include "migration/migration.h"
#include "migration/misc.h"
#include "migration/qemu-file.h"
#include "migration/register.h"
#include "migration/vmstate.h"
#include "sysemu/runstate.h"
#include "trace.h"

/* Every device that can migrate, for the P2P step and the byte count */
static QLIST_HEAD(, VFIOMigration) vfio_migrations =
    QLIST_HEAD_INITIALIZER(vfio_migrations);

/* A VFIO_DEVICE_FEATURE GET or SET with a payload of up to 8 bytes */
static int vfio_dev_feature(VFIODevice *vbasedev, uint32_t flags,
                            void *data, size_t size)
{
    uint64_t buf[DIV_ROUND_UP(sizeof(struct vfio_device_feature) +
                              sizeof(uint64_t), sizeof(uint64_t))] = { 0 };
    struct vfio_device_feature *feature = (void *)buf;

    assert(size <= sizeof(uint64_t));
    feature->argsz = sizeof(buf);
    feature->flags = flags;
    memcpy(feature->data, data, size);
    if (ioctl(vbasedev->fd, VFIO_DEVICE_FEATURE, feature)) {
        return -errno;
    }
    memcpy(data, feature->data, size);
    return 0;
}

static int vfio_dev_set_state(void *dev, uint32_t state, int *data_fd)
{
    struct vfio_device_feature_mig_state mig_state = {
        .device_state = state,
        .data_fd = -1,
    };
    int ret = vfio_dev_feature(dev, VFIO_DEVICE_FEATURE_SET |
                               VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                               &mig_state, sizeof(mig_state));

    *data_fd = ret ? -1 : mig_state.data_fd;
    return ret;
}

static int vfio_dev_get_state(void *dev, uint32_t *state)
{
    struct vfio_device_feature_mig_state mig_state = { .data_fd = -1 };
    int ret = vfio_dev_feature(dev, VFIO_DEVICE_FEATURE_GET |
                               VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                               &mig_state, sizeof(mig_state));

    *state = mig_state.device_state;
    return ret;
}

static int vfio_dev_stop_copy_size(void *dev, uint64_t *bytes)
{
    struct vfio_device_feature_mig_data_size size = { 0 };
    int ret = vfio_dev_feature(dev, VFIO_DEVICE_FEATURE_GET |
                               VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
                               &size, sizeof(size));

    *bytes = size.stop_copy_length;
    return ret;
}

static int vfio_dev_precopy_info(void *dev, int data_fd,
                                 uint64_t *initial_bytes,
                                 uint64_t *dirty_bytes)
{
    struct vfio_precopy_info info = { .argsz = sizeof(info) };

    if (ioctl(data_fd, VFIO_MIG_GET_PRECOPY_INFO, &info)) {
        return -errno;
    }
    *initial_bytes = info.initial_bytes;
    *dirty_bytes = info.dirty_bytes;
    return 0;
}

static ssize_t vfio_dev_read(void *dev, int data_fd, void *buf, size_t len)
{
    ssize_t n;

    do {
        n = read(data_fd, buf, len);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static ssize_t vfio_dev_write(void *dev, int data_fd, const void *buf,
                              size_t len)
{
    ssize_t n;

    do {
        n = write(data_fd, buf, len);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static void vfio_dev_close(void *dev, int data_fd)
{
    close(data_fd);
}

static int vfio_dev_reset(void *dev)
{
    VFIODevice *vbasedev = dev;

    return ioctl(vbasedev->fd, VFIO_DEVICE_RESET) ? -errno : 0;
}

static void vfio_dev_save_config(void *dev, QEMUFile *f)
{
    VFIODevice *vbasedev = dev;

    if (vbasedev->ops && vbasedev->ops->vfio_save_config) {
        vbasedev->ops->vfio_save_config(vbasedev, f);
    }
}

static int vfio_dev_load_config(void *dev, QEMUFile *f)
{
    VFIODevice *vbasedev = dev;

    if (vbasedev->ops && vbasedev->ops->vfio_load_config) {
        return vbasedev->ops->vfio_load_config(vbasedev, f);
    }
    return 0;
}

static const VFIOMigrationOps vfio_dev_migration_ops = {
    .set_state = vfio_dev_set_state,
    .get_state = vfio_dev_get_state,
    .stop_copy_size = vfio_dev_stop_copy_size,
    .precopy_info = vfio_dev_precopy_info,
    .read = vfio_dev_read,
    .write = vfio_dev_write,
    .close = vfio_dev_close,
    .reset = vfio_dev_reset,
    .save_config = vfio_dev_save_config,
    .load_config = vfio_dev_load_config,
};

/*
 * QEMU's plumbing
 */

/* vm_state_notify() cannot fail: fail the migration that stopped the VM. */
static void vfio_dev_fail_migration(Error *err)
{
    MigrationState *ms = migrate_get_current();

    error_report_err(err);
    if (ms->to_dst_file) {
        qemu_file_set_error(ms->to_dst_file, -EIO);
    }
}

/*
 * The P2P step: every device quiesces its peer-to-peer DMA before any of
 * them stops, and again before any of them starts.
 */
static void vfio_dev_vm_prepare_all(bool running)
{
    VFIOMigration *mig;

    QLIST_FOREACH(mig, &vfio_migrations, next) {
        Error *err = NULL;

        if (vfio_mig_vm_prepare(mig, running, &err)) {
            vfio_dev_fail_migration(err);
        }
    }
}

/* Registered with the highest priority: on a stop, it runs first */
static void vfio_dev_vm_prepare_stop(void *opaque, bool running,
                                     RunState state)
{
    if (!running) {
        vfio_dev_vm_prepare_all(false);
    }
}

/* Registered with the lowest priority: on a start, it runs first */
static void vfio_dev_vm_prepare_start(void *opaque, bool running,
                                      RunState state)
{
    if (running) {
        vfio_dev_vm_prepare_all(true);
    }
}

static void vfio_dev_vm_change(void *opaque, bool running, RunState state)
{
    VFIOMigration *mig = opaque;
    Error *err = NULL;

    if (vfio_mig_vm_change(mig, running, state, &err)) {
        vfio_dev_fail_migration(err);
    }
}

static void vfio_dev_migration_notify(Notifier *notifier, void *data)
{
    MigrationState *s = data;
    VFIOMigration *mig = container_of(notifier, VFIOMigration,
                                      migration_state);
    Error *err = NULL;

    trace_vfio_mig_notify(mig->name, MigrationStatus_str(s->state));
    if (s->state != MIGRATION_STATUS_CANCELLED &&
        s->state != MIGRATION_STATUS_FAILED) {
        return;
    }
    if (vfio_mig_ended(mig, runstate_is_running(), &err)) {
        error_report_err(err);
    }
}

static void vfio_dev_register_p2p_step(void)
{
    static bool registered;

    if (!registered) {
        qemu_add_vm_change_state_handler_prio(vfio_dev_vm_prepare_stop,
                                              NULL, INT_MAX);
        qemu_add_vm_change_state_handler_prio(vfio_dev_vm_prepare_start,
                                              NULL, INT_MIN);
        registered = true;
    }
}

/* A blocker, or a realize error with enable-migration=on; takes @err. */
static int vfio_dev_block_migration(VFIODevice *vbasedev, Error *err,
                                    Error **errp)
{
    int ret;

    if (vbasedev->enable_migration == ON_OFF_AUTO_ON) {
        error_propagate(errp, err);
        return -EINVAL;
    }
    trace_vfio_mig_blocked(vbasedev->name, error_get_pretty(err));
    vbasedev->migration_blocker = err;
    ret = migrate_add_blocker(err, errp);
    if (ret) {
        error_free(vbasedev->migration_blocker);
        vbasedev->migration_blocker = NULL;
    }
    return ret;
}

/* Why the device cannot migrate in this VM, or NULL. */
static Error *vfio_dev_unmigratable(VFIODevice *vbasedev, uint64_t flags)
{
    Error *err = NULL;
    VFIOMigration *other;

    if (vbasedev->group->container->space->as != &address_space_memory) {
        error_setg(&err, "%s: Migration is currently not supported with "
                   "vIOMMU enabled", vbasedev->name);
        return err;
    }
    /* Without P2P, one device could DMA into another that has stopped */
    QLIST_FOREACH(other, &vfio_migrations, next) {
        if (!(flags & other->mig_flags & VFIO_MIGRATION_P2P)) {
            error_setg(&err, "%s: Migration is currently not supported with "
                       "multiple VFIO devices unless all support P2P",
                       vbasedev->name);
            return err;
        }
    }
    return err;
}

static int vfio_dev_probe_flags(VFIODevice *vbasedev, uint64_t *flags,
                                Error **errp)
{
    int ret = vfio_dev_feature(vbasedev, VFIO_DEVICE_FEATURE_GET |
                               VFIO_DEVICE_FEATURE_MIGRATION,
                               flags, sizeof(*flags));

    if (ret == -ENOTTY) {
        error_setg(errp, "%s: VFIO migration is not supported in kernel",
                   vbasedev->name);
    } else if (ret) {
        error_setg(errp, "%s: Migration couldn't be initialized for VFIO "
                   "device, err: %d (%s)", vbasedev->name, ret,
                   strerror(-ret));
    } else if (!(*flags & VFIO_MIGRATION_STOP_COPY)) {
        error_setg(errp, "%s: VFIO device doesn't support migration",
                   vbasedev->name);
        ret = -EOPNOTSUPP;
    }
    return ret;
}

static void vfio_dev_register(VFIODevice *vbasedev, VFIOMigration *mig)
{
    Object *obj = vbasedev->ops->vfio_get_object(vbasedev);
    g_autofree char *oid = vmstate_if_get_id(VMSTATE_IF(DEVICE(obj)));
    g_autofree char *path = oid ? g_strdup_printf("%s/vfio", oid) :
                                  g_strdup("vfio");
    char id[256] = "";

    strpadcpy(id, sizeof(id), path, '\0');
    register_savevm_live(id, VMSTATE_INSTANCE_ID_ANY, 1,
                         &vfio_mig_savevm_handlers, mig);
    mig->vm_state = qdev_add_vm_change_state_handler(vbasedev->dev,
                                                     vfio_dev_vm_change, mig);
    mig->migration_state.notify = vfio_dev_migration_notify;
    add_migration_state_change_notifier(&mig->migration_state);
    QLIST_INSERT_HEAD(&vfio_migrations, mig, next);
    vfio_dev_register_p2p_step();
}

int vfio_migration_probe(VFIODevice *vbasedev, Error **errp)
{
    Error *err = NULL;
    uint64_t flags = 0;

    if (vbasedev->enable_migration == ON_OFF_AUTO_OFF) {
        error_setg(&err, "%s: Migration is disabled for VFIO device",
                   vbasedev->name);
        return vfio_dev_block_migration(vbasedev, err, errp);
    }
    if (vfio_dev_probe_flags(vbasedev, &flags, &err)) {
        return vfio_dev_block_migration(vbasedev, err, errp);
    }
    /* Asked for by name, not defaulted: not having it is an error */
    if (vbasedev->allow_precopy_set && vbasedev->allow_precopy &&
        !(flags & VFIO_MIGRATION_PRE_COPY)) {
        error_setg(errp, "%s: x-allow-pre-copy=on, but the device does not "
                   "support pre-copy (VFIO_MIGRATION_PRE_COPY)",
                   vbasedev->name);
        return -EINVAL;
    }
    err = vfio_dev_unmigratable(vbasedev, flags);
    if (err) {
        return vfio_dev_block_migration(vbasedev, err, errp);
    }
    vbasedev->migration = vfio_mig_new(&vfio_dev_migration_ops, vbasedev,
                                       vbasedev->name, flags,
                                       vbasedev->allow_precopy);
    vfio_dev_register(vbasedev, vbasedev->migration);
    trace_vfio_mig_probe(vbasedev->name, flags,
                         vbasedev->migration->precopy);
    return 0;
}

void vfio_migration_finalize(VFIODevice *vbasedev)
{
    VFIOMigration *mig = vbasedev->migration;

    if (mig) {
        QLIST_REMOVE(mig, next);
        remove_migration_state_change_notifier(&mig->migration_state);
        qemu_del_vm_change_state_handler(mig->vm_state);
        unregister_savevm(VMSTATE_IF(vbasedev->dev), "vfio", mig);
        vfio_mig_free(mig);
        vbasedev->migration = NULL;
    }
    if (vbasedev->migration_blocker) {
        migrate_del_blocker(vbasedev->migration_blocker);
        error_free(vbasedev->migration_blocker);
        vbasedev->migration_blocker = NULL;
    }
}

int64_t vfio_mig_bytes_transferred(void)
{
    VFIOMigration *mig;
    int64_t bytes = 0;

    QLIST_FOREACH(mig, &vfio_migrations, next) {
        bytes += mig->bytes;
    }
    return bytes;
}
