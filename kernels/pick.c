/* pick.c: the CPU backend's pick (pick.h), one row at a time. */
#include "pick.h"
#include "err.h"
#include "fastmath.h"

#include <math.h>
#include <stdlib.h>

/* What the cuts and the draw see of a row once the penalties and the
 * holes are in it: ids [0, limit) whose logit is above -inf. */
typedef struct {
    const float *row;
    int limit;
    float max, t;     /* the largest such logit; the temperature (> 0) */
    float cut;        /* SEP_PICK_CUT * t */
} pick_view_t;

static float pick_w(const pick_view_t *r, float v)
{
    float d = v - r->max;
    return d < r->cut ? 0.0f : sep_expf(d / r->t);
}

static uint64_t pick_weight(const pick_view_t *r, float v)
{
    return (uint64_t)(pick_w(r, v) * SEP_PICK_ONE);
}

/* The rank at which the running amount of the ids in rank order (1 each,
 * or with mass their weight) first reaches goal (1 <= goal <= the total):
 * its key and id. */
static void pick_select(const pick_view_t *r, int mass, uint64_t goal, uint32_t *key, int *id)
{
    uint64_t hist[SEP_PICK_BUCKETS];
    uint32_t pref = 0, pmask = 0;
    for (int d = 0; d < SEP_PICK_DIGITS; d++) {
        int shift = sep_pick_shift(d);
        uint32_t dmask = sep_pick_dmask(d);
        memset(hist, 0, sizeof hist);
        for (int j = 0; j < r->limit; j++) {
            float v = r->row[j];
            uint32_t k = sep_pick_key(v);
            if (v > -INFINITY && (k & pmask) == pref)
                hist[(k >> shift) & dmask] += mass ? pick_weight(r, v) : 1;
        }
        uint32_t b = dmask;
        for (; b > 0 && hist[b] < goal; b--)
            goal -= hist[b];
        pref |= b << shift;
        pmask |= dmask << shift;
    }
    /* ties share the key: the goal-th amount falls in the c-th of them */
    uint64_t each = mass ? pick_weight(r, sep_pick_unkey(pref)) : 1;
    uint64_t c = (goal + each - 1) / each;
    *key = pref;
    for (int j = 0; j < r->limit; j++)
        if (r->row[j] > -INFINITY && sep_pick_key(r->row[j]) == pref && --c == 0) {
            *id = j;
            return;
        }
}

/* Steps 4 and 5 of sep_pick_t: the cuts, then the draw. */
static int pick_draw(const pick_view_t *r, const sep_pick_t *p, int n_valid)
{
    int all = 1, cut_id = 0;
    uint32_t cut_key = 0;
#define IN_CUT(v, j) \
    (all || sep_pick_key(v) > cut_key || (sep_pick_key(v) == cut_key && (j) <= cut_id))
    uint64_t total = 0;
    if (p->top_k > 0 && p->top_k < n_valid) {
        pick_select(r, 0, (uint64_t)p->top_k, &cut_key, &cut_id);
        all = 0;
    }
    for (int j = 0; j < r->limit; j++)
        if (r->row[j] > -INFINITY && IN_CUT(r->row[j], j))
            total += pick_weight(r, r->row[j]);
    if (p->top_p < 1) {
        uint64_t goal = (uint64_t)ceil((double)p->top_p * (double)total);
        goal = goal < 1 ? 1 : goal > total ? total : goal;
        pick_select(r, 1, goal, &cut_key, &cut_id);
        all = 0;
    }
    uint64_t kept = 0, acc = 0;
    /* id j's weight if the cuts and min_p keep it, else 0 */
#define KEPT(v, j) ((v) > -INFINITY && IN_CUT(v, j) && (w = pick_w(r, v)) >= p->min_p \
                    ? (uint64_t)(w * SEP_PICK_ONE) : 0)
    float w;
    for (int j = 0; j < r->limit; j++)
        kept += KEPT(r->row[j], j);
    /* the best id weighs 2^40 and every cut keeps it: kept > 0 */
    uint64_t x = (uint64_t)((double)p->draw * 0x1p-53 * (double)kept);
    x = x < kept ? x : kept - 1;
    int j = 0;
    for (; j < r->limit; j++)
        if ((acc += KEPT(r->row[j], j)) > x)
            break;
#undef KEPT
#undef IN_CUT
    return j;
}

static int cmp_id(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* ids[0..n) (each >= 0) ascending: a radix sort, 11 bits a pass, through
 * tmp (n ids). */
static void sort_ids(int32_t *ids, int32_t *tmp, int n)
{
    int32_t max = 0;
    for (int i = 0; i < n; i++)
        max = ids[i] > max ? ids[i] : max;
    for (int shift = 0; shift < 31 && (max >> shift) > 0; shift += 11) {
        int at[2049] = { 0 };
        for (int i = 0; i < n; i++)
            at[(ids[i] >> shift & 2047) + 1]++;
        for (int b = 0; b < 2048; b++)
            at[b + 1] += at[b];
        for (int i = 0; i < n; i++)
            tmp[at[ids[i] >> shift & 2047]++] = ids[i];
        memcpy(ids, tmp, (size_t)n * sizeof *ids);
    }
}

void sep_pick_row(int32_t *token, float *nll, float *row, int vocab, const sep_pick_t *p)
{
    *token = -1;
    *nll = NAN;
    for (int j = 0; j < vocab; j++)
        if (!(row[j] < INFINITY))
            return;
    float lse = sep_logsumexp(row, vocab);
    /* the penalties in place, each distinct id once: ids[0..n_ids) ascending
     * with their logits as they came in raw */
    int32_t ids[SEP_PICK_MAX_RECENT], tmp[SEP_PICK_MAX_RECENT];
    float raw[SEP_PICK_MAX_RECENT];
    int n_ids = 0;
    if (p->n_recent > 0 && (p->repetition != 1 || p->presence != 0 || p->frequency != 0)) {
        memcpy(ids, p->recent, (size_t)p->n_recent * sizeof *ids);
        sort_ids(ids, tmp, p->n_recent);
        for (int i = 0, k; i < p->n_recent; i = k) {
            for (k = i + 1; k < p->n_recent && ids[k] == ids[i]; k++)
                ;
            int32_t id = ids[i];
            raw[n_ids] = row[id];
            ids[n_ids++] = id;
            row[id] = sep_pick_penalize(row[id], k - i, p->repetition, p->presence,
                                        p->frequency);
        }
    }
    for (int i = 0; i < p->n_holes; i++)
        row[p->holes[i]] = -INFINITY;
    pick_view_t r = { row, p->limit, -INFINITY, p->temperature, SEP_PICK_CUT * p->temperature };
    int best = -1, n_valid = 0;
    for (int j = 0; j < p->limit; j++) {
        n_valid += row[j] > -INFINITY;
        if (row[j] > r.max) {
            r.max = row[j];
            best = j;
        }
    }
    if (best < 0 || !(r.max < INFINITY))
        return; /* nothing it may take (or a penalty that overflowed) */
    int tok = p->temperature > 0 ? pick_draw(&r, p, n_valid) : best;
    /* the NLL of the row as it came */
    float v = row[tok];
    int32_t *at = n_ids ? bsearch(&tok, ids, (size_t)n_ids, sizeof *ids, cmp_id) : NULL;
    if (at)
        v = raw[at - ids];
    *token = tok;
    *nll = lse - v;
}

int sep_pick_check(const sep_pick_t *p, int vocab)
{
    if (!(p->temperature >= 0) || !(p->temperature < INFINITY))
        return sep_fail(SEP_EINVAL, "temperature %g: a finite number >= 0", p->temperature);
    if (p->top_k < 0)
        return sep_fail(SEP_EINVAL, "top_k %d: 0 (off) or more", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return sep_fail(SEP_EINVAL, "top_p %g: in (0, 1]", p->top_p);
    if (!(p->min_p >= 0 && p->min_p <= 1))
        return sep_fail(SEP_EINVAL, "min_p %g: in [0, 1]", p->min_p);
    /* bounds that keep a penalised logit finite */
    if (!(p->repetition >= SEP_PICK_MIN_REPETITION && p->repetition <= SEP_PICK_MAX_PENALTY))
        return sep_fail(SEP_EINVAL, "repetition_penalty %g: in [%g, %g] (1: off)", p->repetition,
                        SEP_PICK_MIN_REPETITION, SEP_PICK_MAX_PENALTY);
    if (!(fabsf(p->presence) <= SEP_PICK_MAX_PENALTY))
        return sep_fail(SEP_EINVAL, "presence_penalty %g: in [-%g, %g] (0: off)", p->presence,
                        SEP_PICK_MAX_PENALTY, SEP_PICK_MAX_PENALTY);
    if (!(fabsf(p->frequency) <= SEP_PICK_MAX_PENALTY))
        return sep_fail(SEP_EINVAL, "frequency_penalty %g: in [-%g, %g] (0: off)",
                        p->frequency, SEP_PICK_MAX_PENALTY, SEP_PICK_MAX_PENALTY);
    if (p->limit < 1 || p->limit > vocab)
        return sep_fail(SEP_EINVAL, "pick: id limit %d outside 1..%d", p->limit, vocab);
    if (p->n_recent < 0 || p->n_recent > SEP_PICK_MAX_RECENT || p->n_holes < 0 ||
        (p->n_recent && !p->recent) || (p->n_holes && !p->holes))
        return sep_fail(SEP_EINVAL, "pick: %d recent ids (at most %d), %d holes", p->n_recent,
                        SEP_PICK_MAX_RECENT, p->n_holes);
    for (int i = 0; i < p->n_recent; i++)
        if (p->recent[i] < 0 || p->recent[i] >= vocab)
            return sep_fail(SEP_EINVAL, "pick: recent id %d outside the vocabulary (%d)",
                            p->recent[i], vocab);
    for (int i = 0; i < p->n_holes; i++)
        if (p->holes[i] < 0 || p->holes[i] >= p->limit)
            return sep_fail(SEP_EINVAL, "pick: hole %d outside 0..%d", p->holes[i], p->limit - 1);
    if (p->draw >> 53)
        return sep_fail(SEP_EINVAL, "pick: a draw of more than 53 bits");
    return SEP_OK;
}
