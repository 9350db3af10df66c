/* proto.c: framing of protocol messages over ZeroMQ. */
#include "proto.h"
#include "err.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* Drop the rest of a multipart message. */
static void proto_drain(void *sock)
{
    int more = 1;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        zmq_msg_recv(&part, sock, 0);
        zmq_msg_close(&part);
    }
}

static int proto_more(void *sock)
{
    int more = 0;
    size_t sz = sizeof more;
    return zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more;
}

int sep_msg_recv(void *sock, int routed, sep_msg_t *m, int flags)
{
    memset(m, 0, sizeof *m);
    zmq_msg_t part;
    if (routed) {
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, sock, flags) < 0) {
            int e = errno;
            zmq_msg_close(&part);
            return e == EAGAIN ? SEP_ENOTFOUND : sep_fail(SEP_EIO, "receive: %s", zmq_strerror(e));
        }
        m->peer_len = zmq_msg_size(&part) < sizeof m->peer ? zmq_msg_size(&part) : sizeof m->peer;
        memcpy(m->peer, zmq_msg_data(&part), m->peer_len);
        zmq_msg_close(&part);
        flags = 0; /* the rest of the message is there */
        if (!proto_more(sock))
            return sep_fail(SEP_EFORMAT, "message: no header frame");
    }
    zmq_msg_init(&part);
    if (zmq_msg_recv(&part, sock, flags) < 0) {
        int e = errno;
        zmq_msg_close(&part);
        return e == EAGAIN ? SEP_ENOTFOUND : sep_fail(SEP_EIO, "receive: %s", zmq_strerror(e));
    }
    size_t hlen = zmq_msg_size(&part);
    /* who sent it: the connection's User-Id, as the ZAP handler set it */
    const char *user = zmq_msg_gets(&part, "User-Id");
    if (user && strlen(user) < sizeof m->user)
        memcpy(m->user, user, strlen(user) + 1);
    json_error_t jerr;
    if (hlen > SEP_MSG_MAX_HEADER) {
        zmq_msg_close(&part);
        proto_drain(sock);
        return sep_fail(SEP_EFORMAT, "message: header of %zu bytes (at most %d)", hlen,
                        SEP_MSG_MAX_HEADER);
    }
    m->hdr = json_loadb(zmq_msg_data(&part), hlen, JSON_REJECT_DUPLICATES, &jerr);
    zmq_msg_close(&part);
    if (!m->hdr || !json_is_object(m->hdr)) {
        proto_drain(sock);
        json_decref(m->hdr);
        m->hdr = NULL;
        return sep_fail(SEP_EFORMAT, "message: header is not a JSON object (%s)",
                        jerr.text[0] ? jerr.text : "not an object");
    }
    json_t *v = json_object_get(m->hdr, "v"), *op = json_object_get(m->hdr, "op");
    if (!json_is_integer(v) || json_integer_value(v) != SEP_PROTO_VERSION) {
        proto_drain(sock);
        return sep_fail(SEP_EFORMAT, "message: protocol version %s, this side speaks %d",
                        json_is_integer(v) ? "other" : "missing", SEP_PROTO_VERSION);
    }
    if (!json_is_string(op)) {
        proto_drain(sock);
        return sep_fail(SEP_EFORMAT, "message: no \"op\" string");
    }
    m->op = json_string_value(op);
    zmq_msg_t *zm = calloc(SEP_MSG_MAX_FRAMES, sizeof *zm);
    if (!zm) {
        proto_drain(sock);
        return sep_fail(SEP_ENOMEM, "message: out of memory");
    }
    m->zmsgs = zm;
    while (proto_more(sock)) {
        if (m->n_frames == SEP_MSG_MAX_FRAMES) {
            proto_drain(sock);
            return sep_fail(SEP_EFORMAT, "message '%s': more than %d frames", m->op,
                            SEP_MSG_MAX_FRAMES);
        }
        zmq_msg_t *f = &zm[m->n_frames];
        zmq_msg_init(f);
        if (zmq_msg_recv(f, sock, 0) < 0)
            return sep_fail(SEP_EIO, "receive: %s", zmq_strerror(errno));
        if ((uintptr_t)zmq_msg_data(f) % SEP_FRAME_ALIGN) {
            /* ZeroMQ's decoder may hand out a frame in place in its receive
             * buffer, at any offset: copy it so that its arrays can be
             * read in place (a misaligned int32 load is undefined) */
            zmq_msg_t copy;
            size_t len = zmq_msg_size(f);
            if (zmq_msg_init_size(&copy, len)) {
                m->n_frames++; /* closed with the others */
                proto_drain(sock);
                return sep_fail(SEP_ENOMEM, "message '%s': out of memory for a frame of %zu "
                                "bytes", m->op, len);
            }
            memcpy(zmq_msg_data(&copy), zmq_msg_data(f), len);
            zmq_msg_close(f);
            zmq_msg_init(f);
            zmq_msg_move(f, &copy);
        }
        m->frames[m->n_frames++] = (sep_frame_t){ zmq_msg_data(f), zmq_msg_size(f) };
    }
    return SEP_OK;
}

void sep_msg_close(sep_msg_t *m)
{
    zmq_msg_t *zm = m->zmsgs;
    for (int i = 0; zm && i < m->n_frames; i++)
        zmq_msg_close(&zm[i]);
    free(zm);
    json_decref(m->hdr);
    memset(m, 0, sizeof *m);
}

char *sep_msg_header_text(json_t *hdr)
{
    if (json_object_set_new(hdr, "v", json_integer(SEP_PROTO_VERSION)))
        return NULL;
    return json_dumps(hdr, JSON_COMPACT);
}

void *sep_msg_take_frame(sep_msg_t *m, int i)
{
    zmq_msg_t *zm = m->zmsgs, *held = malloc(sizeof *held);
    if (!held || !zm || i < 0 || i >= m->n_frames) {
        free(held);
        return NULL;
    }
    zmq_msg_init(held);
    zmq_msg_move(held, &zm[i]); /* zm[i] is left empty: closing it frees nothing */
    m->frames[i] = (sep_frame_t){ "", 0 };
    return held;
}

const void *sep_frame_data(void *handle)
{
    return zmq_msg_data(handle);
}

void sep_frame_release(void *handle)
{
    if (!handle)
        return;
    zmq_msg_close(handle);
    free(handle);
}

static void proto_free_owned(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Who gets the owned frames back: free() (sep_msg_send_owned) or the
 * lender's release (sep_msg_send_lent). */
typedef struct {
    void (*release)(void *data, void *hint);
    void *hint;
} proto_owner_t;

static const proto_owner_t proto_malloced = { proto_free_owned, NULL };

/* Give back the owned frames from i on (those a failed send did not hand over). */
static void proto_drop_owned(const sep_frame_t *frames, int i, int n, uint32_t owned,
                             const proto_owner_t *o)
{
    for (; i < n; i++)
        if (owned >> i & 1)
            o->release((void *)frames[i].data, o->hint);
}

/* One frame; an owned one goes without a copy. */
static int proto_send_frame(void *sock, const sep_frame_t *f, int owned, int flags,
                            const proto_owner_t *o)
{
    if (!owned || !f->len) {
        int rc = zmq_send(sock, f->len ? f->data : "", f->len, flags) < 0 ? -1 : 0;
        if (owned)
            o->release((void *)f->data, o->hint);
        return rc;
    }
    zmq_msg_t msg;
    if (zmq_msg_init_data(&msg, (void *)f->data, f->len, o->release, o->hint)) {
        o->release((void *)f->data, o->hint);
        return -1;
    }
    if (zmq_msg_send(&msg, sock, flags) < 0) {
        int e = errno;
        zmq_msg_close(&msg); /* frees the data */
        errno = e;
        return -1;
    }
    return 0;
}

/* sep_msg_send_text with owned frames (sep_msg_send_owned). */
static int proto_send(void *sock, const void *peer, size_t peer_len, const char *hdr,
                      size_t hdr_len, const sep_frame_t *frames, int n, int flags,
                      uint32_t owned, const proto_owner_t *o)
{
    int more = n ? ZMQ_SNDMORE : 0, rc;
    if (peer)
        rc = zmq_send(sock, peer, peer_len, ZMQ_SNDMORE | flags);
    else
        rc = zmq_send(sock, hdr, hdr_len, more | flags);
    if (rc < 0) {
        /* nothing went: the first part decides */
        int e = errno;
        proto_drop_owned(frames, 0, n, owned, o);
        if (e == EAGAIN)
            return SEP_EAGAIN;
        if (e == EHOSTUNREACH)
            return SEP_EPEER;
        return sep_fail(SEP_EIO, "send: %s", zmq_strerror(e));
    }
    rc = peer ? zmq_send(sock, hdr, hdr_len, more) < 0 : 0;
    int i = 0;
    for (; !rc && i < n; i++)
        rc = proto_send_frame(sock, &frames[i], owned >> i & 1, i + 1 < n ? ZMQ_SNDMORE : 0, o);
    if (rc) {
        int e = errno;
        /* frame i-1 failed and was given back; those after it were never handed over */
        proto_drop_owned(frames, i, n, owned, o);
        return sep_fail(SEP_EIO, "send: %s", zmq_strerror(e));
    }
    return SEP_OK;
}

int sep_msg_send_text(void *sock, const void *peer, size_t peer_len, const char *hdr,
                      size_t hdr_len, const sep_frame_t *frames, int n, int flags)
{
    return proto_send(sock, peer, peer_len, hdr, hdr_len, frames, n, flags, 0, &proto_malloced);
}

static int proto_send_json(void *sock, const void *peer, size_t peer_len, json_t *hdr,
                           const sep_frame_t *frames, int n, uint32_t owned,
                           const proto_owner_t *o)
{
    char *text = sep_msg_header_text(hdr);
    if (!text) {
        proto_drop_owned(frames, 0, n, owned, o);
        return sep_fail(SEP_ENOMEM, "send: out of memory");
    }
    int rc = proto_send(sock, peer, peer_len, text, strlen(text), frames, n, 0, owned, o);
    free(text);
    return rc;
}

int sep_msg_send_owned(void *sock, const void *peer, size_t peer_len, json_t *hdr,
                       const sep_frame_t *frames, int n, uint32_t owned)
{
    return proto_send_json(sock, peer, peer_len, hdr, frames, n, owned, &proto_malloced);
}

int sep_msg_send_lent(void *sock, const void *peer, size_t peer_len, json_t *hdr,
                      const sep_frame_t *frames, int n, uint32_t lent,
                      void (*release)(void *data, void *hint), void *hint)
{
    const proto_owner_t o = { release, hint };
    return proto_send_json(sock, peer, peer_len, hdr, frames, n, lent, &o);
}

int sep_msg_send(void *sock, const void *peer, size_t peer_len, json_t *hdr,
                 const sep_frame_t *frames, int n)
{
    return sep_msg_send_owned(sock, peer, peer_len, hdr, frames, n, 0);
}

const char *sep_hdr_str(const json_t *hdr, const char *key, const char *dflt)
{
    json_t *v = json_object_get(hdr, key);
    return json_is_string(v) ? json_string_value(v) : dflt;
}

const char *sep_msg_str(const sep_msg_t *m, const char *key, const char *dflt)
{
    return sep_hdr_str(m->hdr, key, dflt);
}

int64_t sep_msg_int(const sep_msg_t *m, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(m->hdr, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

double sep_msg_real(const sep_msg_t *m, const char *key, double dflt)
{
    json_t *v = json_object_get(m->hdr, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

int sep_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n < 1 || n > SEP_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int sep_name_check(const char *name, char *why, size_t cap)
{
    size_t n = strlen(name);
    if (n < 1 || n > SEP_NAME_MAX) {
        snprintf(why, cap, "%zu bytes long", n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            snprintf(why, cap, "byte %zu is 0x%02X", i, c);
            return -1;
        }
    }
    if (name[0] == '.' || name[0] == '-') {
        snprintf(why, cap, "it starts with '%c'", name[0]);
        return -1;
    }
    return 0;
}
