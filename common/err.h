/* err.h: error codes and the detail message of the last failure.
 *
 * Every fallible function in sepd returns an int: SEP_OK (0) or a negative
 * SEP_E* code. The failing function also records a one-line message naming
 * what was wrong (file, tensor, field, byte offset) with sep_fail(); callers
 * print it with sep_errmsg(). The message is per thread, like errno, and is
 * valid until the next sep_fail() on that thread.
 */
#ifndef SEP_ERR_H
#define SEP_ERR_H

#include <stddef.h>

enum {
    SEP_OK = 0,
    SEP_ENOMEM = -1,      /* an allocation failed */
    SEP_EIO = -2,         /* a system call on a file or socket failed */
    SEP_EFORMAT = -3,     /* a file or message is malformed, truncated or lying */
    SEP_EUNSUPPORTED = -4,/* well formed, but a feature sepd does not handle */
    SEP_EINVAL = -5,      /* a bad argument or option value */
    SEP_ENOTFOUND = -6,   /* a named thing (tensor, file, session) is absent */
    SEP_EUTF8 = -7,       /* text is not valid UTF-8 */
    SEP_ERANGE = -8,      /* a value outside what the model or cache allows */
    SEP_ENOSPC = -9,      /* a store's map limit is reached, or its disk is full */
    SEP_EAGAIN = -10,     /* it would block: nothing was done, try again later */
    SEP_EPEER = -11,      /* the peer of a message is gone */
};

/* Name of an error code ("malformed input", ...); never NULL. */
const char *sep_strerror(int code);

/* Record a printf-style detail message for code and return code, so a
 * failure reads: return sep_fail(SEP_EFORMAT, "%s: ...", path). The
 * arguments may include sep_errmsg() itself (to add context to the last
 * failure): the message is formatted before the old one is replaced. */
int sep_fail(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The detail of the last sep_fail() on this thread ("" if none). */
const char *sep_errmsg(void);

/* A string from a file, fit for a one-line message: its first 63 bytes
 * in buf (64 bytes), control characters masked as '?'. Returns buf. */
const char *sep_clip(const char *s, char *buf);

#endif
