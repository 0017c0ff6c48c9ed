/*
 * libFuzzer target: the destination's loader of the sPAPR HTAB stream
 *
 * Feeds arbitrary bytes to hw/ppc/spapr_htab.c's chunk loader as one
 * part of the "spapr/htab" section, applied to a table of 256 entries
 * (smaller than any real one, so that a run is cheap) allocated to its
 * exact size, so that ASan sees any write outside it.  The first four
 * bytes are also checked as a setup header.  Whatever the bytes, the
 * loader must return 0 or a negative errno, never crash or touch memory
 * outside the table.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/module.h"
#include "qapi/error.h"
#include "migration/qemu-file-types.h"
#include "../../migration/qemu-file.h"
#include "hw/ppc/spapr_htab.h"
#include "../unit/vfio-fake-device.h"

#define SHIFT 12

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool initialized;
    SpaprHtab t;
    QEMUFile *f;
    Error *err = NULL;
    int ret;

    if (!initialized) {
        module_call_init(MODULE_INIT_QOM);
        initialized = true;
    }
    if (size >= 4 && !spapr_htab_check_shift(ldl_be_p(data), 24, &err)) {
        error_free(err);
        err = NULL;
    }
    spapr_htab_init(&t, g_malloc0(1 << SHIFT), SHIFT);
    f = fake_input_file(data, size);
    ret = spapr_htab_load_chunks(f, spapr_htab_entries(&t),
                                 spapr_htab_apply_to_table, &t, &err);
    assert(ret <= 0);
    assert(!ret == !err);
    error_free(err);
    qemu_fclose(f);
    g_free(t.hptes);
    spapr_htab_destroy(&t);
    return 0;
}
