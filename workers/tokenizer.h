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
 * Text that arrives in pieces is encoded as it comes with
 * sep_tok_encode_prefix, to the same ids as the whole text.
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
/* Whether id is a token's (0 for ids out of range and the holes below
 * the size that no token has): the ids sep_tok_decode takes. */
int sep_tok_has_id(const sep_tok_t *tok, int32_t id);

/* Whether every id of tok has a row in a model of n_vocab ids (its
 * config.json vocab_size). A model may have more ids than its tokenizer
 * (embeddings padded to a round size: Pythia's 50,304 for 50,277 ids);
 * a tokenizer with an id at or beyond n_vocab is SEP_EFORMAT, naming
 * both sizes. */
int sep_tok_check_vocab(const sep_tok_t *tok, int n_vocab);

/* Encode len bytes of UTF-8 text. *ids is malloc'ed (caller frees), *n
 * its length. Invalid UTF-8 (as sep_utf8_scan defines it, utf8.h):
 * SEP_EUTF8 naming the byte offset. */
int sep_tok_encode(const sep_tok_t *tok, const char *text, size_t len,
                   int32_t **ids, size_t *n);

/* Where a text given to sep_tok_encode_prefix starts in its stream. */
enum {
    SEP_TOK_START,     /* the stream's first byte */
    SEP_TOK_SEGMENT,   /* right after an added token */
    SEP_TOK_MIDDLE,    /* inside text, where the last call stopped */
};

/* A non-final sep_tok_encode_prefix leaves at most this many bytes. */
#define SEP_TOK_HOLD_MAX 1024

/* Encode a stream that arrives in pieces (a piece may end inside a UTF-8
 * character).
 *
 * Encodes the longest prefix of text[0..len) whose ids no text after it
 * can change: *ids and *n as sep_tok_encode gives them (malloc'ed, maybe
 * empty), *used the bytes they cover. The caller keeps text[*used..len),
 * appends the next piece and calls again. *at is where text starts in the
 * stream (it decides Prepend and the pre-tokenizers' prefixes): the caller
 * sets SEP_TOK_START before the first call and passes the same int on;
 * each call that uses bytes sets it for the next.
 *
 * final != 0: the stream ends with text. All of it is encoded (*used ==
 * len) and an incomplete character at its end is SEP_EUTF8; without final
 * that character is held back. Invalid UTF-8 is SEP_EUTF8 naming its byte
 * offset in text, which is not the stream's once bytes were held back: a
 * caller that names the stream's offset, or that drops an incomplete
 * character at the stream's end, checks with sep_utf8_scan first (utf8.h;
 * the same definition). On error nothing is used and *ids is NULL.
 *
 * The ids of all the calls joined are sep_tok_encode's of the whole
 * stream, however it was cut into pieces, save for one case. What a call
 * holds back is what more text could change: an added token that may be
 * completing (with lstrip tokens, the spaces before it too), the last
 * pre-tokens (one or two: the regex may still extend or re-split them),
 * the end of a word after the last place no merge spans (no splitting
 * pre-tokenizer), an incomplete character. len - *used never exceeds
 * SEP_TOK_HOLD_MAX: when the last SEP_TOK_HOLD_MAX bytes have no exact
 * cut, the call cuts SEP_TOK_HOLD_MAX / 2 bytes before the end as if the
 * stream ended there, and ids next to that place may differ from a whole
 * encode. That needs that much text without a safe place: one pre-token
 * (a run of letters, digits, spaces or punctuation), a word whose every
 * two neighbouring characters some merge joins, text with no ASCII for an
 * NFC-like normalizer, or any text of a segment when a Replace normalizer
 * has a regex or a longer string or a pre-tokenizer regex looks behind. */
int sep_tok_encode_prefix(const sep_tok_t *tok, const char *text, size_t len,
                          int final, int *at, int32_t **ids, size_t *n,
                          size_t *used);

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
