/*
 * LD_PRELOAD allocation counter for Ferry's tests.
 *
 * Counts every call to malloc, calloc, realloc and the aligned
 * allocators in a 64-bit counter kept in the file named by
 * $FERRY_MALLOC_COUNT (mapped shared), so that a test can read the count
 * of a running process at any moment.  Built by the test that uses it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t fallback_count;
static uint64_t *count = &fallback_count;

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

/* dlsym() may allocate before the real allocator is known: serve it here. */
static char early[4096];
static size_t early_used;
static int resolving;

static void *early_alloc(size_t size)
{
    void *p = early + early_used;

    early_used += (size + 15) & ~(size_t)15;
    return early_used <= sizeof(early) ? p : NULL;
}

static int is_early(void *p)
{
    return (char *)p >= early && (char *)p < early + sizeof(early);
}

static void resolve(void)
{
    if (real_free || resolving) {
        return;
    }
    resolving = 1;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_free = dlsym(RTLD_NEXT, "free");
    resolving = 0;
}

static void __attribute__((constructor)) malloc_count_init(void)
{
    const char *path = getenv("FERRY_MALLOC_COUNT");
    int fd;

    resolve();
    if (!path) {
        return;
    }
    fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd >= 0 && ftruncate(fd, sizeof(uint64_t)) == 0) {
        void *map = mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE,
                         MAP_SHARED, fd, 0);
        if (map != MAP_FAILED) {
            count = map;
        }
    }
    if (fd >= 0) {
        close(fd);
    }
}

static void counted(void)
{
    __atomic_fetch_add(count, 1, __ATOMIC_RELAXED);
}

void *malloc(size_t size)
{
    resolve();
    if (!real_malloc) {
        return early_alloc(size);
    }
    counted();
    return real_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    resolve();
    if (!real_calloc) {
        return early_alloc(n * size);   /* early[] is zero */
    }
    counted();
    return real_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    resolve();
    counted();
    if (is_early(p)) {
        size_t left = early + sizeof(early) - (char *)p;
        void *q = real_malloc(size);

        if (q) {
            memcpy(q, p, size < left ? size : left);
        }
        return q;
    }
    return real_realloc(p, size);
}

void free(void *p)
{
    if (is_early(p)) {
        return;
    }
    resolve();
    real_free(p);
}

int posix_memalign(void **p, size_t align, size_t size)
{
    resolve();
    counted();
    return real_posix_memalign(p, align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
    resolve();
    counted();
    return real_aligned_alloc(align, size);
}

void *memalign(size_t align, size_t size)
{
    resolve();
    counted();
    return real_memalign(align, size);
}
