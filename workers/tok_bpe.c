/* tok_bpe.c: the BPE model over one word: a symbol per character
 * (byte-level: per byte, standing for its GPT-2 byte-to-unicode
 * character), merged in Word::merge_all's order, lowest rank first and
 * leftmost on ties, by a binary heap over a linked list of symbols, so that
 * a SentencePiece text with no pre-tokenizer (one word of a megabyte) is
 * O(n log n). */
#include "tok_internal.h"

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

/* BPE of one piece, its ids appended to e->ids: tokenizers' BPE::merge_word
 * and Word::merge_all. A long word is cut where two characters are no
 * merge's junction: no symbol can ever span that place, so the chunks
 * merge independently to the same result, and the heap stays small.
 * rec: the word may go on (streaming); each such place is a candidate cut
 * (e->ck), whatever follows. Not with ignore_merges: there the rest of a
 * word cut so would be looked up whole, which the word never was. */
int bpe_word(const sep_tok_t *t, struct enc *e, const char *s,
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
