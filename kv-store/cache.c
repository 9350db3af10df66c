/* cache.c: the streaming cache's storage, compaction plan and gathers. */
#include "cache.h"
#include "err.h"

#include <stdlib.h>
#include <string.h>

/* A saved state holds counters and rows in host order, which its format
 * fixes as little-endian. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sepd saves cache states on little-endian hosts only"
#endif

int sep_method_parse(const char *name, sep_method_t *out)
{
    static const char *names[] = { "full", "streaming", "sepllm" };
    for (int i = 0; i < 3; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (sep_method_t)i;
            return SEP_OK;
        }
    return sep_fail(SEP_EINVAL, "method '%s': expected full, streaming or sepllm", name);
}

const char *sep_method_name(sep_method_t m)
{
    return m == SEP_METHOD_FULL ? "full" : m == SEP_METHOD_STREAMING ? "streaming" : "sepllm";
}

int sep_policy_check(const sep_policy_t *p)
{
    if (p->method == SEP_METHOD_FULL)
        return SEP_OK;
    /* the cache holds c + 1 entries at most: keep that an int with room */
    if (p->a < 0 || p->s < 0 || p->w < 0 || p->c < 1 || p->c > (1 << 24))
        return sep_fail(SEP_EINVAL, "cache: a=%d s=%d w=%d c=%d: a, s, w must be >= 0 "
                        "and c in 1..%d", p->a, p->s, p->w, p->c, 1 << 24);
    if (p->method == SEP_METHOD_STREAMING && p->w != p->c - p->a)
        return sep_fail(SEP_EINVAL, "streaming: the window w=%d must be c - a = %d",
                        p->w, p->c - p->a);
    if (p->method == SEP_METHOD_STREAMING && p->a >= p->c)
        return sep_fail(SEP_EINVAL, "streaming: a=%d must be below c=%d", p->a, p->c);
    if (p->method == SEP_METHOD_SEPLLM) {
        if ((long)p->a + p->s + p->w >= p->c)
            return sep_fail(SEP_EINVAL, "sepllm: a + s + w = %ld must be below c = %d",
                            (long)p->a + p->s + p->w, p->c);
        if (!p->is_sep || p->n_vocab < 1)
            return sep_fail(SEP_EINVAL, "sepllm: no separator set");
    }
    return SEP_OK;
}

/* Entries can move (compaction) and positions follow slots: keys must be
 * kept unrotated to be re-rotated exactly. */
static int cache_keeps_raw(const sep_policy_t *p)
{
    return p->shift && p->method != SEP_METHOD_FULL;
}

int sep_cache_new(sep_cache_t **out, sep_backend_t *be, int n_layers, int kv_dim,
                  const sep_policy_t *policy)
{
    *out = NULL;
    int rc = sep_policy_check(policy);
    if (rc)
        return rc;
    sep_cache_t *c = calloc(1, sizeof *c);
    if (!c)
        goto fail;
    c->be = be;
    c->policy = *policy;
    c->n_layers = n_layers;
    c->kv_dim = kv_dim;
    c->k = calloc((size_t)n_layers, sizeof *c->k);
    c->v = calloc((size_t)n_layers, sizeof *c->v);
    if (!c->k || !c->v)
        goto fail;
    if (cache_keeps_raw(policy) && !(c->k_raw = calloc((size_t)n_layers, sizeof *c->k_raw)))
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
        if (c->k_raw)
            c->be->free(c->be, c->k_raw[l]);
        if (c->v)
            c->be->free(c->be, c->v[l]);
    }
    free(c->k);
    free(c->k_raw);
    free(c->v);
    free(c->ids);
    free(c->pos);
    free(c);
    *self_p = NULL;
}

/* Move the rows in use of *buf into a new backend buffer of cap rows,
 * at the same rows. */
static int cache_regrow(sep_cache_t *c, float **buf, int cap)
{
    float *nb = c->be->alloc(c->be, (size_t)cap * c->kv_dim * sizeof(float));
    if (!nb)
        return SEP_ENOMEM;
    if (*buf && c->n) {
        size_t at = (size_t)c->lo * c->kv_dim;
        sep_rows_t all = { nb + at, *buf + at, c->kv_dim, c->kv_dim, c->n, c->kv_dim };
        c->be->copy_rows(c->be, &all, 1);
    }
    c->be->free(c->be, *buf);
    *buf = nb;
    return SEP_OK;
}

int sep_cache_cap_for(const sep_policy_t *p, int cap_now, int entries)
{
    /* an evicting cache never needs more than its rows (the recent region
     * slides up through 2 (c + 1) rows before it moves down): size it once */
    if (p->method != SEP_METHOD_FULL && entries <= SEP_CACHE_ROWS(p->c))
        return SEP_CACHE_ROWS(p->c);
    int cap = cap_now ? cap_now : 256;
    while (cap < entries)
        cap *= 2;
    return cap;
}

int64_t sep_cache_bytes(const sep_policy_t *p, int n_layers, int kv_dim, int cap)
{
    int64_t row = (int64_t)kv_dim * (int64_t)sizeof(float) * n_layers *
                  (cache_keeps_raw(p) ? 3 : 2);
    return (int64_t)cap * (row + (int64_t)sizeof(int32_t) + (int64_t)sizeof(int64_t));
}

int sep_cache_reserve(sep_cache_t *c, int entries)
{
    if (entries <= c->cap)
        return SEP_OK;
    if (entries > INT32_MAX / 2)
        return sep_fail(SEP_ERANGE, "kv cache: %d entries exceed the cache's limit", entries);
    int cap = sep_cache_cap_for(&c->policy, c->cap, entries);
    int32_t *ids = realloc(c->ids, (size_t)cap * sizeof *ids);
    if (ids)
        c->ids = ids;
    int64_t *pos = realloc(c->pos, (size_t)cap * sizeof *pos);
    if (pos)
        c->pos = pos;
    if (!ids || !pos)
        goto fail;
    for (int l = 0; l < c->n_layers; l++)
        if (cache_regrow(c, &c->k[l], cap) || cache_regrow(c, &c->v[l], cap) ||
            (c->k_raw && cache_regrow(c, &c->k_raw[l], cap)))
            goto fail;
    c->cap = cap;
    return SEP_OK;
fail:
    /* buffers that did grow keep the old rows; cap stays the old size */
    return sep_fail(SEP_ENOMEM, "kv cache: no memory for %d entries of %d layers",
                    cap, c->n_layers);
}

/* Slots before the recent region: the initial entries and separators. */
static int prefix_of(const sep_policy_t *po, int n, int n_sep)
{
    if (po->method == SEP_METHOD_FULL)
        return 0;
    long p = (long)po->a + n_sep;
    return p < n ? (int)p : n;
}

int sep_cache_prefix(const sep_cache_t *c)
{
    return prefix_of(&c->policy, c->n, c->n_sep);
}

/* The recent region holds the newest tokens: slot P is at stream position
 * n_seen - (n - P), rotated there less rope_off, so slot 0 at that less P. */
static int64_t rope_base_of(int64_t n_seen, int n, int prefix, int64_t rope_off)
{
    return n_seen - (n - prefix) - prefix - rope_off;
}

int64_t sep_cache_rope_base(const sep_cache_t *c)
{
    return rope_base_of(c->n_seen, c->n, sep_cache_prefix(c), c->rope_off);
}

/* Grow *buf to hold n elements of size sz (capacity in *cap). */
static int plan_grow(void **buf, int *cap, int n, size_t sz)
{
    if (n <= *cap)
        return SEP_OK;
    int nc = *cap ? *cap : 64;
    while (nc < n)
        nc = nc > INT32_MAX / 2 ? n : nc * 2;
    void *nb = realloc(*buf, (size_t)nc * sz);
    if (!nb)
        return sep_fail(SEP_ENOMEM, "cache plan: no memory for %d entries", n);
    *buf = nb;
    *cap = nc;
    return SEP_OK;
}

/* Grow arrays that share the capacity *cap to n elements each: all grow
 * from the same old capacity, so to the same new one. */
static int plan_grow_shared(int *cap, int n, int n_bufs, void **bufs[], const size_t sz[])
{
    int nc = *cap;
    for (int b = 0; b < n_bufs; b++) {
        nc = *cap;
        int rc = plan_grow(bufs[b], &nc, n, sz[b]);
        if (rc)
            return rc;
    }
    *cap = nc;
    return SEP_OK;
}

/* The compaction of the m entries at rows [lo, lo + m) of the plan by
 * the policy: the slots the new prefix keeps into keep (*nk of them), the
 * first slot of the recent region that stays in *rs; *n_sep updated and
 * the separators it evicts appended to the plan's evict arrays (sepllm). */
static int plan_keep(const sep_policy_t *po, sep_plan_t *p, int lo, int m, int *n_sep,
                     int32_t *keep, int *nk, int *rs)
{
    const int32_t *ids = p->ids + lo;
    int k = 0;
    for (int i = 0; i < po->a; i++)
        keep[k++] = i;
    if (po->method == SEP_METHOD_STREAMING) {
        *rs = m - (po->c - po->a);
        *nk = k;
        return SEP_OK;
    }
    /* sepllm: the separator region, then the separators of the past
     * window, the newest s of them */
    int win = m - po->w, total = *n_sep;
    for (int i = po->a + *n_sep; i < win; i++)
        total += ids[i] >= 0 && ids[i] < po->n_vocab && po->is_sep[ids[i]];
    int skip = total > po->s ? total - po->s : 0, seen = 0, e = p->n_evict;
    /* the oldest skip separators go: exactly skip of them, room first */
    if (skip) {
        void **bufs[] = { (void **)&p->evict_idx, (void **)&p->evict_src, (void **)&p->evict_id,
                          (void **)&p->evict_pos };
        const size_t sz[] = { sizeof *p->evict_idx, sizeof *p->evict_src, sizeof *p->evict_id,
                              sizeof *p->evict_pos };
        int rc = plan_grow_shared(&p->evict_cap, e + skip, 4, bufs, sz);
        if (rc)
            return rc;
    }
    for (int i = po->a; i < win; i++) {
        int is = i < po->a + *n_sep ||
                 (ids[i] >= 0 && ids[i] < po->n_vocab && po->is_sep[ids[i]]);
        if (!is)
            continue;
        if (seen++ >= skip) {
            keep[k++] = i;
        } else {
            p->evict_idx[e] = lo + i;
            p->evict_src[e] = p->orig[lo + i];
            p->evict_id[e] = ids[i];
            p->evict_pos[e++] = p->pos[lo + i];
        }
    }
    p->n_evict = e;
    *n_sep = total - skip;
    *rs = win;
    *nk = k;
    return SEP_OK;
}

/* Rows [lo, lo + m) hold their entries as at the start of a run. */
static void plan_run_start(sep_plan_t *p, int lo, int m)
{
    for (int i = lo; i < lo + m; i++)
        p->orig[i] = i;
}

int sep_cache_plan(const sep_cache_t *c, const int32_t *ids, int n, int max_run_rows,
                   sep_plan_t *p)
{
    const sep_policy_t *po = &c->policy;
    int evict = po->method != SEP_METHOD_FULL;
    if (evict && c->n > po->c)
        return sep_fail(SEP_EINVAL, "cache plan: cache holds %d entries, above c=%d", c->n, po->c);
    if (!evict && n > INT32_MAX / 2 - c->n)
        return sep_fail(SEP_ERANGE, "cache plan: %d entries and %d tokens exceed the "
                        "cache's limit", c->n, n);
    int rows = evict ? SEP_CACHE_ROWS(po->c) : c->lo + c->n + n;
    int rc, max_seg = evict ? n : 1;
    if ((rc = plan_grow((void **)&p->rope_pos, &p->tok_cap, n, sizeof *p->rope_pos)))
        return rc;
    void **seg_bufs[] = { (void **)&p->seg, (void **)&p->run_first };
    const size_t seg_sz[] = { sizeof *p->seg, sizeof *p->run_first };
    if ((rc = plan_grow_shared(&p->seg_cap, max_seg + 1, 2, seg_bufs, seg_sz)))
        return rc;
    void **meta_bufs[] = { (void **)&p->ids, (void **)&p->pos, (void **)&p->orig };
    const size_t meta_sz[] = { sizeof *p->ids, sizeof *p->pos, sizeof *p->orig };
    if ((rc = plan_grow_shared(&p->meta_cap, rows, 3, meta_bufs, meta_sz)))
        return rc;
    int lo = c->lo, m = c->n, n_sep = c->n_sep, used_keep = 0, run_rows = 0;
    if (m) { /* an empty cache has no arrays yet (memcpy from NULL is undefined) */
        memcpy(p->ids + lo, c->ids + lo, (size_t)m * sizeof *p->ids);
        memcpy(p->pos + lo, c->pos + lo, (size_t)m * sizeof *p->pos);
    }

    p->n_tokens = n;
    p->n_seg = 0;
    p->n_run = 0;
    p->n_evict = 0;
    p->max_entries = m;
    p->rows = rows;
    for (int t = 0; t < n;) {
        int k = n - t;
        if (evict && k > po->c + 1 - m)
            k = po->c + 1 - m;
        sep_segment_t *sg = &p->seg[p->n_seg++];
        *sg = (sep_segment_t){ .start = t, .len = k, .n_past = m, .lo = lo, .move_from = -1 };
        /* no room for a whole cache past lo: down to row 0, where the
         * entries (at most c) do not reach the rows they come from */
        int new_run = p->n_seg == 1 || max_run_rows <= 0;
        if (evict && lo + po->c + 1 > rows) {
            sg->move_from = lo;
            memcpy(p->ids, p->ids + lo, (size_t)m * sizeof *p->ids);
            memcpy(p->pos, p->pos + lo, (size_t)m * sizeof *p->pos);
            lo = sg->lo = 0;
            new_run = 1;
        }
        /* the prefix this segment sees, which the previous compaction wrote */
        int seen_pre = p->n_seg > 1 ? sg[-1].n_pre : 0;
        if (!new_run && seen_pre > max_run_rows - run_rows)
            new_run = 1;
        if (new_run) {
            p->run_first[p->n_run++] = p->n_seg - 1;
            if (evict) /* only compactions read it */
                plan_run_start(p, lo, m);
            run_rows = 0;
        } else {
            run_rows += seen_pre;
        }
        for (int i = 0; i < k; i++) {
            int64_t spos = c->n_seen + t + i;
            p->rope_pos[t + i] = po->shift ? spos - c->rope_off : spos;
            p->ids[lo + m + i] = ids[t + i];
            p->pos[lo + m + i] = spos;
            if (evict)
                p->orig[lo + m + i] = lo + m + i;
        }
        m += k;
        t += k;
        if (m > p->max_entries)
            p->max_entries = m;
        if (!evict || m <= po->c)
            continue;
        /* a compaction's prefix is at most a + s entries; keep lists are
         * stored as offsets until the buffer stops moving */
        void **keep_bufs[] = { (void **)&p->keep_buf, (void **)&p->src_buf };
        const size_t keep_sz[] = { sizeof *p->keep_buf, sizeof *p->src_buf };
        if ((rc = plan_grow_shared(&p->keep_cap, used_keep + po->a + po->s, 2, keep_bufs,
                                   keep_sz)))
            return rc;
        int32_t *keep = p->keep_buf + used_keep, *src = p->src_buf + used_keep;
        int nk, rs;
        sg->evict_at = p->n_evict;
        if ((rc = plan_keep(po, p, lo, m, &n_sep, keep, &nk, &rs)))
            return rc;
        sg->n_evict = p->n_evict - sg->evict_at;
        /* the prefix goes to the rows just before the recent region's
         * first, which stays where it is; rows move up (or stay), so from
         * the last down none is overwritten before it is read */
        int lo2 = lo + rs - nk;
        for (int i = nk - 1; i >= 0; i--) {
            keep[i] += lo;
            src[i] = p->orig[keep[i]];
            p->ids[lo2 + i] = p->ids[keep[i]];
            p->pos[lo2 + i] = p->pos[keep[i]];
            p->orig[lo2 + i] = p->orig[keep[i]];
        }
        sg->n_keep = nk + (m - rs);
        sg->lo_after = lo2;
        sg->n_pre = nk;
        sg->pre_at = used_keep;
        used_keep += nk;
        if (po->shift) {
            int64_t spos = c->n_seen + t; /* the next token's */
            sg->pre_rope = rope_base_of(spos, sg->n_keep, nk, c->rope_off);
        }
        lo = lo2;
        m = sg->n_keep;
    }
    p->run_first[p->n_run] = p->n_seg;
    for (int i = 0; i < p->n_seg; i++) {
        p->seg[i].pre = p->seg[i].n_pre ? p->keep_buf + p->seg[i].pre_at : NULL;
        p->seg[i].src = p->seg[i].n_pre ? p->src_buf + p->seg[i].pre_at : NULL;
    }
    p->n_pre_rows = used_keep;
    p->n = m;
    p->n_sep = n_sep;
    p->lo = lo;
    return SEP_OK;
}

void sep_plan_free(sep_plan_t *p)
{
    free(p->seg);
    free(p->rope_pos);
    free(p->ids);
    free(p->pos);
    free(p->keep_buf);
    free(p->src_buf);
    free(p->orig);
    free(p->run_first);
    free(p->evict_idx);
    free(p->evict_src);
    free(p->evict_id);
    free(p->evict_pos);
    memset(p, 0, sizeof *p);
}

int sep_cache_move_copies(const sep_cache_t *c, int layer, const sep_segment_t *sg,
                          sep_rows_t out[3])
{
    if (sg->move_from < 0 || sg->n_past == 0)
        return 0;
    float *planes[3] = { c->k[layer], c->v[layer], c->k_raw ? c->k_raw[layer] : NULL };
    int k = 0, kv = c->kv_dim;
    for (int b = 0; b < 3; b++)
        if (planes[b])
            out[k++] = (sep_rows_t){ planes[b] + (size_t)sg->lo * kv,
                                     planes[b] + (size_t)sg->move_from * kv, kv, kv,
                                     sg->n_past, kv };
    return k;
}

/* The gathers of sg's compaction reading its prefix entries from rows
 * from: the values, then the keys (their raw keys where the cache keeps
 * them). */
static int prefix_gathers(const sep_cache_t *c, int layer, const sep_segment_t *sg,
                          const int32_t *from, sep_gather_t out[2])
{
    if (sg->n_pre <= 0)
        return 0;
    float *rows[2] = { c->v[layer], c->k_raw ? c->k_raw[layer] : c->k[layer] };
    for (int b = 0; b < 2; b++)
        out[b] = (sep_gather_t){ rows[b] + (size_t)sg->lo_after * c->kv_dim, rows[b], from,
                                 sg->n_pre, c->kv_dim };
    return 2;
}

int sep_cache_compact_gathers(const sep_cache_t *c, int layer, const sep_segment_t *sg,
                              sep_gather_t out[2])
{
    return prefix_gathers(c, layer, sg, sg->pre, out);
}

int sep_cache_run_gathers(const sep_cache_t *c, int layer, const sep_segment_t *sg,
                          sep_gather_t out[2])
{
    return prefix_gathers(c, layer, sg, sg->src, out);
}

void sep_cache_commit(sep_cache_t *c, const sep_plan_t *p)
{
    memcpy(c->ids + p->lo, p->ids + p->lo, (size_t)p->n * sizeof *c->ids);
    memcpy(c->pos + p->lo, p->pos + p->lo, (size_t)p->n * sizeof *c->pos);
    c->lo = p->lo;
    c->n = p->n;
    c->n_sep = p->n_sep;
    c->n_seen += p->n_tokens;
}

/* ---- state ------------------------------------------------------------ */

#define STATE_MAGIC "SEPC"
#define STATE_VERSION 2
#define STATE_VERSION_SLOTS 1 /* keys at their slots, no rope_off */

/* The int32 fields after the magic, in order (cache.h has the layout). */
enum { H_VERSION, H_METHOD, H_A, H_S, H_W, H_C, H_SHIFT, H_LAYERS, H_KV_DIM,
       H_N, H_N_SEP, H_RAW, H_COUNT };
#define STATE_HEADER_V1 (4 + H_COUNT * 4 + 8)
#define STATE_HEADER (STATE_HEADER_V1 + 8)

/* Bytes a state spends per entry: id, position and its row of every
 * plane of every layer. */
static size_t state_entry_bytes(const sep_cache_t *c)
{
    size_t planes = c->k_raw ? 3 : 2;
    return sizeof(int32_t) + sizeof(int64_t) +
           (size_t)c->n_layers * planes * c->kv_dim * sizeof(float);
}

size_t sep_cache_state_bytes(const sep_cache_t *c)
{
    return STATE_HEADER + (size_t)c->n * state_entry_bytes(c);
}

int sep_cache_save(const sep_cache_t *c, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    size_t total = sep_cache_state_bytes(c);
    uint8_t *b = malloc(total);
    if (!b)
        return sep_fail(SEP_ENOMEM, "cache state: no memory for %zu bytes", total);
    int rc = sep_cache_save_to(c, b, total);
    if (rc) {
        free(b);
        return rc;
    }
    *buf = b;
    *len = total;
    return SEP_OK;
}

int sep_cache_save_to(const sep_cache_t *c, uint8_t *b, size_t cap)
{
    size_t n = (size_t)c->n, total = sep_cache_state_bytes(c);
    if (cap < total)
        return sep_fail(SEP_EINVAL, "cache state: %zu bytes, a buffer of %zu", total, cap);
    const sep_policy_t *po = &c->policy;
    const int32_t head[H_COUNT] = {
        [H_VERSION] = STATE_VERSION, [H_METHOD] = (int32_t)po->method, [H_A] = po->a,
        [H_S] = po->s, [H_W] = po->w, [H_C] = po->c, [H_SHIFT] = po->shift,
        [H_LAYERS] = c->n_layers, [H_KV_DIM] = c->kv_dim, [H_N] = c->n,
        [H_N_SEP] = c->n_sep, [H_RAW] = c->k_raw != NULL,
    };
    memcpy(b, STATE_MAGIC, 4);
    memcpy(b + 4, head, sizeof head);
    memcpy(b + 4 + sizeof head, &c->n_seen, sizeof c->n_seen);
    memcpy(b + STATE_HEADER_V1, &c->rope_off, sizeof c->rope_off);
    /* an empty cache may have no arrays at all */
    if (n) {
        uint8_t *p = b + STATE_HEADER;
        size_t rows = n * c->kv_dim * sizeof(float), at = (size_t)c->lo * c->kv_dim;
        memcpy(p, c->ids + c->lo, n * sizeof *c->ids);
        p += n * sizeof *c->ids;
        memcpy(p, c->pos + c->lo, n * sizeof *c->pos);
        p += n * sizeof *c->pos;
        for (int l = 0; l < c->n_layers; l++) {
            const float *planes[3] = { c->k[l], c->k_raw ? c->k_raw[l] : NULL, c->v[l] };
            for (int i = 0; i < 3; i++)
                if (planes[i]) {
                    c->be->download(c->be, p, planes[i] + at, rows);
                    p += rows;
                }
        }
    }
    return SEP_OK;
}

int sep_cache_state_seen(const uint8_t *buf, size_t len, int64_t *n_seen)
{
    if (len < STATE_HEADER_V1 || memcmp(buf, STATE_MAGIC, 4) != 0)
        return sep_fail(SEP_EFORMAT, "cache state: %zu bytes without its header", len);
    memcpy(n_seen, buf + 4 + H_COUNT * 4, sizeof *n_seen);
    return SEP_OK;
}

int sep_cache_restore(sep_cache_t *c, const uint8_t *buf, size_t len)
{
    /* everything is checked before c is touched, so a failure leaves it as it was */
    if (len < STATE_HEADER_V1)
        return sep_fail(SEP_EFORMAT, "cache state: %zu bytes, shorter than the %d-byte header",
                        len, STATE_HEADER_V1);
    if (memcmp(buf, STATE_MAGIC, 4) != 0)
        return sep_fail(SEP_EFORMAT, "cache state: bad magic");
    int32_t h[H_COUNT];
    int64_t n_seen, rope_off = 0;
    memcpy(h, buf + 4, sizeof h);
    memcpy(&n_seen, buf + 4 + sizeof h, sizeof n_seen);
    if (h[H_VERSION] != STATE_VERSION && h[H_VERSION] != STATE_VERSION_SLOTS)
        return sep_fail(SEP_EFORMAT, "cache state: version %d, expected %d or %d",
                        h[H_VERSION], STATE_VERSION_SLOTS, STATE_VERSION);
    int v1 = h[H_VERSION] == STATE_VERSION_SLOTS;
    size_t header = v1 ? STATE_HEADER_V1 : STATE_HEADER;
    if (len < header)
        return sep_fail(SEP_EFORMAT, "cache state: %zu bytes, shorter than the %zu-byte header",
                        len, header);
    if (!v1)
        memcpy(&rope_off, buf + STATE_HEADER_V1, sizeof rope_off);

    const sep_policy_t *po = &c->policy;
    static const char *names[H_COUNT] = {
        [H_METHOD] = "method", [H_A] = "a", [H_S] = "s", [H_W] = "w", [H_C] = "c",
        [H_SHIFT] = "shift", [H_LAYERS] = "n_layers", [H_KV_DIM] = "kv_dim",
        [H_RAW] = "has_raw",
    };
    const int32_t mine[H_COUNT] = {
        [H_METHOD] = (int32_t)po->method, [H_A] = po->a, [H_S] = po->s, [H_W] = po->w,
        [H_C] = po->c, [H_SHIFT] = po->shift, [H_LAYERS] = c->n_layers,
        [H_KV_DIM] = c->kv_dim, [H_RAW] = c->k_raw != NULL,
    };
    for (int i = 0; i < H_COUNT; i++)
        if (names[i] && h[i] != mine[i])
            return sep_fail(SEP_EFORMAT, "cache state: %s=%d, this cache has %s=%d",
                            names[i], h[i], names[i], mine[i]);

    /* counts the policy allows: an evicting cache holds at most c entries
     * between chunks, a full one every token seen; separators sit in
     * [a, a + n_sep) */
    int n = h[H_N], n_sep = h[H_N_SEP];
    int evict = po->method != SEP_METHOD_FULL;
    if (n < 0 || n_seen < n || (evict ? n > po->c : n_seen != n))
        return sep_fail(SEP_EFORMAT, "cache state: n=%d entries after %lld tokens under %s",
                        n, (long long)n_seen, sep_method_name(po->method));
    if (n_sep < 0 || n_sep > (po->method == SEP_METHOD_SEPLLM ? po->s : 0) ||
        (n_sep && (long)po->a + n_sep > n))
        return sep_fail(SEP_EFORMAT, "cache state: n_sep=%d with n=%d under %s s=%d",
                        n_sep, n, sep_method_name(po->method), po->s);
    size_t entry = state_entry_bytes(c), body = len - header;
    if (body % entry || body / entry != (size_t)n)
        return sep_fail(SEP_EFORMAT, "cache state: %zu bytes do not hold the header and "
                        "%d entries of %zu bytes", len, n, entry);
    const uint8_t *ids = buf + header, *pos = ids + (size_t)n * sizeof(int32_t);
    /* stream positions ascend and lie before n_seen: rotary positions and
     * the next chunk's come from them; the recent region is the newest
     * tokens, one after another */
    int prefix = prefix_of(po, n, n_sep);
    int64_t prev = -1;
    for (int i = 0; i < n; i++) {
        int64_t p;
        memcpy(&p, pos + (size_t)i * sizeof p, sizeof p);
        if (p <= prev || p >= n_seen)
            return sep_fail(SEP_EFORMAT, "cache state: entry %d at position %lld: positions "
                            "must ascend below n_seen=%lld", i, (long long)p,
                            (long long)n_seen);
        prev = p;
    }
    for (int i = prefix; i < n; i++) {
        int64_t p;
        memcpy(&p, pos + (size_t)i * sizeof p, sizeof p);
        if (p != n_seen - (n - i))
            return sep_fail(SEP_EFORMAT, "cache state: entry %d at position %lld: the recent "
                            "entries from slot %d on must be the last %d tokens before %lld",
                            i, (long long)p, prefix, n - prefix, (long long)n_seen);
    }
    /* version 1 rotated slot i at i: the recent region's first slot,
     * `prefix`, at its stream position less rope_off */
    int64_t first_recent = n_seen - (n - prefix);
    if (v1 && po->shift)
        rope_off = first_recent - prefix;
    if (po->shift ? rope_off < 0 || rope_off > first_recent - prefix : rope_off != 0)
        return sep_fail(SEP_EFORMAT, "cache state: rope_off=%lld with shift=%d and %lld "
                        "tokens evicted", (long long)rope_off, po->shift,
                        (long long)(first_recent - prefix));
    int rc = sep_cache_reserve(c, n);
    if (rc)
        return rc;

    if (n) {
        const uint8_t *p = pos + (size_t)n * sizeof(int64_t);
        size_t rows = (size_t)n * c->kv_dim * sizeof(float);
        memcpy(c->ids, ids, (size_t)n * sizeof *c->ids);
        memcpy(c->pos, pos, (size_t)n * sizeof *c->pos);
        for (int l = 0; l < c->n_layers; l++) {
            float *planes[3] = { c->k[l], c->k_raw ? c->k_raw[l] : NULL, c->v[l] };
            for (int i = 0; i < 3; i++)
                if (planes[i]) {
                    c->be->upload(c->be, planes[i], p, rows);
                    p += rows;
                }
        }
    }
    c->lo = 0;
    c->n = n;
    c->n_sep = n_sep;
    c->n_seen = n_seen;
    c->rope_off = rope_off;
    return SEP_OK;
}
