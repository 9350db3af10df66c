/* test_sample: the backend's pick (backend.h, sep_pick_t) against the
 * distribution each of its steps defines, computed directly in double
 * here: the frequencies of many draws (uniforms from the seeded
 * generator) against the exact probabilities after every filter (a
 * chi-square bound, and no draw outside them), the penalties against a
 * direct computation, the ids a pick may not take, the NLL of the row as
 * it came, and determinism. The backend: argv[1], else $SEP_TEST_DEVICE,
 * else cpu; a backend that is not there (cuda without a GPU) skips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "err.h"
#include "golden.h"
#include "pick.h"
#include "sample.h"

static sep_backend_t *be;
static const char *device;

static int setup(void **state)
{
    (void)state;
    int rc = sep_backend_new(&be, device, NULL, 2);
    if (rc && strcmp(device, "cpu") != 0 && (rc == SEP_ENOTFOUND || rc == SEP_EUNSUPPORTED)) {
        print_message("# %s: %s: skipped\n", device, sep_errmsg());
        be = NULL;
        return 0;
    }
    return rc ? rc : be->reserve(be, 1, 2000, 1); /* the staging picks go through */
}

static int teardown(void **state)
{
    (void)state;
    sep_backend_destroy(&be);
    return 0;
}

#define NEED_BACKEND() \
    do {               \
        if (!be)       \
            skip();    \
    } while (0)

/* A pick of every id, at temperature t, the filters off. */
static sep_pick_t plain(int vocab, float t)
{
    return (sep_pick_t){ .temperature = t, .top_p = 1, .repetition = 1, .limit = vocab };
}

/* vocab logits uniform in [lo, hi), from seed. */
static void random_logits(float *x, int vocab, double lo, double hi, uint64_t seed)
{
    sep_rng_t r;
    sep_rng_seed(&r, seed);
    for (int i = 0; i < vocab; i++)
        x[i] = (float)(lo + (double)sep_rng_draw(&r) * 0x1.0p-53 * (hi - lo));
}

/* n picks from the row x as p says, the draws from seed's generator (p's
 * draw unused); tokens into tok, NLLs into nll (may be NULL). The rows go
 * to the backend in blocks. */
static void draws(const float *x, int vocab, const sep_pick_t *p, uint64_t seed, int n,
                  int32_t *tok, float *nll)
{
    int block = (int)((size_t)(8 << 20) / ((size_t)vocab * sizeof(float)));
    block = block < 1 ? 1 : block > 2000 ? 2000 : block;
    float *host = malloc((size_t)block * vocab * sizeof *host);
    float *dev = be->alloc(be, (size_t)block * vocab * sizeof *dev);
    float *nl = malloc((size_t)block * sizeof *nl);
    sep_pick_t *picks = malloc((size_t)block * sizeof *picks);
    assert_true(host && dev && nl && picks);
    for (int i = 0; i < block; i++)
        memcpy(host + (size_t)i * vocab, x, (size_t)vocab * sizeof *x);
    sep_rng_t r;
    sep_rng_seed(&r, seed);
    for (int i0 = 0; i0 < n; i0 += block) {
        int m = n - i0 < block ? n - i0 : block;
        for (int i = 0; i < m; i++) {
            picks[i] = *p;
            picks[i].draw = sep_rng_draw(&r);
        }
        be->upload(be, dev, host, (size_t)m * vocab * sizeof *dev);
        be->pick(be, tok + i0, nl, dev, m, vocab, picks);
        if (nll)
            memcpy(nll + i0, nl, (size_t)m * sizeof *nl);
    }
    assert_int_equal(be->sync(be), SEP_OK);
    be->free(be, dev);
    free(host);
    free(nl);
    free(picks);
}

static int pick_one(const float *x, int vocab, const sep_pick_t *p, float *nll)
{
    int32_t tok;
    float nl;
    float *dev = be->alloc(be, (size_t)vocab * sizeof *dev);
    assert_non_null(dev);
    be->upload(be, dev, x, (size_t)vocab * sizeof *dev);
    be->pick(be, &tok, &nl, dev, 1, vocab, p);
    assert_int_equal(be->sync(be), SEP_OK);
    be->free(be, dev);
    if (nll)
        *nll = nl;
    return tok;
}

/* ---- the distribution of sep_pick_t, in double ----------------------------- */

static const double *order_of;

static int by_rank(const void *pa, const void *pb)
{
    int a = *(const int *)pa, b = *(const int *)pb;
    if (order_of[a] != order_of[b])
        return order_of[a] > order_of[b] ? -1 : 1;
    return (a > b) - (a < b);
}

/* The logits after step 1 (penalties, from the counts of recent) and 2
 * (the ids it may not take at -inf), in double. */
static void penalised(const float *x, int vocab, const sep_pick_t *p, double *v)
{
    for (int j = 0; j < vocab; j++) {
        int c = 0;
        for (int i = 0; i < p->n_recent; i++)
            c += p->recent[i] == j;
        v[j] = x[j];
        if (c > 0) {
            v[j] = v[j] > 0 ? v[j] / p->repetition : v[j] * p->repetition;
            v[j] -= p->presence + p->frequency * c;
        }
    }
    for (int j = p->limit; j < vocab; j++)
        v[j] = -INFINITY;
    for (int i = 0; i < p->n_holes; i++)
        v[p->holes[i]] = -INFINITY;
}

/* q (vocab): the probabilities of each id under p, steps 1 to 4. */
static void expected(const float *x, int vocab, const sep_pick_t *p, double *q)
{
    double *v = malloc((size_t)vocab * sizeof *v), *w = malloc((size_t)vocab * sizeof *w);
    int *rank = malloc((size_t)vocab * sizeof *rank), n = 0;
    assert_true(v && w && rank);
    penalised(x, vocab, p, v);
    for (int j = 0; j < vocab; j++) {
        q[j] = 0;
        if (v[j] > -INFINITY)
            rank[n++] = j;
    }
    assert_true(n > 0);
    order_of = v;
    qsort(rank, (size_t)n, sizeof *rank, by_rank);
    if (p->temperature <= 0) {
        q[rank[0]] = 1;
        goto done;
    }
    for (int i = 0; i < n; i++)
        w[i] = exp((v[rank[i]] - v[rank[0]]) / p->temperature);
    int k = p->top_k > 0 && p->top_k < n ? p->top_k : n, m = k;
    double sk = 0, sum = 0;
    for (int i = 0; i < k; i++)
        sk += w[i];
    if (p->top_p < 1)
        for (m = 0; m < k && sum < p->top_p * sk; m++)
            sum += w[m];
    double total = 0;
    for (int i = 0; i < m; i++)
        if (w[i] >= p->min_p) /* w is p / p_max */
            total += w[i];
    for (int i = 0; i < m; i++)
        if (w[i] >= p->min_p)
            q[rank[i]] = w[i] / total;
done:
    free(v);
    free(w);
    free(rank);
}

/* The n tokens against q: none outside it, and a chi-square over bins of
 * at least 10 expected draws (the rest pooled) within about five
 * standard deviations of its degrees of freedom. */
static void check_draws(const char *what, const int32_t *tok, int n, const double *q, int vocab)
{
    int *count = calloc((size_t)vocab, sizeof *count);
    assert_non_null(count);
    for (int i = 0; i < n; i++) {
        if (tok[i] < 0 || tok[i] >= vocab || q[tok[i]] == 0)
            fail_msg("%s: draw %d is id %d, of probability 0", what, i, tok[i]);
        count[tok[i]]++;
    }
    double chi2 = 0, pool_e = 0, pool_c = 0;
    int bins = 0;
    for (int j = 0; j < vocab; j++) {
        double e = q[j] * n;
        if (e >= 10) {
            chi2 += (count[j] - e) * (count[j] - e) / e;
            bins++;
        } else if (e > 0) {
            pool_e += e;
            pool_c += count[j];
        }
    }
    if (pool_e > 0) {
        chi2 += (pool_c - pool_e) * (pool_c - pool_e) / (pool_e > 1 ? pool_e : 1);
        bins++;
    }
    int df = bins > 1 ? bins - 1 : 1;
    double bound = df + 5 * sqrt(2.0 * df) + 5;
    if (bins > 1 && chi2 > bound)
        fail_msg("%s: chi-square %.1f over %d bins (bound %.1f)", what, chi2, bins, bound);
    print_message("# %s: chi-square %.1f, %d bins\n", what, chi2, bins);
    free(count);
}

/* N draws of x under p against expected(). */
static void check_pick(const char *what, const float *x, int vocab, const sep_pick_t *p, int n,
                       uint64_t seed)
{
    int32_t *tok = malloc((size_t)n * sizeof *tok);
    double *q = malloc((size_t)vocab * sizeof *q);
    assert_true(tok && q);
    expected(x, vocab, p, q);
    draws(x, vocab, p, seed, n, tok, NULL);
    check_draws(what, tok, n, q, vocab);
    free(tok);
    free(q);
}

/* ---- the tests ----------------------------------------------------------- */

static void test_rng(void **state)
{
    (void)state;
    /* pinned outputs (an independent Python implementation of splitmix64
     * seeding and xoshiro256**), so a seed means the same on any machine */
    static const uint64_t want[2][3] = {
        { 0x99ec5f36cb75f2b4u, 0xbf6e1f784956452au, 0x1a5f849d4933e6e0u },
        { 0x15780b2e0c2ec716u, 0x6104d9866d113a7eu, 0xae17533239e499a1u },
    };
    static const uint64_t seeds[2] = { 0, 42 };
    for (int s = 0; s < 2; s++) {
        sep_rng_t r;
        sep_rng_seed(&r, seeds[s]);
        for (int i = 0; i < 3; i++)
            assert_true(sep_rng_next(&r) == want[s][i]);
        sep_rng_seed(&r, seeds[s]);
        assert_true(sep_rng_draw(&r) == want[s][0] >> 11);
    }
}

/* Each filter alone and together, on a row of 200 logits in [-4, 4). */
#define V 200
static void test_filters(void **state)
{
    (void)state;
    NEED_BACKEND();
    float x[V];
    random_logits(x, V, -4, 4, 11);
    enum { N = 20000 };
    sep_pick_t p = plain(V, 1);
    check_pick("temperature 1", x, V, &p, N, 1);
    p.temperature = 0.6f;
    check_pick("temperature 0.6", x, V, &p, N, 2);
    p = plain(V, 1.5f);
    p.top_k = 12;
    check_pick("top_k 12", x, V, &p, N, 3);
    p = plain(V, 0.8f);
    p.top_p = 0.6f;
    check_pick("top_p 0.6", x, V, &p, N, 4);
    p = plain(V, 1.3f);
    p.min_p = 0.05f;
    check_pick("min_p 0.05", x, V, &p, N, 5);
    /* in order: top_p of what top_k left, then min_p */
    p = plain(V, 1.1f);
    p.top_k = 30;
    p.top_p = 0.7f;
    p.min_p = 0.1f;
    check_pick("top_k 30, top_p 0.7, min_p 0.1", x, V, &p, N, 6);
    p = plain(V, 2);
    p.top_k = 3;
    p.top_p = 0.9f;
    check_pick("top_k 3, top_p 0.9", x, V, &p, N, 7);
}

/* Ties rank the lower id first: a cut through equal logits keeps the
 * lowest ids of them. */
static void test_ties(void **state)
{
    (void)state;
    NEED_BACKEND();
    float x[V];
    random_logits(x, V, -6, 0, 12);
    const int tied[] = { 150, 3, 77, 199, 42, 120 }; /* six ids at 2.0 */
    for (int i = 0; i < 6; i++)
        x[tied[i]] = 2.0f;
    x[60] = 2.5f;
    sep_pick_t p = plain(V, 1);
    p.top_k = 4; /* 60, then 3, 42, 77 */
    check_pick("top_k through a tie", x, V, &p, 20000, 21);
    double q[V];
    expected(x, V, &p, q);
    assert_true(q[60] > 0 && q[3] > 0 && q[42] > 0 && q[77] > 0 && q[120] == 0);
    p = plain(V, 1);
    p.top_p = 0.3f; /* the tie's mass is cut after some of its ids */
    check_pick("top_p through a tie", x, V, &p, 20000, 22);
    /* -0 and +0 are the same logit: the lower id first */
    float z[4] = { -1, 0.0f, -0.0f, -1 };
    z[1] = 0.0f;
    z[2] = -0.0f;
    p = plain(4, 0);
    assert_int_equal(pick_one(z, 4, &p, NULL), 1);
    z[1] = -0.0f;
    z[2] = 0.0f;
    assert_int_equal(pick_one(z, 4, &p, NULL), 1);
    p = plain(4, 1);
    p.top_k = 1;
    int32_t tok[50];
    draws(z, 4, &p, 5, 50, tok, NULL);
    for (int i = 0; i < 50; i++)
        assert_int_equal(tok[i], 1);
}

/* A top_p below the best id's share keeps it alone, whatever the draw. */
static void test_tiny_top_p(void **state)
{
    (void)state;
    NEED_BACKEND();
    float x[V];
    random_logits(x, V, -8, 8, 9);
    int best = 0;
    for (int i = 1; i < V; i++)
        best = x[i] > x[best] ? i : best;
    int32_t out[500];
    const float temps[] = { 0.5f, 1, 3 };
    for (int t = 0; t < 3; t++) {
        sep_pick_t p = plain(V, temps[t]);
        p.top_p = 1e-6f;
        draws(x, V, &p, 77 + t, 500, out, NULL);
        for (int i = 0; i < 500; i++)
            assert_int_equal(out[i], best);
    }
}

/* The draw's place in id order: equal weights, u = draw / 2^53. */
static void test_draw_order(void **state)
{
    (void)state;
    NEED_BACKEND();
    const float x[5] = { 0, 0, -INFINITY, 0, 0 }; /* ids 0, 1, 3, 4 weigh 2^40 each */
    sep_pick_t p = plain(5, 1);
    const double u[] = { 0, 0.2499, 0.25, 0.5, 0.7499, 0.75, 0.99999 };
    const int want[] = { 0, 0, 1, 3, 3, 4, 4 };
    for (int i = 0; i < 7; i++) {
        p.draw = (uint64_t)(u[i] * 0x1p53);
        assert_int_equal(pick_one(x, 5, &p, NULL), want[i]);
    }
    p.draw = (1ull << 53) - 1;
    assert_int_equal(pick_one(x, 5, &p, NULL), 4);
}

/* recent: n ids drawn from [0, span) (repeats), from r. */
static void random_recent(int32_t *recent, int n, int span, sep_rng_t *r)
{
    for (int i = 0; i < n; i++)
        recent[i] = (int32_t)(sep_rng_next(r) % (uint64_t)span);
}

/* The penalties against a direct computation: greedy picks of many
 * random rows, windows and penalties are the argmax of the penalised
 * logits computed here; their NLL is the row's as it came. */
static void test_penalties(void **state)
{
    (void)state;
    NEED_BACKEND();
    enum { VP = 100 };
    float x[VP];
    int32_t recent[64];
    double v[VP];
    sep_rng_t r;
    sep_rng_seed(&r, 99);
    int changed = 0;
    for (int trial = 0; trial < 300; trial++) {
        random_logits(x, VP, -3, 3, 1000 + trial);
        int n = (int)(sep_rng_next(&r) % 65);
        random_recent(recent, n, 30, &r);
        sep_pick_t p = plain(VP, 0);
        p.recent = recent;
        p.n_recent = n;
        p.repetition = (float)(0.5 + 1.5 * (double)sep_rng_draw(&r) * 0x1p-53);
        p.presence = (float)(2 * (double)sep_rng_draw(&r) * 0x1p-53 - 1);
        p.frequency = (float)(2 * (double)sep_rng_draw(&r) * 0x1p-53 - 1);
        if (trial % 3 == 0)
            p.presence = 0;
        if (trial % 5 == 0)
            p.repetition = 1;
        penalised(x, VP, &p, v);
        int best = 0, raw_best = 0;
        for (int j = 1; j < VP; j++) {
            best = v[j] > v[best] ? j : best;
            raw_best = x[j] > x[raw_best] ? j : raw_best;
        }
        changed += best != raw_best;
        float nll;
        int tok = pick_one(x, VP, &p, &nll);
        if (tok != best)
            fail_msg("trial %d: picked %d, the penalised argmax is %d", trial, tok, best);
        double m = x[0], s = 0;
        for (int j = 1; j < VP; j++)
            m = x[j] > m ? x[j] : m;
        for (int j = 0; j < VP; j++)
            s += exp(x[j] - m);
        assert_true(fabs(nll - (m + log(s) - x[tok])) < 1e-4);
    }
    assert_true(changed > 50); /* the penalties moved the argmax often */
    /* and the distribution they leave, sampled */
    float y[V];
    int32_t rec[300];
    random_logits(y, V, -2, 4, 31);
    random_recent(rec, 300, 40, &r);
    sep_pick_t p = plain(V, 1);
    p.recent = rec;
    p.n_recent = 300;
    p.repetition = 1.8f;
    p.presence = 0.4f;
    p.frequency = 0.05f;
    p.top_k = 40;
    check_pick("penalties, top_k 40", y, V, &p, 20000, 32);
    /* the whole window at once, every id repeated */
    static int32_t big[SEP_PICK_MAX_RECENT];
    random_recent(big, SEP_PICK_MAX_RECENT, V, &r);
    p.recent = big;
    p.n_recent = SEP_PICK_MAX_RECENT;
    p.repetition = 1;
    p.presence = 0.5f;
    p.frequency = 0.01f;
    p.top_k = 0;
    check_pick("penalties over 4096 ids", y, V, &p, 8000, 33);
}

/* The NLL is -log p(token) under the softmax of the row as it came,
 * whatever the pick did to it. */
static void test_nll(void **state)
{
    (void)state;
    NEED_BACKEND();
    float x[V];
    int32_t tok[400], recent[20];
    float nll[400];
    sep_rng_t r;
    sep_rng_seed(&r, 5);
    random_recent(recent, 20, 50, &r);
    for (int s = 0; s < 4; s++) {
        random_logits(x, V, -8, 8, 100 + s);
        double m = x[0], z = 0;
        for (int j = 1; j < V; j++)
            m = x[j] > m ? x[j] : m;
        for (int j = 0; j < V; j++)
            z += exp(x[j] - m);
        z = m + log(z);
        sep_pick_t p = plain(V, s == 0 ? 0 : 0.5f * s);
        p.top_p = s == 3 ? 0.9f : 1;
        p.recent = recent;
        p.n_recent = s >= 2 ? 20 : 0;
        p.repetition = 3;
        p.frequency = 0.5f;
        draws(x, V, &p, 7 + s, 400, tok, nll);
        for (int i = 0; i < 400; i++) {
            assert_true(tok[i] >= 0 && tok[i] < V);
            if (fabs(nll[i] - (z - x[tok[i]])) > 1e-4)
                fail_msg("row %d draw %d: nll %g, want %g", s, i, nll[i], z - x[tok[i]]);
        }
    }
}

/* Ids at or past the limit and the holes are never picked, even as the
 * best logits of the row; a row with nothing it may take is -1. */
static void test_id_cap(void **state)
{
    (void)state;
    NEED_BACKEND();
    float x[V];
    random_logits(x, V, -2, 2, 41);
    for (int j = 180; j < V; j++)
        x[j] = 10; /* padding ids above the tokenizer's, scoring best */
    int32_t holes[] = { 5, 17, 99 };
    x[5] = x[17] = 9;
    x[99] = 12;
    sep_pick_t p = plain(V, 0);
    p.limit = 180;
    p.holes = holes;
    p.n_holes = 3;
    float nll;
    int best = 0;
    for (int j = 1; j < 180; j++)
        best = j != 5 && j != 17 && j != 99 && x[j] > x[best] ? j : best;
    assert_int_equal(pick_one(x, V, &p, &nll), best);
    p.temperature = 1;
    check_pick("limit 180 and 3 holes", x, V, &p, 20000, 42);
    p.temperature = 5; /* flat: every id it may take is drawn */
    int32_t tok[20000];
    draws(x, V, &p, 43, 20000, tok, NULL);
    for (int i = 0; i < 20000; i++)
        assert_true(tok[i] >= 0 && tok[i] < 180 && tok[i] != 5 && tok[i] != 17 &&
                    tok[i] != 99);
    /* nothing finite that it may take */
    float y[8] = { 1, -INFINITY, -INFINITY, -INFINITY, 2, 3, 4, 5 };
    int32_t h0[] = { 0 };
    p = plain(8, 1);
    p.limit = 4;
    p.holes = h0;
    p.n_holes = 1;
    assert_int_equal(pick_one(y, 8, &p, &nll), -1);
    assert_true(isnan(nll));
}

/* Rows that cannot be softmaxed give -1 and NaN. */
static void test_bad_rows(void **state)
{
    (void)state;
    NEED_BACKEND();
    float nan_row[3] = { 0, NAN, 1 }, inf_row[3] = { 0, INFINITY, 1 };
    float masked[3] = { -INFINITY, -INFINITY, -INFINITY }, nll;
    const float *rows[3] = { nan_row, inf_row, masked };
    for (int i = 0; i < 3; i++)
        for (int t = 0; t < 2; t++) {
            sep_pick_t p = plain(3, (float)t);
            assert_int_equal(pick_one(rows[i], 3, &p, &nll), -1);
            assert_true(isnan(nll));
        }
}

/* The same picks give the same tokens; other draws others. Many rows of
 * mixed settings in one call give what each gives alone (a call may
 * split into groups on a GPU: 300 rows of 4096 recent ids). */
static void test_determinism(void **state)
{
    (void)state;
    NEED_BACKEND();
    float x[V];
    random_logits(x, V, -1, 1, 5);
    int32_t a[300], b[300];
    sep_pick_t p = plain(V, 1);
    p.top_p = 0.8f;
    draws(x, V, &p, 1234, 300, a, NULL);
    draws(x, V, &p, 1234, 300, b, NULL);
    assert_memory_equal(a, b, sizeof a);
    draws(x, V, &p, 1235, 300, b, NULL);
    assert_memory_not_equal(a, b, sizeof a);

    enum { R = 300 };
    static int32_t recent[SEP_PICK_MAX_RECENT];
    int32_t holes[2] = { 1, 2 };
    sep_rng_t r;
    sep_rng_seed(&r, 8);
    random_recent(recent, SEP_PICK_MAX_RECENT, V, &r);
    sep_pick_t *picks = malloc(R * sizeof *picks);
    float *rows = malloc((size_t)R * V * sizeof *rows), nll[R];
    float *dev = be->alloc(be, (size_t)R * V * sizeof *dev);
    int32_t tok[R];
    assert_true(picks && rows && dev);
    for (int i = 0; i < R; i++) {
        random_logits(rows + (size_t)i * V, V, -3, 3, 500 + i);
        picks[i] = plain(V, (float)(i % 4) * 0.5f);
        picks[i].top_k = i % 3 ? 0 : 20;
        picks[i].top_p = i % 5 ? 1 : 0.7f;
        picks[i].min_p = i % 7 ? 0 : 0.2f;
        picks[i].recent = recent;
        picks[i].n_recent = i % 2 ? SEP_PICK_MAX_RECENT : i % 50;
        picks[i].presence = 0.3f;
        picks[i].limit = V - i % 3;
        picks[i].holes = holes;
        picks[i].n_holes = i % 4 ? 2 : 0;
        picks[i].draw = sep_rng_draw(&r);
    }
    be->upload(be, dev, rows, (size_t)R * V * sizeof *dev);
    be->pick(be, tok, nll, dev, R, V, picks);
    assert_int_equal(be->sync(be), SEP_OK);
    for (int i = 0; i < R; i++) {
        float one_nll;
        int one = pick_one(rows + (size_t)i * V, V, &picks[i], &one_nll);
        assert_int_equal(tok[i], one);
        assert_memory_equal(&nll[i], &one_nll, sizeof one_nll);
    }
    be->free(be, dev);
    free(rows);
    free(picks);
}

/* The vocabulary of Llama 3: a few dozen ids in reach, scattered to the
 * row's end, ties among them, the rest far below. */
static void test_large_vocab(void **state)
{
    (void)state;
    NEED_BACKEND();
    enum { VL = 128256 };
    float *x = malloc(VL * sizeof *x);
    assert_non_null(x);
    random_logits(x, VL, -40, -20, 61);
    sep_rng_t r;
    sep_rng_seed(&r, 62);
    for (int i = 0; i < 40; i++)
        x[sep_rng_next(&r) % VL] = (float)(2 * (double)sep_rng_draw(&r) * 0x1p-53);
    x[VL - 1] = x[VL - 2] = x[3] = 1.5f;
    x[VL - 3] = 2.2f;
    int n = !strcmp(device, "cpu") ? 600 : 20000; /* the CPU is slow at this size */
    sep_pick_t p = plain(VL, 0.8f);
    p.top_p = 0.95f;
    check_pick("vocab 128256, temperature 0.8, top_p 0.95", x, VL, &p, n, 63);
    p.top_k = 10;
    p.min_p = 0.3f;
    p.limit = VL - 1; /* the last id is the tokenizer's no more */
    check_pick("vocab 128256, top_k 10, min_p 0.3, limit", x, VL, &p, n, 64);
    p = plain(VL, 0);
    assert_int_equal(pick_one(x, VL, &p, NULL), VL - 3);
    free(x);
}

/* A pick's settings on the wire, and what the op refuses. */
static void test_wire_and_checks(void **state)
{
    (void)state;
    sep_pick_t p = { .temperature = 0.7f, .top_p = 0.9f, .min_p = 0.05f, .repetition = 1.2f,
                     .presence = -0.5f, .frequency = 0.25f, .top_k = 40, .n_recent = 17,
                     .draw = (1ull << 53) - 3 };
    uint8_t wire[SEP_PICK_WIRE];
    sep_pick_pack(wire, &p);
    sep_pick_t q = { .limit = 9 };
    sep_pick_unpack(&q, wire);
    assert_true(q.temperature == p.temperature && q.top_p == p.top_p && q.min_p == p.min_p &&
                q.repetition == p.repetition && q.presence == p.presence &&
                q.frequency == p.frequency && q.top_k == p.top_k && q.n_recent == p.n_recent &&
                q.draw == p.draw && q.limit == 9);
    struct {
        sep_pick_t p;
        const char *says;
    } bad[] = {
        { { .temperature = NAN, .top_p = 1, .repetition = 1, .limit = 8 }, "temperature" },
        { { .temperature = INFINITY, .top_p = 1, .repetition = 1, .limit = 8 }, "temperature" },
        { { .temperature = 1, .top_p = 0, .repetition = 1, .limit = 8 }, "top_p" },
        { { .temperature = 1, .top_p = 1.5f, .repetition = 1, .limit = 8 }, "top_p" },
        { { .temperature = 1, .top_p = 1, .top_k = -1, .repetition = 1, .limit = 8 }, "top_k" },
        { { .temperature = 1, .top_p = 1, .min_p = 2, .repetition = 1, .limit = 8 }, "min_p" },
        { { .temperature = 1, .top_p = 1, .repetition = 0, .limit = 8 }, "repetition_penalty" },
        { { .temperature = 1, .top_p = 1, .repetition = 1, .presence = 1e9f, .limit = 8 },
          "presence_penalty" },
        { { .temperature = 1, .top_p = 1, .repetition = 1, .frequency = NAN, .limit = 8 },
          "frequency_penalty" },
        { { .temperature = 1, .top_p = 1, .repetition = 1, .limit = 9 }, "limit" },
        { { .temperature = 1, .top_p = 1, .repetition = 1, .limit = 8, .draw = 1ull << 53 },
          "53 bits" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(sep_pick_check(&bad[i].p, 8), SEP_EINVAL);
        if (!strstr(sep_errmsg(), bad[i].says))
            fail_msg("case %zu: '%s' does not name %s", i, sep_errmsg(), bad[i].says);
    }
    int32_t out_of_range[1] = { 8 }, hole[1] = { 6 };
    sep_pick_t ids = { .temperature = 1, .top_p = 1, .repetition = 1, .limit = 6,
                       .recent = out_of_range, .n_recent = 1 };
    assert_int_equal(sep_pick_check(&ids, 8), SEP_EINVAL);
    ids.recent = NULL;
    ids.n_recent = 0;
    ids.holes = hole;
    ids.n_holes = 1;
    assert_int_equal(sep_pick_check(&ids, 8), SEP_EINVAL);
    hole[0] = 5;
    assert_int_equal(sep_pick_check(&ids, 8), SEP_OK);
}

int main(int argc, char **argv)
{
    device = argc > 1 ? argv[1] : golden_device();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_ties),
        cmocka_unit_test(test_tiny_top_p),
        cmocka_unit_test(test_draw_order),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_nll),
        cmocka_unit_test(test_id_cap),
        cmocka_unit_test(test_bad_rows),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_large_vocab),
        cmocka_unit_test(test_wire_and_checks),
    };
    return cmocka_run_group_tests_name("sample", tests, setup, teardown);
}
