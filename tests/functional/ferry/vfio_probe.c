/*
 * vfio-probe: drive one VFIO device's migration uAPI (v2) from inside
 * Ferry's x86_64-vfio test guest, the way a VMM would, and print what
 * the kernel answers, one "key=value" line per step.
 *
 *     vfio-probe GROUP-NUMBER DEVICE-NAME
 *
 * It opens /dev/vfio/vfio and /dev/vfio/GROUP, sets the type1 IOMMU,
 * gets the device, probes VFIO_DEVICE_FEATURE_MIGRATION, asks
 * MIG_DATA_SIZE, walks RUNNING -> PRE_COPY (PRECOPY_INFO, read the
 * pre-copy data to its end) -> STOP_COPY (read to the end) -> STOP ->
 * RUNNING, and says how each read ended (0 or an errno).  Built
 * statically by tests/guests/build; the guest has no libc of its own.
 *
 * The base's <linux/vfio.h> and Debian 12's linux-libc-dev (6.1) predate
 * the PRE_COPY uAPI, so its definitions are repeated here from the
 * kernel's include/uapi/linux/vfio.h (Linux 6.2+).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/vfio.h>

#ifndef VFIO_MIGRATION_PRE_COPY
#define VFIO_MIGRATION_PRE_COPY (1 << 2)
#endif
#ifndef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
#define VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9
struct vfio_device_feature_mig_data_size {
    __aligned_u64 stop_copy_length;
};
#endif
#define STATE_PRE_COPY 6        /* VFIO_DEVICE_STATE_PRE_COPY */
#define STATE_PRE_COPY_P2P 7
#ifndef VFIO_MIG_GET_PRECOPY_INFO
struct vfio_precopy_info {
    __u32 argsz;
    __u32 flags;
    __aligned_u64 initial_bytes;
    __aligned_u64 dirty_bytes;
};
#define VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)
#endif

static int device_fd = -1;

static void die(const char *what)
{
    printf("error=%s errno=%d (%s)\n", what, errno, strerror(errno));
    exit(1);
}

/* VFIO_DEVICE_FEATURE with FLAGS and PAYLOAD (SIZE bytes, in/out). */
static int feature(uint32_t flags, void *payload, size_t size)
{
    char buf[sizeof(struct vfio_device_feature) + 64]
        __attribute__((aligned(8)));
    struct vfio_device_feature *f = (struct vfio_device_feature *)buf;
    int ret;

    memset(buf, 0, sizeof(buf));
    f->argsz = sizeof(*f) + size;
    f->flags = flags;
    memcpy(f->data, payload, size);
    ret = ioctl(device_fd, VFIO_DEVICE_FEATURE, f);
    memcpy(payload, f->data, size);
    return ret;
}

/* Move the device to STATE; the data fd it returns, or -1. */
static int set_state(uint32_t state, const char *name)
{
    struct vfio_device_feature_mig_state st = { .device_state = state };

    if (feature(VFIO_DEVICE_FEATURE_SET |
                VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &st, sizeof(st))) {
        die(name);
    }
    printf("state=%s data_fd=%s\n", name, st.data_fd >= 0 ? "yes" : "no");
    return st.data_fd;
}

static uint32_t get_state(void)
{
    struct vfio_device_feature_mig_state st = { 0 };

    if (feature(VFIO_DEVICE_FEATURE_GET |
                VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &st, sizeof(st))) {
        die("get-state");
    }
    return st.device_state;
}

/* Read FD to its end; print the byte count and how the end came. */
static void drain(int fd, const char *phase)
{
    char buf[4096];
    long total = 0;
    ssize_t n;

    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        total += n;
    }
    printf("%s_bytes=%ld %s_end=%s\n", phase, total, phase,
           n == 0 ? "eof" : strerror(errno));
}

int main(int argc, char **argv)
{
    struct vfio_group_status status = { .argsz = sizeof(status) };
    struct vfio_device_feature_migration mig = { 0 };
    struct vfio_device_feature_mig_data_size size = { 0 };
    struct vfio_precopy_info info = { .argsz = sizeof(info) };
    char path[64];
    int container, group, fd = -1, new_fd;

    if (argc != 3) {
        fprintf(stderr, "usage: vfio-probe GROUP DEVICE\n");
        return 2;
    }
    container = open("/dev/vfio/vfio", O_RDWR);
    if (container < 0) {
        die("open-container");
    }
    printf("api_version=%d type1=%d\n",
           ioctl(container, VFIO_GET_API_VERSION),
           ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU));
    snprintf(path, sizeof(path), "/dev/vfio/%s", argv[1]);
    group = open(path, O_RDWR);
    if (group < 0) {
        die("open-group");
    }
    if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) ||
        !(status.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        die("group-not-viable");
    }
    if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) ||
        ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) {
        die("set-iommu");
    }
    device_fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
    if (device_fd < 0) {
        die("get-device-fd");
    }

    if (feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION,
                &mig, sizeof(mig))) {
        die("feature-migration");
    }
    printf("migration_flags=0x%llx%s%s%s\n", (unsigned long long)mig.flags,
           mig.flags & VFIO_MIGRATION_STOP_COPY ? " STOP_COPY" : "",
           mig.flags & VFIO_MIGRATION_P2P ? " P2P" : "",
           mig.flags & VFIO_MIGRATION_PRE_COPY ? " PRE_COPY" : "");
    if (feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
                &size, sizeof(size))) {
        die("mig-data-size");
    }
    printf("stop_copy_length=%llu\n",
           (unsigned long long)size.stop_copy_length);
    printf("initial_state=%u\n", get_state());

    if (mig.flags & VFIO_MIGRATION_PRE_COPY) {
        fd = set_state(STATE_PRE_COPY, "PRE_COPY");
        if (ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info)) {
            die("precopy-info");
        }
        printf("precopy_initial_bytes=%llu precopy_dirty_bytes=%llu\n",
               (unsigned long long)info.initial_bytes,
               (unsigned long long)info.dirty_bytes);
        drain(fd, "precopy");
        if (ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &info) == 0) {
            printf("precopy_after_initial_bytes=%llu\n",
                   (unsigned long long)info.initial_bytes);
        }
    }
    /*
     * From PRE_COPY the device keeps the pre-copy data fd for its
     * stop-copy data and returns no new one (the uAPI's rule).
     */
    new_fd = set_state(VFIO_DEVICE_STATE_STOP_COPY, "STOP_COPY");
    if (new_fd >= 0) {
        if (fd >= 0) {
            close(fd);
        }
        fd = new_fd;
    }
    drain(fd, "stopcopy");
    close(fd);
    set_state(VFIO_DEVICE_STATE_STOP, "STOP");
    set_state(VFIO_DEVICE_STATE_RUNNING, "RUNNING");
    printf("final_state=%u\n", get_state());
    printf("probe=ok\n");
    return 0;
}
