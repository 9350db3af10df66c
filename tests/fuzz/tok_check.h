/* tok_check.h: the tokenizer properties the tokenizer harnesses check. */
#ifndef SEP_FUZZ_TOK_CHECK_H
#define SEP_FUZZ_TOK_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* Encode text whole and as a stream cut into pieces (lengths drawn from
 * seed: 1 byte, up to 8, up to 64 or up to 3000), and abort unless both
 * fail alike or give the same ids (save where a forced cut was taken,
 * tokenizer.h); ids in the vocabulary; decoding succeeds, and gives the
 * text back for byte-level tokenizers when check_round is set. */
void tok_check(const sep_tok_t *tok, const uint8_t *text, size_t len, unsigned seed,
               int check_round);

#endif
