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
 *   - eventfd create/read/write, F_GET_SEALS, dup, close.
 *
 * Plain C against node_api.h and uv.h (N-API 8), no C++ and no wrappers, so
 * the same binary keeps working across Node releases.  Every function reports
 * failures as a negative errno return (hot paths) or a thrown Error whose
 * `errno` property carries the number (set-up paths).
 *
 * Facts this file relies on, measured on Linux (see shared/native-notes.md):
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

static napi_value throw_last(napi_env env) {
    const napi_extended_error_info *info = NULL;
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) {
        napi_get_last_error_info(env, &info);
        napi_throw_error(env, NULL,
                         info && info->error_message ? info->error_message
                                                     : "vfu_native: N-API call failed");
    }
    return NULL;
}

/* Throws Error(message: strerror) with .errno and .code. */
static napi_value throw_errno(napi_env env, const char *what, int err) {
    char msg[256];
    napi_value m, e, n, c;
    snprintf(msg, sizeof(msg), "%s: %s", what, strerror(err));
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
    napi_create_error(env, NULL, m, &e);
    napi_create_int32(env, err, &n);
    napi_set_named_property(env, e, "errno", n);
    napi_create_string_utf8(env, "ERRNO", NAPI_AUTO_LENGTH, &c);
    napi_set_named_property(env, e, "code", c);
    napi_throw(env, e);
    return NULL;
}

static napi_value make_int(napi_env env, int64_t v) {
    napi_value r;
    napi_create_int64(env, v, &r);
    return r;
}

static int get_args(napi_env env, napi_callback_info info, size_t want,
                    napi_value *argv) {
    size_t argc = want;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
        return -1;
    }
    for (size_t i = argc; i < want; i++) {
        napi_get_undefined(env, &argv[i]);
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

static int is_nullish(napi_env env, napi_value v) {
    napi_valuetype t;
    napi_typeof(env, v, &t);
    return t == napi_undefined || t == napi_null;
}

/* ------------------------------------------------------------------ sockets */

static napi_value n_socketpair(napi_env env, napi_callback_info info) {
    int sv[2];
    napi_value arr;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
        return throw_errno(env, "socketpair", errno);
    }
    CHECK(napi_create_array_with_length(env, 2, &arr));
    napi_set_element(env, arr, 0, make_int(env, sv[0]));
    napi_set_element(env, arr, 1, make_int(env, sv[1]));
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

/* listen(path, backlog, mode): the socket file appears at `path` only once
 * it is listening (bound under a temporary name, then renamed), so a client
 * polling for the file never meets ECONNREFUSED; it is created with `mode`
 * (the umask is narrowed around bind so it is never wider, even briefly). */
static napi_value n_listen(napi_env env, napi_callback_info info) {
    napi_value argv[3];
    struct sockaddr_un addr, tmp;
    int32_t backlog = 16, mode = 0600;
    int fd, rc, err;
    mode_t old;
    if (get_args(env, info, 3, argv) < 0) return throw_last(env);
    if ((rc = fill_addr(env, argv[0], &addr)) < 0) return throw_errno(env, "listen", -rc);
    if (!is_nullish(env, argv[1])) get_i32(env, argv[1], &backlog);
    if (!is_nullish(env, argv[2])) get_i32(env, argv[2], &mode);
    tmp = addr;
    if (snprintf(tmp.sun_path, sizeof(tmp.sun_path), "%s.%d~", addr.sun_path, (int)getpid()) >=
        (int)sizeof(tmp.sun_path)) {
        return throw_errno(env, "listen", ENAMETOOLONG);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return throw_errno(env, "socket", errno);
    unlink(tmp.sun_path);
    old = umask(0777 & ~mode);
    rc = bind(fd, (struct sockaddr *)&tmp, sizeof(tmp));
    err = errno;
    umask(old);
    if (rc < 0) {
        close(fd);
        return throw_errno(env, "bind", err);
    }
    if (chmod(tmp.sun_path, mode) < 0 || listen(fd, backlog) < 0 ||
        rename(tmp.sun_path, addr.sun_path) < 0) {
        err = errno;
        close(fd);
        unlink(tmp.sun_path);
        return throw_errno(env, "listen", err);
    }
    return make_int(env, fd);
}

/* accept(fd) -> new fd (non-blocking, close-on-exec) or -errno */
static napi_value n_accept(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    int32_t fd;
    int c;
    if (get_args(env, info, 1, argv) < 0 || get_i32(env, argv[0], &fd) < 0) {
        return throw_last(env);
    }
    c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return make_int(env, c < 0 ? -errno : c);
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
    if (!is_nullish(env, argv[3])) {
        bool isarr = false;
        napi_is_array(env, argv[3], &isarr);
        if (!isarr) return throw_errno(env, "sendmsg: fds", EINVAL);
        napi_get_array_length(env, argv[3], &nfds);
        if (nfds > MAX_FDS) return make_int(env, -EINVAL);
        if (nfds > 0) {
            struct cmsghdr *cm;
            int *p;
            memset(&ctrl, 0, sizeof(ctrl));
            msg.msg_control = ctrl.buf;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
            cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
            p = (int *)CMSG_DATA(cm);
            for (uint32_t i = 0; i < nfds; i++) {
                napi_value e;
                int32_t v;
                napi_get_element(env, argv[3], i, &e);
                if (get_i32(env, e, &v) < 0) return throw_errno(env, "sendmsg: fd", EINVAL);
                p[i] = v;
            }
        }
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
    uint8_t *buf, *st8;
    size_t buflen, stlen;

    if (get_args(env, info, 5, argv) < 0 || get_i32(env, argv[0], &fd) < 0 ||
        get_i64(env, argv[2], &off) < 0 || get_i64(env, argv[3], &len) < 0) {
        return throw_last(env);
    }
    if (get_bytes(env, argv[1], &buf, &buflen) < 0 ||
        get_bytes(env, argv[4], &st8, &stlen) < 0 || stlen < STATE_LEN * sizeof(int32_t)) {
        return throw_errno(env, "recvmsg: arguments", EINVAL);
    }
    if (off < 0 || len <= 0 || (uint64_t)off + (uint64_t)len > buflen) {
        return throw_errno(env, "recvmsg: range", ERANGE);
    }
    return make_int(env, recv_into(fd, buf + off, (size_t)len, (int32_t *)st8));
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
     * held by strong references while registered, and their memory. */
    napi_ref rbuf_ref, rstate_ref, obuf_ref;
    uint8_t *rbuf, *obuf;
    size_t rbuf_len, obuf_len;
    int32_t *rstate;
} poll_ctx_t;

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
static void send_outbox(poll_ctx_t *p) {
    int32_t n = p->rstate[STATE_OUT_LEN];
    ssize_t r;
    int fd;
    if (n <= 0 || p->obuf == NULL || (size_t)n > p->obuf_len || uv_fileno((uv_handle_t *)&p->handle, &fd) != 0) {
        return;
    }
    do {
        r = send(fd, p->obuf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r == n) {
        p->rstate[STATE_OUT_LEN] = 0;
        return;
    }
    if (r > 0) {
        memmove(p->obuf, p->obuf + r, (size_t)(n - r));
        p->rstate[STATE_OUT_LEN] = (int32_t)(n - r);
    }
    uv_poll_start(&p->handle, UV_READABLE | UV_WRITABLE, poll_on_event);
}

static void poll_on_event(uv_poll_t *h, int status, int events) {
    poll_ctx_t *p = (poll_ctx_t *)h->data;
    napi_env env = p->env;
    napi_handle_scope scope;
    napi_value cb, recv, argv[3], result;
    napi_status st;

    if (p->closing) return;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    napi_get_reference_value(env, p->callback, &cb);
    napi_get_reference_value(env, p->self, &recv);
    argv[0] = make_int(env, events & (UV_READABLE | UV_WRITABLE | UV_DISCONNECT));
    argv[1] = make_int(env, status);
    /* Receive-ahead: read into the registered target before entering JS,
     * which gets the result as a third argument (null: nothing read).  The
     * JS side saves the N-API call, and its cost, on every message. */
    napi_get_null(env, &argv[2]);
    if (status == 0 && (events & UV_READABLE) && p->rbuf != NULL) {
        int32_t off = p->rstate[STATE_RECV_OFF], len = p->rstate[STATE_RECV_LEN];
        int fd;
        if (len > 0 && off >= 0 && (size_t)off + (size_t)len <= p->rbuf_len &&
            uv_fileno((uv_handle_t *)h, &fd) == 0) {
            argv[2] = make_int(env, recv_into(fd, p->rbuf + off, (size_t)len, p->rstate));
        }
    }
    if (p->rstate != NULL) p->rstate[STATE_IN_CB] = 1;
    st = napi_make_callback(env, p->actx, recv, cb, 3, argv, &result);
    if (st == napi_pending_exception) {
        napi_value err;
        napi_get_and_clear_last_exception(env, &err);
        napi_fatal_exception(env, err);
    }
    /* The registration may have changed (or the handle closed) meanwhile. */
    if (p->rstate != NULL) {
        p->rstate[STATE_IN_CB] = 0;
        if (!p->closing) send_outbox(p);
    }
    napi_close_handle_scope(env, scope);
}

/* pollStart(fd, events, callback(events, status)) -> handle */
static napi_value n_poll_start(napi_env env, napi_callback_info info) {
    napi_value argv[3], obj, name;
    int32_t fd, events;
    uv_loop_t *loop;
    poll_ctx_t *p;
    int rc;

    if (get_args(env, info, 3, argv) < 0 || get_i32(env, argv[0], &fd) < 0 ||
        get_i32(env, argv[1], &events) < 0) {
        return throw_last(env);
    }
    CHECK(napi_get_uv_event_loop(env, &loop));
    p = calloc(1, sizeof(*p));
    if (p == NULL) return throw_errno(env, "pollStart", ENOMEM);
    p->env = env;
    rc = uv_poll_init(loop, &p->handle, fd);
    if (rc < 0) {
        free(p);
        return throw_errno(env, "uv_poll_init", -rc);
    }
    p->handle.data = p;
    CHECK(napi_create_object(env, &obj));
    CHECK(napi_create_reference(env, argv[2], 1, &p->callback));
    CHECK(napi_create_reference(env, obj, 1, &p->self));
    CHECK(napi_create_string_utf8(env, "vfu:poll", NAPI_AUTO_LENGTH, &name));
    CHECK(napi_async_init(env, obj, name, &p->actx));
    CHECK(napi_wrap(env, obj, p, poll_finalize, NULL, NULL));
    rc = uv_poll_start(&p->handle, events & (UV_READABLE | UV_WRITABLE), poll_on_event);
    if (rc < 0) {
        /* Leave the JS object wrapped; closing frees everything. */
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
    if (get_args(env, info, 2, argv) < 0) return throw_last(env);
    napi_get_value_bool(env, argv[1], &ref);
    p = unwrap_poll(env, argv[0]);
    if (p == NULL || p->closing) return NULL;
    if (ref) {
        uv_ref((uv_handle_t *)&p->handle);
    } else {
        uv_unref((uv_handle_t *)&p->handle);
    }
    return NULL;
}

static void poll_release_io(napi_env env, poll_ctx_t *p) {
    if (p->rbuf_ref) napi_delete_reference(env, p->rbuf_ref);
    if (p->rstate_ref) napi_delete_reference(env, p->rstate_ref);
    if (p->obuf_ref) napi_delete_reference(env, p->obuf_ref);
    p->rbuf_ref = p->rstate_ref = p->obuf_ref = NULL;
    p->rbuf = p->obuf = NULL;
    p->rbuf_len = p->obuf_len = 0;
    p->rstate = NULL;
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
    uint8_t *rbuf = NULL, *st8, *obuf = NULL;
    size_t rlen = 0, stlen, olen = 0;
    if (get_args(env, info, 4, argv) < 0) return throw_last(env);
    p = unwrap_poll(env, argv[0]);
    if (p == NULL || p->closing) return throw_errno(env, "pollSetIo", EBADF);
    if (is_nullish(env, argv[2])) {
        poll_release_io(env, p);
        return NULL;
    }
    if (get_bytes(env, argv[2], &st8, &stlen) < 0 || stlen < STATE_IO_SLOTS * sizeof(int32_t) ||
        (!is_nullish(env, argv[1]) && get_bytes(env, argv[1], &rbuf, &rlen) < 0) ||
        (!is_nullish(env, argv[3]) && get_bytes(env, argv[3], &obuf, &olen) < 0)) {
        return throw_errno(env, "pollSetIo: arguments", EINVAL);
    }
    poll_release_io(env, p);
    CHECK(napi_create_reference(env, argv[2], 1, &p->rstate_ref));
    if (rbuf != NULL) CHECK(napi_create_reference(env, argv[1], 1, &p->rbuf_ref));
    if (obuf != NULL) CHECK(napi_create_reference(env, argv[3], 1, &p->obuf_ref));
    p->rstate = (int32_t *)st8;
    p->rbuf = rbuf;
    p->rbuf_len = rlen;
    p->obuf = obuf;
    p->obuf_len = olen;
    return NULL;
}

/* pollClose(handle): stop and release; call before closing the fd. */
static napi_value n_poll_close(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    poll_ctx_t *p;
    if (get_args(env, info, 1, argv) < 0) return throw_last(env);
    p = unwrap_poll(env, argv[0]);
    if (p == NULL || p->closing) return NULL;
    p->closing = 1;
    uv_poll_stop(&p->handle);
    uv_close((uv_handle_t *)&p->handle, poll_on_uv_close);
    napi_async_destroy(env, p->actx);
    napi_delete_reference(env, p->callback);
    napi_delete_reference(env, p->self);
    poll_release_io(env, p);
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

static mapping_t *g_mappings; /* live mappings; the main thread only */

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
    if (!m->unmapped) {
        munmap(m->addr, m->len);
        m->unmapped = 1;
    }
    mapping_unlink(m);
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
    napi_get_value_string_utf8(env, argv[0], name, sizeof(name), &nl);
    napi_get_value_bool(env, argv[2], &seal);
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
 * prot: 1 read, 2 write.  offset must be page aligned. */
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
    if (off < 0 || len <= 0 || (off & (sysconf(_SC_PAGESIZE) - 1)) != 0) {
        return throw_errno(env, "mmap", EINVAL);
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
    m->next = g_mappings;
    g_mappings = m;
    return ab;
}

/* munmap(arrayBuffer): unmap now and detach, so stale views read as empty
 * instead of touching unmapped memory.  Idempotent. */
static napi_value n_munmap(napi_env env, napi_callback_info info) {
    napi_value argv[1];
    void *data = NULL;
    size_t len = 0;
    bool is = false;
    if (get_args(env, info, 1, argv) < 0) return throw_last(env);
    if (napi_is_arraybuffer(env, argv[0], &is) != napi_ok || !is) {
        return throw_errno(env, "munmap: not an ArrayBuffer", EINVAL);
    }
    CHECK(napi_get_arraybuffer_info(env, argv[0], &data, &len));
    if (data == NULL || len == 0) return make_int(env, 0); /* already detached */
    for (mapping_t *m = g_mappings; m; m = m->next) {
        if (m->addr == data && !m->unmapped) {
            /* Unmap before detaching: detaching may run the finaliser, which
             * frees `m`; it then sees `unmapped` and only frees. */
            munmap(m->addr, m->len);
            m->unmapped = 1;
            CHECK(napi_detach_arraybuffer(env, argv[0]));
            return make_int(env, 0);
        }
    }
    return throw_errno(env, "munmap: not a mapping made by mmap()", EINVAL);
}

static napi_value n_live_mappings(napi_env env, napi_callback_info info) {
    int64_t n = 0;
    for (mapping_t *m = g_mappings; m; m = m->next) {
        if (!m->unmapped) n++;
    }
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
    if (get_args(env, info, 2, argv) < 0) return throw_last(env);
    if (!is_nullish(env, argv[0])) get_i32(env, argv[0], &init);
    if (!is_nullish(env, argv[1])) get_i32(env, argv[1], &fl);
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

/* This thread's guard timer: 0, or -errno when none can be had. */
static int guard_ready(void) {
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
        sigemptyset(&set);
        sigaddset(&set, g_guard_signo);
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    }
    t_guard_state = 1;
    return 0;
}

/* write(fd, v) that gives up with -EAGAIN instead of sleeping. */
static int guarded_write_u64(int fd, uint64_t v) {
    struct itimerspec arm = {.it_value = {0, WRITE_GUARD_NS}, .it_interval = {0, WRITE_GUARD_NS}};
    struct itimerspec off = {{0, 0}, {0, 0}};
    ssize_t n;
    int err, rc = guard_ready();
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
    return make_int(env, guarded_write_u64(fd, (uint64_t)val));
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
    napi_get_value_bool(env, argv[1], &nohang);
    do {
        r = waitpid(pid, &status, nohang ? WNOHANG : 0);
    } while (r < 0 && errno == EINTR);
    CHECK(napi_create_array_with_length(env, 3, &arr));
    napi_set_element(env, arr, 0, make_int(env, r < 0 ? -errno : r));
    napi_set_element(env, arr, 1, make_int(env, r > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1));
    napi_set_element(env, arr, 2, make_int(env, r > 0 && WIFSIGNALED(status) ? WTERMSIG(status) : 0));
    return arr;
}

/* --------------------------------------------------------------------- init */

#define EXPORT_FN(name, fn)                                                    \
    do {                                                                       \
        napi_value f;                                                          \
        if (napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, NULL, &f) != \
                napi_ok ||                                                     \
            napi_set_named_property(env, exports, name, f) != napi_ok) {      \
            return NULL;                                                       \
        }                                                                      \
    } while (0)

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
    return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
