/*
 * Unit tests of Ferry's page codec for migration compression
 *
 * migration/ram-compress-page.c turns one page into a wire record and
 * back.  These tests check the record layout the stream format fixes
 * (QEMU 7.2's: header flags, be32 length, one zlib stream; plain pages
 * for what does not compress), round trips at levels 0, 1 and 9 with one
 * libdeflate compressor and decompressor reused across pages, that zlib
 * reads what libdeflate writes and the other way round, and that decoding
 * refuses everything that is not exactly one page, each kind of defect
 * with its own reason, without writing outside the destination page.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <zlib.h>
#include "qemu/bswap.h"
#include "../../migration/ram-compress-page.h"

#define PAGE        4096
#define GUARD       64
#define OFFSET      0x12345000ULL

typedef struct Codec {
    struct libdeflate_compressor *compressor;
    struct libdeflate_decompressor *decompressor;
    uint8_t record[RAM_COMPRESS_HEADER_BYTES + PAGE];
    /* the decoded page, between two guard areas */
    uint8_t dest[GUARD + PAGE + GUARD];
} Codec;

static void codec_init(Codec *c, int level)
{
    memset(c, 0, sizeof(*c));
    c->compressor = libdeflate_alloc_compressor(level);
    c->decompressor = libdeflate_alloc_decompressor();
    g_assert_nonnull(c->compressor);
    g_assert_nonnull(c->decompressor);
    g_assert_cmpuint(ram_compress_record_max(PAGE), ==, sizeof(c->record));
}

static void codec_cleanup(Codec *c)
{
    libdeflate_free_compressor(c->compressor);
    libdeflate_free_decompressor(c->decompressor);
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
    return ram_decompress_one(c->decompressor, c->dest + GUARD, PAGE, data,
                              len);
}

static void assert_guards_intact(Codec *c)
{
    int i;

    for (i = 0; i < GUARD; i++) {
        g_assert_cmphex(c->dest[i], ==, 0xa5);
        g_assert_cmphex(c->dest[GUARD + PAGE + i], ==, 0xa5);
    }
}

/*
 * Compress PAGE into c->record; the payload length, or 0 if the page
 * goes plain.  A compressed record is always shorter than a plain one.
 */
static size_t try_encode(Codec *c, const uint8_t *page)
{
    size_t len = ram_compress_page_record(c->compressor, c->record, OFFSET,
                                          page, PAGE);

    if (!len) {
        return 0;
    }
    g_assert_cmpuint(len, >, RAM_COMPRESS_HEADER_BYTES +
                     RAM_COMPRESS_LENGTH_BYTES);
    g_assert_cmpuint(len, <, RAM_COMPRESS_HEADER_BYTES + PAGE);
    return len - RAM_COMPRESS_HEADER_BYTES - RAM_COMPRESS_LENGTH_BYTES;
}

static size_t encode(Codec *c, const uint8_t *page)
{
    size_t len = try_encode(c, page);

    g_assert_cmpuint(len, >, 0);
    return len;
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

    g_assert_cmpuint(ram_compress_plain_record(c.record, OFFSET, page, PAGE),
                     ==, RAM_COMPRESS_HEADER_BYTES + PAGE);
    g_assert_cmphex(ldq_be_p(c.record), ==,
                    OFFSET | RAM_COMPRESS_FLAG_PLAIN |
                    RAM_COMPRESS_FLAG_CONTINUE);
    g_assert_cmpmem(c.record + RAM_COMPRESS_HEADER_BYTES, PAGE, page, PAGE);
    codec_cleanup(&c);
}

/*
 * Text pages come back intact, and zlib (what stock QEMU inflates with)
 * reads them too; random pages do not compress, so they go plain.  At
 * level 0 (stored blocks) nothing compresses.
 */
static void round_trip(gconstpointer opaque)
{
    int level = GPOINTER_TO_INT(opaque);
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
        len = try_encode(&c, page);
        if (!level || !(seed % 2)) {
            g_assert_cmpuint(len, ==, 0);
            continue;
        }
        g_assert_cmpuint(len, >, 0);
        g_assert_cmpuint(len, <=, ram_compress_stream_max(PAGE));
        g_assert_null(decode(&c, payload(&c), len));
        g_assert_cmpmem(c.dest + GUARD, PAGE, page, PAGE);
        assert_guards_intact(&c);
        dest_len = PAGE;
        g_assert_cmpint(uncompress(c.dest + GUARD, &dest_len, payload(&c),
                                   len), ==, Z_OK);
        g_assert_cmpuint(dest_len, ==, PAGE);
    }
    codec_cleanup(&c);
}

/* Reads what the base and zlib's compress2() write, at every level. */
static void test_decodes_zlib(void)
{
    Codec c;
    uint8_t page[PAGE], out[2 * PAGE];
    uLongf len;
    int level;

    codec_init(&c, 1);
    for (level = 0; level <= 9; level++) {
        fill_text(page, level);
        len = sizeof(out);
        g_assert_cmpint(compress2(out, &len, page, PAGE, level), ==, Z_OK);
        g_assert_null(decode(&c, out, len));
        g_assert_cmpmem(c.dest + GUARD, PAGE, page, PAGE);
        /* a stored stream of a random page, as stock sends at level 0 */
        fill_random(page, level);
        len = sizeof(out);
        g_assert_cmpint(compress2(out, &len, page, PAGE, level), ==, Z_OK);
        g_assert_cmpuint(len, <=, ram_compress_stream_max(PAGE));
        g_assert_null(decode(&c, out, len));
        g_assert_cmpmem(c.dest + GUARD, PAGE, page, PAGE);
    }
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
    /* into the Adler-32 trailer, into the header */
    assert_refused(&c, out, len - 1, "zlib stream is truncated");
    assert_refused(&c, out, 1, "zlib stream is truncated");
    assert_refused(&c, out, 0, "zlib stream is truncated");
    /* into the deflate data: libdeflate cannot tell it from corruption */
    assert_refused(&c, out, len / 2, "corrupt or truncated");
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
    /* a preset dictionary (FDICT), with a correct FCHECK */
    encode(&c, page);
    c.record[RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES + 1] =
        0xbb;
    assert_refused(&c, payload(&c), len, "not a valid zlib stream");
    encode(&c, page);
    c.record[RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES + len - 1]
        ^= 1;
    assert_refused(&c, payload(&c), len, "checksum does not match");

    /* every single flipped byte is caught, by the decoder or Adler-32 */
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

/* A failure leaves the decompressor usable for the next page. */
static void test_stream_reusable_after_failure(void)
{
    Codec c;
    uint8_t page[PAGE];
    size_t len;

    codec_init(&c, 1);
    fill_text(page, 5);
    len = encode(&c, page);
    g_assert_nonnull(decode(&c, payload(&c), len / 2));
    g_assert_nonnull(decode(&c, payload(&c), len + 1));
    g_assert_null(decode(&c, payload(&c), len));
    g_assert_cmpmem(c.dest + GUARD, PAGE, page, PAGE);
    codec_cleanup(&c);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/ram-compress/record-layout", test_record_layout);
    g_test_add_data_func("/ram-compress/round-trip/level0",
                         GINT_TO_POINTER(0), round_trip);
    g_test_add_data_func("/ram-compress/round-trip/level1",
                         GINT_TO_POINTER(1), round_trip);
    g_test_add_data_func("/ram-compress/round-trip/level9",
                         GINT_TO_POINTER(9), round_trip);
    g_test_add_func("/ram-compress/decodes-zlib", test_decodes_zlib);
    g_test_add_func("/ram-compress/refuses-wrong-sizes",
                    test_refuses_wrong_sizes);
    g_test_add_func("/ram-compress/refuses-corrupt-data",
                    test_refuses_corrupt_data);
    g_test_add_func("/ram-compress/stream-reusable-after-failure",
                    test_stream_reusable_after_failure);
    return g_test_run();
}
