/* test_forward: the CPU forward pass against the golden NLLs.
 *
 * Every run of ../shared/golden/summary.json (full, streaming, sepllm,
 * shift on and off), every hf_full file (transformers, fp32) including the
 * architecture variants: each token's NLL within 2e-3, perplexity within
 * 0.1%, average and largest cache size exact. Runs again one token per
 * step (--per-token) must give the chunked NLLs within 1e-4. Then the
 * invariances chunked execution relies on, a model split into pipeline
 * stages against the whole one, the separator archive's rows, the weights
 * loaded as stored against the same made from fp32, and bad checkpoints. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "err.h"
#include "golden.h"
#include "model.h"
#include "safetensors.h"
#include "separators.h"
#include "stream.h"

#define NLL_TOL 2e-3
#define PPL_RTOL 1e-3

typedef struct {
    char name[128];
    char model_dir[512];
    char ids[512];
    char nll[512];
    int tokens;
    double ppl, avg_kv;
    long max_kv; /* < 0: not given */
    sep_policy_t policy;
    int per_token;   /* tokens to compare one token per step (0: none) */
} run_t;

static sep_backend_t *be;
static const sep_policy_t full_policy = { .method = SEP_METHOD_FULL, .shift = 1 };

static int setup_backend(void **state)
{
    (void)state;
    return sep_backend_new(&be, golden_device(), golden_precision(), 0);
}

static int teardown_backend(void **state)
{
    (void)state;
    sep_backend_destroy(&be);
    return 0;
}

/* When not 0: the memory score's model gives the prefix copies of a round
 * of runs (sep_run_t.run_bytes), to cut runs short. */
static size_t score_run_bytes;

/* Score the first tokens+1 ids of r through its model in chunks of chunk. */
static void score(const run_t *r, int tokens, int chunk, float **nll_out, sep_stream_t *counts)
{
    sep_model_t *m = NULL;
    sep_tok_t *tok = NULL;
    sep_sepset_t seps = { 0 };
    int32_t *ids;
    size_t n_ids, scored;
    char path[600];
    assert_int_equal(golden_read_ids(r->ids, &ids, &n_ids), 0);
    assert_true(n_ids >= (size_t)tokens + 1);
    snprintf(path, sizeof path, "%s/tokenizer.json", r->model_dir);
    assert_int_equal(sep_tok_load(&tok, path), 0);
    int rc = sep_model_load(&m, r->model_dir, be, chunk);
    if (rc)
        fail_msg("%s: %s", r->model_dir, sep_errmsg());
    if (score_run_bytes)
        m->run.run_bytes = score_run_bytes;
    assert_int_equal(sep_sepset_build(&seps, tok, "auto", m->cfg.vocab), 0);
    sep_policy_t policy = r->policy;
    policy.is_sep = seps.is_sep;
    policy.n_vocab = seps.n_vocab;
    sep_stream_t *s;
    assert_int_equal(sep_stream_new(&s, m, &policy), 0);
    float *nll = malloc(sizeof *nll * (tokens + 1));
    assert_non_null(nll);
    rc = sep_stream_feed(m, s, ids, (size_t)tokens + 1, nll, NULL, &scored);
    if (rc)
        fail_msg("feed: %s", sep_errmsg());
    assert_int_equal(scored, tokens);
    free(ids);
    sep_model_destroy(&m);
    sep_tok_destroy(&tok);
    *nll_out = nll;
    if (counts)
        *counts = *s; /* the counters; its pointers die below */
    sep_stream_destroy(&s);
    sep_sepset_free(&seps);
}

static void test_golden_run(void **state)
{
    const run_t *r = *state;
    float *want, *got;
    size_t n_want;
    sep_stream_t counts, *s = &counts;
    assert_int_equal(golden_read_floats(r->nll, &want, &n_want), 0);
    assert_int_equal(n_want, r->tokens);
    /* SEP_TEST_SCALE k: the first tokens / k (at least 256 and past the
     * cache's capacity, so it evicts), the golden perplexity of that
     * prefix; the cache sizes are the whole run's, checked at k = 1 */
    int k = golden_scale(), tokens = r->tokens;
    if (k > 1) {
        int least = r->policy.method == SEP_METHOD_FULL ? 256 : r->policy.c + 200;
        tokens = r->tokens / k > least ? r->tokens / k : least;
        tokens = tokens < r->tokens ? tokens : r->tokens;
        n_want = (size_t)tokens;
    }
    score(r, tokens, 512, &got, &counts);
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n_want; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (d > worst) {
            worst = d;
            at = i;
        }
    }
    if (worst > NLL_TOL)
        fail_msg("%s: token %zu: nll %.6f, golden %.6f", r->name, at, got[at], want[at]);
    double ppl = exp(s->nll_sum / s->tokens), want_ppl = r->ppl;
    if (tokens < r->tokens) {
        double sum = 0;
        for (int i = 0; i < tokens; i++)
            sum += want[i];
        want_ppl = exp(sum / tokens);
    }
    if (fabs(ppl - want_ppl) > PPL_RTOL * want_ppl)
        fail_msg("%s: ppl %.6f, golden %.6f", r->name, ppl, want_ppl);
    if (r->max_kv >= 0 && tokens == r->tokens) {
        assert_int_equal(s->kv_max, r->max_kv);
        assert_true(fabs((double)s->kv_sum / s->tokens - r->avg_kv) < 1e-9);
    }
    if (r->per_token) {
        /* the one-token-per-step loop gives the same NLLs */
        float *one;
        int n_one = r->per_token < tokens ? r->per_token : tokens;
        score(r, n_one, 1, &one, NULL);
        for (int i = 0; i < n_one; i++)
            if (fabs((double)one[i] - got[i]) > 1e-4)
                fail_msg("%s: token %d: per-token %.7f, chunked %.7f", r->name, i, one[i], got[i]);
        free(one);
    }
    free(want);
    free(got);
}

/* ---- the run list from summary.json ----------------------------------- */

static run_t *runs;
static size_t n_runs;

static run_t *add_run(void)
{
    run_t *nr = realloc(runs, (n_runs + 1) * sizeof *runs);
    assert_non_null(nr);
    runs = nr;
    memset(&runs[n_runs], 0, sizeof *runs);
    runs[n_runs].max_kv = -1;
    runs[n_runs].policy = full_policy;
    return &runs[n_runs++];
}

/* "persuasion.txt" -> "persuasion" */
static void text_stem(char *dst, size_t len, const char *text)
{
    snprintf(dst, len, "%s", text);
    char *dot = strrchr(dst, '.');
    if (dot)
        *dot = 0;
}

static void load_runs(void)
{
    json_error_t jerr;
    json_t *sum = json_load_file(golden_path("golden/summary.json"), 0, &jerr);
    if (!sum) {
        fprintf(stderr, "summary.json: %s\n", jerr.text);
        exit(1);
    }
    char stem[128];
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(sum, "runs"), i, e) {
        const char *model = json_string_value(json_object_get(e, "model"));
        run_t *r = add_run();
        text_stem(stem, sizeof stem, json_string_value(json_object_get(e, "text")));
        snprintf(r->name, sizeof r->name, "%s", json_string_value(json_object_get(e, "name")));
        snprintf(r->model_dir, sizeof r->model_dir, "%s", golden_path(json_string_value(json_object_get(e, "model_dir"))));
        snprintf(r->ids, sizeof r->ids, "%s/golden/ids.%s.%s.txt", golden_shared(), model, stem);
        snprintf(r->nll, sizeof r->nll, "%s/golden/%s", golden_shared(), json_string_value(json_object_get(e, "file")));
        r->tokens = (int)json_integer_value(json_object_get(e, "tokens"));
        r->ppl = json_number_value(json_object_get(e, "ppl"));
        r->avg_kv = json_number_value(json_object_get(e, "avg_kv"));
        r->max_kv = (long)json_integer_value(json_object_get(e, "max_kv"));
        assert_int_equal(sep_method_parse(json_string_value(json_object_get(e, "method")),
                                          &r->policy.method), 0);
        r->policy.a = (int)json_integer_value(json_object_get(e, "a"));
        r->policy.s = (int)json_integer_value(json_object_get(e, "s"));
        r->policy.c = (int)json_integer_value(json_object_get(e, "c"));
        r->policy.w = r->policy.method == SEP_METHOD_STREAMING
                          ? r->policy.c - r->policy.a
                          : (int)json_integer_value(json_object_get(e, "w"));
        r->policy.shift = !json_is_true(json_object_get(e, "noshift"));
        /* every evicting run again, one token per step */
        if (r->policy.method != SEP_METHOD_FULL)
            r->per_token = r->tokens;
    }
    /* hf_full.MODEL.TEXT.TOKENS.nll */
    json_array_foreach(json_object_get(sum, "hf_check"), i, e) {
        const char *file = json_string_value(json_object_get(e, "file"));
        char model[128];
        int tokens;
        assert_int_equal(sscanf(file, "hf_full.%127[^.].%127[^.].%d.nll", model, stem, &tokens), 3);
        run_t *r = add_run();
        snprintf(r->name, sizeof r->name, "%s", file);
        snprintf(r->model_dir, sizeof r->model_dir, "%s/models/%s", golden_shared(), model);
        snprintf(r->ids, sizeof r->ids, "%s/golden/ids.%s.%s.txt", golden_shared(), model, stem);
        snprintf(r->nll, sizeof r->nll, "%s/golden/%s", golden_shared(), file);
        r->tokens = tokens;
        r->ppl = json_number_value(json_object_get(e, "ppl"));
    }
    /* the architecture variants: transformers on their stored weights */
    json_array_foreach(json_object_get(sum, "arch_check"), i, e) {
        const char *dir = json_string_value(json_object_get(e, "model_dir"));
        const char *base = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
        run_t *r = add_run();
        snprintf(r->name, sizeof r->name, "hf_full %s", base);
        snprintf(r->model_dir, sizeof r->model_dir, "%s", golden_path(dir));
        snprintf(r->ids, sizeof r->ids, "%s/golden/%s", golden_shared(),
                 json_string_value(json_object_get(e, "ids")));
        r->tokens = (int)json_integer_value(json_object_get(e, "tokens"));
        snprintf(r->nll, sizeof r->nll, "%s/golden/%s", golden_shared(),
                 json_string_value(json_object_get(e, "file")));
        r->ppl = json_number_value(json_object_get(e, "ppl"));
    }
    json_decref(sum);
}

/* ---- invariances of chunked execution ---------------------------------- */

static run_t small_run(int tokens)
{
    run_t r = { .tokens = tokens, .max_kv = -1, .policy = full_policy };
    snprintf(r.model_dir, sizeof r.model_dir, "%s", golden_path("models/books-llama-16m"));
    snprintf(r.ids, sizeof r.ids, "%s", golden_path("golden/ids.books-llama-16m.persuasion.txt"));
    return r;
}

static void assert_close(const float *a, const float *b, int n, double tol, const char *what)
{
    for (int i = 0; i < n; i++)
        if (fabs((double)a[i] - b[i]) > tol)
            fail_msg("%s: token %d: %.7f vs %.7f", what, i, a[i], b[i]);
}

/* How far results may move with the chunking or the batch: the CPU
 * backend is bitwise batch-invariant for chunks of two tokens or more
 * (the one-token path takes other matrix kernels); the GPU's kernels pick
 * tiles by problem size. */
static double invariance_tol(void)
{
    return strcmp(golden_device(), "cpu") == 0 ? 0.0 : 1e-4;
}

static void test_chunk_size_invariance(void **state)
{
    (void)state;
    run_t r = small_run(300);
    float *one, *seven, *big;
    score(&r, r.tokens, 1, &one, NULL);
    score(&r, r.tokens, 7, &seven, NULL);
    score(&r, r.tokens, 512, &big, NULL);
    assert_close(one, big, r.tokens, 1e-4, "chunk 1 vs 512");
    assert_close(seven, big, r.tokens, invariance_tol(), "chunk 7 vs 512");
    free(one);
    free(seven);
    free(big);
}

/* Feeding in uneven pieces equals feeding at once. */
static void test_feed_in_pieces(void **state)
{
    (void)state;
    run_t r = small_run(400);
    float *whole;
    score(&r, r.tokens, 64, &whole, NULL);
    sep_model_t *m;
    sep_stream_t *s;
    int32_t *ids;
    size_t n_ids, scored, total = 0;
    assert_int_equal(golden_read_ids(r.ids, &ids, &n_ids), 0);
    assert_int_equal(sep_model_load(&m, r.model_dir, be, 64), 0);
    assert_int_equal(sep_stream_new(&s, m, &full_policy), 0);
    float nll[401];
    const size_t pieces[] = { 1, 1, 5, 100, 63, 64, 65, 102 }; /* sums to 401 */
    for (size_t p = 0, at = 0; p < sizeof pieces / sizeof pieces[0]; at += pieces[p], p++) {
        assert_int_equal(sep_stream_feed(m, s, ids + at, pieces[p], nll + total, NULL, &scored), 0);
        total += scored;
    }
    assert_int_equal(total, r.tokens);
    assert_close(nll, whole, r.tokens, invariance_tol(), "pieces vs whole");
    free(ids);
    free(whole);
    sep_stream_destroy(&s);
    sep_model_destroy(&m);
}

/* Two streams in one batch give what each gives alone. */
static void test_batch_of_streams(void **state)
{
    (void)state;
    run_t r = small_run(200);
    sep_model_t *m;
    sep_cache_t *c1, *c2;
    int32_t *ids;
    size_t n_ids;
    float *alone, both1[100], both2[150];
    score(&r, r.tokens, 512, &alone, NULL);
    assert_int_equal(golden_read_ids(r.ids, &ids, &n_ids), 0);
    assert_int_equal(sep_model_load(&m, r.model_dir, be, 512), 0);
    assert_int_equal(sep_model_cache_new(m, &full_policy, &c1), 0);
    assert_int_equal(sep_model_cache_new(m, &full_policy, &c2), 0);
    /* stream 1: tokens 0..99 then 100..199; stream 2: tokens 0..149 */
    sep_chunk_t b[2] = {
        { .cache = c1, .ids = ids, .n = 100, .targets = ids + 1, .nll = both1 },
        { .cache = c2, .ids = ids, .n = 150, .targets = ids + 1, .nll = both2 },
    };
    assert_int_equal(sep_model_forward(m, b, 2), 0);
    assert_close(both1, alone, 100, invariance_tol(), "batched stream 1");
    assert_close(both2, alone, 150, invariance_tol(), "batched stream 2");
    sep_chunk_t c = { .cache = c1, .ids = ids + 100, .n = 100, .targets = ids + 101, .nll = both1 };
    assert_int_equal(sep_model_forward(m, &c, 1), 0);
    assert_close(both1, alone + 100, 100, invariance_tol(), "stream 1 continued");
    free(ids);
    free(alone);
    sep_cache_destroy(&c1);
    sep_cache_destroy(&c2);
    sep_model_destroy(&m);
}

/* Streams of different policies in one batch, each crossing several
 * compactions inside the chunk, give what each gives alone. */
static void test_batch_of_policies(void **state)
{
    (void)state;
    run_t a = small_run(300), b = small_run(250);
    a.policy = (sep_policy_t){ .method = SEP_METHOD_SEPLLM, .a = 4, .s = 16, .w = 32, .c = 64,
                               .shift = 1 };
    b.policy = (sep_policy_t){ .method = SEP_METHOD_STREAMING, .a = 2, .w = 38, .c = 40,
                               .shift = 0 };
    float *alone_a, *alone_b, both_a[300], both_b[250];
    score(&a, a.tokens, 512, &alone_a, NULL);
    score(&b, b.tokens, 512, &alone_b, NULL);
    sep_model_t *m;
    sep_tok_t *tok;
    sep_sepset_t seps;
    sep_cache_t *ca, *cb;
    int32_t *ids, kv_a[300];
    size_t n_ids;
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", a.model_dir);
    assert_int_equal(sep_tok_load(&tok, path), 0);
    assert_int_equal(sep_sepset_build(&seps, tok, "auto", sep_tok_vocab_size(tok)), 0);
    a.policy.is_sep = seps.is_sep;
    a.policy.n_vocab = seps.n_vocab;
    assert_int_equal(golden_read_ids(a.ids, &ids, &n_ids), 0);
    assert_int_equal(sep_model_load(&m, a.model_dir, be, 600), 0);
    assert_int_equal(sep_model_cache_new(m, &a.policy, &ca), 0);
    assert_int_equal(sep_model_cache_new(m, &b.policy, &cb), 0);
    sep_chunk_t batch[2] = {
        { .cache = ca, .ids = ids, .n = 300, .targets = ids + 1, .nll = both_a, .kv = kv_a },
        { .cache = cb, .ids = ids, .n = 250, .targets = ids + 1, .nll = both_b },
    };
    assert_int_equal(sep_model_forward(m, batch, 2), 0);
    assert_close(both_a, alone_a, 300, invariance_tol(), "sepllm stream in a batch");
    assert_close(both_b, alone_b, 250, invariance_tol(), "streaming stream in a batch");
    assert_int_equal(kv_a[59], 60);
    assert_int_equal(kv_a[60], 61);
    assert_int_equal(kv_a[64], 65); /* the first compaction: 65 entries, then fewer */
    assert_true(kv_a[65] < 65);
    free(ids);
    free(alone_a);
    free(alone_b);
    sep_cache_destroy(&ca);
    sep_cache_destroy(&cb);
    sep_model_destroy(&m);
    sep_sepset_free(&seps);
    sep_tok_destroy(&tok);
}

/* Evicting caches run a chunk's segments in runs, each run's attention in
 * one call (the prefixes of its segments copied out beside one another):
 * the NLLs equal the one-token-per-step loop's, bitwise on the CPU, for
 * StreamingLLM (one-token segments) and SepLLM, shift on and off, no
 * initial entries, runs cut where the entries move down, a cache that
 * compacts every token or two, and (the last two) runs cut short where
 * their prefixes would pass 100 rows of copies. */
static void assert_invariant(const float *a, const float *b, int n, const char *what);

static void test_runs_per_token(void **state)
{
    (void)state;
    const sep_policy_t policies[] = {
        { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 },
        { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 0 },
        { .method = SEP_METHOD_STREAMING, .a = 40, .w = 24, .c = 64, .shift = 1 },
        { .method = SEP_METHOD_STREAMING, .a = 0, .w = 50, .c = 50, .shift = 1 },
        { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 16, .w = 32, .c = 64, .shift = 1 },
        { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 16, .w = 32, .c = 64, .shift = 0 },
        { .method = SEP_METHOD_SEPLLM, .a = 2, .s = 8, .w = 4, .c = 15, .shift = 1 },
        { .method = SEP_METHOD_STREAMING, .a = 40, .w = 24, .c = 64, .shift = 1 },
        { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 16, .w = 32, .c = 64, .shift = 1 },
    };
    size_t n_pol = sizeof policies / sizeof policies[0];
    for (size_t p = 0; p < n_pol; p++) {
        run_t r = small_run(600);
        r.policy = policies[p];
        /* books-llama-16m: rows of 2 x 64 floats, two planes */
        score_run_bytes = p + 2 >= n_pol ? 100 * 2 * 128 * sizeof(float) : 0;
        float *one, *seven, *big;
        char what[96];
        score(&r, r.tokens, 1, &one, NULL);
        score(&r, r.tokens, 7, &seven, NULL);
        score(&r, r.tokens, 512, &big, NULL);
        snprintf(what, sizeof what, "%s a=%d c=%d shift %d: per-token vs chunk 512",
                 sep_method_name(r.policy.method), r.policy.a, r.policy.c, r.policy.shift);
        assert_invariant(one, big, r.tokens, what);
        snprintf(what, sizeof what, "%s a=%d c=%d shift %d: chunk 7 vs 512",
                 sep_method_name(r.policy.method), r.policy.a, r.policy.c, r.policy.shift);
        assert_invariant(seven, big, r.tokens, what);
        free(one);
        free(seven);
        free(big);
    }
    score_run_bytes = 0;
}

/* ---- pipeline stages ----------------------------------------------------- */

#define SPLIT_MAX_STAGES 4
#define SPLIT_TOKENS 260 /* tokens of a stream over the two steps */

/* Tokens of each step: stream 0 (sepllm, compacting) then stream 1 (full). */
static const int split_len[2][2] = { { 150, 110 }, { 90, 60 } };

/* What a two-step batch of both streams gives through a split model. */
typedef struct {
    float nll[2][SPLIT_TOKENS];    /* per token, -1 where not scored */
    int32_t kv[2][SPLIT_TOKENS];
    float *logits;                 /* (2 streams, 2 steps, vocab) of each chunk's last token */
    int vocab;
    int cache_n[2];                /* entries of each stream's cache at the end */
} split_out_t;

/* Load the stages [cuts[i], cuts[i+1]) of dir (one stage: sep_model_load)
 * and run the batch through them by hand, the hidden states of one stage
 * going into the next; scored: targets set. Every stage must give the
 * same kv counts and end with the same cache sizes. */
static void run_split(const char *dir, const int *cuts, int n_stages, int scored,
                      split_out_t *o)
{
    sep_model_t *m[SPLIT_MAX_STAGES];
    sep_cache_t *c[SPLIT_MAX_STAGES][2];
    sep_tok_t *tok;
    sep_sepset_t seps;
    int32_t *ids, kv[SPLIT_MAX_STAGES][2][SPLIT_TOKENS];
    size_t n_ids;
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_int_equal(sep_tok_load(&tok, path), 0);
    assert_int_equal(sep_sepset_build(&seps, tok, "auto", sep_tok_vocab_size(tok)), 0);
    sep_policy_t pol[2] = {
        { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 16, .w = 32, .c = 64, .shift = 1,
          .is_sep = seps.is_sep, .n_vocab = seps.n_vocab },
        full_policy,
    };
    snprintf(path, sizeof path, "%s/ids.%s.persuasion.txt", golden_path("golden"),
             strrchr(dir, '/') + 1);
    assert_int_equal(golden_read_ids(path, &ids, &n_ids), 0);
    assert_true(n_ids > SPLIT_TOKENS);
    for (int st = 0; st < n_stages; st++) {
        int rc = n_stages == 1 ? sep_model_load(&m[st], dir, be, 256)
                               : sep_model_load_stage(&m[st], dir, be, 256, cuts[st], cuts[st + 1]);
        if (rc)
            fail_msg("stage %d: %s", st, sep_errmsg());
        int last = st == n_stages - 1;
        assert_int_equal(m[st]->layer0, cuts[st]);
        assert_int_equal(m[st]->layer1, cuts[st + 1]);
        assert_int_equal(m[st]->cfg.n_layers, cuts[n_stages]);
        assert_true((m[st]->embed != NULL) == (st == 0));
        assert_true((m[st]->lm_head != NULL) == last);
        for (int s = 0; s < 2; s++) {
            assert_int_equal(sep_model_cache_new(m[st], &pol[s], &c[st][s]), 0);
            assert_int_equal(c[st][s]->n_layers, cuts[st + 1] - cuts[st]);
        }
    }
    int dim = m[0]->cfg.dim;
    o->vocab = m[0]->cfg.vocab;
    o->logits = malloc((size_t)4 * o->vocab * sizeof *o->logits);
    float *x[2] = { malloc((size_t)256 * dim * sizeof(float)),
                    malloc((size_t)256 * dim * sizeof(float)) };
    assert_true(o->logits && x[0] && x[1]);
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < SPLIT_TOKENS; i++)
            o->nll[s][i] = -1.0f;
    memset(kv, 0, sizeof kv); /* stream 1 leaves its tail alone */
    for (int step = 0; step < 2; step++)
        for (int st = 0; st < n_stages; st++) {
            sep_chunk_t b[2];
            for (int s = 0; s < 2; s++) {
                int off = step ? split_len[s][0] : 0;
                b[s] = (sep_chunk_t){ .cache = c[st][s], .ids = ids + off, .n = split_len[s][step],
                                      .targets = scored ? ids + off + 1 : NULL,
                                      .nll = o->nll[s] + off, .kv = kv[st][s] + off,
                                      .logits = o->logits + (size_t)(2 * s + step) * o->vocab };
            }
            /* stage st writes x[st % 2], the next reads it */
            int last = st == n_stages - 1;
            int rc = n_stages == 1 ? sep_model_forward(m[st], b, 2)
                                   : sep_model_forward_stage(m[st], b, 2,
                                                             st ? x[(st + 1) % 2] : NULL,
                                                             last ? NULL : x[st % 2]);
            if (rc)
                fail_msg("step %d, stage %d: %s", step, st, sep_errmsg());
        }
    for (int st = 0; st < n_stages; st++)
        for (int s = 0; s < 2; s++) {
            assert_memory_equal(kv[st][s], kv[0][s], sizeof kv[0][s]);
            assert_int_equal(c[st][s]->n, c[0][s]->n);
            assert_int_equal(c[st][s]->n_seen, split_len[s][0] + split_len[s][1]);
        }
    memcpy(o->kv, kv[0], sizeof o->kv);
    for (int s = 0; s < 2; s++)
        o->cache_n[s] = c[0][s]->n;
    for (int st = 0; st < n_stages; st++) {
        sep_cache_destroy(&c[st][0]);
        sep_cache_destroy(&c[st][1]);
        sep_model_destroy(&m[st]);
    }
    free(x[0]);
    free(x[1]);
    free(ids);
    sep_sepset_free(&seps);
    sep_tok_destroy(&tok);
}

/* a and b (n floats) the same bits on the CPU, else within 1e-4 */
static void assert_invariant(const float *a, const float *b, int n, const char *what)
{
    assert_close(a, b, n, invariance_tol(), what);
    if (invariance_tol() == 0.0 && memcmp(a, b, (size_t)n * sizeof *a) != 0)
        fail_msg("%s: equal values, other bits (a signed zero or a NaN)", what);
}

/* Both stream outputs of a split against the whole model's. */
static void assert_split_equal(const split_out_t *split, const split_out_t *whole, const char *what)
{
    assert_invariant(split->nll[0], whole->nll[0], 2 * SPLIT_TOKENS, what);
    assert_invariant(split->logits, whole->logits, 4 * whole->vocab, what);
    assert_memory_equal(split->kv, whole->kv, sizeof whole->kv);
    assert_memory_equal(split->cache_n, whole->cache_n, sizeof whole->cache_n);
}

/* books-llama-16m in 2 and 3 stages gives the whole model's NLLs, kv
 * counts and logits, with a sepllm stream compacting within the chunks. */
static void test_stage_split(void **state)
{
    (void)state;
    char model[600]; /* run_split takes golden_path's buffer for itself */
    snprintf(model, sizeof model, "%s", golden_path("models/books-llama-16m"));
    split_out_t whole, two, three;
    run_split(model, (int[]){ 0, 8 }, 1, 1, &whole);
    run_split(model, (int[]){ 0, 3, 8 }, 2, 1, &two);
    run_split(model, (int[]){ 0, 2, 5, 8 }, 3, 1, &three);
    /* the sepllm stream compacted (more than once), the full one never */
    int drops = 0;
    for (int i = 1; i < SPLIT_TOKENS; i++)
        drops += whole.kv[0][i] < whole.kv[0][i - 1];
    assert_true(drops >= 2);
    assert_int_equal(whole.kv[1][149], 150);
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < split_len[s][0] + split_len[s][1]; i++)
            assert_true(whole.nll[s][i] > 0.0f);
    assert_split_equal(&two, &whole, "2 stages");
    assert_split_equal(&three, &whole, "3 stages");
    free(whole.logits);
    free(two.logits);
    free(three.logits);
}

/* -log softmax(logits)[target], in double. */
static double logits_nll(const float *logits, int vocab, int target)
{
    double max = logits[0], sum = 0;
    for (int i = 1; i < vocab; i++)
        max = logits[i] > max ? logits[i] : max;
    for (int i = 0; i < vocab; i++)
        sum += exp(logits[i] - max);
    return max + log(sum) - logits[target];
}

/* The last token's logits agree with its NLL, do not depend on targets
 * being set, and a split (an untied NeoX too) gives the whole model's. */
static void test_stage_logits(void **state)
{
    (void)state;
    char model[600];
    snprintf(model, sizeof model, "%s", golden_path("models/books-llama-16m"));
    split_out_t scored, gen, gen_split;
    run_split(model, (int[]){ 0, 8 }, 1, 1, &scored);
    run_split(model, (int[]){ 0, 8 }, 1, 0, &gen);
    run_split(model, (int[]){ 0, 5, 8 }, 2, 0, &gen_split);
    int32_t *ids;
    size_t n_ids;
    assert_int_equal(golden_read_ids(golden_path("golden/ids.books-llama-16m.persuasion.txt"),
                                     &ids, &n_ids), 0);
    for (int s = 0; s < 2; s++)
        for (int step = 0; step < 2; step++) {
            int last = split_len[s][0] + (step ? split_len[s][1] : 0) - 1;
            const float *lg = scored.logits + (size_t)(2 * s + step) * scored.vocab;
            double d = logits_nll(lg, scored.vocab, ids[last + 1]) - scored.nll[s][last];
            if (fabs(d) > 1e-5)
                fail_msg("stream %d step %d: logits give nll %+.3g off", s, step, d);
        }
    /* without targets: no NLLs, the same logits */
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < SPLIT_TOKENS; i++)
            assert_true(gen.nll[s][i] == -1.0f);
    assert_invariant(gen.logits, scored.logits, 4 * scored.vocab, "logits without targets");
    assert_split_equal(&gen_split, &gen, "generation, 2 stages");
    free(ids);
    free(scored.logits);
    free(gen.logits);
    free(gen_split.logits);

    snprintf(model, sizeof model, "%s", golden_path("models/books-neox-9m"));
    split_out_t neox, neox_split;
    run_split(model, (int[]){ 0, 6 }, 1, 1, &neox);
    run_split(model, (int[]){ 0, 1, 4, 6 }, 3, 1, &neox_split);
    assert_split_equal(&neox_split, &neox, "neox, 3 stages");
    free(neox.logits);
    free(neox_split.logits);
}

/* The greedy token after a chunk is the argmax of its logits (the lowest
 * id on ties) with its NLL, whether the logits are asked for or not, in a
 * batch beside a chunk that asks for neither. */
static void test_greedy_next(void **state)
{
    (void)state;
    run_t r = small_run(40);
    sep_model_t *m;
    sep_cache_t *c[6];
    int32_t *ids, next[3] = { -2, -2, -2 };
    size_t n_ids;
    float next_nll[3] = { 0 };
    assert_int_equal(golden_read_ids(r.ids, &ids, &n_ids), 0);
    assert_int_equal(sep_model_load(&m, r.model_dir, be, 64), 0);
    int vocab = m->cfg.vocab;
    float *lg = malloc((size_t)4 * vocab * sizeof *lg);
    assert_non_null(lg);
    for (int i = 0; i < 6; i++)
        assert_int_equal(sep_model_cache_new(m, &full_policy, &c[i]), 0);
    /* a: logits and next; b: neither; c: next only. Then the same chunks
     * on fresh caches, asking for logits only. */
    sep_chunk_t with[3] = {
        { .cache = c[0], .ids = ids, .n = 12, .logits = lg, .next = &next[0],
          .next_nll = &next_nll[0] },
        { .cache = c[1], .ids = ids, .n = 5 },
        { .cache = c[2], .ids = ids + 3, .n = 20, .next = &next[2], .next_nll = &next_nll[2] },
    };
    sep_chunk_t plain[3] = {
        { .cache = c[3], .ids = ids, .n = 12, .logits = lg + vocab },
        { .cache = c[4], .ids = ids, .n = 5, .logits = lg + 2 * (size_t)vocab },
        { .cache = c[5], .ids = ids + 3, .n = 20, .logits = lg + 3 * (size_t)vocab },
    };
    assert_int_equal(sep_model_forward(m, with, 3), 0);
    assert_int_equal(sep_model_forward(m, plain, 3), 0);
    assert_int_equal(next[1], -2);
    assert_invariant(lg, lg + vocab, vocab, "logits beside the greedy token");
    for (int i = 0; i < 3; i += 2) {
        const float *row = lg + (size_t)(i ? 3 : 1) * vocab;
        int best = 0;
        for (int v = 1; v < vocab; v++)
            best = row[v] > row[best] ? v : best;
        assert_int_equal(next[i], best);
        double d = logits_nll(row, vocab, best) - next_nll[i];
        if (fabs(d) > 1e-5)
            fail_msg("chunk %d: next_nll %+.3g off", i, d);
    }
    free(lg);
    free(ids);
    for (int i = 0; i < 6; i++)
        sep_cache_destroy(&c[i]);
    sep_model_destroy(&m);
}

/* ---- the separator archive ----------------------------------------------- */

#define ARCH_TOKENS 2000 /* tokens of an archive stream */

/* The separators a stream's forwards handed out, entry after entry. */
typedef struct {
    int n, cap, n_layers, kv_dim;
    int64_t *pos; /* (cap) */
    int32_t *id;  /* (cap) */
    float *k, *v; /* (cap, n_layers, kv_dim): entry-major, so that forwards append */
} archive_t;

static void archive_init(archive_t *a, int cap, int n_layers, int kv_dim)
{
    size_t rows = (size_t)cap * n_layers * kv_dim;
    *a = (archive_t){ .cap = cap, .n_layers = n_layers, .kv_dim = kv_dim,
                      .pos = malloc(sizeof *a->pos * cap), .id = malloc(sizeof *a->id * cap),
                      .k = malloc(sizeof *a->k * rows), .v = malloc(sizeof *a->v * rows) };
    assert_true(a->pos && a->id && a->k && a->v);
}

static void archive_free(archive_t *a)
{
    free(a->pos);
    free(a->id);
    free(a->k);
    free(a->v);
}

/* Append the entries of chunk `chunk` in the last forward's list, which
 * must be in order: by chunk, then ascending stream position. */
static void archive_add(archive_t *a, const sep_evicted_t *ev, int chunk)
{
    int kv = a->kv_dim;
    assert_true(ev->n == 0 || (ev->n_layers == a->n_layers && ev->kv_dim == kv));
    for (int e = 0; e < ev->n; e++) {
        if (e)
            assert_true(ev->chunk[e] > ev->chunk[e - 1] ||
                        (ev->chunk[e] == ev->chunk[e - 1] && ev->pos[e] > ev->pos[e - 1]));
        if (ev->chunk[e] != chunk)
            continue;
        assert_true(a->n < a->cap);
        assert_true(a->n == 0 || ev->pos[e] > a->pos[a->n - 1]);
        a->pos[a->n] = ev->pos[e];
        a->id[a->n] = ev->id[e];
        for (int l = 0; l < a->n_layers; l++) {
            size_t from = ((size_t)l * ev->n + e) * kv, to = ((size_t)a->n * a->n_layers + l) * kv;
            memcpy(a->k + to, ev->k + from, sizeof *a->k * kv);
            memcpy(a->v + to, ev->v + from, sizeof *a->v * kv);
        }
        a->n++;
    }
}

/* The same entries, with b's layers equal to a's layers [l0, l0 +
 * b->n_layers): bitwise on the CPU, else within 1e-4. */
static void assert_archives_equal(const archive_t *a, const archive_t *b, int l0, const char *what)
{
    assert_int_equal(a->n, b->n);
    assert_memory_equal(a->pos, b->pos, sizeof *a->pos * a->n);
    assert_memory_equal(a->id, b->id, sizeof *a->id * a->n);
    int kv = a->kv_dim;
    char msg[160];
    for (int e = 0; e < a->n; e++)
        for (int l = 0; l < b->n_layers; l++) {
            size_t at = ((size_t)e * a->n_layers + l0 + l) * kv;
            size_t bt = ((size_t)e * b->n_layers + l) * kv;
            snprintf(msg, sizeof msg, "%s: position %lld, layer %d, K", what,
                     (long long)a->pos[e], l0 + l);
            assert_invariant(a->k + at, b->k + bt, kv, msg);
            msg[strlen(msg) - 1] = 'V';
            assert_invariant(a->v + at, b->v + bt, kv, msg);
        }
}

/* A cache's rows in host memory, as the archive takes them: the raw keys
 * where it keeps them, else the keys; the values; with ids and positions. */
typedef struct {
    int n, cap;
    int32_t *ids;
    int64_t *pos;
    float *k, *v; /* (n_layers, cap, kv_dim) */
} snapshot_t;

static void snapshot_take(snapshot_t *s, const sep_cache_t *c)
{
    size_t kv = (size_t)c->kv_dim;
    if (c->cap > s->cap) {
        free(s->ids);
        free(s->pos);
        free(s->k);
        free(s->v);
        *s = (snapshot_t){ .cap = c->cap, .ids = malloc(sizeof *s->ids * c->cap),
                           .pos = malloc(sizeof *s->pos * c->cap),
                           .k = malloc(sizeof *s->k * c->n_layers * c->cap * kv),
                           .v = malloc(sizeof *s->v * c->n_layers * c->cap * kv) };
        assert_true(s->ids && s->pos && s->k && s->v);
    }
    s->n = c->n;
    if (!c->n)
        return;
    memcpy(s->ids, c->ids + c->lo, sizeof *s->ids * c->n);
    memcpy(s->pos, c->pos + c->lo, sizeof *s->pos * c->n);
    for (int l = 0; l < c->n_layers; l++) {
        size_t at = (size_t)l * s->cap * kv, bytes = sizeof(float) * c->n * kv;
        size_t from = (size_t)c->lo * kv;
        be->download(be, s->k + at, (c->k_raw ? c->k_raw[l] : c->k[l]) + from, bytes);
        be->download(be, s->v + at, c->v[l] + from, bytes);
    }
}

static void snapshot_free(snapshot_t *s)
{
    free(s->ids);
    free(s->pos);
    free(s->k);
    free(s->v);
}

/* Each separator the last forward evicted from chunk 0 of cache c: an
 * entry of the snapshot taken before it, no longer in c, its K and V rows
 * of every layer the snapshot's to the bit. */
static void assert_evicted_rows(const sep_evicted_t *ev, const snapshot_t *s,
                                const sep_cache_t *c, const uint8_t *is_sep)
{
    size_t kv = (size_t)c->kv_dim;
    for (int e = 0; e < ev->n; e++) {
        int i = 0;
        while (i < s->n && s->pos[i] != ev->pos[e])
            i++;
        if (i == s->n)
            fail_msg("evicted position %lld was not in the cache", (long long)ev->pos[e]);
        assert_int_equal(ev->chunk[e], 0);
        assert_int_equal(ev->id[e], s->ids[i]);
        assert_true(is_sep[ev->id[e]]);
        for (int j = 0; j < c->n; j++)
            assert_true(c->pos[c->lo + j] != ev->pos[e]);
        for (int l = 0; l < c->n_layers; l++) {
            size_t got = ((size_t)l * ev->n + e) * kv, want = ((size_t)l * s->cap + i) * kv;
            if (memcmp(ev->k + got, s->k + want, sizeof(float) * kv) ||
                memcmp(ev->v + got, s->v + want, sizeof(float) * kv))
                fail_msg("position %lld, layer %d: rows other than the cache's",
                         (long long)ev->pos[e], l);
        }
    }
}

/* The separator set and ids the archive tests share. */
typedef struct {
    sep_tok_t *tok;
    sep_sepset_t seps;
    int32_t *ids;
    size_t n_ids;
    char dir[600];
} arch_fx_t;

static void arch_fx_open(arch_fx_t *f)
{
    char path[700];
    snprintf(f->dir, sizeof f->dir, "%s", golden_path("models/books-llama-16m"));
    snprintf(path, sizeof path, "%s/tokenizer.json", f->dir);
    assert_int_equal(sep_tok_load(&f->tok, path), 0);
    assert_int_equal(sep_sepset_build(&f->seps, f->tok, "auto", sep_tok_vocab_size(f->tok)), 0);
    assert_int_equal(golden_read_ids(golden_path("golden/ids.books-llama-16m.persuasion.txt"),
                                     &f->ids, &f->n_ids), 0);
    assert_true(f->n_ids > 2 * ARCH_TOKENS + 1);
}

static void arch_fx_close(arch_fx_t *f)
{
    free(f->ids);
    sep_sepset_free(&f->seps);
    sep_tok_destroy(&f->tok);
}

static sep_policy_t arch_policy(const arch_fx_t *f, int shift)
{
    return (sep_policy_t){ .method = SEP_METHOD_SEPLLM, .a = 2, .s = 8, .w = 16, .c = 40,
                           .shift = shift, .is_sep = f->seps.is_sep, .n_vocab = f->seps.n_vocab };
}

/* Run tokens ids[0..n) (targets after them) through m in chunks of the
 * model's max_tokens, one stream alone, archiving or not; the NLLs to nll,
 * the archive to a. With rows set, every forward's evicted rows are held
 * to a snapshot of the cache taken before it. */
static void archive_stream(sep_model_t *m, const sep_policy_t *pol, const int32_t *ids, int n,
                           int archive, int rows, float *nll, archive_t *a)
{
    sep_cache_t *c;
    snapshot_t snap = { 0 };
    assert_int_equal(sep_model_cache_new(m, pol, &c), 0);
    archive_init(a, n, c->n_layers, c->kv_dim);
    for (int done = 0, k; done < n; done += k) {
        k = n - done < m->run.max_tokens ? n - done : m->run.max_tokens;
        if (rows)
            snapshot_take(&snap, c);
        sep_chunk_t ch = { .cache = c, .ids = ids + done, .n = k, .targets = ids + done + 1,
                           .nll = nll + done, .archive = archive };
        if (sep_model_forward(m, &ch, 1))
            fail_msg("forward at %d: %s", done, sep_errmsg());
        const sep_evicted_t *ev = sep_model_evicted(m);
        if (!archive)
            assert_int_equal(ev->n, 0);
        if (rows)
            assert_evicted_rows(ev, &snap, c, pol->is_sep);
        archive_add(a, ev, 0);
    }
    snapshot_free(&snap);
    sep_cache_destroy(&c);
}

/* One token a step (a model of max_tokens 1, as --per-token), with shift
 * on (raw keys) and off (keys rotated at their stream positions): each
 * evicted separator carries its cache rows as they were just before the
 * compaction, bit for bit. Chunks of 512 hand out the same archive, and
 * archiving changes no NLL. */
static void test_archive_rows(void **state)
{
    (void)state;
    arch_fx_t f;
    arch_fx_open(&f);
    sep_model_t *one, *big;
    assert_int_equal(sep_model_load(&one, f.dir, be, 1), 0);
    assert_int_equal(sep_model_load(&big, f.dir, be, 512), 0);
    float *nll[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(nll[i] = malloc(sizeof(float) * ARCH_TOKENS));
    for (int shift = 0; shift < 2; shift++) {
        sep_policy_t pol = arch_policy(&f, shift);
        archive_t per_token, chunked, none;
        archive_stream(one, &pol, f.ids, ARCH_TOKENS, 1, 1, nll[0], &per_token);
        archive_stream(big, &pol, f.ids, ARCH_TOKENS, 1, 0, nll[1], &chunked);
        archive_stream(big, &pol, f.ids, ARCH_TOKENS, 0, 0, nll[2], &none);
        /* the separator region overflowed often: most separators went */
        if (per_token.n < 100)
            fail_msg("shift %d: %d separators evicted, too few to tell", shift, per_token.n);
        assert_archives_equal(&per_token, &chunked, 0, shift ? "chunked, shift" : "chunked");
        assert_int_equal(none.n, 0);
        assert_invariant(nll[1], nll[2], ARCH_TOKENS, "NLLs archiving or not");
        assert_close(nll[0], nll[1], ARCH_TOKENS, 1e-4, "per-token NLLs");
        archive_free(&per_token);
        archive_free(&chunked);
        archive_free(&none);
    }
    for (int i = 0; i < 3; i++)
        free(nll[i]);
    sep_model_destroy(&one);
    sep_model_destroy(&big);
    arch_fx_close(&f);
}

/* Two stages list the whole model's entries, each with the whole model's
 * rows of its own layers. */
static void test_archive_stage_split(void **state)
{
    (void)state;
    arch_fx_t f;
    arch_fx_open(&f);
    sep_policy_t pol = arch_policy(&f, 1);
    sep_model_t *whole, *st[2];
    sep_cache_t *c[2];
    archive_t want, got[2];
    float *nll = malloc(sizeof *nll * ARCH_TOKENS), *split_nll = malloc(sizeof *nll * ARCH_TOKENS);
    assert_true(nll && split_nll);
    assert_int_equal(sep_model_load(&whole, f.dir, be, 512), 0);
    archive_stream(whole, &pol, f.ids, ARCH_TOKENS, 1, 0, nll, &want);
    const int cuts[] = { 0, 3, 8 };
    for (int s = 0; s < 2; s++) {
        assert_int_equal(sep_model_load_stage(&st[s], f.dir, be, 512, cuts[s], cuts[s + 1]), 0);
        assert_int_equal(sep_model_cache_new(st[s], &pol, &c[s]), 0);
        archive_init(&got[s], ARCH_TOKENS, c[s]->n_layers, c[s]->kv_dim);
    }
    float *x = malloc(sizeof *x * 512 * whole->cfg.dim);
    assert_non_null(x);
    for (int done = 0, k; done < ARCH_TOKENS; done += k) {
        k = ARCH_TOKENS - done < 512 ? ARCH_TOKENS - done : 512;
        for (int s = 0; s < 2; s++) {
            sep_chunk_t ch = { .cache = c[s], .ids = f.ids + done, .n = k,
                               .targets = f.ids + done + 1, .nll = split_nll + done,
                               .archive = 1 };
            assert_int_equal(sep_model_forward_stage(st[s], &ch, 1, s ? x : NULL, s ? NULL : x),
                             0);
            archive_add(&got[s], sep_model_evicted(st[s]), 0);
        }
    }
    assert_true(want.n >= 100);
    assert_archives_equal(&want, &got[0], 0, "stage [0, 3)");
    assert_archives_equal(&want, &got[1], 3, "stage [3, 8)");
    assert_invariant(split_nll, nll, ARCH_TOKENS, "NLLs through two stages");
    for (int s = 0; s < 2; s++) {
        archive_free(&got[s]);
        sep_cache_destroy(&c[s]);
        sep_model_destroy(&st[s]);
    }
    archive_free(&want);
    free(x);
    free(nll);
    free(split_nll);
    sep_model_destroy(&whole);
    arch_fx_close(&f);
}

/* A batch of three streams, the middle one not archiving though it evicts
 * separators too: the archive holds the other two's entries only, each
 * what that stream gives alone, and every NLL of the batch is the same
 * archiving or not. A forward without an archiving chunk lists nothing. */
static void test_archive_batch(void **state)
{
    (void)state;
    arch_fx_t f;
    arch_fx_open(&f);
    enum { STEPS = 4, LEN = 300 };
    sep_policy_t pol[3] = { arch_policy(&f, 1), arch_policy(&f, 1), arch_policy(&f, 0) };
    const int32_t *ids[3] = { f.ids, f.ids + 7, f.ids + ARCH_TOKENS };
    sep_model_t *m;
    assert_int_equal(sep_model_load(&m, f.dir, be, 3 * LEN), 0);
    static float nll[2][3][STEPS * LEN], alone_nll[STEPS * LEN];
    archive_t got[3], alone[3];
    int middle_evicted = 0;
    for (int run = 0; run < 2; run++) { /* run 0 archives chunks 0 and 2, run 1 none */
        sep_cache_t *c[3];
        for (int j = 0; j < 3; j++) {
            assert_int_equal(sep_model_cache_new(m, &pol[j], &c[j]), 0);
            if (run == 0)
                archive_init(&got[j], STEPS * LEN, c[j]->n_layers, c[j]->kv_dim);
        }
        for (int step = 0; step < STEPS; step++) {
            sep_chunk_t b[3];
            for (int j = 0; j < 3; j++)
                b[j] = (sep_chunk_t){ .cache = c[j], .ids = ids[j] + step * LEN, .n = LEN,
                                      .targets = ids[j] + step * LEN + 1,
                                      .nll = nll[run][j] + step * LEN,
                                      .archive = run == 0 && j != 1 };
            assert_int_equal(sep_model_forward(m, b, 3), 0);
            const sep_evicted_t *ev = sep_model_evicted(m);
            middle_evicted += m->run.plans[1].n_evict;
            if (run == 1) {
                assert_int_equal(ev->n, 0);
                continue;
            }
            for (int e = 0; e < ev->n; e++)
                assert_true(ev->chunk[e] == 0 || ev->chunk[e] == 2);
            for (int j = 0; j < 3; j++)
                archive_add(&got[j], ev, j);
        }
        for (int j = 0; j < 3; j++)
            sep_cache_destroy(&c[j]);
    }
    assert_true(middle_evicted > 0);
    assert_int_equal(got[1].n, 0);
    assert_invariant(nll[0][0], nll[1][0], 3 * STEPS * LEN, "NLLs of the batch archiving or not");
    for (int j = 0; j < 3; j += 2) {
        archive_stream(m, &pol[j], ids[j], STEPS * LEN, 1, 0, alone_nll, &alone[j]);
        assert_true(alone[j].n > 0);
        assert_invariant(alone_nll, nll[0][j], STEPS * LEN, "NLLs of a stream alone");
        assert_archives_equal(&alone[j], &got[j], 0, j ? "stream 2 in a batch" : "stream 0 in a batch");
        archive_free(&alone[j]);
    }
    for (int j = 0; j < 3; j++)
        archive_free(&got[j]);
    sep_model_destroy(&m);
    arch_fx_close(&f);
}

/* Loading a stage outside the checkpoint's layers, or running one with
 * hidden states where there are none (or none where needed) or with
 * another stage's caches, fails with SEP_EINVAL before a cache changes. */
static void test_stage_bad_ranges(void **state)
{
    (void)state;
    char dir[600];
    snprintf(dir, sizeof dir, "%s", golden_path("models/books-llama-16m"));
    static const int bad[][2] = { { 3, 3 }, { 5, 3 }, { 0, 9 }, { 6, 9 }, { -1, 3 } };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sep_model_t *m = (sep_model_t *)1;
        char range[32];
        snprintf(range, sizeof range, "[%d, %d)", bad[i][0], bad[i][1]);
        assert_int_equal(sep_model_load_stage(&m, dir, be, 16, bad[i][0], bad[i][1]), SEP_EINVAL);
        assert_null(m);
        if (!strstr(sep_errmsg(), range))
            fail_msg("'%s' does not name %s", sep_errmsg(), range);
    }
    sep_model_t *m;
    assert_int_equal(sep_model_synthetic_stage(&m, "llama3-8b", be, 16, 0, 33), SEP_EINVAL);
    assert_null(m);

    /* stages [0, 3), [3, 5), [5, 8) and the whole model, each cache one
     * token in */
    const int cuts[] = { 0, 3, 5, 8, 0 };
    sep_model_t *st[4];
    sep_cache_t *c[4];
    int32_t ids[3] = { 5, 6, 7 };
    float nll[4], x[2][2 * 384];
    for (int i = 0; i < 4; i++) {
        int rc = i < 3 ? sep_model_load_stage(&st[i], dir, be, 16, cuts[i], cuts[i + 1])
                       : sep_model_load(&st[i], dir, be, 16);
        assert_int_equal(rc, 0);
        assert_int_equal(sep_model_cache_new(st[i], &full_policy, &c[i]), 0);
    }
    assert_int_equal(st[0]->cfg.dim, 384);
    sep_chunk_t ch[4];
    for (int i = 0; i < 4; i++)
        ch[i] = (sep_chunk_t){ .cache = c[i], .ids = ids, .n = 1, .targets = ids + 1,
                               .nll = nll + i };
    assert_int_equal(sep_model_forward_stage(st[0], &ch[0], 1, NULL, x[0]), 0);
    assert_int_equal(sep_model_forward_stage(st[1], &ch[1], 1, x[0], x[1]), 0);
    assert_int_equal(sep_model_forward_stage(st[2], &ch[2], 1, x[1], NULL), 0);
    assert_int_equal(sep_model_forward(st[3], &ch[3], 1), 0);
    static const struct {
        int model, cache, x_in, x_out; /* x: -1 NULL, else x[i] */
        const char *needle;
    } calls[] = {
        { 0, 0, 1, 0, "x_in must be NULL" },
        { 0, 0, -1, -1, "needs x_out" },
        { 1, 1, -1, 1, "needs x_in" },
        { 1, 1, 0, -1, "needs x_out" },
        { 2, 2, -1, -1, "needs x_in" },
        { 2, 2, 1, 0, "x_out must be NULL" },
        { 3, 3, -1, 0, "x_out must be NULL" },
        { 3, 3, 0, -1, "x_in must be NULL" },
        { 1, 2, 0, 1, "holds 3 layers" }, /* another stage's caches */
        { 2, 1, 1, -1, "holds 2 layers" },
        { 3, 0, -1, -1, "holds 3 layers" },
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        sep_chunk_t b = ch[calls[i].cache];
        b.ids = ids + 1;
        int rc = sep_model_forward_stage(st[calls[i].model], &b, 1,
                                         calls[i].x_in < 0 ? NULL : x[calls[i].x_in],
                                         calls[i].x_out < 0 ? NULL : x[calls[i].x_out]);
        if (rc != SEP_EINVAL || !strstr(sep_errmsg(), calls[i].needle))
            fail_msg("call %zu: got %d '%s', want SEP_EINVAL naming '%s'", i, rc, sep_errmsg(),
                     calls[i].needle);
        for (int k = 0; k < 4; k++) {
            assert_int_equal(c[k]->n, 1);
            assert_int_equal(c[k]->n_seen, 1);
        }
    }
    /* the caches were left as they were: the next token scores alike */
    for (int i = 0; i < 4; i++) {
        ch[i].ids = ids + 1;
        ch[i].targets = ids + 2;
    }
    assert_int_equal(sep_model_forward_stage(st[0], &ch[0], 1, NULL, x[0]), 0);
    assert_int_equal(sep_model_forward_stage(st[1], &ch[1], 1, x[0], x[1]), 0);
    assert_int_equal(sep_model_forward_stage(st[2], &ch[2], 1, x[1], NULL), 0);
    assert_int_equal(sep_model_forward(st[3], &ch[3], 1), 0);
    assert_invariant(nll + 2, nll + 3, 1, "after the failed calls");
    for (int i = 0; i < 4; i++) {
        sep_cache_destroy(&c[i]);
        sep_model_destroy(&st[i]);
    }
}

/* "auto" separators of each golden model equal summary.json's auto_seps. */
static void test_auto_separators(void **state)
{
    (void)state;
    json_t *sum = json_load_file(golden_path("golden/summary.json"), 0, NULL);
    assert_non_null(sum);
    const char *model;
    json_t *want;
    json_object_foreach(json_object_get(sum, "auto_seps"), model, want) {
        char path[600];
        snprintf(path, sizeof path, "%s/models/%s/tokenizer.json", golden_shared(), model);
        sep_tok_t *tok;
        sep_sepset_t seps;
        assert_int_equal(sep_tok_load(&tok, path), 0);
        assert_int_equal(sep_sepset_build(&seps, tok, "auto", sep_tok_vocab_size(tok)), 0);
        assert_string_equal(seps.name, "rule");
        assert_int_equal(seps.count, json_array_size(want));
        size_t i;
        json_t *id;
        json_array_foreach(want, i, id)
            if (!seps.is_sep[json_integer_value(id)])
                fail_msg("%s: id %lld is not a separator", model, json_integer_value(id));
        sep_sepset_free(&seps);
        sep_tok_destroy(&tok);
    }
    json_decref(sum);
}

/* A Llama-3-sized byte-level vocabulary whose . , ? ! ; : sit at Llama-3's
 * ids gets the llama3 preset from "auto"; named presets and lists too. */
static void test_preset_detection(void **state)
{
    (void)state;
    char dir[] = "/tmp/sep-test-XXXXXX", path[600];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    json_t *vocab = json_object();
    static const struct { int id; const char *text; } marks[] = {
        { 0, "!" }, { 11, "," }, { 13, "." }, { 25, ":" }, { 26, ";" }, { 30, "?" } };
    for (int id = 0; id < 128256; id++) {
        char t[32];
        snprintf(t, sizeof t, "t%d", id);
        for (size_t k = 0; k < sizeof marks / sizeof marks[0]; k++)
            if (marks[k].id == id)
                snprintf(t, sizeof t, "%s", marks[k].text);
        json_object_set_new(vocab, t, json_integer(id));
    }
    json_t *tj = json_pack("{s:s, s:[], s:n, s:{s:s, s:b, s:b, s:b}, s:{s:s}, s:{s:s, s:o, s:[]}}",
                           "version", "1.0", "added_tokens", "normalizer",
                           "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1,
                           "decoder", "type", "ByteLevel",
                           "model", "type", "BPE", "vocab", vocab, "merges");
    assert_non_null(tj);
    assert_int_equal(json_dump_file(tj, path, 0), 0);
    json_decref(tj);
    sep_tok_t *tok;
    sep_sepset_t seps;
    assert_int_equal(sep_tok_load(&tok, path), 0);
    assert_int_equal(sep_sepset_build(&seps, tok, "auto", sep_tok_vocab_size(tok)), 0);
    assert_string_equal(seps.name, "llama3");
    assert_int_equal(seps.count, 17);
    assert_true(seps.is_sep[262] && seps.is_sep[0] && !seps.is_sep[1]);
    sep_sepset_free(&seps);
    /* in a model of more ids (outside llama3's sizes): still the
     * tokenizer's preset */
    assert_int_equal(sep_sepset_build(&seps, tok, "auto", 129000), 0);
    assert_string_equal(seps.name, "llama3");
    assert_int_equal(seps.n_vocab, 129000);
    sep_sepset_free(&seps);
    assert_int_equal(sep_sepset_build(&seps, tok, "falcon", sep_tok_vocab_size(tok)), 0);
    assert_int_equal(seps.count, 13);
    assert_true(seps.is_sep[23787]);
    sep_sepset_free(&seps);
    assert_int_equal(sep_sepset_build(&seps, tok, "rule", sep_tok_vocab_size(tok)), 0);
    assert_int_equal(seps.count, 6); /* only the six marks have such texts here */
    sep_sepset_free(&seps);
    assert_int_equal(sep_sepset_build(&seps, tok, "7,t99,\\q", sep_tok_vocab_size(tok)), SEP_EINVAL);
    assert_non_null(strstr(sep_errmsg(), "unknown escape"));
    sep_tok_destroy(&tok);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* ---- weights as stored ---------------------------------------------------- */

/* w holds, bit for bit, the weight that weight_new makes of want (rows,
 * cols): every row read back from each. */
static void expect_weight(const sep_weight_t *w, const float *want, int rows, int cols,
                          const char *what)
{
    sep_weight_t *ref = be->weight_new(be, want, rows, cols);
    size_t n = (size_t)rows * cols;
    int32_t *ids = malloc(rows * sizeof *ids);
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *dy = be->alloc(be, n * 4);
    assert_true(ref && ids && a && b && dy);
    for (int i = 0; i < rows; i++)
        ids[i] = i;
    assert_int_equal(be->reserve(be, 1, rows, cols), 0);
    be->weight_rows(be, dy, ref, ids, rows);
    be->download(be, a, dy, n * sizeof *a);
    be->weight_rows(be, dy, w, ids, rows);
    be->download(be, b, dy, n * sizeof *b);
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a))
            fail_msg("%s: element %zu (row %zu): %a loaded, %a from fp32", what, i, i / cols,
                     b[i], a[i]);
    be->weight_free(be, ref);
    be->free(be, dy);
    free(ids); free(a); free(b);
}

/* The tensors names[0..n) of st as fp32, one after another (fused). */
static float *read_fused(sep_st_t *st, const char *const *names, int n, const int64_t *rows,
                         int64_t cols)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (size_t)rows[i] * cols;
    float *v = malloc(total * sizeof *v), *at = v;
    assert_non_null(v);
    for (int i = 0; i < n; i++) {
        if (sep_st_read_f32(st, names[i], 2, (int64_t[]){ rows[i], cols }, at))
            fail_msg("%s", sep_errmsg());
        at += (size_t)rows[i] * cols;
    }
    return v;
}

/* sep_model_load streams the matrices to the backend as stored (bf16 in
 * books-llama-16m, f16 in books-neox-9m): each is the weight made from
 * its tensors read as fp32 and fused here (q, k, v rows; gate and up
 * rows; NeoX's per-head q, k, v regrouped), in the first and last layers,
 * the embedding and the output head; and load_bytes counts every tensor
 * of the folder once. */
static void test_weights_as_stored(void **state)
{
    (void)state;
    static const char *models[] = { "models/books-llama-16m", "models/books-neox-9m" };
    for (int k = 0; k < 2; k++) {
        char dir[512], nm[3][128];
        snprintf(dir, sizeof dir, "%s", golden_path(models[k]));
        sep_model_t *m;
        sep_st_t *st;
        if (sep_model_load(&m, dir, be, 16) || sep_st_open(&st, dir))
            fail_msg("%s: %s", dir, sep_errmsg());
        uint64_t total = 0;
        for (size_t i = 0; i < sep_st_count(st); i++)
            total += sep_st_at(st, i)->nbytes;
        assert_true(m->load_bytes == total);
        assert_true(m->load_s > 0);
        const sep_config_t *c = &m->cfg;
        int neox = c->arch == SEP_ARCH_NEOX, d = c->dim, f = c->ffn_dim, hd = c->head_dim;
        const char *emb = neox ? "gpt_neox.embed_in.weight" : "model.embed_tokens.weight";
        float *v = read_fused(st, &emb, 1, (int64_t[]){ c->vocab }, d);
        expect_weight(m->embed, v, c->vocab, d, emb);
        free(v);
        if (!c->tied_embeddings) {
            const char *head = neox ? "embed_out.weight" : "lm_head.weight";
            v = read_fused(st, &head, 1, (int64_t[]){ c->vocab }, d);
            expect_weight(m->lm_head, v, c->vocab, d, head);
            free(v);
        }
        for (int l = 0; l < c->n_layers; l += c->n_layers > 1 ? c->n_layers - 1 : 1) {
            const sep_layer_t *L = &m->layers[l];
            const char *p = neox ? "gpt_neox.layers" : "model.layers";
            const char *mats[3][2] = {
                { neox ? "attention.dense.weight" : "self_attn.o_proj.weight", "wo" },
                { neox ? "mlp.dense_4h_to_h.weight" : "mlp.down_proj.weight", "w_down" },
                { neox ? "mlp.dense_h_to_4h.weight" : NULL, "w_up" } };
            const sep_weight_t *mw[3] = { L->wo, L->w_down, L->w_up };
            int shapes[3][2] = { { d, m->q_dim }, { d, f }, { f, d } };
            for (int i = 0; i < 3 && mats[i][0]; i++) {
                const char *name = nm[0];
                snprintf(nm[0], sizeof nm[0], "%s.%d.%s", p, l, mats[i][0]);
                v = read_fused(st, &name, 1, (int64_t[]){ shapes[i][0] }, shapes[i][1]);
                expect_weight(mw[i], v, shapes[i][0], shapes[i][1], name);
                free(v);
            }
            const char *names[3] = { nm[0], nm[1], nm[2] };
            if (neox) {
                snprintf(nm[0], sizeof nm[0], "%s.%d.attention.query_key_value.weight", p, l);
                float *fused = read_fused(st, names, 1, (int64_t[]){ m->qkv_dim }, d);
                v = malloc((size_t)m->qkv_dim * d * sizeof *v);
                assert_non_null(v);
                for (int h = 0; h < c->n_heads; h++)
                    for (int part = 0; part < 3; part++)
                        memcpy(v + ((size_t)part * m->q_dim + (size_t)h * hd) * d,
                               fused + ((size_t)h * 3 + part) * hd * d,
                               (size_t)hd * d * sizeof *v);
                free(fused);
            } else {
                static const char *qkv[] = { "q_proj", "k_proj", "v_proj" };
                for (int i = 0; i < 3; i++)
                    snprintf(nm[i], sizeof nm[i], "%s.%d.self_attn.%s.weight", p, l, qkv[i]);
                v = read_fused(st, names, 3, (int64_t[]){ m->q_dim, m->kv_dim, m->kv_dim }, d);
            }
            expect_weight(L->wqkv, v, m->qkv_dim, d, "fused qkv");
            free(v);
            if (!neox) {
                snprintf(nm[0], sizeof nm[0], "%s.%d.mlp.gate_proj.weight", p, l);
                snprintf(nm[1], sizeof nm[1], "%s.%d.mlp.up_proj.weight", p, l);
                v = read_fused(st, names, 2, (int64_t[]){ f, f }, d);
                expect_weight(L->w_up, v, 2 * f, d, "fused gate and up");
                free(v);
            }
        }
        sep_st_destroy(&st);
        sep_model_destroy(&m);
    }
}

/* ---- bad checkpoints ----------------------------------------------------- */

/* A copy of the shared folder rel (one model.safetensors) with the keys
 * of the JSON object fields set in config.json (null removes one); the
 * weights are symlinked. Returns the folder (static buffer). */
static const char *model_copy(const char *rel, const char *fields)
{
    static char dir[256];
    char path[700];
    snprintf(dir, sizeof dir, "/tmp/sep-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char src[512];
    snprintf(src, sizeof src, "%s", golden_path(rel));
    const char *files[] = { "model.safetensors", "tokenizer.json" };
    for (int i = 0; i < 2; i++) {
        char target[600];
        snprintf(target, sizeof target, "%s/%s", src, files[i]);
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        assert_int_equal(symlink(target, path), 0);
    }
    snprintf(path, sizeof path, "%s/config.json", src);
    json_t *cfg = json_load_file(path, 0, NULL);
    json_t *set = json_loads(fields, 0, NULL);
    assert_non_null(cfg);
    assert_non_null(set);
    const char *key;
    json_t *v;
    json_object_foreach(set, key, v) {
        if (json_is_null(v))
            json_object_del(cfg, key);
        else
            json_object_set(cfg, key, v);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(json_dump_file(cfg, path, 0), 0);
    json_decref(cfg);
    json_decref(set);
    return dir;
}

static void model_copy_remove(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A copy of tiny-llama31 with config.json's field set to value (raw JSON). */
static const char *bad_model(const char *field, const char *value)
{
    char fields[256];
    snprintf(fields, sizeof fields, "{\"%s\": %s}", field, value);
    return model_copy("models/arch/tiny-llama31", fields);
}

static void expect_load_error(const char *field, const char *value, int code, const char *needle)
{
    const char *dir = bad_model(field, value);
    sep_model_t *m = NULL;
    int rc = sep_model_load(&m, dir, be, 16);
    assert_null(m);
    if (rc != code || !strstr(sep_errmsg(), needle))
        fail_msg("%s=%s: got %d '%s', want %d naming '%s'", field, value, rc,
                 sep_errmsg(), code, needle);
    if (!strstr(sep_errmsg(), "model.safetensors"))
        fail_msg("%s=%s: '%s' does not name the file", field, value, sep_errmsg());
    model_copy_remove(dir);
}

static void test_missing_tensor(void **state)
{
    (void)state;
    expect_load_error("num_hidden_layers", "4", SEP_ENOTFOUND, "model.layers.3.");
}

static void test_missing_lm_head(void **state)
{
    (void)state;
    expect_load_error("tie_word_embeddings", "false", SEP_ENOTFOUND, "lm_head.weight");
}

static void test_shape_mismatch(void **state)
{
    (void)state;
    expect_load_error("intermediate_size", "256", SEP_EFORMAT, "model.layers.0.mlp.gate_proj.weight");
}

static void test_vocab_mismatch(void **state)
{
    (void)state;
    expect_load_error("vocab_size", "8000", SEP_EFORMAT, "model.embed_tokens.weight");
}

static void test_bad_token_id(void **state)
{
    (void)state;
    sep_model_t *m;
    sep_cache_t *c;
    assert_int_equal(sep_model_load(&m, golden_path("models/arch/tiny-llama31"), be, 16), 0);
    assert_int_equal(sep_model_cache_new(m, &full_policy, &c), 0);
    int32_t ids[2] = { 5, 8192 };
    float nll[2];
    sep_chunk_t ch = { .cache = c, .ids = ids, .n = 2, .nll = nll };
    assert_int_equal(sep_model_forward(m, &ch, 1), SEP_ERANGE);
    assert_non_null(strstr(sep_errmsg(), "8192"));
    assert_int_equal(c->n, 0); /* nothing appended */
    sep_cache_destroy(&c);
    sep_model_destroy(&m);
}

/* A separator table spans the model's vocabulary, which may have more
 * ids than the tokenizer (padded embeddings); a tokenizer with an id at
 * or beyond it is refused, naming both sizes. */
static void test_sepset_padded_vocab(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", golden_path("models/books-llama-16m"));
    sep_tok_t *tok;
    sep_sepset_t a, b;
    assert_int_equal(sep_tok_load(&tok, path), 0);
    assert_int_equal(sep_tok_vocab_size(tok), 8192);
    assert_int_equal(sep_sepset_build(&a, tok, "auto", 8192), 0);
    assert_int_equal(sep_sepset_build(&b, tok, "auto", 8250), 0);
    assert_int_equal(b.n_vocab, 8250);
    assert_int_equal(b.count, a.count);
    assert_memory_equal(a.is_sep, b.is_sep, 8192);
    for (int id = 8192; id < 8250; id++)
        assert_int_equal(b.is_sep[id], 0);
    sep_sepset_free(&b);
    /* a listed id inside the model's vocabulary, past the tokenizer's */
    assert_int_equal(sep_sepset_build(&b, tok, "12,8200", 8250), 0);
    assert_true(b.is_sep[8200] && b.count == 2);
    sep_sepset_free(&b);
    assert_int_equal(sep_sepset_build(&b, tok, "12,8250", 8250), SEP_EINVAL);
    assert_non_null(strstr(sep_errmsg(), "8250"));
    assert_int_equal(sep_tok_check_vocab(tok, 8192), 0);
    assert_int_equal(sep_sepset_build(&b, tok, "auto", 8191), SEP_EFORMAT);
    assert_non_null(strstr(sep_errmsg(), "the tokenizer has 8192 ids"));
    assert_non_null(strstr(sep_errmsg(), "the model 8191"));
    assert_null(b.is_sep);
    sep_sepset_free(&a);
    sep_tok_destroy(&tok);
}

/* ---- long streams ------------------------------------------------------- */

#define LONG_TOKENS 2000000
#define LONG_TAIL 1000
#define LONG_CHUNK 4096

/* Feed ids[0, n) (cycling through the n_text of text) from stream
 * position `from` through cache c in chunks, scoring where nll is given
 * (the NLL of each token's successor). */
static void long_feed(sep_model_t *m, sep_cache_t *c, const int32_t *text, size_t n_text,
                      int64_t from, int64_t n, float *nll, int32_t *ids, int32_t *targets)
{
    for (int64_t done = 0; done < n;) {
        int k = n - done < LONG_CHUNK ? (int)(n - done) : LONG_CHUNK;
        for (int i = 0; i < k; i++) {
            ids[i] = text[(size_t)(from + done + i) % n_text];
            targets[i] = text[(size_t)(from + done + i + 1) % n_text];
        }
        sep_chunk_t ch = { .cache = c, .ids = ids, .n = k, .targets = nll ? targets : NULL,
                           .nll = nll ? nll + done : NULL };
        if (sep_model_forward(m, &ch, 1))
            fail_msg("forward at %lld: %s", (long long)(from + done), sep_errmsg());
        done += k;
    }
}

/* Streaming and sepllm caches (shift on) 2M tokens down a stream: a
 * token there is rotated at its stream position, in the millions, and
 * the prefix re-rotated beside it at every compaction. The NLLs of the
 * last thousand tokens equal, within 1e-4, those of the same cache state
 * re-rotated at its slots (positions below c, as a fresh cache's) and
 * run from there: no drift. tiny-llama31 cut to one layer, whose
 * attention is what the rotations feed. SEP_TEST_SCALE k: 2M / k tokens
 * (the same paths, positions k times smaller). */
static void test_long_stream_no_drift(void **state)
{
    (void)state;
    if (strcmp(be->name, "cpu") != 0)
        skip(); /* 2M tokens: the CPU's run is the check */
    const char *dir = model_copy("models/arch/tiny-llama31", "{\"num_hidden_layers\": 1}");
    sep_model_t *m = NULL;
    sep_tok_t *tok = NULL;
    sep_sepset_t seps = { 0 };
    char path[600];
    if (sep_model_load(&m, dir, be, LONG_CHUNK))
        fail_msg("%s: %s", dir, sep_errmsg());
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_int_equal(sep_tok_load(&tok, path), 0);
    assert_int_equal(sep_sepset_build(&seps, tok, "auto", m->cfg.vocab), 0);
    FILE *f = fopen(golden_path("texts/persuasion.txt"), "rb");
    assert_non_null(f);
    static char text[60000];
    size_t len = fread(text, 1, sizeof text, f);
    fclose(f);
    int32_t *toks;
    size_t n_toks;
    assert_int_equal(sep_tok_encode(tok, text, len, &toks, &n_toks), 0);
    assert_true(n_toks > 10000);
    int32_t *ids = malloc(sizeof *ids * LONG_CHUNK), *targets = malloc(sizeof *targets * LONG_CHUNK);
    float *got = malloc(sizeof *got * LONG_TAIL), *want = malloc(sizeof *want * LONG_TAIL);
    assert_true(ids && targets && got && want);
    const sep_policy_t policies[] = {
        { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 },
        { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 16, .w = 32, .c = 64, .shift = 1,
          .is_sep = seps.is_sep, .n_vocab = seps.n_vocab },
    };
    for (size_t p = 0; p < sizeof policies / sizeof policies[0]; p++) {
        sep_cache_t *c, *ref;
        assert_int_equal(sep_model_cache_new(m, &policies[p], &c), 0);
        assert_int_equal(sep_model_cache_new(m, &policies[p], &ref), 0);
        int64_t head = LONG_TOKENS / golden_scale() - LONG_TAIL;
        long_feed(m, c, toks, n_toks, 0, head, NULL, ids, targets);
        assert_int_equal(c->n_seen, head);
        assert_int_equal(c->rope_off, 0); /* rotated at stream positions */
        assert_true(c->n_sep > 0 || policies[p].method == SEP_METHOD_STREAMING);
        uint8_t *buf;
        size_t blen;
        assert_int_equal(sep_cache_save(c, &buf, &blen), 0);
        assert_int_equal(sep_cache_restore(ref, buf, blen), 0);
        free(buf);
        assert_int_equal(sep_model_cache_rebase(m, ref), 0);
        assert_true(ref->rope_off == head - ref->n && sep_cache_rope_base(ref) == 0);
        assert_true(sep_cache_rope_base(c) > head - 2 * policies[p].c);
        long_feed(m, c, toks, n_toks, head, LONG_TAIL, got, ids, targets);
        long_feed(m, ref, toks, n_toks, head, LONG_TAIL, want, ids, targets);
        double worst = 0, sum = 0;
        for (int i = 0; i < LONG_TAIL; i++) {
            double d = fabs((double)got[i] - want[i]);
            worst = d > worst ? d : worst;
            sum += want[i];
        }
        if (worst > 1e-4)
            fail_msg("%s: NLLs 2M tokens down the stream differ from the reference's by %g",
                     sep_method_name(policies[p].method), worst);
        /* the model predicts the text: attention works there */
        assert_true(sum / LONG_TAIL < 7.0);
        sep_cache_destroy(&c);
        sep_cache_destroy(&ref);
    }
    free(ids);
    free(targets);
    free(got);
    free(want);
    free(toks);
    sep_sepset_free(&seps);
    sep_tok_destroy(&tok);
    sep_model_destroy(&m);
    model_copy_remove(dir);
}

/* Sliding windows: with every layer sliding, full attention keeps the
 * window - 1 newest entries before each token, at their stream
 * positions; with only some layers sliding it is refused, naming the
 * keys; evicting caches must stay below the window. (The NLLs against
 * transformers: test_sepctl.sh.) */
static void test_sliding_window_caches(void **state)
{
    (void)state;
    sep_model_t *m, *plain;
    sep_cache_t *c, *pc;
    const char *dir = model_copy("models/arch/tiny-mistral", "{\"sliding_window\": 100}");
    assert_int_equal(sep_model_load(&m, dir, be, 512), 0);
    assert_int_equal(m->cfg.window, 100);
    assert_int_equal(m->cfg.window_layers, 3);
    assert_int_equal(sep_model_cache_new(m, &full_policy, &c), 0);
    assert_int_equal(c->policy.method, SEP_METHOD_STREAMING);
    assert_true(c->policy.a == 0 && c->policy.c == 99 && c->policy.w == 99 && !c->policy.shift);
    /* the first 100 tokens see every key before them, as without a window */
    int32_t *ids;
    size_t n_ids;
    assert_int_equal(golden_read_ids(golden_path("golden/ids.books-llama-16m.persuasion.txt"),
                                     &ids, &n_ids), 0);
    float win[300], full[300];
    int32_t kv[300];
    sep_chunk_t ch = { .cache = c, .ids = ids, .n = 300, .targets = ids + 1, .nll = win,
                       .kv = kv };
    assert_int_equal(sep_model_forward(m, &ch, 1), 0);
    assert_int_equal(kv[98], 99);
    assert_int_equal(kv[99], 100);
    assert_int_equal(kv[299], 100);
    assert_int_equal(c->n_seen, 300);
    assert_int_equal(sep_model_load(&plain, golden_path("models/arch/tiny-mistral"), be, 512), 0);
    assert_int_equal(plain->cfg.window, 0);
    assert_int_equal(sep_model_cache_new(plain, &full_policy, &pc), 0);
    sep_chunk_t pch = { .cache = pc, .ids = ids, .n = 300, .targets = ids + 1, .nll = full };
    assert_int_equal(sep_model_forward(plain, &pch, 1), 0);
    assert_close(win, full, 100, 1e-4, "inside the window");
    int differ = 0;
    for (int i = 100; i < 300; i++)
        differ += fabs((double)win[i] - full[i]) > 1e-3;
    assert_true(differ > 100);
    sep_cache_destroy(&pc);
    sep_model_destroy(&plain);
    sep_cache_destroy(&c);
    /* evicting caches: a query sees up to c + 1 keys */
    sep_policy_t st = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 95, .c = 99, .shift = 1 };
    assert_int_equal(sep_model_cache_new(m, &st, &c), 0);
    assert_int_equal(c->policy.c, 99);
    sep_cache_destroy(&c);
    st.c = 100;
    st.w = 96;
    assert_int_equal(sep_model_cache_new(m, &st, &c), SEP_EUNSUPPORTED);
    assert_null(c);
    assert_non_null(strstr(sep_errmsg(), "sliding_window"));
    assert_non_null(strstr(sep_errmsg(), "below 100"));
    sep_model_destroy(&m);
    model_copy_remove(dir);

    /* Qwen2 with the window on its last two layers only */
    dir = model_copy("models/arch/tiny-qwen2", "{\"use_sliding_window\": true, "
                     "\"sliding_window\": 100, \"max_window_layers\": 1, \"layer_types\": null}");
    assert_int_equal(sep_model_load(&m, dir, be, 512), 0);
    assert_int_equal(m->cfg.window, 100);
    assert_int_equal(m->cfg.window_layers, 2);
    assert_int_equal(sep_model_cache_new(m, &full_policy, &c), SEP_EUNSUPPORTED);
    assert_null(c);
    assert_non_null(strstr(sep_errmsg(), "max_window_layers"));
    assert_non_null(strstr(sep_errmsg(), "2 of the 3 layers"));
    st = (sep_policy_t){ .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 };
    assert_int_equal(sep_model_cache_new(m, &st, &c), 0);
    sep_cache_destroy(&c);
    sep_model_destroy(&m);
    model_copy_remove(dir);
    free(ids);
}

int main(void)
{
    load_runs();
    struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_chunk_size_invariance),
        cmocka_unit_test(test_feed_in_pieces),
        cmocka_unit_test(test_batch_of_streams),
        cmocka_unit_test(test_batch_of_policies),
        cmocka_unit_test(test_runs_per_token),
        cmocka_unit_test(test_stage_split),
        cmocka_unit_test(test_stage_logits),
        cmocka_unit_test(test_greedy_next),
        cmocka_unit_test(test_archive_rows),
        cmocka_unit_test(test_archive_stage_split),
        cmocka_unit_test(test_archive_batch),
        cmocka_unit_test(test_weights_as_stored),
        cmocka_unit_test(test_stage_bad_ranges),
        cmocka_unit_test(test_auto_separators),
        cmocka_unit_test(test_preset_detection),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_missing_lm_head),
        cmocka_unit_test(test_shape_mismatch),
        cmocka_unit_test(test_vocab_mismatch),
        cmocka_unit_test(test_bad_token_id),
        cmocka_unit_test(test_sepset_padded_vocab),
        cmocka_unit_test(test_sliding_window_caches),
        cmocka_unit_test(test_long_stream_no_drift),
    };
    size_t n_fixed = sizeof fixed / sizeof fixed[0];
    struct CMUnitTest *tests = calloc(n_runs + n_fixed, sizeof *tests);
    if (!tests)
        return 1;
    /* SEP_TEST_RUNS=a,b: only the golden runs whose names contain a or b
     * (the GPU machine gets the fixtures a few models at a time) */
    const char *only = getenv("SEP_TEST_RUNS");
    size_t k = 0;
    for (size_t i = 0; i < n_runs; i++) {
        int take = !only;
        char list[256];
        snprintf(list, sizeof list, "%s", only ? only : "");
        for (char *save, *w = strtok_r(list, ",", &save); w && !take; w = strtok_r(NULL, ",", &save))
            take = strstr(runs[i].name, w) != NULL;
        if (take)
            tests[k++] = (struct CMUnitTest){ .name = runs[i].name, .test_func = test_golden_run,
                                              .initial_state = &runs[i] };
    }
    memcpy(tests + k, fixed, sizeof fixed);
    /* SEP_TEST_FILTER=pattern: only the tests cmocka's filter matches */
    if (getenv("SEP_TEST_FILTER"))
        cmocka_set_test_filter(getenv("SEP_TEST_FILTER"));
    int failed = _cmocka_run_group_tests("forward", tests, k + n_fixed,
                                         setup_backend, teardown_backend);
    free(tests);
    free(runs);
    return failed;
}
