/*
 * The kernel's neighbours of the data interfaces, by (port, family,
 * address): open addressing in a fixed table. Read by every worker (which
 * mark the ones they forward to, for io_neigh_used); changed only while
 * they are paused (tables_pause).
 */
#include "io_internal.h"

#include <errno.h>

static inline uint32_t neigh_hash(uint8_t family, int port_id, const uint8_t *a)
{
    uint32_t h = family * 0x9e3779b1u ^ (uint32_t)port_id;
    for (int i = 0; i < 16; i++)
        h = (h ^ a[i]) * 0x01000193u;
    return h;
}

struct neigh *neigh_slot(struct io_ctx *ctx, uint8_t family, int port_id, const uint8_t *a, int insert)
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

static void neigh_clear(struct io_ctx *ctx)
{
    memset(ctx->neigh, 0, IO_NEIGH_SLOTS * sizeof *ctx->neigh);
    ctx->n_neigh = 0;
    hops_stale(ctx);
}

static int neigh_set(struct io_ctx *ctx, uint8_t family, const uint8_t *addr, int port_id, const uint8_t *mac)
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
    tables_pause(ctx);
    neigh_clear(ctx);
    int refused = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct io_neigh_entry *e = &entries[i];
        refused += neigh_set(ctx, e->family, e->addr, e->port_id, e->failed ? NULL : e->mac) != 0;
    }
    tables_resume(ctx);
    return refused;
}


uint32_t io_neigh_used(struct io_ctx *ctx, struct io_neigh_use *out, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < IO_NEIGH_SLOTS && n < max; i++) {
        const struct neigh *e = &ctx->neigh[i];
        if (e->used && !e->failed && __atomic_load_n(&e->epoch, __ATOMIC_RELAXED) == ctx->epoch) {
            out[n].family = e->family;
            memcpy(out[n].addr, e->addr, 16);
            out[n].port_id = e->port_id;
            n++;
        }
    }
    uint32_t epoch = ctx->epoch + 1;
    __atomic_store_n(&ctx->epoch, epoch ? epoch : 1, __ATOMIC_RELAXED);
    return n;
}

int io_neigh_set(struct io_ctx *ctx, uint8_t family, const uint8_t *addr, int port_id, const uint8_t *mac)
{
    tables_pause(ctx);
    int rc = neigh_set(ctx, family, addr, port_id, mac);
    tables_resume(ctx);
    return rc;
}
