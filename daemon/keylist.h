/* keylist.h: lists of CURVE public keys, sepd's allowed_keys and
 * worker_keys (sepd.conf(5), docs/security.md).
 *
 * A list is a file or a folder. A file holds a key per line: 40 Z85
 * characters at the line's start (after blanks), then a blank, a '#' or
 * the end, and anything after that is a comment; '#' lines and blank lines
 * are skipped ('#' may also start a key: a line is tried as a key first);
 * any other line is an error naming the file and the line. A folder's
 * *.pub files (not hidden ones) give the first key of each. The order is
 * the files', and a key listed twice is there twice.
 */
#ifndef SEPD_KEYLIST_H
#define SEPD_KEYLIST_H

#include <stddef.h>

#include "keys.h"

typedef struct {
    char (*key)[SEP_KEY_Z85 + 1]; /* (n) Z85, NUL-terminated */
    size_t n, cap;
} sepd_keylist_t;

/* The keys of path (a file or a folder, above) into l, which is set
 * empty first; on failure l is empty and the error names the file and
 * line (SEP_EIO, SEP_EFORMAT, SEP_ENOMEM). */
int sepd_keys_load(sepd_keylist_t *l, const char *path);

/* Whether key (Z85) is in l. */
int sepd_keys_has(const sepd_keylist_t *l, const char *key);

/* Free l's keys; it is empty after. */
void sepd_keys_free(sepd_keylist_t *l);

#endif
