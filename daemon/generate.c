/* generate.c: generation steps.
 *
 * A generate first scores the end of the session's text (its held tail,
 * tokenized as final); the NLLs of those tokens go to the client in one
 * reply before the first token. Then each step runs the session's last id
 * alone, and its token comes back picked by the last stage where the
 * logits are (greedy, or sampled with a draw of the session's generator
 * that went with the step, sched.c); the token is scored and appended,
 * and its text goes out. (On a lone stage, the steps of a run ahead come
 * back one by one the same way while the stage feeds its picks on;
 * sched.c.) The client acknowledges
 * tokens (op ack); at most its window run ahead of what it has read, so a
 * stalled reader stalls only its own session.
 *
 * A generation ends after n tokens, at one of the model's eos ids (unless
 * ignore_eos; that token is the session's, its text is not sent), or where
 * a stop string completes in the text it made (stop.h: text that may
 * begin one is held back until settled; the stop string and what follows
 * are not sent, the tokens stay the session's). The final reply says which.
 */
#include "daemon.h"
#include "err.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

int sepd_gen_ready(const sepd_t *d, const sep_session_t *s)
{
    const sep_op_t *op = &s->op;
    return op->kind == SEP_SOP_GENERATE && op->left > 0 && op->tail_sent && !s->gen_inflight &&
           s->sent == 0 && s->q_len == 1 && op->made - op->acked < op->window &&
           (!op->peer_len || !sepd_outbox_waiting(d->out, op->peer, op->peer_len));
}

int sepd_gen_progress(sepd_t *d, sep_session_t *s)
{
    sep_op_t *op = &s->op;
    if (!op->tail_sent) {
        if (s->sent || sep_session_runnable(s))
            return 0; /* the text's end is still being scored */
        op->tail_sent = 1;
        if (op->want_nll)
            sepd_op_reply(d, s, SEP_OP_GENERATE,
                          json_pack("{s:b, s:I}", "text_end", 1, "nlls", (json_int_t)s->out_n));
    }
    if (op->left > 0 || s->gen_inflight)
        return 0;
    s->bytes_committed = s->bytes_tokenized;
    static const char *const ends[] = { "length", "eos", "stop" };
    json_t *x = json_pack("{s:b, s:s, s:I}", "done", 1, "stop",
                          op->error[0] ? op->error : ends[op->stopped], "generated",
                          (json_int_t)op->made);
    if (x && !op->error[0] && op->stopped == SEP_GEN_EOS) {
        json_object_set_new(x, "stop_token", json_integer(op->stop_token));
    } else if (x && !op->error[0] && op->stopped == SEP_GEN_STOP) {
        size_t len;
        const char *str = sep_stop_string(op->stop, op->stop_hit, &len);
        json_object_set_new(x, "stop_string", json_stringn(str, len));
        json_object_set_new(x, "stop_index", json_integer(op->stop_hit));
    }
    sepd_op_reply(d, s, SEP_OP_GENERATE, x);
    return sepd_op_finish(d, s);
}

int sepd_gen_stops(sepd_t *d, const sep_msg_t *m, sep_stop_t **stop, int *ignore_eos)
{
    json_t *ie = json_object_get(m->hdr, "ignore_eos"), *list = json_object_get(m->hdr, "stop");
    char why[400] = "";
    *stop = NULL;
    *ignore_eos = json_is_true(ie);
    if (ie && !json_is_boolean(ie)) {
        snprintf(why, sizeof why, "generate: ignore_eos: true or false");
    } else if (list && (!json_is_array(list) || json_array_size(list) > SEP_STOP_MAX)) {
        snprintf(why, sizeof why, "generate: stop: a list of at most %d strings", SEP_STOP_MAX);
    } else if (json_array_size(list) && sep_stop_new(stop)) {
        sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_INTERNAL, "generate: %s",
                   sep_errmsg());
        return -1;
    }
    for (size_t i = 0; !why[0] && i < json_array_size(list); i++) {
        json_t *x = json_array_get(list, i);
        if (!json_is_string(x))
            snprintf(why, sizeof why, "generate: stop[%zu]: not a string", i);
        else if (sep_stop_add(*stop, json_string_value(x), json_string_length(x)))
            snprintf(why, sizeof why, "generate: stop[%zu]: %s", i, sep_errmsg());
    }
    if (!why[0])
        return 0;
    sep_stop_destroy(stop);
    sepd_error(d, m->peer, m->peer_len, m->op, SEP_ERR_BAD_REQUEST, "%s", why);
    return -1;
}

static int gen_is_eos(const sepd_t *d, int32_t tok)
{
    for (int i = 0; i < d->n_eos; i++)
        if (d->eos[i] == tok)
            return 1;
    return 0;
}

/* The text a generated token adds after prev, less what the stop strings
 * hold back or cut; an eos id adds none and ends the generation. */
static void gen_emit(sepd_t *d, sep_session_t *s, int32_t prev, int32_t tok, float nll)
{
    sep_op_t *op = &s->op;
    char *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    int32_t pair[2] = { prev, tok };
    int eos = !op->ignore_eos && gen_is_eos(d, tok);
    if (eos || sep_tok_decode(d->tok, pair, 1, &a, &la) ||
        sep_tok_decode(d->tok, pair, 2, &b, &lb))
        lb = la = 0;
    /* the pair may decode differently at the seam; fall back to the token */
    size_t skip = b && lb >= la && memcmp(a, b, la) == 0 ? la : 0;
    const char *text = b ? b + skip : "";
    size_t len = b ? lb - skip : 0;
    if (eos) {
        op->stopped = SEP_GEN_EOS;
        op->stop_token = tok;
        op->left = 0;
    }
    int hit = -1;
    if (op->stop && sep_stop_feed(op->stop, text, len, op->left == 0, &text, &len, &hit)) {
        sepd_op_error(d, s, SEP_ERR_INTERNAL, "session '%s': generate: %s", s->name,
                      sep_errmsg());
        op->peer_len = 0; /* its client has its answer; the op ends once idle */
        op->left = 0;
    } else if (hit >= 0) {
        op->stopped = SEP_GEN_STOP;
        op->stop_hit = hit;
        op->left = 0;
    }
    json_t *h = json_pack("{s:s, s:b, s:i, s:f, s:I, s:I}", "op", SEP_OP_GENERATE, "ok", 1,
                          "token", tok, "nll", (double)nll, "i", (json_int_t)s->op.made,
                          "left", (json_int_t)s->op.left);
    sep_frame_t f = { text, len };
    if (s->op.peer_len)
        sepd_send(d, s->op.peer, s->op.peer_len, h, &f, 1);
    else
        json_decref(h);
    free(a);
    free(b);
}

void sepd_generated(sepd_t *d, sep_session_t *s, int32_t next, float next_nll, int32_t kv)
{
    int32_t tok = next, prev = s->q[0];
    float nll = next_nll;
    s->gen_inflight = 0;
    int rc = tok < 0 ? sep_fail(SEP_EINVAL, "the logits are NaN or +inf, or no id the "
                                "tokenizer has is finite")
             : tok >= d->id_limit ? sep_fail(SEP_EIO, "the last stage picked id %d, past the "
                                             "tokenizer's %d", tok, d->id_limit)
                                  : SEP_OK;
    /* the step ran: its id is in the cache, so its token is the stream's
     * even when nobody waits for it any more */
    if (rc || sep_session_scored(s, 1, &nll, &kv, 0) || sep_session_push(s, tok)) {
        char why[512];
        snprintf(why, sizeof why, "generate: %s", sep_errmsg());
        sepd_session_failed(d, s, why);
        return;
    }
    if (s->op.kind != SEP_SOP_GENERATE || s->op.left <= 0)
        return;
    s->op.left--;
    s->op.made++;
    gen_emit(d, s, prev, tok, nll);
}
