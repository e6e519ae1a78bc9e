/*
 * The fast path: a batch of frames through parse, lookup and rewrite
 * (nat_process), and the slow path's way back in (nat_flow_install).
 */
#include "nat_internal.h"

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
    int rc = parse_ip(d + off, len - off, &p, 0, et == 0x0800 ? NAT_AF_INET : NAT_AF_INET6);
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
        } else if (p.icmp != ICMPK_ECHO_REQ && (nat->cls->flags_any & NAT_ADDR_BACKEND) &&
                   (addr_flags(nat, p.family, p.key.src) & NAT_ADDR_BACKEND)) {
            /* a backend's packet without a session: the reply of a flow
             * another instance started, perhaps; before the SNAT test, as
             * such a reply is no new flow of the backend's */
            f->dir = 1;
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
    if (p.frag == FRAG_FIRST)
        frag_note(nat, &p, f->verdict, now);  /* p.key still holds the original addresses */
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
            if (!(flags & NAT_PF_FINAL))
                CTR(nat)[NAT_C_SESSION_MISS]++;
            return i + 1;
        }
    }
    return n;
}

/* Slow-path interface */
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
    uint16_t lo = icmp ? 0 : NAT_PORT_LO, hi = 0xffff;
    if (nat->src_hi) {   /* this instance's share: what it picks, and keeps of a rewritten source */
        lo = nat->src_lo;
        hi = nat->src_hi;
        if ((src_pref < lo || src_pref > hi) && memcmp(new_src, fwd->src, alen))
            src_pref = -1;
    }
    if (flags & NAT_SF_BYPASS) {
        rev.dport = fwd->sport;
    } else if (nat_alloc_port(nat, &rev, src_pref, lo, hi, key_hash64(nat->table_seed, fwd), now_ns) != 0) {
        return -1;
    }
    uint32_t idx;
    int rc = nat_session_add(nat, fwd, &rev, now_ns, translation, backend, profile, flags, &idx);
    if (rc != 0)
        return rc == -2 ? -2 : -3;
    sync_note(nat, idx);
    process_one(nat, f, now_ns, pflags | NAT_PF_FINAL);
    return 0;
}


int nat_flow_install_keys(struct nat *nat, struct nat_frame *f, const struct nat_key *fwd,
                          const struct nat_key *rev, uint32_t translation, uint16_t backend,
                          uint8_t profile, uint8_t flags, uint64_t now_ns, uint32_t pflags)
{
    uint32_t idx;
    int rc = nat_session_add(nat, fwd, rev, now_ns, translation, backend, profile, flags, &idx);
    if (rc != 0)
        return rc == -2 ? -2 : -3;
    process_one(nat, f, now_ns, pflags | NAT_PF_FINAL);
    return 0;
}
