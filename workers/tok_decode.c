/* tok_decode.c: decoding: the decoder chain over the tokens' strings,
 * joined (sep_tok_decode), and one token's own bytes
 * (sep_tok_token_text). */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "utf8.h"

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
    size_t ok;
    if (!c->tmp.len)
        return SEP_OK;
    if (c->raw || (!sep_utf8_scan(c->tmp.p, c->tmp.len, &ok) && ok == c->tmp.len))
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
        /* pieces that are all empty have no buffer: NULL + 0 is undefined */
        const char *s = in->s.p ? in->s.p + in->v[i].off : "";
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
                if (in->v[i].len) { /* empty pieces may have no buffer (NULL + 0) */
                    memcpy(w, in->s.p + in->v[i].off, in->v[i].len);
                    w += in->v[i].len;
                }
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
