/* tok_internal.h: what the tokenizer's files share (not for other code;
 * workers/tokenizer.h is the contract).
 *
 *   tok_load.c     tokenizer.json -> struct sep_tok; freeing it
 *   tok_encode.c   encoding a whole text: added tokens, normalizers,
 *                  pre-tokenizers (sep_tok_encode)
 *   tok_bpe.c      the BPE model over one word
 *   tok_stream.c   the streaming cut (sep_tok_encode_prefix)
 *   tok_decode.c   decoding (sep_tok_decode, sep_tok_token_text)
 *   tok_pattern.c  literal and regex patterns
 *   tok_buf.c      growable buffers and piece lists
 *   utf8.c         UTF-8: the check of a text (utf8.h), characters
 *
 * Everything an encode or decode writes lives in per-call scratch
 * (struct enc, struct dec_ctx): a loaded tokenizer is never written again.
 */
#ifndef SEP_TOK_INTERNAL_H
#define SEP_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uninorm.h>

#include "err.h"
#include "tokenizer.h"

#define HOLE UINT32_MAX          /* text_off of an id no token has */
#define EMPTY_PAIR UINT64_MAX    /* key of a free merge slot */
#define BL_NCP 324               /* byte-level chars are all below U+0144 */

/* ---- growable storage (tok_buf.c) ---- */

struct buf {
    char *p;
    size_t len, cap;
};

/* The check inline: it runs for every symbol, piece and id. */
#define GROW(arr, cap, need) \
    ((need) <= (cap) ? SEP_OK : grow((void **)&(arr), &(cap), (need), sizeof *(arr)))

/* A list of strings: the pieces of a segment between pre-tokenizers, or
 * the tokens between decoders. first: the piece starts at byte 0 of the
 * input text (Metaspace's prepend_scheme "first" asks that). end: where the
 * piece ends in the string it was split from. */
struct span {
    size_t off, len, end;
    bool first;
};

struct pieces {
    struct buf s;
    struct span *v;
    size_t n, cap;
};

/* ---- patterns (tok_pattern.c): a literal string or a PCRE2 regex ---- */

struct pattern {
    pcre2_code *re;
    char *lit;     /* when re is NULL; len 0 matches nothing */
    size_t len;
};

/* Per-call match state: PCRE2 match data are written by every match. */
struct mx {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
};

/* ---- the tokenizer ---- */

enum { N_PREPEND, N_REPLACE, N_UNINORM };
struct norm {
    int type;
    struct pattern pat;  /* Replace */
    char *s;             /* Prepend: prepend; Replace: content */
    size_t len;
    uninorm_t nf;        /* NFC, NFD, NFKC, NFKD */
};

enum { P_BYTELEVEL, P_SPLIT, P_METASPACE };
enum { B_ISOLATED, B_REMOVED, B_PREVIOUS, B_NEXT, B_CONTIGUOUS };
enum { S_ALWAYS, S_FIRST, S_NEVER };
struct pretok {
    int type;
    struct pattern pat;  /* Split; ByteLevel's regex; Metaspace's char */
    int behavior;        /* Split */
    bool invert;         /* Split */
    bool prefix_space;   /* ByteLevel add_prefix_space */
    bool split;          /* ByteLevel use_regex, Metaspace split */
    char rep[4];         /* Metaspace replacement */
    size_t rep_len;
    int scheme;          /* Metaspace prepend_scheme */
};

enum { D_BYTELEVEL, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP, D_METASPACE };
struct decoder {
    int type;
    struct pattern pat;  /* Replace; Metaspace: the replacement char */
    char *s;             /* what pat becomes (Metaspace: " "); Strip content */
    size_t len;
    int start, stop;     /* Strip */
    int scheme;          /* Metaspace */
};

struct added {
    char *s;             /* what is matched: content, or normalized content */
    size_t len;
    int32_t id;
    bool lstrip, rstrip, single_word;
};

/* Added tokens sorted by first byte, longest first: those starting with
 * byte c are v[first[c] .. first[c+1]). */
struct addset {
    struct added *v;
    size_t n, cap;
    uint32_t first[257];
    size_t maxlen;               /* of the longest */
    bool any_lstrip, any_sw;     /* some token has lstrip, single_word */
};

struct vslot {           /* model vocab: string -> id */
    uint32_t hash;
    int32_t id;          /* -1: free */
    uint32_t off, len;   /* the string in blob */
};

struct mslot {           /* merges: (left id, right id) -> rank, merged id */
    uint64_t key;
    int32_t rank, id;
};

struct sep_tok {
    sep_tok_kind_t kind;
    int32_t nids;                /* max id + 1 */
    size_t idlimit;              /* ids must be below: vocab + added count */
    struct buf blob;             /* every token string */
    uint32_t *text_off, *text_len; /* id -> its string for decoding */
    struct vslot *vtab;
    size_t vmask;
    struct mslot *mtab;
    size_t mmask;
    int mshift;
    /* Junctions: (last char of a, first char of b) for each merge a b, in
     * a table the size of mtab. Two characters that are no junction are
     * never joined, so a long word is merged in independent chunks. */
    uint64_t *jtab;
    int32_t *cp_id;              /* BMP code point -> id (not byte-level) */
    int32_t byte_id[256];        /* byte-level: byte -> id of its char */
    int32_t fb_id[256];          /* byte -> id of <0xXX>, or -1 */
    int32_t unk_id;
    bool byte_fallback, fuse_unk, ignore_merges;
    bool bytelevel;              /* a ByteLevel pre-tokenizer maps bytes */
    uint16_t bl_cp[256];         /* GPT-2 bytes_to_unicode */
    int16_t bl_byte[BL_NCP];     /* and back; -1 for other chars */
    struct addset raw_added, norm_added;
    struct pattern alnum;        /* for single_word added tokens */
    struct norm *norm;
    size_t nnorm, normcap;
    struct pretok *pt;
    size_t npt, ptcap;
    struct decoder *dec;
    size_t ndec, deccap;
    bool has_decoder;            /* without one, tokens join with ' ' */
    /* Streaming: where a segment may be cut so that normalizing the two
     * sides apart gives what normalizing it whole gives (ncut, cut_ok),
     * and whether the pre-tokenizers may be cut between their pieces
     * (no regex looks behind, which would see across the cut). */
    int ncut;
    bool cut_ok[128];            /* NC_ASCII: before these bytes */
    bool cut_parts;
};

/* Normalizer cuts: before any character (Prepend and one-character
 * Replace are char maps), before some ASCII characters (NFC and kin
 * never join an ASCII character to what precedes it), or nowhere. */
enum { NC_ALL, NC_ASCII, NC_NONE };

/* Per-call scratch of an encode. */
struct sym {
    int32_t id, prev, next;      /* id -1: merged into its left neighbour */
};
struct seg {
    size_t s, e;
    int32_t id;                  /* -1: text */
};
struct mseg {
    size_t s, e;
    bool m;
};
/* A place where a stream may be cut: pos in some string, and how many ids
 * the text before it has. */
struct cand {
    size_t pos, nids;
};
/* A walk back from the end of a rewritten string: ip its place in the
 * input, op in the output. */
struct walk {
    size_t ip, op;
};
/* A pre-tokenizer's rewrite of the piece being cut (a prefix, Metaspace's
 * spaces), walked to map places in what it split to places in its input. */
struct lvmap {
    const char *in;
    size_t rep_len;              /* a space became this many bytes; 0: kept */
    struct walk w;
};
struct enc {
    struct mx mx;
    struct buf nb[2];            /* normalizer output, ping-pong */
    struct buf wb[2];            /* the same, for mapping a cut back */
    struct buf tmp;
    struct pieces *lv;           /* each pre-tokenizer's output pieces */
    struct lvmap *map;           /* each one's rewrite of the piece cut */
    size_t nlv, nmap;            /* levels; levels a cut maps back through */
    struct cand *ck;
    size_t nck, ckcap;
    struct seg *seg[2];
    size_t nseg[2], segcap[2];
    struct mseg *ms;
    size_t msn, mscap;
    struct sym *sym;
    size_t symcap;
    uint64_t *heap;              /* rank << 32 | position: min-heap */
    size_t heapcap;
    int32_t *ids;
    size_t nids, idcap;
};

/* ---- characters of text known to be UTF-8 (checking it: utf8.c) ---- */

/* Length of the character starting with lead byte c of valid UTF-8. */
static inline size_t utf8_clen(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Code point of a character of valid UTF-8 of n bytes. */
static inline uint32_t utf8_cp(const unsigned char *s, size_t n)
{
    switch (n) {
    case 1: return s[0];
    case 2: return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    case 3:
        return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 |
               (s[2] & 0x3F);
    default:
        return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
               (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    }
}

/* ---- the merge table ---- */

static inline uint64_t pair_key(int32_t a, int32_t b)
{
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static inline size_t pair_slot(const sep_tok_t *t, uint64_t k)
{
    return (size_t)((k * 0x9E3779B97F4A7C15ull) >> t->mshift);
}

static inline const struct mslot *pair_get(const sep_tok_t *t, int32_t a,
                                           int32_t b)
{
    uint64_t k = pair_key(a, b);
    for (size_t i = pair_slot(t, k);; i = (i + 1) & t->mmask) {
        const struct mslot *m = &t->mtab[i];
        if (m->key == k)
            return m;
        if (m->key == EMPTY_PAIR)
            return NULL;
    }
}

/* Shared between the tokenizer's files. The programs link with -rdynamic
 * (the CUDA module takes sep_fail from them), so these plain names are
 * kept out of their dynamic symbol tables. */
#pragma GCC visibility push(hidden)

/* tok_buf.c */
int nomem(size_t n);
int grow(void **pp, size_t *cap, size_t need, size_t size);
int buf_add(struct buf *b, const void *s, size_t n);
void pieces_clear(struct pieces *p);
int pieces_add(struct pieces *p, const char *s, size_t len, bool first);
int pieces_extend(struct pieces *p, const char *s, size_t len);
void pieces_free(struct pieces *p);

/* utf8.c */
size_t utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp,
                   size_t *bad);
size_t utf8_put(char *d, uint32_t cp);
bool is_ws(uint32_t c);
/* Where the run of whitespace characters that ends at s[end] starts, no
 * earlier than floor (valid UTF-8 in s[floor, end)). */
size_t ws_back(const char *s, size_t end, size_t floor);

/* tok_pattern.c */
void mx_free(struct mx *m);
int pat_find(const struct pattern *p, struct mx *m, const char *s,
             size_t n, size_t from, bool utf_ok, bool partial,
             size_t *ms, size_t *me);
void pat_free(struct pattern *p);
int replace_all(const struct pattern *p, struct mx *m, const char *s,
                size_t n, const char *with, size_t wlen, bool utf_ok,
                struct buf *out);

/* tok_load.c */
int32_t vocab_get(const sep_tok_t *t, const char *s, size_t n);

/* tok_encode.c */
int norm_stage(const struct norm *nm, struct mx *mx, const char *s,
               size_t n, struct buf *b);
int normalize(const sep_tok_t *t, struct buf nb[2], struct mx *mx,
              const char *s, size_t n, bool prepend, const char **out,
              size_t *olen);
int seg_add(struct enc *e, int w, size_t s, size_t end, int32_t id);
int split_added(const sep_tok_t *t, const struct addset *a,
                struct enc *e, int w, const char *s, size_t n,
                size_t *pend);
int push_id(struct enc *e, int32_t id);
int pretok_run(const sep_tok_t *t, struct enc *e, size_t lv,
               const char *s, size_t n, bool first, bool cont, bool rec);
int encode_seg(const sep_tok_t *t, struct enc *e, const char *s,
               size_t n, int at);
int encode_text(const sep_tok_t *t, struct enc *e, const char *text,
                size_t len, int at);
int enc_init(const sep_tok_t *t, struct enc *e, size_t len);
void enc_free(struct enc *e);
int check_utf8(const char *text, size_t len, bool open, size_t *end);

/* tok_bpe.c */
int bpe_word(const sep_tok_t *t, struct enc *e, const char *s,
             size_t len, bool rec);

/* tok_stream.c */
int cand_add(struct enc *e, size_t pos);
int stream_cuts(sep_tok_t *t);

#pragma GCC visibility pop

#endif
