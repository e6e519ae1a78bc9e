/*
 * Fragments: later fragments follow the first one's rewrite.
 */
#include "nat_internal.h"

/* Fragments: the first fragment's outcome, by (family, src, dst, proto, id). */
static inline uint32_t frag_hash(const struct pkt *p)
{
    struct nat_key k = p->key;
    k.sport = (uint16_t)p->frag_id;
    k.dport = (uint16_t)(p->frag_id >> 16);
    return (uint32_t)key_hash64(0x27d4eb2f165667c5ULL, &k);
}

static struct frag *frag_find(struct nat *nat, const struct pkt *p, uint64_t now)
{
    uint32_t base = frag_hash(p) & (NAT_FRAG_SLOTS - 2);
    for (int w = 0; w < 2; w++) {
        struct frag *f = &nat->frag[base + w];
        if (f->used && f->expires_ns >= now && f->id == p->frag_id && f->proto == p->proto &&
            f->family == p->family && memcmp(f->src, p->key.src, 16) == 0 &&
            memcmp(f->dst, p->key.dst, 16) == 0)
            return f;
    }
    return NULL;
}

static void frag_record(struct nat *nat, const struct pkt *p, uint8_t verdict, uint64_t now)
{
    uint32_t base = frag_hash(p) & (NAT_FRAG_SLOTS - 2);
    struct frag *f = &nat->frag[base];
    struct frag *g = &nat->frag[base + 1];
    struct frag *pick = f;
    /* prefer a matching, then a free or stale way, then the older one */
    if (!(f->used && f->expires_ns >= now)) pick = f;
    else if (!(g->used && g->expires_ns >= now)) pick = g;
    else {
        pick = f->expires_ns <= g->expires_ns ? f : g;
        CTR(nat)[NAT_C_FRAG_TABLE_EVICT]++;
    }
    memset(pick, 0, sizeof *pick);
    memcpy(pick->src, p->key.src, 16);
    memcpy(pick->dst, p->key.dst, 16);
    unsigned alen = p->family == NAT_AF_INET ? 4 : 16;
    memcpy(pick->new_src, src_field(p), alen);
    memcpy(pick->new_dst, dst_field(p), alen);
    pick->id = p->frag_id;
    pick->proto = p->proto;
    pick->family = p->family;
    pick->verdict = verdict;
    pick->expires_ns = now + 1000000ull * NAT_FRAG_TIMEOUT_MS;
    pick->used = 1;
}

/* The fragment table is shared by the lanes (a datagram's fragments may
 * arrive on different queues) and rarely used: a spinlock. */
static inline void frag_lock(struct nat *nat)
{
    while (__atomic_exchange_n(&nat->frag_lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&nat->frag_lock, __ATOMIC_RELAXED))
            __builtin_ia32_pause();
}

static inline void frag_unlock(struct nat *nat) { __atomic_store_n(&nat->frag_lock, 0, __ATOMIC_RELEASE); }

void handle_later_fragment(struct nat *nat, struct nat_frame *f, struct pkt *p,
                                  uint64_t now)
{
    frag_lock(nat);
    struct frag *fe = frag_find(nat, p, now);
    struct frag copy;
    if (fe)
        copy = *fe;
    frag_unlock(nat);
    if (fe) {
        fe = &copy;
        if (fe->verdict == NAT_FORWARD) {
            rewrite_addrs(p, fe->new_src, fe->new_dst);
            CTR(nat)[NAT_C_FRAG_FOLLOWED]++;
            f->session = NAT_NONE;
            verdict(nat, f, NAT_FORWARD, NAT_C_TRANSLATED);
        } else if (fe->verdict == NAT_PASS) {
            verdict(nat, f, NAT_PASS, NAT_C_PASS_FRAG_TRANSIT);
        } else {
            verdict(nat, f, NAT_DROP, NAT_C_DROP_NO_TRANSLATION);
        }
        return;
    }
    if (nat_owned_dst(nat, p, f->port))
        verdict(nat, f, NAT_DROP, NAT_C_DROP_FRAG_ORPHAN);
    else
        verdict(nat, f, NAT_PASS, NAT_C_PASS_FRAG_TRANSIT);
}


/* The first fragment's outcome, for the fragments after it. */
void frag_note(struct nat *nat, const struct pkt *p, uint8_t verdict, uint64_t now)
{
    frag_lock(nat);
    frag_record(nat, p, verdict, now);
    frag_unlock(nat);
}
