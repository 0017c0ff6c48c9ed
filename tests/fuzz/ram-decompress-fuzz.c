/*
 * libFuzzer target: the page-decompression path of migration compression
 *
 * Feeds arbitrary bytes to ram_decompress_one() as the payload of a
 * compressed-page record, the way the destination's workers do once the
 * length passed its bound check, with one libdeflate decompressor reused
 * across inputs as a worker reuses its own.  The page is an exact-size
 * heap buffer, so AddressSanitizer catches any write outside it.  A
 * decode that succeeds must agree with zlib's uncompress() (what stock
 * QEMU inflates with) on exactly this page, and the page must survive a
 * round trip through the source's encoder.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <zlib.h>
#include "migration/ram-compress-page.h"

#define PAGE 4096

static void check_round_trip(struct libdeflate_decompressor *decompressor,
                             const uint8_t *page)
{
    static struct libdeflate_compressor *compressor;
    static uint8_t record[RAM_COMPRESS_HEADER_BYTES + PAGE];
    uint8_t again[PAGE];
    size_t len, prefix = RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES;

    if (!compressor) {
        compressor = libdeflate_alloc_compressor(1);
        assert(compressor);
    }
    len = ram_compress_page_record(compressor, record, 0, page, PAGE);
    if (len) {
        assert(!ram_decompress_one(decompressor, again, PAGE, record + prefix,
                                   len - prefix));
        assert(!memcmp(again, page, PAGE));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct libdeflate_decompressor *decompressor;
    uint8_t *page, check[PAGE];
    uLongf check_len = PAGE;

    if (size > ram_compress_stream_max(PAGE)) {
        return 0;           /* the record's length check refuses it */
    }
    if (!decompressor) {
        decompressor = libdeflate_alloc_decompressor();
        assert(decompressor);
    }
    page = malloc(PAGE);
    if (!ram_decompress_one(decompressor, page, PAGE, data, size)) {
        /* accepted: it must be a zlib stream of exactly this page */
        assert(uncompress(check, &check_len, data, size) == Z_OK);
        assert(check_len == PAGE && !memcmp(check, page, PAGE));
        check_round_trip(decompressor, page);
    }
    free(page);
    return 0;
}
