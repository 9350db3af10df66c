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
#include "paths.h"
#include "proto.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
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
    /* the monitor says when the connection closes (sepd died) */
    snprintf(mon_ep, sizeof mon_ep, "inproc://ctl-monitor-%d", (int)getpid());
    if (zmq_socket_monitor(c->sock, mon_ep, ZMQ_EVENT_DISCONNECTED) ||
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
        if (zmq_msg_size(&ev) >= 2)
            memcpy(&what, zmq_msg_data(&ev), 2);
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
            return sep_fail(SEP_EPEER, "sepd went away (its connection closed)");
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
    snprintf(verb, sizeof verb, "%s", sep_msg_str(&(sep_msg_t){ .hdr = req }, "op", ""));
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

static int ctl_feed(const ctl_common_t *o, const char *session)
{
    ctl_conn_t c;
    sep_msg_t m = { 0 };
    FILE *nf = NULL;
    char *buf = malloc(SEP_FEED_PIECE);
    int code = buf ? ctl_session_open(o, session, "w", &c, &nf)
                   : ctl_conn_error(sep_fail(SEP_ENOMEM, "out of memory"));
    if (code) {
        free(buf);
        return code;
    }
    int rc, progress = isatty(2), eof = 0, ended = 0, sent_any = 0;
    int64_t seq = 0, acked = 0;
    double t0 = sep_now();
    while (!code) {
        /* read more while the window has room */
        int want_stdin = !eof && seq - acked < SEP_FEED_WINDOW;
        int woke = CTL_GOT_MSG;
        if (want_stdin) {
            struct pollfd p = { .fd = 0, .events = POLLIN };
            if (poll(&p, 1, 0) > 0)
                woke = CTL_GOT_FD;
        }
        if (woke == CTL_GOT_MSG && (rc = ctl_recv(&c, &m, want_stdin ? 0 : -1, &woke))) {
            code = ctl_conn_error(rc);
            break;
        }
        if (woke == CTL_GOT_SIGNAL) {
            /* what was sent stays the session's text */
            ctl_cancel(&c, nf, NULL);
            code = ctl_signal_code(ctl_signal);
            break;
        }
        if (woke == CTL_GOT_FD) {
            ssize_t got = read(0, buf, SEP_FEED_PIECE);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0) {
                fprintf(stderr, "sepctl: stdin: %s\n", strerror(errno));
                code = EXIT_RUNTIME;
                break;
            }
            if (got > 0 || !sent_any) {
                sep_frame_t f = { buf, (size_t)got };
                json_t *h = json_pack("{s:s, s:I, s:b}", "op", SEP_OP_FEED, "seq",
                                      (json_int_t)seq++, "nll", nf != NULL);
                if ((rc = ctl_send(&c, h, &f, 1))) {
                    code = ctl_conn_error(rc);
                    break;
                }
                sent_any = 1;
            }
            if (got == 0) {
                eof = 1;
                if ((rc = ctl_send(&c, json_pack("{s:s}", "op", SEP_OP_FEED_END), NULL, 0))) {
                    code = ctl_conn_error(rc);
                    break;
                }
            }
            continue;
        }
        if ((code = ctl_reply_error(&m))) {
            sep_msg_close(&m);
            break;
        }
        if (ctl_write_nlls(nf, &m, 0)) {
            fprintf(stderr, "sepctl: %s: write error\n", o->nll_out);
            code = EXIT_RUNTIME;
        }
        ended = strcmp(m.op, SEP_OP_FEED_END) == 0;
        if (strcmp(m.op, SEP_OP_FEED) == 0)
            acked++;
        if (progress)
            ctl_progress(&m, t0, ended);
        if (ended && !code)
            ctl_print_session(&m, o->json, stdout);
        sep_msg_close(&m);
        if (ended)
            break;
    }
    if (nf && ctl_nll_close(o->nll_out, &nf) && !code)
        code = EXIT_RUNTIME;
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
            if (o->json)
                ctl_print_session(&m, 1, stdout);
            else
                fputc('\n', stdout);
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

/* ---- the verbs ---------------------------------------------------------- */

int ctl_remote(const char *verb, int argc, char **argv)
{
    static const struct option opts[] = {
        { "socket", required_argument, 0, 'k' }, { "json", no_argument, 0, 'j' },
        { "nll-out", required_argument, 0, 'o' }, CTL_CACHE_OPTIONS,
        { "n", required_argument, 0, 'n' }, { "temperature", required_argument, 0, 'T' },
        { "top-p", required_argument, 0, 'p' }, { "seed", required_argument, 0, 'e' },
        { 0, 0, 0, 0 } };
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
    while ((c = getopt_long(argc, argv, "n:", opts, NULL)) != -1) {
        if (is_open && (r = ctl_cache_opt(c, optarg, &pol, &window_given, &separators)) <= 0) {
            if (r < 0)
                return EXIT_USAGE;
            continue;
        }
        char *end = NULL;
        switch (c) {
        case 'k': o.socket = optarg; break;
        case 'j': o.json = 1; break;
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
            return EXIT_USAGE;
        }
    }
    int needs_name = strcmp(verb, SEP_OP_LS) && strcmp(verb, SEP_OP_STATS);
    if (argc - optind != needs_name) {
        fprintf(stderr, "sepctl: %s: %s\n", verb,
                needs_name ? "expected one session NAME" : "takes no arguments");
        return EXIT_USAGE;
    }
    const char *name = needs_name ? argv[optind] : NULL;
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
        return ctl_simple(&o, name, req);
    }
    if (!strcmp(verb, SEP_OP_FEED))
        return ctl_feed(&o, name);
    if (is_gen) {
        json_t *req = json_pack("{s:s, s:I, s:f, s:f, s:b, s:i}", "op", verb, "n", (json_int_t)n,
                                "temperature", temperature, "top_p", top_p, "nll",
                                o.nll_out != NULL, "window", SEP_GEN_WINDOW);
        if (req && seed >= 0)
            json_object_set_new(req, "seed", json_integer(seed));
        return ctl_generate(&o, name, req);
    }
    return ctl_simple(&o, name, json_pack("{s:s}", "op", verb));
}
