/*
 * One RAM page to and from the compressed wire format.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Owns the page and record layout and the strictness of decoding: a
 * record must inflate to exactly one page, with nothing after its zlib
 * stream.  No allocation: the caller's streams are reset, not rebuilt.
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "ram-compress-page.h"

size_t ram_compress_record_max(size_t page_size)
{
    return RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES +
           compressBound(page_size);
}

size_t ram_compress_zero_record(uint8_t *out, uint64_t offset)
{
    stq_be_p(out, offset | RAM_COMPRESS_FLAG_ZERO | RAM_COMPRESS_FLAG_CONTINUE);
    out[RAM_COMPRESS_HEADER_BYTES] = 0;
    return RAM_COMPRESS_ZERO_BYTES;
}

int ram_compress_page_record(z_stream *stream, uint8_t *out, uint64_t offset,
                             const uint8_t *page, size_t page_size)
{
    size_t prefix = RAM_COMPRESS_HEADER_BYTES + RAM_COMPRESS_LENGTH_BYTES;
    size_t bound = compressBound(page_size);
    int err = deflateReset(stream);

    if (err != Z_OK) {
        return err;
    }
    stream->next_in = (Bytef *)page;
    stream->avail_in = page_size;
    stream->next_out = out + prefix;
    stream->avail_out = bound;
    err = deflate(stream, Z_FINISH);
    if (err != Z_STREAM_END) {
        /* compressBound() leaves room, so Z_OK cannot happen; be safe */
        return err < 0 ? err : Z_BUF_ERROR;
    }
    stq_be_p(out, offset | RAM_COMPRESS_FLAG_PAGE | RAM_COMPRESS_FLAG_CONTINUE);
    stl_be_p(out + RAM_COMPRESS_HEADER_BYTES, bound - stream->avail_out);
    return prefix + bound - stream->avail_out;
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
