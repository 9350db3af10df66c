/* sample.h: what a generation's sampling needs outside the backend's
 * pick op (backend.h, sep_pick_t, which chooses the token where the
 * logits are): the seeded generator the draws come from, and a pick's
 * form on the wire between sepd and the last stage.
 *
 * The generator is xoshiro256** seeded through splitmix64, so a seed
 * means the same draws on any machine; a draw is the top 53 bits of one
 * 64-bit output.
 */
#ifndef SEP_SAMPLE_H
#define SEP_SAMPLE_H

#include <stdint.h>

#include "backend.h"

typedef struct {
    uint64_t s[4]; /* xoshiro256** state */
} sep_rng_t;

/* Seed r: its state is the splitmix64 sequence from seed. */
void sep_rng_seed(sep_rng_t *r, uint64_t seed);

/* The next 64 random bits. */
uint64_t sep_rng_next(sep_rng_t *r);

/* The next draw of a pick: the top 53 bits of the next output. */
uint64_t sep_rng_draw(sep_rng_t *r);

/* The ids generate's penalties count unless told (its penalty_window). */
#define SEP_PENALTY_WINDOW 64

/* A pick's settings on the wire (w_batch's picks frame), SEP_PICK_WIRE
 * bytes, little-endian: f32 temperature, top_p, min_p, repetition,
 * presence, frequency; int32 top_k, n_recent; uint64 draw. */
#define SEP_PICK_WIRE 40
void sep_pick_pack(uint8_t *out, const sep_pick_t *p);
/* Those fields of p from in (limit, holes and recent are left alone). */
void sep_pick_unpack(sep_pick_t *p, const uint8_t *in);

#endif
