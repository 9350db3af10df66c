/* fingerprint.h: what a session's saved state was computed with.
 *
 * A checkpoint folder's fingerprint is BLAKE2b-256 (libsodium) over its
 * config.json and tokenizer.json as stored, and, for every tensor in name
 * order, its name, dtype, shape, byte count and three 256-byte samples of
 * its data (start, middle, end). Two folders agree when they have the
 * same architecture, shapes and tokenizer and, as far as the samples can
 * tell, the same weights: a fine-tune of the same base differs. The same
 * weights resharded or renamed files agree. Reads a few pages per tensor,
 * never the whole weights.
 */
#ifndef SEP_FINGERPRINT_H
#define SEP_FINGERPRINT_H

#include <stddef.h>
#include <stdint.h>

#define SEP_FINGERPRINT_BYTES 32

int sep_model_fingerprint(const char *dir, uint8_t out[SEP_FINGERPRINT_BYTES]);

/* The first n bytes of fp as lowercase hex into buf (2n + 1 bytes). */
const char *sep_fingerprint_hex(const uint8_t *fp, size_t n, char *buf);

#endif
