/* cache.h: the KV cache of one stream, for a range of layers.
 *
 * Per layer, K and V of the entries the stream's queries may attend to,
 * in slot order, with each entry's token id and stream position. Keys are
 * stored rotated at the entry's position. The model appends a chunk's
 * entries with sep_cache_reserve() then fills rows n .. n+k and commits
 * them with sep_cache_commit(); nothing else moves entries.
 *
 * All of a cache's state is in the fields below (plain arrays and
 * counters), so it can be written out and read back exactly.
 */
#ifndef SEP_CACHE_H
#define SEP_CACHE_H

#include <stdint.h>

#include "backend.h"

typedef struct {
    sep_backend_t *be;
    int n_layers;      /* layers held */
    int kv_dim;        /* n_kv_heads * head_dim */
    int cap;           /* entries allocated per layer */
    int n;             /* entries in use */
    float **k;         /* (n_layers) -> (cap, kv_dim) keys rotated at their position, backend memory */
    float **v;         /* (n_layers) -> (cap, kv_dim) values, backend memory */
    int32_t *ids;      /* (cap) token id of each entry */
    int64_t *pos;      /* (cap) stream position of each entry */
    int64_t n_seen;    /* tokens appended over the stream's life */
} sep_cache_t;

int sep_cache_new(sep_cache_t **out, sep_backend_t *be, int n_layers, int kv_dim);
void sep_cache_destroy(sep_cache_t **self_p);

/* Make room for k more entries (grows geometrically, keeping contents). */
int sep_cache_reserve(sep_cache_t *c, int k);

/* Record k entries appended at rows n .. n+k-1 with their ids; their
 * stream positions are n_seen .. n_seen+k-1. */
void sep_cache_commit(sep_cache_t *c, const int32_t *ids, int k);

#endif
