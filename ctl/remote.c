/* remote.c: the sepctl verbs that talk to sepd.
 *
 * Each verb sends one request on a DEALER socket and reads the replies
 * until the last one. While it waits it pings the daemon every second;
 * a daemon silent for CTL_SILENCE_S seconds is reported as gone. feed
 * streams stdin in pieces of up to SEP_FEED_PIECE bytes, keeping at most
 * SEP_FEED_WINDOW of them unacknowledged (the daemon acknowledges a piece
 * once its tokens are scored), so memory stays bounded on both sides.
 */
#include "ctl.h"
#include "err.h"
#include "paths.h"
#include "proto.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define CTL_SILENCE_S 15.0

typedef struct {
    void *zctx, *sock;
    const char *session;
    double last_heard;
} ctl_conn_t;

typedef struct {
    const char *socket, *nll_out;
    int json;
} ctl_common_t;

static int ctl_connect(ctl_conn_t *c, const char *endpoint_opt)
{
    char ep[4200];
    int rc = SEP_OK, linger = 0;
    memset(c, 0, sizeof *c);
    if (endpoint_opt)
        snprintf(ep, sizeof ep, "%s", endpoint_opt);
    else if ((rc = sep_default_socket(ep, sizeof ep)))
        return rc;
    struct stat st;
    if (strncmp(ep, "ipc://", 6) == 0 && stat(ep + 6, &st) != 0)
        return sep_fail(SEP_ENOTFOUND, "sepd is not running (no socket at %s)", ep + 6);
    c->zctx = zmq_ctx_new();
    c->sock = c->zctx ? zmq_socket(c->zctx, ZMQ_DEALER) : NULL;
    if (!c->sock || zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_connect(c->sock, ep))
        return sep_fail(SEP_EIO, "connect %s: %s", ep, zmq_strerror(errno));
    c->last_heard = sep_now();
    return SEP_OK;
}

static void ctl_disconnect(ctl_conn_t *c)
{
    if (c->sock)
        zmq_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
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

/* The next message from the daemon; extra_fd (or -1) may wake the wait,
 * then *woke is set and no message is returned. */
static int ctl_recv(ctl_conn_t *c, sep_msg_t *m, int extra_fd, int *woke)
{
    if (woke)
        *woke = 0;
    for (;;) {
        zmq_pollitem_t it[2] = { { .socket = c->sock, .events = ZMQ_POLLIN },
                                 { .fd = extra_fd, .events = ZMQ_POLLIN } };
        int n = zmq_poll(it, extra_fd >= 0 ? 2 : 1, 1000);
        if (n < 0 && errno != EINTR)
            return sep_fail(SEP_EIO, "poll: %s", zmq_strerror(errno));
        if (n > 0 && (it[0].revents & ZMQ_POLLIN)) {
            int rc = sep_msg_recv(c->sock, 0, m, 0);
            if (rc)
                return rc;
            c->last_heard = sep_now();
            if (strcmp(m->op, SEP_OP_PONG) == 0) {
                sep_msg_close(m);
                continue;
            }
            return SEP_OK;
        }
        if (n > 0 && extra_fd >= 0 && (it[1].revents & (ZMQ_POLLIN | ZMQ_POLLERR))) {
            *woke = 1;
            return SEP_OK;
        }
        if (sep_now() - c->last_heard > CTL_SILENCE_S)
            return sep_fail(SEP_EIO, "sepd stopped answering (%.0f s without a word)",
                            CTL_SILENCE_S);
        int rc = ctl_send(c, json_pack("{s:s}", "op", SEP_OP_PING), NULL, 0);
        if (rc)
            return rc;
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

static int ctl_write_nlls(FILE *f, const sep_msg_t *m)
{
    if (!f || m->n_frames < 1)
        return 0;
    const float *v = m->frames[0].data;
    for (size_t i = 0; i < m->frames[0].len / sizeof(float); i++)
        fprintf(f, "%.6f\n", v[i]);
    return ferror(f) ? -1 : 0;
}

/* Open --nll-out (mode "w" or "a"); a failure is reported here. */
static int ctl_nll_open(const char *path, const char *mode, FILE **f)
{
    *f = NULL;
    if (path && !(*f = fopen(path, mode))) {
        fprintf(stderr, "sepctl: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Connect for a verb on session that streams NLLs, and open --nll-out
 * (mode); 0, or the exit code with nothing left open. */
static int ctl_session_open(const ctl_common_t *o, const char *session, const char *mode,
                            ctl_conn_t *c, FILE **nf)
{
    int rc = ctl_connect(c, o->socket);
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

/* The summary of a session reply, as a line or as JSON. */
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

/* Send one request and print its one reply. */
static int ctl_simple(const ctl_common_t *o, const char *session, json_t *req, int nll)
{
    ctl_conn_t c;
    sep_msg_t m = { 0 };
    FILE *nf = NULL;
    int rc = ctl_connect(&c, o->socket), code = 0;
    if (rc) {
        json_decref(req);
        ctl_disconnect(&c);
        return ctl_conn_error(rc);
    }
    c.session = session;
    if (nll)
        json_object_set_new(req, "nll", json_true());
    if ((rc = ctl_send(&c, req, NULL, 0)) || (rc = ctl_recv(&c, &m, -1, NULL))) {
        ctl_disconnect(&c);
        return ctl_conn_error(rc);
    }
    if (!(code = ctl_reply_error(&m))) {
        if (ctl_nll_open(o->nll_out, "a", &nf)) {
            code = EXIT_RUNTIME;
        } else if (ctl_write_nlls(nf, &m) || (nf && fclose(nf) != 0)) {
            fprintf(stderr, "sepctl: %s: write error\n", o->nll_out);
            nf = NULL;
            code = EXIT_RUNTIME;
        } else {
            nf = NULL;
            const char *op = sep_msg_str(&m, "op", "");
            if (strcmp(op, SEP_OP_LS) == 0) {
                json_t *list = json_object_get(m.hdr, "sessions");
                if (o->json) {
                    json_dumpf(list, stdout, JSON_COMPACT | JSON_SORT_KEYS);
                    fputc('\n', stdout);
                } else {
                    size_t i;
                    json_t *s;
                    printf("%-24s %-10s %-9s %12s %10s %6s\n", "NAME", "STATE", "METHOD",
                           "TOKENS", "PPL", "KV");
                    json_array_foreach(list, i, s)
                        printf("%-24s %-10s %-9s %12lld %10.4f %6lld\n",
                               json_string_value(json_object_get(s, "name")),
                               json_string_value(json_object_get(s, "state")),
                               json_string_value(json_object_get(s, "method")),
                               (long long)json_integer_value(json_object_get(s, "tokens")),
                               json_number_value(json_object_get(s, "ppl")),
                               (long long)json_integer_value(json_object_get(s, "kv")));
                }
            } else if (strcmp(op, SEP_OP_STATS) == 0 || strcmp(op, SEP_OP_INFO) == 0) {
                if (o->json) {
                    ctl_print_session(&m, 1, stdout);
                } else {
                    const char *k;
                    json_t *v;
                    json_object_foreach(m.hdr, k, v) {
                        if (!strcmp(k, "v") || !strcmp(k, "ok") || !strcmp(k, "op"))
                            continue;
                        char *text = json_is_string(v) ? NULL : json_dumps(v, JSON_ENCODE_ANY |
                                                                                 JSON_COMPACT);
                        printf("%-16s %s\n", k, text ? text : json_string_value(v));
                        free(text);
                    }
                }
            } else {
                ctl_print_session(&m, o->json, stdout);
            }
        }
    }
    if (nf)
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
        int woke = 0;
        if (want_stdin) {
            struct pollfd p = { .fd = 0, .events = POLLIN };
            if (poll(&p, 1, 0) > 0)
                woke = 1;
        }
        if (!woke) {
            if ((rc = ctl_recv(&c, &m, want_stdin ? 0 : -1, &woke))) {
                code = ctl_conn_error(rc);
                break;
            }
        }
        if (woke) {
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
        if (ctl_write_nlls(nf, &m)) {
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
    if (nf && fclose(nf) != 0 && !code) {
        fprintf(stderr, "sepctl: %s: %s\n", o->nll_out, strerror(errno));
        code = EXIT_RUNTIME;
    }
    free(buf);
    ctl_disconnect(&c);
    return code;
}

/* ---- generate ----------------------------------------------------------- */

static int ctl_generate(const ctl_common_t *o, const char *session, json_t *req)
{
    ctl_conn_t c;
    sep_msg_t m = { 0 };
    FILE *nf = NULL;
    int rc, code = ctl_session_open(o, session, "a", &c, &nf);
    if (code) {
        json_decref(req);
        return code;
    }
    if ((rc = ctl_send(&c, req, NULL, 0))) {
        code = ctl_conn_error(rc);
        goto done;
    }
    for (;;) {
        if ((rc = ctl_recv(&c, &m, -1, NULL))) {
            code = ctl_conn_error(rc);
            break;
        }
        if ((code = ctl_reply_error(&m))) {
            sep_msg_close(&m);
            break;
        }
        if (json_is_true(json_object_get(m.hdr, "done"))) {
            if (o->json)
                ctl_print_session(&m, 1, stdout);
            else
                fputc('\n', stdout);
            sep_msg_close(&m);
            break;
        }
        const char *text = m.n_frames ? m.frames[0].data : "";
        size_t len = m.n_frames ? m.frames[0].len : 0;
        if (nf)
            fprintf(nf, "%.6f\n", sep_msg_real(&m, "nll", 0));
        if (o->json) {
            json_t *line = json_pack("{s:I, s:s%, s:f}", "token",
                                     (json_int_t)sep_msg_int(&m, "token", -1), "text", text,
                                     len, "nll", sep_msg_real(&m, "nll", 0));
            /* text that is not whole UTF-8 (a split character) goes as ids only */
            if (!line)
                line = json_pack("{s:I}", "token", (json_int_t)sep_msg_int(&m, "token", -1));
            json_dumpf(line, stdout, JSON_COMPACT);
            fputc('\n', stdout);
            json_decref(line);
        } else {
            fwrite(text, 1, len, stdout);
        }
        fflush(stdout);
        sep_msg_close(&m);
    }
done:
    if (nf && fclose(nf) != 0 && !code)
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
            if (!is_gen || *end || end == optarg || !(v >= 0) || (c == 'p' && !(v > 0 && v <= 1))) {
                fprintf(stderr, "sepctl: --%s: '%s' is not a valid value\n",
                        c == 'T' ? "temperature" : "top-p", optarg);
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
        if (pol.method == SEP_METHOD_STREAMING && !window_given)
            pol.w = pol.c - pol.a;
        json_t *req = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:b, s:s}", "op", verb,
                                "method", sep_method_name(pol.method), "a", pol.a, "s", pol.s,
                                "w", pol.w, "c", pol.c, "shift", pol.shift, "separators",
                                separators);
        return ctl_simple(&o, name, req, 0);
    }
    if (!strcmp(verb, SEP_OP_FEED))
        return ctl_feed(&o, name);
    if (is_gen) {
        json_t *req = json_pack("{s:s, s:I, s:f, s:f, s:b}", "op", verb, "n", (json_int_t)n,
                                "temperature", temperature, "top_p", top_p, "nll",
                                o.nll_out != NULL);
        if (req && seed >= 0)
            json_object_set_new(req, "seed", json_integer(seed));
        return ctl_generate(&o, name, req);
    }
    return ctl_simple(&o, name, json_pack("{s:s}", "op", verb), o.nll_out != NULL);
}
