/* keys.h: CURVE key files, as sepctl keygen writes them and sepd,
 * sepd-worker and sepctl read them (docs/security.md).
 *
 *   NAME.pub     the public key: 40 Z85 characters and a newline (0644)
 *   NAME.secret  the secret key: 40 Z85 characters and a newline (0600);
 *                the public key is derived from it (zmq_curve_public)
 *
 * A public key argument (--server-key, an allow-list line) is either the
 * 40 characters themselves or the path of a .pub file. A secret file that
 * others may read, or that another user owns, is refused.
 */
#ifndef SEP_KEYS_H
#define SEP_KEYS_H

#define SEP_KEY_Z85 40            /* characters of a key in Z85 */

typedef struct {
    char pub[SEP_KEY_Z85 + 1];    /* Z85, NUL-terminated */
    char sec[SEP_KEY_Z85 + 1];
} sep_keypair_t;

/* Whether s is 40 Z85 characters that decode to a 32-byte key. */
int sep_key_valid(const char *s);

/* A new key pair written as dir/name.pub and dir/name.secret (dir made
 * 0700 when absent); existing files are never overwritten (SEP_EINVAL). */
int sep_key_generate(const char *dir, const char *name, sep_keypair_t *out);

/* The public key that arg gives: 40 Z85 characters, or a file holding
 * them (a .pub file; a .secret file gives its derived public key). */
int sep_key_public(const char *arg, char out[SEP_KEY_Z85 + 1]);

/* The key pair of a secret file. */
int sep_key_pair(const char *secret_path, sep_keypair_t *kp);

/* The first key of a line: 40 Z85 characters at its start (after blanks),
 * followed by a blank, a '#' or the end; 0 and out set, or -1. */
int sep_key_parse_line(const char *line, char out[SEP_KEY_Z85 + 1]);

#endif
