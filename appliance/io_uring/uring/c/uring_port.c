/*
 * The io_uring backend's port (docs/io.md): an AF_PACKET socket bound to
 * one interface, received with one multishot receive into a ring of
 * provided buffers, written with fixed-buffer writes from a registered TX
 * area, each through an io_uring of its own (receive, transmit), so that
 * reaping transmit completions never consumes a received frame. No system
 * call per packet: a batch is CQEs read from shared memory, and the
 * transmissions of a batch go to the kernel in one io_uring_submit().
 */
#include "io_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <liburing.h>

#define RX_BGID 1

struct uring_port {
    struct io_port port;     /* first: a struct io_port * is a struct uring_port * */
    int sock;                /* AF_PACKET, bound to the interface */
    int efd;                 /* eventfd the receive ring signals: what the worker sleeps on */
    struct io_uring rxr, txr;
    int rx_ready, tx_ready;  /* io_uring_queue_init done */
    struct io_uring_buf_ring *br;
    size_t br_size;
    uint8_t *rx_area;        /* nrx buffers of IO_FRAME_SIZE */
    uint32_t nrx;
    int armed;               /* the multishot receive is posted */
    uint16_t rx_bid[IO_BATCH_MAX];   /* the buffers of the last batch */
    uint8_t *tx_area;        /* ntx buffers, registered (buffer index 0) */
    uint32_t ntx;
    uint32_t *tx_free;
    uint32_t ntx_free;
    uint64_t drops;          /* the socket's drops, summed: reading them resets them */
};

static inline struct uring_port *U(struct io_port *p) { return (struct uring_port *)p; }
static inline const struct uring_port *CU(const struct io_port *p) { return (const struct uring_port *)p; }

/* Completions are not pushed to the worker by an interrupt each (the
 * default: an IPI per received frame when it runs on another CPU); the
 * kernel flags the ring (IORING_SQ_TASKRUN) and rx() collects them in one
 * enter a batch (kernels before 5.19: the default). */
static int ring_init(unsigned entries, struct io_uring *r)
{
    int rc = io_uring_queue_init(entries, r, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
    return rc == -EINVAL ? io_uring_queue_init(entries, r, 0) : rc;
}

static inline void collect(struct io_uring *r)
{
    if (IO_URING_READ_ONCE(*r->sq.kflags) & IORING_SQ_TASKRUN)
        io_uring_get_events(r);
}

static void arm(struct uring_port *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->rxr);
    if (!sqe)
        return;      /* the ring is full of nothing else: cannot happen; tried again next batch */
    /* MSG_TRUNC: a frame longer than a buffer reports its real length, so
     * it is dropped, never handed on cut short */
    io_uring_prep_recv_multishot(sqe, u->sock, NULL, 0, MSG_TRUNC);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = RX_BGID;
    io_uring_sqe_set_data64(sqe, 0);
    if (io_uring_submit(&u->rxr) >= 0)
        u->armed = 1;
}

static void give_back(struct uring_port *u, uint16_t bid, int offset)
{
    io_uring_buf_ring_add(u->br, u->rx_area + (size_t)bid * IO_FRAME_SIZE, IO_FRAME_SIZE, bid,
                          io_uring_buf_ring_mask(u->nrx), offset);
}

static uint32_t uring_rx(struct io_port *p, struct nat_frame *frames, uint32_t max)
{
    struct uring_port *u = U(p);
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    uint32_t n = 0, back = 0;
    collect(&u->rxr);
    io_uring_for_each_cqe(&u->rxr, head, cqe) {
        if (n == max)
            break;
        seen++;
        if (!(cqe->flags & IORING_CQE_F_MORE))
            u->armed = 0;    /* the multishot receive ended (no buffer left, an error): post it again */
        if (!(cqe->flags & IORING_CQE_F_BUFFER))
            continue;
        uint16_t bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        if (cqe->res <= 0 || cqe->res > IO_FRAME_SIZE) {
            if (cqe->res > IO_FRAME_SIZE)
                p->w->counters[IO_C_DROP_TOO_LONG]++;
            give_back(u, bid, back++);
            continue;
        }
        uint8_t *data = u->rx_area + (size_t)bid * IO_FRAME_SIZE;
        if (!steer_take(p->ctx, data, (uint32_t)cqe->res, p->mac)) {
            p->w->counters[IO_C_LEFT_TO_KERNEL]++;    /* its own copy is the kernel's */
            give_back(u, bid, back++);
            continue;
        }
        u->rx_bid[n] = bid;
        frames[n].data = data;
        frames[n].len = (uint32_t)cqe->res;
        frames[n].port = p->port_id;
        n++;
    }
    if (seen)
        io_uring_cq_advance(&u->rxr, seen);
    if (back)
        io_uring_buf_ring_advance(u->br, back);
    if (!u->armed)
        arm(u);
    return n;
}

static void uring_recycle(struct io_port *p, uint32_t n)
{
    struct uring_port *u = U(p);
    for (uint32_t i = 0; i < n; i++)
        give_back(u, u->rx_bid[i], (int)i);
    io_uring_buf_ring_advance(u->br, (int)n);
}

static void reap_tx(struct uring_port *u)
{
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    collect(&u->txr);
    io_uring_for_each_cqe(&u->txr, head, cqe) {
        seen++;
        if (cqe->res < 0)    /* counted as sent when queued: the kernel refused it after all */
            u->port.w->counters[IO_C_DROP_TX_REFUSED]++;
        u->tx_free[u->ntx_free++] = (uint32_t)io_uring_cqe_get_data64(cqe);
    }
    if (seen)
        io_uring_cq_advance(&u->txr, seen);
}

static void uring_kick(struct io_port *p)
{
    struct uring_port *u = U(p);
    if (p->pending_tx) {
        io_uring_submit(&u->txr);
        p->pending_tx = 0;
    }
    reap_tx(u);
}

static int uring_tx(struct io_port *o, const uint8_t *data, uint32_t len)
{
    struct uring_port *u = U(o);
    if (!u->ntx_free)
        reap_tx(u);
    struct io_uring_sqe *sqe = u->ntx_free ? io_uring_get_sqe(&u->txr) : NULL;
    if (!sqe) {
        uring_kick(o);       /* the submission ring is full: hand it over, then look again */
        sqe = u->ntx_free ? io_uring_get_sqe(&u->txr) : NULL;
        if (!sqe)
            return -1;
    }
    uint32_t idx = u->tx_free[--u->ntx_free];
    uint8_t *buf = u->tx_area + (size_t)idx * IO_FRAME_SIZE;
    copy_frame(buf, data, len);
    io_uring_prep_write_fixed(sqe, u->sock, buf, len, 0, 0);
    io_uring_sqe_set_data64(sqe, idx);
    o->pending_tx++;
    return 0;
}

static uint32_t uring_waiting(const struct io_port *p, uint32_t *size)
{
    const struct uring_port *u = CU(p);
    *size = u->nrx;
    return io_uring_cq_ready((struct io_uring *)&u->rxr);   /* what the kernel has posted so far */
}

/* Before the worker sleeps on the eventfd: clear it, then make sure no
 * completion came in between (it would not signal again). */
static void uring_wakeup(struct io_port *p)
{
    struct uring_port *u = U(p);
    uint64_t v = 1;
    if (read(u->efd, &v, sizeof v) < 0) {
        /* EAGAIN: it was clear */
    }
    if (!u->armed)
        arm(u);
    collect(&u->rxr);        /* completions held back as task work (COOP_TASKRUN) are posted now */
    if (io_uring_cq_ready(&u->rxr) && write(u->efd, &(uint64_t){1}, sizeof v) < 0) {
        /* the counter is far from full: cannot fail */
    }
}

static int uring_fd(const struct io_port *p) { return CU(p)->efd; }

static int uring_kernel_stats(const struct io_port *p, uint64_t *out6)
{
    struct uring_port *u = (struct uring_port *)p;
    return packet_kernel_stats(u->sock, &u->drops, out6);
}

static void uring_destroy(struct io_port *p)
{
    struct uring_port *u = U(p);
    if (u->rx_ready)
        io_uring_queue_exit(&u->rxr);
    if (u->tx_ready)
        io_uring_queue_exit(&u->txr);
    if (u->br && u->br != MAP_FAILED)
        munmap(u->br, u->br_size);
    if (u->rx_area && u->rx_area != MAP_FAILED)
        munmap(u->rx_area, (size_t)u->nrx * IO_FRAME_SIZE);
    if (u->tx_area && u->tx_area != MAP_FAILED)
        munmap(u->tx_area, (size_t)u->ntx * IO_FRAME_SIZE);
    if (u->sock >= 0)
        close(u->sock);
    if (u->efd >= 0)
        close(u->efd);
    free(u->tx_free);
    free(u);
}

static const struct io_port_ops uring_ops = {
    .name = "uring", .rx = uring_rx, .recycle = uring_recycle, .tx = uring_tx, .kick = uring_kick,
    .waiting = uring_waiting, .wakeup = uring_wakeup, .fd = uring_fd, .kernel_stats = uring_kernel_stats,
    .destroy = uring_destroy,
};

struct io_port *io_uring_port_open(struct io_worker *w, const char *ifname, uint16_t port_id, uint32_t nrx,
                                   uint32_t ntx, const uint8_t *mac, uint32_t mtu, uint16_t *fanout)
{
    if (nrx < IO_BATCH_MAX || ntx < IO_BATCH_MAX || (nrx & (nrx - 1)) || (ntx & (ntx - 1)) || nrx > 32768) {
        errno = EINVAL;
        return NULL;
    }
    struct uring_port *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->port.ops = &uring_ops;
    u->efd = -1;
    u->nrx = nrx;
    u->ntx = ntx;
    int rc;
    u->sock = packet_socket();
    if (u->sock < 0 || packet_bind(u->sock, ifname) || packet_fanout(u->sock, fanout))
        goto fail;
    /* The socket's own queue is what holds a burst while the worker is
     * away (AF_XDP's is its 8192-frame RX ring): the default, ~212 KB, is
     * ~100 full-size frames; room for 4 KiB of skb per receive buffer
     * (without CAP_NET_ADMIN: what net.core.rmem_max allows) */
    int rcvbuf = (int)(nrx * 4096u);
    if (setsockopt(u->sock, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf))
        setsockopt(u->sock, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    u->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (u->efd < 0)
        goto fail;
    if ((rc = ring_init(nrx < 4096 ? nrx : 4096, &u->rxr)) < 0)
        goto fail_rc;
    u->rx_ready = 1;
    if ((rc = ring_init(ntx, &u->txr)) < 0)
        goto fail_rc;
    u->tx_ready = 1;
    if ((rc = io_uring_register_eventfd(&u->rxr, u->efd)) < 0)
        goto fail_rc;
    u->rx_area = mmap(NULL, (size_t)nrx * IO_FRAME_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    u->tx_area = mmap(NULL, (size_t)ntx * IO_FRAME_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    u->br_size = (size_t)nrx * sizeof(struct io_uring_buf);
    u->br = mmap(NULL, u->br_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    u->tx_free = calloc(ntx, sizeof *u->tx_free);
    if (u->rx_area == MAP_FAILED || u->tx_area == MAP_FAILED || u->br == MAP_FAILED || !u->tx_free)
        goto fail;
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)u->br, .ring_entries = nrx, .bgid = RX_BGID};
    if ((rc = io_uring_register_buf_ring(&u->rxr, &reg, 0)) < 0)
        goto fail_rc;
    io_uring_buf_ring_init(u->br);
    for (uint32_t i = 0; i < nrx; i++)
        give_back(u, (uint16_t)i, (int)i);
    io_uring_buf_ring_advance(u->br, (int)nrx);
    struct iovec iov = {.iov_base = u->tx_area, .iov_len = (size_t)ntx * IO_FRAME_SIZE};
    if ((rc = io_uring_register_buffers(&u->txr, &iov, 1)) < 0)
        goto fail_rc;
    for (uint32_t i = 0; i < ntx; i++)
        u->tx_free[u->ntx_free++] = i;
    arm(u);
    if (!u->armed) {
        errno = EIO;
        goto fail;
    }
    if (port_attach(w, &u->port, &uring_ops, port_id, mac, mtu) != 0)
        goto fail;
    return &u->port;
fail_rc:
    errno = -rc;
fail:
    {
        int e = errno;
        uring_destroy(&u->port);
        errno = e;
    }
    return NULL;
}

int io_uring_probe(void)
{
    struct io_uring r;
    int rc = io_uring_queue_init(2, &r, 0);
    if (rc < 0)
        return rc;
    io_uring_queue_exit(&r);
    return 0;
}
