/* tok_encode.c: encoding a whole text, the `tokenizers` pipeline step for
 * step:
 *   1. added tokens with normalized=false are split out of the raw text
 *      (longest match at the leftmost position, then lstrip/rstrip/
 *      single_word as AddedVocabulary::find_matches does);
 *   2. each segment between them is normalized on its own, then split on
 *      the added tokens with normalized=true;
 *   3. each remaining part is pre-tokenized into pieces;
 *   4. each piece is one BPE word (tok_bpe.c).
 * The streaming encoder (tok_stream.c) runs the same steps over text that
 * may go on. */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "utf8.h"

/* One normalizer over s, into b. */
int norm_stage(const struct norm *nm, struct mx *mx, const char *s,
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
int normalize(const sep_tok_t *t, struct buf nb[2], struct mx *mx,
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

int seg_add(struct enc *e, int w, size_t s, size_t end, int32_t id)
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
int split_added(const sep_tok_t *t, const struct addset *a,
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
        if (hit->lstrip)
            ms = ws_back(s, ms, done);
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

int push_id(struct enc *e, int32_t id)
{
    int rc = GROW(e->ids, e->idcap, e->nids + 1);
    if (!rc)
        e->ids[e->nids++] = id;
    return rc;
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
int pretok_run(const sep_tok_t *t, struct enc *e, size_t lv,
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
        rc = pretok_run(t, e, lv + 1, out->s.p ? out->s.p + v->off : "", v->len, v->first,
                        cont && !split, rec && !split);
        if (!rc && rec && split)
            rc = cand_add(e, v->end);
    }
    return rc;
}

/* Normalize the segment s between raw added tokens and encode it; at: where
 * it starts in the stream (SEP_TOK_*): Prepend and the pre-tokenizers'
 * prefixes belong to a segment's start, Metaspace's "first" to the text's. */
int encode_seg(const sep_tok_t *t, struct enc *e, const char *s,
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

int encode_text(const sep_tok_t *t, struct enc *e, const char *text,
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
int enc_init(const sep_tok_t *t, struct enc *e, size_t len)
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

void enc_free(struct enc *e)
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

/* Check that text is UTF-8 (sep_utf8_scan). open: it may stop inside a
 * character, which *end then leaves out. */
int check_utf8(const char *text, size_t len, bool open, size_t *end)
{
    char why[128];
    if (len > INT32_MAX)
        return sep_fail(SEP_ERANGE, "text: %zu bytes, more than 2 GiB", len);
    if (sep_utf8_scan(text, len, end) || (!open && *end < len))
        return sep_fail(SEP_EUTF8, "text: invalid UTF-8 at byte offset %zu (%s)", *end,
                        sep_utf8_why(text + *end, len - *end, why, sizeof why));
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
