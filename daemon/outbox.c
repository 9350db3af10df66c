/* outbox.c: per-peer queues of replies that could not go yet. */
#include "outbox.h"
#include "err.h"
#include "grow.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* A reply as it will be sent: header text and frames, copied. */
typedef struct {
    char *text;                          /* (text_len) */
    size_t text_len;
    int n;
    sep_frame_t frames[SEP_MSG_MAX_FRAMES];
    uint8_t *data;                       /* the frames' bytes, one block */
} outbox_msg_t;

typedef struct {
    uint8_t id[256];
    size_t id_len;
    outbox_msg_t *q;                     /* (q_cap) ring of waiting replies */
    size_t q_cap, q_head, q_len;
    uint64_t refused;                    /* requests not served while full */
} outbox_peer_t;

struct sepd_outbox {
    void *sock;
    size_t max_msgs;
    outbox_peer_t *peers;                /* (n_peers) peers with something waiting */
    size_t n_peers, cap_peers;
};

int sepd_outbox_new(sepd_outbox_t **out, void *sock, size_t max_msgs)
{
    sepd_outbox_t *o = calloc(1, sizeof *o);
    if (!o)
        return sep_fail(SEP_ENOMEM, "outbox: out of memory");
    o->sock = sock;
    o->max_msgs = max_msgs;
    *out = o;
    return SEP_OK;
}

static void outbox_msg_free(outbox_msg_t *m)
{
    free(m->text);
    free(m->data);
    memset(m, 0, sizeof *m);
}

static void outbox_peer_free(outbox_peer_t *p)
{
    for (size_t i = 0; i < p->q_len; i++)
        outbox_msg_free(&p->q[(p->q_head + i) % p->q_cap]);
    free(p->q);
}

void sepd_outbox_destroy(sepd_outbox_t **self_p)
{
    sepd_outbox_t *o = *self_p;
    if (!o)
        return;
    for (size_t i = 0; i < o->n_peers; i++)
        outbox_peer_free(&o->peers[i]);
    free(o->peers);
    free(o);
    *self_p = NULL;
}

static outbox_peer_t *outbox_find(const sepd_outbox_t *o, const uint8_t *id, size_t len)
{
    for (size_t i = 0; i < o->n_peers; i++)
        if (o->peers[i].id_len == len && memcmp(o->peers[i].id, id, len) == 0)
            return &o->peers[i];
    return NULL;
}

static outbox_peer_t *outbox_add_peer(sepd_outbox_t *o, const uint8_t *id, size_t len)
{
    if (len > sizeof o->peers[0].id || SEP_GROW(o->peers, o->cap_peers, o->n_peers + 1))
        return NULL;
    outbox_peer_t *p = &o->peers[o->n_peers++];
    memset(p, 0, sizeof *p);
    memcpy(p->id, id, len);
    p->id_len = len;
    return p;
}

static void outbox_drop_peer(sepd_outbox_t *o, outbox_peer_t *p)
{
    outbox_peer_free(p);
    *p = o->peers[--o->n_peers];
}

/* Append a copy of the reply to p's ring; takes text. */
static int outbox_push(outbox_peer_t *p, char *text, const sep_frame_t *frames, int n)
{
    if (p->q_len == p->q_cap) {
        /* unroll the ring into a larger one */
        size_t cap = p->q_cap ? 2 * p->q_cap : 16;
        outbox_msg_t *nq = malloc(cap * sizeof *nq);
        if (!nq) {
            free(text);
            return sep_fail(SEP_ENOMEM, "outbox: out of memory");
        }
        for (size_t i = 0; i < p->q_len; i++)
            nq[i] = p->q[(p->q_head + i) % p->q_cap];
        free(p->q);
        p->q = nq;
        p->q_cap = cap;
        p->q_head = 0;
    }
    outbox_msg_t m = { .text = text, .text_len = strlen(text), .n = n };
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += frames[i].len;
    if (total && !(m.data = malloc(total))) {
        free(text);
        return sep_fail(SEP_ENOMEM, "outbox: out of memory for %zu bytes", total);
    }
    for (int i = 0, at = 0; i < n; i++) {
        if (frames[i].len)
            memcpy(m.data + at, frames[i].data, frames[i].len);
        m.frames[i] = (sep_frame_t){ m.data + at, frames[i].len };
        at += (int)frames[i].len;
    }
    p->q[(p->q_head + p->q_len++) % p->q_cap] = m;
    return SEP_OK;
}

int sepd_outbox_send(sepd_outbox_t *o, const uint8_t *peer, size_t peer_len, json_t *hdr,
                     const sep_frame_t *frames, int n)
{
    char *text = sep_msg_header_text(hdr);
    if (!text)
        return sep_fail(SEP_ENOMEM, "reply: out of memory");
    outbox_peer_t *p = outbox_find(o, peer, peer_len);
    int rc = SEP_EAGAIN;
    if (!p || p->q_len == 0)
        rc = sep_msg_send_text(o->sock, peer, peer_len, text, strlen(text), frames, n,
                               ZMQ_DONTWAIT);
    if (rc != SEP_EAGAIN) {
        free(text);
        return rc;
    }
    if (!p && !(p = outbox_add_peer(o, peer, peer_len))) {
        free(text);
        return sep_fail(SEP_ENOMEM, "outbox: out of memory");
    }
    return outbox_push(p, text, frames, n);
}

size_t sepd_outbox_waiting(const sepd_outbox_t *o, const uint8_t *peer, size_t peer_len)
{
    const outbox_peer_t *p = outbox_find(o, peer, peer_len);
    return p ? p->q_len : 0;
}

int sepd_outbox_admit(sepd_outbox_t *o, const uint8_t *peer, size_t peer_len)
{
    outbox_peer_t *p = outbox_find(o, peer, peer_len);
    if (!p || (p->q_len < o->max_msgs && !p->refused))
        return 1;
    if (p->refused++ == 0)
        sep_log(SEP_LOG_WARN, "a client left %zu replies unread: its requests are refused "
                "until it reads them", p->q_len);
    return 0;
}

/* Send what waits for p, in order, until its pipe is full again. */
static int outbox_flush_peer(sepd_outbox_t *o, outbox_peer_t *p)
{
    while (p->q_len) {
        outbox_msg_t *m = &p->q[p->q_head];
        int rc = sep_msg_send_text(o->sock, p->id, p->id_len, m->text, m->text_len, m->frames,
                                   m->n, ZMQ_DONTWAIT);
        if (rc == SEP_EAGAIN)
            return SEP_OK;
        if (rc)
            return rc;
        outbox_msg_free(m);
        p->q_head = (p->q_head + 1) % p->q_cap;
        p->q_len--;
    }
    if (p->refused) {
        char msg[200];
        snprintf(msg, sizeof msg, "sepd refused %llu request(s) from this client while it "
                 "left %zu replies unread", (unsigned long long)p->refused, o->max_msgs);
        json_t *h = json_pack("{s:s, s:b, s:s, s:s}", "op", "error", "ok", 0, "code",
                              SEP_ERR_LIMIT, "error", msg);
        if (!h)
            return sep_fail(SEP_ENOMEM, "outbox: out of memory");
        char *text = sep_msg_header_text(h);
        json_decref(h);
        if (!text)
            return sep_fail(SEP_ENOMEM, "outbox: out of memory");
        int rc = sep_msg_send_text(o->sock, p->id, p->id_len, text, strlen(text), NULL, 0,
                                   ZMQ_DONTWAIT);
        free(text);
        if (rc == SEP_EAGAIN)
            return SEP_OK;
        if (rc)
            return rc;
        p->refused = 0;
    }
    return SEP_OK;
}

size_t sepd_outbox_flush(sepd_outbox_t *o, void (*gone)(void *arg, const uint8_t *peer,
                                                       size_t peer_len), void *arg)
{
    for (size_t i = 0; i < o->n_peers;) {
        outbox_peer_t *p = &o->peers[i];
        int rc = outbox_flush_peer(o, p);
        if (rc == SEP_EPEER || (rc && rc != SEP_ENOMEM)) {
            if (rc != SEP_EPEER)
                sep_log(SEP_LOG_WARN, "reply: %s", sep_errmsg());
            uint8_t id[256];
            size_t len = p->id_len;
            memcpy(id, p->id, len);
            outbox_drop_peer(o, p);
            if (gone)
                gone(arg, id, len);
            continue;
        }
        if (p->q_len == 0 && p->refused == 0) {
            outbox_drop_peer(o, p);
            continue;
        }
        i++;
    }
    return o->n_peers;
}
