/* sample.c: greedy and top-p sampling over a seeded xoshiro256**. */
#include "sample.h"
#include "err.h"

#include <math.h>
#include <stdlib.h>

/* splitmix64 and xoshiro256** as published by Blackman and Vigna. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

void sep_rng_seed(sep_rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t sep_rng_next(sep_rng_t *r)
{
    uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* A candidate token: its weight exp((logit - max) / temperature). */
typedef struct {
    float w;
    int32_t id;
} cand_t;
_Static_assert(sizeof(cand_t) == 2 * sizeof(float), "scratch holds vocab candidates");

/* Weight descending, then id ascending: a total order, so the nucleus
 * does not depend on qsort's algorithm. */
static int cand_cmp(const void *pa, const void *pb)
{
    const cand_t *a = pa, *b = pb;
    if (a->w != b->w)
        return a->w > b->w ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

int sep_sample(const float *logits, int vocab, float temperature, float top_p, sep_rng_t *r,
               void *scratch, int32_t *token, float *nll)
{
    if (vocab < 1)
        return sep_fail(SEP_EINVAL, "sample: vocab %d", vocab);
    if (!(top_p > 0 && top_p <= 1))
        return sep_fail(SEP_EINVAL, "sample: top_p %g is not in (0, 1]", top_p);
    /* an infinite temperature would divide -inf logits into NaN */
    if (!(temperature < INFINITY))
        return sep_fail(SEP_EINVAL, "sample: temperature %g", temperature);
    int best = 0;
    for (int i = 0; i < vocab; i++) {
        /* NaN or +inf would leave no distribution to draw from */
        if (!(logits[i] < INFINITY))
            return sep_fail(SEP_EINVAL, "sample: logit of token %d is %g", i, logits[i]);
        if (logits[i] > logits[best])
            best = i;
    }
    double max = logits[best];
    if (max == -INFINITY)
        return sep_fail(SEP_EINVAL, "sample: every logit is -inf");

    int32_t tok = best;
    if (temperature > 0) {
        cand_t *cand = scratch;
        double total = 0;
        for (int i = 0; i < vocab; i++) {
            cand[i] = (cand_t){ (float)exp((logits[i] - max) / temperature), i };
            total += cand[i].w;
        }
        /* the nucleus: the first k candidates by weight whose sum reaches
         * top_p of the total (all of them when top_p is 1) */
        int k = vocab;
        if (top_p < 1) {
            qsort(cand, (size_t)vocab, sizeof *cand, cand_cmp);
            double need = top_p * total, sum = 0;
            for (k = 0; k < vocab && sum < need; k++)
                sum += cand[k].w;
            total = sum;
        }
        double x = (double)(sep_rng_next(r) >> 11) * 0x1.0p-53 * total, acc = 0;
        /* the first candidate whose cumulative weight passes x; rounding
         * that leaves x at the very end picks the last one of weight > 0 */
        for (int j = 0; j < k; j++) {
            if (cand[j].w > 0)
                tok = cand[j].id;
            acc += cand[j].w;
            if (x < acc)
                break;
        }
    }

    double sum = 0;
    for (int i = 0; i < vocab; i++)
        sum += exp(logits[i] - max);
    *nll = (float)(max + log(sum) - logits[tok]);
    *token = tok;
    return SEP_OK;
}
