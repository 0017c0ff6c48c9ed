/*
 * One RAM page to and from the compressed wire format.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Pure functions over zlib, shared by the compression threads
 * (ram-compress.c), their unit tests and the decompression fuzzer.  The
 * format is QEMU 7.2's, so stock and Ferry migrate to each other:
 *
 * a compressed page
 *     be64  offset-in-block | RAM_SAVE_FLAG_COMPRESS_PAGE | CONTINUE
 *     be32  length, at most compressBound(page size)
 *     ...   one complete zlib stream that inflates to exactly one page
 * a zero page
 *     be64  offset-in-block | RAM_SAVE_FLAG_ZERO | CONTINUE
 *     u8    0
 */

#ifndef MIGRATION_RAM_COMPRESS_PAGE_H
#define MIGRATION_RAM_COMPRESS_PAGE_H

#include <zlib.h>

/* Flags of the be64 page header: ram.c's RAM_SAVE_FLAG_* values. */
#define RAM_COMPRESS_FLAG_ZERO      0x02
#define RAM_COMPRESS_FLAG_CONTINUE  0x20
#define RAM_COMPRESS_FLAG_PAGE      0x100

#define RAM_COMPRESS_HEADER_BYTES   8   /* be64 offset | flags */
#define RAM_COMPRESS_LENGTH_BYTES   4   /* be32 length of the zlib stream */
#define RAM_COMPRESS_ZERO_BYTES     (RAM_COMPRESS_HEADER_BYTES + 1)

/* The longest record a page of @page_size bytes can become. */
size_t ram_compress_record_max(size_t page_size);

/* Write the zero-page record for @offset to @out; its length. */
size_t ram_compress_zero_record(uint8_t *out, uint64_t offset);

/*
 * ram_compress_page_record: deflate the @page_size bytes at @page with
 * @stream (deflateInit done) into a compressed-page record for @offset
 * at @out, which has ram_compress_record_max() bytes.  Returns the
 * record's length, or a negative zlib error.
 */
int ram_compress_page_record(z_stream *stream, uint8_t *out, uint64_t offset,
                             const uint8_t *page, size_t page_size);

/*
 * ram_decompress_one: inflate the @len bytes at @src into the @page_size
 * bytes at @dest with @stream (inflateInit done); nothing is written
 * outside @dest.  Returns NULL when they inflate to exactly one page,
 * else why not (see also @stream->msg).
 */
const char *ram_decompress_one(z_stream *stream, uint8_t *dest,
                               size_t page_size, const uint8_t *src,
                               size_t len);

#endif
