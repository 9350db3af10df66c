/* fuzz_tok_load.c: the tokenizer.json loader (workers/tok_load.c).
 *
 * Input: a tokenizer.json. One that loads then encodes a few fixed texts
 * whole and as a stream (tok_check.c) and decodes its first ids. */
#include "fuzz.h"

#include <string.h>

#include "err.h"
#include "tokenizer.h"
#include "tok_check.h"

static const char *const fz_texts[] = {
    "Hello, world! It's 2024.\n\n  Tabs\tand   spaces ",
    "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 <s></s><|endoftext|>",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "bad \xff\xfe utf-8",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[8192];
    fuzz_write("tokenizer.json", data, size);
    snprintf(path, sizeof path, "%s/tokenizer.json", fuzz_dir());
    sep_tok_t *tok = NULL;
    if (sep_tok_load(&tok, path)) {
        FUZZ_CHECK(!tok && sep_errmsg()[0], "a failed load names its cause");
        return 0;
    }
    FUZZ_CHECK(sep_tok_vocab_size(tok) > 0, "a vocabulary");
    for (size_t i = 0; i < sizeof fz_texts / sizeof fz_texts[0]; i++)
        tok_check(tok, (const uint8_t *)fz_texts[i], strlen(fz_texts[i]), (unsigned)i, 0);
    int lim = sep_tok_vocab_size(tok) < 512 ? sep_tok_vocab_size(tok) : 512;
    for (int32_t id = 0; id < lim; id++) {
        char *t = NULL;
        size_t n = 0;
        if (!sep_tok_has_id(tok, id))
            continue;
        FUZZ_CHECK(!sep_tok_token_text(tok, id, &t, &n), "token_text %d: %s", id, sep_errmsg());
        free(t);
        FUZZ_CHECK(!sep_tok_decode(tok, &id, 1, &t, &n), "decode %d: %s", id, sep_errmsg());
        free(t);
    }
    sep_tok_destroy(&tok);
    return 0;
}
