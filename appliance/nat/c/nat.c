/*
 * The NAT core's lifecycle: create, destroy, settings, counters and their
 * names. The core's other objects each have a file (nat_*.c); nat_internal.h
 * is what they share.
 */
#include "nat_internal.h"

#ifndef NAT_BUILD_VERSION
#error "NAT_BUILD_VERSION must be defined by the build (appliance/nat/_build.py)"
#endif

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

/* Lifecycle and introspection */
_Static_assert(__builtin_types_compatible_p(__typeof__(&nat_process), nat_process_fn), "nat_process_fn");
_Static_assert(__builtin_types_compatible_p(__typeof__(&nat_lane_process), nat_lane_process_fn),
               "nat_lane_process_fn");
_Static_assert(__builtin_types_compatible_p(__typeof__(&nat_session_peek), nat_session_peek_fn),
               "nat_session_peek_fn");

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
    nat->tent = malloc((size_t)max_sessions * sizeof *nat->tent);
    if (!nat->s || !nat->bucket || !nat->frag || !nat->ev || !nat->limbo || !nat->tent) {
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
        for (unsigned j = 0; j < sizeof nat->profile[i].ms / sizeof nat->profile[i].ms[0]; j++)
            nat->profile[i].ms[j] = 30000;
    return nat;
}

void nat_destroy(struct nat *nat)
{
    if (!nat)
        return;
    /* lanes left over are cut loose, to be freed alone: the garbage
     * collector finalises a cycle's objects in no set order */
    for (uint32_t i = 0; i < NAT_MAX_LANES; i++)
        if (nat->lanes[i])
            nat->lanes[i]->nat = NULL;
    free(nat->s);
    free(nat->bucket);
    free(nat->frag);
    free(nat->ev);
    free(nat->limbo);
    free(nat->tent);
    free(nat->sync_out);
    nat_classifier_destroy(nat->cls);
    free(nat);
}

size_t nat_memory_bytes(const struct nat *nat)
{
    return sizeof *nat + (size_t)nat->max_sessions * sizeof *nat->s +
           ((size_t)nat->bucket_mask + 1) * sizeof *nat->bucket +
           NAT_FRAG_SLOTS * sizeof *nat->frag + NAT_EVENT_RING * sizeof *nat->ev +
           (size_t)nat->max_sessions * (sizeof *nat->limbo + sizeof *nat->tent);
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

