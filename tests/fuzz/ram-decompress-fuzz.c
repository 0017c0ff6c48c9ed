/*
 * libFuzzer target: the page-decompression path of migration compression
 *
 * Feeds arbitrary bytes to ram_decompress_one() as the payload of a
 * compressed-page record, the way the destination does once the length
 * passed its bound check.  The page is an exact-size heap buffer, so
 * AddressSanitizer catches any write outside it; a successful decode must
 * have produced exactly one page that re-compresses to the same page.
 *
 * Copyright (c) 2026 The Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "migration/ram-compress-page.h"

#define PAGE 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static z_stream stream;
    static bool ready;
    uint8_t *page, check[PAGE];
    uLongf check_len = PAGE;

    if (size > compressBound(PAGE)) {
        return 0;           /* the record's length check refuses it */
    }
    if (!ready) {
        assert(inflateInit(&stream) == Z_OK);
        ready = true;
    }
    page = malloc(PAGE);
    if (!ram_decompress_one(&stream, page, PAGE, data, size)) {
        /* accepted: it must be a zlib stream of exactly this page */
        assert(uncompress(check, &check_len, data, size) == Z_OK);
        assert(check_len == PAGE && !memcmp(check, page, PAGE));
    }
    free(page);
    return 0;
}
