/*
 * The NAT core's insides, shared by its files (nat_*.c); nat.h is the
 * public interface. See docs/architecture.md for where it sits.
 *
 * A session is two keys and a lifetime. key[0] is the flow as its initiator
 * sends it, key[1] the flow as replies arrive. A packet that matches key[d]
 * is rewritten to the reverse of key[!d]; that single rule covers DNAT,
 * SNAT, both at once, and the embedded packet of ICMP errors (rewritten to
 * key[!d] itself). Nothing else is stored per session: no Python object,
 * no pointer, about 152 bytes plus 8 bytes of hash buckets and 12 of the
 * rings that recycle slots (limbo) and evict first (tentative).
 *
 * The table is a bucket array of chain heads; both keys of a session hang in
 * it, linked through session.next[dir]. A chain reference is (index << 1 | dir).
 *
 * What one file needs of another is declared here, NAT_INTERNAL (hidden from
 * the module's exports); the hot helpers are static inline here, and the
 * build links with -flto so calls between the files inline as before.
 */
#ifndef APPLIANCE_NAT_INTERNAL_H
#define APPLIANCE_NAT_INTERNAL_H

#include "nat.h"
#include "csum.h"

#include <stdlib.h>
#include <string.h>

#define NAT_INTERNAL __attribute__((visibility("hidden")))

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

/* Table pressure (nat_pressure.c): from 15/16 full, each new flow evicts
 * the oldest tentative session (TCP without a completed handshake, other
 * flows without a reply), looking at most NAT_EVICT_PROBES entries of the
 * tentative ring; while under pressure and NAT_PRESSURE_HOLD_MS after, the
 * scanner ends tentative sessions idle for NAT_PRESSURE_IDLE_MS. Answered
 * sessions are never evicted. */
#define NAT_PRESSURE_SHIFT 4
#define NAT_EVICT_PROBES 32
#define NAT_PRESSURE_IDLE_MS 5000
#define NAT_PRESSURE_HOLD_MS 60000

/* Why a session ended: nat_session_info.reason */
enum { NAT_END_TIMEOUT = 0, NAT_END_REMOVED = 1, NAT_END_EVICTED = 2 };

#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

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

/* An entry of the tentative ring: a session, named by slot and serial (the
 * slot may hold another session by the time the entry is read). */
struct tentative {
    uint32_t idx;
    uint32_t serial;
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
    uint8_t flags_any;       /* every address flag some entry has: a lookup for a flag
                              * no entry has (NAT_ADDR_BACKEND, mostly) is skipped */
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
    struct tentative *tent;   /* sessions in creation order: a ring of max_sessions */
    uint32_t tent_head, tent_len;
    uint64_t pressure_ns;     /* when the table was last seen under pressure (0: never) */
    uint16_t src_lo, src_hi; /* nat_set_source_ports(): 0, 0 when unset */
    uint32_t *sync_out;       /* session sync: (index, serial) pairs created since the last take */
    uint32_t sync_cap, sync_len;
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
NAT_INTERNAL extern __thread struct nat_lane *tls_lane __attribute__((tls_model("initial-exec")));   /* nat_lane.c */
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

NAT_INTERNAL extern const uint8_t tcp_next[NAT_ST__COUNT][EV__COUNT][2];   /* nat_tcp.c */
NAT_INTERNAL extern const uint8_t state_lifetime[NAT_ST__COUNT];



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


/* A session nat_flow_install() created, kept for session sync (nat_sync.c)
 * while it collects. */
static inline void sync_note(struct nat *nat, uint32_t idx)
{
    if (!nat->sync_cap)
        return;
    if (nat->sync_len == nat->sync_cap) {
        CTR(nat)[NAT_C_SYNC_OUTBOX_FULL]++;
        return;
    }
    nat->sync_out[2 * nat->sync_len] = idx;
    nat->sync_out[2 * nat->sync_len + 1] = nat->s[idx].serial;
    nat->sync_len++;
}

/* nat_session.c, nat_limbo.c, nat_classifier.c, nat_lane.c */
NAT_INTERNAL void sess_free(struct nat *nat, uint32_t idx, uint8_t reason);
NAT_INTERNAL void limbo_poll(struct nat *nat);
NAT_INTERNAL void limbo_wait(struct nat *nat, uint64_t limit_ns);
NAT_INTERNAL const struct centry *cls_find(const struct nat_classifier *c, uint8_t family,
                                           const uint8_t *addr, uint8_t proto, uint16_t port);
NAT_INTERNAL void lanes_synchronize(struct nat *nat);

/* Gone for lookups: expired, or ended by a lane (NAT_SF_DEAD). */
static inline int sess_gone(const struct nat *nat, const struct session *s, uint64_t now)
{
    return now > sess_expires(nat, s) || (__atomic_load_n(&s->flags, __ATOMIC_RELAXED) & NAT_SF_DEAD);
}

/* nat_pressure.c: the writer's side of table pressure */
static inline int under_pressure(const struct nat *nat)
{
    return nat->n_sessions >= nat->max_sessions - (nat->max_sessions >> NAT_PRESSURE_SHIFT);
}
/* Whether the scanner ends idle tentative sessions now; notes pressure. */
static inline int sweeping(struct nat *nat, uint64_t now)
{
    if (under_pressure(nat) && now > nat->pressure_ns)
        nat->pressure_ns = now;
    return nat->pressure_ns && now < nat->pressure_ns + NAT_PRESSURE_HOLD_MS * 1000000ull;
}
NAT_INTERNAL void tent_push(struct nat *nat, uint32_t idx);
NAT_INTERNAL int tent_evict(struct nat *nat);
NAT_INTERNAL int tent_evict_idle(struct nat *nat, uint32_t idx, uint64_t now);

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


/* nat_parse.c, nat_rewrite.c, nat_frag.c, nat_icmp_error.c, nat_reset.c */
NAT_INTERNAL int parse_ip(uint8_t *l3, uint32_t avail, struct pkt *p, int inner, uint8_t family);
NAT_INTERNAL int parse_l4(struct pkt *p, int need_full);
NAT_INTERNAL void rewrite_l4(struct nat *nat, struct pkt *p, uint16_t sport, uint16_t dport,
                             uint32_t acc, uint32_t *icmp_acc);
NAT_INTERNAL uint32_t rewrite_addrs(struct pkt *p, const uint8_t *src, const uint8_t *dst);
NAT_INTERNAL void rewrite_packet(struct nat *nat, struct pkt *p, const struct nat_key *to);
NAT_INTERNAL void frag_note(struct nat *nat, const struct pkt *p, uint8_t verdict, uint64_t now);
NAT_INTERNAL void handle_later_fragment(struct nat *nat, struct nat_frame *f, struct pkt *p, uint64_t now);
NAT_INTERNAL int handle_icmp_error(struct nat *nat, struct nat_frame *f, struct pkt *p, uint64_t now);
NAT_INTERNAL int reset_on(struct nat *nat, struct nat_frame *f, struct pkt *p, uint32_t idx);

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

#endif
