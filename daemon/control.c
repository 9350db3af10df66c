/* control.c: the session state machine.
 *
 * A session's state (opening, active, suspended, failed), its client op
 * and its control op with the workers (session.h) change here and only
 * here, in sepd_step(): after any event that touches a session (a
 * request, a batch's result, a worker's answer), the caller steps it, and
 * the step does what comes next: acknowledge feed pieces, answer a flush,
 * send w_save or w_close when the session is idle, turn the workers'
 * answers into the next state.
 *
 * A control op goes to a set of ranks and completes when each of them has
 * answered or failed; a reply from a rank that was not asked, or for
 * another op, is logged and ignored. Every failure leaves the workers
 * consistent with the session: a w_open or w_load that failed on some
 * ranks is undone by a w_close on the others before the client hears of
 * it, and suspend frees the caches (w_close) only after every stage's
 * state has arrived.
 */
#include "daemon.h"
#include "err.h"
#include "grow.h"
#include "log.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the session table -------------------------------------------------- */

sep_session_t *sepd_find(sepd_t *d, const char *name)
{
    for (size_t i = 0; name && i < d->n_sess; i++)
        if (strcmp(d->sess[i]->name, name) == 0)
            return d->sess[i];
    return NULL;
}

sep_session_t *sepd_find_sid(sepd_t *d, uint32_t sid)
{
    for (size_t i = 0; i < d->n_sess; i++)
        if (d->sess[i]->sid == sid)
            return d->sess[i];
    return NULL;
}

int sepd_add(sepd_t *d, sep_session_t *s)
{
    int rc = SEP_GROW(d->sess, d->cap_sess, d->n_sess + 1);
    if (!rc)
        d->sess[d->n_sess++] = s;
    return rc;
}

static void sepd_remove(sepd_t *d, sep_session_t *s)
{
    for (size_t i = 0; i < d->n_sess; i++)
        if (d->sess[i] == s) {
            d->sess[i] = d->sess[--d->n_sess];
            break;
        }
    sep_log(SEP_LOG_INFO, "session '%s' closed after %lld tokens", s->name,
            (long long)s->tokens);
    sep_session_destroy(&s);
}

int sepd_workers_owe(const sepd_t *d)
{
    if (d->n_flight || d->stats.n_waiting)
        return 1;
    for (size_t i = 0; i < d->n_sess; i++)
        if (d->sess[i]->ctl.kind != SEP_WAIT_NONE && d->sess[i]->ctl.asked)
            return 1;
    return 0;
}

/* ---- control ops to the workers ----------------------------------------- */

static const char *wait_op(sep_wait_t k)
{
    static const char *ops[] = { "", SEP_OP_W_OPEN, SEP_OP_W_SAVE, SEP_OP_W_LOAD,
                                 SEP_OP_W_CLOSE };
    return ops[k];
}

int sepd_ctl_send(sepd_t *d, sep_session_t *s, sep_wait_t kind, uint64_t ranks)
{
    int stages = d->pool->stages, rc = SEP_OK;
    uint64_t all = stages == 64 ? ~0ull : (1ull << stages) - 1;
    const sep_policy_t *p = &s->policy;
    json_t *h = kind == SEP_WAIT_OPEN || kind == SEP_WAIT_LOAD
        ? json_pack("{s:s, s:I, s:s, s:i, s:i, s:i, s:i, s:i}", "op", wait_op(kind), "sid",
                    (json_int_t)s->sid, "method", sep_method_name(p->method), "a", p->a,
                    "s", p->s, "w", p->w, "c", p->c, "shift", p->shift)
        : json_pack("{s:s, s:I}", "op", wait_op(kind), "sid", (json_int_t)s->sid);
    if (!h)
        return sep_fail(SEP_ENOMEM, "out of memory");
    if (kind == SEP_WAIT_SAVE) {
        sep_session_state_free(s);
        s->saved = calloc((size_t)stages, sizeof *s->saved);
        s->saved_len = calloc((size_t)stages, sizeof *s->saved_len);
        if (!s->saved || !s->saved_len) {
            json_decref(h);
            sep_session_state_free(s);
            return sep_fail(SEP_ENOMEM, "out of memory");
        }
        s->n_state = stages;
    }
    s->ctl = (sep_ctl_t){ .kind = kind, .asked = ranks & all, .since = sep_now(),
                          .then = SEP_THEN_GONE };
    for (int r = 0; !rc && r < stages; r++) {
        if (!(s->ctl.asked >> r & 1))
            continue;
        sep_frame_t f[2] = { { s->sep_ids, s->n_sep_ids * sizeof(int32_t) },
                             { kind == SEP_WAIT_LOAD ? s->saved[r] : NULL,
                               kind == SEP_WAIT_LOAD ? s->saved_len[r] : 0 } };
        int n = kind == SEP_WAIT_OPEN ? 1 : kind == SEP_WAIT_LOAD ? 2 : 0;
        rc = sep_msg_send(d->pool->sock, d->pool->stage[r].peer, d->pool->stage[r].peer_len,
                          h, f, n);
    }
    json_decref(h);
    if (rc) {
        /* a stage that cannot be reached: the loop's liveness check ends sepd */
        s->ctl.failed = s->ctl.asked & ~s->ctl.answered;
        snprintf(s->ctl.error, sizeof s->ctl.error, "%s", sep_errmsg());
        return rc;
    }
    return SEP_OK;
}

/* w_close to ranks (maybe none), then s becomes then. */
static int ctl_close(sepd_t *d, sep_session_t *s, uint64_t ranks, sep_then_t then)
{
    if (sepd_ctl_send(d, s, SEP_WAIT_CLOSE, ranks))
        sep_log(SEP_LOG_ERROR, "session '%s': w_close: %s", s->name, sep_errmsg());
    s->ctl.then = then;
    return sepd_step(d, s);
}

void sepd_control_msg(sepd_t *d, const sep_msg_t *m, int rank)
{
    sep_session_t *s = sepd_find_sid(d, (uint32_t)sep_msg_int(m, "sid", 0));
    int err = strcmp(m->op, SEP_OP_W_ERROR) == 0;
    const char *of = err ? sep_msg_str(m, "of", "?") : m->op;
    uint64_t bit = 1ull << rank;
    if (!s || s->ctl.kind == SEP_WAIT_NONE || strcmp(of, wait_op(s->ctl.kind)) != 0 ||
        !(s->ctl.asked & bit) || ((s->ctl.answered | s->ctl.failed) & bit)) {
        sep_log(SEP_LOG_ERROR, "stage %d: unexpected %s%s%s for session %lld (%s)", rank,
                m->op, err ? " of " : "", err ? of : "", (long long)sep_msg_int(m, "sid", 0),
                !s ? "no such session"
                   : s->ctl.kind == SEP_WAIT_NONE ? "it waits for nothing" : "not asked");
        return;
    }
    if (err) {
        s->ctl.failed |= bit;
        if (!s->ctl.error[0])
            snprintf(s->ctl.error, sizeof s->ctl.error, "stage %d: %s", rank,
                     sep_msg_str(m, "error", "?"));
        sep_log(SEP_LOG_ERROR, "session '%s': stage %d: %s failed: %s", s->name, rank, of,
                sep_msg_str(m, "error", "?"));
    } else if (s->ctl.kind == SEP_WAIT_SAVE) {
        if (m->n_frames != 1 || !(s->saved[rank] = malloc(m->frames[0].len + 1))) {
            s->ctl.failed |= bit;
            snprintf(s->ctl.error, sizeof s->ctl.error, "stage %d: %s", rank,
                     m->n_frames != 1 ? "w_save without its state frame"
                                      : "no memory in sepd for the cache state");
        } else {
            memcpy(s->saved[rank], m->frames[0].data, m->frames[0].len);
            s->saved_len[rank] = m->frames[0].len;
            s->ctl.answered |= bit;
        }
    } else {
        s->ctl.answered |= bit;
    }
    sepd_step(d, s);
}

/* ---- the transition function -------------------------------------------- */

int sepd_op_finish(sepd_t *d, sep_session_t *s)
{
    json_t *next = s->op.next;
    uint8_t peer[256];
    size_t len = s->op.next_peer_len;
    uint32_t sid = s->sid;
    memcpy(peer, s->op.next_peer, len);
    s->op.next = NULL;
    sep_session_op_end(s);
    if (next) {
        sepd_redo(d, peer, len, next);
        json_decref(next);
    }
    return sepd_find_sid(d, sid) == NULL;
}

/* The figure a reply adds when the text ended inside a character. */
static json_t *dropped_note(const sep_session_t *s)
{
    return s->op.dropped ? json_pack("{s:I}", "dropped_bytes", (json_int_t)s->op.dropped) : NULL;
}

/* Acknowledge the feed pieces whose tokens are all scored (the last id
 * of a piece waits for its successor); answer feed_end once none is left. */
static int feed_progress(sepd_t *d, sep_session_t *s)
{
    sep_op_t *op = &s->op;
    int k = 0;
    while (k < op->n_pieces && s->tokens >= op->pieces[k].ids_end - 1)
        k++;
    for (int i = 0; i < k; i++) {
        s->bytes_committed = op->pieces[i].bytes_end;
        sepd_op_reply(d, s, SEP_OP_FEED, json_pack("{s:I}", "seq", (json_int_t)op->pieces[i].seq));
    }
    memmove(op->pieces, op->pieces + k, (size_t)(op->n_pieces - k) * sizeof *op->pieces);
    op->n_pieces -= k;
    if (op->n_pieces == 0 && (op->ending || op->next)) {
        /* a request of the same client waited for the pieces: the feed ends */
        if (op->ending == 1)
            sepd_op_reply(d, s, SEP_OP_FEED_END, NULL);
        return sepd_op_finish(d, s);
    }
    return 0;
}

static int ctl_done(sepd_t *d, sep_session_t *s)
{
    sep_ctl_t c = s->ctl;
    sep_op_t *op = &s->op;
    memset(&s->ctl, 0, sizeof s->ctl);
    switch (c.kind) {
    case SEP_WAIT_NONE:
        return 0;
    case SEP_WAIT_OPEN:
        if (!c.failed) {
            s->state = SEP_SS_ACTIVE;
            if (op->kind != SEP_SOP_OPEN)
                return sepd_step(d, s);
            sepd_op_reply(d, s, SEP_OP_OPEN, NULL);
            return sepd_op_finish(d, s);
        }
        /* the stages that opened it drop it again; then it is gone */
        snprintf(op->error, sizeof op->error, "open: %s", c.error);
        s->state = SEP_SS_FAILED;
        return ctl_close(d, s, c.answered, SEP_THEN_GONE);
    case SEP_WAIT_LOAD:
        if (!c.failed) {
            s->state = SEP_SS_ACTIVE;
            sep_session_state_free(s);
            sep_log(SEP_LOG_INFO, "session '%s' resumed", s->name);
            sepd_op_reply(d, s, SEP_OP_RESUME, NULL);
            return sepd_op_finish(d, s);
        }
        /* the stages that loaded it drop it again: it stays suspended */
        snprintf(op->error, sizeof op->error, "resume: %s (the session stays suspended)",
                 c.error);
        return ctl_close(d, s, c.answered, SEP_THEN_SUSPENDED);
    case SEP_WAIT_SAVE:
        if (c.failed) {
            /* nothing was dropped: the session runs on */
            sep_session_state_free(s);
            sepd_op_error(d, s, SEP_ERR_INTERNAL, "suspend: %s (the session stays active)",
                          c.error);
            return sepd_op_finish(d, s);
        }
        return ctl_close(d, s, ~0ull, SEP_THEN_SUSPENDED);
    case SEP_WAIT_CLOSE:
        if (c.then == SEP_THEN_GONE) {
            if (op->kind == SEP_SOP_CLOSE) {
                json_t *x = dropped_note(s);
                if (!x)
                    x = json_object();
                json_object_set_new(x, "state", json_string("closed"));
                sepd_op_reply(d, s, SEP_OP_CLOSE, x);
            } else if (op->error[0]) {
                sepd_op_error(d, s, SEP_ERR_INTERNAL, "%s", op->error);
            }
            if (op->next)
                sepd_error(d, op->next_peer, op->next_peer_len,
                           sep_msg_str(&(sep_msg_t){ .hdr = op->next }, "op", "error"),
                           SEP_ERR_NOT_FOUND, "session '%s' was closed", s->name);
            sepd_remove(d, s);
            return 1;
        }
        s->state = SEP_SS_SUSPENDED;
        if (op->kind == SEP_SOP_SUSPEND) {
            size_t bytes = 0;
            for (int r = 0; r < s->n_state; r++)
                bytes += s->saved_len[r];
            sep_log(SEP_LOG_INFO, "session '%s' suspended (%zu bytes of cache state)",
                    s->name, bytes);
            sepd_op_reply(d, s, SEP_OP_SUSPEND,
                          json_pack("{s:I}", "state_bytes", (json_int_t)bytes));
        } else if (op->error[0]) {
            sepd_op_error(d, s, SEP_ERR_INTERNAL, "%s", op->error);
        }
        return sepd_op_finish(d, s);
    }
    return 0;
}

int sepd_step(sepd_t *d, sep_session_t *s)
{
    if (s->ctl.kind != SEP_WAIT_NONE) {
        if ((s->ctl.answered | s->ctl.failed) != s->ctl.asked)
            return 0; /* still waiting */
        return ctl_done(d, s);
    }
    sep_op_t *op = &s->op;
    switch (op->kind) {
    case SEP_SOP_NONE:
        return op->next ? sepd_op_finish(d, s) : 0;
    case SEP_SOP_OPEN:
    case SEP_SOP_RESUME:
        return 0; /* their control op is under way */
    case SEP_SOP_FEED:
        return feed_progress(d, s);
    case SEP_SOP_FLUSH:
        if (!sep_session_idle(s))
            return 0;
        s->bytes_committed = s->bytes_tokenized;
        sepd_op_reply(d, s, SEP_OP_FLUSH, dropped_note(s));
        return sepd_op_finish(d, s);
    case SEP_SOP_GENERATE:
        return sepd_gen_progress(d, s);
    case SEP_SOP_SUSPEND:
        if (s->sent || s->gen_inflight)
            return 0; /* the batches in flight first: the states are a cut */
        if (sepd_ctl_send(d, s, SEP_WAIT_SAVE, ~0ull)) {
            sepd_op_error(d, s, SEP_ERR_INTERNAL, "suspend: %s", sep_errmsg());
            memset(&s->ctl, 0, sizeof s->ctl);
            return sepd_op_finish(d, s);
        }
        return 0;
    case SEP_SOP_CLOSE:
        if (s->state == SEP_SS_SUSPENDED) {
            /* its caches are here, not in the workers */
            s->ctl.then = SEP_THEN_GONE;
            s->ctl.kind = SEP_WAIT_CLOSE;
            return sepd_step(d, s);
        }
        if (s->sent || s->gen_inflight)
            return 0;
        if (s->state == SEP_SS_FAILED)
            s->q_len = 0; /* nothing more runs */
        if (sep_session_runnable(s))
            return 0;
        s->bytes_committed = s->bytes_tokenized;
        return ctl_close(d, s, ~0ull, SEP_THEN_GONE);
    }
    return 0;
}

void sepd_session_failed(sepd_t *d, sep_session_t *s, const char *why)
{
    sep_log(SEP_LOG_ERROR, "session '%s' failed: %s", s->name, why);
    s->state = SEP_SS_FAILED;
    s->sent = 0;
    s->gen_inflight = 0;
    if (s->op.kind == SEP_SOP_CLOSE)
        return; /* close goes on: it is what a failed session waits for */
    sepd_op_error(d, s, SEP_ERR_INTERNAL, "session '%s' failed in a worker: %s", s->name, why);
    sepd_op_finish(d, s);
}
