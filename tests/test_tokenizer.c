/* test_tokenizer.c: tokenizer.json encode/decode against tokenizers' ids.
 *
 * Fixtures come from the shared folder: $SEP_SHARED, else SEP_SHARED_DIR
 * (set at build time). Golden ids are HF tokenizers' encode(text,
 * add_special_tokens=False) of whole texts. Small tokenizer.json files
 * written to a temporary folder cover what the fixtures lack (Metaspace,
 * Split, NFC, unk fusing) and malformed input. Streaming encodes, fed in
 * pieces, must give the whole text's ids. The UTF-8 check (utf8.h) is
 * held to the definition of valid UTF-8 on every string of up to 3 bytes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "tokenizer.h"
#include "utf8.h"

#ifndef SEP_SHARED_DIR
#define SEP_SHARED_DIR "../shared"
#endif

static char tmpdir[] = "/tmp/test_tokenizer.XXXXXX";

static const char *shared_dir(void)
{
    const char *s = getenv("SEP_SHARED");
    return s && *s ? s : SEP_SHARED_DIR;
}

/* $SEP_TEST_SCALE (default 1, as tests/golden.h): the streaming tests
 * divide their text lengths by it (the sanitizer pass). */
static size_t test_scale(void)
{
    const char *e = getenv("SEP_TEST_SCALE");
    int k = e && *e ? atoi(e) : 1;
    return k >= 1 ? (size_t)k : 1;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *b = NULL;
    long n;
    if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET))
        goto fail;
    if (!(b = malloc((size_t)n + 1)) || fread(b, 1, (size_t)n, f) != (size_t)n)
        goto fail;
    b[n] = 0;
    *len = (size_t)n;
    fclose(f);
    return b;
fail:
    print_error("cannot read %s\n", path);
    free(b);
    if (f)
        fclose(f);
    fail();
    return NULL;
}

static char *text_of(const char *name, size_t *len)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/texts/%s.txt", shared_dir(), name);
    return slurp(p, len);
}

static sep_tok_t *load_model(const char *model)
{
    char p[1024];
    sep_tok_t *t = NULL;
    snprintf(p, sizeof p, "%s/models/%s/tokenizer.json", shared_dir(), model);
    int rc = sep_tok_load(&t, p);
    if (rc)
        print_error("%s: %s\n", sep_strerror(rc), sep_errmsg());
    assert_int_equal(rc, SEP_OK);
    assert_non_null(t);
    return t;
}

static int32_t *golden_ids(const char *model, const char *text, size_t *n)
{
    char p[1024], *s, *e;
    size_t len, cap = 1024;
    snprintf(p, sizeof p, "%s/golden/ids.%s.%s.txt", shared_dir(), model, text);
    char *buf = slurp(p, &len);
    int32_t *v = malloc(cap * sizeof *v);
    assert_non_null(v);
    *n = 0;
    for (s = buf;; s = e) {
        long x = strtol(s, &e, 10);
        if (e == s)
            break;
        if (*n == cap) {
            v = realloc(v, (cap *= 2) * sizeof *v);
            assert_non_null(v);
        }
        v[(*n)++] = (int32_t)x;
    }
    free(buf);
    assert_true(*n > 0);
    return v;
}

static void encode_ok(const sep_tok_t *t, const char *s, size_t len,
                      int32_t **ids, size_t *n)
{
    int rc = sep_tok_encode(t, s, len, ids, n);
    if (rc)
        print_error("%s: %s\n", sep_strerror(rc), sep_errmsg());
    assert_int_equal(rc, SEP_OK);
}

static void assert_ids(const int32_t *got, size_t ngot, const int32_t *want,
                       size_t nwant)
{
    size_t i = 0;
    while (i < ngot && i < nwant && got[i] == want[i])
        i++;
    if (i == ngot && i == nwant)
        return;
    print_error("%zu ids, want %zu; first difference at index %zu:\n", ngot,
                nwant, i);
    for (size_t k = i > 4 ? i - 4 : 0; k < i + 6 && (k < ngot || k < nwant); k++)
        print_error("  [%zu] got %d want %d%s\n", k, k < ngot ? got[k] : -1,
                    k < nwant ? want[k] : -1, k == i ? "  <--" : "");
    fail();
}

/* ---- golden ids of whole texts ---- */

struct golden {
    const char *model, *text;
};

static const struct golden goldens[] = {
    {"stories15m", "persuasion"},      {"stories15m", "jack_sheppard"},
    {"stories15m", "wikitext2_test"},  {"books-llama-16m", "persuasion"},
    {"books-llama-16m", "jack_sheppard"}, {"books-llama-16m", "wikitext2_test"},
    {"books-neox-9m", "persuasion"},   {"books-neox-9m", "jack_sheppard"},
    {"books-neox-9m", "wikitext2_test"},
};

static void test_golden(void **state)
{
    const struct golden *g = *state;
    sep_tok_t *t = load_model(g->model);
    size_t len, nwant, n;
    char *text = text_of(g->text, &len);
    int32_t *want = golden_ids(g->model, g->text, &nwant), *ids;
    encode_ok(t, text, len, &ids, &n);
    assert_ids(ids, n, want, nwant);
    free(ids);
    free(want);
    free(text);
    sep_tok_destroy(&t);
    assert_null(t);
}

/* decode(encode(text)) == text for byte-level BPE. */
static void test_roundtrip(void **state)
{
    const struct golden *g = *state;
    sep_tok_t *t = load_model(g->model);
    size_t len, n, dlen;
    char *text = text_of(g->text, &len), *back;
    int32_t *ids;
    assert_int_equal(sep_tok_kind(t), SEP_TOK_BYTELEVEL);
    encode_ok(t, text, len, &ids, &n);
    assert_int_equal(sep_tok_decode(t, ids, n, &back, &dlen), SEP_OK);
    assert_int_equal(dlen, len);
    assert_memory_equal(back, text, len);
    assert_int_equal(back[dlen], 0);
    free(back);
    free(ids);
    free(text);
    sep_tok_destroy(&t);
}

/* The golden ids of stories15m decode to the text: Strip takes off the one
 * space that Prepend added (wikitext starts with a space of its own). */
static void test_sp_decode(void **state)
{
    const struct golden *g = *state;
    sep_tok_t *t = load_model(g->model);
    size_t len, n, dlen;
    char *text = text_of(g->text, &len), *back;
    int32_t *ids = golden_ids(g->model, g->text, &n);
    assert_int_equal(sep_tok_kind(t), SEP_TOK_SENTENCEPIECE);
    assert_int_equal(sep_tok_decode(t, ids, n, &back, &dlen), SEP_OK);
    assert_int_equal(dlen, len);
    assert_memory_equal(back, text, len);
    free(back);
    free(ids);
    free(text);
    sep_tok_destroy(&t);
}

static void test_vocab_size(void **state)
{
    (void)state;
    sep_tok_t *a = load_model("stories15m"), *b = load_model("books-neox-9m");
    assert_int_equal(sep_tok_vocab_size(a), 32000);
    assert_int_equal(sep_tok_vocab_size(b), 8192);
    assert_int_equal(sep_tok_kind(b), SEP_TOK_BYTELEVEL);
    sep_tok_destroy(&a);
    sep_tok_destroy(&b);
}

/* ---- invalid input ---- */

static void test_invalid_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len, off;
    } bad[] = {
        {"abc\x80", 4, 3},            /* lone continuation byte */
        {"ab\xC0\xAF", 4, 2},         /* overlong '/' */
        {"x\xED\xA0\x80y", 5, 1},     /* surrogate */
        {"hello \xE2\x82", 8, 6},     /* truncated at the end */
        {"\xF5\x80\x80\x80", 4, 0},   /* above U+10FFFF */
        {"ok\xC3\xA9 \xFF", 6, 5},    /* after a valid é */
    };
    sep_tok_t *t = load_model("books-llama-16m");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 99;
        char want[64];
        assert_int_equal(sep_tok_encode(t, bad[i].s, bad[i].len, &ids, &n),
                         SEP_EUTF8);
        assert_null(ids);
        assert_int_equal(n, 0);
        snprintf(want, sizeof want, "offset %zu", bad[i].off);
        if (!strstr(sep_errmsg(), want))
            print_error("case %zu: \"%s\" lacks \"%s\"\n", i, sep_errmsg(), want);
        assert_non_null(strstr(sep_errmsg(), want));
    }
    sep_tok_destroy(&t);
}

/* ---- the UTF-8 check (utf8.h) ---- */

/* Each case: the bytes, what sep_utf8_scan returns and *ok_len. */
static const struct utf8_case {
    const char *s;
    size_t len;
    int rc;
    size_t ok;
} utf8_cases[] = {
    /* valid */
    {"", 0, SEP_OK, 0},
    {"abc", 3, SEP_OK, 3},
    {"a\0b", 3, SEP_OK, 3},                     /* NUL is a character */
    {"\xC2\x80\xDF\xBF", 4, SEP_OK, 4},         /* U+0080, U+07FF */
    {"\xE0\xA0\x80\xEF\xBF\xBF", 6, SEP_OK, 6}, /* U+0800, U+FFFF */
    {"\xED\x9F\xBF\xEE\x80\x80", 6, SEP_OK, 6}, /* U+D7FF, U+E000 around the surrogates */
    {"\xF0\x90\x80\x80\xF4\x8F\xBF\xBF", 8, SEP_OK, 8}, /* U+10000, U+10FFFF */
    {"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", 14, SEP_OK, 14},
    /* truncated at the end by 1-3 bytes: whole characters before them */
    {"ab\xC3", 3, SEP_OK, 2},
    {"ab\xE2\x82", 4, SEP_OK, 2},
    {"ab\xE2", 3, SEP_OK, 2},
    {"ab\xF0\x9F\x98", 5, SEP_OK, 2},
    {"\xF0\x9F", 2, SEP_OK, 0},
    {"\xF4\x8F\xBF", 3, SEP_OK, 0},             /* may still be U+10FFFF */
    {"\xE0\xA0", 2, SEP_OK, 0},
    {"\xED\x9F", 2, SEP_OK, 0},
    {"\xC3\xA9\xF0", 3, SEP_OK, 2},
    /* cut at the end, but no byte after could make them valid */
    {"\xE0\x80", 2, SEP_EUTF8, 0},              /* overlong */
    {"\xED\xA0", 2, SEP_EUTF8, 0},              /* surrogate */
    {"\xF0\x8F", 2, SEP_EUTF8, 0},              /* overlong */
    {"\xF4\x90", 2, SEP_EUTF8, 0},              /* above U+10FFFF */
    {"ab\xC0", 3, SEP_EUTF8, 2},
    {"ab\xF5", 3, SEP_EUTF8, 2},
    {"ab\x80", 3, SEP_EUTF8, 2},
    /* overlong forms */
    {"ab\xC0\xAF", 4, SEP_EUTF8, 2},
    {"\xC1\xBF", 2, SEP_EUTF8, 0},
    {"x\xE0\x80\xAF", 4, SEP_EUTF8, 1},
    {"\xE0\x9F\xBF", 3, SEP_EUTF8, 0},
    {"\xF0\x80\x80\xAF", 4, SEP_EUTF8, 0},
    {"\xF0\x8F\xBF\xBF", 4, SEP_EUTF8, 0},
    /* surrogates */
    {"x\xED\xA0\x80y", 5, SEP_EUTF8, 1},        /* U+D800 */
    {"\xED\xBF\xBF", 3, SEP_EUTF8, 0},          /* U+DFFF */
    /* above U+10FFFF */
    {"\xF4\x90\x80\x80", 4, SEP_EUTF8, 0},
    {"\xF5\x80\x80\x80", 4, SEP_EUTF8, 0},
    {"\xF7\xBF\xBF\xBF", 4, SEP_EUTF8, 0},
    /* stray continuation bytes */
    {"abc\x80" "def", 7, SEP_EUTF8, 3},
    {"\xBF", 1, SEP_EUTF8, 0},
    {"\xC3\xA9\xA9", 3, SEP_EUTF8, 2},          /* one too many after é */
    /* bytes that never occur */
    {"ab\xFF", 3, SEP_EUTF8, 2},
    {"\xFE\xFF", 2, SEP_EUTF8, 0},
    {"ok\xC3\xA9 \xFE", 6, SEP_EUTF8, 5},
    /* in the middle: the start of the sequence the bad byte ends */
    {"hello \xE2\x82" "A world", 14, SEP_EUTF8, 6},
    {"caf\xC3(", 5, SEP_EUTF8, 3},
    {"\xF0\x9F\x98 x", 5, SEP_EUTF8, 0},        /* truncated, then more text */
    {"a\xFF" "b\xC0", 4, SEP_EUTF8, 1},         /* the first of two */
    {"\xFF\xC3", 2, SEP_EUTF8, 0},              /* invalid before an open end */
};

/* The table, and the tokenizer naming the same offset for each bad case. */
static void test_utf8_scan(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("books-llama-16m");
    for (size_t i = 0; i < sizeof utf8_cases / sizeof *utf8_cases; i++) {
        const struct utf8_case *c = &utf8_cases[i];
        size_t ok = 99;
        int rc = sep_utf8_scan(c->s, c->len, &ok);
        if (rc != c->rc || ok != c->ok)
            print_error("case %zu: rc %d ok_len %zu, want %d %zu\n", i, rc, ok, c->rc, c->ok);
        assert_int_equal(rc, c->rc);
        assert_int_equal(ok, c->ok);
        int32_t *ids;
        size_t n;
        rc = sep_tok_encode(t, c->s, c->len, &ids, &n);
        if (c->rc == SEP_OK && c->ok == c->len) {
            assert_int_equal(rc, SEP_OK);
            free(ids);
            continue;
        }
        char want[64];
        snprintf(want, sizeof want, "offset %zu ", c->ok);
        assert_int_equal(rc, SEP_EUTF8);
        if (!strstr(sep_errmsg(), want))
            print_error("case %zu: \"%s\" lacks \"%s\"\n", i, sep_errmsg(), want);
        assert_non_null(strstr(sep_errmsg(), want));
    }
    /* far into a long text, and no message written */
    size_t len = 200000, ok;
    char *s = malloc(len);
    assert_non_null(s);
    for (size_t i = 0; i < len; i += 2)
        memcpy(s + i, "\xC3\xA9", 2);
    sep_fail(SEP_EINVAL, "untouched");
    assert_int_equal(sep_utf8_scan(s, len, &ok), SEP_OK);
    assert_int_equal(ok, len);
    assert_int_equal(sep_utf8_scan(s, len - 1, &ok), SEP_OK);
    assert_int_equal(ok, len - 2);
    s[123457] = 'x';  /* the second byte of the é at 123456 */
    assert_int_equal(sep_utf8_scan(s, len, &ok), SEP_EUTF8);
    assert_int_equal(ok, 123456);
    assert_string_equal(sep_errmsg(), "untouched");
    free(s);
    sep_tok_destroy(&t);
}

/* What Python's strict decode and Rust's from_utf8 accept, written out
 * from the definition (a lead byte's length, continuation bytes, the code
 * point in range) rather than by maximal subparts: the offset of the first
 * character that is not whole and valid, and whether the bytes from there
 * could still begin one. */
static int utf8_ref(const unsigned char *s, size_t len, size_t *ok)
{
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n = c < 0x80 ? 1 : c >= 0xC0 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3
                 : c >= 0xF0 && c < 0xF8 ? 4 : 0;
        if (!n)
            break;
        /* the code points that n bytes starting with s[i..] can make */
        uint32_t lo = n == 1 ? c : c & (0x7F >> n), hi;
        size_t k = 1;
        for (; k < n && i + k < len && (s[i + k] & 0xC0) == 0x80; k++)
            lo = lo << 6 | (s[i + k] & 0x3F);
        hi = lo;
        for (size_t j = k; j < n; j++) {
            lo = lo << 6;
            hi = hi << 6 | 0x3F;
        }
        bool any = hi >= min[n] && lo <= 0x10FFFF && !(lo >= 0xD800 && hi <= 0xDFFF);
        if (k == n && any && !(lo >= 0xD800 && lo <= 0xDFFF)) {
            i += n;
            continue;
        }
        *ok = i;
        /* open: the bytes left are all the character's and could be valid */
        return i + k == len && k < n && any ? SEP_OK : SEP_EUTF8;
    }
    *ok = i;
    return i == len ? SEP_OK : SEP_EUTF8;
}

static void utf8_agree(const unsigned char *s, size_t len)
{
    size_t ok = 99, want = 98;
    int rc = sep_utf8_scan((const char *)s, len, &ok), wrc = utf8_ref(s, len, &want);
    if (rc != wrc || ok != want) {
        char hex[64] = "";
        for (size_t i = 0; i < len; i++)
            snprintf(hex + 3 * i, sizeof hex - 3 * i, "%02X ", s[i]);
        print_error("%s: rc %d ok_len %zu, the definition says %d %zu\n", hex, rc, ok, wrc,
                    want);
    }
    assert_int_equal(rc, wrc);
    assert_int_equal(ok, want);
}

/* Every string of 1 to 3 bytes, and many longer ones of the bytes that
 * matter, against the definition. */
static void test_utf8_scan_all(void **state)
{
    (void)state;
    unsigned char s[8];
    for (uint32_t v = 0; v < 1u << 24; v++) {
        s[0] = (unsigned char)(v >> 16);
        s[1] = (unsigned char)(v >> 8);
        s[2] = (unsigned char)v;
        if (v < 256)
            utf8_agree(s + 2, 1);
        if (v < 65536)
            utf8_agree(s + 1, 2);
        utf8_agree(s, 3);
    }
    static const unsigned char pick[] = {
        'a', 0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF,
        0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFF };
    uint64_t x = 88172645463325252ull;  /* xorshift64: the same strings every run */
    for (int i = 0; i < 2000000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t len = 4 + (size_t)(x % 5);
        for (size_t j = 0; j < len; j++)
            s[j] = pick[(x >> (8 + 6 * j)) % sizeof pick];
        utf8_agree(s, len);
    }
}

/* The words a message gets for each kind of fault. */
static void test_utf8_why(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len;
        const char *why;
    } cases[] = {
        {"\xC3(", 2, "0xC3 is not followed by a continuation byte"},
        {"\xE2\x82" "A", 3, "0xE2 0x82 is not followed by a continuation byte"},
        {"\xE2\x82", 2, "0xE2 0x82 is cut off by the end of the text"},
        {"\xF0\x9F\x98", 3, "0xF0 0x9F 0x98 is cut off by the end of the text"},
        {"\x80", 1, "0x80 is a continuation byte with no character to continue"},
        {"\xC0\xAF", 2, "0xC0 never occurs in UTF-8 (it could only start an overlong form)"},
        {"\xF5\x80", 2, "0xF5 never occurs in UTF-8 (it could only start a code point above "
                        "U+10FFFF)"},
        {"\xFF", 1, "0xFF never occurs in UTF-8"},
        {"\xE0\x80\x80", 3, "0xE0 0x80 starts an overlong form"},
        {"\xF0\x8F\xBF\xBF", 4, "0xF0 0x8F starts an overlong form"},
        {"\xED\xA0\x80", 3, "0xED 0xA0 starts a surrogate (U+D800..U+DFFF)"},
        {"\xF4\x90\x80\x80", 4, "0xF4 0x90 starts a code point above U+10FFFF"},
    };
    char buf[128];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        assert_string_equal(sep_utf8_why(cases[i].s, cases[i].len, buf, sizeof buf),
                            cases[i].why);
    /* cut to fit */
    assert_string_equal(sep_utf8_why("\xC3(", 2, buf, 8), "0xC3 is");
}

static void test_decode_range(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("books-llama-16m");
    int32_t ids[] = {14, 8192};
    char *s = (char *)1;
    size_t n;
    assert_int_equal(sep_tok_decode(t, ids, 2, &s, &n), SEP_ERANGE);
    assert_null(s);
    assert_non_null(strstr(sep_errmsg(), "8192"));
    ids[1] = -1;
    assert_int_equal(sep_tok_decode(t, ids, 2, &s, &n), SEP_ERANGE);
    /* the ids it decodes, as generation caps them */
    assert_true(sep_tok_has_id(t, 0) && sep_tok_has_id(t, 8191));
    assert_false(sep_tok_has_id(t, 8192) || sep_tok_has_id(t, -1));
    sep_tok_destroy(&t);
}

/* ---- malformed tokenizer.json ---- */

static char *write_tmp(const char *name, const char *json)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(json, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

/* Loading json fails with code, and the message names the file and has
 * the word field. */
static void load_fails(const char *name, const char *json, int code,
                       const char *field)
{
    const char *path = write_tmp(name, json);
    sep_tok_t *t = (sep_tok_t *)1;
    int rc = sep_tok_load(&t, path);
    if (rc != code || !strstr(sep_errmsg(), path) || !strstr(sep_errmsg(), field))
        print_error("%s: got %d (%s), want %d naming %s\n", name, rc,
                    sep_errmsg(), code, field);
    assert_int_equal(rc, code);
    assert_null(t);
    assert_non_null(strstr(sep_errmsg(), path));
    assert_non_null(strstr(sep_errmsg(), field));
    unlink(path);
}

#define BPE_HEAD "{\"model\": {\"type\": \"BPE\", "

static void test_bad_not_json(void **state)
{
    (void)state;
    load_fails("notjson.json", "{\"model\": {\"type\": \"BPE\",", SEP_EFORMAT,
               "JSON");
}

static void test_bad_no_model(void **state)
{
    (void)state;
    load_fails("nomodel.json", "{\"added_tokens\": [], \"normalizer\": null}",
               SEP_EFORMAT, "model");
}

static void test_bad_model_type(void **state)
{
    (void)state;
    load_fails("wordpiece.json",
               "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}",
               SEP_EUNSUPPORTED, "model.type");
}

static void test_bad_merge(void **state)
{
    (void)state;
    load_fails("merge.json",
               BPE_HEAD "\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
               " \"merges\": [\"a b\", \"a c\"]}}",
               SEP_EFORMAT, "model.merges[1]");
    load_fails("merged.json",
               BPE_HEAD "\"vocab\": {\"a\": 0, \"b\": 1},"
               " \"merges\": [[\"a\", \"b\"]]}}",
               SEP_EFORMAT, "model.merges[0]");
}

static void test_bad_vocab_range(void **state)
{
    (void)state;
    load_fails("range.json",
               BPE_HEAD "\"vocab\": {\"a\": 0, \"b\": 7}, \"merges\": []}}",
               SEP_EFORMAT, "model.vocab");
    load_fails("negative.json",
               BPE_HEAD "\"vocab\": {\"a\": -1}, \"merges\": []}}",
               SEP_EFORMAT, "model.vocab");
}

static void test_bad_vocab_dup(void **state)
{
    (void)state;
    load_fails("dup.json",
               BPE_HEAD "\"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}",
               SEP_EFORMAT, "model.vocab");
}

static void test_bad_unsupported(void **state)
{
    (void)state;
    load_fails("lower.json",
               BPE_HEAD "\"vocab\": {\"a\": 0}, \"merges\": []},"
               " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\":"
               " [{\"type\": \"NFC\"}, {\"type\": \"Lowercase\"}]}}",
               SEP_EUNSUPPORTED, "normalizer.normalizers[1]");
    load_fails("suffix.json",
               BPE_HEAD "\"vocab\": {\"a\": 0}, \"merges\": [],"
               " \"end_of_word_suffix\": \"</w>\"}}",
               SEP_EUNSUPPORTED, "end_of_word_suffix");
    load_fails("pretok.json",
               BPE_HEAD "\"vocab\": {\"a\": 0}, \"merges\": []},"
               " \"pre_tokenizer\": {\"type\": \"Whitespace\"}}",
               SEP_EUNSUPPORTED, "pre_tokenizer");
}

static void test_bad_missing_file(void **state)
{
    (void)state;
    char path[300];
    sep_tok_t *t;
    snprintf(path, sizeof path, "%s/absent.json", tmpdir);
    assert_int_equal(sep_tok_load(&t, path), SEP_ENOTFOUND);
    assert_null(t);
    assert_non_null(strstr(sep_errmsg(), path));
}

/* ---- added tokens ---- */

static void test_added_bytelevel(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("books-llama-16m");
    int32_t *a, *b, *all;
    size_t na, nb, n;
    encode_ok(t, "Hello there", 11, &a, &na);
    encode_ok(t, " world.", 7, &b, &nb);
    encode_ok(t, "Hello there<|endoftext|> world.", 31, &all, &n);
    assert_int_equal(n, na + 1 + nb);
    assert_memory_equal(all, a, na * sizeof *a);
    assert_int_equal(all[na], 0);
    assert_memory_equal(all + na + 1, b, nb * sizeof *b);
    free(a);
    free(b);
    free(all);
    sep_tok_destroy(&t);
}

/* Each segment is normalized on its own: both get the ▁ prefix. */
static void test_added_sentencepiece(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("stories15m");
    int32_t *a, *all;
    size_t na, n;
    encode_ok(t, "Once", 4, &a, &na);
    encode_ok(t, "Once</s>Once", 12, &all, &n);
    assert_int_equal(n, 2 * na + 1);
    assert_memory_equal(all, a, na * sizeof *a);
    assert_int_equal(all[na], 2);
    assert_memory_equal(all + na + 1, a, na * sizeof *a);
    free(a);
    free(all);
    sep_tok_destroy(&t);
}

/* ---- per-token text and the separator rule ---- */

static const char *const seps[] = {
    ".", ",", "?", "!", ";", ":", "\n", "\t", " ", " .", " ,", " ?", " !",
    " ;", " :", " \n", "  ", "   ", "\n ", " \n ",
};

static void check_seps(const char *model, const int32_t *want, size_t nwant)
{
    sep_tok_t *t = load_model(model);
    int32_t got[64];
    size_t n = 0;
    for (int32_t id = 0; id < sep_tok_vocab_size(t); id++) {
        char *s;
        size_t len;
        assert_int_equal(sep_tok_token_text(t, id, &s, &len), SEP_OK);
        assert_int_equal(s[len], 0);
        for (size_t k = 0; k < sizeof seps / sizeof *seps; k++)
            if (len == strlen(seps[k]) && !memcmp(s, seps[k], len)) {
                assert_true(n < 64);
                got[n++] = id;
                break;
            }
        free(s);
    }
    assert_ids(got, n, want, nwant);
    sep_tok_destroy(&t);
}

static void test_seps_stories(void **state)
{
    (void)state;
    static const int32_t want[] = {12, 13, 36, 47, 49, 61, 62, 66, 259, 268,
        584, 869, 1577, 1678, 1738, 1919, 2056, 29889, 29892, 29901, 29936,
        29973, 29991};
    check_seps("stories15m", want, sizeof want / sizeof *want);
}

static const int32_t books_seps[] = {1, 12, 14, 26, 27, 31, 198, 199, 221,
                                     360, 1679};

static void test_seps_books_llama(void **state)
{
    (void)state;
    check_seps("books-llama-16m", books_seps, sizeof books_seps / sizeof *books_seps);
}

static void test_seps_books_neox(void **state)
{
    (void)state;
    check_seps("books-neox-9m", books_seps, sizeof books_seps / sizeof *books_seps);
}

/* A token's own text has its raw bytes; a whole decode replaces broken
 * UTF-8: byte-level as from_utf8_lossy (one U+FFFD per maximal invalid
 * prefix), ByteFallback with one U+FFFD per byte. */
static void test_broken_utf8_decode(void **state)
{
    (void)state;
    sep_tok_t *b = load_model("books-llama-16m"), *s = load_model("stories15m");
    int32_t e2 = -1, x82 = -1, A = -1;
    char *out;
    size_t n;
    for (int32_t id = 0; id < sep_tok_vocab_size(b); id++) {
        assert_int_equal(sep_tok_token_text(b, id, &out, &n), SEP_OK);
        if (n == 1 && (unsigned char)out[0] == 0xE2)
            e2 = id;
        if (n == 1 && (unsigned char)out[0] == 0x82)
            x82 = id;
        if (n == 1 && out[0] == 'A')
            A = id;
        free(out);
    }
    assert_true(e2 >= 0 && x82 >= 0 && A >= 0);
    int32_t bl[] = {e2, x82, A, e2};
    assert_int_equal(sep_tok_decode(b, bl, 4, &out, &n), SEP_OK);
    assert_string_equal(out, "\xEF\xBF\xBD" "A" "\xEF\xBF\xBD");
    free(out);

    /* stories15m: <0xXX> is id 3 + XX. */
    int32_t euro[] = {3 + 0xE2, 3 + 0x82, 3 + 0xAC}, cut[] = {3 + 0xE2, 3 + 0x82};
    assert_int_equal(sep_tok_decode(s, euro, 3, &out, &n), SEP_OK);
    assert_string_equal(out, "\xE2\x82\xAC");
    free(out);
    assert_int_equal(sep_tok_decode(s, cut, 2, &out, &n), SEP_OK);
    assert_string_equal(out, "\xEF\xBF\xBD\xEF\xBF\xBD");
    free(out);
    assert_int_equal(sep_tok_token_text(s, 3 + 0xE2, &out, &n), SEP_OK);
    assert_int_equal(n, 1);
    assert_int_equal((unsigned char)out[0], 0xE2);
    free(out);
    sep_tok_destroy(&b);
    sep_tok_destroy(&s);
}

/* ---- small tokenizers for what the fixtures lack ---- */

static sep_tok_t *load_tmp(const char *name, const char *json)
{
    const char *path = write_tmp(name, json);
    sep_tok_t *t = NULL;
    int rc = sep_tok_load(&t, path);
    if (rc)
        print_error("%s: %s\n", sep_strerror(rc), sep_errmsg());
    assert_int_equal(rc, SEP_OK);
    unlink(path);
    return t;
}

static void expect_ids(const sep_tok_t *t, const char *s,
                       const int32_t *want, size_t nwant)
{
    int32_t *ids;
    size_t n;
    encode_ok(t, s, strlen(s), &ids, &n);
    assert_ids(ids, n, want, nwant);
    free(ids);
}

static void expect_decode(const sep_tok_t *t, const int32_t *ids, size_t n,
                          const char *want)
{
    char *s;
    size_t len;
    assert_int_equal(sep_tok_decode(t, ids, n, &s, &len), SEP_OK);
    assert_string_equal(s, want);
    assert_int_equal(len, strlen(want));
    free(s);
}

/* Metaspace pre-tokenizer (prepend_scheme first, split), byte fallback,
 * fused unk, Metaspace and ByteFallback decoders. */
static const char METASPACE_JSON[] =
    "{\"added_tokens\": [{\"id\": 10, \"content\": \"<x>\", \"special\": true,"
    "  \"normalized\": false}],"
    " \"normalizer\": null,"
    " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\xE2\x96\x81\","
    "  \"prepend_scheme\": \"first\", \"split\": true},"
    " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"ByteFallback\"},"
    "  {\"type\": \"Metaspace\", \"replacement\": \"\xE2\x96\x81\","
    "   \"prepend_scheme\": \"first\", \"split\": true}]},"
    " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\","
    "  \"continuing_subword_prefix\": null, \"end_of_word_suffix\": null,"
    "  \"fuse_unk\": true, \"byte_fallback\": true, \"ignore_merges\": false,"
    "  \"vocab\": {\"<unk>\": 0, \"<0xC3>\": 1, \"<0xA9>\": 2, \"\xE2\x96\x81\": 3,"
    "   \"a\": 4, \"b\": 5, \"c\": 6, \"\xE2\x96\x81" "a\": 7, \"bc\": 8,"
    "   \"\xE2\x96\x81" "abc\": 9},"
    "  \"merges\": [\"\xE2\x96\x81 a\", \"b c\", \"\xE2\x96\x81" "a bc\"]}}";

static void test_metaspace(void **state)
{
    (void)state;
    sep_tok_t *t = load_tmp("metaspace.json", METASPACE_JSON);
    assert_int_equal(sep_tok_kind(t), SEP_TOK_SENTENCEPIECE);
    assert_int_equal(sep_tok_vocab_size(t), 11);
    /* "▁abc" "▁abc" "▁é": é falls back to its two bytes. */
    const int32_t a[] = {9, 9, 3, 1, 2};
    expect_ids(t, "abc abc \xC3\xA9", a, 5);
    expect_decode(t, a, 5, "abc abc \xC3\xA9");
    /* Only the segment at the start of the text gets the prefix. */
    const int32_t b[] = {7, 5, 10, 4, 5};
    expect_ids(t, "ab<x>ab", b, 5);
    /* x and y are unknown and have no byte tokens: one fused unk. */
    const int32_t c[] = {7, 0, 5};
    expect_ids(t, "axyb", c, 3);
    sep_tok_destroy(&t);
}

/* NFC, Split on a String with Removed, ByteLevel without its regex,
 * ignore_merges. */
static const char SPLIT_JSON[] =
    "{\"normalizer\": {\"type\": \"NFC\"},"
    " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
    "  {\"type\": \"Split\", \"pattern\": {\"String\": \" \"},"
    "   \"behavior\": \"Removed\", \"invert\": false},"
    "  {\"type\": \"ByteLevel\", \"add_prefix_space\": false,"
    "   \"trim_offsets\": true, \"use_regex\": false}]},"
    " \"decoder\": {\"type\": \"ByteLevel\"},"
    " \"model\": {\"type\": \"BPE\", \"ignore_merges\": true,"
    "  \"vocab\": {\"a\": 0, \"b\": 1, \"\xC3\x83\": 2, \"\xC2\xA9\": 3,"
    "   \"\xC3\x83\xC2\xA9\": 4, \"ab\": 5, \"abab\": 6},"
    "  \"merges\": [\"a b\", \"\xC3\x83 \xC2\xA9\"]}}";

static void test_split_nfc(void **state)
{
    (void)state;
    sep_tok_t *t = load_tmp("split.json", SPLIT_JSON);
    assert_int_equal(sep_tok_kind(t), SEP_TOK_BYTELEVEL);
    /* e + U+0301 composes to é (bytes C3 A9, chars Ã ©); "abab" is in the
     * vocabulary, so with ignore_merges it is not merged to "ab" "ab". */
    const int32_t a[] = {6, 4, 5, 5};
    expect_ids(t, "abab  \xC3\xA9 ab ab", a, 4);
    expect_ids(t, "abab e\xCC\x81 ab ab", a, 4);
    expect_decode(t, a, 4, "abab\xC3\xA9" "abab");
    sep_tok_destroy(&t);
}

/* lstrip/rstrip take the spaces around an added token; single_word
 * matches only between non-alphanumeric characters. No pre-tokenizer, no
 * unk token (unknown characters are dropped), no decoder (tokens join with
 * spaces). */
static const char STRIP_JSON[] =
    "{\"added_tokens\": ["
    "  {\"id\": 6, \"content\": \"<m>\", \"lstrip\": true, \"rstrip\": true,"
    "   \"single_word\": false, \"normalized\": false, \"special\": true},"
    "  {\"id\": 7, \"content\": \"cat\", \"lstrip\": false, \"rstrip\": false,"
    "   \"single_word\": true, \"normalized\": false, \"special\": false}],"
    " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2,"
    "  \"t\": 3, \"s\": 4, \" \": 5}, \"merges\": []}}";

static void test_added_options(void **state)
{
    (void)state;
    sep_tok_t *t = load_tmp("strip.json", STRIP_JSON);
    const int32_t a[] = {0, 6, 1};
    expect_ids(t, "a  <m> b", a, 3);
    expect_decode(t, a, 3, "a <m> b");
    const int32_t b[] = {7, 5, 2, 0, 3, 4, 5, 7};
    expect_ids(t, "cat cats cat", b, 8);
    /* é and 1 are alphanumeric, so no match; being unknown, they are
     * dropped. */
    const int32_t c[] = {2, 0, 3, 5, 7, 5, 2, 0, 3};
    expect_ids(t, "\xC3\xA9" "cat cat 1cat", c, 9);
    sep_tok_destroy(&t);
}

/* A long word the merge heap takes in one piece: no junction is free. */
static void test_long_word(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("stories15m");
    size_t len = 200000;
    char *s = malloc(len + 1), *back;
    int32_t *ids;
    size_t n, dlen;
    assert_non_null(s);
    memset(s, ' ', len);
    s[len] = 0;
    encode_ok(t, s, len, &ids, &n);
    assert_true(n > 0 && n < len / 4);
    assert_int_equal(sep_tok_decode(t, ids, n, &back, &dlen), SEP_OK);
    assert_int_equal(dlen, len);
    assert_memory_equal(back, s, len);
    free(back);
    free(ids);
    free(s);
    sep_tok_destroy(&t);
}

/* ---- streaming ---- */

/* Piece sizes: size each, or (size 0) pseudo-random from seed. */
struct feed {
    size_t size;
    uint32_t seed;
};

static size_t next_piece(struct feed *f)
{
    if (f->size)
        return f->size;
    f->seed = f->seed * 1664525u + 1013904223u;
    return 1 + (f->seed >> 8) % 1500;
}

/* Encode text through sep_tok_encode_prefix in the pieces f gives, the
 * kept tail carried over, checking each call's bound: the ids joined, and
 * the most any call kept in *held. */
static int32_t *stream_encode(const sep_tok_t *t, const char *text, size_t len,
                              struct feed f, size_t *n, size_t *held)
{
    char *buf = malloc(len + 1);
    size_t have = 0, off = 0, cap = len / 2 + 16;
    int32_t *all = malloc(cap * sizeof *all);
    int at = SEP_TOK_START;
    assert_non_null(buf);
    assert_non_null(all);
    *n = *held = 0;
    for (;;) {
        size_t k = next_piece(&f), m, used;
        int32_t *ids;
        k = k < len - off ? k : len - off;
        memcpy(buf + have, text + off, k);
        have += k;
        off += k;
        int final = off == len;
        int rc = sep_tok_encode_prefix(t, buf, have, final, &at, &ids, &m, &used);
        if (rc)
            print_error("at byte %zu: %s: %s\n", off, sep_strerror(rc), sep_errmsg());
        assert_int_equal(rc, SEP_OK);
        assert_true(used <= have);
        assert_true(final ? used == have : have - used <= SEP_TOK_HOLD_MAX);
        if (*n + m > cap) {
            all = realloc(all, (cap = 2 * (*n + m)) * sizeof *all);
            assert_non_null(all);
        }
        memcpy(all + *n, ids, m * sizeof *ids);
        *n += m;
        free(ids);
        memmove(buf, buf + used, have - used);
        have -= used;
        *held = have > *held ? have : *held;
        if (final)
            break;
    }
    free(buf);
    return all;
}

/* The whole golden texts fed in 4096-, 7-byte and random pieces, and the
 * first 50 KB byte by byte, give the ids of the whole. On real text a
 * call keeps the last word or two. SEP_TEST_SCALE k: the first 1 / k of
 * each text, against its whole encode (test_golden holds that to the
 * golden ids), and 50 / k KB byte by byte. */
static void test_stream_golden(void **state)
{
    const struct golden *g = *state;
    static const struct feed feeds[] = {{4096, 0}, {7, 0}, {0, 1}};
    sep_tok_t *t = load_model(g->model);
    size_t len, nwant, n, held, k = test_scale(), plen = 50000 / k;
    char *text = text_of(g->text, &len);
    int32_t *want, *ids;
    if (k > 1) {
        len /= k;
        while (len && (text[len] & 0xC0) == 0x80)
            len--;
        encode_ok(t, text, len, &want, &nwant);
    } else {
        want = golden_ids(g->model, g->text, &nwant);
    }
    for (size_t i = 0; i < sizeof feeds / sizeof *feeds; i++) {
        ids = stream_encode(t, text, len, feeds[i], &n, &held);
        assert_ids(ids, n, want, nwant);
        assert_true(held < 64);
        free(ids);
    }
    free(want);
    while ((text[plen] & 0xC0) == 0x80)
        plen++;
    encode_ok(t, text, plen, &want, &nwant);
    ids = stream_encode(t, text, plen, (struct feed){1, 0}, &n, &held);
    assert_ids(ids, n, want, nwant);
    assert_true(held < 64);
    free(ids);
    free(want);
    free(text);
    sep_tok_destroy(&t);
}

/* s cut into two pieces at every byte gives the whole's ids; a call that
 * ends inside an added token keeps it whole. */
static void stream_splits(const sep_tok_t *t, const char *s)
{
    size_t len = strlen(s), nwant, n1, n2, used, u2;
    int32_t *want, *a, *b;
    encode_ok(t, s, len, &want, &nwant);
    for (size_t k = 0; k <= len; k++) {
        int at = SEP_TOK_START;
        assert_int_equal(sep_tok_encode_prefix(t, s, k, 0, &at, &a, &n1, &used),
                         SEP_OK);
        assert_int_equal(sep_tok_encode_prefix(t, s + used, len - used, 1, &at,
                                               &b, &n2, &u2), SEP_OK);
        assert_int_equal(u2, len - used);
        a = realloc(a, (n1 + n2 + 1) * sizeof *a);
        assert_non_null(a);
        memcpy(a + n1, b, n2 * sizeof *b);
        assert_ids(a, n1 + n2, want, nwant);
        free(a);
        free(b);
    }
    free(want);
}

static void test_stream_added(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("books-llama-16m");
    static const char s[] = "Hello there<|endoftext|> world.";
    int32_t *ids;
    size_t n, used;
    stream_splits(t, s);
    /* The token cut after "<|endo": nothing of it is used yet. */
    for (size_t k = 12; k < 24; k++) {
        int at = SEP_TOK_START;
        assert_int_equal(sep_tok_encode_prefix(t, s, k, 0, &at, &ids, &n, &used),
                         SEP_OK);
        assert_true(used <= 11);
        for (size_t i = 0; i < n; i++)
            assert_int_not_equal(ids[i], 0);
        free(ids);
    }
    /* Complete, it is id 0 at once. */
    int at = SEP_TOK_START;
    assert_int_equal(sep_tok_encode_prefix(t, s, 24, 0, &at, &ids, &n, &used),
                     SEP_OK);
    assert_int_equal(used, 24);
    assert_int_equal(ids[n - 1], 0);
    assert_int_equal(at, SEP_TOK_SEGMENT);
    free(ids);
    sep_tok_destroy(&t);
}

/* SentencePiece's "▁" comes once per segment: not again where a call cut
 * inside text (*at SEP_TOK_MIDDLE), again after an added token
 * (SEP_TOK_SEGMENT). */
static void test_stream_prepend(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("stories15m");
    int32_t *ids, *want;
    size_t n, nwant, used;
    int at = SEP_TOK_START;
    stream_splits(t, "Once upon</s>a time,  there was</s></s>");
    assert_int_equal(sep_tok_encode_prefix(t, "Once upon a", 11, 0, &at, &ids,
                                           &n, &used), SEP_OK);
    assert_true(used > 0 && used < 11);
    assert_int_equal(at, SEP_TOK_MIDDLE);
    free(ids);
    at = SEP_TOK_START;
    assert_int_equal(sep_tok_encode_prefix(t, "Once</s>", 8, 0, &at, &ids, &n,
                                           &used), SEP_OK);
    assert_int_equal(used, 8);
    assert_int_equal(at, SEP_TOK_SEGMENT);
    free(ids);
    /* "Once" after </s> has its "▁" as the text's first word does. */
    assert_int_equal(sep_tok_encode_prefix(t, "Once", 4, 1, &at, &ids, &n,
                                           &used), SEP_OK);
    encode_ok(t, "Once", 4, &want, &nwant);
    assert_ids(ids, n, want, nwant);
    free(ids);
    free(want);
    sep_tok_destroy(&t);
}

/* A piece may end inside a character: it waits for the rest. Only a final
 * call with half a character, or a byte that no text makes valid, fails. */
static void test_stream_utf8(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("stories15m"), *b = load_model("books-llama-16m");
    static const char s[] = "caf\xC3\xA9 \xE2\x82\xAC 5 \xF0\x9F\x98\x80!";
    int32_t *ids;
    size_t n, used;
    int at = SEP_TOK_START;
    stream_splits(t, s);
    stream_splits(b, s);
    assert_int_equal(sep_tok_encode_prefix(b, "caf\xC3", 4, 0, &at, &ids, &n,
                                           &used), SEP_OK);
    assert_true(used <= 3);
    free(ids);
    at = SEP_TOK_START;
    ids = (int32_t *)1;
    assert_int_equal(sep_tok_encode_prefix(b, "caf \xF0\x9F\x98", 7, 1, &at,
                                           &ids, &n, &used), SEP_EUTF8);
    assert_null(ids);
    assert_int_equal(used, 0);
    assert_int_equal(at, SEP_TOK_START);
    assert_non_null(strstr(sep_errmsg(), "offset 4"));
    assert_int_equal(sep_tok_encode_prefix(b, "ab\xFF" "cd", 5, 0, &at, &ids,
                                           &n, &used), SEP_EUTF8);
    assert_int_equal(sep_tok_encode_prefix(b, "ab\xE2\x28", 4, 0, &at, &ids,
                                           &n, &used), SEP_EUTF8);
    at = 7;
    assert_int_equal(sep_tok_encode_prefix(b, "ab", 2, 0, &at, &ids, &n, &used),
                     SEP_EINVAL);
    sep_tok_destroy(&t);
    sep_tok_destroy(&b);
}

/* The small tokenizers' Metaspace (prepend_scheme first), byte fallback
 * and unk fusing; NFC with a Removed split and ignore_merges; lstrip,
 * rstrip and single_word added tokens: any two pieces give the whole's
 * ids. */
static void test_stream_configs(void **state)
{
    (void)state;
    static const char *const meta[] = {"abc abc \xC3\xA9", "ab<x>ab", "axyb",
        " abc<x> abc  ab", "<x>abc<x", "b c  xy\xC3\xA9 abc"};
    static const char *const split[] = {"abab  \xC3\xA9 ab ab",
        "abab e\xCC\x81 ab ab", "e\xCC\x81\xCC\x81 abab  a\xCC\x81"};
    static const char *const strip[] = {"a  <m> b", "cat cats cat",
        "\xC3\xA9" "cat cat 1cat", "b<m>  cat  ", "scat cat\tcat <m", "cat"};
    sep_tok_t *t = load_tmp("metaspace.json", METASPACE_JSON);
    for (size_t i = 0; i < sizeof meta / sizeof *meta; i++)
        stream_splits(t, meta[i]);
    sep_tok_destroy(&t);
    t = load_tmp("split.json", SPLIT_JSON);
    for (size_t i = 0; i < sizeof split / sizeof *split; i++)
        stream_splits(t, split[i]);
    sep_tok_destroy(&t);
    t = load_tmp("strip.json", STRIP_JSON);
    for (size_t i = 0; i < sizeof strip / sizeof *strip; i++)
        stream_splits(t, strip[i]);
    sep_tok_destroy(&t);
}

/* Text without spaces still streams exactly where it has places to cut:
 * byte-level pre-tokens ending at punctuation, SentencePiece places no
 * merge spans. Without any (one 64 KB pre-token), calls still keep at most
 * SEP_TOK_HOLD_MAX bytes, cutting as if the text ended: the ids may differ
 * from the whole's but decode to the text. */
static void test_stream_bound(void **state)
{
    (void)state;
    sep_tok_t *b = load_model("books-llama-16m"), *s = load_model("stories15m");
    size_t len = 65536, n, nwant, held, dlen;
    char *text = malloc(len), *back;
    int32_t *ids, *want;
    uint32_t x = 7;
    assert_non_null(text);
    for (size_t i = 0; i < len; i++)
        text[i] = "one,two.three;"[i % 14];
    encode_ok(b, text, len, &want, &nwant);
    ids = stream_encode(b, text, len, (struct feed){4096, 0}, &n, &held);
    assert_ids(ids, n, want, nwant);
    assert_true(held < 64);
    free(ids);
    free(want);
    for (size_t i = 0; i < len; i++) {
        x = x * 1664525u + 1013904223u;
        text[i] = (char)('a' + (x >> 8) % 26);
    }
    encode_ok(s, text, len, &want, &nwant);
    ids = stream_encode(s, text, len, (struct feed){4096, 0}, &n, &held);
    assert_ids(ids, n, want, nwant);
    assert_true(held < 256);
    free(ids);
    free(want);
    ids = stream_encode(b, text, len, (struct feed){4096, 0}, &n, &held);
    assert_true(held > SEP_TOK_HOLD_MAX / 4);
    assert_int_equal(sep_tok_decode(b, ids, n, &back, &dlen), SEP_OK);
    assert_int_equal(dlen, len);
    assert_memory_equal(back, text, len);
    free(back);
    free(ids);
    free(text);
    sep_tok_destroy(&b);
    sep_tok_destroy(&s);
}

/* ---- concurrency ---- */

struct job {
    const sep_tok_t *tok;
    const char *text;
    size_t len;
    int32_t *ids;
    size_t n;
    int rc;
};

static void *encode_job(void *arg)
{
    struct job *j = arg;
    j->rc = sep_tok_encode(j->tok, j->text, j->len, &j->ids, &j->n);
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    sep_tok_t *t = load_model("books-llama-16m");
    size_t len, nwant;
    char *text = text_of("persuasion", &len);
    int32_t *want = golden_ids("books-llama-16m", "persuasion", &nwant);
    struct job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct job){t, text, len, NULL, 0, -1};
        assert_int_equal(pthread_create(&th[i], NULL, encode_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(jobs[i].rc, SEP_OK);
        assert_ids(jobs[i].ids, jobs[i].n, want, nwant);
        free(jobs[i].ids);
    }
    free(want);
    free(text);
    sep_tok_destroy(&t);
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(tmpdir);
}

/* One case per model and text, named so a TAP line says which failed. */
#define CASE(name, f, i) {name, f, NULL, NULL, (void *)&goldens[i]}

int main(void)
{
    const struct CMUnitTest tests[] = {
        CASE("golden_stories15m_persuasion", test_golden, 0),
        CASE("golden_stories15m_jack_sheppard", test_golden, 1),
        CASE("golden_stories15m_wikitext2_test", test_golden, 2),
        CASE("golden_books-llama-16m_persuasion", test_golden, 3),
        CASE("golden_books-llama-16m_jack_sheppard", test_golden, 4),
        CASE("golden_books-llama-16m_wikitext2_test", test_golden, 5),
        CASE("golden_books-neox-9m_persuasion", test_golden, 6),
        CASE("golden_books-neox-9m_jack_sheppard", test_golden, 7),
        CASE("golden_books-neox-9m_wikitext2_test", test_golden, 8),
        CASE("roundtrip_books-llama-16m_persuasion", test_roundtrip, 3),
        CASE("roundtrip_books-llama-16m_jack_sheppard", test_roundtrip, 4),
        CASE("roundtrip_books-llama-16m_wikitext2_test", test_roundtrip, 5),
        CASE("sp_decode_stories15m_persuasion", test_sp_decode, 0),
        CASE("sp_decode_stories15m_jack_sheppard", test_sp_decode, 1),
        CASE("sp_decode_stories15m_wikitext2_test", test_sp_decode, 2),
        CASE("stream_stories15m_persuasion", test_stream_golden, 0),
        CASE("stream_stories15m_jack_sheppard", test_stream_golden, 1),
        CASE("stream_stories15m_wikitext2_test", test_stream_golden, 2),
        CASE("stream_books-llama-16m_persuasion", test_stream_golden, 3),
        CASE("stream_books-llama-16m_jack_sheppard", test_stream_golden, 4),
        CASE("stream_books-llama-16m_wikitext2_test", test_stream_golden, 5),
        CASE("stream_books-neox-9m_persuasion", test_stream_golden, 6),
        CASE("stream_books-neox-9m_jack_sheppard", test_stream_golden, 7),
        CASE("stream_books-neox-9m_wikitext2_test", test_stream_golden, 8),
        cmocka_unit_test(test_vocab_size),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_utf8_scan),
        cmocka_unit_test(test_utf8_scan_all),
        cmocka_unit_test(test_utf8_why),
        cmocka_unit_test(test_decode_range),
        cmocka_unit_test(test_bad_not_json),
        cmocka_unit_test(test_bad_no_model),
        cmocka_unit_test(test_bad_model_type),
        cmocka_unit_test(test_bad_merge),
        cmocka_unit_test(test_bad_vocab_range),
        cmocka_unit_test(test_bad_vocab_dup),
        cmocka_unit_test(test_bad_unsupported),
        cmocka_unit_test(test_bad_missing_file),
        cmocka_unit_test(test_added_bytelevel),
        cmocka_unit_test(test_added_sentencepiece),
        cmocka_unit_test(test_added_options),
        cmocka_unit_test(test_seps_stories),
        cmocka_unit_test(test_seps_books_llama),
        cmocka_unit_test(test_seps_books_neox),
        cmocka_unit_test(test_broken_utf8_decode),
        cmocka_unit_test(test_metaspace),
        cmocka_unit_test(test_split_nfc),
        cmocka_unit_test(test_long_word),
        cmocka_unit_test(test_stream_added),
        cmocka_unit_test(test_stream_prepend),
        cmocka_unit_test(test_stream_utf8),
        cmocka_unit_test(test_stream_configs),
        cmocka_unit_test(test_stream_bound),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
