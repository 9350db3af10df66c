/* session.c: a session's text, ids and counters. */
#include "session.h"
#include "err.h"
#include "grow.h"
#include "utf8.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *sep_session_state_name(sep_ss_state_t st)
{
    static const char *names[] = { "opening", "active", "suspended", "failed" };
    return names[st];
}

const char *sep_sop_name(sep_sop_t op)
{
    static const char *names[] = { "none", SEP_OP_OPEN, SEP_OP_FEED, SEP_OP_FLUSH,
                                   SEP_OP_GENERATE, SEP_OP_SUSPEND, SEP_OP_RESUME,
                                   SEP_OP_CLOSE, SEP_OP_EXPORT };
    return names[op];
}

int sep_session_new(sep_session_t **out, const char *name, uint32_t sid, const sep_policy_t *p,
                    const char *separators, const sep_tok_t *tok, int n_vocab)
{
    *out = NULL;
    if (!sep_name_ok(name))
        return sep_fail(SEP_EINVAL, "session name '%.80s': 1 to %d characters of "
                        "A-Z a-z 0-9 . _ -", name, SEP_NAME_MAX);
    sep_session_t *s = calloc(1, sizeof *s);
    if (!s)
        return sep_fail(SEP_ENOMEM, "session: out of memory");
    int rc = sep_sepset_build(&s->seps, tok, separators, n_vocab);
    if (rc) {
        free(s);
        return rc;
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    s->sid = sid;
    s->state = SEP_SS_OPENING;
    s->policy = *p;
    s->policy.is_sep = s->seps.is_sep;
    s->policy.n_vocab = s->seps.n_vocab;
    s->tok_at = SEP_TOK_START;
    s->sampler = (sep_pick_t){ .temperature = 1, .top_p = 1, .repetition = 1 };
    s->penalty_window = SEP_PENALTY_WINDOW;
    if ((rc = sep_policy_check(&s->policy)))
        goto fail;
    s->separators = strdup(separators);
    s->sep_ids = malloc(((size_t)s->seps.count + 1) * sizeof *s->sep_ids);
    s->held = malloc(SEP_FEED_PIECE + SEP_TOK_HOLD_MAX);
    if (!s->separators || !s->sep_ids || !s->held) {
        rc = sep_fail(SEP_ENOMEM, "session: out of memory");
        goto fail;
    }
    for (int i = 0; i < s->seps.n_vocab; i++)
        if (s->seps.is_sep[i])
            s->sep_ids[s->n_sep_ids++] = i;
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    s->created = t.tv_sec + t.tv_nsec * 1e-9;
    /* generates without a seed go on from here */
    sep_rng_seed(&s->rng, (uint64_t)t.tv_sec ^ (uint64_t)t.tv_nsec << 20 ^ (uint64_t)sid << 52);
    *out = s;
    return SEP_OK;
fail:
    sep_session_destroy(&s);
    return rc;
}

void sep_session_destroy(sep_session_t **self_p)
{
    sep_session_t *s = *self_p;
    if (!s)
        return;
    sep_session_op_end(s);
    sep_sepset_free(&s->seps);
    free(s->separators);
    free(s->sep_ids);
    free(s->held);
    free(s->q);
    free(s->out_nll);
    free(s->kept_nll);
    free(s);
    *self_p = NULL;
}

int sep_session_ingest(sep_session_t *s, const sep_tok_t *tok, const char *text, size_t len,
                       int final, int64_t *bad_at, int64_t *dropped)
{
    if (dropped)
        *dropped = 0;
    if (len > SEP_FEED_PIECE)
        return sep_fail(SEP_ERANGE, "a piece of %zu bytes (at most %d)", len, SEP_FEED_PIECE);
    /* held is at most SEP_TOK_HOLD_MAX bytes between calls */
    memcpy(s->held + s->held_len, text, len);
    size_t have = s->held_len + len, ok, used = 0, n = 0;
    if (sep_utf8_scan(s->held, have, &ok)) {
        /* the held bytes come first in the text: the offset counts them */
        *bad_at = s->bytes_tokenized + (int64_t)ok;
        return sep_fail(SEP_EUTF8, "invalid UTF-8 at byte %lld of the session's text",
                        (long long)*bad_at);
    }
    /* the end of the text: a character it stops inside is not text */
    size_t take = final ? ok : have;
    int at = s->tok_at;
    int32_t *ids = NULL;
    int rc = sep_tok_encode_prefix(tok, s->held, take, final, &at, &ids, &n, &used);
    if (!rc)
        rc = SEP_GROW(s->q, s->q_cap, s->q_len + n);
    if (rc) {
        free(ids);
        return rc; /* held keeps its old length: the piece is not taken */
    }
    memcpy(s->q + s->q_len, ids, n * sizeof *ids);
    free(ids);
    if (final) {
        used = have;
        if (dropped)
            *dropped = (int64_t)(have - ok);
    }
    for (size_t i = 0; i < n; i++)
        s->recent[(s->ids_total + (int64_t)i) % SEP_PICK_MAX_RECENT] = s->q[s->q_len + i];
    s->q_len += n;
    s->ids_total += (int64_t)n;
    memmove(s->held, s->held + used, have - used);
    s->held_len = have - used;
    s->tok_at = at;
    s->bytes_in += (int64_t)len;
    s->bytes_tokenized += (int64_t)used;
    if (final)
        s->tok_at = SEP_TOK_MIDDLE; /* text fed later continues this text */
    return SEP_OK;
}

int sep_session_push(sep_session_t *s, int32_t id)
{
    int rc = SEP_GROW(s->q, s->q_cap, s->q_len + 1);
    if (rc)
        return rc;
    s->q[s->q_len++] = id;
    s->recent[s->ids_total++ % SEP_PICK_MAX_RECENT] = id;
    return SEP_OK;
}

int sep_session_recent(const sep_session_t *s, int max, int32_t *out)
{
    int64_t have = s->ids_total - s->recent_from;
    int64_t n = have < max ? have : max;
    for (int64_t i = 0; i < n; i++)
        out[i] = s->recent[(s->ids_total - n + i) % SEP_PICK_MAX_RECENT];
    return (int)n;
}

size_t sep_session_runnable(const sep_session_t *s)
{
    return s->q_len > s->sent + 1 ? s->q_len - 1 - s->sent : 0;
}

int sep_session_idle(const sep_session_t *s)
{
    return s->sent == 0 && sep_session_runnable(s) == 0 && !s->gen_inflight;
}

int sep_session_scored(sep_session_t *s, size_t k, const float *nll, const int32_t *kv,
                       int owed)
{
    for (size_t i = 0; i < k; i++) {
        s->nll_sum += nll[i];
        s->kv_sum += kv[i];
        s->kv_last = kv[i];
        if (kv[i] > s->kv_max)
            s->kv_max = kv[i];
    }
    s->tokens += (int64_t)k;
    memmove(s->q, s->q + k, (s->q_len - k) * sizeof *s->q);
    s->q_len -= k;
    s->sent -= k;
    if (!owed || !s->op.want_nll || !s->op.peer_len)
        return SEP_OK;
    int rc = SEP_GROW(s->out_nll, s->out_cap, s->out_n + k);
    if (rc)
        return sep_fail(rc, "session '%s': no memory for %zu NLLs", s->name, s->out_n + k);
    memcpy(s->out_nll + s->out_n, nll, k * sizeof *nll);
    s->out_n += k;
    return SEP_OK;
}

int sep_session_nll_sent(sep_session_t *s)
{
    if (!s->op.keep_nll || !s->out_n)
        return SEP_OK;
    if (!s->kept_n)
        s->kept_at = s->tokens - (int64_t)s->out_n;
    int rc = SEP_GROW(s->kept_nll, s->kept_cap, s->kept_n + s->out_n);
    if (rc)
        return rc;
    memcpy(s->kept_nll + s->kept_n, s->out_nll, s->out_n * sizeof *s->out_nll);
    s->kept_n += s->out_n;
    return SEP_OK;
}

void sep_session_nll_have(sep_session_t *s, int64_t have)
{
    if (have <= s->kept_at)
        return;
    size_t drop = have - s->kept_at >= (int64_t)s->kept_n ? s->kept_n
                                                          : (size_t)(have - s->kept_at);
    memmove(s->kept_nll, s->kept_nll + drop, (s->kept_n - drop) * sizeof *s->kept_nll);
    s->kept_n -= drop;
    s->kept_at += (int64_t)drop;
    if (!s->kept_n)
        s->kept_at = have;
}

void sep_session_op_end(sep_session_t *s)
{
    json_decref(s->op.next);
    sep_stop_destroy(&s->op.stop);
    memset(&s->op, 0, sizeof s->op);
    s->out_n = 0;
}
