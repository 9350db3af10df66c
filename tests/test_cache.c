/* test_cache: the compaction plan against a literal per-token simulation
 * of the reference's eviction (one token per step, evict after the step
 * once the cache holds more than c), the policy checks, and saving and
 * restoring a cache's state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cache.h"
#include "err.h"

#define VOCAB 50

/* The reference's per-token loop over metadata only. */
typedef struct {
    int32_t ids[4096];
    int64_t pos[4096];
    int64_t rot[4096]; /* the rope position each entry's key is rotated at */
    int n, sep_ex;
    int64_t t;
    /* the separators evicted: by the last step (their indices before it
     * compacted) and over the whole stream (ids and positions, in order) */
    int32_t step_ev[4096];
    int step_n_ev;
    int32_t ev_id[4096];
    int64_t ev_pos[4096];
    int n_ev;
} ref_t;

/* Append token id, return the cache size after it, then evict. */
static int ref_step(ref_t *r, const sep_policy_t *p, int32_t id, int64_t *rope_pos)
{
    r->step_n_ev = 0;
    *rope_pos = p->shift ? r->n : r->t;
    r->ids[r->n] = id;
    r->rot[r->n] = r->t; /* a fresh cache: its new keys at their stream position */
    r->pos[r->n++] = r->t++;
    int size = r->n;
    if (p->method == SEP_METHOD_FULL || r->n <= p->c)
        return size;
    int keep[4096], k = 0;
    for (int i = 0; i < p->a; i++)
        keep[k++] = i;
    if (p->method == SEP_METHOD_STREAMING) {
        for (int i = r->n - (p->c - p->a); i < r->n; i++)
            keep[k++] = i;
    } else {
        /* as sepllm_ref.py's evict(): sep_ex starts at 0 meaning a */
        int sep_ex = r->sep_ex > 0 ? r->sep_ex : p->a, first = sep_ex == p->a;
        int sep[4096], ns = 0;
        if (!first)
            for (int i = p->a; i < sep_ex; i++)
                sep[ns++] = i;
        for (int i = sep_ex; i < r->n - p->w; i++)
            if (p->is_sep[r->ids[i]])
                sep[ns++] = i;
        int skip = ns > p->s ? ns - p->s : 0;
        /* the oldest separators beyond s are dropped for good */
        for (int i = 0; i < skip; i++) {
            assert_true(r->n_ev < 4096);
            r->step_ev[r->step_n_ev++] = sep[i];
            r->ev_id[r->n_ev] = r->ids[sep[i]];
            r->ev_pos[r->n_ev++] = r->pos[sep[i]];
        }
        for (int i = skip; i < ns; i++)
            keep[k++] = sep[i];
        r->sep_ex = p->a + (ns - skip);
        for (int i = r->n - p->w; i < r->n; i++)
            keep[k++] = i;
    }
    for (int i = 0; i < k; i++) {
        r->ids[i] = r->ids[keep[i]];
        r->pos[i] = r->pos[keep[i]];
        r->rot[i] = r->rot[keep[i]];
    }
    r->n = k;
    return size;
}

static uint8_t is_sep[VOCAB];

/* k pseudo-random ids below VOCAB from the generator state *seed */
static void rand_ids(int32_t *ids, int k, unsigned *seed)
{
    for (int i = 0; i < k; i++) {
        *seed = *seed * 1103515245u + 12345u;
        ids[i] = (int32_t)((*seed >> 16) % VOCAB);
    }
}

/* Slots of the reference's prefix (initial and separators). */
static int ref_prefix(const sep_policy_t *p, const ref_t *r)
{
    if (p->method == SEP_METHOD_FULL)
        return 0;
    int pre = p->a + (p->method == SEP_METHOD_SEPLLM && r->sep_ex > 0 ? r->sep_ex - p->a : 0);
    return pre < r->n ? pre : r->n;
}

/* The compaction that ended sg: the prefix the reference keeps, from
 * rows at or before the ones it goes to (in ascending order), the
 * recent region left where it is; its keys re-rotated at pre_rope +
 * slot (shift on) in the reference's rotations. */
static void check_compaction(const sep_policy_t *p, const sep_segment_t *sg, ref_t *ref)
{
    int pre = ref_prefix(p, ref), m = sg->n_past + sg->len;
    assert_int_equal(sg->n_pre, pre);
    /* the recent region's first row stays */
    assert_int_equal(sg->lo_after + pre, sg->lo + m - (ref->n - pre));
    for (int k = 0; k < pre; k++) {
        assert_true(sg->pre[k] >= sg->lo && sg->pre[k] <= sg->lo_after + k);
        if (k)
            assert_true(sg->pre[k] > sg->pre[k - 1]);
        if (p->shift)
            ref->rot[k] = sg->pre_rope + k;
    }
}

/* Shift on: slot i's key at base + i for one base; off: at its stream
 * position. */
static void check_rotations(const sep_policy_t *p, const ref_t *ref)
{
    for (int i = 0; i < ref->n; i++)
        if (p->shift)
            assert_int_equal(ref->rot[i] - i, ref->rot[0]);
        else
            assert_int_equal(ref->rot[i], ref->pos[i]);
}

/* The separators segment sg of plan evicts: what the reference's step
 * that ended it evicted, each a separator from between the initial region
 * and the window, in order. */
static void check_evicted(const sep_policy_t *p, const sep_plan_t *plan, const sep_segment_t *sg,
                          const ref_t *ref)
{
    int m = sg->n_past + sg->len; /* entries before the compaction */
    assert_int_equal(sg->n_evict, ref->step_n_ev);
    assert_true(sg->evict_at >= 0 && sg->evict_at + sg->n_evict <= plan->n_evict);
    for (int e = 0; e < sg->n_evict; e++) {
        int at = sg->evict_at + e, idx = plan->evict_idx[at] - sg->lo;
        assert_int_equal(idx, ref->step_ev[e]);
        assert_true(idx >= p->a && idx < m - p->w);
        assert_true(p->is_sep[plan->evict_id[at]]);
        if (e)
            assert_true(plan->evict_idx[at] > plan->evict_idx[at - 1]);
    }
}

/* Plan a stream of n random ids in chunks of `chunk` against the
 * reference; check rope positions, sizes, the separators evicted and the
 * metadata after each; return how many separators the stream evicted. */
static int check_stream(sep_policy_t p, int n, int chunk, unsigned seed)
{
    sep_cache_t *c;
    sep_backend_t *be;
    assert_int_equal(sep_backend_cpu_new(&be, 1), 0);
    assert_int_equal(sep_cache_new(&c, be, 1, 1, &p), 0);
    ref_t *ref = calloc(1, sizeof *ref);
    assert_non_null(ref);
    sep_plan_t plan = { 0 };
    int32_t ids[600], *got_id = malloc(sizeof *got_id * n);
    int64_t *got_pos = malloc(sizeof *got_pos * n);
    int n_got = 0;
    assert_true(got_id && got_pos);
    for (int done = 0; done < n; done += chunk) {
        int k = n - done < chunk ? n - done : chunk;
        rand_ids(ids, k, &seed);
        assert_int_equal(sep_cache_plan(c, ids, k, 0, &plan), 0);
        assert_int_equal(plan.n_tokens, k);
        int covered = 0;
        for (int s = 0; s < plan.n_seg; s++) {
            const sep_segment_t *sg = &plan.seg[s];
            assert_int_equal(sg->start, covered);
            for (int i = 0; i < sg->len; i++) {
                int64_t want_pos;
                int size = ref_step(ref, &p, ids[sg->start + i], &want_pos);
                assert_int_equal(sg->n_past + i + 1, size);
                (void)want_pos;
                /* with shift on a key is rotated at its stream position (the
                 * cache started fresh: rope_off 0), and a compaction moves the
                 * prefix's to just below the recent region's: slot i is at
                 * base + i for one base, as in the reference's slot i at i */
                assert_int_equal(plan.rope_pos[sg->start + i], c->n_seen + sg->start + i);
                /* a compaction ends exactly the segments that exceed c */
                int compacts = p.method != SEP_METHOD_FULL && size > p.c;
                assert_int_equal(compacts, i == sg->len - 1 && sg->n_keep > 0);
                if (compacts) {
                    assert_int_equal(sg->n_keep, ref->n);
                    check_compaction(&p, sg, ref);
                    check_evicted(&p, &plan, sg, ref);
                } else if (i == sg->len - 1) {
                    assert_int_equal(sg->n_evict, 0);
                }
                check_rotations(&p, ref);
            }
            covered += sg->len;
        }
        assert_int_equal(covered, k);
        assert_int_equal(plan.n, ref->n);
        assert_true(plan.max_entries <= (p.method == SEP_METHOD_FULL ? done + k : p.c + 1));
        /* nothing evicted yet: the evict arrays were never allocated */
        if (ref->n_ev == 0)
            assert_int_equal(plan.evict_cap, 0);
        assert_true(n_got + plan.n_evict <= ref->n_ev);
        memcpy(got_id + n_got, plan.evict_id, sizeof *got_id * plan.n_evict);
        memcpy(got_pos + n_got, plan.evict_pos, sizeof *got_pos * plan.n_evict);
        n_got += plan.n_evict;
        assert_true(plan.rows <= (p.method == SEP_METHOD_FULL ? done + k
                                                               : SEP_CACHE_ROWS(p.c)));
        assert_int_equal(sep_cache_reserve(c, plan.rows), 0);
        sep_cache_commit(c, &plan);
        assert_int_equal(c->n, ref->n);
        assert_true(c->lo >= 0 && c->lo + c->n <= c->cap);
        assert_memory_equal(c->ids + c->lo, ref->ids, sizeof(int32_t) * ref->n);
        assert_memory_equal(c->pos + c->lo, ref->pos, sizeof(int64_t) * ref->n);
        assert_int_equal(sep_cache_prefix(c), ref_prefix(&p, ref));
        assert_int_equal(c->n_seen, done + k);
    }
    /* the union of every compaction's evicted separators is the
     * reference's, in order; none of them is still held */
    assert_int_equal(n_got, ref->n_ev);
    if (n_got) {
        assert_memory_equal(got_id, ref->ev_id, sizeof *got_id * n_got);
        assert_memory_equal(got_pos, ref->ev_pos, sizeof *got_pos * n_got);
    }
    for (int e = 0; e < n_got; e++) {
        assert_true(e == 0 || got_pos[e] > got_pos[e - 1]);
        for (int i = 0; i < c->n; i++)
            assert_true(c->pos[c->lo + i] != got_pos[e]);
    }
    sep_plan_free(&plan);
    free(got_id);
    free(got_pos);
    free(ref);
    sep_cache_destroy(&c);
    sep_backend_destroy(&be);
    return n_got;
}

static sep_policy_t sepllm(int a, int s, int w, int c, int shift)
{
    return (sep_policy_t){ .method = SEP_METHOD_SEPLLM, .a = a, .s = s, .w = w, .c = c,
                           .shift = shift, .is_sep = is_sep, .n_vocab = VOCAB };
}

static void test_sepllm_plans(void **state)
{
    (void)state;
    const int chunks[] = { 1, 3, 64, 500 };
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        check_stream(sepllm(4, 16, 32, 64, 1), 1500, chunks[i], 1 + i);
        check_stream(sepllm(0, 16, 32, 64, 1), 1500, chunks[i], 11 + i);
        check_stream(sepllm(4, 16, 32, 64, 0), 1500, chunks[i], 21 + i);
        check_stream(sepllm(2, 3, 5, 11, 1), 700, chunks[i], 31 + i);  /* separators overflow s */
        check_stream(sepllm(1, 40, 8, 50, 1), 700, chunks[i], 41 + i); /* s rarely fills */
    }
}

/* The separators the plans evict, chunk by chunk: each compaction's are
 * the reference's (by index before it, id and position), and over the
 * stream they are every separator the reference dropped, in order. */
static void test_sepllm_evicted(void **state)
{
    (void)state;
    static const int shapes[][4] = { /* a, s, w, c */
        { 2, 8, 16, 40 }, { 4, 16, 32, 64 }, { 0, 3, 5, 11 }, { 2, 1, 3, 7 }, { 1, 40, 8, 50 },
    };
    const int chunks[] = { 1, 7, 512 };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int shift = 0; shift < 2; shift++)
            for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
                const int *x = shapes[i];
                int got = check_stream(sepllm(x[0], x[1], x[2], x[3], shift), 1500, chunks[k],
                                       (unsigned)(100 + 10 * i + k));
                if (got == 0)
                    fail_msg("a=%d s=%d w=%d c=%d: nothing evicted, nothing checked", x[0],
                             x[1], x[2], x[3]);
            }
}

static void test_streaming_plans(void **state)
{
    (void)state;
    sep_policy_t p = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 };
    /* StreamingLLM drops tokens, separators or not, and archives none */
    assert_int_equal(check_stream(p, 1000, 1, 5), 0);
    assert_int_equal(check_stream(p, 1000, 77, 6), 0);
    p.shift = 0;
    assert_int_equal(check_stream(p, 1000, 500, 7), 0);
}

static void test_full_plans(void **state)
{
    (void)state;
    sep_policy_t p = { .method = SEP_METHOD_FULL, .shift = 1 };
    assert_int_equal(check_stream(p, 2000, 500, 8), 0);
    assert_int_equal(check_stream(p, 300, 1, 9), 0);
}

static void expect_policy_error(sep_policy_t p, const char *needle)
{
    assert_int_equal(sep_policy_check(&p), SEP_EINVAL);
    if (!strstr(sep_errmsg(), needle))
        fail_msg("'%s' does not say '%s'", sep_errmsg(), needle);
}

static void test_policy_checks(void **state)
{
    (void)state;
    assert_int_equal(sep_policy_check(&(sep_policy_t){ .method = SEP_METHOD_FULL }), 0);
    expect_policy_error(sepllm(4, 32, 224, 260, 1), "a + s + w = 260 must be below c = 260");
    expect_policy_error(sepllm(-1, 32, 224, 324, 1), "a, s, w must be >= 0");
    sep_policy_t p = sepllm(4, 32, 224, 324, 1);
    p.is_sep = NULL;
    expect_policy_error(p, "no separator set");
    sep_policy_t st = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 100, .c = 64 };
    expect_policy_error(st, "the window w=100 must be c - a = 60");
    sep_method_t m;
    assert_int_equal(sep_method_parse("sepllm", &m), 0);
    assert_int_equal(m, SEP_METHOD_SEPLLM);
    assert_int_equal(sep_method_parse("h2o", &m), SEP_EINVAL);
    assert_non_null(strstr(sep_errmsg(), "h2o"));
}

/* ---- state ------------------------------------------------------------ */

/* Offsets of the state's fields (the layout in cache.h). */
enum { ST_VERSION = 4, ST_N = 40, ST_N_SEP = 44, ST_RAW = 48, ST_N_SEEN = 52, ST_ROPE_OFF = 60,
       ST_IDS = 68 };

/* A row value of entry `pos` of a plane (0 k, 1 k_raw, 2 v) of a layer:
 * every bit pattern differs, so a misplaced row shows. */
static float row_value(int layer, int plane, int64_t pos, int d, unsigned salt)
{
    uint32_t x = (uint32_t)pos * 2654435761u ^ (uint32_t)(layer * 977 + plane * 131 + d) * 40503u ^ salt;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    return (float)(int32_t)x / 1024.0f;
}

/* Rows [at, at + n) of every plane of every layer of c := the tokens at
 * stream positions spos, spos + 1, ... (row_value, as fill_cache). */
static void write_tokens(sep_cache_t *c, int at, int64_t spos, int n, unsigned seed)
{
    float row[64];
    int kv = c->kv_dim;
    for (int i = 0; i < n; i++)
        for (int l = 0; l < c->n_layers; l++) {
            float *planes[3] = { c->k[l], c->k_raw ? c->k_raw[l] : NULL, c->v[l] };
            for (int b = 0; b < 3; b++) {
                if (!planes[b])
                    continue;
                for (int d = 0; d < kv; d++)
                    row[d] = row_value(l, b, spos + i, d, seed);
                c->be->upload(c->be, planes[b] + (size_t)(at + i) * kv, row, sizeof(float) * kv);
            }
        }
}

/* Run n random ids through c in chunks as the model does: each segment's
 * K/V rows written at its slots, then its compaction on every layer; with
 * shift on, moved keys are rebuilt from their raw keys (the model would
 * re-rotate them: a copy stands in). */
static void fill_cache(sep_cache_t *c, int n, int chunk, unsigned seed)
{
    sep_backend_t *be = c->be;
    sep_plan_t plan = { 0 };
    int32_t ids[256];
    int kv = c->kv_dim;
    assert_true(chunk <= 256 && kv <= 64);
    for (int done = 0; done < n; done += chunk) {
        int k = n - done < chunk ? n - done : chunk;
        rand_ids(ids, k, &seed);
        assert_int_equal(sep_cache_plan(c, ids, k, 0, &plan), 0);
        assert_int_equal(sep_cache_reserve(c, plan.rows), 0);
        for (int s = 0; s < plan.n_seg; s++) {
            const sep_segment_t *sg = &plan.seg[s];
            sep_rows_t moves[3];
            for (int l = 0; l < c->n_layers; l++)
                be->copy_rows(be, moves, sep_cache_move_copies(c, l, sg, moves));
            write_tokens(c, sg->lo + sg->n_past, c->n_seen + sg->start, sg->len, seed);
            if (!sg->n_keep)
                continue;
            /* every layer's compaction in one call */
            sep_gather_t *g = malloc(sizeof *g * 2 * c->n_layers);
            assert_non_null(g);
            int ng = 0;
            for (int l = 0; l < c->n_layers; l++)
                ng += sep_cache_compact_gathers(c, l, sg, g + ng);
            be->gather_rows(be, g, ng);
            free(g);
            for (int l = 0; l < c->n_layers; l++) {
                if (c->k_raw && sg->n_pre > 0) {
                    size_t at = (size_t)sg->lo_after * kv;
                    sep_rows_t raw = { c->k[l] + at, c->k_raw[l] + at, kv, kv, sg->n_pre, kv };
                    be->copy_rows(be, &raw, 1);
                }
            }
        }
        sep_cache_commit(c, &plan);
    }
    sep_plan_free(&plan);
}

/* n rows of a backend buffer in host memory (freed by the caller). */
static float *rows_of(sep_backend_t *be, const float *buf, int n, int kv)
{
    size_t bytes = sizeof(float) * ((size_t)n * kv + 1);
    float *h = malloc(bytes);
    assert_non_null(h);
    if (n)
        be->download(be, h, buf, bytes - sizeof(float));
    return h;
}

static void assert_rows_equal(sep_backend_t *be, const float *a, const float *b, int n, int kv)
{
    float *ha = rows_of(be, a, n, kv), *hb = rows_of(be, b, n, kv);
    assert_memory_equal(ha, hb, sizeof(float) * (size_t)n * kv);
    free(ha);
    free(hb);
}

/* Equal field by field and entry by entry, bitwise (wherever their rows
 * lie). */
static void assert_caches_equal(const sep_cache_t *a, const sep_cache_t *b)
{
    assert_int_equal(a->policy.method, b->policy.method);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->kv_dim, b->kv_dim);
    assert_int_equal(a->n, b->n);
    assert_int_equal(a->n_sep, b->n_sep);
    assert_int_equal(a->n_seen, b->n_seen);
    assert_int_equal(a->rope_off, b->rope_off);
    assert_true(b->lo >= 0 && b->lo + b->n <= b->cap);
    assert_int_equal(a->k_raw != NULL, b->k_raw != NULL);
    if (!a->n)
        return;
    assert_memory_equal(a->ids + a->lo, b->ids + b->lo, sizeof(int32_t) * a->n);
    assert_memory_equal(a->pos + a->lo, b->pos + b->lo, sizeof(int64_t) * a->n);
    size_t ra = (size_t)a->lo * a->kv_dim, rb = (size_t)b->lo * b->kv_dim;
    for (int l = 0; l < a->n_layers; l++) {
        assert_rows_equal(a->be, a->k[l] + ra, b->k[l] + rb, a->n, a->kv_dim);
        assert_rows_equal(a->be, a->v[l] + ra, b->v[l] + rb, a->n, a->kv_dim);
        if (a->k_raw)
            assert_rows_equal(a->be, a->k_raw[l] + ra, b->k_raw[l] + rb, a->n, a->kv_dim);
    }
}

/* Save a cache fed n tokens; restore it into a fresh cache and into one
 * holding another stream; both equal the original, and save the same. */
static void check_round_trip(sep_policy_t p, int n, int chunk, unsigned seed)
{
    sep_backend_t *be;
    sep_cache_t *c, *fresh, *used;
    assert_int_equal(sep_backend_cpu_new(&be, 1), 0);
    assert_int_equal(sep_cache_new(&c, be, 3, 8, &p), 0);
    assert_int_equal(sep_cache_new(&fresh, be, 3, 8, &p), 0);
    assert_int_equal(sep_cache_new(&used, be, 3, 8, &p), 0);
    fill_cache(c, n, chunk, seed);
    fill_cache(used, n / 3 + 5, 7, seed + 100);
    uint8_t *buf, *again;
    size_t len, len2;
    assert_int_equal(sep_cache_save(c, &buf, &len), 0);
    sep_cache_t *targets[2] = { fresh, used };
    for (int t = 0; t < 2; t++) {
        assert_int_equal(sep_cache_restore(targets[t], buf, len), 0);
        assert_caches_equal(c, targets[t]);
        assert_int_equal(sep_cache_save(targets[t], &again, &len2), 0);
        assert_int_equal(len2, len);
        assert_memory_equal(again, buf, len);
        free(again);
    }
    /* the restored stream goes on as the original does */
    fill_cache(c, 50, 9, seed + 7);
    fill_cache(used, 50, 9, seed + 7);
    assert_caches_equal(c, used);
    free(buf);
    sep_cache_destroy(&c);
    sep_cache_destroy(&fresh);
    sep_cache_destroy(&used);
    sep_backend_destroy(&be);
}

static void test_state_round_trip(void **state)
{
    (void)state;
    sep_policy_t full = { .method = SEP_METHOD_FULL, .shift = 1 };
    sep_policy_t st = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 };
    check_round_trip(full, 300, 37, 1);
    check_round_trip(full, 0, 1, 2); /* an empty cache */
    check_round_trip(st, 300, 37, 3);
    st.shift = 0;
    check_round_trip(st, 301, 64, 4);
    check_round_trip(sepllm(4, 16, 32, 64, 1), 400, 37, 5);
    check_round_trip(sepllm(4, 16, 32, 64, 0), 400, 100, 6);
    check_round_trip(sepllm(2, 3, 5, 11, 1), 300, 1, 7);
    check_round_trip(sepllm(2, 3, 5, 11, 1), 5, 5, 8); /* before any compaction */
}


/* Rows idx[0..n) (rows from idx[0] on when idx is NULL) of a's planes
 * that hold unrotated keys (k_raw, else k) and values equal rows
 * [lo, lo + n) of b's, on every layer; all three planes when all. */
static void assert_rows_at(const sep_cache_t *a, const int32_t *idx, int from,
                           const sep_cache_t *b, int lo, int n, int all)
{
    int kv = a->kv_dim;
    float x[64], y[64];
    for (int l = 0; l < a->n_layers; l++) {
        const float *pa[3] = { a->k[l], a->k_raw ? a->k_raw[l] : NULL, a->v[l] };
        const float *pb[3] = { b->k[l], b->k_raw ? b->k_raw[l] : NULL, b->v[l] };
        for (int p = 0; p < 3; p++) {
            if (!pa[p] || (p == 0 && a->k_raw && !all))
                continue; /* keys the model would re-rotate: a copy stands in */
            for (int i = 0; i < n; i++) {
                int ra = idx ? idx[i] : from + i;
                a->be->download(a->be, x, pa[p] + (size_t)ra * kv, sizeof(float) * kv);
                b->be->download(b->be, y, pb[p] + (size_t)(lo + i) * kv, sizeof(float) * kv);
                if (memcmp(x, y, sizeof(float) * kv) != 0)
                    fail_msg("layer %d plane %d: row %d of the run's cache is not row %d of "
                             "the cache compacted segment by segment", l, p, ra, lo + i);
            }
        }
    }
}

/* The compaction of segment sg applied to c (fill_cache's, from rows
 * pre; run: from rows src, the run's compactions before it not applied). */
static void apply_compaction(sep_cache_t *c, const sep_segment_t *sg, int run)
{
    sep_backend_t *be = c->be;
    int kv = c->kv_dim;
    for (int l = 0; l < c->n_layers; l++) {
        sep_gather_t g[2];
        be->gather_rows(be, g, run ? sep_cache_run_gathers(c, l, sg, g)
                                   : sep_cache_compact_gathers(c, l, sg, g));
        if (c->k_raw && sg->n_pre > 0) {
            size_t at = (size_t)sg->lo_after * kv;
            sep_rows_t raw = { c->k[l] + at, c->k_raw[l] + at, kv, kv, sg->n_pre, kv };
            be->copy_rows(be, &raw, 1);
        }
    }
}

/* A stream planned in runs (at most max_rows prefix rows a run) and run
 * as the model runs it, a run at a time (its tokens appended at once, its
 * last compaction alone applied, from the rows of its start), against the
 * same stream planned and run segment by segment: the same segments;
 * while a run goes, each segment's prefix is in the rows src names (and
 * its evicted separators where evict_src says), its window in its rows;
 * after each chunk both caches hold the same. Returns the runs of more
 * than one segment. */
static int check_runs(sep_policy_t p, int n, int chunk, int max_rows, unsigned seed)
{
    sep_backend_t *be;
    sep_cache_t *seg_c, *run_c;
    assert_int_equal(sep_backend_cpu_new(&be, 1), 0);
    assert_int_equal(sep_cache_new(&seg_c, be, 2, 8, &p), 0);
    assert_int_equal(sep_cache_new(&run_c, be, 2, 8, &p), 0);
    sep_plan_t ps = { 0 }, pr = { 0 };
    int32_t ids[256];
    int long_runs = 0;
    assert_true(chunk <= 256);
    for (int done = 0; done < n; done += chunk) {
        int k = n - done < chunk ? n - done : chunk;
        rand_ids(ids, k, &seed);
        assert_int_equal(sep_cache_plan(seg_c, ids, k, 0, &ps), 0);
        assert_int_equal(sep_cache_plan(run_c, ids, k, max_rows, &pr), 0);
        assert_int_equal(sep_cache_reserve(seg_c, ps.rows), 0);
        assert_int_equal(sep_cache_reserve(run_c, pr.rows), 0);
        assert_int_equal(ps.n_run, ps.n_seg);
        assert_int_equal(pr.n_seg, ps.n_seg);
        assert_int_equal(pr.n_pre_rows, ps.n_pre_rows);
        assert_int_equal(pr.n_evict, ps.n_evict);
        assert_int_equal(pr.run_first[0], 0);
        assert_int_equal(pr.run_first[pr.n_run], pr.n_seg);
        for (int s = 0; s < ps.n_seg; s++) {
            const sep_segment_t *a = &ps.seg[s], *b = &pr.seg[s];
            assert_true(a->start == b->start && a->len == b->len && a->n_past == b->n_past &&
                        a->lo == b->lo && a->move_from == b->move_from &&
                        a->n_keep == b->n_keep && a->lo_after == b->lo_after &&
                        a->n_pre == b->n_pre && a->pre_at == b->pre_at &&
                        a->n_evict == b->n_evict && a->evict_at == b->evict_at &&
                        (!p.shift || !a->n_pre || a->pre_rope == b->pre_rope));
            if (a->n_pre)
                assert_memory_equal(a->pre, b->pre, sizeof *a->pre * a->n_pre);
        }
        for (int r = 0; r < pr.n_run; r++) {
            int s0 = pr.run_first[r], s1 = pr.run_first[r + 1];
            assert_true(s1 > s0);
            long_runs += s1 - s0 > 1;
            /* a run starts where the entries move down, else only where
             * its prefixes would pass max_rows */
            for (int s = s0 + 1; s < s1; s++)
                assert_true(pr.seg[s].move_from < 0);
            int rows = 0;
            for (int s = s0; s + 1 < s1; s++)
                rows += pr.seg[s].n_pre;
            assert_true(rows <= max_rows);
            if (r > 0 && pr.seg[s0].move_from < 0) {
                int before = 0;
                for (int s = pr.run_first[r - 1]; s < s0; s++)
                    before += pr.seg[s].n_pre; /* the previous run's, its last's too */
                assert_true(before > max_rows);
            }
            const sep_segment_t *g0 = &pr.seg[s0], *gl = &pr.seg[s1 - 1];
            sep_rows_t moves[3];
            for (int l = 0; l < run_c->n_layers; l++)
                be->copy_rows(be, moves, sep_cache_move_copies(run_c, l, g0, moves));
            write_tokens(run_c, g0->lo + g0->n_past, run_c->n_seen + g0->start,
                         gl->start + gl->len - g0->start, seed);
            for (int s = s0; s < s1; s++) {
                const sep_segment_t *sg = &ps.seg[s];
                for (int l = 0; l < seg_c->n_layers; l++)
                    be->copy_rows(be, moves, sep_cache_move_copies(seg_c, l, sg, moves));
                write_tokens(seg_c, sg->lo + sg->n_past, seg_c->n_seen + sg->start, sg->len,
                             seed);
                int np = s > s0 ? pr.seg[s - 1].n_pre : 0;
                if (np)
                    assert_rows_at(run_c, pr.seg[s - 1].src, 0, seg_c, sg->lo, np, 0);
                /* the window: from its first row to the segment's last token */
                assert_rows_at(run_c, NULL, sg->lo + np, seg_c, sg->lo + np,
                               sg->n_past + sg->len - np, 1);
                for (int e = sg->evict_at; e < sg->evict_at + sg->n_evict; e++)
                    assert_rows_at(run_c, &pr.evict_src[e], 0, seg_c, ps.evict_idx[e], 1, 0);
                if (sg->n_keep)
                    apply_compaction(seg_c, sg, 0);
            }
            const sep_segment_t *f = gl->n_keep ? gl : gl - 1;
            if (f >= g0)
                apply_compaction(run_c, f, 1);
        }
        sep_cache_commit(seg_c, &ps);
        sep_cache_commit(run_c, &pr);
        assert_caches_equal(seg_c, run_c);
    }
    sep_plan_free(&ps);
    sep_plan_free(&pr);
    sep_cache_destroy(&seg_c);
    sep_cache_destroy(&run_c);
    sep_backend_destroy(&be);
    return long_runs;
}

static void test_runs(void **state)
{
    (void)state;
    sep_policy_t st = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 };
    sep_policy_t st0 = { .method = SEP_METHOD_STREAMING, .a = 0, .w = 30, .c = 30, .shift = 1 };
    struct {
        sep_policy_t p;
        int n, chunk, max_rows;
    } cases[] = {
        { st, 700, 200, 2048 }, { st, 700, 37, 10 }, { st, 300, 1, 2048 },
        { st0, 500, 100, 1 },
        { sepllm(4, 16, 32, 64, 1), 1500, 256, 2048 }, { sepllm(4, 16, 32, 64, 1), 1500, 200, 30 },
        { sepllm(2, 3, 5, 11, 1), 700, 64, 2048 }, { sepllm(2, 3, 5, 11, 1), 700, 50, 6 },
        { sepllm(1, 40, 8, 50, 1), 700, 100, 2048 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int shift = 0; shift < 2; shift++) {
            sep_policy_t p = cases[i].p;
            p.shift = shift;
            int got = check_runs(p, cases[i].n, cases[i].chunk, cases[i].max_rows,
                                 (unsigned)(300 + 10 * i + shift));
            if (cases[i].chunk > 1 && got == 0)
                fail_msg("case %zu: no run of several segments, nothing checked", i);
            if (cases[i].chunk == 1 && got != 0)
                fail_msg("case %zu: one-token chunks make runs of several segments", i);
        }
}

/* What sepd charges a session (sep_cache_cap_for, sep_cache_bytes) is
 * what its cache allocates, and bounds the state it saves. */
static void check_size(sep_policy_t p, int n)
{
    sep_backend_t *be;
    sep_cache_t *c;
    assert_int_equal(sep_backend_cpu_new(&be, 1), 0);
    assert_int_equal(sep_cache_new(&c, be, 3, 8, &p), 0);
    fill_cache(c, n, 37, 9);
    int want = p.method == SEP_METHOD_FULL ? n : SEP_CACHE_ROWS(p.c);
    assert_int_equal(c->cap, sep_cache_cap_for(&p, 0, want > 0 ? want : 1));
    int64_t row = 8 * 4 * 3 * (c->k_raw ? 3 : 2);
    assert_int_equal(sep_cache_bytes(&p, 3, 8, c->cap), (int64_t)c->cap * (row + 12));
    uint8_t *buf;
    size_t len;
    assert_int_equal(sep_cache_save(c, &buf, &len), 0);
    assert_true((int64_t)len <= sep_cache_bytes(&p, 3, 8, c->cap) + 68);
    free(buf);
    sep_cache_destroy(&c);
    sep_backend_destroy(&be);
}

static void test_cache_sizes(void **state)
{
    (void)state;
    sep_policy_t full = { .method = SEP_METHOD_FULL, .shift = 1, .c = 800 };
    sep_policy_t st = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 };
    check_size(full, 300);  /* 256 doubling: 512 */
    check_size(full, 1500); /* 2048 */
    check_size(st, 300);    /* 2 (c + 1) rows, with raw keys */
    st.shift = 0;
    check_size(st, 30);     /* 2 (c + 1) rows before it is full, no raw keys */
    check_size(sepllm(4, 16, 32, 64, 1), 400);
    assert_int_equal(sep_cache_cap_for(&full, 0, 1), 256);
    assert_int_equal(sep_cache_cap_for(&full, 512, 513), 1024);
}

/* A version 1 state (written before eviction kept the recent region in
 * place: no rope_off, keys rotated at their slots) of a cache fed n
 * tokens, from its version 2 one: it restores with the same entries and
 * rope_off = the first recent entry's stream position - the prefix, so
 * that slot i is at rope position i (shift on); 0 with shift off. */
static void check_version1(sep_policy_t p, int n, int chunk, unsigned seed)
{
    sep_backend_t *be;
    sep_cache_t *c, *back;
    assert_int_equal(sep_backend_cpu_new(&be, 1), 0);
    assert_int_equal(sep_cache_new(&c, be, 2, 8, &p), 0);
    assert_int_equal(sep_cache_new(&back, be, 2, 8, &p), 0);
    fill_cache(c, n, chunk, seed);
    uint8_t *buf;
    size_t len;
    assert_int_equal(sep_cache_save(c, &buf, &len), 0);
    uint8_t *v1 = malloc(len - 8);
    assert_non_null(v1);
    memcpy(v1, buf, ST_ROPE_OFF);
    memcpy(v1 + ST_ROPE_OFF, buf + ST_IDS, len - ST_IDS);
    int32_t one = 1;
    memcpy(v1 + ST_VERSION, &one, 4);
    int64_t seen;
    assert_int_equal(sep_cache_state_seen(v1, len - 8, &seen), 0);
    assert_int_equal(seen, n);
    assert_int_equal(sep_cache_restore(back, v1, len - 8), 0);
    int pre = sep_cache_prefix(c);
    int64_t first_recent = c->n_seen - (c->n - pre);
    assert_int_equal(back->rope_off, p.shift ? first_recent - pre : 0);
    if (p.shift)
        assert_int_equal(sep_cache_rope_base(back), 0);
    c->rope_off = back->rope_off; /* the one field version 1 did not hold */
    assert_caches_equal(c, back);
    /* and it goes on as the original does */
    fill_cache(c, 60, 7, seed + 3);
    fill_cache(back, 60, 7, seed + 3);
    assert_caches_equal(c, back);
    free(v1);
    free(buf);
    sep_cache_destroy(&c);
    sep_cache_destroy(&back);
    sep_backend_destroy(&be);
}

static void test_state_version1(void **state)
{
    (void)state;
    sep_policy_t full = { .method = SEP_METHOD_FULL, .shift = 1 };
    sep_policy_t st = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 };
    check_version1(full, 100, 37, 1);
    check_version1(st, 300, 37, 2);
    st.shift = 0;
    check_version1(st, 300, 64, 3);
    check_version1(sepllm(4, 16, 32, 64, 1), 400, 37, 4);
    check_version1(sepllm(4, 16, 32, 64, 0), 400, 1, 5);
    check_version1(sepllm(2, 3, 5, 11, 1), 3, 3, 6); /* fewer entries than a + ... */
}

/* A small sepllm state (2 layers, kv_dim 3, 40 tokens), and a target
 * cache holding another stream with its state as saved before. */
typedef struct {
    sep_backend_t *be;
    sep_cache_t *src, *dst;
    uint8_t *buf, *dst_state;
    size_t len, dst_len;
} state_fx_t;

static void fx_open(state_fx_t *f)
{
    sep_policy_t p = sepllm(2, 3, 5, 11, 1);
    assert_int_equal(sep_backend_cpu_new(&f->be, 1), 0);
    assert_int_equal(sep_cache_new(&f->src, f->be, 2, 3, &p), 0);
    assert_int_equal(sep_cache_new(&f->dst, f->be, 2, 3, &p), 0);
    fill_cache(f->src, 40, 6, 11);
    fill_cache(f->dst, 23, 4, 12);
    assert_true(f->src->n_sep > 0);
    assert_int_equal(sep_cache_save(f->src, &f->buf, &f->len), 0);
    assert_int_equal(sep_cache_save(f->dst, &f->dst_state, &f->dst_len), 0);
}

static void fx_close(state_fx_t *f)
{
    free(f->buf);
    free(f->dst_state);
    sep_cache_destroy(&f->src);
    sep_cache_destroy(&f->dst);
    sep_backend_destroy(&f->be);
}

/* c's state is still the one saved in `state`. */
static void assert_state_is(const sep_cache_t *c, const uint8_t *state, size_t len)
{
    uint8_t *now;
    size_t now_len;
    assert_int_equal(sep_cache_save(c, &now, &now_len), 0);
    assert_int_equal(now_len, len);
    assert_memory_equal(now, state, len);
    free(now);
}

/* Restoring buf fails with SEP_EFORMAT, a message saying `needle`, and
 * leaves the target as it was. */
static void expect_bad_state(sep_cache_t *target, const uint8_t *buf, size_t len,
                             const char *needle)
{
    uint8_t *before;
    size_t before_len;
    assert_int_equal(sep_cache_save(target, &before, &before_len), 0);
    assert_int_equal(sep_cache_restore(target, buf, len), SEP_EFORMAT);
    if (!strstr(sep_errmsg(), needle))
        fail_msg("'%s' does not say '%s'", sep_errmsg(), needle);
    assert_state_is(target, before, before_len);
    free(before);
}

static void test_state_truncated(void **state)
{
    (void)state;
    state_fx_t f;
    fx_open(&f);
    for (size_t len = 0; len < f.len; len++) {
        assert_int_equal(sep_cache_restore(f.dst, f.buf, len), SEP_EFORMAT);
        assert_state_is(f.dst, f.dst_state, f.dst_len);
    }
    /* oversized: one byte more, and a whole entry more */
    size_t entry = 12 + 2 * 3 * 3 * sizeof(float);
    uint8_t *big = calloc(1, f.len + entry);
    assert_non_null(big);
    memcpy(big, f.buf, f.len);
    expect_bad_state(f.dst, big, f.len + 1, "bytes do not hold");
    expect_bad_state(f.dst, big, f.len + entry, "bytes do not hold");
    free(big);
    assert_int_equal(sep_cache_restore(f.dst, f.buf, f.len), 0);
    assert_caches_equal(f.src, f.dst);
    fx_close(&f);
}

/* A state written into a buffer of the caller's (a worker's staging
 * buffer) is the state sep_cache_save writes, and a short buffer is
 * refused untouched. */
static void test_state_save_to(void **state)
{
    (void)state;
    state_fx_t f;
    fx_open(&f);
    assert_int_equal(sep_cache_state_bytes(f.src), f.len);
    uint8_t *b = malloc(f.len + 8);
    assert_non_null(b);
    memset(b, 0xa5, f.len + 8);
    assert_int_equal(sep_cache_save_to(f.src, b, f.len - 1), SEP_EINVAL);
    for (size_t i = 0; i < f.len + 8; i++)
        assert_int_equal(b[i], 0xa5);
    assert_int_equal(sep_cache_save_to(f.src, b, f.len + 8), 0);
    assert_memory_equal(b, f.buf, f.len);
    assert_int_equal(b[f.len], 0xa5);
    free(b);
    fx_close(&f);
}

/* A copy of the fixture's state with the int32 at `at` set to x. */
static uint8_t *patched(const state_fx_t *f, size_t at, int32_t x)
{
    uint8_t *b = malloc(f->len);
    assert_non_null(b);
    memcpy(b, f->buf, f->len);
    memcpy(b + at, &x, sizeof x);
    return b;
}

static void test_state_lies(void **state)
{
    (void)state;
    state_fx_t f;
    fx_open(&f);
    int n = f.src->n;
    static const struct {
        size_t at;
        int32_t value;
        const char *needle;
    } lies[] = {
        { 0, 0x43504553 ^ 0x20, "bad magic" }, /* "SEPC" with one bit flipped */
        { ST_VERSION, 3, "version 3, expected 1 or 2" },
        { ST_VERSION, 1 << 24, "version" },
        { ST_N, 12, "n=12" },                   /* above c = 11 */
        { ST_N, -1, "n=-1" },
        { ST_N, 10, "bytes do not hold" },      /* one entry fewer than the bytes */
        { ST_N_SEP, 4, "n_sep=4" },             /* above s = 3 */
        { ST_N_SEP, -2, "n_sep=-2" },
        { ST_RAW, 0, "has_raw=0" },
        { ST_N_SEEN, 9, "after 9 tokens" },     /* fewer tokens than entries */
        { ST_N_SEEN + 4, -1, "tokens" },        /* n_seen negative */
        { ST_N_SEEN, 39, "position 39" },       /* the newest entry is at 39 */
        { ST_N_SEEN, 41, "recent entries" },    /* the newest tokens are not held */
        { ST_ROPE_OFF + 4, -1, "rope_off" },    /* rope_off negative */
        { ST_ROPE_OFF, 1 << 20, "rope_off" },   /* beyond what was evicted */
    };
    assert_int_equal(n, 11); /* the values above assume it */
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        uint8_t *b = patched(&f, lies[i].at, lies[i].value);
        expect_bad_state(f.dst, b, f.len, lies[i].needle);
        free(b);
    }
    /* positions out of order: the first two entries swapped */
    uint8_t *b = malloc(f.len);
    assert_non_null(b);
    memcpy(b, f.buf, f.len);
    size_t pos = ST_IDS + 4 * (size_t)n;
    memcpy(b + pos, f.buf + pos + 8, 8);
    memcpy(b + pos + 8, f.buf + pos, 8);
    expect_bad_state(f.dst, b, f.len, "entry 1 at position 0");
    free(b);
    fx_close(&f);
}

static void test_state_mismatch(void **state)
{
    (void)state;
    state_fx_t f;
    fx_open(&f);
    static const struct {
        sep_policy_t p;
        int n_layers, kv_dim;
        const char *needle;
    } others[] = {
        { { .method = SEP_METHOD_STREAMING, .a = 2, .w = 9, .c = 11, .shift = 1 }, 2, 3,
          "method=2, this cache has method=1" },
        { { .method = SEP_METHOD_FULL, .shift = 1 }, 2, 3, "method=2" },
        { { .method = SEP_METHOD_SEPLLM, .a = 1, .s = 3, .w = 5, .c = 11, .shift = 1 }, 2, 3, "a=2, this cache has a=1" },
        { { .method = SEP_METHOD_SEPLLM, .a = 2, .s = 4, .w = 5, .c = 12, .shift = 1 }, 2, 3, "s=3" },
        { { .method = SEP_METHOD_SEPLLM, .a = 2, .s = 3, .w = 5, .c = 11, .shift = 0 }, 2, 3, "shift=1, this cache has shift=0" },
        { { .method = SEP_METHOD_SEPLLM, .a = 2, .s = 3, .w = 5, .c = 11, .shift = 1 }, 3, 3, "n_layers=2, this cache has n_layers=3" },
        { { .method = SEP_METHOD_SEPLLM, .a = 2, .s = 3, .w = 5, .c = 11, .shift = 1 }, 2, 4, "kv_dim=3" },
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        sep_policy_t p = others[i].p;
        p.is_sep = is_sep;
        p.n_vocab = VOCAB;
        sep_cache_t *c;
        assert_int_equal(sep_cache_new(&c, f.be, others[i].n_layers, others[i].kv_dim, &p), 0);
        fill_cache(c, 7, 3, 20 + i);
        expect_bad_state(c, f.buf, f.len, others[i].needle);
        sep_cache_destroy(&c);
    }
    fx_close(&f);
}

int main(void)
{
    for (int id = 0; id < VOCAB; id++)
        is_sep[id] = id % 7 == 0; /* one id in seven */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sepllm_plans),
        cmocka_unit_test(test_sepllm_evicted),
        cmocka_unit_test(test_streaming_plans),
        cmocka_unit_test(test_full_plans),
        cmocka_unit_test(test_policy_checks),
        cmocka_unit_test(test_state_round_trip),
        cmocka_unit_test(test_cache_sizes),
        cmocka_unit_test(test_runs),
        cmocka_unit_test(test_state_version1),
        cmocka_unit_test(test_state_truncated),
        cmocka_unit_test(test_state_save_to),
        cmocka_unit_test(test_state_lies),
        cmocka_unit_test(test_state_mismatch),
    };
    return cmocka_run_group_tests_name("cache", tests, NULL, NULL);
}
