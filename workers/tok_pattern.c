/* tok_pattern.c: the tokenizer's patterns, a literal string or a PCRE2
 * regex: finding matches (also in text that may go on) and replacing
 * them. */
#include "tok_internal.h"

#include <string.h>

#include "err.h"

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

void mx_free(struct mx *m)
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
int pat_find(const struct pattern *p, struct mx *m, const char *s,
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

void pat_free(struct pattern *p)
{
    pcre2_code_free(p->re);
    free(p->lit);
}

int replace_all(const struct pattern *p, struct mx *m, const char *s,
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
