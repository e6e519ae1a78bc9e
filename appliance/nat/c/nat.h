/*
 * NAT core fast path: the public interface of nat.c.
 *
 * Everything an established flow needs happens here, a whole batch of frames
 * per call: parse, hash, session lookup, rewrite, incremental checksums.
 * Frames that need a decision (first packet of a flow) come back as
 * NAT_MISS; the Python slow path decides, installs a session with
 * nat_session_add() and hands the frame back to nat_process().
 *
 * The declarations between the CFFI-BEGIN/CFFI-END markers are read verbatim
 * by appliance/nat/_build.py as the cffi cdef, so the Python wrapper and this
 * header cannot disagree about a struct layout: cffi checks every field
 * offset against the compiler at build time.
 */
#ifndef APPLIANCE_NAT_H
#define APPLIANCE_NAT_H

#include <stdint.h>
#include <stddef.h>

enum nat_counter {
#define _(name, text) NAT_C_##name,
#include "nat_counters.def"
#undef _
    NAT_C__COUNT
};

/* CFFI-BEGIN */
#define NAT_NONE 0xffffffff      /* "no session / no translation" index */
#define NAT_NO_BACKEND 0xffff    /* a session without a backend (SNAT only, or removed) */
#define NAT_MAX_PORTS 256        /* ingress interfaces the core tells apart */
#define NAT_MAX_PROFILES 256     /* distinct timeout profiles at once */
#define NAT_PORT_LO 1024         /* lowest source port handed out (ICMP ids: 0) */
#define NAT_MAX_LANES 64         /* reader threads (datapath workers) at once */

enum nat_verdict {
    NAT_FORWARD = 0,   /* rewritten by a session: send it on */
    NAT_PASS = 1,      /* not NAT traffic: send it on unchanged */
    NAT_DROP = 2,      /* drop; reason says why */
    NAT_MISS = 3,      /* needs the slow path (new flow) */
};

/* Flags for nat_process(). */
#define NAT_PF_FRAME_TIME 1  /* use frames[i].ts_ns instead of now_ns */
#define NAT_PF_FINAL 2       /* slow-path re-run (a lane's miss, again): not counted as hit or miss */

enum nat_family { NAT_AF_INET = 4, NAT_AF_INET6 = 6 };

/* A flow as a lookup key: 40 bytes, compared and hashed as five uint64.
 * IPv4 addresses occupy the first 4 bytes of src/dst, the rest is zero.
 * Ports are in network byte order. For ICMP echo, the identifier is the
 * querier's port: requests carry it as sport (dport 0), replies as dport. */
struct nat_key {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport;
    uint16_t dport;
    uint8_t proto;
    uint8_t family;
    uint16_t zero;
};

/* One frame of a batch. The caller fills data/len/port (and ts_ns with
 * NAT_PF_FRAME_TIME); nat_process() fills the rest. */
struct nat_frame {
    uint8_t *data;           /* Ethernet frame, rewritten in place */
    uint32_t len;
    uint16_t port;           /* ingress interface, dense index < NAT_MAX_PORTS */
    uint8_t verdict;         /* enum nat_verdict */
    uint8_t dir;             /* FORWARD: 0 = as the initiator sent, 1 = return */
    uint16_t reason;         /* enum nat_counter explaining the verdict */
    uint8_t tcp_flags;       /* MISS: TCP flags of the frame */
    uint8_t _pad;
    uint32_t session;        /* FORWARD: session index */
    uint32_t translation;    /* MISS: translation id, or NAT_NONE */
    uint32_t hash;           /* MISS: keyed flow hash of key */
    uint32_t serial;         /* with a session: its serial. An index is reused once its
                              * session ends; (session, serial) names one session, for
                              * whatever a caller keeps per session (io's next hops) */
    uint64_t ts_ns;
    struct nat_key key;      /* MISS: the flow as received */
};

/* TCP/other session states; see the transition table in nat.c. */
enum nat_state {
    NAT_ST_OTHER = 0,        /* UDP, ICMP: one lifetime */
    NAT_ST_TCP_NEW,          /* created, no packet applied yet */
    NAT_ST_TCP_SYN_SENT,
    NAT_ST_TCP_SYN_RCVD,     /* SYN-ACK seen, handshake not complete */
    NAT_ST_TCP_MIDSTREAM,    /* picked up without a SYN */
    NAT_ST_TCP_ESTABLISHED,
    NAT_ST_TCP_FIN_FWD,      /* half-closed by the initiator */
    NAT_ST_TCP_FIN_REV,      /* half-closed by the responder */
    NAT_ST_TCP_CLOSING,      /* FIN both ways, or RST */
    NAT_ST__COUNT,
};

/* Which lifetime of a profile applies in a state. */
enum nat_lifetime {
    NAT_LT_SESSION = 0,      /* UDP, ICMP, TCP picked up mid-stream */
    NAT_LT_ESTABLISHED = 1,
    NAT_LT_HALF_CLOSED = 2,
    NAT_LT_CLOSING = 3,
    NAT_LT_SYN = 4,          /* TCP from its SYN until the handshake completes */
};

struct nat_profile {
    uint32_t ms[5];          /* indexed by enum nat_lifetime */
};

/* Session flags */
#define NAT_SF_TRANSLATED 1   /* created by a translation */
#define NAT_SF_SNAT 2         /* source rewritten by SNAT */
#define NAT_SF_BYPASS 4       /* no rewrite: kept so the flow stays in C */
#define NAT_SF_RESET 8        /* drain = "reset": the next segment goes on as a RST, the session ends */
#define NAT_SF_DEAD 16        /* ended by a reader (a reset sent): gone for lookups, freed by the writer */

/* A session as shown to Python (copy, never a pointer into the table). */
struct nat_session_info {
    struct nat_key key[2];   /* [0] as the initiator sends, [1] as replies arrive */
    uint64_t created_ns;
    uint64_t last_seen_ns;
    uint64_t expires_ns;
    uint32_t index;
    uint32_t translation;
    uint16_t backend;
    uint8_t state;
    uint8_t profile;
    uint8_t flags;
    uint8_t reason;          /* expiry events: 0 = timeout, 1 = removed, 2 = evicted */
    uint16_t _pad;
    uint64_t packets[2];
    uint64_t bytes[2];
};

/* Classifier entries: what the core knows of the configuration. */
#define NAT_ADDR_VIP 1    /* owned by the NAT: unmatched traffic dropped */
#define NAT_ADDR_REAL 2   /* host address with translated ports */
#define NAT_ADDR_SNAT 4   /* an SNAT address (return traffic lands here) */
#define NAT_ADDR_BACKEND 8 /* a backend's ([cluster] stateless_failover): its packets
                            * without a session go to the slow path, which may
                            * find the flow another instance started */

struct nat;
struct nat_classifier;
struct nat_lane;

const char *nat_build_version(void);
unsigned nat_counter_count(void);
const char *nat_counter_name(unsigned i);
const char *nat_counter_help(unsigned i);
size_t nat_sizeof_session(void);

struct nat *nat_create(uint32_t max_sessions, uint64_t table_seed);
void nat_destroy(struct nat *nat);
size_t nat_memory_bytes(const struct nat *nat);
void nat_set_flow_hash_seed(struct nat *nat, uint64_t seed);
void nat_set_snat(struct nat *nat, const uint8_t *port_enabled /* NAT_MAX_PORTS */,
                  int have_ip4, int have_ip6);
int nat_set_profile(struct nat *nat, unsigned index, const struct nat_profile *p);
const uint64_t *nat_counters(const struct nat *nat);
/* Count a verdict the slow path decided (frame dropped or passed there). */
void nat_count_verdict(struct nat *nat, uint8_t verdict, uint16_t reason);
/* Count an event the slow path saw (not a verdict). */
void nat_count_event(struct nat *nat, uint16_t counter);
uint32_t nat_session_count(const struct nat *nat);
uint32_t nat_session_capacity(const struct nat *nat);
/* Table pressure (nat_pressure.c): the session count from which a new flow
 * evicts the oldest tentative session, and how many are tentative now (a
 * pass over the table: for statistics, not per packet). */
uint32_t nat_pressure_threshold(const struct nat *nat);
uint32_t nat_sessions_tentative(const struct nat *nat);

struct nat_classifier *nat_classifier_create(uint32_t capacity);
void nat_classifier_destroy(struct nat_classifier *c);
int nat_classifier_add_translation(struct nat_classifier *c, uint8_t family,
                                   const uint8_t *addr, uint8_t proto,
                                   uint16_t port_be, uint32_t id);
int nat_classifier_add_address(struct nat_classifier *c, uint8_t family,
                               const uint8_t *addr, uint8_t flags);
/* Takes ownership of c; frees the classifier it replaces. */
void nat_set_classifier(struct nat *nat, struct nat_classifier *c);
uint32_t nat_translation_lookup(const struct nat *nat, uint8_t family,
                                const uint8_t *addr, uint8_t proto,
                                uint16_t port_be);

/* Process frames in order. Stops after the first frame that needs the slow
 * path (verdict NAT_MISS) and returns how many frames it processed; the
 * caller resolves that frame (nat_flow_install) and continues after it. */
uint32_t nat_process(struct nat *nat, struct nat_frame *frames, uint32_t n,
                     uint64_t now_ns, uint32_t flags);

/* A session's info by index, if it is still the session of serial (from a
 * frame nat_process() or a lane returned): 0, else -1. Any thread may call
 * it while the writer changes the table: the serial is read before and
 * after the copy (a seqlock), and nat_session_add() clears it before it
 * reuses a slot, so a copy torn by a reuse is refused, never returned. */
int nat_session_peek(const struct nat *nat, uint32_t index, uint32_t serial,
                     struct nat_session_info *out);

/* nat_process(), nat_lane_process() and nat_session_peek() as the io module
 * calls them, through pointers (the two cffi modules link separately):
 * nat.c checks that these types are those of the functions, so a changed
 * signature fails to build. */
typedef uint32_t (*nat_process_fn)(struct nat *, struct nat_frame *, uint32_t, uint64_t, uint32_t);
typedef uint32_t (*nat_lane_process_fn)(struct nat_lane *, struct nat_frame *, uint32_t, uint64_t,
                                        uint32_t);
typedef int (*nat_session_peek_fn)(const struct nat *, uint32_t, uint32_t, struct nat_session_info *);

uint32_t nat_flow_hash(const struct nat *nat, const struct nat_key *key);
/* 0: added (index in *out); -1: a key exists already; -2: table full. */
int nat_session_add(struct nat *nat, const struct nat_key *fwd,
                    const struct nat_key *rev, uint64_t now_ns,
                    uint32_t translation, uint16_t backend, uint8_t profile,
                    uint8_t flags, uint32_t *out);
/* Install the session for a NAT_MISS frame and run the frame again, in one
 * call. The rewritten flow goes new_src -> new_dst:new_dport (addresses of
 * the frame's family, new_dport in network order, ignored for ICMP); its
 * source port is chosen by nat_alloc_port() with src_pref first (-1: none),
 * unless flags has NAT_SF_BYPASS (then the session is the identity).
 * 0: installed, frame verdict set; -1: no free source port; -2: table full;
 * -3: a key exists already. */
int nat_flow_install(struct nat *nat, struct nat_frame *f, const char *new_src,
                     const char *new_dst, uint16_t new_dport, int32_t src_pref,
                     uint32_t translation, uint16_t backend, uint8_t profile,
                     uint8_t flags, uint64_t now_ns, uint32_t pflags);
/* A session of explicit keys (fwd as the initiator sends, rev as replies
 * arrive), then the frame processed again through it: the slow path's
 * answer to a frame nat_process() sent it with dir 1, a backend's packet
 * that is the reply of a flow another instance started. Returns as
 * nat_flow_install() does (never -1). */
int nat_flow_install_keys(struct nat *nat, struct nat_frame *f, const struct nat_key *fwd,
                          const struct nat_key *rev, uint32_t translation, uint16_t backend,
                          uint8_t profile, uint8_t flags, uint64_t now_ns, uint32_t pflags);
/* Session index for a key (either direction), or NAT_NONE. Expired
 * sessions are not returned. */
uint32_t nat_session_find(const struct nat *nat, const struct nat_key *key,
                          uint64_t now_ns);
int nat_session_get(const struct nat *nat, uint32_t index,
                    struct nat_session_info *out);
/* Put back a session saved with nat_session_get() by an earlier run (a
 * restart): keys, rewrite, state, counters and timestamps as they were.
 * 0: restored (index in *out); -1: a key exists already; -2: table full. */
int nat_session_restore(struct nat *nat, const struct nat_session_info *in, uint32_t *out);
/* A peer's news of a session this table has too (session sync): when the
 * session of in->key[0] has both keys of in, its last-seen time moves up
 * to in->last_seen_ns and its state to in->state. 0: refreshed; -1: no
 * such session (or one with other keys); 1: ours is as fresh already. */
int nat_session_refresh(struct nat *nat, const struct nat_session_info *in, uint64_t now_ns);
int nat_session_remove(struct nat *nat, uint32_t index);
/* Mark a session to be reset by its next packet (see NAT_SF_RESET). */
void nat_session_reset(struct nat *nat, uint32_t index);
/* Clear that mark on every session of (translation, backend): it is back. */
void nat_sessions_unreset(struct nat *nat, uint32_t translation, uint16_t backend);
/* Sessions per timeout profile into counts[NAT_MAX_PROFILES]: which
 * profiles may be reused for other timeouts. */
void nat_profile_usage(const struct nat *nat, uint32_t *counts);
/* The live sessions per (translation t, backend b), for b below
 * boff[t + 1] - boff[t], added into out[5 * (boff[t] + b) ...]: sessions,
 * packets to the backend, from it, bytes to it, from it. One pass over the
 * table: a reload recounts sessions with it (they are kept from events,
 * which a full ring would lose), a statistics request reads the traffic
 * (what ended sessions carried comes from their events). */
void nat_backend_tally(const struct nat *nat, uint64_t *out, const uint32_t *boff, uint32_t ntrans);
/* Iterate: next in-use index >= start, or NAT_NONE. */
uint32_t nat_session_next(const struct nat *nat, uint32_t start);
/* After a reload, what each session is counted against follows the new
 * configuration (its rewrite is untouched): translation t becomes tmap[t]
 * (NAT_NONE: gone), its backend b becomes bmap[boff[t] + b] for b below
 * boff[t + 1] - boff[t] (NAT_NO_BACKEND: gone). One pass over the table in
 * C: a million sessions in a few ms, instead of seconds from Python. */
void nat_sessions_remap(struct nat *nat, const uint32_t *tmap, uint32_t ntrans,
                        const uint32_t *boff, const uint16_t *bmap, uint32_t nbmap);

/* Pick rev->dport so that rev is free: preferred first (-1: none), then
 * probes in an order derived from salt, then a scan of [lo, hi] from a
 * salted start. 0 on success, -1 when every port is taken. */
int nat_alloc_port(const struct nat *nat, struct nat_key *rev,
                   int32_t preferred, uint16_t lo, uint16_t hi, uint64_t salt,
                   uint64_t now_ns);

/* Lanes: threads other than the writer's that run the fast path over the
 * same table at the same time (the datapath workers). Everything else in
 * this header is the writer's: one thread (the slow path's) at a time.
 * A lane looks sessions up without locks; it never frees or inserts one
 * (an expired or dead session is a miss for it, which the writer settles),
 * and the writer reuses a freed slot only after every lane that was inside
 * nat_lane_process() when the slot was unlinked has returned. So a lane
 * holds no reference into the table between calls: what it keeps of a
 * frame's session is (session, serial), checked again when used.
 * Each lane counts in its own counters; nat_counters_sum() adds them up. */
struct nat_lane *nat_lane_create(struct nat *nat);
/* Before or after nat_destroy() of its table (which cuts its lanes loose). */
void nat_lane_destroy(struct nat_lane *lane);
/* nat_process() on a lane: same frames, verdicts and stop at NAT_MISS. */
uint32_t nat_lane_process(struct nat_lane *lane, struct nat_frame *frames, uint32_t n,
                          uint64_t now_ns, uint32_t flags);
const uint64_t *nat_lane_counters(const struct nat_lane *lane);
/* The writer's counters plus every lane's, into out[NAT_C__COUNT]. */
void nat_counters_sum(const struct nat *nat, uint64_t *out);
/* Slots freed while lanes existed and reused since (after a grace period). */
uint64_t nat_slots_recycled(const struct nat *nat);
/* The benchmark's worker loop (appliance bench core --workers): batches
 * copied from pristine (nchunks chunks of batch frames, stride bytes apart,
 * len bytes each) into work, as an RX ring would, then run through the lane;
 * iterations batches. In C so that N threads measure the core, not the GIL.
 * Returns the frames that got NAT_FORWARD. */
uint64_t nat_lane_bench(struct nat_lane *lane, const uint8_t *pristine, uint32_t nchunks,
                        uint32_t batch, uint32_t stride, uint32_t len, uint8_t *work,
                        struct nat_frame *frames, uint64_t now_ns, uint64_t iterations);

/* Incremental expiry: examine at most budget slots from where the last
 * call stopped; returns the number of sessions removed. */
uint32_t nat_expire(struct nat *nat, uint64_t now_ns, uint32_t budget);
/* Move up to max queued expiry events into out; returns how many. */
uint32_t nat_drain_events(struct nat *nat, struct nat_session_info *out, uint32_t max);
/* The source ports (and ICMP identifiers) nat_flow_install() picks when
 * it cannot keep the preferred one, and the preferred ones it keeps for a
 * flow whose source address it rewrites (SNAT, a source rewrite): [lo, hi].
 * A flow that keeps the client's address keeps its port wherever it is.
 * Instances that share an SNAT address get disjoint ranges ([cluster]
 * source_ports), so a session one syncs never clashes with one another
 * picked. Default: 1024-65535 for ports, every ICMP identifier. -1 if
 * lo > hi or lo < NAT_PORT_LO. */
int nat_set_source_ports(struct nat *nat, uint16_t lo, uint16_t hi);
/* Back to the default. */
void nat_clear_source_ports(struct nat *nat);

/* Session sync (docs/cluster.md): the sessions a peer cannot recompute,
 * as wire records (NAT_SYNC_RECORD bytes each: both keys as stored,
 * translation, backend, flags, state, ms since last seen, ms left; the
 * numbers big-endian), built here so that a session costs no Python on
 * the sender. stateful[t] is 1 for a translation t whose choice another
 * instance cannot recompute (a stateful selector or affinity). */
#define NAT_SYNC_RECORD 96
/* Collect the sessions nat_flow_install() creates, up to capacity between
 * two nat_sync_take() calls (more are counted sync_outbox_full and not
 * sent); 0 stops. 0, or -1 when out of memory. */
int nat_sync_collect(struct nat *nat, uint32_t capacity);
/* The collected sessions, at most max, as (index, serial); returns how
 * many, and forgets them. */
uint32_t nat_sync_take(struct nat *nat, uint32_t *index, uint32_t *serial, uint32_t max);
/* Of the n sessions (index[i], serial[i]), those still alive that need
 * sync stay, moved to the front (*n_alive); of those, the ones seen after
 * since_ns have their record written to out (room for n records).
 * Returns the records written. */
uint32_t nat_sync_records(const struct nat *nat, uint32_t *index, uint32_t *serial, uint32_t n,
                          const uint8_t *stateful, uint32_t n_stateful, uint64_t now_ns,
                          uint64_t since_ns, uint8_t *out, uint32_t *n_alive);
/* Every live session that needs sync from slot *cursor on, at most max
 * records into out; *cursor moves past them (NAT_NONE at the end). */
uint32_t nat_sync_dump(const struct nat *nat, uint32_t *cursor, const uint8_t *stateful,
                       uint32_t n_stateful, uint64_t now_ns, uint8_t *out, uint32_t max);

/* CFFI-END */

#endif
