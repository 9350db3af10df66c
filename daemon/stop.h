/* stop.h: stop strings over a stream of generated text.
 *
 * The text comes in pieces (each generated token's text); the matcher
 * releases what can no longer be part of a stop string and holds back
 * the longest tail that could still begin one, until later pieces settle
 * it. The first stop string to complete in the text ends it: what comes
 * before that occurrence is released, the stop string and everything
 * after it are not. Where several complete at the same byte, the longest
 * wins. So the result does not depend on how the text is cut into
 * pieces: a stop string may span any number of them.
 *
 *     sep_stop_t *m = NULL;
 *     if ((rc = sep_stop_new(&m)) || (rc = sep_stop_add(m, "\n\n", 2)))
 *         ...
 *     rc = sep_stop_feed(m, text, len, last, &out, &out_len, &hit);
 *     // out[0..out_len) goes to the client; hit >= 0: stop string hit
 *     // ended the text; last: no more text comes, nothing is held back
 *     sep_stop_destroy(&m);
 *
 * Stop strings are bytes compared as they are (no normalization).
 */
#ifndef SEP_STOP_H
#define SEP_STOP_H

#include <stddef.h>

#include "proto.h" /* SEP_STOP_MAX stop strings of SEP_STOP_LEN bytes at most */

typedef struct sep_stop sep_stop_t;

int sep_stop_new(sep_stop_t **out);
void sep_stop_destroy(sep_stop_t **self_p);

/* Add a stop string of len bytes: SEP_EINVAL when it is empty or longer
 * than SEP_STOP_LEN, SEP_ERANGE when the matcher has SEP_STOP_MAX. */
int sep_stop_add(sep_stop_t *m, const char *s, size_t len);

/* Stop strings added, and the i-th (its length in *len). */
int sep_stop_count(const sep_stop_t *m);
const char *sep_stop_string(const sep_stop_t *m, int i, size_t *len);

/* The next piece of text. *out, *out_len: the bytes released by it (they
 * may include held bytes of earlier pieces), valid until the next call;
 * *hit: the index of the stop string that completed in it, else -1.
 * last: no text comes after this piece, so nothing is held back. After a
 * hit the matcher takes nothing more (*out_len 0). SEP_ENOMEM, with
 * nothing changed, when the piece does not fit in memory. */
int sep_stop_feed(sep_stop_t *m, const char *text, size_t len, int last, const char **out,
                  size_t *out_len, int *hit);

/* Bytes held back now (a tail that may begin a stop string). */
size_t sep_stop_held(const sep_stop_t *m);

#endif
