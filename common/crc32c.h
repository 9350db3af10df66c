/* crc32c.h: CRC-32C (Castagnoli), the checksum of everything sepd stores.
 *
 * The standard CRC-32C: reflected polynomial 0x82F63B78, initial value and
 * final xor 0xFFFFFFFF, so sep_crc32c(0, "123456789", 9) == 0xE3069283.
 * Because the pre- and post-conditioning are folded into each call, a CRC
 * runs on in pieces: sep_crc32c(sep_crc32c(0, a, na), b, nb) is the CRC of
 * a followed by b.
 *
 * On x86-64 CPUs with SSE4.2 the crc32 instruction does the work, three
 * independent streams at a time (the instruction's latency is three times
 * its throughput); elsewhere slicing-by-8 tables. The choice is made once,
 * on first use; every call is thread-safe.
 */
#ifndef SEP_CRC32C_H
#define SEP_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC-32C of n bytes at p, continuing from crc (0 to start). */
uint32_t sep_crc32c(uint32_t crc, const void *p, size_t n);

/* Copy n bytes from src to dst (they must not overlap) and return the
 * CRC-32C of them, continuing from crc: one pass over memory, for copying
 * into storage and out of it while checksumming. */
uint32_t sep_crc32c_copy(void *dst, const void *src, size_t n, uint32_t crc);

/* The two implementations, for tests: the tables, and the SSE4.2
 * instruction where sep_crc32c_hw_available() says the CPU has it (the
 * tables elsewhere). */
uint32_t sep_crc32c_sw(uint32_t crc, const void *p, size_t n);
uint32_t sep_crc32c_hw(uint32_t crc, const void *p, size_t n);
int sep_crc32c_hw_available(void);

#endif
