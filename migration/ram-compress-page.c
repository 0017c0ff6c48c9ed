/*
 * One RAM page to and from the compressed wire format.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Owns the page and record layout, the rule that a page is sent plain
 * when compressing does not make it smaller, and the strictness of
 * decoding: a record must decode to exactly one page, with nothing after
 * its zlib stream.  No allocation: the caller's compressor and
 * decompressor are reused, not rebuilt.
 *
 * libdeflate compresses and decompresses a whole buffer in one call,
 * with no streaming state, about twice as fast as zlib's deflate() and
 * inflate() on RAM pages; it writes the zlib format, so any QEMU reads
 * what it writes.  The destination parses the two-byte zlib header and
 * checks the Adler-32 trailer itself around libdeflate's raw DEFLATE
 * decoder, at the same cost as libdeflate_zlib_decompress_ex(): that
 * way a wrong header, a wrong checksum and a truncated trailer each get
 * their own message, where the zlib wrapper reports all three as "bad
 * data".
 */

#include "qemu/osdep.h"
#include <zlib.h>
#include "qemu/bswap.h"
#include "ram-compress-page.h"

#define ZLIB_HEADER_BYTES   2   /* CMF, FLG */
#define ZLIB_TRAILER_BYTES  4   /* be32 Adler-32 of the page */

size_t ram_compress_stream_max(size_t page_size)
{
    return compressBound(page_size);
}

size_t ram_compress_record_max(size_t page_size)
{
    /* a compressed record is always shorter: see ram_compress_page_record */
    return RAM_COMPRESS_HEADER_BYTES + page_size;
}

size_t ram_compress_zero_record(uint8_t *out, uint64_t offset)
{
    stq_be_p(out, offset | RAM_COMPRESS_FLAG_ZERO | RAM_COMPRESS_FLAG_CONTINUE);
    out[RAM_COMPRESS_HEADER_BYTES] = 0;
    return RAM_COMPRESS_ZERO_BYTES;
}

size_t ram_compress_plain_record(uint8_t *out, uint64_t offset,
                                 const uint8_t *page, size_t page_size)
{
    stq_be_p(out, offset | RAM_COMPRESS_FLAG_PLAIN |
             RAM_COMPRESS_FLAG_CONTINUE);
    memcpy(out + RAM_COMPRESS_HEADER_BYTES, page, page_size);
    return RAM_COMPRESS_HEADER_BYTES + page_size;
}

size_t ram_compress_page_record(struct libdeflate_compressor *compressor,
                                uint8_t *out, uint64_t offset,
                                const uint8_t *page, size_t page_size)
{
    size_t prefix = RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES;
    /*
     * Room for a stream one byte shorter than what a plain page would
     * add: libdeflate gives up (returns 0) rather than write more, so a
     * page that does not compress costs no more than trying.  This room
     * is below compressBound(), the bound the destination enforces.
     */
    size_t room = page_size - RAM_COMPRESS_LENGTH_BYTES - 1;
    size_t len = libdeflate_zlib_compress(compressor, page, page_size,
                                          out + prefix, room);

    if (!len) {
        return 0;
    }
    stq_be_p(out, offset | RAM_COMPRESS_FLAG_PAGE | RAM_COMPRESS_FLAG_CONTINUE);
    stl_be_p(out + RAM_COMPRESS_HEADER_BYTES, len);
    return prefix + len;
}

/* RFC 1950: deflate, window <= 32 KiB, no preset dictionary, FCHECK. */
static bool zlib_header_valid(const uint8_t *hdr)
{
    return (hdr[0] & 0x0f) == 8 && (hdr[0] >> 4) <= 7 && !(hdr[1] & 0x20) &&
           (hdr[0] << 8 | hdr[1]) % 31 == 0;
}

const char *ram_decompress_one(struct libdeflate_decompressor *decompressor,
                               uint8_t *dest, size_t page_size,
                               const uint8_t *src, size_t len)
{
    size_t deflate_len;
    const uint8_t *trailer;

    if (len < ZLIB_HEADER_BYTES) {
        return "its zlib stream is truncated";
    }
    if (!zlib_header_valid(src)) {
        return "it is not a valid zlib stream";
    }
    /* no actual_out: a stream shorter than the page is SHORT_OUTPUT */
    switch (libdeflate_deflate_decompress_ex(decompressor,
                                             src + ZLIB_HEADER_BYTES,
                                             len - ZLIB_HEADER_BYTES,
                                             dest, page_size,
                                             &deflate_len, NULL)) {
    case LIBDEFLATE_SUCCESS:
        break;
    case LIBDEFLATE_SHORT_OUTPUT:
        return "it inflates to less than one page";
    case LIBDEFLATE_INSUFFICIENT_SPACE:
        return "it inflates to more than one page";
    default:
        /* libdeflate reads past the end as zeros, then calls it bad */
        return "its deflate data is corrupt or truncated";
    }
    trailer = src + ZLIB_HEADER_BYTES + deflate_len;
    len -= ZLIB_HEADER_BYTES + deflate_len;
    if (len < ZLIB_TRAILER_BYTES) {
        return "its zlib stream is truncated";
    }
    if (ldl_be_p(trailer) != libdeflate_adler32(1, dest, page_size)) {
        return "its zlib checksum does not match (incorrect data check)";
    }
    if (len > ZLIB_TRAILER_BYTES) {
        return "it has data after the end of its zlib stream";
    }
    return NULL;
}
