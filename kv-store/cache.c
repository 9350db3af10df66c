/* cache.c: storage of a stream's KV entries. */
#include "cache.h"
#include "err.h"

#include <stdlib.h>
#include <string.h>

int sep_cache_new(sep_cache_t **out, sep_backend_t *be, int n_layers, int kv_dim)
{
    *out = NULL;
    sep_cache_t *c = calloc(1, sizeof *c);
    if (!c)
        goto fail;
    c->be = be;
    c->n_layers = n_layers;
    c->kv_dim = kv_dim;
    c->k = calloc((size_t)n_layers, sizeof *c->k);
    c->v = calloc((size_t)n_layers, sizeof *c->v);
    if (!c->k || !c->v)
        goto fail;
    *out = c;
    return SEP_OK;
fail:
    sep_cache_destroy(&c);
    return sep_fail(SEP_ENOMEM, "kv cache: out of memory");
}

void sep_cache_destroy(sep_cache_t **self_p)
{
    sep_cache_t *c = *self_p;
    if (!c)
        return;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->k)
            c->be->free(c->be, c->k[l]);
        if (c->v)
            c->be->free(c->be, c->v[l]);
    }
    free(c->k);
    free(c->v);
    free(c->ids);
    free(c->pos);
    free(c);
    *self_p = NULL;
}

/* Move the rows in use of *buf into a new backend buffer of cap rows. */
static int cache_regrow(sep_cache_t *c, float **buf, int cap)
{
    float *nb = c->be->alloc(c->be, (size_t)cap * c->kv_dim * sizeof(float));
    if (!nb)
        return SEP_ENOMEM;
    if (*buf && c->n)
        c->be->copy_rows(c->be, nb, c->kv_dim, *buf, c->kv_dim, c->n, c->kv_dim);
    c->be->free(c->be, *buf);
    *buf = nb;
    return SEP_OK;
}

int sep_cache_reserve(sep_cache_t *c, int k)
{
    if (k < 0 || c->n > INT32_MAX / 2 - k)
        return sep_fail(SEP_ERANGE, "kv cache: %d more entries exceed the cache's limit", k);
    int need = c->n + k;
    if (need <= c->cap)
        return SEP_OK;
    int cap = c->cap ? c->cap : 256;
    while (cap < need)
        cap *= 2;
    int32_t *ids = realloc(c->ids, (size_t)cap * sizeof *ids);
    if (ids)
        c->ids = ids;
    int64_t *pos = realloc(c->pos, (size_t)cap * sizeof *pos);
    if (pos)
        c->pos = pos;
    if (!ids || !pos)
        goto fail;
    for (int l = 0; l < c->n_layers; l++)
        if (cache_regrow(c, &c->k[l], cap) || cache_regrow(c, &c->v[l], cap))
            goto fail;
    c->cap = cap;
    return SEP_OK;
fail:
    /* buffers that did grow keep the old rows; cap stays the old size */
    return sep_fail(SEP_ENOMEM, "kv cache: no memory for %d entries of %d layers",
                    cap, c->n_layers);
}

void sep_cache_commit(sep_cache_t *c, const int32_t *ids, int k)
{
    memcpy(c->ids + c->n, ids, (size_t)k * sizeof *ids);
    for (int i = 0; i < k; i++)
        c->pos[c->n + i] = c->n_seen + i;
    c->n += k;
    c->n_seen += k;
}
