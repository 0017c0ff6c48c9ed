/*
 * One RAM page to and from the compressed wire format.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Owns the page and record layout and the strictness of decoding: a
 * record must inflate to exactly one page, with nothing after its zlib
 * stream.  No allocation: the caller's compressor and inflate stream
 * are reused, not rebuilt.
 *
 * Pages are compressed with libdeflate, which writes the same zlib
 * format as zlib's deflate() twice as fast on RAM pages (it compresses a
 * whole buffer at once, with no streaming state to carry); any zlib
 * inflates its output, stock QEMU's included.  Pages are inflated with
 * zlib, whose diagnostics the errors quote.
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "ram-compress-page.h"

/*
 * Room for one page's zlib stream.  libdeflate wants its own worst case,
 * a few bytes more than compressBound(), as room to write into (it pads
 * its bit writer); what it writes is never longer than compressBound(),
 * as it falls back to stored blocks.
 */
static size_t ram_compress_room(size_t page_size)
{
    return MAX(compressBound(page_size),
               libdeflate_zlib_compress_bound(NULL, page_size));
}

size_t ram_compress_record_max(size_t page_size)
{
    return RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES +
           ram_compress_room(page_size);
}

size_t ram_compress_zero_record(uint8_t *out, uint64_t offset)
{
    stq_be_p(out, offset | RAM_COMPRESS_FLAG_ZERO | RAM_COMPRESS_FLAG_CONTINUE);
    out[RAM_COMPRESS_HEADER_BYTES] = 0;
    return RAM_COMPRESS_ZERO_BYTES;
}

int ram_compress_page_record(struct libdeflate_compressor *compressor,
                             uint8_t *out, uint64_t offset,
                             const uint8_t *page, size_t page_size)
{
    size_t prefix = RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES;
    size_t len;

    len = libdeflate_zlib_compress(compressor, page, page_size, out + prefix,
                                   ram_compress_room(page_size));
    /* The destination refuses more than compressBound() */
    if (!len || len > compressBound(page_size)) {
        return -ENOSPC;
    }
    stq_be_p(out, offset | RAM_COMPRESS_FLAG_PAGE | RAM_COMPRESS_FLAG_CONTINUE);
    stl_be_p(out + RAM_COMPRESS_HEADER_BYTES, len);
    return prefix + len;
}

const char *ram_decompress_one(z_stream *stream, uint8_t *dest,
                               size_t page_size, const uint8_t *src,
                               size_t len)
{
    int err;

    if (inflateReset(stream) != Z_OK) {
        return "inflateReset failed";
    }
    stream->next_in = (Bytef *)src;
    stream->avail_in = len;
    stream->next_out = dest;
    stream->avail_out = page_size;
    /* Z_FINISH: one call, and no copy of the page into zlib's window */
    err = inflate(stream, Z_FINISH);
    switch (err) {
    case Z_STREAM_END:
        if (stream->avail_out) {
            return "it inflates to less than one page";
        }
        if (stream->avail_in) {
            return "it has data after the end of its zlib stream";
        }
        return NULL;
    case Z_BUF_ERROR:
        if (!stream->avail_out && stream->avail_in) {
            return "it inflates to more than one page";
        }
        return "its zlib stream is truncated";
    case Z_DATA_ERROR:
    case Z_NEED_DICT:
        return "it is not a valid zlib stream";
    default:
        return "inflate failed";
    }
}
