/* remote.c: the sepctl verbs that talk to sepd.
 *
 * Each verb sends one request on a DEALER socket and reads the replies
 * until the last one. While it waits it pings the daemon every second; a
 * daemon that lets CTL_SILENCE_PINGS pings in a row go unanswered is
 * reported as gone (pings are counted, not seconds, so time this process
 * spent stopped does not count), and one whose connection closes is
 * reported at once (a socket monitor). feed streams stdin in pieces of up
 * to SEP_FEED_PIECE bytes, keeping at most SEP_FEED_WINDOW of them
 * unacknowledged (the daemon acknowledges a piece once its tokens are
 * scored); generate acknowledges the tokens it has printed, so the daemon
 * runs at most a window ahead of it. SIGINT and SIGTERM (and a closed
 * stdout) cancel the verb's operation in the daemon before sepctl exits.
 */
#include "ctl.h"
#include "err.h"
#include "grow.h"
#include "paths.h"
#include "proto.h"
#include "utf8.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define CTL_SILENCE_PINGS 15     /* unanswered pings, one a second, before giving up */
#define CTL_CANCEL_WAIT_S 5.0    /* how long a cancelled verb waits for sepd's last word */

typedef struct {
    void *zctx, *sock, *mon;
    int curve, shook, tcp;       /* CURVE on (keys.c); a handshake succeeded; over tcp */
    int failed;                  /* the handshake failed: the error is set */
    const char *session;
    int unanswered;              /* pings sent since sepd last said anything */
} ctl_conn_t;

typedef struct {
    const char *socket, *nll_out;
    int json;
} ctl_common_t;

/* ---- signals ------------------------------------------------------------ */

static int ctl_sig_fds[2] = { -1, -1 };
static volatile sig_atomic_t ctl_signal;

static void ctl_on_signal(int sig)
{
    int e = errno;
    ctl_signal = sig;
    if (ctl_sig_fds[1] >= 0 && write(ctl_sig_fds[1], "", 1) < 0) {
        /* the pipe is full: a wake-up is pending already */
    }
    errno = e;
}

/* SIGINT and SIGTERM wake the verb's wait (a self-pipe) instead of
 * killing it; a closed stdout is an EPIPE error, not a signal. */
static int ctl_signals(void)
{
    if (pipe(ctl_sig_fds) != 0)
        return sep_fail(SEP_EIO, "pipe: %s", strerror(errno));
    for (int i = 0; i < 2; i++)
        if (fcntl(ctl_sig_fds[i], F_SETFL, O_NONBLOCK) != 0 ||
            fcntl(ctl_sig_fds[i], F_SETFD, FD_CLOEXEC) != 0)
            return sep_fail(SEP_EIO, "pipe: %s", strerror(errno));
    struct sigaction sa = { .sa_handler = ctl_on_signal };
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL) ||
        signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        return sep_fail(SEP_EIO, "signals: %s", strerror(errno));
    return SEP_OK;
}

/* ---- the connection ----------------------------------------------------- */

/* An ipc endpoint whose socket file is there but nobody listens (sepd was
 * killed): say so now instead of waiting for answers. */
static int ctl_ipc_alive(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 && errno == EACCES)
        return sep_fail(SEP_EINVAL, "%s: permission denied: the socket's folder belongs to "
                        "another user (sepd's ipc socket is its owner's alone)", path);
    if (stat(path, &st) != 0)
        return sep_fail(SEP_ENOTFOUND, "sepd is not running (no socket at %s)", path);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path)
        return SEP_OK; /* ZeroMQ shortens such paths its own way: let it try */
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sep_fail(SEP_EIO, "socket: %s", strerror(errno));
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    if (rc != 0 && e == ECONNREFUSED)
        return sep_fail(SEP_ENOTFOUND, "sepd is not running (a stale socket at %s: nobody "
                        "listens)", path);
    if (rc != 0 && e == EACCES)
        return sep_fail(SEP_EINVAL, "%s: permission denied: the socket belongs to another "
                        "user (mode %03o; sepd's ipc socket is its owner's alone)", path,
                        (unsigned)(st.st_mode & 0777));
    if (rc != 0)
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(e));
    return SEP_OK;
}

static int ctl_connect(ctl_conn_t *c, const char *endpoint_opt)
{
    char ep[4200], mon_ep[64];
    int rc = SEP_OK, linger = 0;
    memset(c, 0, sizeof *c);
    if (endpoint_opt)
        snprintf(ep, sizeof ep, "%s", endpoint_opt);
    else if ((rc = sep_default_socket(ep, sizeof ep)))
        return rc;
    if (strncmp(ep, "ipc://", 6) == 0 && (rc = ctl_ipc_alive(ep + 6)))
        return rc;
    c->zctx = zmq_ctx_new();
    c->sock = c->zctx ? zmq_socket(c->zctx, ZMQ_DEALER) : NULL;
    if (!c->sock || zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger))
        return sep_fail(SEP_EIO, "zmq: %s", zmq_strerror(errno));
    if ((rc = ctl_keys_apply(c->sock, ep, &c->curve)))
        return rc;
    c->tcp = strncmp(ep, "tcp://", 6) == 0;
    /* the monitor says when the connection closes (sepd died) or its
     * handshake fails (keys.c names why) */
    snprintf(mon_ep, sizeof mon_ep, "inproc://ctl-monitor-%d", (int)getpid());
    if (zmq_socket_monitor(c->sock, mon_ep, ZMQ_EVENT_DISCONNECTED |
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) ||
        !(c->mon = zmq_socket(c->zctx, ZMQ_PAIR)) ||
        zmq_setsockopt(c->mon, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_connect(c->mon, mon_ep))
        return sep_fail(SEP_EIO, "zmq monitor: %s", zmq_strerror(errno));
    if (zmq_connect(c->sock, ep))
        return sep_fail(SEP_EIO, "connect %s: %s", ep, zmq_strerror(errno));
    return SEP_OK;
}

static void ctl_disconnect(ctl_conn_t *c)
{
    if (c->mon)
        zmq_close(c->mon);
    if (c->sock) {
        zmq_socket_monitor(c->sock, NULL, 0);
        zmq_close(c->sock);
    }
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    memset(c, 0, sizeof *c);
}

static int ctl_send(ctl_conn_t *c, json_t *hdr, const sep_frame_t *f, int n)
{
    if (!hdr)
        return sep_fail(SEP_ENOMEM, "out of memory");
    if (c->session)
        json_object_set_new(hdr, "session", json_string(c->session));
    int rc = sep_msg_send(c->sock, NULL, 0, hdr, f, n);
    json_decref(hdr);
    return rc;
}

/* A monitor event: 1 when the connection to sepd closed. */
static int ctl_monitor_closed(ctl_conn_t *c)
{
    int closed = 0;
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return closed;
        }
        uint16_t what = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&what, zmq_msg_data(&ev), 2);
            memcpy(&value, (uint8_t *)zmq_msg_data(&ev) + 2, 4);
        }
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        while (more) { /* the event's endpoint */
            zmq_msg_init(&ev);
            if (zmq_msg_recv(&ev, c->mon, 0) < 0) {
                zmq_msg_close(&ev);
                return closed;
            }
            more = zmq_msg_more(&ev);
            zmq_msg_close(&ev);
        }
        c->shook |= what == ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
        if (!c->failed && what != ZMQ_EVENT_HANDSHAKE_SUCCEEDED &&
            ctl_handshake_failed(what, value, c->curve, c->shook, c->tcp)) {
            c->failed = 1;
            closed = 1;
        }
        closed |= what == ZMQ_EVENT_DISCONNECTED;
    }
}

enum { CTL_GOT_MSG = 0, CTL_GOT_FD = 1, CTL_GOT_SIGNAL = 2 };

/* The next message from the daemon; extra_fd (or -1) may wake the wait
 * (*woke = CTL_GOT_FD, no message), and so may SIGINT or SIGTERM
 * (*woke = CTL_GOT_SIGNAL). Pongs and heartbeats are consumed here. */
static int ctl_recv(ctl_conn_t *c, sep_msg_t *m, int extra_fd, int *woke)
{
    *woke = CTL_GOT_MSG;
    for (;;) {
        zmq_pollitem_t it[4] = { { .socket = c->sock, .events = ZMQ_POLLIN },
                                 { .socket = c->mon, .events = ZMQ_POLLIN },
                                 { .fd = ctl_sig_fds[0], .events = ZMQ_POLLIN },
                                 { .fd = extra_fd, .events = ZMQ_POLLIN } };
        if (ctl_signal) {
            *woke = CTL_GOT_SIGNAL;
            return SEP_OK;
        }
        int n = zmq_poll(it, extra_fd >= 0 ? 4 : 3, 1000);
        if (n < 0 && errno != EINTR)
            return sep_fail(SEP_EIO, "poll: %s", zmq_strerror(errno));
        if (n > 0 && (it[0].revents & ZMQ_POLLIN)) {
            int rc = sep_msg_recv(c->sock, 0, m, 0);
            if (rc)
                return rc;
            c->unanswered = 0;
            if (strcmp(m->op, SEP_OP_PONG) == 0 || strcmp(m->op, SEP_OP_HEARTBEAT) == 0) {
                sep_msg_close(m);
                continue;
            }
            return SEP_OK;
        }
        if (n > 0 && (it[1].revents & ZMQ_POLLIN) && ctl_monitor_closed(c))
            return c->failed ? SEP_EINVAL /* the handshake's error */
                             : sep_fail(SEP_EPEER, "sepd went away (its connection closed)");
        if (n > 0 && (it[2].revents & ZMQ_POLLIN)) {
            char drain[16];
            while (read(ctl_sig_fds[0], drain, sizeof drain) > 0)
                ;
            continue; /* ctl_signal is set */
        }
        if (n > 0 && extra_fd >= 0 && (it[3].revents & (ZMQ_POLLIN | ZMQ_POLLERR))) {
            *woke = CTL_GOT_FD;
            return SEP_OK;
        }
        if (n > 0)
            continue;
        if (c->unanswered >= CTL_SILENCE_PINGS)
            return sep_fail(SEP_EIO, "sepd stopped answering (%d pings in a row without a word)",
                            CTL_SILENCE_PINGS);
        int rc = ctl_send(c, json_pack("{s:s}", "op", SEP_OP_PING), NULL, 0);
        if (rc)
            return rc;
        c->unanswered++;
    }
}

/* A reply that is an error: print it; its exit code. */
static int ctl_reply_error(const sep_msg_t *m)
{
    if (json_is_false(json_object_get(m->hdr, "ok"))) {
        fprintf(stderr, "sepctl: %s\n", sep_msg_str(m, "error", "sepd refused the request"));
        return EXIT_RUNTIME;
    }
    return 0;
}

static int ctl_conn_error(int rc)
{
    fprintf(stderr, "sepctl: %s\n", sep_errmsg());
    return rc == SEP_ENOTFOUND ? EXIT_NO_DAEMON : EXIT_RUNTIME;
}

/* The exit code of a verb stopped by signal sig (or a closed stdout). */
static int ctl_signal_code(int sig)
{
    return 128 + sig;
}

/* Cancel the session's op in sepd and read what is still on the way
 * (up to its last reply, or CTL_CANCEL_WAIT_S), writing NLLs that come. */
static void ctl_cancel(ctl_conn_t *c, FILE *nf, const char *last_op)
{
    if (ctl_send(c, json_pack("{s:s}", "op", SEP_OP_CANCEL), NULL, 0))
        return;
    double until = sep_now() + CTL_CANCEL_WAIT_S;
    while (sep_now() < until) {
        zmq_pollitem_t it = { .socket = c->sock, .events = ZMQ_POLLIN };
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        sep_msg_t m;
        if (sep_msg_recv(c->sock, 0, &m, 0))
            return;
        int last = strcmp(m.op, SEP_OP_CANCEL) == 0 ? !last_op
                   : json_is_false(json_object_get(m.hdr, "ok")) ||
                         json_is_true(json_object_get(m.hdr, "done")) ||
                         (last_op && strcmp(m.op, last_op) == 0);
        if (nf && m.n_frames >= 1 && json_is_true(json_object_get(m.hdr, "ok")) &&
            (strcmp(m.op, SEP_OP_GENERATE) != 0 ||
             json_is_true(json_object_get(m.hdr, "text_end"))))
            for (size_t i = 0; i < m.frames[0].len / sizeof(float); i++)
                fprintf(nf, "%.9g\n", ((const float *)m.frames[0].data)[i]);
        sep_msg_close(&m);
        if (last)
            return;
    }
}

/* ---- output ------------------------------------------------------------- */

/* NLLs as a script reads them back: %.9g round-trips an fp32. */
static int ctl_write_nlls(FILE *f, const sep_msg_t *m, int frame)
{
    if (!f || m->n_frames <= frame)
        return 0;
    const float *v = m->frames[frame].data;
    for (size_t i = 0; i < m->frames[frame].len / sizeof(float); i++)
        fprintf(f, "%.9g\n", v[i]);
    return ferror(f) ? -1 : 0;
}

/* Open --nll-out (mode "w" or "a"), before the request goes: a file that
 * cannot be written must not cost the NLLs of the op. */
static int ctl_nll_open(const char *path, const char *mode, FILE **f)
{
    *f = NULL;
    if (path && !(*f = fopen(path, mode))) {
        fprintf(stderr, "sepctl: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int ctl_nll_close(const char *path, FILE **f)
{
    int bad = *f && (ferror(*f) | (fclose(*f) != 0));
    *f = NULL;
    if (bad)
        fprintf(stderr, "sepctl: %s: write error\n", path);
    return bad ? EXIT_RUNTIME : 0;
}

/* Connect for a verb on session and open --nll-out (mode); 0, or the exit
 * code with nothing left open. */
static int ctl_session_open(const ctl_common_t *o, const char *session, const char *mode,
                            ctl_conn_t *c, FILE **nf)
{
    int rc = ctl_signals();
    if (!rc)
        rc = ctl_connect(c, o->socket);
    if (rc) {
        ctl_disconnect(c);
        return ctl_conn_error(rc);
    }
    if (ctl_nll_open(o->nll_out, mode, nf)) {
        ctl_disconnect(c);
        return EXIT_RUNTIME;
    }
    c->session = session;
    return 0;
}

/* The note for a text that ended inside a UTF-8 character. */
static void ctl_dropped_note(const sep_msg_t *m)
{
    int64_t dropped = sep_msg_int(m, "dropped_bytes", 0);
    if (dropped > 0)
        fprintf(stderr, "sepctl: note: the text ends inside a UTF-8 character; its last %lld "
                "byte(s) were not scored\n", (long long)dropped);
}

/* The summary of a session reply, as a line or as JSON (reals print
 * with 17 digits: they round-trip). */
static void ctl_print_session(const sep_msg_t *m, int json, FILE *out)
{
    if (json) {
        json_t *copy = json_deep_copy(m->hdr);
        json_object_del(copy, "v");
        json_object_del(copy, "ok");
        json_object_del(copy, "op");
        json_dumpf(copy, out, JSON_COMPACT | JSON_SORT_KEYS);
        fputc('\n', out);
        json_decref(copy);
        return;
    }
    fprintf(out, "%s  %s  tokens %lld  ppl %.4f  avg_kv %.2f  max_kv %lld  bytes_committed %lld\n",
            sep_msg_str(m, "name", "?"), sep_msg_str(m, "state", "?"),
            (long long)sep_msg_int(m, "tokens", 0), sep_msg_real(m, "ppl", 0),
            sep_msg_real(m, "avg_kv", 0), (long long)sep_msg_int(m, "max_kv", 0),
            (long long)sep_msg_int(m, "bytes_committed", 0));
}

static void ctl_print_ls(const sep_msg_t *m, int json)
{
    json_t *list = json_object_get(m->hdr, "sessions");
    if (json) {
        json_dumpf(list, stdout, JSON_COMPACT | JSON_SORT_KEYS);
        fputc('\n', stdout);
        return;
    }
    size_t i;
    json_t *s;
    printf("%-24s %-10s %-9s %-9s %12s %10s %6s\n", "NAME", "STATE", "RUNNING", "METHOD",
           "TOKENS", "PPL", "KV");
    json_array_foreach(list, i, s)
        printf("%-24s %-10s %-9s %-9s %12lld %10.4f %6lld\n",
               json_string_value(json_object_get(s, "name")),
               json_string_value(json_object_get(s, "state")),
               json_string_value(json_object_get(s, "running")),
               json_string_value(json_object_get(s, "method")),
               (long long)json_integer_value(json_object_get(s, "tokens")),
               json_number_value(json_object_get(s, "ppl")),
               (long long)json_integer_value(json_object_get(s, "kv")));
}

static void ctl_print_fields(const sep_msg_t *m)
{
    const char *k;
    json_t *v;
    json_object_foreach(m->hdr, k, v) {
        if (!strcmp(k, "v") || !strcmp(k, "ok") || !strcmp(k, "op"))
            continue;
        char *text = json_is_string(v) ? NULL : json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        printf("%-16s %s\n", k, text ? text : json_string_value(v));
        free(text);
    }
}

/* Send one request and print its one reply (NLLs to --nll-out). */
static int ctl_simple(const ctl_common_t *o, const char *session, json_t *req)
{
    ctl_conn_t c;
    sep_msg_t m = { 0 };
    FILE *nf = NULL;
    char verb[32];
    snprintf(verb, sizeof verb, "%s", sep_hdr_str(req, "op", ""));
    int woke, rc, code = ctl_session_open(o, session, "a", &c, &nf);
    if (code) {
        json_decref(req);
        return code;
    }
    if (nf)
        json_object_set_new(req, "nll", json_true());
    if ((rc = ctl_send(&c, req, NULL, 0)) || (rc = ctl_recv(&c, &m, -1, &woke))) {
        code = ctl_conn_error(rc);
        goto done;
    }
    if (woke == CTL_GOT_SIGNAL) {
        /* the op runs to its end in sepd; its NLLs are still written */
        ctl_cancel(&c, nf, verb);
        code = ctl_signal_code(ctl_signal);
        goto done;
    }
    if ((code = ctl_reply_error(&m)))
        goto done;
    if (ctl_write_nlls(nf, &m, 0)) {
        code = EXIT_RUNTIME;
        goto done;
    }
    const char *op = sep_msg_str(&m, "op", "");
    ctl_dropped_note(&m);
    if (strcmp(op, SEP_OP_LS) == 0)
        ctl_print_ls(&m, o->json);
    else if (!o->json && (strcmp(op, SEP_OP_STATS) == 0 || strcmp(op, SEP_OP_INFO) == 0))
        ctl_print_fields(&m);
    else
        ctl_print_session(&m, o->json, stdout);
done:
    if (!code)
        code = ctl_nll_close(o->nll_out, &nf);
    else if (nf)
        fclose(nf);
    sep_msg_close(&m);
    ctl_disconnect(&c);
    if (!code && fflush(stdout) != 0)
        code = EXIT_RUNTIME;
    return code;
}

/* ---- feed --------------------------------------------------------------- */

static void ctl_progress(const sep_msg_t *m, double t0, int final)
{
    double secs = sep_now() - t0;
    long long tokens = (long long)sep_msg_int(m, "tokens", 0);
    fprintf(stderr, "\r%lld tokens  %.0f tokens/s  ppl %.3f  kv %lld  committed %lld B%s",
            tokens, secs > 0 ? tokens / secs : 0.0, sep_msg_real(m, "ppl", 0),
            (long long)sep_msg_int(m, "kv", 0), (long long)sep_msg_int(m, "bytes_committed", 0),
            final ? "\n" : "   ");
}

/* A feed's memory of what sepd may not have saved yet (--retry): the
 * text it sent past the last checkpoint, and the NLLs of the tokens past
 * it, so that after sepd restarts (back at that checkpoint) the text is
 * sent again and the NLL file holds each token's NLL once. */
typedef struct {
    char *kept;                 /* (kept_len) session bytes [kept_at, kept_at + kept_len) */
    size_t kept_len, kept_cap;
    int64_t kept_at;
    float *nll;                 /* (nll_n) NLLs of tokens nll_at + 1 .. nll_at + nll_n */
    size_t nll_n, nll_cap;
    int64_t nll_at;             /* tokens whose NLLs are in the file */
} feed_keep_t;

typedef struct {
    const ctl_common_t *o;
    const char *session;
    int retry, from_committed;
    FILE *nf;
    feed_keep_t k;
    int64_t sent_to;            /* the session's bytes once what was sent arrives */
    int64_t pending_max;        /* sepd's max_pending_bytes: unacknowledged text at most */
    int eof, progress;
    double t0;
    const char *lost;           /* why the last connection's feed broke (--retry) */
} feed_t;

/* Keep the bytes just sent (--retry). */
static int feed_keep_bytes(feed_t *f, const char *buf, size_t n)
{
    feed_keep_t *k = &f->k;
    if (SEP_GROW(k->kept, k->kept_cap, k->kept_len + n))
        return -1;
    memcpy(k->kept + k->kept_len, buf, n);
    k->kept_len += n;
    return 0;
}

/* sepd says a checkpoint holds `bytes` bytes and `tokens` tokens: forget
 * the text before, write the NLLs up to it. */
static int feed_committed(feed_t *f, int64_t bytes, int64_t tokens)
{
    feed_keep_t *k = &f->k;
    if (bytes > k->kept_at) {
        size_t drop = (size_t)(bytes - k->kept_at) < k->kept_len ? (size_t)(bytes - k->kept_at)
                                                                  : k->kept_len;
        memmove(k->kept, k->kept + drop, k->kept_len - drop);
        k->kept_len -= drop;
        k->kept_at += (int64_t)drop;
    }
    size_t w = 0;
    while (w < k->nll_n && k->nll_at + (int64_t)w < tokens)
        w++;
    for (size_t i = 0; f->nf && i < w; i++)
        fprintf(f->nf, "%.9g\n", k->nll[i]);
    memmove(k->nll, k->nll + w, (k->nll_n - w) * sizeof *k->nll);
    k->nll_n -= w;
    k->nll_at += (int64_t)w;
    return f->nf && ferror(f->nf) ? -1 : 0;
}

/* The NLLs of a reply: written at once, or (--retry) kept until saved. */
static int feed_nlls(feed_t *f, const sep_msg_t *m)
{
    if (!f->retry)
        return ctl_write_nlls(f->nf, m, 0);
    if (m->n_frames < 1)
        return 0;
    feed_keep_t *k = &f->k;
    size_t n = m->frames[0].len / sizeof(float);
    if (SEP_GROW(k->nll, k->nll_cap, k->nll_n + n))
        return -1;
    memcpy(k->nll + k->nll_n, m->frames[0].data, n * sizeof(float));
    k->nll_n += n;
    return feed_committed(f, sep_msg_int(m, "bytes_committed", 0),
                          sep_msg_int(m, "tokens_committed", 0));
}

/* --retry with --nll-out: each piece says which NLLs this client has, so
 * sepd keeps the rest for it (and sends them again after a restart). */
static void feed_confirm(feed_t *f, json_t *h)
{
    if (!h || !f->retry || !f->nf)
        return;
    json_object_set_new(h, "nll_keep", json_true());
    json_object_set_new(h, "nll_have", json_integer(f->k.nll_at + (json_int_t)f->k.nll_n));
}

/* The session's figures (info). With wait (--retry, --from-committed), a
 * session that sepd reloads after a worker fault ("recovering") is asked
 * again until it is back at its checkpoint: only then do its figures say
 * where to resend from. Without, a plain feed goes on and its first piece
 * is refused (unavailable), as every verb is while the workers restart. */
static int feed_info(ctl_conn_t *c, int wait, int64_t *bytes_in, int64_t *tokens,
                     int64_t *committed, int64_t *pending_max)
{
    for (int said = 0;; said = 1) {
        sep_msg_t m;
        int woke, rc = ctl_send(c, json_pack("{s:s}", "op", SEP_OP_INFO), NULL, 0);
        if (!rc)
            rc = ctl_recv(c, &m, -1, &woke);
        if (rc)
            return rc;
        if (woke == CTL_GOT_SIGNAL)
            return SEP_EAGAIN;
        int ok = !json_is_false(json_object_get(m.hdr, "ok"));
        if (!ok && strcmp(sep_msg_str(&m, "code", ""), SEP_ERR_UNAVAILABLE) != 0) {
            rc = sep_fail(SEP_EINVAL, "%s", sep_msg_str(&m, "error", "info refused"));
            sep_msg_close(&m);
            return rc;
        }
        /* unavailable: sepd shuts down, or restarts its workers; asked
         * again until it is gone (the connection breaks) or serves */
        int recovering = !ok || !strcmp(sep_msg_str(&m, "state", ""), "recovering");
        *bytes_in = sep_msg_int(&m, "bytes_in", 0);
        *tokens = sep_msg_int(&m, "tokens", 0);
        *committed = sep_msg_int(&m, "bytes_committed", 0);
        *pending_max = sep_msg_int(&m, "max_pending_bytes", SEP_FEED_WINDOW * SEP_FEED_PIECE);
        if (*pending_max < 1)
            *pending_max = SEP_FEED_PIECE;
        sep_msg_close(&m);
        if (!recovering || !wait)
            return SEP_OK;
        if (!said)
            fprintf(stderr, "sepctl: session '%s': %s; waiting\n", c->session ? c->session : "?",
                    ok ? "sepd restarts its workers" : "sepd is not ready");
        if (ctl_signal)
            return SEP_EAGAIN;
        usleep(200 * 1000);
    }
}

/* --from-committed: read and drop the first n bytes of stdin. */
static int feed_skip(int64_t n, char *buf)
{
    while (n > 0) {
        ssize_t got = read(0, buf, n < SEP_FEED_PIECE ? (size_t)n : SEP_FEED_PIECE);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return sep_fail(SEP_EINVAL, "--from-committed: stdin ended %lld bytes before the "
                            "text the session holds", (long long)n);
        n -= got;
    }
    return SEP_OK;
}

/* --from-committed with --nll-out: keep the first `lines` lines of the
 * file (the NLLs of the tokens scored), append from there. */
static int feed_nll_resume(const char *path, int64_t lines, FILE **nf)
{
    FILE *f = fopen(path, "r+");
    if (!f && errno == ENOENT && lines == 0)
        f = fopen(path, "w");
    if (!f)
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
    int64_t seen = 0;
    int ch;
    while (seen < lines && (ch = getc(f)) != EOF)
        seen += ch == '\n';
    if (seen < lines) {
        fclose(f);
        return sep_fail(SEP_EINVAL, "%s: %lld NLLs, the session has scored %lld tokens", path,
                        (long long)seen, (long long)lines);
    }
    long at = ftell(f);
    if (at < 0 || fflush(f) || ftruncate(fileno(f), at) || fseek(f, at, SEEK_SET)) {
        fclose(f);
        return sep_fail(SEP_EIO, "%s: %s", path, strerror(errno));
    }
    *nf = f;
    return SEP_OK;
}

/* Wait for sepd to come back (--retry), then connect. */
static int feed_reconnect(feed_t *f, ctl_conn_t *c, const char *why)
{
    fprintf(stderr, "\nsepctl: %s; waiting for sepd to come back (SIGINT stops)\n", why);
    ctl_disconnect(c);
    for (;;) {
        if (ctl_signal)
            return SEP_EAGAIN;
        if (!ctl_connect(c, f->o->socket)) {
            c->session = f->session;
            return SEP_OK;
        }
        ctl_disconnect(c);
        usleep(200 * 1000);
    }
}

/* One connection's share of the feed: resend what sepd lost (after a
 * restart), then stream stdin, until feed_end is answered. Returns 0, an
 * exit code, or -1 when the connection broke and --retry goes on. */
static int feed_run(feed_t *f, ctl_conn_t *c, char *buf, int resume)
{
    sep_msg_t m = { 0 };
    int rc, code = 0, sent_any = 0;
    int64_t seq = 0, acked = 0;
    int64_t unacked = 0, plen[SEP_FEED_WINDOW] = { 0 }; /* bytes of the pieces in flight */
    size_t resend = 0; /* bytes of f->k.kept still to send again */
    if (resume) {
        int64_t bytes_in, tokens, committed;
        if ((rc = feed_info(c, 1, &bytes_in, &tokens, &committed, &f->pending_max)))
            return rc == SEP_EAGAIN ? ctl_signal_code(ctl_signal)
                   : f->retry && rc != SEP_EINVAL ? -1 : ctl_conn_error(rc);
        feed_keep_t *k = &f->k;
        if (bytes_in < k->kept_at || bytes_in > f->sent_to) {
            fprintf(stderr, "sepctl: session '%s' holds %lld bytes; this feed kept %lld..%lld: "
                    "another client fed it meanwhile\n", f->session, (long long)bytes_in,
                    (long long)k->kept_at, (long long)f->sent_to);
            return EXIT_RUNTIME;
        }
        if (tokens < k->nll_at) {
            fprintf(stderr, "sepctl: session '%s' is back at %lld tokens; this feed wrote the "
                    "NLLs of %lld\n", f->session, (long long)tokens, (long long)k->nll_at);
            return EXIT_RUNTIME;
        }
        /* NLLs past the restart point come again; those before it that this
         * client lacks, sepd kept for it (nll_have tells it where to start) */
        if (k->nll_at + (int64_t)k->nll_n > tokens)
            k->nll_n = (size_t)(tokens - k->nll_at);
        if (feed_committed(f, committed, k->nll_at + (int64_t)k->nll_n))
            return EXIT_RUNTIME;
        resend = (size_t)(f->sent_to - bytes_in);
        fprintf(stderr, "sepctl: sepd is back: session '%s' at %lld bytes; sending %zu again\n",
                f->session, (long long)bytes_in, resend);
        if (!resend) {
            /* all was sent: the feed is taken again at once with an empty
             * piece (sepd runs a session it brought back from the store
             * for its client only, so the ids its checkpoint queued are
             * scored now and their NLLs come here, not once more text
             * arrives); at the end of stdin, the feed's end again */
            sep_frame_t none = { "", 0 };
            plen[seq % SEP_FEED_WINDOW] = 0;
            json_t *h = json_pack("{s:s, s:I, s:b}", "op", SEP_OP_FEED, "seq",
                                  (json_int_t)seq++, "nll", f->nf != NULL);
            feed_confirm(f, h);
            if ((rc = ctl_send(c, h, &none, 1)) ||
                (f->eof && (rc = ctl_send(c, json_pack("{s:s}", "op", SEP_OP_FEED_END), NULL, 0))))
                return -1;
            sent_any = 1;
        }
    }
    while (!code) {
        /* read more while the window has room: at most 8 pieces, and
         * max_pending_bytes of text, unacknowledged */
        int64_t room = f->pending_max - unacked;
        size_t most = room < SEP_FEED_PIECE ? (size_t)(room > 0 ? room : 0) : SEP_FEED_PIECE;
        int want_more = (!f->eof || resend) && seq - acked < SEP_FEED_WINDOW &&
                        (most >= 4096 || (most > 0 && unacked == 0));
        int woke = CTL_GOT_MSG;
        if (want_more && resend) {
            woke = CTL_GOT_FD; /* the kept bytes first */
        } else if (want_more) {
            struct pollfd p = { .fd = 0, .events = POLLIN };
            if (poll(&p, 1, 0) > 0)
                woke = CTL_GOT_FD;
        }
        if (woke == CTL_GOT_MSG &&
            (rc = ctl_recv(c, &m, want_more && !resend ? 0 : -1, &woke))) {
            if (f->retry)
                return -1;
            return ctl_conn_error(rc);
        }
        if (woke == CTL_GOT_SIGNAL) {
            /* what was sent stays the session's text */
            ctl_cancel(c, f->retry ? NULL : f->nf, NULL);
            return ctl_signal_code(ctl_signal);
        }
        if (woke == CTL_GOT_FD) {
            ssize_t got;
            const char *piece = buf;
            if (resend) {
                feed_keep_t *k = &f->k;
                got = resend < most ? (ssize_t)resend : (ssize_t)most;
                piece = k->kept + (k->kept_len - resend);
                resend -= (size_t)got;
            } else {
                got = read(0, buf, most);
                if (got < 0 && errno == EINTR)
                    continue;
                if (got < 0) {
                    fprintf(stderr, "sepctl: stdin: %s\n", strerror(errno));
                    return EXIT_RUNTIME;
                }
                if (f->retry && got > 0 && feed_keep_bytes(f, buf, (size_t)got)) {
                    fprintf(stderr, "sepctl: out of memory for the text to resend\n");
                    return EXIT_RUNTIME;
                }
                if (got > 0)
                    f->sent_to += got;
                f->eof = got == 0;
            }
            if (got > 0 || !sent_any) {
                sep_frame_t fr = { piece, (size_t)got };
                plen[seq % SEP_FEED_WINDOW] = got;
                unacked += got;
                json_t *h = json_pack("{s:s, s:I, s:b}", "op", SEP_OP_FEED, "seq",
                                      (json_int_t)seq++, "nll", f->nf != NULL);
                feed_confirm(f, h);
                if ((rc = ctl_send(c, h, &fr, 1)))
                    return f->retry ? -1 : ctl_conn_error(rc);
                sent_any = 1;
            }
            if (f->eof && !resend &&
                (rc = ctl_send(c, json_pack("{s:s}", "op", SEP_OP_FEED_END), NULL, 0)))
                return f->retry ? -1 : ctl_conn_error(rc);
            continue;
        }
        if (json_is_false(json_object_get(m.hdr, "ok"))) {
            /* sepd went away, or its workers failed (worker_fault): the
             * session is back at its checkpoint, sent again from there */
            int lost = !strcmp(sep_msg_str(&m, "code", ""), SEP_ERR_UNAVAILABLE) ||
                       !strcmp(sep_msg_str(&m, "code", ""), SEP_ERR_WORKER_FAULT);
            if (f->retry && lost) {
                f->lost = strcmp(sep_msg_str(&m, "code", ""), SEP_ERR_WORKER_FAULT) == 0
                              ? "sepd's workers failed" : "sepd went away";
                sep_msg_close(&m);
                return -1;
            }
            code = ctl_reply_error(&m);
            sep_msg_close(&m);
            break;
        }
        if (feed_nlls(f, &m)) {
            fprintf(stderr, "sepctl: %s: write error\n", f->o->nll_out);
            code = EXIT_RUNTIME;
        }
        int ended = strcmp(m.op, SEP_OP_FEED_END) == 0;
        if (strcmp(m.op, SEP_OP_FEED) == 0) {
            unacked -= plen[acked % SEP_FEED_WINDOW];
            acked++;
        }
        if (f->progress)
            ctl_progress(&m, f->t0, ended);
        if (ended && !code) {
            const char *lost = sep_msg_str(&m, "checkpoint_error", NULL);
            ctl_print_session(&m, f->o->json, stdout);
            if (lost) {
                fprintf(stderr, "sepctl: session '%s': the text is scored but not saved: %s\n",
                        f->session, lost);
                code = EXIT_RUNTIME;
            } else if (f->retry && feed_committed(f, sep_msg_int(&m, "bytes_committed", 0),
                                                  sep_msg_int(&m, "tokens_committed", 0))) {
                code = EXIT_RUNTIME;
            }
        }
        sep_msg_close(&m);
        if (ended)
            break;
    }
    return code;
}

static int ctl_feed(const ctl_common_t *o, const char *session, int retry, int from_committed)
{
    ctl_conn_t c;
    char *buf = malloc(SEP_FEED_PIECE);
    feed_t f = { .o = o, .session = session, .retry = retry, .from_committed = from_committed,
                 .progress = isatty(2), .t0 = sep_now() };
    int rc, code = 0;
    if (!buf)
        return ctl_conn_error(sep_fail(SEP_ENOMEM, "out of memory"));
    /* the file is opened after the session's figures are known */
    ctl_common_t no_nll = *o;
    no_nll.nll_out = NULL;
    if ((code = ctl_session_open(&no_nll, session, "w", &c, &f.nf))) {
        free(buf);
        return code;
    }
    /* the session's figures, and how much text sepd lets wait */
    int64_t bytes_in = 0, tokens = 0, committed = 0;
    if ((rc = feed_info(&c, retry || from_committed, &bytes_in, &tokens, &committed,
                        &f.pending_max))) {
        code = rc == SEP_EAGAIN ? ctl_signal_code(ctl_signal) : ctl_conn_error(rc);
        goto done;
    }
    /* --from-committed: stdin is the session's whole text; what the
     * session has (after a restart: what its last checkpoint holds) is
     * skipped, and the NLL file goes on from its tokens */
    if (from_committed && (rc = feed_skip(bytes_in, buf))) {
        code = ctl_conn_error(rc);
        goto done;
    }
    if (o->nll_out) {
        rc = from_committed ? feed_nll_resume(o->nll_out, tokens, &f.nf)
                            : (ctl_nll_open(o->nll_out, "w", &f.nf) ? SEP_EIO : SEP_OK);
        if (rc) {
            if (from_committed)
                fprintf(stderr, "sepctl: %s\n", sep_errmsg());
            code = EXIT_RUNTIME;
            goto done;
        }
    }
    f.sent_to = f.k.kept_at = bytes_in;
    f.k.nll_at = tokens;
    for (int resume = 0;; resume = 1) {
        f.lost = "sepd went away";
        code = feed_run(&f, &c, buf, resume);
        if (code != -1)
            break;
        if ((rc = feed_reconnect(&f, &c, f.lost))) {
            code = ctl_signal_code(ctl_signal);
            break;
        }
    }
done:
    if (f.nf && ctl_nll_close(o->nll_out, &f.nf) && !code)
        code = EXIT_RUNTIME;
    free(f.k.kept);
    free(f.k.nll);
    free(buf);
    ctl_disconnect(&c);
    return code;
}

/* ---- generate ----------------------------------------------------------- */

/* One generated token: its text (or JSON line) on stdout, its NLL in nf.
 * 0, or -1 when stdout is closed or full (errno says). */
static int ctl_gen_token(const ctl_common_t *o, const sep_msg_t *m, FILE *nf)
{
    const char *text = m->n_frames ? m->frames[0].data : "";
    size_t len = m->n_frames ? m->frames[0].len : 0;
    if (nf)
        fprintf(nf, "%.9g\n", sep_msg_real(m, "nll", 0));
    if (o->json) {
        json_t *line = json_pack("{s:I, s:s%, s:f}", "token",
                                 (json_int_t)sep_msg_int(m, "token", -1), "text", text, len,
                                 "nll", sep_msg_real(m, "nll", 0));
        /* text that is not whole UTF-8 (a split character) goes as ids only */
        if (!line)
            line = json_pack("{s:I, s:f}", "token", (json_int_t)sep_msg_int(m, "token", -1),
                             "nll", sep_msg_real(m, "nll", 0));
        json_dumpf(line, stdout, JSON_COMPACT);
        fputc('\n', stdout);
        json_decref(line);
    } else {
        fwrite(text, 1, len, stdout);
    }
    return fflush(stdout) == 0 && !ferror(stdout) ? 0 : -1;
}

/* The last line of generate (on stderr: stdout holds the text alone):
 * the tokens made and what ended them. */
static void ctl_gen_end_line(const sep_msg_t *m)
{
    const char *why = sep_msg_str(m, "stop", "?");
    json_t *str = json_object_get(m->hdr, "stop_string");
    char *quoted = str ? json_dumps(str, JSON_ENCODE_ANY) : NULL;
    fprintf(stderr, "sepctl: generate: %lld tokens, stop: %s",
            (long long)sep_msg_int(m, "generated", 0), why);
    if (!strcmp(why, "eos"))
        fprintf(stderr, " (token %lld)", (long long)sep_msg_int(m, "stop_token", -1));
    else if (!strcmp(why, "stop"))
        fprintf(stderr, " (string %lld, %s)", (long long)sep_msg_int(m, "stop_index", -1),
                quoted ? quoted : "?");
    fputc('\n', stderr);
    free(quoted);
}

static int ctl_generate(const ctl_common_t *o, const char *session, json_t *req)
{
    ctl_conn_t c;
    sep_msg_t m = { 0 };
    FILE *nf = NULL;
    int rc, woke, code = ctl_session_open(o, session, "a", &c, &nf);
    int64_t got = 0, acked = 0;
    if (code) {
        json_decref(req);
        return code;
    }
    if ((rc = ctl_send(&c, req, NULL, 0))) {
        code = ctl_conn_error(rc);
        goto done;
    }
    for (;;) {
        if ((rc = ctl_recv(&c, &m, -1, &woke))) {
            code = ctl_conn_error(rc);
            break;
        }
        if (woke == CTL_GOT_SIGNAL) {
            ctl_cancel(&c, nf, SEP_OP_GENERATE);
            code = ctl_signal_code(ctl_signal);
            break;
        }
        if ((code = ctl_reply_error(&m))) {
            sep_msg_close(&m);
            break;
        }
        if (json_is_true(json_object_get(m.hdr, "text_end"))) {
            /* the NLLs of the text's end, scored before the first token */
            if (ctl_write_nlls(nf, &m, 0))
                code = EXIT_RUNTIME;
        } else if (json_is_true(json_object_get(m.hdr, "done"))) {
            ctl_dropped_note(&m);
            if (o->json) {
                ctl_print_session(&m, 1, stdout);
            } else {
                fputc('\n', stdout);
                ctl_gen_end_line(&m);
            }
            sep_msg_close(&m);
            break;
        } else if (ctl_gen_token(o, &m, nf)) {
            int closed = errno == EPIPE;
            if (!closed)
                fprintf(stderr, "sepctl: stdout: %s\n", strerror(errno));
            sep_msg_close(&m);
            ctl_cancel(&c, nf, SEP_OP_GENERATE);
            code = closed ? ctl_signal_code(SIGPIPE) : EXIT_RUNTIME;
            break;
        } else if (++got - acked >= SEP_GEN_WINDOW / 2) {
            /* printed: sepd may run that much further ahead */
            if ((rc = ctl_send(&c, json_pack("{s:s, s:I}", "op", SEP_OP_ACK, "tokens",
                                             (json_int_t)got), NULL, 0))) {
                sep_msg_close(&m);
                code = ctl_conn_error(rc);
                break;
            }
            acked = got;
        }
        sep_msg_close(&m);
        if (code)
            break;
    }
done:
    if (nf && ctl_nll_close(o->nll_out, &nf) && !code)
        code = EXIT_RUNTIME;
    ctl_disconnect(&c);
    return code;
}

/* ---- seps, export, import ---------------------------------------------- */

/* Send one request of verb on c's session and take its reply (an error
 * reply is printed: its exit code in *code). */
static int ctl_ask(ctl_conn_t *c, json_t *req, const sep_frame_t *f, int n, sep_msg_t *m,
                   int *code)
{
    int woke, rc;
    *code = 0;
    if ((rc = ctl_send(c, req, f, n)) || (rc = ctl_recv(c, m, -1, &woke))) {
        *code = ctl_conn_error(rc);
        return -1;
    }
    if (woke == CTL_GOT_SIGNAL) {
        *code = ctl_signal_code(ctl_signal);
        return -1;
    }
    if ((*code = ctl_reply_error(m))) {
        sep_msg_close(m);
        return -1;
    }
    return 0;
}

/* A token's text on one line: control bytes escaped as C does. */
static void ctl_print_text(const char *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch == '\n')
            fputs("\\n", stdout);
        else if (ch == '\t')
            fputs("\\t", stdout);
        else if (ch == '\\')
            fputs("\\\\", stdout);
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\x%02x", ch);
        else
            putchar(ch);
    }
}

/* seps NAME: the archived separators, a page at a time. */
static int ctl_seps_list(ctl_conn_t *c, const ctl_common_t *o, int64_t from, int64_t to)
{
    int code = 0;
    while (from >= 0 && from < to) {
        sep_msg_t m;
        json_t *req = json_pack("{s:s, s:I, s:I, s:i}", "op", SEP_OP_SEPS, "from",
                                (json_int_t)from, "to", (json_int_t)to, "limit", 4096);
        if (ctl_ask(c, req, NULL, 0, &m, &code))
            return code;
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(m.hdr, "entries"), i, e) {
            long long pos = (long long)json_integer_value(json_array_get(e, 0));
            int id = (int)json_integer_value(json_array_get(e, 1));
            json_t *t = json_array_get(e, 2);
            if (o->json) {
                json_t *line = json_pack("{s:I, s:i, s:O}", "pos", (json_int_t)pos, "id", id,
                                         "text", t);
                json_dumpf(line, stdout, JSON_COMPACT);
                fputc('\n', stdout);
                json_decref(line);
            } else {
                printf("%lld\t%d\t", pos, id);
                ctl_print_text(json_string_value(t) ? json_string_value(t) : "",
                               json_string_length(t));
                putchar('\n');
            }
        }
        from = sep_msg_int(&m, "next", -1);
        sep_msg_close(&m);
        if (ferror(stdout))
            return EXIT_RUNTIME;
    }
    return code;
}

static int ctl_pwrite(int fd, const void *buf, size_t n, off_t at)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
        at += w;
    }
    return 0;
}

/* seps NAME --export FILE: the archive as a safetensors file: positions
 * (I64 [N]), ids (I32 [N]) and for each layer l layers.l.k and layers.l.v
 * ([N, kv_dim], F32 or BF16 as stored). */
static int ctl_seps_export(ctl_conn_t *c, const char *path, int64_t from, int64_t to,
                           const char *session)
{
    sep_msg_t m;
    int code = 0, fd = -1;
    char *hdr = NULL;
    json_t *req = json_pack("{s:s, s:I, s:I, s:b}", "op", SEP_OP_SEPS, "from", (json_int_t)from,
                            "to", (json_int_t)to, "count", 1);
    if (ctl_ask(c, req, NULL, 0, &m, &code))
        return code;
    int64_t total = sep_msg_int(&m, "total", 0);
    int layers = (int)sep_msg_int(&m, "n_layers", 0);
    sep_msg_close(&m);
    /* the first page tells the rows' shape */
    int64_t next = from;
    int kv_dim = 0, dtype = 1;
    sep_msg_t page = { 0 };
    int have_page = 0;
    if (total > 0) {
        req = json_pack("{s:s, s:I, s:I, s:b}", "op", SEP_OP_SEPS, "from", (json_int_t)next,
                        "to", (json_int_t)to, "data", 1);
        if (ctl_ask(c, req, NULL, 0, &page, &code))
            return code;
        have_page = 1;
        kv_dim = (int)sep_msg_int(&page, "kv_dim", 0);
        dtype = (int)sep_msg_int(&page, "dtype", 1);
    }
    size_t elem = dtype == 2 ? 2 : 4, row = (size_t)kv_dim * elem;
    json_t *h = json_object();
    uint64_t at = 0;
    json_object_set_new(h, "__metadata__", json_pack("{s:s, s:s}", "session", session,
                                                     "format", "sepd separator archive"));
    json_object_set_new(h, "positions", json_pack("{s:s, s:[I], s:[I, I]}", "dtype", "I64",
                                                  "shape", (json_int_t)total, "data_offsets",
                                                  (json_int_t)at, (json_int_t)(at + 8 * total)));
    at += 8 * (uint64_t)total;
    json_object_set_new(h, "ids", json_pack("{s:s, s:[I], s:[I, I]}", "dtype", "I32", "shape",
                                            (json_int_t)total, "data_offsets", (json_int_t)at,
                                            (json_int_t)(at + 4 * total)));
    at += 4 * (uint64_t)total;
    uint64_t kv_at = at, plane = (uint64_t)total * row;
    for (int l = 0; total > 0 && l < layers; l++)
        for (int kv = 0; kv < 2; kv++) {
            char name[32];
            snprintf(name, sizeof name, "layers.%d.%s", l, kv ? "v" : "k");
            json_object_set_new(h, name, json_pack("{s:s, s:[I, i], s:[I, I]}", "dtype",
                                                   dtype == 2 ? "BF16" : "F32", "shape",
                                                   (json_int_t)total, kv_dim, "data_offsets",
                                                   (json_int_t)at, (json_int_t)(at + plane)));
            at += plane;
        }
    hdr = json_dumps(h, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(h);
    size_t hlen = hdr ? strlen(hdr) : 0, padded = (hlen + 7) / 8 * 8;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.part", path);
    if (!hdr || (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        fprintf(stderr, "sepctl: %s: %s\n", tmp, hdr ? strerror(errno) : "out of memory");
        code = EXIT_RUNTIME;
        goto done;
    }
    uint64_t hl = padded;
    char *pad = calloc(1, padded + 8);
    if (!pad) {
        code = EXIT_RUNTIME;
        goto done;
    }
    memcpy(pad, &hl, 8);
    memcpy(pad + 8, hdr, hlen);
    memset(pad + 8 + hlen, ' ', padded - hlen);
    int bad = ctl_pwrite(fd, pad, padded + 8, 0);
    free(pad);
    off_t base = (off_t)(8 + padded);
    int64_t idx = 0;
    while (!bad && have_page) {
        int n = (int)sep_msg_int(&page, "n", 0);
        if (idx + n > total || page.n_frames != 4 || page.frames[0].len != (size_t)n * 8 ||
            page.frames[2].len != (size_t)layers * n * row) {
            fprintf(stderr, "sepctl: seps: a page that does not fit the archive's count\n");
            code = EXIT_RUNTIME;
            goto done;
        }
        bad = ctl_pwrite(fd, page.frames[0].data, (size_t)n * 8, base + 8 * idx) ||
              ctl_pwrite(fd, page.frames[1].data, (size_t)n * 4, base + 8 * total + 4 * idx);
        for (int l = 0; !bad && l < layers; l++)
            for (int kv = 0; !bad && kv < 2; kv++)
                bad = ctl_pwrite(fd, (const uint8_t *)page.frames[2 + kv].data +
                                         (size_t)l * n * row, (size_t)n * row,
                                 base + (off_t)(kv_at + (2 * (uint64_t)l + kv) * plane +
                                                (uint64_t)idx * row));
        idx += n;
        next = sep_msg_int(&page, "next", -1);
        sep_msg_close(&page);
        have_page = 0;
        if (next < 0 || idx >= total)
            break;
        req = json_pack("{s:s, s:I, s:I, s:b}", "op", SEP_OP_SEPS, "from", (json_int_t)next,
                        "to", (json_int_t)to, "data", 1);
        if (ctl_ask(c, req, NULL, 0, &page, &code))
            goto done;
        have_page = 1;
    }
    if (!bad && idx != total) {
        fprintf(stderr, "sepctl: seps: the archive holds %lld entries now, %lld were counted\n",
                (long long)idx, (long long)total);
        code = EXIT_RUNTIME;
    } else if (bad || fsync(fd) != 0 || close(fd) != 0 || (fd = -1, rename(tmp, path) != 0)) {
        fprintf(stderr, "sepctl: %s: %s\n", path, strerror(errno));
        code = EXIT_RUNTIME;
    } else {
        fprintf(stderr, "sepctl: %s: %lld separators, %d layers, kv_dim %d, %s\n", path,
                (long long)total, layers, kv_dim, dtype == 2 ? "bf16" : "f32");
    }
done:
    if (have_page)
        sep_msg_close(&page);
    if (fd >= 0)
        close(fd);
    if (code)
        unlink(tmp);
    free(hdr);
    return code;
}

/* export NAME FILE: the suspended session as one file. */
static int ctl_export(ctl_conn_t *c, const char *path)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.part", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        fprintf(stderr, "sepctl: %s: %s\n", tmp, strerror(errno));
        return EXIT_RUNTIME;
    }
    int code = 0, done = 0;
    int64_t bytes = 0;
    while (!code && !done) {
        sep_msg_t m;
        if (ctl_ask(c, json_pack("{s:s}", "op", SEP_OP_EXPORT), NULL, 0, &m, &code))
            break;
        done = json_is_true(json_object_get(m.hdr, "done"));
        if (m.n_frames == 1 && m.frames[0].len &&
            fwrite(m.frames[0].data, 1, m.frames[0].len, f) != m.frames[0].len)
            code = EXIT_RUNTIME;
        bytes += m.n_frames == 1 ? (int64_t)m.frames[0].len : 0;
        sep_msg_close(&m);
    }
    if (code == ctl_signal_code(SIGINT) || code == ctl_signal_code(SIGTERM))
        ctl_cancel(c, NULL, SEP_OP_EXPORT);
    if (fflush(f) || fsync(fileno(f)) || ferror(f)) {
        if (!code)
            fprintf(stderr, "sepctl: %s: %s\n", tmp, strerror(errno));
        code = code ? code : EXIT_RUNTIME;
    }
    fclose(f);
    if (!code && rename(tmp, path) != 0) {
        fprintf(stderr, "sepctl: %s: %s\n", path, strerror(errno));
        code = EXIT_RUNTIME;
    }
    if (code)
        unlink(tmp);
    else
        fprintf(stderr, "sepctl: %s: %lld bytes\n", path, (long long)bytes);
    return code;
}

/* The name an export stream was made under: its first item's key. */
static int ctl_export_name(FILE *f, const char *path, char *name)
{
    unsigned char head[16 + 12];
    if (fread(head, 1, sizeof head, f) != sizeof head || memcmp(head, "SEPDEXPT", 8) != 0 ||
        head[16] != 1) {
        fprintf(stderr, "sepctl: %s: not a sepd export\n", path);
        return -1;
    }
    uint32_t klen;
    memcpy(&klen, head + 20, 4);
    if (klen < 1 || klen > SEP_NAME_MAX || fread(name, 1, klen, f) != klen) {
        fprintf(stderr, "sepctl: %s: not a sepd export\n", path);
        return -1;
    }
    name[klen] = '\0';
    rewind(f);
    return 0;
}

/* import FILE [NAME]: an export as a new session, suspended. */
static int ctl_import(const ctl_common_t *o, const char *path, const char *name_opt)
{
    char name[SEP_NAME_MAX + 1];
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "sepctl: %s: %s\n", path, strerror(errno));
        return EXIT_RUNTIME;
    }
    if (name_opt)
        snprintf(name, sizeof name, "%s", name_opt);
    else if (ctl_export_name(f, path, name)) {
        fclose(f);
        return EXIT_RUNTIME;
    }
    ctl_conn_t c;
    FILE *nf = NULL;
    int code = ctl_session_open(o, name, "w", &c, &nf), rc, woke;
    char *buf = code ? NULL : malloc(SEP_FEED_PIECE);
    if (code || !buf) {
        fclose(f);
        free(buf);
        return code ? code : EXIT_RUNTIME;
    }
    int64_t seq = 0, acked = 0;
    int eof = 0;
    while (!code) {
        if (!eof && seq - acked < SEP_FEED_WINDOW) {
            size_t got = fread(buf, 1, SEP_FEED_PIECE, f);
            if (got == 0 && ferror(f)) {
                fprintf(stderr, "sepctl: %s: read error\n", path);
                code = EXIT_RUNTIME;
                break;
            }
            if (got) {
                sep_frame_t fr = { buf, got };
                if ((rc = ctl_send(&c, json_pack("{s:s, s:I}", "op", SEP_OP_IMPORT, "seq",
                                                 (json_int_t)seq++), &fr, 1))) {
                    code = ctl_conn_error(rc);
                    break;
                }
                continue;
            }
            eof = 1;
            if ((rc = ctl_send(&c, json_pack("{s:s}", "op", SEP_OP_IMPORT_END), NULL, 0))) {
                code = ctl_conn_error(rc);
                break;
            }
        }
        sep_msg_t m;
        if ((rc = ctl_recv(&c, &m, -1, &woke))) {
            code = ctl_conn_error(rc);
            break;
        }
        if (woke == CTL_GOT_SIGNAL) {
            code = ctl_signal_code(ctl_signal); /* closing the connection takes it back */
            break;
        }
        if ((code = ctl_reply_error(&m))) {
            sep_msg_close(&m);
            break;
        }
        if (strcmp(m.op, SEP_OP_IMPORT_END) == 0) {
            ctl_print_session(&m, o->json, stdout);
            const char *why = sep_msg_str(&m, "cannot_load", NULL);
            if (why)
                fprintf(stderr, "sepctl: note: session '%s' cannot be resumed by this sepd: "
                        "%s\n", name, why);
            sep_msg_close(&m);
            break;
        }
        acked++;
        sep_msg_close(&m);
    }
    fclose(f);
    free(buf);
    ctl_disconnect(&c);
    return code;
}

/* seps, export, import: connect, then the verb. */
static int ctl_transfer(const ctl_common_t *o, const char *verb, const char *name,
                        const char *file, int64_t from, int64_t to)
{
    if (!strcmp(verb, SEP_OP_IMPORT))
        return ctl_import(o, file, name);
    ctl_conn_t c;
    FILE *nf = NULL;
    int code = ctl_session_open(o, name, "w", &c, &nf);
    if (code)
        return code;
    if (!strcmp(verb, SEP_OP_EXPORT))
        code = ctl_export(&c, file);
    else if (file)
        code = ctl_seps_export(&c, file, from, to, name);
    else
        code = ctl_seps_list(&c, o, from, to);
    ctl_disconnect(&c);
    if (!code && fflush(stdout) != 0)
        code = EXIT_RUNTIME;
    return code;
}

/* ---- the verbs ---------------------------------------------------------- */

enum { CTL_OPT_STOP = 0x200, CTL_OPT_IGNORE_EOS, CTL_OPT_SERVER_KEY, CTL_OPT_KEY, CTL_OPT_SHARED,
       CTL_OPT_OFF }; /* long options without a letter */

/* A --stop string: 1 to SEP_STOP_LEN bytes of UTF-8, at most SEP_STOP_MAX
 * of them; -1 with the message printed. */
static int ctl_stop_opt(const char *arg, const char **stops, int *n)
{
    size_t len = strlen(arg), ok;
    if (*n == SEP_STOP_MAX)
        fprintf(stderr, "sepctl: --stop: at most %d stop strings\n", SEP_STOP_MAX);
    else if (len == 0 || len > SEP_STOP_LEN)
        fprintf(stderr, "sepctl: --stop: a stop string of %zu bytes (1 to %d)\n", len,
                SEP_STOP_LEN);
    else if (sep_utf8_scan(arg, len, &ok))
        fprintf(stderr, "sepctl: --stop: not UTF-8 (at byte %zu)\n", ok);
    else {
        stops[(*n)++] = arg;
        return 0;
    }
    return -1;
}

/* A generate request's stop strings and ignore_eos; 0 or SEP_ENOMEM. */
static int ctl_gen_ends(json_t *req, const char *const *stops, int n, int ignore_eos)
{
    json_t *list = n ? json_array() : NULL;
    for (int i = 0; list && i < n; i++)
        if (json_array_append_new(list, json_string(stops[i]))) {
            json_decref(list);
            list = NULL;
        }
    if ((n && (!list || json_object_set_new(req, "stop", list))) ||
        (ignore_eos && json_object_set_new(req, "ignore_eos", json_true())))
        return SEP_ENOMEM;
    return 0;
}

/* generate's sampling options past --temperature and --top-p: sent under
 * these names (the last two integers), ranges checked by sepd */
static const char *const gen_fields[] = { "min_p", "repetition_penalty", "presence_penalty",
                                          "frequency_penalty", "top_k", "penalty_window" };
#define CTL_GEN_OPT 0x100

/* One of them (option c) into *fields; -1 when arg is not a number. */
static int ctl_gen_opt(int c, const char *arg, json_t **fields)
{
    const char *name = gen_fields[c - CTL_GEN_OPT];
    int is_int = c - CTL_GEN_OPT >= 4;
    char *end = NULL;
    errno = 0;
    double v = is_int ? (double)strtoll(arg, &end, 10) : strtod(arg, &end);
    if (*end || end == arg || errno || !isfinite(v)) {
        char opt[32]; /* the option as typed: its field's name with dashes */
        snprintf(opt, sizeof opt, "%s", name);
        for (char *p = opt; *p; p++)
            *p = *p == '_' ? '-' : *p;
        fprintf(stderr, "sepctl: --%s: '%s' is not %s\n", opt, arg,
                is_int ? "an integer" : "a finite number");
        return -1;
    }
    if (!*fields && !(*fields = json_object()))
        return -1;
    json_object_set_new(*fields, name, is_int ? json_integer((json_int_t)v) : json_real(v));
    return 0;
}

int ctl_remote(const char *verb, int argc, char **argv)
{
    static const struct option opts[] = {
        { "socket", required_argument, 0, 'k' }, { "json", no_argument, 0, 'j' },
        { "server-key", required_argument, 0, CTL_OPT_SERVER_KEY },
        { "key", required_argument, 0, CTL_OPT_KEY },
        { "shared", no_argument, 0, CTL_OPT_SHARED }, { "off", no_argument, 0, CTL_OPT_OFF },
        { "nll-out", required_argument, 0, 'o' }, CTL_CACHE_OPTIONS,
        { "n", required_argument, 0, 'n' }, { "temperature", required_argument, 0, 'T' },
        { "top-p", required_argument, 0, 'p' }, { "seed", required_argument, 0, 'e' },
        { "retry", no_argument, 0, 'R' }, { "from-committed", no_argument, 0, 'F' },
        { "from", required_argument, 0, 'f' }, { "to", required_argument, 0, 't' },
        { "export", required_argument, 0, 'x' }, { "archive", required_argument, 0, 'a' },
        { "stop", required_argument, 0, CTL_OPT_STOP },
        { "ignore-eos", no_argument, 0, CTL_OPT_IGNORE_EOS },
        { "min-p", required_argument, 0, CTL_GEN_OPT },
        { "repetition-penalty", required_argument, 0, CTL_GEN_OPT + 1 },
        { "presence-penalty", required_argument, 0, CTL_GEN_OPT + 2 },
        { "frequency-penalty", required_argument, 0, CTL_GEN_OPT + 3 },
        { "top-k", required_argument, 0, CTL_GEN_OPT + 4 },
        { "penalty-window", required_argument, 0, CTL_GEN_OPT + 5 }, { 0, 0, 0, 0 } };
    json_t *gen_opts = NULL;
    ctl_common_t o = { 0 };
    sep_policy_t pol = { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 64, .w = 256, .c = 800,
                         .shift = 1 };
    const char *separators = "auto";
    int window_given = 0, c, r, is_open = !strcmp(verb, SEP_OP_OPEN);
    int is_gen = !strcmp(verb, SEP_OP_GENERATE);
    int takes_nll = is_gen || !strcmp(verb, SEP_OP_FEED) || !strcmp(verb, SEP_OP_FLUSH) ||
                    !strcmp(verb, SEP_OP_CLOSE);
    long n = -1, seed = -1;
    double temperature = 1.0, top_p = 1.0;
    int retry = 0, from_committed = 0, is_feed = !strcmp(verb, SEP_OP_FEED);
    int is_seps = !strcmp(verb, SEP_OP_SEPS);
    long from = 0, to = LONG_MAX;
    const char *export_to = NULL, *archive = NULL;
    const char *stops[SEP_STOP_MAX];
    int n_stops = 0, ignore_eos = 0, shared = 0, share_off = 0;
    while ((c = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        if (is_open && (r = ctl_cache_opt(c, optarg, &pol, &window_given, &separators)) <= 0) {
            if (r < 0)
                return EXIT_USAGE;
            continue;
        }
        char *end = NULL;
        if (c >= CTL_GEN_OPT && c < CTL_GEN_OPT + 6) {
            if (!is_gen)
                goto bad;
            if (ctl_gen_opt(c, optarg, &gen_opts)) {
                json_decref(gen_opts);
                return EXIT_USAGE;
            }
            continue;
        }
        switch (c) {
        case 'k': o.socket = optarg; break;
        case CTL_OPT_SERVER_KEY: ctl_keys_opts(optarg, NULL); break;
        case CTL_OPT_KEY: ctl_keys_opts(NULL, optarg); break;
        case CTL_OPT_SHARED:
            if (!is_open)
                goto bad;
            shared = 1;
            break;
        case CTL_OPT_OFF:
            if (strcmp(verb, SEP_OP_SHARE))
                goto bad;
            share_off = 1;
            break;
        case 'j': o.json = 1; break;
        case 'R':
        case 'F':
            if (!is_feed)
                goto bad;
            *(c == 'R' ? &retry : &from_committed) = 1;
            break;
        case 'f':
        case 't':
            if (!is_seps || ctl_int_opt(c == 'f' ? "from" : "to", optarg, 0, LONG_MAX,
                                        c == 'f' ? &from : &to))
                goto bad;
            break;
        case 'x':
            if (!is_seps)
                goto bad;
            export_to = optarg;
            break;
        case 'a':
            if (!is_open || (strcmp(optarg, "off") && strcmp(optarg, "f32") &&
                             strcmp(optarg, "bf16"))) {
                fprintf(stderr, "sepctl: --archive: expected off, f32 or bf16\n");
                return EXIT_USAGE;
            }
            archive = optarg;
            break;
        case 'o':
            if (!takes_nll)
                goto bad;
            o.nll_out = optarg;
            break;
        case 'n':
            if (!is_gen || ctl_int_opt("n", optarg, 1, 1000000, &n))
                goto bad;
            break;
        case 'e':
            if (!is_gen || ctl_int_opt("seed", optarg, 0, INT64_MAX, &seed))
                goto bad;
            break;
        case CTL_OPT_STOP:
            if (!is_gen || ctl_stop_opt(optarg, stops, &n_stops))
                goto bad;
            break;
        case CTL_OPT_IGNORE_EOS:
            if (!is_gen)
                goto bad;
            ignore_eos = 1;
            break;
        case 'T':
        case 'p': {
            double v = strtod(optarg, &end);
            if (!is_gen || *end || end == optarg || !(v >= 0) || isinf(v) ||
                (c == 'p' && !(v > 0 && v <= 1))) {
                fprintf(stderr, "sepctl: --%s: '%s' is not a valid value (%s)\n",
                        c == 'T' ? "temperature" : "top-p", optarg,
                        c == 'T' ? "a finite number >= 0" : "a number in (0, 1]");
                return EXIT_USAGE;
            }
            *(c == 'T' ? &temperature : &top_p) = v;
            break;
        }
        default:
        bad:
            fprintf(stderr, "sepctl: %s: bad option (see sepctl help)\n", verb);
            json_decref(gen_opts);
            return EXIT_USAGE;
        }
    }
    /* the words after the options: NAME, none (ls, stats), NAME FILE
     * (export), FILE [NAME] (import) */
    int is_export = !strcmp(verb, SEP_OP_EXPORT), is_import = !strcmp(verb, SEP_OP_IMPORT);
    int needs_name = strcmp(verb, SEP_OP_LS) && strcmp(verb, SEP_OP_STATS), left = argc - optind;
    const char *name = NULL, *file = NULL;
    if (is_export && left == 2) {
        name = argv[optind];
        file = argv[optind + 1];
    } else if (is_import && (left == 1 || left == 2)) {
        file = argv[optind];
        name = left == 2 ? argv[optind + 1] : NULL;
    } else if (!is_export && !is_import && left == needs_name) {
        name = needs_name ? argv[optind] : NULL;
    } else {
        fprintf(stderr, "sepctl: %s: %s\n", verb,
                is_export ? "expected NAME FILE" : is_import ? "expected FILE [NAME]"
                : needs_name ? "expected one session NAME" : "takes no arguments");
        return EXIT_USAGE;
    }
    char why[64];
    if (name && (is_open || is_import) && sep_name_check(name, why, sizeof why)) {
        /* a new name: the rule sepd applies to new sessions */
        fprintf(stderr, "sepctl: session name '%s': %s; a name is %s\n", name, why,
                SEP_NAME_RULE);
        return EXIT_USAGE;
    }
    if (name && !sep_name_ok(name)) {
        fprintf(stderr, "sepctl: session name '%s': 1 to %d characters of A-Z a-z 0-9 . _ -\n",
                name, SEP_NAME_MAX);
        return EXIT_USAGE;
    }
    if (is_gen && n < 0) {
        fprintf(stderr, "sepctl: generate: -n N is required\n");
        return EXIT_USAGE;
    }
    if (is_open) {
        if (ctl_policy_done(&pol, window_given))
            return EXIT_USAGE;
        json_t *req = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:b, s:s}", "op", verb,
                                "method", sep_method_name(pol.method), "a", pol.a, "s", pol.s,
                                "w", pol.w, "c", pol.c, "shift", pol.shift, "separators",
                                separators);
        if (req && archive)
            json_object_set_new(req, "archive", json_string(archive));
        if (req && shared)
            json_object_set_new(req, "shared", json_true());
        return ctl_simple(&o, name, req);
    }
    if (is_seps || is_export || is_import)
        return ctl_transfer(&o, verb, name, is_seps ? export_to : file, from, to);
    if (is_feed)
        return ctl_feed(&o, name, retry, from_committed);
    if (is_gen) {
        json_t *req = json_pack("{s:s, s:I, s:f, s:f, s:b, s:i}", "op", verb, "n", (json_int_t)n,
                                "temperature", temperature, "top_p", top_p, "nll",
                                o.nll_out != NULL, "window", SEP_GEN_WINDOW);
        if (req && seed >= 0)
            json_object_set_new(req, "seed", json_integer(seed));
        if (req && ctl_gen_ends(req, stops, n_stops, ignore_eos)) {
            json_decref(req);
            req = NULL; /* ctl_generate reports it */
        }
        if (req && gen_opts)
            json_object_update(req, gen_opts);
        json_decref(gen_opts);
        return ctl_generate(&o, name, req);
    }
    if (!strcmp(verb, SEP_OP_SHARE))
        return ctl_simple(&o, name, json_pack("{s:s, s:b}", "op", verb, "shared", !share_off));
    return ctl_simple(&o, name, json_pack("{s:s}", "op", verb));
}
