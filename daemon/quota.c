/* quota.c: sepd's limits on sessions, caches, pending text and clients. */
#include "quota.h"
#include "daemon.h"
#include "err.h"
#include "grow.h"
#include "log.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* The clients sepd knows: routing ids that sent something and were not
 * found gone since. */
typedef struct {
    uint8_t id[256];
    size_t len;
} known_t;

struct sepd_known {
    known_t *c;            /* (n) */
    size_t n, cap;
    uint64_t refused;      /* clients turned away, for the log */
};

void sepd_limits_free(sepd_t *d)
{
    if (!d->known)
        return;
    free(d->known->c);
    free(d->known);
    d->known = NULL;
}

/* ---- clients at once ---------------------------------------------------- */

static known_t *known_find(struct sepd_known *k, const uint8_t *id, size_t len)
{
    for (size_t i = 0; i < k->n; i++)
        if (k->c[i].len == len && memcmp(k->c[i].id, id, len) == 0)
            return &k->c[i];
    return NULL;
}

void sepd_client_forget(sepd_t *d, const uint8_t *peer, size_t peer_len)
{
    struct sepd_known *k = d->known;
    known_t *c = k ? known_find(k, peer, peer_len) : NULL;
    if (c)
        *c = k->c[--k->n];
}

/* Find the known clients that have gone: a heartbeat to each (clients
 * ignore it) fails at once for a closed connection. */
static void known_sweep(sepd_t *d)
{
    struct sepd_known *k = d->known;
    json_t *h = json_pack("{s:s}", "op", SEP_OP_HEARTBEAT);
    for (size_t i = 0; h && i < k->n;) {
        known_t c = k->c[i];
        if (sepd_outbox_waiting(d->out, c.id, c.len)) {
            i++; /* replies wait for it: the outbox finds out on its own */
            continue;
        }
        int rc = sepd_outbox_send(d->out, c.id, c.len, h, NULL, 0);
        if (rc == SEP_EPEER)
            sepd_peer_gone(d, c.id, c.len); /* forgets it: entry i is another now */
        else
            i++;
    }
    json_decref(h);
}

int sepd_client_admit(sepd_t *d, const sep_msg_t *m)
{
    if (!m->peer_len)
        return 1;
    if (!d->known && !(d->known = calloc(1, sizeof *d->known)))
        return 1; /* no memory to count: serve it, the reply says what fails */
    struct sepd_known *k = d->known;
    if (known_find(k, m->peer, m->peer_len))
        return 1;
    int max = d->conf.limits.max_clients;
    if (k->n >= (size_t)max)
        known_sweep(d);
    if (k->n < (size_t)max) {
        if (m->peer_len > sizeof k->c[0].id || SEP_GROW(k->c, k->cap, k->n + 1))
            return 1;
        memcpy(k->c[k->n].id, m->peer, m->peer_len);
        k->c[k->n++].len = m->peer_len;
        return 1;
    }
    if (k->refused++ % 100 == 0)
        sep_log(SEP_LOG_WARN, "%d clients are connected (max_clients = %d): new ones are "
                "refused (%llu so far)", max, max, (unsigned long long)k->refused);
    sepd_error(d, m->peer, m->peer_len, m->op ? m->op : "error", SEP_ERR_LIMIT,
               "sepd serves %d clients at once (max_clients = %d): try again once one has "
               "gone", max, max);
    return 0;
}

/* ---- sessions ----------------------------------------------------------- */

int sepd_limit_new_session(sepd_t *d, const sep_msg_t *m, const char *name)
{
    char why[64], clip[64];
    if (sep_name_check(name, why, sizeof why)) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST,
                   "%s: session name '%s': %s; a name is %s", m->op, sep_clip(name, clip), why,
                   SEP_NAME_RULE);
        return 0;
    }
    size_t held = d->n_sess + d->n_imports;
    if (held >= (size_t)d->conf.max_sessions) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_LIMIT,
                   "%s '%s': sepd holds %zu sessions, active and suspended (max_sessions = %d): "
                   "close one first", m->op, sep_clip(name, clip), held, d->conf.max_sessions);
        return 0;
    }
    return 1;
}

/* Whether s's caches are in the workers (or on their way there). */
static int holds_caches(const sep_session_t *s)
{
    if (s->foreign[0])
        return 0;
    return s->state == SEP_SS_OPENING || s->state == SEP_SS_ACTIVE ||
           s->state == SEP_SS_FAILED || s->op.kind == SEP_SOP_RESUME;
}

/* The bytes of s's cache on stage rank once it holds `entries`. */
static int64_t charge_at(const sepd_t *d, const sep_session_t *s, int rank, int64_t entries)
{
    const sep_stage_t *st = &d->pool->stage[rank];
    const sep_policy_t *p = &s->policy;
    if (entries < p->c + 1)
        entries = p->c + 1;
    if (entries > INT32_MAX / 2)
        entries = INT32_MAX / 2;
    return sep_cache_bytes(p, st->layer1 - st->layer0, st->kv_dim,
                           sep_cache_cap_for(p, 0, (int)entries));
}

int64_t sepd_cache_charge(const sepd_t *d, const sep_session_t *s, int rank)
{
    /* full grows with its stream: charged at every id it has (scored or
     * queued), at least c + 1 */
    return charge_at(d, s, rank, s->policy.method == SEP_METHOD_FULL ? s->ids_total : 0);
}

/* The charges of the sessions with caches but s, on stage rank. */
static int64_t charged_others(const sepd_t *d, const sep_session_t *s, int rank)
{
    int64_t used = 0;
    for (size_t i = 0; i < d->n_sess; i++)
        if (d->sess[i] != s && holds_caches(d->sess[i]))
            used += sepd_cache_charge(d, d->sess[i], rank);
    return used;
}

static void cache_key(const sepd_t *d, char *buf, size_t cap)
{
    if (d->conf.limits.cache_memory_mib)
        snprintf(buf, cap, "cache_memory_mib = %ld", d->conf.limits.cache_memory_mib);
    else
        snprintf(buf, cap, "cache_memory_mib = auto");
}

int sepd_limit_growth(sepd_t *d, const sep_msg_t *m, const sep_session_t *s, int64_t more)
{
    if (s->policy.method != SEP_METHOD_FULL)
        return 1;
    int64_t entries = s->ids_total + (int64_t)s->held_len + more;
    for (int r = 0; r < d->pool->stages; r++) {
        const sep_stage_t *st = &d->pool->stage[r];
        if (st->cache_budget <= 0)
            continue;
        int64_t need = charge_at(d, s, r, entries), used = charged_others(d, s, r);
        if (used + need <= st->cache_budget)
            continue;
        char key[64];
        cache_key(d, key, sizeof key);
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_LIMIT,
                   "%s '%s': a full cache grows with its text: %lld more tokens (counting one "
                   "a byte) would take it to %lld bytes on stage %d (layers %d..%d), which has "
                   "%lld of its %lld bytes of cache memory for it (%s)", m->op, s->name,
                   (long long)more, (long long)need, r, st->layer0, st->layer1 - 1,
                   (long long)(st->cache_budget > used ? st->cache_budget - used : 0),
                   (long long)st->cache_budget, key);
        return 0;
    }
    return 1;
}

int sepd_limit_caches(sepd_t *d, const sep_msg_t *m, const sep_session_t *s)
{
    int active = 0, max = d->conf.limits.max_active_sessions;
    for (size_t i = 0; i < d->n_sess; i++)
        active += d->sess[i] != s && holds_caches(d->sess[i]);
    if (active >= max) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_LIMIT,
                   "%s '%s': %d sessions have their caches in the workers "
                   "(max_active_sessions = %d): suspend or close one first", m->op, s->name,
                   active, max);
        return 0;
    }
    for (int r = 0; r < d->pool->stages; r++) {
        const sep_stage_t *st = &d->pool->stage[r];
        if (st->cache_budget <= 0)
            continue;
        int64_t need = sepd_cache_charge(d, s, r), used = charged_others(d, s, r);
        if (used + need <= st->cache_budget)
            continue;
        int64_t left = st->cache_budget > used ? st->cache_budget - used : 0;
        char cap[64];
        cache_key(d, cap, sizeof cap);
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_LIMIT,
                   "%s '%s': its cache needs %lld bytes on stage %d (layers %d..%d), which has "
                   "%lld of its %lld bytes of cache memory free (%s): suspend or close a "
                   "session, or take a smaller c", m->op, s->name, (long long)need, r,
                   st->layer0, st->layer1 - 1, (long long)left, (long long)st->cache_budget, cap);
        return 0;
    }
    return 1;
}

int sepd_limit_piece(sepd_t *d, const sep_msg_t *m, const sep_session_t *s, size_t len)
{
    const sep_op_t *op = &s->op;
    long max = d->conf.limits.max_pending_bytes;
    int64_t pending = 0;
    for (int i = 0; i < op->n_pieces; i++)
        pending += op->pieces[i].len;
    if (op->n_pieces < SEP_FEED_WINDOW && pending + (int64_t)len <= max)
        return 1;
    json_t *h = json_pack("{s:s, s:b, s:s, s:s, s:I, s:I, s:I}", "op", m->op, "ok", 0, "code",
                          SEP_ERR_LIMIT, "error", "", "seq",
                          (json_int_t)sep_msg_int(m, "seq", 0), "max_pending_bytes",
                          (json_int_t)max, "pending_bytes", (json_int_t)pending);
    char msg[400];
    if (op->n_pieces >= SEP_FEED_WINDOW)
        snprintf(msg, sizeof msg, "feed '%s': more than %d pieces unacknowledged: the piece "
                 "was not taken, nor will later ones be (send them again after the "
                 "acknowledged bytes)", s->name, SEP_FEED_WINDOW);
    else
        snprintf(msg, sizeof msg, "feed '%s': a piece of %zu bytes would leave %lld bytes "
                 "unacknowledged (max_pending_bytes = %ld): the piece was not taken, nor will "
                 "later ones be (send them again after the acknowledged bytes)", s->name, len,
                 (long long)(pending + (int64_t)len), max);
    if (h)
        json_object_set_new(h, "error", json_string(msg));
    sep_log(SEP_LOG_DEBUG, "%s", msg);
    sepd_send(d, m->peer, m->peer_len, h, NULL, 0);
    return 0;
}
