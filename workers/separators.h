/* separators.h: which token ids are separators, for a tokenizer.
 *
 * A spec names the set:
 *   NULL, "" or "auto"  the preset of the checkpoint's tokenizer when it is
 *                       one of the presets (recognised by its vocabulary
 *                       size and the ids of . , ? ! ; :), else "rule";
 *   "llama3", "gpt_neox", "falcon"
 *                       the lists hard-coded by the SepLLM authors;
 *   "rule"              every id whose text, decoded on its own, is one of
 *                       . , ? ! ; : "\n" "\t" " " " ." " ," " ?" " !" " ;"
 *                       " :" " \n" "  " "   " "\n " " \n ";
 *   a comma-separated list of items: digits are an id; anything else is a
 *                       string (escapes \n \t \s for space, \, \\) and
 *                       names every id whose text is that string.
 * The result is a bitmap over the model's vocabulary (config.json
 * vocab_size), which may be larger than the tokenizer's: ids past the
 * tokenizer's are never separators.
 */
#ifndef SEP_SEPARATORS_H
#define SEP_SEPARATORS_H

#include <stdint.h>

#include "tokenizer.h"

typedef struct {
    uint8_t *is_sep;   /* (n_vocab) 1 for a separator id */
    int n_vocab;       /* the model's vocabulary */
    int count;         /* separator ids */
    char name[32];     /* the preset used ("llama3", "rule", "list") */
} sep_sepset_t;

/* The preset called name ("llama3", "gpt_neox", "falcon") over a
 * vocabulary of n_vocab ids, no tokenizer needed (synthetic models). */
int sep_sepset_preset(sep_sepset_t *set, const char *name, int n_vocab);

/* Build the set of spec for tok, over a model of n_vocab ids; a
 * tokenizer with more ids is refused (sep_tok_check_vocab). The set's
 * memory: sep_sepset_free(). */
int sep_sepset_build(sep_sepset_t *set, const sep_tok_t *tok, const char *spec, int n_vocab);
void sep_sepset_free(sep_sepset_t *set);

#endif
