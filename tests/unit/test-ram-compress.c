/*
 * Unit tests of Ferry's page codec for migration compression
 *
 * migration/ram-compress-page.c turns one page into a wire record and
 * back.  These tests check the record layout the stream format fixes
 * (QEMU 7.2's: header flags, be32 length, one zlib stream), round trips
 * at levels 1 and 9 with streams reused across pages, and that decoding
 * refuses everything that is not exactly one page without writing
 * outside the destination page.
 *
 * Copyright (c) 2026 The Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "../../migration/ram-compress-page.h"

#define PAGE        4096
#define GUARD       64
#define OFFSET      0x12345000ULL

typedef struct Codec {
    z_stream deflate;
    z_stream inflate;
    uint8_t record[PAGE + 64];
    /* the decoded page, between two guard areas */
    uint8_t dest[GUARD + PAGE + GUARD];
} Codec;

static void codec_init(Codec *c, int level)
{
    memset(c, 0, sizeof(*c));
    g_assert_cmpint(deflateInit(&c->deflate, level), ==, Z_OK);
    g_assert_cmpint(inflateInit(&c->inflate), ==, Z_OK);
    g_assert_cmpuint(ram_compress_record_max(PAGE), <=, sizeof(c->record));
}

static void codec_cleanup(Codec *c)
{
    deflateEnd(&c->deflate);
    inflateEnd(&c->inflate);
}

static void fill_text(uint8_t *page, unsigned seed)
{
    static const char words[] = "migrate the busy guest page by page ";
    GRand *rand = g_rand_new_with_seed(seed);
    size_t i;

    for (i = 0; i < PAGE; i++) {
        page[i] = words[g_rand_int_range(rand, 0, sizeof(words) - 1)];
    }
    g_rand_free(rand);
}

static void fill_random(uint8_t *page, unsigned seed)
{
    GRand *rand = g_rand_new_with_seed(seed);
    size_t i;

    for (i = 0; i < PAGE; i++) {
        page[i] = g_rand_int(rand);
    }
    g_rand_free(rand);
}

/* Decode the record's payload into c->dest; why not, or NULL. */
static const char *decode(Codec *c, const uint8_t *data, size_t len)
{
    memset(c->dest, 0xa5, sizeof(c->dest));
    return ram_decompress_one(&c->inflate, c->dest + GUARD, PAGE, data, len);
}

static void assert_guards_intact(Codec *c)
{
    int i;

    for (i = 0; i < GUARD; i++) {
        g_assert_cmphex(c->dest[i], ==, 0xa5);
        g_assert_cmphex(c->dest[GUARD + PAGE + i], ==, 0xa5);
    }
}

/* Compress PAGE into c->record; the payload length. */
static size_t encode(Codec *c, const uint8_t *page)
{
    int len = ram_compress_page_record(&c->deflate, c->record, OFFSET,
                                       page, PAGE);

    g_assert_cmpint(len, >, RAM_COMPRESS_HEADER_BYTES +
                    RAM_COMPRESS_LENGTH_BYTES);
    return len - RAM_COMPRESS_HEADER_BYTES - RAM_COMPRESS_LENGTH_BYTES;
}

static const uint8_t *payload(Codec *c)
{
    return c->record + RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES;
}

static void test_record_layout(void)
{
    Codec c;
    uint8_t page[PAGE];
    size_t len;

    codec_init(&c, 1);
    fill_text(page, 1);
    len = encode(&c, page);
    g_assert_cmphex(ldq_be_p(c.record), ==,
                    OFFSET | RAM_COMPRESS_FLAG_PAGE |
                    RAM_COMPRESS_FLAG_CONTINUE);
    g_assert_cmpuint(ldl_be_p(c.record + RAM_COMPRESS_HEADER_BYTES), ==, len);
    g_assert_cmpuint(len, <, PAGE * 3 / 4);
    g_assert_cmphex(payload(&c)[0], ==, 0x78);     /* a zlib header */

    g_assert_cmpuint(ram_compress_zero_record(c.record, OFFSET), ==, 9);
    g_assert_cmphex(ldq_be_p(c.record), ==,
                    OFFSET | RAM_COMPRESS_FLAG_ZERO |
                    RAM_COMPRESS_FLAG_CONTINUE);
    g_assert_cmphex(c.record[8], ==, 0);
    codec_cleanup(&c);
}

static void round_trip(int level)
{
    Codec c;
    uint8_t page[PAGE];
    unsigned seed;
    size_t len;
    uLongf dest_len;

    codec_init(&c, level);
    for (seed = 0; seed < 64; seed++) {
        if (seed % 2) {
            fill_text(page, seed);
        } else {
            fill_random(page, seed);
        }
        len = encode(&c, page);
        g_assert_cmpuint(len, <=, compressBound(PAGE));
        g_assert_null(decode(&c, payload(&c), len));
        g_assert_cmpmem(c.dest + GUARD, PAGE, page, PAGE);
        assert_guards_intact(&c);
        /* zlib itself reads what we wrote */
        dest_len = PAGE;
        g_assert_cmpint(uncompress(c.dest + GUARD, &dest_len, payload(&c),
                                   len), ==, Z_OK);
    }
    codec_cleanup(&c);
}

static void test_round_trip_level1(void)
{
    round_trip(1);
}

static void test_round_trip_level9(void)
{
    round_trip(9);
}

/* Reads what the base and zlib's own compress2() write. */
static void test_decodes_compress2(void)
{
    Codec c;
    uint8_t page[PAGE], out[PAGE + 64];
    uLongf len = sizeof(out);

    codec_init(&c, 1);
    fill_text(page, 7);
    g_assert_cmpint(compress2(out, &len, page, PAGE, 6), ==, Z_OK);
    g_assert_null(decode(&c, out, len));
    g_assert_cmpmem(c.dest + GUARD, PAGE, page, PAGE);
    codec_cleanup(&c);
}

static void assert_refused(Codec *c, const uint8_t *data, size_t len,
                           const char *why)
{
    const char *got = decode(c, data, len);

    g_assert_nonnull(got);
    g_assert_nonnull(strstr(got, why));
    assert_guards_intact(c);
}

static void test_refuses_wrong_sizes(void)
{
    Codec c;
    uint8_t big[2 * PAGE], out[2 * PAGE + 64];
    uLongf len;

    codec_init(&c, 1);
    memset(big, 'x', sizeof(big));

    len = sizeof(out);
    g_assert_cmpint(compress2(out, &len, big, 100, 1), ==, Z_OK);
    assert_refused(&c, out, len, "less than one page");

    len = sizeof(out);
    g_assert_cmpint(compress2(out, &len, big, PAGE + 1, 1), ==, Z_OK);
    assert_refused(&c, out, len, "more than one page");

    len = sizeof(out);
    g_assert_cmpint(compress2(out, &len, big, 2 * PAGE, 9), ==, Z_OK);
    assert_refused(&c, out, len, "more than one page");

    len = sizeof(out);
    g_assert_cmpint(compress2(out, &len, big, PAGE, 1), ==, Z_OK);
    out[len] = 0;
    assert_refused(&c, out, len + 1, "after the end");
    assert_refused(&c, out, len - 1, "truncated");
    assert_refused(&c, out, 0, "truncated");
    codec_cleanup(&c);
}

static void test_refuses_corrupt_data(void)
{
    Codec c;
    uint8_t page[PAGE];
    size_t len, i;
    unsigned refused = 0;

    codec_init(&c, 1);
    fill_text(page, 3);
    len = encode(&c, page);
    c.record[RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES] = 0x00;
    assert_refused(&c, payload(&c), len, "not a valid zlib stream");

    /* every single flipped byte is caught, by zlib or its adler32 */
    for (i = 0; i < len; i++) {
        encode(&c, page);
        c.record[RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES + i] ^=
            0x41;
        if (decode(&c, payload(&c), len)) {
            refused++;
        }
        assert_guards_intact(&c);
    }
    g_assert_cmpuint(refused, ==, len);
    codec_cleanup(&c);
}

/* The streams are reset, not rebuilt: a failure leaves them usable. */
static void test_stream_reusable_after_failure(void)
{
    Codec c;
    uint8_t page[PAGE];
    size_t len;

    codec_init(&c, 1);
    fill_text(page, 5);
    len = encode(&c, page);
    g_assert_nonnull(decode(&c, payload(&c), len / 2));
    g_assert_null(decode(&c, payload(&c), len));
    g_assert_cmpmem(c.dest + GUARD, PAGE, page, PAGE);
    codec_cleanup(&c);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/ram-compress/record-layout", test_record_layout);
    g_test_add_func("/ram-compress/round-trip/level1", test_round_trip_level1);
    g_test_add_func("/ram-compress/round-trip/level9", test_round_trip_level9);
    g_test_add_func("/ram-compress/decodes-compress2", test_decodes_compress2);
    g_test_add_func("/ram-compress/refuses-wrong-sizes",
                    test_refuses_wrong_sizes);
    g_test_add_func("/ram-compress/refuses-corrupt-data",
                    test_refuses_corrupt_data);
    g_test_add_func("/ram-compress/stream-reusable-after-failure",
                    test_stream_reusable_after_failure);
    return g_test_run();
}
