/*
 * Which frames a port that sees every frame (an AF_PACKET socket: the
 * io_uring and mmap backends) takes for the appliance, and which it leaves
 * to the kernel, which gets its own copy of each (docs/io.md). The same
 * decision as the XDP program's (xdp/bpf/steer.bpf.c) for what the socket
 * modes serve. Where the XDP program lists the host ports of sessions one
 * by one, these modes take a whole range of ports of the host's addresses,
 * which the kernel keeps for them (ip_local_reserved_ports) and in which
 * the NAT picks the ports of flows whose source becomes a host address:
 * SNAT to the host's address, hairpin flows. Ports listed one by one
 * besides: those of `real` translations (and any session's outside the
 * range). The kernel drops what this takes, by the appliance's nftables
 * table (_socket_steering.py).
 */
#include "io_internal.h"

#include <errno.h>
#include <stdlib.h>

#include "steer.h"

struct steer_slot {
    uint8_t addr[16];
    uint8_t family;          /* 0: empty */
    uint8_t flags;           /* STEER_ADDR_* */
};

static uint32_t slot_hash(uint8_t family, const uint8_t *a)
{
    uint32_t h = family;
    for (unsigned i = 0; i < (family == 4 ? 4u : 16u); i += 4)
        h = mix32(h ^ ((uint32_t)a[i] << 24 | (uint32_t)a[i + 1] << 16 | (uint32_t)a[i + 2] << 8 | a[i + 3]));
    return h;
}

static uint8_t addr_flags(const struct io_ctx *ctx, uint8_t family, const uint8_t *a)
{
    if (!ctx->steer)
        return 0;
    unsigned alen = family == 4 ? 4 : 16;
    for (uint32_t i = slot_hash(family, a) & ctx->steer_mask;; i = (i + 1) & ctx->steer_mask) {
        const struct steer_slot *s = &ctx->steer[i];
        if (!s->family)
            return 0;
        if (s->family == family && !memcmp(s->addr, a, alen))
            return s->flags;
    }
}

/* Slots for n entries of an open-addressing table: a power of two, at
 * most half full. */
static uint32_t table_size(uint32_t n)
{
    uint32_t size = 64;
    while (size < 2 * n)
        size <<= 1;
    return size;
}

int io_steer_load(struct io_ctx *ctx, const struct io_steer_entry *entries, uint32_t n)
{
    uint32_t size = table_size(n);
    struct steer_slot *t = calloc(size, sizeof *t);
    if (!t)
        return -ENOMEM;
    for (uint32_t k = 0; k < n; k++) {
        const struct io_steer_entry *e = &entries[k];
        if (e->family != 4 && e->family != 6)
            continue;
        uint32_t i = slot_hash(e->family, e->addr) & (size - 1);
        while (t[i].family && !(t[i].family == e->family && !memcmp(t[i].addr, e->addr, 16)))
            i = (i + 1) & (size - 1);
        t[i].family = e->family;
        memcpy(t[i].addr, e->addr, 16);
        if (e->family == 4)
            memset(t[i].addr + 4, 0, 12);
        t[i].flags |= e->flags;
    }
    tables_pause(ctx);
    struct steer_slot *old = ctx->steer;
    ctx->steer = t;
    ctx->steer_mask = size - 1;
    tables_resume(ctx);
    free(old);
    return 0;
}

/* An address the appliance answers neighbour requests for: the NAT's and
 * not the host's (the kernel answers for its own). */
static int nat_only(const struct io_ctx *ctx, uint8_t family, const uint8_t *a)
{
    return (addr_flags(ctx, family, a) & (STEER_ADDR_NAT | STEER_ADDR_HOST)) == STEER_ADDR_NAT;
}

int io_steer_set_host_ports(struct io_ctx *ctx, uint16_t lo, uint16_t hi)
{
    tables_pause(ctx);
    ctx->steer_port_lo = lo;
    ctx->steer_port_hi = hi;
    tables_resume(ctx);
    return 0;
}

struct steer_port_slot {
    uint8_t addr[16];
    uint8_t family;          /* 0: empty */
    uint8_t proto;
    uint16_t port;
};

static uint32_t port_hash(uint8_t family, uint8_t proto, uint16_t port, const uint8_t *a)
{
    return slot_hash(family, a) ^ mix32((uint32_t)proto << 16 | port);
}

int io_steer_load_ports(struct io_ctx *ctx, const struct io_steer_port *ports, uint32_t n)
{
    struct steer_port_slot *t = NULL;
    uint32_t size = 0;
    if (n) {
        size = table_size(n);
        t = calloc(size, sizeof *t);
        if (!t)
            return -ENOMEM;
    }
    for (uint32_t k = 0; k < n; k++) {
        const struct io_steer_port *e = &ports[k];
        if (e->family != 4 && e->family != 6)
            continue;
        struct steer_port_slot v = {.family = e->family, .proto = e->proto, .port = e->port};
        memcpy(v.addr, e->addr, e->family == 4 ? 4 : 16);
        uint32_t i = port_hash(v.family, v.proto, v.port, v.addr) & (size - 1);
        while (t[i].family && memcmp(&t[i], &v, sizeof v))
            i = (i + 1) & (size - 1);
        t[i] = v;
    }
    tables_pause(ctx);
    struct steer_port_slot *old = ctx->steer_ports;
    ctx->steer_ports = t;
    ctx->steer_ports_mask = size ? size - 1 : 0;
    tables_resume(ctx);
    free(old);
    return 0;
}

/* p: the port (an echo reply's identifier), network order. In the range,
 * or listed. */
static int port_taken(const struct io_ctx *ctx, uint8_t family, const uint8_t *daddr, uint8_t proto,
                      const uint8_t *p)
{
    uint16_t port = (uint16_t)(p[0] << 8 | p[1]);
    if (ctx->steer_port_hi && port >= ctx->steer_port_lo && port <= ctx->steer_port_hi)
        return 1;
    if (!ctx->steer_ports)
        return 0;
    unsigned alen = family == 4 ? 4 : 16;
    for (uint32_t i = port_hash(family, proto, port, daddr) & ctx->steer_ports_mask;;
         i = (i + 1) & ctx->steer_ports_mask) {
        const struct steer_port_slot *s = &ctx->steer_ports[i];
        if (!s->family)
            return 0;
        if (s->family == family && s->proto == proto && s->port == port && !memcmp(s->addr, daddr, alen))
            return 1;
    }
}

/* A frame to an address of the host's: the appliance's when its port (an
 * echo reply's identifier) is in the range or listed, when it is an ICMP
 * error (the NAT matches the quoted flow, or hands it on to the kernel),
 * an echo request to a `real` icmp translation, or a fragment (its ports
 * are in the first one only; the NAT follows a translated datagram's
 * fragments and hands the kernel the others). As the XDP program, with
 * the range besides its ports map. */
static int host_take(const struct io_ctx *ctx, uint8_t family, const uint8_t *ip, uint32_t iplen, uint8_t flags)
{
    uint8_t proto;
    uint32_t hl;
    if (family == 4) {
        if ((ip[6] & 0x3f) || ip[7])
            return 1;                      /* a fragment: more follow, or not the first */
        hl = (uint32_t)(ip[0] & 0x0f) * 4;
        proto = ip[9];
    } else {
        if (ip[6] == 44)
            return 1;                      /* a fragment header first */
        hl = 40;
        proto = ip[6];
    }
    if (iplen < hl + 8)
        return 0;
    const uint8_t *l4 = ip + hl;
    const uint8_t *daddr = family == 4 ? ip + 16 : ip + 24;
    if (proto == 6 || proto == 17)
        return port_taken(ctx, family, daddr, proto, l4 + 2);   /* the destination port */
    if (proto == (family == 4 ? 1 : 58)) {
        uint8_t type = l4[0];
        if (type == (family == 4 ? 0 : 129))
            return port_taken(ctx, family, daddr, proto, l4 + 4);   /* an echo reply: its identifier */
        if (type == (family == 4 ? 8 : 128))
            return (flags & STEER_ADDR_ECHO) != 0;   /* an echo request to a `real` icmp translation */
        if (family == 4)
            return type == 3 || type == 11 || type == 12;
        return type >= 1 && type <= 4;
    }
    return 0;
}

int steer_take(const struct io_ctx *ctx, const uint8_t *f, uint32_t len, const uint8_t *mac)
{
    if (len < 14 || !ctx->steer)
        return 0;            /* until the host's addresses are known, everything is the kernel's */
    uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
    if (type == 0x0806) {    /* ARP request (Ethernet/IPv4) for a NAT-only address */
        const uint8_t *arp = f + 14;
        return len >= 14 + 28 && arp[0] == 0 && arp[1] == 1 && arp[2] == 8 && arp[3] == 0 && arp[4] == 6 &&
               arp[5] == 4 && arp[6] == 0 && arp[7] == 1 && nat_only(ctx, 4, arp + 24);
    }
    if (type == 0x86dd && len >= 54 + 24 && f[14 + 6] == 58 && f[14 + 7] == 255 && f[54] == 135 && f[55] == 0)
        return nat_only(ctx, 6, f + 54 + 8);   /* a neighbour solicitation (no extension headers) */
    if (f[0] & 1)            /* multicast / broadcast */
        return 0;
    if (memcmp(f, mac, 6))   /* another host's: seen only in promiscuous mode */
        return 0;
    uint8_t family, ttl;
    const uint8_t *daddr;
    if (type == 0x0800) {
        const uint8_t *ip = f + 14;
        if (len < 14 + 20 || (ip[0] & 0x0f) < 5)
            return 0;
        family = 4;
        ttl = ip[8];
        daddr = ip + 16;
    } else if (type == 0x86dd) {
        const uint8_t *ip6 = f + 14;
        if (len < 14 + 40 || ip6[24] == 0xff)
            return 0;
        if (ip6[6] == 58 && len >= 14 + 41 && ip6[40] >= 133 && ip6[40] <= 137)
            return 0;        /* router / neighbour discovery */
        family = 6;
        ttl = ip6[7];
        daddr = ip6 + 24;
    } else {
        return 0;
    }
    uint8_t flags = addr_flags(ctx, family, daddr);
    if (flags & STEER_ADDR_HOST)   /* the host's own traffic, but for the ports taken */
        return host_take(ctx, family, f + 14, len - 14, flags);
    return ttl > 1 || (flags & STEER_ADDR_NAT);   /* transit expiring here: the kernel answers it */
}

int io_steer_take(struct io_ctx *ctx, const uint8_t *frame, uint32_t len, const uint8_t *mac)
{
    return steer_take(ctx, frame, len, mac);
}
