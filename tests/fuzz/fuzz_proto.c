/* fuzz_proto.c: the protocol's decoder (common/proto.c) on every side.
 *
 * Input: a flags byte, then frames, each a uint16 little-endian length
 * and its bytes (at most 12 frames). Flags bit 0: the message arrives on
 * a ROUTER (sepd's client and worker sockets: a routing id comes first)
 * instead of a DEALER (sepctl, sepd-worker). The frames go over inproc
 * ZeroMQ sockets and sep_msg_recv decodes them; a message it accepts has
 * its header fields read as each op's receiver reads them (docs/protocol.md,
 * every op of proto.h: names, numbers, sampling, picks on the wire, cache
 * states' headers), and a frame taken out of it and released. */
#include "fuzz.h"

#include <string.h>
#include <zmq.h>

#include "cache.h"
#include "err.h"
#include "pick.h"
#include "proto.h"
#include "sample.h"

static void *fz_ctx, *fz_router, *fz_dealer, *fz_pa, *fz_pb;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    int hwm = 0;
    fz_ctx = zmq_ctx_new();
    fz_router = zmq_socket(fz_ctx, ZMQ_ROUTER);
    fz_dealer = zmq_socket(fz_ctx, ZMQ_DEALER);
    fz_pa = zmq_socket(fz_ctx, ZMQ_PAIR);
    fz_pb = zmq_socket(fz_ctx, ZMQ_PAIR);
    if (!fz_router || !fz_dealer || !fz_pa || !fz_pb ||
        zmq_setsockopt(fz_dealer, ZMQ_SNDHWM, &hwm, sizeof hwm) ||
        zmq_setsockopt(fz_router, ZMQ_RCVHWM, &hwm, sizeof hwm) ||
        zmq_bind(fz_router, "inproc://fz-router") ||
        zmq_connect(fz_dealer, "inproc://fz-router") || zmq_bind(fz_pa, "inproc://fz-pair") ||
        zmq_connect(fz_pb, "inproc://fz-pair")) {
        fprintf(stderr, "fuzz_proto: %s\n", zmq_strerror(zmq_errno()));
        abort();
    }
    return 0;
}

static const char *const fz_str_keys[] = { "session", "method", "separators", "archive",
                                           "code", "error", "of", "text", "stop", "why",
                                           "name", "precision", "state" };
static const char *const fz_int_keys[] = { "a", "s", "w", "c", "seq", "sid", "n", "tokens",
                                           "top_k", "penalty_window", "id_limit", "rank",
                                           "revision", "bytes_committed", "from", "to",
                                           "layer", "window", "seed", "max_tokens", "ahead",
                                           "step", "steps" };
static const char *const fz_real_keys[] = { "temperature", "top_p", "min_p",
                                            "repetition_penalty", "presence_penalty",
                                            "frequency_penalty", "nll_sum" };

static const char *const fz_bool_keys[] = { "shared", "nll", "ignore_eos", "ok", "json" };

/* What the receivers of each op read beyond the common fields. */
static void fz_fields(sep_msg_t *m)
{
    const char *name = sep_msg_str(m, "session", NULL);
    if (name) {
        /* a name that a new session may take is one that may be stored */
        char why[160];
        int ok = sep_name_ok(name);
        FUZZ_CHECK(sep_name_check(name, why, sizeof why) || ok,
                   "'%s': a new session's name that sep_name_ok refuses", name);
    }
    for (size_t i = 0; i < sizeof fz_bool_keys / sizeof *fz_bool_keys; i++)
        (void)json_is_true(json_object_get(m->hdr, fz_bool_keys[i]));
    sep_method_t meth;
    (void)sep_method_parse(sep_msg_str(m, "method", "sepllm"), &meth);
    if (!strcmp(m->op, SEP_OP_GENERATE)) {
        sep_pick_t p = { .temperature = (float)sep_msg_real(m, "temperature", 1.0),
                         .top_p = (float)sep_msg_real(m, "top_p", 1.0),
                         .min_p = (float)sep_msg_real(m, "min_p", 0.0),
                         .repetition = (float)sep_msg_real(m, "repetition_penalty", 1.0),
                         .presence = (float)sep_msg_real(m, "presence_penalty", 0.0),
                         .frequency = (float)sep_msg_real(m, "frequency_penalty", 0.0),
                         .limit = 300 };
        int64_t k = sep_msg_int(m, "top_k", 0);
        p.top_k = k < INT32_MIN ? INT32_MIN : k > INT32_MAX ? INT32_MAX : (int)k;
        (void)sep_pick_check(&p, 300);
        json_t *stop = json_object_get(m->hdr, "stop");
        for (size_t i = 0; i < json_array_size(stop); i++)
            (void)json_string_length(json_array_get(stop, i));
    }
    if (!strcmp(m->op, SEP_OP_W_BATCH) && m->n_frames == 7) {
        /* a run ahead (worker revision 3): a draw a step and the eos ids,
         * read as the worker reads them once its checks pass */
        json_t *c0 = json_array_get(json_object_get(m->hdr, "chunks"), 0);
        json_int_t ahead = json_integer_value(json_object_get(c0, "ahead"));
        if (ahead > 1 && ahead <= SEP_AHEAD_MAX && m->frames[5].len == (size_t)ahead * 8 &&
            m->frames[6].len % 4 == 0) {
            const uint64_t *draws = m->frames[5].data;
            const int32_t *eos = m->frames[6].data;
            uint64_t acc = 0;
            for (json_int_t i = 0; i < ahead; i++)
                acc ^= draws[i];
            for (size_t i = 0; i < m->frames[6].len / 4; i++)
                acc += (uint64_t)(uint32_t)eos[i];
            (void)acc;
        }
    }
    if (!strcmp(m->op, SEP_OP_W_BATCH) && m->n_frames >= 5) {
        /* the picks on the wire, as the worker takes them; one that passes
         * sep_pick_check is run on a row of logits */
        size_t n_wire = m->frames[2].len / SEP_PICK_WIRE;
        size_t n_recent = m->frames[3].len / 4, used = 0;
        int32_t *recent = malloc(m->frames[3].len + 4), *holes = malloc(m->frames[4].len + 4);
        FUZZ_CHECK(recent && holes, "memory");
        memcpy(recent, m->frames[3].data, m->frames[3].len);
        memcpy(holes, m->frames[4].data, m->frames[4].len);
        for (size_t i = 0; i < n_wire && i < 16; i++) {
            sep_pick_t p;
            sep_pick_unpack(&p, (const uint8_t *)m->frames[2].data + i * SEP_PICK_WIRE);
            if (p.n_recent < 0 || (size_t)p.n_recent > n_recent - used)
                break;
            p.recent = recent + used;
            p.holes = holes;
            p.n_holes = (int)(m->frames[4].len / 4);
            p.limit = (int)sep_msg_int(m, "id_limit", 300);
            used += (size_t)p.n_recent;
            if (sep_pick_check(&p, 300))
                continue;
            float row[300];
            for (int j = 0; j < 300; j++)
                row[j] = (float)((j * 37) % 101) / 10.0f;
            int32_t tok = -1;
            float nll = 0;
            sep_pick_row(&tok, &nll, row, 300, &p);
            /* -1: no id it may take (every id below the limit a hole), which
             * generate reports as an error (daemon/generate.c) */
            FUZZ_CHECK(tok >= -1 && tok < p.limit, "a checked pick picks an id below its limit "
                       "%d, or none: %d", p.limit, tok);
            for (int h = 0; tok >= 0 && h < p.n_holes; h++)
                FUZZ_CHECK(holes[h] != tok, "the pick %d is a hole", tok);
        }
        free(recent);
        free(holes);
    }
    if ((!strcmp(m->op, SEP_OP_W_LOAD) || !strcmp(m->op, SEP_OP_W_SAVE)) && m->n_frames >= 1) {
        int64_t seen;
        (void)sep_cache_state_seen(m->frames[m->n_frames - 1].data,
                                   m->frames[m->n_frames - 1].len, &seen);
    }
    for (size_t i = 0; i < sizeof fz_str_keys / sizeof *fz_str_keys; i++)
        (void)sep_msg_str(m, fz_str_keys[i], "");
    for (size_t i = 0; i < sizeof fz_int_keys / sizeof *fz_int_keys; i++)
        (void)sep_msg_int(m, fz_int_keys[i], -1);
    for (size_t i = 0; i < sizeof fz_real_keys / sizeof *fz_real_keys; i++)
        (void)sep_msg_real(m, fz_real_keys[i], 0.5);
    json_t *chunks = json_object_get(m->hdr, "chunks");
    for (size_t i = 0; i < json_array_size(chunks); i++)
        (void)sep_hdr_str(json_array_get(chunks, i), "sid", "");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size)
        return 0;
    int routed = data[0] & 1;
    void *tx = routed ? fz_dealer : fz_pb, *rx = routed ? fz_router : fz_pa;
    const uint8_t *p = data + 1, *end = data + size;
    /* the frames first, so a message is sent whole */
    const uint8_t *fr[12];
    size_t fl[12];
    int nf = 0;
    while (nf < 12 && end - p >= 2) {
        size_t len = (size_t)p[0] | (size_t)p[1] << 8;
        p += 2;
        if (len > (size_t)(end - p))
            len = (size_t)(end - p);
        fr[nf] = p;
        fl[nf++] = len;
        p += len;
    }
    if (!nf)
        return 0;
    for (int i = 0; i < nf; i++)
        FUZZ_CHECK(zmq_send(tx, fr[i], fl[i], i + 1 < nf ? ZMQ_SNDMORE : 0) == (int)fl[i],
                   "send: %s", zmq_strerror(zmq_errno()));
    sep_msg_t m;
    int rc = sep_msg_recv(rx, routed, &m, 0);
    int more = 0;
    size_t sz = sizeof more;
    FUZZ_CHECK(!zmq_getsockopt(rx, ZMQ_RCVMORE, &more, &sz) && !more,
               "the whole message is consumed (rc %d)", rc);
    if (rc == SEP_OK) {
        FUZZ_CHECK(m.op && json_is_object(m.hdr) && m.n_frames <= SEP_MSG_MAX_FRAMES,
                   "a decoded message has its op and frames");
        FUZZ_CHECK(memchr(m.user, 0, sizeof m.user), "the sender's identity is terminated");
        for (int i = 0; i < m.n_frames; i++)
            FUZZ_CHECK((uintptr_t)m.frames[i].data % SEP_FRAME_ALIGN == 0,
                       "frame %d aligned for in-place arrays", i);
        fz_fields(&m);
        if (m.n_frames) {
            void *h = sep_msg_take_frame(&m, 0);
            FUZZ_CHECK(h, "take frame");
            sep_msg_close(&m);
            (void)sep_frame_data(h);
            sep_frame_release(h);
        } else {
            sep_msg_close(&m);
        }
    } else {
        FUZZ_CHECK(rc == SEP_EFORMAT, "a bad message is SEP_EFORMAT, not %d", rc);
        sep_msg_close(&m);
    }
    return 0;
}
