/*
 * The AF_XDP backend's port: one socket per (interface, RX queue), each
 * with its own UMEM, fill, completion, RX and TX rings, polled and written
 * by one worker (io_port_ops, io_internal.h).
 */
#include "io_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <bpf/bpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <xdp/xsk.h>

struct xdp_port {
    struct io_port port;     /* first: a struct io_port * is a struct xdp_port * */
    struct xsk_socket *xsk;
    struct xsk_umem *umem;
    struct xsk_ring_prod fq, tx;
    struct xsk_ring_cons cq, rx;
    uint8_t *area;
    size_t area_size;
    uint64_t *free;          /* TX chunks not in flight */
    uint32_t nfree;
    uint32_t outstanding;    /* TX descriptors submitted, not completed */
    uint64_t rx_addr[IO_BATCH_MAX];
};

static inline struct xdp_port *X(struct io_port *p) { return (struct xdp_port *)p; }
static inline const struct xdp_port *CX(const struct io_port *p) { return (const struct xdp_port *)p; }

static uint32_t xdp_rx(struct io_port *p, struct nat_frame *frames, uint32_t max)
{
    struct xdp_port *x = X(p);
    uint32_t idx;
    uint32_t n = xsk_ring_cons__peek(&x->rx, max, &idx);
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&x->rx, idx + i);
        x->rx_addr[i] = d->addr;
        frames[i].data = xsk_umem__get_data(x->area, d->addr);
        frames[i].len = d->len;
        frames[i].port = p->port_id;
    }
    if (n)
        xsk_ring_cons__release(&x->rx, n);
    return n;
}

/* The RX buffers of the last n frames received on p back to its fill ring. */
static void xdp_recycle(struct io_port *p, uint32_t n)
{
    struct xdp_port *x = X(p);
    uint32_t idx;
    if (xsk_ring_prod__reserve(&x->fq, n, &idx) == n) {
        for (uint32_t i = 0; i < n; i++)
            *xsk_ring_prod__fill_addr(&x->fq, idx + i) = x->rx_addr[i];
        xsk_ring_prod__submit(&x->fq, n);
    }
}

static void reap(struct xdp_port *x)
{
    uint32_t idx;
    uint32_t n = xsk_ring_cons__peek(&x->cq, x->outstanding, &idx);
    for (uint32_t i = 0; i < n; i++)
        x->free[x->nfree++] = *xsk_ring_cons__comp_addr(&x->cq, idx + i);
    if (n)
        xsk_ring_cons__release(&x->cq, n);
    x->outstanding -= n;
}

static void xdp_kick(struct io_port *p)
{
    struct xdp_port *x = X(p);
    if (x->port.pending_tx) {
        xsk_ring_prod__submit(&x->tx, x->port.pending_tx);
        x->outstanding += x->port.pending_tx;
        x->port.pending_tx = 0;
    }
    /* In copy mode one sendto() transmits at most 32 descriptors (the
     * kernel's TX_BATCH_SIZE), so kick until the ring is drained, bounded
     * by the ring size / 32. */
    for (uint32_t tries = 0; tries <= x->tx.size / 32; tries++) {
        if (xsk_prod_nb_free(&x->tx, x->tx.size) >= x->tx.size)
            break;   /* the kernel consumed every descriptor */
        if (!xsk_ring_prod__needs_wakeup(&x->tx))
            break;   /* zero-copy driver polling on its own */
        if (sendto(xsk_socket__fd(x->xsk), NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 &&
            errno != EAGAIN && errno != EBUSY && errno != ENOBUFS)
            break;
    }
    reap(x);
}

/* Received frames start XDP_PACKET_HEADROOM (256) into their 2 KiB chunk,
 * transmitted ones at its start: copy_frame()'s overrun stays inside. */
static int xdp_tx(struct io_port *o, const uint8_t *data, uint32_t len)
{
    struct xdp_port *x = X(o);
    uint32_t idx;
    if (!x->nfree)
        reap(x);
    if (!x->nfree || xsk_ring_prod__reserve(&x->tx, 1, &idx) != 1)
        return -1;
    uint64_t addr = x->free[--x->nfree];
    copy_frame(xsk_umem__get_data(x->area, addr), data, len);
    struct xdp_desc *d = xsk_ring_prod__tx_desc(&x->tx, idx);
    d->addr = addr;
    d->len = len;
    x->port.pending_tx++;
    return 0;
}

/* The producer index is the kernel's latest. */
static uint32_t xdp_waiting(const struct io_port *p, uint32_t *size)
{
    const struct xdp_port *x = CX(p);
    *size = x->rx.size;
    return __atomic_load_n(x->rx.producer, __ATOMIC_ACQUIRE) - x->rx.cached_cons;
}

/* Before sleeping on the socket: a fill ring that needs a wakeup gets one. */
static void xdp_wakeup(struct io_port *p)
{
    struct xdp_port *x = X(p);
    if (xsk_ring_prod__needs_wakeup(&x->fq))
        recvfrom(xsk_socket__fd(x->xsk), NULL, 0, MSG_DONTWAIT, NULL, NULL);
}

static int xdp_fd(const struct io_port *p) { return xsk_socket__fd(CX(p)->xsk); }

static int xdp_kernel_stats(const struct io_port *p, uint64_t *out6)
{
    struct xdp_statistics st;
    socklen_t len = sizeof st;
    memset(&st, 0, sizeof st);
    if (getsockopt(xsk_socket__fd(CX(p)->xsk), SOL_XDP, XDP_STATISTICS, &st, &len))
        return -errno;
    out6[0] = st.rx_dropped;
    out6[1] = st.rx_invalid_descs;
    out6[2] = st.tx_invalid_descs;
    out6[3] = st.rx_ring_full;
    out6[4] = st.rx_fill_ring_empty_descs;
    out6[5] = st.tx_ring_empty_descs;
    return 0;
}

static void xdp_destroy(struct io_port *p)
{
    struct xdp_port *x = X(p);
    if (x->xsk)
        xsk_socket__delete(x->xsk);
    if (x->umem)
        xsk_umem__delete(x->umem);
    if (x->area && x->area != MAP_FAILED)
        munmap(x->area, x->area_size);
    free(x->free);
    free(x);
}

static const struct io_port_ops xdp_ops = {
    .name = "xdp", .rx = xdp_rx, .recycle = xdp_recycle, .tx = xdp_tx, .kick = xdp_kick, .waiting = xdp_waiting,
    .wakeup = xdp_wakeup, .fd = xdp_fd, .kernel_stats = xdp_kernel_stats, .destroy = xdp_destroy,
};

struct io_port *io_xdp_port_open(struct io_worker *w, const char *ifname, uint32_t queue,
                                 uint16_t port_id, int xsks_map_fd, uint32_t key, uint32_t nrx,
                                 uint32_t ntx, const uint8_t *mac, uint32_t mtu, int zerocopy)
{
    uint32_t nframes = nrx + ntx;
    if (port_id >= IO_MAX_PORTS || nrx < IO_BATCH_MAX || ntx < IO_BATCH_MAX || (nrx & (nrx - 1)) ||
        (ntx & (ntx - 1)) || w->nports >= IO_MAX_PORTS) {
        errno = EINVAL;
        return NULL;
    }
    struct xdp_port *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->port.ops = &xdp_ops;
    x->area_size = (size_t)nframes * IO_FRAME_SIZE;
    x->area = mmap(NULL, x->area_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (x->area == MAP_FAILED)
        goto fail;
    /* Every frame is a different 2 KiB chunk: with 4 KiB pages the NAT's
     * first touch of a frame is a TLB miss as well as a cache miss.
     * Transparent huge pages where the kernel allows them (best effort). */
    madvise(x->area, x->area_size, MADV_HUGEPAGE);
    /* The fill ring has room for twice the RX frames, so it is never full:
     * reserving fill slots reads the kernel's consumer index (a cache line
     * the sending CPU writes for every frame) once per nrx frames instead of
     * once per batch. */
    struct xsk_umem_config ucfg = {
        .fill_size = 2 * nrx, .comp_size = nframes - nrx, .frame_size = IO_FRAME_SIZE,
        .frame_headroom = 0, .flags = 0,
    };
    int rc = xsk_umem__create(&x->umem, x->area, x->area_size, &x->fq, &x->cq, &ucfg);
    if (rc)
        goto fail_rc;
    struct xsk_socket_config scfg = {
        .rx_size = nrx, .tx_size = nframes - nrx,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
        .xdp_flags = XDP_FLAGS_DRV_MODE,
        .bind_flags = XDP_USE_NEED_WAKEUP | (zerocopy ? XDP_ZEROCOPY : XDP_COPY),
    };
    rc = xsk_socket__create(&x->xsk, ifname, queue, x->umem, &x->rx, &x->tx, &scfg);
    if (rc)
        goto fail_rc;
    rc = bpf_map_update_elem(xsks_map_fd, &key, &(int){xsk_socket__fd(x->xsk)}, 0);
    if (rc)
        goto fail_rc;
    uint32_t idx;
    if (xsk_ring_prod__reserve(&x->fq, nrx, &idx) != nrx) {
        rc = -ENOMEM;
        goto fail_rc;
    }
    for (uint32_t i = 0; i < nrx; i++)
        *xsk_ring_prod__fill_addr(&x->fq, idx + i) = (uint64_t)i * IO_FRAME_SIZE;
    xsk_ring_prod__submit(&x->fq, nrx);
    x->free = calloc(nframes - nrx, sizeof *x->free);
    if (!x->free)
        goto fail;
    for (uint32_t i = nrx; i < nframes; i++)
        x->free[x->nfree++] = (uint64_t)i * IO_FRAME_SIZE;
    if (port_attach(w, &x->port, &xdp_ops, port_id, mac, mtu) != 0)
        goto fail;
    return &x->port;
fail_rc:
    errno = rc < 0 ? -rc : rc;
fail:
    {
        int e = errno;
        xdp_destroy(&x->port);
        errno = e;
    }
    return NULL;
}
