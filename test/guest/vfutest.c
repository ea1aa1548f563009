/*
 * vfutest: the guest side of the QEMU tests (test/qemu-*.test.ts), a static
 * program in the test initramfs.  It reads and writes PCI BARs through sysfs
 * without a driver, and writes and verifies a pattern on a block device with
 * O_DIRECT so the data goes through the device, not the page cache.
 *
 *   vfutest peek FILE OFF WIDTH        print the WIDTH-byte register at OFF
 *   vfutest poke FILE OFF WIDTH VALUE  write it
 *   vfutest write DEV OFF LEN SEED     write the pattern (OFF, LEN: 4 KiB multiples)
 *   vfutest verify DEV OFF LEN SEED    read it back and compare
 *   vfutest zeros DEV OFF LEN          read and check that it is all zeros
 *   vfutest zeroout DEV OFF LEN        BLKZEROOUT (NVMe Write Zeroes when offered)
 *   vfutest discard DEV OFF LEN        BLKDISCARD (NVMe Dataset Management, deallocate)
 *   vfutest size DEV                   print the device size in bytes
 *
 * FILE is a /sys/bus/pci/devices/.../resourceN: memory BARs are mmapped,
 * I/O BARs (which sysfs cannot map) are read and written with pread/pwrite.
 * The pattern's 32-bit word at byte offset 4*i of the device is
 * (i * 0x9E3779B1) ^ ((SEED + 1) * 0x85EBCA77), little-endian, so a block
 * that lands at the wrong place is caught as surely as a wrong byte; the
 * host checks the image file with the same formula (test/helpers/qemu-guest.ts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHUNK (256 * 1024) /* several pages per command: PRP lists */

static uint64_t num(const char *s) {
    char *end;
    errno = 0;
    uint64_t v = strtoull(s, &end, 0);
    if (errno || *end) {
        fprintf(stderr, "vfutest: bad number %s\n", s);
        exit(2);
    }
    return v;
}

static uint32_t word(uint64_t byte_off, uint32_t seed) {
    uint32_t i = (uint32_t)(byte_off / 4);
    return (i * 0x9E3779B1u) ^ ((seed + 1u) * 0x85EBCA77u);
}

static int reg(int argc, char **argv, int write) {
    if (argc != (write ? 6 : 5)) return 2;
    uint64_t off = num(argv[3]), width = num(argv[4]), val = write ? num(argv[5]) : 0;
    if (width != 1 && width != 2 && width != 4 && width != 8) return 2;
    int fd = open(argv[2], O_RDWR | O_SYNC);
    if (fd < 0) { perror(argv[2]); return 1; }
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t base = off & ~(uint64_t)(pg - 1);
    volatile uint8_t *m = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base);
    if (m != MAP_FAILED) {
        volatile uint8_t *p = m + (off - base);
        if (write) {
            switch (width) {
            case 1: *(volatile uint8_t *)p = (uint8_t)val; break;
            case 2: *(volatile uint16_t *)p = (uint16_t)val; break;
            case 4: *(volatile uint32_t *)p = (uint32_t)val; break;
            default: *(volatile uint64_t *)p = val;
            }
        } else {
            switch (width) {
            case 1: val = *(volatile uint8_t *)p; break;
            case 2: val = *(volatile uint16_t *)p; break;
            case 4: val = *(volatile uint32_t *)p; break;
            default: val = *(volatile uint64_t *)p;
            }
        }
        munmap((void *)m, pg);
    } else {
        /* an I/O BAR: sysfs does port I/O of the access's width */
        ssize_t n = write ? pwrite(fd, &val, width, (off_t)off) : pread(fd, &val, width, (off_t)off);
        if (n != (ssize_t)width) { perror("port access"); return 1; }
    }
    close(fd);
    if (!write) printf("0x%llx\n", (unsigned long long)val);
    return 0;
}

/* mode: 1 write the pattern, 0 verify it, -1 verify zeros */
static int blk(int argc, char **argv, int write) {
    if (argc != (write < 0 ? 5 : 6)) return 2;
    uint64_t off = num(argv[3]), len = num(argv[4]);
    uint32_t seed = write < 0 ? 0 : (uint32_t)num(argv[5]);
    if (off % 4096 || len % 4096) return 2;
    int fd = open(argv[2], (write > 0 ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) { perror(argv[2]); return 1; }
    uint32_t *buf;
    if (posix_memalign((void **)&buf, 4096, CHUNK)) return 1;
    for (uint64_t done = 0; done < len;) {
        size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
        uint64_t at = off + done;
        if (write > 0) {
            for (size_t k = 0; k < n / 4; k++) buf[k] = word(at + 4 * k, seed);
            if (pwrite(fd, buf, n, (off_t)at) != (ssize_t)n) { perror("pwrite"); return 1; }
        } else {
            memset(buf, 0xa5, n);
            if (pread(fd, buf, n, (off_t)at) != (ssize_t)n) { perror("pread"); return 1; }
            for (size_t k = 0; k < n / 4; k++) {
                uint32_t want = write < 0 ? 0 : word(at + 4 * k, seed);
                if (buf[k] != want) {
                    printf("vfutest: mismatch at byte %llu: 0x%08x, expected 0x%08x\n",
                           (unsigned long long)(at + 4 * k), buf[k], want);
                    return 1;
                }
            }
        }
        done += n;
    }
    if (write > 0 && fsync(fd)) { perror("fsync"); return 1; }
    close(fd);
    if (write < 0) printf("vfutest: %llu bytes at %llu are zeros\n", (unsigned long long)len, (unsigned long long)off);
    else printf("vfutest: %s %llu bytes at %llu seed %u\n", write ? "wrote" : "verified",
                (unsigned long long)len, (unsigned long long)off, seed);
    return 0;
}

static int range_ioctl(int argc, char **argv, unsigned long req, const char *what) {
    if (argc != 5) return 2;
    uint64_t r[2] = { num(argv[3]), num(argv[4]) };
    int fd = open(argv[2], O_WRONLY);
    if (fd < 0) { perror(argv[2]); return 1; }
    if (ioctl(fd, req, r)) { perror(what); return 1; }
    if (fsync(fd)) { perror("fsync"); return 1; }
    close(fd);
    printf("vfutest: %s %llu bytes at %llu\n", what, (unsigned long long)r[1], (unsigned long long)r[0]);
    return 0;
}

int main(int argc, char **argv) {
    int rc = 2;
    if (argc >= 2 && !strcmp(argv[1], "peek")) rc = reg(argc, argv, 0);
    else if (argc >= 2 && !strcmp(argv[1], "poke")) rc = reg(argc, argv, 1);
    else if (argc >= 2 && !strcmp(argv[1], "write")) rc = blk(argc, argv, 1);
    else if (argc >= 2 && !strcmp(argv[1], "verify")) rc = blk(argc, argv, 0);
    else if (argc >= 2 && !strcmp(argv[1], "zeros")) rc = blk(argc, argv, -1);
    else if (argc >= 2 && !strcmp(argv[1], "zeroout")) rc = range_ioctl(argc, argv, BLKZEROOUT, "zeroout");
    else if (argc >= 2 && !strcmp(argv[1], "discard")) rc = range_ioctl(argc, argv, BLKDISCARD, "discard");
    else if (argc == 3 && !strcmp(argv[1], "size")) {
        int fd = open(argv[2], O_RDONLY);
        uint64_t sz;
        if (fd < 0 || ioctl(fd, BLKGETSIZE64, &sz)) { perror(argv[2]); return 1; }
        printf("%llu\n", (unsigned long long)sz);
        rc = 0;
    }
    if (rc == 2) fprintf(stderr, "usage: vfutest peek|poke|write|verify|zeros|zeroout|discard|size ... (see the source)\n");
    return rc;
}
