/* tok_stream.c: the streaming cut: how much of a text that may go on
 * sep_tok_encode_prefix encodes, and what it holds back.
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
#include "tok_internal.h"

#include <string.h>

#include "err.h"

#define NONE SIZE_MAX

/* text[0..at) encodes to the first nids ids; the rest starts at where. */
struct cut {
    size_t at, nids;
    int where;
};

int cand_add(struct enc *e, size_t pos)
{
    int rc = GROW(e->ck, e->ckcap, e->nck + 1);
    if (!rc)
        e->ck[e->nck++] = (struct cand){pos, e->nids};
    return rc;
}

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
    return ws_back(s, lim, done);
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

/* Where a stream may be cut (see struct sep_tok). A one-character Replace
 * maps each character on its own, as Prepend does but for the segment
 * start; a longer or regex pattern may match across any place, and one
 * deleting characters before a Prepend may leave the text before a cut
 * empty (so without Prepend) where the whole is not. NFC and kin cut
 * before a character that is ASCII when they see it: it is a starter
 * and no composition has it second. sep_tok_load runs it. */
int stream_cuts(sep_tok_t *t)
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
