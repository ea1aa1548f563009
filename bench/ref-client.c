/*
 * ref-client: a small vfio-user client in plain C (libc only), the baseline
 * the benchmarks hold our TypeScript client and server to.  Written from the
 * protocol specification; it shares no code with any other implementation.
 *
 *   ref-client latency  SOCK REGION OFFSET COUNT ITER   REGION_READ round trips
 *   ref-client migread  SOCK CHUNK [precopy]            read the v2 state stream
 *   ref-client migwrite SOCK CHUNK BYTES                write a state stream
 *
 * Each mode prints one line of key=value pairs.  Requests go out with one
 * sendmsg (header and payload gathered); replies are read through one
 * buffer, as much as the socket holds per recv, so a small reply costs one
 * system call.  Blocking socket, one request in flight at a time: what a VMM
 * does for these commands.
 *
 * migwrite sends the pattern `vfu serve bigstate` generates (xorshift32 from
 * seed 1, little-endian words), so a bigstate destination of BYTES bytes
 * accepts it and logs the same CRC-32 as a source would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum {
    CMD_VERSION = 1,
    CMD_REGION_READ = 9,
    CMD_DEVICE_FEATURE = 16,
    CMD_MIG_DATA_READ = 17,
    CMD_MIG_DATA_WRITE = 18,
};
#define FLAG_REPLY 0x1
#define FLAG_ERROR 0x20
#define FEATURE_SET (1u << 17)
#define FEATURE_MIG_DEVICE_STATE 2
enum { ST_STOP = 1, ST_RUNNING = 2, ST_STOP_COPY = 3, ST_RESUMING = 4, ST_PRE_COPY = 6 };

struct hdr {
    uint16_t id, cmd;
    uint32_t size, flags, err;
};

static int sock = -1;
static uint16_t next_id;
static uint64_t messages; /* requests sent */
/* receive buffer: [start, end) holds bytes not yet consumed */
static uint8_t *rbuf;
static size_t rcap, rstart, rend;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ref-client: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void connect_to(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path)) die("socket path too long");
    strcpy(a.sun_path, path);
    sock = socket(AF_UNIX, SOCK_STREAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof(a)) < 0) die("connect %s: %s", path, strerror(errno));
}

/* Sends header + a + b in one sendmsg (looping over partial writes). */
static uint16_t send_msg(uint16_t cmd, const void *a, size_t alen, const void *b, size_t blen) {
    struct hdr h = {.id = next_id++, .cmd = cmd, .size = (uint32_t)(sizeof(h) + alen + blen)};
    struct iovec iov[3] = {{&h, sizeof(h)}, {(void *)a, alen}, {(void *)b, blen}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 3};
    size_t left = h.size;
    while (left > 0) {
        ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("sendmsg: %s", strerror(errno));
        }
        left -= (size_t)n;
        while (n > 0 && m.msg_iovlen > 0) { /* skip what went out */
            size_t k = (size_t)n < m.msg_iov[0].iov_len ? (size_t)n : m.msg_iov[0].iov_len;
            m.msg_iov[0].iov_base = (uint8_t *)m.msg_iov[0].iov_base + k;
            m.msg_iov[0].iov_len -= k;
            n -= (ssize_t)k;
            if (m.msg_iov[0].iov_len == 0) {
                m.msg_iov++;
                m.msg_iovlen--;
            }
        }
    }
    messages++;
    return h.id;
}

/* Makes at least `n` unconsumed bytes available at rbuf + rstart. */
static void fill(size_t n) {
    if (rend - rstart >= n) return;
    if (rstart == rend) rstart = rend = 0; /* nothing live: rewind for free */
    if (rcap - rstart < n) { /* move the live bytes down, grow if needed */
        memmove(rbuf, rbuf + rstart, rend - rstart);
        rend -= rstart;
        rstart = 0;
        if (rcap < n) {
            rcap = n + 65536;
            if (!(rbuf = realloc(rbuf, rcap))) die("out of memory");
        }
    }
    while (rend - rstart < n) {
        ssize_t r = recv(sock, rbuf + rend, rcap - rend, 0);
        if (r == 0) die("server closed the connection");
        if (r < 0) {
            if (errno == EINTR) continue;
            die("recv: %s", strerror(errno));
        }
        rend += (size_t)r;
    }
}

/* Waits for the reply to request `id`; returns a pointer to its body (valid
 * until the next call) and its length.  An error reply is fatal. */
static const uint8_t *recv_reply(uint16_t id, uint16_t cmd, size_t *len) {
    struct hdr h;
    fill(sizeof(h));
    memcpy(&h, rbuf + rstart, sizeof(h));
    if (h.size < sizeof(h)) die("bad reply size %u", h.size);
    if (h.id != id || h.cmd != cmd || (h.flags & 0xf) != FLAG_REPLY) die("unexpected message id %u cmd %u", h.id, h.cmd);
    if (h.flags & FLAG_ERROR) die("command %u failed: %s", cmd, strerror((int)h.err));
    fill(h.size);
    const uint8_t *body = rbuf + rstart + sizeof(h);
    rstart += h.size;
    *len = h.size - sizeof(h);
    return body;
}

static void version(uint32_t max_xfer) {
    char json[160];
    uint8_t p[4 + sizeof(json)];
    int n = snprintf(json, sizeof(json), "{\"capabilities\":{\"max_msg_fds\":1,\"max_data_xfer_size\":%u}}", max_xfer);
    uint16_t major = 0, minor = 2;
    memcpy(p, &major, 2);
    memcpy(p + 2, &minor, 2);
    memcpy(p + 4, json, (size_t)n + 1); /* with its NUL */
    size_t len;
    recv_reply(send_msg(CMD_VERSION, p, 4 + (size_t)n + 1, NULL, 0), CMD_VERSION, &len);
}

static void set_state(uint32_t state) {
    uint32_t p[4] = {16, FEATURE_MIG_DEVICE_STATE | FEATURE_SET, state, (uint32_t)-1};
    size_t len;
    recv_reply(send_msg(CMD_DEVICE_FEATURE, p, sizeof(p), NULL, 0), CMD_DEVICE_FEATURE, &len);
}

/* CPU time (user + system) this process has used, in ms. */
static double cpu_ms(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
}

/* Peak resident set of this process, from /proc. */
static long hwm_kib(void) {
    char line[256];
    long v = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmHWM: %ld", &v) == 1) break;
    fclose(f);
    return v;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int latency(int argc, char **argv) {
    if (argc != 7) die("usage: latency SOCK REGION OFFSET COUNT ITER");
    uint32_t region = (uint32_t)strtoul(argv[3], NULL, 0);
    uint64_t offset = strtoull(argv[4], NULL, 0);
    uint32_t count = (uint32_t)strtoul(argv[5], NULL, 0);
    long iter = strtol(argv[6], NULL, 0), warm = iter / 10 < 1000 ? iter / 10 : 1000;
    double *t = malloc(sizeof(double) * (size_t)iter), sum = 0;
    uint8_t req[16];
    connect_to(argv[2]);
    version(1 << 20);
    memcpy(req, &offset, 8);
    memcpy(req + 8, &region, 4);
    memcpy(req + 12, &count, 4);
    for (long i = -warm; i < iter; i++) {
        size_t len;
        double t0 = now();
        recv_reply(send_msg(CMD_REGION_READ, req, sizeof(req), NULL, 0), CMD_REGION_READ, &len);
        double dt = (now() - t0) * 1e6;
        if (len != 16 + count) die("REGION_READ reply of %zu bytes", len);
        if (i >= 0) t[i] = dt, sum += dt;
    }
    qsort(t, (size_t)iter, sizeof(double), cmp_double);
    printf("mode=latency iter=%ld p50_us=%.3f p99_us=%.3f mean_us=%.3f\n", iter, t[iter / 2], t[iter * 99 / 100], sum / iter);
    return 0;
}

static int migread(int argc, char **argv) {
    if (argc < 4) die("usage: migread SOCK CHUNK [precopy]");
    uint32_t chunk = (uint32_t)strtoul(argv[3], NULL, 0);
    int precopy = argc > 4 && strcmp(argv[4], "precopy") == 0;
    uint64_t bytes = 0, pre = 0;
    uint32_t req[2] = {8 + chunk, chunk};
    connect_to(argv[2]);
    version(chunk > (1u << 20) ? chunk : 1u << 20);
    uint64_t msgs0 = messages;
    double c0 = cpu_ms(), t0 = now();
    for (int phase = precopy ? 0 : 1; phase < 2; phase++) {
        set_state(phase == 0 ? ST_PRE_COPY : ST_STOP_COPY);
        for (;;) { /* a short read ends the phase */
            size_t len;
            const uint8_t *p = recv_reply(send_msg(CMD_MIG_DATA_READ, req, sizeof(req), NULL, 0), CMD_MIG_DATA_READ, &len);
            uint32_t size;
            if (len < 8) die("short MIG_DATA_READ reply");
            memcpy(&size, p + 4, 4);
            if (size > chunk || len < 8 + size) die("MIG_DATA_READ reply of %u bytes", size);
            bytes += size;
            if (phase == 0) pre += size;
            if (size < chunk) break;
        }
    }
    double secs = now() - t0, cpu = cpu_ms() - c0;
    uint64_t msgs = messages - msgs0;
    set_state(ST_RUNNING); /* leave the device reusable */
    printf("mode=migread chunk=%u bytes=%llu precopy_bytes=%llu seconds=%.6f gbps=%.3f msgs=%llu cpu_ms=%.1f hwm_kib=%ld\n", chunk,
           (unsigned long long)bytes, (unsigned long long)pre, secs, bytes / secs / 1e9, (unsigned long long)msgs, cpu, hwm_kib());
    return 0;
}

static int migwrite(int argc, char **argv) {
    if (argc != 5) die("usage: migwrite SOCK CHUNK BYTES");
    uint32_t chunk = (uint32_t)strtoul(argv[3], NULL, 0);
    size_t total = strtoull(argv[4], NULL, 0);
    uint8_t *data = malloc(total + 4);
    if (!data) die("out of memory");
    uint32_t x = 1; /* bigstate's xorshift32 fill, seed 1 */
    for (size_t i = 0; i + 4 <= total; i += 4) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        memcpy(data + i, &x, 4);
    }
    for (size_t i = total & ~(size_t)3; i < total; i++) data[i] = (uint8_t)i;
    connect_to(argv[2]);
    version(chunk > (1u << 20) ? chunk : 1u << 20);
    set_state(ST_RESUMING);
    uint64_t msgs0 = messages;
    double c0 = cpu_ms(), t0 = now();
    for (size_t at = 0; at < total; at += chunk) {
        uint32_t n = (uint32_t)(total - at < chunk ? total - at : chunk);
        uint32_t req[2] = {8 + n, n};
        size_t len;
        recv_reply(send_msg(CMD_MIG_DATA_WRITE, req, sizeof(req), data + at, n), CMD_MIG_DATA_WRITE, &len);
    }
    double secs = now() - t0, cpu = cpu_ms() - c0;
    uint64_t msgs = messages - msgs0;
    double s0 = now();
    set_state(ST_STOP); /* the device checks what it received */
    double stop = now() - s0;
    set_state(ST_RUNNING);
    printf("mode=migwrite chunk=%u bytes=%zu seconds=%.6f gbps=%.3f msgs=%llu cpu_ms=%.1f stop_ms=%.3f hwm_kib=%ld\n", chunk, total,
           secs, total / secs / 1e9, (unsigned long long)msgs, cpu, stop * 1e3, hwm_kib());
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) die("usage: ref-client latency|migread|migwrite SOCK ...");
    rcap = 1 << 16;
    if (!(rbuf = malloc(rcap))) die("out of memory");
    if (strcmp(argv[1], "latency") == 0) return latency(argc, argv);
    if (strcmp(argv[1], "migread") == 0) return migread(argc, argv);
    if (strcmp(argv[1], "migwrite") == 0) return migwrite(argc, argv);
    die("unknown mode %s", argv[1]);
}
