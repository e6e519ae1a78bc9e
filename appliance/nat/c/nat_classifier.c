/*
 * The classifier: which translation a (family, address, proto, port) is, and
 * the flags of an address; swapped whole at a reload.
 */
#include "nat_internal.h"

/* ---------------------------------------------------------------------------
 * Classifier: translations by (family, address, proto, port) and address
 * flags by (family, address, 0, 0). Open addressing, at most half full.
 */
static inline uint32_t centry_hash(uint8_t family, const uint8_t *addr, uint8_t proto, uint16_t port)
{
    struct nat_key k;
    memset(&k, 0, sizeof k);
    memcpy(k.dst, addr, family == NAT_AF_INET ? 4 : 16);
    k.dport = port;
    k.proto = proto;
    k.family = family;
    return (uint32_t)key_hash64(0x5bd1e995, &k);
}

const struct centry *cls_find(const struct nat_classifier *c, uint8_t family,
                                     const uint8_t *addr, uint8_t proto, uint16_t port)
{
    if (!c || !c->n)
        return NULL;
    unsigned alen = family == NAT_AF_INET ? 4 : 16;
    for (uint32_t i = centry_hash(family, addr, proto, port) & c->mask;; i = (i + 1) & c->mask) {
        const struct centry *e = &c->e[i];
        if (!e->used)
            return NULL;
        if (e->family == family && e->proto == proto && e->port == port &&
            memcmp(e->addr, addr, alen) == 0)
            return e;
    }
}

static struct centry *cls_slot(struct nat_classifier *c, uint8_t family, const uint8_t *addr,
                               uint8_t proto, uint16_t port)
{
    unsigned alen = family == NAT_AF_INET ? 4 : 16;
    for (uint32_t i = centry_hash(family, addr, proto, port) & c->mask;; i = (i + 1) & c->mask) {
        struct centry *e = &c->e[i];
        if (!e->used) {
            if (2 * (c->n + 1) > c->mask + 1)
                return NULL;
            memset(e, 0, sizeof *e);
            memcpy(e->addr, addr, alen);
            e->family = family;
            e->proto = proto;
            e->port = port;
            e->id = NAT_NONE;
            e->used = 1;
            c->n++;
            return e;
        }
        if (e->family == family && e->proto == proto && e->port == port &&
            memcmp(e->addr, addr, alen) == 0)
            return e;
    }
}

struct nat_classifier *nat_classifier_create(uint32_t capacity)
{
    struct nat_classifier *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    uint32_t size = 16;
    while (size < 2 * capacity + 2)
        size <<= 1;
    c->e = calloc(size, sizeof *c->e);
    if (!c->e) {
        free(c);
        return NULL;
    }
    c->mask = size - 1;
    return c;
}

void nat_classifier_destroy(struct nat_classifier *c)
{
    if (c) {
        free(c->e);
        free(c);
    }
}

int nat_classifier_add_translation(struct nat_classifier *c, uint8_t family, const uint8_t *addr,
                                   uint8_t proto, uint16_t port_be, uint32_t id)
{
    struct centry *e = cls_slot(c, family, addr, proto, port_be);
    if (!e)
        return -1;
    if (e->id != NAT_NONE)
        return -2;
    e->id = id;
    return 0;
}

int nat_classifier_add_address(struct nat_classifier *c, uint8_t family, const uint8_t *addr,
                               uint8_t flags)
{
    struct centry *e = cls_slot(c, family, addr, 0, 0);
    if (!e)
        return -1;
    e->flags |= flags;
    c->flags_any |= flags;
    return 0;
}

void nat_set_classifier(struct nat *nat, struct nat_classifier *c)
{
    struct nat_classifier *old = nat->cls;
    __atomic_store_n(&nat->cls, c, __ATOMIC_RELEASE);
    lanes_synchronize(nat);   /* a lane may still be reading the old one */
    nat_classifier_destroy(old);
}

uint32_t nat_translation_lookup(const struct nat *nat, uint8_t family, const uint8_t *addr,
                                uint8_t proto, uint16_t port_be)
{
    const struct centry *e = cls_find(nat->cls, family, addr, proto, port_be);
    return e ? e->id : NAT_NONE;
}

