/*
 * Migration compression threads.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Save side: the migration thread queues pages in batches and hands each
 * full batch to whichever worker is idle.  A worker copies each page of
 * its batch to a private buffer (a vCPU may write the page meanwhile),
 * sends it as a zero page if it is one, else compresses it with the
 * libdeflate compressor it keeps for the whole migration (or sends it
 * plain if that does not make it smaller), and leaves the finished
 * records in the batch's output buffer.  The migration thread copies
 * them to the stream when it hands that worker its next batch, or on a
 * flush.
 *
 * Load side: the incoming side reads each record into the batch of the
 * worker that owns its page (pages are spread over the workers by
 * address), and the worker applies the batch.  So every record for one
 * page is applied by one worker in stream order, and compressed, zero and
 * plain records for the same page cannot overtake each other.  Each
 * worker decodes with the libdeflate decompressor it keeps for the whole
 * migration, straight into guest RAM.
 *
 * Batches are what make this faster than one hand-over per page: a
 * hand-over costs a wake-up each way, which on a busy host is a good part
 * of deflating a page.  Every buffer is allocated at setup.
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/thread.h"
#include "exec/ramblock.h"
#include "ram-compress.h"
#include "trace.h"

/* Pages a save worker takes at a time. */
#define SAVE_BATCH_PAGES        32
/* Compressed pages a load batch can hold. */
#define LOAD_BATCH_PAGES        32

/*
 * A save worker that met this many pages in a row that did not compress
 * (random or encrypted memory) stops trying, and tries again only one
 * page in PROBE_INTERVAL until one compresses: a failed attempt costs as
 * much as compressing the page, for nothing.
 */
#define INCOMPRESSIBLE_RUN      64
#define PROBE_INTERVAL          16

/*
 * Worker threads take one batch at a time from a producer (the migration
 * thread, or the incoming side).  One lock per pool: it is taken once
 * per batch, not per page.
 */
typedef struct WorkerPool {
    QemuMutex lock;
    QemuCond idle;          /* some worker finished its batch */
} WorkerPool;

typedef struct Worker {
    QemuThread thread;
    WorkerPool *pool;
    QemuCond wake;          /* a batch was handed over, or quit */
    bool busy;              /* the worker owns its batch; under pool lock */
    bool quit;              /* under pool lock */
    void (*run_batch)(struct Worker *w);
} Worker;

static void *worker_thread(void *opaque)
{
    Worker *w = opaque;
    QemuMutex *lock = &w->pool->lock;

    qemu_mutex_lock(lock);
    for (;;) {
        while (!w->busy && !w->quit) {
            qemu_cond_wait(&w->wake, lock);
        }
        if (!w->busy) {
            break;
        }
        qemu_mutex_unlock(lock);
        w->run_batch(w);
        qemu_mutex_lock(lock);
        w->busy = false;
        qemu_cond_broadcast(&w->pool->idle);
    }
    qemu_mutex_unlock(lock);
    return NULL;
}

static void pool_init(WorkerPool *pool)
{
    qemu_mutex_init(&pool->lock);
    qemu_cond_init(&pool->idle);
}

static void pool_destroy(WorkerPool *pool)
{
    qemu_cond_destroy(&pool->idle);
    qemu_mutex_destroy(&pool->lock);
}

static void worker_start(Worker *w, WorkerPool *pool, const char *name,
                         void (*run_batch)(Worker *w))
{
    w->pool = pool;
    qemu_cond_init(&w->wake);
    w->run_batch = run_batch;
    qemu_thread_create(&w->thread, name, worker_thread, w,
                       QEMU_THREAD_JOINABLE);
}

/* Wait for the worker to finish its batch. */
static void worker_wait_idle(Worker *w)
{
    qemu_mutex_lock(&w->pool->lock);
    while (w->busy) {
        qemu_cond_wait(&w->pool->idle, &w->pool->lock);
    }
    qemu_mutex_unlock(&w->pool->lock);
}

/* Hand the worker its batch; it must be idle. */
static void worker_kick(Worker *w)
{
    qemu_mutex_lock(&w->pool->lock);
    w->busy = true;
    qemu_cond_signal(&w->wake);
    qemu_mutex_unlock(&w->pool->lock);
}

/* Let the worker finish its batch, then join it. */
static void worker_stop(Worker *w)
{
    qemu_mutex_lock(&w->pool->lock);
    w->quit = true;
    qemu_cond_signal(&w->wake);
    qemu_mutex_unlock(&w->pool->lock);
    qemu_thread_join(&w->thread);
    qemu_cond_destroy(&w->wake);
}

/* Save side */

/* Pages to compress, then the records the worker made of them. */
typedef struct PageBatch {
    const uint8_t *host[SAVE_BATCH_PAGES];
    ram_addr_t offset[SAVE_BATCH_PAGES];
    unsigned count;
    uint8_t *out;
    size_t out_len;
    RamCompressSent sent;
} PageBatch;

typedef struct SaveWorker {
    Worker w;
    PageBatch *work;        /* the worker's while busy, then its result */
    struct libdeflate_compressor *compressor;   /* its own, like page */
    uint8_t *page;
    unsigned incompressible;    /* pages in a row that did not compress */
} SaveWorker;

static struct {
    WorkerPool pool;
    SaveWorker *workers;
    int count;
    PageBatch *batches;     /* one per worker, and one filling */
    int batch_count;
    PageBatch *fill;        /* the migration thread's */
    size_t page_size;
} save;

/* Compress @page into a record at @out, or 0 if it goes plain. */
static size_t save_try_compress(SaveWorker *sw, uint8_t *out,
                                ram_addr_t offset)
{
    size_t len;

    if (sw->incompressible >= INCOMPRESSIBLE_RUN &&
        ++sw->incompressible % PROBE_INTERVAL) {
        return 0;
    }
    len = ram_compress_page_record(sw->compressor, out, offset, sw->page,
                                   save.page_size);
    if (len) {
        sw->incompressible = 0;
    } else if (sw->incompressible < INCOMPRESSIBLE_RUN) {
        sw->incompressible++;
    }
    return len;
}

static void save_run_batch(Worker *w)
{
    SaveWorker *sw = container_of(w, SaveWorker, w);
    PageBatch *batch = sw->work;
    RamCompressSent sent = {};
    uint8_t *out = batch->out;
    unsigned i;
    size_t len;

    for (i = 0; i < batch->count; i++) {
        memcpy(sw->page, batch->host[i], save.page_size);
        if (buffer_is_zero(sw->page, save.page_size)) {
            out += ram_compress_zero_record(out, batch->offset[i]);
            sent.zero_pages++;
            continue;
        }
        len = save_try_compress(sw, out, batch->offset[i]);
        if (!len) {
            out += ram_compress_plain_record(out, batch->offset[i], sw->page,
                                             save.page_size);
            sent.plain_pages++;
            trace_ram_compress_page_plain(batch->offset[i],
                                          sw->incompressible);
            continue;
        }
        out += len;
        sent.pages++;
        /* as the base counts it: the record without its page header */
        sent.compressed_bytes += len - RAM_COMPRESS_HEADER_BYTES;
    }
    sent.bytes = out - batch->out;
    batch->out_len = sent.bytes;
    batch->sent = sent;
}

/* Copy the records of a batch a worker finished to @f; empty it. */
static void save_collect(QEMUFile *f, PageBatch *batch, RamCompressSent *sent)
{
    qemu_put_buffer(f, batch->out, batch->out_len);
    sent->bytes += batch->sent.bytes;
    sent->pages += batch->sent.pages;
    sent->compressed_bytes += batch->sent.compressed_bytes;
    sent->zero_pages += batch->sent.zero_pages;
    sent->plain_pages += batch->sent.plain_pages;
    memset(&batch->sent, 0, sizeof(batch->sent));
    batch->out_len = 0;
    batch->count = 0;
}

/* The first idle worker, waiting for one if @wait; NULL if none. */
static SaveWorker *save_idle_worker(bool wait)
{
    SaveWorker *found = NULL;
    int i;

    qemu_mutex_lock(&save.pool.lock);
    for (;;) {
        for (i = 0; i < save.count && !found; i++) {
            if (!save.workers[i].w.busy) {
                found = &save.workers[i];
            }
        }
        if (found || !wait) {
            break;
        }
        qemu_cond_wait(&save.pool.idle, &save.pool.lock);
    }
    qemu_mutex_unlock(&save.pool.lock);
    return found;
}

/*
 * Hand the filled batch to the first idle worker (false if none is idle
 * and !@wait), then write the batch that worker finished: the worker
 * starts on its new batch before the stream may block us.
 */
static bool save_submit(QEMUFile *f, bool wait, RamCompressSent *sent)
{
    SaveWorker *sw = save_idle_worker(wait);
    PageBatch *done;

    if (!sw) {
        return false;
    }
    done = sw->work;
    sw->work = save.fill;
    worker_kick(&sw->w);
    save.fill = done;
    save_collect(f, done, sent);
    return true;
}

bool ram_compress_save_page(QEMUFile *f, const uint8_t *host,
                            ram_addr_t offset, bool wait,
                            RamCompressSent *sent)
{
    /* Without wait a full batch stays queued until a worker is free. */
    if (save.fill->count == SAVE_BATCH_PAGES && !save_submit(f, wait, sent)) {
        return false;
    }
    save.fill->host[save.fill->count] = host;
    save.fill->offset[save.fill->count] = offset;
    if (++save.fill->count == SAVE_BATCH_PAGES) {
        save_submit(f, wait, sent);
    }
    return true;
}

void ram_compress_save_flush(QEMUFile *f, RamCompressSent *sent)
{
    int i;

    if (save.fill->count) {
        save_submit(f, true, sent);
    }
    for (i = 0; i < save.count; i++) {
        worker_wait_idle(&save.workers[i].w);
        save_collect(f, save.workers[i].work, sent);
    }
    trace_ram_compress_save_flush(sent->pages, sent->plain_pages,
                                  sent->zero_pages, sent->bytes);
}

void ram_compress_save_cleanup(void)
{
    int i;

    for (i = 0; i < save.count; i++) {
        SaveWorker *sw = &save.workers[i];

        worker_stop(&sw->w);
        libdeflate_free_compressor(sw->compressor);
        g_free(sw->page);
    }
    for (i = 0; i < save.batch_count; i++) {
        g_free(save.batches[i].out);
    }
    if (save.workers) {
        pool_destroy(&save.pool);
    }
    g_free(save.batches);
    g_free(save.workers);
    memset(&save, 0, sizeof(save));
}

int ram_compress_save_setup(int threads, int level, size_t page_size)
{
    size_t record = ram_compress_record_max(page_size);
    int i;

    assert(!save.workers && threads > 0);
    pool_init(&save.pool);
    save.workers = g_new0(SaveWorker, threads);
    save.batch_count = threads + 1;
    save.batches = g_new0(PageBatch, save.batch_count);
    for (i = 0; i < save.batch_count; i++) {
        save.batches[i].out = g_malloc(SAVE_BATCH_PAGES * record);
    }
    save.page_size = page_size;
    save.fill = &save.batches[threads];
    for (i = 0; i < threads; i++) {
        SaveWorker *sw = &save.workers[i];

        sw->compressor = libdeflate_alloc_compressor(level);
        if (!sw->compressor) {
            error_report("Compression setup failed: no compressor for "
                         "level %d", level);
            ram_compress_save_cleanup();
            return -1;
        }
        sw->page = g_malloc(page_size);
        sw->work = &save.batches[i];
        worker_start(&sw->w, &save.pool, "compress", save_run_batch);
        save.count = i + 1;
    }
    trace_ram_compress_save_setup(threads, level);
    return 0;
}

/* Load side */

enum { LOAD_INFLATE, LOAD_ZERO, LOAD_COPY };

/* A record in a load batch; its data follows, padded to 8 bytes. */
typedef struct LoadRecord {
    void *host;
    uint32_t kind;
    uint32_t len;           /* bytes of data; the fill byte for LOAD_ZERO */
} LoadRecord;

typedef struct LoadBatch {
    uint8_t *buf;
    size_t len;
} LoadBatch;

typedef struct LoadWorker {
    Worker w;
    LoadBatch batches[2];
    LoadBatch *fill;        /* the incoming side's */
    LoadBatch *work;        /* the worker's while busy */
    struct libdeflate_decompressor *decompressor;  /* the worker's own */
} LoadWorker;

static struct {
    WorkerPool pool;
    LoadWorker *workers;
    int count;
    size_t page_size;
    size_t batch_bytes;
    bool check_errors;
    bool failing;           /* claimed by the first worker that fails */
    bool failed;            /* set once failure_* are written */
    bool failure_reported;
    const char *failure_why;
    void *failure_host;     /* the page that failed */
} load;

static size_t load_record_bytes(size_t data_len)
{
    return ROUND_UP(sizeof(LoadRecord) + data_len, 8);
}

static void load_fail(void *host, const char *why)
{
    if (qatomic_cmpxchg(&load.failing, false, true)) {
        return;
    }
    load.failure_why = why;
    load.failure_host = host;
    qatomic_store_release(&load.failed, true);
}

static void load_apply(LoadWorker *lw, LoadRecord *rec)
{
    const uint8_t *data = (const uint8_t *)(rec + 1);
    const char *why;

    switch (rec->kind) {
    case LOAD_INFLATE:
        why = ram_decompress_one(lw->decompressor, rec->host,
                                 load.page_size, data, rec->len);
        if (why && load.check_errors) {
            trace_ram_decompress_failed(rec->host, why);
            load_fail(rec->host, why);
        }
        break;
    case LOAD_ZERO:
        if (rec->len || !buffer_is_zero(rec->host, load.page_size)) {
            memset(rec->host, rec->len, load.page_size);
        }
        break;
    case LOAD_COPY:
        memcpy(rec->host, data, load.page_size);
        break;
    }
}

static void load_run_batch(Worker *w)
{
    LoadWorker *lw = container_of(w, LoadWorker, w);
    size_t pos = 0;

    while (pos < lw->work->len) {
        LoadRecord *rec = (LoadRecord *)(lw->work->buf + pos);

        pos += load_record_bytes(rec->kind == LOAD_ZERO ? 0 : rec->len);
        if (!qatomic_read(&load.failed)) {
            load_apply(lw, rec);
        }
    }
    lw->work->len = 0;
}

/* 0, or -EINVAL once a worker failed (reported once). */
static int load_status(void)
{
    if (!qatomic_load_acquire(&load.failed)) {
        return 0;
    }
    if (!load.failure_reported) {
        ram_addr_t offset;
        RAMBlock *block = qemu_ram_block_from_host(load.failure_host, false,
                                                   &offset);

        /* postcopy decodes into a bounce page, which no RAMBlock holds */
        if (block) {
            error_report("Compressed page cannot be loaded: %s "
                         "(RAMBlock %s, offset 0x" RAM_ADDR_FMT ")",
                         load.failure_why, block->idstr, offset);
        } else {
            error_report("Compressed page cannot be loaded: %s",
                         load.failure_why);
        }
        load.failure_reported = true;
    }
    return -EINVAL;
}

static LoadWorker *load_owner(void *host)
{
    return &load.workers[((uintptr_t)host / load.page_size) % load.count];
}

static void load_submit(LoadWorker *lw)
{
    LoadBatch *done = lw->work;

    worker_wait_idle(&lw->w);
    lw->work = lw->fill;
    lw->fill = done;
    worker_kick(&lw->w);
}

/* Room for a record with @data_len bytes of data in @host's batch. */
static LoadRecord *load_reserve(void *host, uint32_t kind, size_t data_len)
{
    LoadWorker *lw = load_owner(host);
    LoadRecord *rec;

    if (lw->fill->len + load_record_bytes(data_len) > load.batch_bytes) {
        load_submit(lw);
    }
    rec = (LoadRecord *)(lw->fill->buf + lw->fill->len);
    rec->host = host;
    rec->kind = kind;
    rec->len = data_len;
    return rec;
}

static void load_commit(LoadRecord *rec)
{
    LoadWorker *lw = load_owner(rec->host);

    lw->fill->len += load_record_bytes(rec->kind == LOAD_ZERO ? 0 : rec->len);
}

int ram_decompress_page(QEMUFile *f, void *host, int len)
{
    LoadRecord *rec;

    if (len < 0 || len > ram_compress_stream_max(load.page_size)) {
        error_report("Invalid compressed data length: %d", len);
        return -EINVAL;
    }
    rec = load_reserve(host, LOAD_INFLATE, len);
    if (qemu_get_buffer(f, (uint8_t *)(rec + 1), len) != len) {
        return qemu_file_get_error(f) ?: -EIO;
    }
    load_commit(rec);
    return load_status();
}

int ram_decompress_zero(void *host, uint8_t ch)
{
    LoadRecord *rec = load_reserve(host, LOAD_ZERO, 0);

    rec->len = ch;
    load_commit(rec);
    return load_status();
}

int ram_decompress_copy(QEMUFile *f, void *host)
{
    LoadRecord *rec = load_reserve(host, LOAD_COPY, load.page_size);

    if (qemu_get_buffer(f, (uint8_t *)(rec + 1), load.page_size) !=
        load.page_size) {
        return qemu_file_get_error(f) ?: -EIO;
    }
    load_commit(rec);
    return load_status();
}

int ram_decompress_barrier(void *host)
{
    LoadWorker *lw;

    if (!load.workers) {
        return 0;
    }
    lw = load_owner(host);
    if (lw->fill->len) {
        load_submit(lw);
    }
    worker_wait_idle(&lw->w);
    return load_status();
}

int ram_decompress_wait(void)
{
    int i;

    for (i = 0; i < load.count; i++) {
        if (load.workers[i].fill->len) {
            load_submit(&load.workers[i]);
        }
    }
    for (i = 0; i < load.count; i++) {
        worker_wait_idle(&load.workers[i].w);
    }
    return load_status();
}

void ram_decompress_load_cleanup(void)
{
    int i, j;

    for (i = 0; i < load.count; i++) {
        LoadWorker *lw = &load.workers[i];

        worker_stop(&lw->w);
        libdeflate_free_decompressor(lw->decompressor);
        for (j = 0; j < 2; j++) {
            g_free(lw->batches[j].buf);
        }
    }
    if (load.workers) {
        pool_destroy(&load.pool);
    }
    g_free(load.workers);
    memset(&load, 0, sizeof(load));
}

int ram_decompress_load_setup(int threads, size_t page_size,
                              bool check_errors)
{
    int i, j;

    assert(!load.workers && threads > 0);
    pool_init(&load.pool);
    load.workers = g_new0(LoadWorker, threads);
    load.page_size = page_size;
    load.batch_bytes = LOAD_BATCH_PAGES *
                       load_record_bytes(ram_compress_stream_max(page_size));
    load.check_errors = check_errors;
    for (i = 0; i < threads; i++) {
        LoadWorker *lw = &load.workers[i];

        lw->decompressor = libdeflate_alloc_decompressor();
        if (!lw->decompressor) {
            error_report("Decompression setup failed: no decompressor");
            ram_decompress_load_cleanup();
            return -1;
        }
        for (j = 0; j < 2; j++) {
            lw->batches[j].buf = g_malloc(load.batch_bytes);
        }
        lw->fill = &lw->batches[0];
        lw->work = &lw->batches[1];
        worker_start(&lw->w, &load.pool, "decompress", load_run_batch);
        load.count = i + 1;
    }
    trace_ram_decompress_load_setup(threads, check_errors);
    return 0;
}
