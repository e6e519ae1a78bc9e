/*
 * The mmap backend's port (docs/io.md): an AF_PACKET socket bound to one
 * interface with a PACKET_MMAP receive ring and transmit ring
 * (TPACKET_V2), for where neither XDP nor io_uring is allowed: the
 * default seccomp profiles of Docker, containerd and podman permit it.
 *
 * Receiving is no system call at all: the kernel copies each frame into
 * the next free slot of the ring and flags it TP_STATUS_USER; a batch is
 * the flagged slots from our cursor on, handed back by setting them
 * TP_STATUS_KERNEL. Transmitting fills slots of the TX ring and flags them
 * TP_STATUS_SEND_REQUEST; kick() hands them all over in one sendto(). The
 * kernel frees a slot (TP_STATUS_AVAILABLE) when the frame's skb is gone.
 *
 * TPACKET_V2, not V3: V3 hands a block of frames over only when it is full
 * or its timer (at least 1 ms) runs out, which at low rates delays every
 * frame by that timer; V2 hands over each frame as it lands.
 */
#include "io_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/if_packet.h>

#define SLOT_SIZE 2048           /* a slot: the tpacket2_hdr, then the frame */
#define BLOCK_SIZE (1u << 16)    /* the kernel's unit of ring memory: 32 slots */
/* where a transmitted frame starts in its slot (no PACKET_TX_HAS_OFF) */
#define TX_DATA (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll))

struct mmap_port {
    struct io_port port;     /* first: a struct io_port * is a struct mmap_port * */
    int sock;
    uint8_t *ring;           /* RX slots, then TX slots: one mapping */
    size_t ring_size;
    uint8_t *tx_ring;
    uint32_t nrx, ntx;       /* slots, powers of two */
    uint32_t rx_head;        /* the next RX slot to look at */
    uint32_t tx_head;        /* the next TX slot to fill */
    uint32_t rx_slot[IO_BATCH_MAX];   /* the slots of the last batch */
    uint64_t drops;          /* the socket's drops, summed */
};

static inline struct mmap_port *M(struct io_port *p) { return (struct mmap_port *)p; }
static inline const struct mmap_port *CM(const struct io_port *p) { return (const struct mmap_port *)p; }

static inline struct tpacket2_hdr *rx_hdr(const struct mmap_port *m, uint32_t i)
{
    return (struct tpacket2_hdr *)(m->ring + (size_t)(i & (m->nrx - 1)) * SLOT_SIZE);
}

static inline struct tpacket2_hdr *tx_hdr(const struct mmap_port *m, uint32_t i)
{
    return (struct tpacket2_hdr *)(m->tx_ring + (size_t)(i & (m->ntx - 1)) * SLOT_SIZE);
}

/* The kernel reads tp_status before it writes a slot and writes it last:
 * acquire/release pair with its smp_wmb/smp_rmb. */
static inline uint32_t status(const struct tpacket2_hdr *h)
{
    return __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
}

static inline void set_status(struct tpacket2_hdr *h, uint32_t s)
{
    __atomic_store_n(&h->tp_status, s, __ATOMIC_RELEASE);
}

static uint32_t mmap_rx(struct io_port *p, struct nat_frame *frames, uint32_t max)
{
    struct mmap_port *m = M(p);
    uint32_t n = 0;
    /* at most one ring round: slots of the last batch not yet recycled
     * are still TP_STATUS_USER */
    for (uint32_t seen = 0; n < max && seen < m->nrx; seen++) {
        struct tpacket2_hdr *h = rx_hdr(m, m->rx_head);
        if (!(status(h) & TP_STATUS_USER))
            break;
        uint32_t slot = m->rx_head++ & (m->nrx - 1);
        uint8_t *data = (uint8_t *)h + h->tp_mac;
        if (h->tp_snaplen < h->tp_len) {      /* longer than a slot: cut short by the kernel */
            p->w->counters[IO_C_DROP_TOO_LONG]++;
            set_status(h, TP_STATUS_KERNEL);
            continue;
        }
        if (!steer_take(p->ctx, data, h->tp_snaplen, p->mac)) {
            p->w->counters[IO_C_LEFT_TO_KERNEL]++;    /* its own copy is the kernel's */
            set_status(h, TP_STATUS_KERNEL);
            continue;
        }
        m->rx_slot[n] = slot;
        frames[n].data = data;
        frames[n].len = h->tp_snaplen;
        frames[n].port = p->port_id;
        n++;
    }
    return n;
}

static void mmap_recycle(struct io_port *p, uint32_t n)
{
    struct mmap_port *m = M(p);
    for (uint32_t i = 0; i < n; i++)
        set_status(rx_hdr(m, m->rx_slot[i]), TP_STATUS_KERNEL);
}

static void mmap_kick(struct io_port *p)
{
    struct mmap_port *m = M(p);
    if (!p->pending_tx)
        return;
    /* every slot flagged TP_STATUS_SEND_REQUEST, sent without waiting for
     * their completion */
    if (sendto(m->sock, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN && errno != ENOBUFS)
        p->w->counters[IO_C_DROP_TX_REFUSED] += p->pending_tx;
    p->pending_tx = 0;
}

static int mmap_tx(struct io_port *o, const uint8_t *data, uint32_t len)
{
    struct mmap_port *m = M(o);
    if (len > SLOT_SIZE - TX_DATA)
        return -1;
    struct tpacket2_hdr *h = tx_hdr(m, m->tx_head);
    uint32_t s = status(h);
    if (s == TP_STATUS_SEND_REQUEST || s == TP_STATUS_SENDING) {
        mmap_kick(o);        /* the ring is full of frames in flight: hand over ours, look again */
        s = status(h);
        if (s == TP_STATUS_SEND_REQUEST || s == TP_STATUS_SENDING)
            return -1;
    }
    if (s == TP_STATUS_WRONG_FORMAT)   /* a frame before it the kernel would not send */
        o->w->counters[IO_C_DROP_TX_REFUSED]++;
    copy_frame((uint8_t *)h + TX_DATA, data, len);
    h->tp_len = len;
    h->tp_snaplen = len;
    set_status(h, TP_STATUS_SEND_REQUEST);
    m->tx_head++;
    o->pending_tx++;
    return 0;
}

static uint32_t mmap_waiting(const struct io_port *p, uint32_t *size)
{
    const struct mmap_port *m = CM(p);
    *size = m->nrx;
    /* flagged slots from the cursor on: enough to tell a backlog above
     * the slow path's share (io_poll.c) from none */
    uint32_t n = 0, cap = m->nrx / 4;
    while (n < cap && (status(rx_hdr(m, m->rx_head + n)) & TP_STATUS_USER))
        n++;
    return n;
}

/* poll() on the socket says readable when the slot the kernel filled last
 * is not ours to give back: nothing to prepare */
static void mmap_wakeup(struct io_port *p) {}

static int mmap_fd(const struct io_port *p) { return CM(p)->sock; }

static int mmap_kernel_stats(const struct io_port *p, uint64_t *out6)
{
    struct mmap_port *m = (struct mmap_port *)p;
    return packet_kernel_stats(m->sock, &m->drops, out6);
}

static void mmap_destroy(struct io_port *p)
{
    struct mmap_port *m = M(p);
    if (m->ring && m->ring != MAP_FAILED)
        munmap(m->ring, m->ring_size);
    if (m->sock >= 0)
        close(m->sock);
    free(m);
}

static const struct io_port_ops mmap_ops = {
    .name = "mmap", .rx = mmap_rx, .recycle = mmap_recycle, .tx = mmap_tx, .kick = mmap_kick,
    .waiting = mmap_waiting, .wakeup = mmap_wakeup, .fd = mmap_fd, .kernel_stats = mmap_kernel_stats,
    .destroy = mmap_destroy,
};

static int set_ring(int sock, int opt, uint32_t slots)
{
    struct tpacket_req req = {
        .tp_block_size = BLOCK_SIZE,
        .tp_block_nr = slots / (BLOCK_SIZE / SLOT_SIZE),
        .tp_frame_size = SLOT_SIZE,
        .tp_frame_nr = slots,
    };
    return setsockopt(sock, SOL_PACKET, opt, &req, sizeof req);
}

struct io_port *io_mmap_port_open(struct io_worker *w, const char *ifname, uint16_t port_id, uint32_t nrx,
                                  uint32_t ntx, const uint8_t *mac, uint32_t mtu, uint16_t *fanout)
{
    uint32_t per_block = BLOCK_SIZE / SLOT_SIZE;
    if (nrx < IO_BATCH_MAX || ntx < IO_BATCH_MAX || (nrx & (nrx - 1)) || (ntx & (ntx - 1)) || nrx < per_block ||
        ntx < per_block || nrx > 65536 || ntx > 65536) {
        errno = EINVAL;
        return NULL;
    }
    struct mmap_port *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->port.ops = &mmap_ops;
    m->nrx = nrx;
    m->ntx = ntx;
    m->sock = packet_socket();
    if (m->sock < 0)
        goto fail;
    int version = TPACKET_V2;
    if (setsockopt(m->sock, SOL_PACKET, PACKET_VERSION, &version, sizeof version) ||
        set_ring(m->sock, PACKET_RX_RING, nrx) || set_ring(m->sock, PACKET_TX_RING, ntx))
        goto fail;
    m->ring_size = (size_t)(nrx + ntx) * SLOT_SIZE;
    m->ring = mmap(NULL, m->ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, m->sock, 0);
    if (m->ring == MAP_FAILED)   /* without the memlock allowance: unlocked */
        m->ring = mmap(NULL, m->ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, m->sock, 0);
    if (m->ring == MAP_FAILED)
        goto fail;
    m->tx_ring = m->ring + (size_t)nrx * SLOT_SIZE;
    if (packet_bind(m->sock, ifname) || packet_fanout(m->sock, fanout) || port_attach(w, &m->port, &mmap_ops, port_id, mac, mtu) != 0)
        goto fail;
    return &m->port;
fail:
    {
        int e = errno;
        mmap_destroy(&m->port);
        errno = e;
    }
    return NULL;
}
