/*
 * Rewriting a packet to a session's key, checksums updated incrementally.
 */
#include "nat_internal.h"

/* Rewrite the L4 ports/identifier to (sport, dport) and fix the L4 checksum
 * given the pseudo-header change in pseudo_acc. Words changed are also
 * recorded in outer (may be NULL). avail limits what exists (quoted packets). */
void rewrite_l4(struct nat *nat, struct pkt *p, uint16_t sport, uint16_t dport,
                       uint32_t pseudo_acc, uint32_t *outer)
{
    uint8_t *l4 = p->l4;
    uint32_t n = p->l4len;
    uint32_t acc = 0;
    if (p->frag == FRAG_LATER)
        return;
    if (p->proto == IPPROTO_TCP_ || p->proto == IPPROTO_UDP_) {
        put_word(l4, sport, &acc, outer);
        put_word(l4 + 2, dport, &acc, outer);
        acc += pseudo_acc;
        if (p->proto == IPPROTO_TCP_) {
            if (n >= 18)
                put_word(l4 + 16, csum_apply(ld16(l4 + 16), acc), outer, NULL);
        } else {
            uint16_t c = ld16(l4 + 6);
            if (c == 0 && p->family == NAT_AF_INET) {
                CTR(nat)[NAT_C_UDP_ZERO_CSUM]++;  /* RFC 768: 0 = no checksum */
            } else {
                uint16_t nc = csum_apply(c, acc);
                if (nc == 0)
                    nc = 0xffff;   /* RFC 768: a computed 0 is sent as all ones */
                put_word(l4 + 6, nc, outer, NULL);
            }
        }
    } else if (p->icmp == ICMPK_ECHO_REQ || p->icmp == ICMPK_ECHO_REP) {
        put_word(l4 + 4, p->icmp == ICMPK_ECHO_REQ ? sport : dport, &acc, outer);
        if (p->family == NAT_AF_INET6)
            acc += pseudo_acc;   /* ICMPv6 covers a pseudo-header, ICMPv4 does not */
        put_word(l4 + 2, csum_apply(ld16(l4 + 2), acc), outer, NULL);
    }
}

/* Rewrite the IP addresses (and the IPv4 header checksum); returns the
 * pseudo-header change for the L4 checksum. */
uint32_t rewrite_addrs(struct pkt *p, const uint8_t *src, const uint8_t *dst)
{
    unsigned alen = p->family == NAT_AF_INET ? 4 : 16;
    uint32_t acc = 0;
    put_addr(src_field(p), src, alen, &acc);
    put_addr(dst_field(p), dst, alen, &acc);
    if (p->family == NAT_AF_INET && acc)
        st16(p->l3 + 10, csum_apply(ld16(p->l3 + 10), acc));
    return acc;
}

/* Rewrite a packet so its tuple becomes `to`. */
void rewrite_packet(struct nat *nat, struct pkt *p, const struct nat_key *to)
{
    uint32_t acc = rewrite_addrs(p, to->src, to->dst);
    rewrite_l4(nat, p, to->sport, to->dport, acc, NULL);
}

