/*
 * blkio: the block I/O tool of Ferry's virtio-blk guest tests, built
 * static by ferry/blkio.py and appended to the x86_64 initramfs.
 *
 * Every 512-byte sector it writes carries a header (magic, the sector's
 * own number on the device, a seed naming the writer, a sequence number)
 * and a fixed 480-byte body, so that both the guest (here) and the host
 * (blkio.py, reading the image file) can tell where each sector belongs
 * and who wrote it last.
 *
 *   blkio write DEV OFF LEN SEED MODE   fill [OFF, OFF+LEN) with the
 *                                       pattern (seq 0); MODE: direct
 *                                       (O_DIRECT, then fsync), fsync
 *                                       (page cache, then fsync), osync
 *                                       (O_SYNC), nosync (page cache only:
 *                                       the script runs sync(1) after)
 *   blkio verify DEV OFF LEN SEED       read back with O_DIRECT and check
 *   blkio zero DEV OFF LEN              read back with O_DIRECT: all zero
 *   blkio zeroout DEV OFF LEN           the BLKZEROOUT ioctl
 *   blkio discard DEV OFF LEN           the BLKDISCARD ioctl
 *   blkio stream DEV OFF SLOTS SEED ID  the migration tests' endless writer
 *                                       (see stream() below)
 *
 * Every command prints one line saying ok or BAD (with the first bad
 * sector) and exits 0 or 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 512
#define HEADER 32
#define BODY (SECTOR - HEADER)
#define CHUNK (1 << 20)
#define SLOT 4096
#define MAGIC 0x314b4c4259524546ULL          /* "FERRYBLK1" less the 1 */
#define BOOT_MAGIC 0x544f4f4259524546ULL     /* "FERRYBOOT" */
#define ROUND 64                             /* stream: writes per round */

static uint8_t body[BODY];

/* The fixed body: xorshift64 from a constant (blkio.py's BODY). */
static void init_body(void)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < BODY; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body[i] = x >> 56;
    }
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = v >> (8 * i);
    }
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

/* LEN bytes of pattern for device offset OFF. */
static void fill(uint8_t *buf, uint64_t off, size_t len, uint64_t seed,
                 uint64_t seq)
{
    for (size_t i = 0; i < len; i += SECTOR) {
        put64(buf + i, MAGIC);
        put64(buf + i + 8, (off + i) / SECTOR);
        put64(buf + i + 16, seed);
        put64(buf + i + 24, seq);
        memcpy(buf + i + HEADER, body, BODY);
    }
}

/*
 * Byte offset of the first sector of BUF (read at OFF) that is not the
 * pattern, or -1.
 */
static int64_t check(const uint8_t *buf, uint64_t off, size_t len,
                     uint64_t seed, uint64_t seq)
{
    for (size_t i = 0; i < len; i += SECTOR) {
        const uint8_t *s = buf + i;
        if (get64(s) != MAGIC || get64(s + 8) != (off + i) / SECTOR
            || get64(s + 16) != seed || get64(s + 24) != seq
            || memcmp(s + HEADER, body, BODY)) {
            return off + i;
        }
    }
    return -1;
}

static int64_t check_zero(const uint8_t *buf, uint64_t off, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i]) {
            return off + (i & ~(uint64_t)(SECTOR - 1));
        }
    }
    return -1;
}

static void *xbuf(size_t len)
{
    void *p;
    if (posix_memalign(&p, 4096, len)) {
        perror("posix_memalign");
        exit(2);
    }
    return p;
}

static int xopen(const char *dev, int flags)
{
    int fd = open(dev, flags);
    if (fd < 0) {
        fprintf(stderr, "blkio: %s: %s\n", dev, strerror(errno));
        exit(2);
    }
    return fd;
}

static void xpwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    ssize_t n = pwrite(fd, buf, len, off);
    if (n != (ssize_t)len) {
        fprintf(stderr, "blkio: pwrite at %" PRIu64 ": %s\n", off,
                n < 0 ? strerror(errno) : "short");
        exit(2);
    }
}

static void xpread(int fd, void *buf, size_t len, uint64_t off)
{
    ssize_t n = pread(fd, buf, len, off);
    if (n != (ssize_t)len) {
        fprintf(stderr, "blkio: pread at %" PRIu64 ": %s\n", off,
                n < 0 ? strerror(errno) : "short");
        exit(2);
    }
}

static void xfsync(int fd)
{
    if (fsync(fd)) {
        perror("blkio: fsync");
        exit(2);
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmd_write(const char *dev, uint64_t off, uint64_t len,
                     uint64_t seed, const char *mode)
{
    int flags = O_WRONLY;
    if (!strcmp(mode, "direct")) {
        flags |= O_DIRECT;
    } else if (!strcmp(mode, "osync")) {
        flags |= O_SYNC;
    } else if (strcmp(mode, "fsync") && strcmp(mode, "nosync")) {
        fprintf(stderr, "blkio: unknown mode %s\n", mode);
        return 2;
    }
    int fd = xopen(dev, flags);
    uint8_t *buf = xbuf(CHUNK);
    double t0 = now();
    for (uint64_t done = 0; done < len; done += CHUNK) {
        size_t n = len - done < CHUNK ? len - done : CHUNK;
        fill(buf, off + done, n, seed, 0);
        xpwrite(fd, buf, n, off + done);
    }
    if (strcmp(mode, "nosync") && strcmp(mode, "osync")) {
        xfsync(fd);
    }
    close(fd);
    printf("WRITE %s %" PRIu64 " %" PRIu64 " %s ok %.2fs\n", dev, off, len,
           mode, now() - t0);
    return 0;
}

static int cmd_verify(const char *dev, uint64_t off, uint64_t len,
                      uint64_t seed, int zero)
{
    int fd = xopen(dev, O_RDONLY | O_DIRECT);
    uint8_t *buf = xbuf(CHUNK);
    int64_t bad = -1;
    double t0 = now();
    for (uint64_t done = 0; done < len && bad < 0; done += CHUNK) {
        size_t n = len - done < CHUNK ? len - done : CHUNK;
        xpread(fd, buf, n, off + done);
        bad = zero ? check_zero(buf, off + done, n)
                   : check(buf, off + done, n, seed, 0);
    }
    close(fd);
    if (bad >= 0) {
        printf("%s %s %" PRIu64 " %" PRIu64 " BAD at %" PRId64 "\n",
               zero ? "ZERO" : "VERIFY", dev, off, len, bad);
        return 1;
    }
    printf("%s %s %" PRIu64 " %" PRIu64 " ok %.2fs\n", zero ? "ZERO" : "VERIFY",
           dev, off, len, now() - t0);
    return 0;
}

static int cmd_range_ioctl(const char *dev, uint64_t off, uint64_t len,
                           int discard)
{
    int fd = xopen(dev, O_WRONLY);
    uint64_t range[2] = { off, len };
    int ret = ioctl(fd, discard ? BLKDISCARD : BLKZEROOUT, range);
    const char *name = discard ? "DISCARD" : "ZEROOUT";
    if (ret) {
        printf("%s %s %" PRIu64 " %" PRIu64 " BAD %s\n", name, dev, off, len,
               strerror(errno));
        return 1;
    }
    close(fd);
    printf("%s %s %" PRIu64 " %" PRIu64 " ok\n", name, dev, off, len);
    return 0;
}

/*
 * The endless writer of the migration tests, in [OFF, ...) of DEV:
 *
 *   OFF                 marker: BOOT_MAGIC, boot count
 *   OFF + 4 KiB         anchor: 1 MiB written once, at the first boot
 *   OFF + 4 KiB + 1 MiB SLOTS slots of 4 KiB; write number SEQ goes to
 *                       slot SEQ % SLOTS with seq SEQ in its headers
 *
 * At the first boot (no marker) it writes the anchor, then the marker;
 * at a later boot it counts the boot in the marker and checks what the
 * previous boot left: the anchor, and slots holding the SLOTS writes
 * before the last one that landed (RESUME line).  Then it writes, reads
 * back and checks each write, and every ROUND writes flushes, re-reads
 * the anchor and every slot written so far (before and after any
 * migration), and prints "IO ID ROUND ok|BAD seq=... boot=...".
 */
static _Noreturn void stream(const char *dev, uint64_t off, uint64_t slots,
                  uint64_t seed, const char *id)
{
    int fd = xopen(dev, O_RDWR | O_DIRECT);
    uint64_t anchor = off + SLOT, base = anchor + CHUNK;
    uint8_t *buf = xbuf(CHUNK), *slot = xbuf(SLOT);
    uint64_t boot, next = 0;

    xpread(fd, slot, SLOT, off);
    if (get64(slot) != BOOT_MAGIC || get64(slot + 16) != seed) {
        boot = 1;
        fill(buf, anchor, CHUNK, seed, ~0ULL);
        xpwrite(fd, buf, CHUNK, anchor);
        xfsync(fd);
    } else {
        boot = get64(slot + 8) + 1;
    }
    memset(slot, 0, SLOT);
    put64(slot, BOOT_MAGIC);
    put64(slot + 8, boot);
    put64(slot + 16, seed);
    xpwrite(fd, slot, SLOT, off);
    xfsync(fd);

    if (boot > 1) {
        /*
         * The slots hold the last min(n, SLOTS) writes of the n that
         * landed: find the newest, then check every slot against it.
         */
        uint64_t newest = 0, found = 0;
        int64_t bad = -1;
        for (uint64_t s = 0; s < slots; s++) {
            xpread(fd, slot, SLOT, base + s * SLOT);
            if (get64(slot) == MAGIC && get64(slot + 24) >= newest) {
                newest = get64(slot + 24);
                found = 1;
            }
        }
        xpread(fd, buf, CHUNK, anchor);
        bad = check(buf, anchor, CHUNK, seed, ~0ULL);
        for (uint64_t s = 0; found && bad < 0 && s < slots; s++) {
            uint64_t o = base + s * SLOT;
            xpread(fd, slot, SLOT, o);
            if (newest < slots && s > newest) {
                bad = check_zero(slot, o, SLOT);
            } else {
                bad = check(slot, o, SLOT, seed,
                            newest - (newest - s) % slots);
            }
        }
        printf("RESUME %s boot=%" PRIu64 " newest=%" PRId64 " %s",
               id, boot, found ? (int64_t)newest : -1, bad < 0 ? "ok" : "BAD");
        if (bad >= 0) {
            printf(" at %" PRId64, bad);
        }
        printf("\n");
        fflush(stdout);
        next = found ? newest + 1 : 0;
    }

    for (uint64_t round = 1;; round++) {
        int64_t bad = -1;
        for (int i = 0; i < ROUND && bad < 0; i++, next++) {
            uint64_t o = base + next % slots * SLOT;
            fill(slot, o, SLOT, seed, next);
            xpwrite(fd, slot, SLOT, o);
            memset(slot, 0, SLOT);
            xpread(fd, slot, SLOT, o);
            bad = check(slot, o, SLOT, seed, next);
        }
        xfsync(fd);
        if (bad < 0) {
            xpread(fd, buf, CHUNK, anchor);
            bad = check(buf, anchor, CHUNK, seed, ~0ULL);
        }
        /* Every slot written so far holds its newest write. */
        uint64_t last = next - 1, n = next < slots ? next : slots;
        for (uint64_t done = 0; bad < 0 && done < n * SLOT; done += CHUNK) {
            size_t len = n * SLOT - done < CHUNK ? n * SLOT - done : CHUNK;
            xpread(fd, buf, len, base + done);
            for (size_t i = 0; bad < 0 && i < len; i += SLOT) {
                uint64_t s = (done + i) / SLOT;
                bad = check(buf + i, base + done + i, SLOT, seed,
                            last - (last - s) % slots);
            }
        }
        printf("IO %s %" PRIu64 " %s seq=%" PRIu64 " boot=%" PRIu64,
               id, round, bad < 0 ? "ok" : "BAD", last, boot);
        if (bad >= 0) {
            printf(" at %" PRId64, bad);
        }
        printf("\n");
        fflush(stdout);
    }
}

static uint64_t num(const char *s)
{
    uint64_t v;
    char extra;
    if (sscanf(s, "%" SCNu64 "%c", &v, &extra) != 1) {
        fprintf(stderr, "blkio: bad number %s\n", s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    init_body();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 7 && !strcmp(argv[1], "write")) {
        return cmd_write(argv[2], num(argv[3]), num(argv[4]), num(argv[5]),
                         argv[6]);
    } else if (argc == 6 && !strcmp(argv[1], "verify")) {
        return cmd_verify(argv[2], num(argv[3]), num(argv[4]), num(argv[5]),
                          0);
    } else if (argc == 5 && !strcmp(argv[1], "zero")) {
        return cmd_verify(argv[2], num(argv[3]), num(argv[4]), 0, 1);
    } else if (argc == 5 && !strcmp(argv[1], "zeroout")) {
        return cmd_range_ioctl(argv[2], num(argv[3]), num(argv[4]), 0);
    } else if (argc == 5 && !strcmp(argv[1], "discard")) {
        return cmd_range_ioctl(argv[2], num(argv[3]), num(argv[4]), 1);
    } else if (argc == 7 && !strcmp(argv[1], "stream")) {
        stream(argv[2], num(argv[3]), num(argv[4]), num(argv[5]),
                      argv[6]);
    }
    fprintf(stderr, "usage: see the comment at the top of blkio.c\n");
    return 2;
}
