/* session.c: a session's text, ids and counters. */
#include "session.h"
#include "err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *sep_session_state_name(sep_ss_state_t st)
{
    static const char *names[] = { "active", "suspending", "suspended", "resuming",
                                   "closing", "failed" };
    return names[st];
}

int sep_session_new(sep_session_t **out, const char *name, uint32_t sid, const sep_policy_t *p,
                    const char *separators, const sep_tok_t *tok)
{
    *out = NULL;
    if (!sep_name_ok(name))
        return sep_fail(SEP_EINVAL, "session name '%.80s': 1 to %d characters of "
                        "A-Z a-z 0-9 . _ -", name, SEP_NAME_MAX);
    if (strlen(separators) >= sizeof ((sep_session_t *)0)->separators)
        return sep_fail(SEP_EINVAL, "separators: spec longer than 63 bytes");
    sep_session_t *s = calloc(1, sizeof *s);
    if (!s)
        return sep_fail(SEP_ENOMEM, "session: out of memory");
    int rc = sep_sepset_build(&s->seps, tok, separators);
    if (rc) {
        free(s);
        return rc;
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->separators, sizeof s->separators, "%s", separators);
    s->sid = sid;
    s->policy = *p;
    s->policy.is_sep = s->seps.is_sep;
    s->policy.n_vocab = s->seps.n_vocab;
    s->tok_at = SEP_TOK_START;
    if ((rc = sep_policy_check(&s->policy)))
        goto fail;
    s->sep_ids = malloc(((size_t)s->seps.count + 1) * sizeof *s->sep_ids);
    s->held = malloc(SEP_FEED_PIECE + SEP_TOK_HOLD_MAX);
    if (!s->sep_ids || !s->held) {
        rc = sep_fail(SEP_ENOMEM, "session: out of memory");
        goto fail;
    }
    for (int i = 0; i < s->seps.n_vocab; i++)
        if (s->seps.is_sep[i])
            s->sep_ids[s->n_sep_ids++] = i;
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    s->created = t.tv_sec + t.tv_nsec * 1e-9;
    *out = s;
    return SEP_OK;
fail:
    sep_session_destroy(&s);
    return rc;
}

void sep_session_state_free(sep_session_t *s)
{
    for (int i = 0; s->saved && i < s->n_state; i++)
        free(s->saved[i]);
    free(s->saved);
    free(s->saved_len);
    s->saved = NULL;
    s->saved_len = NULL;
    s->n_state = s->state_got = 0;
}

void sep_session_destroy(sep_session_t **self_p)
{
    sep_session_t *s = *self_p;
    if (!s)
        return;
    sep_sepset_free(&s->seps);
    sep_session_state_free(s);
    free(s->sep_ids);
    free(s->held);
    free(s->q);
    free(s->out_nll);
    free(s);
    *self_p = NULL;
}

static int session_reserve(sep_session_t *s, size_t more)
{
    if (s->q_len + more <= s->q_cap)
        return SEP_OK;
    size_t cap = s->q_cap ? s->q_cap : 1024;
    while (cap < s->q_len + more)
        cap *= 2;
    int32_t *nq = realloc(s->q, cap * sizeof *nq);
    if (!nq)
        return sep_fail(SEP_ENOMEM, "session '%s': no memory for %zu ids", s->name, cap);
    s->q = nq;
    s->q_cap = cap;
    return SEP_OK;
}

int sep_session_ingest(sep_session_t *s, const sep_tok_t *tok, const char *text, size_t len,
                       int final)
{
    if (len > SEP_FEED_PIECE)
        return sep_fail(SEP_ERANGE, "feed: a piece of %zu bytes (at most %d)", len,
                        SEP_FEED_PIECE);
    /* held is at most SEP_TOK_HOLD_MAX bytes between calls */
    memcpy(s->held + s->held_len, text, len);
    size_t have = s->held_len + len, used = 0, n = 0;
    int at = s->tok_at;
    int32_t *ids = NULL;
    int rc = sep_tok_encode_prefix(tok, s->held, have, final, &at, &ids, &n, &used);
    if (rc == SEP_EUTF8)
        rc = sep_fail(SEP_EUTF8, "session '%s': invalid UTF-8 near byte %lld of its text (%s)",
                      s->name, (long long)(s->bytes_tokenized + (int64_t)used), sep_errmsg());
    if (!rc)
        rc = session_reserve(s, n);
    if (rc) {
        free(ids);
        return rc; /* held keeps its old length: the piece is not taken */
    }
    memcpy(s->q + s->q_len, ids, n * sizeof *ids);
    free(ids);
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
    int rc = session_reserve(s, 1);
    if (rc)
        return rc;
    s->q[s->q_len++] = id;
    s->ids_total++;
    return SEP_OK;
}

size_t sep_session_runnable(const sep_session_t *s)
{
    return s->q_len > s->sent + 1 ? s->q_len - 1 - s->sent : 0;
}

int sep_session_scored(sep_session_t *s, size_t k, const float *nll, const int32_t *kv)
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
    if (!s->want_nll || !s->owner_len)
        return SEP_OK;
    if (s->out_n + k > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 4096;
        while (cap < s->out_n + k)
            cap *= 2;
        float *no = realloc(s->out_nll, cap * sizeof *no);
        if (!no)
            return sep_fail(SEP_ENOMEM, "session '%s': no memory for NLLs", s->name);
        s->out_nll = no;
        s->out_cap = cap;
    }
    memcpy(s->out_nll + s->out_n, nll, k * sizeof *nll);
    s->out_n += k;
    return SEP_OK;
}

void sep_session_release(sep_session_t *s)
{
    s->owner_len = 0;
    s->owner_op = SEP_OWN_NONE;
    s->want_nll = 0;
    s->out_n = 0;
    s->n_pieces = 0;
    s->feed_ending = 0;
    s->gen_left = 0;
}
