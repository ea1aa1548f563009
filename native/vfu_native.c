/*
 * vfu_native: the few system calls Node cannot make for vfio-user.
 *
 *   - AF_UNIX stream sockets: listen/accept/connect/socketpair, sendmsg and
 *     recvmsg with SCM_RIGHTS descriptors (received close-on-exec);
 *   - readiness notification for any fd through uv_poll on Node's loop, with
 *     optional receive-ahead (the read done before JS is called) and outbox
 *     (the replies JS gathers sent after it returns);
 *   - memfd_create with seals, mmap/munmap into external ArrayBuffers that
 *     are unmapped explicitly (and detached) or, failing that, when collected;
 *   - eventfd create/read/write, F_GET_SEALS, dup, close;
 *   - one bit-twiddling loop of dirty-page reports that JS runs at half the
 *     speed (spreadBits8);
 *   - CRC-32C (the CPU's crc32 instruction when it has one), optionally
 *     copying as it sums (the migration stream's checksum).
 *
 * Plain C against node_api.h and uv.h (N-API 8), no C++ and no wrappers, so
 * the same binary keeps working across Node releases.  Every function reports
 * failures as a negative errno return (hot paths) or a thrown Error whose
 * `errno` property carries the number (set-up paths).
 *
 * Facts this file relies on, measured on Linux (see docs/native.md):
 *   - the fds of one sendmsg arrive with the recvmsg that reaches its first
 *     byte and that recvmsg stops there; the JS framer attaches them to the
 *     message that holds the last byte of that read;
 *   - a poll handle must stay strongly referenced while open and its memory is
 *     freed only after both the libuv close callback and the JS finaliser ran.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#ifndef MFD_CLOEXEC
#include <linux/memfd.h>
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#endif

/* Linux never passes more than SCM_MAX_FD (253) descriptors in one message. */
#define MAX_FDS 253
/* recvmsg state array: [0] nfds, [1] flags, [2..] fds */
#define STATE_LEN (2 + MAX_FDS)
#define RECV_FLAG_CTRUNC 1

#define CHECK(call)                                                            \
    do {                                                                       \
        if ((call) != napi_ok) {                                               \
            return throw_last(env);                                            \
        }                                                                      \
    } while (0)

/* Throws the failed N-API call's error unless one is already pending.  When
 * even that fails there is nothing left to report with: the caller returns
 * NULL (undefined) regardless. */
static napi_value throw_last(napi_env env) {
    const napi_extended_error_info *info = NULL;
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return NULL;
    if (napi_get_last_error_info(env, &info) != napi_ok) info = NULL;
    (void)napi_throw_error(env, NULL,
                           info && info->error_message ? info->error_message
                                                       : "vfu_native: N-API call failed");
    return NULL;
}

/* Throws Error(message: strerror) with .errno and .code; a plain Error with
 * code "ERRNO" if the object cannot be built. */
static napi_value throw_errno(napi_env env, const char *what, int err) {
    char msg[256];
    napi_value m, e, n, c;
    snprintf(msg, sizeof(msg), "%s: %s", what, strerror(err));
    if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m) != napi_ok ||
        napi_create_error(env, NULL, m, &e) != napi_ok ||
        napi_create_int32(env, err, &n) != napi_ok ||
        napi_set_named_property(env, e, "errno", n) != napi_ok ||
        napi_create_string_utf8(env, "ERRNO", NAPI_AUTO_LENGTH, &c) != napi_ok ||
        napi_set_named_property(env, e, "code", c) != napi_ok ||
        napi_throw(env, e) != napi_ok) {
        bool pending = false;
        if (napi_is_exception_pending(env, &pending) != napi_ok || !pending) {
            (void)napi_throw_error(env, "ERRNO", msg);
        }
    }
    return NULL;
}

/* A JS number, or NULL (undefined to JS) with the error thrown. */
static napi_value make_int(napi_env env, int64_t v) {
    napi_value r;
    if (napi_create_int64(env, v, &r) != napi_ok) return throw_last(env);
    return r;
}

/* The first `want` arguments, missing ones as undefined: 0, or -1 (a failed
 * N-API call: report it with throw_last). */
static int get_args(napi_env env, napi_callback_info info, size_t want,
                    napi_value *argv) {
    size_t argc = want;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
        return -1;
    }
    for (size_t i = argc; i < want; i++) {
        if (napi_get_undefined(env, &argv[i]) != napi_ok) return -1;
    }
    return 0;
}

static int get_i32(napi_env env, napi_value v, int32_t *out) {
    return napi_get_value_int32(env, v, out) == napi_ok ? 0 : -1;
}

static int get_i64(napi_env env, napi_value v, int64_t *out) {
    return napi_get_value_int64(env, v, out) == napi_ok ? 0 : -1;
}

/* Accepts Buffer / any TypedArray / DataView; returns data and byte length. */
static int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
    bool is;
    if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
        napi_typedarray_type t;
        size_t n, off;
        napi_value ab;
        void *p;
        if (napi_get_typedarray_info(env, v, &t, &n, &p, &ab, &off) != napi_ok) {
            return -1;
        }
        size_t el = 1;
        switch (t) {
        case napi_int16_array: case napi_uint16_array: el = 2; break;
        case napi_int32_array: case napi_uint32_array: case napi_float32_array: el = 4; break;
        case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: el = 8; break;
        default: el = 1;
        }
        *data = p;
        *len = n * el;
        return 0;
    }
    if (napi_is_dataview(env, v, &is) == napi_ok && is) {
        napi_value ab;
        size_t off;
        void *p;
        if (napi_get_dataview_info(env, v, len, &p, &ab, &off) != napi_ok) {
            return -1;
        }
        *data = p;
        return 0;
    }
    return -1;
}

/* 1 for undefined or null; 0 otherwise, and when the type cannot be had
 * (the value is then read as what it is not, which fails and throws). */
static int is_nullish(napi_env env, napi_value v) {
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok) return 0;
    return t == napi_undefined || t == napi_null;
}

/* Whether `v` is a typed array of type `want`. */
static int is_typed(napi_env env, napi_value v, napi_typedarray_type want) {
    bool is = false;
    napi_typedarray_type t;
    size_t n, off;
    void *data;
    napi_value ab;
    return napi_is_typedarray(env, v, &is) == napi_ok && is &&
           napi_get_typedarray_info(env, v, &t, &n, &data, &ab, &off) == napi_ok && t == want;
}

/* An Int32Array-like state array: at least `n` slots, 4-byte aligned (we
 * write it as int32_t; a Uint8Array or DataView at an odd offset is not). */
static int get_state(napi_env env, napi_value v, size_t n, int32_t **out) {
    uint8_t *p;
    size_t len;
    if (get_bytes(env, v, &p, &len) < 0 || len < n * sizeof(int32_t) ||
        ((uintptr_t)p & (sizeof(int32_t) - 1)) != 0) {
        return -1;
    }
    *out = (int32_t *)p;
    return 0;
}

/* ------------------------------------------------------------------ sockets */

static napi_value n_socketpair(napi_env env, napi_callback_info info) {
    int sv[2];
    napi_value arr;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
        return throw_errno(env, "socketpair", errno);
    }
    {
        napi_value a, b;
        if (napi_create_array_with_length(env, 2, &arr) != napi_ok ||
            napi_create_int32(env, sv[0], &a) != napi_ok ||
            napi_create_int32(env, sv[1], &b) != napi_ok ||
            napi_set_element(env, arr, 0, a) != napi_ok ||
            napi_set_element(env, arr, 1, b) != napi_ok) {
            close(sv[0]);
            close(sv[1]);
            return throw_last(env);
        }
    }
    return arr;
}

static int fill_addr(napi_env env, napi_value v, struct sockaddr_un *addr) {
    size_t len = 0;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    if (napi_get_value_string_utf8(env, v, addr->sun_path, sizeof(addr->sun_path),
                                   &len) != napi_ok) {
        return -EINVAL;
    }
    if (len == 0 || len >= sizeof(addr->sun_path) - 1) {
        return -ENAMETOOLONG;
    }
    return 0;
}

/*
 * chmod() of the socket file we just bound, never through a symlink someone
 * put in its place (chmod follows them; fchmod on the socket fd changes the
 * socket's own inode, not the file bind made; Linux's fchmodat takes no
 * AT_SYMLINK_NOFOLLOW before fchmodat2).  So: open the name itself with
 * O_PATH|O_NOFOLLOW, check it is a socket we own, and chmod the inode that
 * descriptor holds through /proc/self/fd (fchmod refuses O_PATH fds).
 * Without /proc, the checked name is chmod()ed (a window only as wide as
 * between the two calls).
 */
static int chmod_socket_nofollow(const char *path, mode_t mode) {
    char proc[64];
    struct stat st;
    int fd, rc, err;
    fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    if (fstat(fd, &st) < 0) {
        err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid()) {
        close(fd);
        errno = S_ISLNK(st.st_mode) ? ELOOP : EEXIST;
        return -1;
    }
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    rc = chmod(proc, mode);
    if (rc < 0 && errno == ENOENT) rc = chmod(path, mode);
    err = errno;
    close(fd);
    errno = err;
    return rc;
}

/* A descriptor held in reserve (on /dev/null): at EMFILE/ENFILE it is given
 * up for a moment so that a pending connection can still be accepted and
 * closed.  Otherwise that connection stays in the backlog, the listening
 * socket stays readable and a level-triggered poll spins on it. */
static int spare_fd = -1;

static void spare_open(void) {
    if (spare_fd < 0) spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* listen(path, backlog, mode): binds `path` itself, so that ss and
 * /proc/net/unix name the socket by its path.  The umask is narrowed to
 * `mode` around bind: the kernel creates the file with exactly that mode
 * (it applies the umask before any default ACL, which can only narrow it),
 * so it is never reachable with a wider one; listen follows bind at once,
 * then the file is chmod()ed to exactly `mode` (not through a symlink),
 * which matters only where a default ACL made it narrower still. */
static napi_value n_listen(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    struct sockaddr_un addr;
    int32_t backlog = 16, mode = 0600;
    int fd, rc, err;
    mode_t old;
    if (get_args(env, info, 3, argv) < 0) return throw_last(env);
    if ((rc = fill_addr(env, argv[0], &addr)) < 0) return throw_errno(env, "listen", -rc);
    if ((!is_nullish(env, argv[1]) && get_i32(env, argv[1], &backlog) < 0) ||
        (!is_nullish(env, argv[2]) && get_i32(env, argv[2], &mode) < 0)) {
        return throw_last(env);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return throw_errno(env, "socket", errno);
    old = umask(0777 & ~mode);
    rc = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    err = errno;
    umask(old);
    if (rc < 0) {
        close(fd);
        return throw_errno(env, "bind", err);
    }
    /* listen at once: the file exists from bind on, and a peer that connects
     * once as soon as it appears (libvfio-user's samples/client does) must
     * not find it refusing.  The umask already gave the file its mode. */
    if (listen(fd, backlog) < 0) {
        err = errno;
        close(fd);
        unlink(addr.sun_path);
        return throw_errno(env, "listen", err);
    }
    if (chmod_socket_nofollow(addr.sun_path, (mode_t)mode) < 0) {
        /* the name is no longer our socket: leave it to whoever took it */
        err = errno;
        close(fd);
        return throw_errno(env, "chmod", err);
    }
    spare_open();
    return make_int(env, fd);
}

/* accept(fd) -> new fd (non-blocking, close-on-exec) or -errno.  Out of
 * descriptors, the next pending connection is accepted with the spare one
 * and closed at once: -ECONNABORTED then says one was dropped (call again),
 * while -EMFILE/-ENFILE say none could be (no spare). */
static napi_value n_accept(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    int c, err;
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c >= 0) return make_int(env, c);
    err = errno;
    if ((err == EMFILE || err == ENFILE) && spare_fd >= 0) {
        close(spare_fd);
        spare_fd = -1;
        c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) close(c);
        else err = errno;
        spare_open();
        return make_int(env, c >= 0 ? -ECONNABORTED : -err);
    }
    return make_int(env, -err);
}

/* connect(path) -> fd or -errno.  A UNIX connect completes at once unless the
 * listener's backlog is full, which we report as EAGAIN rather than block. */
static napi_value n_connect(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    struct sockaddr_un addr;
    int fd, rc;
    if (get_args(env, info, 1, argv) < 0) return throw_last(env);
    if ((rc = fill_addr(env, argv[0], &addr)) < 0) return make_int(env, rc);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return make_int(env, -errno);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        rc = -errno;
        close(fd);
        return make_int(env, rc);
    }
    return make_int(env, fd);
}

/*
 * sendmsg(fd, a, b|null, fds|null) -> bytes sent or -errno.
 * Gathers up to two buffers (header and payload) into one system call.
 */
static napi_value n_sendmsg(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    int32_t fd;
    int fds[MAX_FDS];
    struct iovec iov[2];
    struct msghdr msg;
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
        struct cmsghdr align;
    } ctrl;
    uint32_t nfds = 0;
    ssize_t n;

    if (get_args(env, info, 4, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    /* The descriptors first: reading an element can run JS (a getter, a
     * proxy's trap) that detaches or frees the buffers, so no buffer
     * pointer is taken before the last call that can enter JS. */
    if (!is_nullish(env, argv[3])) {
        bool isarr = false;
        if (napi_is_array(env, argv[3], &isarr) != napi_ok) return throw_last(env);
        if (!isarr) return throw_errno(env, "sendmsg: fds", EINVAL);
        if (napi_get_array_length(env, argv[3], &nfds) != napi_ok) return throw_last(env);
        if (nfds > MAX_FDS) return make_int(env, -EINVAL);
        for (uint32_t i = 0; i < nfds; i++) {
            napi_value e;
            int32_t v;
            if (napi_get_element(env, argv[3], i, &e) != napi_ok) return throw_last(env);
            if (get_i32(env, e, &v) < 0) return throw_errno(env, "sendmsg: fd", EINVAL);
            fds[i] = v;
        }
    }
    memset(&msg, 0, sizeof(msg));
    if (get_bytes(env, argv[1], (uint8_t **)&iov[0].iov_base, &iov[0].iov_len) < 0) {
        return throw_errno(env, "sendmsg: first buffer", EINVAL);
    }
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    if (!is_nullish(env, argv[2])) {
        if (get_bytes(env, argv[2], (uint8_t **)&iov[1].iov_base, &iov[1].iov_len) < 0) {
            return throw_errno(env, "sendmsg: second buffer", EINVAL);
        }
        if (iov[1].iov_len > 0) msg.msg_iovlen = 2;
    }
    if (nfds > 0) {
        struct cmsghdr *cm;
        memset(&ctrl, 0, sizeof(ctrl));
        msg.msg_control = ctrl.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    do {
        n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return make_int(env, n < 0 ? -errno : n);
}

/* One non-blocking recvmsg into buf[0, len): bytes (0 = EOF) or -errno;
 * state[0] = number of fds received, state[1] = flags (1: MSG_CTRUNC),
 * state[2..] = the fds, received close-on-exec. */
static ssize_t recv_into(int fd, uint8_t *buf, size_t len, int32_t *state) {
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr msg;
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
        struct cmsghdr align;
    } ctrl;
    ssize_t n;
    int nfds = 0;

    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.buf;
    msg.msg_controllen = sizeof(ctrl.buf);
    do {
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    state[0] = 0;
    state[1] = 0;
    if (n < 0) return -errno;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm != NULL; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int cnt = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *p = (int *)CMSG_DATA(cm);
            for (int i = 0; i < cnt; i++) {
                if (nfds < MAX_FDS) {
                    state[2 + nfds++] = p[i];
                } else {
                    close(p[i]); /* cannot happen on Linux; never leak */
                }
            }
        }
    }
    state[0] = nfds;
    if (msg.msg_flags & MSG_CTRUNC) state[1] |= RECV_FLAG_CTRUNC;
    return n;
}

/*
 * recvmsg(fd, buf, off, len, state:Int32Array) -> bytes (0 = EOF) or -errno,
 * with the fds in `state` (see recv_into).
 */
static napi_value n_recvmsg(napi_env env, napi_callback_info info) {
    napi_value argv[5];
    int32_t fd;
    int64_t off, len;
    uint8_t *buf;
    int32_t *state;
    size_t buflen;

    if (get_args(env, info, 5, argv) < 0 || get_i32(env, argv[0], &fd) < 0 ||
        get_i64(env, argv[2], &off) < 0 || get_i64(env, argv[3], &len) < 0) {
        return throw_last(env);
    }
    if (get_bytes(env, argv[1], &buf, &buflen) < 0 || get_state(env, argv[4], STATE_LEN, &state) < 0) {
        return throw_errno(env, "recvmsg: arguments", EINVAL);
    }
    if (off < 0 || len <= 0 || (uint64_t)off + (uint64_t)len > buflen) {
        return throw_errno(env, "recvmsg: range", ERANGE);
    }
    return make_int(env, recv_into(fd, buf + off, (size_t)len, state));
}

static napi_value n_close(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    /* Linux releases the descriptor even when close() reports EINTR. */
    return make_int(env, close(fd) < 0 && errno != EINTR ? -errno : 0);
}

static napi_value n_dup(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    int r;
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    r = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    return make_int(env, r < 0 ? -errno : r);
}

/* setNonBlocking(fd) -> 0 or -errno; used for inherited sockets (--fd N). */
static napi_value n_set_nonblocking(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    int fl;
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return make_int(env, -errno);
    return make_int(env, 0);
}

/*
 * raiseSendBuffer(fd, bytes) -> the socket's send buffer afterwards, as the
 * kernel reports it (twice what was asked: it counts its own overhead), or
 * -errno.  Never lowers it.  A stream socket's sender waits once the bytes in
 * flight reach this size, so a message larger than it costs a wake-up (and,
 * non-blocking, a poll and another sendmsg) for every buffer's worth; the
 * kernel caps an unprivileged request at net.core.wmem_max.
 */
static napi_value n_raise_send_buffer(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    int32_t fd, want;
    int cur = 0, now = 0;
    socklen_t len = sizeof(cur);
    if (get_args(env, info, 2, argv) < 0 || get_i32(env, argv[0], &fd) < 0 || get_i32(env, argv[1], &want) < 0) {
        return throw_last(env);
    }
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &cur, &len) < 0) return make_int(env, -errno);
    if (want <= 0 || cur >= 2 * (int64_t)want) return make_int(env, cur);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof(want)) < 0) return make_int(env, -errno);
    len = sizeof(now);
    if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &now, &len) < 0) return make_int(env, -errno);
    if (now < cur) {
        /* a cap below the default (wmem_max < wmem_default): put it back */
        int half = cur / 2;
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &half, sizeof(half));
        now = cur;
    }
    return make_int(env, now);
}

/* isSocket(fd) -> 1 for a SOCK_STREAM AF_UNIX socket, 0 otherwise, -errno */
static napi_value n_is_unix_stream(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    int type = 0;
    struct sockaddr_un sa;
    socklen_t len = sizeof(type), alen = sizeof(sa);
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return make_int(env, -errno);
    if (getsockname(fd, (struct sockaddr *)&sa, &alen) < 0) return make_int(env, -errno);
    return make_int(env, type == SOCK_STREAM && sa.sun_family == AF_UNIX ? 1 : 0);
}

/* --------------------------------------------------------------------- poll */

/* pollSetIo slots after the recvmsg state: where the next read goes, the
 * bytes waiting in the outbox, and whether a callback of ours is running. */
#define STATE_RECV_OFF STATE_LEN
#define STATE_RECV_LEN (STATE_LEN + 1)
#define STATE_OUT_LEN (STATE_LEN + 2)
#define STATE_IN_CB (STATE_LEN + 3)
#define STATE_IO_SLOTS (STATE_LEN + 4)

typedef struct {
    uv_poll_t handle;
    napi_env env;
    napi_ref callback;   /* strong */
    napi_ref self;       /* strong while open: keeps the JS handle alive */
    napi_async_context actx;
    int closing;
    int uv_closed;
    int finalized;
    /* pollSetIo: the receive-ahead buffer, the state array and the outbox,
     * held by strong references while registered.  Their memory is looked up
     * afresh at each use: JS may detach (transfer) an ArrayBuffer at any
     * time, and a pointer kept from registration would then dangle. */
    napi_ref rbuf_ref, rstate_ref, obuf_ref;
} poll_ctx_t;

/* The memory of a registered typed array as it is now (two N-API calls:
 * this runs on every event); NULL / 0 when it is gone or detached. */
static uint8_t *ref_typed(napi_env env, napi_ref ref, size_t *len) {
    napi_value v, ab;
    napi_typedarray_type t;
    size_t n, off;
    void *data = NULL;
    *len = 0;
    if (ref == NULL || napi_get_reference_value(env, ref, &v) != napi_ok || v == NULL ||
        napi_get_typedarray_info(env, v, &t, &n, &data, &ab, &off) != napi_ok || data == NULL) {
        return NULL;
    }
    *len = t == napi_int32_array ? n * sizeof(int32_t) : t == napi_uint8_array ? n : 0;
    return *len > 0 ? data : NULL;
}

/* The state array as it is now, or NULL (missing, detached, too short). */
static int32_t *poll_state(napi_env env, poll_ctx_t *p) {
    size_t len;
    uint8_t *st = ref_typed(env, p->rstate_ref, &len);
    return st != NULL && len >= STATE_IO_SLOTS * sizeof(int32_t) ? (int32_t *)st : NULL;
}

static void poll_maybe_free(poll_ctx_t *p) {
    if (p->uv_closed && p->finalized) free(p);
}

static void poll_on_uv_close(uv_handle_t *h) {
    poll_ctx_t *p = (poll_ctx_t *)h->data;
    p->uv_closed = 1;
    poll_maybe_free(p);
}

static void poll_finalize(napi_env env, void *data, void *hint) {
    poll_ctx_t *p = data;
    /* The handle can only be collected after pollClose dropped `self`. */
    p->finalized = 1;
    poll_maybe_free(p);
}

static void poll_on_event(uv_poll_t *h, int status, int events);

/* Sends what JS gathered in the outbox during the callback, in one system
 * call.  What the socket does not take stays at the front of the outbox and
 * we poll for writability: the JS side sends it first when that comes
 * (errors surface there too, as the socket then reads as writable). */
static void send_outbox(napi_env env, poll_ctx_t *p, int32_t *state) {
    int32_t n = state[STATE_OUT_LEN];
    size_t olen;
    uint8_t *obuf;
    ssize_t r;
    int fd;
    if (n <= 0) return;
    obuf = ref_typed(env, p->obuf_ref, &olen);
    if (obuf == NULL || (size_t)n > olen || uv_fileno((uv_handle_t *)&p->handle, &fd) != 0) {
        return;
    }
    do {
        r = send(fd, obuf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r == n) {
        state[STATE_OUT_LEN] = 0;
        return;
    }
    if (r > 0) {
        memmove(obuf, obuf + r, (size_t)(n - r));
        state[STATE_OUT_LEN] = (int32_t)(n - r);
    }
    uv_poll_start(&p->handle, UV_READABLE | UV_WRITABLE, poll_on_event);
}

static void poll_on_event(uv_poll_t *h, int status, int events) {
    poll_ctx_t *p = (poll_ctx_t *)h->data;
    napi_env env = p->env;
    napi_handle_scope scope;
    napi_value cb, recv, argv[3], result;
    napi_status st;
    int32_t *state;

    if (p->closing) return;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    if (napi_get_reference_value(env, p->callback, &cb) != napi_ok || cb == NULL ||
        napi_get_reference_value(env, p->self, &recv) != napi_ok || recv == NULL ||
        napi_create_int32(env, events & (UV_READABLE | UV_WRITABLE | UV_DISCONNECT), &argv[0]) != napi_ok ||
        napi_create_int32(env, status, &argv[1]) != napi_ok ||
        napi_get_null(env, &argv[2]) != napi_ok) {
        goto out;
    }
    state = poll_state(env, p);
    /* Receive-ahead: read into the registered target before entering JS,
     * which gets the result as a third argument (null: nothing read).  The
     * JS side saves the N-API call, and its cost, on every message. */
    if (status == 0 && (events & UV_READABLE) && state != NULL && p->rbuf_ref != NULL) {
        int32_t off = state[STATE_RECV_OFF], len = state[STATE_RECV_LEN];
        size_t rlen;
        uint8_t *rbuf = ref_typed(env, p->rbuf_ref, &rlen);
        int fd;
        if (rbuf != NULL && len > 0 && off >= 0 && (size_t)off + (size_t)len <= rlen &&
            uv_fileno((uv_handle_t *)h, &fd) == 0 &&
            napi_create_int64(env, recv_into(fd, rbuf + off, (size_t)len, state), &argv[2]) != napi_ok) {
            goto out;
        }
    }
    if (state != NULL) state[STATE_IN_CB] = 1;
    st = napi_make_callback(env, p->actx, recv, cb, 3, argv, &result);
    if (st == napi_pending_exception) {
        napi_value err;
        if (napi_get_and_clear_last_exception(env, &err) == napi_ok) (void)napi_fatal_exception(env, err);
    }
    /* JS ran: the registration may have changed, a buffer been detached, or
     * the handle closed. */
    if (p->rstate_ref != NULL && (state = poll_state(env, p)) != NULL) {
        state[STATE_IN_CB] = 0;
        if (!p->closing) send_outbox(env, p, state);
    }
out:
    (void)napi_close_handle_scope(env, scope);
}

static void poll_release_io(napi_env env, poll_ctx_t *p) {
    /* Deleting a reference fails only for a bad env or ref: nothing to undo. */
    if (p->rbuf_ref) (void)napi_delete_reference(env, p->rbuf_ref);
    if (p->rstate_ref) (void)napi_delete_reference(env, p->rstate_ref);
    if (p->obuf_ref) (void)napi_delete_reference(env, p->obuf_ref);
    p->rbuf_ref = p->rstate_ref = p->obuf_ref = NULL;
}

/* Drops the JS side's references (self last: the wrapper may then be
 * collected, which runs poll_finalize). */
static void poll_release_js(napi_env env, poll_ctx_t *p) {
    poll_release_io(env, p);
    if (p->actx) (void)napi_async_destroy(env, p->actx);
    if (p->callback) (void)napi_delete_reference(env, p->callback);
    if (p->self) (void)napi_delete_reference(env, p->self);
    p->actx = NULL;
    p->callback = p->self = NULL;
}

/* Stops and closes an initialised handle; `p` is freed once libuv has
 * closed it and the wrapper was finalised (or never wrapped: `finalized`). */
static void poll_shutdown(napi_env env, poll_ctx_t *p) {
    p->closing = 1;
    uv_poll_stop(&p->handle);
    uv_close((uv_handle_t *)&p->handle, poll_on_uv_close);
    poll_release_js(env, p);
}

/* pollStart(fd, events, callback(events, status)) -> handle */
static napi_value n_poll_start(napi_env env, napi_callback_info info) {
    napi_value argv[3], obj, name;
    napi_valuetype t;
    int32_t fd, events;
    uv_loop_t *loop;
    poll_ctx_t *p;
    int rc;

    if (get_args(env, info, 3, argv) < 0 || get_i32(env, argv[0], &fd) < 0 ||
        get_i32(env, argv[1], &events) < 0 || napi_typeof(env, argv[2], &t) != napi_ok) {
        return throw_last(env);
    }
    if (t != napi_function) return throw_errno(env, "pollStart: callback", EINVAL);
    CHECK(napi_get_uv_event_loop(env, &loop));
    p = calloc(1, sizeof(*p));
    if (p == NULL) return throw_errno(env, "pollStart", ENOMEM);
    p->env = env;
    /* The JS side first, undone if anything fails; the uv handle last, as
     * once it is initialised only uv_close may release `p`. */
    if (napi_create_object(env, &obj) != napi_ok ||
        napi_create_reference(env, argv[2], 1, &p->callback) != napi_ok ||
        napi_create_reference(env, obj, 1, &p->self) != napi_ok ||
        napi_create_string_utf8(env, "vfu:poll", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_async_init(env, obj, name, &p->actx) != napi_ok) {
        throw_last(env);
        poll_release_js(env, p);
        free(p);
        return NULL;
    }
    rc = uv_poll_init(loop, &p->handle, fd);
    if (rc < 0) {
        poll_release_js(env, p);
        free(p);
        return throw_errno(env, "uv_poll_init", -rc);
    }
    p->handle.data = p;
    if (napi_wrap(env, obj, p, poll_finalize, NULL, NULL) != napi_ok) {
        throw_last(env);
        p->finalized = 1; /* no wrapper will finalise it */
        poll_shutdown(env, p);
        return NULL;
    }
    rc = uv_poll_start(&p->handle, events & (UV_READABLE | UV_WRITABLE), poll_on_event);
    if (rc < 0) {
        poll_shutdown(env, p); /* the wrapper's finaliser completes the release */
        return throw_errno(env, "uv_poll_start", -rc);
    }
    return obj;
}

static poll_ctx_t *unwrap_poll(napi_env env, napi_value v) {
    void *p = NULL;
    if (napi_unwrap(env, v, &p) != napi_ok) return NULL;
    return p;
}

/* pollUpdate(handle, events) */
static napi_value n_poll_update(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    int32_t events;
    poll_ctx_t *p;
    int rc;
    if (get_args(env, info, 2, argv) < 0 || get_i32(env, argv[1], &events) < 0) {
        return throw_last(env);
    }
    p = unwrap_poll(env, argv[0]);
    if (p == NULL || p->closing) return throw_errno(env, "pollUpdate", EBADF);
    events &= UV_READABLE | UV_WRITABLE;
    rc = events ? uv_poll_start(&p->handle, events, poll_on_event) : uv_poll_stop(&p->handle);
    return make_int(env, rc);
}

/* pollRef(handle, ref): whether this handle keeps the event loop alive. */
static napi_value n_poll_ref(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    bool ref = true;
    poll_ctx_t *p;
    if (get_args(env, info, 2, argv) < 0 || napi_get_value_bool(env, argv[1], &ref) != napi_ok) {
        return throw_last(env);
    }
    p = unwrap_poll(env, argv[0]);
    if (p == NULL || p->closing) return NULL;
    if (ref) {
        uv_ref((uv_handle_t *)&p->handle);
    } else {
        uv_unref((uv_handle_t *)&p->handle);
    }
    return NULL;
}

/*
 * pollSetIo(handle, recvBuf|null, state:Int32Array|null, outbox|null):
 *  - receive-ahead: on READABLE, recvmsg into recvBuf[state[255], +state[256])
 *    (nothing when that length is 0) before calling back, the fds going to
 *    `state` as for recvmsg;
 *  - outbox: while a callback runs state[258] is 1, and JS may gather small
 *    messages in outbox[0, state[257]); they are sent after it returns.
 * The references keep everything alive until replaced, cleared (state
 * null) or the handle is closed.
 */
static napi_value n_poll_set_io(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    poll_ctx_t *p;
    uint8_t *rbuf = NULL, *obuf = NULL;
    int32_t *state;
    size_t rlen = 0, olen = 0;
    if (get_args(env, info, 4, argv) < 0) return throw_last(env);
    p = unwrap_poll(env, argv[0]);
    if (p == NULL || p->closing) return throw_errno(env, "pollSetIo", EBADF);
    if (is_nullish(env, argv[2])) {
        poll_release_io(env, p);
        return NULL;
    }
    /* Int32Array state, Uint8Array (Buffer) buffers: what ref_typed reads. */
    if (!is_typed(env, argv[2], napi_int32_array) || get_state(env, argv[2], STATE_IO_SLOTS, &state) < 0 ||
        (!is_nullish(env, argv[1]) && (!is_typed(env, argv[1], napi_uint8_array) || get_bytes(env, argv[1], &rbuf, &rlen) < 0)) ||
        (!is_nullish(env, argv[3]) && (!is_typed(env, argv[3], napi_uint8_array) || get_bytes(env, argv[3], &obuf, &olen) < 0))) {
        return throw_errno(env, "pollSetIo: arguments", EINVAL);
    }
    poll_release_io(env, p);
    if (napi_create_reference(env, argv[2], 1, &p->rstate_ref) != napi_ok ||
        (rbuf != NULL && napi_create_reference(env, argv[1], 1, &p->rbuf_ref) != napi_ok) ||
        (obuf != NULL && napi_create_reference(env, argv[3], 1, &p->obuf_ref) != napi_ok)) {
        throw_last(env);
        poll_release_io(env, p);
        return NULL;
    }
    return NULL;
}

/* pollClose(handle): stop and release; call before closing the fd. */
static napi_value n_poll_close(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    poll_ctx_t *p;
    if (get_args(env, info, 1, argv) < 0) return throw_last(env);
    p = unwrap_poll(env, argv[0]);
    if (p == NULL || p->closing) return NULL;
    poll_shutdown(env, p);
    return NULL;
}

/* ------------------------------------------------------------------- memory */

typedef struct mapping {
    struct mapping *next;
    void *addr;
    size_t len;
    int unmapped;
    int adopted; /* owned by its ArrayBuffer (creation succeeded) */
} mapping_t;

/* Live mappings, for munmap() and liveMappings().  Worker threads may load
 * the addon too (each env gets its own functions, all share this list), so
 * the list and each entry's `unmapped` are guarded by a mutex; it is never
 * held across an N-API call that may run a finaliser. */
static mapping_t *g_mappings;
static pthread_mutex_t g_mappings_lock = PTHREAD_MUTEX_INITIALIZER;

static void mapping_unlink(mapping_t *m) {
    for (mapping_t **pp = &g_mappings; *pp; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            return;
        }
    }
}

static void mapping_finalize(napi_env env, void *data, void *hint) {
    mapping_t *m = hint;
    /* Node calls the finaliser at once when it cannot make the ArrayBuffer
     * (too large): n_mmap, which sees the failure, cleans up then. */
    if (!m->adopted) return;
    pthread_mutex_lock(&g_mappings_lock);
    if (!m->unmapped) {
        munmap(m->addr, m->len);
        m->unmapped = 1;
    }
    mapping_unlink(m);
    pthread_mutex_unlock(&g_mappings_lock);
    free(m);
}

/* memfdCreate(name, size, seal) -> fd.  With `seal`, the size is fixed
 * (F_SEAL_SHRINK|F_SEAL_GROW) so no one can turn accesses into SIGBUS. */
static napi_value n_memfd_create(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    char name[64] = "vfu";
    size_t nl;
    int64_t size;
    bool seal = false;
    int fd, err;
    if (get_args(env, info, 3, argv) < 0 || get_i64(env, argv[1], &size) < 0) {
        return throw_last(env);
    }
    if ((!is_nullish(env, argv[0]) &&
         napi_get_value_string_utf8(env, argv[0], name, sizeof(name), &nl) != napi_ok) ||
        (!is_nullish(env, argv[2]) && napi_get_value_bool(env, argv[2], &seal) != napi_ok)) {
        return throw_last(env);
    }
    if (size < 0) return throw_errno(env, "memfd_create", EINVAL);
    fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return throw_errno(env, "memfd_create", errno);
    if (ftruncate(fd, size) < 0 ||
        (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)) {
        err = errno;
        close(fd);
        return throw_errno(env, "memfd_create", err);
    }
    return make_int(env, fd);
}

/* getSeals(fd) -> seals or -errno (EINVAL for files that cannot be sealed) */
static napi_value n_get_seals(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    int r;
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    r = fcntl(fd, F_GET_SEALS);
    return make_int(env, r < 0 ? -errno : r);
}

/* mmap(fd, offset, length, prot) -> ArrayBuffer (MAP_SHARED).
 * prot: 1 read, 2 write, 3 both.  offset must be page aligned, and
 * [offset, offset + length) inside the file: a page past its end would
 * raise SIGBUS when touched, which kills the process.  Only regular files
 * (memfds included) have a size to check; anything else is refused. */
static napi_value n_mmap(napi_env env, napi_callback_info info) {
    napi_value argv[4], ab;
    int32_t fd, prot;
    int64_t off, len;
    void *addr;
    mapping_t *m;
    int p = 0;
    if (get_args(env, info, 4, argv) < 0 || get_i32(env, argv[0], &fd) < 0 ||
        get_i64(env, argv[1], &off) < 0 || get_i64(env, argv[2], &len) < 0 ||
        get_i32(env, argv[3], &prot) < 0) {
        return throw_last(env);
    }
    if (off < 0 || len <= 0 || (off & (sysconf(_SC_PAGESIZE) - 1)) != 0 || prot < 1 || prot > 3 ||
        (uint64_t)len > SIZE_MAX) {
        return throw_errno(env, "mmap", EINVAL);
    }
    {
        struct stat st;
        if (fstat(fd, &st) < 0) return throw_errno(env, "mmap", errno);
        if (!S_ISREG(st.st_mode)) return throw_errno(env, "mmap: not a regular file", ENODEV);
        if ((uint64_t)len > (uint64_t)st.st_size || (uint64_t)off > (uint64_t)st.st_size - (uint64_t)len) {
            return throw_errno(env, "mmap: beyond the end of the file", EINVAL);
        }
    }
    if (prot & 1) p |= PROT_READ;
    if (prot & 2) p |= PROT_WRITE;
    addr = mmap(NULL, (size_t)len, p, MAP_SHARED, fd, (off_t)off);
    if (addr == MAP_FAILED) return throw_errno(env, "mmap", errno);
    madvise(addr, (size_t)len, MADV_DONTDUMP);
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        munmap(addr, (size_t)len);
        return throw_errno(env, "mmap", ENOMEM);
    }
    m->addr = addr;
    m->len = (size_t)len;
    if (napi_create_external_arraybuffer(env, addr, (size_t)len, mapping_finalize, m, &ab) !=
        napi_ok) {
        /* the finaliser may already have been called: it left `m` to us */
        munmap(addr, (size_t)len);
        free(m);
        return throw_last(env);
    }
    m->adopted = 1;
    pthread_mutex_lock(&g_mappings_lock);
    m->next = g_mappings;
    g_mappings = m;
    pthread_mutex_unlock(&g_mappings_lock);
    return ab;
}

/* munmap(arrayBuffer): unmap now and detach, so stale views read as empty
 * instead of touching unmapped memory.  Idempotent. */
static napi_value n_munmap(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    void *data = NULL;
    size_t len = 0;
    bool is = false;
    int found = 0;
    if (get_args(env, info, 1, argv) < 0) return throw_last(env);
    if (napi_is_arraybuffer(env, argv[0], &is) != napi_ok || !is) {
        return throw_errno(env, "munmap: not an ArrayBuffer", EINVAL);
    }
    CHECK(napi_get_arraybuffer_info(env, argv[0], &data, &len));
    if (data == NULL || len == 0) return make_int(env, 0); /* already detached */
    pthread_mutex_lock(&g_mappings_lock);
    for (mapping_t *m = g_mappings; m; m = m->next) {
        if (m->addr == data && m->len == len && !m->unmapped) {
            found = 1;
            /* Unmap before detaching: detaching may run the finaliser, which
             * frees `m`; it then sees `unmapped` and only frees.  The lock
             * is released first, as the finaliser takes it. */
            munmap(m->addr, m->len);
            m->unmapped = 1;
            break;
        }
    }
    pthread_mutex_unlock(&g_mappings_lock);
    if (!found) return throw_errno(env, "munmap: not a mapping made by mmap()", EINVAL);
    CHECK(napi_detach_arraybuffer(env, argv[0]));
    return make_int(env, 0);
}

static napi_value n_live_mappings(napi_env env, napi_callback_info info) {
    int64_t n = 0;
    pthread_mutex_lock(&g_mappings_lock);
    for (mapping_t *m = g_mappings; m; m = m->next) {
        if (!m->unmapped) n++;
    }
    pthread_mutex_unlock(&g_mappings_lock);
    return make_int(env, n);
}

static napi_value n_page_size(napi_env env, napi_callback_info info) {
    return make_int(env, sysconf(_SC_PAGESIZE));
}

/* ------------------------------------------------------------------ eventfd */

/* eventfd(initial, flags) -> fd.  flags: 1 non-blocking, 2 semaphore. */
static napi_value n_eventfd(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    int32_t init = 0, fl = 0;
    int f = EFD_CLOEXEC, fd;
    if (get_args(env, info, 2, argv) < 0 ||
        (!is_nullish(env, argv[0]) && get_i32(env, argv[0], &init) < 0) ||
        (!is_nullish(env, argv[1]) && get_i32(env, argv[1], &fl) < 0)) {
        return throw_last(env);
    }
    if (fl & 1) f |= EFD_NONBLOCK;
    if (fl & 2) f |= EFD_SEMAPHORE;
    fd = eventfd((unsigned)init, f);
    if (fd < 0) return throw_errno(env, "eventfd", errno);
    return make_int(env, fd);
}

/* eventfdRead(fd) -> counter value (>0) or -errno (-EAGAIN when zero) */
static napi_value n_eventfd_read(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    uint64_t v;
    ssize_t n;
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    do {
        n = read(fd, &v, sizeof(v));
    } while (n < 0 && errno == EINTR);
    if (n < 0) return make_int(env, -errno);
    if (n != sizeof(v)) return make_int(env, -EIO);
    return make_int(env, v > INT64_MAX ? INT64_MAX : (int64_t)v);
}

/*
 * Writing to an eventfd the client shares must never block our thread, and
 * nothing cheaper than a signal makes it so on Linux (measured on 6.18):
 *   - O_NONBLOCK belongs to the open file description, which the client
 *     shares: setting it turns the client's blocking reads into EAGAIN;
 *   - reopening /proc/self/fd/N (for a private description) fails with
 *     ENXIO on anonymous inodes, and pwritev2(RWF_NOWAIT) gives EOPNOTSUPP;
 *   - poll(POLLOUT) then write() races with a client that fills the counter
 *     in between (0xfffffffffffffffe), and the write then sleeps until the
 *     client reads, which it need never do.
 * So the write runs under a per-thread POSIX timer that sends this thread a
 * signal, whose handler does nothing and is installed without SA_RESTART:
 * a write that went to sleep returns EINTR (reported as EAGAIN) within
 * WRITE_GUARD_NS.  The timer repeats until disarmed, so a signal that lands
 * just before the write went to sleep is followed by another.  A write that
 * does not block never looks at signals and is not disturbed.  The caller
 * keeps the interrupt pending and retries once the eventfd reads as writable
 * (epoll below: uv_poll would set O_NONBLOCK on the shared file).
 * The period is a trade: arming and disarming cost ~0.7 us more per write at
 * 10 ms than at 50 ms but ~3 us less than at 1 ms (a nearer timer
 * reprograms the clock), and a stall costs the loop at most one period.
 */
#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif
#define WRITE_GUARD_NS 10000000L

static int g_guard_signo;           /* 0: not installed yet */
static pthread_once_t g_guard_once = PTHREAD_ONCE_INIT;
static __thread int t_guard_state;  /* 0 untried, 1 ready, -errno failed */
static __thread timer_t t_guard_timer;

static void guard_handler(int sig) { (void)sig; }

/* Takes the highest real-time signal nobody handles. */
static void guard_install(void) {
    for (int sig = SIGRTMAX; sig > SIGRTMIN + 2; sig--) {
        struct sigaction old, sa;
        if (sigaction(sig, NULL, &old) < 0 || old.sa_handler != SIG_DFL ||
            (old.sa_flags & SA_SIGINFO)) {
            continue;
        }
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = guard_handler; /* no SA_RESTART: sleeping writes end */
        sigemptyset(&sa.sa_mask);
        if (sigaction(sig, &sa, NULL) == 0) {
            g_guard_signo = sig;
            return;
        }
    }
}

/* Deletes a thread's timer when its env goes (a worker thread ending). */
static void guard_cleanup(void *arg) {
    (void)arg;
    if (t_guard_state > 0) timer_delete(t_guard_timer);
    t_guard_state = 0;
}

/* This thread's guard timer: 0, or -errno when none can be had.  A thread
 * runs one env, whose teardown deletes the timer. */
static int guard_ready(napi_env env) {
    if (t_guard_state != 0) return t_guard_state > 0 ? 0 : t_guard_state;
    pthread_once(&g_guard_once, guard_install);
    if (g_guard_signo == 0) {
        t_guard_state = -EAGAIN;
        return t_guard_state;
    }
    {
        struct sigevent sev;
        sigset_t set;
        memset(&sev, 0, sizeof(sev));
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = g_guard_signo;
        sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
        if (timer_create(CLOCK_MONOTONIC, &sev, &t_guard_timer) < 0) {
            t_guard_state = -errno;
            return t_guard_state;
        }
        if (napi_add_env_cleanup_hook(env, guard_cleanup, NULL) != napi_ok) {
            timer_delete(t_guard_timer);
            t_guard_state = -ENOMEM;
            return t_guard_state;
        }
        sigemptyset(&set);
        sigaddset(&set, g_guard_signo);
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    }
    t_guard_state = 1;
    return 0;
}

/* write(fd, v) that gives up with -EAGAIN instead of sleeping. */
static int guarded_write_u64(napi_env env, int fd, uint64_t v) {
    struct itimerspec arm = {.it_value = {0, WRITE_GUARD_NS}, .it_interval = {0, WRITE_GUARD_NS}};
    struct itimerspec off = {{0, 0}, {0, 0}};
    ssize_t n;
    int err, rc = guard_ready(env);
    if (rc < 0) {
        /* No guard (no free signal): fall back to asking poll(), which only
         * a client racing us can defeat. */
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 0) < 0) return -errno;
        if (!(p.revents & POLLOUT)) return -EAGAIN;
        n = write(fd, &v, sizeof(v));
        return n < 0 ? -errno : n == sizeof(v) ? 0 : -EIO;
    }
    if (timer_settime(t_guard_timer, 0, &arm, NULL) < 0) return -errno;
    n = write(fd, &v, sizeof(v));
    err = errno;
    timer_settime(t_guard_timer, 0, &off, NULL);
    if (n < 0) return err == EINTR ? -EAGAIN : -err;
    return n == sizeof(v) ? 0 : -EIO;
}

/* eventfdWrite(fd, value) -> 0 or -errno; -EAGAIN when the counter has no
 * room (the write would have to wait for the reader). */
static napi_value n_eventfd_write(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    int32_t fd;
    int64_t val = 1;
    if (get_args(env, info, 2, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    if (!is_nullish(env, argv[1]) && get_i64(env, argv[1], &val) < 0) return throw_last(env);
    return make_int(env, guarded_write_u64(env, fd, (uint64_t)val));
}

/* isEventfd(fd) -> 1, 0, or -errno (EBADF).  The /proc link names the anon
 * inode's kind; without /proc any anonymous inode (no file type bits) is
 * taken, as that is all fstat can tell. */
static napi_value n_is_eventfd(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    char path[64], link[64];
    ssize_t n;
    struct stat st;
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    if (fstat(fd, &st) < 0) return make_int(env, -errno);
    if ((st.st_mode & S_IFMT) != 0) return make_int(env, 0);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    n = readlink(path, link, sizeof(link) - 1);
    if (n < 0) return make_int(env, 1);
    link[n] = '\0';
    return make_int(env, strcmp(link, "anon_inode:[eventfd]") == 0 ? 1 : 0);
}

/* -------------------------------------------------------------------- epoll */

/* A private epoll set: lets the loop wait for a shared descriptor (a
 * client's eventfd) to become writable without uv_poll, which would set
 * O_NONBLOCK on it.  The epoll fd itself is ours and is what uv_poll sees. */

/* epollCreate() -> fd or -errno */
static napi_value n_epoll_create(napi_env env, napi_callback_info info) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return make_int(env, fd < 0 ? -errno : fd);
}

/* epollCtl(epfd, op (1 add, 2 delete, 3 modify), fd, events (1 readable,
 * 2 writable)) -> 0 or -errno.  The event reports `fd`: delete before
 * closing it, as epoll keys its entries on the open file, not the number. */
static napi_value n_epoll_ctl(napi_env env, napi_callback_info info) {
    napi_value argv[4];
    int32_t epfd, op, fd, events = 0;
    struct epoll_event ev;
    if (get_args(env, info, 4, argv) < 0 || get_i32(env, argv[0], &epfd) < 0 ||
        get_i32(env, argv[1], &op) < 0 || get_i32(env, argv[2], &fd) < 0 ||
        (!is_nullish(env, argv[3]) && get_i32(env, argv[3], &events) < 0)) {
        return throw_last(env);
    }
    if (op != EPOLL_CTL_ADD && op != EPOLL_CTL_DEL && op != EPOLL_CTL_MOD) {
        return make_int(env, -EINVAL);
    }
    memset(&ev, 0, sizeof(ev));
    ev.events = (events & 1 ? EPOLLIN : 0) | (events & 2 ? EPOLLOUT : 0);
    ev.data.fd = fd;
    return make_int(env, epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0);
}

/* epollWait(epfd, out:Int32Array) -> number of ready fds written to `out`
 * (without waiting), or -errno. */
static napi_value n_epoll_wait(napi_env env, napi_callback_info info) {
    napi_value argv[2];
    int32_t epfd;
    uint8_t *out;
    size_t outlen, max;
    struct epoll_event evs[64];
    int n;
    if (get_args(env, info, 2, argv) < 0 || get_i32(env, argv[0], &epfd) < 0) {
        return throw_last(env);
    }
    if (get_bytes(env, argv[1], &out, &outlen) < 0 || ((uintptr_t)out & 3) != 0) {
        return throw_errno(env, "epollWait: out", EINVAL);
    }
    max = outlen / sizeof(int32_t);
    if (max > 64) max = 64;
    if (max == 0) return make_int(env, 0);
    do {
        n = epoll_wait(epfd, evs, (int)max, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return make_int(env, -errno);
    for (int i = 0; i < n; i++) ((int32_t *)out)[i] = evs[i].data.fd;
    return make_int(env, n);
}

/* ------------------------------------------------------------------ process */

/* waitpid(pid, nohang) -> [pid, exitCode, signal] ([0,..] when still running,
 * [-errno,..] on failure).  Node cannot reap a child it did not spawn: the
 * libvfio-user sample client forks and its parent execs our server, which
 * then owns the client process (see the interop test's wrapper). */
static napi_value n_waitpid(napi_env env, napi_callback_info info) {
    napi_value argv[2], arr;
    int32_t pid;
    bool nohang = false;
    int status = 0;
    pid_t r;
    if (get_args(env, info, 2, argv) < 0 || get_i32(env, argv[0], &pid) < 0) {
        return throw_last(env);
    }
    if (!is_nullish(env, argv[1]) && napi_get_value_bool(env, argv[1], &nohang) != napi_ok) {
        return throw_last(env);
    }
    do {
        r = waitpid(pid, &status, nohang ? WNOHANG : 0);
    } while (r < 0 && errno == EINTR);
    {
        int32_t vals[3] = {r < 0 ? -errno : r, r > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                           r > 0 && WIFSIGNALED(status) ? WTERMSIG(status) : 0};
        CHECK(napi_create_array_with_length(env, 3, &arr));
        for (uint32_t i = 0; i < 3; i++) {
            napi_value v;
            CHECK(napi_create_int32(env, vals[i], &v));
            CHECK(napi_set_element(env, arr, i, v));
        }
    }
    return arr;
}

/* --------------------------------------------------------------------- init */

/* ---------------------------------------------------------------- CRC-32C */

/*
 * CRC-32C (Castagnoli) for the migration stream: with SSE4.2 three
 * independent chains of the crc32 instruction run over three lanes of a
 * block (the instruction's latency hides behind the other two), joined by
 * multiplying the earlier lanes' remainders by x^(8 * CRC_LANE) -- a linear
 * map, tabulated at first use from the instruction itself.  copy variants
 * store each word they load, so the CRC is that of the copy even while the
 * source changes (guest memory of a running guest).  Elsewhere: a table.
 */
#define CRC_POLY 0x82f63b78u /* reflected Castagnoli polynomial */
#define CRC_LANE 4096

static uint32_t crc_table[256];
static uint32_t crc_join[4][256]; /* r -> r * x^(8 * CRC_LANE) mod P */
static int crc_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

/* The register after `n` bytes, one at a time (no inversion in or out). */
static uint32_t crc_bytes_sw(uint32_t c, const uint8_t *p, size_t n) {
    while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc_words_hw(uint32_t c, const uint8_t *p, uint8_t *dst, size_t n) {
    uint64_t r = c;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        if (dst) {
            memcpy(dst, &v, 8);
            dst += 8;
        }
        r = _mm_crc32_u64(r, v);
    }
    c = (uint32_t)r;
    for (; n > 0; n--, p++) {
        uint8_t v = *p;
        if (dst) *dst++ = v;
        c = _mm_crc32_u8(c, v);
    }
    return c;
}

static uint32_t crc_shift(uint32_t r) {
    return crc_join[0][r & 0xff] ^ crc_join[1][(r >> 8) & 0xff] ^ crc_join[2][(r >> 16) & 0xff] ^ crc_join[3][r >> 24];
}

/* Three lanes of CRC_LANE bytes at a time; `copy`: also store to dst. */
__attribute__((target("sse4.2"))) static inline uint32_t crc_hw3(uint32_t c, const uint8_t *p, uint8_t *dst, size_t n, int copy) {
    for (; n >= 3 * CRC_LANE; n -= 3 * CRC_LANE, p += 3 * CRC_LANE) {
        uint64_t a = c, b = 0, d = 0;
        for (size_t i = 0; i < CRC_LANE; i += 8) {
            uint64_t va, vb, vd;
            memcpy(&va, p + i, 8);
            memcpy(&vb, p + CRC_LANE + i, 8);
            memcpy(&vd, p + 2 * CRC_LANE + i, 8);
            if (copy) {
                memcpy(dst + i, &va, 8);
                memcpy(dst + CRC_LANE + i, &vb, 8);
                memcpy(dst + 2 * CRC_LANE + i, &vd, 8);
            }
            a = _mm_crc32_u64(a, va);
            b = _mm_crc32_u64(b, vb);
            d = _mm_crc32_u64(d, vd);
        }
        c = crc_shift(crc_shift((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)d;
        if (copy) dst += 3 * CRC_LANE;
    }
    return crc_words_hw(c, p, copy ? dst : NULL, n);
}
#endif

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (c & 1 ? CRC_POLY : 0);
        crc_table[i] = c;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        static const uint8_t zeros[CRC_LANE];
        uint32_t basis[32];
        for (int b = 0; b < 32; b++) basis[b] = crc_words_hw(1u << b, zeros, NULL, CRC_LANE);
        for (int k = 0; k < 4; k++) {
            for (uint32_t v = 0; v < 256; v++) {
                uint32_t r = 0;
                for (int b = 0; b < 8; b++) {
                    if (v & (1u << b)) r ^= basis[8 * k + b];
                }
                crc_join[k][v] = r;
            }
        }
        crc_hw = 1;
    }
#endif
}

/* CRC-32C of src[0, n) continuing `crc` (as zlib's crc32 chains); with dst,
 * src is copied there as it is read. */
static uint32_t crc32c_run(uint32_t crc, const uint8_t *src, uint8_t *dst, size_t n) {
    uint32_t c = ~crc;
    pthread_once(&crc_once, crc_init);
#if defined(__x86_64__)
    if (crc_hw) return ~(dst ? crc_hw3(c, src, dst, n, 1) : crc_hw3(c, src, NULL, n, 0));
#endif
    if (dst) {
        memmove(dst, src, n);
        src = dst;
    }
    return ~crc_bytes_sw(c, src, n);
}

/* crc32c(buf, crc) -> the CRC-32C of buf continuing crc (0 to start). */
static napi_value n_crc32c(napi_env env, napi_callback_info info) {
    napi_value argv[2], out;
    int64_t crc;
    uint8_t *buf;
    size_t len;
    if (get_args(env, info, 2, argv) < 0 || get_i64(env, argv[1], &crc) < 0) return throw_last(env);
    if (get_bytes(env, argv[0], &buf, &len) < 0) return throw_errno(env, "crc32c: buffer", EINVAL);
    CHECK(napi_create_uint32(env, crc32c_run((uint32_t)crc, buf, NULL, len), &out));
    return out;
}

/* copyCrc32c(dst, dstOff, src, crc) -> copies src to dst[dstOff, +src.length)
 * and returns the CRC-32C of what it wrote, continuing crc. */
static napi_value n_copy_crc32c(napi_env env, napi_callback_info info) {
    napi_value argv[4], out;
    int64_t off, crc;
    uint8_t *dst, *src;
    size_t dlen, slen;
    if (get_args(env, info, 4, argv) < 0 || get_i64(env, argv[1], &off) < 0 || get_i64(env, argv[3], &crc) < 0) {
        return throw_last(env);
    }
    if (get_bytes(env, argv[0], &dst, &dlen) < 0 || get_bytes(env, argv[2], &src, &slen) < 0) {
        return throw_errno(env, "copyCrc32c: buffers", EINVAL);
    }
    if (off < 0 || (uint64_t)off + slen > dlen) return throw_errno(env, "copyCrc32c: range", ERANGE);
    CHECK(napi_create_uint32(env, crc32c_run((uint32_t)crc, src, dst + off, slen), &out));
    return out;
}

#define EXPORT_FN(name, fn)                                                    \
    do {                                                                       \
        napi_value f;                                                          \
        if (napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &f) != \
                napi_ok ||                                                     \
            napi_set_named_property(env, exports, name, f) != napi_ok) {      \
            return NULL;                                                       \
        }                                                                      \
    } while (0)

/* ------------------------------------------------------------- dirty bits */

/* Byte b as 8 bytes, byte i 0xff when bit i of b is set, else 0: the bits
 * multiplied into their own bytes, each made 0x80 when not zero, then 0xff. */
static inline uint64_t spread_byte(uint64_t b) {
    uint64_t t = (b * 0x0101010101010101ULL) & 0x8040201008040201ULL;
    return (((t + 0x7f7f7f7f7f7f7f7fULL) & 0x8080808080808080ULL) >> 7) * 0xff;
}

/* Source byte k of a bitmap whose bits from `bits` on read as 0. */
static inline uint64_t bits_byte(const uint8_t *src, size_t slen, uint64_t bits, uint64_t k) {
    if (k >= slen || k * 8 >= bits) return 0;
    if (k * 8 + 8 <= bits) return src[k];
    return src[k] & ((1u << (bits - k * 8)) - 1);
}

/* spread_byte of every byte, for the loops (a load is cheaper than the
 * arithmetic); filled once per process. */
static uint64_t spread_lut[256];
static pthread_once_t spread_once = PTHREAD_ONCE_INIT;
static void spread_lut_fill(void) {
    for (unsigned b = 0; b < 256; b++) spread_lut[b] = spread_byte(b);
}

/* The refinement loop from output word i on, for one value of `fold` (the
 * compiler makes a copy of each without the test per word); source bytes
 * below base + 2 + `fast` are read without tests, then through bits_byte.
 * (x << 1) << (63 - sh) is x << (64 - sh) without the undefined shift by 64
 * when sh is 0. */
static inline void spread_run(uint8_t *dst, size_t i, size_t n, const uint8_t *src, size_t slen, uint64_t bits,
                              uint64_t base, unsigned sh, bool fold, size_t fast) {
    uint64_t x1 = spread_lut[bits_byte(src, slen, bits, base + i + 1)];
    /* y: output word i before the fold; each turn makes the next one */
    uint64_t y = (spread_lut[bits_byte(src, slen, bits, base + i)] >> sh) | ((x1 << 1) << (63 - sh));
    for (; i < n; i++) {
        uint64_t x2 = spread_lut[i < fast ? src[base + i + 2] : bits_byte(src, slen, bits, base + i + 2)];
        uint64_t next = (x1 >> sh) | ((x2 << 1) << (63 - sh));
        uint64_t z = fold ? y | (y >> 1) | (next << 63) : y;
        memcpy(dst + 8 * i, &z, 8);
        x1 = x2;
        y = next;
    }
}

/*
 * spreadBits8(src, dst, n, shift, fold, bits) -> n, or -EINVAL when dst
 * holds fewer than 8n bytes or shift is negative.  Let E be the first
 * `bits` bits of src (later ones, and bytes past its end, reading as 0),
 * each repeated 8 times: bit q of E is bit q/8 of src.  dst's first n
 * little-endian 64-bit words get E's bits from `shift` on, each OR-ed with
 * the next one when `fold`.  That is a dirty bitmap refined by 8 (4 KiB
 * tracking pages to 512-byte report pages) for a report starting `shift`
 * report pages into the tracked range and ending before tracked page
 * `bits`, its pages straddling two tracked pages when `fold`.
 */
static napi_value n_spread_bits8(napi_env env, napi_callback_info info) {
    napi_value argv[6];
    int64_t n64, shift64, bits64;
    bool fold;
    uint8_t *src, *dst;
    size_t slen, dlen, n, i = 0;
    uint64_t base, bits;
    unsigned sh;
    if (get_args(env, info, 6, argv) < 0 || napi_get_value_int64(env, argv[2], &n64) != napi_ok ||
        napi_get_value_int64(env, argv[3], &shift64) != napi_ok || napi_get_value_bool(env, argv[4], &fold) != napi_ok ||
        napi_get_value_int64(env, argv[5], &bits64) != napi_ok) {
        return throw_errno(env, "spreadBits8: arguments", EINVAL);
    }
    if (get_bytes(env, argv[0], &src, &slen) < 0 || get_bytes(env, argv[1], &dst, &dlen) < 0) {
        return throw_errno(env, "spreadBits8: buffers", EINVAL);
    }
    if (n64 < 0 || (uint64_t)n64 > dlen / 8 || shift64 < 0) return make_int(env, -EINVAL);
    n = (size_t)n64;
    base = (uint64_t)shift64 / 64; /* source byte of dst's first word */
    sh = (unsigned)((uint64_t)shift64 % 64);
    bits = bits64 < 0 ? 0 : (uint64_t)bits64;
    if (bits > (uint64_t)slen * 8) bits = (uint64_t)slen * 8;
#ifdef __SSE2__
    if (sh == 0 && !fold) {
        /* the common case, 16 bytes a store: a source byte broadcast to 8
         * lanes, each lane keeping its own bit */
        const __m128i lanes = _mm_set1_epi64x((long long)0x8040201008040201ULL);
        for (; i + 4 <= n && (base + i + 4) * 8 <= bits; i += 4) {
            uint32_t v;
            __m128i x, lo, hi;
            memcpy(&v, src + base + i, 4);
            x = _mm_cvtsi32_si128((int)v);
            x = _mm_unpacklo_epi8(x, x);
            x = _mm_unpacklo_epi16(x, x);
            lo = _mm_unpacklo_epi32(x, x);
            hi = _mm_unpackhi_epi32(x, x);
            lo = _mm_cmpeq_epi8(_mm_and_si128(lo, lanes), lanes);
            hi = _mm_cmpeq_epi8(_mm_and_si128(hi, lanes), lanes);
            _mm_storeu_si128((__m128i *)(dst + 8 * i), lo);
            _mm_storeu_si128((__m128i *)(dst + 8 * i + 16), hi);
        }
    }
#endif
    {
        uint64_t whole = bits / 8; /* source bytes below `bits` */
        size_t fast = whole > base + 2 ? (size_t)(whole - base - 2) : 0;
        pthread_once(&spread_once, spread_lut_fill);
        if (fold) spread_run(dst, i, n, src, slen, bits, base, sh, true, fast);
        else spread_run(dst, i, n, src, slen, bits, base, sh, false, fast);
    }
    return make_int(env, n64);
}

/*
 * memcpy for a copy whose destination is not read again soon (a migrated
 * guest page): streaming stores write whole lines without first reading
 * them into the cache, a third less memory traffic for a cold page.
 * Callers fence once after their last copy.
 */
/* How many runs ahead copyDirty starts the page walks of the pages to come. */
#define PREFETCH_RUNS 6

static void copy_stream(uint8_t *d, const uint8_t *s, size_t n) {
#ifdef __SSE2__
    if (((uintptr_t)d & 15) == 0 && (d + n <= s || s + n <= d)) {
        size_t i = 0;
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
            __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
            _mm_stream_si128((__m128i *)(d + i), a);
            _mm_stream_si128((__m128i *)(d + i + 16), b);
            _mm_stream_si128((__m128i *)(d + i + 32), c);
            _mm_stream_si128((__m128i *)(d + i + 48), e);
        }
        if (i < n) memcpy(d + i, s + i, n - i);
        return;
    }
#endif
    memmove(d, s, n);
}

/*
 * copyDirty(dst, src, pending, bitmap, cpu, msg, hostBase, pageSize, out)
 * -> 0, or -EINVAL (nothing read or written) when the arrays do not fit
 * together.  The final walk of one DMA mapping, one page of `pageSize`
 * bytes per 4 KiB flag: page p is dirty when pending[p] is set, when bit p
 * of `bitmap` is (bits past its end read as 0; null: none), or when
 * cpu[hostBase + p] or msg[hostBase + p] is; each mark found is taken
 * (cleared).  The dirty pages are copied from src to the same offsets of
 * dst (the two views of the mapping, of one length): streaming stores (no
 * read of a destination line first), and the next run's lines and the
 * page walks of the pages PREFETCH_RUNS runs ahead started early (the
 * pages are scattered, and rarely in the cache).  out[0..2] = pages
 * copied, bytes copied, pending marks taken.
 */
static napi_value n_copy_dirty(napi_env env, napi_callback_info info) {
    napi_value argv[9];
    uint8_t *dst, *src, *pend, *bm = NULL, *cpu, *msg, *ob;
    size_t dlen, slen, plen, blen = 0, clen, mlen, olen, p, run = 0;
    int64_t base64, ps64;
    double *out;
    uint64_t pages = 0, bytes = 0, taken = 0;
    bool null_bm = false;
    napi_valuetype t;
    int32_t runs[2 * 64];
    size_t nr = 0;
    bool in_run = false;
    if (get_args(env, info, 9, argv) < 0 || napi_get_value_int64(env, argv[6], &base64) != napi_ok ||
        napi_get_value_int64(env, argv[7], &ps64) != napi_ok || napi_typeof(env, argv[3], &t) != napi_ok) {
        return throw_errno(env, "copyDirty: arguments", EINVAL);
    }
    null_bm = t == napi_null || t == napi_undefined;
    if (get_bytes(env, argv[0], &dst, &dlen) < 0 || get_bytes(env, argv[1], &src, &slen) < 0 ||
        get_bytes(env, argv[2], &pend, &plen) < 0 || (!null_bm && get_bytes(env, argv[3], &bm, &blen) < 0) ||
        get_bytes(env, argv[4], &cpu, &clen) < 0 || get_bytes(env, argv[5], &msg, &mlen) < 0 ||
        get_bytes(env, argv[8], &ob, &olen) < 0) {
        return throw_errno(env, "copyDirty: buffers", EINVAL);
    }
    /* pages of pageSize cover the mapping, the last one maybe in part */
    if (ps64 <= 0 || ps64 > (1LL << 30) || base64 < 0 || dlen != slen || plen == 0 || olen < 3 * sizeof(double) ||
        ((uintptr_t)ob & 7) != 0 || (uint64_t)(plen - 1) * (uint64_t)ps64 >= slen || (uint64_t)plen * (uint64_t)ps64 < slen ||
        (uint64_t)base64 + plen > clen || (uint64_t)base64 + plen > mlen) {
        return make_int(env, -EINVAL);
    }
    out = (double *)ob;
    cpu += base64;
    msg += base64;
    for (p = 0; p <= plen; p++) {
        bool d = false;
        if (p < plen) {
            /* eight clean pages at a time: nothing pending, no bit, no flag */
            if (!in_run && (p & 7) == 0 && p + 8 <= plen) {
                uint64_t a, c, m;
                memcpy(&a, pend + p, 8);
                memcpy(&c, cpu + p, 8);
                memcpy(&m, msg + p, 8);
                if ((a | c | m) == 0 && (bm == NULL || (p >> 3) >= blen || bm[p >> 3] == 0)) {
                    p += 7;
                    continue;
                }
            }
            if (pend[p]) {
                pend[p] = 0;
                taken++;
                d = true;
            }
            if (bm != NULL && (p >> 3) < blen && (bm[p >> 3] >> (p & 7)) & 1) d = true;
            if (cpu[p] | msg[p]) {
                cpu[p] = msg[p] = 0;
                d = true;
            }
        }
        if (d && !in_run) {
            run = p;
            in_run = true;
        } else if (!d && in_run) {
            runs[2 * nr] = (int32_t)run;
            runs[2 * nr + 1] = (int32_t)p;
            nr++;
            in_run = false;
        }
        if (nr == 64 || (p == plen && nr > 0)) {
            size_t i;
            for (i = 0; i < nr; i++) {
                uint64_t start = (uint64_t)runs[2 * i] * (uint64_t)ps64;
                uint64_t end = (uint64_t)runs[2 * i + 1] * (uint64_t)ps64;
                if (end > slen) end = slen;
                if (i + 1 < nr) {
                    const uint8_t *next = src + (uint64_t)runs[2 * i + 2] * (uint64_t)ps64;
                    size_t k, ahead = (size_t)ps64 < 4096 ? (size_t)ps64 : 4096;
                    for (k = 0; k < ahead; k += 64) __builtin_prefetch(next + k);
                }
                if (i + PREFETCH_RUNS < nr) {
                    uint64_t at = (uint64_t)runs[2 * (i + PREFETCH_RUNS)] * (uint64_t)ps64;
                    __builtin_prefetch(src + at);
                    __builtin_prefetch(dst + at, 1);
                }
                copy_stream(dst + start, src + start, (size_t)(end - start));
                pages += (uint64_t)(runs[2 * i + 1] - runs[2 * i]);
                bytes += end - start;
            }
            nr = 0;
        }
    }
#ifdef __SSE2__
    _mm_sfence();
#endif
    out[0] = (double)pages;
    out[1] = (double)bytes;
    out[2] = (double)taken;
    return make_int(env, 0);
}

static napi_value init(napi_env env, napi_value exports) {
    EXPORT_FN("socketpair", n_socketpair);
    EXPORT_FN("listen", n_listen);
    EXPORT_FN("accept", n_accept);
    EXPORT_FN("connect", n_connect);
    EXPORT_FN("sendmsg", n_sendmsg);
    EXPORT_FN("recvmsg", n_recvmsg);
    EXPORT_FN("close", n_close);
    EXPORT_FN("dup", n_dup);
    EXPORT_FN("setNonBlocking", n_set_nonblocking);
    EXPORT_FN("isUnixStream", n_is_unix_stream);
    EXPORT_FN("raiseSendBuffer", n_raise_send_buffer);
    EXPORT_FN("pollStart", n_poll_start);
    EXPORT_FN("pollUpdate", n_poll_update);
    EXPORT_FN("pollClose", n_poll_close);
    EXPORT_FN("pollRef", n_poll_ref);
    EXPORT_FN("pollSetIo", n_poll_set_io);
    EXPORT_FN("memfdCreate", n_memfd_create);
    EXPORT_FN("getSeals", n_get_seals);
    EXPORT_FN("mmap", n_mmap);
    EXPORT_FN("munmap", n_munmap);
    EXPORT_FN("liveMappings", n_live_mappings);
    EXPORT_FN("pageSize", n_page_size);
    EXPORT_FN("eventfd", n_eventfd);
    EXPORT_FN("eventfdRead", n_eventfd_read);
    EXPORT_FN("eventfdWrite", n_eventfd_write);
    EXPORT_FN("isEventfd", n_is_eventfd);
    EXPORT_FN("epollCreate", n_epoll_create);
    EXPORT_FN("epollCtl", n_epoll_ctl);
    EXPORT_FN("epollWait", n_epoll_wait);
    EXPORT_FN("waitpid", n_waitpid);
    EXPORT_FN("spreadBits8", n_spread_bits8);
    EXPORT_FN("crc32c", n_crc32c);
    EXPORT_FN("copyCrc32c", n_copy_crc32c);
    EXPORT_FN("copyDirty", n_copy_dirty);
    return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
