/* generate.c: generation steps.
 *
 * A generate first scores the end of the session's text (its held tail,
 * tokenized as final); the NLLs of those tokens go to the client in one
 * reply before the first token. Then each step runs the session's last id
 * alone, and its token comes back picked by the last stage where the
 * logits are (greedy, or sampled with a draw of the session's generator
 * that went with the step, sched.c); the token is scored and appended,
 * and its text goes out. The client acknowledges
 * tokens (op ack); at most its window run ahead of what it has read, so a
 * stalled reader stalls only its own session.
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
    if (op->error[0]) {
        json_t *x = json_pack("{s:b, s:s, s:I}", "done", 1, "stop", op->error, "generated",
                              (json_int_t)op->made);
        sepd_op_reply(d, s, SEP_OP_GENERATE, x);
    } else {
        sepd_op_reply(d, s, SEP_OP_GENERATE,
                      json_pack("{s:b, s:s, s:I}", "done", 1, "stop", "length", "generated",
                                (json_int_t)op->made));
    }
    return sepd_op_finish(d, s);
}

/* The text a generated token adds after prev. */
static void gen_emit(sepd_t *d, sep_session_t *s, int32_t prev, int32_t tok, float nll)
{
    char *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    int32_t pair[2] = { prev, tok };
    if (sep_tok_decode(d->tok, pair, 1, &a, &la) || sep_tok_decode(d->tok, pair, 2, &b, &lb))
        lb = la = 0;
    /* the pair may decode differently at the seam; fall back to the token */
    size_t skip = lb >= la && memcmp(a, b, la) == 0 ? la : 0;
    json_t *h = json_pack("{s:s, s:b, s:i, s:f, s:I, s:I}", "op", SEP_OP_GENERATE, "ok", 1,
                          "token", tok, "nll", (double)nll, "i", (json_int_t)s->op.made,
                          "left", (json_int_t)s->op.left);
    sep_frame_t f = { b ? b + skip : "", b ? lb - skip : 0 };
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
