/* test_cache: the compaction plan against a literal per-token simulation
 * of the reference's eviction (one token per step, evict after the step
 * once the cache holds more than c), and the policy checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cache.h"
#include "err.h"

#define VOCAB 50

/* The reference's per-token loop over metadata only. */
typedef struct {
    int32_t ids[4096];
    int64_t pos[4096];
    int n, sep_ex;
    int64_t t;
} ref_t;

/* Append token id, return the cache size after it, then evict. */
static int ref_step(ref_t *r, const sep_policy_t *p, int32_t id, int64_t *rope_pos)
{
    *rope_pos = p->shift ? r->n : r->t;
    r->ids[r->n] = id;
    r->pos[r->n++] = r->t++;
    int size = r->n;
    if (p->method == SEP_METHOD_FULL || r->n <= p->c)
        return size;
    int keep[4096], k = 0;
    for (int i = 0; i < p->a; i++)
        keep[k++] = i;
    if (p->method == SEP_METHOD_STREAMING) {
        for (int i = r->n - (p->c - p->a); i < r->n; i++)
            keep[k++] = i;
    } else {
        /* as sepllm_ref.py's evict(): sep_ex starts at 0 meaning a */
        int sep_ex = r->sep_ex > 0 ? r->sep_ex : p->a, first = sep_ex == p->a;
        int sep[4096], ns = 0;
        if (!first)
            for (int i = p->a; i < sep_ex; i++)
                sep[ns++] = i;
        for (int i = sep_ex; i < r->n - p->w; i++)
            if (p->is_sep[r->ids[i]])
                sep[ns++] = i;
        int skip = ns > p->s ? ns - p->s : 0;
        for (int i = skip; i < ns; i++)
            keep[k++] = sep[i];
        r->sep_ex = p->a + (ns - skip);
        for (int i = r->n - p->w; i < r->n; i++)
            keep[k++] = i;
    }
    for (int i = 0; i < k; i++) {
        r->ids[i] = r->ids[keep[i]];
        r->pos[i] = r->pos[keep[i]];
    }
    r->n = k;
    return size;
}

static uint8_t is_sep[VOCAB];

/* Plan a stream of n random ids in chunks of `chunk` against the
 * reference; check rope positions, sizes and the metadata after each. */
static void check_stream(sep_policy_t p, int n, int chunk, unsigned seed)
{
    sep_cache_t *c;
    sep_backend_t *be;
    assert_int_equal(sep_backend_cpu_new(&be, 1), 0);
    assert_int_equal(sep_cache_new(&c, be, 1, 1, &p), 0);
    ref_t *ref = calloc(1, sizeof *ref);
    sep_plan_t plan = { 0 };
    int32_t ids[600];
    for (int done = 0; done < n; done += chunk) {
        int k = n - done < chunk ? n - done : chunk;
        for (int i = 0; i < k; i++) {
            seed = seed * 1103515245u + 12345u;
            ids[i] = (int32_t)((seed >> 16) % VOCAB);
        }
        assert_int_equal(sep_cache_plan(c, ids, k, &plan), 0);
        assert_int_equal(plan.n_tokens, k);
        int covered = 0;
        for (int s = 0; s < plan.n_seg; s++) {
            const sep_segment_t *sg = &plan.seg[s];
            assert_int_equal(sg->start, covered);
            for (int i = 0; i < sg->len; i++) {
                int64_t want_pos;
                int size = ref_step(ref, &p, ids[sg->start + i], &want_pos);
                assert_int_equal(sg->n_past + i + 1, size);
                assert_int_equal(plan.rope_pos[sg->start + i], want_pos);
                /* a compaction ends exactly the segments that exceed c */
                int compacts = p.method != SEP_METHOD_FULL && size > p.c;
                assert_int_equal(compacts, i == sg->len - 1 && sg->n_keep > 0);
                if (compacts) {
                    assert_int_equal(sg->n_keep, ref->n);
                    for (int j = 0; j < sg->first_moved; j++)
                        assert_int_equal(sg->keep[j], j);
                    if (sg->first_moved < sg->n_keep)
                        assert_true(sg->keep[sg->first_moved] != sg->first_moved);
                }
            }
            covered += sg->len;
        }
        assert_int_equal(covered, k);
        assert_int_equal(plan.n, ref->n);
        assert_true(plan.max_entries <= (p.method == SEP_METHOD_FULL ? done + k : p.c + 1));
        assert_int_equal(sep_cache_reserve(c, plan.max_entries), 0);
        sep_cache_commit(c, &plan);
        assert_int_equal(c->n, ref->n);
        assert_memory_equal(c->ids, ref->ids, sizeof(int32_t) * ref->n);
        assert_memory_equal(c->pos, ref->pos, sizeof(int64_t) * ref->n);
        assert_int_equal(c->n_seen, done + k);
    }
    sep_plan_free(&plan);
    free(ref);
    sep_cache_destroy(&c);
    sep_backend_destroy(&be);
}

static sep_policy_t sepllm(int a, int s, int w, int c, int shift)
{
    return (sep_policy_t){ .method = SEP_METHOD_SEPLLM, .a = a, .s = s, .w = w, .c = c,
                           .shift = shift, .is_sep = is_sep, .n_vocab = VOCAB };
}

static void test_sepllm_plans(void **state)
{
    (void)state;
    const int chunks[] = { 1, 3, 64, 500 };
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        check_stream(sepllm(4, 16, 32, 64, 1), 1500, chunks[i], 1 + i);
        check_stream(sepllm(0, 16, 32, 64, 1), 1500, chunks[i], 11 + i);
        check_stream(sepllm(4, 16, 32, 64, 0), 1500, chunks[i], 21 + i);
        check_stream(sepllm(2, 3, 5, 11, 1), 700, chunks[i], 31 + i);  /* separators overflow s */
        check_stream(sepllm(1, 40, 8, 50, 1), 700, chunks[i], 41 + i); /* s rarely fills */
    }
}

static void test_streaming_plans(void **state)
{
    (void)state;
    sep_policy_t p = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 60, .c = 64, .shift = 1 };
    check_stream(p, 1000, 1, 5);
    check_stream(p, 1000, 77, 6);
    p.shift = 0;
    check_stream(p, 1000, 500, 7);
}

static void test_full_plans(void **state)
{
    (void)state;
    sep_policy_t p = { .method = SEP_METHOD_FULL, .shift = 1 };
    check_stream(p, 2000, 500, 8);
    check_stream(p, 300, 1, 9);
}

static void expect_policy_error(sep_policy_t p, const char *needle)
{
    assert_int_equal(sep_policy_check(&p), SEP_EINVAL);
    if (!strstr(sep_errmsg(), needle))
        fail_msg("'%s' does not say '%s'", sep_errmsg(), needle);
}

static void test_policy_checks(void **state)
{
    (void)state;
    assert_int_equal(sep_policy_check(&(sep_policy_t){ .method = SEP_METHOD_FULL }), 0);
    expect_policy_error(sepllm(4, 32, 224, 260, 1), "a + s + w = 260 must be below c = 260");
    expect_policy_error(sepllm(-1, 32, 224, 324, 1), "a, s, w must be >= 0");
    sep_policy_t p = sepllm(4, 32, 224, 324, 1);
    p.is_sep = NULL;
    expect_policy_error(p, "no separator set");
    sep_policy_t st = { .method = SEP_METHOD_STREAMING, .a = 4, .w = 100, .c = 64 };
    expect_policy_error(st, "the window w=100 must be c - a = 60");
    sep_method_t m;
    assert_int_equal(sep_method_parse("sepllm", &m), 0);
    assert_int_equal(m, SEP_METHOD_SEPLLM);
    assert_int_equal(sep_method_parse("h2o", &m), SEP_EINVAL);
    assert_non_null(strstr(sep_errmsg(), "h2o"));
}

int main(void)
{
    for (int id = 0; id < VOCAB; id++)
        is_sep[id] = id % 7 == 0; /* one id in seven */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sepllm_plans),
        cmocka_unit_test(test_streaming_plans),
        cmocka_unit_test(test_full_plans),
        cmocka_unit_test(test_policy_checks),
    };
    return cmocka_run_group_tests_name("cache", tests, NULL, NULL);
}
