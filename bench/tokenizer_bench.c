/* tokenizer_bench.c: encode and decode throughput of a tokenizer.json.
 *
 *   tokenizer_bench MODEL_DIR TEXT_FILE [ROUNDS [PIECE]]
 *
 * Loads MODEL_DIR/tokenizer.json, encodes the whole file ROUNDS times (5
 * by default) on one thread, decodes the ids as many times, streams the
 * file through sep_tok_encode_prefix in PIECE-byte pieces (4096 by
 * default) as many times, and prints the best and mean MB/s of each and
 * the token count. A benchmark, not a test: it checks only that the decode
 * gives the text back and the stream the whole text's ids.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *b = NULL;
    long n;
    if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) ||
        !(b = malloc((size_t)n + 1)) || fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    } else {
        *len = (size_t)n;
    }
    if (f)
        fclose(f);
    return b;
}

/* Stream text through sep_tok_encode_prefix in pieces of piece bytes, as
 * a reader would: the kept tail moved to the front of buf (len bytes) and
 * the next piece appended. 1 if the ids joined are want, 0 if not, or an
 * error code. */
static int stream(const sep_tok_t *tok, const char *text, size_t len,
                  size_t piece, char *buf, const int32_t *want, size_t nwant)
{
    size_t have = 0, off = 0, got = 0, n, used;
    int at = SEP_TOK_START, same = 1, rc;
    int32_t *ids;
    do {
        size_t k = piece < len - off ? piece : len - off;
        memcpy(buf + have, text + off, k);
        have += k;
        off += k;
        if ((rc = sep_tok_encode_prefix(tok, buf, have, off == len, &at, &ids,
                                        &n, &used)))
            return rc;
        same &= got + n <= nwant && !memcmp(ids, want + got, n * sizeof *ids);
        got += n;
        free(ids);
        memmove(buf, buf + used, have - used);
        have -= used;
    } while (off < len);
    return same && got == nwant;
}

int main(int argc, char **argv)
{
    char path[4096], *text = NULL, *back = NULL, *buf = NULL;
    size_t len = 0, n = 0, blen;
    int32_t *ids = NULL;
    sep_tok_t *tok = NULL;
    int rounds = argc > 3 ? atoi(argv[3]) : 5, rc = 1, same = 0;
    long piece = argc > 4 ? atol(argv[4]) : 4096;
    double enc_best = 1e30, enc_sum = 0, dec_best = 1e30, dec_sum = 0;
    double str_best = 1e30, str_sum = 0, t0, t;
    if (argc < 3 || rounds < 1 || piece < 1) {
        fprintf(stderr, "usage: %s MODEL_DIR TEXT_FILE [ROUNDS [PIECE]]\n", argv[0]);
        return 2;
    }
    snprintf(path, sizeof path, "%s/tokenizer.json", argv[1]);
    t0 = now();
    if (sep_tok_load(&tok, path)) {
        fprintf(stderr, "%s\n", sep_errmsg());
        return 1;
    }
    printf("load %s: %.1f ms\n", path, (now() - t0) * 1e3);
    if (!(text = slurp(argv[2], &len)) || !(buf = malloc(len + 1))) {
        fprintf(stderr, "%s: cannot read\n", argv[2]);
        goto done;
    }
    for (int r = 0; r < rounds; r++) {
        free(ids);
        t0 = now();
        if (sep_tok_encode(tok, text, len, &ids, &n)) {
            fprintf(stderr, "encode: %s\n", sep_errmsg());
            goto done;
        }
        t = now() - t0;
        enc_sum += t;
        enc_best = t < enc_best ? t : enc_best;

        free(back);
        t0 = now();
        if (sep_tok_decode(tok, ids, n, &back, &blen)) {
            fprintf(stderr, "decode: %s\n", sep_errmsg());
            goto done;
        }
        t = now() - t0;
        dec_sum += t;
        dec_best = t < dec_best ? t : dec_best;

        t0 = now();
        if ((same = stream(tok, text, len, (size_t)piece, buf, ids, n)) < 0) {
            fprintf(stderr, "stream: %s\n", sep_errmsg());
            goto done;
        }
        t = now() - t0;
        str_sum += t;
        str_best = t < str_best ? t : str_best;
    }
    printf("%s: %zu bytes, %zu tokens (%.2f bytes/token)\n", argv[2], len, n,
           (double)len / (double)n);
    printf("encode: best %.1f MB/s, mean %.1f MB/s (%d rounds)\n",
           len / enc_best / 1e6, len * rounds / enc_sum / 1e6, rounds);
    printf("decode: best %.1f MB/s, mean %.1f MB/s, %s\n", len / dec_best / 1e6,
           len * rounds / dec_sum / 1e6,
           blen == len && !memcmp(back, text, len) ? "round trip exact"
                                                   : "ROUND TRIP DIFFERS");
    printf("stream (%ld-byte pieces): best %.1f MB/s, mean %.1f MB/s, %s\n",
           piece, len / str_best / 1e6, len * rounds / str_sum / 1e6,
           same ? "ids as whole" : "IDS DIFFER FROM WHOLE");
    rc = 0;
done:
    free(buf);
    free(back);
    free(ids);
    free(text);
    sep_tok_destroy(&tok);
    return rc;
}
