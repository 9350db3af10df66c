/* sample.c: the seeded xoshiro256** of generation, and picks on the wire. */
#include "sample.h"

#include <string.h>

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

uint64_t sep_rng_draw(sep_rng_t *r)
{
    return sep_rng_next(r) >> 11;
}

/* x86-64 and arm64 are little-endian: the fields' own bytes */
void sep_pick_pack(uint8_t *out, const sep_pick_t *p)
{
    const float f[6] = { p->temperature, p->top_p, p->min_p, p->repetition, p->presence,
                         p->frequency };
    const int32_t n[2] = { p->top_k, p->n_recent };
    memcpy(out, f, sizeof f);
    memcpy(out + 24, n, sizeof n);
    memcpy(out + 32, &p->draw, 8);
}

void sep_pick_unpack(sep_pick_t *p, const uint8_t *in)
{
    float f[6];
    int32_t n[2];
    memcpy(f, in, sizeof f);
    memcpy(n, in + 24, sizeof n);
    memcpy(&p->draw, in + 32, 8);
    p->temperature = f[0], p->top_p = f[1], p->min_p = f[2];
    p->repetition = f[3], p->presence = f[4], p->frequency = f[5];
    p->top_k = n[0];
    p->n_recent = n[1];
}
