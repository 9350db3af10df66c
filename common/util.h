/* util.h: small helpers every program of sepd uses: a whole number from
 * text (options, config values) and the monotonic clock. */
#ifndef SEP_UTIL_H
#define SEP_UTIL_H

/* s as a whole number in lo..hi; else SEP_EINVAL with the message
 * "WHAT: 'S' is not a whole number in LO..HI". */
int sep_parse_long(const char *what, const char *s, long lo, long hi, long *out);

/* Seconds on the monotonic clock (intervals, deadlines). */
double sep_now(void);

#endif
