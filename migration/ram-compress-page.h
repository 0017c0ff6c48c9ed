/*
 * One RAM page to and from the compressed wire format.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Pure functions over libdeflate, shared by the compression threads
 * (ram-compress.c), their unit tests and the decompression fuzzer.  The
 * format is QEMU 7.2's, so stock and Ferry migrate to each other:
 *
 * a compressed page
 *     be64  offset-in-block | RAM_SAVE_FLAG_COMPRESS_PAGE | CONTINUE
 *     be32  length, at most compressBound(page size)
 *     ...   one complete zlib stream (RFC 1950) of exactly one page
 * a page that does not compress to less than a page: a plain page
 *     be64  offset-in-block | RAM_SAVE_FLAG_PAGE | CONTINUE
 *     ...   the page
 * a zero page
 *     be64  offset-in-block | RAM_SAVE_FLAG_ZERO | CONTINUE
 *     u8    0
 */

#ifndef MIGRATION_RAM_COMPRESS_PAGE_H
#define MIGRATION_RAM_COMPRESS_PAGE_H

#include <libdeflate.h>

/* Flags of the be64 page header: ram.c's RAM_SAVE_FLAG_* values. */
#define RAM_COMPRESS_FLAG_ZERO      0x02
#define RAM_COMPRESS_FLAG_PLAIN     0x08
#define RAM_COMPRESS_FLAG_CONTINUE  0x20
#define RAM_COMPRESS_FLAG_PAGE      0x100

#define RAM_COMPRESS_HEADER_BYTES   8   /* be64 offset | flags */
#define RAM_COMPRESS_LENGTH_BYTES   4   /* be32 length of the zlib stream */
#define RAM_COMPRESS_ZERO_BYTES     (RAM_COMPRESS_HEADER_BYTES + 1)

/*
 * The longest zlib stream a destination accepts for one page: zlib's
 * compressBound(), which stock 7.2 enforces too.
 */
size_t ram_compress_stream_max(size_t page_size);

/* The longest record a page of @page_size bytes can become. */
size_t ram_compress_record_max(size_t page_size);

/* Write the zero-page record for @offset to @out; its length. */
size_t ram_compress_zero_record(uint8_t *out, uint64_t offset);

/* Write a plain-page record of @page for @offset to @out; its length. */
size_t ram_compress_plain_record(uint8_t *out, uint64_t offset,
                                 const uint8_t *page, size_t page_size);

/*
 * ram_compress_page_record: compress the @page_size bytes at @page with
 * @compressor into a compressed-page record for @offset at @out, which
 * has ram_compress_record_max() bytes.  Returns the record's length, or
 * 0 when the record would not be smaller than a plain page's: the caller
 * then sends the page plain.
 */
size_t ram_compress_page_record(struct libdeflate_compressor *compressor,
                                uint8_t *out, uint64_t offset,
                                const uint8_t *page, size_t page_size);

/*
 * ram_decompress_one: decode the zlib stream of @len bytes at @src into
 * the @page_size bytes at @dest with @decompressor; nothing is written
 * outside @dest.  Returns NULL when it is exactly one page with nothing
 * after it, else why not.
 */
const char *ram_decompress_one(struct libdeflate_decompressor *decompressor,
                               uint8_t *dest, size_t page_size,
                               const uint8_t *src, size_t len);

#endif
