/* stream.c: scoring a stream in chunks. */
#include "stream.h"
#include "err.h"

#include <stdlib.h>

int sep_stream_new(sep_stream_t **out, const sep_model_t *m)
{
    *out = NULL;
    sep_stream_t *s = calloc(1, sizeof *s);
    if (!s)
        return sep_fail(SEP_ENOMEM, "stream: out of memory");
    int rc = sep_model_cache_new(m, &s->cache);
    if (rc) {
        free(s);
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
    free(s);
    *self_p = NULL;
}

/* Run tokens seq[0..k) with targets seq[1..k] as one chunk. */
static int stream_run(sep_model_t *m, sep_stream_t *s, const int32_t *seq, int k, float *nll)
{
    sep_chunk_t ch = { .cache = s->cache, .ids = seq, .n = k, .targets = seq + 1, .nll = nll };
    int64_t n0 = s->cache->n;
    int rc = sep_model_forward(m, &ch, 1);
    if (rc)
        return rc;
    for (int i = 0; i < k; i++) {
        int64_t kv = n0 + i + 1;
        s->nll_sum += nll[i];
        s->kv_sum += kv;
        if (kv > s->kv_max)
            s->kv_max = kv;
    }
    s->tokens += k;
    return SEP_OK;
}

int sep_stream_feed(sep_model_t *m, sep_stream_t *s, const int32_t *ids, size_t n,
                    float *nll, size_t *n_scored)
{
    *n_scored = 0;
    if (n == 0)
        return SEP_OK;
    /* the sequence to run is pending + ids; every token but the last */
    size_t total = n + (s->has_pending ? 1 : 0);
    int32_t *seq = malloc(total * sizeof *seq);
    float *tmp = nll ? NULL : malloc((size_t)m->run.max_tokens * sizeof *tmp);
    if (!seq || (!nll && !tmp)) {
        free(seq);
        free(tmp);
        return sep_fail(SEP_ENOMEM, "stream: out of memory for %zu ids", n);
    }
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
        if ((rc = stream_run(m, s, seq + done, (int)k, nll ? nll + done : tmp)))
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
    free(tmp);
    return rc;
}
