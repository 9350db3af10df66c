/* clients.c: the client verbs of sepd (docs/protocol.md).
 *
 * A request is checked, then either answered at once (ls, info, stats,
 * ping) or turned into the session's op, which sepd_step() (control.c)
 * carries to its end and answers. One op runs per session; a request
 * that cannot start yet either waits for the op (the same client's flush,
 * generate, suspend or close behind its feed; a close behind a suspend,
 * resume or open) or is refused as busy. Replies go through the outbox,
 * so none is dropped: a client that reads slowly gets them late, and
 * generation waits for it (its window).
 */
#include "auth.h"
#include "daemon.h"
#include "err.h"
#include "persist.h"
#include "quota.h"
#include "grow.h"
#include "log.h"
#include "pick.h"
#include "sample.h"
#include "util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define SEPD_BAD_LOG_S 10.0      /* bad requests are summed up this often at most */

/* ---- replies ------------------------------------------------------------ */

struct sepd_gone {
    uint8_t id[256]; /* the client's routing id */
    size_t len;
};

/* A peer a reply found gone, for sepd_gone_drain (once each). */
static void gone_note(sepd_t *d, const uint8_t *peer, size_t len)
{
    if (len > sizeof d->gone->id)
        return; /* not a ZeroMQ routing id: no op is waiting for it */
    for (size_t i = 0; i < d->n_gone; i++)
        if (d->gone[i].len == len && memcmp(d->gone[i].id, peer, len) == 0)
            return;
    if (SEP_GROW(d->gone, d->cap_gone, d->n_gone + 1)) {
        /* its op stays until a heartbeat or the next reply finds it gone */
        sep_log(SEP_LOG_WARN, "a client went away: %s; noticed at its next reply",
                sep_errmsg());
        return;
    }
    memcpy(d->gone[d->n_gone].id, peer, len);
    d->gone[d->n_gone++].len = len;
}

void sepd_send(sepd_t *d, const uint8_t *peer, size_t peer_len, json_t *hdr,
               const sep_frame_t *frames, int n)
{
    if (!hdr) {
        sep_log(SEP_LOG_ERROR, "out of memory for a reply");
        return;
    }
    int rc = sepd_outbox_send(d->out, peer, peer_len, hdr, frames, n);
    json_decref(hdr);
    if (rc == SEP_EPEER)
        gone_note(d, peer, peer_len);
    else if (rc)
        sep_log(SEP_LOG_WARN, "reply: %s", sep_errmsg());
}

void sepd_gone_drain(sepd_t *d)
{
    /* sepd_peer_gone may reply to others and note more: take them all */
    while (d->n_gone) {
        struct sepd_gone g = d->gone[--d->n_gone];
        sepd_peer_gone(d, g.id, g.len);
    }
}

static void sepd_verror(sepd_t *d, const uint8_t *peer, size_t peer_len, const char *op,
                        const char *code, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    sep_log(SEP_LOG_DEBUG, "%s: %s", op, msg);
    sepd_send(d, peer, peer_len,
              json_pack("{s:s, s:b, s:s, s:s}", "op", op, "ok", 0, "code", code, "error", msg),
              NULL, 0);
}

void sepd_error(sepd_t *d, const uint8_t *peer, size_t peer_len, const char *op,
                const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sepd_verror(d, peer, peer_len, op, code, fmt, ap);
    va_end(ap);
}

void sepd_next_error(sepd_t *d, sep_session_t *s, const char *code, const char *fmt, ...)
{
    if (!s->op.next)
        return;
    va_list ap;
    va_start(ap, fmt);
    sepd_verror(d, s->op.next_peer, s->op.next_peer_len, sep_hdr_str(s->op.next, "op", "error"),
                code, fmt, ap);
    va_end(ap);
}

void sepd_op_error(sepd_t *d, sep_session_t *s, const char *code, const char *fmt, ...)
{
    if (!s->op.peer_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    sepd_verror(d, s->op.peer, s->op.peer_len, sep_sop_name(s->op.kind), code, fmt, ap);
    va_end(ap);
}

json_t *sepd_info(const sep_session_t *s)
{
    double ppl = s->tokens ? exp(s->nll_sum / (double)s->tokens) : 0.0;
    double avg_kv = s->tokens ? (double)s->kv_sum / (double)s->tokens : 0.0;
    static const char *archive[] = { "off", "f32", "bf16" };
    json_t *h = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:b, s:s, s:s, s:I, s:f, "
                          "s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                          "name", s->name,
                          "state", s->recovering ? "recovering" : sep_session_state_name(s->state),
                          "running", sep_sop_name(s->op.kind),
                          "method", sep_method_name(s->policy.method), "a", s->policy.a,
                          "s", s->policy.s, "w", s->policy.w, "c", s->policy.c,
                          "shift", s->policy.shift, "separators", s->separators,
                          "archive", s->archive <= 2 ? archive[s->archive] : "?",
                          "tokens", (json_int_t)s->tokens, "ppl", ppl, "avg_kv", avg_kv,
                          "max_kv", (json_int_t)s->kv_max, "kv", (json_int_t)s->kv_last,
                          "bytes_in", (json_int_t)s->bytes_in,
                          "bytes_committed", (json_int_t)s->committed_bytes,
                          "tokens_committed", (json_int_t)s->committed_tokens,
                          "checkpoints", (json_int_t)s->checkpoints,
                          "held_bytes", (json_int_t)s->held_len, "queued_ids", (json_int_t)s->q_len,
                          "ids", (json_int_t)s->ids_total);
    if (h) {
        json_object_set_new(h, "owner", json_string(s->owner));
        json_object_set_new(h, "shared", json_boolean(s->shared));
    }
    if (h && s->ckpt_error[0])
        json_object_set_new(h, "checkpoint_error", json_string(s->ckpt_error));
    if (h && s->foreign[0])
        json_object_set_new(h, "cannot_load", json_string(s->foreign));
    if (h && s->reviving)
        json_object_set_new(h, "loading", json_true());
    return h;
}

void sepd_op_reply(sepd_t *d, sep_session_t *s, const char *op, json_t *extra)
{
    if (!s->op.peer_len) {
        json_decref(extra);
        s->out_n = 0;
        return;
    }
    json_t *h = sepd_info(s);
    if (h) {
        json_object_set_new(h, "op", json_string(op));
        json_object_set_new(h, "ok", json_true());
        if (extra)
            json_object_update(h, extra);
    }
    json_decref(extra);
    sep_frame_t f = { s->out_nll, s->out_n * sizeof(float) };
    if (s->op.want_nll && sep_session_nll_sent(s))
        sep_log(SEP_LOG_ERROR, "session '%s': no memory to keep %zu NLLs", s->name, s->out_n);
    sepd_send(d, s->op.peer, s->op.peer_len, h, &f, s->op.want_nll ? 1 : 0);
    s->out_n = 0;
}

/* ---- clients that go away ---------------------------------------------- */

static int sepd_op_of(const sep_session_t *s, const uint8_t *peer, size_t len)
{
    return s->op.kind && s->op.peer_len == len && memcmp(s->op.peer, peer, len) == 0;
}

void sepd_peer_gone(sepd_t *d, const uint8_t *peer, size_t peer_len)
{
    for (size_t i = 0; i < d->n_sess; i++) {
        sep_session_t *s = d->sess[i];
        if (!sepd_op_of(s, peer, peer_len))
            continue;
        sep_log(SEP_LOG_INFO, "session '%s': the client of its %s went away", s->name,
                sep_sop_name(s->op.kind));
        if (s->op.kind == SEP_SOP_FEED || s->op.kind == SEP_SOP_GENERATE ||
            s->op.kind == SEP_SOP_EXPORT) {
            /* what it sent is the session's text; nobody waits for the rest */
            if (s->op.kind == SEP_SOP_EXPORT)
                sepd_export_drop(d, s);
            sep_session_op_end(s);
            if (sepd_step(d, s))
                i--;
        } else {
            s->op.peer_len = 0; /* the op completes; nobody to tell */
        }
    }
    for (size_t i = 0; i < d->stats.n_waiting; i++)
        if (d->stats.waiting[i].len == peer_len &&
            memcmp(d->stats.waiting[i].id, peer, peer_len) == 0)
            d->stats.waiting[i].len = 0;
    sepd_import_gone(d, peer, peer_len);
    sepd_client_forget(d, peer, peer_len);
}

void sepd_heartbeats(sepd_t *d)
{
    double now = sep_now();
    if (now - d->heartbeat_t < SEPD_HEARTBEAT_S)
        return;
    d->heartbeat_t = now;
    json_t *h = json_pack("{s:s}", "op", SEP_OP_HEARTBEAT);
    for (size_t i = 0; h && i < d->n_sess; i++) {
        sep_session_t *s = d->sess[i];
        /* a generation waiting for its client's window: is the client still there? */
        if (s->op.kind != SEP_SOP_GENERATE || !s->op.peer_len ||
            sepd_outbox_waiting(d->out, s->op.peer, s->op.peer_len))
            continue;
        uint8_t peer[256];
        size_t len = s->op.peer_len;
        memcpy(peer, s->op.peer, len);
        int rc = sepd_outbox_send(d->out, peer, len, h, NULL, 0);
        if (rc == SEP_EPEER) {
            sepd_peer_gone(d, peer, len);
            i = (size_t)-1; /* the table may have changed: start again */
        }
    }
    json_decref(h);
}

void sepd_fail_all(sepd_t *d, const char *code, const char *why)
{
    for (size_t i = 0; i < d->n_sess; i++) {
        sep_session_t *s = d->sess[i];
        if (s->op.kind)
            sepd_op_error(d, s, code, "session '%s': %s", s->name, why);
        sepd_next_error(d, s, code, "session '%s': %s", s->name, why);
        sep_session_op_end(s);
    }
    for (size_t i = 0; i < d->stats.n_waiting; i++)
        if (d->stats.waiting[i].len)
            sepd_error(d, d->stats.waiting[i].id, d->stats.waiting[i].len, SEP_OP_STATS, code,
                       "%s", why);
    d->stats.n_waiting = 0;
}

/* ---- taking a session for an op --------------------------------------- */

static int same_peer(const uint8_t *a, size_t la, const sep_msg_t *m)
{
    return la == m->peer_len && memcmp(a, m->peer, la) == 0;
}

/* The session m names, or an error reply. */
static sep_session_t *session_for(sepd_t *d, const sep_msg_t *m)
{
    const char *name = sep_msg_str(m, "session", NULL);
    char clip[64];
    if (!name) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                   "%s: no \"session\" name", m->op);
        return NULL;
    }
    sep_session_t *s = sepd_find(d, name);
    if (!s)
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_NOT_FOUND, "no session '%s'",
                   sep_clip(name, clip));
    else if (!sepd_access(d, s, m)) /* access.c: its owner's, shared, or an operator's */
        return NULL;
    return s;
}

int sepd_piece_ok(sepd_t *d, const sep_msg_t *m)
{
    if (m->n_frames != 1)
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                   "%s: expected one frame (the piece), got %d", m->op, m->n_frames);
    else if (m->frames[0].len > SEP_FEED_PIECE)
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_TOO_LARGE,
                   "%s: a piece of %zu bytes (at most %d)", m->op, m->frames[0].len,
                   SEP_FEED_PIECE);
    else
        return 1;
    return 0;
}

/* The session m names when m's client runs its op of this kind, else NULL
 * (and an error naming what the client is not doing). */
static sep_session_t *session_owned(sepd_t *d, const sep_msg_t *m, sep_sop_t kind,
                                    const char *doing)
{
    sep_session_t *s = session_for(d, m);
    if (s && (s->op.kind != kind || !same_peer(s->op.peer, s->op.peer_len, m))) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                   "%s: this client is not %s '%s'", m->op, doing, s->name);
        return NULL;
    }
    return s;
}

/* Keep m to run once s's op ends. */
static int op_defer(sepd_t *d, sep_session_t *s, const sep_msg_t *m)
{
    if (s->op.next) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BUSY,
                   "session '%s' is busy: a request waits already for its %s", s->name,
                   sep_sop_name(s->op.kind));
        return 0;
    }
    s->op.next = json_incref(m->hdr);
    memcpy(s->op.next_peer, m->peer, m->peer_len);
    s->op.next_peer_len = m->peer_len;
    snprintf(s->op.next_user, sizeof s->op.next_user, "%s", m->user);
    return 0;
}

/* The op's client is told its op was cut short by m's sender. */
static void op_cancel_for(sepd_t *d, sep_session_t *s, const sep_msg_t *m)
{
    if (!same_peer(s->op.peer, s->op.peer_len, m))
        sepd_op_error(d, s, SEP_ERR_CANCELLED, "session '%s': %s cancelled: another client "
                      "closed the session", s->name, sep_sop_name(s->op.kind));
    else if (s->op.kind == SEP_SOP_GENERATE || s->op.kind == SEP_SOP_EXPORT)
        sepd_op_error(d, s, SEP_ERR_CANCELLED, "session '%s': %s cancelled by close", s->name,
                      sep_sop_name(s->op.kind));
    if (s->op.kind == SEP_SOP_EXPORT)
        sepd_export_drop(d, s);
    sepd_next_error(d, s, SEP_ERR_CANCELLED, "session '%s' was closed", s->name);
    sep_session_op_end(s);
}

/* Whether the client of s's op has gone: a heartbeat to it says (ZeroMQ
 * knows of a closed connection only when something is sent on it). */
static int op_client_gone(sepd_t *d, sep_session_t *s)
{
    if (!s->op.peer_len)
        return 1;
    json_t *h = json_pack("{s:s}", "op", SEP_OP_HEARTBEAT);
    int rc = h ? sepd_outbox_send(d->out, s->op.peer, s->op.peer_len, h, NULL, 0) : SEP_ENOMEM;
    json_decref(h);
    if (rc != SEP_EPEER)
        return 0;
    uint8_t peer[256];
    size_t len = s->op.peer_len;
    memcpy(peer, s->op.peer, len);
    sepd_peer_gone(d, peer, len);
    return 1;
}

/* May m's sender start an op of kind on s now? 1: yes (m's sender is
 * made its client); 0: it waits for the running op, or was refused. */
static int op_admit(sepd_t *d, sep_session_t *s, const sep_msg_t *m, sep_sop_t kind)
{
    sep_op_t *op = &s->op;
    int same = op->kind && same_peer(op->peer, op->peer_len, m);
    if (op->kind && !same && (op->kind == SEP_SOP_FEED || op->kind == SEP_SOP_GENERATE) &&
        op_client_gone(d, s))
        same = 0; /* its op ended with it */
    if (op->kind && !same && op->kind == SEP_SOP_FEED && sep_now() - op->seen > SEPD_FEED_LEASE) {
        sep_log(SEP_LOG_WARN, "session '%s': its feeder went silent; another client takes "
                "it over", s->name);
        sep_session_op_end(s);
    }
    /* a generation step still in flight after its op ended (its client
     * went away) is the stream's: a new op waits for its token, which
     * comes before any text the op adds (a run ahead feeds it on) */
    if (op->kind == SEP_SOP_NONE && s->gen_inflight)
        return op_defer(d, s, m);
    /* a checkpoint under way is no op: what comes next waits for it in sepd_step */
    if (op->kind == SEP_SOP_NONE)
        goto take;
    if (op->kind == SEP_SOP_CLOSE) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE, "session '%s' is closing",
                   s->name);
        return 0;
    }
    if (kind == SEP_SOP_CLOSE) {
        if (op->kind == SEP_SOP_GENERATE || op->kind == SEP_SOP_EXPORT ||
            (!same && (op->kind == SEP_SOP_FEED || op->kind == SEP_SOP_FLUSH))) {
            op_cancel_for(d, s, m);
            goto take;
        }
        return op_defer(d, s, m);
    }
    if (same && op->kind == SEP_SOP_FEED && kind != SEP_SOP_FEED && kind != SEP_SOP_RESUME)
        return op_defer(d, s, m); /* after its pieces are acknowledged */
    sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BUSY,
               "session '%s' is busy: %s client is running %s on it", s->name,
               same ? "this" : "another", sep_sop_name(op->kind));
    return 0;
take:
    s->hold = 0;
    memset(op, 0, sizeof *op);
    op->kind = kind;
    memcpy(op->peer, m->peer, m->peer_len);
    op->peer_len = m->peer_len;
    op->seen = sep_now();
    op->want_nll = json_is_true(json_object_get(m->hdr, "nll"));
    s->out_n = 0;
    return 1;
}

/* The session's state lets op kind run; else an error reply. */
static int state_allows(sepd_t *d, sep_session_t *s, const sep_msg_t *m, sep_ss_state_t want)
{
    if (s->state == want)
        return 1;
    sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE, "session '%s' is %s%s", s->name,
               sep_session_state_name(s->state),
               s->state == SEP_SS_SUSPENDED ? " (sepctl resume it first)"
               : s->state == SEP_SS_FAILED ? " (only close works)" : "");
    return 0;
}

/* End the text so far (flush, generate, close): the held tail is
 * tokenized as final. 0, or an error reply and the op ended. */
static int end_text(sepd_t *d, sep_session_t *s, const sep_msg_t *m)
{
    int64_t bad = 0;
    if (!sep_session_ingest(s, d->tok, "", 0, 1, &bad, &s->op.dropped)) {
        if (s->op.dropped)
            sep_log(SEP_LOG_INFO, "session '%s': its text ended inside a UTF-8 character; "
                    "%lld byte(s) dropped", s->name, (long long)s->op.dropped);
        return 0;
    }
    sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "session '%s': %s", s->name,
               sep_errmsg());
    sep_session_op_end(s);
    return -1;
}

/* ---- the verbs ---------------------------------------------------------- */

/* The kept NLLs go out again, ahead of what is scored next. */
static int rc_replay(sep_session_t *s)
{
    int rc = SEP_GROW(s->out_nll, s->out_cap, s->kept_n);
    if (rc)
        return rc;
    memcpy(s->out_nll, s->kept_nll, s->kept_n * sizeof *s->kept_nll);
    s->out_n = s->kept_n;
    s->kept_n = 0; /* they are kept again as they are sent */
    return SEP_OK;
}

/* The policy of an open request (defaults: sepctl eval's). */
static int open_policy(const sep_msg_t *m, sep_policy_t *p)
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

static void op_open(sepd_t *d, const sep_msg_t *m)
{
    const char *name = sep_msg_str(m, "session", NULL);
    sep_policy_t p;
    sep_session_t *s = NULL;
    char clip[64];
    if (!name)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "open: no \"session\" name");
    if (sepd_find(d, name) || sepd_import_find(d, name))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_EXISTS,
                          "session '%s' exists already%s", sep_clip(name, clip),
                          sepd_find(d, name) ? "" : " (it is being imported)");
    if (!sepd_limit_new_session(d, m, name))
        return;
    if (open_policy(m, &p) ||
        sep_session_new(&s, name, 0, &p, sep_msg_str(m, "separators", "auto"), d->tok,
                        d->pool->vocab))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST, "open: %s",
                          sep_errmsg());
    const char *archive = sep_msg_str(m, "archive", d->conf.archive);
    if (!strcmp(archive, "off"))
        s->archive = SEP_ARCHIVE_OFF;
    else if (!strcmp(archive, "f32"))
        s->archive = SEP_ARCHIVE_F32;
    else if (!strcmp(archive, "bf16"))
        s->archive = SEP_ARCHIVE_BF16;
    else {
        sep_session_destroy(&s);
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "open: archive '%s': expected off, f32 or bf16", sep_clip(archive, clip));
    }
    if (!sepd_limit_caches(d, m, s)) {
        sep_session_destroy(&s);
        return;
    }
    if (sepd_add(d, s)) {
        sep_session_destroy(&s);
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "open: %s",
                          sep_errmsg());
    }
    sepd_access_own(d, s, m);
    op_admit(d, s, m, SEP_SOP_OPEN);
    sep_log(SEP_LOG_INFO, "session '%s' opened by %s: %s a=%d s=%d w=%d c=%d shift=%d seps=%s "
            "archive=%s", s->name, s->owner, sep_method_name(p.method), p.a, p.s, p.w, p.c, p.shift,
            s->separators, archive);
    /* its record first: an open that returned survives a crash */
    sepd_persist_create(d, s);
}

/* A piece of the running feed was refused: the client's stream is broken
 * there, and its feed ends once the pieces before are acknowledged. */
static void feed_broken(sepd_t *d, sep_session_t *s)
{
    s->op.ending = SEPD_FEED_BROKEN;
    sepd_step(d, s);
}

static void op_feed(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s)
        return;
    int64_t seq = sep_msg_int(m, "seq", 0);
    int continuing = s->op.kind == SEP_SOP_FEED && same_peer(s->op.peer, s->op.peer_len, m);
    if (!sepd_piece_ok(d, m)) {
        if (continuing && !s->op.ending)
            feed_broken(d, s);
        return;
    }
    int64_t have = sep_msg_int(m, "nll_have", -1);
    if (!continuing) {
        int keep = json_is_true(json_object_get(m->hdr, "nll_keep"));
        if (keep && have >= 0 && have < s->kept_at)
            return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                              "feed: this client has the NLLs of %lld tokens; sepd keeps "
                              "them from token %lld on", (long long)have,
                              (long long)s->kept_at + 1);
        if (!state_allows(d, s, m, SEP_SS_ACTIVE) || !op_admit(d, s, m, SEP_SOP_FEED))
            return;
        s->op.base = s->bytes_in;
        s->op.keep_nll = keep;
        if (!keep) {
            s->kept_n = 0; /* nobody will ask for them */
        } else if (have >= 0) {
            /* a client back after a restart: what it lacks comes first */
            sep_session_nll_have(s, have);
            if (s->kept_n && (rc_replay(s) != SEP_OK))
                return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL,
                                  "feed: out of memory");
        }
    } else if (s->op.keep_nll && have >= 0) {
        sep_session_nll_have(s, have);
    }
    sep_op_t *op = &s->op;
    if (op->ending)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "feed: piece %lld after %s", (long long)seq,
                          op->ending == SEPD_FEED_BROKEN ? "a piece that was refused"
                                                         : "feed_end");
    if (!sepd_limit_piece(d, m, s, m->frames[0].len) ||
        !sepd_limit_growth(d, m, s, (int64_t)m->frames[0].len))
        return feed_broken(d, s);
    op->want_nll = json_is_true(json_object_get(m->hdr, "nll"));
    int64_t bad = 0;
    int rc = sep_session_ingest(s, d->tok, m->frames[0].data, m->frames[0].len, 0, &bad, NULL);
    if (rc == SEP_EUTF8) {
        /* nothing of the piece is taken; the session goes on */
        const unsigned char *b = (const unsigned char *)m->frames[0].data;
        int64_t in_piece = bad - s->bytes_in; /* < 0: in the bytes held from before */
        json_t *h = json_pack("{s:s, s:b, s:s, s:s, s:I, s:I, s:I}", "op", m->op, "ok", 0, "code",
                              SEP_ERR_INPUT, "error", "", "seq", (json_int_t)seq, "offset",
                              (json_int_t)(bad - op->base), "session_offset", (json_int_t)bad);
        char msg[256];
        if (in_piece >= 0 && (size_t)in_piece < m->frames[0].len)
            snprintf(msg, sizeof msg, "session '%s': invalid UTF-8 at byte %lld of this feed "
                     "(byte 0x%02X; byte %lld of the session's text): the piece was not taken",
                     s->name, (long long)(bad - op->base), b[in_piece], (long long)bad);
        else
            snprintf(msg, sizeof msg, "session '%s': invalid UTF-8 at byte %lld of this feed "
                     "(byte %lld of the session's text): the piece was not taken", s->name,
                     (long long)(bad - op->base), (long long)bad);
        if (h)
            json_object_set_new(h, "error", json_string(msg));
        sep_log(SEP_LOG_DEBUG, "feed: %s", msg);
        sepd_send(d, m->peer, m->peer_len, h, NULL, 0);
        /* the client's stream is broken here: its feed ends once the
         * pieces before are acknowledged */
        if (s->op.kind == SEP_SOP_FEED && same_peer(s->op.peer, s->op.peer_len, m))
            feed_broken(d, s);
        return;
    }
    if (rc) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "session '%s': %s",
                   s->name, sep_errmsg());
        return;
    }
    op->pieces[op->n_pieces++] = (sep_piece_t){ .seq = seq, .ids_end = s->ids_total,
                                                .bytes_end = s->bytes_tokenized,
                                                .len = (int64_t)m->frames[0].len };
    sepd_step(d, s);
}

static void op_feed_end(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_owned(d, m, SEP_SOP_FEED, "feeding");
    if (!s)
        return;
    s->op.ending = 1;
    sepd_step(d, s);
}

static void op_flush(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s || !state_allows(d, s, m, SEP_SS_ACTIVE) || !op_admit(d, s, m, SEP_SOP_FLUSH) ||
        end_text(d, s, m))
        return;
    sepd_step(d, s);
}

static void op_close(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s || !op_admit(d, s, m, SEP_SOP_CLOSE))
        return;
    /* the held tail is text too: score it before the end */
    if (s->state == SEP_SS_ACTIVE && end_text(d, s, m))
        return;
    sepd_step(d, s);
}

/* generate's sampling fields into *p and *window (docs/protocol.md); 0, or
 * an error to m's client naming the field. */
static int gen_sampling(sepd_t *d, const sep_msg_t *m, sep_pick_t *p, int64_t *window)
{
    static const char *reals[] = { "temperature", "top_p", "min_p", "repetition_penalty",
                                   "presence_penalty", "frequency_penalty" };
    static const char *ints[] = { "top_k", "penalty_window" };
    const char *bad = NULL;
    for (int i = 0; i < 6; i++)
        if (json_object_get(m->hdr, reals[i]) && !json_is_number(json_object_get(m->hdr, reals[i])))
            bad = reals[i];
    for (int i = 0; i < 2; i++)
        if (json_object_get(m->hdr, ints[i]) && !json_is_integer(json_object_get(m->hdr, ints[i])))
            bad = ints[i];
    int64_t top_k = sep_msg_int(m, "top_k", 0);
    *window = sep_msg_int(m, "penalty_window", SEP_PENALTY_WINDOW);
    *p = (sep_pick_t){ .temperature = (float)sep_msg_real(m, "temperature", 1.0),
                       .top_p = (float)sep_msg_real(m, "top_p", 1.0),
                       .min_p = (float)sep_msg_real(m, "min_p", 0.0),
                       .repetition = (float)sep_msg_real(m, "repetition_penalty", 1.0),
                       .presence = (float)sep_msg_real(m, "presence_penalty", 0.0),
                       .frequency = (float)sep_msg_real(m, "frequency_penalty", 0.0),
                       .top_k = top_k < INT32_MIN ? INT32_MIN
                                : top_k > INT32_MAX ? INT32_MAX : (int)top_k,
                       .limit = d->id_limit };
    if (bad) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                   "generate: %s must be a%s number", bad,
                   !strcmp(bad, "top_k") || !strcmp(bad, "penalty_window") ? "n integer" : "");
        return -1;
    }
    if (sep_pick_check(p, d->pool->vocab)) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST, "generate: %s",
                   sep_errmsg());
        return -1;
    }
    if (*window < 0 || *window > SEP_PICK_MAX_RECENT) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                   "generate: penalty_window %lld: in 0..%d", (long long)*window,
                   SEP_PICK_MAX_RECENT);
        return -1;
    }
    return 0;
}

static void op_generate(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s)
        return;
    int64_t n = sep_msg_int(m, "n", -1), window = sep_msg_int(m, "window", SEP_GEN_WINDOW);
    int64_t pen_window;
    sep_pick_t p;
    json_t *seed = json_object_get(m->hdr, "seed");
    if (n < 1 || n > SEPD_MAX_GENERATE || window < 1 || window > 4096)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "generate: n in 1..%d, window in 1..4096", SEPD_MAX_GENERATE);
    if (seed && (!json_is_integer(seed) || json_integer_value(seed) < 0))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "generate: seed must be an integer >= 0");
    if (gen_sampling(d, m, &p, &pen_window))
        return;
    sep_stop_t *stop;
    int ignore_eos;
    if (sepd_gen_stops(d, m, &stop, &ignore_eos))
        return;
    if (!sepd_limit_growth(d, m, s, n)) {
        sep_stop_destroy(&stop);
        return;
    }
    if (!state_allows(d, s, m, SEP_SS_ACTIVE) || !op_admit(d, s, m, SEP_SOP_GENERATE) ||
        end_text(d, s, m)) {
        sep_stop_destroy(&stop);
        return;
    }
    s->op.stop = stop; /* the op's now: sep_session_op_end frees it */
    s->op.ignore_eos = ignore_eos;
    if (s->q_len == 0) {
        sepd_op_error(d, s, SEP_ERR_STATE, "session '%s' has no text yet: feed some first",
                      s->name);
        sep_session_op_end(s);
        sepd_step(d, s);
        return;
    }
    /* without a seed the session's generator goes on where it was */
    if (seed)
        sep_rng_seed(&s->rng, (uint64_t)json_integer_value(seed));
    s->op.left = n;
    s->op.window = (int)window;
    s->sampler = p;
    s->penalty_window = (int32_t)pen_window;
    sepd_step(d, s);
}

static void op_suspend(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s || !state_allows(d, s, m, SEP_SS_ACTIVE) || !op_admit(d, s, m, SEP_SOP_SUSPEND))
        return;
    sepd_step(d, s);
}

static void op_resume(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s || !state_allows(d, s, m, SEP_SS_SUSPENDED) ||
        (!s->foreign[0] && !sepd_limit_caches(d, m, s)) || !op_admit(d, s, m, SEP_SOP_RESUME))
        return;
    sepd_step(d, s);
}

static void op_cancel(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s)
        return;
    sep_sop_t kind = s->op.kind;
    if (!kind || !same_peer(s->op.peer, s->op.peer_len, m))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                          "cancel: this client runs nothing on '%s'", s->name);
    if (kind != SEP_SOP_FEED && kind != SEP_SOP_GENERATE)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                          "cancel: %s on '%s' cannot be cancelled (it ends on its own)",
                          sep_sop_name(kind), s->name);
    sepd_send(d, m->peer, m->peer_len,
              json_pack("{s:s, s:b, s:s, s:s}", "op", m->op, "ok", 1, "session", s->name,
                        "cancelled", sep_sop_name(kind)), NULL, 0);
    if (kind == SEP_SOP_GENERATE && s->op.left > 0) {
        /* the final reply says so, once a step in flight is back */
        s->op.left = 0;
        snprintf(s->op.error, sizeof s->op.error, "cancelled");
    } else {
        sep_session_op_end(s); /* what it fed stays the session's text */
    }
    sepd_step(d, s);
}

static void op_ack(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_owned(d, m, SEP_SOP_GENERATE, "generating on");
    if (!s)
        return;
    int64_t got = sep_msg_int(m, "tokens", -1);
    if (got < s->op.acked || got > s->op.made)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                          "ack: tokens %lld, expected %lld..%lld", (long long)got,
                          (long long)s->op.acked, (long long)s->op.made);
    s->op.acked = got; /* no reply: the next tokens are the answer */
}

static void op_seps(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s)
        return;
    if (!s->sid)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_STATE,
                          "session '%s' has no archive (%s)", s->name,
                          s->foreign[0] ? s->foreign : "it is opening");
    sepd_seps(d, m, s);
}

static void op_export(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s)
        return;
    int continuing = s->op.kind == SEP_SOP_EXPORT && same_peer(s->op.peer, s->op.peer_len, m);
    if (!continuing && (!state_allows(d, s, m, SEP_SS_SUSPENDED) ||
                        !op_admit(d, s, m, SEP_SOP_EXPORT)))
        return;
    if (continuing && s->export_reading)
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BUSY,
                          "export: ask for the next chunk once the last has come");
    sepd_export_next(d, s);
}

static void op_ping(sepd_t *d, const sep_msg_t *m)
{
    sepd_send(d, m->peer, m->peer_len, json_pack("{s:s}", "op", SEP_OP_PONG), NULL, 0);
}

static void op_info(sepd_t *d, const sep_msg_t *m)
{
    sep_session_t *s = session_for(d, m);
    if (!s)
        return;
    json_t *h = sepd_info(s);
    if (h) {
        json_object_set_new(h, "op", json_string(m->op));
        json_object_set_new(h, "ok", json_true());
        /* a feeder keeps its unacknowledged pieces within it */
        json_object_set_new(h, "max_pending_bytes",
                            json_integer(d->conf.limits.max_pending_bytes));
    }
    sepd_send(d, m->peer, m->peer_len, h, NULL, 0);
}

static void op_ls(sepd_t *d, const sep_msg_t *m)
{
    json_t *list = json_array();
    for (size_t i = 0; list && i < d->n_sess; i++)
        if (sepd_visible(d, d->sess[i], m)) /* another identity's unshared sessions are not listed */
            json_array_append_new(list, sepd_info(d->sess[i]));
    sepd_send(d, m->peer, m->peer_len,
              list ? json_pack("{s:s, s:b, s:o}", "op", m->op, "ok", 1, "sessions", list) : NULL,
              NULL, 0);
}

static void stats_send(sepd_t *d, const uint8_t *peer, size_t peer_len, json_t *workers);

static void op_stats(sepd_t *d, const sep_msg_t *m)
{
    sepd_stats_t *st = &d->stats;
    if (d->recover) {
        /* the workers are restarting: what sepd knows itself */
        json_t *none = json_array();
        stats_send(d, m->peer, m->peer_len, none);
        json_decref(none);
        return;
    }
    if (SEP_GROW(st->waiting, st->cap_waiting, st->n_waiting + 1))
        return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "stats: %s",
                          sep_errmsg());
    if (st->n_waiting == 0) {
        /* a new round; later requests join it */
        json_t *h = json_pack("{s:s}", "op", SEP_OP_W_STATS);
        int rc = h ? sep_pool_send_all(d->pool, h, NULL, 0) : SEP_ENOMEM;
        json_decref(h);
        /* the last round's table goes; a round that cannot start leaves none
         * (not the freed one, which the next round would free again) */
        json_decref(st->workers);
        st->workers = rc ? NULL : json_array();
        if (!st->workers)
            return sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "stats: %s",
                              sep_errmsg());
        for (int r = 0; r < d->pool->stages; r++)
            json_array_append_new(st->workers, json_null());
        st->asked = d->pool->stages == 64 ? ~0ull : (1ull << d->pool->stages) - 1;
        st->answered = 0;
    }
    sepd_peer_t *p = &st->waiting[st->n_waiting++];
    memcpy(p->id, m->peer, m->peer_len);
    p->len = m->peer_len;
}

void sepd_stats_ack(sepd_t *d, const sep_msg_t *m, int rank)
{
    sepd_stats_t *st = &d->stats;
    if (!st->n_waiting || (st->answered >> rank & 1))
        return;
    json_t *w = json_deep_copy(m->hdr);
    json_object_del(w, "op");
    json_object_del(w, "v");
    json_array_set_new(st->workers, (size_t)rank, w);
    st->answered |= 1ull << rank;
    if (st->answered != st->asked)
        return;
    for (size_t i = 0; i < st->n_waiting; i++)
        if (st->waiting[i].len)
            stats_send(d, st->waiting[i].id, st->waiting[i].len, st->workers);
    st->n_waiting = 0;
}

void sepd_stats_unanswered(sepd_t *d)
{
    sepd_stats_t *st = &d->stats;
    json_t *none = json_array();
    for (size_t i = 0; i < st->n_waiting; i++)
        if (st->waiting[i].len)
            stats_send(d, st->waiting[i].id, st->waiting[i].len, none);
    json_decref(none);
    st->n_waiting = 0;
}

static void stats_send(sepd_t *d, const uint8_t *peer, size_t peer_len, json_t *workers)
{
    int active = 0, suspended = 0;
    for (size_t i = 0; i < d->n_sess; i++) {
        active += d->sess[i]->state == SEP_SS_ACTIVE;
        suspended += d->sess[i]->state == SEP_SS_SUSPENDED;
    }
    json_t *h = json_pack("{s:s, s:b, s:I, s:i, s:i, s:I, s:f, s:f, s:i, s:O, s:{s:I, "
                          "s:I, s:f, s:I, s:I, s:f, s:I}, s:{s:I, s:f, s:f, s:I, s:I, s:I}}", "op",
                          SEP_OP_STATS, "ok", 1, "sessions", (json_int_t)d->n_sess,
                          "active", active, "suspended", suspended,
                          "tokens", (json_int_t)d->tokens_total, "tokens_per_s", d->rate,
                          "uptime_s", sep_now() - d->started, "stages", d->pool->stages,
                          "workers", workers, "store", "checkpoints",
                          (json_int_t)d->ckpt_count, "checkpoint_bytes",
                          (json_int_t)d->ckpt_bytes, "checkpoint_s", d->ckpt_seconds,
                          "archive_entries", (json_int_t)d->arch_entries,
                          "archive_bytes", (json_int_t)d->arch_bytes,
                          "archive_s", d->arch_seconds, "file_bytes",
                          (json_int_t)sepd_store_file_bytes(d), "loop", "batches",
                          (json_int_t)d->batches_sent, "answers_s", d->done_s,
                          "schedule_s", d->sched_s, "ahead_runs",
                          (json_int_t)d->ahead_runs, "ahead_steps",
                          (json_int_t)d->ahead_steps, "ahead_yields",
                          (json_int_t)d->ahead_yields);
    if (h) {
        json_object_set_new(h, "auth_failures",
                            json_integer((json_int_t)sepd_auth_failures(d->auth)));
        json_object_set_new(h, "recovery", sepd_recover_stats(d));
    }
    sepd_send(d, peer, peer_len, h, NULL, 0);
}

/* ---- dispatch ----------------------------------------------------------- */

/* Bad requests are logged at debug level one by one, and summed up at
 * warn level at most every SEPD_BAD_LOG_S seconds. */
static void note_bad(sepd_t *d, const char *why)
{
    d->bad_requests++;
    sep_log(SEP_LOG_DEBUG, "bad request: %s", why);
    double now = sep_now();
    if (now - d->bad_log_t >= SEPD_BAD_LOG_S) {
        sep_log(SEP_LOG_WARN, "%llu bad request(s) from clients since the last note; the "
                "latest: %s", (unsigned long long)(d->bad_requests - d->bad_logged), why);
        d->bad_logged = d->bad_requests;
        d->bad_log_t = now;
    }
}

static const struct {
    const char *op;
    void (*fn)(sepd_t *, const sep_msg_t *);
} verbs[] = { { SEP_OP_OPEN, op_open }, { SEP_OP_FEED, op_feed },
              { SEP_OP_FEED_END, op_feed_end }, { SEP_OP_PING, op_ping },
              { SEP_OP_GENERATE, op_generate }, { SEP_OP_LS, op_ls },
              { SEP_OP_INFO, op_info }, { SEP_OP_STATS, op_stats },
              { SEP_OP_SUSPEND, op_suspend }, { SEP_OP_RESUME, op_resume },
              { SEP_OP_FLUSH, op_flush }, { SEP_OP_CLOSE, op_close },
              { SEP_OP_CANCEL, op_cancel }, { SEP_OP_ACK, op_ack },
              { SEP_OP_SEPS, op_seps }, { SEP_OP_EXPORT, op_export },
              { SEP_OP_SHARE, sepd_share },
              { SEP_OP_IMPORT, sepd_import_piece }, { SEP_OP_IMPORT_END, sepd_import_piece } };

static void sepd_request(sepd_t *d, const sep_msg_t *m)
{
    /* any word from a client renews its hold on what it runs */
    for (size_t i = 0; i < d->n_sess; i++)
        if (sepd_op_of(d->sess[i], m->peer, m->peer_len))
            d->sess[i]->op.seen = sep_now();
    if (sepd_recover_refuses(d, m))
        return;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (strcmp(m->op, verbs[i].op) == 0)
            return verbs[i].fn(d, m);
    char clip[64], why[128];
    snprintf(why, sizeof why, "unknown op '%s'", sep_clip(m->op, clip));
    note_bad(d, why);
    sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST, "%s", why);
}

void sepd_redo(sepd_t *d, const uint8_t *peer, size_t peer_len, const char *user, json_t *hdr)
{
    sep_msg_t m = { .hdr = hdr, .op = sep_hdr_str(hdr, "op", "") };
    snprintf(m.user, sizeof m.user, "%s", user);
    memcpy(m.peer, peer, peer_len);
    m.peer_len = peer_len;
    sepd_request(d, &m);
}

void sepd_client_msg(sepd_t *d)
{
    sep_msg_t m;
    int rc = sep_msg_recv(d->clients, 1, &m, ZMQ_DONTWAIT);
    if (rc == SEP_ENOTFOUND)
        return;
    if (m.peer_len && !sepd_outbox_admit(d->out, m.peer, m.peer_len)) {
        sep_msg_close(&m); /* counted; the client hears of it when it reads again */
        return;
    }
    if (rc) {
        /* answer what can be answered: the sender of a malformed message */
        char why[1024];
        snprintf(why, sizeof why, "%s", sep_errmsg());
        note_bad(d, why);
        if (m.peer_len)
            sepd_error(d, m.peer, m.peer_len, "error", SEP_ERR_BAD_REQUEST, "%s", why);
        sep_msg_close(&m);
        return;
    }
    if (sepd_client_admit(d, &m)) /* else refused: too many clients */
        sepd_request(d, &m);
    sep_msg_close(&m);
}
