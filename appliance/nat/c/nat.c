/*
 * NAT core fast path. See nat.h for the interface and docs/architecture.md
 * for where it sits.
 *
 * A session is two keys and a lifetime. key[0] is the flow as its initiator
 * sends it, key[1] the flow as replies arrive. A packet that matches key[d]
 * is rewritten to the reverse of key[!d]; that single rule covers DNAT,
 * SNAT, both at once, and the embedded packet of ICMP errors (rewritten to
 * key[!d] itself). Nothing else is stored per session: no Python object,
 * no pointer, about 136 bytes plus 8 bytes of hash buckets.
 *
 * The table is a bucket array of chain heads; both keys of a session hang in
 * it, linked through session.next[dir]. A chain reference is (index << 1 | dir).
 */
#include "nat.h"
#include "csum.h"

#include <sched.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#ifndef NAT_BUILD_VERSION
#error "NAT_BUILD_VERSION must be defined by the build (appliance/nat/_build.py)"
#endif

/* Expiry notifications buffered between two drains. The runtime drains after
 * every batch and every timer tick; 4096 covers a scanner tick that expires
 * its whole budget with room to spare. Overflow is counted, never blocks. */
#define NAT_EVENT_RING 4096

/* Fragmented datagrams followed at once. Two-way set associative; an entry
 * lives NAT_FRAG_TIMEOUT_MS, the same 30 s Linux gives reassembly
 * (net.ipv4.ipfrag_time). 8192 x 96 bytes = 768 KiB. */
#define NAT_FRAG_SLOTS 8192
#define NAT_FRAG_TIMEOUT_MS 30000

/* Hashed port probes before a linear scan. With the space towards one
 * destination 90 % full, 32 probes all fail with probability 0.9^32 = 3 %;
 * the scan then still finds any free port, so exhaustion is exact. */
#define NAT_PORT_PROBES 32

/* nat_process() looks ahead by steps of this many frames: headers 3 steps
 * on, session-table bucket 2, session 1. */
#define NAT_PREFETCH_AHEAD 4

/* Slots examined for an expired session to reuse when the table is full. */
#define NAT_FULL_RECLAIM 64

#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

static const char *const counter_names[] = {
#define _(name, text) #name,
#include "nat_counters.def"
#undef _
};

static const char *const counter_help[] = {
#define _(name, text) text,
#include "nat_counters.def"
#undef _
};

struct session {
    struct nat_key key[2];
    uint64_t last_seen_ns;
    uint64_t created_ns;
    uint64_t packets[2];
    uint64_t bytes[2];    /* frame bytes each way, Ethernet header included */
    uint32_t next[2];
    uint32_t translation;
    uint32_t serial;      /* nat.serial at creation: tells apart the sessions of one slot */
    uint16_t backend;
    uint8_t state;
    uint8_t profile;
    uint8_t flags;
    uint8_t in_use;
};

struct frag {
    uint8_t src[16], dst[16];
    uint8_t new_src[16], new_dst[16];
    uint64_t expires_ns;
    uint32_t id;
    uint8_t proto, family, verdict, used;
};

struct centry {
    uint8_t addr[16];
    uint32_t id;
    uint16_t port;
    uint8_t proto, family;
    uint8_t flags, used;
};

struct nat_classifier {
    uint32_t mask;
    uint32_t n;
    struct centry *e;
};

struct nat {
    struct session *s;
    uint32_t *bucket;
    uint32_t bucket_mask;
    uint32_t max_sessions;
    uint32_t n_sessions;
    uint32_t free_head;   /* recycled slots */
    uint32_t hwm;         /* slots below were used once; above, untouched memory */
    uint32_t serial;      /* sessions created so far (wraps; a slot's two sessions differ) */
    uint32_t scan_cursor;
    uint64_t table_seed;
    uint64_t flow_seed;
    struct nat_classifier *cls;
    uint8_t snat_port[NAT_MAX_PORTS];
    uint8_t snat_family;   /* bit 0: IPv4 SNAT address set, bit 1: IPv6 */
    struct nat_profile profile[NAT_MAX_PROFILES];
    struct frag *frag;
    struct nat_session_info *ev;
    uint32_t ev_head, ev_len;
    uint64_t counters[NAT_C__COUNT];   /* the writer's (the slow path's thread) */
    /* Readers on other threads (nat_lane_process); see "Lanes" below. */
    struct nat_lane *lanes[NAT_MAX_LANES];
    uint32_t n_lanes;
    uint32_t *limbo;      /* freed slots not reused yet: a ring of max_sessions */
    uint32_t limbo_head, limbo_sealed, limbo_len;   /* [head, head+sealed) sealed, then new */
    uint64_t limbo_snap[NAT_MAX_LANES];
    uint64_t slots_recycled;
    int frag_lock;
};

/* A reader thread's own state: its counters (summed by nat_counters_sum),
 * and what tells the writer it holds no reference into the table: online
 * is 1 only inside nat_lane_process(), and qc advances at every call. */
struct nat_lane {
    struct nat *nat;
    uint64_t counters[NAT_C__COUNT];
    uint64_t qc;
    uint32_t online;
    uint32_t slot;
};

/* The lane of the calling thread while it is inside nat_lane_process();
 * NULL on the writer's thread. Initial-exec: one %fs-relative load. */
static __thread struct nat_lane *tls_lane __attribute__((tls_model("initial-exec")));
#define CTR(nat) (tls_lane ? tls_lane->counters : ((struct nat *)(nat))->counters)

/* ---------------------------------------------------------------------------
 * TCP session states as a table: next state for (state, event, direction).
 * A single FIN (half-close) moves to FIN_FWD/FIN_REV, which keep the
 * half-closed lifetime (by default the established one), not the 5 s of a
 * closed flow: half-closed TCP connections legitimately stream for hours.
 * A SYN from the initiator on a CLOSING session is port reuse and restarts it.
 */
enum { EV_SYN, EV_SYNACK, EV_FIN, EV_RST, EV_ACK, EV__COUNT };

#define NEW_ NAT_ST_TCP_NEW
#define SS_ NAT_ST_TCP_SYN_SENT
#define SR_ NAT_ST_TCP_SYN_RCVD
#define MID_ NAT_ST_TCP_MIDSTREAM
#define EST_ NAT_ST_TCP_ESTABLISHED
#define FF_ NAT_ST_TCP_FIN_FWD
#define FR_ NAT_ST_TCP_FIN_REV
#define CL_ NAT_ST_TCP_CLOSING

static const uint8_t tcp_next[NAT_ST__COUNT][EV__COUNT][2] = {
    /*              SYN fwd,rev   SYN-ACK       FIN           RST           other        */
    [NAT_ST_OTHER] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}},
    [NEW_] = {{SS_, MID_}, {MID_, MID_}, {FF_, FR_}, {CL_, CL_}, {MID_, MID_}},
    [SS_] = {{SS_, SS_}, {SS_, SR_}, {FF_, FR_}, {CL_, CL_}, {SS_, SS_}},
    [SR_] = {{SR_, SR_}, {SR_, SR_}, {FF_, FR_}, {CL_, CL_}, {EST_, SR_}},
    [MID_] = {{MID_, MID_}, {MID_, MID_}, {FF_, FR_}, {CL_, CL_}, {MID_, EST_}},
    [EST_] = {{EST_, EST_}, {EST_, EST_}, {FF_, FR_}, {CL_, CL_}, {EST_, EST_}},
    [FF_] = {{FF_, FF_}, {FF_, FF_}, {FF_, CL_}, {CL_, CL_}, {FF_, FF_}},
    [FR_] = {{FR_, FR_}, {FR_, FR_}, {CL_, FR_}, {CL_, CL_}, {FR_, FR_}},
    [CL_] = {{SS_, CL_}, {CL_, CL_}, {CL_, CL_}, {CL_, CL_}, {CL_, CL_}},
};

static const uint8_t state_lifetime[NAT_ST__COUNT] = {
    [NAT_ST_OTHER] = NAT_LT_SESSION,      [NEW_] = NAT_LT_SESSION,
    [SS_] = NAT_LT_SESSION,               [SR_] = NAT_LT_SESSION,
    [MID_] = NAT_LT_SESSION,              [EST_] = NAT_LT_ESTABLISHED,
    [FF_] = NAT_LT_HALF_CLOSED,           [FR_] = NAT_LT_HALF_CLOSED,
    [CL_] = NAT_LT_CLOSING,
};

static inline int tcp_event(uint8_t fl)
{
    if (fl & TCP_RST)
        return EV_RST;
    if (fl & TCP_SYN)
        return (fl & TCP_ACK) ? EV_SYNACK : EV_SYN;
    if (fl & TCP_FIN)
        return EV_FIN;
    return EV_ACK;
}

/* ---------------------------------------------------------------------------
 * Hashing. One 64-bit multiply-xorshift round per key word, then the
 * murmur3 finaliser. Deterministic for a given seed, so appliances sharing
 * flow_hash_seed pick the same backend for the same flow.
 */
static inline uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static inline uint64_t key_hash64(uint64_t seed, const struct nat_key *k)
{
    uint64_t w[5];
    memcpy(w, k, sizeof w);
    uint64_t h = seed ^ 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 5; i++) {
        h ^= w[i];
        h *= 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
    }
    return fmix64(h);
}

static inline int key_eq(const struct nat_key *a, const struct nat_key *b)
{
    uint64_t x[5], y[5];
    memcpy(x, a, sizeof x);
    memcpy(y, b, sizeof y);
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) |
            (x[4] ^ y[4])) == 0;
}

static inline void key_reverse(struct nat_key *out, const struct nat_key *k)
{
    memcpy(out->src, k->dst, 16);
    memcpy(out->dst, k->src, 16);
    out->sport = k->dport;
    out->dport = k->sport;
    out->proto = k->proto;
    out->family = k->family;
    out->zero = 0;
}

_Static_assert(sizeof(struct nat_key) == 40, "nat_key is hashed as 5 x u64");

/* ---------------------------------------------------------------------------
 * Session table
 */
static inline uint64_t sess_expires(const struct nat *nat, const struct session *s)
{
    return s->last_seen_ns + 1000000ull * nat->profile[s->profile].ms[state_lifetime[s->state]];
}

/* Chains are read by lanes while the writer links and unlinks: links are
 * published with release stores and read with acquire loads (plain moves on
 * x86; they keep the compiler from reordering), so a lane sees a session's
 * keys before the link to it. An unlinked session keeps its next[] until
 * its slot is reused, which waits for the lanes (limbo, below), so a lane
 * walking it reaches the rest of its old chain. A walk longer than the
 * table can only be a lane racing a reuse: it gives up (a miss, which the
 * writer settles). */
static inline uint32_t table_lookup(const struct nat *nat, const struct nat_key *k)
{
    uint32_t ref = __atomic_load_n(&nat->bucket[key_hash64(nat->table_seed, k) & nat->bucket_mask],
                                   __ATOMIC_ACQUIRE);
    for (uint32_t steps = 0; ref != NAT_NONE && steps <= 2 * nat->max_sessions; steps++) {
        const struct session *s = &nat->s[ref >> 1];
        if (key_eq(&s->key[ref & 1], k))
            return ref;
        ref = __atomic_load_n(&s->next[ref & 1], __ATOMIC_ACQUIRE);
    }
    return NAT_NONE;
}

static void table_link(struct nat *nat, uint32_t idx, int dir)
{
    struct session *s = &nat->s[idx];
    uint32_t *head = &nat->bucket[key_hash64(nat->table_seed, &s->key[dir]) & nat->bucket_mask];
    s->next[dir] = *head;
    __atomic_store_n(head, (idx << 1) | (uint32_t)dir, __ATOMIC_RELEASE);
}

static void table_unlink(struct nat *nat, uint32_t idx, int dir)
{
    struct session *s = &nat->s[idx];
    uint32_t want = (idx << 1) | (uint32_t)dir;
    uint32_t *link = &nat->bucket[key_hash64(nat->table_seed, &s->key[dir]) & nat->bucket_mask];
    while (*link != NAT_NONE) {
        if (*link == want) {
            __atomic_store_n(link, s->next[dir], __ATOMIC_RELEASE);
            return;
        }
        link = &nat->s[*link >> 1].next[*link & 1];
    }
}

static void sess_info(const struct nat *nat, uint32_t idx, struct nat_session_info *o)
{
    const struct session *s = &nat->s[idx];
    memset(o, 0, sizeof *o);
    o->key[0] = s->key[0];
    o->key[1] = s->key[1];
    o->created_ns = s->created_ns;
    o->last_seen_ns = s->last_seen_ns;
    o->expires_ns = sess_expires(nat, s);
    o->index = idx;
    o->translation = s->translation;
    o->backend = s->backend;
    o->state = s->state;
    o->profile = s->profile;
    o->flags = s->flags;
    o->packets[0] = s->packets[0];
    o->packets[1] = s->packets[1];
    o->bytes[0] = s->bytes[0];
    o->bytes[1] = s->bytes[1];
}

static void limbo_poll(struct nat *nat);

static void sess_free(struct nat *nat, uint32_t idx, uint8_t reason)
{
    struct session *s = &nat->s[idx];
    if (nat->ev_len < NAT_EVENT_RING) {
        struct nat_session_info *o = &nat->ev[(nat->ev_head + nat->ev_len) % NAT_EVENT_RING];
        sess_info(nat, idx, o);
        o->reason = reason;
        nat->ev_len++;
    } else {
        CTR(nat)[NAT_C_EXPIRY_EVENTS_LOST]++;
    }
    table_unlink(nat, idx, 0);
    table_unlink(nat, idx, 1);
    s->in_use = 0;
    nat->n_sessions--;
    if (nat->n_lanes) {           /* a lane may be reading it: reuse it later */
        nat->limbo[(nat->limbo_head + nat->limbo_len) % nat->max_sessions] = idx;
        nat->limbo_len++;
        if (!nat->limbo_sealed)
            limbo_poll(nat);      /* its grace period starts now */
        return;
    }
    s->next[0] = nat->free_head;
    nat->free_head = idx;
}

/* ---------------------------------------------------------------------------
 * Limbo: slots freed while lanes exist wait for a grace period, RCU's idea
 * with the lanes' calls as quiescent states. The oldest freed slots are
 * sealed with a snapshot of every lane's call count; once each lane has
 * called again or is outside a call, no lane can hold them and they join the free
 * list. Checked by the writer when it needs a slot and at each expiry
 * tick, never waited for: a new flow never blocks on a lane.
 */
static int lanes_passed(const struct nat *nat)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);   /* the unlinks before, the lanes' state after */
    for (uint32_t i = 0; i < NAT_MAX_LANES; i++) {
        const struct nat_lane *l = nat->lanes[i];
        if (l && __atomic_load_n(&l->online, __ATOMIC_ACQUIRE) &&
            __atomic_load_n(&l->qc, __ATOMIC_ACQUIRE) == nat->limbo_snap[i])
            return 0;
    }
    return 1;
}

static void limbo_poll(struct nat *nat)
{
    if (nat->limbo_sealed && lanes_passed(nat)) {
        for (uint32_t k = 0; k < nat->limbo_sealed; k++) {
            uint32_t idx = nat->limbo[nat->limbo_head];
            nat->limbo_head = (nat->limbo_head + 1) % nat->max_sessions;
            nat->s[idx].next[0] = nat->free_head;
            nat->free_head = idx;
        }
        nat->slots_recycled += nat->limbo_sealed;
        nat->limbo_len -= nat->limbo_sealed;
        nat->limbo_sealed = 0;
    }
    if (!nat->limbo_sealed && nat->limbo_len) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (uint32_t i = 0; i < NAT_MAX_LANES; i++)
            nat->limbo_snap[i] = nat->lanes[i] ? __atomic_load_n(&nat->lanes[i]->qc, __ATOMIC_ACQUIRE) : 0;
        nat->limbo_sealed = nat->limbo_len;
    }
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Until a slot is free again, or limit_ns. */
static void limbo_wait(struct nat *nat, uint64_t limit_ns)
{
    uint64_t until = mono_ns() + limit_ns;
    for (limbo_poll(nat); nat->free_head == NAT_NONE && nat->limbo_len && mono_ns() < until; limbo_poll(nat))
        sched_yield();
}

/* Gone for lookups: expired, or ended by a lane (NAT_SF_DEAD). */
static inline int sess_gone(const struct nat *nat, const struct session *s, uint64_t now)
{
    return now > sess_expires(nat, s) || (__atomic_load_n(&s->flags, __ATOMIC_RELAXED) & NAT_SF_DEAD);
}

/* A live session for key, or NAT_NONE. The writer removes a gone one on
 * sight; a lane leaves it to the writer. */
static inline uint32_t lookup_live(struct nat *nat, const struct nat_key *k, uint64_t now)
{
    uint32_t ref = table_lookup(nat, k);
    if (ref == NAT_NONE)
        return ref;
    struct session *s = &nat->s[ref >> 1];
    if (sess_gone(nat, s, now)) {
        if (!tls_lane) {
            int dead = (s->flags & NAT_SF_DEAD) != 0;
            sess_free(nat, ref >> 1, (uint8_t)dead);
            if (!dead)
                CTR(nat)[NAT_C_SESSION_EXPIRED_LAZY]++;
        }
        return NAT_NONE;
    }
    return ref;
}

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

static const struct centry *cls_find(const struct nat_classifier *c, uint8_t family,
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
    return 0;
}

static void lanes_synchronize(struct nat *nat);

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

static inline uint8_t addr_flags(const struct nat *nat, uint8_t family, const uint8_t *addr)
{
    const struct centry *e = cls_find(nat->cls, family, addr, 0, 0);
    return e ? e->flags : 0;
}

/* ---------------------------------------------------------------------------
 * Parsing. One pass over the headers fills a struct pkt; every way a frame
 * can be malformed maps to a counter.
 */
enum { FRAG_NONE = 0, FRAG_FIRST = 1, FRAG_LATER = 2 };
enum { ICMPK_NONE = 0, ICMPK_ECHO_REQ, ICMPK_ECHO_REP, ICMPK_ERROR, ICMPK_OTHER };

struct pkt {
    uint8_t *l3;
    uint8_t *l4;
    uint32_t l4len;       /* L4 bytes present in this frame's datagram */
    uint32_t frag_id;
    uint8_t family, proto, frag, icmp, tcp_flags, routing_pending;
    struct nat_key key;
};

static inline int is_icmp_proto(uint8_t family, uint8_t proto)
{
    return family == NAT_AF_INET ? proto == IPPROTO_ICMP_ : proto == IPPROTO_ICMPV6_;
}

static int icmp_kind(uint8_t family, uint8_t type)
{
    if (family == NAT_AF_INET) {
        if (type == 8) return ICMPK_ECHO_REQ;
        if (type == 0) return ICMPK_ECHO_REP;
        if (type == 3 || type == 11 || type == 12) return ICMPK_ERROR;
    } else {
        if (type == 128) return ICMPK_ECHO_REQ;
        if (type == 129) return ICMPK_ECHO_REP;
        if (type >= 1 && type <= 4) return ICMPK_ERROR;
    }
    return ICMPK_OTHER;
}

/* Parse an IP header at l3 with avail bytes after it. Returns 0 or a drop
 * counter. Fills everything in p but the L4 details. verify_csum is off for
 * the embedded header of ICMP errors (routers may have changed it). */
static int parse_ip(uint8_t *l3, uint32_t avail, struct pkt *p, int inner)
{
    uint8_t v = l3[0] >> 4;
    memset(&p->key, 0, sizeof p->key);
    p->l3 = l3;
    p->frag = FRAG_NONE;
    p->routing_pending = 0;
    p->tcp_flags = 0;
    p->icmp = ICMPK_NONE;
    if (avail < 1)
        return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_TRUNCATED;
    if (v == 4) {
        if (avail < 20)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_TRUNCATED;
        unsigned hl = (l3[0] & 0x0f) * 4u;
        if (hl < 20)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_BAD_HEADER;
        if (hl > avail)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_TRUNCATED;
        unsigned tot = (unsigned)l3[2] << 8 | l3[3];
        if (tot < hl)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_BAD_LENGTH;
        if (!inner) {
            if (tot > avail)
                return NAT_C_DROP_IP4_BAD_LENGTH;
            if (csum_fold(csum_sum(l3, hl)) != 0xffff)
                return NAT_C_DROP_IP4_BAD_CHECKSUM;
        } else if (tot > avail) {
            tot = avail; /* an ICMP error quotes only the start of it */
        }
        p->family = NAT_AF_INET;
        p->proto = l3[9];
        memcpy(p->key.src, l3 + 12, 4);
        memcpy(p->key.dst, l3 + 16, 4);
        unsigned fo = ((unsigned)(l3[6] & 0x1f) << 8 | l3[7]) * 8u;
        int mf = (l3[6] & 0x20) != 0;
        if (fo)
            p->frag = FRAG_LATER;
        else if (mf)
            p->frag = FRAG_FIRST;
        p->frag_id = (uint32_t)l3[4] << 8 | l3[5];
        p->l4 = l3 + hl;
        p->l4len = tot - hl;
        return 0;
    }
    if (v == 6) {
        if (avail < 40)
            return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
        unsigned plen = (unsigned)l3[4] << 8 | l3[5];
        if (plen == 0 && !inner)
            return NAT_C_DROP_IP6_BAD_LENGTH; /* jumbogram (RFC 2675) or empty: not ours */
        if (40 + plen > avail) {
            if (!inner)
                return NAT_C_DROP_IP6_BAD_LENGTH;
            plen = avail - 40;
        }
        p->family = NAT_AF_INET6;
        memcpy(p->key.src, l3 + 8, 16);
        memcpy(p->key.dst, l3 + 24, 16);
        uint8_t nh = l3[6];
        uint8_t *h = l3 + 40;
        uint32_t left = plen;
        int first_hdr = 1;
        for (;;) {
            if (nh == 0 || nh == 43 || nh == 60) {
                if (nh == 0 && !first_hdr)
                    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
                if (left < 8)
                    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
                uint32_t el = (h[1] + 1u) * 8u;
                if (el > left)
                    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
                if (nh == 43 && h[3] != 0)
                    p->routing_pending = 1;
                nh = h[0];
                h += el;
                left -= el;
            } else if (nh == 44) {
                if (left < 8)
                    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP6_TRUNCATED;
                unsigned off = ((unsigned)h[2] << 8 | (h[3] & 0xf8));
                int m = h[3] & 1;
                p->frag_id = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
                nh = h[0];
                h += 8;
                left -= 8;
                if (off) {
                    p->frag = FRAG_LATER;
                    break;
                }
                if (m)
                    p->frag = FRAG_FIRST;
            } else {
                break;
            }
            first_hdr = 0;
        }
        p->proto = nh;
        p->l4 = h;
        p->l4len = left;
        return 0;
    }
    return inner ? NAT_C_DROP_ICMP_INNER_BAD : NAT_C_DROP_IP4_BAD_HEADER;
}

/* L4 ports into p->key. Returns 0, or a drop counter; sets p->icmp. For
 * protocols without ports key.sport/dport stay 0 and p->icmp = OTHER. */
static int parse_l4(struct pkt *p, int need_full)
{
    uint8_t *l4 = p->l4;
    uint32_t n = p->l4len;
    p->key.proto = p->proto;
    p->key.family = p->family;
    if (p->frag == FRAG_LATER)
        return 0;
    switch (p->proto) {
    case IPPROTO_TCP_:
        if (n < (need_full ? 20u : 8u))
            return NAT_C_DROP_L4_TRUNCATED;
        p->key.sport = ld16(l4);
        p->key.dport = ld16(l4 + 2);
        if (n >= 14)
            p->tcp_flags = l4[13];
        return 0;
    case IPPROTO_UDP_:
        if (n < 8)
            return NAT_C_DROP_L4_TRUNCATED;
        p->key.sport = ld16(l4);
        p->key.dport = ld16(l4 + 2);
        return 0;
    case IPPROTO_ICMP_:
    case IPPROTO_ICMPV6_:
        if (!is_icmp_proto(p->family, p->proto)) {
            p->icmp = ICMPK_OTHER;
            return 0;
        }
        if (n < 8)
            return NAT_C_DROP_L4_TRUNCATED;
        p->icmp = (uint8_t)icmp_kind(p->family, l4[0]);
        if (p->icmp == ICMPK_ECHO_REQ)
            p->key.sport = ld16(l4 + 4);
        else if (p->icmp == ICMPK_ECHO_REP)
            p->key.dport = ld16(l4 + 4);
        return 0;
    default:
        p->icmp = ICMPK_OTHER;
        return 0;
    }
}

static inline int has_ports(const struct pkt *p)
{
    return p->proto == IPPROTO_TCP_ || p->proto == IPPROTO_UDP_ ||
           p->icmp == ICMPK_ECHO_REQ || p->icmp == ICMPK_ECHO_REP;
}

/* ---------------------------------------------------------------------------
 * Rewrite. *_acc are RFC 1624 accumulators; "icmp_acc" collects changes of
 * words that an enclosing ICMP error's checksum covers.
 */
static inline void put_addr(uint8_t *field, const uint8_t *val, unsigned alen, uint32_t *acc)
{
    if (memcmp(field, val, alen)) {
        *acc = csum_delta_bytes(*acc, field, val, alen);
        memcpy(field, val, alen);
    }
}

static inline void put_word(uint8_t *field, uint16_t val, uint32_t *acc, uint32_t *acc2)
{
    uint16_t old = ld16(field);
    if (old != val) {
        if (acc)
            *acc = csum_delta16(*acc, old, val);
        if (acc2)
            *acc2 = csum_delta16(*acc2, old, val);
        st16(field, val);
    }
}

static inline uint8_t *src_field(const struct pkt *p) { return p->l3 + (p->family == NAT_AF_INET ? 12 : 8); }
static inline uint8_t *dst_field(const struct pkt *p) { return p->l3 + (p->family == NAT_AF_INET ? 16 : 24); }

/* Rewrite the L4 ports/identifier to (sport, dport) and fix the L4 checksum
 * given the pseudo-header change in pseudo_acc. Words changed are also
 * recorded in outer (may be NULL). avail limits what exists (quoted packets). */
static void rewrite_l4(struct nat *nat, struct pkt *p, uint16_t sport, uint16_t dport,
                       uint32_t pseudo_acc, uint32_t *outer)
{
    uint8_t *l4 = p->l4;
    uint32_t n = p->l4len;
    uint32_t acc = 0;
    if (p->frag == FRAG_LATER)
        return;
    if (p->proto == IPPROTO_TCP_ || p->proto == IPPROTO_UDP_) {
        put_word(l4, sport, &acc, outer);
        put_word(l4 + 2, dport, &acc, outer);
        acc += pseudo_acc;
        if (p->proto == IPPROTO_TCP_) {
            if (n >= 18)
                put_word(l4 + 16, csum_apply(ld16(l4 + 16), acc), outer, NULL);
        } else {
            uint16_t c = ld16(l4 + 6);
            if (c == 0 && p->family == NAT_AF_INET) {
                CTR(nat)[NAT_C_UDP_ZERO_CSUM]++;  /* RFC 768: 0 = no checksum */
            } else {
                uint16_t nc = csum_apply(c, acc);
                if (nc == 0)
                    nc = 0xffff;   /* RFC 768: a computed 0 is sent as all ones */
                put_word(l4 + 6, nc, outer, NULL);
            }
        }
    } else if (p->icmp == ICMPK_ECHO_REQ || p->icmp == ICMPK_ECHO_REP) {
        put_word(l4 + 4, p->icmp == ICMPK_ECHO_REQ ? sport : dport, &acc, outer);
        if (p->family == NAT_AF_INET6)
            acc += pseudo_acc;   /* ICMPv6 covers a pseudo-header, ICMPv4 does not */
        put_word(l4 + 2, csum_apply(ld16(l4 + 2), acc), outer, NULL);
    }
}

/* Rewrite the IP addresses (and the IPv4 header checksum); returns the
 * pseudo-header change for the L4 checksum. */
static uint32_t rewrite_addrs(struct pkt *p, const uint8_t *src, const uint8_t *dst)
{
    unsigned alen = p->family == NAT_AF_INET ? 4 : 16;
    uint32_t acc = 0;
    put_addr(src_field(p), src, alen, &acc);
    put_addr(dst_field(p), dst, alen, &acc);
    if (p->family == NAT_AF_INET && acc)
        st16(p->l3 + 10, csum_apply(ld16(p->l3 + 10), acc));
    return acc;
}

/* Rewrite a packet so its tuple becomes `to`. */
static void rewrite_packet(struct nat *nat, struct pkt *p, const struct nat_key *to)
{
    uint32_t acc = rewrite_addrs(p, to->src, to->dst);
    rewrite_l4(nat, p, to->sport, to->dport, acc, NULL);
}

/* ---------------------------------------------------------------------------
 * Fragments: the first fragment's outcome, by (family, src, dst, proto, id).
 */
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

/* ---------------------------------------------------------------------------
 * Verdicts
 */
static inline void verdict(struct nat *nat, struct nat_frame *f, uint8_t v, uint16_t reason)
{
    f->verdict = v;
    f->reason = reason;
    if (v == NAT_FORWARD) {
        CTR(nat)[NAT_C_TRANSLATED]++;
    } else if (v == NAT_PASS) {
        CTR(nat)[NAT_C_PASSED]++;
        CTR(nat)[reason]++;
    } else if (v == NAT_DROP) {
        CTR(nat)[NAT_C_DROPPED]++;
        CTR(nat)[reason]++;
    }
}

void nat_count_event(struct nat *nat, uint16_t counter)
{
    if (counter < NAT_C__COUNT)
        CTR(nat)[counter]++;
}

void nat_count_verdict(struct nat *nat, uint8_t v, uint16_t reason)
{
    struct nat_frame f;
    if (reason < NAT_C__COUNT && (v == NAT_PASS || v == NAT_DROP))
        verdict(nat, &f, v, reason);
}

/* Is a frame without a session traffic the NAT owns? Not for vip: those
 * are caught earlier. */
static inline int nat_owned_dst(const struct nat *nat, const struct pkt *p, uint16_t port)
{
    uint8_t fl = addr_flags(nat, p->family, p->key.dst);
    if (fl & (NAT_ADDR_VIP | NAT_ADDR_REAL | NAT_ADDR_SNAT))
        return 1;
    return port < NAT_MAX_PORTS && nat->snat_port[port] &&
           (nat->snat_family & (p->family == NAT_AF_INET ? 1 : 2));
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

static void handle_later_fragment(struct nat *nat, struct nat_frame *f, struct pkt *p,
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

/* ICMP error: find the session through the quoted packet, rewrite it and the
 * outer header. Returns 1 when handled (verdict set). */
static int handle_icmp_error(struct nat *nat, struct nat_frame *f, struct pkt *p, uint64_t now)
{
    struct pkt in;
    uint8_t *icmp = p->l4;
    int rc = parse_ip(icmp + 8, p->l4len - 8, &in, 1);
    if (rc == 0 && in.family != p->family)
        rc = NAT_C_DROP_ICMP_INNER_BAD;
    if (rc == 0 && in.frag == FRAG_LATER)
        return 0; /* no ports to match: treat as a transit error */
    if (rc == 0) {
        if (in.proto == IPPROTO_TCP_ || in.proto == IPPROTO_UDP_ ||
            is_icmp_proto(in.family, in.proto)) {
            if (in.l4len < 8)
                rc = NAT_C_DROP_ICMP_INNER_BAD;
            else
                rc = parse_l4(&in, 0);
            if (rc)
                rc = NAT_C_DROP_ICMP_INNER_BAD;
        } else {
            return 0;
        }
    }
    if (rc) {
        verdict(nat, f, NAT_DROP, (uint16_t)rc);
        return 1;
    }
    if (!has_ports(&in))
        return 0;
    struct nat_key rk;
    key_reverse(&rk, &in.key);
    uint32_t ref = lookup_live(nat, &rk, now);
    if (ref == NAT_NONE)
        return 0;
    uint32_t idx = ref >> 1;
    int d = (int)(ref & 1);
    struct session *s = &nat->s[idx];
    const struct nat_key *to_in = &s->key[!d];   /* quoted packet becomes key[!d] */
    unsigned alen = p->family == NAT_AF_INET ? 4 : 16;
    uint32_t icmp_acc = 0;

    /* quoted header: addresses (+ its own checksum) */
    uint32_t in_ip_acc = 0;
    uint8_t *isrc = src_field(&in), *idst = dst_field(&in);
    uint8_t orig_in_dst[16];
    memcpy(orig_in_dst, idst, alen);
    put_addr(isrc, to_in->src, alen, &in_ip_acc);
    put_addr(idst, to_in->dst, alen, &in_ip_acc);
    icmp_acc += in_ip_acc;
    if (in.family == NAT_AF_INET && in_ip_acc)
        put_word(in.l3 + 10, csum_apply(ld16(in.l3 + 10), in_ip_acc), &icmp_acc, NULL);
    rewrite_l4(nat, &in, to_in->sport, to_in->dport, in_ip_acc, &icmp_acc);

    /* outer header: goes the way of direction d */
    uint32_t out_acc = 0;
    uint8_t *osrc = src_field(p), *odst = dst_field(p);
    if (memcmp(osrc, orig_in_dst, alen) == 0)
        put_addr(osrc, to_in->dst, alen, &out_acc);   /* error from the final host */
    put_addr(odst, to_in->src, alen, &out_acc);
    if (p->family == NAT_AF_INET) {
        if (out_acc)
            st16(p->l3 + 10, csum_apply(ld16(p->l3 + 10), out_acc));
    } else {
        icmp_acc += out_acc;
    }
    st16(icmp + 2, csum_apply(ld16(icmp + 2), icmp_acc));
    CTR(nat)[NAT_C_ICMP_ERROR_TRANSLATED]++;
    f->session = idx;
    f->serial = nat->s[idx].serial;
    f->dir = (uint8_t)d;
    verdict(nat, f, NAT_FORWARD, NAT_C_TRANSLATED);
    return 1;
}

/* drain = "reset": the session's next TCP segment, either way, goes on as
 * a RST with that segment's own sequence number (the one its receiver
 * expects next, so it is accepted, RFC 5961 3.2), its payload cut; then the
 * session ends. The sender's next segment finds no session and is placed
 * afresh as a mid-stream flow, whose backend answers it with a RST: both
 * ends are reset. A segment that cannot be cut (a fragment) is dropped. */
static int reset_on(struct nat *nat, struct nat_frame *f, struct pkt *p, uint32_t idx)
{
    uint8_t *tcp = p->l4;
    unsigned doff = p->proto == IPPROTO_TCP_ && p->l4len >= 20 ? (unsigned)(tcp[12] >> 4) * 4 : 0;
    if (tls_lane)          /* a lane never frees: the writer will */
        __atomic_fetch_or(&nat->s[idx].flags, NAT_SF_DEAD, __ATOMIC_RELAXED);
    else
        sess_free(nat, idx, 1);
    CTR(nat)[NAT_C_SESSION_REMOVED]++;
    f->session = NAT_NONE;
    if (p->proto != IPPROTO_TCP_ || (doff >= 20 && (tcp[13] & 0x04)))
        return 1;                                    /* a last datagram, or a RST already */
    if (p->frag != FRAG_NONE || doff < 20 || doff > p->l4len)
        return 0;
    unsigned alen = p->family == NAT_AF_INET ? 4 : 16;
    uint32_t l4off = (uint32_t)(tcp - p->l3);
    tcp[13] = (uint8_t)(0x04 | (tcp[13] & 0x10));    /* RST, keeping ACK */
    if (p->family == NAT_AF_INET) {
        unsigned ihl = (unsigned)(p->l3[0] & 0x0f) * 4;
        uint16_t tot = (uint16_t)(l4off + doff);
        p->l3[2] = (uint8_t)(tot >> 8);
        p->l3[3] = (uint8_t)tot;
        p->l3[10] = p->l3[11] = 0;
        st16(p->l3 + 10, (uint16_t)~csum_fold(csum_sum(p->l3, ihl)));
    } else {
        uint16_t plen = (uint16_t)(l4off - 40 + doff);
        p->l3[4] = (uint8_t)(plen >> 8);
        p->l3[5] = (uint8_t)plen;
    }
    uint8_t lenproto[4] = {0, IPPROTO_TCP_, (uint8_t)(doff >> 8), (uint8_t)doff};
    tcp[16] = tcp[17] = 0;
    uint32_t sum = csum_sum(src_field(p), alen) + csum_sum(dst_field(p), alen) + csum_sum(lenproto, 4) + csum_sum(tcp, doff);
    st16(tcp + 16, (uint16_t)~csum_fold(sum));
    f->len = (uint32_t)(p->l3 - f->data) + l4off + doff;
    p->l4len = doff;
    return 1;
}

void nat_sessions_unreset(struct nat *nat, uint32_t translation, uint16_t backend)
{
    for (uint32_t i = 0; i < nat->hwm; i++) {
        struct session *s = &nat->s[i];
        if (s->in_use && s->translation == translation && s->backend == backend)
            __atomic_fetch_and(&s->flags, (uint8_t)~NAT_SF_RESET, __ATOMIC_RELAXED);
    }
}

void nat_backend_tally(const struct nat *nat, uint64_t *out, const uint32_t *boff, uint32_t ntrans)
{
    for (uint32_t i = 0; i < nat->hwm; i++) {
        const struct session *s = &nat->s[i];
        if (!s->in_use || s->translation >= ntrans || s->backend == NAT_NO_BACKEND)
            continue;
        uint32_t b = boff[s->translation] + s->backend;
        if (b >= boff[s->translation + 1])
            continue;
        uint64_t *o = out + 5 * (size_t)b;
        o[0]++;
        o[1] += s->packets[0];
        o[2] += s->packets[1];
        o[3] += s->bytes[0];
        o[4] += s->bytes[1];
    }
}

void nat_profile_usage(const struct nat *nat, uint32_t *counts)
{
    for (uint32_t i = 0; i < nat->hwm; i++)
        if (nat->s[i].in_use)
            counts[nat->s[i].profile]++;
}

void nat_session_reset(struct nat *nat, uint32_t index)
{
    if (index < nat->max_sessions && nat->s[index].in_use)
        __atomic_fetch_or(&nat->s[index].flags, NAT_SF_RESET, __ATOMIC_RELAXED);
}

static void process_one(struct nat *nat, struct nat_frame *f, uint64_t now, uint32_t flags)
{
    uint8_t *d = f->data;
    uint32_t len = f->len;
    struct pkt p;
    f->session = NAT_NONE;
    f->dir = 0;

    if (len < 14) {
        verdict(nat, f, NAT_DROP, NAT_C_DROP_ETH_TRUNCATED);
        return;
    }
    uint32_t off = 12;
    uint16_t et = (uint16_t)(d[off] << 8 | d[off + 1]);
    for (int tags = 0; (et == 0x8100 || et == 0x88a8) && tags < 2; tags++) {
        off += 4;
        if (len < off + 2) {
            verdict(nat, f, NAT_DROP, NAT_C_DROP_ETH_TRUNCATED);
            return;
        }
        et = (uint16_t)(d[off] << 8 | d[off + 1]);
    }
    off += 2;
    if (et != 0x0800 && et != 0x86dd) {
        verdict(nat, f, NAT_PASS, NAT_C_PASS_NON_IP);
        return;
    }
    int rc = parse_ip(d + off, len - off, &p, 0);
    if (rc == 0 && ((et == 0x0800) != (p.family == NAT_AF_INET)))
        rc = NAT_C_DROP_IP4_BAD_HEADER; /* version does not match the EtherType */
    if (rc == 0)
        rc = parse_l4(&p, 1);
    if (rc) {
        verdict(nat, f, NAT_DROP, (uint16_t)rc);
        return;
    }
    if (p.routing_pending) {
        uint8_t fl = addr_flags(nat, p.family, p.key.dst);
        if (fl & NAT_ADDR_VIP)
            verdict(nat, f, NAT_DROP, NAT_C_DROP_NO_TRANSLATION);
        else
            verdict(nat, f, NAT_PASS, NAT_C_PASS_IP6_ROUTING);
        return;
    }
    if (p.frag == FRAG_LATER) {
        handle_later_fragment(nat, f, &p, now);
        return;
    }

    if (p.icmp == ICMPK_ERROR && handle_icmp_error(nat, f, &p, now))
        goto done;

    if (!has_ports(&p)) {
        if (addr_flags(nat, p.family, p.key.dst) & NAT_ADDR_VIP)
            verdict(nat, f, NAT_DROP, NAT_C_DROP_NO_TRANSLATION);
        else
            verdict(nat, f, NAT_PASS, p.icmp == ICMPK_ERROR ? NAT_C_PASS_ICMP_NO_SESSION
                                                             : NAT_C_PASS_NO_PORTS);
        goto done;
    }

    uint32_t ref = lookup_live(nat, &p.key, now);
    if (ref != NAT_NONE) {
        uint32_t idx = ref >> 1;
        int dir = (int)(ref & 1);
        struct session *s = &nat->s[idx];
        struct nat_key to;
        key_reverse(&to, &s->key[!dir]);
        s->last_seen_ns = now;
        s->packets[dir]++;
        s->bytes[dir] += f->len;
        if (p.proto == IPPROTO_TCP_) {
            /* the two directions may be on two lanes at once */
            uint8_t st = __atomic_load_n(&s->state, __ATOMIC_RELAXED), to_st;
            while ((to_st = tcp_next[st][tcp_event(p.tcp_flags)][dir]) != st &&
                   !__atomic_compare_exchange_n(&s->state, &st, to_st, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                ;
        }
        if (!(flags & NAT_PF_FINAL))
            CTR(nat)[NAT_C_SESSION_HIT]++;
        f->session = idx;
        f->serial = s->serial;
        f->dir = (uint8_t)dir;
        uint8_t sflags = __atomic_load_n(&s->flags, __ATOMIC_RELAXED);
        if (sflags & NAT_SF_BYPASS) {
            verdict(nat, f, NAT_PASS, NAT_C_PASS_NO_SNAT);
        } else {
            rewrite_packet(nat, &p, &to);
            if (!(sflags & NAT_SF_RESET) || reset_on(nat, f, &p, idx))
                verdict(nat, f, NAT_FORWARD, NAT_C_TRANSLATED);
            else
                verdict(nat, f, NAT_DROP, NAT_C_DROP_POLICY);
        }
        goto done;
    }

    /* No session: does this flow need a decision? */
    {
        uint8_t fl = addr_flags(nat, p.family, p.key.dst);
        uint32_t tid = NAT_NONE;
        if (p.icmp == ICMPK_ECHO_REP) {
            /* replies never start a flow */
        } else if (fl & (NAT_ADDR_VIP | NAT_ADDR_REAL)) {
            tid = nat_translation_lookup(nat, p.family, p.key.dst, p.proto,
                                         p.icmp == ICMPK_ECHO_REQ ? 0 : p.key.dport);
        }
        if (tid != NAT_NONE) {
            /* a translation's new flow */
        } else if (fl & NAT_ADDR_VIP) {
            verdict(nat, f, NAT_DROP, NAT_C_DROP_NO_TRANSLATION);
            goto done;
        } else if (p.icmp != ICMPK_ECHO_REP && f->port < NAT_MAX_PORTS &&
                   nat->snat_port[f->port] &&
                   (nat->snat_family & (p.family == NAT_AF_INET ? 1 : 2))) {
            /* a new flow received on an SNAT interface */
        } else {
            verdict(nat, f, NAT_PASS, NAT_C_PASS_NO_MATCH);
            goto done;
        }
        f->translation = tid;
        f->key = p.key;
        f->tcp_flags = p.tcp_flags;
        f->hash = (uint32_t)key_hash64(nat->flow_seed, &p.key);
        verdict(nat, f, NAT_MISS, 0);
        return;
    }

done:
    if (p.frag == FRAG_FIRST) {
        frag_lock(nat);
        frag_record(nat, &p, f->verdict, now);  /* p.key still holds the original addresses */
        frag_unlock(nat);
    }
}

/* The session-table bucket of a plain TCP/UDP frame (untagged IPv4 without
 * fragment offset, or IPv6 without extension headers), from its headers
 * alone: the key nat_process() will look up. Returns NAT_NONE for anything
 * else; only used to prefetch, so a frame it does not understand costs a
 * miss later, never a wrong answer. */
static inline uint32_t bucket_hint(const struct nat *nat, const struct nat_frame *f)
{
    const uint8_t *d = f->data;
    struct nat_key k;
    memset(&k, 0, sizeof k);
    if (f->len >= 14 + 20 + 4 && d[12] == 0x08 && d[13] == 0x00) {
        const uint8_t *ip = d + 14;
        uint32_t hl = (uint32_t)(ip[0] & 15) * 4;
        if ((ip[0] >> 4) != 4 || hl < 20 || f->len < 14 + hl + 4 || ((ip[6] & 0x1f) | ip[7]))
            return NAT_NONE;
        k.family = 4;
        k.proto = ip[9];
        memcpy(k.src, ip + 12, 4);
        memcpy(k.dst, ip + 16, 4);
        memcpy(&k.sport, ip + hl, 2);
        memcpy(&k.dport, ip + hl + 2, 2);
    } else if (f->len >= 14 + 40 + 4 && d[12] == 0x86 && d[13] == 0xdd) {
        const uint8_t *ip = d + 14;
        k.family = 6;
        k.proto = ip[6];
        memcpy(k.src, ip + 8, 16);
        memcpy(k.dst, ip + 24, 16);
        memcpy(&k.sport, ip + 40, 2);
        memcpy(&k.dport, ip + 42, 2);
    } else {
        return NAT_NONE;
    }
    if (k.proto != IPPROTO_TCP_ && k.proto != IPPROTO_UDP_)
        return NAT_NONE;
    return (uint32_t)(key_hash64(nat->table_seed, &k) & nat->bucket_mask);
}

uint32_t nat_process(struct nat *nat, struct nat_frame *frames, uint32_t n, uint64_t now_ns,
                     uint32_t flags)
{
    /* The session table of a large NAT does not fit the caches: a lookup is
     * two dependent misses (bucket, then session). As VPP's quad loops do,
     * look ahead: the bucket of the frame 2 * NAT_PREFETCH_AHEAD on, the
     * session of the frame NAT_PREFETCH_AHEAD on (its bucket is in by
     * then). */
    uint32_t hint[2 * NAT_PREFETCH_AHEAD];
    for (uint32_t j = 2 * NAT_PREFETCH_AHEAD; j < 3 * NAT_PREFETCH_AHEAD && j < n; j++)
        __builtin_prefetch(frames[j].data);
    for (uint32_t j = 0; j < 2 * NAT_PREFETCH_AHEAD && j < n; j++) {
        hint[j] = bucket_hint(nat, &frames[j]);
        if (hint[j] != NAT_NONE)
            __builtin_prefetch(&nat->bucket[hint[j]]);
    }
    /* Frames are handled strictly in order: processing stops after the first
     * frame that needs the slow path, because a later frame of the batch (the
     * reply, the next fragment) may depend on the session it creates. */
    for (uint32_t i = 0; i < n; i++) {
        struct nat_frame *f = &frames[i];
        uint64_t now = (flags & NAT_PF_FRAME_TIME) ? f->ts_ns : now_ns;
        /* Headers further ahead still (the bucket hint reads them): live,
         * they were just written by another CPU (the kernel's RX copy), so
         * the first read misses. */
        if (i + 3 * NAT_PREFETCH_AHEAD < n)
            __builtin_prefetch(frames[i + 3 * NAT_PREFETCH_AHEAD].data);
        if (i + NAT_PREFETCH_AHEAD < n) {
            uint32_t b = hint[(i + NAT_PREFETCH_AHEAD) % (2 * NAT_PREFETCH_AHEAD)];
            uint32_t ref = b != NAT_NONE ? nat->bucket[b] : NAT_NONE;
            if (ref != NAT_NONE)
                __builtin_prefetch(&nat->s[ref >> 1]);
            uint32_t far = i + 2 * NAT_PREFETCH_AHEAD;
            if (far < n) {
                uint32_t h = bucket_hint(nat, &frames[far]);
                hint[far % (2 * NAT_PREFETCH_AHEAD)] = h;
                if (h != NAT_NONE)
                    __builtin_prefetch(&nat->bucket[h]);
            }
        }
        process_one(nat, f, now, flags);
        if (f->verdict == NAT_MISS) {
            CTR(nat)[NAT_C_SESSION_MISS]++;
            return i + 1;
        }
    }
    return n;
}

/* ---------------------------------------------------------------------------
 * Slow-path interface
 */
uint32_t nat_flow_hash(const struct nat *nat, const struct nat_key *key)
{
    return (uint32_t)key_hash64(nat->flow_seed, key);
}

static uint32_t reclaim_one(struct nat *nat, uint64_t now)
{
    for (uint32_t i = 0; i < NAT_FULL_RECLAIM && nat->hwm; i++) {
        uint32_t idx = nat->scan_cursor < nat->hwm ? nat->scan_cursor : 0;
        nat->scan_cursor = (idx + 1) % nat->hwm;
        struct session *s = &nat->s[idx];
        if (s->in_use && sess_gone(nat, s, now)) {
            int dead = (s->flags & NAT_SF_DEAD) != 0;
            sess_free(nat, idx, (uint8_t)dead);
            if (!dead)
                CTR(nat)[NAT_C_SESSION_EXPIRED_SCAN]++;
            return 1;
        }
    }
    return 0;
}

int nat_session_add(struct nat *nat, const struct nat_key *fwd, const struct nat_key *rev,
                    uint64_t now_ns, uint32_t translation, uint16_t backend, uint8_t profile,
                    uint8_t flags, uint32_t *out)
{
    if (key_eq(fwd, rev))
        return -1;
    if (lookup_live(nat, fwd, now_ns) != NAT_NONE || lookup_live(nat, rev, now_ns) != NAT_NONE)
        return -1;
    if (nat->free_head == NAT_NONE && nat->hwm == nat->max_sessions) {
        limbo_poll(nat);
        if (nat->free_head == NAT_NONE && !nat->limbo_len && !reclaim_one(nat, now_ns))
            return -2;
        /* Freed into limbo, where lanes may still read them: a full table
         * is rare, and a lane moves on within a batch; wait up to 1 ms for
         * that rather than refuse the flow. */
        if (nat->free_head == NAT_NONE)
            limbo_wait(nat, 1000000);
        if (nat->free_head == NAT_NONE)
            return -2;
    }
    uint32_t idx;
    if (nat->free_head != NAT_NONE) {
        idx = nat->free_head;
        nat->free_head = nat->s[idx].next[0];
    } else {
        idx = nat->hwm++;
    }
    struct session *s = &nat->s[idx];
    memset(s, 0, sizeof *s);
    s->key[0] = *fwd;
    s->key[1] = *rev;
    s->key[0].zero = s->key[1].zero = 0;
    s->created_ns = s->last_seen_ns = now_ns;
    s->serial = ++nat->serial;
    s->translation = translation;
    s->backend = backend;
    s->profile = profile;
    s->flags = flags;
    s->state = fwd->proto == IPPROTO_TCP_ ? NAT_ST_TCP_NEW : NAT_ST_OTHER;
    s->in_use = 1;
    table_link(nat, idx, 0);
    table_link(nat, idx, 1);
    nat->n_sessions++;
    *out = idx;
    return 0;
}

int nat_session_restore(struct nat *nat, const struct nat_session_info *in, uint32_t *out)
{
    int rc = nat_session_add(nat, &in->key[0], &in->key[1], in->last_seen_ns, in->translation,
                             in->backend, in->profile, in->flags, out);
    if (rc)
        return rc;
    struct session *s = &nat->s[*out];
    s->created_ns = in->created_ns;
    s->state = in->state;
    s->packets[0] = in->packets[0];
    s->packets[1] = in->packets[1];
    s->bytes[0] = in->bytes[0];
    s->bytes[1] = in->bytes[1];
    return 0;
}

int nat_flow_install(struct nat *nat, struct nat_frame *f, const char *new_src,
                     const char *new_dst, uint16_t new_dport, int32_t src_pref,
                     uint32_t translation, uint16_t backend, uint8_t profile, uint8_t flags,
                     uint64_t now_ns, uint32_t pflags)
{
    const struct nat_key *fwd = &f->key;
    unsigned alen = fwd->family == NAT_AF_INET ? 4 : 16;
    int icmp = is_icmp_proto(fwd->family, fwd->proto);
    struct nat_key rev;
    memset(&rev, 0, sizeof rev);
    memcpy(rev.src, new_dst, alen);
    memcpy(rev.dst, new_src, alen);
    rev.proto = fwd->proto;
    rev.family = fwd->family;
    rev.sport = icmp ? 0 : new_dport;
    if (flags & NAT_SF_BYPASS) {
        rev.dport = fwd->sport;
    } else if (nat_alloc_port(nat, &rev, src_pref, icmp ? 0 : NAT_PORT_LO, 0xffff,
                              key_hash64(nat->table_seed, fwd), now_ns) != 0) {
        return -1;
    }
    uint32_t idx;
    int rc = nat_session_add(nat, fwd, &rev, now_ns, translation, backend, profile, flags, &idx);
    if (rc != 0)
        return rc == -2 ? -2 : -3;
    process_one(nat, f, now_ns, pflags | NAT_PF_FINAL);
    return 0;
}

uint32_t nat_session_find(const struct nat *nat, const struct nat_key *key, uint64_t now_ns)
{
    uint32_t ref = table_lookup(nat, key);
    if (ref == NAT_NONE || sess_gone(nat, &nat->s[ref >> 1], now_ns))
        return NAT_NONE;
    return ref >> 1;
}

int nat_session_get(const struct nat *nat, uint32_t index, struct nat_session_info *out)
{
    if (index >= nat->max_sessions || !nat->s[index].in_use)
        return -1;
    sess_info(nat, index, out);
    return 0;
}

int nat_session_remove(struct nat *nat, uint32_t index)
{
    if (index >= nat->max_sessions || !nat->s[index].in_use)
        return -1;
    int dead = (nat->s[index].flags & NAT_SF_DEAD) != 0;   /* counted by its lane */
    sess_free(nat, index, 1);
    if (!dead)
        CTR(nat)[NAT_C_SESSION_REMOVED]++;
    return 0;
}

uint32_t nat_session_next(const struct nat *nat, uint32_t start)
{
    for (uint32_t i = start; i < nat->hwm; i++)
        if (nat->s[i].in_use)
            return i;
    return NAT_NONE;
}

void nat_sessions_remap(struct nat *nat, const uint32_t *tmap, uint32_t ntrans,
                        const uint32_t *boff, const uint16_t *bmap, uint32_t nbmap)
{
    for (uint32_t i = 0; i < nat->hwm; i++) {
        struct session *s = &nat->s[i];
        if (!s->in_use || s->translation == NAT_NONE)
            continue;
        uint32_t t = s->translation;
        if (t >= ntrans) {
            s->translation = NAT_NONE;
            s->backend = NAT_NO_BACKEND;
            continue;
        }
        uint32_t b = boff[t] + s->backend;
        s->backend = (s->backend != NAT_NO_BACKEND && b < boff[t + 1] && b < nbmap)
                         ? bmap[b] : NAT_NO_BACKEND;
        s->translation = tmap[t];
    }
}

static inline int port_free(const struct nat *nat, struct nat_key *rev, uint16_t port,
                            uint64_t now)
{
    rev->dport = (uint16_t)((port >> 8) | (port << 8));
    if (nat_session_find(nat, rev, now) != NAT_NONE)
        return 0;
    /* never hand out a port a `real` translation owns on that address */
    if (cls_find(nat->cls, rev->family, rev->dst, rev->proto,
                 is_icmp_proto(rev->family, rev->proto) ? 0 : rev->dport))
        return 0;
    return 1;
}

int nat_alloc_port(const struct nat *nat, struct nat_key *rev, int32_t preferred, uint16_t lo,
                   uint16_t hi, uint64_t salt, uint64_t now_ns)
{
    if (preferred >= 0 && preferred <= 0xffff && port_free(nat, rev, (uint16_t)preferred, now_ns))
        return 0;
    if (hi < lo)
        return -1;
    uint32_t range = (uint32_t)hi - lo + 1;
    rev->dport = 0;
    /* The salt (the new flow's hash) gives every flow its own probe order:
     * flows towards one destination share rev except for the port, and a
     * shared order would make each allocation walk all earlier ones. */
    uint64_t h = key_hash64(nat->table_seed ^ salt, rev);
    for (int i = 0; i < NAT_PORT_PROBES; i++) {
        uint16_t port = (uint16_t)(lo + (h % range));
        if (port_free(nat, rev, port, now_ns))
            return 0;
        h = fmix64(h + 0x9e3779b97f4a7c15ULL);
    }
    uint32_t start = (uint32_t)(h % range);
    for (uint32_t j = 0; j < range; j++) {
        uint16_t port = (uint16_t)(lo + (start + j) % range);
        if (port_free(nat, rev, port, now_ns))
            return 0;
    }
    return -1;
}

uint32_t nat_expire(struct nat *nat, uint64_t now_ns, uint32_t budget)
{
    uint32_t removed = 0;
    limbo_poll(nat);
    if (nat->hwm == 0)
        return 0;
    if (budget > nat->hwm)
        budget = nat->hwm;
    for (uint32_t i = 0; i < budget; i++) {
        uint32_t idx = nat->scan_cursor < nat->hwm ? nat->scan_cursor : 0;
        nat->scan_cursor = (idx + 1) % nat->hwm;
        struct session *s = &nat->s[idx];
        if (s->in_use && sess_gone(nat, s, now_ns)) {
            int dead = (s->flags & NAT_SF_DEAD) != 0;
            sess_free(nat, idx, (uint8_t)dead);
            if (!dead)
                CTR(nat)[NAT_C_SESSION_EXPIRED_SCAN]++;
            removed++;
        }
    }
    return removed;
}

uint32_t nat_drain_events(struct nat *nat, struct nat_session_info *out, uint32_t max)
{
    uint32_t n = 0;
    while (n < max && nat->ev_len) {
        out[n++] = nat->ev[nat->ev_head];
        nat->ev_head = (nat->ev_head + 1) % NAT_EVENT_RING;
        nat->ev_len--;
    }
    return n;
}

/* ---------------------------------------------------------------------------
 * Lanes (see nat.h)
 */
struct nat_lane *nat_lane_create(struct nat *nat)
{
    for (uint32_t i = 0; i < NAT_MAX_LANES; i++) {
        if (nat->lanes[i])
            continue;
        struct nat_lane *l = calloc(1, sizeof *l);
        if (!l)
            return NULL;
        l->nat = nat;
        l->slot = i;
        __atomic_store_n(&nat->lanes[i], l, __ATOMIC_SEQ_CST);
        nat->n_lanes++;
        return l;
    }
    return NULL;
}

/* The writer's: its counters join the writer's, so none are lost. */
void nat_lane_destroy(struct nat_lane *lane)
{
    if (!lane)
        return;
    struct nat *nat = lane->nat;
    for (unsigned i = 0; i < NAT_C__COUNT; i++)
        nat->counters[i] += lane->counters[i];
    __atomic_store_n(&nat->lanes[lane->slot], NULL, __ATOMIC_SEQ_CST);
    nat->n_lanes--;
    if (!nat->n_lanes) {   /* nothing can read limbo's slots any more */
        nat->limbo_sealed = nat->limbo_len;
        limbo_poll(nat);
    }
    free(lane);
}

uint32_t nat_lane_process(struct nat_lane *lane, struct nat_frame *frames, uint32_t n,
                          uint64_t now_ns, uint32_t flags)
{
    __atomic_store_n(&lane->online, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&lane->qc, 1, __ATOMIC_SEQ_CST);   /* a full barrier: then the table */
    tls_lane = lane;
    uint32_t done = nat_process(lane->nat, frames, n, now_ns, flags);
    tls_lane = NULL;
    __atomic_store_n(&lane->online, 0, __ATOMIC_RELEASE);   /* holds nothing from here on */
    return done;
}

const uint64_t *nat_lane_counters(const struct nat_lane *lane) { return lane->counters; }

void nat_counters_sum(const struct nat *nat, uint64_t *out)
{
    memcpy(out, nat->counters, sizeof nat->counters);
    for (uint32_t i = 0; i < NAT_MAX_LANES; i++) {
        const struct nat_lane *l = __atomic_load_n(&nat->lanes[i], __ATOMIC_ACQUIRE);
        if (l)
            for (unsigned c = 0; c < NAT_C__COUNT; c++)
                out[c] += __atomic_load_n(&l->counters[c], __ATOMIC_RELAXED);
    }
}

uint64_t nat_slots_recycled(const struct nat *nat) { return nat->slots_recycled; }

/* Wait until no lane can hold what was unlinked before the call. */
static void lanes_synchronize(struct nat *nat)
{
    uint64_t snap[NAT_MAX_LANES];
    if (!nat->n_lanes)
        return;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (uint32_t i = 0; i < NAT_MAX_LANES; i++)
        snap[i] = nat->lanes[i] ? __atomic_load_n(&nat->lanes[i]->qc, __ATOMIC_ACQUIRE) : 0;
    for (uint32_t i = 0; i < NAT_MAX_LANES; i++) {
        const struct nat_lane *l = nat->lanes[i];
        while (l && __atomic_load_n(&l->online, __ATOMIC_ACQUIRE) &&
               __atomic_load_n(&l->qc, __ATOMIC_ACQUIRE) == snap[i])
            sched_yield();
    }
}

uint64_t nat_lane_bench(struct nat_lane *lane, const uint8_t *pristine, uint32_t nchunks,
                        uint32_t batch, uint32_t stride, uint32_t len, uint8_t *work,
                        struct nat_frame *frames, uint64_t now_ns, uint64_t iterations)
{
    uint64_t forwarded = 0;
    for (uint64_t it = 0; it < iterations; it++) {
        memcpy(work, pristine + (size_t)(it % nchunks) * batch * stride, (size_t)batch * stride);
        for (uint32_t k = 0; k < batch; k++) {
            frames[k].data = work + (size_t)k * stride;
            frames[k].len = len;
            frames[k].port = 0;
        }
        for (uint32_t done = 0; done < batch;)
            done += nat_lane_process(lane, frames + done, batch - done, now_ns, 0);
        for (uint32_t k = 0; k < batch; k++)
            forwarded += frames[k].verdict == NAT_FORWARD;
    }
    return forwarded;
}

/* ---------------------------------------------------------------------------
 * Lifecycle and introspection
 */
_Static_assert(__builtin_types_compatible_p(__typeof__(&nat_process), nat_process_fn), "nat_process_fn");
_Static_assert(__builtin_types_compatible_p(__typeof__(&nat_session_get), nat_session_get_fn), "nat_session_get_fn");

const char *nat_build_version(void) { return NAT_BUILD_VERSION; }
unsigned nat_counter_count(void) { return NAT_C__COUNT; }
const char *nat_counter_name(unsigned i) { return i < NAT_C__COUNT ? counter_names[i] : NULL; }
const char *nat_counter_help(unsigned i) { return i < NAT_C__COUNT ? counter_help[i] : NULL; }
size_t nat_sizeof_session(void) { return sizeof(struct session); }

struct nat *nat_create(uint32_t max_sessions, uint64_t table_seed)
{
    if (max_sessions == 0 || max_sessions > (1u << 30))
        return NULL;
    struct nat *nat = calloc(1, sizeof *nat);
    if (!nat)
        return NULL;
    uint32_t nb = 1024;
    while (nb < 2 * max_sessions)
        nb <<= 1;
    nat->s = calloc(max_sessions, sizeof *nat->s);
    nat->bucket = malloc((size_t)nb * sizeof *nat->bucket);
    nat->frag = calloc(NAT_FRAG_SLOTS, sizeof *nat->frag);
    nat->ev = calloc(NAT_EVENT_RING, sizeof *nat->ev);
    nat->limbo = malloc((size_t)max_sessions * sizeof *nat->limbo);
    if (!nat->s || !nat->bucket || !nat->frag || !nat->ev || !nat->limbo) {
        nat_destroy(nat);
        return NULL;
    }
    memset(nat->bucket, 0xff, (size_t)nb * sizeof *nat->bucket);
    nat->bucket_mask = nb - 1;
    nat->max_sessions = max_sessions;
    nat->free_head = NAT_NONE;   /* slots are handed out from hwm first: calloc'd
                                    memory is only touched when used */
    nat->table_seed = table_seed;
    for (unsigned i = 0; i < NAT_MAX_PROFILES; i++)
        for (unsigned j = 0; j < 4; j++)
            nat->profile[i].ms[j] = 30000;
    return nat;
}

void nat_destroy(struct nat *nat)
{
    if (!nat)
        return;
    free(nat->s);
    free(nat->bucket);
    free(nat->frag);
    free(nat->ev);
    free(nat->limbo);
    nat_classifier_destroy(nat->cls);
    free(nat);
}

size_t nat_memory_bytes(const struct nat *nat)
{
    return sizeof *nat + (size_t)nat->max_sessions * sizeof *nat->s +
           ((size_t)nat->bucket_mask + 1) * sizeof *nat->bucket +
           NAT_FRAG_SLOTS * sizeof *nat->frag + NAT_EVENT_RING * sizeof *nat->ev +
           (size_t)nat->max_sessions * sizeof *nat->limbo;
}

void nat_set_flow_hash_seed(struct nat *nat, uint64_t seed) { nat->flow_seed = seed; }

void nat_set_snat(struct nat *nat, const uint8_t *port_enabled, int have_ip4, int have_ip6)
{
    memcpy(nat->snat_port, port_enabled, NAT_MAX_PORTS);
    nat->snat_family = (uint8_t)((have_ip4 ? 1 : 0) | (have_ip6 ? 2 : 0));
}

int nat_set_profile(struct nat *nat, unsigned index, const struct nat_profile *p)
{
    if (index >= NAT_MAX_PROFILES)
        return -1;
    nat->profile[index] = *p;
    return 0;
}

const uint64_t *nat_counters(const struct nat *nat) { return nat->counters; }
uint32_t nat_session_count(const struct nat *nat) { return nat->n_sessions; }
uint32_t nat_session_capacity(const struct nat *nat) { return nat->max_sessions; }
