/*
 * The scanner: expired sessions found a budget of slots at a time, and the
 * events of ended sessions for the slow path.
 */
#include "nat_internal.h"

uint32_t nat_expire(struct nat *nat, uint64_t now_ns, uint32_t budget)
{
    uint32_t removed = 0;
    limbo_poll(nat);
    if (nat->hwm == 0)
        return 0;
    if (budget > nat->hwm)
        budget = nat->hwm;
    int sweep = sweeping(nat, now_ns);
    for (uint32_t i = 0; i < budget; i++) {
        uint32_t idx = nat->scan_cursor < nat->hwm ? nat->scan_cursor : 0;
        nat->scan_cursor = (idx + 1) % nat->hwm;
        struct session *s = &nat->s[idx];
        if (!s->in_use)
            continue;
        if (sess_gone(nat, s, now_ns)) {
            int dead = (s->flags & NAT_SF_DEAD) != 0;
            sess_free(nat, idx, (uint8_t)dead);
            if (!dead)
                CTR(nat)[NAT_C_SESSION_EXPIRED_SCAN]++;
            removed++;
        } else if (sweep && tent_evict_idle(nat, idx, now_ns)) {
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

