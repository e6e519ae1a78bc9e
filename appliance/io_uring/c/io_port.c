/*
 * Ports, whatever their backend: a port joins its worker, and the
 * datapath's calls go to the backend's io_port_ops. The per-packet call is
 * tx (one indirect call a frame); receiving is one call a batch.
 */
#include "io_internal.h"

#include <errno.h>

int port_attach(struct io_worker *w, struct io_port *p, const struct io_port_ops *ops, uint16_t port_id,
                const uint8_t *mac, uint32_t mtu)
{
    struct io_ctx *ctx = w->ctx;
    if (port_id >= IO_MAX_PORTS || w->nports >= IO_MAX_PORTS) {
        errno = EINVAL;
        return -1;
    }
    p->ops = ops;
    p->ctx = ctx;
    p->port_id = port_id;
    memcpy(p->mac, mac, 6);
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
    return 0;
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
    p->ops->destroy(p);
}

const char *io_port_backend(const struct io_port *p) { return p->ops->name; }

int io_port_fd(const struct io_port *p) { return p->ops->fd(p); }

uint64_t io_port_rx(const struct io_port *p) { return __atomic_load_n(&p->rx_frames, __ATOMIC_RELAXED); }

int io_port_kernel_stats(const struct io_port *p, uint64_t *out6) { return p->ops->kernel_stats(p, out6); }

void io_port_set_mac(struct io_port *p, const uint8_t *mac)
{
    tables_pause(p->ctx);
    memcpy(p->mac, mac, 6);
    tables_resume(p->ctx);
}

uint32_t io_rx(struct io_port *p, struct nat_frame *frames, uint32_t max)
{
    if (max > IO_BATCH_MAX)
        max = IO_BATCH_MAX;
    uint32_t n = p->ops->rx(p, frames, max);   /* sets data, len and port */
    if (!n)
        return 0;
    p->w->counters[IO_C_RX_BATCHES]++;
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

void ports_wakeup(struct io_worker *w)
{
    for (uint32_t k = 0; k < w->nports; k++)
        w->ports[k]->ops->wakeup(w->ports[k]);
}

void port_recycle(struct io_port *p, uint32_t n) { p->ops->recycle(p, n); }

void port_kick(struct io_port *p) { p->ops->kick(p); }

void io_flush(struct io_worker *w)
{
    for (int i = 0; i < IO_MAX_PORTS; i++)
        if (w->tx_port[i])
            port_kick(w->tx_port[i]);
}

int tx_enqueue(struct io_worker *w, struct io_port *o, const uint8_t *data, uint32_t len)
{
    if (len > IO_FRAME_SIZE || o->ops->tx(o, data, len) != 0) {
        w->counters[IO_C_DROP_TX_FULL]++;
        return -1;
    }
    w->counters[IO_C_TX]++;
    return 0;
}
