/* sample.h: the next token of a generation, from a row of logits.
 *
 * Greedy or temperature sampling with a top-p (nucleus) cut, drawn from a
 * seeded xoshiro256** generator: the same seed and logits give the same
 * tokens on any machine (a draw is the top 53 bits of one 64-bit output;
 * weights are computed in double through libm's exp).
 */
#ifndef SEP_SAMPLE_H
#define SEP_SAMPLE_H

#include <stdint.h>

typedef struct {
    uint64_t s[4]; /* xoshiro256** state */
} sep_rng_t;

/* Seed r: its state is the splitmix64 sequence from seed. */
void sep_rng_seed(sep_rng_t *r, uint64_t seed);

/* The next 64 random bits. */
uint64_t sep_rng_next(sep_rng_t *r);

/* The next token from logits (vocab floats, left unchanged; -inf masks a
 * token, NaN or +inf is SEP_EINVAL). temperature <= 0 is greedy: the
 * argmax, the lowest id on ties; r and scratch are then unused (may be
 * NULL). Otherwise the token is drawn with one output of r from
 * softmax(logits / temperature) restricted to the smallest set of most
 * likely tokens (ties: lowest id first) whose probability reaches top_p;
 * scratch is caller memory of 2 * vocab floats (8 * vocab bytes, 4-byte
 * aligned). *nll receives -log p(token) under the unmodified softmax of
 * logits. Returns SEP_EINVAL for vocab < 1, top_p outside (0, 1] or a
 * temperature that is NaN or +inf. */
int sep_sample(const float *logits, int vocab, float temperature, float top_p, sep_rng_t *r,
               void *scratch, int32_t *token, float *nll);

#endif
