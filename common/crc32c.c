/* crc32c.c: CRC-32C with the SSE4.2 crc32 instruction, tables elsewhere.
 *
 * The hardware path follows Mark Adler's crc32c.c: three streams of LONG
 * (then SHORT) bytes run side by side and are joined by "shifting" the
 * CRC of one stream over the bytes of the next with a precomputed GF(2)
 * operator, four table lookups.
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#define POLY 0x82f63b78u /* CRC-32C, reflected */
#define LONG 8192        /* bytes of each of three streams, long runs */
#define SHORT 256        /* the same for what is left */

static uint32_t sw_table[8][256];
static uint32_t zeros_long[4][256], zeros_short[4][256];
static int hw_ok;
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* The data has any alignment: memcpy compiles to one unaligned load. */
static inline uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* --- GF(2) operators that append zero bytes to a CRC ------------------ */

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        square[n] = gf2_times(mat, mat[n]);
}

/* The operator for len zero bytes (len a power of two), as four tables
 * indexed by the bytes of the CRC it is applied to. */
static void zeros_table(uint32_t zeros[4][256], size_t len)
{
    uint32_t odd[32], even[32], *op;
    odd[0] = POLY; /* one zero bit */
    for (int n = 1; n < 32; n++)
        odd[n] = 1u << (n - 1);
    gf2_square(even, odd); /* two bits */
    gf2_square(odd, even); /* four bits */
    /* each square doubles the zeros: one byte, two, four ... len */
    for (;;) {
        gf2_square(even, odd);
        op = even;
        if (!(len >>= 1))
            break;
        gf2_square(odd, even);
        op = odd;
        if (!(len >>= 1))
            break;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int b = 0; b < 4; b++)
            zeros[b][n] = gf2_times(op, n << (8 * b));
}

static inline uint32_t shift(uint32_t zeros[4][256], uint32_t crc)
{
    return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^ zeros[2][(crc >> 16) & 0xff] ^
           zeros[3][crc >> 24];
}

static void init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? (crc >> 1) ^ POLY : crc >> 1;
        sw_table[0][n] = crc;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            sw_table[k][n] = sw_table[0][sw_table[k - 1][n] & 0xff] ^ (sw_table[k - 1][n] >> 8);
    zeros_table(zeros_long, LONG);
    zeros_table(zeros_short, SHORT);
#if defined(__x86_64__)
    __builtin_cpu_init();
    hw_ok = __builtin_cpu_supports("sse4.2") != 0;
#endif
}

/* --- tables: slicing by 8 ---------------------------------------------- */

uint32_t sep_crc32c_sw(uint32_t crc, const void *buf, size_t n)
{
    pthread_once(&once, init);
    const unsigned char *p = buf;
    crc = ~crc;
    for (; n && ((uintptr_t)p & 7); n--)
        crc = sw_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    /* the tables are for little-endian words */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w = load64(p) ^ crc;
        crc = sw_table[7][w & 0xff] ^ sw_table[6][(w >> 8) & 0xff] ^
              sw_table[5][(w >> 16) & 0xff] ^ sw_table[4][(w >> 24) & 0xff] ^
              sw_table[3][(w >> 32) & 0xff] ^ sw_table[2][(w >> 40) & 0xff] ^
              sw_table[1][(w >> 48) & 0xff] ^ sw_table[0][w >> 56];
    }
#endif
    for (; n; n--)
        crc = sw_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* --- SSE4.2 -------------------------------------------------------------- */

#if defined(__x86_64__)
/* n bytes as three streams of len bytes each, while n allows. */
__attribute__((target("sse4.2"))) static uint64_t hw_streams(uint64_t crc0,
                                                             const unsigned char **pp,
                                                             size_t *np, size_t len,
                                                             uint32_t zeros[4][256])
{
    const unsigned char *p = *pp;
    size_t n = *np;
    for (; n >= 3 * len; n -= 3 * len) {
        uint64_t crc1 = 0, crc2 = 0;
        for (const unsigned char *end = p + len; p < end; p += 8) {
            crc0 = __builtin_ia32_crc32di(crc0, load64(p));
            crc1 = __builtin_ia32_crc32di(crc1, load64(p + len));
            crc2 = __builtin_ia32_crc32di(crc2, load64(p + 2 * len));
        }
        p += 2 * len; /* the loop stepped over the first stream only */
        crc0 = shift(zeros, (uint32_t)crc0) ^ crc1;
        crc0 = shift(zeros, (uint32_t)crc0) ^ crc2;
    }
    *pp = p;
    *np = n;
    return crc0;
}

__attribute__((target("sse4.2"))) static uint32_t hw(uint32_t crc, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    for (; n && ((uintptr_t)p & 7); n--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    c = hw_streams(c, &p, &n, LONG, zeros_long);
    c = hw_streams(c, &p, &n, SHORT, zeros_short);
    for (; n >= 8; n -= 8, p += 8)
        c = __builtin_ia32_crc32di(c, load64(p));
    for (; n; n--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

uint32_t sep_crc32c_hw(uint32_t crc, const void *buf, size_t n)
{
    pthread_once(&once, init);
#if defined(__x86_64__)
    if (hw_ok)
        return hw(crc, buf, n);
#endif
    return sep_crc32c_sw(crc, buf, n);
}

int sep_crc32c_hw_available(void)
{
    pthread_once(&once, init);
    return hw_ok;
}

uint32_t sep_crc32c(uint32_t crc, const void *buf, size_t n)
{
    return sep_crc32c_hw(crc, buf, n); /* which falls back to the tables */
}

uint32_t sep_crc32c_copy(void *dst, const void *src, size_t n, uint32_t crc)
{
    /* Copy a piece that stays in L1, then checksum it there: the copy runs
     * at memcpy's speed and the CRC never goes back to memory. A piece is
     * the three long streams of the CRC. */
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n) {
        size_t k = n < 3 * LONG ? n : 3 * LONG;
        memcpy(d, s, k);
        crc = sep_crc32c(crc, d, k);
        d += k;
        s += k;
        n -= k;
    }
    return crc;
}
