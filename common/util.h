/* util.h: small helpers every program of sepd uses: a whole number from
 * text (options, config values), the monotonic clock, a transfer's rate
 * for the log. */
#ifndef SEP_UTIL_H
#define SEP_UTIL_H

#include <stddef.h>

/* s as a whole number in lo..hi; else SEP_EINVAL with the message
 * "WHAT: 'S' is not a whole number in LO..HI". */
int sep_parse_long(const char *what, const char *s, long lo, long hi, long *out);

/* Seconds on the monotonic clock (intervals, deadlines). */
double sep_now(void);

/* "16.1 GB in 2.90 s (5.5 GB/s)" into buf (cap bytes), in MB below a
 * GB: bytes moved in s seconds. Returns buf. */
const char *sep_rate_str(char *buf, size_t cap, double bytes, double s);

#endif
