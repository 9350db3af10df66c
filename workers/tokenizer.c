/* tokenizer.c: Hugging Face tokenizer.json (BPE), encode and decode.
 *
 * Encoding is the `tokenizers` pipeline, step for step:
 *   1. added tokens with normalized=false are split out of the raw text
 *      (longest match at the leftmost position, then lstrip/rstrip/
 *      single_word as AddedVocabulary::find_matches does);
 *   2. each segment between them is normalized on its own, then split on
 *      the added tokens with normalized=true;
 *   3. each remaining part is pre-tokenized into pieces;
 *   4. each piece is one BPE word: a symbol per character (byte-level: per
 *      byte, standing for its GPT-2 byte-to-unicode character), merged in
 *      Word::merge_all's order, lowest rank first and leftmost on ties, by a
 *      binary heap over a linked list of symbols, so that a SentencePiece
 *      text with no pre-tokenizer (one word of a megabyte) is O(n log n).
 * Decoding runs the decoder chain over the tokens' strings and joins them.
 *
 * Everything an encode or decode writes lives in per-call scratch (struct
 * enc, struct dec_ctx): a loaded tokenizer is never written again.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uninorm.h>

#include "err.h"

/* The pre-split regex of tokenizers' ByteLevel pre-tokenizer (GPT-2's). */
static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)|\\s+";

#define HOLE UINT32_MAX          /* text_off of an id no token has */
#define EMPTY_PAIR UINT64_MAX    /* key of a free merge slot */
#define BL_NCP 324               /* byte-level chars are all below U+0144 */

/* ---- growable storage ---- */

struct buf {
    char *p;
    size_t len, cap;
};

static int nomem(size_t n)
{
    return sep_fail(SEP_ENOMEM, "tokenizer: out of memory (%zu bytes)", n);
}

/* Make room for need > *cap elements of size bytes in *pp. */
static int grow(void **pp, size_t *cap, size_t need, size_t size)
{
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    if (n > SIZE_MAX / size)
        return nomem(SIZE_MAX);
    void *p = realloc(*pp, n * size);
    if (!p)
        return nomem(n * size);
    *pp = p;
    *cap = n;
    return SEP_OK;
}
/* The check inline: it runs for every symbol, piece and id. */
#define GROW(arr, cap, need) \
    ((need) <= (cap) ? SEP_OK : grow((void **)&(arr), &(cap), (need), sizeof *(arr)))

static int buf_add(struct buf *b, const void *s, size_t n)
{
    if (!n)
        return SEP_OK;
    int rc = GROW(b->p, b->cap, b->len + n);
    if (rc)
        return rc;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return SEP_OK;
}

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

static void pieces_clear(struct pieces *p)
{
    p->s.len = 0;
    p->n = 0;
}

static int pieces_add(struct pieces *p, const char *s, size_t len, bool first)
{
    int rc = GROW(p->v, p->cap, p->n + 1);
    if (rc)
        return rc;
    p->v[p->n] = (struct span){p->s.len, len, 0, first};
    if ((rc = buf_add(&p->s, s, len)))
        return rc;
    p->n++;
    return SEP_OK;
}

/* Append to the last piece. */
static int pieces_extend(struct pieces *p, const char *s, size_t len)
{
    int rc = buf_add(&p->s, s, len);
    if (!rc)
        p->v[p->n - 1].len += len;
    return rc;
}

static void pieces_free(struct pieces *p)
{
    free(p->s.p);
    free(p->v);
}

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 character at s (avail > 0 bytes left) and its
 * code point in *cp, or 0 if invalid with *bad the length of the maximal
 * invalid prefix (one U+FFFD each, as Rust's from_utf8_lossy replaces). */
static size_t utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp,
                          size_t *bad)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    uint32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xC2 || c > 0xF4) {
        *bad = 1;
        return 0;
    }
    if (c < 0xE0) {
        need = 1;
        v = c & 0x1F;
    } else if (c < 0xF0) {
        need = 2;
        v = c & 0x0F;
        lo = c == 0xE0 ? 0xA0 : 0x80;  /* overlong */
        hi = c == 0xED ? 0x9F : 0xBF;  /* surrogates */
    } else {
        need = 3;
        v = c & 0x07;
        lo = c == 0xF0 ? 0x90 : 0x80;  /* overlong */
        hi = c == 0xF4 ? 0x8F : 0xBF;  /* above U+10FFFF */
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= avail || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        v = v << 6 | (s[i] & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = v;
    return need + 1;
}

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

static size_t utf8_put(char *d, uint32_t cp)
{
    unsigned char *o = (unsigned char *)d;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static bool utf8_valid(const char *s, size_t n)
{
    uint32_t cp;
    size_t bad, l;
    for (size_t i = 0; i < n; i += l)
        if (!(l = utf8_decode((const unsigned char *)s + i, n - i, &cp, &bad)))
            return false;
    return true;
}

/* Rust's char::is_whitespace (Unicode White_Space). */
static bool is_ws(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---- patterns: a literal string or a PCRE2 regex ---- */

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

static int mx_init(struct mx *m)
{
    if (!m->md && !(m->md = pcre2_match_data_create(1, NULL)))
        return nomem(sizeof *m);
    return SEP_OK;
}

/* The default 32 KiB JIT stack can run out on long whitespace runs: a
 * larger one then, made only then, as making one maps memory, which costs
 * more than a short encode (a streaming call) does. */
static int mx_grow(struct mx *m)
{
    if (!m->mc && !(m->mc = pcre2_match_context_create(NULL)))
        return nomem(sizeof *m);
    if (!(m->js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL)))
        return nomem(4 * 1024 * 1024);
    pcre2_jit_stack_assign(m->mc, NULL, m->js);
    return SEP_OK;
}

static void mx_free(struct mx *m)
{
    pcre2_match_data_free(m->md);
    pcre2_match_context_free(m->mc);
    pcre2_jit_stack_free(m->js);
}

/* First non-empty match of p in s[from..n): 1 with [*ms, *me), or 0.
 * Empty matches are passed over: tokenizers drops the empty pieces they
 * would make. utf_ok: s is known valid UTF-8, so PCRE2 need not check it
 * (which would make a scan over a long subject quadratic); otherwise a
 * subject that is not valid UTF-8 matches nothing. partial: s may go on
 * past n; 2 with *ms where the first match that more text could make or
 * change would start (PCRE2_PARTIAL_HARD: its matches before that never
 * looked at the end of s, so no text after it changes them). */
static int pat_find(const struct pattern *p, struct mx *m, const char *s,
                    size_t n, size_t from, bool utf_ok, bool partial,
                    size_t *ms, size_t *me)
{
    if (!p->re) {
        if (!p->len)
            return 0;
        while (from + p->len <= n) {
            const char *q = memchr(s + from, p->lit[0], n - from - p->len + 1);
            if (!q)
                break;
            if (memcmp(q, p->lit, p->len) == 0) {
                *ms = (size_t)(q - s);
                *me = *ms + p->len;
                return 1;
            }
            from = (size_t)(q - s) + 1;
        }
        if (partial)
            for (size_t j = n >= from + p->len ? n - p->len + 1 : from; j < n; j++)
                if (!memcmp(s + j, p->lit, n - j)) {
                    *ms = j;
                    return 2;
                }
        return 0;
    }
    int rc = mx_init(m);
    if (rc)
        return rc;
    while (from < n) {
        int r = pcre2_match(p->re, (PCRE2_SPTR)s, n, from,
                            (utf_ok ? PCRE2_NO_UTF_CHECK : 0) |
                            (partial ? PCRE2_PARTIAL_HARD : 0), m->md, m->mc);
        if (r == PCRE2_ERROR_PARTIAL) {
            *ms = pcre2_get_ovector_pointer(m->md)[0];
            return 2;
        }
        if (r == PCRE2_ERROR_JIT_STACKLIMIT && !m->js) {
            if ((rc = mx_grow(m)))
                return rc;
            continue;
        }
        if (r == PCRE2_ERROR_NOMATCH ||
            (r <= PCRE2_ERROR_UTF8_ERR1 && r >= PCRE2_ERROR_UTF8_ERR21))
            return 0;
        if (r < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(r, msg, sizeof msg);
            return sep_fail(SEP_ERANGE,
                            "tokenizer: regex match at byte %zu failed: %s",
                            from, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        for (from = ov[0] + 1;
             from < n && ((unsigned char)s[from] & 0xC0) == 0x80; from++)
            ;
    }
    return 0;
}

static void pat_free(struct pattern *p)
{
    pcre2_code_free(p->re);
    free(p->lit);
}

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

static void enc_free(struct enc *e)
{
    mx_free(&e->mx);
    free(e->nb[0].p);
    free(e->nb[1].p);
    free(e->wb[0].p);
    free(e->wb[1].p);
    free(e->tmp.p);
    for (size_t i = 0; i < e->nlv; i++)
        pieces_free(&e->lv[i]);
    free(e->lv);
    free(e->map);
    free(e->ck);
    free(e->seg[0]);
    free(e->seg[1]);
    free(e->ms);
    free(e->sym);
    free(e->heap);
    free(e->ids);
}

static uint32_t str_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;  /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int32_t vocab_get(const sep_tok_t *t, const char *s, size_t n)
{
    uint32_t h = str_hash(s, n);
    for (size_t i = h & t->vmask;; i = (i + 1) & t->vmask) {
        const struct vslot *v = &t->vtab[i];
        if (v->id < 0)
            return -1;
        if (v->hash == h && v->len == n && !memcmp(t->blob.p + v->off, s, n))
            return v->id;
    }
}

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

sep_tok_kind_t sep_tok_kind(const sep_tok_t *tok)
{
    return tok->kind;
}

int sep_tok_vocab_size(const sep_tok_t *tok)
{
    return tok->nids;
}

/* ---- loading ---- */

/* obj[key] as a bool; dflt when absent or null. */
static int jbool(json_t *obj, const char *key, bool dflt, bool *out,
                 const char *path, const char *field)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return SEP_OK;
    }
    if (!json_is_boolean(v))
        return sep_fail(SEP_EFORMAT, "%s: %s.%s: not a boolean", path, field,
                        key);
    *out = json_is_true(v);
    return SEP_OK;
}

/* obj[key] as a string, required. */
static int jstr(json_t *obj, const char *key, const char **s, size_t *n,
                const char *path, const char *field)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return sep_fail(SEP_EFORMAT, "%s: %s.%s: missing or not a string",
                        path, field, key);
    *s = json_string_value(v);
    *n = json_string_length(v);
    return SEP_OK;
}

static int dup_str(char **d, const char *s, size_t n)
{
    if (!(*d = malloc(n + 1)))
        return nomem(n + 1);
    memcpy(*d, s, n);
    (*d)[n] = 0;
    return SEP_OK;
}

/* The one character of obj[key] (Metaspace replacement, Strip content). */
static int jchar(json_t *obj, const char *key, char *d, size_t *n,
                 const char *path, const char *field)
{
    const char *s;
    size_t len;
    int rc = jstr(obj, key, &s, &len, path, field);
    if (rc)
        return rc;
    if (!len || utf8_clen((unsigned char)s[0]) != len)
        return sep_fail(SEP_EFORMAT, "%s: %s.%s: \"%.40s\" is not one character",
                        path, field, key, s);
    memcpy(d, s, len);
    *n = len;
    return SEP_OK;
}

/* partial: the pattern also splits text that may go on (streaming). */
static int compile_re(struct pattern *p, const char *re, size_t n,
                      bool partial, const char *path, const char *field)
{
    int ec;
    PCRE2_SIZE eo;
    p->re = pcre2_compile((PCRE2_SPTR)re, n, PCRE2_UTF | PCRE2_UCP, &ec, &eo,
                          NULL);
    if (!p->re) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return sep_fail(SEP_EUNSUPPORTED, "%s: %s: regex /%.60s/ at offset %zu: %s",
                        path, field, re, (size_t)eo, (const char *)msg);
    }
    /* Without JIT (no memory, no JIT support) pcre2_match interprets. */
    pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE |
                                 (partial ? PCRE2_JIT_PARTIAL_HARD : 0));
    return SEP_OK;
}

/* obj.pattern: {"String": s} or {"Regex": r}. */
static int parse_pattern(json_t *obj, struct pattern *p, bool partial,
                         const char *path, const char *field)
{
    json_t *pat = json_object_get(obj, "pattern"), *v;
    char f[160];
    snprintf(f, sizeof f, "%s.pattern", field);
    if (!json_is_object(pat))
        return sep_fail(SEP_EFORMAT, "%s: %s: missing or not an object", path, f);
    if ((v = json_object_get(pat, "String"))) {
        if (!json_is_string(v))
            return sep_fail(SEP_EFORMAT, "%s: %s.String: not a string", path, f);
        p->len = json_string_length(v);
        return dup_str(&p->lit, json_string_value(v), p->len);
    }
    if ((v = json_object_get(pat, "Regex"))) {
        if (!json_is_string(v))
            return sep_fail(SEP_EFORMAT, "%s: %s.Regex: not a string", path, f);
        snprintf(f, sizeof f, "%s.pattern.Regex", field);
        return compile_re(p, json_string_value(v), json_string_length(v),
                          partial, path, f);
    }
    return sep_fail(SEP_EFORMAT, "%s: %s: neither String nor Regex", path, f);
}

/* A component's "type", with Sequence's children in list (NULL if not a
 * Sequence). */
static int comp_type(json_t *j, const char *list, const char **type,
                     json_t **items, const char *path, const char *field)
{
    size_t n;
    int rc;
    if (!json_is_object(j))
        return sep_fail(SEP_EFORMAT, "%s: %s: not an object", path, field);
    if ((rc = jstr(j, "type", type, &n, path, field)))
        return rc;
    *items = NULL;
    if (strcmp(*type, "Sequence"))
        return SEP_OK;
    *items = json_object_get(j, list);
    if (!json_is_array(*items))
        return sep_fail(SEP_EFORMAT, "%s: %s.%s: missing or not an array", path,
                        field, list);
    return SEP_OK;
}

static int parse_scheme(json_t *j, int *scheme, const char *path,
                        const char *field)
{
    json_t *v = json_object_get(j, "prepend_scheme");
    bool aps = true;
    int rc;
    if (!v || json_is_null(v)) {
        /* Files older than prepend_scheme say add_prefix_space. */
        if ((rc = jbool(j, "add_prefix_space", true, &aps, path, field)))
            return rc;
        *scheme = aps ? S_ALWAYS : S_NEVER;
        return SEP_OK;
    }
    const char *s = json_string_value(v);
    if (s && !strcmp(s, "always"))
        *scheme = S_ALWAYS;
    else if (s && !strcmp(s, "first"))
        *scheme = S_FIRST;
    else if (s && !strcmp(s, "never"))
        *scheme = S_NEVER;
    else
        return sep_fail(SEP_EFORMAT,
                        "%s: %s.prepend_scheme: not always, first or never",
                        path, field);
    return SEP_OK;
}

static int parse_norm(sep_tok_t *t, json_t *j, const char *path,
                      const char *field)
{
    const char *type, *s;
    json_t *items;
    size_t n;
    int rc;
    if (!j || json_is_null(j))
        return SEP_OK;
    if ((rc = comp_type(j, "normalizers", &type, &items, path, field)))
        return rc;
    if (items) {
        for (size_t i = 0; i < json_array_size(items); i++) {
            char f[160];
            snprintf(f, sizeof f, "%s.normalizers[%zu]", field, i);
            if ((rc = parse_norm(t, json_array_get(items, i), path, f)))
                return rc;
        }
        return SEP_OK;
    }
    if ((rc = GROW(t->norm, t->normcap, t->nnorm + 1)))
        return rc;
    struct norm *nm = &t->norm[t->nnorm++];
    memset(nm, 0, sizeof *nm);
    if (!strcmp(type, "Prepend")) {
        nm->type = N_PREPEND;
        if ((rc = jstr(j, "prepend", &s, &n, path, field)))
            return rc;
        nm->len = n;
        return dup_str(&nm->s, s, n);
    }
    if (!strcmp(type, "Replace")) {
        nm->type = N_REPLACE;
        if ((rc = parse_pattern(j, &nm->pat, false, path, field)) ||
            (rc = jstr(j, "content", &s, &n, path, field)))
            return rc;
        nm->len = n;
        return dup_str(&nm->s, s, n);
    }
    nm->type = N_UNINORM;
    if (!strcmp(type, "NFC"))
        nm->nf = UNINORM_NFC;
    else if (!strcmp(type, "NFD"))
        nm->nf = UNINORM_NFD;
    else if (!strcmp(type, "NFKC"))
        nm->nf = UNINORM_NFKC;
    else if (!strcmp(type, "NFKD"))
        nm->nf = UNINORM_NFKD;
    else
        return sep_fail(SEP_EUNSUPPORTED,
                        "%s: %s.type: normalizer \"%.40s\" is not supported",
                        path, field, type);
    return SEP_OK;
}

static int parse_pretok(sep_tok_t *t, json_t *j, const char *path,
                        const char *field)
{
    const char *type, *s;
    json_t *items;
    size_t n;
    int rc;
    if (!j || json_is_null(j))
        return SEP_OK;
    if ((rc = comp_type(j, "pretokenizers", &type, &items, path, field)))
        return rc;
    if (items) {
        for (size_t i = 0; i < json_array_size(items); i++) {
            char f[160];
            snprintf(f, sizeof f, "%s.pretokenizers[%zu]", field, i);
            if ((rc = parse_pretok(t, json_array_get(items, i), path, f)))
                return rc;
        }
        return SEP_OK;
    }
    /* The model maps a byte-level piece's bytes itself, so nothing may
     * look at the mapped text after ByteLevel. */
    if (t->bytelevel)
        return sep_fail(SEP_EUNSUPPORTED,
                        "%s: %s: pre-tokenizer after ByteLevel is not supported",
                        path, field);
    if ((rc = GROW(t->pt, t->ptcap, t->npt + 1)))
        return rc;
    struct pretok *p = &t->pt[t->npt++];
    memset(p, 0, sizeof *p);
    if (!strcmp(type, "ByteLevel")) {
        p->type = P_BYTELEVEL;
        t->bytelevel = true;
        if ((rc = jbool(j, "add_prefix_space", true, &p->prefix_space, path,
                        field)) ||
            (rc = jbool(j, "use_regex", true, &p->split, path, field)))
            return rc;
        return p->split ? compile_re(&p->pat, GPT2_RE, sizeof GPT2_RE - 1,
                                     true, path, field)
                        : SEP_OK;
    }
    if (!strcmp(type, "Split")) {
        p->type = P_SPLIT;
        if ((rc = parse_pattern(j, &p->pat, true, path, field)) ||
            (rc = jstr(j, "behavior", &s, &n, path, field)) ||
            (rc = jbool(j, "invert", false, &p->invert, path, field)))
            return rc;
        static const char *const names[] = {"Isolated", "Removed",
            "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        for (p->behavior = 0; p->behavior < 5; p->behavior++)
            if (!strcmp(s, names[p->behavior]))
                return SEP_OK;
        return sep_fail(SEP_EUNSUPPORTED,
                        "%s: %s.behavior: \"%.40s\" is not supported", path,
                        field, s);
    }
    if (!strcmp(type, "Metaspace")) {
        p->type = P_METASPACE;
        if ((rc = jchar(j, "replacement", p->rep, &p->rep_len, path, field)) ||
            (rc = parse_scheme(j, &p->scheme, path, field)) ||
            (rc = jbool(j, "split", true, &p->split, path, field)))
            return rc;
        p->pat.len = p->rep_len;
        return dup_str(&p->pat.lit, p->rep, p->rep_len);
    }
    return sep_fail(SEP_EUNSUPPORTED,
                    "%s: %s.type: pre-tokenizer \"%.40s\" is not supported",
                    path, field, type);
}

static int parse_decoder(sep_tok_t *t, json_t *j, const char *path,
                         const char *field)
{
    const char *type, *s;
    json_t *items;
    size_t n;
    int rc;
    if ((rc = comp_type(j, "decoders", &type, &items, path, field)))
        return rc;
    if (items) {
        for (size_t i = 0; i < json_array_size(items); i++) {
            char f[160];
            snprintf(f, sizeof f, "%s.decoders[%zu]", field, i);
            if ((rc = parse_decoder(t, json_array_get(items, i), path, f)))
                return rc;
        }
        return SEP_OK;
    }
    if ((rc = GROW(t->dec, t->deccap, t->ndec + 1)))
        return rc;
    struct decoder *d = &t->dec[t->ndec++];
    memset(d, 0, sizeof *d);
    if (!strcmp(type, "ByteLevel")) {
        d->type = D_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        d->type = D_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d->type = D_FUSE;
    } else if (!strcmp(type, "Replace")) {
        d->type = D_REPLACE;
        if ((rc = parse_pattern(j, &d->pat, false, path, field)) ||
            (rc = jstr(j, "content", &s, &n, path, field)))
            return rc;
        d->len = n;
        return dup_str(&d->s, s, n);
    } else if (!strcmp(type, "Strip")) {
        char c[4];
        json_t *a = json_object_get(j, "start"), *b = json_object_get(j, "stop");
        d->type = D_STRIP;
        if ((rc = jchar(j, "content", c, &n, path, field)))
            return rc;
        if (!json_is_integer(a) || !json_is_integer(b) ||
            json_integer_value(a) < 0 || json_integer_value(b) < 0 ||
            json_integer_value(a) > INT32_MAX || json_integer_value(b) > INT32_MAX)
            return sep_fail(SEP_EFORMAT,
                            "%s: %s: start and stop must be counts", path, field);
        d->start = (int)json_integer_value(a);
        d->stop = (int)json_integer_value(b);
        d->len = n;
        return dup_str(&d->s, c, n);
    } else if (!strcmp(type, "Metaspace")) {
        char c[4];
        /* Replace the replacement char with a space, d->s. */
        d->type = D_METASPACE;
        if ((rc = jchar(j, "replacement", c, &n, path, field)) ||
            (rc = parse_scheme(j, &d->scheme, path, field)))
            return rc;
        d->pat.len = n;
        d->len = 1;
        return dup_str(&d->pat.lit, c, n) || dup_str(&d->s, " ", 1) ? SEP_ENOMEM
                                                                     : SEP_OK;
    } else {
        return sep_fail(SEP_EUNSUPPORTED,
                        "%s: %s.type: decoder \"%.40s\" is not supported", path,
                        field, type);
    }
    return SEP_OK;
}

static int vocab_put(sep_tok_t *t, const char *s, size_t n, int32_t id)
{
    uint32_t h = str_hash(s, n);
    size_t i = h & t->vmask;
    while (t->vtab[i].id >= 0)
        i = (i + 1) & t->vmask;
    t->vtab[i] = (struct vslot){h, id, (uint32_t)t->blob.len, (uint32_t)n};
    t->text_off[id] = (uint32_t)t->blob.len;
    t->text_len[id] = (uint32_t)n;
    return buf_add(&t->blob, s, n);
}

static int load_vocab(sep_tok_t *t, json_t *vocab, size_t limit,
                      const char *path)
{
    size_t n = json_object_size(vocab), size = 16;
    int rc;
    while (size < 2 * n)
        size *= 2;
    t->vtab = malloc(size * sizeof *t->vtab);
    t->text_off = malloc((limit + 1) * sizeof *t->text_off);
    t->text_len = malloc((limit + 1) * sizeof *t->text_len);
    if (!t->vtab || !t->text_off || !t->text_len)
        return nomem(size * sizeof *t->vtab);
    t->vmask = size - 1;
    t->idlimit = limit;
    for (size_t i = 0; i < size; i++)
        t->vtab[i].id = -1;
    for (size_t i = 0; i < limit; i++)
        t->text_off[i] = HOLE;
    for (void *it = json_object_iter(vocab); it;
         it = json_object_iter_next(vocab, it)) {
        const char *key = json_object_iter_key(it);
        size_t klen = json_object_iter_key_len(it);
        json_t *v = json_object_iter_value(it);
        if (!json_is_integer(v))
            return sep_fail(SEP_EFORMAT, "%s: model.vocab[\"%.60s\"]: not an integer",
                            path, key);
        json_int_t id = json_integer_value(v);
        if (id < 0 || (size_t)id >= limit)
            return sep_fail(SEP_EFORMAT,
                            "%s: model.vocab[\"%.60s\"]: id %lld out of range [0, %zu)",
                            path, key, (long long)id, limit);
        if (t->text_off[id] != HOLE)
            return sep_fail(SEP_EFORMAT,
                            "%s: model.vocab[\"%.60s\"]: id %lld already belongs to \"%.*s\"",
                            path, key, (long long)id,
                            (int)(t->text_len[id] > 60 ? 60 : t->text_len[id]),
                            t->blob.p + t->text_off[id]);
        if ((rc = vocab_put(t, key, klen, (int32_t)id)))
            return rc;
        if (id >= t->nids)
            t->nids = (int32_t)id + 1;
    }
    return SEP_OK;
}

/* One merge, "a b" or ["a", "b"], into the pair table. A pair listed
 * twice takes its later rank, as building tokenizers' HashMap does. */
static int load_merge(sep_tok_t *t, json_t *m, size_t rank, struct buf *tmp,
                      const char *path)
{
    const char *a, *b;
    size_t na, nb;
    if (json_is_string(m)) {
        a = json_string_value(m);
        const char *sp = memchr(a, ' ', json_string_length(m));
        if (!sp || memchr(sp + 1, ' ', json_string_length(m) - (size_t)(sp + 1 - a)))
            return sep_fail(SEP_EFORMAT,
                            "%s: model.merges[%zu]: \"%.60s\" is not two tokens "
                            "separated by one space", path, rank, a);
        na = (size_t)(sp - a);
        b = sp + 1;
        nb = json_string_length(m) - na - 1;
    } else if (json_is_array(m) && json_array_size(m) == 2 &&
               json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
        a = json_string_value(json_array_get(m, 0));
        na = json_string_length(json_array_get(m, 0));
        b = json_string_value(json_array_get(m, 1));
        nb = json_string_length(json_array_get(m, 1));
    } else {
        return sep_fail(SEP_EFORMAT,
                        "%s: model.merges[%zu]: neither \"a b\" nor [\"a\", \"b\"]",
                        path, rank);
    }
    if (!na || !nb)
        return sep_fail(SEP_EFORMAT, "%s: model.merges[%zu]: empty token",
                        path, rank);
    int32_t ia = vocab_get(t, a, na), ib = vocab_get(t, b, nb);
    if (ia < 0 || ib < 0) {
        const char *bad = ia < 0 ? a : b;
        size_t nbad = ia < 0 ? na : nb;
        return sep_fail(SEP_EFORMAT,
                        "%s: model.merges[%zu]: token \"%.*s\" is not in model.vocab",
                        path, rank, (int)(nbad > 60 ? 60 : nbad), bad);
    }
    tmp->len = 0;
    int rc = buf_add(tmp, a, na);
    if (rc || (rc = buf_add(tmp, b, nb)))
        return rc;
    int32_t im = vocab_get(t, tmp->p, tmp->len);
    if (im < 0)
        return sep_fail(SEP_EFORMAT,
                        "%s: model.merges[%zu]: merged token \"%.*s\" is not in model.vocab",
                        path, rank, (int)(tmp->len > 60 ? 60 : tmp->len), tmp->p);
    uint64_t k = pair_key(ia, ib);
    size_t i = pair_slot(t, k);
    while (t->mtab[i].key != EMPTY_PAIR && t->mtab[i].key != k)
        i = (i + 1) & t->mmask;
    t->mtab[i] = (struct mslot){k, (int32_t)rank, im};

    size_t la = na - 1;
    while (la > 0 && ((unsigned char)a[la] & 0xC0) == 0x80)
        la--;
    k = (uint64_t)utf8_cp((const unsigned char *)a + la, na - la) << 32 |
        utf8_cp((const unsigned char *)b, utf8_clen((unsigned char)b[0]));
    for (i = pair_slot(t, k); t->jtab[i] != EMPTY_PAIR && t->jtab[i] != k;
         i = (i + 1) & t->mmask)
        ;
    t->jtab[i] = k;
    return SEP_OK;
}

static int load_model(sep_tok_t *t, json_t *root, size_t nadded,
                      const char *path)
{
    json_t *m = json_object_get(root, "model"), *v;
    const char *type;
    size_t n;
    int rc;
    if (!m)
        return sep_fail(SEP_EFORMAT, "%s: model: missing", path);
    if (!json_is_object(m))
        return sep_fail(SEP_EFORMAT, "%s: model: not an object", path);
    if ((rc = jstr(m, "type", &type, &n, path, "model")))
        return rc;
    if (strcmp(type, "BPE"))
        return sep_fail(SEP_EUNSUPPORTED,
                        "%s: model.type: \"%.40s\" is not supported (only BPE)",
                        path, type);
    static const char *const unsup[] = {"continuing_subword_prefix",
                                        "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++)
        if ((v = json_object_get(m, unsup[i])) && !json_is_null(v))
            return sep_fail(SEP_EUNSUPPORTED, "%s: model.%s: not supported",
                            path, unsup[i]);
    /* dropout 0 is deterministic, like none (tokenizers treats it so). */
    if ((v = json_object_get(m, "dropout")) && !json_is_null(v) &&
        !(json_is_number(v) && json_number_value(v) == 0))
        return sep_fail(SEP_EUNSUPPORTED, "%s: model.dropout: not supported", path);
    if ((rc = jbool(m, "byte_fallback", false, &t->byte_fallback, path, "model")) ||
        (rc = jbool(m, "fuse_unk", false, &t->fuse_unk, path, "model")) ||
        (rc = jbool(m, "ignore_merges", false, &t->ignore_merges, path, "model")))
        return rc;

    json_t *vocab = json_object_get(m, "vocab");
    if (!json_is_object(vocab))
        return sep_fail(SEP_EFORMAT, "%s: model.vocab: missing or not an object",
                        path);
    if ((rc = load_vocab(t, vocab, json_object_size(vocab) + nadded, path)))
        return rc;

    v = json_object_get(m, "unk_token");
    t->unk_id = -1;
    if (v && !json_is_null(v)) {
        if (!json_is_string(v))
            return sep_fail(SEP_EFORMAT, "%s: model.unk_token: not a string", path);
        t->unk_id = vocab_get(t, json_string_value(v), json_string_length(v));
        if (t->unk_id < 0)
            return sep_fail(SEP_EFORMAT,
                            "%s: model.unk_token: \"%.60s\" is not in model.vocab",
                            path, json_string_value(v));
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->fb_id[b] = vocab_get(t, name, 6);
    }

    json_t *merges = json_object_get(m, "merges");
    if (!json_is_array(merges))
        return sep_fail(SEP_EFORMAT, "%s: model.merges: missing or not an array",
                        path);
    size_t nm = json_array_size(merges), size = 2;
    while (size < 2 * nm)
        size *= 2;
    t->mtab = malloc(size * sizeof *t->mtab);
    t->jtab = malloc(size * sizeof *t->jtab);
    if (!t->mtab || !t->jtab)
        return nomem(size * sizeof *t->mtab);
    t->mmask = size - 1;
    for (t->mshift = 64; size > 1; size >>= 1)
        t->mshift--;
    for (size_t i = 0; i <= t->mmask; i++)
        t->mtab[i].key = t->jtab[i] = EMPTY_PAIR;
    if (nm > INT32_MAX)
        return sep_fail(SEP_EFORMAT, "%s: model.merges: %zu merges", path, nm);
    struct buf tmp = {0};
    for (size_t i = 0; i < nm && !rc; i++)
        rc = load_merge(t, json_array_get(merges, i), i, &tmp, path);
    free(tmp.p);
    return rc;
}

static int added_cmp(const void *a, const void *b)
{
    const struct added *x = a, *y = b;
    int c = (unsigned char)x->s[0] - (unsigned char)y->s[0];
    if (c)
        return c;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

static void addset_index(struct addset *a)
{
    size_t k = 0;
    if (a->n)
        qsort(a->v, a->n, sizeof *a->v, added_cmp);
    for (int c = 0; c < 256; c++) {
        a->first[c] = (uint32_t)k;
        while (k < a->n && (unsigned char)a->v[k].s[0] == c)
            k++;
    }
    a->first[256] = (uint32_t)k;
    for (k = 0; k < a->n; k++) {
        a->maxlen = a->v[k].len > a->maxlen ? a->v[k].len : a->maxlen;
        a->any_lstrip |= a->v[k].lstrip;
        a->any_sw |= a->v[k].single_word;
    }
}

static int norm_stage(const struct norm *nm, struct mx *mx, const char *s,
                      size_t n, struct buf *b);
static int normalize(const sep_tok_t *t, struct buf nb[2], struct mx *mx,
                     const char *s, size_t n, bool prepend, const char **out,
                     size_t *olen);

static int load_added(sep_tok_t *t, json_t *list, const char *path)
{
    size_t n = json_array_size(list), limit = t->idlimit;
    uint8_t *seen = calloc(limit ? limit : 1, 1);
    struct enc e = {0};
    int rc = SEP_OK;
    if (!seen)
        return nomem(limit);
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *a = json_array_get(list, i), *jid;
        char f[64];
        const char *s;
        size_t len;
        bool special = false, normalized = false;
        struct added ad = {0};
        snprintf(f, sizeof f, "added_tokens[%zu]", i);
        if (!json_is_object(a)) {
            rc = sep_fail(SEP_EFORMAT, "%s: %s: not an object", path, f);
            break;
        }
        jid = json_object_get(a, "id");
        if ((rc = jstr(a, "content", &s, &len, path, f)) ||
            (rc = jbool(a, "special", false, &special, path, f)) ||
            (rc = jbool(a, "normalized", !special, &normalized, path, f)) ||
            (rc = jbool(a, "lstrip", false, &ad.lstrip, path, f)) ||
            (rc = jbool(a, "rstrip", false, &ad.rstrip, path, f)) ||
            (rc = jbool(a, "single_word", false, &ad.single_word, path, f)))
            break;
        if (!len) {
            rc = sep_fail(SEP_EFORMAT, "%s: %s.content: empty", path, f);
            break;
        }
        if (!json_is_integer(jid) || json_integer_value(jid) < 0 ||
            (size_t)json_integer_value(jid) >= limit) {
            rc = sep_fail(SEP_EFORMAT, "%s: %s.id: missing or not in [0, %zu)",
                          path, f, limit);
            break;
        }
        ad.id = (int32_t)json_integer_value(jid);
        if (seen[ad.id]) {
            rc = sep_fail(SEP_EFORMAT, "%s: %s.id: %d given twice", path, f,
                          (int)ad.id);
            break;
        }
        seen[ad.id] = 1;
        /* An added token's content is its text, whatever model.vocab says. */
        t->text_off[ad.id] = (uint32_t)t->blob.len;
        t->text_len[ad.id] = (uint32_t)len;
        if ((rc = buf_add(&t->blob, s, len)))
            break;
        if (ad.id >= t->nids)
            t->nids = ad.id + 1;

        /* A normalized token matches the normalized text, so is matched in
         * its normalized form. */
        struct addset *set = normalized ? &t->norm_added : &t->raw_added;
        if (normalized &&
            (rc = normalize(t, e.nb, &e.mx, s, len, true, &s, &len)))
            break;
        if (!len)
            continue;
        if ((rc = dup_str(&ad.s, s, len)))
            break;
        ad.len = len;
        if ((rc = GROW(set->v, set->cap, set->n + 1))) {
            free(ad.s);
            break;
        }
        set->v[set->n++] = ad;
        /* Rust's char::is_alphanumeric, for single_word's boundaries. */
        static const char alnum[] = "[\\p{Alphabetic}\\p{N}]";
        if (ad.single_word && !t->alnum.re)
            rc = compile_re(&t->alnum, alnum, sizeof alnum - 1, false, path, f);
    }
    addset_index(&t->raw_added);
    addset_index(&t->norm_added);
    enc_free(&e);
    free(seen);
    return rc;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
 * the other 68 for U+0100 upwards in byte order. */
static void bytelevel_tables(sep_tok_t *t)
{
    uint32_t next = 256;
    for (int i = 0; i < BL_NCP; i++)
        t->bl_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
                    b >= 0xAE;
        t->bl_cp[b] = (uint16_t)(self ? (uint32_t)b : next++);
        t->bl_byte[t->bl_cp[b]] = (int16_t)b;
        char c[4];
        t->byte_id[b] = vocab_get(t, c, utf8_put(c, t->bl_cp[b]));
    }
}

/* Where a stream may be cut (see struct sep_tok). A one-character Replace
 * maps each character on its own, as Prepend does but for the segment
 * start; a longer or regex pattern may match across any place, and one
 * deleting characters before a Prepend may leave the text before a cut
 * empty (so without Prepend) where the whole is not. NFC and kin cut
 * before a character that is ASCII when they see it: it is a starter
 * and no composition has it second. */
static int stream_cuts(sep_tok_t *t)
{
    bool nf = false, del = false;
    int rc = SEP_OK;
    t->cut_parts = true;
    for (size_t i = 0; i < t->npt; i++) {
        uint32_t lb = 0;
        if (t->pt[i].pat.re)
            pcre2_pattern_info(t->pt[i].pat.re, PCRE2_INFO_MAXLOOKBEHIND, &lb);
        t->cut_parts &= lb == 0;
    }
    t->ncut = NC_ALL;
    for (size_t i = 0; i < t->nnorm; i++) {
        const struct norm *nm = &t->norm[i];
        if (nm->type == N_UNINORM)
            nf = true;
        else if (nm->type == N_PREPEND ? del
                 : nm->pat.re || (nm->pat.len &&
                                  utf8_clen((unsigned char)nm->pat.lit[0]) != nm->pat.len))
            t->ncut = NC_NONE;
        else
            del |= nm->type == N_REPLACE && !nm->len;
    }
    if (!nf || t->ncut == NC_NONE)
        return SEP_OK;
    t->ncut = NC_ASCII;
    struct buf b[2] = {{0}};
    struct mx mx = {0};
    for (int c = 0; c < 0x80 && !rc; c++) {
        char ch = (char)c;
        const char *s = &ch;
        size_t n = 1;
        bool ok = true;
        int w = 0;
        for (size_t i = 0; i < t->nnorm && ok && !rc; i++) {
            if (t->norm[i].type == N_PREPEND)
                continue;
            if (t->norm[i].type == N_UNINORM)
                ok = n && (unsigned char)s[0] < 0x80;
            rc = norm_stage(&t->norm[i], &mx, s, n, &b[w]);
            s = b[w].p;
            n = b[w].len;
            w ^= 1;
        }
        t->cut_ok[c] = ok;
    }
    free(b[0].p);
    free(b[1].p);
    mx_free(&mx);
    return rc;
}

static int read_json(const char *path, json_t **out)
{
    FILE *f = fopen(path, "rb");
    json_error_t je;
    if (!f) {
        int en = errno;
        return sep_fail(en == ENOENT ? SEP_ENOTFOUND : SEP_EIO, "%s: %s", path,
                        strerror(en));
    }
    *out = json_loadf(f, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    int err = ferror(f);
    fclose(f);
    if (err) {
        json_decref(*out);
        *out = NULL;
        return sep_fail(SEP_EIO, "%s: read error", path);
    }
    if (!*out)
        return sep_fail(SEP_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)",
                        path, je.text, je.line, je.column);
    return SEP_OK;
}

int sep_tok_load(sep_tok_t **out, const char *path)
{
    json_t *root = NULL, *added, *v;
    sep_tok_t *t;
    int rc;
    *out = NULL;
    if (!(t = calloc(1, sizeof *t)))
        return nomem(sizeof *t);
    if ((rc = read_json(path, &root)))
        goto fail;
    if (!json_is_object(root)) {
        rc = sep_fail(SEP_EFORMAT, "%s: not a JSON object", path);
        goto fail;
    }
    added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added)) {
        rc = sep_fail(SEP_EFORMAT, "%s: added_tokens: not an array", path);
        goto fail;
    }
    /* Normalizers first: normalized added tokens are stored normalized. */
    if ((rc = load_model(t, root, json_array_size(added), path)) ||
        (rc = parse_norm(t, json_object_get(root, "normalizer"), path,
                         "normalizer")) ||
        (rc = load_added(t, added, path)) ||
        (rc = parse_pretok(t, json_object_get(root, "pre_tokenizer"), path,
                           "pre_tokenizer")))
        goto fail;
    v = json_object_get(root, "decoder");
    t->has_decoder = v && !json_is_null(v);
    if ((t->has_decoder && (rc = parse_decoder(t, v, path, "decoder"))) ||
        (rc = stream_cuts(t)))
        goto fail;

    t->kind = t->bytelevel ? SEP_TOK_BYTELEVEL : SEP_TOK_SENTENCEPIECE;
    for (size_t i = 0; i < t->ndec; i++)
        if (t->dec[i].type == D_BYTELEVEL)
            t->kind = SEP_TOK_BYTELEVEL;
    bytelevel_tables(t);
    if (!t->bytelevel) {
        /* One-character tokens by code point: a table beats hashing the
         * every character of a SentencePiece text. */
        if (!(t->cp_id = malloc(0x10000 * sizeof *t->cp_id))) {
            rc = nomem(0x10000 * sizeof *t->cp_id);
            goto fail;
        }
        for (size_t i = 0; i < 0x10000; i++)
            t->cp_id[i] = -1;
        for (size_t i = 0; i <= t->vmask; i++) {
            const struct vslot *s = &t->vtab[i];
            const unsigned char *p = (const unsigned char *)t->blob.p + s->off;
            if (s->id >= 0 && s->len && s->len < 4 && utf8_clen(p[0]) == s->len)
                t->cp_id[utf8_cp(p, s->len)] = s->id;
        }
    }
    json_decref(root);
    *out = t;
    return SEP_OK;
fail:
    json_decref(root);
    sep_tok_destroy(&t);
    return rc;
}

static void addset_free(struct addset *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i].s);
    free(a->v);
}

void sep_tok_destroy(sep_tok_t **self_p)
{
    sep_tok_t *t = *self_p;
    if (!t)
        return;
    free(t->blob.p);
    free(t->text_off);
    free(t->text_len);
    free(t->vtab);
    free(t->mtab);
    free(t->jtab);
    free(t->cp_id);
    addset_free(&t->raw_added);
    addset_free(&t->norm_added);
    pat_free(&t->alnum);
    for (size_t i = 0; i < t->nnorm; i++) {
        pat_free(&t->norm[i].pat);
        free(t->norm[i].s);
    }
    free(t->norm);
    for (size_t i = 0; i < t->npt; i++)
        pat_free(&t->pt[i].pat);
    free(t->pt);
    for (size_t i = 0; i < t->ndec; i++) {
        pat_free(&t->dec[i].pat);
        free(t->dec[i].s);
    }
    free(t->dec);
    free(t);
    *self_p = NULL;
}

/* ---- encoding ---- */

static int replace_all(const struct pattern *p, struct mx *m, const char *s,
                       size_t n, const char *with, size_t wlen, bool utf_ok,
                       struct buf *out)
{
    size_t pos = 0, ms, me;
    int r, rc;
    while ((r = pat_find(p, m, s, n, pos, utf_ok, false, &ms, &me)) > 0) {
        if ((rc = buf_add(out, s + pos, ms - pos)) ||
            (rc = buf_add(out, with, wlen)))
            return rc;
        pos = me;
    }
    return r < 0 ? r : buf_add(out, s + pos, n - pos);
}

/* One normalizer over s, into b. */
static int norm_stage(const struct norm *nm, struct mx *mx, const char *s,
                      size_t n, struct buf *b)
{
    int rc = SEP_OK;
    b->len = 0;
    switch (nm->type) {
    case N_PREPEND:
        if (n && !(rc = buf_add(b, nm->s, nm->len)))
            rc = buf_add(b, s, n);
        return rc;
    case N_REPLACE:
        return replace_all(&nm->pat, mx, s, n, nm->s, nm->len, true, b);
    default: {
        size_t rl = 0;
        uint8_t *r = n ? u8_normalize(nm->nf, (const uint8_t *)s, n, NULL, &rl)
                       : NULL;
        if (n && !r)
            return nomem(n);
        rc = buf_add(b, r, rl);
        free(r);
        return rc;
    }
    }
}

/* Run the normalizers over s: *out is s itself or in one of nb's two
 * buffers. prepend: s starts a segment, so Prepend applies (a stream cut
 * inside a segment continues it). */
static int normalize(const sep_tok_t *t, struct buf nb[2], struct mx *mx,
                     const char *s, size_t n, bool prepend, const char **out,
                     size_t *olen)
{
    int rc = SEP_OK, w = 0;
    for (size_t i = 0; i < t->nnorm && !rc; i++) {
        if (t->norm[i].type == N_PREPEND && !prepend)
            continue;
        struct buf *b = &nb[w];
        w ^= 1;
        rc = norm_stage(&t->norm[i], mx, s, n, b);
        s = b->p;
        n = b->len;
    }
    *out = s;
    *olen = n;
    return rc;
}

static bool is_alnum(const sep_tok_t *t, struct mx *m, const char *s,
                     size_t n)
{
    size_t ms, me;
    unsigned char c = (unsigned char)s[0];
    if (c < 0x80)
        return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
    return pat_find(&t->alnum, m, s, n, 0, true, false, &ms, &me) > 0 && ms == 0;
}

static int seg_add(struct enc *e, int w, size_t s, size_t end, int32_t id)
{
    int rc = GROW(e->seg[w], e->segcap[w], e->nseg[w] + 1);
    if (!rc)
        e->seg[w][e->nseg[w]++] = (struct seg){s, end, id};
    return rc;
}

/* Split s into text and added tokens of set a, into e->seg[w]: tokenizers'
 * AddedVocabulary::find_matches with a leftmost-longest matcher.
 * pend: s may go on past n (streaming); the split stops at *pend, the
 * first place where more text could change it (a longer token may still
 * match there, or the match's single_word or rstrip needs what follows),
 * its last segment being the text up to there. */
static int split_added(const sep_tok_t *t, const struct addset *a,
                       struct enc *e, int w, const char *s, size_t n,
                       size_t *pend)
{
    size_t done = 0, i = 0;
    int rc;
    e->nseg[w] = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        const struct added *hit = NULL;
        bool more = false;
        for (uint32_t k = a->first[c]; k < a->first[c + 1] && !hit && !more; k++) {
            const struct added *ad = &a->v[k];
            if (ad->len <= n - i)
                hit = memcmp(s + i, ad->s, ad->len) ? NULL : ad;
            else
                more = pend && !memcmp(s + i, ad->s, n - i);
        }
        if (more)
            break;
        if (!hit) {
            i++;
            continue;
        }
        size_t ms = i, me = i + hit->len;
        if (hit->single_word) {
            size_t p = ms ? ms - 1 : 0;
            while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80)
                p--;
            if (ms > 0 && is_alnum(t, &e->mx, s + p, ms - p)) {
                i = me;
                continue;
            }
            if (me == n && pend)
                break;
            if (me < n && is_alnum(t, &e->mx, s + me,
                                   utf8_clen((unsigned char)s[me]))) {
                i = me;
                continue;
            }
        }
        if (hit->lstrip) {
            while (ms > done) {
                size_t p = ms - 1;
                while (p > done && ((unsigned char)s[p] & 0xC0) == 0x80)
                    p--;
                if (!is_ws(utf8_cp((const unsigned char *)s + p, ms - p)))
                    break;
                ms = p;
            }
        }
        if (hit->rstrip) {
            while (me < n) {
                size_t l = utf8_clen((unsigned char)s[me]);
                if (!is_ws(utf8_cp((const unsigned char *)s + me, l)))
                    break;
                me += l;
            }
            if (me == n && pend)
                break;
        }
        if ((ms > done && (rc = seg_add(e, w, done, ms, -1))) ||
            (rc = seg_add(e, w, ms, me, hit->id)))
            return rc;
        done = i = me;
    }
    if (pend)
        *pend = n = i < n ? i : n;
    return done < n ? seg_add(e, w, done, n, -1) : SEP_OK;
}

static int push_id(struct enc *e, int32_t id)
{
    int rc = GROW(e->ids, e->idcap, e->nids + 1);
    if (!rc)
        e->ids[e->nids++] = id;
    return rc;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static void heap_down(uint64_t *h, size_t n, size_t i)
{
    uint64_t v = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1] < h[c])
            c++;
        if (v <= h[c])
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
}

static inline void push_pair(const sep_tok_t *t, struct enc *e, size_t *hn,
                             int32_t p, int32_t q)
{
    const struct mslot *m = pair_get(t, e->sym[p].id, e->sym[q].id);
    if (m)
        heap_push(e->heap, hn, (uint64_t)m->rank << 32 | (uint32_t)p);
}

static inline bool junction(const sep_tok_t *t, uint32_t a, uint32_t b)
{
    uint64_t k = (uint64_t)a << 32 | b;
    for (size_t i = pair_slot(t, k);; i = (i + 1) & t->mmask) {
        if (t->jtab[i] == k)
            return true;
        if (t->jtab[i] == EMPTY_PAIR)
            return false;
    }
}

/* Word::merge_all over e->sym[0..n), the result appended to e->ids. */
static int merge_emit(const sep_tok_t *t, struct enc *e, int32_t n)
{
    struct sym *y = e->sym;
    size_t hn = 0;
    int rc;
    if (!n)
        return SEP_OK;
    for (int32_t j = 0; j < n; j++) {
        y[j].prev = j - 1;
        y[j].next = j + 1 < n ? j + 1 : -1;
    }
    for (int32_t j = 0; j + 1 < n; j++) {
        const struct mslot *m = pair_get(t, y[j].id, y[j + 1].id);
        if (m)
            e->heap[hn++] = (uint64_t)m->rank << 32 | (uint32_t)j;
    }
    for (size_t j = hn / 2; j-- > 0;)
        heap_down(e->heap, hn, j);
    while (hn) {
        uint64_t top = e->heap[0];
        e->heap[0] = e->heap[--hn];
        heap_down(e->heap, hn, 0);
        int32_t p = (int32_t)(uint32_t)top, q = y[p].next;
        /* Skip entries made stale by an earlier merge. */
        if (y[p].id < 0 || q < 0)
            continue;
        const struct mslot *m = pair_get(t, y[p].id, y[q].id);
        if (!m || (uint64_t)m->rank != top >> 32)
            continue;
        y[p].id = m->id;
        y[q].id = -1;
        y[p].next = y[q].next;
        if (y[q].next >= 0)
            y[y[q].next].prev = p;
        if (y[p].prev >= 0)
            push_pair(t, e, &hn, y[p].prev, p);
        if (y[p].next >= 0)
            push_pair(t, e, &hn, p, y[p].next);
    }
    if ((rc = GROW(e->ids, e->idcap, e->nids + (size_t)n)))
        return rc;
    for (int32_t j = 0; j >= 0; j = y[j].next)  /* symbol 0 is never merged away */
        e->ids[e->nids++] = y[j].id;
    return SEP_OK;
}

static int cand_add(struct enc *e, size_t pos)
{
    int rc = GROW(e->ck, e->ckcap, e->nck + 1);
    if (!rc)
        e->ck[e->nck++] = (struct cand){pos, e->nids};
    return rc;
}

/* BPE of one piece, its ids appended to e->ids: tokenizers' BPE::merge_word
 * and Word::merge_all. A long word is cut where two characters are no
 * merge's junction: no symbol can ever span that place, so the chunks
 * merge independently to the same result, and the heap stays small.
 * rec: the word may go on (streaming); each such place is a candidate cut
 * (e->ck), whatever follows. Not with ignore_merges: there the rest of a
 * word cut so would be looked up whole, which the word never was. */
static int bpe_word(const sep_tok_t *t, struct enc *e, const char *s,
                    size_t len, bool rec)
{
    const unsigned char *u = (const unsigned char *)s;
    int rc;
    if (len == 1 && t->bytelevel && t->byte_id[u[0]] >= 0)
        return push_id(e, t->byte_id[u[0]]);
    if (t->ignore_merges) {
        const char *w = s;
        size_t wl = len;
        if (t->bytelevel) {
            e->tmp.len = 0;
            for (size_t i = 0; i < len; i++) {
                char c[4];
                if ((rc = buf_add(&e->tmp, c, utf8_put(c, t->bl_cp[u[i]]))))
                    return rc;
            }
            w = e->tmp.p;
            wl = e->tmp.len;
        }
        int32_t id = vocab_get(t, w, wl);
        if (id >= 0)
            return push_id(e, id);
    }
    /* A byte-level byte falling back to <0xXX> bytes of its two-byte
     * character makes two symbols. */
    if ((rc = GROW(e->sym, e->symcap, 2 * len)) ||
        (rc = GROW(e->heap, e->heapcap, 6 * len)))
        return rc;
    struct sym *y = e->sym;
    int32_t n = 0;
    bool unk = false;       /* an unk symbol is pending, still fusing */
    bool plain = false;     /* the last symbol is the previous character */
    uint32_t pcp = 0, cp;
    rec = rec && !t->ignore_merges;
    bool cuts = len > 32 || rec; /* short words gain nothing from cutting */
    for (size_t i = 0; i < len;) {
        char cb[4];
        const char *c = s + i;
        size_t cl, at = i;
        int32_t id;
        if (t->bytelevel) {
            cp = t->bl_cp[u[i]];
            id = t->byte_id[u[i]];
            cl = id >= 0 ? 1 : utf8_put(cb, cp);
            c = cb;
            i++;
        } else {
            cl = utf8_clen(u[i]);
            cp = utf8_cp(u + i, cl);
            id = cp < 0x10000 ? t->cp_id[cp] : vocab_get(t, c, cl);
            i += cl;
        }
        if (id < 0 && t->byte_fallback) {
            size_t k = 0;
            while (k < cl && t->fb_id[(unsigned char)c[k]] >= 0)
                k++;
            if (k == cl) {
                if (unk)
                    y[n++].id = t->unk_id;
                unk = plain = false;
                for (k = 0; k < cl; k++)
                    y[n++].id = t->fb_id[(unsigned char)c[k]];
                continue;
            }
        }
        if (unk && (id >= 0 || !t->fuse_unk)) {
            y[n++].id = t->unk_id;
            unk = plain = false;
        }
        if (id < 0) {
            if (t->unk_id >= 0)
                unk = true;  /* without an unk token the character is dropped */
            continue;
        }
        if (cuts && plain && !junction(t, pcp, cp)) {
            if ((rc = merge_emit(t, e, n)))
                return rc;
            n = 0;
            /* Byte-level: not inside a UTF-8 character. */
            if (rec && (u[at] & 0xC0) != 0x80 && (rc = cand_add(e, at)))
                return rc;
        }
        y[n++].id = id;
        plain = true;
        pcp = cp;
    }
    if (unk)
        y[n++].id = t->unk_id;
    return merge_emit(t, e, n);
}

static int ms_add(struct enc *e, size_t s, size_t end, bool m)
{
    int rc = GROW(e->ms, e->mscap, e->msn + 1);
    if (!rc)
        e->ms[e->msn++] = (struct mseg){s, end, m};
    return rc;
}

/* tokenizers' NormalizedString::split: s cut at the matches of pat, the
 * matches kept, removed or glued to a neighbour as behavior says. nfin: s
 * may go on (streaming); *nfin of the pieces made are settled. */
static int split_piece(const struct pattern *pat, int behavior, bool invert,
                       struct enc *e, const char *s, size_t n, bool first,
                       struct pieces *out, size_t *nfin)
{
    size_t pos = 0, ms, me, lo = 0, hi, z = n, n0 = out->n;
    int r, rc;
    e->msn = 0;
    while ((r = pat_find(pat, &e->mx, s, n, pos, true, nfin != NULL, &ms,
                         &me)) == 1) {
        if ((ms > pos && (rc = ms_add(e, pos, ms, invert))) ||
            (rc = ms_add(e, ms, me, !invert)))
            return rc;
        pos = me;
    }
    if (r < 0)
        return r;
    /* Past a partial match nothing is known. Before it no match can
     * start, so unmatched text is there, however far it will reach: the
     * last segment, which only the last piece holds. */
    if (r == 2)
        z = ms;
    if (pos < z && (rc = ms_add(e, pos, n, invert)))
        return rc;
    struct mseg *v = e->ms;
    bool prev = false;
    hi = e->msn;
    switch (behavior) {
    case B_ISOLATED:
        break;
    case B_REMOVED:
        for (size_t j = 0; j < e->msn; j++)
            if (!v[j].m)
                v[lo++] = v[j];
        hi = lo;
        lo = 0;
        break;
    case B_CONTIGUOUS:
    case B_PREVIOUS:
        for (size_t j = 0; j < e->msn; j++) {
            bool glue = behavior == B_CONTIGUOUS ? v[j].m == prev
                                                 : v[j].m && !prev;
            if (glue && lo)
                v[lo - 1].e = v[j].e;
            else
                v[lo++] = v[j];
            prev = v[j].m;
        }
        hi = lo;
        lo = 0;
        break;
    case B_NEXT:
        /* Right to left, written from the right end: never overtakes. */
        lo = e->msn;
        for (size_t j = e->msn; j-- > 0;) {
            if (v[j].m && !prev && lo < e->msn)
                v[lo].s = v[j].s;
            else
                v[--lo] = v[j];
            prev = v[j].m;
        }
        break;
    }
    for (size_t j = lo; j < hi; j++) {
        if (v[j].e <= v[j].s)
            continue;
        if ((rc = pieces_add(out, s + v[j].s, v[j].e - v[j].s, first && !v[j].s)))
            return rc;
        out->v[out->n - 1].end = v[j].e;
    }
    if (nfin) {
        /* Isolated and removed matches join nothing: the pieces up to the
         * end of the last whole match are settled. The other behaviours
         * glue a piece to its neighbour, so the last one may still grow. */
        size_t k = out->n - n0;
        if (behavior == B_ISOLATED || behavior == B_REMOVED)
            for (k = 0; n0 + k < out->n && out->v[n0 + k].end <= pos; k++)
                ;
        else if (k)
            k--;
        *nfin = k;
    }
    return SEP_OK;
}

/* Pre-tokenizer p over one piece s, its pieces appended to out; *tlen is
 * the length of what it split: s with a prefix, Metaspace's spaces
 * replaced. pre: p may prepend (not to the rest of a piece a stream cut).
 * nfin: s may go on (streaming); *nfin of the pieces are settled. */
static int pretok_apply(const struct pretok *p, struct enc *e, const char *s,
                        size_t n, bool first, bool pre, struct pieces *out,
                        size_t *nfin, size_t *tlen)
{
    int rc;
    switch (p->type) {
    case P_BYTELEVEL:
        if (pre && p->prefix_space && s[0] != ' ') {
            e->tmp.len = 0;
            if ((rc = buf_add(&e->tmp, " ", 1)) ||
                (rc = buf_add(&e->tmp, s, n)))
                return rc;
            s = e->tmp.p;
            n = e->tmp.len;
        }
        break;
    case P_METASPACE: {
        /* Spaces become the replacement, which is prepended unless the
         * piece now starts with it. */
        bool add = pre && (p->scheme == S_ALWAYS || (p->scheme == S_FIRST && first));
        if (s[0] == ' ' || (n >= p->rep_len && !memcmp(s, p->rep, p->rep_len)))
            add = false;
        e->tmp.len = 0;
        if (add && (rc = buf_add(&e->tmp, p->rep, p->rep_len)))
            return rc;
        for (size_t k = 0; k < n;) {
            const char *q = memchr(s + k, ' ', n - k);
            size_t run = q ? (size_t)(q - s) - k : n - k;
            if ((rc = buf_add(&e->tmp, s + k, run)) ||
                (q && (rc = buf_add(&e->tmp, p->rep, p->rep_len))))
                return rc;
            k += run + (q != NULL);
        }
        s = e->tmp.p;
        n = e->tmp.len;
        break;
    }
    }
    *tlen = n;
    if (p->type == P_SPLIT)
        return split_piece(&p->pat, p->behavior, p->invert, e, s, n, first,
                           out, nfin);
    if (p->split)
        return split_piece(&p->pat, p->type == P_BYTELEVEL ? B_ISOLATED : B_NEXT,
                           false, e, s, n, first, out, nfin);
    return pieces_add(out, s, n, first);
}

/* Pre-tokenizers lv.. over the piece s, then BPE of each piece they make,
 * depth first so that the ids come in text order. cont: s is the rest of
 * a piece a stream cut, so nothing is prepended to it, down to the first
 * level that splits (whose pieces start where they would in the whole
 * text). rec: s may go on (streaming): its candidate cuts go to e->ck, in
 * the coordinates of that first splitting level (or of the word if none
 * splits), and the rewrites of the levels above to e->map. */
static int pretok_run(const sep_tok_t *t, struct enc *e, size_t lv,
                      const char *s, size_t n, bool first, bool cont, bool rec)
{
    if (!n)
        return SEP_OK;
    if (lv == t->npt)
        return bpe_word(t, e, s, n, rec);
    const struct pretok *p = &t->pt[lv];
    struct pieces *out = &e->lv[lv];
    bool split = p->type == P_SPLIT || p->split;
    size_t nfin = 0, tlen;
    pieces_clear(out);
    int rc = pretok_apply(p, e, s, n, first, !cont, out,
                          rec && split ? &nfin : NULL, &tlen);
    if (rc)
        return rc;
    if (rec) {
        e->map[lv] = (struct lvmap){s, p->type == P_METASPACE ? p->rep_len : 0,
                                    {n, tlen}};
        e->nmap = lv + 1;
    }
    /* Streaming stops at the first piece that is not settled. */
    size_t np = rec && split ? nfin : out->n;
    for (size_t i = 0; i < np && !rc; i++) {
        const struct span *v = &out->v[i];
        rc = pretok_run(t, e, lv + 1, out->s.p + v->off, v->len, v->first,
                        cont && !split, rec && !split);
        if (!rc && rec && split)
            rc = cand_add(e, v->end);
    }
    return rc;
}

/* Normalize the segment s between raw added tokens and encode it; at: where
 * it starts in the stream (SEP_TOK_*): Prepend and the pre-tokenizers'
 * prefixes belong to a segment's start, Metaspace's "first" to the text's. */
static int encode_seg(const sep_tok_t *t, struct enc *e, const char *s,
                      size_t n, int at)
{
    bool first = at == SEP_TOK_START, cont = at == SEP_TOK_MIDDLE;
    const char *ns;
    size_t nn;
    int rc = normalize(t, e->nb, &e->mx, s, n, !cont, &ns, &nn);
    if (rc)
        return rc;
    if (!t->norm_added.n)
        return pretok_run(t, e, 0, ns, nn, first, cont, false);
    if ((rc = split_added(t, &t->norm_added, e, 1, ns, nn, NULL)))
        return rc;
    for (size_t k = 0; k < e->nseg[1] && !rc; k++) {
        const struct seg h = e->seg[1][k];
        rc = h.id >= 0 ? push_id(e, h.id)
                       : pretok_run(t, e, 0, ns + h.s, h.e - h.s, first && !h.s,
                                    cont && !h.s, false);
    }
    return rc;
}

static int encode_text(const sep_tok_t *t, struct enc *e, const char *text,
                       size_t len, int at)
{
    int rc = split_added(t, &t->raw_added, e, 0, text, len, NULL);
    for (size_t i = 0; i < e->nseg[0] && !rc; i++) {
        const struct seg g = e->seg[0][i];
        rc = g.id >= 0 ? push_id(e, g.id)
                       : encode_seg(t, e, text + g.s, g.e - g.s,
                                    g.s ? SEP_TOK_SEGMENT : at);
    }
    return rc;
}

/* Scratch for encoding len bytes with t (enc_free it even on failure). */
static int enc_init(const sep_tok_t *t, struct enc *e, size_t len)
{
    *e = (struct enc){0};
    if (t->npt) {
        e->nlv = t->npt;
        e->lv = calloc(t->npt, sizeof *e->lv);
        e->map = calloc(t->npt, sizeof *e->map);
        if (!e->lv || !e->map)
            return nomem(t->npt * sizeof *e->lv);
    }
    /* Roughly one id per four bytes of text. */
    return GROW(e->ids, e->idcap, len / 4 + 1);
}

/* Check that text is UTF-8. open: it may stop inside a character, which
 * *end then leaves out. */
static int check_utf8(const char *text, size_t len, bool open, size_t *end)
{
    uint32_t cp;
    size_t bad, l;
    if (len > INT32_MAX)
        return sep_fail(SEP_ERANGE, "text: %zu bytes, more than 2 GiB", len);
    for (size_t i = 0; i < len; i += l)
        if (!(l = utf8_decode((const unsigned char *)text + i, len - i, &cp, &bad))) {
            unsigned char c = (unsigned char)text[i];
            if (open && c >= 0xC2 && c <= 0xF4 && bad == len - i) {
                *end = i;
                return SEP_OK;
            }
            return sep_fail(SEP_EUTF8,
                            "text: invalid UTF-8 at byte offset %zu (byte 0x%02X)",
                            i, c);
        }
    *end = len;
    return SEP_OK;
}

int sep_tok_encode(const sep_tok_t *tok, const char *text, size_t len,
                   int32_t **ids, size_t *n)
{
    struct enc e;
    size_t end;
    int rc;
    *ids = NULL;
    *n = 0;
    if ((rc = check_utf8(text, len, false, &end)))
        return rc;
    if ((rc = enc_init(tok, &e, len)) ||
        (rc = encode_text(tok, &e, text, len, SEP_TOK_START))) {
        enc_free(&e);
        return rc;
    }
    *ids = e.ids;
    *n = e.nids;
    e.ids = NULL;
    enc_free(&e);
    return SEP_OK;
}

/* ---- streaming ----
 *
 * A non-final sep_tok_encode_prefix encodes the text it has as far as a
 * place no later text can change (a cut), so the rest, encoded later as
 * the middle of its segment, gives what the whole text would. Each stage
 * says how far it is settled:
 *   1. raw added tokens: up to where a longer token may still match, or a
 *      match's single_word or rstrip needs what follows (split_added with
 *      pend), less the spaces there that an lstrip token would take;
 *   2. the normalizers: up to a place where they cut (ncut), so what
 *      follows cannot change what the text before it becomes;
 *   3. normalized added tokens: as 1, in the normalized text;
 *   4. the first pre-tokenizer that splits: its pieces before the first
 *      place a match could still change (PCRE2_PARTIAL_HARD), less the
 *      last where pieces glue (split_piece with nfin); where none splits,
 *      the word's places that no merge spans (bpe_word with rec).
 * A cut found in the normalized, pre-tokenized text is mapped back through
 * the rewrites to the raw text, and is taken only if no added token lies
 * across it and no single_word token starts at it (their scans would
 * differ from the whole text's there). */

#define NONE SIZE_MAX

/* text[0..at) encodes to the first nids ids; the rest starts at where. */
struct cut {
    size_t at, nids;
    int where;
};

/* Whether a token of a lies across c in s (n bytes known): the whole
 * text's scan may have skipped the text it covers (a single_word match
 * turned down), which a scan starting at c would not. */
static bool added_across(const struct addset *a, const char *s, size_t n,
                         size_t c)
{
    if (!a->n)
        return false;
    for (size_t j = c >= a->maxlen ? c - a->maxlen + 1 : 0; j < c; j++) {
        unsigned char ch = (unsigned char)s[j];
        for (uint32_t k = a->first[ch]; k < a->first[ch + 1]; k++) {
            const struct added *ad = &a->v[k];
            if (j + ad->len > c &&
                !memcmp(s + j, ad->s, ad->len < n - j ? ad->len : n - j))
                return true;
        }
    }
    return false;
}

/* Whether a single_word token of a may match at c in s (n bytes known):
 * its test looks at the character before c, which the rest has not. */
static bool sw_at(const struct addset *a, const char *s, size_t n, size_t c)
{
    if (!a->any_sw)
        return false;
    if (c == n)
        return true;
    unsigned char ch = (unsigned char)s[c];
    for (uint32_t k = a->first[ch]; k < a->first[ch + 1]; k++) {
        const struct added *ad = &a->v[k];
        if (ad->single_word &&
            !memcmp(s + c, ad->s, ad->len < n - c ? ad->len : n - c))
            return true;
    }
    return false;
}

/* The end of what split_added(a, s, pend) into e->seg[w] has settled:
 * pend, less the spaces before it that an lstrip token there would take. */
static size_t added_settled(const struct addset *a, const struct enc *e,
                            int w, const char *s, size_t pend)
{
    size_t lim = pend, done = 0;
    if (!a->any_lstrip)
        return pend;
    for (size_t i = e->nseg[w]; i-- > 0;)
        if (e->seg[w][i].id >= 0) {
            done = e->seg[w][i].e;
            break;
        }
    while (lim > done) {
        size_t p = lim - 1;
        while (p > done && ((unsigned char)s[p] & 0xC0) == 0x80)
            p--;
        if (!is_ws(utf8_cp((const unsigned char *)s + p, lim - p)))
            break;
        lim = p;
    }
    return lim;
}

static bool norm_cut(const sep_tok_t *t, char c)
{
    return (unsigned char)c < 0x80 && t->cut_ok[(unsigned char)c];
}

/* How much of the open segment text[gs..lim) (n bytes known) normalizes
 * the same whatever follows: up to the last place the normalizers cut. */
static size_t norm_end(const sep_tok_t *t, const char *text, size_t n,
                       size_t gs, size_t lim)
{
    if (t->ncut == NC_ALL || lim <= gs)
        return lim;
    if (t->ncut == NC_NONE)
        return gs;
    size_t x = lim < n ? lim : n - 1;
    while (x > gs && !norm_cut(t, text[x]))
        x--;
    return x;
}

/* Map b, a place in the normalized open segment, back to text: the walk w
 * goes left, one character (or one run up to a byte where normalizers
 * cut) at a time, normalizing each as the middle of a segment, so calls
 * come with b decreasing. *c is NONE where b falls inside what one such
 * run became, or inside the segment's first (it holds the Prepend). */
static int norm_back(const sep_tok_t *t, struct enc *e, const char *text,
                     size_t gs, struct walk *w, size_t b, size_t *c)
{
    if (!t->nnorm) {
        *c = gs + b;
        return SEP_OK;
    }
    while (w->op > b && w->ip > gs) {
        size_t p = w->ip - 1, ol;
        const char *o;
        if (t->ncut == NC_ALL)
            while (p > gs && ((unsigned char)text[p] & 0xC0) == 0x80)
                p--;
        else
            while (p > gs && !norm_cut(t, text[p]))
                p--;
        if (p == gs) {
            w->ip = gs;
            break;
        }
        int rc = normalize(t, e->wb, &e->mx, text + p, w->ip - p, false, &o, &ol);
        if (rc)
            return rc;
        w->ip = p;
        w->op -= ol;
    }
    *c = w->ip > gs && w->op == b ? w->ip : NONE;
    return SEP_OK;
}

/* Map x, a place in what pre-tokenizer level m split, back to its input;
 * the walk goes left, so calls come with x decreasing. NONE inside a
 * replacement, inside the prefix or at the start. */
static size_t lv_back(struct lvmap *m, size_t x)
{
    struct walk *w = &m->w;
    while (w->op > x && w->ip > 0) {
        size_t q = w->ip - 1;
        while (q > 0 && ((unsigned char)m->in[q] & 0xC0) == 0x80)
            q--;
        w->op -= m->rep_len && m->in[q] == ' ' ? m->rep_len : w->ip - q;
        w->ip = q;
    }
    return w->ip > 0 && w->op == x ? w->ip : NONE;
}

/* Encode the open segment text[gs..lim) (n bytes of text known) as far as
 * no later text can change it, *best becoming its last cut if it has one.
 * at: where the segment starts (SEP_TOK_*). */
static int encode_open(const sep_tok_t *t, struct enc *e, const char *text,
                       size_t n, size_t gs, size_t lim, int at, struct cut *best)
{
    const struct addset *na = &t->norm_added;
    bool first = at == SEP_TOK_START, cont = at == SEP_TOK_MIDDLE;
    size_t un = norm_end(t, text, n, gs, lim), nn, npend, nlim, hs = 0, k0, c;
    const char *ns;
    int rc;
    if (un == gs)
        return SEP_OK;
    if ((rc = normalize(t, e->nb, &e->mx, text + gs, un - gs, !cont, &ns, &nn)))
        return rc;
    e->nseg[1] = 0;
    if ((rc = na->n ? split_added(t, na, e, 1, ns, nn, &npend)
                    : seg_add(e, 1, 0, npend = nn, -1)))
        return rc;
    nlim = added_settled(na, e, 1, ns, npend);
    e->nck = e->nmap = 0;
    k0 = NONE;
    /* Parts a settled token ends are cut at their end; the open part at
     * its pre-tokenizer's settled pieces or its word's free places. */
    for (size_t k = 0; k < e->nseg[1] && !rc; k++) {
        const struct seg h = e->seg[1][k];
        if (h.id >= 0) {
            rc = push_id(e, h.id);
        } else if (h.e < npend) {
            if (!(rc = pretok_run(t, e, 0, ns + h.s, h.e - h.s, first && !h.s,
                                  cont && !h.s, false)))
                rc = cand_add(e, h.e);
        } else if (nlim > h.s && t->cut_parts) {
            hs = h.s;
            k0 = e->nck;
            rc = pretok_run(t, e, 0, ns + hs, nlim - hs, first && !hs,
                            cont && !hs, true);
        }
    }
    struct walk nw = {un, nn};
    for (size_t i = e->nck; i-- > 0 && !rc;) {
        size_t b = e->ck[i].pos;
        if (i >= k0) {
            for (size_t l = e->nmap; l-- > 0 && b != NONE;)
                b = lv_back(&e->map[l], b);
            if (b == NONE)
                continue;
            b += hs;
        }
        if (added_across(na, ns, nn, b) || sw_at(na, ns, nn, b) ||
            (rc = norm_back(t, e, text, gs, &nw, b, &c)) || c == NONE ||
            added_across(&t->raw_added, text, n, c) ||
            sw_at(&t->raw_added, text, n, c))
            continue;
        *best = (struct cut){c, e->ck[i].nids, SEP_TOK_MIDDLE};
        break;
    }
    return rc;
}

/* Encode text[0..n) as far as no later text can change it, *best becoming
 * the last cut; at: where text starts (SEP_TOK_*). */
static int encode_stream(const sep_tok_t *t, struct enc *e, const char *text,
                         size_t n, int at, struct cut *best)
{
    const struct addset *a = &t->raw_added;
    size_t pend, lim;
    int rc = split_added(t, a, e, 0, text, n, &pend);
    *best = (struct cut){0, 0, at};
    if (rc)
        return rc;
    lim = added_settled(a, e, 0, text, pend);
    for (size_t i = 0; i < e->nseg[0] && !rc; i++) {
        const struct seg g = e->seg[0][i];
        int gat = g.s ? SEP_TOK_SEGMENT : at;
        if (g.id >= 0) {
            /* Before the token (the rest starts with it, so where does
             * not matter), or after it, where a segment starts. */
            if (g.s && !added_across(a, text, n, g.s) && !sw_at(a, text, n, g.s))
                *best = (struct cut){g.s, e->nids, SEP_TOK_MIDDLE};
            if (!(rc = push_id(e, g.id)) && !sw_at(a, text, n, g.e))
                *best = (struct cut){g.e, e->nids, SEP_TOK_SEGMENT};
        } else if (g.e < pend) {
            rc = encode_seg(t, e, text + g.s, g.e - g.s, gat);
        } else {
            rc = encode_open(t, e, text, n, g.s, lim, gat, best);
        }
    }
    return rc;
}

int sep_tok_encode_prefix(const sep_tok_t *tok, const char *text, size_t len,
                          int final, int *at, int32_t **ids, size_t *n,
                          size_t *used)
{
    struct enc e;
    struct cut cut;
    size_t end;
    int rc;
    *ids = NULL;
    *n = *used = 0;
    if (*at < SEP_TOK_START || *at > SEP_TOK_MIDDLE)
        return sep_fail(SEP_EINVAL, "text: stream place %d is no SEP_TOK_* value",
                        *at);
    if ((rc = check_utf8(text, len, !final, &end)))
        return rc;
    if ((rc = enc_init(tok, &e, len)))
        goto done;
    if (final) {
        rc = encode_text(tok, &e, text, len, *at);
        cut = (struct cut){len, e.nids, *at};
    } else if (!(rc = encode_stream(tok, &e, text, end, *at, &cut)) &&
               len - cut.at > SEP_TOK_HOLD_MAX) {
        /* Nothing in the last SEP_TOK_HOLD_MAX bytes can be cut exactly:
         * cut as if the text ended half that before its end. */
        size_t c = len - SEP_TOK_HOLD_MAX / 2;
        while (((unsigned char)text[c] & 0xC0) == 0x80)
            c--;
        e.nids = 0;
        rc = encode_text(tok, &e, text, c, *at);
        cut = (struct cut){c, e.nids, SEP_TOK_MIDDLE};
    }
    if (!rc) {
        *ids = e.ids;
        *n = cut.nids;
        *used = cut.at;
        if (cut.at)
            *at = cut.where;
        e.ids = NULL;
    }
done:
    enc_free(&e);
    return rc;
}

/* ---- decoding ---- */

static const char FFFD[] = "\xEF\xBF\xBD";

/* s with each maximal invalid UTF-8 prefix as one U+FFFD. */
static int utf8_lossy(const char *s, size_t n, struct buf *out)
{
    uint32_t cp;
    size_t bad, l;
    int rc;
    for (size_t i = 0; i < n; i += l ? l : bad) {
        l = utf8_decode((const unsigned char *)s + i, n - i, &cp, &bad);
        if ((rc = l ? buf_add(out, s + i, l) : buf_add(out, FFFD, 3)))
            return rc;
    }
    return SEP_OK;
}

/* The byte of a byte-fallback token "<0xXX>", or -1. */
static int fallback_byte(const char *s, size_t n)
{
    unsigned v = 0;
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>')
        return -1;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                   : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (unsigned)((c | 0x20) - 'a' + 10)
                   : 16;
        if (d > 15)
            return -1;
        v = v * 16 + d;
    }
    return (int)v;
}

struct dec_ctx {
    struct mx mx;
    struct buf tmp;
    bool raw;      /* bytes as they are: no U+FFFD for broken UTF-8 */
};

static int flush_bytes(struct dec_ctx *c, struct pieces *out)
{
    int rc = SEP_OK;
    if (!c->tmp.len)
        return SEP_OK;
    if (c->raw || utf8_valid(c->tmp.p, c->tmp.len))
        rc = pieces_add(out, c->tmp.p, c->tmp.len, false);
    else  /* tokenizers gives one U+FFFD per byte of a broken run */
        for (size_t k = 0; k < c->tmp.len && !rc; k++)
            rc = pieces_add(out, FFFD, 3, false);
    c->tmp.len = 0;
    return rc;
}

static int dec_apply(const sep_tok_t *t, const struct decoder *d,
                     struct dec_ctx *c, const struct pieces *in,
                     struct pieces *out)
{
    int rc = SEP_OK;
    pieces_clear(out);
    c->tmp.len = 0;
    if (d->type == D_BYTELEVEL || d->type == D_FUSE) {
        if ((rc = pieces_add(out, NULL, 0, false)))
            return rc;
    }
    for (size_t i = 0; i < in->n && !rc; i++) {
        const char *s = in->s.p + in->v[i].off;
        size_t n = in->v[i].len, k, l, bad;
        uint32_t cp;
        int b;
        switch (d->type) {
        case D_BYTELEVEL: {
            /* A token with a char outside the table goes through as is. */
            size_t mark = c->tmp.len;
            for (k = 0; k < n && !rc; k += l) {
                l = utf8_decode((const unsigned char *)s + k, n - k, &cp, &bad);
                if (!l || cp >= BL_NCP || t->bl_byte[cp] < 0)
                    break;
                char byte = (char)t->bl_byte[cp];
                rc = buf_add(&c->tmp, &byte, 1);
            }
            if (!rc && k < n) {
                c->tmp.len = mark;
                rc = buf_add(&c->tmp, s, n);
            }
            break;
        }
        case D_FUSE:
            rc = pieces_extend(out, s, n);
            break;
        case D_REPLACE:
        case D_METASPACE: {
            /* Metaspace: the first token loses its replacement chars, the
             * prepended space (tokenizers drops them all, so do we). */
            bool drop = d->type == D_METASPACE && i == 0 && d->scheme != S_NEVER;
            size_t at = out->s.len;
            if ((rc = pieces_add(out, NULL, 0, false)))
                break;
            rc = replace_all(&d->pat, &c->mx, s, n, d->s, drop ? 0 : d->len,
                             false, &out->s);
            out->v[out->n - 1].len = out->s.len - at;
            break;
        }
        case D_BYTEFALLBACK:
            if ((b = fallback_byte(s, n)) >= 0) {
                char byte = (char)b;
                rc = buf_add(&c->tmp, &byte, 1);
            } else if (!(rc = flush_bytes(c, out))) {
                rc = pieces_add(out, s, n, false);
            }
            break;
        case D_STRIP: {
            size_t a = 0, z = n;
            for (int j = 0; j < d->start && z - a >= d->len &&
                            !memcmp(s + a, d->s, d->len); j++)
                a += d->len;
            for (int j = 0; j < d->stop && z - a >= d->len &&
                            !memcmp(s + z - d->len, d->s, d->len); j++)
                z -= d->len;
            rc = pieces_add(out, s + a, z - a, false);
            break;
        }
        }
    }
    if (rc)
        return rc;
    if (d->type == D_BYTEFALLBACK)
        return flush_bytes(c, out);
    if (d->type == D_BYTELEVEL) {
        rc = c->raw ? buf_add(&out->s, c->tmp.p, c->tmp.len)
                    : utf8_lossy(c->tmp.p, c->tmp.len, &out->s);
        out->v[0].len = out->s.len;
    }
    return rc;
}

static int decode_run(const sep_tok_t *t, const int32_t *ids, size_t n,
                      bool raw, char **text, size_t *len)
{
    struct pieces pa = {0}, pb = {0}, *in = &pa, *out = &pb;
    struct dec_ctx c = {.raw = raw};
    int rc = SEP_OK;
    *text = NULL;
    *len = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->nids || t->text_off[id] == HOLE)
            rc = sep_fail(SEP_ERANGE, "ids[%zu]: %d is not a token id (vocabulary of %d)",
                          i, (int)id, (int)t->nids);
        else
            rc = pieces_add(in, t->blob.p + t->text_off[id], t->text_len[id], false);
    }
    for (size_t i = 0; i < t->ndec && !rc; i++) {
        rc = dec_apply(t, &t->dec[i], &c, in, out);
        struct pieces *x = in;
        in = out;
        out = x;
    }
    if (!rc) {
        /* Without a decoder tokenizers joins the tokens with spaces. */
        size_t total = in->s.len + (t->has_decoder || !in->n ? 0 : in->n - 1);
        char *r = malloc(total + 1), *w = r;
        if (!r) {
            rc = nomem(total + 1);
        } else {
            for (size_t i = 0; i < in->n; i++) {
                if (i && !t->has_decoder)
                    *w++ = ' ';
                memcpy(w, in->s.p + in->v[i].off, in->v[i].len);
                w += in->v[i].len;
            }
            *w = 0;
            *text = r;
            *len = total;
        }
    }
    pieces_free(&pa);
    pieces_free(&pb);
    free(c.tmp.p);
    mx_free(&c.mx);
    return rc;
}

int sep_tok_decode(const sep_tok_t *tok, const int32_t *ids, size_t n,
                   char **text, size_t *len)
{
    return decode_run(tok, ids, n, false, text, len);
}

int sep_tok_token_text(const sep_tok_t *tok, int32_t id, char **text,
                       size_t *len)
{
    return decode_run(tok, &id, 1, true, text, len);
}
