/* utf8.h: the one check of text for UTF-8 that sepd has.
 *
 * Valid is what Rust's str::from_utf8 and Python's strict decode accept:
 * no byte that cannot start or continue a character (0x80..0xBF as a
 * first byte, 0xC0, 0xC1, 0xF5..0xFF), no overlong form, no surrogate
 * (U+D800..U+DFFF), nothing above U+10FFFF. An invalid sequence is the
 * longest start of a character that could still be valid, or the one bad
 * byte (Unicode's maximal subpart, what from_utf8_lossy replaces with one
 * U+FFFD); the offset of its first byte is the one Python reports as
 * "position N". The tokenizer checks its input with this, so callers that
 * check text first agree with it byte for byte.
 */
#ifndef SEP_UTF8_H
#define SEP_UTF8_H

#include <stddef.h>

/* Scan len bytes of s. Returns SEP_OK when they are UTF-8 except maybe an
 * incomplete character at their end: *ok_len is then the length of the
 * longest prefix of whole characters (len - *ok_len is 0..3). Invalid UTF-8
 * (a byte that cannot start or continue a character, an overlong form, a
 * surrogate, a code point above U+10FFFF): SEP_EUTF8 with *ok_len the offset
 * of the first byte of the first invalid sequence; nothing is written to
 * the error message (callers name the offset in their own terms). */
int sep_utf8_scan(const char *s, size_t len, size_t *ok_len);

/* What is wrong with the sequence at s, where sep_utf8_scan stopped (len
 * bytes known from s on), in words for a message, e.g. "0xC3 is not
 * followed by a continuation byte" or, for an incomplete character, "0xE2
 * 0x82 is cut off by the end of the text". Written to buf (cap bytes,
 * NUL-terminated, cut to fit); returns buf. */
const char *sep_utf8_why(const char *s, size_t len, char *buf, size_t cap);

#endif
