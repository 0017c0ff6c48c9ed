/*
 * Unit tests of Ferry's sPAPR hash page table migration core
 *
 * Tables in plain buffers (with a guard zone after them that must never
 * change), saved through real QEMUFiles into parts that the loader
 * applies to a second table: the first pass, dirty runs, the 16-bit run
 * split, the time budget and the rate limit, a completion that finishes
 * a first pass, writers racing the save side, and hostile streams.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/module.h"
#include "qemu/thread.h"
#include "qapi/error.h"
#include "io/channel-buffer.h"
#include "migration/qemu-file-types.h"
#include "../migration/qemu-file.h"
#include "hw/ppc/spapr_htab.h"
#include "vfio-fake-device.h"

#define GUARD       4096
#define GUARD_BYTE  0xa5

typedef struct Chunk {
    uint32_t index;
    uint16_t n_valid, n_invalid;
    size_t offset;          /* of its header in the part */
} Chunk;

static void table_new(SpaprHtab *t, unsigned shift)
{
    uint8_t *mem = g_malloc0((1ULL << shift) + GUARD);

    memset(mem + (1ULL << shift), GUARD_BYTE, GUARD);
    spapr_htab_init(t, mem, shift);
}

static void table_free(SpaprHtab *t)
{
    size_t size = 1ULL << t->shift;
    int i;

    for (i = 0; i < GUARD; i++) {
        g_assert_cmphex(t->hptes[size + i], ==, GUARD_BYTE);
    }
    g_free(t->hptes);
    spapr_htab_destroy(t);
}

/* A distinct valid entry for TAG at INDEX, or an invalid one */
static void set_entry(SpaprHtab *t, uint64_t index, bool valid, uint64_t tag)
{
    spapr_htab_store(t, index, valid ? (tag << 12) | SPAPR_HTAB_V_VALID : 0,
                     valid ? tag * 0x10001 : 0);
}

static GByteArray *dump(const SpaprHtab *t)
{
    char *buf;
    size_t len;
    FILE *f = open_memstream(&buf, &len);
    GByteArray *out;

    spapr_htab_dump(t, f);
    fclose(f);
    out = g_byte_array_new_take((guint8 *)buf, len);
    return out;
}

static void assert_same_valid_entries(const SpaprHtab *a, const SpaprHtab *b)
{
    g_autoptr(GByteArray) da = dump(a);
    g_autoptr(GByteArray) db = dump(b);

    g_assert_cmpuint(da->len, ==, db->len);
    g_assert(!memcmp(da->data, db->data, da->len));
}

/* One part's chunks and end marker, as the machine's iterate writes them */
static GByteArray *save_part(SpaprHtabSaver *s, SpaprHtab *t, int64_t max_ns,
                             int64_t rate_limit, bool *done)
{
    QIOChannelBuffer *bioc = qio_channel_buffer_new(4096);
    QEMUFile *f = qemu_file_new_output(QIO_CHANNEL(bioc));
    GByteArray *bytes = g_byte_array_new();
    bool finished;

    qemu_file_set_rate_limit(f, rate_limit);
    finished = spapr_htab_save_chunks(s, t, f, max_ns);
    spapr_htab_put_end_marker(f);
    qemu_fflush(f);
    g_assert_cmpint(qemu_file_get_error(f), ==, 0);
    g_byte_array_append(bytes, bioc->data, bioc->usage);
    qemu_fclose(f);
    object_unref(OBJECT(bioc));
    if (done) {
        *done = finished;
    }
    return bytes;
}

/* The chunks of a well-formed part (without its end marker) */
static GArray *chunks_of(const GByteArray *part)
{
    GArray *chunks = g_array_new(false, false, sizeof(Chunk));
    size_t off = 0;

    for (;;) {
        Chunk c = {
            .index = ldl_be_p(part->data + off),
            .n_valid = lduw_be_p(part->data + off + 4),
            .n_invalid = lduw_be_p(part->data + off + 6),
            .offset = off,
        };

        g_assert_cmpuint(off + 8, <=, part->len);
        if (!c.index && !c.n_valid && !c.n_invalid) {
            g_assert_cmpuint(off + 8, ==, part->len);
            return chunks;
        }
        g_array_append_val(chunks, c);
        off += 8 + c.n_valid * SPAPR_HTAB_HPTE_SIZE;
    }
}

static int load_part(SpaprHtab *t, const uint8_t *data, size_t len,
                     Error **errp)
{
    QEMUFile *f = fake_input_file(data, len);
    int ret = spapr_htab_load_chunks(f, spapr_htab_entries(t),
                                     spapr_htab_apply_to_table, t, errp);

    qemu_fclose(f);
    return ret;
}

static void load_ok(SpaprHtab *t, const GByteArray *part)
{
    g_assert_cmpint(load_part(t, part->data, part->len, &error_abort), ==, 0);
}

/* Save parts until the saver says it is done; load each into DST */
static int migrate_parts(SpaprHtabSaver *s, SpaprHtab *src, SpaprHtab *dst,
                         int64_t max_ns)
{
    bool done = false;
    int parts = 0;

    while (!done) {
        g_autoptr(GByteArray) part = save_part(s, src, max_ns, 0, &done);

        load_ok(dst, part);
        parts++;
    }
    return parts;
}

static void test_first_pass_sends_valid_entries(void)
{
    SpaprHtab src, dst;
    SpaprHtabSaver s;
    g_autoptr(GByteArray) part = NULL;
    g_autoptr(GArray) chunks = NULL;
    uint64_t i, valid = 0;
    bool done;

    table_new(&src, 18);
    table_new(&dst, 18);
    for (i = 0; i < spapr_htab_entries(&src); i += 7) {
        set_entry(&src, i, i % 3, i);
        valid += !!(i % 3);
    }
    spapr_htab_saver_start(&s, &src, true);
    part = save_part(&s, &src, -1, 0, &done);
    g_assert_true(done);
    g_assert_false(s.first_pass);
    chunks = chunks_of(part);
    for (i = 0; i < chunks->len; i++) {
        g_assert_cmpuint(g_array_index(chunks, Chunk, i).n_invalid, ==, 0);
    }
    g_assert_cmpuint(s.valid_sent, ==, valid);
    load_ok(&dst, part);
    assert_same_valid_entries(&src, &dst);
    table_free(&src);
    table_free(&dst);
}

static void test_later_pass_sends_dirty_runs(void)
{
    SpaprHtab src, dst;
    SpaprHtabSaver s;
    g_autoptr(GByteArray) part = NULL, idle = NULL;
    g_autoptr(GArray) chunks = NULL;
    uint64_t i, valid = 0, invalid = 0;
    bool done;

    table_new(&src, 18);
    table_new(&dst, 18);
    for (i = 0; i < 4000; i += 2) {
        set_entry(&src, i, true, i);
    }
    spapr_htab_saver_start(&s, &src, true);
    migrate_parts(&s, &src, &dst, -1);

    set_entry(&src, 9001, true, 1);       /* new */
    set_entry(&src, 9002, true, 2);
    set_entry(&src, 10, true, 77);        /* changed */
    set_entry(&src, 20, false, 0);        /* removed */
    set_entry(&src, 22, false, 0);
    src.hptes[30 * 16 + 15] |= 0x80;      /* the MMU's C byte */
    spapr_htab_mark_dirty(&src, 30);
    part = save_part(&s, &src, -1, 0, &done);
    chunks = chunks_of(part);
    for (i = 0; i < chunks->len; i++) {
        Chunk *c = &g_array_index(chunks, Chunk, i);

        valid += c->n_valid;
        invalid += c->n_invalid;
    }
    g_assert_cmpuint(valid, ==, 4);
    g_assert_cmpuint(invalid, ==, 2);
    load_ok(&dst, part);
    assert_same_valid_entries(&src, &dst);

    /* nothing changed: the part is its end marker alone, and done */
    idle = save_part(&s, &src, -1, 0, &done);
    g_assert_true(done);
    g_assert_cmpuint(idle->len, ==, 8);
    g_assert_cmpuint(spapr_htab_pending(&s, &src), ==, 0);
    set_entry(&src, 7, true, 7);
    g_assert_cmpuint(spapr_htab_pending(&s, &src), ==, 8 * 16);
    table_free(&src);
    table_free(&dst);
}

static void assert_runs_split(const GByteArray *part, uint64_t want_valid,
                              uint64_t want_invalid)
{
    g_autoptr(GArray) chunks = chunks_of(part);
    uint64_t valid = 0, invalid = 0;
    int i;

    g_assert_cmpuint(chunks->len, >=, 2);
    for (i = 0; i < chunks->len; i++) {
        Chunk *c = &g_array_index(chunks, Chunk, i);

        valid += c->n_valid;
        invalid += c->n_invalid;
    }
    g_assert_cmpuint(valid, ==, want_valid);
    g_assert_cmpuint(invalid, ==, want_invalid);
}

/* Runs of more than 65535 entries, valid then invalid, arrive whole */
static void test_long_runs_split(void)
{
    SpaprHtab src, dst;
    SpaprHtabSaver s;
    g_autoptr(GByteArray) first = NULL, later = NULL;
    uint64_t i, n = 70000;

    table_new(&src, 21);
    table_new(&dst, 21);
    for (i = 1000; i < 1000 + n; i++) {
        set_entry(&src, i, true, i);
    }
    spapr_htab_saver_start(&s, &src, true);
    first = save_part(&s, &src, -1, 0, NULL);
    assert_runs_split(first, n, 0);
    load_ok(&dst, first);
    assert_same_valid_entries(&src, &dst);

    for (i = 1000; i < 1000 + n; i++) {
        set_entry(&src, i, false, 0);
    }
    later = save_part(&s, &src, -1, 0, NULL);
    assert_runs_split(later, 0, n);
    load_ok(&dst, later);
    assert_same_valid_entries(&src, &dst);
    table_free(&src);
    table_free(&dst);
}

static void fill_table(SpaprHtab *t)
{
    uint64_t i;

    for (i = 0; i < spapr_htab_entries(t); i++) {
        set_entry(t, i, true, i);
    }
}

/* A zero budget stops after each chunk; the parts still add up */
static void test_time_budget(void)
{
    SpaprHtab src, dst;
    SpaprHtabSaver s;
    int parts;

    table_new(&src, 23);
    table_new(&dst, 23);
    fill_table(&src);
    spapr_htab_saver_start(&s, &src, true);
    parts = migrate_parts(&s, &src, &dst, 0);
    /* 2^19 entries in chunks of at most 65535 */
    g_assert_cmpint(parts, >=, 9);
    g_assert_cmpuint(s.chunks, ==, parts - 1);
    assert_same_valid_entries(&src, &dst);
    table_free(&src);
    table_free(&dst);
}

/* A part ends with the first chunk that reaches the rate limit */
static void test_rate_limit(void)
{
    SpaprHtab src;
    SpaprHtabSaver s;
    int64_t limit = 64 * 1024;
    bool done = false;
    int parts = 0;

    table_new(&src, 20);
    for (uint64_t i = 0; i < spapr_htab_entries(&src); i += 2) {
        set_entry(&src, i, true, i);       /* one entry a chunk */
    }
    spapr_htab_saver_start(&s, &src, true);
    while (!done) {
        g_autoptr(GByteArray) part = save_part(&s, &src, INT64_MAX, limit,
                                               &done);
        g_autoptr(GArray) chunks = chunks_of(part);
        Chunk *last = &g_array_index(chunks, Chunk, chunks->len - 1);

        g_assert_cmpuint(last->offset, <=, limit);
        parts++;
    }
    g_assert_cmpint(parts, >=, (spapr_htab_entries(&src) / 2) * 24 / limit);
    table_free(&src);
}

/* The completion (no budget) finishes a first pass, then the dirty rest */
static void test_completion_finishes_first_pass(void)
{
    SpaprHtab src, dst;
    SpaprHtabSaver s;
    g_autoptr(GByteArray) part = NULL, rest = NULL;
    bool done;

    table_new(&src, 22);
    table_new(&dst, 22);
    fill_table(&src);
    spapr_htab_saver_start(&s, &src, true);
    g_assert_cmpuint(spapr_htab_pending(&s, &src), ==, 1 << 22);
    part = save_part(&s, &src, 0, 0, &done);
    g_assert_false(done);
    g_assert_true(s.first_pass);
    /* the rest of the first pass counts whole */
    g_assert_cmpuint(spapr_htab_pending(&s, &src), ==,
                     (spapr_htab_entries(&src) - s.next) * 16);
    load_ok(&dst, part);
    set_entry(&src, 5, false, 0);       /* behind the first pass */
    set_entry(&src, spapr_htab_entries(&src) - 1, true, 99);
    rest = save_part(&s, &src, -1, 0, &done);
    g_assert_true(done);
    load_ok(&dst, rest);
    assert_same_valid_entries(&src, &dst);
    table_free(&src);
    table_free(&dst);
}

typedef struct Writer {
    SpaprHtab *t;
    bool stop;
    uint64_t writes;
} Writer;

static void *writer_thread(void *opaque)
{
    Writer *w = opaque;
    GRand *rand = g_rand_new_with_seed(17);

    while (!qatomic_read(&w->stop)) {
        uint64_t i = g_rand_int_range(rand, 0, spapr_htab_entries(w->t));

        set_entry(w->t, i, g_rand_boolean(rand), g_rand_int(rand));
        qatomic_inc(&w->writes);
    }
    g_rand_free(rand);
    return NULL;
}

/* Entries a vCPU writes while the passes run all reach the destination */
static void test_concurrent_writers(void)
{
    SpaprHtab src, dst;
    SpaprHtabSaver s;
    Writer w = { .t = &src };
    QemuThread thread;
    int i;

    table_new(&src, 20);
    table_new(&dst, 20);
    spapr_htab_saver_start(&s, &src, true);
    qemu_thread_create(&thread, "writer", writer_thread, &w,
                       QEMU_THREAD_JOINABLE);
    for (i = 0; i < 200 || !qatomic_read(&w.writes); i++) {
        g_autoptr(GByteArray) part = save_part(&s, &src, 100 * 1000, 0, NULL);

        load_ok(&dst, part);
    }
    qatomic_set(&w.stop, true);
    qemu_thread_join(&thread);
    migrate_parts(&s, &src, &dst, -1);
    g_assert_cmpuint(w.writes, >, 0);
    assert_same_valid_entries(&src, &dst);
    table_free(&src);
    table_free(&dst);
}

static void test_shift_checked(void)
{
    Error *err = NULL;

    g_assert_true(spapr_htab_check_shift(18, 25, &error_abort));
    g_assert_true(spapr_htab_check_shift(25, 25, &error_abort));
    g_assert_false(spapr_htab_check_shift(17, 25, &err));
    error_free_or_abort(&err);
    g_assert_false(spapr_htab_check_shift(26, 25, &err));
    g_assert_nonnull(strstr(error_get_pretty(err), "shift 26"));
    error_free_or_abort(&err);
    g_assert_false(spapr_htab_check_shift(0xffffff00, 46, &err));
    error_free_or_abort(&err);
}

/* A part of one chunk header (and what follows it) */
static GByteArray *hostile(uint32_t index, uint16_t n_valid,
                           uint16_t n_invalid, size_t data_entries,
                           bool end_marker)
{
    GByteArray *b = g_byte_array_new();
    uint8_t hdr[8], entry[16];
    size_t i;

    stl_be_p(hdr, index);
    stw_be_p(hdr + 4, n_valid);
    stw_be_p(hdr + 6, n_invalid);
    g_byte_array_append(b, hdr, 8);
    for (i = 0; i < data_entries; i++) {
        stq_be_p(entry, (i << 12) | SPAPR_HTAB_V_VALID);
        stq_be_p(entry + 8, i);
        g_byte_array_append(b, entry, 16);
    }
    if (end_marker) {
        memset(hdr, 0, 8);
        g_byte_array_append(b, hdr, 8);
    }
    return b;
}

static void assert_load_fails(const GByteArray *b, const char *why)
{
    SpaprHtab t;
    g_autoptr(GByteArray) before = NULL, after = NULL;
    Error *err = NULL;

    table_new(&t, 18);
    set_entry(&t, 100, true, 5);
    before = dump(&t);
    g_assert_cmpint(load_part(&t, b->data, b->len, &err), <, 0);
    g_assert_nonnull(strstr(error_get_pretty(err), why));
    error_free(err);
    after = dump(&t);
    g_assert_cmpuint(before->len, ==, after->len);
    g_assert(!memcmp(before->data, after->data, before->len));
    table_free(&t);     /* checks the guard */
}

static void test_hostile_streams(void)
{
    uint32_t entries = (1 << 18) / 16;
    g_autoptr(GByteArray) past_end = hostile(entries - 1, 2, 0, 2, true);
    g_autoptr(GByteArray) clears_past = hostile(entries - 10, 0, 11, 0, true);
    g_autoptr(GByteArray) wraps = hostile(0xffffffffU, 1, 0, 1, true);
    g_autoptr(GByteArray) wraps16 = hostile(0xffff0001U, 0xffff, 0xffff, 0,
                                            true);
    g_autoptr(GByteArray) cut = hostile(0, 4, 0, 2, false);
    g_autoptr(GByteArray) no_end = hostile(100, 0, 1, 0, false);
    g_autoptr(GByteArray) header_cut = hostile(0, 1, 0, 0, false);

    assert_load_fails(past_end, "outside the table");
    assert_load_fails(clears_past, "outside the table");
    assert_load_fails(wraps, "outside the table");
    assert_load_fails(wraps16, "outside the table");
    assert_load_fails(cut, "ends inside the chunk");
    g_byte_array_set_size(header_cut, 5);
    assert_load_fails(header_cut, "before the end marker");
    {
        SpaprHtab t;
        Error *err = NULL;

        /* the whole chunk before the cut applies; the error still comes */
        table_new(&t, 18);
        set_entry(&t, 100, true, 5);
        g_assert_cmpint(load_part(&t, no_end->data, no_end->len, &err), <, 0);
        g_assert_nonnull(strstr(error_get_pretty(err), "end marker"));
        error_free(err);
        g_assert_cmphex(ldq_be_p(t.hptes + 100 * 16), ==, 0);
        table_free(&t);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    module_call_init(MODULE_INIT_QOM);
    g_test_add_func("/spapr-htab/first-pass-sends-valid-entries",
                    test_first_pass_sends_valid_entries);
    g_test_add_func("/spapr-htab/later-pass-sends-dirty-runs",
                    test_later_pass_sends_dirty_runs);
    g_test_add_func("/spapr-htab/long-runs-split", test_long_runs_split);
    g_test_add_func("/spapr-htab/time-budget", test_time_budget);
    g_test_add_func("/spapr-htab/rate-limit", test_rate_limit);
    g_test_add_func("/spapr-htab/completion-finishes-first-pass",
                    test_completion_finishes_first_pass);
    g_test_add_func("/spapr-htab/concurrent-writers", test_concurrent_writers);
    g_test_add_func("/spapr-htab/load/shift-checked", test_shift_checked);
    g_test_add_func("/spapr-htab/load/hostile-streams", test_hostile_streams);
    return g_test_run();
}
