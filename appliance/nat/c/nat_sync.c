/*
 * Session sync's sender side (docs/cluster.md, "Session sync"): which
 * sessions a peer cannot recompute, and their wire records, so that the
 * trio thread's work per synced session is a memcpy, not Python. Called
 * on the writer's thread only (the table is read directly, no seqlock).
 * The layout is appliance/cluster/_wire.py's RECORD.
 */
#include "nat_internal.h"

_Static_assert(NAT_SYNC_RECORD == 2 * sizeof(struct nat_key) + 16, "record layout as in _wire.RECORD");

int nat_sync_collect(struct nat *nat, uint32_t capacity)
{
    uint32_t *out = NULL;
    if (capacity) {
        out = malloc((size_t)capacity * 2 * sizeof *out);
        if (!out)
            return -1;
    }
    free(nat->sync_out);
    nat->sync_out = out;
    nat->sync_cap = capacity;
    nat->sync_len = 0;
    return 0;
}

uint32_t nat_sync_take(struct nat *nat, uint32_t *index, uint32_t *serial, uint32_t max)
{
    uint32_t n = nat->sync_len < max ? nat->sync_len : max;
    for (uint32_t i = 0; i < n; i++) {
        index[i] = nat->sync_out[2 * i];
        serial[i] = nat->sync_out[2 * i + 1];
    }
    memmove(nat->sync_out, nat->sync_out + 2 * n, (size_t)(nat->sync_len - n) * 2 * sizeof *nat->sync_out);
    nat->sync_len -= n;
    return n;
}

/* Could a peer with our configuration not rebuild this session from its
 * packets? SNAT, a rewritten source or source port, or a translation
 * whose choice is stateful (as _synced.needs_sync says). */
static int needs_sync(const struct session *s, const uint8_t *stateful, uint32_t n_stateful)
{
    if (s->flags & NAT_SF_BYPASS)
        return 0;
    if (s->flags & NAT_SF_SNAT)
        return 1;
    if (!(s->flags & NAT_SF_TRANSLATED) || s->translation >= n_stateful)
        return 0;
    unsigned alen = s->key[0].family == NAT_AF_INET ? 4 : 16;
    if (memcmp(s->key[1].dst, s->key[0].src, alen) || s->key[1].dport != s->key[0].sport)
        return 1;
    return stateful[s->translation];
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t ms_clamped(uint64_t ns)
{
    uint64_t ms = ns / 1000000u;
    return ms > 0xffffffffu ? 0xffffffffu : (uint32_t)ms;
}

static void record(const struct nat *nat, const struct session *s, uint64_t now_ns, uint8_t *r)
{
    memcpy(r, &s->key[0], sizeof s->key[0]);
    memcpy(r + 40, &s->key[1], sizeof s->key[1]);
    put32(r + 80, s->translation);
    r[84] = s->backend >> 8;
    r[85] = s->backend & 0xff;
    r[86] = s->flags;
    r[87] = s->state;
    uint64_t exp = sess_expires(nat, s);
    put32(r + 88, ms_clamped(now_ns > s->last_seen_ns ? now_ns - s->last_seen_ns : 0));
    put32(r + 92, ms_clamped(exp > now_ns ? exp - now_ns : 0));
}

static int alive(const struct nat *nat, const struct session *s, uint64_t now_ns)
{
    return s->in_use && sess_expires(nat, s) > now_ns;
}

uint32_t nat_sync_records(const struct nat *nat, uint32_t *index, uint32_t *serial, uint32_t n,
                          const uint8_t *stateful, uint32_t n_stateful, uint64_t now_ns,
                          uint64_t since_ns, uint8_t *out, uint32_t *n_alive)
{
    uint32_t kept = 0, written = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (index[i] >= nat->max_sessions)
            continue;
        const struct session *s = &nat->s[index[i]];
        if (s->serial != serial[i] || !alive(nat, s, now_ns) || !needs_sync(s, stateful, n_stateful))
            continue;
        index[kept] = index[i];
        serial[kept] = serial[i];
        kept++;
        if (s->last_seen_ns > since_ns)
            record(nat, s, now_ns, out + (size_t)written++ * NAT_SYNC_RECORD);
    }
    *n_alive = kept;
    return written;
}

uint32_t nat_sync_dump(const struct nat *nat, uint32_t *cursor, const uint8_t *stateful,
                       uint32_t n_stateful, uint64_t now_ns, uint8_t *out, uint32_t max)
{
    uint32_t i = *cursor, written = 0;
    for (; i < nat->hwm && written < max; i++) {
        const struct session *s = &nat->s[i];
        if (alive(nat, s, now_ns) && needs_sync(s, stateful, n_stateful))
            record(nat, s, now_ns, out + (size_t)written++ * NAT_SYNC_RECORD);
    }
    *cursor = i < nat->hwm ? i : NAT_NONE;
    return written;
}
