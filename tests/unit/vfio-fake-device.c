/*
 * A fake VFIO device with the kernel's v2 migration uAPI, for unit tests
 *
 * See vfio-fake-device.h.  The transition rules are those of Linux 6.12's
 * drivers/vfio/vfio_main.c (vfio_mig_get_next_state()) and the arcs'
 * effects those documented in include/uapi/linux/vfio.h and implemented
 * by samples/vfio-mdev/mtty.c.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "io/channel-buffer.h"
#include "migration/qemu-file-types.h"
#include "../../migration/qemu-file.h"
#include "vfio-fake-device.h"

#define ERROR           VFIO_DEVICE_STATE_ERROR
#define STOP            VFIO_DEVICE_STATE_STOP
#define RUNNING         VFIO_DEVICE_STATE_RUNNING
#define STOP_COPY       VFIO_DEVICE_STATE_STOP_COPY
#define RESUMING        VFIO_DEVICE_STATE_RESUMING
#define RUNNING_P2P     VFIO_DEVICE_STATE_RUNNING_P2P
#define PRE_COPY        VFIO_DEVICE_STATE_PRE_COPY
#define PRE_COPY_P2P    VFIO_DEVICE_STATE_PRE_COPY_P2P
#define NR_STATES       (VFIO_DEVICE_STATE_PRE_COPY_P2P + 1)

#define FAKE_FD_BASE    1000
#define CONFIG_MAGIC    0xc0f1f00dU

static const uint8_t stream_magic[FAKE_MAGIC_LEN] = "FAKEVFIO";

static const char *const state_names[NR_STATES] = {
    [ERROR] = "ERROR", [STOP] = "STOP", [RUNNING] = "RUNNING",
    [STOP_COPY] = "STOP_COPY", [RESUMING] = "RESUMING",
    [RUNNING_P2P] = "RUNNING_P2P", [PRE_COPY] = "PRE_COPY",
    [PRE_COPY_P2P] = "PRE_COPY_P2P",
};

/*
 * The kernel's vfio_from_fsm_table: from [cur] towards [new], the next
 * state of the shortest path when every optional state is supported.
 */
static const uint8_t next_table[NR_STATES][NR_STATES] = {
    [STOP] = {
        [STOP] = STOP, [RUNNING] = RUNNING_P2P, [PRE_COPY] = RUNNING_P2P,
        [PRE_COPY_P2P] = RUNNING_P2P, [STOP_COPY] = STOP_COPY,
        [RESUMING] = RESUMING, [RUNNING_P2P] = RUNNING_P2P,
        [ERROR] = ERROR,
    },
    [RUNNING] = {
        [STOP] = RUNNING_P2P, [RUNNING] = RUNNING, [PRE_COPY] = PRE_COPY,
        [PRE_COPY_P2P] = RUNNING_P2P, [STOP_COPY] = RUNNING_P2P,
        [RESUMING] = RUNNING_P2P, [RUNNING_P2P] = RUNNING_P2P,
        [ERROR] = ERROR,
    },
    [PRE_COPY] = {
        [STOP] = RUNNING, [RUNNING] = RUNNING, [PRE_COPY] = PRE_COPY,
        [PRE_COPY_P2P] = PRE_COPY_P2P, [STOP_COPY] = PRE_COPY_P2P,
        [RESUMING] = RUNNING, [RUNNING_P2P] = RUNNING, [ERROR] = ERROR,
    },
    [PRE_COPY_P2P] = {
        [STOP] = RUNNING_P2P, [RUNNING] = RUNNING_P2P,
        [PRE_COPY] = PRE_COPY, [PRE_COPY_P2P] = PRE_COPY_P2P,
        [STOP_COPY] = STOP_COPY, [RESUMING] = RUNNING_P2P,
        [RUNNING_P2P] = RUNNING_P2P, [ERROR] = ERROR,
    },
    [STOP_COPY] = {
        [STOP] = STOP, [RUNNING] = STOP, [PRE_COPY] = ERROR,
        [PRE_COPY_P2P] = ERROR, [STOP_COPY] = STOP_COPY,
        [RESUMING] = STOP, [RUNNING_P2P] = STOP, [ERROR] = ERROR,
    },
    [RESUMING] = {
        [STOP] = STOP, [RUNNING] = STOP, [PRE_COPY] = STOP,
        [PRE_COPY_P2P] = STOP, [STOP_COPY] = STOP, [RESUMING] = RESUMING,
        [RUNNING_P2P] = STOP, [ERROR] = ERROR,
    },
    [RUNNING_P2P] = {
        [STOP] = STOP, [RUNNING] = RUNNING, [PRE_COPY] = RUNNING,
        [PRE_COPY_P2P] = PRE_COPY_P2P, [STOP_COPY] = STOP,
        [RESUMING] = STOP, [RUNNING_P2P] = RUNNING_P2P, [ERROR] = ERROR,
    },
    /* [ERROR] is all ERROR: only a reset leaves it */
};

/* The VFIO_MIGRATION_* flags a state needs (the kernel's table) */
static uint64_t state_needs(uint32_t state)
{
    switch (state) {
    case PRE_COPY:
        return VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY;
    case PRE_COPY_P2P:
        return VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P |
               VFIO_MIGRATION_PRE_COPY;
    case RUNNING_P2P:
        return VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
    case ERROR:
        return ~0ULL;
    default:
        return VFIO_MIGRATION_STOP_COPY;
    }
}

static bool state_allowed(FakeDevice *dev, uint32_t state)
{
    return state < NR_STATES &&
           (state_needs(state) & dev->cfg.mig_flags) == state_needs(state);
}

/* vfio_mig_get_next_state(): arcs through unsupported states skipped */
static int next_state(FakeDevice *dev, uint32_t cur, uint32_t new,
                      uint32_t *next)
{
    if (!state_allowed(dev, cur) || !state_allowed(dev, new)) {
        return -EINVAL;
    }
    *next = next_table[cur][new];
    while (*next != ERROR && !state_allowed(dev, *next)) {
        *next = next_table[*next][new];
    }
    return *next != ERROR ? 0 : -EINVAL;
}

static const char *name_of(uint32_t state)
{
    return state < NR_STATES ? state_names[state] : "?";
}

static void enter(FakeDevice *dev, uint32_t state)
{
    dev->state = state;
    g_string_append_printf(dev->path, " %s", name_of(state));
}

/* The byte at @off of a stream of @len bytes (0: length not known yet) */
static uint8_t stream_byte(uint64_t off, uint64_t len)
{
    if (off < FAKE_MAGIC_LEN) {
        return stream_magic[off];
    }
    if (len && off >= len - FAKE_TRAILER_LEN) {
        return len >> (8 * (len - 1 - off));
    }
    return (off * 7 + (off >> 8) * 13 + 0x5a) & 0xff;
}

int fake_check_stream(const uint8_t *data, size_t len)
{
    if (len < FAKE_MAGIC_LEN + FAKE_TRAILER_LEN) {
        return -EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        if (data[i] != stream_byte(i, len)) {
            return -EINVAL;
        }
    }
    return 0;
}

static int new_fd(FakeDevice *dev, bool saving)
{
    int fd = dev->next_fd++;

    g_hash_table_add(dev->open_fds, GINT_TO_POINTER(fd));
    dev->session_fd = fd;
    dev->session_saving = saving;
    dev->session_stop_copy = false;
    return fd;
}

static void end_session(FakeDevice *dev)
{
    dev->session_fd = -1;
    dev->initial_left = dev->dirty_left = dev->stop_left = 0;
}

static void start_saving(FakeDevice *dev)
{
    g_byte_array_set_size(dev->produced, 0);
    dev->initial_left = dev->cfg.initial_bytes;
    dev->dirty_left = 0;
    dev->stop_left = 0;
}

/* Entering STOP_COPY: the rest of the stream becomes known */
static void start_stop_copy(FakeDevice *dev)
{
    dev->session_stop_copy = true;
    dev->stop_left = dev->cfg.stop_copy_bytes;
}

static uint64_t stream_len(FakeDevice *dev)
{
    if (!dev->session_stop_copy) {
        return 0;
    }
    return dev->produced->len + dev->initial_left + dev->dirty_left +
           dev->stop_left;
}

/* One arc, as mtty_step_state() does it; *fd gets a new session's fd */
static int step(FakeDevice *dev, uint32_t next, int *fd)
{
    uint32_t cur = dev->state;
    int ret;

    if (cur == RESUMING && next == STOP) {
        ret = fake_check_stream(dev->received->data, dev->received->len);
        if (ret) {
            return ret;
        }
        g_byte_array_set_size(dev->loaded, 0);
        g_byte_array_append(dev->loaded, dev->received->data,
                            dev->received->len);
        end_session(dev);
    } else if ((cur == PRE_COPY && next == RUNNING) ||
               (cur == PRE_COPY_P2P && next == RUNNING_P2P) ||
               (cur == STOP_COPY && next == STOP)) {
        end_session(dev);
    } else if ((cur == RUNNING && next == PRE_COPY) ||
               (cur == RUNNING_P2P && next == PRE_COPY_P2P)) {
        *fd = new_fd(dev, true);
        start_saving(dev);
    } else if (cur == STOP && next == STOP_COPY) {
        *fd = new_fd(dev, true);
        start_saving(dev);
        start_stop_copy(dev);
    } else if ((cur == PRE_COPY || cur == PRE_COPY_P2P) &&
               next == STOP_COPY) {
        /* The saving group shares one session: no new fd */
        start_stop_copy(dev);
    } else if (cur == STOP && next == RESUMING) {
        *fd = new_fd(dev, false);
        g_byte_array_set_size(dev->received, 0);
    }
    /* The P2P arcs and RUNNING <-> STOP change nothing here */
    return 0;
}

static bool fault_fires(int *count)
{
    if (*count == 0) {
        return false;
    }
    if (*count > 0) {
        (*count)--;
    }
    return true;
}

static int fake_set_state(void *opaque, uint32_t new_state, int *data_fd)
{
    FakeDevice *dev = opaque;
    FakeFaults *ft = &dev->faults;

    dev->set_state_calls++;
    *data_fd = -1;
    while (dev->state != new_state) {
        uint32_t next;
        int fd = -1;
        int ret = next_state(dev, dev->state, new_state, &next);

        if (ret) {
            g_string_append_printf(dev->path, " (refused %s)",
                                   name_of(new_state));
            return ret;
        }
        if (ft->fail_arc_to == next && fault_fires(&ft->fail_arc_count)) {
            g_string_append_printf(dev->path, " (fail %s)", name_of(next));
            if (ft->fail_arc_to_error) {
                end_session(dev);
                enter(dev, ERROR);
            }
            return -(ft->fail_arc_errno ? ft->fail_arc_errno : EIO);
        }
        ret = step(dev, next, &fd);
        if (ret) {
            g_string_append_printf(dev->path, " (fail %s)", name_of(next));
            return ret;
        }
        enter(dev, next);
        /* Only the last arc of a path may open a session (the kernel) */
        g_assert(fd < 0 || next == new_state);
        *data_fd = fd;
    }
    return 0;
}

static int fake_get_state(void *opaque, uint32_t *state)
{
    FakeDevice *dev = opaque;

    dev->get_state_calls++;
    *state = dev->state;
    return 0;
}

static int fake_stop_copy_size(void *opaque, uint64_t *bytes)
{
    FakeDevice *dev = opaque;

    dev->data_size_calls++;
    if (dev->cfg.no_data_size) {
        return -ENOTTY;
    }
    /* Like mtty's, the whole state: the pre-copy part included */
    *bytes = dev->cfg.initial_bytes + dev->cfg.stop_copy_bytes;
    return 0;
}

/* 0 if @fd is the fd of the current session, else why not */
static int check_session_fd(FakeDevice *dev, int fd)
{
    if (!g_hash_table_contains(dev->open_fds, GINT_TO_POINTER(fd))) {
        return -EBADF;
    }
    if (fd != dev->session_fd) {
        return -ENODEV;     /* the session ended: mtty's disabled file */
    }
    return 0;
}

static int fake_precopy_info(void *opaque, int fd, uint64_t *initial_bytes,
                             uint64_t *dirty_bytes)
{
    FakeDevice *dev = opaque;
    int ret = check_session_fd(dev, fd);

    dev->precopy_info_calls++;
    if (dev->faults.precopy_info_errno) {
        return -dev->faults.precopy_info_errno;
    }
    if (ret) {
        return ret;
    }
    if (dev->state != PRE_COPY && dev->state != PRE_COPY_P2P) {
        return -EINVAL;
    }
    *initial_bytes = dev->initial_left;
    *dirty_bytes = dev->dirty_left;
    return 0;
}

static ssize_t fake_read(void *opaque, int fd, void *buf, size_t len)
{
    FakeDevice *dev = opaque;
    FakeFaults *ft = &dev->faults;
    uint64_t avail, n, len_now;
    int ret = check_session_fd(dev, fd);

    dev->reads++;
    g_assert_cmpuint(dev->reads, <, 100000);    /* a core that never stops */
    if (ret) {
        return ret;
    }
    if (!dev->session_saving) {
        return -EINVAL;
    }
    if (ft->read_fail_at && dev->reads == ft->read_fail_at) {
        return -(ft->read_errno ? ft->read_errno : EIO);
    }
    avail = dev->initial_left + dev->dirty_left + dev->stop_left;
    if (!avail) {
        if (dev->session_stop_copy ||
            dev->cfg.end_of_data == FAKE_END_BY_ZERO) {
            return 0;
        }
        return -ENOMSG;
    }
    n = MIN(len, avail);
    len_now = stream_len(dev);
    for (uint64_t i = 0; i < n; i++) {
        uint8_t b = stream_byte(dev->produced->len, len_now);

        g_byte_array_append(dev->produced, &b, 1);
    }
    /* The initial data first, then what was dirtied, then STOP_COPY's */
    for (uint64_t left = n, take; left; left -= take) {
        uint64_t *part = dev->initial_left ? &dev->initial_left :
                         dev->dirty_left ? &dev->dirty_left : &dev->stop_left;

        take = MIN(left, *part);
        *part -= take;
    }
    memcpy(buf, dev->produced->data + dev->produced->len - n, n);
    if (!dev->session_stop_copy && !dev->initial_left && !dev->dirty_left) {
        dev->dirty_left = dev->cfg.never_drains;
    }
    return n;
}

static ssize_t fake_write(void *opaque, int fd, const void *buf, size_t len)
{
    FakeDevice *dev = opaque;
    FakeFaults *ft = &dev->faults;
    size_t before = dev->received->len;
    int ret = check_session_fd(dev, fd);

    dev->writes++;
    if (ret) {
        return ret;
    }
    if (dev->session_saving) {
        return -EINVAL;     /* the saving file has no write() */
    }
    if (ft->efault_write_at && dev->writes == ft->efault_write_at) {
        return -EFAULT;
    }
    if (ft->stall_write_at && dev->writes >= ft->stall_write_at) {
        g_assert_cmpuint(dev->writes, <, ft->stall_write_at + 1000);
        return 0;
    }
    if (ft->short_write_at && dev->writes == ft->short_write_at && len > 1) {
        len /= 2;
    }
    g_byte_array_append(dev->received, buf, len);
    /* mtty checks its header as soon as it is complete */
    if (before < FAKE_MAGIC_LEN && dev->received->len >= FAKE_MAGIC_LEN &&
        memcmp(dev->received->data, stream_magic, FAKE_MAGIC_LEN)) {
        return -EFAULT;
    }
    return len;
}

static void fake_close(void *opaque, int fd)
{
    FakeDevice *dev = opaque;

    dev->closes++;
    if (!g_hash_table_remove(dev->open_fds, GINT_TO_POINTER(fd))) {
        dev->bad_closes++;
    }
}

static int fake_reset(void *opaque)
{
    FakeDevice *dev = opaque;

    dev->resets++;
    if (dev->faults.reset_fails) {
        g_string_append(dev->path, " (reset fails)");
        return -EIO;
    }
    g_string_append(dev->path, " reset");
    end_session(dev);
    enter(dev, RUNNING);
    return 0;
}

static void fake_save_config(void *opaque, QEMUFile *f)
{
    FakeDevice *dev = opaque;

    qemu_put_be32(f, CONFIG_MAGIC);
    for (int i = 0; i < FAKE_CONFIG_BYTES; i++) {
        qemu_put_byte(f, dev->cfg.config_id + i);
    }
}

static int fake_load_config(void *opaque, QEMUFile *f)
{
    FakeDevice *dev = opaque;
    uint8_t buf[FAKE_CONFIG_LEN];

    qemu_get_buffer(f, buf, sizeof(buf));
    if (qemu_file_get_error(f)) {
        return qemu_file_get_error(f);
    }
    if (ldl_be_p(buf) != CONFIG_MAGIC) {
        return -EINVAL;
    }
    memcpy(dev->config_loaded, buf, sizeof(buf));
    dev->config_was_loaded = true;
    return 0;
}

const VFIOMigrationOps fake_ops = {
    .set_state = fake_set_state,
    .get_state = fake_get_state,
    .stop_copy_size = fake_stop_copy_size,
    .precopy_info = fake_precopy_info,
    .read = fake_read,
    .write = fake_write,
    .close = fake_close,
    .reset = fake_reset,
    .save_config = fake_save_config,
    .load_config = fake_load_config,
};

FakeDevice *fake_new(const char *name, const FakeConfig *cfg)
{
    FakeDevice *dev = g_new0(FakeDevice, 1);

    g_assert_cmpuint(cfg->initial_bytes, >=, FAKE_MAGIC_LEN);
    g_assert_cmpuint(cfg->stop_copy_bytes, >=, FAKE_TRAILER_LEN);
    dev->name = g_strdup(name);
    dev->cfg = *cfg;
    dev->state = RUNNING;
    dev->path = g_string_new("RUNNING");
    dev->session_fd = -1;
    dev->open_fds = g_hash_table_new(NULL, NULL);
    dev->next_fd = FAKE_FD_BASE;
    dev->produced = g_byte_array_new();
    dev->received = g_byte_array_new();
    dev->loaded = g_byte_array_new();
    return dev;
}

void fake_free(FakeDevice *dev)
{
    g_free(dev->name);
    g_string_free(dev->path, true);
    g_hash_table_destroy(dev->open_fds);
    g_byte_array_free(dev->produced, true);
    g_byte_array_free(dev->received, true);
    g_byte_array_free(dev->loaded, true);
    g_free(dev);
}

void fake_dirty(FakeDevice *dev, uint64_t n)
{
    if (dev->session_fd >= 0 &&
        (dev->state == PRE_COPY || dev->state == PRE_COPY_P2P)) {
        dev->dirty_left += n;
    }
}

void fake_reset_behind(FakeDevice *dev)
{
    g_string_append(dev->path, " reset-behind");
    end_session(dev);
    enter(dev, RUNNING);
}

const char *fake_path(FakeDevice *dev)
{
    return dev->path->str;
}

void fake_path_restart(FakeDevice *dev)
{
    g_string_assign(dev->path, name_of(dev->state));
}

unsigned fake_open_fds(FakeDevice *dev)
{
    return g_hash_table_size(dev->open_fds);
}

QEMUFile *fake_input_file(const uint8_t *data, size_t len)
{
    QIOChannelBuffer *bioc = qio_channel_buffer_new(len);
    QEMUFile *f = qemu_file_new_input(QIO_CHANNEL(bioc));

    if (len) {
        memcpy(bioc->data, data, len);
    }
    bioc->usage = len;
    object_unref(OBJECT(bioc));
    return f;
}
