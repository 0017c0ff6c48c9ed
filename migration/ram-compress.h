/*
 * Migration compression threads: the whole interface.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The save side compresses RAM pages in worker threads and writes them
 * to the migration stream in the base's format (one zlib stream per
 * page; a page that does not compress goes plain); the load side decodes
 * them in worker threads.  ram.c decides which pages go through here and
 * keeps the statistics; this module owns the threads, their libdeflate
 * compressors and decompressors and their buffers, and allocates nothing
 * after setup.
 *
 * The stream format is in ram-compress-page.h.
 */

#ifndef MIGRATION_RAM_COMPRESS_H
#define MIGRATION_RAM_COMPRESS_H

#include "exec/cpu-common.h"
#include "qemu-file.h"
#include "ram-compress-page.h"

/* What the save side put on the stream, for ram.c's statistics. */
typedef struct RamCompressSent {
    uint64_t bytes;             /* everything written, headers included */
    uint64_t pages;             /* compressed pages */
    uint64_t compressed_bytes;  /* compressed pages minus their headers */
    uint64_t zero_pages;        /* pages the workers found zero */
    uint64_t plain_pages;       /* pages sent plain: they did not compress */
} RamCompressSent;

/*
 * ram_compress_save_setup: start @threads workers compressing @page_size
 * pages at @level (0..9: libdeflate's levels, which match zlib's).
 * Returns 0, or -1 with nothing left running.
 */
int ram_compress_save_setup(int threads, int level, size_t page_size);

/* Stop the workers; pages queued but not flushed are dropped. */
void ram_compress_save_cleanup(void);

/*
 * ram_compress_save_page: queue the page at @host, @offset bytes into
 * the block the caller last sent.  Records of earlier pages that are
 * ready are written to @f and added to @sent.  When every worker is busy
 * and @wait is false, returns false and the caller sends the page itself.
 */
bool ram_compress_save_page(QEMUFile *f, const uint8_t *host,
                            ram_addr_t offset, bool wait,
                            RamCompressSent *sent);

/* Write every queued page to @f, adding them to @sent. */
void ram_compress_save_flush(QEMUFile *f, RamCompressSent *sent);

/*
 * ram_decompress_load_setup: start @threads workers for @page_size
 * pages.  With @check_errors false (machine types before 3.0), a page
 * that fails to inflate is ignored, as the base did.  Returns 0 or -1.
 */
int ram_decompress_load_setup(int threads, size_t page_size,
                              bool check_errors);
void ram_decompress_load_cleanup(void);

/*
 * The load side applies every record for a page in stream order, so
 * while the workers are running, every write to guest RAM that the
 * stream makes goes through one of these.  Each returns 0 or a negative
 * errno once a worker has failed; they never write outside the page.
 */

/* Read @len bytes of compressed page from @f to inflate into @host. */
int ram_decompress_page(QEMUFile *f, void *host, int len);
/* A zero page record: fill @host with @ch (only 0 in practice). */
int ram_decompress_zero(void *host, uint8_t ch);
/* An uncompressed page record: read it from @f into @host. */
int ram_decompress_copy(QEMUFile *f, void *host);
/* Wait until nothing queued for @host is pending, before writing it. */
int ram_decompress_barrier(void *host);
/* Wait until every queued record is applied; report the first failure. */
int ram_decompress_wait(void);

#endif
