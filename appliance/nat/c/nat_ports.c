/*
 * Source ports for SNAT and source rewrites: a free one towards a destination.
 */
#include "nat_internal.h"

static inline int port_free(const struct nat *nat, struct nat_key *rev, uint16_t port,
                            uint64_t now)
{
    rev->dport = (uint16_t)((port >> 8) | (port << 8));
    if (nat_session_find(nat, rev, now) != NAT_NONE)
        return 0;
    /* never hand out a port a `real` translation owns on that address */
    if (cls_find(nat->cls, rev->family, rev->dst, rev->proto,
                 is_icmp_proto(rev->family, rev->proto) ? 0 : rev->dport))
        return 0;
    return 1;
}

int nat_alloc_port(const struct nat *nat, struct nat_key *rev, int32_t preferred, uint16_t lo,
                   uint16_t hi, uint64_t salt, uint64_t now_ns)
{
    /* port 0 is no TCP/UDP port (a sender's 0 is not kept, as Linux's NAT
     * does not); an ICMP identifier may be 0 */
    if (preferred >= 0 && preferred <= 0xffff && (preferred || is_icmp_proto(rev->family, rev->proto)) &&
        port_free(nat, rev, (uint16_t)preferred, now_ns))
        return 0;
    if (hi < lo)
        return -1;
    uint32_t range = (uint32_t)hi - lo + 1;
    rev->dport = 0;
    /* The salt (the new flow's hash) gives every flow its own probe order:
     * flows towards one destination share rev except for the port, and a
     * shared order would make each allocation walk all earlier ones. */
    uint64_t h = key_hash64(nat->table_seed ^ salt, rev);
    for (int i = 0; i < NAT_PORT_PROBES; i++) {
        uint16_t port = (uint16_t)(lo + (h % range));
        if (port_free(nat, rev, port, now_ns))
            return 0;
        h = fmix64(h + 0x9e3779b97f4a7c15ULL);
    }
    uint32_t start = (uint32_t)(h % range);
    for (uint32_t j = 0; j < range; j++) {
        uint16_t port = (uint16_t)(lo + (start + j) % range);
        if (port_free(nat, rev, port, now_ns))
            return 0;
    }
    return -1;
}


int nat_set_source_ports(struct nat *nat, uint16_t lo, uint16_t hi)
{
    if (lo > hi || lo < NAT_PORT_LO)
        return -1;
    nat->src_lo = lo;
    nat->src_hi = hi;
    return 0;
}

void nat_clear_source_ports(struct nat *nat)
{
    nat->src_lo = nat->src_hi = 0;
}
