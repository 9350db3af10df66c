/* utf8.c: UTF-8: what a valid character is (utf8_decode, as Rust's
 * from_utf8 and Python's strict decode say), the check of a text built on
 * it (sep_utf8_scan, utf8.h) and what its messages say, writing a
 * character, and Unicode White_Space. */
#include "utf8.h"

#include <stdio.h>

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

int sep_utf8_scan(const char *s, size_t len, size_t *ok_len)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t cp;
    size_t bad, l;
    for (size_t i = 0; i < len; i += l)
        if (!(l = utf8_decode(u + i, len - i, &cp, &bad))) {
            *ok_len = i;
            /* every byte left may still start a character: the end cut it */
            return u[i] >= 0xC2 && u[i] <= 0xF4 && bad == len - i ? SEP_OK : SEP_EUTF8;
        }
    *ok_len = len;
    return SEP_OK;
}

const char *sep_utf8_why(const char *s, size_t len, char *buf, size_t cap)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t cp;
    size_t bad = 1, shown, k = 0;
    const char *what;
    char hex[24];
    if (!len || utf8_decode(u, len, &cp, &bad)) {
        snprintf(buf, cap, "the text is valid there");
        return buf;
    }
    shown = bad;
    if (u[0] < 0xC0)
        what = "is a continuation byte with no character to continue";
    else if (u[0] < 0xC2)
        what = "never occurs in UTF-8 (it could only start an overlong form)";
    else if (u[0] > 0xF4)
        what = u[0] < 0xF8 ? "never occurs in UTF-8 (it could only start a code point "
                             "above U+10FFFF)"
                           : "never occurs in UTF-8";
    else if (bad == len)
        what = "is cut off by the end of the text";
    else if ((u[bad] & 0xC0) != 0x80)
        what = "is not followed by a continuation byte";
    else {
        /* a continuation byte, but outside what the first byte allows
         * second: the pair is named */
        shown = 2;
        what = u[0] == 0xED ? "starts a surrogate (U+D800..U+DFFF)"
             : u[0] == 0xF4 ? "starts a code point above U+10FFFF"
                            : "starts an overlong form";
    }
    for (size_t i = 0; i < shown; i++)
        k += (size_t)snprintf(hex + k, sizeof hex - k, i ? " 0x%02X" : "0x%02X", u[i]);
    snprintf(buf, cap, "%s %s", hex, what);
    return buf;
}

/* Rust's char::is_whitespace (Unicode White_Space). */
bool is_ws(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

size_t ws_back(const char *s, size_t end, size_t floor)
{
    while (end > floor) {
        size_t p = end - 1;
        while (p > floor && ((unsigned char)s[p] & 0xC0) == 0x80)
            p--;
        if (!is_ws(utf8_cp((const unsigned char *)s + p, end - p)))
            break;
        end = p;
    }
    return end;
}
