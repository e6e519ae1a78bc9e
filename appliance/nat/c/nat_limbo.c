/*
 * Slots freed while lanes read the table, kept until no lane can hold them.
 */
#include "nat_internal.h"

#include <sched.h>
#include <time.h>

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

void limbo_poll(struct nat *nat)
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
void limbo_wait(struct nat *nat, uint64_t limit_ns)
{
    uint64_t until = mono_ns() + limit_ns;
    for (limbo_poll(nat); nat->free_head == NAT_NONE && nat->limbo_len && mono_ns() < until; limbo_poll(nat))
        sched_yield();
}

