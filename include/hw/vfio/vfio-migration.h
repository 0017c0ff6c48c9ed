/*
 * VFIO device migration: protocol v2 with pre-copy (Ferry)
 *
 * The core (hw/vfio/migration.c) moves a VFIO device's state through a
 * migration: it decides which device state each phase needs (RUNNING,
 * PRE_COPY, STOP_COPY, STOP, RESUMING and their P2P variants), reads the
 * device's data fd into the migration stream and writes it back on the
 * destination, and recovers the device when a transition fails.  It
 * reaches the device only through VFIOMigrationOps: hw/vfio/
 * migration-device.c implements them with the kernel's uAPI and hooks the
 * core into QEMU (savevm handlers, VM state, migration notifier); a unit
 * test implements them with a fake device.
 *
 * The stream of one device (section "<qdev path>/vfio", version 1), as
 * upstream QEMU writes it since 8.0, so either side may be upstream's:
 *
 *   setup:     DEV_SETUP_STATE, END_OF_STATE
 *   iteration: { DEV_DATA_STATE, be64 n, n bytes }*, then
 *              DEV_INIT_DATA_SENT (once, with switchover-ack, when the
 *              device's initial pre-copy bytes are all sent) or END_OF_STATE
 *   complete:  { DEV_DATA_STATE, be64 n, n bytes }*, END_OF_STATE
 *   config:    DEV_CONFIG_STATE, the device's config (vmstate),
 *              END_OF_STATE
 *
 * Markers are be64.  A chunk holds at most VFIO_MIG_CHUNK_MAX bytes.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_VFIO_VFIO_MIGRATION_H
#define HW_VFIO_VFIO_MIGRATION_H

#include <linux/vfio.h>
#include "qemu/notify.h"
#include "qemu/queue.h"
#include "qemu/units.h"
#include "migration/register.h"
#include "qapi/qapi-types-run-state.h"

#define VFIO_MIG_FLAG_END_OF_STATE      (0xffffffffef100001ULL)
#define VFIO_MIG_FLAG_DEV_CONFIG_STATE  (0xffffffffef100002ULL)
#define VFIO_MIG_FLAG_DEV_SETUP_STATE   (0xffffffffef100003ULL)
#define VFIO_MIG_FLAG_DEV_DATA_STATE    (0xffffffffef100004ULL)
#define VFIO_MIG_FLAG_DEV_INIT_DATA_SENT (0xffffffffef100005ULL)

/* The largest chunk a source writes, and a destination accepts. */
#define VFIO_MIG_CHUNK_MAX              (1 * MiB)
/*
 * The stop-copy size assumed when the kernel cannot tell it
 * (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE is Linux >= 6.2): large enough that
 * the migration does not switch over on the hope that it is small.
 */
#define VFIO_MIG_STOP_COPY_SIZE_UNKNOWN (100 * MiB)

/*
 * How the core reaches a device.  @dev is the implementation's own.
 * Errors are negative errno values.
 */
typedef struct VFIOMigrationOps {
    /* VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: *data_fd gets -1 or a new fd */
    int (*set_state)(void *dev, uint32_t state, int *data_fd);
    int (*get_state)(void *dev, uint32_t *state);
    /* VFIO_DEVICE_FEATURE_MIG_DATA_SIZE */
    int (*stop_copy_size)(void *dev, uint64_t *bytes);
    /* VFIO_MIG_GET_PRECOPY_INFO on the saving data fd */
    int (*precopy_info)(void *dev, int data_fd, uint64_t *initial_bytes,
                        uint64_t *dirty_bytes);
    ssize_t (*read)(void *dev, int data_fd, void *buf, size_t len);
    ssize_t (*write)(void *dev, int data_fd, const void *buf, size_t len);
    void (*close)(void *dev, int data_fd);
    /* VFIO_DEVICE_RESET: the kernel puts the device back in RUNNING */
    int (*reset)(void *dev);
    /* The device's emulated state (PCI config, MSI-X) */
    void (*save_config)(void *dev, QEMUFile *f);
    int (*load_config)(void *dev, QEMUFile *f);
} VFIOMigrationOps;

typedef struct VFIOMigration {
    const VFIOMigrationOps *ops;
    void *dev;
    char *name;
    /* VFIO_DEVICE_FEATURE_MIGRATION's flags (VFIO_MIGRATION_*) */
    uint64_t mig_flags;
    /* x-allow-pre-copy, and the device offers PRE_COPY */
    bool precopy;
    /* What the device is in, as far as the core knows */
    uint32_t device_state;
    /* The data transfer session's fd, or -1 */
    int data_fd;
    uint8_t *buffer;
    size_t buffer_size;
    /* Source, in pre-copy: what the kernel last said is left to read */
    uint64_t precopy_init_size;
    uint64_t precopy_dirty_size;
    /* Source: DEV_INIT_DATA_SENT is in the stream */
    bool initial_data_sent;
    /* Destination: switchover approved for this device */
    bool switchover_approved;
    /* Bytes of device data this migration moved, either direction */
    uint64_t bytes;

    /* Owned by hw/vfio/migration-device.c */
    VMChangeStateEntry *vm_state;
    Notifier migration_state;
    QLIST_ENTRY(VFIOMigration) next;
} VFIOMigration;

/* Name of a device state, for messages and traces ("PRE_COPY"). */
const char *vfio_mig_state_name(uint32_t state);

VFIOMigration *vfio_mig_new(const VFIOMigrationOps *ops, void *dev,
                            const char *name, uint64_t mig_flags,
                            bool allow_precopy);
void vfio_mig_free(VFIOMigration *mig);

/*
 * Move the device to @new_state.  Asking for the state it is in is a
 * no-op.  On failure the device goes to @recover_state; if that fails
 * too, or @recover_state is ERROR, it is reset, which leaves it RUNNING.
 * Returns 0 or the failure's negative errno; the message names the
 * device and both states.
 */
int vfio_mig_set_state(VFIOMigration *mig, uint32_t new_state,
                       uint32_t recover_state, Error **errp);

/* RUNNING or RUNNING_P2P / PRE_COPY or PRE_COPY_P2P */
bool vfio_mig_is_running(const VFIOMigration *mig);
bool vfio_mig_is_precopy(const VFIOMigration *mig);

/*
 * The VM starts or stops (@state is the run state it goes to).  The
 * prepare step runs for every device before the main step of any, so that
 * with P2P all devices are quiescent before one of them stops.
 */
int vfio_mig_vm_prepare(VFIOMigration *mig, bool running, Error **errp);
int vfio_mig_vm_change(VFIOMigration *mig, bool running, RunState state,
                       Error **errp);

/* A migration ended (failed or cancelled): back to what the VM does. */
int vfio_mig_ended(VFIOMigration *mig, bool vm_running, Error **errp);

/* The savevm handlers; the opaque is the VFIOMigration. */
extern const SaveVMHandlers vfio_mig_savevm_handlers;

#endif /* HW_VFIO_VFIO_MIGRATION_H */
