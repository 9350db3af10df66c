/* tokenizer.h: Hugging Face tokenizer.json, encode and decode.
 *
 * Handles the BPE models LLMs ship: byte-level BPE (GPT-2, Llama-3, Qwen,
 * GPT-NeoX: ByteLevel pre-tokenizer or a Split regex run with PCRE2, then
 * the byte-to-unicode map) and SentencePiece-style BPE (Prepend/Replace or
 * Metaspace normalisation, byte fallback, fuse_unk). Added and special
 * tokens in the text are matched first and map to their ids. Encoding adds
 * no special tokens (no BOS): ids are exactly those of
 * tokenizers' encode(text, add_special_tokens=False).
 *
 * A loaded tokenizer is read-only: encode and decode may run on several
 * threads at once.
 */
#ifndef SEP_TOKENIZER_H
#define SEP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct sep_tok sep_tok_t;

typedef enum {
    SEP_TOK_BYTELEVEL = 1,     /* byte-level BPE */
    SEP_TOK_SENTENCEPIECE = 2, /* SentencePiece-style BPE ("▁" for space) */
} sep_tok_kind_t;

/* Load path (a tokenizer.json). On failure *out is NULL and sep_errmsg()
 * names the file and the field that was wrong. */
int sep_tok_load(sep_tok_t **out, const char *path);
void sep_tok_destroy(sep_tok_t **self_p);

/* SEP_TOK_BYTELEVEL when the pre-tokenizer or decoder is ByteLevel,
 * else SEP_TOK_SENTENCEPIECE. */
sep_tok_kind_t sep_tok_kind(const sep_tok_t *tok);
/* Number of ids, added tokens included (max id + 1). */
int sep_tok_vocab_size(const sep_tok_t *tok);

/* Encode len bytes of UTF-8 text. *ids is malloc'ed (caller frees), *n
 * its length. Invalid UTF-8: SEP_EUTF8 naming the byte offset. */
int sep_tok_encode(const sep_tok_t *tok, const char *text, size_t len,
                   int32_t **ids, size_t *n);

/* Decode ids as the tokenizer's decoder does for the whole sequence
 * (added and special tokens decode to their content; none is skipped).
 * *text is malloc'ed and NUL-terminated, *len its length without the NUL.
 * An id outside the vocabulary: SEP_ERANGE. */
int sep_tok_decode(const sep_tok_t *tok, const int32_t *ids, size_t n,
                   char **text, size_t *len);

/* The text of token id decoded on its own, as the decoder chain gives it
 * for a sequence of that one token (SentencePiece: "▁" becomes a space and
 * Strip takes one leading space; "<0x0A>" becomes its byte). Bytes come as
 * they are, never U+FFFD: a token holding part of a UTF-8 character
 * yields those bytes. *text is malloc'ed and NUL-terminated, *len its
 * length. An id outside the vocabulary: SEP_ERANGE. */
int sep_tok_token_text(const sep_tok_t *tok, int32_t id, char **text,
                       size_t *len);

#endif
