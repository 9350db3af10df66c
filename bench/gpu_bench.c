/* gpu_bench: ingestion and one-token-per-step speed of the engine at full
 * model size, on any backend. A benchmark, not a test.
 *
 *   gpu_bench --synthetic llama3-8b [--device cuda] [--precision bf16]
 *             [--streams S] [--tokens T] [--chunk K] [--steps N] [--host-argmax]
 *
 * S streams (sepllm a=4 s=64 w=256 c=800, the llama3 separators) each
 * ingest T tokens (every token scored) in chunks of K, all streams' chunks
 * in one forward; then one stream decodes N tokens greedily, one token a
 * step (the argmax of the last token's logits, taken where they are, fed
 * back; --host-argmax: the logits go to the host and the argmax is taken
 * there, as a client sampling them would). Then N more steps sampled on
 * the device (the pick op: temperature 0.8, top-p 0.95), and N with top-k
 * 40 and the penalties over the last 256 tokens too, each against greedy.
 * Token ids are pseudo-random with a separator every 12 tokens.
 *
 *   gpu_bench --pick-bench N [--device cuda]
 *
 * times the pick op alone instead (no model): N calls, each on its own
 * row of 128,256 logits (flat: normal with deviation 1; peaked: 4), one
 * row a call and its answer fetched, for greedy and each sampled mode.
 *
 *   gpu_bench --evict [--streams S]...
 *
 * instead times eviction at full size (issue 17), for 1 and 64 streams
 * (or each --streams given): StreamingLLM c=800 (a=4) and SepLLM at the
 * defaults above, each timed over 2048 tokens a stream once its cache is
 * full (1024 tokens in), against full attention over 1600 and 1124 tokens
 * from an empty cache (their average spans, 800 and about 562), chunks of
 * K; one untimed forward first warms each batch size up. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "err.h"
#include "model.h"
#include "sample.h"
#include "separators.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int fail(int rc)
{
    fprintf(stderr, "gpu_bench: %s (%s)\n", sep_errmsg(), sep_strerror(rc));
    return 1;
}

/* --pick-bench: the pick alone on n rows of Llama 3's vocabulary */
static int pick_bench(sep_backend_t *be, int n)
{
    enum { V = 128256 };
    int rc = be->reserve(be, 1, 64, 1);
    if (rc)
        return fail(rc);
    float *host = malloc(sizeof *host * (size_t)n * V);
    float *dev = be->alloc(be, sizeof *dev * (size_t)n * V);
    if (!host || !dev)
        return fail(sep_fail(SEP_ENOMEM, "pick bench: %d rows", n));
    int32_t recent[256];
    sep_rng_t rng;
    sep_rng_seed(&rng, 7);
    for (int i = 0; i < 256; i++)
        recent[i] = (int32_t)(sep_rng_draw(&rng) % V);
    static const char *modes[] = { "greedy", "temperature 0.8, top-p 0.95",
                                   "temperature 0.8, min-p 0.05",
                                   "temperature 0.8, top-k 40, top-p 0.95, penalties over 256" };
    for (int shape = 0; shape < 2; shape++) {
        double sd = shape ? 4.0 : 1.0;
        for (size_t i = 0; i < (size_t)n * V; i += 2) {
            /* Box-Muller on two draws */
            double u = ((double)(sep_rng_draw(&rng) >> 1) + 1) * 0x1p-52;
            double v = (double)sep_rng_draw(&rng) * 0x1p-53;
            double r = sqrt(-2 * log(u));
            host[i] = (float)(sd * r * cos(2 * M_PI * v));
            host[i + 1] = (float)(sd * r * sin(2 * M_PI * v));
        }
        double greedy = 0;
        for (int mode = 0; mode < 4; mode++) {
            be->upload(be, dev, host, sizeof *dev * (size_t)n * V);
            sep_pick_t p = { .temperature = mode ? 0.8f : 0, .top_p = 1, .repetition = 1,
                             .limit = V, .recent = recent };
            if (mode == 1 || mode == 3)
                p.top_p = 0.95f;
            if (mode == 2)
                p.min_p = 0.05f;
            if (mode == 3) {
                p.top_k = 40;
                p.repetition = 1.1f;
                p.presence = 0.3f;
                p.frequency = 0.2f;
                p.n_recent = 256;
            }
            int32_t tok;
            float nll;
            for (int i = 0; i < 3 && i < n; i++) /* warm-up */
                be->pick(be, &tok, &nll, dev + (size_t)i * V, 1, V, &p);
            be->upload(be, dev, host, sizeof *dev * (size_t)3 * V);
            double t = now();
            for (int i = 0; i < n; i++) {
                p.draw = sep_rng_draw(&rng);
                be->pick(be, &tok, &nll, dev + (size_t)i * V, 1, V, &p);
                if (tok < 0)
                    return fail(sep_fail(SEP_EIO, "pick bench: no token"));
            }
            double us = 1e6 * (now() - t) / n;
            greedy = mode ? greedy : us;
            printf("pick alone, %s logits (sd %g), %s: %.1f us a call (%+.1f us on greedy; "
                   "%d calls, a row of %d ids each, answer fetched)\n", shape ? "peaked" : "flat",
                   sd, modes[mode], us, us - greedy, n, V);
        }
    }
    be->free(be, dev);
    free(host);
    return 0;
}

/* tokens/s of S streams under policy p: `warm` tokens a stream untimed,
 * then `timed` tokens timed, in chunks of chunk, every token scored. */
static int evict_rate(sep_model_t *m, const sep_policy_t *p, int streams, int warm, int timed,
                      int chunk, const int32_t *ids, float *nll, double *rate)
{
    sep_cache_t **caches = calloc((size_t)streams, sizeof *caches);
    sep_chunk_t *batch = calloc((size_t)streams, sizeof *batch);
    int rc = SEP_OK;
    double t_all = 0;
    long n_all = 0;
    if (!caches || !batch) {
        rc = sep_fail(SEP_ENOMEM, "out of memory");
        goto done;
    }
    for (int s = 0; s < streams; s++)
        if ((rc = sep_model_cache_new(m, p, &caches[s])))
            goto done;
    for (int at = 0; at < warm + timed; at += chunk) {
        int end = at < warm ? warm : warm + timed;
        int k = end - at < chunk ? end - at : chunk;
        for (int s = 0; s < streams; s++)
            batch[s] = (sep_chunk_t){ .cache = caches[s], .ids = ids + at, .n = k,
                                      .targets = ids + at + 1, .nll = nll + (size_t)s * chunk };
        double t = now();
        if ((rc = sep_model_forward(m, batch, streams)))
            goto done;
        if (at >= warm) {
            t_all += now() - t;
            n_all += (long)k * streams;
        } else {
            at = at + k - chunk; /* the warm part ends on its own */
        }
    }
    *rate = n_all / t_all;
done:
    for (int s = 0; caches && s < streams; s++)
        sep_cache_destroy(&caches[s]);
    free(caches);
    free(batch);
    return rc;
}

/* The --evict table for each stream count. */
static int evict_bench(sep_model_t *m, const sep_sepset_t *seps, const int *counts, int n_counts,
                       int chunk)
{
    const int max_tok = 1024 + 2048 + 1;
    int max_streams = 1, rc;
    for (int i = 0; i < n_counts; i++)
        max_streams = counts[i] > max_streams ? counts[i] : max_streams;
    int32_t *ids = malloc(sizeof *ids * max_tok);
    float *nll = malloc(sizeof *nll * (size_t)max_streams * chunk);
    if (!ids || !nll)
        return sep_fail(SEP_ENOMEM, "out of memory");
    uint32_t x = 12345;
    for (int i = 0; i < max_tok; i++) {
        x = x * 1664525u + 1013904223u;
        ids[i] = i % 12 == 11 ? 13 : (int32_t)(x >> 8) % m->cfg.vocab;
    }
    const struct {
        const char *name;
        sep_policy_t p;
        int warm, timed;
    } runs[] = {
        { "streaming a=4 c=800", { .method = SEP_METHOD_STREAMING, .a = 4, .w = 796, .c = 800,
                                   .shift = 1 }, 1024, 2048 },
        { "full over 1600 tokens", { .method = SEP_METHOD_FULL, .shift = 1 }, 0, 1600 },
        { "sepllm a=4 s=64 w=256 c=800", { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 64,
                                           .w = 256, .c = 800, .shift = 1,
                                           .is_sep = seps->is_sep, .n_vocab = seps->n_vocab },
          1024, 2048 },
        { "full over 1124 tokens", { .method = SEP_METHOD_FULL, .shift = 1 }, 0, 1124 },
    };
    const int n_runs = sizeof runs / sizeof runs[0];
    for (int i = 0; i < n_counts; i++) {
        double warmup, rate[4];
        if ((rc = evict_rate(m, &runs[1].p, counts[i], 0, chunk, chunk, ids, nll, &warmup)))
            goto done;
        for (int r = 0; r < n_runs; r++) {
            if ((rc = evict_rate(m, &runs[r].p, counts[i], runs[r].warm, runs[r].timed, chunk,
                                 ids, nll, &rate[r])))
                goto done;
            printf("evict: %2d stream(s), chunks of %d: %-28s %9.0f tokens/s", counts[i],
                   chunk, runs[r].name, rate[r]);
            if (r % 2)
                printf("  (eviction / full: %.3f)", rate[r - 1] / rate[r]);
            printf("\n");
            fflush(stdout);
        }
    }
done:
    free(ids);
    free(nll);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "synthetic", required_argument, 0, 's' }, { "model", required_argument, 0, 'm' },
        { "device", required_argument, 0, 'd' }, { "precision", required_argument, 0, 'p' },
        { "streams", required_argument, 0, 'S' }, { "tokens", required_argument, 0, 'T' },
        { "chunk", required_argument, 0, 'K' }, { "steps", required_argument, 0, 'N' },
        { "host-argmax", no_argument, 0, 'H' }, { "pick-bench", required_argument, 0, 'P' },
        { "evict", no_argument, 0, 'E' },
        { 0, 0, 0, 0 } };
    const char *shape = "llama3-8b", *dir = NULL, *device = "cuda", *precision = NULL;
    int streams = 1, tokens = 4096, chunk = 512, steps = 64, host_argmax = 0, pick_n = 0, c;
    int evict = 0, counts[8], n_counts = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': shape = optarg; break;
        case 'm': dir = optarg; break;
        case 'd': device = optarg; break;
        case 'p': precision = optarg; break;
        case 'S':
            streams = atoi(optarg);
            if (n_counts < 8)
                counts[n_counts++] = streams;
            break;
        case 'E': evict = 1; break;
        case 'T': tokens = atoi(optarg); break;
        case 'K': chunk = atoi(optarg); break;
        case 'N': steps = atoi(optarg); break;
        case 'H': host_argmax = 1; break;
        case 'P': pick_n = atoi(optarg); break;
        default: return 2;
        }
    }
    if (evict && n_counts == 0) {
        counts[n_counts++] = 1;
        counts[n_counts++] = streams = 64;
    }
    for (int i = 0; i < n_counts; i++)
        streams = counts[i] > streams ? counts[i] : streams;
    if (streams < 1 || tokens < 2 || chunk < 1 || steps < 0 || (long)streams * chunk > (1 << 20)) {
        fprintf(stderr, "gpu_bench: bad sizes\n");
        return 2;
    }
    sep_backend_t *be;
    sep_model_t *m;
    sep_sepset_t seps;
    int rc;
    double t0 = now();
    if (pick_n > 0) {
        if ((rc = sep_backend_new(&be, device, precision, 0)))
            return fail(rc);
        printf("pick bench on %s\n", be->name);
        rc = pick_bench(be, pick_n);
        sep_backend_destroy(&be);
        return rc;
    }
    if ((rc = sep_backend_new(&be, device, precision, 0)) ||
        (rc = dir ? sep_model_load(&m, dir, be, streams * chunk)
                  : sep_model_synthetic(&m, shape, be, streams * chunk)) ||
        (rc = sep_sepset_preset(&seps, "llama3", m->cfg.vocab)))
        return fail(rc);
    printf("model %s on %s: %d layers, dim %d, vocab %d; built in %.1f s\n", dir ? dir : shape,
           be->name, m->cfg.n_layers, m->cfg.dim, m->cfg.vocab, now() - t0);
    if (evict) {
        rc = evict_bench(m, &seps, counts, n_counts, chunk);
        sep_sepset_free(&seps);
        sep_model_destroy(&m);
        sep_backend_destroy(&be);
        return rc ? fail(rc) : 0;
    }
    sep_policy_t p = { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 64, .w = 256, .c = 800,
                       .shift = 1, .is_sep = seps.is_sep, .n_vocab = seps.n_vocab };
    int32_t *ids = malloc(sizeof *ids * (tokens + 1));
    float *nll = malloc(sizeof *nll * (size_t)streams * chunk);
    sep_cache_t **caches = calloc((size_t)streams, sizeof *caches);
    sep_chunk_t *batch = calloc((size_t)streams, sizeof *batch);
    if (!ids || !nll || !caches || !batch)
        return fail(sep_fail(SEP_ENOMEM, "out of memory"));
    uint32_t x = 12345;
    for (int i = 0; i < tokens + 1; i++) {
        x = x * 1664525u + 1013904223u;
        ids[i] = i % 12 == 11 ? 13 : (int32_t)(x >> 8) % m->cfg.vocab; /* 13: "." */
    }
    for (int s = 0; s < streams; s++)
        if ((rc = sep_model_cache_new(m, &p, &caches[s])))
            return fail(rc);
    /* ingestion: every stream's next chunk in one forward; the first
     * forward warms up (cuBLAS heuristics, allocations) and is not timed */
    double t_ing = 0;
    long timed = 0;
    int n_fwd = 0;
    double *each = malloc(sizeof *each * (tokens / chunk + 1));
    if (!each)
        return fail(sep_fail(SEP_ENOMEM, "out of memory"));
    for (int at = 0; at < tokens; at += chunk) {
        int k = tokens - at < chunk ? tokens - at : chunk;
        for (int s = 0; s < streams; s++)
            batch[s] = (sep_chunk_t){ .cache = caches[s], .ids = ids + at, .n = k,
                                      .targets = ids + at + 1, .nll = nll + (size_t)s * chunk };
        double t = now();
        if ((rc = sep_model_forward(m, batch, streams)))
            return fail(rc);
        if (at > 0) {
            double dt = now() - t;
            t_ing += dt;
            timed += (long)k * streams;
            each[n_fwd++] = dt;
        }
    }
    /* the median forward against the slowest (compactions, host stalls) */
    qsort(each, (size_t)n_fwd, sizeof *each, cmp_double);
    printf("ingestion: %d streams x %d tokens, chunks of %d: %.0f tokens/s (%ld timed tokens, "
           "%.2f s; a forward: median %.2f ms, slowest %.2f ms), cache %d entries\n", streams,
           tokens, chunk, timed / t_ing, timed, t_ing, n_fwd ? 1e3 * each[n_fwd / 2] : 0.0,
           n_fwd ? 1e3 * each[n_fwd - 1] : 0.0, caches[0]->n);
    free(each);
    /* greedy decoding on stream 0, one token per step */
    float *logits = host_argmax ? malloc(sizeof *logits * m->cfg.vocab) : NULL;
    if (host_argmax && !logits)
        return fail(sep_fail(SEP_ENOMEM, "out of memory"));
    int32_t tok = ids[tokens];
    float tok_nll;
    double t_dec = now();
    for (int i = 0; i < steps; i++) {
        sep_chunk_t one = { .cache = caches[0], .ids = &tok, .n = 1 };
        if (host_argmax) {
            one.logits = logits;
        } else {
            one.next = &tok;
            one.next_nll = &tok_nll;
        }
        if ((rc = sep_model_forward(m, &one, 1)))
            return fail(rc);
        if (host_argmax) {
            int best = 0;
            for (int v = 1; v < m->cfg.vocab; v++)
                best = logits[v] > logits[best] ? v : best;
            tok = best;
        }
        if (tok < 0)
            return fail(sep_fail(SEP_EIO, "step %d: the logits are not finite", i));
    }
    double greedy_rate = steps / (now() - t_dec);
    if (steps)
        printf("greedy decode, one token per step: %.1f tokens/s (%d steps, argmax on the %s)\n",
               greedy_rate, steps, host_argmax ? "host" : be->name);
    /* sampled on the device: the same steps with a pick, draws from a seed */
    int32_t recent[256];
    sep_rng_t rng;
    sep_rng_seed(&rng, 1);
    for (int mode = 0; mode < 2 && steps && !host_argmax; mode++) {
        sep_pick_t pick = { .temperature = 0.8f, .top_p = 0.95f, .repetition = 1,
                            .limit = m->cfg.vocab, .recent = recent };
        if (mode) {
            pick.top_k = 40;
            pick.repetition = 1.1f;
            pick.presence = 0.3f;
            pick.frequency = 0.2f;
        }
        double t = now();
        for (int i = 0; i < steps; i++) {
            recent[i % 256] = tok;
            pick.n_recent = mode && i + 1 < 256 ? i + 1 : mode ? 256 : 0;
            pick.draw = sep_rng_draw(&rng);
            sep_chunk_t one = { .cache = caches[0], .ids = &tok, .n = 1, .next = &tok,
                                .next_nll = &tok_nll, .pick = &pick };
            if ((rc = sep_model_forward(m, &one, 1)))
                return fail(rc);
            if (tok < 0)
                return fail(sep_fail(SEP_EIO, "step %d: the logits are not finite", i));
        }
        double rate = steps / (now() - t);
        printf("sampled decode (%s): %.1f tokens/s, %.1f%% of greedy\n",
               mode ? "temperature 0.8, top-k 40, top-p 0.95, penalties over 256"
                    : "temperature 0.8, top-p 0.95", rate, 100 * rate / greedy_rate);
    }
    free(logits);
    for (int s = 0; s < streams; s++)
        sep_cache_destroy(&caches[s]);
    free(caches);
    free(batch);
    free(ids);
    free(nll);
    sep_sepset_free(&seps);
    sep_model_destroy(&m);
    sep_backend_destroy(&be);
    return 0;
}
