/*
 * Internet checksum helpers (RFC 1071 sums, RFC 1624 incremental updates).
 *
 * A one's-complement sum is byte-order independent (RFC 1071 §2(B)), so
 * 16-bit words are loaded and stored in host order and never swapped.
 * Incremental update, RFC 1624 eqn. 3:  HC' = ~(~HC + ~m + m').
 * An accumulator collects (~m + m') for every changed word; with at most a
 * few dozen words per packet it cannot overflow 32 bits.
 */
#ifndef APPLIANCE_CSUM_H
#define APPLIANCE_CSUM_H

#include <stdint.h>
#include <string.h>

static inline uint16_t ld16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static inline uint16_t csum_fold(uint32_t s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* Record the change of one word in an accumulator. */
static inline uint32_t csum_delta16(uint32_t acc, uint16_t old, uint16_t new_)
{
    return acc + (uint16_t)~old + new_;
}

/* Record the change of an n-byte field (n even) without writing it. */
static inline uint32_t csum_delta_bytes(uint32_t acc, const uint8_t *old,
                                        const uint8_t *new_, unsigned n)
{
    for (unsigned i = 0; i < n; i += 2)
        acc = csum_delta16(acc, ld16(old + i), ld16(new_ + i));
    return acc;
}

/* Apply an accumulator to a checksum value. */
static inline uint16_t csum_apply(uint16_t hc, uint32_t acc)
{
    return (uint16_t)~csum_fold((uint32_t)(uint16_t)~hc + csum_fold(acc));
}

/* Plain sum of n bytes (an odd last byte is padded with zero), to verify
 * short headers or to compute a checksum afresh: ~csum_fold(sum). Up to
 * 64 KiB cannot overflow 32 bits. */
static inline uint32_t csum_sum(const uint8_t *p, unsigned n)
{
    uint32_t s = 0;
    for (unsigned i = 0; i + 1 < n; i += 2)
        s += ld16(p + i);
    if (n & 1) {
        uint8_t last[2] = {p[n - 1], 0};
        s += ld16(last);
    }
    return s;
}

#endif
