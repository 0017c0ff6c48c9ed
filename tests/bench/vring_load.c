/*
 * vring_load: the guest side of tests/bench/vring, a small static load
 * generator for a block device (fio drags too many shared libraries
 * into a busybox initramfs).
 *
 *     vring_load DEVICE read|write DEPTH SECONDS LABEL
 *
 * Random 4 KiB reads or writes at 4 KiB-aligned offsets over the whole
 * DEVICE, opened O_DIRECT, through Linux native AIO (io_setup, io_submit,
 * io_getevents as raw syscalls: no libaio), keeping DEPTH requests in
 * flight for SECONDS.  On the console it prints
 *
 *     VRING-START LABEL
 *     VRING-STOP LABEL n=<requests> us=<microseconds> errors=<count>
 *
 * The start line comes 200 ms before the first request and the stop
 * line after the last one completed (no request is left in flight), so
 * a host that samples the IOThread's CPU time when it sees each line
 * covers exactly the requests counted in n.
 *
 * Copyright (c) 2026 Ferry developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define MAX_DEPTH 256

static int io_setup(unsigned nr, aio_context_t *ctx)
{
    return syscall(SYS_io_setup, nr, ctx);
}

static int io_submit(aio_context_t ctx, long n, struct iocb **iocbs)
{
    return syscall(SYS_io_submit, ctx, n, iocbs);
}

static int io_getevents(aio_context_t ctx, long min, long max,
                        struct io_event *events)
{
    return syscall(SYS_io_getevents, ctx, min, max, events, NULL);
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static void die(const char *what)
{
    fprintf(stderr, "vring_load: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    static struct iocb cbs[MAX_DEPTH];
    static struct iocb *list[MAX_DEPTH];
    static struct io_event events[MAX_DEPTH];
    uint64_t size, blocks, count = 0, errors = 0, t0, t1, end;
    aio_context_t ctx = 0;
    int fd, depth, writing, inflight = 0, i, n;
    char *bufs;

    if (argc != 6) {
        fprintf(stderr, "usage: vring_load DEVICE read|write DEPTH SECONDS "
                "LABEL\n");
        return 2;
    }
    writing = !strcmp(argv[2], "write");
    depth = atoi(argv[3]);
    if (depth < 1 || depth > MAX_DEPTH) {
        fprintf(stderr, "vring_load: DEPTH must be 1..%d\n", MAX_DEPTH);
        return 2;
    }
    fd = open(argv[1], (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        die(argv[1]);
    }
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
        die("BLKGETSIZE64");
    }
    blocks = size / BLOCK;
    if (!blocks) {
        fprintf(stderr, "vring_load: %s is empty\n", argv[1]);
        return 1;
    }
    if (posix_memalign((void **)&bufs, BLOCK, (size_t)depth * BLOCK)) {
        die("posix_memalign");
    }
    memset(bufs, 0xa5, (size_t)depth * BLOCK);
    if (io_setup(depth, &ctx) < 0) {
        die("io_setup");
    }
    rng_state = now_ns() | 1;

    printf("VRING-START %s\n", argv[5]);
    fflush(stdout);
    usleep(200000);

    t0 = now_ns();
    end = t0 + (uint64_t)(atof(argv[4]) * 1e9);
    for (i = 0; i < depth; i++) {
        cbs[i].aio_fildes = fd;
        cbs[i].aio_lio_opcode = writing ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
        cbs[i].aio_buf = (uint64_t)(uintptr_t)(bufs + (size_t)i * BLOCK);
        cbs[i].aio_nbytes = BLOCK;
        cbs[i].aio_offset = (rng() % blocks) * BLOCK;
        cbs[i].aio_data = i;
        list[i] = &cbs[i];
    }
    if (io_submit(ctx, depth, list) != depth) {
        die("io_submit");
    }
    inflight = depth;
    while (inflight) {
        int again, resubmit = 0;

        n = io_getevents(ctx, 1, depth, events);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("io_getevents");
        }
        again = now_ns() < end;
        for (i = 0; i < n; i++) {
            struct iocb *cb = &cbs[events[i].data];

            count++;
            if (events[i].res != BLOCK) {
                errors++;
            }
            if (again) {
                cb->aio_offset = (rng() % blocks) * BLOCK;
                list[resubmit++] = cb;
            }
        }
        inflight -= n;
        if (resubmit) {
            if (io_submit(ctx, resubmit, list) != resubmit) {
                die("io_submit");
            }
            inflight += resubmit;
        }
    }
    t1 = now_ns();
    printf("VRING-STOP %s n=%llu us=%llu errors=%llu\n", argv[5],
           (unsigned long long)count, (unsigned long long)((t1 - t0) / 1000),
           (unsigned long long)errors);
    fflush(stdout);
    return 0;
}
