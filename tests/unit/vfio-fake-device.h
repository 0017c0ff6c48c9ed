/*
 * A fake VFIO device with the kernel's v2 migration uAPI, for unit tests
 *
 * It implements VFIOMigrationOps (include/hw/vfio/vfio-migration.h) over
 * an in-memory device that follows Linux 6.12: a SET_STATE request walks
 * vfio_mig_get_next_state()'s shortest path, one arc at a time, over the
 * states the device's flags allow, and each arc does what mtty's does
 * (samples/vfio-mdev/mtty.c): RUNNING -> PRE_COPY, RUNNING_P2P ->
 * PRE_COPY_P2P, STOP -> STOP_COPY and STOP -> RESUMING open a data
 * transfer session and return its fd; PRE_COPY(_P2P) -> STOP_COPY keeps
 * the session (no new fd); leaving the saving group or RESUMING ends it,
 * and reads, writes and PRECOPY_INFO on its fd fail with ENODEV from then
 * on.  Every state the device enters is appended to a path ("RUNNING
 * PRE_COPY STOP_COPY STOP"), with failures and resets marked, so that a
 * test can assert the exact path.
 *
 * The device's state is one byte stream: an 8-byte magic, pattern bytes,
 * and an 8-byte trailer that holds the stream's length.  With pre-copy
 * the first @initial_bytes of it (magic included) are the initial data;
 * dirty bytes are pattern bytes that appear while the device runs in
 * PRE_COPY; STOP_COPY adds @stop_copy_bytes (trailer included).  The
 * destination checks the magic as soon as it has 8 bytes (EFAULT, like
 * mtty) and the whole stream on RESUMING -> STOP (EINVAL).
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef TESTS_UNIT_VFIO_FAKE_DEVICE_H
#define TESTS_UNIT_VFIO_FAKE_DEVICE_H

#include "qemu/notify.h"
#include "qemu/queue.h"
#include "qemu/units.h"
#include "hw/vfio/vfio-migration.h"

#define FAKE_MAGIC_LEN          8
#define FAKE_TRAILER_LEN        8
/* What save_config writes: a be32 magic and this many bytes */
#define FAKE_CONFIG_BYTES       6
#define FAKE_CONFIG_LEN         (4 + FAKE_CONFIG_BYTES)

/* How the device ends pre-copy data for now */
typedef enum FakeEndOfData {
    FAKE_END_BY_ZERO,           /* read() returns 0, as mtty's does */
    FAKE_END_BY_ENOMSG,         /* read() fails with ENOMSG, the uAPI's */
} FakeEndOfData;

typedef struct FakeConfig {
    uint64_t mig_flags;         /* VFIO_MIGRATION_* */
    uint64_t initial_bytes;     /* >= FAKE_MAGIC_LEN */
    uint64_t stop_copy_bytes;   /* >= FAKE_TRAILER_LEN */
    FakeEndOfData end_of_data;
    /* PRE_COPY never runs dry: a read that drains it dirties this many */
    uint64_t never_drains;
    /* VFIO_DEVICE_FEATURE_MIG_DATA_SIZE is not there (Linux < 6.2) */
    bool no_data_size;
    uint8_t config_id;          /* in the config bytes */
} FakeConfig;

/* Faults to inject; each is armed until it fires (count times, -1: always) */
typedef struct FakeFaults {
    /* An arc into this state fails (state 0 = ERROR: none) ... */
    uint32_t fail_arc_to;
    int fail_arc_count;
    /* ... and leaves the device in ERROR, else where the arc started */
    bool fail_arc_to_error;
    int fail_arc_errno;         /* default EIO */
    /* read() fails with this errno at the n-th read (1-based), 0: never */
    int read_fail_at;
    int read_errno;
    /* write() takes only half of what it is given, once, at the n-th */
    int short_write_at;
    /* write() takes nothing (returns 0) from the n-th on */
    int stall_write_at;
    /* write() fails with EFAULT at the n-th */
    int efault_write_at;
    /* VFIO_DEVICE_RESET fails */
    bool reset_fails;
    /* VFIO_MIG_GET_PRECOPY_INFO fails with this errno */
    int precopy_info_errno;
} FakeFaults;

typedef struct FakeDevice {
    char *name;
    FakeConfig cfg;
    FakeFaults faults;
    uint32_t state;
    GString *path;

    /* The data transfer session */
    int session_fd;             /* -1: none */
    bool session_saving;        /* else resuming */
    bool session_stop_copy;     /* reading STOP_COPY's data */
    GHashTable *open_fds;       /* fds handed out and not closed yet */
    int next_fd;

    /* Source: the stream read so far, and what is left to read */
    GByteArray *produced;
    uint64_t initial_left;
    uint64_t dirty_left;
    uint64_t stop_left;

    /* Destination: what was written in the current/last session */
    GByteArray *received;
    GByteArray *loaded;         /* the stream the device accepted */
    uint8_t config_loaded[FAKE_CONFIG_LEN];
    bool config_was_loaded;

    /* Calls, by operation */
    unsigned set_state_calls;
    unsigned get_state_calls;
    unsigned data_size_calls;
    unsigned precopy_info_calls;
    unsigned reads;
    unsigned writes;
    unsigned closes;
    unsigned resets;
    unsigned bad_closes;        /* close of an fd not open */
} FakeDevice;

extern const VFIOMigrationOps fake_ops;

FakeDevice *fake_new(const char *name, const FakeConfig *cfg);
void fake_free(FakeDevice *dev);

/* The device, in PRE_COPY, changes @n bytes of its state */
void fake_dirty(FakeDevice *dev, uint64_t n);
/* The device is reset behind the migration's back (FLR, guest reset) */
void fake_reset_behind(FakeDevice *dev);

/* The path the device went through, space separated */
const char *fake_path(FakeDevice *dev);
/* Forget the path so far; it starts again at the current state */
void fake_path_restart(FakeDevice *dev);
unsigned fake_open_fds(FakeDevice *dev);

/* A QEMUFile that reads @len bytes of @data: one section of a stream */
QEMUFile *fake_input_file(const uint8_t *data, size_t len);

/* Validate a complete device stream, as RESUMING -> STOP does */
int fake_check_stream(const uint8_t *data, size_t len);

#endif /* TESTS_UNIT_VFIO_FAKE_DEVICE_H */
