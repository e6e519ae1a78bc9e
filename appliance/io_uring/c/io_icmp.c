/*
 * What the datapath answers itself: ICMP errors about translated frames
 * (quoting the frame as its sender sent it, which the kernel cannot), and
 * ARP requests / neighbour solicitations for the vips and SNAT addresses.
 */
#include "io_internal.h"

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static void put_csum(uint8_t *field, uint32_t sum) { st16(field, (uint16_t)~csum_fold(sum)); }

/* The checksum of an ICMPv6 message of len bytes at icmp, inside the IPv6
 * header at ip6: over the pseudo header (addresses, length, next header). */
static void put_icmp6_csum(const uint8_t *ip6, uint8_t *icmp, uint32_t len)
{
    uint8_t pseudo[4];
    put16(pseudo, (uint16_t)len);
    put16(pseudo + 2, 58);
    put_csum(icmp + 2, csum_sum(ip6 + 8, 32) + csum_sum(pseudo, 4) + csum_sum(icmp, len));
}

/* Our ICMP errors are rate-limited as Linux limits its own
 * (net.ipv4.icmp_msgs_per_sec 1000, icmp_msgs_burst 50): beyond that the
 * frame goes to the kernel, which applies its own limit. One bucket per
 * worker, so that workers share no line written per error: N workers allow
 * up to N times the rate (Linux's limit is one for the host). */
#define IO_ICMP_PER_SEC 1000
#define IO_ICMP_BURST 50

static int icmp_allowed(struct io_worker *w)
{
    uint64_t now = now_ns(), elapsed = now - w->icmp_tokens_at;
    uint64_t add = elapsed >= 1000000000ull ? IO_ICMP_BURST : elapsed * IO_ICMP_PER_SEC / 1000000000ull;
    if (add) {
        w->icmp_tokens = add + w->icmp_tokens > IO_ICMP_BURST ? IO_ICMP_BURST
                                                               : (uint32_t)(add + w->icmp_tokens);
        w->icmp_tokens_at = now;
    }
    if (!w->icmp_tokens)
        return 0;
    w->icmp_tokens--;
    return 1;
}

/* Answer a translated frame's sender with ICMP "fragmentation needed" /
 * "packet too big" (mtu), "time exceeded in transit", "network
 * unreachable" / "no route to destination", "host unreachable" / "address
 * unreachable" or "administratively prohibited", from the ingress
 * interface's address, quoting the frame as the sender sent it, before
 * translation. Returns 0 if sent. */
int send_icmp_error(struct io_worker *w, const struct nat_frame *f, uint8_t family, uint8_t *ip,
                    uint32_t iplen, enum icmp_error kind, uint32_t mtu)
{
    struct io_ctx *ctx = w->ctx;
    struct nat_session_info si;
    struct io_port *in = f->port < IO_MAX_PORTS ? w->tx_port[f->port] : NULL;
    int fi = family == 6;
    /* the session by its serial: on another worker's thread its slot may
     * have been freed and reused since this frame's lookup */
    if (!ctx->session_peek || !in || !ctx->port_has_addr[f->port][fi] || !icmp_allowed(w) ||
        ctx->session_peek(ctx->nat, f->session, f->serial, &si) != 0)
        return -1;
    const struct nat_key *k = &si.key[f->dir & 1];   /* the flow as its sender sent it */
    uint32_t hlen = family == 4 ? (uint32_t)(ip[0] & 15) * 4 : 40;
    uint8_t proto = family == 4 ? ip[9] : ip[6];      /* v6: no extension headers here */
    if (proto != k->proto || iplen < hlen + 8)
        return -1;
    uint8_t *l4 = ip + hlen;
    if ((proto == 1 || proto == 58) && !(l4[0] == 8 || l4[0] == 0 || l4[0] == 128 || l4[0] == 129))
        return -1;                                    /* never an error about an error */
    uint8_t out[14 + 40 + 8 + 1232];
    uint32_t outer = family == 4 ? 20 : 40;
    uint32_t qlen = iplen < (family == 4 ? 548u : 1232u) ? iplen : (family == 4 ? 548u : 1232u);
    uint8_t *o_ip = out + 14, *icmp = o_ip + outer, *q = icmp + 8;
    memcpy(q, ip, qlen);
    /* the quote: addresses and ports back to the sender's view */
    uint32_t alen = family == 4 ? 4 : 16;
    memcpy(q + (family == 4 ? 12 : 8), k->src, alen);
    memcpy(q + (family == 4 ? 16 : 24), k->dst, alen);
    uint8_t *ql4 = q + hlen;
    if (proto == 6 || proto == 17) {
        memcpy(ql4, &k->sport, 2);
        memcpy(ql4 + 2, &k->dport, 2);
    } else {
        memcpy(ql4 + 4, ql4[0] == 8 || ql4[0] == 128 ? &k->sport : &k->dport, 2);
    }
    if (family == 4) {
        q[10] = q[11] = 0;
        put_csum(q + 10, csum_sum(q, hlen));
    }
    /* Ethernet back to the previous hop */
    memcpy(out, ip - 14 + 6, 6);
    memcpy(out + 6, in->mac, 6);
    out[12] = family == 4 ? 0x08 : 0x86;
    out[13] = family == 4 ? 0x00 : 0xdd;
    uint32_t icmplen = 8 + qlen;
    memset(icmp, 0, 8);
    if (family == 4) {
        memset(o_ip, 0, 20);
        o_ip[0] = 0x45;
        o_ip[1] = 0xc0;
        put16(o_ip + 2, (uint16_t)(20 + icmplen));
        o_ip[8] = 64;
        o_ip[9] = 1;
        memcpy(o_ip + 12, ctx->port_addr[f->port][0], 4);
        memcpy(o_ip + 16, k->src, 4);
        put_csum(o_ip + 10, csum_sum(o_ip, 20));
        if (kind == ICMP_ERR_TOO_BIG) {
            icmp[0] = 3;                              /* destination unreachable */
            icmp[1] = 4;                              /* fragmentation needed and DF set */
            put16(icmp + 6, (uint16_t)mtu);
        } else if (kind == ICMP_ERR_NO_ROUTE) {
            icmp[0] = 3;                              /* destination unreachable: network */
        } else if (kind == ICMP_ERR_HOST_UNREACH || kind == ICMP_ERR_ROUTE_UNREACH) {
            icmp[0] = 3;                              /* destination unreachable: host */
            icmp[1] = 1;
        } else if (kind == ICMP_ERR_PROHIBITED) {
            icmp[0] = 3;                              /* destination unreachable: */
            icmp[1] = 13;                             /* communication administratively prohibited */
        } else {
            icmp[0] = 11;                             /* time exceeded in transit */
        }
        put_csum(icmp + 2, csum_sum(icmp, icmplen));
    } else {
        memset(o_ip, 0, 40);
        o_ip[0] = 0x60;
        put16(o_ip + 4, (uint16_t)icmplen);
        o_ip[6] = 58;
        o_ip[7] = 64;
        memcpy(o_ip + 8, ctx->port_addr[f->port][1], 16);
        memcpy(o_ip + 24, k->src, 16);
        if (kind == ICMP_ERR_TOO_BIG) {
            icmp[0] = 2;                              /* packet too big */
            icmp[4] = (uint8_t)(mtu >> 24);
            icmp[5] = (uint8_t)(mtu >> 16);
            icmp[6] = (uint8_t)(mtu >> 8);
            icmp[7] = (uint8_t)mtu;
        } else if (kind == ICMP_ERR_NO_ROUTE || kind == ICMP_ERR_ROUTE_UNREACH) {
            icmp[0] = 1;                              /* destination unreachable: no route */
        } else if (kind == ICMP_ERR_PROHIBITED) {
            icmp[0] = 1;                              /* destination unreachable: */
            icmp[1] = 1;                              /* administratively prohibited */
        } else if (kind == ICMP_ERR_HOST_UNREACH) {
            icmp[0] = 1;                              /* destination unreachable: address */
            icmp[1] = 3;
        } else {
            icmp[0] = 3;                              /* time exceeded: hop limit */
        }
        put_icmp6_csum(o_ip, icmp, icmplen);
    }
    if (tx_enqueue(w, in, out, 14 + outer + icmplen))
        return -1;
    static const int counter[] = {
        [ICMP_ERR_TOO_BIG] = IO_C_ICMP_TOO_BIG, [ICMP_ERR_TIME_EXCEEDED] = IO_C_ICMP_TIME_EXCEEDED,
        [ICMP_ERR_NO_ROUTE] = IO_C_ICMP_NO_ROUTE, [ICMP_ERR_HOST_UNREACH] = IO_C_ICMP_HOST_UNREACHABLE,
        [ICMP_ERR_ROUTE_UNREACH] = IO_C_ICMP_NO_ROUTE, [ICMP_ERR_PROHIBITED] = IO_C_ICMP_NO_ROUTE,
    };
    w->counters[counter[kind]]++;
    return 0;
}

/* A vip or SNAT address is the appliance's, not the kernel's: the kernel
 * would leave an ARP request or a neighbour solicitation for it unanswered,
 * and a host with that address inside its link's prefix could not reach it.
 * The XDP program sends us only those requests (steer.bpf.c,
 * nat_neighbour_request); this answers one from the ingress interface, as
 * the owner of the address. Returns 1 if the frame was such a request. */
int answer_neighbour(struct io_worker *w, const struct nat_frame *f)
{
    static const uint8_t arp_request[8] = {0, 1, 8, 0, 6, 4, 0, 1};
    const uint8_t *d = f->data;
    uint32_t len = f->len;
    struct io_port *in = f->port < IO_MAX_PORTS ? w->tx_port[f->port] : NULL;
    if (!in || len < 14)
        return 0;
    uint16_t et = (uint16_t)(d[12] << 8 | d[13]);
    uint8_t out[14 + 40 + 32];
    uint32_t olen;
    if (et == 0x0806) {
        const uint8_t *arp = d + 14;
        if (len < 14 + 28 || memcmp(arp, arp_request, 8))
            return 0;
        memcpy(out, arp + 8, 6);                  /* to the requester */
        memcpy(out + 6, in->mac, 6);
        out[12] = 0x08;
        out[13] = 0x06;
        uint8_t *a = out + 14;
        memcpy(a, arp_request, 8);
        a[7] = 2;                                 /* reply */
        memcpy(a + 8, in->mac, 6);                /* sender: us, with the address asked for */
        memcpy(a + 14, arp + 24, 4);
        memcpy(a + 18, arp + 8, 10);              /* target: the requester's MAC and address */
        olen = 14 + 28;
    } else if (et == 0x86dd) {
        const uint8_t *ip = d + 14, *ns = ip + 40;
        if (len < 14 + 40 + 24 || ip[6] != 58 || ip[7] != 255 || ns[0] != 135 || ns[1] != 0)
            return 0;
        static const uint8_t unspecified[16];
        int dad = memcmp(ip + 8, unspecified, 16) == 0;   /* duplicate address detection */
        uint8_t *o_ip = out + 14, *na = o_ip + 40;
        if (dad) {                                /* to all nodes */
            static const uint8_t all_mac[6] = {0x33, 0x33, 0, 0, 0, 1};
            static const uint8_t all_nodes[16] = {0xff, 2, [15] = 1};
            memcpy(out, all_mac, 6);
            memcpy(o_ip + 24, all_nodes, 16);
        } else {
            memcpy(out, d + 6, 6);
            memcpy(o_ip + 24, ip + 8, 16);
        }
        memcpy(out + 6, in->mac, 6);
        out[12] = 0x86;
        out[13] = 0xdd;
        memset(o_ip, 0, 8);
        o_ip[0] = 0x60;
        put16(o_ip + 4, 32);
        o_ip[6] = 58;
        o_ip[7] = 255;
        memcpy(o_ip + 8, ns + 8, 16);             /* from the address asked for */
        memset(na, 0, 8);
        na[0] = 136;                              /* neighbour advertisement */
        na[4] = dad ? 0x20 : 0x60;                /* (solicited,) override */
        memcpy(na + 8, ns + 8, 16);
        na[24] = 2;                               /* target link-layer address option */
        na[25] = 1;
        memcpy(na + 26, in->mac, 6);
        put_icmp6_csum(o_ip, na, 32);
        olen = 14 + 40 + 32;
    } else {
        return 0;
    }
    if (tx_enqueue(w, in, out, olen) == 0)
        w->counters[IO_C_NEIGH_ANSWERED]++;
    return 1;
}
