/* test_memory: memory stays flat over an unbounded stream. 200k tokens of
 * the three texts, one after another, through books-llama-16m under
 * sepllm (a=4 s=32 w=224 c=324): resident memory after 200k tokens is
 * within 5% of that after 20k (under AddressSanitizer: the heap in use).
 * SEP_TEST_SCALE k divides both counts (the memory stays flat from 20k / k
 * tokens on, well past c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "golden.h"
#include "model.h"
#include "separators.h"
#include "stream.h"

#define FULL_TOKENS 200000
#define FULL_EARLY 20000
#define PIECE 2000
#define TOKENS ((size_t)(FULL_TOKENS / PIECE / golden_scale() * PIECE))
#define EARLY ((size_t)(FULL_EARLY / PIECE / golden_scale() * PIECE))

#if defined(__SANITIZE_ADDRESS__)
#define SEP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SEP_ASAN 1
#endif
#endif

#ifdef SEP_ASAN
/* libasan's (sanitizer/allocator_interface.h, which gcc 12 does not install) */
size_t __sanitizer_get_current_allocated_bytes(void);
/* Under AddressSanitizer freed blocks wait in its quarantine (up to 256
 * MiB) and resident memory grows until that is full, whatever the
 * program does: there the heap in use is what must stay flat. */
static long mem_bytes(void)
{
    return (long)__sanitizer_get_current_allocated_bytes();
}
#define MEM_WHAT "heap in use"
#else
#define MEM_WHAT "rss"
static long mem_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &pages, &resident), 2);
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}
#endif

static void test_flat_memory(void **state)
{
    (void)state;
    static const char *texts[] = { "persuasion", "jack_sheppard", "wikitext2_test" };
    int32_t *ids = malloc(sizeof *ids * TOKENS);
    assert_non_null(ids);
    size_t have = 0;
    for (int t = 0; t < 3 && have < TOKENS; t++) {
        char rel[128];
        int32_t *part;
        size_t n;
        snprintf(rel, sizeof rel, "golden/ids.books-llama-16m.%s.txt", texts[t]);
        assert_int_equal(golden_read_ids(golden_path(rel), &part, &n), 0);
        size_t take = n < TOKENS - have ? n : TOKENS - have;
        memcpy(ids + have, part, take * sizeof *ids);
        have += take;
        free(part);
    }
    assert_int_equal(have, TOKENS);

    const char *dir = golden_path("models/books-llama-16m");
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    sep_backend_t *be;
    sep_model_t *m;
    sep_tok_t *tok;
    sep_sepset_t seps;
    sep_stream_t *s;
    assert_int_equal(sep_backend_new(&be, golden_device(), golden_precision(), 0), 0);
    assert_int_equal(sep_tok_load(&tok, path), 0);
    assert_int_equal(sep_sepset_build(&seps, tok, "auto", sep_tok_vocab_size(tok)), 0);
    assert_int_equal(sep_model_load(&m, dir, be, 512), 0);
    sep_policy_t p = { .method = SEP_METHOD_SEPLLM, .a = 4, .s = 32, .w = 224, .c = 324,
                       .shift = 1, .is_sep = seps.is_sep, .n_vocab = seps.n_vocab };
    assert_int_equal(sep_stream_new(&s, m, &p), 0);
    long early = 0;
    for (size_t at = 0; at < TOKENS; at += PIECE) {
        size_t scored;
        assert_int_equal(sep_stream_feed(m, s, ids + at, PIECE, NULL, NULL, &scored), 0);
        if (at + PIECE == EARLY)
            early = mem_bytes();
    }
    long late = mem_bytes();
    printf("# " MEM_WHAT " after %zu tokens: %ld KiB, after %zu: %ld KiB; ppl %.3f, "
           "max_kv %lld\n", EARLY, early / 1024, TOKENS, late / 1024, exp(s->nll_sum / s->tokens),
           (long long)s->kv_max);
    assert_int_equal(s->tokens, TOKENS - 1);
    assert_int_equal(s->kv_max, 325);
    assert_true(late <= early * 1.05 && late >= early * 0.95);
    sep_stream_destroy(&s);
    sep_model_destroy(&m);
    sep_sepset_free(&seps);
    sep_tok_destroy(&tok);
    sep_backend_destroy(&be);
    free(ids);
}

int main(void)
{
    const struct CMUnitTest tests[] = { cmocka_unit_test(test_flat_memory) };
    return cmocka_run_group_tests_name("memory", tests, NULL, NULL);
}
