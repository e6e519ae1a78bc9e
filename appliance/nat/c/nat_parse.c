/*
 * Parsing: one pass over a frame's headers fills a struct pkt.
 */
#include "nat_internal.h"

static int icmp_kind(uint8_t family, uint8_t type)
{
    if (family == NAT_AF_INET) {
        if (type == 8) return ICMPK_ECHO_REQ;
        if (type == 0) return ICMPK_ECHO_REP;
        if (type == 3 || type == 11 || type == 12) return ICMPK_ERROR;
    } else {
        if (type == 128) return ICMPK_ECHO_REQ;
        if (type == 129) return ICMPK_ECHO_REP;
        if (type >= 1 && type <= 4) return ICMPK_ERROR;
    }
    return ICMPK_OTHER;
}

/* Parse an IP header of `family` (the EtherType's, or the outer header's
 * for the packet an ICMP error quotes) at l3 with avail bytes after it.
 * Returns 0 or a drop counter: a header of the other version is a bad
 * header of the expected one. Fills everything in p but the L4 details.
 * Checksum and lengths are not held against the packet an ICMP error
 * quotes (inner: routers may have changed it, and quote only its start). */
int parse_ip(uint8_t *l3, uint32_t avail, struct pkt *p, int inner, uint8_t family)
{
    uint8_t v = avail ? l3[0] >> 4 : 0;
    memset(&p->key, 0, sizeof p->key);
    p->l3 = l3;
    p->frag = FRAG_NONE;
    p->routing_pending = 0;
    p->tcp_flags = 0;
    p->icmp = ICMPK_NONE;
    if (family == NAT_AF_INET) {
        if (avail < 20)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_TRUNCATED;
        if (v != 4)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_BAD_HEADER;
        unsigned hl = (l3[0] & 0x0f) * 4u;
        if (hl < 20)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_BAD_HEADER;
        if (hl > avail)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_TRUNCATED;
        unsigned tot = (unsigned)l3[2] << 8 | l3[3];
        if (tot < hl)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_BAD_LENGTH;
        if (!inner) {
            if (tot > avail)
                return NAT_C_DROP_IP4_BAD_LENGTH;
            if (csum_fold(csum_sum(l3, hl)) != 0xffff)
                return NAT_C_DROP_IP4_BAD_CHECKSUM;
        } else if (tot > avail) {
            tot = avail; /* an ICMP error quotes only the start of it */
        }
        p->family = NAT_AF_INET;
        p->proto = l3[9];
        memcpy(p->key.src, l3 + 12, 4);
        memcpy(p->key.dst, l3 + 16, 4);
        unsigned fo = ((unsigned)(l3[6] & 0x1f) << 8 | l3[7]) * 8u;
        int mf = (l3[6] & 0x20) != 0;
        if (fo)
            p->frag = FRAG_LATER;
        else if (mf)
            p->frag = FRAG_FIRST;
        p->frag_id = (uint32_t)l3[4] << 8 | l3[5];
        p->l4 = l3 + hl;
        p->l4len = tot - hl;
        return 0;
    } else {   /* NAT_AF_INET6: the callers pass no other family */
        if (avail < 40)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
        if (v != 6)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_BAD_HEADER;
        unsigned plen = (unsigned)l3[4] << 8 | l3[5];
        if (plen == 0 && !inner)
            return NAT_C_DROP_IP6_BAD_LENGTH; /* jumbogram (RFC 2675) or empty: not ours */
        if (40 + plen > avail) {
            if (!inner)
                return NAT_C_DROP_IP6_BAD_LENGTH;
            plen = avail - 40;
        }
        p->family = NAT_AF_INET6;
        memcpy(p->key.src, l3 + 8, 16);
        memcpy(p->key.dst, l3 + 24, 16);
        uint8_t nh = l3[6];
        uint8_t *h = l3 + 40;
        uint32_t left = plen;
        int first_hdr = 1;
        for (;;) {
            if (nh == 0 || nh == 43 || nh == 60) {
                if (nh == 0 && !first_hdr)   /* RFC 8200 4.1: hop-by-hop only first */
                    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_BAD_HEADER;
                if (left < 8)
                    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
                uint32_t el = (h[1] + 1u) * 8u;
                if (el > left)
                    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
                if (nh == 43 && h[3] != 0)
                    p->routing_pending = 1;
                nh = h[0];
                h += el;
                left -= el;
            } else if (nh == 44) {
                if (left < 8)
                    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
                unsigned off = ((unsigned)h[2] << 8 | (h[3] & 0xf8));
                int m = h[3] & 1;
                p->frag_id = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
                nh = h[0];
                h += 8;
                left -= 8;
                if (off) {
                    p->frag = FRAG_LATER;
                    break;
                }
                if (m)
                    p->frag = FRAG_FIRST;
            } else {
                break;
            }
            first_hdr = 0;
        }
        p->proto = nh;
        p->l4 = h;
        p->l4len = left;
        return 0;
    }
}

/* L4 ports into p->key. Returns 0, or a drop counter; sets p->icmp. For
 * protocols without ports key.sport/dport stay 0 and p->icmp = OTHER. */
int parse_l4(struct pkt *p, int need_full)
{
    uint8_t *l4 = p->l4;
    uint32_t n = p->l4len;
    p->key.proto = p->proto;
    p->key.family = p->family;
    if (p->frag == FRAG_LATER)
        return 0;
    switch (p->proto) {
    case IPPROTO_TCP_:
        if (n < (need_full ? 20u : 8u))
            return NAT_C_DROP_L4_TRUNCATED;
        p->key.sport = ld16(l4);
        p->key.dport = ld16(l4 + 2);
        if (n >= 14)
            p->tcp_flags = l4[13];
        return 0;
    case IPPROTO_UDP_:
        if (n < 8)
            return NAT_C_DROP_L4_TRUNCATED;
        p->key.sport = ld16(l4);
        p->key.dport = ld16(l4 + 2);
        return 0;
    case IPPROTO_ICMP_:
    case IPPROTO_ICMPV6_:
        if (!is_icmp_proto(p->family, p->proto)) {
            p->icmp = ICMPK_OTHER;
            return 0;
        }
        if (n < 8)
            return NAT_C_DROP_L4_TRUNCATED;
        p->icmp = (uint8_t)icmp_kind(p->family, l4[0]);
        if (p->icmp == ICMPK_ECHO_REQ)
            p->key.sport = ld16(l4 + 4);
        else if (p->icmp == ICMPK_ECHO_REP)
            p->key.dport = ld16(l4 + 4);
        return 0;
    default:
        p->icmp = ICMPK_OTHER;
        return 0;
    }
}

