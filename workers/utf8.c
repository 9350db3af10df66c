/* utf8.c: UTF-8 for the tokenizer: what a valid character is (as Rust's
 * from_utf8 and Python's strict decode say), writing one, and Unicode
 * White_Space. */
#include "tok_internal.h"

/* Length of the valid UTF-8 character at s (avail > 0 bytes left) and its
 * code point in *cp, or 0 if invalid with *bad the length of the maximal
 * invalid prefix (one U+FFFD each, as Rust's from_utf8_lossy replaces). */
size_t utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp,
                   size_t *bad)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    uint32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xC2 || c > 0xF4) {
        *bad = 1;
        return 0;
    }
    if (c < 0xE0) {
        need = 1;
        v = c & 0x1F;
    } else if (c < 0xF0) {
        need = 2;
        v = c & 0x0F;
        lo = c == 0xE0 ? 0xA0 : 0x80;  /* overlong */
        hi = c == 0xED ? 0x9F : 0xBF;  /* surrogates */
    } else {
        need = 3;
        v = c & 0x07;
        lo = c == 0xF0 ? 0x90 : 0x80;  /* overlong */
        hi = c == 0xF4 ? 0x8F : 0xBF;  /* above U+10FFFF */
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= avail || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        v = v << 6 | (s[i] & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = v;
    return need + 1;
}

size_t utf8_put(char *d, uint32_t cp)
{
    unsigned char *o = (unsigned char *)d;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

bool utf8_valid(const char *s, size_t n)
{
    uint32_t cp;
    size_t bad, l;
    for (size_t i = 0; i < n; i += l)
        if (!(l = utf8_decode((const unsigned char *)s + i, n - i, &cp, &bad)))
            return false;
    return true;
}

/* Rust's char::is_whitespace (Unicode White_Space). */
bool is_ws(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
