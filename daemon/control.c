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
#include "persist.h"
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
    SEP_REMOVE(d->sess, d->n_sess, s);
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
    if (d->recover) {
        /* the workers are gone; the session is reloaded from the store */
        memset(&s->ctl, 0, sizeof s->ctl);
        return SEP_OK;
    }
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
    s->ctl = (sep_ctl_t){ .kind = kind, .asked = ranks & all, .since = sep_now(),
                          .then = SEP_THEN_GONE };
    sep_ckpt_t *ld = kind == SEP_WAIT_LOAD ? s->loaded : NULL;
    for (int r = 0; !rc && r < stages; r++) {
        if (!(s->ctl.asked >> r & 1))
            continue;
        /* a loaded state passes to ZeroMQ as it is (it may be hundreds of MB) */
        sep_frame_t f[2] = { { s->sep_ids, s->n_sep_ids * sizeof(int32_t) },
                             { ld ? ld->buf[r] : NULL, ld ? ld->state[r].len : 0 } };
        int n = kind == SEP_WAIT_OPEN ? 1 : kind == SEP_WAIT_LOAD ? 2 : 0;
        rc = sep_msg_send_owned(d->pool->sock, d->pool->stage[r].peer,
                                d->pool->stage[r].peer_len, h, f, n, ld ? 2u : 0u);
        if (ld)
            ld->buf[r] = NULL;
    }
    json_decref(h);
    if (rc) {
        /* a stage that cannot be reached: the loop's liveness check finds the fault */
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

void sepd_control_msg(sepd_t *d, sep_msg_t *m, int rank)
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
        if (sepd_ckpt_state(s, (sep_msg_t *)m, rank)) {
            s->ctl.failed |= bit;
            if (!s->ctl.error[0])
                snprintf(s->ctl.error, sizeof s->ctl.error, "stage %d: %s", rank,
                         sep_errmsg());
        } else {
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
    char user[SEP_USER_MAX];
    size_t len = s->op.next_peer_len;
    sep_session_t *self = s;
    memcpy(peer, s->op.next_peer, len);
    memcpy(user, s->op.next_user, sizeof user);
    s->op.next = NULL;
    sep_session_op_end(s);
    if (next) {
        sepd_redo(d, peer, len, user, next);
        json_decref(next);
    }
    for (size_t i = 0; i < d->n_sess; i++)
        if (d->sess[i] == self)
            return 0;
    return 1;
}

/* The figure a reply adds when the text ended inside a character. */
static json_t *dropped_note(const sep_session_t *s)
{
    return s->op.dropped ? json_pack("{s:I}", "dropped_bytes", (json_int_t)s->op.dropped) : NULL;
}

/* Whether a checkpoint's cut is due now. */
static int cut_due(const sep_session_t *s)
{
    return s->state == SEP_SS_ACTIVE && !s->reviving && s->sent == 0 && !s->gen_inflight &&
           !s->cut &&
           s->sj == SEP_SJ_NONE &&
           (s->ckpt_want || (s->op.kind == SEP_SOP_SUSPEND && !s->op.checkpointed));
}

/* Take a checkpoint's cut when one is due: w_save to every stage.
 * Returns -1 when the op it was for ended (and 1 from its finish when s
 * is gone), else 0. */
static int ckpt_start(sepd_t *d, sep_session_t *s)
{
    if (s->ctl.kind != SEP_WAIT_NONE || !cut_due(s))
        return 0;
    uint32_t state = s->op.kind == SEP_SOP_SUSPEND ? SEP_STORE_SUSPENDED : SEP_STORE_ACTIVE;
    s->ckpt_want = 0;
    if (!sepd_ckpt_cut(d, s, state) && !sepd_ctl_send(d, s, SEP_WAIT_SAVE, ~0ull))
        return 0;
    snprintf(s->ckpt_error, sizeof s->ckpt_error, "%s", sep_errmsg());
    sep_ckpt_free(&s->cut);
    memset(&s->ctl, 0, sizeof s->ctl);
    if (s->op.kind != SEP_SOP_SUSPEND)
        return 0;
    sepd_op_error(d, s, SEP_ERR_INTERNAL, "suspend: %s", s->ckpt_error);
    return sepd_op_finish(d, s) ? 1 : -1;
}

/* The reply that waits for durability (feed_end, flush): once a
 * checkpoint holds op.durable_at bytes, or one failed. 1: it is due. */
static int durable_reply(sepd_t *d, sep_session_t *s, const char *op)
{
    /* the checkpoint must hold the text and every token scored of it, so
     * that the reply's NLLs are never scored again after a restart */
    if (!s->op.durable_at) {
        s->op.durable_at = s->bytes_in;
        s->op.durable_tokens = s->tokens;
    }
    int held = s->committed_bytes >= s->op.durable_at &&
               s->committed_tokens >= s->op.durable_tokens;
    if (!held && !s->ckpt_error[0]) {
        if (!s->cut && s->sj != SEP_SJ_WRITE) {
            s->ckpt_want = 1;
            ckpt_start(d, s); /* an op that fails here is not this one */
        }
        return 0;
    }
    json_t *x = dropped_note(s);
    if (!held) {
        /* scored, not saved: say so (sepctl exits 1 naming it) */
        if (!x)
            x = json_object();
        json_object_set_new(x, "checkpoint_error", json_string(s->ckpt_error));
    }
    sepd_op_reply(d, s, op, x);
    return 1;
}

/* Acknowledge the feed pieces whose tokens are all scored (the last id
 * of a piece waits for its successor); answer feed_end once none is left
 * and a checkpoint holds the text. */
static int feed_progress(sepd_t *d, sep_session_t *s)
{
    sep_op_t *op = &s->op;
    int k = 0;
    while (k < op->n_pieces && s->tokens >= op->pieces[k].ids_end - 1)
        k++;
    /* a reply never ends the op: a client it finds gone is handled
     * between messages (sepd_gone_drain) */
    for (int i = 0; i < k; i++)
        sepd_op_reply(d, s, SEP_OP_FEED, json_pack("{s:I}", "seq", (json_int_t)op->pieces[i].seq));
    memmove(op->pieces, op->pieces + k, (size_t)(op->n_pieces - k) * sizeof *op->pieces);
    op->n_pieces -= k;
    if (op->n_pieces)
        return 0;
    if (op->ending == 1)
        return durable_reply(d, s, SEP_OP_FEED_END) ? sepd_op_finish(d, s) : 0;
    /* a refused piece, or a request of the same client that waits: the feed ends */
    return op->ending || op->next ? sepd_op_finish(d, s) : 0;
}

/* The session is gone: the reply of the op that ended it, then away. */
static int session_gone(sepd_t *d, sep_session_t *s)
{
    sep_op_t *op = &s->op;
    if (op->kind == SEP_SOP_CLOSE) {
        json_t *x = dropped_note(s);
        if (!x)
            x = json_object();
        json_object_set_new(x, "state", json_string("closed"));
        sepd_op_reply(d, s, SEP_OP_CLOSE, x);
    } else if (op->error[0]) {
        sepd_op_error(d, s, SEP_ERR_INTERNAL, "%s", op->error);
    }
    sepd_next_error(d, s, SEP_ERR_NOT_FOUND, "session '%s' was closed", s->name);
    sepd_remove(d, s);
    return 1;
}

/* The suspend is done: its checkpoint is written, the workers let go. */
static int suspend_done(sepd_t *d, sep_session_t *s)
{
    s->state = SEP_SS_SUSPENDED;
    if (s->op.kind == SEP_SOP_SUSPEND) {
        sep_log(SEP_LOG_INFO, "session '%s' suspended (%lld bytes of cache state in the store)",
                s->name, (long long)s->saved_bytes);
        sepd_op_reply(d, s, SEP_OP_SUSPEND,
                      json_pack("{s:I}", "state_bytes", (json_int_t)s->saved_bytes));
    } else if (s->op.error[0]) {
        sepd_op_error(d, s, SEP_ERR_INTERNAL, "%s", s->op.error);
    }
    return sepd_op_finish(d, s);
}

/* The caches are in the workers again (resume, or an active session
 * brought back at start). */
static int resume_done(sepd_t *d, sep_session_t *s)
{
    sep_log(SEP_LOG_INFO, "session '%s': its stages loaded it in %.1f ms", s->name,
            (sep_now() - s->ctl_since) * 1e3);
    s->state = SEP_SS_ACTIVE;
    sep_ckpt_free(&s->loaded);
    if (s->reviving) {
        /* no op of a client's: what one runs meanwhile goes on */
        s->reviving = 0;
        sep_log(SEP_LOG_INFO, "session '%s' back at %lld tokens", s->name,
                (long long)s->tokens);
        return sepd_step(d, s);
    }
    sepd_persist_put(d, s, SEP_STORE_ACTIVE);
    sep_log(SEP_LOG_INFO, "session '%s' resumed at %lld tokens", s->name, (long long)s->tokens);
    if (s->op.kind == SEP_SOP_RESUME)
        sepd_op_reply(d, s, SEP_OP_RESUME, NULL);
    return sepd_op_finish(d, s);
}

/* An active session brought back at start that could not be loaded: it
 * is suspended, with the reason; a client's op waiting for it fails. */
static int revive_failed(sepd_t *d, sep_session_t *s, const char *why)
{
    s->reviving = 0;
    s->state = SEP_SS_SUSPENDED;
    snprintf(s->foreign, sizeof s->foreign, "%s", why);
    sep_log(SEP_LOG_ERROR, "session '%s' stays suspended: %s", s->name, why);
    if (!s->op.kind)
        return 0;
    sepd_op_error(d, s, SEP_ERR_STATE, "session '%s' could not be loaded: %s", s->name, why);
    return sepd_op_finish(d, s);
}

static int ctl_done(sepd_t *d, sep_session_t *s)
{
    sep_ctl_t c = s->ctl;
    s->ctl_since = c.since;
    sep_op_t *op = &s->op;
    memset(&s->ctl, 0, sizeof s->ctl);
    switch (c.kind) {
    case SEP_WAIT_NONE:
        return 0;
    case SEP_WAIT_OPEN:
        if (!c.failed) {
            if (op->kind == SEP_SOP_RESUME || s->reviving)
                return resume_done(d, s); /* a session without a snapshot: fresh caches */
            s->state = SEP_SS_ACTIVE;
            if (op->kind != SEP_SOP_OPEN)
                return sepd_step(d, s);
            sepd_op_reply(d, s, SEP_OP_OPEN, NULL);
            return sepd_op_finish(d, s);
        }
        if (op->kind == SEP_SOP_RESUME || s->reviving) {
            snprintf(s->reviving ? s->ctl_error : op->error, sizeof op->error,
                     "resume: %s (the session stays suspended)", c.error);
            return ctl_close(d, s, c.answered, SEP_THEN_SUSPENDED);
        }
        /* the stages that opened it drop it again; then it is gone */
        snprintf(op->error, sizeof op->error, "open: %s", c.error);
        s->state = SEP_SS_FAILED;
        return ctl_close(d, s, c.answered, SEP_THEN_GONE);
    case SEP_WAIT_LOAD:
        if (!c.failed)
            return resume_done(d, s);
        /* the stages that loaded it drop it again: it stays suspended */
        sep_ckpt_free(&s->loaded);
        snprintf(s->reviving ? s->ctl_error : op->error, sizeof op->error,
                 "resume: %s (the session stays suspended)", c.error);
        return ctl_close(d, s, c.answered, SEP_THEN_SUSPENDED);
    case SEP_WAIT_SAVE:
        if (c.failed) {
            /* nothing was dropped: the session runs on from its last checkpoint */
            sep_ckpt_free(&s->cut);
            snprintf(s->ckpt_error, sizeof s->ckpt_error, "%s", c.error);
            sep_log(SEP_LOG_ERROR, "session '%s': checkpoint failed: %s", s->name, c.error);
            if (op->kind == SEP_SOP_SUSPEND) {
                sepd_op_error(d, s, SEP_ERR_INTERNAL, "suspend: %s (the session stays "
                              "active)", c.error);
                return sepd_op_finish(d, s);
            }
            return sepd_step(d, s);
        }
        sepd_ckpt_write(d, s);
        return sepd_step(d, s);
    case SEP_WAIT_CLOSE:
        if (c.then == SEP_THEN_SUSPENDED) {
            if (s->reviving)
                return revive_failed(d, s, s->ctl_error);
            if (op->kind == SEP_SOP_SUSPEND)
                return suspend_done(d, s);
            s->state = SEP_SS_SUSPENDED; /* a resume undone */
            if (op->error[0])
                sepd_op_error(d, s, SEP_ERR_INTERNAL, "%s", op->error);
            return sepd_op_finish(d, s);
        }
        /* the workers let go: now the store */
        sepd_persist_delete(d, s);
        return 0;
    }
    return 0;
}

void sepd_store_answer(sepd_t *d, sep_session_t *s, sep_sj_t kind, int rc, const char *error,
                       const sep_store_session_t *rec)
{
    sep_op_t *op = &s->op;
    switch (kind) {
    case SEP_SJ_NONE:
        break;
    case SEP_SJ_CREATE:
        if (rc) {
            sepd_op_error(d, s, SEP_ERR_INTERNAL, "open: the store: %s", error);
            sepd_remove(d, s);
            return;
        }
        s->committed_at = sep_now();
        if (sepd_ctl_send(d, s, SEP_WAIT_OPEN, ~0ull))
            sep_log(SEP_LOG_ERROR, "session '%s': w_open: %s", s->name, sep_errmsg());
        break;
    case SEP_SJ_WRITE:
        if (rc) {
            snprintf(s->ckpt_error, sizeof s->ckpt_error, "%s", error);
            if (op->kind == SEP_SOP_SUSPEND) {
                sepd_op_error(d, s, SEP_ERR_INTERNAL, "suspend: the checkpoint failed: %s (the "
                              "session stays active, at its last checkpoint in the store)",
                              error);
                if (sepd_op_finish(d, s))
                    return;
            }
            break;
        }
        s->ckpt_error[0] = '\0';
        s->committed_bytes = s->bytes_committed = rec->bytes_in;
        s->committed_tokens = rec->tokens;
        s->committed_at = sep_now();
        s->checkpoints = rec->checkpoints;
        s->n_stages_saved = (int)rec->n_stages;
        s->saved_bytes = 0;
        for (uint32_t i = 0; i < rec->n_stages; i++)
            s->saved_bytes += (int64_t)rec->state_len[i];
        if (op->kind == SEP_SOP_SUSPEND && rec->state == SEP_STORE_SUSPENDED)
            op->checkpointed = 1;
        break;
    case SEP_SJ_READ:
        if (rc && s->reviving) {
            char why[600];
            snprintf(why, sizeof why, "its snapshot: %s", error);
            if (revive_failed(d, s, why))
                return;
            break;
        }
        if (rc) {
            sepd_op_error(d, s, SEP_ERR_INTERNAL, "resume: its snapshot: %s (the session "
                          "stays suspended)", error);
            sep_log(SEP_LOG_ERROR, "session '%s': its snapshot: %s", s->name, error);
            snprintf(s->foreign, sizeof s->foreign, "its snapshot: %s", error);
            if (sepd_op_finish(d, s))
                return;
            break;
        }
        if (sepd_ctl_send(d, s, s->n_stages_saved ? SEP_WAIT_LOAD : SEP_WAIT_OPEN, ~0ull))
            sep_log(SEP_LOG_ERROR, "session '%s': w_load: %s", s->name, sep_errmsg());
        break;
    case SEP_SJ_DELETE:
        if (rc) {
            /* the record is still in the store: the session is not closed */
            s->state = s->n_stages_saved || s->state != SEP_SS_FAILED ? SEP_SS_SUSPENDED
                                                                      : SEP_SS_FAILED;
            sepd_op_error(d, s, SEP_ERR_INTERNAL, "close: the store: %s (the session stays, "
                          "suspended)", error);
            if (sepd_op_finish(d, s))
                return;
            break;
        }
        session_gone(d, s);
        return;
    }
    sepd_step(d, s);
}

int sepd_step(sepd_t *d, sep_session_t *s)
{
    /* after a worker fault nothing moves until the sessions are reloaded */
    if (d->recover)
        return 0;
    if (s->ctl.kind != SEP_WAIT_NONE && (s->ctl.answered | s->ctl.failed) == s->ctl.asked)
        return ctl_done(d, s);
    int rc = ckpt_start(d, s);
    if (rc)
        return rc > 0;
    /* a checkpoint's w_save does not stop the session: the cut was when it went */
    int waiting = s->ctl.kind != SEP_WAIT_NONE || (s->sj != SEP_SJ_NONE && s->sj != SEP_SJ_WRITE);
    sep_op_t *op = &s->op;
    switch (op->kind) {
    case SEP_SOP_NONE:
        return op->next && !waiting && !s->gen_inflight ? sepd_op_finish(d, s) : 0;
    case SEP_SOP_OPEN:
    case SEP_SOP_EXPORT:
        return 0; /* its store jobs (and control op) are under way */
    case SEP_SOP_RESUME:
        if (waiting || s->state != SEP_SS_SUSPENDED)
            return 0;
        if (s->foreign[0]) {
            sepd_op_error(d, s, SEP_ERR_STATE, "resume: session '%s' cannot be resumed here: "
                          "%s", s->name, s->foreign);
            return sepd_op_finish(d, s);
        }
        sepd_persist_read(d, s);
        return 0;
    case SEP_SOP_FEED:
        return feed_progress(d, s);
    case SEP_SOP_FLUSH:
        if (!sep_session_idle(s))
            return 0;
        return durable_reply(d, s, SEP_OP_FLUSH) ? sepd_op_finish(d, s) : 0;
    case SEP_SOP_GENERATE:
        return sepd_gen_progress(d, s);
    case SEP_SOP_SUSPEND:
        if (waiting || !op->checkpointed)
            return 0;
        return ctl_close(d, s, ~0ull, SEP_THEN_SUSPENDED);
    case SEP_SOP_CLOSE:
        if (waiting || s->sent || s->gen_inflight || s->sj == SEP_SJ_WRITE)
            return 0;
        if (s->state == SEP_SS_SUSPENDED ||
            (s->state == SEP_SS_FAILED && !s->sid)) {
            sepd_persist_delete(d, s); /* its caches are in the store, not the workers */
            return 0;
        }
        if (s->state == SEP_SS_FAILED)
            s->q_len = 0; /* nothing more runs */
        if (sep_session_runnable(s))
            return 0;
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
    s->ckpt_want = 0;
    if (s->op.kind == SEP_SOP_CLOSE)
        return; /* close goes on: it is what a failed session waits for */
    sepd_op_error(d, s, SEP_ERR_INTERNAL, "session '%s' failed in a worker: %s (its last "
                  "checkpoint holds %lld tokens)", s->name, why, (long long)s->committed_tokens);
    sepd_op_finish(d, s);
}
