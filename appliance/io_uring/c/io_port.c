/*
 * AF_XDP sockets: one per (interface, RX queue), each with its own UMEM,
 * fill, completion, RX and TX rings, polled and written by one worker.
 */
#include "io_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <bpf/bpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>

struct io_port *io_port_open(struct io_worker *w, const char *ifname, uint32_t queue,
                             uint16_t port_id, int xsks_map_fd, uint32_t key, uint32_t nrx,
                             uint32_t ntx, const uint8_t *mac, uint32_t mtu, int zerocopy)
{
    struct io_ctx *ctx = w->ctx;
    uint32_t nframes = nrx + ntx;
    if (port_id >= IO_MAX_PORTS || nrx < IO_BATCH_MAX || ntx < IO_BATCH_MAX || (nrx & (nrx - 1)) ||
        (ntx & (ntx - 1)) || w->nports >= IO_MAX_PORTS) {
        errno = EINVAL;
        return NULL;
    }
    struct io_port *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->ctx = ctx;
    p->port_id = port_id;
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
    tables_pause(ctx);
    p->w = w;
    w->ports[w->nports++] = p;
    if (!w->tx_port[port_id])
        w->tx_port[port_id] = p;
    if (!ctx->has_port[port_id]) {
        ctx->has_port[port_id] = 1;
        ctx->mtu[port_id] = mtu;
    }
    tables_resume(ctx);
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
    struct io_worker *w = p->w;
    if (w) {
        tables_pause(p->ctx);
        for (uint32_t i = 0; i < w->nports; i++)
            if (w->ports[i] == p) {
                w->ports[i] = w->ports[--w->nports];
                break;
            }
        if (w->tx_port[p->port_id] == p) {
            w->tx_port[p->port_id] = NULL;
            for (uint32_t i = 0; i < w->nports; i++)   /* another of its sockets on that port */
                if (w->ports[i]->port_id == p->port_id) {
                    w->tx_port[p->port_id] = w->ports[i];
                    break;
                }
        }
        tables_resume(p->ctx);
    }
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

uint64_t io_port_rx(const struct io_port *p) { return __atomic_load_n(&p->rx_frames, __ATOMIC_RELAXED); }

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

void io_port_set_mac(struct io_port *p, const uint8_t *mac)
{
    tables_pause(p->ctx);
    memcpy(p->mac, mac, 6);
    tables_resume(p->ctx);
}

uint32_t io_rx(struct io_port *p, struct nat_frame *frames, uint32_t max)
{
    uint32_t idx;
    if (max > IO_BATCH_MAX)
        max = IO_BATCH_MAX;
    uint32_t n = xsk_ring_cons__peek(&p->rx, max, &idx);
    if (!n)
        return 0;
    p->w->counters[IO_C_RX_BATCHES]++;
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&p->rx, idx + i);
        p->rx_addr[i] = d->addr;
        frames[i].data = xsk_umem__get_data(p->area, d->addr);
        frames[i].len = d->len;
        frames[i].port = p->port_id;
    }
    xsk_ring_cons__release(&p->rx, n);
    p->w->counters[IO_C_RX] += n;
    __atomic_store_n(&p->rx_frames, p->rx_frames + n, __ATOMIC_RELAXED);
    return n;
}

/* One non-empty RX ring of the worker's, round robin from the one after
 * *port (its index in w->ports, updated). */
uint32_t rx_any(struct io_worker *w, struct nat_frame *frames, uint32_t max, uint32_t *port)
{
    for (uint32_t k = 0; k < w->nports; k++) {
        *port = *port + 1 < w->nports ? *port + 1 : 0;
        uint32_t n = io_rx(w->ports[*port], frames, max);
        if (n)
            return n;
    }
    return 0;
}

/* Before sleeping on the sockets: a fill ring that needs a wakeup gets one. */
void ports_wakeup(struct io_worker *w)
{
    for (uint32_t k = 0; k < w->nports; k++)
        if (xsk_ring_prod__needs_wakeup(&w->ports[k]->fq))
            recvfrom(xsk_socket__fd(w->ports[k]->xsk), NULL, 0, MSG_DONTWAIT, NULL, NULL);
}

/* The RX buffers of the last n frames received on p back to its fill ring. */
void port_recycle(struct io_port *p, uint32_t n)
{
    uint32_t idx;
    if (xsk_ring_prod__reserve(&p->fq, n, &idx) == n) {
        for (uint32_t i = 0; i < n; i++)
            *xsk_ring_prod__fill_addr(&p->fq, idx + i) = p->rx_addr[i];
        xsk_ring_prod__submit(&p->fq, n);
    }
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

void port_kick(struct io_port *p)
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

void io_flush(struct io_worker *w)
{
    for (int i = 0; i < IO_MAX_PORTS; i++)
        if (w->tx_port[i])
            port_kick(w->tx_port[i]);
}

/* Most frames are short, and memcpy() of a variable length compiled to
 * `rep movsq` here: 78 % of io_forward's samples. Short frames are copied
 * in 32-byte blocks instead; the overrun (< 32 bytes) stays inside both
 * 2 KiB chunks: received frames start XDP_PACKET_HEADROOM (256) into
 * theirs, transmitted ones at the start (and a worker's queued copies have
 * IO_FRAME_SIZE bytes). */
static inline void copy_frame(uint8_t *dst, const uint8_t *src, uint32_t len)
{
    if (len > 1024) {
        memcpy(dst, src, len);
        return;
    }
    for (uint32_t off = 0; off < len; off += 32)
        __builtin_memcpy(dst + off, src + off, 32);
}

int tx_enqueue(struct io_worker *w, struct io_port *o, const uint8_t *data, uint32_t len)
{
    uint32_t idx;
    if (!o->nfree)
        reap(o);
    if (!o->nfree || len > IO_FRAME_SIZE || xsk_ring_prod__reserve(&o->tx, 1, &idx) != 1) {
        w->counters[IO_C_DROP_TX_FULL]++;
        return -1;
    }
    uint64_t addr = o->free[--o->nfree];
    copy_frame(xsk_umem__get_data(o->area, addr), data, len);
    struct xdp_desc *d = xsk_ring_prod__tx_desc(&o->tx, idx);
    d->addr = addr;
    d->len = len;
    o->pending_tx++;
    w->counters[IO_C_TX]++;
    return 0;
}
