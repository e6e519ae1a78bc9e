/*
 * ICMP errors: found through the packet they quote, rewritten with it.
 */
#include "nat_internal.h"

/* ICMP error: find the session through the quoted packet, rewrite it and the
 * outer header. Returns 1 when handled (verdict set). */
int handle_icmp_error(struct nat *nat, struct nat_frame *f, struct pkt *p, uint64_t now)
{
    struct pkt in;
    uint8_t *icmp = p->l4;
    int rc = parse_ip(icmp + 8, p->l4len - 8, &in, 1, p->family);
    if (rc == 0 && in.frag == FRAG_LATER)
        return 0; /* no ports to match: treat as a transit error */
    if (rc == 0) {
        if (in.proto == IPPROTO_TCP_ || in.proto == IPPROTO_UDP_ ||
            is_icmp_proto(in.family, in.proto)) {
            if (in.l4len < 8)
                rc = NAT_C_DROP_ICMP_INNER_BAD;
            else
                rc = parse_l4(&in, 0);
            if (rc)
                rc = NAT_C_DROP_ICMP_INNER_BAD;
        } else {
            return 0;
        }
    }
    if (rc) {
        verdict(nat, f, NAT_DROP, (uint16_t)rc);
        return 1;
    }
    if (!has_ports(&in))
        return 0;
    struct nat_key rk;
    key_reverse(&rk, &in.key);
    uint32_t ref = lookup_live(nat, &rk, now);
    if (ref == NAT_NONE)
        return 0;
    uint32_t idx = ref >> 1;
    int d = (int)(ref & 1);
    struct session *s = &nat->s[idx];
    const struct nat_key *to_in = &s->key[!d];   /* quoted packet becomes key[!d] */
    unsigned alen = p->family == NAT_AF_INET ? 4 : 16;
    uint32_t icmp_acc = 0;

    /* quoted header: addresses (+ its own checksum) */
    uint32_t in_ip_acc = 0;
    uint8_t *isrc = src_field(&in), *idst = dst_field(&in);
    uint8_t orig_in_dst[16];
    memcpy(orig_in_dst, idst, alen);
    put_addr(isrc, to_in->src, alen, &in_ip_acc);
    put_addr(idst, to_in->dst, alen, &in_ip_acc);
    icmp_acc += in_ip_acc;
    if (in.family == NAT_AF_INET && in_ip_acc)
        put_word(in.l3 + 10, csum_apply(ld16(in.l3 + 10), in_ip_acc), &icmp_acc, NULL);
    rewrite_l4(nat, &in, to_in->sport, to_in->dport, in_ip_acc, &icmp_acc);

    /* outer header: goes the way of direction d */
    uint32_t out_acc = 0;
    uint8_t *osrc = src_field(p), *odst = dst_field(p);
    if (memcmp(osrc, orig_in_dst, alen) == 0)
        put_addr(osrc, to_in->dst, alen, &out_acc);   /* error from the final host */
    put_addr(odst, to_in->src, alen, &out_acc);
    if (p->family == NAT_AF_INET) {
        if (out_acc)
            st16(p->l3 + 10, csum_apply(ld16(p->l3 + 10), out_acc));
    } else {
        icmp_acc += out_acc;
    }
    st16(icmp + 2, csum_apply(ld16(icmp + 2), icmp_acc));
    CTR(nat)[NAT_C_ICMP_ERROR_TRANSLATED]++;
    f->session = idx;
    f->serial = nat->s[idx].serial;
    f->dir = (uint8_t)d;
    verdict(nat, f, NAT_FORWARD, NAT_C_TRANSLATED);
    return 1;
}

