/*
 * drain = reset: a session's next segment goes on as a RST.
 */
#include "nat_internal.h"

/* drain = "reset": the session's next TCP segment, either way, goes on as
 * a RST with that segment's own sequence number (the one its receiver
 * expects next, so it is accepted, RFC 5961 3.2), its payload cut; then the
 * session ends. The sender's next segment finds no session and is placed
 * afresh as a mid-stream flow, whose backend answers it with a RST: both
 * ends are reset. A segment that cannot be cut (a fragment) is dropped. */
int reset_on(struct nat *nat, struct nat_frame *f, struct pkt *p, uint32_t idx)
{
    uint8_t *tcp = p->l4;
    unsigned doff = p->proto == IPPROTO_TCP_ && p->l4len >= 20 ? (unsigned)(tcp[12] >> 4) * 4 : 0;
    if (tls_lane)          /* a lane never frees: the writer will */
        __atomic_fetch_or(&nat->s[idx].flags, NAT_SF_DEAD, __ATOMIC_RELAXED);
    else
        sess_free(nat, idx, 1);
    CTR(nat)[NAT_C_SESSION_REMOVED]++;
    f->session = NAT_NONE;
    if (p->proto != IPPROTO_TCP_ || (doff >= 20 && (tcp[13] & 0x04)))
        return 1;                                    /* a last datagram, or a RST already */
    if (p->frag != FRAG_NONE || doff < 20 || doff > p->l4len)
        return 0;
    unsigned alen = p->family == NAT_AF_INET ? 4 : 16;
    uint32_t l4off = (uint32_t)(tcp - p->l3);
    tcp[13] = (uint8_t)(0x04 | (tcp[13] & 0x10));    /* RST, keeping ACK */
    if (p->family == NAT_AF_INET) {
        unsigned ihl = (unsigned)(p->l3[0] & 0x0f) * 4;
        uint16_t tot = (uint16_t)(l4off + doff);
        p->l3[2] = (uint8_t)(tot >> 8);
        p->l3[3] = (uint8_t)tot;
        p->l3[10] = p->l3[11] = 0;
        st16(p->l3 + 10, (uint16_t)~csum_fold(csum_sum(p->l3, ihl)));
    } else {
        uint16_t plen = (uint16_t)(l4off - 40 + doff);
        p->l3[4] = (uint8_t)(plen >> 8);
        p->l3[5] = (uint8_t)plen;
    }
    uint8_t lenproto[4] = {0, IPPROTO_TCP_, (uint8_t)(doff >> 8), (uint8_t)doff};
    tcp[16] = tcp[17] = 0;
    uint32_t sum = csum_sum(src_field(p), alen) + csum_sum(dst_field(p), alen) + csum_sum(lenproto, 4) + csum_sum(tcp, doff);
    st16(tcp + 16, (uint16_t)~csum_fold(sum));
    f->len = (uint32_t)(p->l3 - f->data) + l4off + doff;
    p->l4len = doff;
    return 1;
}

void nat_sessions_unreset(struct nat *nat, uint32_t translation, uint16_t backend)
{
    for (uint32_t i = 0; i < nat->hwm; i++) {
        struct session *s = &nat->s[i];
        if (s->in_use && s->translation == translation && s->backend == backend)
            __atomic_fetch_and(&s->flags, (uint8_t)~NAT_SF_RESET, __ATOMIC_RELAXED);
    }
}

void nat_session_reset(struct nat *nat, uint32_t index)
{
    if (index < nat->max_sessions && nat->s[index].in_use)
        __atomic_fetch_or(&nat->s[index].flags, NAT_SF_RESET, __ATOMIC_RELAXED);
}

