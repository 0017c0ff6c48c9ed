/*
 * Unit tests of Ferry's VFIO migration core (hw/vfio/migration.c)
 *
 * The core is driven through vfio_mig_savevm_handlers and the VM-state
 * entry points the way the migration core and hw/vfio/migration-device.c
 * drive it, between a source and a destination VFIOMigration, each over
 * a fake device (vfio-fake-device.c) that follows the kernel's v2 uAPI.
 * Every section the source saves goes into its own QEMUFile over a
 * QIOChannelBuffer and is loaded at once by the destination, as the
 * stream would be; the tests assert the stream's markers section by
 * section ("SETUP END | DATA:1000 INIT | ..."), the exact path of states
 * each device went through, the bytes the destination's device accepted
 * and, for every failure, the message naming the device.
 *
 * What the core needs from the rest of QEMU is stubbed here: the
 * migration capabilities it asks about, qemu_loadvm_approve_switchover()
 * (which checks that the destination's device has its initial data by
 * then) and error_vprintf(), whose output the tests read.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/module.h"
#include "monitor/monitor.h"
#include "io/channel-buffer.h"
#include "migration/qemu-file-types.h"
#include "../migration/qemu-file.h"
#include "../migration/migration.h"
#include "../migration/savevm.h"
#include "vfio-fake-device.h"

#define H               (&vfio_mig_savevm_handlers)
#define SKIPPED         2       /* src_iterate(): the core said inactive */
#define MAX_ROUNDS      64

#define FLAGS_PRECOPY   (VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY)
#define FLAGS_ALL       (FLAGS_PRECOPY | VFIO_MIGRATION_P2P)

/* ---- What the core needs from the rest of QEMU ---- */

static bool stub_switchover_ack;
static bool stub_postcopy_ram;
static bool stub_background_snapshot;
static GString *errors;
/* Destination devices that must have their initial data to approve */
static FakeDevice *approvers[4];
static unsigned approvals;
static unsigned early_approvals;

bool migrate_switchover_ack(void)
{
    return stub_switchover_ack;
}

bool migrate_postcopy_ram(void)
{
    return stub_postcopy_ram;
}

bool migrate_background_snapshot(void)
{
    return stub_background_snapshot;
}

int qemu_loadvm_approve_switchover(void)
{
    unsigned ready = 0;

    approvals++;
    for (int i = 0; i < ARRAY_SIZE(approvers) && approvers[i]; i++) {
        ready += approvers[i]->received->len >=
                 approvers[i]->cfg.initial_bytes;
    }
    early_approvals += ready < approvals;
    return 0;
}

int error_vprintf(const char *fmt, va_list ap)
{
    size_t before = errors->len;

    g_string_append_vprintf(errors, fmt, ap);
    if (g_test_verbose()) {
        fputs(errors->str + before, stderr);
    }
    return errors->len - before;
}

int error_vprintf_unless_qmp(const char *fmt, va_list ap)
{
    return error_vprintf(fmt, ap);
}

/* ---- The harness ---- */

static const FakeConfig base_cfg = {
    .mig_flags = FLAGS_PRECOPY,
    .initial_bytes = 1000,
    .stop_copy_bytes = 2000,
    .config_id = 0x40,
};

typedef struct Pair {
    FakeDevice *sdev, *ddev;
    VFIOMigration *src, *dst;
    GString *stream;        /* markers of the sections saved */
    int64_t rate_limit;     /* for each iteration's section, 0: none */
    bool loading;           /* the destination loads what is saved */
    int load_ret;           /* the first failure of the destination's */
    int iterate_ret;        /* the last round's */
} Pair;

static Pair *pair_new(const FakeConfig *cfg, bool allow_precopy)
{
    Pair *p = g_new0(Pair, 1);

    p->sdev = fake_new("fake-src", cfg);
    p->ddev = fake_new("fake-dst", cfg);
    p->src = vfio_mig_new(&fake_ops, p->sdev, "fake-src", cfg->mig_flags,
                          allow_precopy);
    p->dst = vfio_mig_new(&fake_ops, p->ddev, "fake-dst", cfg->mig_flags,
                          allow_precopy);
    p->stream = g_string_new("");
    return p;
}

static void pair_free(Pair *p)
{
    vfio_mig_free(p->src);
    vfio_mig_free(p->dst);
    fake_free(p->sdev);
    fake_free(p->ddev);
    g_string_free(p->stream, true);
    g_free(p);
}

static void reset_stubs(void)
{
    stub_switchover_ack = false;
    stub_postcopy_ram = false;
    stub_background_snapshot = false;
    memset(approvers, 0, sizeof(approvers));
    approvals = early_approvals = 0;
    g_string_truncate(errors, 0);
}

/* The markers of one section, appended to @s */
static void append_markers(GString *s, const GByteArray *b)
{
    size_t off = 0;

    g_string_append(s, s->len ? " |" : "");
    while (off + 8 <= b->len) {
        uint64_t m = ldq_be_p(b->data + off);

        off += 8;
        if (m == VFIO_MIG_FLAG_END_OF_STATE) {
            g_string_append(s, " END");
        } else if (m == VFIO_MIG_FLAG_DEV_SETUP_STATE) {
            g_string_append(s, " SETUP");
        } else if (m == VFIO_MIG_FLAG_DEV_INIT_DATA_SENT) {
            g_string_append(s, " INIT");
        } else if (m == VFIO_MIG_FLAG_DEV_CONFIG_STATE) {
            g_string_append(s, " CONFIG");
            off += FAKE_CONFIG_LEN;
        } else if (m == VFIO_MIG_FLAG_DEV_DATA_STATE && off + 8 <= b->len) {
            uint64_t n = ldq_be_p(b->data + off);

            g_string_append_printf(s, " DATA:%" PRIu64, n);
            off += 8 + n;
        } else {
            g_string_append_printf(s, " ?%" PRIx64, m);
        }
    }
    if (off != b->len) {
        g_string_append_printf(s, " (%zd bytes too few/many)", off - b->len);
    }
    if (s->str[0] == ' ') {
        g_string_erase(s, 0, 1);
    }
}

/* The destination loads one section, which must be consumed exactly */
static int load_bytes(VFIOMigration *dst, const uint8_t *data, size_t len)
{
    QEMUFile *f = fake_input_file(data, len);
    int ret = H->load_state(f, dst, 1);

    if (!ret) {
        g_assert_cmpint(qemu_file_get_error(f), ==, 0);
        qemu_get_byte(f);
        g_assert_cmpint(qemu_file_get_error(f), ==, -EIO);
    }
    qemu_fclose(f);
    return ret;
}

typedef int (*SaveFn)(QEMUFile *f, void *opaque);

/*
 * The source saves one section with @fn; its markers go to p->stream and
 * the destination loads it (unless an earlier section failed to load).
 */
static int save_section(Pair *p, SaveFn fn, int64_t rate_limit)
{
    QIOChannelBuffer *bioc = qio_channel_buffer_new(4096);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(bioc));
    g_autoptr(GByteArray) bytes = g_byte_array_new();
    int ret;

    qemu_file_set_rate_limit(f, rate_limit);
    ret = fn(f, p->src);
    qemu_fflush(f);
    if (ret >= 0 && qemu_file_get_error(f)) {
        ret = qemu_file_get_error(f);
    }
    g_byte_array_append(bytes, bioc->data, bioc->usage);
    qemu_fclose(f);
    object_unref(OBJECT(bioc));
    append_markers(p->stream, bytes);
    if (ret >= 0 && p->loading && !p->load_ret) {
        p->load_ret = load_bytes(p->dst, bytes->data, bytes->len);
    }
    return ret;
}

static int save_config(QEMUFile *f, void *opaque)
{
    H->save_state(f, opaque);
    return 0;
}

static int src_setup(Pair *p)
{
    return save_section(p, H->save_setup, 0);
}

/* One round of iteration; SKIPPED if the core says it has no part in it */
static int src_iterate(Pair *p)
{
    if ((H->is_active && !H->is_active(p->src)) ||
        (H->is_active_iterate && !H->is_active_iterate(p->src))) {
        return SKIPPED;
    }
    return save_section(p, H->save_live_iterate, p->rate_limit);
}

static uint64_t src_pending(Pair *p)
{
    uint64_t precopy = 0, compat = 0, postcopy = 0;

    H->save_live_pending(NULL, p->src, 0, &precopy, &compat, &postcopy);
    /* A VFIO device's state must all move before the destination runs */
    g_assert_cmpuint(compat, ==, 0);
    g_assert_cmpuint(postcopy, ==, 0);
    return precopy;
}

static int report(int ret, Error *err)
{
    if (err) {
        error_report_err(err);
    }
    return ret;
}

/* The VM stops (@state) or starts, the prepare step first */
static int vm_change(VFIOMigration *m, bool running, RunState state)
{
    Error *err = NULL;
    int ret = vfio_mig_vm_prepare(m, running, &err);

    if (!ret) {
        ret = vfio_mig_vm_change(m, running, state, &err);
    }
    return report(ret, err);
}

static int ended(VFIOMigration *m, bool vm_running)
{
    Error *err = NULL;
    int ret = vfio_mig_ended(m, vm_running, &err);

    return report(ret, err);
}

static int set_state(VFIOMigration *m, uint32_t state, uint32_t recover)
{
    Error *err = NULL;
    int ret = vfio_mig_set_state(m, state, recover, &err);

    return report(ret, err);
}

/* The destination gets ready to load, as qemu_loadvm_state() does */
static void dst_setup(Pair *p)
{
    g_assert_cmpint(H->load_setup(NULL, p->dst), ==, 0);
    p->loading = true;
}

/*
 * @rounds rounds of iteration, the device dirtying @dirty bytes between
 * two; each round's return must say whether data is left.  The migration
 * core gives every handler its turn in every round, done or not, but
 * src_precopy() stops at the first round that says "done".
 */
static void src_rounds(Pair *p, unsigned rounds, uint64_t dirty, bool stop)
{
    for (unsigned i = 0; i < rounds; i++) {
        if (i) {
            fake_dirty(p->sdev, dirty);
        }
        p->iterate_ret = src_iterate(p);
        if (p->iterate_ret == SKIPPED) {
            return;
        }
        g_assert_cmpint(p->iterate_ret, >=, 0);
        g_assert_cmpint(p->iterate_ret, ==,
                        !p->sdev->initial_left && !p->sdev->dirty_left);
        if (stop && p->iterate_ret == 1) {
            return;
        }
    }
}

static void src_precopy(Pair *p, unsigned rounds, uint64_t dirty)
{
    src_rounds(p, rounds, dirty, true);
}

/*
 * The device's rest and its config go, both sides clean up.  The VM has
 * stopped: QEMU's vm_stop_force_state() runs the VM-state handlers only
 * when the VM was running.
 */
static void finish_stopped(Pair *p)
{
    g_assert_cmpint(save_section(p, H->save_live_complete_precopy, 0), ==,
                    0);
    g_assert_cmpint(save_section(p, save_config, 0), ==, 0);
    H->save_cleanup(p->src);
    g_assert_cmpint(p->load_ret, ==, 0);
    g_assert_cmpint(H->load_cleanup(p->dst), ==, 0);
    g_assert_cmpint(vm_change(p->dst, true, RUN_STATE_RUNNING), ==, 0);
}

/* The VM stops for the switchover, then as finish_stopped() */
static void finish(Pair *p)
{
    g_assert_cmpint(vm_change(p->src, false, RUN_STATE_FINISH_MIGRATE), ==,
                    0);
    finish_stopped(p);
}

/* A whole migration that must succeed */
static void migrate(Pair *p, unsigned rounds, uint64_t dirty)
{
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    src_precopy(p, rounds, dirty);
    finish(p);
}

/* The destination's device holds the source's state; nothing leaked */
static void assert_moved(Pair *p)
{
    g_assert_cmpuint(p->ddev->loaded->len, ==, p->sdev->produced->len);
    g_assert(!memcmp(p->ddev->loaded->data, p->sdev->produced->data,
                     p->sdev->produced->len));
    g_assert_cmpint(fake_check_stream(p->ddev->loaded->data,
                                      p->ddev->loaded->len), ==, 0);
    g_assert(p->ddev->config_was_loaded);
    g_assert_cmpuint(p->ddev->config_loaded[4], ==, p->sdev->cfg.config_id);
    g_assert_cmpuint(fake_open_fds(p->sdev), ==, 0);
    g_assert_cmpuint(fake_open_fds(p->ddev), ==, 0);
    g_assert_cmpuint(p->sdev->bad_closes + p->ddev->bad_closes, ==, 0);
    g_assert_cmpstr(errors->str, ==, "");
    g_assert_cmpuint(p->src->device_state, ==, p->sdev->state);
    g_assert_cmpuint(p->dst->device_state, ==, p->ddev->state);
}

/* The last error message names @name; forget the messages */
static void assert_error_names(const char *name)
{
    g_assert(strstr(errors->str, name));
    g_string_truncate(errors, 0);
}

/* After a failure: the source's device runs again and nothing leaked */
static void assert_recovered(Pair *p)
{
    g_assert_cmpuint(p->sdev->state, ==, VFIO_DEVICE_STATE_RUNNING);
    g_assert_cmpuint(p->src->device_state, ==, VFIO_DEVICE_STATE_RUNNING);
    g_assert_cmpuint(fake_open_fds(p->sdev), ==, 0);
    g_assert_cmpuint(p->sdev->bad_closes, ==, 0);
}

/* ---- Pre-copy ---- */

static void test_precopy_path(void)
{
    Pair *p = pair_new(&base_cfg, true);

    migrate(p, MAX_ROUNDS, 0);
    g_assert_cmpstr(fake_path(p->sdev), ==,
                    "RUNNING PRE_COPY STOP_COPY STOP");
    g_assert_cmpstr(fake_path(p->ddev), ==,
                    "RUNNING STOP RESUMING STOP RUNNING");
    g_assert_cmpstr(p->stream->str, ==, "SETUP END | DATA:1000 END | "
                    "DATA:2000 END | CONFIG END");
    g_assert_cmpuint(p->sdev->produced->len, ==, 3000);
    assert_moved(p);
    g_assert_cmpuint(p->src->bytes, ==, 3000);
    g_assert_cmpuint(p->dst->bytes, ==, 3000);
    pair_free(p);
}

static void test_precopy_p2p_path(void)
{
    FakeConfig cfg = base_cfg;
    Pair *p;

    cfg.mig_flags = FLAGS_ALL;
    p = pair_new(&cfg, true);
    migrate(p, MAX_ROUNDS, 0);
    g_assert_cmpstr(fake_path(p->sdev), ==,
                    "RUNNING PRE_COPY PRE_COPY_P2P STOP_COPY STOP");
    g_assert_cmpstr(fake_path(p->ddev), ==, "RUNNING RUNNING_P2P STOP "
                    "RESUMING STOP RUNNING_P2P RUNNING");
    assert_moved(p);
    pair_free(p);
}

static void test_precopy_ack_after_initial_data(void)
{
    Pair *p = pair_new(&base_cfg, true);

    stub_switchover_ack = true;
    approvers[0] = p->ddev;
    g_assert(H->switchover_ack_needed(p->dst));
    migrate(p, MAX_ROUNDS, 0);
    g_assert_cmpstr(p->stream->str, ==, "SETUP END | DATA:1000 INIT | "
                    "DATA:2000 END | CONFIG END");
    g_assert_cmpuint(approvals, ==, 1);
    g_assert_cmpuint(early_approvals, ==, 0);
    assert_moved(p);
    pair_free(p);
}

/* Dirty rounds after the initial data: INIT_DATA_SENT only once */
static void test_precopy_ack_once(void)
{
    Pair *p = pair_new(&base_cfg, true);

    stub_switchover_ack = true;
    approvers[0] = p->ddev;
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    for (int i = 0; i < 3; i++) {
        src_precopy(p, 1, 0);
        g_assert_cmpint(p->iterate_ret, ==, 1);
        fake_dirty(p->sdev, 300);
    }
    finish(p);
    g_assert_cmpstr(p->stream->str, ==, "SETUP END | DATA:1000 INIT | "
                    "DATA:300 END | DATA:300 END | DATA:2300 END | "
                    "CONFIG END");
    g_assert_cmpuint(approvals, ==, 1);
    assert_moved(p);
    pair_free(p);
}

/* Two devices: each approves once, when its own initial data is in */
static void test_precopy_ack_two_devices(void)
{
    FakeConfig cfg = base_cfg;
    Pair *a, *b;

    cfg.initial_bytes = 5000;
    a = pair_new(&base_cfg, true);
    b = pair_new(&cfg, true);
    stub_switchover_ack = true;
    approvers[0] = a->ddev;
    approvers[1] = b->ddev;
    dst_setup(a);
    dst_setup(b);
    g_assert_cmpint(src_setup(a), ==, 0);
    g_assert_cmpint(src_setup(b), ==, 0);
    src_precopy(a, MAX_ROUNDS, 0);
    g_assert_cmpuint(approvals, ==, 1);
    src_precopy(b, MAX_ROUNDS, 0);
    g_assert_cmpuint(approvals, ==, 2);
    finish(a);
    finish(b);
    g_assert_cmpuint(approvals, ==, 2);
    g_assert_cmpuint(early_approvals, ==, 0);
    assert_moved(a);
    assert_moved(b);
    pair_free(a);
    pair_free(b);
}

/*
 * Initial data over several chunks, with a rate limit that ends each
 * round after one: no chunk over VFIO_MIG_CHUNK_MAX, every round truthful
 * (src_precopy checks it), INIT_DATA_SENT after the last initial byte.
 */
static void test_precopy_initial_data_in_chunks(void)
{
    FakeConfig cfg = base_cfg;
    Pair *p;

    cfg.initial_bytes = 2 * VFIO_MIG_CHUNK_MAX + 1000;
    p = pair_new(&cfg, true);
    p->rate_limit = 1;
    stub_switchover_ack = true;
    approvers[0] = p->ddev;
    migrate(p, MAX_ROUNDS, 0);
    g_assert_cmpuint(approvals, ==, 1);
    g_assert_cmpuint(early_approvals, ==, 0);
    g_assert(!strstr(p->stream->str, "DATA:0 "));
    g_assert(g_str_has_prefix(p->stream->str, "SETUP END | DATA:1048576 "));
    g_assert(strstr(p->stream->str, " DATA:1000 INIT | DATA:2000 END"));
    assert_moved(p);
    pair_free(p);
}

static void test_precopy_end_of_data(gconstpointer data)
{
    FakeConfig cfg = base_cfg;
    Pair *p;

    cfg.end_of_data = GPOINTER_TO_INT(data);
    p = pair_new(&cfg, true);
    stub_switchover_ack = true;
    approvers[0] = p->ddev;
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    src_rounds(p, 3, 0, false);
    finish(p);
    g_assert_cmpstr(p->stream->str, ==, "SETUP END | DATA:1000 INIT | "
                    "END | END | DATA:2000 END | CONFIG END");
    assert_moved(p);
    pair_free(p);
}

/* A device that never drains: every round says "more", complete ends it */
static void test_precopy_never_drains(void)
{
    FakeConfig cfg = base_cfg;
    Pair *p;

    cfg.never_drains = 700;
    p = pair_new(&cfg, true);
    p->rate_limit = 1;
    stub_switchover_ack = true;
    approvers[0] = p->ddev;
    migrate(p, 5, 0);
    g_assert_cmpint(p->iterate_ret, ==, 0);
    g_assert_cmpuint(approvals, ==, 1);
    g_assert(g_str_has_prefix(p->stream->str, "SETUP END | DATA:1000 INIT"));
    g_assert(g_str_has_suffix(p->stream->str, "DATA:2700 END | CONFIG END"));
    assert_moved(p);
    pair_free(p);
}

/*
 * With P2P, the prepare step quiesces every device before the main step
 * stops or starts any: device A must not stop while device B can still
 * DMA into it.  Without P2P there is nothing to prepare.
 */
static void test_p2p_prepare_quiesces_first(void)
{
    FakeConfig cfg = base_cfg;
    Pair *a, *b;
    Error *err = NULL;

    cfg.mig_flags = FLAGS_ALL;
    a = pair_new(&cfg, true);
    b = pair_new(&cfg, false);
    dst_setup(a);
    dst_setup(b);
    g_assert_cmpint(src_setup(a), ==, 0);
    g_assert_cmpint(src_setup(b), ==, 0);
    g_assert_cmpint(vfio_mig_vm_prepare(a->src, false, &err), ==, 0);
    g_assert_cmpint(vfio_mig_vm_prepare(b->src, false, &err), ==, 0);
    g_assert_cmpuint(a->sdev->state, ==, VFIO_DEVICE_STATE_PRE_COPY_P2P);
    g_assert_cmpuint(b->sdev->state, ==, VFIO_DEVICE_STATE_RUNNING_P2P);
    finish(a);
    finish(b);
    g_assert(g_str_has_suffix(fake_path(a->ddev), "STOP RUNNING_P2P RUNNING"));
    assert_moved(a);
    assert_moved(b);
    pair_free(a);
    pair_free(b);
}

static void test_no_p2p_nothing_to_prepare(void)
{
    Pair *p = pair_new(&base_cfg, true);
    Error *err = NULL;

    g_assert_cmpint(src_setup(p), ==, 0);
    g_assert_cmpint(vfio_mig_vm_prepare(p->src, false, &err), ==, 0);
    g_assert_cmpuint(p->sdev->set_state_calls, ==, 1);
    H->save_cleanup(p->src);
    g_assert_cmpint(ended(p->src, true), ==, 0);
    assert_recovered(p);
    pair_free(p);
}

/*
 * The guest is paused during pre-copy (HMP "stop"): the device stops in
 * STOP_COPY, keeping its session, and the migration completes from there
 * (upstream since 8.1); STOP would end the session and lose the state.
 */
static void test_precopy_vm_paused(void)
{
    Pair *p = pair_new(&base_cfg, true);

    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    src_precopy(p, 1, 0);
    fake_dirty(p->sdev, 100);
    g_assert_cmpint(vm_change(p->src, false, RUN_STATE_PAUSED), ==, 0);
    g_assert_cmpuint(p->sdev->state, ==, VFIO_DEVICE_STATE_STOP_COPY);
    src_precopy(p, MAX_ROUNDS, 0);
    finish_stopped(p);
    g_assert_cmpstr(fake_path(p->sdev), ==,
                    "RUNNING PRE_COPY STOP_COPY STOP");
    g_assert(g_str_has_suffix(p->stream->str, "DATA:2100 END | CONFIG END"));
    assert_moved(p);
    pair_free(p);
}

/* ---- Without pre-copy ---- */

typedef struct StopCopyCase {
    uint64_t mig_flags;
    bool allow_precopy;
    const char *path;
} StopCopyCase;

static const StopCopyCase stop_copy_precopy_off = {
    FLAGS_PRECOPY, false, "RUNNING STOP STOP_COPY STOP",
};
static const StopCopyCase stop_copy_no_precopy = {
    VFIO_MIGRATION_STOP_COPY, true, "RUNNING STOP STOP_COPY STOP",
};
static const StopCopyCase stop_copy_p2p = {
    VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P, true,
    "RUNNING RUNNING_P2P STOP STOP_COPY STOP",
};

static void test_stop_copy(gconstpointer data)
{
    const StopCopyCase *sc = data;
    FakeConfig cfg = base_cfg;
    Pair *p;

    cfg.mig_flags = sc->mig_flags;
    p = pair_new(&cfg, sc->allow_precopy);
    stub_switchover_ack = true;
    g_assert(!H->switchover_ack_needed(p->dst));
    migrate(p, MAX_ROUNDS, 0);
    g_assert_cmpstr(fake_path(p->sdev), ==, sc->path);
    g_assert_cmpstr(p->stream->str, ==,
                    "SETUP END | DATA:3000 END | CONFIG END");
    g_assert_cmpuint(p->sdev->precopy_info_calls, ==, 0);
    g_assert_cmpuint(approvals, ==, 0);
    assert_moved(p);
    pair_free(p);
}

/* A guest paused before the migration: its device has nothing to pre-copy */
static void test_stop_copy_vm_paused_before(void)
{
    Pair *p = pair_new(&base_cfg, true);

    g_assert_cmpint(vm_change(p->src, false, RUN_STATE_PAUSED), ==, 0);
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    src_precopy(p, MAX_ROUNDS, 0);
    finish_stopped(p);
    g_assert_cmpstr(fake_path(p->sdev), ==, "RUNNING STOP STOP_COPY STOP");
    g_assert_cmpstr(p->stream->str, ==,
                    "SETUP END | DATA:3000 END | CONFIG END");
    assert_moved(p);
    pair_free(p);
}

/* ---- The pending estimate ---- */

/* MIG_DATA_SIZE's stop-copy size already holds the pre-copy bytes */
static void test_pending_stop_copy_size_alone(void)
{
    Pair *p = pair_new(&base_cfg, true);

    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    g_assert_cmpuint(src_pending(p), ==, 3000);
    fake_dirty(p->sdev, 400);
    g_assert_cmpuint(src_pending(p), ==, 3000);
    src_precopy(p, 1, 0);
    g_assert_cmpuint(src_pending(p), ==, 3000);
    finish(p);
    assert_moved(p);
    pair_free(p);
}

static void test_pending_unknown_size(void)
{
    FakeConfig cfg = base_cfg;
    Pair *p;

    cfg.no_data_size = true;
    p = pair_new(&cfg, true);
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    g_assert_cmpuint(src_pending(p), ==, VFIO_MIG_STOP_COPY_SIZE_UNKNOWN);
    finish(p);
    assert_moved(p);
    pair_free(p);
}

/* ---- Cancel ---- */

static void test_cancel_after_setup(void)
{
    Pair *p = pair_new(&base_cfg, true);

    g_assert_cmpint(src_setup(p), ==, 0);
    H->save_cleanup(p->src);
    g_assert_cmpint(ended(p->src, true), ==, 0);
    g_assert_cmpstr(fake_path(p->sdev), ==, "RUNNING PRE_COPY RUNNING");
    assert_recovered(p);
    g_assert_cmpstr(errors->str, ==, "");
    pair_free(p);
}

static void test_cancel_after_iterate(void)
{
    FakeConfig cfg = base_cfg;
    Pair *p;

    cfg.mig_flags = FLAGS_ALL;
    p = pair_new(&cfg, true);
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    src_precopy(p, 2, 100);
    /* The migration's state notifier may come before the cleanup */
    g_assert_cmpint(ended(p->src, true), ==, 0);
    H->save_cleanup(p->src);
    g_assert_cmpstr(fake_path(p->sdev), ==, "RUNNING PRE_COPY RUNNING");
    assert_recovered(p);
    g_assert_cmpstr(errors->str, ==, "");
    pair_free(p);
}

/* The VM stopped for the switchover, then the migration failed */
static void test_cancel_after_stop_copy(void)
{
    Pair *p = pair_new(&base_cfg, true);

    g_assert_cmpint(src_setup(p), ==, 0);
    src_precopy(p, MAX_ROUNDS, 0);
    g_assert_cmpint(vm_change(p->src, false, RUN_STATE_FINISH_MIGRATE),
                    ==, 0);
    g_assert_cmpint(vm_change(p->src, true, RUN_STATE_RUNNING), ==, 0);
    H->save_cleanup(p->src);
    g_assert_cmpint(ended(p->src, true), ==, 0);
    g_assert_cmpstr(fake_path(p->sdev), ==,
                    "RUNNING PRE_COPY STOP_COPY STOP RUNNING");
    assert_recovered(p);
    pair_free(p);
}

/* ---- Transitions and their failures ---- */

static void test_set_state_current_is_noop(void)
{
    Pair *p = pair_new(&base_cfg, true);

    g_assert_cmpint(set_state(p->src, VFIO_DEVICE_STATE_RUNNING,
                              VFIO_DEVICE_STATE_ERROR), ==, 0);
    g_assert_cmpuint(p->sdev->set_state_calls, ==, 0);
    g_assert_cmpint(set_state(p->src, VFIO_DEVICE_STATE_STOP,
                              VFIO_DEVICE_STATE_ERROR), ==, 0);
    g_assert_cmpint(set_state(p->src, VFIO_DEVICE_STATE_STOP,
                              VFIO_DEVICE_STATE_ERROR), ==, 0);
    g_assert_cmpuint(p->sdev->set_state_calls, ==, 1);
    g_assert_cmpstr(fake_path(p->sdev), ==, "RUNNING STOP");
    pair_free(p);
}

/* A combination transition fails midway: the recover state is set */
static void test_set_state_recover_midway(void)
{
    FakeConfig cfg = base_cfg;
    Pair *p;

    cfg.mig_flags = FLAGS_ALL;
    p = pair_new(&cfg, true);
    p->sdev->faults.fail_arc_to = VFIO_DEVICE_STATE_STOP;
    p->sdev->faults.fail_arc_count = 1;
    g_assert_cmpint(set_state(p->src, VFIO_DEVICE_STATE_STOP,
                              VFIO_DEVICE_STATE_RUNNING), <, 0);
    g_assert(strstr(errors->str, "STOP") && strstr(errors->str, "RUNNING"));
    assert_error_names("fake-src");
    g_assert_cmpstr(fake_path(p->sdev), ==,
                    "RUNNING RUNNING_P2P (fail STOP) RUNNING");
    g_assert_cmpuint(p->sdev->resets, ==, 0);
    assert_recovered(p);
    pair_free(p);
}

/* The failure leaves ERROR, the recover state cannot be set: reset */
static void test_set_state_recover_fails_then_reset(void)
{
    Pair *p = pair_new(&base_cfg, true);

    p->sdev->faults.fail_arc_to = VFIO_DEVICE_STATE_STOP;
    p->sdev->faults.fail_arc_count = 1;
    p->sdev->faults.fail_arc_to_error = true;
    g_assert_cmpint(set_state(p->src, VFIO_DEVICE_STATE_STOP,
                              VFIO_DEVICE_STATE_RUNNING), <, 0);
    assert_error_names("fake-src");
    g_assert(g_str_has_prefix(fake_path(p->sdev),
                              "RUNNING (fail STOP) ERROR"));
    g_assert(g_str_has_suffix(fake_path(p->sdev), " reset RUNNING"));
    g_assert_cmpuint(p->sdev->resets, ==, 1);
    assert_recovered(p);
    pair_free(p);
}

/* Recover state ERROR means: reset at once */
static void test_set_state_recover_error_resets(void)
{
    Pair *p = pair_new(&base_cfg, true);

    p->sdev->faults.fail_arc_to = VFIO_DEVICE_STATE_STOP;
    p->sdev->faults.fail_arc_count = -1;
    g_assert_cmpint(set_state(p->src, VFIO_DEVICE_STATE_STOP_COPY,
                              VFIO_DEVICE_STATE_ERROR), <, 0);
    assert_error_names("fake-src");
    g_assert_cmpstr(fake_path(p->sdev), ==,
                    "RUNNING (fail STOP) reset RUNNING");
    g_assert_cmpuint(p->sdev->set_state_calls, ==, 1);
    assert_recovered(p);
    pair_free(p);
}

/* The reset fails too: the core knows the device is in ERROR */
static void test_set_state_reset_fails(void)
{
    Pair *p = pair_new(&base_cfg, true);

    p->sdev->faults.fail_arc_to = VFIO_DEVICE_STATE_STOP;
    p->sdev->faults.fail_arc_count = -1;
    p->sdev->faults.fail_arc_to_error = true;
    p->sdev->faults.reset_fails = true;
    g_assert_cmpint(set_state(p->src, VFIO_DEVICE_STATE_STOP,
                              VFIO_DEVICE_STATE_ERROR), <, 0);
    assert_error_names("fake-src");
    g_assert_cmpuint(p->sdev->state, ==, VFIO_DEVICE_STATE_ERROR);
    g_assert_cmpuint(p->src->device_state, ==, VFIO_DEVICE_STATE_ERROR);
    g_assert_cmpuint(p->sdev->resets, ==, 1);
    pair_free(p);
}

/* The VM stop cannot reach STOP_COPY: the migration fails, VM resumes */
static void test_stop_copy_refused(void)
{
    Pair *p = pair_new(&base_cfg, true);

    p->sdev->faults.fail_arc_to = VFIO_DEVICE_STATE_STOP_COPY;
    p->sdev->faults.fail_arc_count = 1;
    p->sdev->faults.fail_arc_to_error = true;
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    src_precopy(p, MAX_ROUNDS, 0);
    g_assert_cmpint(vm_change(p->src, false, RUN_STATE_FINISH_MIGRATE),
                    <, 0);
    assert_error_names("fake-src");
    g_assert_cmpint(save_section(p, H->save_live_complete_precopy, 0),
                    <, 0);
    assert_error_names("fake-src");
    g_assert_cmpint(vm_change(p->src, true, RUN_STATE_RUNNING), ==, 0);
    H->save_cleanup(p->src);
    g_assert_cmpint(ended(p->src, true), ==, 0);
    assert_recovered(p);
    pair_free(p);
}

/* ---- Faults on the source ---- */

/* A reset under the migration: the next round notices */
static void test_reset_behind_core(void)
{
    Pair *p = pair_new(&base_cfg, true);

    p->rate_limit = 1;
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    src_precopy(p, 1, 0);
    fake_reset_behind(p->sdev);
    g_assert_cmpint(src_iterate(p), <, 0);
    assert_error_names("fake-src");
    H->save_cleanup(p->src);
    g_assert_cmpint(ended(p->src, true), ==, 0);
    assert_recovered(p);
    pair_free(p);
}

static void test_read_error(void)
{
    Pair *p = pair_new(&base_cfg, true);

    p->sdev->faults.read_fail_at = 1;
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    g_assert_cmpint(src_iterate(p), <, 0);
    assert_error_names("fake-src");
    H->save_cleanup(p->src);
    g_assert_cmpint(ended(p->src, true), ==, 0);
    g_assert_cmpstr(fake_path(p->sdev), ==, "RUNNING PRE_COPY RUNNING");
    assert_recovered(p);
    pair_free(p);
}

/* Asked before the migration starts (save_prepare); nothing changes */
static void test_refuses(gconstpointer data)
{
    const char *what = data;
    Pair *p = pair_new(&base_cfg, true);
    Error *err = NULL;

    stub_postcopy_ram = !strcmp(what, "postcopy");
    stub_background_snapshot = !strcmp(what, "background snapshot");
    if (!strcmp(what, "ERROR")) {
        p->sdev->faults.fail_arc_to = VFIO_DEVICE_STATE_STOP;
        p->sdev->faults.fail_arc_count = -1;
        p->sdev->faults.fail_arc_to_error = true;
        p->sdev->faults.reset_fails = true;
        g_assert_cmpint(set_state(p->src, VFIO_DEVICE_STATE_STOP,
                                  VFIO_DEVICE_STATE_RUNNING), <, 0);
        g_string_truncate(errors, 0);
        fake_path_restart(p->sdev);
    }
    g_assert_cmpint(H->save_prepare(p->src, &err), <, 0);
    g_assert(strstr(error_get_pretty(err), what));
    report(0, err);
    assert_error_names("fake-src");
    g_assert_cmpstr(fake_path(p->sdev), ==, strcmp(what, "ERROR") ?
                    "RUNNING" : "ERROR");
    g_assert_cmpuint(fake_open_fds(p->sdev), ==, 0);
    pair_free(p);
}

/* ---- The destination's loader ---- */

/*
 * A short write is not an error: write(2) may take part of a buffer, and
 * the uAPI lets the user cut the stream anywhere ("not required to
 * preserve buffer segmentation"); upstream's qemu_file_get_to_fd() goes
 * on with the rest.  The migration must complete with every byte.
 */
static void test_load_short_write_resumed(void)
{
    Pair *p = pair_new(&base_cfg, true);

    p->ddev->faults.short_write_at = 1;
    migrate(p, MAX_ROUNDS, 0);
    g_assert_cmpuint(p->ddev->writes, ==, 3);
    assert_moved(p);
    pair_free(p);
}

/* A write that takes nothing, or fails, fails the load */
static void test_load_write_fault(gconstpointer data)
{
    bool efault = GPOINTER_TO_INT(data);
    Pair *p = pair_new(&base_cfg, true);

    if (efault) {
        p->ddev->faults.efault_write_at = 1;
    } else {
        p->ddev->faults.stall_write_at = 1;
    }
    dst_setup(p);
    g_assert_cmpint(src_setup(p), ==, 0);
    g_assert_cmpint(src_iterate(p), >=, 0);
    g_assert_cmpint(p->load_ret, <, 0);
    assert_error_names("fake-dst");
    pair_free(p);
}

/*
 * A section built from be64 words; each DATA_STATE's length word is
 * followed by up to @payload bytes (the stream's magic, then filler).
 */
static GByteArray *craft(const uint64_t *words, int n, size_t payload)
{
    GByteArray *b = g_byte_array_new();
    uint8_t be[8];

    for (int i = 0; i < n; i++) {
        stq_be_p(be, words[i]);
        g_byte_array_append(b, be, 8);
        if (words[i] == VFIO_MIG_FLAG_DEV_DATA_STATE && i + 1 < n) {
            stq_be_p(be, words[++i]);
            g_byte_array_append(b, be, 8);
            for (size_t j = 0; j < MIN(payload, words[i]); j++) {
                uint8_t byte = j < FAKE_MAGIC_LEN ? "FAKEVFIO"[j] : 0x5a;

                g_byte_array_append(b, &byte, 1);
            }
        }
    }
    return b;
}

static int load_bytes_words(Pair *p, const uint64_t *words, int n)
{
    g_autoptr(GByteArray) b = craft(words, n, 0);

    return load_bytes(p->dst, b->data, b->len);
}

/* The loader is given a crafted section; @resuming: after load_setup */
static int load_crafted(Pair *p, bool resuming, const uint64_t *words,
                        int n, size_t payload)
{
    g_autoptr(GByteArray) b = craft(words, n, payload);

    if (resuming) {
        dst_setup(p);
    }
    return load_bytes(p->dst, b->data, b->len);
}

#define END     VFIO_MIG_FLAG_END_OF_STATE
#define DATA    VFIO_MIG_FLAG_DEV_DATA_STATE
#define INIT    VFIO_MIG_FLAG_DEV_INIT_DATA_SENT

typedef struct BadStream {
    const char *what;
    bool resuming;
    bool ack;               /* switchover-ack on */
    uint64_t words[6];
    int n;
    size_t payload;         /* bytes after each DATA_STATE's length */
    unsigned valid_bytes;   /* what the device may have been given */
} BadStream;

static const BadStream bad_streams[] = {
    { "unknown-marker", true, false, { 0xffffffffef100099ULL, END }, 2 },
    { "oversized-chunk", true, false, { DATA, VFIO_MIG_CHUNK_MAX + 1, END },
      3, VFIO_MIG_CHUNK_MAX + 1, 0 },
    { "truncated-chunk", true, false, { DATA, 8, DATA, 100 }, 4, 50, 8 },
    { "missing-end", true, false, { DATA, 8 }, 2, 8, 8 },
    { "empty-section", true, false, { 0 }, 0 },
    { "init-data-sent-without-ack", true, false, { INIT }, 1 },
    { "init-data-sent-twice", true, true, { INIT, INIT }, 2 },
    { "data-when-not-resuming", false, false, { DATA, 8, END }, 3, 8, 0 },
};

static void test_load_rejects(gconstpointer data)
{
    const BadStream *bs = data;
    Pair *p = pair_new(&base_cfg, true);

    stub_switchover_ack = bs->ack;
    if (bs->ack) {
        /* INIT_DATA_SENT ends its section: the first one is valid */
        g_assert_cmpint(load_crafted(p, bs->resuming, bs->words, 1, 0),
                        ==, 0);
        g_assert_cmpint(load_bytes_words(p, bs->words + 1, bs->n - 1), <,
                        0);
    } else {
        g_assert_cmpint(load_crafted(p, bs->resuming, bs->words, bs->n,
                                     bs->payload), <, 0);
    }
    assert_error_names("fake-dst");
    g_assert_cmpuint(p->ddev->received->len, <=, bs->valid_bytes);
    if (bs->resuming) {
        H->load_cleanup(p->dst);
    }
    pair_free(p);
}

/*
 * The destination's device refuses the state it was sent when RESUMING
 * ends, which the config section (after all device data) does: the
 * incoming migration fails, naming the device, before the guest starts.
 */
static void test_load_corrupt_state(void)
{
    Pair *p = pair_new(&base_cfg, true);
    static const uint64_t data[] = { DATA, 100, END };
    static const uint64_t config[] = {
        VFIO_MIG_FLAG_DEV_CONFIG_STATE, 0xc0f1f00d40414243ULL, END,
    };

    g_assert_cmpint(load_crafted(p, true, data, 3, 100), ==, 0);
    g_assert_cmpint(load_bytes_words(p, config, 3), <, 0);
    assert_error_names("fake-dst");
    g_assert_cmpuint(p->ddev->loaded->len, ==, 0);
    g_assert(!p->ddev->config_was_loaded);
    H->load_cleanup(p->dst);
    g_assert_cmpuint(fake_open_fds(p->ddev), ==, 0);
    pair_free(p);
}

static void test_load_bad_config(void)
{
    Pair *p = pair_new(&base_cfg, true);
    static const uint64_t words[] = { VFIO_MIG_FLAG_DEV_CONFIG_STATE, 0, 0 };

    g_assert_cmpint(load_crafted(p, false, words, 3, 0), <, 0);
    assert_error_names("fake-dst");
    g_assert(!p->ddev->config_was_loaded);
    pair_free(p);
}

/* ---- main ---- */

typedef struct TestCase {
    GTestFunc fn;
    GTestDataFunc data_fn;
    gconstpointer data;
} TestCase;

/* Each test starts with the stubs as a migration without capabilities */
static void run_case(gconstpointer opaque)
{
    const TestCase *tc = opaque;

    reset_stubs();
    if (tc->fn) {
        tc->fn();
    } else {
        tc->data_fn(tc->data);
    }
}

static GPtrArray *cases;

static void add_case(const char *path, GTestFunc fn, GTestDataFunc data_fn,
                     gconstpointer data)
{
    TestCase *tc = g_new(TestCase, 1);

    *tc = (TestCase) { .fn = fn, .data_fn = data_fn, .data = data };
    g_ptr_array_add(cases, tc);
    g_test_add_data_func(path, tc, run_case);
}

static void add(const char *path, GTestFunc fn)
{
    add_case(path, fn, NULL, NULL);
}

static void add_data(const char *path, gconstpointer data, GTestDataFunc fn)
{
    add_case(path, NULL, fn, data);
}

int main(int argc, char **argv)
{
    int ret;

    module_call_init(MODULE_INIT_QOM);
    g_test_init(&argc, &argv, NULL);
    errors = g_string_new("");
    cases = g_ptr_array_new_with_free_func(g_free);
    add("/vfio-migration/precopy/path", test_precopy_path);
    add("/vfio-migration/precopy/p2p-path", test_precopy_p2p_path);
    add("/vfio-migration/precopy/ack-after-initial-data",
        test_precopy_ack_after_initial_data);
    add("/vfio-migration/precopy/ack-once", test_precopy_ack_once);
    add("/vfio-migration/precopy/ack-each-of-two-devices",
        test_precopy_ack_two_devices);
    add("/vfio-migration/precopy/initial-data-in-chunks",
        test_precopy_initial_data_in_chunks);
    add_data("/vfio-migration/precopy/end-of-data-by-zero",
             GINT_TO_POINTER(FAKE_END_BY_ZERO), test_precopy_end_of_data);
    add_data("/vfio-migration/precopy/end-of-data-by-enomsg",
             GINT_TO_POINTER(FAKE_END_BY_ENOMSG), test_precopy_end_of_data);
    add("/vfio-migration/precopy/never-drains", test_precopy_never_drains);
    add("/vfio-migration/precopy/vm-paused", test_precopy_vm_paused);
    add("/vfio-migration/p2p/prepare-quiesces-first",
        test_p2p_prepare_quiesces_first);
    add("/vfio-migration/p2p/nothing-to-prepare-without-p2p",
        test_no_p2p_nothing_to_prepare);
    add_data("/vfio-migration/stop-copy/allow-pre-copy-off",
             &stop_copy_precopy_off, test_stop_copy);
    add_data("/vfio-migration/stop-copy/device-without-pre-copy",
             &stop_copy_no_precopy, test_stop_copy);
    add_data("/vfio-migration/stop-copy/p2p", &stop_copy_p2p,
             test_stop_copy);
    add("/vfio-migration/stop-copy/vm-paused-before",
        test_stop_copy_vm_paused_before);
    add("/vfio-migration/pending/stop-copy-size-alone",
        test_pending_stop_copy_size_alone);
    add("/vfio-migration/pending/unknown-size", test_pending_unknown_size);
    add("/vfio-migration/cancel/after-setup", test_cancel_after_setup);
    add("/vfio-migration/cancel/after-iterate", test_cancel_after_iterate);
    add("/vfio-migration/cancel/after-stop-copy",
        test_cancel_after_stop_copy);
    add("/vfio-migration/set-state/current-state-is-a-no-op",
        test_set_state_current_is_noop);
    add("/vfio-migration/set-state/recover-midway",
        test_set_state_recover_midway);
    add("/vfio-migration/set-state/recover-fails-then-reset",
        test_set_state_recover_fails_then_reset);
    add("/vfio-migration/set-state/recover-error-resets",
        test_set_state_recover_error_resets);
    add("/vfio-migration/set-state/reset-fails",
        test_set_state_reset_fails);
    add("/vfio-migration/fail/stop-copy-refused", test_stop_copy_refused);
    add("/vfio-migration/fail/reset-behind-the-core",
        test_reset_behind_core);
    add("/vfio-migration/fail/read-error", test_read_error);
    add_data("/vfio-migration/refuses/postcopy", "postcopy", test_refuses);
    add_data("/vfio-migration/refuses/background-snapshot",
             "background snapshot", test_refuses);
    add_data("/vfio-migration/refuses/device-in-error", "ERROR",
             test_refuses);
    add("/vfio-migration/load/short-write-resumed",
        test_load_short_write_resumed);
    add_data("/vfio-migration/load/write-without-progress",
             GINT_TO_POINTER(false), test_load_write_fault);
    add_data("/vfio-migration/load/efault", GINT_TO_POINTER(true),
             test_load_write_fault);
    for (int i = 0; i < ARRAY_SIZE(bad_streams); i++) {
        g_autofree char *path = g_strdup_printf(
            "/vfio-migration/load/rejects/%s", bad_streams[i].what);

        add_data(path, &bad_streams[i], test_load_rejects);
    }
    add("/vfio-migration/load/rejects/corrupt-device-state",
        test_load_corrupt_state);
    add("/vfio-migration/load/rejects/bad-config", test_load_bad_config);
    ret = g_test_run();
    g_string_free(errors, true);
    g_ptr_array_free(cases, true);
    return ret;
}
