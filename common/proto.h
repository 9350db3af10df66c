/* proto.h: the messages between sepctl, sepd and sepd-worker.
 *
 * A message is one ZeroMQ multipart message: a JSON object (the header,
 * with "v": SEP_PROTO_VERSION and "op"), then the binary frames its op
 * names (text, ids, NLLs, cache states), each a plain little-endian
 * array. On a ROUTER socket the peer's routing id comes first. The ops
 * and their frames are written down in docs/protocol.md; the names here
 * are the only spelling of them in the code.
 */
#ifndef SEP_PROTO_H
#define SEP_PROTO_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define SEP_PROTO_VERSION 2        /* 2: generate's stop, ignore_eos and its eos stop */
#define SEP_WORKER_REVISION 3      /* of the worker ops (hello's "revision"): 2, the last
                                      stage picks the tokens of generation; 3, a lone
                                      stage runs generation steps ahead (w_step, w_yield) */
#define SEP_AHEAD_MAX 1024         /* steps one run ahead may be granted (decode_ahead) */
#define SEP_NAME_MAX 64            /* bytes of a session name */
#define SEP_FEED_PIECE (1 << 16)   /* most text bytes of one feed message */
#define SEP_FEED_WINDOW 8          /* feed pieces a client may have unacknowledged */
#define SEP_MSG_MAX_FRAMES 8       /* binary frames after the header */
#define SEP_MSG_MAX_HEADER 65536   /* bytes of JSON a header may have */
#define SEP_MSG_MAX_FRAME (2 * SEP_FEED_PIECE) /* the client socket's cap on one frame
                                                  (ZMQ_MAXMSGSIZE): a peer sending more
                                                  is disconnected, at no cost */
#define SEP_WORKER_MSG_SLACK (64 << 20) /* the worker sockets' cap on one frame is the
                                           cache memory of a stage plus this (batches,
                                           archive rows; docs/protocol.md) */
#define SEP_MAX_STAGES 64          /* pipeline stages: ranks fit a 64-bit set */
#define SEP_GEN_WINDOW 64          /* generated tokens a client may have unacknowledged */
#define SEP_STOP_MAX 16            /* stop strings of one generate */
#define SEP_STOP_LEN 256           /* bytes of one stop string, at most */

/* client -> sepd */
#define SEP_OP_OPEN "open"
#define SEP_OP_FEED "feed"           /* frame: text bytes */
#define SEP_OP_FEED_END "feed_end"
#define SEP_OP_PING "ping"           /* answered with "pong" */
#define SEP_OP_PONG "pong"
#define SEP_OP_GENERATE "generate"
#define SEP_OP_LS "ls"
#define SEP_OP_INFO "info"
#define SEP_OP_STATS "stats"
#define SEP_OP_SUSPEND "suspend"
#define SEP_OP_RESUME "resume"
#define SEP_OP_FLUSH "flush"
#define SEP_OP_CLOSE "close"
#define SEP_OP_SEPS "seps"           /* the separator archive */
#define SEP_OP_EXPORT "export"       /* a suspended session, as one stream */
#define SEP_OP_IMPORT "import"       /* such a stream, as a new session */
#define SEP_OP_IMPORT_END "import_end"
#define SEP_OP_CANCEL "cancel"       /* stop the sender's operation on its session */
#define SEP_OP_SHARE "share"         /* mark a session shared, or its owner's alone */
#define SEP_OP_ACK "ack"             /* generate: "tokens" received so far */
#define SEP_OP_HEARTBEAT "heartbeat" /* sepd -> client, unasked: ignore it */

/* sepd -> worker (and the worker's replies) */
#define SEP_OP_HELLO "hello"         /* worker -> sepd, once */
#define SEP_OP_W_OPEN "w_open"       /* frame: separator ids (int32) */
#define SEP_OP_W_BATCH "w_batch"     /* frames: ids, targets (int32), picks, recent ids,
                                        holes (int32) */
#define SEP_OP_W_DONE "w_done"       /* frames: nll (f32), kv (int32), picked token
                                        (int32), its nll (f32); a run ahead's "steps" */
#define SEP_OP_W_STEP "w_step"       /* worker -> sepd: one step of a run ahead, the
                                        worker goes on (frames: kv, token (int32), its
                                        nll (f32)) */
#define SEP_OP_W_YIELD "w_yield"     /* sepd -> worker: end the run ahead of batch seq
                                        after the step under way (no reply of its own) */
#define SEP_OP_W_SAVE "w_save"       /* reply frame: the cache state */
#define SEP_OP_W_ARCHIVE "w_archive" /* worker -> sepd: evicted separators (frames:
                                        sid, pos, id, K, V) */
#define SEP_OP_W_LOAD "w_load"       /* frames: separator ids, cache state */
#define SEP_OP_W_CLOSE "w_close"
#define SEP_OP_W_STATS "w_stats"
#define SEP_OP_W_EXIT "w_exit"
#define SEP_OP_W_ERROR "w_error"     /* worker -> sepd: an op failed */

/* error codes of replies ("code") */
#define SEP_ERR_BAD_REQUEST "bad_request"
#define SEP_ERR_NOT_FOUND "not_found"
#define SEP_ERR_EXISTS "exists"
#define SEP_ERR_BUSY "busy"
#define SEP_ERR_STATE "bad_state"
#define SEP_ERR_INPUT "bad_input"     /* text that is not UTF-8 */
#define SEP_ERR_TOO_LARGE "too_large" /* a frame or piece over its limit */
#define SEP_ERR_LIMIT "limit"
#define SEP_ERR_CANCELLED "cancelled" /* the operation was stopped before its end */
#define SEP_ERR_UNAVAILABLE "unavailable" /* sepd is stopping, or lost a worker */
#define SEP_ERR_WORKER_FAULT "worker_fault" /* the workers failed: the session is back at
                                              bytes_committed (the error says it) */
#define SEP_ERR_INTERNAL "internal"
#define SEP_ERR_DENIED "denied"       /* the session belongs to another identity */
#define SEP_USER_MAX 64               /* bytes of an identity, its NUL included */

typedef struct {
    const void *data;
    size_t len;
} sep_frame_t;

/* A received message. Frames point into ZeroMQ's buffers until
 * sep_msg_close(); each frame's data is aligned to SEP_FRAME_ALIGN bytes
 * (sep_msg_recv copies one ZeroMQ hands out misaligned), so its int32,
 * float and int64 arrays are read in place. */
#define SEP_FRAME_ALIGN 8
typedef struct {
    uint8_t peer[256];      /* routing id (ROUTER sockets) */
    size_t peer_len;
    char user[SEP_USER_MAX]; /* the sender's identity: the ZAP handler's User-Id of its
                                connection ("key:Z85", "uid:N"; daemon/auth.h), "" if none */
    json_t *hdr;            /* the header object (owned) */
    const char *op;         /* hdr's "op" */
    int n_frames;
    sep_frame_t frames[SEP_MSG_MAX_FRAMES];
    void *zmsgs;            /* the zmq_msg_t of the frames */
} sep_msg_t;

/* Receive one message; routed: the socket is a ROUTER (peer id first).
 * flags: 0 or ZMQ_DONTWAIT. A malformed message (bad JSON, no "op", a
 * version other than ours, too many frames) is consumed whole and fails
 * with SEP_EFORMAT; m->peer is still set so the sender can be answered. */
int sep_msg_recv(void *sock, int routed, sep_msg_t *m, int flags);
void sep_msg_close(sep_msg_t *m);

/* Take frame i out of m without a copy: its bytes stay valid after
 * sep_msg_close(m) until sep_frame_release(the handle returned); NULL when
 * out of memory. The handle may be released on another thread. */
void *sep_msg_take_frame(sep_msg_t *m, int i);
const void *sep_frame_data(void *handle);
void sep_frame_release(void *handle);

/* Send hdr (its "v" is set here; the reference is kept by the caller)
 * and n frames; peer/peer_len route it on a ROUTER socket (NULL: none).
 * Blocks while the peer's pipe is full. On a ROUTER with
 * ZMQ_ROUTER_MANDATORY a peer that is gone is SEP_EPEER (nothing sent);
 * without it ZeroMQ drops such a message and this returns SEP_OK. */
int sep_msg_send(void *sock, const void *peer, size_t peer_len, json_t *hdr,
                 const sep_frame_t *frames, int n);

/* hdr with "v" set, as the compact JSON text a message carries
 * (malloc'ed; NULL when out of memory). */
char *sep_msg_header_text(json_t *hdr);

/* Send a header already written as text, and n frames. flags: 0, or
 * ZMQ_DONTWAIT: a peer whose pipe is full is then SEP_EAGAIN with nothing
 * sent (a ROUTER checks room on the routing frame, so a message goes
 * whole or not at all). SEP_EPEER: the peer is gone (ROUTER_MANDATORY). */
int sep_msg_send_text(void *sock, const void *peer, size_t peer_len, const char *hdr,
                      size_t hdr_len, const sep_frame_t *frames, int n, int flags);

/* sep_msg_send, where the frames whose bit is set in owned hold malloc'ed
 * data that passes to ZeroMQ without a copy (a cache state of hundreds of
 * MB): it is freed once sent, or here if the send fails, and the caller
 * must not touch it after the call. */
int sep_msg_send_owned(void *sock, const void *peer, size_t peer_len, json_t *hdr,
                       const sep_frame_t *frames, int n, uint32_t owned);

/* The same with lent frames: each whose bit is set in lent goes without a
 * copy and release(its data, hint) is called once ZeroMQ is done with it,
 * on one of ZeroMQ's threads (or here, before the return, if the send
 * fails); release must be safe there. */
int sep_msg_send_lent(void *sock, const void *peer, size_t peer_len, json_t *hdr,
                      const sep_frame_t *frames, int n, uint32_t lent,
                      void (*release)(void *data, void *hint), void *hint);

/* A session name as stored: 1..SEP_NAME_MAX bytes of [A-Za-z0-9._-]. */
int sep_name_ok(const char *name);

/* A new session's name (open, import): as sep_name_ok, and not starting
 * with '.' or '-'. 0, or -1 with why (what is wrong, at most cap bytes). */
int sep_name_check(const char *name, char *why, size_t cap);
#define SEP_NAME_RULE "1 to 64 bytes of A-Z a-z 0-9 . _ -, not starting with '.' or '-'"


/* Header field helpers: absent or mistyped fields give the default. */
const char *sep_hdr_str(const json_t *hdr, const char *key, const char *dflt);
const char *sep_msg_str(const sep_msg_t *m, const char *key, const char *dflt);
int64_t sep_msg_int(const sep_msg_t *m, const char *key, int64_t dflt);
double sep_msg_real(const sep_msg_t *m, const char *key, double dflt);

#endif
