/*
 * Lanes: the fast path on other threads over the same table (see nat.h).
 */
#include "nat_internal.h"

#include <sched.h>

__thread struct nat_lane *tls_lane __attribute__((tls_model("initial-exec")));

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
    if (!nat) {   /* its table went first (nat_destroy): nothing to give back to */
        free(lane);
        return;
    }
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
void lanes_synchronize(struct nat *nat)
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

