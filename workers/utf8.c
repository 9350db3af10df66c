/* utf8.c: UTF-8 validation (the strict rules of Rust's from_utf8). */
#include "utf8.h"
#include "err.h"

int sep_utf8_scan(const char *text, size_t len, size_t *ok_len)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i], lo = 0x80, hi = 0xBF;
        size_t need;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c < 0xC2 || c > 0xF4)
            break;
        need = c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
        else if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
        size_t k;
        for (k = 1; k <= need && i + k < len; k++) {
            if (s[i + k] < lo || s[i + k] > hi)
                break;
            lo = 0x80;
            hi = 0xBF;
        }
        if (k <= need && i + k < len)
            break; /* a byte that does not continue the character */
        if (k <= need) {
            *ok_len = i; /* cut at the end inside a character */
            return SEP_OK;
        }
        i += need + 1;
    }
    *ok_len = i;
    return i == len ? SEP_OK : SEP_EUTF8;
}
