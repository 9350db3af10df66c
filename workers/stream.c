/* stream.c: scoring a stream in chunks. */
#include "stream.h"
#include "err.h"

#include <stdlib.h>

int sep_stream_new(sep_stream_t **out, const sep_model_t *m, const sep_policy_t *policy)
{
    *out = NULL;
    sep_stream_t *s = calloc(1, sizeof *s);
    if (!s)
        return sep_fail(SEP_ENOMEM, "stream: out of memory");
    s->kv = malloc((size_t)m->run.max_tokens * sizeof *s->kv);
    s->nll = malloc((size_t)m->run.max_tokens * sizeof *s->nll);
    int rc = s->kv && s->nll ? sep_model_cache_new(m, policy, &s->cache)
                             : sep_fail(SEP_ENOMEM, "stream: out of memory");
    if (rc) {
        sep_stream_destroy(&s);
        return rc;
    }
    *out = s;
    return SEP_OK;
}

void sep_stream_destroy(sep_stream_t **self_p)
{
    sep_stream_t *s = *self_p;
    if (!s)
        return;
    sep_cache_destroy(&s->cache);
    free(s->kv);
    free(s->nll);
    free(s);
    *self_p = NULL;
}

/* Run tokens seq[0..k) with targets seq[1..k] as one chunk. */
static int stream_run(sep_model_t *m, sep_stream_t *s, const int32_t *seq, int k, float *nll,
                      int32_t *kv)
{
    sep_chunk_t ch = { .cache = s->cache, .ids = seq, .n = k, .targets = seq + 1,
                       .nll = nll, .kv = kv, .archive = s->on_evict != NULL };
    int rc = sep_model_forward(m, &ch, 1);
    if (rc)
        return rc;
    if (s->on_evict)
        s->on_evict(sep_model_evicted(m), s->evict_arg);
    for (int i = 0; i < k; i++) {
        s->nll_sum += nll[i];
        s->kv_sum += kv[i];
        if (kv[i] > s->kv_max)
            s->kv_max = kv[i];
    }
    s->tokens += k;
    return SEP_OK;
}

int sep_stream_feed(sep_model_t *m, sep_stream_t *s, const int32_t *ids, size_t n,
                    float *nll, int32_t *kv, size_t *n_scored)
{
    *n_scored = 0;
    if (n == 0)
        return SEP_OK;
    /* the sequence to run is pending + ids; every token but the last */
    size_t total = n + (s->has_pending ? 1 : 0);
    int32_t *seq = malloc(total * sizeof *seq);
    if (!seq)
        return sep_fail(SEP_ENOMEM, "stream: out of memory for %zu ids", n);
    size_t off = 0;
    if (s->has_pending)
        seq[off++] = s->pending;
    for (size_t i = 0; i < n; i++)
        seq[off++] = ids[i];
    int rc = SEP_OK;
    size_t done = 0;
    while (done + 1 < total) {
        size_t k = total - 1 - done;
        if (k > (size_t)m->run.max_tokens)
            k = (size_t)m->run.max_tokens;
        if ((rc = stream_run(m, s, seq + done, (int)k, nll ? nll + done : s->nll,
                             kv ? kv + done : s->kv)))
            break;
        done += k;
    }
    /* on failure, the tokens run so far stay run and seq[done] waits */
    if (!rc || done > 0) {
        s->pending = seq[rc ? done : total - 1];
        s->has_pending = 1;
    }
    *n_scored = done;
    free(seq);
    return rc;
}
