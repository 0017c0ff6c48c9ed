/*
 * libFuzzer target: the destination's loader of a VFIO device's stream
 *
 * Feeds arbitrary bytes to hw/vfio/migration.c's load_state as the
 * sections of one device's migration, over the unit tests' fake device
 * (tests/unit/vfio-fake-device.c), which follows the kernel's uAPI and
 * checks what it is given as mtty does.  The first input byte chooses
 * whether switchover-ack is on; the rest is the stream.  Whatever the
 * bytes, the loader must return (0 or a negative errno, never crash or
 * read or write out of bounds), and the device must never be given more
 * bytes than the stream carried.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/module.h"
#include "migration/qemu-file-types.h"
#include "../../migration/qemu-file.h"
#include "../../migration/migration.h"
#include "../../migration/savevm.h"
#include "../unit/vfio-fake-device.h"

/* Sections one input may hold: a real device stream has a few */
#define MAX_SECTIONS 64

static bool switchover_ack;

bool migrate_switchover_ack(void)
{
    return switchover_ack;
}

bool migrate_postcopy_ram(void)
{
    return false;
}

bool migrate_background_snapshot(void)
{
    return false;
}

int qemu_loadvm_approve_switchover(void)
{
    return 0;
}

/* The loader's messages are expected; keep the fuzzer's output readable */
int error_vprintf(const char *fmt, va_list ap)
{
    return 0;
}

int error_vprintf_unless_qmp(const char *fmt, va_list ap)
{
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const FakeConfig cfg = {
        .mig_flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P |
                     VFIO_MIGRATION_PRE_COPY,
        .initial_bytes = FAKE_MAGIC_LEN,
        .stop_copy_bytes = FAKE_TRAILER_LEN,
    };
    FakeDevice *dev;
    VFIOMigration *mig;
    QEMUFile *f;
    int i, ret;

    if (!size) {
        return 0;
    }
    switchover_ack = data[0] & 1;
    dev = fake_new("fuzz", &cfg);
    mig = vfio_mig_new(&fake_ops, dev, "fuzz", cfg.mig_flags, true);
    f = fake_input_file(data + 1, size - 1);

    ret = vfio_mig_savevm_handlers.load_setup(f, mig);
    assert(ret == 0);
    /* Each section reads a marker at least, or fails at the end */
    for (i = 0; i < MAX_SECTIONS && !ret; i++) {
        ret = vfio_mig_savevm_handlers.load_state(f, mig, 1);
        assert(ret <= 0);
    }
    vfio_mig_savevm_handlers.load_cleanup(mig);
    assert(dev->received->len <= size);
    assert(fake_open_fds(dev) == 0);

    qemu_fclose(f);
    vfio_mig_free(mig);
    fake_free(dev);
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    module_call_init(MODULE_INIT_QOM);
    return 0;
}
