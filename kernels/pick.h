/* pick.h: the choice of a token from a row of logits (the pick op of
 * backend.h, sep_pick_t): the CPU backend's, one row at a time, and the
 * pieces its CUDA twin shares with it. Both select by radix on the bits
 * of the logits, a digit at a time, so neither sorts the vocabulary. */
#ifndef SEP_PICK_H
#define SEP_PICK_H

#include <stdint.h>
#include <string.h>

#include "backend.h"

#ifdef __CUDACC__
#define SEP_PICK_FN static inline __host__ __device__
#else
#define SEP_PICK_FN static inline
#endif

/* Weights in fixed point: w * 2^40, so sums are exact and independent of
 * their order (a vocabulary of 2^23 ids sums below 2^63). */
#define SEP_PICK_ONE 0x1p40f
/* Below this many temperatures under the best logit an id's weight is 0
 * without an exp (e^-28 < 2^-40). */
#define SEP_PICK_CUT (-28.0f)

/* The radix digits of a key, high first: bits [21, 32), [10, 21), [0, 10). */
#define SEP_PICK_DIGITS 3
#define SEP_PICK_BUCKETS 2048
SEP_PICK_FN int sep_pick_shift(int d) { return d == 0 ? 21 : d == 1 ? 10 : 0; }
SEP_PICK_FN uint32_t sep_pick_dmask(int d) { return d == 2 ? 0x3ffu : 0x7ffu; }

/* A logit's key: larger logits have larger keys (-0 counts as +0). */
SEP_PICK_FN uint32_t sep_pick_key(float v)
{
    uint32_t u;
    v += 0.0f; /* -0 + 0 is +0 */
    memcpy(&u, &v, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

/* The logit of a key. */
SEP_PICK_FN float sep_pick_unkey(uint32_t k)
{
    uint32_t u = k & 0x80000000u ? k & 0x7fffffffu : ~k;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* A logit after the penalties of an id seen count > 0 times (step 1). */
SEP_PICK_FN float sep_pick_penalize(float v, int count, float repetition, float presence,
                                    float frequency)
{
    v = v > 0 ? v / repetition : v * repetition;
    return v - (presence + frequency * (float)count);
}

/* Whether p is a pick the op takes for rows of vocab ids: its settings
 * in range and its ids below vocab (holes below limit); SEP_EINVAL naming
 * the field and its range otherwise. */
int sep_pick_check(const sep_pick_t *p, int vocab);

/* token and nll of one row of vocab logits as p says (the row is scratch
 * afterwards). */
void sep_pick_row(int32_t *token, float *nll, float *row, int vocab, const sep_pick_t *p);

#endif
