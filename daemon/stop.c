/* stop.c: stop strings over a stream of generated text (contract in stop.h).
 *
 * buf holds the bytes of the last piece and those held back before it;
 * the last call released buf[0, at), buf[at, at + held) is held. A
 * completed match can only end in the newest piece (the held tail holds
 * none), so only end positions there are tried, each against every stop
 * string: at most SEP_STOP_MAX * SEP_STOP_LEN byte compares a byte.
 */
#include "stop.h"
#include "err.h"
#include "grow.h"

#include <stdlib.h>
#include <string.h>

struct sep_stop {
    char str[SEP_STOP_MAX][SEP_STOP_LEN]; /* the stop strings ... */
    size_t len[SEP_STOP_MAX];             /* ... their lengths */
    int n;
    size_t longest;                       /* the longest one's length */
    char *buf;                            /* (cap) */
    size_t cap;
    size_t at, held;                      /* released up to at; then held bytes */
    int done;                             /* a stop string completed */
};

int sep_stop_new(sep_stop_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? SEP_OK : sep_fail(SEP_ENOMEM, "stop strings: out of memory");
}

void sep_stop_destroy(sep_stop_t **self_p)
{
    sep_stop_t *m = *self_p;
    if (!m)
        return;
    free(m->buf);
    free(m);
    *self_p = NULL;
}

int sep_stop_add(sep_stop_t *m, const char *s, size_t len)
{
    if (len == 0 || len > SEP_STOP_LEN)
        return sep_fail(SEP_EINVAL, "a stop string of %zu bytes (1 to %d)", len, SEP_STOP_LEN);
    if (m->n == SEP_STOP_MAX)
        return sep_fail(SEP_ERANGE, "more than %d stop strings", SEP_STOP_MAX);
    memcpy(m->str[m->n], s, len);
    m->len[m->n++] = len;
    if (len > m->longest)
        m->longest = len;
    return SEP_OK;
}

int sep_stop_count(const sep_stop_t *m)
{
    return m->n;
}

const char *sep_stop_string(const sep_stop_t *m, int i, size_t *len)
{
    *len = m->len[i];
    return m->str[i];
}

size_t sep_stop_held(const sep_stop_t *m)
{
    return m->held;
}

/* The stop string that ends at buf[e] (exclusive), the longest of them; -1: none. */
static int stop_ending(const sep_stop_t *m, size_t e)
{
    int best = -1;
    for (int i = 0; i < m->n; i++)
        if (m->len[i] <= e && (best < 0 || m->len[i] > m->len[best]) &&
            memcmp(m->buf + e - m->len[i], m->str[i], m->len[i]) == 0)
            best = i;
    return best;
}

/* Whether the k bytes ending at buf[e] begin some stop string longer than k. */
static int stop_begins(const sep_stop_t *m, size_t e, size_t k)
{
    for (int i = 0; i < m->n; i++)
        if (m->len[i] > k && memcmp(m->buf + e - k, m->str[i], k) == 0)
            return 1;
    return 0;
}

int sep_stop_feed(sep_stop_t *m, const char *text, size_t len, int last, const char **out,
                  size_t *out_len, int *hit)
{
    *hit = -1;
    *out = m->buf;
    *out_len = 0;
    if (m->done)
        return SEP_OK;
    size_t old = m->held;
    int rc = SEP_GROW(m->buf, m->cap, old + len + 1);
    if (rc)
        return rc;
    memmove(m->buf, m->buf + m->at, old);
    memcpy(m->buf + old, text, len);
    size_t total = old + len;
    m->at = 0;
    for (size_t e = old + 1; e <= total; e++) {
        int i = stop_ending(m, e);
        if (i >= 0) {
            m->done = 1;
            m->held = 0;
            *hit = i;
            *out = m->buf;
            *out_len = e - m->len[i];
            return SEP_OK;
        }
    }
    /* hold the longest tail that may still begin a stop string */
    size_t k = last || !m->longest ? 0 : total < m->longest - 1 ? total : m->longest - 1;
    while (k > 0 && !stop_begins(m, total, k))
        k--;
    m->at = total - k;
    m->held = k;
    *out = m->buf;
    *out_len = m->at;
    return SEP_OK;
}
