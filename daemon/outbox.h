/* outbox.h: replies to clients, in order, never dropped in silence.
 *
 * sepd's client socket is a ROUTER with ZMQ_ROUTER_MANDATORY, so ZeroMQ
 * says what it would otherwise drop: a send to a peer whose pipe is full
 * (a client that reads slowly or not at all) fails with EAGAIN, one to a
 * peer that has gone with EHOSTUNREACH. A reply that cannot go now waits
 * here, every later reply to the same peer queues behind it, and the
 * daemon's loop retries them (sepd_outbox_flush). Flow control keeps the
 * queues short (feed and generate windows, docs/protocol.md); a client
 * that sends requests without reading the replies is bounded by
 * max_msgs: past it its requests are not served but counted, and once it
 * reads again it gets one error saying how many were refused
 * (sepd_outbox_refuse).
 */
#ifndef SEPD_OUTBOX_H
#define SEPD_OUTBOX_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

typedef struct sepd_outbox sepd_outbox_t;

/* An outbox sending on sock (a ROUTER with ZMQ_ROUTER_MANDATORY); a peer
 * may have at most max_msgs replies waiting. */
int sepd_outbox_new(sepd_outbox_t **out, void *sock, size_t max_msgs);
void sepd_outbox_destroy(sepd_outbox_t **self_p);

/* Send hdr (the caller keeps its reference) and n frames to peer, now or,
 * behind what waits for it already, later. SEP_OK: sent or queued.
 * SEP_EPEER: the peer is gone (nothing queued; it stays known as gone
 * until it sends again). SEP_ENOMEM, SEP_EIO: as they say. */
int sepd_outbox_send(sepd_outbox_t *o, const uint8_t *peer, size_t peer_len, json_t *hdr,
                     const sep_frame_t *frames, int n);

/* Replies waiting for peer (0: it reads as fast as sepd writes). */
size_t sepd_outbox_waiting(const sepd_outbox_t *o, const uint8_t *peer, size_t peer_len);

/* Whether a request from peer may be served now: 0 while max_msgs replies
 * wait for it; the request is then counted, and the error that reports
 * the count goes out once the peer's queue has emptied. */
int sepd_outbox_admit(sepd_outbox_t *o, const uint8_t *peer, size_t peer_len);

/* Retry what waits. For each peer found gone, gone(arg, peer, len) is
 * called once. Returns the number of peers that still have replies
 * waiting. */
size_t sepd_outbox_flush(sepd_outbox_t *o, void (*gone)(void *arg, const uint8_t *peer,
                                                       size_t peer_len), void *arg);

#endif
