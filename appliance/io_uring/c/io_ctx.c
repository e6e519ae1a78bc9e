/*
 * The datapath context: its workers, the tables they share, and how the
 * control plane changes those tables between the workers' batches.
 */
#include "io_internal.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

/* per worker thread: frames waiting for the slow path, 8.5 MiB, touched as
 * used. Enough for a start like bench e2e's (1000 new flows at once at
 * 500 kpps per worker: 512 slots dropped 0.1-0.2 % of its frames). */
#define IO_MISS_SLOTS 4096

static void worker_destroy(struct io_worker *w)
{
    if (!w)
        return;
    free(w->hops);
    free(w->miss);
    if (w->miss_fd >= 0)
        close(w->miss_fd);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

static struct io_worker *worker_create(struct io_ctx *ctx, uint32_t index, int threaded)
{
    struct io_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->ctx = ctx;
    w->index = index;
    w->miss_fd = w->wake_fd = -1;
    pthread_mutex_init(&w->lock, NULL);
    /* calloc'd: pages are only touched by sessions that forward */
    w->hops = calloc((size_t)ctx->max_sessions * 2, sizeof *w->hops);
    if (!w->hops)
        goto fail;
    if (threaded) {
        w->miss_size = IO_MISS_SLOTS;
        w->miss = calloc(IO_MISS_SLOTS, sizeof *w->miss);
        w->miss_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (!w->miss || w->miss_fd < 0 || w->wake_fd < 0)
            goto fail;
    }
    return w;
fail:
    worker_destroy(w);
    return NULL;
}

struct io_ctx *io_ctx_create(int tap_fd, const uint8_t *tap_mac, uint32_t max_sessions, uint32_t n_workers,
                             int threaded)
{
    if (n_workers < 1 || n_workers > IO_MAX_WORKERS) {
        errno = EINVAL;
        return NULL;
    }
    struct io_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->max_sessions = max_sessions;
    c->neigh = calloc(IO_NEIGH_SLOTS, sizeof *c->neigh);
    if (!c->neigh)
        goto fail;
    /* threaded: each worker on a thread of its own (io_worker_run), its new
     * flows queued for the caller's; else one worker the caller's thread
     * polls (io_poll) */
    for (uint32_t i = 0; i < n_workers; i++) {
        c->workers[i] = worker_create(c, i, threaded || n_workers > 1);
        if (!c->workers[i])
            goto fail;
        c->n_workers++;
    }
    c->gen = 1;
    c->epoch = 1;
    c->tap_fd = tap_fd;
    memcpy(c->tap_mac, tap_mac, 6);
    return c;
fail:
    io_ctx_destroy(c);
    errno = ENOMEM;
    return NULL;
}

void io_ctx_destroy(struct io_ctx *ctx)
{
    if (!ctx)
        return;
    for (uint32_t i = 0; i < ctx->n_workers; i++)
        worker_destroy(ctx->workers[i]);
    free(ctx->neigh);
    free(ctx->routes);
    free(ctx->nhs);
    free(ctx->route_index);
    free(ctx->steer);
    free(ctx->steer_ports);
    free(ctx);
}

struct io_worker *io_ctx_worker(struct io_ctx *ctx, uint32_t i)
{
    return i < ctx->n_workers ? ctx->workers[i] : NULL;
}

uint32_t io_ctx_workers(const struct io_ctx *ctx) { return ctx->n_workers; }

void io_counters_sum(const struct io_ctx *ctx, uint64_t *out)
{
    memset(out, 0, IO_C__COUNT * sizeof *out);
    for (uint32_t i = 0; i < ctx->n_workers; i++)
        for (unsigned c = 0; c < IO_C__COUNT; c++)
            out[c] += __atomic_load_n(&ctx->workers[i]->counters[c], __ATOMIC_RELAXED);
}

const uint64_t *io_worker_counters(const struct io_worker *w) { return w->counters; }

/* The tables (routes, neighbours, MTUs, addresses, MACs) are read by every
 * worker without locks inside a batch; the control plane changes them only
 * while it holds every worker's lock. pause makes a worker wait at its next
 * batch instead of taking the lock back at once (glibc's mutexes are not
 * fair), so the control plane gets in within one batch, tens of us. */
void tables_pause(struct io_ctx *ctx)
{
    for (uint32_t i = 0; i < ctx->n_workers; i++) {
        __atomic_store_n(&ctx->workers[i]->pause, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_lock(&ctx->workers[i]->lock);
    }
}

void tables_resume(struct io_ctx *ctx)
{
    for (uint32_t i = 0; i < ctx->n_workers; i++) {
        __atomic_store_n(&ctx->workers[i]->pause, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&ctx->workers[i]->lock);
    }
}

void worker_enter(struct io_worker *w)
{
    while (__atomic_load_n(&w->pause, __ATOMIC_ACQUIRE))
        sched_yield();
    pthread_mutex_lock(&w->lock);
}

void worker_leave(struct io_worker *w) { pthread_mutex_unlock(&w->lock); }

/* Every cached next hop is stale. 0 is an empty hop's gen: never current. */
void hops_stale(struct io_ctx *ctx)
{
    uint32_t g = ctx->gen + 1;
    __atomic_store_n(&ctx->gen, g ? g : 1, __ATOMIC_RELAXED);
}

void io_set_nat(struct io_ctx *ctx, struct nat *nat, nat_session_peek_fn session_peek)
{
    tables_pause(ctx);
    ctx->nat = nat;
    ctx->session_peek = session_peek;
    tables_resume(ctx);
}

int io_port_set_mtu(struct io_ctx *ctx, int port_id, uint32_t mtu)
{
    if (port_id < 0 || port_id >= IO_MAX_PORTS || !ctx->has_port[port_id] || mtu < 68)
        return -EINVAL;
    tables_pause(ctx);
    ctx->mtu[port_id] = mtu;
    tables_resume(ctx);
    return 0;
}

void io_port_addresses_clear(struct io_ctx *ctx)
{
    tables_pause(ctx);
    memset(ctx->port_has_addr, 0, sizeof ctx->port_has_addr);
    tables_resume(ctx);
}

int io_port_address(struct io_ctx *ctx, int port_id, uint8_t family, const uint8_t *addr)
{
    if (port_id < 0 || port_id >= IO_MAX_PORTS || (family != 4 && family != 6))
        return -EINVAL;
    int f = family == 6;
    tables_pause(ctx);
    memset(ctx->port_addr[port_id][f], 0, 16);
    memcpy(ctx->port_addr[port_id][f], addr, family == 4 ? 4 : 16);
    ctx->port_has_addr[port_id][f] = 1;
    tables_resume(ctx);
    return 0;
}

int io_timer_slack(uint64_t ns)
{
    return prctl(PR_SET_TIMERSLACK, (unsigned long)ns, 0, 0, 0) ? -errno : 0;
}

const char *io_build_version(void) { return IO_BUILD_VERSION; }

static const char *const counter_names[] = {
#define _(name, text) #name,
#include "io_counters.def"
#undef _
};

static const char *const counter_help[] = {
#define _(name, text) text,
#include "io_counters.def"
#undef _
};

static const char *const steer_counter_names[] = {
#define _(name, text) #name,
#include "steer_counters.def"
#undef _
};

unsigned io_counter_count(void) { return IO_C__COUNT; }
const char *io_counter_name(unsigned i) { return i < IO_C__COUNT ? counter_names[i] : NULL; }
const char *io_counter_help(unsigned i) { return i < IO_C__COUNT ? counter_help[i] : NULL; }
unsigned io_steer_counter_count(void) { return STEER_C__COUNT; }
const char *io_steer_counter_name(unsigned i) { return i < STEER_C__COUNT ? steer_counter_names[i] : NULL; }
