/* utf8.h: where UTF-8 text stops being UTF-8. */
#ifndef SEP_UTF8_H
#define SEP_UTF8_H

#include <stddef.h>

/* Scan len bytes of s. SEP_OK when they are UTF-8 except maybe an
 * incomplete character at their very end: *ok_len is then the length of
 * the longest prefix of whole characters (len - *ok_len is 0..3).
 * Invalid UTF-8 (a byte that cannot start or continue a character, an
 * overlong form, a surrogate, a code point above U+10FFFF): SEP_EUTF8
 * with *ok_len the offset of the first byte of the first invalid
 * sequence. No message is recorded: callers name the offset in their
 * own terms. */
int sep_utf8_scan(const char *s, size_t len, size_t *ok_len);

#endif
