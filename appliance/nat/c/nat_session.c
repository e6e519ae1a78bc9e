/*
 * The session table: link and unlink both keys, free (into limbo while lanes
 * exist), add, restore, find, remove, iterate, remap after a reload, tallies.
 */
#include "nat_internal.h"

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

void sess_free(struct nat *nat, uint32_t idx, uint8_t reason)
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
    if (under_pressure(nat)) {
        tent_evict(nat);   /* the oldest tentative session makes room (nat_pressure.c) */
        if (now_ns > nat->pressure_ns)
            nat->pressure_ns = now_ns;
    }
    if (nat->free_head == NAT_NONE && nat->hwm == nat->max_sessions) {
        limbo_poll(nat);
        if (nat->free_head == NAT_NONE && !nat->limbo_len && !reclaim_one(nat, now_ns) && !tent_evict(nat))
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
    /* nat_session_peek() readers: a serial of 0 is no session's */
    __atomic_store_n(&s->serial, 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memset(s, 0, sizeof *s);
    s->key[0] = *fwd;
    s->key[1] = *rev;
    s->key[0].zero = s->key[1].zero = 0;
    s->created_ns = s->last_seen_ns = now_ns;
    s->translation = translation;
    s->backend = backend;
    s->profile = profile;
    s->flags = flags;
    s->state = fwd->proto == IPPROTO_TCP_ ? NAT_ST_TCP_NEW : NAT_ST_OTHER;
    s->in_use = 1;
    if (++nat->serial == 0)
        nat->serial = 1;
    __atomic_store_n(&s->serial, nat->serial, __ATOMIC_RELEASE);
    table_link(nat, idx, 0);
    table_link(nat, idx, 1);
    nat->n_sessions++;
    tent_push(nat, idx);
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

int nat_session_refresh(struct nat *nat, const struct nat_session_info *in, uint64_t now_ns)
{
    uint32_t ref = lookup_live(nat, &in->key[0], now_ns);
    if (ref == NAT_NONE || (ref & 1))
        return -1;
    struct session *s = &nat->s[ref >> 1];
    struct nat_key k = in->key[1];
    k.zero = 0;
    if (!key_eq(&s->key[1], &k))
        return -1;
    if (in->last_seen_ns <= s->last_seen_ns)
        return 1;
    s->last_seen_ns = in->last_seen_ns;
    if (in->state < NAT_ST__COUNT)
        __atomic_store_n(&s->state, in->state, __ATOMIC_RELAXED);
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

int nat_session_peek(const struct nat *nat, uint32_t index, uint32_t serial,
                     struct nat_session_info *out)
{
    if (index >= nat->max_sessions || !serial)
        return -1;
    const struct session *s = &nat->s[index];
    if (__atomic_load_n(&s->serial, __ATOMIC_ACQUIRE) != serial || !s->in_use)
        return -1;
    sess_info(nat, index, out);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(&s->serial, __ATOMIC_RELAXED) == serial ? 0 : -1;
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

