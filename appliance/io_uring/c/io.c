/*
 * AF_XDP ports and the forwarding step. See io.h.
 */
#include "io.h"
#include "csum.h"

#include <errno.h>
#include <stdarg.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/ethtool.h>
#include <linux/if_link.h>
#include <linux/sockios.h>
#include <linux/if_xdp.h>
#include <xdp/xsk.h>

#ifndef IO_BUILD_VERSION
#error "IO_BUILD_VERSION must be defined by the build (appliance/io_uring/_build.py)"
#endif

#define IO_BATCH_MAX 256
#define IO_NEIGH_SLOTS 65536  /* open addressing, kept at most half full (hop.nslot is 16 bits) */

struct io_port {
    struct io_ctx *ctx;
    struct xsk_socket *xsk;
    struct xsk_umem *umem;
    struct xsk_ring_prod fq, tx;
    struct xsk_ring_cons cq, rx;
    uint8_t *area;
    size_t area_size;
    uint64_t *free;          /* TX chunks not in flight */
    uint32_t nfree;
    uint32_t outstanding;    /* TX descriptors submitted, not completed */
    uint32_t pending_tx;     /* reserved+filled, not yet submitted */
    uint64_t rx_frames;      /* received on this socket */
    uint64_t rx_addr[IO_BATCH_MAX];
    uint32_t mtu;
    uint16_t port_id;
    uint8_t mac[6];
};

struct nexthop {
    uint8_t gw[16];
    uint8_t has_gw;
    int port_id;             /* < 0: through an interface that is not ours */
    uint32_t weight;
};

struct route {
    uint8_t prefix[16];      /* masked to plen */
    uint8_t family, plen, kind;   /* IO_ROUTE_* */
    uint8_t n_nh;
    uint32_t nh;             /* first of n_nh in io_ctx.nhs */
    uint32_t total_weight;
};

struct neigh {
    uint8_t addr[16];
    uint8_t mac[6];
    uint8_t family, used;
    uint8_t failed;          /* the kernel's resolution failed: no MAC */
    int port_id;             /* with family and addr, the key: link-local addresses repeat across links */
    uint32_t epoch;          /* io_ctx.epoch when last forwarded to (io_neigh_used) */
};

struct hop {
    uint32_t gen;            /* io_ctx.gen when filled; 0 = empty */
    uint32_t serial;         /* the session's serial: its slot's next session must look up again */
    int16_t port_id;
    uint16_t nslot;          /* the next hop's neighbour slot: its MAC, as it is now */
};

struct io_ctx {
    struct io_port *tx_port[IO_MAX_PORTS];   /* the socket that transmits on a port */
    struct hop *hops;                        /* [session * 2 + dir] */
    uint32_t max_sessions;
    uint32_t gen;
    uint32_t epoch;          /* advanced by io_neigh_used() */
    /* The kernel's main table: routes and their next hops in arrays, found
     * by a hash of (family, prefix length, prefix), one probe per prefix
     * length in use (longest first), as a per-length LPM. */
    struct route *routes;
    uint32_t n_routes, cap_routes;
    struct nexthop *nhs;
    uint32_t n_nhs, cap_nhs;
    uint32_t *route_index;                   /* route + 1 per slot; 0 = empty */
    uint32_t route_slots;                    /* a power of two, > 2 * n_routes */
    uint8_t plens[2][129];                   /* [v4, v6]: the prefix lengths in use, longest first */
    uint8_t n_plens[2];
    struct neigh *neigh;                     /* IO_NEIGH_SLOTS */
    uint32_t n_neigh;
    int tap_fd;
    uint8_t tap_mac[6];
    uint64_t counters[IO_C__COUNT];
    /* for ICMP "too big" errors the appliance sends itself */
    struct nat *nat;
    nat_session_get_fn session_get;
    uint8_t port_addr[IO_MAX_PORTS][2][16];  /* [port][v4, v6]: source of our ICMP errors */
    uint8_t port_has_addr[IO_MAX_PORTS][2];
    uint64_t icmp_tokens_at;                 /* token bucket of those errors */
    uint32_t icmp_tokens;
    /* the slow path's share of the core (slow_path_may_run) */
    int64_t slow_credit;                     /* ns */
    uint64_t slow_at;                        /* last update */
    uint64_t miss_at;                        /* last IO_POLL_MISS return; 0: none pending */
};

struct io_ctx *io_ctx_create(int tap_fd, const uint8_t *tap_mac, uint32_t max_sessions)
{
    struct io_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    /* calloc'd: pages are only touched by sessions that forward */
    c->hops = calloc((size_t)max_sessions * 2, sizeof *c->hops);
    c->neigh = calloc(IO_NEIGH_SLOTS, sizeof *c->neigh);
    if (!c->hops || !c->neigh) {
        io_ctx_destroy(c);
        return NULL;
    }
    c->max_sessions = max_sessions;
    c->gen = 1;
    c->epoch = 1;
    c->tap_fd = tap_fd;
    memcpy(c->tap_mac, tap_mac, 6);
    return c;
}

void io_ctx_destroy(struct io_ctx *ctx)
{
    if (ctx) {
        free(ctx->hops);
        free(ctx->neigh);
        free(ctx->routes);
        free(ctx->nhs);
        free(ctx->route_index);
        free(ctx);
    }
}
const uint64_t *io_ctx_counters(const struct io_ctx *ctx) { return ctx->counters; }

/* ---------------------------------------------------------------------------
 * Ports
 */
struct io_port *io_port_open(struct io_ctx *ctx, const char *ifname, uint32_t queue,
                             uint16_t port_id, int xsks_map_fd, uint32_t key, uint32_t nrx,
                             uint32_t ntx, const uint8_t *mac, uint32_t mtu, int zerocopy)
{
    uint32_t nframes = nrx + ntx;
    if (port_id >= IO_MAX_PORTS || nrx < IO_BATCH_MAX || ntx < IO_BATCH_MAX || (nrx & (nrx - 1)) ||
        (ntx & (ntx - 1))) {
        errno = EINVAL;
        return NULL;
    }
    struct io_port *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->ctx = ctx;
    p->port_id = port_id;
    p->mtu = mtu;
    memcpy(p->mac, mac, 6);
    p->area_size = (size_t)nframes * IO_FRAME_SIZE;
    p->area = mmap(NULL, p->area_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p->area == MAP_FAILED)
        goto fail;
    /* Every frame is a different 2 KiB chunk: with 4 KiB pages the NAT's
     * first touch of a frame is a TLB miss as well as a cache miss.
     * Transparent huge pages where the kernel allows them (best effort). */
    madvise(p->area, p->area_size, MADV_HUGEPAGE);
    /* The fill ring has room for twice the RX frames, so it is never full:
     * reserving fill slots reads the kernel's consumer index (a cache line
     * the sending CPU writes for every frame) once per nrx frames instead of
     * once per batch. */
    struct xsk_umem_config ucfg = {
        .fill_size = 2 * nrx, .comp_size = nframes - nrx, .frame_size = IO_FRAME_SIZE,
        .frame_headroom = 0, .flags = 0,
    };
    int rc = xsk_umem__create(&p->umem, p->area, p->area_size, &p->fq, &p->cq, &ucfg);
    if (rc)
        goto fail_rc;
    struct xsk_socket_config scfg = {
        .rx_size = nrx, .tx_size = nframes - nrx,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
        .xdp_flags = XDP_FLAGS_DRV_MODE,
        .bind_flags = XDP_USE_NEED_WAKEUP | (zerocopy ? XDP_ZEROCOPY : XDP_COPY),
    };
    rc = xsk_socket__create(&p->xsk, ifname, queue, p->umem, &p->rx, &p->tx, &scfg);
    if (rc)
        goto fail_rc;
    rc = bpf_map_update_elem(xsks_map_fd, &key, &(int){xsk_socket__fd(p->xsk)}, 0);
    if (rc)
        goto fail_rc;
    uint32_t idx;
    if (xsk_ring_prod__reserve(&p->fq, nrx, &idx) != nrx) {
        rc = -ENOMEM;
        goto fail_rc;
    }
    for (uint32_t i = 0; i < nrx; i++)
        *xsk_ring_prod__fill_addr(&p->fq, idx + i) = (uint64_t)i * IO_FRAME_SIZE;
    xsk_ring_prod__submit(&p->fq, nrx);
    p->free = calloc(nframes - nrx, sizeof *p->free);
    if (!p->free)
        goto fail;
    for (uint32_t i = nrx; i < nframes; i++)
        p->free[p->nfree++] = (uint64_t)i * IO_FRAME_SIZE;
    if (!ctx->tx_port[port_id])
        ctx->tx_port[port_id] = p;
    return p;
fail_rc:
    errno = rc < 0 ? -rc : rc;
fail:
    {
        int e = errno;
        io_port_close(p);
        errno = e;
    }
    return NULL;
}

void io_port_close(struct io_port *p)
{
    if (!p)
        return;
    if (p->ctx && p->ctx->tx_port[p->port_id] == p)
        p->ctx->tx_port[p->port_id] = NULL;
    if (p->xsk)
        xsk_socket__delete(p->xsk);
    if (p->umem)
        xsk_umem__delete(p->umem);
    if (p->area && p->area != MAP_FAILED)
        munmap(p->area, p->area_size);
    free(p->free);
    free(p);
}

int io_port_fd(const struct io_port *p) { return xsk_socket__fd(p->xsk); }

uint64_t io_port_rx(const struct io_port *p) { return p->rx_frames; }

int io_port_kernel_stats(const struct io_port *p, uint64_t *out6)
{
    struct xdp_statistics st;
    socklen_t len = sizeof st;
    memset(&st, 0, sizeof st);
    if (getsockopt(xsk_socket__fd(p->xsk), SOL_XDP, XDP_STATISTICS, &st, &len))
        return -errno;
    out6[0] = st.rx_dropped;
    out6[1] = st.rx_invalid_descs;
    out6[2] = st.tx_invalid_descs;
    out6[3] = st.rx_ring_full;
    out6[4] = st.rx_fill_ring_empty_descs;
    out6[5] = st.tx_ring_empty_descs;
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint32_t io_rx(struct io_port *p, struct nat_frame *frames, uint32_t max)
{
    uint32_t idx;
    if (max > IO_BATCH_MAX)
        max = IO_BATCH_MAX;
    uint32_t n = xsk_ring_cons__peek(&p->rx, max, &idx);
    if (!n)
        return 0;
    p->ctx->counters[IO_C_RX_BATCHES]++;
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&p->rx, idx + i);
        p->rx_addr[i] = d->addr;
        frames[i].data = xsk_umem__get_data(p->area, d->addr);
        frames[i].len = d->len;
        frames[i].port = p->port_id;
    }
    xsk_ring_cons__release(&p->rx, n);
    p->ctx->counters[IO_C_RX] += n;
    p->rx_frames += n;
    return n;
}

static void reap(struct io_port *p)
{
    uint32_t idx;
    uint32_t n = xsk_ring_cons__peek(&p->cq, p->outstanding, &idx);
    for (uint32_t i = 0; i < n; i++)
        p->free[p->nfree++] = *xsk_ring_cons__comp_addr(&p->cq, idx + i);
    if (n)
        xsk_ring_cons__release(&p->cq, n);
    p->outstanding -= n;
}

/* Frames held in a TX ring before io_forward() kicks it. */
#define IO_TX_KICK 32

static void kick(struct io_port *p)
{
    if (p->pending_tx) {
        xsk_ring_prod__submit(&p->tx, p->pending_tx);
        p->outstanding += p->pending_tx;
        p->pending_tx = 0;
    }
    /* In copy mode one sendto() transmits at most 32 descriptors (the
     * kernel's TX_BATCH_SIZE), so kick until the ring is drained, bounded
     * by the ring size / 32. */
    for (uint32_t tries = 0; tries <= p->tx.size / 32; tries++) {
        if (xsk_prod_nb_free(&p->tx, p->tx.size) >= p->tx.size)
            break;   /* the kernel consumed every descriptor */
        if (!xsk_ring_prod__needs_wakeup(&p->tx))
            break;   /* zero-copy driver polling on its own */
        if (sendto(xsk_socket__fd(p->xsk), NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 &&
            errno != EAGAIN && errno != EBUSY && errno != ENOBUFS)
            break;
    }
    reap(p);
}

void io_flush(struct io_ctx *ctx)
{
    for (int i = 0; i < IO_MAX_PORTS; i++)
        if (ctx->tx_port[i])
            kick(ctx->tx_port[i]);
}

/* Most frames are short, and memcpy() of a variable length compiled to
 * `rep movsq` here: 78 % of io_forward's samples. Short frames are copied
 * in 32-byte blocks instead; the overrun (< 32 bytes) stays inside both
 * 2 KiB chunks: received frames start XDP_PACKET_HEADROOM (256) into
 * theirs, transmitted ones at the start. */
static inline void copy_frame(uint8_t *dst, const uint8_t *src, uint32_t len)
{
    if (len > 1024) {
        memcpy(dst, src, len);
        return;
    }
    for (uint32_t off = 0; off < len; off += 32)
        __builtin_memcpy(dst + off, src + off, 32);
}

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

static int tx_enqueue(struct io_ctx *ctx, struct io_port *o, const uint8_t *data, uint32_t len)
{
    uint32_t idx;
    if (!o->nfree)
        reap(o);
    if (!o->nfree || len > IO_FRAME_SIZE || xsk_ring_prod__reserve(&o->tx, 1, &idx) != 1) {
        ctx->counters[IO_C_DROP_TX_FULL]++;
        return -1;
    }
    uint64_t addr = o->free[--o->nfree];
    copy_frame(xsk_umem__get_data(o->area, addr), data, len);
    struct xdp_desc *d = xsk_ring_prod__tx_desc(&o->tx, idx);
    d->addr = addr;
    d->len = len;
    o->pending_tx++;
    ctx->counters[IO_C_TX]++;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Forwarding
 */
static inline uint32_t mix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    return h ^ (h >> 16);
}

static uint32_t route_hash(uint8_t family, uint8_t plen, const uint8_t *prefix)
{
    uint32_t h = (uint32_t)family << 8 | plen;
    for (int i = 0; i < (family == 4 ? 4 : 16); i += 4)
        h = mix32(h ^ ((uint32_t)prefix[i] << 24 | (uint32_t)prefix[i + 1] << 16 |
                       (uint32_t)prefix[i + 2] << 8 | prefix[i + 3]));
    return h;
}

static void mask_prefix(uint8_t *out, const uint8_t *a, uint8_t family, uint8_t plen)
{
    unsigned len = family == 4 ? 4 : 16, full = plen / 8, rest = plen % 8;
    memset(out, 0, 16);
    memcpy(out, a, full < len ? full : len);
    if (rest && full < len)
        out[full] = a[full] & (uint8_t)(0xff << (8 - rest));
}

static const struct route *route_find(const struct io_ctx *ctx, uint8_t family, uint8_t plen,
                                      const uint8_t *prefix)
{
    if (!ctx->route_slots)
        return NULL;
    uint32_t m = ctx->route_slots - 1;
    for (uint32_t i = route_hash(family, plen, prefix) & m;; i = (i + 1) & m) {
        uint32_t v = ctx->route_index[i];
        if (!v)
            return NULL;
        const struct route *r = &ctx->routes[v - 1];
        if (r->family == family && r->plen == plen && memcmp(r->prefix, prefix, 16) == 0)
            return r;
    }
}

/* Longest prefix match: one hash probe per prefix length in use. */
static const struct route *route_lookup(const struct io_ctx *ctx, uint8_t family, const uint8_t *a)
{
    int f = family == 6;
    uint8_t key[16];
    for (uint32_t i = 0; i < ctx->n_plens[f]; i++) {
        uint8_t plen = ctx->plens[f][i];
        mask_prefix(key, a, family, plen);
        const struct route *r = route_find(ctx, family, plen, key);
        if (r)
            return r;
    }
    return NULL;
}

/* A multipath route's next hop for a flow: by a hash of its addresses
 * (as the kernel's default L3 policy), weighted; stable for the flow. */
static const struct nexthop *route_nexthop(const struct io_ctx *ctx, const struct route *r,
                                           const uint8_t *src, const uint8_t *dst)
{
    if (r->n_nh == 1)
        return &ctx->nhs[r->nh];
    uint32_t len = r->family == 4 ? 4 : 16, h = r->family;
    for (uint32_t i = 0; i < len; i += 4) {
        uint32_t s, d;
        memcpy(&s, src + i, 4);
        memcpy(&d, dst + i, 4);
        h = mix32(h ^ s) + d;
    }
    uint32_t pick = mix32(h) % r->total_weight;
    for (uint32_t i = 0; i < r->n_nh; i++) {
        const struct nexthop *nh = &ctx->nhs[r->nh + i];
        if (pick < nh->weight)
            return nh;
        pick -= nh->weight;
    }
    return &ctx->nhs[r->nh];
}

static inline uint32_t neigh_hash(uint8_t family, int port_id, const uint8_t *a)
{
    uint32_t h = family * 0x9e3779b1u ^ (uint32_t)port_id;
    for (int i = 0; i < 16; i++)
        h = (h ^ a[i]) * 0x01000193u;
    return h;
}

static struct neigh *neigh_slot(struct io_ctx *ctx, uint8_t family, int port_id, const uint8_t *a,
                                int insert)
{
    for (uint32_t i = neigh_hash(family, port_id, a) % IO_NEIGH_SLOTS, k = 0; k < IO_NEIGH_SLOTS;
         i = (i + 1) % IO_NEIGH_SLOTS, k++) {
        struct neigh *n = &ctx->neigh[i];
        if (!n->used)
            return insert ? n : NULL;
        if (n->family == family && n->port_id == port_id && memcmp(n->addr, a, 16) == 0)
            return n;
    }
    return NULL;
}

/* Every cached next hop is stale. 0 is an empty hop's gen: never current. */
static void hops_stale(struct io_ctx *ctx)
{
    if (++ctx->gen == 0)
        ctx->gen = 1;
}

void io_routes_clear(struct io_ctx *ctx)
{
    ctx->n_routes = 0;
    ctx->n_nhs = 0;
    ctx->n_plens[0] = ctx->n_plens[1] = 0;
    if (ctx->route_index)
        memset(ctx->route_index, 0, ctx->route_slots * sizeof *ctx->route_index);
    hops_stale(ctx);
}

static int grow(void **arr, uint32_t *cap, uint32_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    uint32_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *p = realloc(*arr, (size_t)n * size);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = n;
    return 0;
}

static void route_index_put(struct io_ctx *ctx, uint32_t ri)
{
    const struct route *r = &ctx->routes[ri];
    uint32_t m = ctx->route_slots - 1;
    uint32_t i = route_hash(r->family, r->plen, r->prefix) & m;
    while (ctx->route_index[i])
        i = (i + 1) & m;
    ctx->route_index[i] = ri + 1;
}

int io_route_add(struct io_ctx *ctx, uint8_t family, const uint8_t *prefix, uint8_t plen, uint8_t kind,
                 const uint8_t *gateways, const int *port_ids, const uint32_t *weights, uint32_t n_nh)
{
    if ((family != 4 && family != 6) || plen > (family == 4 ? 32 : 128) || n_nh > 255 ||
        (kind == IO_ROUTE_FORWARD && n_nh == 0))
        return -EINVAL;
    uint8_t key[16];
    mask_prefix(key, prefix, family, plen);
    if (route_find(ctx, family, plen, key))
        return 1;                             /* the first one given wins (the lowest metric) */
    if (grow((void **)&ctx->routes, &ctx->cap_routes, ctx->n_routes + 1, sizeof *ctx->routes) ||
        grow((void **)&ctx->nhs, &ctx->cap_nhs, ctx->n_nhs + n_nh, sizeof *ctx->nhs))
        return -ENOMEM;
    if (2 * (ctx->n_routes + 1) >= ctx->route_slots) {
        uint32_t slots = ctx->route_slots ? ctx->route_slots * 2 : 256;
        uint32_t *idx = calloc(slots, sizeof *idx);
        if (!idx)
            return -ENOMEM;
        free(ctx->route_index);
        ctx->route_index = idx;
        ctx->route_slots = slots;
        for (uint32_t i = 0; i < ctx->n_routes; i++)
            route_index_put(ctx, i);
    }
    struct route *r = &ctx->routes[ctx->n_routes];
    memset(r, 0, sizeof *r);
    memcpy(r->prefix, key, 16);
    r->family = family;
    r->plen = plen;
    r->kind = kind;
    r->nh = ctx->n_nhs;
    for (uint32_t i = 0; i < n_nh; i++) {
        struct nexthop *nh = &ctx->nhs[ctx->n_nhs];
        memset(nh, 0, sizeof *nh);
        if (gateways) {
            memcpy(nh->gw, gateways + 16 * i, family == 4 ? 4 : 16);
            nh->has_gw = memcmp(nh->gw, (const uint8_t[16]){0}, 16) != 0;
        }
        nh->port_id = port_ids[i];
        nh->weight = weights && weights[i] ? weights[i] : 1;
        r->total_weight += nh->weight;
        ctx->n_nhs++;
        r->n_nh++;
    }
    route_index_put(ctx, ctx->n_routes++);
    /* the prefix length, in its family's list, longest first */
    int f = family == 6;
    uint32_t i = 0;
    while (i < ctx->n_plens[f] && ctx->plens[f][i] > plen)
        i++;
    if (i == ctx->n_plens[f] || ctx->plens[f][i] != plen) {
        memmove(&ctx->plens[f][i + 1], &ctx->plens[f][i], ctx->n_plens[f] - i);
        ctx->plens[f][i] = plen;
        ctx->n_plens[f]++;
    }
    hops_stale(ctx);
    return 0;
}

int io_routes_load(struct io_ctx *ctx, const struct io_route_entry *routes, uint32_t n,
                   const struct io_nexthop_entry *nexthops, uint32_t n_nexthops)
{
    io_routes_clear(ctx);
    uint8_t gws[255 * 16];
    int ports[255];
    uint32_t weights[255];
    uint32_t refused = 0, k = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct io_route_entry *r = &routes[i];
        if (k + r->n_nh > n_nexthops)
            return -EINVAL;
        for (uint32_t j = 0; j < r->n_nh; j++, k++) {
            memcpy(gws + 16 * j, nexthops[k].gw, 16);
            ports[j] = nexthops[k].port_id;
            weights[j] = nexthops[k].weight;
        }
        int rc = io_route_add(ctx, r->family, r->prefix, r->plen, r->kind, gws, ports, weights, r->n_nh);
        if (rc == -ENOMEM)
            return rc;
        refused += rc < 0;
    }
    return (int)refused;
}

static void neigh_clear(struct io_ctx *ctx)
{
    memset(ctx->neigh, 0, IO_NEIGH_SLOTS * sizeof *ctx->neigh);
    ctx->n_neigh = 0;
    hops_stale(ctx);
}

int io_neigh_set(struct io_ctx *ctx, uint8_t family, const uint8_t *addr, int port_id,
                 const uint8_t *mac)
{
    uint8_t a[16] = {0};
    memcpy(a, addr, family == 4 ? 4 : 16);
    struct neigh *n = neigh_slot(ctx, family, port_id, a, 1);
    if (!n || (!n->used && 2 * (ctx->n_neigh + 1) > IO_NEIGH_SLOTS))
        return -ENOSPC;
    if (!n->used)
        ctx->n_neigh++;
    /* a known neighbour failed or came back: hops hold its slot only while
     * it has a MAC (a new MAC they read from the slot); a new neighbour is
     * in no hop yet */
    if (n->used && n->failed != !mac)
        hops_stale(ctx);
    memcpy(n->addr, a, 16);
    if (mac)
        memcpy(n->mac, mac, 6);
    else
        memset(n->mac, 0, 6);
    n->failed = !mac;
    n->family = family;
    n->port_id = port_id;
    n->used = 1;
    return 0;
}

int io_neigh_load(struct io_ctx *ctx, const struct io_neigh_entry *entries, uint32_t n)
{
    neigh_clear(ctx);
    int refused = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct io_neigh_entry *e = &entries[i];
        refused += io_neigh_set(ctx, e->family, e->addr, e->port_id, e->failed ? NULL : e->mac) != 0;
    }
    return refused;
}

void io_table_sizes(const struct io_ctx *ctx, uint32_t *routes, uint32_t *neighbours)
{
    *routes = ctx->n_routes;
    *neighbours = ctx->n_neigh;
}

uint32_t io_neigh_used(struct io_ctx *ctx, struct io_neigh_use *out, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < IO_NEIGH_SLOTS && n < max; i++) {
        const struct neigh *e = &ctx->neigh[i];
        if (e->used && !e->failed && e->epoch == ctx->epoch) {
            out[n].family = e->family;
            memcpy(out[n].addr, e->addr, 16);
            out[n].port_id = e->port_id;
            n++;
        }
    }
    if (++ctx->epoch == 0)
        ctx->epoch = 1;
    return n;
}

static void to_kernel(struct io_ctx *ctx, uint8_t *data, uint32_t len, int why)
{
    ctx->counters[why]++;
    if (ctx->tap_fd < 0) {
        ctx->counters[IO_C_DROP_KERNEL_WRITE]++;
        return;
    }
    memcpy(data, ctx->tap_mac, 6);
    if (write(ctx->tap_fd, data, len) != (ssize_t)len)
        ctx->counters[IO_C_DROP_KERNEL_WRITE]++;
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
static int next_hop(struct io_ctx *ctx, const struct nat_frame *f, uint8_t family, const uint8_t *src,
                    const uint8_t *dst, const uint8_t **mac, int *egress, int *unreach)
{
    struct hop *h = NULL;
    if (f->session < ctx->max_sessions) {
        h = &ctx->hops[(size_t)f->session * 2 + f->dir];
        if (h->gen == ctx->gen && h->serial == f->serial) {
            ctx->counters[IO_C_FWD_CACHE_HIT]++;
            struct neigh *n = &ctx->neigh[h->nslot];
            if (n->epoch != ctx->epoch)   /* a store only once per epoch: the line stays shared */
                n->epoch = ctx->epoch;
            *mac = n->mac;
            return h->port_id;
        }
    }
    int port;
    struct neigh *n;
    int rc = route_resolve(ctx, family, src, dst, &port, &n, unreach);
    if (port >= IO_MAX_PORTS || (port >= 0 && !ctx->tx_port[port]))
        return -IO_C_TO_KERNEL_NO_ROUTE;
    *egress = port;
    if (rc < 0)
        return rc;
    n->epoch = ctx->epoch;
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
    uint8_t s[16] = {0}, d[16] = {0};
    memcpy(s, src, family == 4 ? 4 : 16);
    memcpy(d, dst, family == 4 ? 4 : 16);
    struct neigh *n;
    int unreach = -1;
    int rc = route_resolve(ctx, family, s, d, port_out, &n, &unreach);
    if (n && !n->failed)
        memcpy(mac_out, n->mac, 6);
    *unreach_out = unreach;
    return rc;
}

void io_set_nat(struct io_ctx *ctx, struct nat *nat, nat_session_get_fn session_get)
{
    ctx->nat = nat;
    ctx->session_get = session_get;
}

int io_port_set_mtu(struct io_ctx *ctx, int port_id, uint32_t mtu)
{
    if (port_id < 0 || port_id >= IO_MAX_PORTS || !ctx->tx_port[port_id] || mtu < 68)
        return -EINVAL;
    ctx->tx_port[port_id]->mtu = mtu;
    return 0;
}

void io_port_set_mac(struct io_port *p, const uint8_t *mac) { memcpy(p->mac, mac, 6); }

void io_port_addresses_clear(struct io_ctx *ctx)
{
    memset(ctx->port_has_addr, 0, sizeof ctx->port_has_addr);
}

int io_port_address(struct io_ctx *ctx, int port_id, uint8_t family, const uint8_t *addr)
{
    if (port_id < 0 || port_id >= IO_MAX_PORTS || (family != 4 && family != 6))
        return -EINVAL;
    int f = family == 6;
    memset(ctx->port_addr[port_id][f], 0, 16);
    memcpy(ctx->port_addr[port_id][f], addr, family == 4 ? 4 : 16);
    ctx->port_has_addr[port_id][f] = 1;
    return 0;
}

/* A 16-bit field in network order (checksums use csum.h's st16). */
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
 * frame goes to the kernel, which applies its own limit. */
#define IO_ICMP_PER_SEC 1000
#define IO_ICMP_BURST 50

static int icmp_allowed(struct io_ctx *ctx)
{
    uint64_t now = now_ns(), elapsed = now - ctx->icmp_tokens_at;
    uint64_t add = elapsed >= 1000000000ull ? IO_ICMP_BURST : elapsed * IO_ICMP_PER_SEC / 1000000000ull;
    if (add) {
        ctx->icmp_tokens = add + ctx->icmp_tokens > IO_ICMP_BURST ? IO_ICMP_BURST
                                                                   : (uint32_t)(add + ctx->icmp_tokens);
        ctx->icmp_tokens_at = now;
    }
    if (!ctx->icmp_tokens)
        return 0;
    ctx->icmp_tokens--;
    return 1;
}

/* Answer a translated frame's sender with ICMP "fragmentation needed" /
 * "packet too big" (mtu), "time exceeded in transit", "network
 * unreachable" / "no route to destination", "host unreachable" / "address
 * unreachable" or "administratively prohibited", from the ingress
 * interface's address, quoting the frame as the sender sent it, before
 * translation. Returns 0 if sent. */
static int send_icmp_error(struct io_ctx *ctx, const struct nat_frame *f, uint8_t family, uint8_t *ip,
                           uint32_t iplen, enum icmp_error kind, uint32_t mtu)
{
    struct nat_session_info si;
    struct io_port *in = f->port < IO_MAX_PORTS ? ctx->tx_port[f->port] : NULL;
    int fi = family == 6;
    if (!ctx->session_get || !in || !ctx->port_has_addr[f->port][fi] || !icmp_allowed(ctx) ||
        ctx->session_get(ctx->nat, f->session, &si) != 0)
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
    if (tx_enqueue(ctx, in, out, 14 + outer + icmplen))
        return -1;
    static const int counter[] = {
        [ICMP_ERR_TOO_BIG] = IO_C_ICMP_TOO_BIG, [ICMP_ERR_TIME_EXCEEDED] = IO_C_ICMP_TIME_EXCEEDED,
        [ICMP_ERR_NO_ROUTE] = IO_C_ICMP_NO_ROUTE, [ICMP_ERR_HOST_UNREACH] = IO_C_ICMP_HOST_UNREACHABLE,
        [ICMP_ERR_ROUTE_UNREACH] = IO_C_ICMP_NO_ROUTE, [ICMP_ERR_PROHIBITED] = IO_C_ICMP_NO_ROUTE,
    };
    ctx->counters[counter[kind]]++;
    return 0;
}

/* A vip or SNAT address is the appliance's, not the kernel's: the kernel
 * would leave an ARP request or a neighbour solicitation for it unanswered,
 * and a host with that address inside its link's prefix could not reach it.
 * The XDP program sends us only those requests (steer.bpf.c,
 * nat_neighbour_request); this answers one from the ingress interface, as
 * the owner of the address. Returns 1 if the frame was such a request. */
static int answer_neighbour(struct io_ctx *ctx, const struct nat_frame *f)
{
    static const uint8_t arp_request[8] = {0, 1, 8, 0, 6, 4, 0, 1};
    const uint8_t *d = f->data;
    uint32_t len = f->len;
    struct io_port *in = f->port < IO_MAX_PORTS ? ctx->tx_port[f->port] : NULL;
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
    if (tx_enqueue(ctx, in, out, olen) == 0)
        ctx->counters[IO_C_NEIGH_ANSWERED]++;
    return 1;
}

static void forward_one(struct io_ctx *ctx, const struct nat_frame *f)
{
    uint8_t *d = f->data;
    uint32_t len = f->len;
    if (len < 14 + 20)
        return to_kernel(ctx, d, len, IO_C_TO_KERNEL_NO_ROUTE);
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
        return to_kernel(ctx, d, len, IO_C_TO_KERNEL_NO_ROUTE);
    }
    /* Translated frames get their ICMP errors from us, quoting the frame
     * as sent (also while the neighbour is unresolved); everything else
     * goes to the kernel, which fragments it or answers, as any Linux
     * router. */
    int translated = f->verdict == NAT_FORWARD && f->session != NAT_NONE;
    const uint8_t *mac;
    int egress = -1;
    int unreach = -1;
    int port = next_hop(ctx, f, family, src, dst, &mac, &egress, &unreach);
    if (port == -IO_C_TO_KERNEL_LOCAL)
        return to_kernel(ctx, d, len, IO_C_TO_KERNEL_LOCAL);   /* delivered at any TTL */
    if (port == -IO_C_DROP_BLACKHOLE) {                        /* as the kernel: silently */
        ctx->counters[IO_C_DROP_BLACKHOLE]++;
        return;
    }
    /* No route at all, or an unreachable or prohibit route (not one through
     * an interface that is not ours, which the kernel forwards): Linux
     * answers before any TTL check. */
    if ((unreach == ICMP_ERR_NO_ROUTE || unreach == ICMP_ERR_ROUTE_UNREACH || unreach == ICMP_ERR_PROHIBITED) &&
        translated && send_icmp_error(ctx, f, family, ip, iplen, (enum icmp_error)unreach, 0) == 0)
        return;
    if (port >= 0)
        egress = port;
    uint8_t *ttl = family == 4 ? ip + 8 : ip + 7;
    if (*ttl <= 1) {   /* as Linux's ip_forward: TTL first, then the MTU */
        if (translated && send_icmp_error(ctx, f, family, ip, iplen, ICMP_ERR_TIME_EXCEEDED, 0) == 0)
            return;
        return to_kernel(ctx, d, len, IO_C_TO_KERNEL_TTL);
    }
    if (egress >= 0 && iplen > ctx->tx_port[egress]->mtu) {
        /* not to be fragmented: IPv4 with DF, or IPv6 */
        if (translated && (family == 6 || (ip[6] & 0x40)) &&
            send_icmp_error(ctx, f, family, ip, iplen, ICMP_ERR_TOO_BIG, ctx->tx_port[egress]->mtu) == 0)
            return;
        return to_kernel(ctx, d, len, IO_C_TO_KERNEL_MTU);
    }
    if (port < 0) {
        /* A neighbour the kernel failed to resolve: Linux answers the
         * frames it queued with "host unreachable" once resolution fails;
         * ours quotes the frame as sent. The kernel still gets the frame,
         * so that it tries the neighbour again. */
        if (unreach == ICMP_ERR_HOST_UNREACH && translated)
            send_icmp_error(ctx, f, family, ip, iplen, ICMP_ERR_HOST_UNREACH, 0);
        return to_kernel(ctx, d, len, -port);
    }
    struct io_port *o = ctx->tx_port[port];
    if (family == 4) {
        uint16_t old = ld16(ip + 8);
        (*ttl)--;
        st16(ip + 10, csum_apply(ld16(ip + 10), csum_delta16(0, old, ld16(ip + 8))));
    } else {
        (*ttl)--;
    }
    memcpy(d, mac, 6);
    memcpy(d + 6, o->mac, 6);
    tx_enqueue(ctx, o, d, len);
}

void io_forward(struct io_ctx *ctx, struct io_port *p, struct nat_frame *frames, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct nat_frame *f = &frames[i];
        if (f->verdict == NAT_FORWARD || (f->verdict == NAT_PASS && !answer_neighbour(ctx, f)))
            forward_one(ctx, f);
        else if (f->verdict == NAT_MISS)   /* not resolved: see slow_path_may_run() */
            ctx->counters[IO_C_DROP_NEW_FLOW_BUSY]++;
        else
            ctx->counters[IO_C_DROP_NAT]++;
    }
    /* recycle the RX buffers */
    uint32_t idx;
    if (xsk_ring_prod__reserve(&p->fq, n, &idx) == n) {
        for (uint32_t i = 0; i < n; i++)
            *xsk_ring_prod__fill_addr(&p->fq, idx + i) = p->rx_addr[i];
        xsk_ring_prod__submit(&p->fq, n);
    }
    for (uint32_t i = 0; i < n; i++)
        demote(frames[i].data);
    /* A sendto() per small batch would cost more than the frames in it:
     * kick a TX ring once it holds a kernel TX batch (32 descriptors);
     * io_poll() flushes the rest whenever the RX rings run dry. */
    for (int i = 0; i < IO_MAX_PORTS; i++)
        if (ctx->tx_port[i] && ctx->tx_port[i]->pending_tx >= IO_TX_KICK)
            kick(ctx->tx_port[i]);
}

/* ---------------------------------------------------------------------------
 * BPF object and XDP attach
 */
#define IO_MAX_OBJS 8
static struct bpf_object *objs[IO_MAX_OBJS];

int io_xdp_load(const char *path, int *prog_fd)
{
    int id = -1;
    for (int i = 0; i < IO_MAX_OBJS; i++)
        if (!objs[i]) {
            id = i;
            break;
        }
    if (id < 0)
        return -ENOSPC;
    struct bpf_object *o = bpf_object__open_file(path, NULL);
    if (!o)
        return -errno;
    int rc = bpf_object__load(o);
    if (rc) {
        bpf_object__close(o);
        return rc;
    }
    struct bpf_program *prog = bpf_object__find_program_by_name(o, "appliance_steer");
    if (!prog) {
        bpf_object__close(o);
        return -ENOENT;
    }
    *prog_fd = bpf_program__fd(prog);
    objs[id] = o;
    return id;
}

int io_xdp_map_fd(int obj_id, const char *name)
{
    if (obj_id < 0 || obj_id >= IO_MAX_OBJS || !objs[obj_id])
        return -EINVAL;
    return bpf_object__find_map_fd_by_name(objs[obj_id], name);
}

int io_driver_name(const char *ifname, char *out, uint32_t size)
{
    struct ethtool_drvinfo info = {.cmd = ETHTOOL_GDRVINFO};
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    ifr.ifr_data = (void *)&info;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = ioctl(fd, SIOCETHTOOL, &ifr) ? -errno : 0;
    close(fd);
    if (!rc)
        snprintf(out, size, "%s", info.driver);
    return rc;
}

static int libbpf_silent(enum libbpf_print_level level, const char *fmt, va_list args)
{
    return 0;
}

int io_xdp_attach(int ifindex, int prog_fd, int native)
{
    if (!native)
        return bpf_xdp_attach(ifindex, prog_fd, XDP_FLAGS_SKB_MODE, NULL);
    /* A driver without native XDP (a bridge, say) is not an error: the
     * caller falls back to generic and says so; libbpf would print the
     * kernel's refusal on stderr. */
    libbpf_print_fn_t old = libbpf_set_print(libbpf_silent);
    int rc = bpf_xdp_attach(ifindex, prog_fd, XDP_FLAGS_DRV_MODE, NULL);
    libbpf_set_print(old);
    return rc;
}

int io_xdp_detach(int ifindex)
{
    int a = bpf_xdp_detach(ifindex, XDP_FLAGS_DRV_MODE, NULL);
    int b = bpf_xdp_detach(ifindex, XDP_FLAGS_SKB_MODE, NULL);
    return a ? a : b;
}

int io_map_update(int fd, const void *key, const void *value, uint64_t flags)
{
    return bpf_map_update_elem(fd, key, value, flags) ? -errno : 0;
}

int io_map_delete(int fd, const void *key) { return bpf_map_delete_elem(fd, key) ? -errno : 0; }

int io_map_lookup(int fd, const void *key, void *value)
{
    return bpf_map_lookup_elem(fd, key, value) ? -errno : 0;
}


static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* New flows and established ones share the core. The slow path (Python)
 * earns credit at 1/IO_SLOW_SHARE of the wall-clock time, up to
 * IO_SLOW_CREDIT_MAX_NS (a burst of a few thousand new flows), and spends it
 * from each MISS return to the next io_poll() call. A new flow's frame is
 * dropped unresolved (drop_new_flow_busy) only when that credit is used up
 * and more than 1/IO_SLOW_SHARE of its socket's RX ring waits behind the
 * batch: a flood of new flows then gets a quarter of the core, established
 * flows keep their RX buffers instead of losing frames at the kernel's empty
 * fill ring, and nothing is dropped while nothing waits. Their senders
 * retry. Measured (BENCHMARKS.md, overload): with half the core for new
 * flows an established flow kept 71 % of its frames, with a quarter 99 %. */
#define IO_SLOW_SHARE 4
#define IO_SLOW_CREDIT_MAX_NS 20000000ll

static void slow_credit_update(struct io_ctx *ctx, uint64_t now)
{
    ctx->slow_credit += (int64_t)(now - ctx->slow_at) / IO_SLOW_SHARE;
    if (ctx->miss_at) {
        ctx->slow_credit -= (int64_t)(now - ctx->miss_at);
        ctx->miss_at = 0;
    }
    if (ctx->slow_credit > IO_SLOW_CREDIT_MAX_NS)
        ctx->slow_credit = IO_SLOW_CREDIT_MAX_NS;
    ctx->slow_at = now;
}

/* The producer index is the kernel's latest; read once per new flow. */
static int slow_path_may_run(struct io_ctx *ctx, const struct io_port *p)
{
    slow_credit_update(ctx, now_ns());
    if (ctx->slow_credit > 0)
        return 1;
    uint32_t waiting = __atomic_load_n(p->rx.producer, __ATOMIC_ACQUIRE) - p->rx.cached_cons;
    return waiting <= p->rx.size / IO_SLOW_SHARE;
}

/* One non-empty RX ring, round robin from the port after the last one. */
static uint32_t rx_any(struct io_port *const *ports, uint32_t nports, struct nat_frame *frames,
                       uint32_t max, struct io_poll_state *st)
{
    for (uint32_t k = 0; k < nports; k++) {
        st->port = st->port + 1 < nports ? st->port + 1 : 0;
        uint32_t n = io_rx(ports[st->port], frames, max);
        if (n)
            return n;
    }
    return 0;
}

int io_poll(struct io_ctx *ctx, struct io_port *const *ports, uint32_t nports, struct nat *nat,
            nat_process_fn process, struct nat_frame *frames, uint32_t max, uint64_t nap_ns,
            uint64_t idle_ns, uint64_t budget_ns, struct io_poll_state *st)
{
    uint64_t start = now_ns(), end = start + budget_ns;
    if (ctx->miss_at)
        slow_credit_update(ctx, start);   /* back from the slow path */
    for (;;) {
        if (st->n == 0) {
            uint32_t n = rx_any(ports, nports, frames, max, st);
            if (!n && idle_ns) {
                struct timespec nap = {.tv_sec = 0, .tv_nsec = (long)nap_ns};
                uint64_t until = now_ns() + idle_ns;
                io_flush(ctx);
                do {
                    if (nap_ns) {
                        nanosleep(&nap, NULL);
                        ctx->counters[IO_C_NAPS]++;
                    }
                    n = rx_any(ports, nports, frames, max, st);
                } while (!n && now_ns() < until);
            }
            if (!n) {
                for (uint32_t k = 0; k < nports; k++)
                    if (xsk_ring_prod__needs_wakeup(&ports[k]->fq))
                        recvfrom(xsk_socket__fd(ports[k]->xsk), NULL, 0, MSG_DONTWAIT, NULL, NULL);
                return IO_POLL_IDLE;
            }
            st->n = n;
            st->next = 0;
            st->now_ns = realtime_ns();
        }
        while (st->next < st->n) {
            st->next += process(nat, frames + st->next, st->n - st->next, st->now_ns, 0);
            if (frames[st->next - 1].verdict != NAT_MISS)
                break;
            if (slow_path_may_run(ctx, ports[st->port])) {
                io_flush(ctx);         /* the slow path takes a while */
                ctx->miss_at = now_ns();
                return IO_POLL_MISS;   /* resolved by the caller; the next call goes on */
            }
            /* left a MISS: io_forward() drops it and counts it */
        }
        io_forward(ctx, ports[st->port], frames, st->n);
        st->n = st->next = 0;
        if (now_ns() >= end)
            break;
    }
    io_flush(ctx);
    return IO_POLL_BUDGET;
}

int io_timer_slack(uint64_t ns)
{
    return prctl(PR_SET_TIMERSLACK, (unsigned long)ns, 0, 0, 0) ? -errno : 0;
}

const char *io_build_version(void) { return IO_BUILD_VERSION; }

static const char *const counter_names[] = {
#define _(name, text) #name,
#include "io_counters.def"
#undef _
};

static const char *const counter_help[] = {
#define _(name, text) text,
#include "io_counters.def"
#undef _
};

static const char *const steer_counter_names[] = {
#define _(name, text) #name,
#include "steer_counters.def"
#undef _
};

unsigned io_counter_count(void) { return IO_C__COUNT; }
const char *io_counter_name(unsigned i) { return i < IO_C__COUNT ? counter_names[i] : NULL; }
const char *io_counter_help(unsigned i) { return i < IO_C__COUNT ? counter_help[i] : NULL; }
unsigned io_steer_counter_count(void) { return STEER_C__COUNT; }
const char *io_steer_counter_name(unsigned i) { return i < STEER_C__COUNT ? steer_counter_names[i] : NULL; }
