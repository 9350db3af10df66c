/* stream.h: one token stream scored through a model, token by token in
 * meaning, chunk by chunk in execution.
 *
 * Token i of a stream is run with token i+1 as its target, so the last id
 * fed waits (pending) until the next id arrives. Ids run in chunks of up
 * to the model's max_tokens (a model loaded with max_tokens 1 runs the
 * one-token-per-step loop). Feeding the ids of a text
 * in one piece or in many gives the same NLLs. The counters give the
 * stream's perplexity and cache accounting: kv_sum and kv_max count the
 * cache entries after each scored token's K/V is appended.
 */
#ifndef SEP_STREAM_H
#define SEP_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "model.h"

typedef struct {
    sep_cache_t *cache;
    int32_t *kv;         /* (max_tokens) scratch: cache size after each token */
    float *nll;          /* (max_tokens) scratch for callers that want no NLLs */
    int32_t pending;     /* last id fed, not yet run (valid if has_pending) */
    int has_pending;
    int64_t tokens;      /* tokens scored */
    double nll_sum;      /* sum of their NLLs */
    int64_t kv_sum;      /* sum over scored tokens of the cache size */
    int64_t kv_max;      /* largest cache size seen */
    /* set to get the separators the compactions evict: called after each
     * chunk with what it evicted (sep_model_evicted) */
    void (*on_evict)(const sep_evicted_t *ev, void *arg);
    void *evict_arg;
} sep_stream_t;

/* A stream under policy (whose separator set must outlive the stream). */
int sep_stream_new(sep_stream_t **out, const sep_model_t *m, const sep_policy_t *policy);
void sep_stream_destroy(sep_stream_t **self_p);

/* Feed n ids; nll receives one NLL per token scored by this call (at most
 * n of them) and kv its cache size after its K/V was appended; *n_scored
 * counts them. nll and kv may be NULL. */
int sep_stream_feed(sep_model_t *m, sep_stream_t *s, const int32_t *ids, size_t n,
                    float *nll, int32_t *kv, size_t *n_scored);

#endif
