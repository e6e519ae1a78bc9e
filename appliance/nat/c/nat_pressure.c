/*
 * Table pressure: what makes room when the session table is near full.
 *
 * A flood of SYNs from spoofed sources, or of one-way UDP, creates sessions
 * that no reply ever confirms. Left to their lifetimes they would hold the
 * table for tcp_syn / session seconds and refuse every new flow meanwhile.
 * Like conntrack's early drop, such tentative sessions go first: from 15/16
 * full each new flow evicts the oldest one, and while the table is under
 * pressure and for a minute after, the scanner ends those idle for 5 s (a
 * flood's sessions are never refreshed: the table is back to its real
 * flows seconds after the flood, not after tcp_syn). Sessions that were
 * answered (TCP past its handshake, a UDP or ICMP flow with a reply) are
 * never evicted: a table full of them refuses new flows
 * (drop_session_full), as before.
 *
 * "Oldest" is creation order: every new session is appended to a ring of
 * (slot, serial); eviction pops from its head, skipping entries whose
 * session ended or was confirmed since. The writer alone touches the ring;
 * a session's state and reply count, written by lanes, are read racily
 * (a byte and an aligned word): at worst a session confirmed a moment ago
 * is evicted, and its next packet is a new flow that picks it up again.
 */
#include "nat_internal.h"

/* The counter of the kind a tentative session is, or 0: confirmed. */
static int sess_tentative(const struct session *s)
{
    if (__atomic_load_n(&s->flags, __ATOMIC_RELAXED) & NAT_SF_DEAD)
        return 0;   /* ended by a lane already; the writer frees it elsewhere */
    if (s->key[0].proto == IPPROTO_TCP_) {
        uint8_t st = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
        return (st == NAT_ST_TCP_NEW || st == NAT_ST_TCP_SYN_SENT || st == NAT_ST_TCP_SYN_RCVD ||
                st == NAT_ST_TCP_MIDSTREAM) ? NAT_C_SESSION_EVICTED_HALF_OPEN : 0;
    }
    return __atomic_load_n(&s->packets[1], __ATOMIC_RELAXED) == 0 ? NAT_C_SESSION_EVICTED_UNANSWERED : 0;
}

static int tent_live(const struct nat *nat, const struct tentative *t)
{
    const struct session *s = &nat->s[t->idx];
    return s->in_use && s->serial == t->serial && sess_tentative(s);
}

static struct tentative tent_pop(struct nat *nat)
{
    struct tentative t = nat->tent[nat->tent_head];
    if (++nat->tent_head == nat->max_sessions)
        nat->tent_head = 0;
    nat->tent_len--;
    return t;
}

void tent_push(struct nat *nat, uint32_t idx)
{
    /* entries of sessions that ended or were confirmed leave from the head
     * as new ones come, two per push: the head stays a live candidate */
    for (int k = 0; k < 2 && nat->tent_len && !tent_live(nat, &nat->tent[nat->tent_head]); k++)
        tent_pop(nat);
    if (nat->tent_len == nat->max_sessions)
        tent_pop(nat);   /* the oldest is forgotten: its lifetime still ends it */
    uint32_t at = nat->tent_head + nat->tent_len;
    if (at >= nat->max_sessions)
        at -= nat->max_sessions;
    nat->tent[at] = (struct tentative){idx, nat->s[idx].serial};
    nat->tent_len++;
}

static void evict(struct nat *nat, uint32_t idx, int counter)
{
    sess_free(nat, idx, NAT_END_EVICTED);
    CTR(nat)[counter]++;
}

int tent_evict(struct nat *nat)
{
    for (uint32_t i = 0; i < NAT_EVICT_PROBES && nat->tent_len; i++) {
        struct tentative t = tent_pop(nat);
        struct session *s = &nat->s[t.idx];
        int counter;
        if (s->in_use && s->serial == t.serial && (counter = sess_tentative(s))) {
            evict(nat, t.idx, counter);
            return 1;
        }
    }
    return 0;
}

int tent_evict_idle(struct nat *nat, uint32_t idx, uint64_t now)
{
    struct session *s = &nat->s[idx];
    int counter;
    if (now < s->last_seen_ns + NAT_PRESSURE_IDLE_MS * 1000000ull || !(counter = sess_tentative(s)))
        return 0;
    evict(nat, idx, counter);
    return 1;
}

uint32_t nat_pressure_threshold(const struct nat *nat)
{
    return nat->max_sessions - (nat->max_sessions >> NAT_PRESSURE_SHIFT);
}

uint32_t nat_sessions_tentative(const struct nat *nat)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < nat->hwm; i++)
        n += nat->s[i].in_use && sess_tentative(&nat->s[i]) != 0;
    return n;
}
