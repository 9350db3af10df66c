/* tok_buf.c: the tokenizer's growable storage: byte buffers and lists of
 * pieces (the strings passed between pre-tokenizers and decoders). */
#include "tok_internal.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"

int nomem(size_t n)
{
    return sep_fail(SEP_ENOMEM, "tokenizer: out of memory (%zu bytes)", n);
}

/* Make room for need > *cap elements of size bytes in *pp. */
int grow(void **pp, size_t *cap, size_t need, size_t size)
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

int buf_add(struct buf *b, const void *s, size_t n)
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

void pieces_clear(struct pieces *p)
{
    p->s.len = 0;
    p->n = 0;
}

int pieces_add(struct pieces *p, const char *s, size_t len, bool first)
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
int pieces_extend(struct pieces *p, const char *s, size_t len)
{
    int rc = buf_add(&p->s, s, len);
    if (!rc)
        p->v[p->n - 1].len += len;
    return rc;
}

void pieces_free(struct pieces *p)
{
    free(p->s.p);
    free(p->v);
}
