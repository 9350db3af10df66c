/* fuzz_tokenize.c: the tokenizers on arbitrary bytes (invalid UTF-8,
 * NULs, long runs without a cut point), the streaming encoder against
 * whole-text encoding (tok_check.c: aborts on a mismatch).
 *
 * Input: a byte choosing the tokenizer, a byte seeding the piece
 * lengths, then the text. Tokenizers: the bundled books-llama-16m, and
 * from $SEP_SHARED/models those of books-neox-9m and stories15m
 * (SentencePiece) when present. */
#include "fuzz.h"

#include <string.h>
#include <unistd.h>

#include "err.h"
#include "tokenizer.h"
#include "tok_check.h"

#define FZ_TOKS 3
static sep_tok_t *fz_tok[FZ_TOKS];
static int fz_n;

static void fz_load(const char *path)
{
    if (access(path, R_OK))
        return;
    if (sep_tok_load(&fz_tok[fz_n], path)) {
        fprintf(stderr, "%s: %s\n", path, sep_errmsg());
        abort();
    }
    fz_n++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[8192];
    const char *shared = getenv("SEP_SHARED");
    snprintf(path, sizeof path, "%s/models/books-llama-16m/tokenizer.json", fuzz_source_root());
    fz_load(path);
    if (!fz_n) {
        fprintf(stderr, "%s: the bundled tokenizer is missing\n", path);
        abort();
    }
    if (shared && *shared) {
        snprintf(path, sizeof path, "%s/models/books-neox-9m/tokenizer.json", shared);
        fz_load(path);
        snprintf(path, sizeof path, "%s/models/stories15m/tokenizer.json", shared);
        fz_load(path);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    tok_check(fz_tok[data[0] % fz_n], data + 2, size - 2, data[1], 1);
    return 0;
}
