/* tok_check.c: whole-text encoding against the streaming encoder. */
#include "tok_check.h"

#include <string.h>

#include "err.h"
#include "fuzz.h"

static uint32_t tc_next(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* The stream encoding of text in pieces: SEP_OK and *ids, *n, or the
 * first failure. *forced: some call may have cut without an exact place. */
static int tc_stream(const sep_tok_t *tok, const uint8_t *text, size_t len, unsigned seed,
                     int32_t **ids_out, size_t *n_out, int *forced)
{
    static const size_t max_piece[4] = { 1, 8, 64, 3000 };
    uint32_t s = seed * 2654435761u + 1;
    size_t maxp = max_piece[seed & 3];
    char *buf = malloc(len + 1);
    int32_t *ids = NULL;
    size_t n = 0, held = 0, fed = 0;
    int at = SEP_TOK_START, rc = SEP_OK;
    *forced = 0;
    FUZZ_CHECK(buf, "memory");
    for (;;) {
        size_t piece = 1 + tc_next(&s) % maxp;
        if (piece > len - fed)
            piece = len - fed;
        memcpy(buf + held, text + fed, piece);
        held += piece;
        fed += piece;
        int final = fed == len;
        int32_t *got = NULL;
        size_t ng = 0, used = 0;
        if ((rc = sep_tok_encode_prefix(tok, buf, held, final, &at, &got, &ng, &used))) {
            FUZZ_CHECK(!got, "no ids on failure");
            break;
        }
        FUZZ_CHECK(used <= held, "used %zu of %zu", used, held);
        FUZZ_CHECK(!final || used == held, "a final call uses everything");
        FUZZ_CHECK(final || held - used <= SEP_TOK_HOLD_MAX, "holds %zu bytes", held - used);
        if (!final && held > SEP_TOK_HOLD_MAX && held - used >= SEP_TOK_HOLD_MAX / 2 &&
            held - used < SEP_TOK_HOLD_MAX / 2 + 4)
            *forced = 1;
        if (ng) {
            int32_t *ni = realloc(ids, (n + ng) * sizeof *ni);
            FUZZ_CHECK(ni, "memory");
            ids = ni;
            memcpy(ids + n, got, ng * sizeof *ids);
            n += ng;
        }
        free(got);
        memmove(buf, buf + used, held - used);
        held -= used;
        if (final)
            break;
    }
    free(buf);
    if (rc) {
        free(ids);
        ids = NULL;
        n = 0;
    }
    *ids_out = ids;
    *n_out = n;
    return rc;
}

void tok_check(const sep_tok_t *tok, const uint8_t *text, size_t len, unsigned seed,
               int check_round)
{
    int32_t *whole = NULL, *streamed = NULL;
    size_t nw = 0, ns = 0;
    int forced = 0;
    int rw = sep_tok_encode(tok, (const char *)text, len, &whole, &nw);
    int rs = tc_stream(tok, text, len, seed, &streamed, &ns, &forced);
    FUZZ_CHECK((rw == SEP_OK) == (rs == SEP_OK), "whole encode %d (%s), stream %d", rw,
               rw ? sep_errmsg() : "ok", rs);
    if (rw) {
        FUZZ_CHECK(rw == SEP_EUTF8 && rs == SEP_EUTF8, "only invalid UTF-8 fails: %d, %d",
                   rw, rs);
        free(whole);
        return;
    }
    if (!forced) {
        size_t i = 0;
        while (i < nw && i < ns && whole[i] == streamed[i])
            i++;
        FUZZ_CHECK(nw == ns && i == nw,
                   "stream (seed %u) differs from the whole text: %zu and %zu ids, "
                   "first difference at id %zu (%d vs %d)", seed, nw, ns, i,
                   i < nw ? whole[i] : -1, i < ns ? streamed[i] : -1);
    }
    for (size_t i = 0; i < nw; i++)
        FUZZ_CHECK(sep_tok_has_id(tok, whole[i]), "id %d is a token's", whole[i]);
    char *dec = NULL;
    size_t dlen = 0;
    FUZZ_CHECK(!sep_tok_decode(tok, whole, nw, &dec, &dlen), "decode: %s", sep_errmsg());
    FUZZ_CHECK(dec && dec[dlen] == 0, "decoded text terminated");
    if (check_round && sep_tok_kind(tok) == SEP_TOK_BYTELEVEL)
        FUZZ_CHECK(dlen == len && !memcmp(dec, text, len), "decode(encode(text)) is the text");
    free(dec);
    for (size_t i = 0; i < nw && i < 64; i++) {
        char *t = NULL;
        size_t tl = 0;
        FUZZ_CHECK(!sep_tok_token_text(tok, whole[i], &t, &tl), "token_text %d", whole[i]);
        free(t);
    }
    free(whole);
    free(streamed);
}
