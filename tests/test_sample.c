/* test_sample: greedy and top-p sampling, the NLL of the drawn token and
 * the seeded generator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "sample.h"

#define V 1000

static double lse(const float *x, int n)
{
    double m = x[0], s = 0;
    for (int i = 1; i < n; i++)
        m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++)
        s += exp(x[i] - m);
    return m + log(s);
}

/* V logits spread over about [-8, 8], from seed. */
static void random_logits(float *x, unsigned seed)
{
    sep_rng_t r;
    sep_rng_seed(&r, seed);
    for (int i = 0; i < V; i++)
        x[i] = (float)((double)(sep_rng_next(&r) >> 11) * 0x1.0p-53 * 16 - 8);
}

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
    }
}

static void test_greedy(void **state)
{
    (void)state;
    const float x[] = { 1, 3, -INFINITY, 3, 2 };
    int32_t tok;
    float nll;
    /* r and scratch unused */
    assert_int_equal(sep_sample(x, 5, 0, 1, NULL, NULL, &tok, &nll), 0);
    assert_int_equal(tok, 1);
    assert_int_equal(sep_sample(x, 5, -1, 0.5f, NULL, NULL, &tok, &nll), 0);
    assert_int_equal(tok, 1);
    float y[V];
    random_logits(y, 3);
    int best = 0;
    for (int i = 1; i < V; i++)
        best = y[i] > y[best] ? i : best;
    assert_int_equal(sep_sample(y, V, 0, 1, NULL, NULL, &tok, &nll), 0);
    assert_int_equal(tok, best);
    const float one = 5;
    assert_int_equal(sep_sample(&one, 1, 0, 1, NULL, NULL, &tok, &nll), 0);
    assert_int_equal(tok, 0);
    assert_true(fabsf(nll) < 1e-7f);
}

static void test_nll(void **state)
{
    (void)state;
    float x[V], copy[V], scratch[2 * V];
    sep_rng_t r;
    sep_rng_seed(&r, 7);
    for (unsigned s = 0; s < 20; s++) {
        random_logits(x, 100 + s);
        memcpy(copy, x, sizeof x);
        double z = lse(x, V);
        const float temps[] = { 0, 0.7f, 1, 2 };
        for (int t = 0; t < 4; t++) {
            int32_t tok;
            float nll;
            assert_int_equal(sep_sample(x, V, temps[t], t == 3 ? 0.9f : 1, &r, scratch, &tok, &nll), 0);
            assert_true(tok >= 0 && tok < V);
            assert_true(fabs(nll - (z - x[tok])) < 1e-6);
        }
        assert_memory_equal(x, copy, sizeof x); /* logits left unchanged */
    }
}

/* n tokens drawn from x at temperature t, top_p p, with seed. */
static void draw(const float *x, int vocab, float t, float p, uint64_t seed, int n, int32_t *out)
{
    sep_rng_t r;
    sep_rng_seed(&r, seed);
    float *scratch = malloc(sizeof(float) * 2 * vocab);
    assert_non_null(scratch);
    for (int i = 0; i < n; i++) {
        float nll;
        assert_int_equal(sep_sample(x, vocab, t, p, &r, scratch, &out[i], &nll), 0);
    }
    free(scratch);
}

static void test_seeds(void **state)
{
    (void)state;
    float x[V];
    int32_t a[200], b[200];
    random_logits(x, 5);
    for (int i = 0; i < V; i++)
        x[i] /= 4; /* flat enough that draws vary */
    const float tops[] = { 1, 0.8f };
    for (int t = 0; t < 2; t++) {
        draw(x, V, 1, tops[t], 1234, 200, a);
        draw(x, V, 1, tops[t], 1234, 200, b);
        assert_memory_equal(a, b, sizeof a);
        draw(x, V, 1, tops[t], 1235, 200, b);
        assert_memory_not_equal(a, b, sizeof a);
    }
}

static void test_tiny_top_p(void **state)
{
    (void)state;
    float x[V];
    int32_t out[500];
    random_logits(x, 9);
    int best = 0;
    for (int i = 1; i < V; i++)
        best = x[i] > x[best] ? i : best;
    const float temps[] = { 0.5f, 1, 3 };
    for (int t = 0; t < 3; t++) {
        draw(x, V, temps[t], 1e-6f, 77 + t, 500, out);
        for (int i = 0; i < 500; i++)
            assert_int_equal(out[i], best);
    }
    /* a tie at the top: the lower id */
    const float tie[] = { 0, 2, 1, 2 };
    draw(tie, 4, 1, 1e-6f, 3, 100, out);
    for (int i = 0; i < 100; i++)
        assert_int_equal(out[i], 1);
}

/* Frequencies of n draws over 4 tokens are within 0.02 of want. */
static void check_freq(const float *x, float t, float p, const double *want)
{
    enum { N = 20000 };
    static int32_t out[N];
    int count[4] = { 0 };
    draw(x, 4, t, p, 2024, N, out);
    for (int i = 0; i < N; i++)
        count[out[i]]++;
    for (int k = 0; k < 4; k++)
        if (fabs((double)count[k] / N - want[k]) > 0.02)
            fail_msg("token %d: frequency %.4f, probability %.4f", k, (double)count[k] / N,
                     want[k]);
}

static void test_frequencies(void **state)
{
    (void)state;
    const double p[4] = { 0.1, 0.2, 0.3, 0.4 };
    float x[4];
    for (int k = 0; k < 4; k++)
        x[k] = (float)log(p[k]) + 3; /* softmax is shift-invariant */
    check_freq(x, 1, 1, p);
    /* temperature 0.5 squares the probabilities */
    const double sq[4] = { 0.01 / 0.3, 0.04 / 0.3, 0.09 / 0.3, 0.16 / 0.3 };
    check_freq(x, 0.5f, 1, sq);
    /* top_p 0.5: 0.4 falls short, 0.4 + 0.3 reaches it */
    const double nucleus[4] = { 0, 0, 3.0 / 7, 4.0 / 7 };
    check_freq(x, 1, 0.5f, nucleus);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    const float x[4] = { 0, 1, 2, 3 };
    float scratch[8], nll;
    int32_t tok = -1;
    sep_rng_t r;
    sep_rng_seed(&r, 1);
    const float bad_p[] = { 0, 1.5f, NAN, -0.5f };
    for (int i = 0; i < 4; i++) {
        assert_int_equal(sep_sample(x, 4, 1, bad_p[i], &r, scratch, &tok, &nll), SEP_EINVAL);
        assert_int_equal(sep_sample(x, 4, 0, bad_p[i], &r, scratch, &tok, &nll), SEP_EINVAL);
        assert_non_null(strstr(sep_errmsg(), "top_p"));
    }
    assert_int_equal(sep_sample(x, 0, 1, 1, &r, scratch, &tok, &nll), SEP_EINVAL);
    assert_int_equal(sep_sample(x, 4, NAN, 1, &r, scratch, &tok, &nll), SEP_EINVAL);
    const float nan_logit[2] = { 0, NAN };
    assert_int_equal(sep_sample(nan_logit, 2, 1, 1, &r, scratch, &tok, &nll), SEP_EINVAL);
    const float masked[2] = { -INFINITY, -INFINITY };
    assert_int_equal(sep_sample(masked, 2, 1, 1, &r, scratch, &tok, &nll), SEP_EINVAL);
    assert_int_equal(tok, -1); /* nothing written on failure */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_nll),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_tiny_top_p),
        cmocka_unit_test(test_frequencies),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests_name("sample", tests, NULL, NULL);
}
