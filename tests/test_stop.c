/* test_stop: the stop-string matcher of generate (daemon/stop.c): text
 * held back while it may begin a stop string, a match across pieces, the
 * first match to complete winning, and the same result however the text
 * is cut. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "stop.h"

/* A matcher over the n stop strings of list. */
static sep_stop_t *matcher(const char *const *list, int n)
{
    sep_stop_t *m = NULL;
    assert_int_equal(sep_stop_new(&m), SEP_OK);
    for (int i = 0; i < n; i++)
        assert_int_equal(sep_stop_add(m, list[i], strlen(list[i])), SEP_OK);
    return m;
}

/* Feed the pieces (NULL-terminated; the last one is marked last): the
 * released text in out (NUL-terminated), the hit. */
static int feed_all(sep_stop_t *m, const char *const *pieces, char *out, size_t cap)
{
    size_t n = 0;
    int hit = -1;
    for (int i = 0; pieces[i]; i++) {
        const char *o;
        size_t ol;
        int h;
        assert_int_equal(sep_stop_feed(m, pieces[i], strlen(pieces[i]), !pieces[i + 1], &o,
                                       &ol, &h), SEP_OK);
        assert_true(n + ol < cap);
        memcpy(out + n, o, ol);
        n += ol;
        if (h >= 0) {
            assert_int_equal(hit, -1);
            hit = h;
        }
    }
    out[n] = 0;
    return hit;
}

static void test_across_pieces(void **state)
{
    (void)state;
    const char *stops[] = { "o w" };
    sep_stop_t *m = matcher(stops, 1);
    const char *o;
    size_t ol;
    int hit;
    assert_int_equal(sep_stop_feed(m, "Hel", 3, 0, &o, &ol, &hit), SEP_OK);
    assert_int_equal(hit, -1);
    assert_int_equal(ol, 3);
    assert_memory_equal(o, "Hel", 3);
    /* "lo" may begin "o w": the "o" waits */
    assert_int_equal(sep_stop_feed(m, "lo", 2, 0, &o, &ol, &hit), SEP_OK);
    assert_int_equal(hit, -1);
    assert_int_equal(ol, 1);
    assert_memory_equal(o, "l", 1);
    assert_int_equal(sep_stop_held(m), 1);
    /* " world": the stop string completes; nothing of it or after goes out */
    assert_int_equal(sep_stop_feed(m, " world", 6, 0, &o, &ol, &hit), SEP_OK);
    assert_int_equal(hit, 0);
    assert_int_equal(ol, 0);
    /* done: nothing more is taken */
    assert_int_equal(sep_stop_feed(m, "x", 1, 1, &o, &ol, &hit), SEP_OK);
    assert_int_equal(hit, -1);
    assert_int_equal(ol, 0);
    sep_stop_destroy(&m);
    assert_null(m);
}

static void test_held_then_released(void **state)
{
    (void)state;
    const char *stops[] = { "abc" };
    sep_stop_t *m = matcher(stops, 1);
    const char *o;
    size_t ol;
    int hit;
    assert_int_equal(sep_stop_feed(m, "xab", 3, 0, &o, &ol, &hit), SEP_OK);
    assert_int_equal(ol, 1);
    assert_int_equal(sep_stop_held(m), 2);
    /* "abd" is not "abc": all of it goes */
    assert_int_equal(sep_stop_feed(m, "d", 1, 0, &o, &ol, &hit), SEP_OK);
    assert_int_equal(hit, -1);
    assert_int_equal(ol, 3);
    assert_memory_equal(o, "abd", 3);
    /* the last piece releases what it holds */
    assert_int_equal(sep_stop_feed(m, "ab", 2, 0, &o, &ol, &hit), SEP_OK);
    assert_int_equal(ol, 0);
    assert_int_equal(sep_stop_feed(m, "", 0, 1, &o, &ol, &hit), SEP_OK);
    assert_int_equal(hit, -1);
    assert_int_equal(ol, 2);
    assert_memory_equal(o, "ab", 2);
    assert_int_equal(sep_stop_held(m), 0);
    sep_stop_destroy(&m);
}

static void test_overlapping_prefix(void **state)
{
    (void)state;
    /* "aaab" a byte at a time: the held "aa" must slide, not restart */
    const char *stops[] = { "aab" };
    sep_stop_t *m = matcher(stops, 1);
    char out[64];
    const char *pieces[] = { "a", "a", "a", "b", "zz", NULL };
    assert_int_equal(feed_all(m, pieces, out, sizeof out), 0);
    assert_string_equal(out, "a");
    sep_stop_destroy(&m);
}

static void test_first_to_complete_wins(void **state)
{
    (void)state;
    char out[64];
    /* "bc" completes before "abcd" does, though "abcd" starts first */
    const char *s1[] = { "abcd", "bc" };
    sep_stop_t *m = matcher(s1, 2);
    const char *p1[] = { "xabcd", NULL };
    assert_int_equal(feed_all(m, p1, out, sizeof out), 1);
    assert_string_equal(out, "xa");
    sep_stop_destroy(&m);
    /* two complete at the same byte: the longer wins */
    const char *s2[] = { "b", "ab" };
    m = matcher(s2, 2);
    const char *p2[] = { "x", "a", "b", "c", NULL };
    assert_int_equal(feed_all(m, p2, out, sizeof out), 1);
    assert_string_equal(out, "x");
    sep_stop_destroy(&m);
}

static void test_never_matches(void **state)
{
    (void)state;
    char out[64];
    const char *stops[] = { "zzz", "\n\n" };
    sep_stop_t *m = matcher(stops, 2);
    const char *pieces[] = { "It was", " z", "z", "\n", "ot", "\n", NULL };
    assert_int_equal(feed_all(m, pieces, out, sizeof out), -1);
    assert_string_equal(out, "It was zz\not\n");
    sep_stop_destroy(&m);
}

static void test_limits(void **state)
{
    (void)state;
    sep_stop_t *m = NULL;
    char big[SEP_STOP_LEN + 1];
    memset(big, 'x', sizeof big);
    assert_int_equal(sep_stop_new(&m), SEP_OK);
    assert_int_equal(sep_stop_add(m, "", 0), SEP_EINVAL);
    assert_non_null(strstr(sep_errmsg(), "0 bytes"));
    assert_int_equal(sep_stop_add(m, big, sizeof big), SEP_EINVAL);
    assert_non_null(strstr(sep_errmsg(), "257 bytes"));
    assert_int_equal(sep_stop_add(m, big, SEP_STOP_LEN), SEP_OK);
    for (int i = 1; i < SEP_STOP_MAX; i++)
        assert_int_equal(sep_stop_add(m, "a", 1), SEP_OK);
    assert_int_equal(sep_stop_add(m, "b", 1), SEP_ERANGE);
    assert_non_null(strstr(sep_errmsg(), "more than 16"));
    assert_int_equal(sep_stop_count(m), SEP_STOP_MAX);
    size_t len;
    assert_ptr_not_equal(sep_stop_string(m, 0, &len), NULL);
    assert_int_equal(len, SEP_STOP_LEN);
    /* the longest one may be held almost whole */
    const char *o;
    size_t ol;
    int hit;
    assert_int_equal(sep_stop_feed(m, big, SEP_STOP_LEN - 1, 0, &o, &ol, &hit), SEP_OK);
    assert_int_equal(ol, 0);
    assert_int_equal(sep_stop_feed(m, "x", 1, 0, &o, &ol, &hit), SEP_OK);
    assert_int_equal(hit, 0);
    sep_stop_destroy(&m);
}

/* The reference: every stop string's first occurrence in the whole text;
 * the one that ends first wins, the longest on a tie. */
static int reference(const char *text, size_t n, const char *const *stops, int ns,
                     size_t *cut)
{
    int best = -1;
    size_t best_end = 0;
    for (int i = 0; i < ns; i++) {
        size_t l = strlen(stops[i]);
        for (size_t p = 0; p + l <= n; p++) {
            if (memcmp(text + p, stops[i], l))
                continue;
            if (best < 0 || p + l < best_end ||
                (p + l == best_end && l > strlen(stops[best]))) {
                best = i;
                best_end = p + l;
            }
            break;
        }
    }
    *cut = best < 0 ? n : best_end - strlen(stops[best]);
    return best;
}

static void test_any_cut(void **state)
{
    (void)state;
    /* a two-letter alphabet: partial matches everywhere */
    const char *stops[] = { "abab", "bba", "aaab", "babba" };
    uint64_t x = 88172645463325252u;
    for (int round = 0; round < 2000; round++) {
        char text[40], out[64];
        size_t n = 1 + round % 39;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            text[i] = "ab"[x & 1];
        }
        int ns = 1 + round % 4;
        size_t cut;
        int want = reference(text, n, stops, ns, &cut);
        sep_stop_t *m = matcher(stops, ns);
        size_t at = 0, got_n = 0;
        int hit = -1;
        for (;;) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t k = (size_t)(x % 5); /* pieces of 0 to 4 bytes */
            if (k > n - at)
                k = n - at;
            const char *o;
            size_t ol;
            int h;
            assert_int_equal(sep_stop_feed(m, text + at, k, at + k == n, &o, &ol, &h), SEP_OK);
            memcpy(out + got_n, o, ol);
            got_n += ol;
            at += k;
            if (h >= 0 || at == n) {
                hit = h;
                break;
            }
        }
        if (hit != want || got_n != cut || memcmp(out, text, cut))
            fail_msg("text %.*s, %d stop strings: hit %d, released %zu; expected %d, %zu",
                     (int)n, text, ns, hit, got_n, want, cut);
        sep_stop_destroy(&m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_across_pieces),
        cmocka_unit_test(test_held_then_released),
        cmocka_unit_test(test_overlapping_prefix),
        cmocka_unit_test(test_first_to_complete_wins),
        cmocka_unit_test(test_never_matches),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_any_cut),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
