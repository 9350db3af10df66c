/* test_kernels: every backend operation against a plain double-precision
 * loop written from its definition in backend.h. The CPU backend runs in
 * CI; a GPU backend runs the same cases on the GPU machine. */
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
#include "fastmath.h"
#include "golden.h"

static sep_backend_t *be;

static int setup(void **state)
{
    (void)state;
    return sep_backend_new(&be, golden_device(), golden_precision(), 2);
}

static int teardown(void **state)
{
    (void)state;
    sep_backend_destroy(&be);
    return 0;
}

/* Deterministic values in [-1, 1). */
static float *rand_vec(size_t n, unsigned seed)
{
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        v[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    return v;
}

/* A backend copy of host data. */
static float *dev(const float *host, size_t n)
{
    float *d = be->alloc(be, n * sizeof *d);
    assert_non_null(d);
    be->upload(be, d, host, n * sizeof *d);
    return d;
}

static void expect_near(const float *dev_got, const double *want, size_t n, double tol)
{
    float *got = malloc(n * sizeof *got);
    assert_non_null(got);
    be->download(be, got, dev_got, n * sizeof *got);
    for (size_t i = 0; i < n; i++)
        if (fabs(got[i] - want[i]) > tol * (1 + fabs(want[i])))
            fail_msg("element %zu: %.7g, want %.7g", i, got[i], want[i]);
    free(got);
}

/* Relative tolerance of a matrix product or attention: bf16 weights and
 * inputs round to 8 bits of mantissa. */
static double matmul_tol(void)
{
    const char *p = getenv("SEP_TEST_PRECISION");
    return p && strcmp(p, "bf16") == 0 ? 2e-2 : 1e-5;
}

/* want (n, dout) := x (n, din) w^T [+ b], in double */
static void matmul_ref(double *want, const float *x, const float *w, const float *b, int n,
                       int din, int dout)
{
    for (int i = 0; i < n; i++)
        for (int o = 0; o < dout; o++) {
            double s = b ? b[o] : 0;
            for (int k = 0; k < din; k++)
                s += (double)x[i * din + k] * w[o * din + k];
            want[i * dout + o] = s;
        }
}

static void test_matmul(void **state)
{
    (void)state;
    double tol = matmul_tol();
    /* one row and many; widths that are and are not whole 16-byte vectors
     * (GPU: few rows of a width of whole vectors take the GEMV kernel) */
    static const int ns[] = { 1, 3, 37 }, dins[] = { 70, 72 };
    for (int c = 0; c < 6; c++) {
        int n = ns[c % 3], din = dins[c / 3], dout = 33;
        float *x = rand_vec((size_t)n * din, 1), *w = rand_vec((size_t)dout * din, 2);
        float *b = rand_vec(dout, 3);
        double *want = malloc(sizeof *want * n * dout);
        matmul_ref(want, x, w, b, n, din, dout);
        float *dx = dev(x, (size_t)n * din), *db = dev(b, dout);
        sep_weight_t *dw = be->weight_new(be, w, dout, din);
        assert_non_null(dw);
        float *dy = be->alloc(be, sizeof(float) * (n * dout > 3 * din ? n * dout : 3 * din));
        assert_int_equal(be->reserve(be, 1, n > 3 ? n : 3, din), 0);
        be->matmul(be, dy, dx, dw, db, n);
        expect_near(dy, want, (size_t)n * dout, tol);
        /* embedding lookup from the same weight */
        int32_t ids[3] = { 5, 0, 32 };
        double rows[3 * 72];
        for (int i = 0; i < 3; i++)
            for (int k = 0; k < din; k++)
                rows[i * din + k] = w[ids[i] * din + k];
        be->weight_rows(be, dy, dw, ids, 3);
        expect_near(dy, rows, 3 * (size_t)din, tol);
        free(x); free(w); free(b); free(want);
        be->free(be, dx); be->weight_free(be, dw); be->free(be, db); be->free(be, dy);
    }
}

/* The CPU backend's promise: a row of a product is the same bits whatever
 * rows share the call. For a weight of odd sizes and the bundled model's
 * (attention, MLP and output head shapes), with a bias and without, each
 * row of the first n and of the last n of 200 rows against the same row
 * of the product of all 200: n from 1 to 100 and two beyond, so a row
 * sits at every place of a tile or a library's row group, alone and with
 * other rows, on one thread and split between two. */
static void test_matmul_rows_invariant(void **state)
{
    (void)state;
    if (strcmp(golden_device(), "cpu") != 0)
        skip(); /* the other backends promise closeness only */
    enum { ROWS = 200, N_CASES = 102 };
    static const int shapes[][2] = { { 100, 37 }, { 384, 384 }, { 128, 384 },
                                     { 1024, 384 }, { 8192, 384 } };
    for (int s = 0; s < 5; s++) {
        int dout = shapes[s][0], din = shapes[s][1];
        size_t row = sizeof(float) * dout;
        float *x = rand_vec((size_t)ROWS * din, 51 + s), *w = rand_vec((size_t)dout * din, 61 + s);
        float *b = rand_vec(dout, 71 + s), *want = malloc(row * ROWS), *got = malloc(row * ROWS);
        float *dx = dev(x, (size_t)ROWS * din), *db = dev(b, dout), *dy = be->alloc(be, row * ROWS);
        sep_weight_t *dw = be->weight_new(be, w, dout, din);
        assert_true(want && got && dy && dw);
        assert_int_equal(be->reserve(be, 1, ROWS, din > dout ? din : dout), 0);
        for (int biased = 0; biased < 2; biased++) {
            const float *bias = biased ? db : NULL;
            be->matmul(be, dy, dx, dw, bias, ROWS);
            be->download(be, want, dy, row * ROWS);
            for (int c = 0; c < 2 * N_CASES; c++) {
                int n = c / 2 < 100 ? c / 2 + 1 : c / 2 == 100 ? 131 : 197;
                int k = c % 2 ? ROWS - n : 0;
                be->matmul(be, dy, dx + (size_t)k * din, dw, bias, n);
                be->download(be, got, dy, row * n);
                for (int i = 0; i < n; i++)
                    if (memcmp(got + (size_t)i * dout, want + (size_t)(k + i) * dout, row) != 0)
                        fail_msg("%dx%d weight%s: row %d of %d (from row %d) differs from the "
                                 "%d-row product", dout, din, biased ? ", bias" : "", i, n, k,
                                 ROWS);
            }
        }
        free(x); free(w); free(b); free(want); free(got);
        be->free(be, dx); be->free(be, db); be->free(be, dy); be->weight_free(be, dw);
    }
}

/* want_x := x + y, want_h := its RMSNorm (b NULL) or LayerNorm, n rows of d */
static void norm_ref(double *want_x, double *want_h, const float *x, const float *y,
                     const float *w, const float *b, int n, int d)
{
    for (int i = 0; i < n; i++) {
        double s = 0, ss = 0, mean = 0;
        for (int j = 0; j < d; j++) {
            double v = want_x[i * d + j] = (double)(x[i * d + j] + y[i * d + j]);
            s += v;
            ss += v * v;
        }
        if (b) {
            mean = s / d;
            ss = 0;
            for (int j = 0; j < d; j++)
                ss += (want_x[i * d + j] - mean) * (want_x[i * d + j] - mean);
        }
        for (int j = 0; j < d; j++)
            want_h[i * d + j] = (want_x[i * d + j] - mean) / sqrt(ss / d + 1e-5) * w[j] +
                                (b ? b[j] : 0);
    }
}

/* RMSNorm with the residual add fused (x += res, then the norm), then
 * LayerNorm of the sum; a narrow row and one wider than 8192 values. */
static void test_norms(void **state)
{
    (void)state;
    static const int ds[] = { 48, 9000 };
    for (int c = 0; c < 2; c++) {
        int n = 5, d = ds[c];
        float *x = rand_vec((size_t)n * d, 4), *res = rand_vec((size_t)n * d, 7);
        float *w = rand_vec(d, 5), *b = rand_vec(d, 6);
        double *sum = malloc(sizeof *sum * n * d), *rms = malloc(sizeof *rms * n * d);
        double *ln = malloc(sizeof *ln * n * d);
        norm_ref(sum, rms, x, res, w, NULL, n, d);
        norm_ref(sum, ln, x, res, w, b, n, d);
        float *dx = dev(x, (size_t)n * d), *dr = dev(res, (size_t)n * d);
        float *dw = dev(w, d), *db = dev(b, d);
        float *dy = be->alloc(be, sizeof(float) * n * d);
        be->rmsnorm(be, dy, dx, dr, dw, n, d, 1e-5f);
        expect_near(dx, sum, (size_t)n * d, 0);
        expect_near(dy, rms, (size_t)n * d, 1e-5);
        be->layernorm(be, dy, dx, NULL, dw, db, n, d, 1e-5f);
        expect_near(dy, ln, (size_t)n * d, 1e-5);
        free(x); free(res); free(w); free(b); free(sum); free(rms); free(ln);
        be->free(be, dx); be->free(be, dr); be->free(be, dw); be->free(be, db);
        be->free(be, dy);
    }
}

/* Partial rotary (rot_dim < head_dim) on strided rows: the untouched dims
 * and the gap between rows stay as they were; the last head is copied
 * whole, unrotated, first, and nothing else of its rows is written. */
static void test_rope(void **state)
{
    (void)state;
    int n = 3, heads = 2, hd = 8, rot = 4, stride = 20;
    float *x = rand_vec((size_t)n * stride, 7), *cs = malloc(sizeof *cs * n * rot);
    double *want = malloc(sizeof *want * n * stride);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < rot / 2; j++) {
            double a = (i + 3) * pow(10000.0, -2.0 * j / rot);
            cs[i * rot + j] = (float)cos(a);
            cs[i * rot + rot / 2 + j] = (float)sin(a);
        }
    for (int i = 0; i < n * stride; i++)
        want[i] = x[i];
    for (int i = 0; i < n; i++)
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < rot / 2; j++) {
                float *v = x + i * stride + h * hd;
                double c = cs[i * rot + j], s = cs[i * rot + rot / 2 + j];
                want[i * stride + h * hd + j] = v[j] * c - v[j + rot / 2] * s;
                want[i * stride + h * hd + j + rot / 2] = v[j + rot / 2] * c + v[j] * s;
            }
    /* the second head of each row kept unrotated, whole, in rows of 10 */
    double *want_raw = malloc(sizeof *want_raw * n * 10);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 10; j++)
            want_raw[i * 10 + j] = j < hd ? x[i * stride + hd + j] : -1.0;
    float *dx = dev(x, (size_t)n * stride), *dcs = dev(cs, (size_t)n * rot);
    float *minus = malloc(sizeof *minus * n * 10);
    for (int i = 0; i < n * 10; i++)
        minus[i] = -1.0f;
    float *draw = dev(minus, (size_t)n * 10);
    /* as two blocks: the first row, then the rest */
    sep_rope_t blocks[2] = { { dx, dcs, 1, draw, 1, 10 },
                             { dx + stride, dcs + rot, n - 1, draw + 10, 1, 10 } };
    be->rope(be, blocks, 2, stride, heads, hd, rot);
    expect_near(dx, want, (size_t)n * stride, 1e-6);
    expect_near(draw, want_raw, (size_t)n * 10, 0);
    free(x); free(cs); free(want); free(want_raw); free(minus);
    be->free(be, dx); be->free(be, dcs); be->free(be, draw);
}

/* The rotary table at positions near zero and in the billions. */
static void test_rope_table(void **state)
{
    (void)state;
    const int n = 4, rot = 8;
    int64_t pos[4] = { 0, 1, 3, 4000000007LL };
    double inv[4] = { 1.0, 0.1, 0.01, 1e-4 }, want[4 * 8];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < rot / 2; j++) {
            want[i * rot + j] = cos((double)pos[i] * inv[j]);
            want[i * rot + rot / 2 + j] = sin((double)pos[i] * inv[j]);
        }
    float *dcs = be->alloc(be, sizeof(float) * n * rot);
    assert_int_equal(be->reserve(be, 1, n, rot), 0);
    be->rope_table(be, dcs, pos, n, inv, rot);
    expect_near(dcs, want, (size_t)n * rot, 1e-6);
    be->free(be, dcs);
}

/* Reference attention of one problem, double precision. */
static void attn_ref(double *out, const float *q, const float *k, const float *v,
                     int n_q, int n_past, int heads, int kv_heads, int hd, int q_stride)
{
    int kv_dim = kv_heads * hd, group = heads / kv_heads;
    double *p = malloc(sizeof *p * (n_past + n_q));
    for (int i = 0; i < n_q; i++)
        for (int h = 0; h < heads; h++) {
            int kh = h / group, nk = n_past + i + 1;
            double mx = -INFINITY, sum = 0;
            for (int t = 0; t < nk; t++) {
                double s = 0;
                for (int j = 0; j < hd; j++)
                    s += (double)q[i * q_stride + h * hd + j] * k[t * kv_dim + kh * hd + j];
                p[t] = s / sqrt(hd);
                mx = p[t] > mx ? p[t] : mx;
            }
            for (int t = 0; t < nk; t++)
                sum += (p[t] = exp(p[t] - mx));
            for (int j = 0; j < hd; j++) {
                double o = 0;
                for (int t = 0; t < nk; t++)
                    o += p[t] / sum * v[t * kv_dim + kh * hd + j];
                out[(size_t)i * heads * hd + h * hd + j] = o;
            }
        }
    free(p);
}

/* Problems n_q[p] queries over n_past[p] cached keys in one call, head
 * size hd, heads query heads sharing kv_heads key/value heads. */
static void attention_case(int hd, int heads, int kv_heads, int n_probs, const int *n_q,
                           const int *n_past)
{
    const int q_stride = heads * hd + 5, kv_dim = kv_heads * hd;
    sep_attn_t *probs = malloc(sizeof *probs * n_probs);
    double **want = malloc(sizeof *want * n_probs);
    float **bufs = malloc(sizeof *bufs * 4 * n_probs);
    assert_true(probs && want && bufs);
    int max_keys = 0;
    for (int p = 0; p < n_probs; p++) {
        int nk = n_past[p] + n_q[p];
        float *q = rand_vec((size_t)n_q[p] * q_stride, 10 + p);
        float *k = rand_vec((size_t)nk * kv_dim, 1000 + p);
        float *v = rand_vec((size_t)nk * kv_dim, 2000 + p);
        want[p] = malloc(sizeof(double) * n_q[p] * heads * hd);
        attn_ref(want[p], q, k, v, n_q[p], n_past[p], heads, kv_heads, hd, q_stride);
        bufs[4 * p] = dev(q, (size_t)n_q[p] * q_stride);
        bufs[4 * p + 1] = dev(k, (size_t)nk * kv_dim);
        bufs[4 * p + 2] = dev(v, (size_t)nk * kv_dim);
        bufs[4 * p + 3] = be->alloc(be, sizeof(float) * n_q[p] * heads * hd);
        probs[p] = (sep_attn_t){ .out = bufs[4 * p + 3], .q = bufs[4 * p], .k = bufs[4 * p + 1],
                                 .v = bufs[4 * p + 2], .n_q = n_q[p], .n_past = n_past[p],
                                 .out_stride = heads * hd, .q_stride = q_stride };
        max_keys = nk > max_keys ? nk : max_keys;
        free(q); free(k); free(v);
    }
    assert_int_equal(be->reserve(be, max_keys, 8, 8), 0);
    be->attention(be, probs, n_probs, heads, kv_heads, hd);
    for (int p = 0; p < n_probs; p++) {
        expect_near(probs[p].out, want[p], (size_t)n_q[p] * heads * hd, matmul_tol());
        free(want[p]);
        for (int b = 0; b < 4; b++)
            be->free(be, bufs[4 * p + b]);
    }
    free(probs); free(want); free(bufs);
}

/* y (n, d_out) := x w^T, downloaded */
static float *product(const float *x, const sep_weight_t *w, int n, int d_out)
{
    float *dy = be->alloc(be, sizeof(float) * n * d_out), *y = malloc(sizeof *y * n * d_out);
    assert_true(dy && y);
    be->matmul(be, dy, x, w, NULL, n);
    be->download(be, y, dy, sizeof *y * n * d_out);
    be->free(be, dy);
    return y;
}

/* A product reads what its input holds, wherever the input came from:
 * attention that writes the rows of one buffer in two rounds (with a
 * cache append between them, as a layer does), read by a product after
 * the first round only (a third of its rows still hold older values) and
 * after both, each equal to the product of a plain copy of the buffer. */
static void test_product_after_attention(void **state)
{
    (void)state;
    enum { HD = 64, HEADS = 4, ROWS = 12, PAST = 20, W = HEADS * HD, D_OUT = 24 };
    float *q = rand_vec((size_t)ROWS * W, 31), *kv = rand_vec((size_t)(PAST + 8) * HD, 32);
    float *old = rand_vec((size_t)ROWS * W, 33), *other = rand_vec((size_t)ROWS * W, 34);
    float *w = rand_vec((size_t)D_OUT * W, 35);
    float *dq = dev(q, (size_t)ROWS * W), *dk = dev(kv, (size_t)(PAST + 8) * HD);
    float *dv = dev(kv, (size_t)(PAST + 8) * HD), *da = dev(old, (size_t)ROWS * W);
    float *dother = dev(other, (size_t)ROWS * W), *dcopy = be->alloc(be, sizeof(float) * ROWS * W);
    sep_weight_t *dw = be->weight_new(be, w, D_OUT, W);
    assert_true(dcopy && dw);
    assert_int_equal(be->reserve(be, PAST + 8, ROWS, W), 0);
    /* rows 0-3 and 8-11 in round one, 4-7 in round two */
    sep_attn_t round1[2], round2[1];
    for (int p = 0; p < 3; p++) {
        int row = p == 0 ? 0 : p == 1 ? 8 : 4;
        sep_attn_t a = { .out = da + row * W, .q = dq + row * W, .k = dk, .v = dv, .n_q = 4,
                         .n_past = PAST, .out_stride = W, .q_stride = W };
        if (p < 2)
            round1[p] = a;
        else
            round2[0] = a;
    }
    for (int rounds = 1; rounds <= 2; rounds++) {
        be->upload(be, da, old, sizeof(float) * ROWS * W);
        free(product(dother, dw, ROWS, D_OUT)); /* other values in any scratch first */
        be->attention(be, round1, 2, HEADS, 1, HD);
        if (rounds == 2) {
            sep_rows_t append = { dk + PAST * HD, dv, HD, HD, 4, HD };
            be->copy_rows(be, &append, 1);
            be->attention(be, round2, 1, HEADS, 1, HD);
        }
        float *got = product(da, dw, ROWS, D_OUT);
        sep_rows_t copy = { dcopy, da, W, W, ROWS, W };
        be->copy_rows(be, &copy, 1);
        float *want = product(dcopy, dw, ROWS, D_OUT);
        for (int i = 0; i < ROWS * D_OUT; i++)
            if (got[i] != want[i])
                fail_msg("%d rounds, element %d: %.7g, want %.7g", rounds, i, got[i], want[i]);
        free(got);
        free(want);
    }
    free(q); free(kv); free(old); free(other); free(w);
    be->free(be, dq); be->free(be, dk); be->free(be, dv); be->free(be, da);
    be->free(be, dother); be->free(be, dcopy); be->weight_free(be, dw);
}

/* The residual add and norm right after a product (GPU, a few rows: one
 * launch, whose last block norms): after a product and after the SwiGLU
 * MLP, of one row, a few and many, RMSNorm and LayerNorm, and with the
 * product's output read between the two. */
static void test_product_then_norm(void **state)
{
    (void)state;
    enum { DIN = 40, D = 72, F = 16 };
    static const int ns[] = { 1, 3, 7 };
    float *w = rand_vec((size_t)D * DIN, 41), *wu = rand_vec((size_t)2 * F * DIN, 42);
    float *wd = rand_vec((size_t)DIN * F, 43), *nw = rand_vec(D, 44), *nb = rand_vec(D, 45);
    sep_weight_t *dw = be->weight_new(be, w, D, DIN), *dwu = be->weight_new(be, wu, 2 * F, DIN);
    sep_weight_t *dwd = be->weight_new(be, wd, DIN, F);
    float *dnw = dev(nw, D), *dnb = dev(nb, D);
    assert_true(dw && dwu && dwd);
    assert_int_equal(be->reserve(be, 1, 8, D), 0);
    for (int c = 0; c < 12; c++) {
        int n = ns[c % 3], ln = c / 3 % 2, mlp = c / 6, d = mlp ? DIN : D;
        float *x = rand_vec((size_t)n * DIN, 46 + c), *r = rand_vec((size_t)n * d, 60 + c);
        float *dx = dev(x, (size_t)n * DIN), *dr = dev(r, (size_t)n * d);
        float *dy = be->alloc(be, sizeof(float) * n * d);
        float *dh = be->alloc(be, sizeof(float) * n * d);
        float *gu = be->alloc(be, sizeof(float) * n * 2 * F);
        float *act = be->alloc(be, sizeof(float) * n * F);
        float *y = malloc(sizeof *y * n * d);
        double *want_x = malloc(sizeof *want_x * n * d), *want_h = malloc(sizeof *want_h * n * d);
        assert_true(y && want_x && want_h);
        if (mlp)
            be->swiglu(be, dy, dx, dwu, NULL, dwd, NULL, n, gu, act);
        else
            be->matmul(be, dy, dx, dw, NULL, n);
        if (c % 3 == 2) /* read between: the product must have run */
            be->download(be, y, dy, sizeof *y * n * d);
        if (ln)
            be->layernorm(be, dh, dr, dy, dnw, dnb, n, d, 1e-5f);
        else
            be->rmsnorm(be, dh, dr, dy, dnw, n, d, 1e-5f);
        be->download(be, y, dy, sizeof *y * n * d);
        norm_ref(want_x, want_h, r, y, nw, ln ? nb : NULL, n, d);
        expect_near(dr, want_x, (size_t)n * d, 1e-6);
        expect_near(dh, want_h, (size_t)n * d, 1e-5);
        if (!mlp) { /* and the product itself */
            matmul_ref(want_x, x, w, NULL, n, DIN, D);
            expect_near(dy, want_x, (size_t)n * D, matmul_tol());
        }
        free(x); free(r); free(y); free(want_x); free(want_h);
        be->free(be, dx); be->free(be, dr); be->free(be, dy); be->free(be, dh);
        be->free(be, gu); be->free(be, act);
    }
    free(w); free(wu); free(wd); free(nw); free(nb);
    be->weight_free(be, dw); be->weight_free(be, dwu); be->weight_free(be, dwd);
    be->free(be, dnw); be->free(be, dnb);
}

/* Head sizes of whole vector tiles and with a remainder (GQA 3:1); the
 * sizes of real models (64 and 128, GQA 4:1) with long and causal chunks,
 * one-token steps over long caches and a problem with no cache; more
 * problems than one GPU launch takes. */
static void test_attention(void **state)
{
    (void)state;
    static const int q2[] = { 70, 1 }, past2[] = { 33, 90 };
    attention_case(16, 6, 2, 2, q2, past2);
    attention_case(20, 6, 2, 2, q2, past2);
    static const int q3[] = { 200, 1, 17 }, past3[] = { 700, 900, 0 };
    attention_case(64, 8, 2, 3, q3, past3);
    static const int q4[] = { 1, 130 }, past4[] = { 1500, 64 };
    attention_case(128, 8, 2, 2, q4, past4);
    int qn[50], pastn[50];
    for (int p = 0; p < 50; p++) {
        qn[p] = 1 + p % 4;
        pastn[p] = 40 + 3 * p;
    }
    attention_case(64, 4, 1, 50, qn, pastn);
}

/* A run's layout (sep_attn_run_t) as a model makes it: segment 0 sees the
 * cache from its first row, each later one its own prefix of pre[s] rows
 * (the prefix rows one after another) ahead of a window that starts
 * jump[s] rows after the previous one's; the tokens take consecutive
 * rows. Returns the queries; keys gets one entry per query. */
typedef struct {
    int n_seg;
    const int *len, *pre, *jump;
    int first_win;   /* window rows segment 0's first query sees before itself */
} run_shape_t;

static int run_layout(const run_shape_t *sh, sep_attn_keys_t *keys, int *n_pre_rows,
                      int *n_win_rows)
{
    int n = 0, pre = 0, lo = 0, end = sh->first_win; /* end: the next token's row */
    for (int s = 0; s < sh->n_seg; s++) {
        int np = s ? sh->pre[s] : 0;
        lo += s ? sh->jump[s] : 0;
        for (int i = 0; i < sh->len[s]; i++)
            keys[n++] = (sep_attn_keys_t){ pre, pre + np, lo, ++end };
        pre += np;
    }
    *n_pre_rows = pre;
    *n_win_rows = end;
    return n;
}

/* Runs of segments in one call against the same queries as attention
 * problems over their keys laid out one after another, a problem a
 * segment (the CPU: the same bits), and against the double reference. */
static void attention_runs_case(int hd, int heads, int kv_heads, int n_runs,
                                const run_shape_t *shapes)
{
    const int q_stride = heads * hd + 3, kv_dim = kv_heads * hd, width = heads * hd;
    sep_attn_run_t *runs = calloc((size_t)n_runs, sizeof *runs);
    float **host = calloc((size_t)n_runs * 5, sizeof *host);
    float **devb = calloc((size_t)n_runs * 7, sizeof *devb);
    sep_attn_keys_t **keys = calloc((size_t)n_runs, sizeof *keys);
    assert_true(runs && host && devb && keys);
    int max_keys = 1;
    for (int r = 0; r < n_runs; r++) {
        int total = 0, n_pre, n_win;
        for (int s = 0; s < shapes[r].n_seg; s++)
            total += shapes[r].len[s];
        keys[r] = malloc(sizeof **keys * total);
        assert_non_null(keys[r]);
        int n_q = run_layout(&shapes[r], keys[r], &n_pre, &n_win);
        float *q = rand_vec((size_t)n_q * q_stride, 100 + r);
        float *pk = rand_vec((size_t)(n_pre + 1) * kv_dim, 200 + r);
        float *pv = rand_vec((size_t)(n_pre + 1) * kv_dim, 300 + r);
        float *k = rand_vec((size_t)n_win * kv_dim, 400 + r);
        float *v = rand_vec((size_t)n_win * kv_dim, 500 + r);
        host[5 * r] = q; host[5 * r + 1] = pk; host[5 * r + 2] = pv;
        host[5 * r + 3] = k; host[5 * r + 4] = v;
        devb[7 * r] = dev(q, (size_t)n_q * q_stride);
        devb[7 * r + 1] = dev(pk, (size_t)(n_pre + 1) * kv_dim);
        devb[7 * r + 2] = dev(pv, (size_t)(n_pre + 1) * kv_dim);
        devb[7 * r + 3] = dev(k, (size_t)n_win * kv_dim);
        devb[7 * r + 4] = dev(v, (size_t)n_win * kv_dim);
        devb[7 * r + 5] = be->alloc(be, sizeof(float) * n_q * width);
        devb[7 * r + 6] = be->alloc(be, sizeof *keys[r] * n_q);
        assert_true(devb[7 * r + 5] && devb[7 * r + 6]);
        be->upload(be, devb[7 * r + 6], keys[r], sizeof *keys[r] * n_q);
        runs[r] = (sep_attn_run_t){ .out = devb[7 * r + 5], .q = devb[7 * r],
                                    .pk = devb[7 * r + 1], .pv = devb[7 * r + 2],
                                    .k = devb[7 * r + 3], .v = devb[7 * r + 4],
                                    .keys = (const sep_attn_keys_t *)devb[7 * r + 6],
                                    .n_q = n_q, .out_stride = width, .q_stride = q_stride };
        for (int i = 0; i < n_q; i++) {
            int nk = keys[r][i].pre_hi - keys[r][i].pre_lo + keys[r][i].win_hi - keys[r][i].win_lo;
            max_keys = nk > max_keys ? nk : max_keys;
        }
    }
    assert_int_equal(be->reserve(be, max_keys, 8, 8), 0);
    be->attention_runs(be, runs, n_runs, heads, kv_heads, hd);
    for (int r = 0; r < n_runs; r++) {
        int n_q = runs[r].n_q;
        const float *q = host[5 * r], *pk = host[5 * r + 1], *pv = host[5 * r + 2];
        const float *k = host[5 * r + 3], *v = host[5 * r + 4];
        float *got = malloc(sizeof *got * n_q * width), *one = malloc(sizeof *one * n_q * width);
        assert_true(got && one);
        be->download(be, got, runs[r].out, sizeof *got * n_q * width);
        /* each segment as one problem: its prefix rows, then its window
         * rows up to its last query's own key */
        for (int s = 0, i0 = 0; s < shapes[r].n_seg; i0 += shapes[r].len[s], s++) {
            const sep_attn_keys_t *f = &keys[r][i0], *l = &keys[r][i0 + shapes[r].len[s] - 1];
            int np = f->pre_hi - f->pre_lo, nw = l->win_hi - f->win_lo, len = shapes[r].len[s];
            float *kk = malloc(sizeof *kk * (np + nw) * kv_dim);
            float *vv = malloc(sizeof *vv * (np + nw) * kv_dim);
            assert_true(kk && vv);
            memcpy(kk, pk + (size_t)f->pre_lo * kv_dim, sizeof *kk * np * kv_dim);
            memcpy(vv, pv + (size_t)f->pre_lo * kv_dim, sizeof *vv * np * kv_dim);
            memcpy(kk + (size_t)np * kv_dim, k + (size_t)f->win_lo * kv_dim,
                   sizeof *kk * nw * kv_dim);
            memcpy(vv + (size_t)np * kv_dim, v + (size_t)f->win_lo * kv_dim,
                   sizeof *vv * nw * kv_dim);
            int n_past = np + f->win_hi - f->win_lo - 1;
            double *want = malloc(sizeof *want * len * width);
            assert_non_null(want);
            attn_ref(want, q + (size_t)i0 * q_stride, kk, vv, len, n_past, heads, kv_heads, hd,
                     q_stride);
            float *dq = dev(q + (size_t)i0 * q_stride, (size_t)len * q_stride);
            float *dk = dev(kk, (size_t)(np + nw) * kv_dim), *dv = dev(vv, (size_t)(np + nw) * kv_dim);
            float *dout = be->alloc(be, sizeof(float) * len * width);
            assert_non_null(dout);
            sep_attn_t prob = { .out = dout, .q = dq, .k = dk, .v = dv, .n_q = len,
                                .n_past = n_past, .out_stride = width, .q_stride = q_stride };
            be->attention(be, &prob, 1, heads, kv_heads, hd);
            be->download(be, one + (size_t)i0 * width, dout, sizeof(float) * len * width);
            expect_near(runs[r].out + (size_t)i0 * width, want, (size_t)len * width, matmul_tol());
            free(kk); free(vv); free(want);
            be->free(be, dq); be->free(be, dk); be->free(be, dv); be->free(be, dout);
        }
        if (strcmp(be->name, "cpu") == 0) {
            for (int i = 0; i < n_q * width; i++)
                if (memcmp(&got[i], &one[i], sizeof *got) != 0)
                    fail_msg("run %d, query %d, element %d: %.9g, as one problem %.9g", r,
                             i / width, i % width, got[i], one[i]);
        } else {
            for (int i = 0; i < n_q * width; i++)
                if (fabs(got[i] - one[i]) > matmul_tol() * (1 + fabs(one[i])))
                    fail_msg("run %d, query %d, element %d: %.7g, as one problem %.7g", r,
                             i / width, i % width, got[i], one[i]);
        }
        free(got); free(one);
    }
    for (int r = 0; r < n_runs; r++) {
        for (int b = 0; b < 5; b++)
            free(host[5 * r + b]);
        for (int b = 0; b < 7; b++)
            be->free(be, devb[7 * r + b]);
        free(keys[r]);
    }
    free(runs); free(host); free(devb); free(keys);
}

/* Runs as eviction makes them: StreamingLLM's one-token segments with a
 * window sliding a row a token and the same prefix size (100 of them:
 * several tasks, several tiles of queries), SepLLM's longer segments
 * whose prefix grows and whose window jumps, a segment 0 only, prefixes
 * of no rows (a = 0); head sizes of whole vector tiles and not, GQA, the
 * GPU's tensor-core sizes (64, 128), and more runs than one launch takes. */
static void test_attention_runs(void **state)
{
    (void)state;
    enum { N = 100 };
    int ones[N], four[N], slide[N], zero[N];
    for (int i = 0; i < N; i++) {
        ones[i] = 1;
        four[i] = 4;
        slide[i] = 1;
        zero[i] = 0;
    }
    run_shape_t streaming = { N, ones, four, slide, 60 };
    run_shape_t streaming_a0 = { 40, ones, zero, slide, 30 };
    static const int len[] = { 13, 9, 20, 1, 70 }, pre[] = { 0, 5, 8, 8, 12 },
                     jump[] = { 0, 11, 9, 20, 1 };
    run_shape_t sepllm = { 5, len, pre, jump, 40 };
    run_shape_t alone = { 1, len, pre, jump, 17 };
    run_shape_t mix[3] = { streaming, sepllm, streaming_a0 };
    attention_runs_case(16, 4, 2, 3, mix);
    attention_runs_case(20, 6, 2, 3, mix);
    attention_runs_case(48, 6, 6, 3, mix);
    attention_runs_case(64, 8, 2, 3, mix);
    attention_runs_case(128, 8, 2, 3, mix);
    attention_runs_case(64, 4, 4, 1, &alone);
    run_shape_t many[40];
    for (int r = 0; r < 40; r++)
        many[r] = r % 2 ? sepllm : (run_shape_t){ 3 + r % 5, ones, four, slide, 20 + r };
    attention_runs_case(64, 4, 1, 40, many);
}

/* The SwiGLU MLP against its definition: one row, a few and many (GPU:
 * the fused GEMVs, and the bf16 products), with and without biases, and
 * widths of whole 16-byte vectors and ones without. */
static void test_swiglu(void **state)
{
    (void)state;
    static const int ns[] = { 1, 3, 37 }, dims[] = { 72, 70 };
    for (int c = 0; c < 6; c++) {
        int n = ns[c % 3], dim = dims[c / 3], f = c < 3 ? 40 : 36, biased = c % 2;
        float *x = rand_vec((size_t)n * dim, 21), *wu = rand_vec((size_t)2 * f * dim, 22);
        float *wd = rand_vec((size_t)dim * f, 23), *bu = rand_vec(2 * f, 24);
        float *bd = rand_vec(dim, 25);
        /* the gate in silu's curved range; outputs near 1 */
        for (int i = 0; i < 2 * f * dim; i++)
            wu[i] *= 0.25f;
        for (int i = 0; i < dim * f; i++)
            wd[i] *= 0.25f;
        double *want = malloc(sizeof *want * n * dim), *act = malloc(sizeof *act * f);
        assert_non_null(want);
        assert_non_null(act);
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < f; j++) {
                double g = biased ? bu[j] : 0, u = biased ? bu[f + j] : 0;
                for (int k = 0; k < dim; k++) {
                    g += (double)x[i * dim + k] * wu[j * dim + k];
                    u += (double)x[i * dim + k] * wu[(f + j) * dim + k];
                }
                act[j] = g / (1 + exp(-g)) * u;
            }
            for (int o = 0; o < dim; o++) {
                double s = biased ? bd[o] : 0;
                for (int j = 0; j < f; j++)
                    s += act[j] * wd[o * f + j];
                want[i * dim + o] = s;
            }
        }
        sep_weight_t *dwu = be->weight_new(be, wu, 2 * f, dim);
        sep_weight_t *dwd = be->weight_new(be, wd, dim, f);
        assert_non_null(dwu);
        assert_non_null(dwd);
        float *dx = dev(x, (size_t)n * dim), *dbu = dev(bu, 2 * f), *dbd = dev(bd, dim);
        float *gu = be->alloc(be, sizeof(float) * n * 2 * f);
        float *da = be->alloc(be, sizeof(float) * n * f);
        float *dy = be->alloc(be, sizeof(float) * n * dim);
        assert_int_equal(be->reserve(be, 1, n, dim > f ? dim : f), 0);
        be->swiglu(be, dy, dx, dwu, biased ? dbu : NULL, dwd, biased ? dbd : NULL, n, gu, da);
        expect_near(dy, want, (size_t)n * dim, 2 * matmul_tol()); /* two products */
        free(x); free(wu); free(wd); free(bu); free(bd); free(want); free(act);
        be->weight_free(be, dwu); be->weight_free(be, dwd);
        be->free(be, dx); be->free(be, dbu); be->free(be, dbd);
        be->free(be, gu); be->free(be, da); be->free(be, dy);
    }
}

static void test_activations(void **state)
{
    (void)state;
    int n = 4, d = 10;
    float *x = rand_vec((size_t)n * d, 9);
    for (int i = 0; i < n * d; i++)
        x[i] *= 4; /* reach the tails of gelu */
    double *ge = malloc(sizeof *ge * n * d), *gt = malloc(sizeof *gt * n * d);
    for (int i = 0; i < n * d; i++) {
        double v = x[i];
        ge[i] = 0.5 * v * (1 + erf(v / sqrt(2.0)));
        gt[i] = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    }
    float *dx = dev(x, (size_t)n * d);
    be->gelu(be, dx, (size_t)n * d, 0);
    expect_near(dx, ge, (size_t)n * d, 1e-6);
    be->upload(be, dx, x, sizeof(float) * n * d);
    be->gelu(be, dx, (size_t)n * d, 1);
    expect_near(dx, gt, (size_t)n * d, 1e-6);
    be->add(be, dx, dx, (size_t)n * d);
    for (int i = 0; i < n * d; i++)
        gt[i] *= 2;
    expect_near(dx, gt, (size_t)n * d, 1e-6);
    free(x); free(ge); free(gt);
    be->free(be, dx);
}

/* NLL of targets, with a skipped row and logits far from zero. */
static void test_nll(void **state)
{
    (void)state;
    int n = 3, vocab = 1000;
    float *lg = rand_vec((size_t)n * vocab, 11);
    for (int j = 0; j < vocab; j++)
        lg[2 * vocab + j] = lg[2 * vocab + j] * 30 + 500;
    int32_t tgt[3] = { 7, -1, 999 };
    float nll[3] = { 0, 42, 0 };
    double want[3];
    for (int i = 0; i < n; i++) {
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < vocab; j++)
            mx = lg[i * vocab + j] > mx ? lg[i * vocab + j] : mx;
        for (int j = 0; j < vocab; j++)
            s += exp(lg[i * vocab + j] - mx);
        want[i] = tgt[i] < 0 ? 42 : mx + log(s) - lg[i * vocab + tgt[i]];
    }
    float *dl = dev(lg, (size_t)n * vocab);
    be->nll(be, nll, dl, tgt, n, vocab);
    for (int i = 0; i < n; i++)
        assert_true(fabs(nll[i] - want[i]) < 1e-4 * (1 + fabs(want[i])));
    free(lg);
    be->free(be, dl);
}

/* The greedy pick of a row and its NLL: ties go to the lowest index,
 * -inf entries count for nothing, a NaN or +inf or an all -inf row gives
 * -1. Rows wider than a block's threads, the largest value last. (The
 * sampled picks: test_sample.) */
static void test_greedy(void **state)
{
    (void)state;
    int n = 6, vocab = 3001;
    float *lg = rand_vec((size_t)n * vocab, 13);
    lg[0 * vocab + 2999] = 40.0f;          /* row 0: the maximum near the end */
    lg[1 * vocab + 17] = lg[1 * vocab + 2500] = lg[1 * vocab + 3000] = 9.0f; /* a tie */
    for (int j = 0; j < vocab; j += 2)     /* row 2: half the tokens masked */
        lg[2 * vocab + j] = -INFINITY;
    lg[3 * vocab + 1234] = NAN;
    lg[4 * vocab + 5] = INFINITY;
    for (int j = 0; j < vocab; j++)
        lg[5 * vocab + j] = -INFINITY;
    int best2 = 1; /* row 2's best: the first largest of the odd ids */
    for (int j = 3; j < vocab; j += 2)
        best2 = lg[2 * vocab + j] > lg[2 * vocab + best2] ? j : best2;
    int32_t want_tok[6] = { 2999, 17, best2, -1, -1, -1 };
    int32_t tok[6];
    float nll[6];
    float *dl = dev(lg, (size_t)n * vocab);
    sep_pick_t greedy[6];
    for (int i = 0; i < n; i++)
        greedy[i] = (sep_pick_t){ .top_p = 1, .repetition = 1, .limit = vocab };
    be->pick(be, tok, nll, dl, n, vocab, greedy);
    for (int i = 0; i < n; i++) {
        assert_int_equal(tok[i], want_tok[i]);
        if (tok[i] < 0) {
            assert_true(isnan(nll[i]));
            continue;
        }
        const float *row = lg + (size_t)i * vocab;
        double s = 0;
        for (int j = 0; j < vocab; j++)
            s += exp((double)row[j] - row[tok[i]]);
        assert_true(fabs(nll[i] - log(s)) < 1e-4 * (1 + log(s)));
    }
    free(lg);
    be->free(be, dl);
}

/* In-place compaction gather and strided row copies. */
static void test_rows(void **state)
{
    (void)state;
    int w = 3, n = 6;
    float *src = rand_vec((size_t)n * w, 12);
    int32_t keep[4] = { 0, 2, 3, 5 };
    double want[12];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < w; j++)
            want[i * w + j] = src[keep[i] * w + j];
    float *d = dev(src, (size_t)n * w);
    sep_gather_t g = { d, d, keep, 4, w };
    be->gather_rows(be, &g, 1);
    expect_near(d, want, 4 * (size_t)w, 0);
    /* two blocks in one call: rows 0-1 and 2-3 into a wider layout */
    float *strided = be->alloc(be, sizeof(float) * 4 * 5);
    sep_rows_t blocks[2] = { { strided, d, 5, w, 2, w },
                             { strided + 2 * 5, d + 2 * w, 5, w, 2, w } };
    be->copy_rows(be, blocks, 2);
    float got[20];
    be->download(be, got, strided, sizeof got);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < w; j++)
            assert_true(got[i * 5 + j] == (float)want[i * w + j]);
    free(src);
    be->free(be, d);
    be->free(be, strided);
}

/* IEEE half bits as a float, from the format's definition. */
static float half_ref(uint16_t h)
{
    int e = h >> 10 & 0x1f, m = h & 0x3ff;
    float v = e == 0x1f ? INFINITY : e ? ldexpf((float)(m | 0x400), e - 25) : ldexpf((float)m, -24);
    return h & 0x8000 ? -v : v;
}

/* A weight loaded as a checkpoint stores it (bf16, f16 or f32 elements,
 * in pieces: from other memory, from a stage buffer, two fills from one
 * buffer) is, bit for bit, the weight made from the same values in fp32:
 * its rows read back and a product with it. Specials included: signed
 * zeros, subnormals, infinities, the largest finite values. */
static void test_weight_fill(void **state)
{
    (void)state;
    enum { ROWS = 37, COLS = 70, N = ROWS * COLS, P1 = 5, P2 = 3 * COLS + 7 };
    static const sep_elem_t elems[] = { SEP_ELEM_BF16, SEP_ELEM_F16, SEP_ELEM_F32 };
    static const uint16_t sp_bf16[] = { 0x0000, 0x8000, 0x0001, 0x807f, 0x7f80, 0xff80, 0x7f7f };
    static const uint16_t sp_f16[] = { 0x0000, 0x8000, 0x0001, 0x83ff, 0x7c00, 0xfc00, 0x7bff };
    float *f32 = malloc(N * sizeof *f32), *x = rand_vec(3 * COLS, 81);
    uint16_t *raw16 = malloc(N * sizeof *raw16);
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    float *dx = dev(x, 3 * COLS), *dy = be->alloc(be, N * sizeof(float));
    int32_t ids[ROWS];
    assert_true(f32 && raw16 && a && b && dy);
    for (int i = 0; i < ROWS; i++)
        ids[i] = i;
    assert_int_equal(be->reserve(be, 1, ROWS, COLS), 0);
    for (int c = 0; c < 3; c++) {
        sep_elem_t e = elems[c];
        size_t esz = sep_elem_size(e);
        uint32_t seed = 99 + c;
        float *r32 = rand_vec(N, 91 + c);
        for (int i = 0; i < N; i++) {
            seed = seed * 1103515245u + 12345u;
            uint16_t h = (uint16_t)(seed >> 12);
            if (e == SEP_ELEM_BF16) {
                h = i < 7 ? sp_bf16[i] : (h & 0x7f80) == 0x7f80 ? h & 0xbfff : h; /* no NaN */
                uint32_t u = (uint32_t)h << 16;
                memcpy(&f32[i], &u, sizeof u);
            } else if (e == SEP_ELEM_F16) {
                h = i < 7 ? sp_f16[i] : (h & 0x7c00) == 0x7c00 ? h & 0xbfff : h;
                f32[i] = half_ref(h);
            } else {
                f32[i] = r32[i];
            }
            raw16[i] = h;
        }
        const unsigned char *raw = e == SEP_ELEM_F32 ? (const void *)r32 : (const void *)raw16;
        sep_weight_t *want = be->weight_new(be, f32, ROWS, COLS);
        sep_weight_t *got = be->weight_alloc(be, ROWS, COLS);
        assert_true(want && got);
        assert_int_equal(be->weight_fill(be, got, 0, raw, P1, e), 0);
        size_t bytes = P2 * esz;
        unsigned char *buf = be->stage(be, &bytes);
        assert_non_null(buf);
        assert_int_equal(bytes, P2 * esz);
        memcpy(buf, raw + P1 * esz, P2 * esz);
        assert_int_equal(be->weight_fill(be, got, P1, buf, 100, e), 0);
        assert_int_equal(be->weight_fill(be, got, P1 + 100, buf + 100 * esz, P2 - 100, e), 0);
        assert_int_equal(be->weight_fill(be, got, P1 + P2, raw + (P1 + P2) * esz,
                                         N - P1 - P2, e), 0);
        int rc = be->weight_fill(be, got, N - 3, raw, 5, e);
        assert_int_equal(rc, SEP_EINVAL);
        assert_non_null(strstr(sep_errmsg(), "weight_fill"));
        assert_int_equal(be->load_end(be), 0);
        be->weight_rows(be, dy, want, ids, ROWS);
        be->download(be, a, dy, N * sizeof(float));
        be->weight_rows(be, dy, got, ids, ROWS);
        be->download(be, b, dy, N * sizeof(float));
        for (int i = 0; i < N; i++)
            if (memcmp(&a[i], &b[i], sizeof(float)))
                fail_msg("format %d: element %d: %a loaded, %a from fp32", (int)e, i, b[i], a[i]);
        be->matmul(be, dy, dx, want, NULL, 3);
        be->download(be, a, dy, 3 * ROWS * sizeof(float));
        be->matmul(be, dy, dx, got, NULL, 3);
        be->download(be, b, dy, 3 * ROWS * sizeof(float));
        assert_memory_equal(a, b, 3 * ROWS * sizeof(float));
        be->weight_free(be, want);
        be->weight_free(be, got);
        free(r32);
    }
    free(f32); free(x); free(raw16); free(a); free(b);
    be->free(be, dx); be->free(be, dy);
}

/* The vectorised exp against libm over the range softmax uses. */
static void test_fast_exp(void **state)
{
    (void)state;
    double worst = 0;
    for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
        double rel = fabs(sep_expf(x) - exp((double)x)) / exp((double)x);
        worst = rel > worst ? rel : worst;
    }
    assert_true(worst < 4e-7);
    assert_true(sep_expf(-1000.0f) >= 0.0f && sep_expf(-1000.0f) < 1e-37f);
    assert_true(isfinite(sep_expf(1000.0f)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_rows_invariant),
        cmocka_unit_test(test_norms),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_table),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_runs),
        cmocka_unit_test(test_product_after_attention),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_product_then_norm),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_nll),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_weight_fill),
        cmocka_unit_test(test_fast_exp),
    };
    return cmocka_run_group_tests_name("kernels", tests, setup, teardown);
}
