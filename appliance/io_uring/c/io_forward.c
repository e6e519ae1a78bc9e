/*
 * The forwarding step: the kernel's route and neighbour for each frame (a
 * session's next hop cached per worker and direction), TTL and MACs
 * rewritten, queued on the egress port's TX ring of the worker; the kernel
 * gets what the appliance cannot forward itself (through the TAP device).
 */
#include "io_internal.h"

#include <unistd.h>

/* The NAT rewrote a received frame's headers in place, so their cache lines
 * sit modified in this CPU's cache; the kernel's next copy into the frame,
 * on the sending CPU, would have to fetch them from here. CLDEMOTE (a hint,
 * a no-op where unsupported) moves the first two lines to the shared cache
 * once the frame is done with. Measured by switching it on and off every
 * 250 ms within runs: the sender delivered 1-2 % more (BENCHMARKS.md). */
static inline void demote(const uint8_t *data)
{
#if defined(__x86_64__)
    __asm__ volatile("cldemote %0" ::"m"(*(const volatile uint8_t *)data));
    __asm__ volatile("cldemote %0" ::"m"(*(const volatile uint8_t *)(data + 64)));
#else
    (void)data;
#endif
}

static void to_kernel(struct io_worker *w, uint8_t *data, uint32_t len, int why)
{
    struct io_ctx *ctx = w->ctx;
    w->counters[why]++;
    if (ctx->tap_fd < 0) {
        w->counters[IO_C_DROP_KERNEL_WRITE]++;
        return;
    }
    memcpy(data, ctx->tap_mac, 6);
    if (write(ctx->tap_fd, data, len) != (ssize_t)len)
        w->counters[IO_C_DROP_KERNEL_WRITE]++;
}

/* The kernel's answer for dst (and src, for a multipath route's choice):
 * 0 with the next hop's port (*port, < 0 for an interface that is not ours)
 * and, when the kernel has it, its neighbour (*neigh); else a negative io
 * counter telling why the kernel must take the frame (or, for
 * -IO_C_DROP_BLACKHOLE, why it is dropped). *unreach is then the error
 * Linux would answer a frame it cannot forward at all with: no route at all
 * (ICMP_ERR_NO_ROUTE), an unreachable or prohibit route
 * (ICMP_ERR_ROUTE_UNREACH, ICMP_ERR_PROHIBITED), or a neighbour the kernel
 * failed to resolve (ICMP_ERR_HOST_UNREACH); else -1. */
static int route_resolve(struct io_ctx *ctx, uint8_t family, const uint8_t *src, const uint8_t *dst,
                         int *port, struct neigh **neigh, int *unreach)
{
    *neigh = NULL;
    *port = -1;
    const struct route *r = route_lookup(ctx, family, dst);
    if (!r) {
        *unreach = ICMP_ERR_NO_ROUTE;
        return -IO_C_TO_KERNEL_NO_ROUTE;
    }
    switch (r->kind) {
    case IO_ROUTE_FORWARD:
        break;
    case IO_ROUTE_LOCAL:
        return -IO_C_TO_KERNEL_LOCAL;
    case IO_ROUTE_BLACKHOLE:
        return -IO_C_DROP_BLACKHOLE;
    case IO_ROUTE_UNREACHABLE:
        *unreach = ICMP_ERR_ROUTE_UNREACH;
        return -IO_C_TO_KERNEL_NO_ROUTE;
    case IO_ROUTE_PROHIBIT:
        *unreach = ICMP_ERR_PROHIBITED;
        return -IO_C_TO_KERNEL_NO_ROUTE;
    default:                               /* throw, and what we do not know: the kernel's */
        return -IO_C_TO_KERNEL_NO_ROUTE;
    }
    const struct nexthop *nh = route_nexthop(ctx, r, src, dst);
    *port = nh->port_id;
    if (nh->port_id < 0)
        return -IO_C_TO_KERNEL_NO_ROUTE;
    uint8_t a[16] = {0};
    memcpy(a, nh->has_gw ? nh->gw : dst, family == 4 ? 4 : 16);
    struct neigh *n = neigh_slot(ctx, family, nh->port_id, a, 0);
    *neigh = n;
    if (!n || n->failed) {
        if (n)
            *unreach = ICMP_ERR_HOST_UNREACH;
        return -IO_C_TO_KERNEL_NO_NEIGH;
    }
    return 0;
}

/* Next hop for a frame: from the session's cache when it is current, else
 * route_resolve() (and fill the cache). Returns the egress port, or what
 * route_resolve() returned; *egress is the port even when the neighbour is
 * not known. */
static int next_hop(struct io_worker *w, const struct nat_frame *f, uint8_t family, const uint8_t *src,
                    const uint8_t *dst, const uint8_t **mac, int *egress, int *unreach)
{
    struct io_ctx *ctx = w->ctx;
    struct hop *h = NULL;
    uint32_t epoch = __atomic_load_n(&ctx->epoch, __ATOMIC_RELAXED);
    if (f->session < ctx->max_sessions) {
        h = &w->hops[(size_t)f->session * 2 + f->dir];
        if (h->gen == ctx->gen && h->serial == f->serial) {
            w->counters[IO_C_FWD_CACHE_HIT]++;
            struct neigh *n = &ctx->neigh[h->nslot];
            /* a store only once per epoch: the line stays shared (workers
             * store the same value, racily) */
            if (__atomic_load_n(&n->epoch, __ATOMIC_RELAXED) != epoch)
                __atomic_store_n(&n->epoch, epoch, __ATOMIC_RELAXED);
            *mac = n->mac;
            return h->port_id;
        }
    }
    int port;
    struct neigh *n;
    int rc = route_resolve(ctx, family, src, dst, &port, &n, unreach);
    if (port >= IO_MAX_PORTS || (port >= 0 && !w->tx_port[port]))
        return -IO_C_TO_KERNEL_NO_ROUTE;
    *egress = port;
    if (rc < 0)
        return rc;
    __atomic_store_n(&n->epoch, epoch, __ATOMIC_RELAXED);
    if (h) {
        h->gen = ctx->gen;
        h->serial = f->serial;
        h->port_id = (int16_t)port;
        h->nslot = (uint16_t)(n - ctx->neigh);
    }
    *mac = n->mac;
    return port;
}

int io_route_resolve(struct io_ctx *ctx, uint8_t family, const uint8_t *src, const uint8_t *dst,
                     int *port_out, uint8_t *mac_out, int *unreach_out)
{
    tables_pause(ctx);   /* a consistent look, from the control plane's thread */
    uint8_t s[16] = {0}, d[16] = {0};
    memcpy(s, src, family == 4 ? 4 : 16);
    memcpy(d, dst, family == 4 ? 4 : 16);
    struct neigh *n;
    int unreach = -1;
    int rc = route_resolve(ctx, family, s, d, port_out, &n, &unreach);
    if (n && !n->failed)
        memcpy(mac_out, n->mac, 6);
    *unreach_out = unreach;
    tables_resume(ctx);
    return rc;
}

void forward_one(struct io_worker *w, const struct nat_frame *f)
{
    struct io_ctx *ctx = w->ctx;
    uint8_t *d = f->data;
    uint32_t len = f->len;
    if (len < 14 + 20)
        return to_kernel(w, d, len, IO_C_TO_KERNEL_NO_ROUTE);
    uint16_t et = (uint16_t)(d[12] << 8 | d[13]);
    uint8_t *ip = d + 14;
    uint8_t family;
    uint8_t src[16] = {0}, dst[16] = {0};
    uint32_t iplen;
    if (et == 0x0800) {
        family = 4;
        memcpy(src, ip + 12, 4);
        memcpy(dst, ip + 16, 4);
        iplen = (uint32_t)ip[2] << 8 | ip[3];
    } else if (et == 0x86dd && len >= 14 + 40) {
        family = 6;
        memcpy(src, ip + 8, 16);
        memcpy(dst, ip + 24, 16);
        iplen = 40 + ((uint32_t)ip[4] << 8 | ip[5]);
    } else {
        return to_kernel(w, d, len, IO_C_TO_KERNEL_NO_ROUTE);
    }
    /* Translated frames get their ICMP errors from us, quoting the frame
     * as sent (also while the neighbour is unresolved); everything else
     * goes to the kernel, which fragments it or answers, as any Linux
     * router. */
    int translated = f->verdict == NAT_FORWARD && f->session != NAT_NONE;
    const uint8_t *mac;
    int egress = -1;
    int unreach = -1;
    int port = next_hop(w, f, family, src, dst, &mac, &egress, &unreach);
    if (port == -IO_C_TO_KERNEL_LOCAL)
        return to_kernel(w, d, len, IO_C_TO_KERNEL_LOCAL);   /* delivered at any TTL */
    if (port == -IO_C_DROP_BLACKHOLE) {                        /* as the kernel: silently */
        w->counters[IO_C_DROP_BLACKHOLE]++;
        return;
    }
    /* No route at all, or an unreachable or prohibit route (not one through
     * an interface that is not ours, which the kernel forwards): Linux
     * answers before any TTL check. */
    if ((unreach == ICMP_ERR_NO_ROUTE || unreach == ICMP_ERR_ROUTE_UNREACH || unreach == ICMP_ERR_PROHIBITED) &&
        translated && send_icmp_error(w, f, family, ip, iplen, (enum icmp_error)unreach, 0) == 0)
        return;
    if (port >= 0)
        egress = port;
    uint8_t *ttl = family == 4 ? ip + 8 : ip + 7;
    if (*ttl <= 1) {   /* as Linux's ip_forward: TTL first, then the MTU */
        if (translated && send_icmp_error(w, f, family, ip, iplen, ICMP_ERR_TIME_EXCEEDED, 0) == 0)
            return;
        return to_kernel(w, d, len, IO_C_TO_KERNEL_TTL);
    }
    if (egress >= 0 && iplen > ctx->mtu[egress]) {
        /* not to be fragmented: IPv4 with DF, or IPv6 */
        if (translated && (family == 6 || (ip[6] & 0x40)) &&
            send_icmp_error(w, f, family, ip, iplen, ICMP_ERR_TOO_BIG, ctx->mtu[egress]) == 0)
            return;
        return to_kernel(w, d, len, IO_C_TO_KERNEL_MTU);
    }
    if (port < 0) {
        /* A neighbour the kernel failed to resolve: Linux answers the
         * frames it queued with "host unreachable" once resolution fails;
         * ours quotes the frame as sent. The kernel still gets the frame,
         * so that it tries the neighbour again. */
        if (unreach == ICMP_ERR_HOST_UNREACH && translated)
            send_icmp_error(w, f, family, ip, iplen, ICMP_ERR_HOST_UNREACH, 0);
        return to_kernel(w, d, len, -port);
    }
    struct io_port *o = w->tx_port[port];
    if (family == 4) {
        uint16_t old = ld16(ip + 8);
        (*ttl)--;
        st16(ip + 10, csum_apply(ld16(ip + 10), csum_delta16(0, old, ld16(ip + 8))));
    } else {
        (*ttl)--;
    }
    memcpy(d, mac, 6);
    memcpy(d + 6, o->mac, 6);
    tx_enqueue(w, o, d, len);
}

void io_forward(struct io_port *p, struct nat_frame *frames, uint32_t n)
{
    struct io_worker *w = p->w;
    for (uint32_t i = 0; i < n; i++) {
        struct nat_frame *f = &frames[i];
        if (f->verdict == NAT_FORWARD || (f->verdict == NAT_PASS && !answer_neighbour(w, f)))
            forward_one(w, f);
        else if (f->verdict == NAT_MISS)   /* not resolved: see slow_path_may_run() */
            w->counters[IO_C_DROP_NEW_FLOW_BUSY]++;
        else if (f->verdict != IO_VERDICT_QUEUED)
            w->counters[IO_C_DROP_NAT]++;
    }
    port_recycle(p, n);
    for (uint32_t i = 0; i < n; i++)
        demote(frames[i].data);
    /* A sendto() per small batch would cost more than the frames in it:
     * kick a TX ring once it holds a kernel TX batch (32 descriptors);
     * the loops flush the rest whenever the RX rings run dry. */
    for (int i = 0; i < IO_MAX_PORTS; i++)
        if (w->tx_port[i] && w->tx_port[i]->pending_tx >= IO_TX_KICK)
            port_kick(w->tx_port[i]);
}
