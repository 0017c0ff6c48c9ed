/*
 * sPAPR hash page table: the machine's side of Ferry's HTAB migration
 *
 * Owns which table the machine has (every replacement goes through
 * spapr_htab_replace(), so a migration in progress sees a reset, a CAS
 * that changes the MMU mode or an HPT resize), the "spapr/htab" savevm
 * handlers, and the KVM-HV path, where the kernel keeps the table and
 * its HTAB fd produces the same stream.
 *
 * Locking: the save side runs in the migration thread without the BQL;
 * a replacement runs under the BQL.  The two exclude each other with
 * SpaprHtabState.lock (taken after the BQL, never before it).  Writers
 * (hcalls, the MMU's R/C updates) take no lock: they reach the table
 * under RCU, and a replaced table is freed after a grace period.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/lockable.h"
#include "qemu/memalign.h"
#include "qemu/rcu.h"
#include "qemu/error-report.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-machine-target.h"
#include "migration/migration.h"
#include "migration/qemu-file.h"
#include "migration/register.h"
#include "migration/vmstate.h"
#include "sysemu/kvm.h"
#include "hw/ppc/spapr.h"
#include "hw/ppc/spapr_htab.h"
#include "cpu.h"
#include "mmu-hash64.h"
#include "kvm_ppc.h"
#include "trace.h"

QEMU_BUILD_BUG_ON(SPAPR_HTAB_V_DIRTY != HPTE64_V_HPTE_DIRTY);
QEMU_BUILD_BUG_ON(SPAPR_HTAB_V_VALID != HPTE64_V_VALID);
QEMU_BUILD_BUG_ON(SPAPR_HTAB_HPTE_SIZE != HASH_PTE_SIZE_64);

/* Each part's share of the migration thread, as the base's */
#define PART_BUDGET_NS      (5 * SCALE_MS)
#define KVM_BUFFER_SIZE     2048

/* A table and its dirty bits, freed after an RCU grace period */
typedef struct HtabView {
    struct rcu_head rcu;
    SpaprHtab table;
} HtabView;

typedef struct SpaprHtabState {
    QemuMutex lock;
    HtabView *view;             /* NULL when QEMU holds no table */
    uint64_t generation;        /* bumped by every replacement */
    /* the save side */
    SpaprHtabSaver saver;
    uint64_t sent_generation;   /* of the table the last header announced */
    unsigned sent_shift;
} SpaprHtabState;

static SpaprHtabState *htab_state(SpaprMachineState *spapr)
{
    if (!spapr->htab_state) {
        spapr->htab_state = g_new0(SpaprHtabState, 1);
        qemu_mutex_init(&spapr->htab_state->lock);
    }
    return spapr->htab_state;
}

static void view_free(HtabView *view)
{
    qemu_vfree(view->table.hptes);
    spapr_htab_destroy(&view->table);
    g_free(view);
}

void spapr_htab_replace(SpaprMachineState *spapr, void *hptes,
                        unsigned shift)
{
    SpaprHtabState *s = htab_state(spapr);
    HtabView *old, *view = NULL;

    if (hptes) {
        view = g_new0(HtabView, 1);
        spapr_htab_init(&view->table, hptes, shift);
    }
    WITH_QEMU_LOCK_GUARD(&s->lock) {
        old = s->view;
        qatomic_rcu_set(&s->view, view);
        spapr->htab = hptes;
        spapr->htab_shift = shift;
        s->generation++;
    }
    trace_spapr_htab_replace(shift, !hptes && shift, s->generation);
    if (old) {
        call_rcu(old, view_free, rcu);
    }
}

void spapr_htab_store_hpte(SpaprMachineState *spapr, uint64_t index,
                           uint64_t pte0, uint64_t pte1)
{
    HtabView *view;

    RCU_READ_LOCK_GUARD();
    view = qatomic_rcu_read(&htab_state(spapr)->view);
    if (view) {
        spapr_htab_store(&view->table, index, pte0, pte1);
    } else {
        kvmppc_write_hpte(index, pte0 | HPTE64_V_HPTE_DIRTY, pte1);
    }
}

void spapr_htab_rc_updated(SpaprMachineState *spapr, uint64_t index)
{
    HtabView *view;

    RCU_READ_LOCK_GUARD();
    view = qatomic_rcu_read(&htab_state(spapr)->view);
    if (view) {
        spapr_htab_mark_dirty(&view->table, index);
    }
}

/*
 * A failure of the save side: the reason goes to query-migrate's
 * error-desc, where the operator (and libvirt) look for it, not only to
 * stderr.
 */
static void save_failed(Error *err)
{
    migrate_set_error(migrate_get_current(), err);
    error_report_err(err);
}

/* Announce the current table (under the lock) and start sending it */
static void put_header(QEMUFile *f, SpaprMachineState *spapr)
{
    SpaprHtabState *s = spapr->htab_state;

    qemu_put_be32(f, spapr->htab_shift ?: SPAPR_HTAB_NO_HPT);
    if (s->view) {
        spapr_htab_saver_start(&s->saver, &s->view->table, true);
    }
    s->sent_generation = s->generation;
    s->sent_shift = spapr->htab_shift;
    trace_spapr_htab_header(spapr->htab_shift, s->generation);
}

static int htab_save_setup(QEMUFile *f, void *opaque)
{
    SpaprMachineState *spapr = opaque;

    QEMU_LOCK_GUARD(&htab_state(spapr)->lock);
    put_header(f, spapr);
    return 0;
}

/* A part's chunks from the kernel's table (KVM-HV), or from QEMU's */
static int put_chunks(QEMUFile *f, SpaprMachineState *spapr, int64_t max_ns)
{
    SpaprHtabState *s = spapr->htab_state;
    SpaprHtabSaver before = s->saver;
    int64_t start = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
    int64_t bytes = qemu_file_total_transferred_fast(f);
    bool done;

    if (!s->view) {
        Error *err = NULL;

        if (spapr->htab_fd < 0) {
            spapr->htab_fd = kvmppc_get_htab_fd(false, 0, &err);
            if (spapr->htab_fd < 0) {
                save_failed(err);
                return -EIO;
            }
        }
        return kvmppc_save_htab(f, spapr->htab_fd, KVM_BUFFER_SIZE, max_ns);
    }
    done = spapr_htab_save_chunks(&s->saver, &s->view->table, f, max_ns);
    trace_spapr_htab_save_part(before.first_pass,
                               s->saver.chunks - before.chunks,
                               s->saver.valid_sent - before.valid_sent,
                               s->saver.invalid_sent - before.invalid_sent,
                               qemu_file_total_transferred_fast(f) - bytes,
                               qemu_clock_get_ns(QEMU_CLOCK_REALTIME) - start,
                               done);
    return done;
}

/*
 * One part of the section: a header alone when the table changed since
 * the last one, else its chunks (within the budget unless FINAL).
 */
static int save_part(QEMUFile *f, SpaprMachineState *spapr, bool final)
{
    SpaprHtabState *s = spapr->htab_state;
    int ret;

    QEMU_LOCK_GUARD(&s->lock);
    if (!spapr->htab_shift) {
        qemu_put_be32(f, SPAPR_HTAB_NO_HPT);
        s->sent_generation = s->generation;
        return !final;
    }
    if (s->generation != s->sent_generation) {
        if (!final) {
            put_header(f, spapr);
            return 0;
        }
        /*
         * A reset after the last part: the destination's table has the
         * right size but stale entries.  The new table is all dirty, so
         * a pass that sends dirty entries, invalid ones too, fixes it.
         * A table of another size would need a header of its own.
         */
        if (!s->view || s->view->table.shift != s->sent_shift) {
            Error *err = NULL;

            error_setg(&err, "spapr/htab: the guest replaced its hash page "
                       "table during the switchover; retry the migration");
            save_failed(err);
            return -EAGAIN;
        }
        spapr_htab_saver_start(&s->saver, &s->view->table, false);
    }
    qemu_put_be32(f, 0);
    ret = put_chunks(f, spapr, final ? -1 : PART_BUDGET_NS);
    spapr_htab_put_end_marker(f);
    return final && ret > 0 ? 0 : ret;
}

static int htab_save_iterate(QEMUFile *f, void *opaque)
{
    return save_part(f, opaque, false);
}

static int htab_save_complete(QEMUFile *f, void *opaque)
{
    return save_part(f, opaque, true);
}

static void htab_save_pending(QEMUFile *f, void *opaque, uint64_t threshold,
                              uint64_t *precopy, uint64_t *compatible,
                              uint64_t *postcopy)
{
    SpaprMachineState *spapr = opaque;
    SpaprHtabState *s = spapr->htab_state;

    QEMU_LOCK_GUARD(&s->lock);
    if (s->view) {
        *precopy += spapr_htab_pending(&s->saver, &s->view->table);
    }
}

static void htab_save_cleanup(void *opaque)
{
    /* a cancelled migration must not leave the next one a used fd */
    close_htab_fd(opaque);
}

/* The largest table this machine could give its guest */
static unsigned max_shift(SpaprMachineState *spapr)
{
    unsigned shift = spapr_hpt_shift_for_ramsize(MACHINE(spapr)->maxram_size);

    /* h_resize_hpt_prepare() grants one order more */
    return spapr->resize_hpt == SPAPR_RESIZE_HPT_DISABLED ? shift : shift + 1;
}

static int load_kvm_chunk(void *opaque, QEMUFile *f, uint32_t index,
                          uint16_t n_valid, uint16_t n_invalid, Error **errp)
{
    return kvmppc_load_htab_chunk(f, *(int *)opaque, index, n_valid,
                                  n_invalid, errp);
}

static int load_chunks(QEMUFile *f, SpaprMachineState *spapr, Error **errp)
{
    SpaprHtabState *s = htab_state(spapr);
    uint64_t entries = HTAB_SIZE(spapr) / HASH_PTE_SIZE_64;
    int fd, ret;

    if (!spapr->htab_shift) {
        error_setg(errp, "spapr/htab: entries for a guest without a hash "
                   "page table (no size header came first)");
        return -EINVAL;
    }
    if (s->view) {
        return spapr_htab_load_chunks(f, entries, spapr_htab_apply_to_table,
                                      &s->view->table, errp);
    }
    fd = kvmppc_get_htab_fd(true, 0, errp);
    if (fd < 0) {
        return fd;
    }
    ret = spapr_htab_load_chunks(f, entries, load_kvm_chunk, &fd, errp);
    close(fd);
    return ret;
}

static int load_header(SpaprMachineState *spapr, uint32_t shift,
                       Error **errp)
{
    if (shift == SPAPR_HTAB_NO_HPT) {
        spapr_free_hpt(spapr);
        return 0;
    }
    if (!spapr_htab_check_shift(shift, max_shift(spapr), errp)) {
        return -EINVAL;
    }
    return spapr_reallocate_hpt(spapr, shift, errp);
}

static int htab_load(QEMUFile *f, void *opaque, int version_id)
{
    SpaprMachineState *spapr = opaque;
    Error *err = NULL;
    uint32_t header;
    int ret;

    if (version_id != 1) {
        error_report("spapr/htab: unknown section version %d", version_id);
        return -EINVAL;
    }
    header = qemu_get_be32(f);
    ret = qemu_file_get_error(f);
    if (ret) {
        error_report("spapr/htab: stream ends before the part's header");
        return ret;
    }
    trace_spapr_htab_load_header(header);
    ret = header ? load_header(spapr, header, &err)
                 : load_chunks(f, spapr, &err);
    if (ret < 0) {
        error_report_err(err);
    }
    return ret;
}

static SaveVMHandlers savevm_htab_handlers = {
    .save_setup = htab_save_setup,
    .save_live_iterate = htab_save_iterate,
    .save_live_complete_precopy = htab_save_complete,
    .save_live_pending = htab_save_pending,
    .save_cleanup = htab_save_cleanup,
    .load_state = htab_load,
};

void spapr_htab_register(SpaprMachineState *spapr)
{
    htab_state(spapr);
    register_savevm_live("spapr/htab", VMSTATE_INSTANCE_ID_ANY, 1,
                         &savevm_htab_handlers, spapr);
}

void qmp_x_spapr_htab_dump(const char *filename, Error **errp)
{
    SpaprMachineState *spapr = (SpaprMachineState *)
        object_dynamic_cast(qdev_get_machine(), TYPE_SPAPR_MACHINE);
    HtabView *view;
    FILE *f;

    if (!spapr) {
        error_setg(errp, "The machine is not pseries");
        return;
    }
    view = htab_state(spapr)->view;
    if (spapr->htab_shift && !view) {
        error_setg(errp, "The hash page table is kept by KVM");
        return;
    }
    f = fopen(filename, "wb");
    if (!f) {
        error_setg_file_open(errp, errno, filename);
        return;
    }
    if (view) {
        spapr_htab_dump(&view->table, f);
    } else {
        SpaprHtab none = { 0 };

        spapr_htab_dump(&none, f);
    }
    if (fclose(f)) {
        error_setg_errno(errp, errno, "Could not write '%s'", filename);
    }
}
