/*
 * The kernel's routes as the datapath follows them: a hash per prefix
 * length (longest first), next hops weighted per flow for multipath. Read
 * by every worker; changed only while they are paused (tables_pause).
 */
#include "io_internal.h"

#include <errno.h>
#include <stdlib.h>

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
const struct route *route_lookup(const struct io_ctx *ctx, uint8_t family, const uint8_t *a)
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
const struct nexthop *route_nexthop(const struct io_ctx *ctx, const struct route *r,
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

static void routes_clear(struct io_ctx *ctx)
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

static int route_add(struct io_ctx *ctx, uint8_t family, const uint8_t *prefix, uint8_t plen, uint8_t kind,
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

static int routes_load(struct io_ctx *ctx, const struct io_route_entry *routes, uint32_t n,
                       const struct io_nexthop_entry *nexthops, uint32_t n_nexthops)
{
    routes_clear(ctx);
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
        int rc = route_add(ctx, r->family, r->prefix, r->plen, r->kind, gws, ports, weights, r->n_nh);
        if (rc == -ENOMEM)
            return rc;
        refused += rc < 0;
    }
    return (int)refused;
}

/* The public faces: each change with the workers paused. */
void io_routes_clear(struct io_ctx *ctx)
{
    tables_pause(ctx);
    routes_clear(ctx);
    tables_resume(ctx);
}

int io_route_add(struct io_ctx *ctx, uint8_t family, const uint8_t *prefix, uint8_t plen, uint8_t kind,
                 const uint8_t *gateways, const int *port_ids, const uint32_t *weights, uint32_t n_nh)
{
    tables_pause(ctx);
    int rc = route_add(ctx, family, prefix, plen, kind, gateways, port_ids, weights, n_nh);
    tables_resume(ctx);
    return rc;
}

/* The whole table at once: the workers wait for it (~1 ms for 20,000
 * routes), as they would for any other change. */
int io_routes_load(struct io_ctx *ctx, const struct io_route_entry *routes, uint32_t n,
                   const struct io_nexthop_entry *nexthops, uint32_t n_nexthops)
{
    tables_pause(ctx);
    int rc = routes_load(ctx, routes, n, nexthops, n_nexthops);
    tables_resume(ctx);
    return rc;
}

void io_table_sizes(const struct io_ctx *ctx, uint32_t *routes, uint32_t *neighbours)
{
    *routes = ctx->n_routes;
    *neighbours = ctx->n_neigh;
}
