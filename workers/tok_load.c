/* tok_load.c: loading tokenizer.json: the BPE model (vocab, merges, byte
 * fallback, unk), normalizers, pre-tokenizers, decoders and added tokens,
 * checked as they are read; the lookups into what was loaded; freeing it. */
#include "tok_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* The pre-split regex of tokenizers' ByteLevel pre-tokenizer (GPT-2's). */
static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+"
    "|\\s+(?!\\S)|\\s+";

static uint32_t str_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;  /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

int32_t vocab_get(const sep_tok_t *t, const char *s, size_t n)
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

sep_tok_kind_t sep_tok_kind(const sep_tok_t *tok)
{
    return tok->kind;
}

int sep_tok_vocab_size(const sep_tok_t *tok)
{
    return tok->nids;
}

int sep_tok_has_id(const sep_tok_t *tok, int32_t id)
{
    return id >= 0 && id < tok->nids && tok->text_off[id] != HOLE;
}

int sep_tok_check_vocab(const sep_tok_t *tok, int n_vocab)
{
    if (tok->nids <= n_vocab)
        return SEP_OK;
    return sep_fail(SEP_EFORMAT, "the tokenizer has %d ids (0 to %d), the model %d "
                    "(config.json vocab_size): ids from %d on have no embedding row",
                    tok->nids, tok->nids - 1, n_vocab, n_vocab);
}

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

typedef int (*parse_fn)(sep_tok_t *t, json_t *j, const char *path, const char *field);

/* The start of a normalizer, pre-tokenizer or decoder: a Sequence (its
 * array under key) goes item by item through fn, and so does nothing
 * (null, where optional); 1 then, with the result in *rc. Else 0: *type
 * is the component's own type, for the caller to parse. */
static int comp_begin(sep_tok_t *t, json_t *j, const char *key, parse_fn fn, bool optional,
                      const char **type, const char *path, const char *field, int *rc)
{
    size_t n;
    *rc = SEP_OK;
    if (optional && (!j || json_is_null(j)))
        return 1;
    if (!json_is_object(j)) {
        *rc = sep_fail(SEP_EFORMAT, "%s: %s: not an object", path, field);
        return 1;
    }
    if ((*rc = jstr(j, "type", type, &n, path, field)))
        return 1;
    if (strcmp(*type, "Sequence"))
        return 0;
    json_t *items = json_object_get(j, key);
    if (!json_is_array(items)) {
        *rc = sep_fail(SEP_EFORMAT, "%s: %s.%s: missing or not an array", path, field, key);
        return 1;
    }
    for (size_t i = 0; !*rc && i < json_array_size(items); i++) {
        char f[160];
        snprintf(f, sizeof f, "%s.%s[%zu]", field, key, i);
        *rc = fn(t, json_array_get(items, i), path, f);
    }
    return 1;
}

static int parse_norm(sep_tok_t *t, json_t *j, const char *path,
                      const char *field)
{
    const char *type, *s;
    size_t n;
    int rc;
    if (comp_begin(t, j, "normalizers", parse_norm, true, &type, path, field, &rc))
        return rc;
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
    size_t n;
    int rc;
    if (comp_begin(t, j, "pretokenizers", parse_pretok, true, &type, path, field, &rc))
        return rc;
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
    size_t n;
    int rc;
    if (comp_begin(t, j, "decoders", parse_decoder, false, &type, path, field, &rc))
        return rc;
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
