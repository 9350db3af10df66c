/* sepd: the coordinator daemon.
 *
 * One thread, one poll loop over three things: the client socket (a
 * ZeroMQ ROUTER: sepctl and scripts), the worker socket (the pipeline
 * stages, see pool.h) and a signalfd. Clients open sessions and feed them
 * text; sepd tokenizes it (session.h), gathers the runnable ids of many
 * sessions into one batch per step (continuous batching, at most
 * max_batch rows and chunk rows per session, sessions taken round robin),
 * keeps up to stages + 1 batches in flight so every stage has work, and
 * answers each client as its tokens are scored. A feeding client may have
 * SEP_FEED_WINDOW pieces unacknowledged: a fast producer waits, and the
 * daemon's memory stays bounded. Protocol: docs/protocol.md.
 *
 * Exit codes: 0 after SIGTERM/SIGINT, 1 a runtime error (including a
 * worker that died), 2 a usage error.
 */
#include "conf.h"
#include "err.h"
#include "log.h"
#include "paths.h"
#include "pool.h"
#include "proto.h"
#include "sample.h"
#include "session.h"
#include "tokenizer.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define SEPD_FEED_LEASE 5.0      /* seconds a silent feeder keeps its session */
#define SEPD_MAX_GENERATE 1000000

typedef struct {
    uint32_t sid;
    int off, n;       /* rows [off, off + n) of the batch */
    int gen;          /* a generation step: logits of its one row ... */
    int greedy;       /* ... or, at temperature 0, the token the last stage chose */
} sepd_bchunk_t;

typedef struct {
    int64_t seq;
    int nc;
    sepd_bchunk_t *ch;  /* (nc) */
} sepd_batch_t;

typedef struct {
    sep_conf_t conf;
    char run_dir[4096], lock_path[4200];
    int lock_fd, sig_fd;
    void *zctx, *clients;
    sep_pool_t *pool;
    sep_tok_t *tok;
    sep_session_t **sess;     /* (n_sess) */
    int n_sess, cap_sess;
    uint32_t next_sid;
    sepd_batch_t *flight;     /* (max_flight) FIFO of batches in flight */
    int n_flight, max_flight;
    int64_t next_seq;
    int32_t *ids, *targets;   /* (max_batch) a batch being built */
    size_t rr;                /* round-robin start */
    float *sample_scratch;    /* (2 * vocab) */
    /* a stats request waiting for the workers */
    uint8_t stats_peer[256];
    size_t stats_peer_len;
    int stats_wanted;
    json_t *stats_workers;
    /* throughput */
    int64_t tokens_total;
    double started, rate_t0, rate;
    int64_t rate_tok0;
    int stop;
} sepd_t;

/* ---- replies ------------------------------------------------------------ */

static void sepd_send(sepd_t *d, const uint8_t *peer, size_t peer_len, json_t *hdr,
                      const sep_frame_t *frames, int n)
{
    if (!hdr) {
        sep_log(SEP_LOG_ERROR, "out of memory for a reply");
        return;
    }
    if (sep_msg_send(d->clients, peer, peer_len, hdr, frames, n))
        sep_log(SEP_LOG_WARN, "reply: %s", sep_errmsg());
    json_decref(hdr);
}

static void sepd_error(sepd_t *d, const uint8_t *peer, size_t peer_len, const char *op,
                       const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void sepd_error(sepd_t *d, const uint8_t *peer, size_t peer_len, const char *op,
                       const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sep_log(SEP_LOG_INFO, "%s: %s", op, msg);
    sepd_send(d, peer, peer_len,
              json_pack("{s:s, s:b, s:s, s:s}", "op", op, "ok", 0, "code", code, "error", msg),
              NULL, 0);
}

/* A session's figures, as info and ls report them. */
static json_t *sepd_info(const sep_session_t *s)
{
    double ppl = s->tokens ? exp(s->nll_sum / (double)s->tokens) : 0.0;
    double avg_kv = s->tokens ? (double)s->kv_sum / (double)s->tokens : 0.0;
    return json_pack("{s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:b, s:s, s:I, s:f, s:f, s:I, s:I, "
                     "s:I, s:I, s:I, s:I, s:I}",
                     "name", s->name, "state", sep_session_state_name(s->state), "method",
                     sep_method_name(s->policy.method), "a", s->policy.a, "s", s->policy.s,
                     "w", s->policy.w, "c", s->policy.c, "shift", s->policy.shift,
                     "separators", s->separators, "tokens", (json_int_t)s->tokens, "ppl", ppl,
                     "avg_kv", avg_kv, "max_kv", (json_int_t)s->kv_max, "kv",
                     (json_int_t)s->kv_last, "bytes_in", (json_int_t)s->bytes_in,
                     "bytes_committed", (json_int_t)s->bytes_committed, "held_bytes",
                     (json_int_t)s->held_len, "queued_ids", (json_int_t)s->q_len,
                     "ids", (json_int_t)s->ids_total);
}

/* Reply to the session's owner with op, the session's figures, extra
 * fields and the NLLs owed to it. */
static void sepd_owner_reply(sepd_t *d, sep_session_t *s, const char *op, json_t *extra)
{
    json_t *h = sepd_info(s);
    if (h) {
        json_object_set_new(h, "op", json_string(op));
        json_object_set_new(h, "ok", json_true());
        if (extra)
            json_object_update(h, extra);
    }
    json_decref(extra);
    sep_frame_t f = { s->out_nll, s->out_n * sizeof(float) };
    sepd_send(d, s->owner, s->owner_len, h, &f, s->want_nll ? 1 : 0);
    s->out_n = 0;
}

/* ---- the session table -------------------------------------------------- */

static sep_session_t *sepd_find(sepd_t *d, const char *name)
{
    for (int i = 0; name && i < d->n_sess; i++)
        if (strcmp(d->sess[i]->name, name) == 0)
            return d->sess[i];
    return NULL;
}

static sep_session_t *sepd_find_sid(sepd_t *d, uint32_t sid)
{
    for (int i = 0; i < d->n_sess; i++)
        if (d->sess[i]->sid == sid)
            return d->sess[i];
    return NULL;
}

static void sepd_remove(sepd_t *d, sep_session_t *s)
{
    for (int i = 0; i < d->n_sess; i++)
        if (d->sess[i] == s) {
            d->sess[i] = d->sess[--d->n_sess];
            break;
        }
    sep_log(SEP_LOG_INFO, "session '%s' closed after %lld tokens", s->name,
            (long long)s->tokens);
    sep_session_destroy(&s);
}

static int sepd_same_peer(const sep_session_t *s, const sep_msg_t *m)
{
    return s->owner_len == m->peer_len && memcmp(s->owner, m->peer, m->peer_len) == 0;
}

/* Make m's sender the owner of s for op, unless another client owns it:
 * a feeder silent for SEPD_FEED_LEASE seconds has gone and loses it. */
static int sepd_own(sepd_t *d, sep_session_t *s, const sep_msg_t *m, int op)
{
    if (s->owner_len && !sepd_same_peer(s, m)) {
        if (!(s->owner_op == SEP_OWN_FEED && sep_now() - s->owner_seen > SEPD_FEED_LEASE)) {
            sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BUSY,
                       "session '%s' is busy: another client is using it", s->name);
            return -1;
        }
        sep_log(SEP_LOG_WARN, "session '%s': its feeder went silent; %lld bytes were "
                "committed", s->name, (long long)s->bytes_committed);
        sep_session_release(s);
    }
    if (s->owner_len && s->owner_op != op && s->owner_op != SEP_OWN_FEED) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BUSY,
                   "session '%s' is busy with another operation", s->name);
        return -1;
    }
    if (!s->owner_len || s->owner_op != op) {
        sep_session_release(s);
        memcpy(s->owner, m->peer, m->peer_len);
        s->owner_len = m->peer_len;
        s->owner_op = op;
    }
    s->owner_seen = sep_now();
    return 0;
}

/* Send a control op about s to every stage; count the acks it needs. */
static int sepd_to_workers(sepd_t *d, sep_session_t *s, const char *op, const sep_frame_t *f,
                           int n)
{
    json_t *h = json_pack("{s:s, s:I}", "op", op, "sid", (json_int_t)s->sid);
    int rc = h ? sep_pool_send_all(d->pool, h, f, n) : SEP_ENOMEM;
    json_decref(h);
    if (!rc)
        s->acks_wanted = d->pool->stages;
    return rc;
}

/* The policy of an open request (defaults: sepctl eval's). */
static int sepd_open_policy(const sep_msg_t *m, sep_policy_t *p)
{
    *p = (sep_policy_t){ .method = SEP_METHOD_SEPLLM, .a = 4, .s = 64, .w = 256, .c = 800,
                         .shift = 1 };
    int rc = sep_method_parse(sep_msg_str(m, "method", "sepllm"), &p->method);
    if (rc)
        return rc;
    int64_t a = sep_msg_int(m, "a", p->a), s = sep_msg_int(m, "s", p->s);
    int64_t c = sep_msg_int(m, "c", p->c);
    int64_t w = sep_msg_int(m, "w", p->method == SEP_METHOD_STREAMING ? c - a : p->w);
    if (a < 0 || s < 0 || w < 0 || c < 1 || a > (1 << 24) || s > (1 << 24) || w > (1 << 24) ||
        c > (1 << 24))
        return sep_fail(SEP_EINVAL, "cache numbers out of range");
    p->a = (int)a;
    p->s = (int)s;
    p->w = (int)w;
    p->c = (int)c;
    p->shift = json_is_false(json_object_get(m->hdr, "shift")) ? 0 : 1;
    return SEP_OK;
}

/* ---- client ops --------------------------------------------------------- */

static void op_open(sepd_t *d, const sep_msg_t *m)
{
    const char *name = sep_msg_str(m, "session", NULL);
    sep_policy_t p;
    sep_session_t *s = NULL;
    if (!name)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "open: no \"session\" name");
    if (sepd_find(d, name))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_EXISTS,
                          "session '%s' exists already", name);
    if (d->n_sess >= d->conf.max_sessions)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_LIMIT,
                          "%d sessions are open (max_sessions)", d->n_sess);
    if (sepd_open_policy(m, &p) ||
        sep_session_new(&s, name, ++d->next_sid, &p, sep_msg_str(m, "separators", "auto"),
                        d->tok))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST, "open: %s",
                          sep_errmsg());
    if (d->n_sess == d->cap_sess) {
        int cap = d->cap_sess ? 2 * d->cap_sess : 16;
        sep_session_t **ns = realloc(d->sess, (size_t)cap * sizeof *ns);
        if (!ns) {
            sep_session_destroy(&s);
            return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL,
                              "open: out of memory");
        }
        d->sess = ns;
        d->cap_sess = cap;
    }
    d->sess[d->n_sess++] = s;
    sepd_own(d, s, m, SEP_OWN_OPEN);
    json_t *h = json_pack("{s:s, s:I, s:s, s:i, s:i, s:i, s:i, s:i}", "op", SEP_OP_W_OPEN,
                          "sid", (json_int_t)s->sid, "method", sep_method_name(p.method),
                          "a", p.a, "s", p.s, "w", p.w, "c", p.c, "shift", p.shift);
    sep_frame_t f = { s->sep_ids, s->n_sep_ids * sizeof(int32_t) };
    int rc = h ? sep_pool_send_all(d->pool, h, &f, 1) : SEP_ENOMEM;
    json_decref(h);
    if (rc) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "open: %s", sep_errmsg());
        sepd_remove(d, s);
        return;
    }
    s->acks_wanted = d->pool->stages;
    sep_log(SEP_LOG_INFO, "session '%s' opened: %s a=%d s=%d w=%d c=%d shift=%d seps=%s",
            name, sep_method_name(p.method), p.a, p.s, p.w, p.c, p.shift, s->separators);
}

/* A session for an op by name, in a state the op accepts. */
static sep_session_t *sepd_session_for(sepd_t *d, const sep_msg_t *m, int need_active)
{
    const char *name = sep_msg_str(m, "session", NULL);
    sep_session_t *s = sepd_find(d, name);
    if (!name) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                   "%s: no \"session\" name", m->op);
        return NULL;
    }
    if (!s) {
        char clip[64];
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_NOT_FOUND, "no session '%s'",
                   sep_clip(name, clip));
        return NULL;
    }
    if (need_active && (s->state != SEP_SS_ACTIVE || s->acks_wanted)) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE, "session '%s' is %s%s",
                   s->name, s->acks_wanted && s->state == SEP_SS_ACTIVE ? "opening"
                   : sep_session_state_name(s->state),
                   s->state == SEP_SS_SUSPENDED ? " (sepctl resume it first)" : "");
        return NULL;
    }
    return s;
}

/* Acknowledge the feed pieces whose tokens are all scored; answer a
 * flush, close or finished feed whose work is done. */
static void sepd_progress(sepd_t *d, sep_session_t *s)
{
    if (s->owner_op == SEP_OWN_FEED) {
        int k = 0;
        while (k < s->n_pieces && s->tokens >= s->pieces[k].ids_end - 1)
            k++;
        for (int i = 0; i < k; i++) {
            s->bytes_committed = s->pieces[i].bytes_end;
            json_t *x = json_pack("{s:I}", "seq", (json_int_t)s->pieces[i].seq);
            sepd_owner_reply(d, s, SEP_OP_FEED, x);
        }
        memmove(s->pieces, s->pieces + k, (size_t)(s->n_pieces - k) * sizeof *s->pieces);
        s->n_pieces -= k;
        if (s->feed_ending && s->n_pieces == 0) {
            sepd_owner_reply(d, s, SEP_OP_FEED_END, NULL);
            sep_session_release(s);
        }
        return;
    }
    int idle = sep_session_runnable(s) == 0 && s->sent == 0;
    if (s->owner_op == SEP_OWN_FLUSH && idle) {
        s->bytes_committed = s->bytes_tokenized;
        sepd_owner_reply(d, s, SEP_OP_FLUSH, NULL);
        sep_session_release(s);
    } else if (s->owner_op == SEP_OWN_CLOSE && idle && s->state == SEP_SS_CLOSING &&
               !s->acks_wanted) {
        s->bytes_committed = s->bytes_tokenized;
        if (sepd_to_workers(d, s, SEP_OP_W_CLOSE, NULL, 0)) {
            sepd_error(d, s->owner, s->owner_len, SEP_OP_CLOSE, SEP_ERR_INTERNAL, "close: %s",
                       sep_errmsg());
            sep_session_release(s);
        }
    }
}

static void op_feed(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_session_for(d, m, 1);
    if (!s || sepd_own(d, s, m, SEP_OWN_FEED))
        return;
    int64_t seq = sep_msg_int(m, "seq", 0);
    if (s->feed_ending)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "feed: piece %lld after feed_end", (long long)seq);
    if (s->n_pieces == SEP_FEED_WINDOW)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_LIMIT,
                          "feed: more than %d pieces unacknowledged", SEP_FEED_WINDOW);
    if (m->n_frames != 1)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "feed: expected one text frame, got %d", m->n_frames);
    s->want_nll = json_is_true(json_object_get(m->hdr, "nll"));
    if (sep_session_ingest(s, d->tok, m->frames[0].data, m->frames[0].len, 0)) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INPUT, "%s", sep_errmsg());
        sep_session_release(s);
        return;
    }
    s->pieces[s->n_pieces++] = (sep_piece_t){ .seq = seq, .ids_end = s->ids_total,
                                              .bytes_end = s->bytes_tokenized };
    sepd_progress(d, s);
}

static void op_feed_end(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_session_for(d, m, 0);
    if (!s)
        return;
    if (s->owner_op != SEP_OWN_FEED || !sepd_same_peer(s, m))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                          "feed_end: this client is not feeding '%s'", s->name);
    s->feed_ending = 1;
    sepd_progress(d, s);
}

static void op_ping(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_find(d, sep_msg_str(m, "session", NULL));
    if (s && s->owner_len && sepd_same_peer(s, m))
        s->owner_seen = sep_now();
    sepd_send(d, m->peer, m->peer_len, json_pack("{s:s}", "op", SEP_OP_PONG), NULL, 0);
}

static void op_flush(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_session_for(d, m, 1);
    if (!s || sepd_own(d, s, m, SEP_OWN_FLUSH))
        return;
    s->want_nll = json_is_true(json_object_get(m->hdr, "nll"));
    if (sep_session_ingest(s, d->tok, "", 0, 1)) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INPUT, "%s", sep_errmsg());
        sep_session_release(s);
        return;
    }
    sepd_progress(d, s);
}

static void op_close(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_session_for(d, m, 0);
    if (!s)
        return;
    if (s->acks_wanted || s->state == SEP_SS_CLOSING || s->state == SEP_SS_SUSPENDING ||
        s->state == SEP_SS_RESUMING)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                          "session '%s' is %s", s->name, sep_session_state_name(s->state));
    if (sepd_own(d, s, m, SEP_OWN_CLOSE))
        return;
    s->want_nll = json_is_true(json_object_get(m->hdr, "nll"));
    if (s->state == SEP_SS_SUSPENDED) {
        /* its caches are here, not in the workers */
        sepd_owner_reply(d, s, SEP_OP_CLOSE, json_pack("{s:s}", "state", "closed"));
        sepd_remove(d, s);
        return;
    }
    /* the held tail is text too: score it before the end */
    if (s->state == SEP_SS_ACTIVE && sep_session_ingest(s, d->tok, "", 0, 1)) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INPUT, "%s", sep_errmsg());
        sep_session_release(s);
        return;
    }
    if (s->state == SEP_SS_FAILED)
        s->q_len = s->sent = 0; /* nothing more runs */
    s->state = SEP_SS_CLOSING;
    sepd_progress(d, s);
}

static void op_generate(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_session_for(d, m, 1);
    if (!s)
        return;
    int64_t n = sep_msg_int(m, "n", -1);
    double temp = sep_msg_real(m, "temperature", 1.0), top_p = sep_msg_real(m, "top_p", 1.0);
    if (n < 1 || n > SEPD_MAX_GENERATE || !(temp >= 0) || !(top_p > 0 && top_p <= 1))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "generate: n in 1..%d, temperature >= 0, 0 < top_p <= 1",
                          SEPD_MAX_GENERATE);
    if (sepd_own(d, s, m, SEP_OWN_GENERATE))
        return;
    if (sep_session_ingest(s, d->tok, "", 0, 1)) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INPUT, "%s", sep_errmsg());
        sep_session_release(s);
        return;
    }
    if (s->q_len == 0) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                   "session '%s' has no text yet: feed some first", s->name);
        sep_session_release(s);
        return;
    }
    json_t *seed = json_object_get(m->hdr, "seed");
    sep_rng_seed(&s->rng, json_is_integer(seed) ? (uint64_t)json_integer_value(seed)
                                                : (uint64_t)time(NULL) ^ (uint64_t)s->sid << 32);
    s->gen_left = n;
    s->temperature = (float)temp;
    s->top_p = (float)top_p;
    s->want_nll = json_is_true(json_object_get(m->hdr, "nll"));
}

static void op_suspend(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_session_for(d, m, 1);
    if (!s || sepd_own(d, s, m, SEP_OWN_SUSPEND))
        return;
    int st = d->pool->stages;
    s->saved_len = calloc((size_t)st, sizeof *s->saved_len);
    s->saved = calloc((size_t)st, sizeof *s->saved);
    if (!s->saved || !s->saved_len) {
        sep_session_state_free(s);
        sep_session_release(s);
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL,
                          "suspend: out of memory");
    }
    s->n_state = st;
    json_t *h = json_pack("{s:s, s:I, s:b}", "op", SEP_OP_W_SAVE, "sid", (json_int_t)s->sid,
                          "drop", 1);
    int rc = h ? sep_pool_send_all(d->pool, h, NULL, 0) : SEP_ENOMEM;
    json_decref(h);
    if (rc) {
        sep_session_state_free(s);
        sep_session_release(s);
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "suspend: %s",
                          sep_errmsg());
    }
    s->acks_wanted = st;
    s->state = SEP_SS_SUSPENDING;
}

static void op_resume(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_session_for(d, m, 0);
    if (!s)
        return;
    if (s->state != SEP_SS_SUSPENDED)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                          "session '%s' is %s, not suspended", s->name,
                          sep_session_state_name(s->state));
    if (sepd_own(d, s, m, SEP_OWN_RESUME))
        return;
    const sep_policy_t *p = &s->policy;
    json_t *h = json_pack("{s:s, s:I, s:s, s:i, s:i, s:i, s:i, s:i}", "op", SEP_OP_W_LOAD,
                          "sid", (json_int_t)s->sid, "method", sep_method_name(p->method),
                          "a", p->a, "s", p->s, "w", p->w, "c", p->c, "shift", p->shift);
    int rc = h ? SEP_OK : SEP_ENOMEM;
    for (int r = 0; !rc && r < d->pool->stages; r++) {
        sep_frame_t f[2] = { { s->sep_ids, s->n_sep_ids * sizeof(int32_t) },
                             { s->saved[r], s->saved_len[r] } };
        rc = sep_msg_send(d->pool->sock, d->pool->stage[r].peer, d->pool->stage[r].peer_len,
                          h, f, 2);
    }
    json_decref(h);
    if (rc) {
        sep_session_release(s);
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "resume: %s",
                          sep_errmsg());
    }
    s->acks_wanted = d->pool->stages;
    s->state = SEP_SS_RESUMING;
}

static void op_info(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = sepd_session_for(d, m, 0);
    if (!s)
        return;
    json_t *h = sepd_info(s);
    if (h) {
        json_object_set_new(h, "op", json_string(m->op));
        json_object_set_new(h, "ok", json_true());
    }
    sepd_send(d, m->peer, m->peer_len, h, NULL, 0);
}

static void op_ls(sepd_t *d, const sep_msg_t *m)
{
    json_t *list = json_array();
    for (int i = 0; list && i < d->n_sess; i++)
        json_array_append_new(list, sepd_info(d->sess[i]));
    sepd_send(d, m->peer, m->peer_len,
              list ? json_pack("{s:s, s:b, s:o}", "op", m->op, "ok", 1, "sessions", list) : NULL,
              NULL, 0);
}

static void op_stats(sepd_t *d, const sep_msg_t *m)
{
    if (d->stats_wanted)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BUSY,
                          "stats: another stats request is being answered");
    json_t *h = json_pack("{s:s}", "op", SEP_OP_W_STATS);
    int rc = h ? sep_pool_send_all(d->pool, h, NULL, 0) : SEP_ENOMEM;
    json_decref(h);
    if (rc || !(d->stats_workers = json_array()))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "stats: %s",
                          sep_errmsg());
    for (int r = 0; r < d->pool->stages; r++)
        json_array_append_new(d->stats_workers, json_null());
    memcpy(d->stats_peer, m->peer, m->peer_len);
    d->stats_peer_len = m->peer_len;
    d->stats_wanted = d->pool->stages;
}

static void sepd_client_msg(sepd_t *d)
{
    sep_msg_t m;
    int rc = sep_msg_recv(d->clients, 1, &m, ZMQ_DONTWAIT);
    if (rc == SEP_ENOTFOUND)
        return;
    if (rc) {
        /* answer what can be answered: the sender of a malformed message */
        if (m.peer_len)
            sepd_error(d, m.peer, m.peer_len, "error", SEP_ERR_BAD_REQUEST, "%s", sep_errmsg());
        sep_msg_close(&m);
        return;
    }
    static const struct {
        const char *op;
        void (*fn)(sepd_t *, const sep_msg_t *);
    } ops[] = { { SEP_OP_OPEN, op_open }, { SEP_OP_FEED, op_feed },
                { SEP_OP_FEED_END, op_feed_end }, { SEP_OP_PING, op_ping },
                { SEP_OP_GENERATE, op_generate }, { SEP_OP_LS, op_ls },
                { SEP_OP_INFO, op_info }, { SEP_OP_STATS, op_stats },
                { SEP_OP_SUSPEND, op_suspend }, { SEP_OP_RESUME, op_resume },
                { SEP_OP_FLUSH, op_flush }, { SEP_OP_CLOSE, op_close } };
    size_t i;
    for (i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strcmp(m.op, ops[i].op) == 0) {
            ops[i].fn(d, &m);
            break;
        }
    if (i == sizeof ops / sizeof ops[0]) {
        char clip[64];
        sepd_error(d, m.peer, m.peer_len, m.op, SEP_ERR_BAD_REQUEST, "unknown op '%s'",
                   sep_clip(m.op, clip));
    }
    sep_msg_close(&m);
}

/* ---- batches ------------------------------------------------------------ */

/* Gather the runnable ids of the active sessions into one batch and send
 * it to every stage. Returns 1 if a batch went out. */
static int sepd_schedule_one(sepd_t *d)
{
    sepd_batch_t *b = &d->flight[d->n_flight];
    int total = 0, max = d->conf.max_batch < d->pool->max_tokens ? d->conf.max_batch
                                                                 : d->pool->max_tokens;
    b->nc = 0;
    for (int k = 0; k < d->n_sess && total < max; k++) {
        sep_session_t *s = d->sess[(d->rr + (size_t)k) % (size_t)d->n_sess];
        if ((s->state != SEP_SS_ACTIVE && s->state != SEP_SS_CLOSING) || s->acks_wanted)
            continue;
        size_t run = sep_session_runnable(s);
        int gen = 0, n;
        if (run > 0) {
            n = (int)(run < (size_t)d->conf.chunk ? run : (size_t)d->conf.chunk);
            n = n < max - total ? n : max - total;
        } else if (s->gen_left > 0 && !s->gen_inflight && s->sent == 0 && s->q_len == 1) {
            n = 1;
            gen = 1;
        } else {
            continue;
        }
        memcpy(d->ids + total, s->q + s->sent, (size_t)n * sizeof(int32_t));
        if (gen)
            d->targets[total] = -1;
        else
            memcpy(d->targets + total, s->q + s->sent + 1, (size_t)n * sizeof(int32_t));
        b->ch[b->nc++] = (sepd_bchunk_t){ .sid = s->sid, .off = total, .n = n, .gen = gen,
                                          .greedy = gen && s->temperature <= 0 };
        s->sent += (size_t)n;
        s->gen_inflight |= gen;
        total += n;
    }
    if (b->nc == 0)
        return 0;
    d->rr++;
    json_t *chunks = json_array();
    for (int j = 0; chunks && j < b->nc; j++)
        json_array_append_new(chunks, json_pack("{s:I, s:i, s:b, s:b}", "sid",
                                                (json_int_t)b->ch[j].sid, "n", b->ch[j].n,
                                                "logits", b->ch[j].gen && !b->ch[j].greedy,
                                                "greedy", b->ch[j].greedy));
    b->seq = d->next_seq++;
    json_t *h = chunks ? json_pack("{s:s, s:I, s:o}", "op", SEP_OP_W_BATCH, "seq",
                                   (json_int_t)b->seq, "chunks", chunks) : NULL;
    sep_frame_t f[2] = { { d->ids, (size_t)total * sizeof(int32_t) },
                         { d->targets, (size_t)total * sizeof(int32_t) } };
    int rc = h ? sep_pool_send_all(d->pool, h, f, 2) : SEP_ENOMEM;
    json_decref(h);
    if (rc) {
        /* the workers are unreachable: the loop's liveness check ends it */
        sep_log(SEP_LOG_ERROR, "batch %lld: %s", (long long)b->seq, sep_errmsg());
        d->stop = 1;
        return 0;
    }
    d->n_flight++;
    return 1;
}

static void sepd_schedule(sepd_t *d)
{
    while (!d->stop && d->n_flight < d->max_flight && sepd_schedule_one(d))
        ;
}

/* The text a generated token adds after prev. */
static void sepd_emit(sepd_t *d, sep_session_t *s, int32_t prev, int32_t tok, float nll)
{
    char *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    int32_t pair[2] = { prev, tok };
    if (sep_tok_decode(d->tok, pair, 1, &a, &la) || sep_tok_decode(d->tok, pair, 2, &b, &lb))
        lb = la = 0;
    /* the pair may decode differently at the seam; fall back to the token */
    size_t skip = lb >= la && memcmp(a, b, la) == 0 ? la : 0;
    json_t *h = json_pack("{s:s, s:b, s:i, s:f, s:I}", "op", SEP_OP_GENERATE, "ok", 1, "token",
                          tok, "nll", nll, "left", (json_int_t)s->gen_left);
    sep_frame_t f = { b ? b + skip : "", b ? lb - skip : 0 };
    sepd_send(d, s->owner, s->owner_len, h, &f, 1);
    free(a);
    free(b);
}

/* A generation step came back: its token (chosen by the last stage at
 * temperature 0, else sampled here from logits), scored, goes on. */
static void sepd_generated(sepd_t *d, sep_session_t *s, const float *logits, int32_t next,
                           float next_nll, int32_t kv)
{
    int32_t tok = next, prev = s->q[0];
    float nll = next_nll;
    s->gen_inflight = 0;
    int rc = logits ? sep_sample(logits, d->pool->vocab, s->temperature, s->top_p, &s->rng,
                                 d->sample_scratch, &tok, &nll)
             : tok < 0 ? sep_fail(SEP_EINVAL, "the logits are NaN, +inf or all -inf")
                       : SEP_OK;
    if (rc || sep_session_scored(s, 1, &nll, &kv) || sep_session_push(s, tok)) {
        sepd_error(d, s->owner, s->owner_len, SEP_OP_GENERATE, SEP_ERR_INTERNAL, "generate: %s",
                   sep_errmsg());
        sep_session_release(s);
        return;
    }
    s->gen_left--;
    sepd_emit(d, s, prev, tok, nll);
    if (s->gen_left == 0) {
        s->bytes_committed = s->bytes_tokenized;
        sepd_owner_reply(d, s, SEP_OP_GENERATE, json_pack("{s:b}", "done", 1));
        sep_session_release(s);
    }
}

static void sepd_batch_done(sepd_t *d, const sep_msg_t *m)
{
    int64_t seq = sep_msg_int(m, "seq", -1);
    if (d->n_flight == 0 || d->flight[0].seq != seq) {
        sep_log(SEP_LOG_ERROR, "workers answered batch %lld out of order", (long long)seq);
        return;
    }
    sepd_batch_t *b = &d->flight[0];
    int total = b->nc ? b->ch[b->nc - 1].off + b->ch[b->nc - 1].n : 0, n_logit = 0, n_next = 0;
    for (int j = 0; j < b->nc; j++) {
        n_logit += b->ch[j].gen && !b->ch[j].greedy;
        n_next += b->ch[j].greedy;
    }
    if (m->n_frames != 5 || m->frames[0].len != (size_t)total * 4 ||
        m->frames[1].len != (size_t)total * 4 ||
        m->frames[2].len != (size_t)n_logit * d->pool->vocab * 4 ||
        m->frames[3].len != (size_t)n_next * 4 || m->frames[4].len != (size_t)n_next * 4) {
        sep_log(SEP_LOG_ERROR, "batch %lld: malformed answer", (long long)seq);
        d->stop = 1;
        return;
    }
    const float *nll = m->frames[0].data, *logits = m->frames[2].data;
    const int32_t *kv = m->frames[1].data, *next = m->frames[3].data;
    const float *next_nll = m->frames[4].data;
    for (int j = 0, g = 0, gn = 0; j < b->nc; j++) {
        sep_session_t *s = sepd_find_sid(d, b->ch[j].sid);
        if (b->ch[j].greedy) {
            if (s)
                sepd_generated(d, s, NULL, next[gn], next_nll[gn], kv[b->ch[j].off]);
            gn++;
        } else if (b->ch[j].gen) {
            if (s)
                sepd_generated(d, s, logits + (size_t)g * d->pool->vocab, -1, 0.0f,
                               kv[b->ch[j].off]);
            g++;
        } else if (s && sep_session_scored(s, (size_t)b->ch[j].n, nll + b->ch[j].off,
                                           kv + b->ch[j].off)) {
            sep_log(SEP_LOG_ERROR, "%s", sep_errmsg());
        }
        if (!s)
            continue;
        d->tokens_total += b->ch[j].n;
        sepd_progress(d, s);
    }
    sepd_batch_t done = d->flight[0];
    memmove(d->flight, d->flight + 1, (size_t)(d->n_flight - 1) * sizeof *d->flight);
    d->flight[--d->n_flight] = done; /* keep its chunk array for reuse */
}

/* A batch failed in a stage: its sessions cannot go on. */
static void sepd_batch_failed(sepd_t *d, const sep_msg_t *m)
{
    int64_t seq = sep_msg_int(m, "seq", -1);
    const char *why = sep_msg_str(m, "error", "?");
    if (d->n_flight == 0 || d->flight[0].seq != seq) {
        sep_log(SEP_LOG_ERROR, "batch %lld failed out of order: %s", (long long)seq, why);
        return;
    }
    sepd_batch_t *b = &d->flight[0];
    for (int j = 0; j < b->nc; j++) {
        sep_session_t *s = sepd_find_sid(d, b->ch[j].sid);
        if (!s)
            continue;
        sep_log(SEP_LOG_ERROR, "session '%s' failed: %s", s->name, why);
        if (s->owner_len)
            sepd_error(d, s->owner, s->owner_len, "error", SEP_ERR_INTERNAL,
                       "session '%s' failed in a worker: %s", s->name, why);
        sep_session_release(s);
        s->state = SEP_SS_FAILED;
        s->sent = 0;
    }
    sepd_batch_t done = d->flight[0];
    memmove(d->flight, d->flight + 1, (size_t)(d->n_flight - 1) * sizeof *d->flight);
    d->flight[--d->n_flight] = done;
}

/* A control op's ack from one stage. */
static void sepd_control_ack(sepd_t *d, const sep_msg_t *m, int rank)
{
    sep_session_t *s = sepd_find_sid(d, (uint32_t)sep_msg_int(m, "sid", 0));
    if (!s || s->acks_wanted <= 0) {
        sep_log(SEP_LOG_WARN, "stage %d: unexpected %s", rank, m->op);
        return;
    }
    if (strcmp(m->op, SEP_OP_W_SAVE) == 0 && m->n_frames == 1 && s->saved &&
        s->saved_len && rank < s->n_state) {
        s->saved[rank] = malloc(m->frames[0].len ? m->frames[0].len : 1);
        if (s->saved[rank]) {
            memcpy(s->saved[rank], m->frames[0].data, m->frames[0].len);
            s->saved_len[rank] = m->frames[0].len;
            s->state_got++;
        }
    }
    if (--s->acks_wanted > 0)
        return;
    if (strcmp(m->op, SEP_OP_W_OPEN) == 0) {
        sepd_owner_reply(d, s, SEP_OP_OPEN, NULL);
        sep_session_release(s);
    } else if (strcmp(m->op, SEP_OP_W_SAVE) == 0) {
        if (s->state_got != s->n_state) {
            s->state = SEP_SS_FAILED;
            sep_session_state_free(s);
            sepd_error(d, s->owner, s->owner_len, SEP_OP_SUSPEND, SEP_ERR_INTERNAL,
                       "suspend: out of memory for the cache states");
        } else {
            s->state = SEP_SS_SUSPENDED;
            size_t bytes = 0;
            for (int r = 0; r < s->n_state; r++)
                bytes += s->saved_len[r];
            sepd_owner_reply(d, s, SEP_OP_SUSPEND, json_pack("{s:I}", "state_bytes",
                                                             (json_int_t)bytes));
            sep_log(SEP_LOG_INFO, "session '%s' suspended (%zu bytes of cache state)", s->name,
                    bytes);
        }
        sep_session_release(s);
    } else if (strcmp(m->op, SEP_OP_W_LOAD) == 0) {
        s->state = SEP_SS_ACTIVE;
        sep_session_state_free(s);
        sepd_owner_reply(d, s, SEP_OP_RESUME, NULL);
        sep_session_release(s);
        sep_log(SEP_LOG_INFO, "session '%s' resumed", s->name);
    } else if (strcmp(m->op, SEP_OP_W_CLOSE) == 0) {
        sepd_owner_reply(d, s, SEP_OP_CLOSE, json_pack("{s:s}", "state", "closed"));
        sepd_remove(d, s);
    }
}

/* A control op failed in one stage. */
static void sepd_control_failed(sepd_t *d, const sep_msg_t *m, int rank)
{
    sep_session_t *s = sepd_find_sid(d, (uint32_t)sep_msg_int(m, "sid", 0));
    const char *of = sep_msg_str(m, "of", "?"), *why = sep_msg_str(m, "error", "?");
    sep_log(SEP_LOG_ERROR, "stage %d: %s failed: %s", rank, of, why);
    if (!s)
        return;
    if (s->owner_len)
        sepd_error(d, s->owner, s->owner_len, "error", SEP_ERR_INTERNAL, "stage %d: %s", rank,
                   why);
    sep_session_release(s);
    s->acks_wanted = 0;
    /* a half-opened, half-saved or half-loaded session cannot run */
    s->state = strcmp(of, SEP_OP_W_LOAD) == 0 ? SEP_SS_SUSPENDED : SEP_SS_FAILED;
}

static void sepd_stats_ack(sepd_t *d, const sep_msg_t *m, int rank)
{
    if (!d->stats_wanted)
        return;
    json_t *w = json_deep_copy(m->hdr);
    json_object_del(w, "op");
    json_object_del(w, "v");
    json_array_set_new(d->stats_workers, (size_t)rank, w);
    if (--d->stats_wanted)
        return;
    int active = 0, suspended = 0;
    for (int i = 0; i < d->n_sess; i++) {
        active += d->sess[i]->state == SEP_SS_ACTIVE;
        suspended += d->sess[i]->state == SEP_SS_SUSPENDED;
    }
    json_t *h = json_pack("{s:s, s:b, s:i, s:i, s:i, s:I, s:f, s:f, s:i, s:o}", "op",
                          SEP_OP_STATS, "ok", 1, "sessions", d->n_sess, "active", active,
                          "suspended", suspended, "tokens", (json_int_t)d->tokens_total,
                          "tokens_per_s", d->rate, "uptime_s", sep_now() - d->started,
                          "stages", d->pool->stages, "workers", d->stats_workers);
    d->stats_workers = NULL;
    sepd_send(d, d->stats_peer, d->stats_peer_len, h, NULL, 0);
}

static void sepd_worker_msg(sepd_t *d)
{
    sep_msg_t m;
    int rc = sep_msg_recv(d->pool->sock, 1, &m, ZMQ_DONTWAIT);
    if (rc == SEP_ENOTFOUND)
        return;
    int rank = rc ? -1 : sep_pool_rank_of(d->pool, &m);
    if (rc || rank < 0) {
        sep_log(SEP_LOG_WARN, "dropped a worker message: %s", rc ? sep_errmsg() : "unknown peer");
    } else if (strcmp(m.op, SEP_OP_W_DONE) == 0) {
        sepd_batch_done(d, &m);
    } else if (strcmp(m.op, SEP_OP_W_ERROR) == 0) {
        if (strcmp(sep_msg_str(&m, "of", ""), SEP_OP_W_BATCH) == 0)
            sepd_batch_failed(d, &m);
        else
            sepd_control_failed(d, &m, rank);
    } else if (strcmp(m.op, SEP_OP_W_STATS) == 0) {
        sepd_stats_ack(d, &m, rank);
    } else {
        sepd_control_ack(d, &m, rank);
    }
    sep_msg_close(&m);
}

/* ---- start, loop, stop -------------------------------------------------- */

static void sepd_rate(sepd_t *d)
{
    double now = sep_now();
    if (now - d->rate_t0 < 2.0)
        return;
    d->rate = (double)(d->tokens_total - d->rate_tok0) / (now - d->rate_t0);
    d->rate_t0 = now;
    d->rate_tok0 = d->tokens_total;
}

static int sepd_loop(sepd_t *d)
{
    char why[128];
    while (!d->stop) {
        zmq_pollitem_t it[3] = { { .socket = d->clients, .events = ZMQ_POLLIN },
                                 { .socket = d->pool->sock, .events = ZMQ_POLLIN },
                                 { .fd = d->sig_fd, .events = ZMQ_POLLIN } };
        if (zmq_poll(it, 3, 500) < 0 && errno != EINTR)
            return sep_fail(SEP_EIO, "poll: %s", zmq_strerror(errno));
        /* worker results first: they free room for the next batch */
        for (int i = 0; i < 256 && (it[1].revents & ZMQ_POLLIN); i++) {
            int ev = 0;
            size_t sz = sizeof ev;
            zmq_getsockopt(d->pool->sock, ZMQ_EVENTS, &ev, &sz);
            if (!(ev & ZMQ_POLLIN))
                break;
            sepd_worker_msg(d);
        }
        for (int i = 0; i < 256 && (it[0].revents & ZMQ_POLLIN); i++) {
            int ev = 0;
            size_t sz = sizeof ev;
            zmq_getsockopt(d->clients, ZMQ_EVENTS, &ev, &sz);
            if (!(ev & ZMQ_POLLIN))
                break;
            sepd_client_msg(d);
        }
        if (it[2].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            while (read(d->sig_fd, &si, sizeof si) == (ssize_t)sizeof si)
                if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                    sep_log(SEP_LOG_INFO, "signal %u: shutting down", si.ssi_signo);
                    d->stop = 1;
                }
        }
        if (sep_pool_dead(d->pool, why, sizeof why))
            return sep_fail(SEP_EIO, "the workers %s; the sessions' caches are lost", why);
        sepd_schedule(d);
        sepd_rate(d);
    }
    return SEP_OK;
}

static const char *usage_text =
    "usage: sepd [--config FILE] [--socket ENDPOINT] [--store DIR] [--model DIR]\n"
    "            [--stages N] [--device cpu|cuda|auto] [--precision fp32|bf16]\n"
    "            [--threads T] [--log-level error|warn|info|debug] [--foreground]\n"
    "The sepd coordinator daemon (see sepd(8)). Without --foreground it\n"
    "detaches once it serves, logging to STORE/sepd.log.\n";

static int sepd_parse(int argc, char **argv, sep_conf_t *c)
{
    static const struct option opts[] = {
        { "config", required_argument, 0, 'f' }, { "socket", required_argument, 0, 's' },
        { "store", required_argument, 0, 'S' }, { "model", required_argument, 0, 'm' },
        { "stages", required_argument, 0, 'n' }, { "device", required_argument, 0, 'd' },
        { "precision", required_argument, 0, 'P' }, { "threads", required_argument, 0, 't' },
        { "log-level", required_argument, 0, 'l' }, { "foreground", no_argument, 0, 'F' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    static const char *keys[128] = { ['s'] = "socket", ['S'] = "store", ['m'] = "model",
                                     ['n'] = "stages", ['d'] = "device", ['P'] = "precision",
                                     ['t'] = "threads", ['l'] = "log_level" };
    const char *config = getenv("SEPD_CONFIG");
    int ch;
    /* the config file first, whatever its place on the line */
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'f')
            config = optarg;
        else if (ch == 'h') {
            fputs(usage_text, stdout);
            return -1;
        } else if (ch == '?') {
            fputs(usage_text, stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "sepd: unexpected argument '%s'\n%s", argv[optind], usage_text);
        return 2;
    }
    if (config && *config && sep_conf_read(c, config)) {
        fprintf(stderr, "sepd: %s\n", sep_errmsg());
        return 2;
    }
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'F')
            c->foreground = 1;
        else if (ch < 128 && keys[ch] && sep_conf_set(c, keys[ch], optarg)) {
            fprintf(stderr, "sepd: --%s\n", sep_errmsg());
            return 2;
        }
    }
    sep_log_level_t lv = SEP_LOG_INFO;
    if (c->log_level && sep_log_parse(c->log_level, &lv)) {
        fprintf(stderr, "sepd: %s\n", sep_errmsg());
        return 2;
    }
    sep_log_set(lv, NULL);
    return 0;
}

/* Defaults for what neither the config nor the line set. */
static int sepd_defaults(sep_conf_t *c, const char *argv0)
{
    char buf[4096];
    int rc;
    if (!c->socket && ((rc = sep_default_socket(buf, sizeof buf)) ||
                       (rc = sep_conf_set(c, "socket", buf))))
        return rc;
    if (!c->store && ((rc = sep_default_store(buf, sizeof buf)) ||
                      (rc = sep_conf_set(c, "store", buf))))
        return rc;
    if (!c->model && (rc = sep_conf_set(c, "model", sep_default_model())))
        return rc;
    if (!c->mpirun && (rc = sep_conf_set(c, "mpirun", SEP_MPIRUN)))
        return rc;
    if (!c->worker) {
        /* next to sepd when installed, workers/ beside daemon/ in a build */
        const char *env = getenv("SEPD_WORKER");
        char self[PATH_MAX], cand[PATH_MAX + 64];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (env && *env) {
            snprintf(cand, sizeof cand, "%s", env);
        } else if (n > 0) {
            self[n] = '\0';
            char *dir = dirname(self);
            snprintf(cand, sizeof cand, "%s/sepd-worker", dir);
            if (access(cand, X_OK) != 0)
                snprintf(cand, sizeof cand, "%s/../workers/sepd-worker", dir);
        } else {
            snprintf(cand, sizeof cand, "%s", argv0);
        }
        if ((rc = sep_conf_set(c, "worker", cand)))
            return rc;
    }
    return SEP_OK;
}

/* For an ipc endpoint: a lock beside the socket file, so a second daemon
 * does not steal the socket of a live one; the socket becomes 0600. */
static int sepd_lock(sepd_t *d)
{
    d->lock_fd = -1;
    if (strncmp(d->conf.socket, "ipc://", 6) != 0)
        return SEP_OK;
    const char *path = d->conf.socket + 6;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int rc = sep_mkdirs(dirname(dir), 0700);
    if (rc)
        return rc;
    snprintf(d->lock_path, sizeof d->lock_path, "%s.lock", path);
    d->lock_fd = open(d->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0)
        return sep_fail(SEP_EIO, "%s: %s", d->lock_path, strerror(errno));
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return sep_fail(SEP_EIO, "another sepd serves %s (%s is locked)", d->conf.socket,
                        d->lock_path);
    return SEP_OK;
}

static int sepd_bind(sepd_t *d)
{
    int linger = 0;
    mode_t old = umask(0077); /* the ipc socket file is created 0600 */
    d->clients = zmq_socket(d->zctx, ZMQ_ROUTER);
    int bad = !d->clients || zmq_setsockopt(d->clients, ZMQ_LINGER, &linger, sizeof linger) ||
              zmq_bind(d->clients, d->conf.socket);
    umask(old);
    if (bad)
        return sep_fail(SEP_EIO, "bind %s: %s", d->conf.socket, zmq_strerror(errno));
    if (strncmp(d->conf.socket, "ipc://", 6) == 0 && chmod(d->conf.socket + 6, 0600) != 0)
        return sep_fail(SEP_EIO, "chmod %s: %s", d->conf.socket + 6, strerror(errno));
    return SEP_OK;
}

/* Detach: the parent waits on a pipe until the child serves (or fails),
 * so `sepd && sepctl ...` works. Returns in the child; *ready_fd is the
 * pipe's write end. */
static int sepd_detach(const char *store, int *ready_fd)
{
    int fds[2];
    char log_path[4200];
    snprintf(log_path, sizeof log_path, "%s/sepd.log", store);
    if (pipe(fds) != 0)
        return sep_fail(SEP_EIO, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        return sep_fail(SEP_EIO, "fork: %s", strerror(errno));
    if (pid > 0) {
        close(fds[1]);
        char ok = 0;
        ssize_t n = read(fds[0], &ok, 1);
        if (n == 1 && ok == 1)
            _exit(0);
        fprintf(stderr, "sepd: failed to start; see %s\n", log_path);
        _exit(1);
    }
    close(fds[0]);
    setsid();
    int nul = open("/dev/null", O_RDWR);
    int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (nul < 0 || log < 0)
        return sep_fail(SEP_EIO, "%s: %s", log_path, strerror(errno));
    dup2(nul, 0);
    dup2(log, 1);
    dup2(log, 2);
    close(nul);
    close(log);
    *ready_fd = fds[1];
    return SEP_OK;
}

static int sepd_signals(sepd_t *d)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0 ||
        (d->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
        return sep_fail(SEP_EIO, "signals: %s", strerror(errno));
    return SEP_OK;
}

static int sepd_start(sepd_t *d)
{
    char path[4200];
    int rc;
    snprintf(path, sizeof path, "%s/tokenizer.json", d->conf.model);
    if ((rc = sep_mkdirs(d->conf.store, 0700)) || (rc = sep_run_dir(d->run_dir, sizeof d->run_dir)) ||
        (rc = sepd_lock(d)) || (rc = sep_tok_load(&d->tok, path)) || (rc = sepd_signals(d)))
        return rc;
    if (!(d->zctx = zmq_ctx_new()))
        return sep_fail(SEP_EIO, "zmq: %s", zmq_strerror(errno));
    sep_pool_opts_t po = { .stages = d->conf.stages, .worker = d->conf.worker,
                           .mpirun = d->conf.mpirun, .mpirun_args = d->conf.mpirun_args,
                           .model = d->conf.model, .device = d->conf.device,
                           .precision = d->conf.precision, .threads = d->conf.threads,
                           .max_tokens = d->conf.max_batch, .log_level = d->conf.log_level,
                           .start_timeout_s = d->conf.start_timeout };
    if ((rc = sep_pool_start(&d->pool, d->zctx, d->run_dir, &po)))
        return rc;
    if (d->pool->vocab != sep_tok_vocab_size(d->tok))
        return sep_fail(SEP_EFORMAT, "%s: the tokenizer has %d ids, the model %d", d->conf.model,
                        sep_tok_vocab_size(d->tok), d->pool->vocab);
    d->max_flight = d->pool->stages + 1;
    d->flight = calloc((size_t)d->max_flight, sizeof *d->flight);
    d->ids = malloc((size_t)d->conf.max_batch * sizeof *d->ids);
    d->targets = malloc((size_t)d->conf.max_batch * sizeof *d->targets);
    d->sample_scratch = malloc(2 * (size_t)d->pool->vocab * sizeof(float));
    if (!d->flight || !d->ids || !d->targets || !d->sample_scratch)
        return sep_fail(SEP_ENOMEM, "out of memory");
    for (int i = 0; i < d->max_flight; i++)
        if (!(d->flight[i].ch = malloc((size_t)d->conf.max_batch * sizeof *d->flight[i].ch)))
            return sep_fail(SEP_ENOMEM, "out of memory");
    return sepd_bind(d);
}

static void sepd_cleanup(sepd_t *d)
{
    while (d->n_sess)
        sepd_remove(d, d->sess[0]);
    free(d->sess);
    sep_pool_stop(&d->pool);
    if (d->clients)
        zmq_close(d->clients);
    if (d->zctx)
        zmq_ctx_term(d->zctx);
    for (int i = 0; d->flight && i < d->max_flight; i++)
        free(d->flight[i].ch);
    free(d->flight);
    free(d->ids);
    free(d->targets);
    free(d->sample_scratch);
    json_decref(d->stats_workers);
    sep_tok_destroy(&d->tok);
    if (d->lock_fd >= 0) {
        /* ours while the lock is held: no other daemon serves this path */
        if (d->clients)
            unlink(d->conf.socket + strlen("ipc://"));
        unlink(d->lock_path);
        close(d->lock_fd);
    }
    if (d->sig_fd > 0)
        close(d->sig_fd);
    sep_conf_free(&d->conf);
}

int main(int argc, char **argv)
{
    sepd_t d = { .conf = { .stages = 1, .max_batch = 2048, .chunk = 512, .max_sessions = 1024,
                           .start_timeout = 120 },
                 .lock_fd = -1, .sig_fd = -1 };
    int urc = sepd_parse(argc, argv, &d.conf), ready_fd = -1, rc;
    if (urc) {
        sep_conf_free(&d.conf);
        return urc < 0 ? 0 : urc;
    }
    if ((rc = sepd_defaults(&d.conf, argv[0])) || (rc = sep_mkdirs(d.conf.store, 0700)) ||
        (!d.conf.foreground && (rc = sepd_detach(d.conf.store, &ready_fd))))
        goto fail;
    d.started = d.rate_t0 = sep_now();
    sep_log(SEP_LOG_INFO, "sepd %s starting: model %s, %d stage(s), socket %s", PACKAGE_VERSION,
            d.conf.model, d.conf.stages, d.conf.socket);
    if ((rc = sepd_start(&d)))
        goto fail;
    sep_log(SEP_LOG_INFO, "serving on %s", d.conf.socket);
    if (ready_fd >= 0) {
        char ok = 1;
        if (write(ready_fd, &ok, 1) != 1)
            sep_log(SEP_LOG_WARN, "could not tell the starting shell: %s", strerror(errno));
        close(ready_fd);
        ready_fd = -1;
    }
    rc = sepd_loop(&d);
fail:
    if (rc)
        sep_log(SEP_LOG_ERROR, "%s (%s)", sep_errmsg(), sep_strerror(rc));
    if (ready_fd >= 0)
        close(ready_fd); /* the waiting parent reports the failure */
    sepd_cleanup(&d);
    if (!rc)
        sep_log(SEP_LOG_INFO, "stopped");
    return rc ? 1 : 0;
}
