/*
 * sPAPR hash page table (HTAB): dirty tracking and live migration
 *
 * A pseries guest that uses the hash MMU has a hash page table of
 * 2^shift bytes outside guest RAM: 16-byte big-endian entries (HPTEs)
 * that only the hypervisor writes, on the guest's hcalls (H_ENTER,
 * H_REMOVE, H_BULK_REMOVE, H_PROTECT), and whose R/C bytes the MMU sets.
 * Ferry migrates it as the live section "spapr/htab", version 1, in the
 * base's stream format:
 *
 *   setup:      be32 htab_shift, or be32 -1 when the guest has no HPT
 *               (radix)
 *   each part:  be32 0, then chunks { be32 index, be16 n_valid,
 *               be16 n_invalid, n_valid * 16 bytes }, then { 0, 0, 0 }.
 *               The destination copies the n_valid entries to
 *               index..index+n_valid-1 and clears the n_invalid entries
 *               after them.
 *               A part that is a non-zero be32 (other than -1) instead
 *               announces a new table of that shift: the destination
 *               reallocates a cleared one.
 *
 * Dirty tracking has two levels: a hypervisor-reserved bit of each
 * entry's first doubleword (SPAPR_HTAB_V_DIRTY, the base's bit), and a
 * summary bitmap with one bit per SPAPR_HTAB_BLOCK entries, so that a
 * pass visits only blocks that changed rather than the whole table.
 * Every writer goes through spapr_htab_store() or spapr_htab_mark_dirty();
 * the save side takes bits with atomic operations, so writers on vCPU
 * threads and the migration thread may run at once.
 *
 * This header is the whole interface: the pure core (spapr_htab.c: the
 * table, the passes, the loader's validation) and the machine's side
 * (spapr_htab_machine.c: the table's owner hooks, the savevm handlers,
 * KVM's HTAB fd, x-spapr-htab-dump).
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_PPC_SPAPR_HTAB_H
#define HW_PPC_SPAPR_HTAB_H

#include "migration/qemu-file-types.h"

#define SPAPR_HTAB_HPTE_SIZE    16
#define SPAPR_HTAB_V_VALID      0x0000000000000001ULL
#define SPAPR_HTAB_V_DIRTY      0x0000000000000040ULL
/* Architected table sizes (PAPR: 256 KiB to 64 TiB) */
#define SPAPR_HTAB_MIN_SHIFT    18
#define SPAPR_HTAB_MAX_SHIFT    46
/* The stream's setup header of a guest without an HPT */
#define SPAPR_HTAB_NO_HPT       0xffffffffU
/* Entries per bit of the summary bitmap */
#define SPAPR_HTAB_BLOCK        128
/* The stream's counters are 16 bits: longer runs are split */
#define SPAPR_HTAB_MAX_RUN      UINT16_MAX

/* A hash page table and its summary dirty bitmap */
typedef struct SpaprHtab {
    uint8_t *hptes;             /* 1 << shift bytes, big-endian entries */
    unsigned shift;
    unsigned long *dirty_blocks;
} SpaprHtab;

/* The save side's position in a table */
typedef struct SpaprHtabSaver {
    bool first_pass;    /* sending every valid entry, not only dirty ones */
    uint64_t next;      /* next entry of the current span */
    uint64_t span_end;  /* end of the span of blocks whose bits were taken */
    /* totals since spapr_htab_saver_start(), for traces and tests */
    uint64_t chunks, valid_sent, invalid_sent;
} SpaprHtabSaver;

/* Called by the chunk loop for each chunk; reads n_valid entries from F */
typedef int (*SpaprHtabChunkFn)(void *opaque, QEMUFile *f, uint32_t index,
                                uint16_t n_valid, uint16_t n_invalid,
                                Error **errp);

/* --- the core (spapr_htab.c) --- */

static inline uint64_t spapr_htab_entries(const SpaprHtab *t)
{
    return (1ULL << t->shift) / SPAPR_HTAB_HPTE_SIZE;
}

/*
 * Make T a table of 1 << SHIFT bytes at HPTES (cleared by the caller),
 * with every entry and block dirty.
 */
void spapr_htab_init(SpaprHtab *t, uint8_t *hptes, unsigned shift);
void spapr_htab_destroy(SpaprHtab *t);

/*
 * Write entry INDEX (PTE0/PTE1 in host order) in the order the MMU's
 * lock-free reader needs, and mark it dirty.
 */
void spapr_htab_store(SpaprHtab *t, uint64_t index, uint64_t pte0,
                      uint64_t pte1);
/* Mark entry INDEX dirty after a change made in place (the R/C bytes) */
void spapr_htab_mark_dirty(SpaprHtab *t, uint64_t index);

/*
 * Start sending T: with FRESH_DESTINATION (its table was just announced,
 * so it is clear) a first pass sends every valid entry; without, only
 * dirty entries are sent, invalid ones included.
 */
void spapr_htab_saver_start(SpaprHtabSaver *s, SpaprHtab *t,
                            bool fresh_destination);
/*
 * Write T's chunks (not the part's header or end marker) to F: the rest
 * of the first pass, then dirty blocks, until nothing is dirty, MAX_NS
 * (-1: no limit) has passed, or F's rate limit is reached (unless
 * MAX_NS is -1).  Returns true when nothing is left to send.
 */
bool spapr_htab_save_chunks(SpaprHtabSaver *s, SpaprHtab *t, QEMUFile *f,
                            int64_t max_ns);
/* An estimate of the bytes a full pass would send now */
uint64_t spapr_htab_pending(const SpaprHtabSaver *s, const SpaprHtab *t);
void spapr_htab_put_end_marker(QEMUFile *f);

/*
 * Check a setup header's shift against what the destination's machine
 * allows: SPAPR_HTAB_MIN_SHIFT..MAX_SHIFT.
 */
bool spapr_htab_check_shift(uint32_t shift, unsigned max_shift, Error **errp);
/*
 * Read a part's chunks up to the end marker, checking each against a
 * table of N_ENTRIES entries, and hand them to APPLY.  Fails, without
 * calling APPLY for it, on a chunk out of range or a truncated stream.
 */
int spapr_htab_load_chunks(QEMUFile *f, uint64_t n_entries,
                           SpaprHtabChunkFn apply, void *opaque,
                           Error **errp);
/* The SpaprHtabChunkFn of a table in memory (OPAQUE is the SpaprHtab) */
int spapr_htab_apply_to_table(void *opaque, QEMUFile *f, uint32_t index,
                              uint16_t n_valid, uint16_t n_invalid,
                              Error **errp);
/*
 * Write T's valid entries to F in x-spapr-htab-dump's format: "FERRYHPT",
 * be32 shift, then per valid entry be32 index + the entry without its
 * dirty bit.
 */
void spapr_htab_dump(const SpaprHtab *t, FILE *f);

/* --- the machine's side (spapr_htab_machine.c) --- */

typedef struct SpaprMachineState SpaprMachineState;

/* Register the "spapr/htab" live section */
void spapr_htab_register(SpaprMachineState *spapr);
/*
 * Give SPAPR the table HPTES (NULL for none, or a table kept by KVM)
 * of SHIFT (0 for none), freeing the old one: every change of table
 * goes through here, so a migration in progress sees it.
 */
void spapr_htab_replace(SpaprMachineState *spapr, void *hptes,
                        unsigned shift);
void spapr_htab_store_hpte(SpaprMachineState *spapr, uint64_t index,
                           uint64_t pte0, uint64_t pte1);
void spapr_htab_rc_updated(SpaprMachineState *spapr, uint64_t index);

#endif
