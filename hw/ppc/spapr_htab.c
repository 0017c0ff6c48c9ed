/*
 * sPAPR hash page table: dirty tracking, save passes and the loader
 *
 * The pure part of Ferry's HTAB migration (see include/hw/ppc/
 * spapr_htab.h for the stream and the two levels of dirty bits).  It
 * owns nothing of the machine: it works on a SpaprHtab that the machine
 * hands it, so a unit test and a fuzzer drive it over a table in a
 * buffer.
 *
 * Races the save side allows for (it runs in the migration thread while
 * vCPUs write the table):
 * - A writer sets the entry's bit, then the block's; the save side takes
 *   the block's bits (a full barrier), then the entries' bits, with
 *   atomic fetch-and: a write it misses leaves both set for a later pass.
 * - An entry is classified (valid or not) by a plain read, then taken.
 *   If it changed in between, a valid-classified entry is sent as it is
 *   (an invalid entry sent as "valid" is still invalid on the
 *   destination); an invalid-classified entry that became valid is marked
 *   dirty again, since clearing it on the destination would lose it.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/atomic.h"
#include "qemu/bitmap.h"
#include "qemu/bswap.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "migration/qemu-file.h"
#include "hw/ppc/spapr_htab.h"

/* Blocks whose bits one span takes: a span's work stays well under 1 ms */
#define SPAN_BLOCKS     512

static uint64_t *hpte_words(const SpaprHtab *t, uint64_t index)
{
    return (uint64_t *)(t->hptes + index * SPAPR_HTAB_HPTE_SIZE);
}

static uint64_t nr_blocks(const SpaprHtab *t)
{
    return DIV_ROUND_UP(spapr_htab_entries(t), SPAPR_HTAB_BLOCK);
}

static uint64_t peek_v(const SpaprHtab *t, uint64_t index)
{
    return be64_to_cpu(qatomic_read(hpte_words(t, index)));
}

/* Clear entry INDEX's dirty bit; its first doubleword before that */
static uint64_t take_v(const SpaprHtab *t, uint64_t index)
{
    uint64_t *v = hpte_words(t, index);

    return be64_to_cpu(qatomic_fetch_and(v, ~cpu_to_be64(SPAPR_HTAB_V_DIRTY)));
}

static void mark_all_dirty(SpaprHtab *t)
{
    uint64_t i;

    /* a new table: nobody else writes it yet */
    for (i = 0; i < spapr_htab_entries(t); i++) {
        *hpte_words(t, i) |= cpu_to_be64(SPAPR_HTAB_V_DIRTY);
    }
    smp_wmb();      /* entries before blocks, as mark_block() */
    bitmap_set_atomic(t->dirty_blocks, 0, nr_blocks(t));
}

void spapr_htab_init(SpaprHtab *t, uint8_t *hptes, unsigned shift)
{
    t->hptes = hptes;
    t->shift = shift;
    t->dirty_blocks = bitmap_new(nr_blocks(t));
    mark_all_dirty(t);
}

void spapr_htab_destroy(SpaprHtab *t)
{
    g_free(t->dirty_blocks);
    memset(t, 0, sizeof(*t));
}

static void mark_block(SpaprHtab *t, uint64_t index)
{
    /* the entry's change is visible before the block says so */
    smp_wmb();
    set_bit_atomic(index / SPAPR_HTAB_BLOCK, t->dirty_blocks);
}

void spapr_htab_store(SpaprHtab *t, uint64_t index, uint64_t pte0,
                      uint64_t pte1)
{
    uint64_t *w = hpte_words(t, index);

    pte0 |= SPAPR_HTAB_V_DIRTY;
    /*
     * The MMU searches without a lock: a valid first doubleword must
     * never be seen with a stale second one.
     */
    if (pte0 & SPAPR_HTAB_V_VALID) {
        qatomic_set(&w[1], cpu_to_be64(pte1));
        smp_wmb();  /* pairs with ppc_hash64_pteg_search()'s reads */
        qatomic_set(&w[0], cpu_to_be64(pte0));
    } else {
        qatomic_set(&w[0], cpu_to_be64(pte0));
        smp_wmb();  /* pairs with ppc_hash64_pteg_search()'s reads */
        qatomic_set(&w[1], cpu_to_be64(pte1));
    }
    mark_block(t, index);
}

void spapr_htab_mark_dirty(SpaprHtab *t, uint64_t index)
{
    qatomic_or(hpte_words(t, index), cpu_to_be64(SPAPR_HTAB_V_DIRTY));
    mark_block(t, index);
}

void spapr_htab_saver_start(SpaprHtabSaver *s, SpaprHtab *t,
                            bool fresh_destination)
{
    memset(s, 0, sizeof(*s));
    s->first_pass = fresh_destination;
    if (fresh_destination) {
        bitmap_set_atomic(t->dirty_blocks, 0, nr_blocks(t));
    }
}

/*
 * Take the bits of the next run of dirty blocks after S's position;
 * false when no block is dirty.  The first pass ends when it reaches
 * the end of the table.
 */
static bool next_span(SpaprHtabSaver *s, SpaprHtab *t)
{
    uint64_t n = nr_blocks(t);
    uint64_t block = find_next_bit(t->dirty_blocks, n,
                                   s->next / SPAPR_HTAB_BLOCK);
    uint64_t end;

    if (block >= n) {
        s->first_pass = false;
        block = find_first_bit(t->dirty_blocks, n);
        if (block >= n) {
            s->next = s->span_end = 0;
            return false;
        }
    }
    end = MIN(find_next_zero_bit(t->dirty_blocks, n, block),
              block + SPAN_BLOCKS);
    bitmap_test_and_clear_atomic(t->dirty_blocks, block, end - block);
    s->next = block * SPAPR_HTAB_BLOCK;
    s->span_end = MIN(end * SPAPR_HTAB_BLOCK, spapr_htab_entries(t));
    return true;
}

/* Does entry V belong to the valid part of a chunk? */
static bool sends_valid(const SpaprHtabSaver *s, uint64_t v)
{
    return (v & SPAPR_HTAB_V_VALID) &&
           (s->first_pass || (v & SPAPR_HTAB_V_DIRTY));
}

/* ... or to the invalid part (the destination clears it)? */
static bool sends_invalid(const SpaprHtabSaver *s, uint64_t v)
{
    return !s->first_pass && !(v & SPAPR_HTAB_V_VALID) &&
           (v & SPAPR_HTAB_V_DIRTY);
}

/*
 * Skip the entries of the span that are not sent.  The first pass takes
 * the bits of the invalid ones: the destination's table starts cleared.
 */
static void skip_unsent(SpaprHtabSaver *s, SpaprHtab *t)
{
    for (; s->next < s->span_end; s->next++) {
        uint64_t v = peek_v(t, s->next);

        if (sends_valid(s, v) || sends_invalid(s, v)) {
            return;
        }
        if (s->first_pass && (v & SPAPR_HTAB_V_DIRTY) &&
            (take_v(t, s->next) & SPAPR_HTAB_V_VALID)) {
            spapr_htab_mark_dirty(t, s->next);
        }
    }
}

static uint64_t run_length(const SpaprHtabSaver *s, const SpaprHtab *t,
                           uint64_t from,
                           bool (*sends)(const SpaprHtabSaver *, uint64_t))
{
    uint64_t i = from;

    while (i < s->span_end && i - from < SPAPR_HTAB_MAX_RUN &&
           sends(s, peek_v(t, i))) {
        i++;
    }
    return i - from;
}

/* Write one chunk at S's position (after skip_unsent()) */
static void put_chunk(SpaprHtabSaver *s, SpaprHtab *t, QEMUFile *f)
{
    uint64_t start = s->next, i;
    uint64_t n_valid = run_length(s, t, start, sends_valid);
    uint64_t n_invalid = run_length(s, t, start + n_valid, sends_invalid);

    if (!n_valid && !n_invalid) {
        return;     /* changed since skip_unsent() looked: look again */
    }
    qemu_put_be32(f, start);
    qemu_put_be16(f, n_valid);
    qemu_put_be16(f, n_invalid);
    for (i = start; i < start + n_valid; i++) {
        uint64_t v = take_v(t, i) & ~SPAPR_HTAB_V_DIRTY;

        qemu_put_be64(f, v);
        qemu_put_buffer(f, (uint8_t *)&hpte_words(t, i)[1], 8);
    }
    for (; i < start + n_valid + n_invalid; i++) {
        if (take_v(t, i) & SPAPR_HTAB_V_VALID) {
            spapr_htab_mark_dirty(t, i);
        }
    }
    s->next = i;
    s->chunks++;
    s->valid_sent += n_valid;
    s->invalid_sent += n_invalid;
}

bool spapr_htab_save_chunks(SpaprHtabSaver *s, SpaprHtab *t, QEMUFile *f,
                            int64_t max_ns)
{
    int64_t start = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);

    for (;;) {
        if (s->next >= s->span_end && !next_span(s, t)) {
            return true;
        }
        skip_unsent(s, t);
        if (s->next < s->span_end) {
            put_chunk(s, t, f);
        }
        if (max_ns >= 0 &&
            (qemu_file_rate_limit(f) ||
             qemu_clock_get_ns(QEMU_CLOCK_REALTIME) - start > max_ns)) {
            return false;
        }
    }
}

uint64_t spapr_htab_pending(const SpaprHtabSaver *s, const SpaprHtab *t)
{
    /*
     * What the first pass has not reached yet may all be valid: count it
     * whole, so that the switchover waits for the pass (which skips
     * invalid entries quickly) instead of sending it with the guest
     * stopped.  After it, a dirty block holds a few changed PTEGs of 8
     * entries.
     */
    if (s->first_pass) {
        return (spapr_htab_entries(t) - s->next) * SPAPR_HTAB_HPTE_SIZE;
    }
    return bitmap_count_one(t->dirty_blocks, nr_blocks(t)) *
           8 * SPAPR_HTAB_HPTE_SIZE;
}

void spapr_htab_put_end_marker(QEMUFile *f)
{
    qemu_put_be32(f, 0);
    qemu_put_be16(f, 0);
    qemu_put_be16(f, 0);
}

bool spapr_htab_check_shift(uint32_t shift, unsigned max_shift, Error **errp)
{
    if (shift < SPAPR_HTAB_MIN_SHIFT || shift > max_shift) {
        error_setg(errp, "spapr/htab: the stream's hash page table has "
                   "shift %" PRIu32 ", this machine allows %d..%u",
                   shift, SPAPR_HTAB_MIN_SHIFT, max_shift);
        return false;
    }
    return true;
}

int spapr_htab_load_chunks(QEMUFile *f, uint64_t n_entries,
                           SpaprHtabChunkFn apply, void *opaque,
                           Error **errp)
{
    for (;;) {
        uint32_t index = qemu_get_be32(f);
        uint16_t n_valid = qemu_get_be16(f);
        uint16_t n_invalid = qemu_get_be16(f);
        int ret = qemu_file_get_error(f);

        if (ret) {
            error_setg_errno(errp, -ret, "spapr/htab: stream ends before "
                             "the end marker");
            return ret;
        }
        if (!index && !n_valid && !n_invalid) {
            return 0;
        }
        if ((uint64_t)index + n_valid + n_invalid > n_entries) {
            error_setg(errp, "spapr/htab: chunk at %" PRIu32 " of %u+%u "
                       "entries is outside the table of %" PRIu64 " entries",
                       index, n_valid, n_invalid, n_entries);
            return -EINVAL;
        }
        ret = apply(opaque, f, index, n_valid, n_invalid, errp);
        if (ret < 0) {
            return ret;
        }
    }
}

int spapr_htab_apply_to_table(void *opaque, QEMUFile *f, uint32_t index,
                              uint16_t n_valid, uint16_t n_invalid,
                              Error **errp)
{
    SpaprHtab *t = opaque;
    size_t len = (size_t)n_valid * SPAPR_HTAB_HPTE_SIZE;
    g_autofree uint8_t *buf = g_malloc(len ?: 1);

    /* nothing of a cut chunk reaches the table */
    if (qemu_get_buffer(f, buf, len) != len || qemu_file_get_error(f)) {
        error_setg(errp, "spapr/htab: stream ends inside the chunk at %"
                   PRIu32 " (%u valid entries)", index, n_valid);
        return -EIO;
    }
    memcpy(hpte_words(t, index), buf, len);
    memset(hpte_words(t, index + n_valid), 0,
           (size_t)n_invalid * SPAPR_HTAB_HPTE_SIZE);
    return 0;
}

void spapr_htab_dump(const SpaprHtab *t, FILE *f)
{
    uint32_t be_shift = cpu_to_be32(t->hptes ? t->shift : 0);
    uint64_t i;

    fwrite("FERRYHPT", 1, 8, f);
    fwrite(&be_shift, 1, 4, f);
    for (i = 0; t->hptes && i < spapr_htab_entries(t); i++) {
        uint64_t *w = hpte_words(t, i);
        uint32_t be_index = cpu_to_be32(i);
        uint64_t v = be64_to_cpu(w[0]) & ~SPAPR_HTAB_V_DIRTY;
        uint64_t be_v = cpu_to_be64(v);

        if (v & SPAPR_HTAB_V_VALID) {
            fwrite(&be_index, 1, 4, f);
            fwrite(&be_v, 1, 8, f);
            fwrite(&w[1], 1, 8, f);
        }
    }
}
