/*
 * What the io objects share (io_ctx.c, io_port.c, io_route.c, io_neigh.c,
 * io_forward.c, io_icmp.c, io_poll.c, io_worker.c, and the backends'
 * ports: xdp/c/). Not part of the cffi interface (io.h is); its functions
 * are hidden in the module.
 */
#ifndef APPLIANCE_IO_INTERNAL_H
#define APPLIANCE_IO_INTERNAL_H

#include "io.h"
#include "csum.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

#ifndef IO_BUILD_VERSION
#error "IO_BUILD_VERSION must be defined by the build (appliance/io_uring/_build.py)"
#endif

#define IO_INTERNAL __attribute__((visibility("hidden")))

#define IO_BATCH_MAX 256
#define IO_NEIGH_SLOTS 65536  /* open addressing, kept at most half full (hop.nslot is 16 bits) */
#define IO_TX_KICK 32         /* frames held in a TX ring before io_forward() kicks it */
/* A frame a worker queued for the slow path (io_worker.c): io_forward()
 * leaves it alone; its RX buffer is recycled, the queue holds a copy. */
#define IO_VERDICT_QUEUED 0xfe

/* A port's packet I/O: how frames come in and go out. One implementation
 * per backend (xdp/c/xdp_port.c, uring/c/uring_port.c, mmap/c/mmap_port.c);
 * the rest of the datapath sees only this. Called by the port's worker. */
struct io_port_ops {
    const char *name;
    /* Received frames into frames[] (data, len, port; at most max, <=
     * IO_BATCH_MAX), their data in the port's buffers until recycle() */
    uint32_t (*rx)(struct io_port *p, struct nat_frame *frames, uint32_t max);
    /* The buffers of the last batch rx() returned, back for receiving */
    void (*recycle)(struct io_port *p, uint32_t n);
    /* Copy a frame out for transmission (sent by kick() at the latest):
     * 0, or -1 when there is no room */
    int (*tx)(struct io_port *o, const uint8_t *data, uint32_t len);
    void (*kick)(struct io_port *p);
    /* Frames received and not yet taken by rx(), of the *size its ring holds */
    uint32_t (*waiting)(const struct io_port *p, uint32_t *size);
    /* Before the worker sleeps on fd(): whatever receiving needs */
    void (*wakeup)(struct io_port *p);
    int (*fd)(const struct io_port *p);
    /* The kernel's drop counters of the port (io_port_kernel_stats) */
    int (*kernel_stats)(const struct io_port *p, uint64_t *out6);
    void (*destroy)(struct io_port *p);
};

/* What every backend's port starts with. */
struct io_port {
    const struct io_port_ops *ops;
    struct io_ctx *ctx;
    struct io_worker *w;     /* the worker that polls it and transmits through it */
    uint64_t rx_frames;      /* received on this port */
    uint32_t pending_tx;     /* queued by tx(), not yet handed to the kernel: kick() zeroes it */
    uint16_t port_id;
    uint8_t mac[6];
};

struct nexthop {
    uint8_t gw[16];
    uint8_t has_gw;
    int port_id;             /* < 0: through an interface that is not ours */
    uint32_t weight;
};

struct route {
    uint8_t prefix[16];      /* masked to plen */
    uint8_t family, plen, kind;   /* IO_ROUTE_* */
    uint8_t n_nh;
    uint32_t nh;             /* first of n_nh in io_ctx.nhs */
    uint32_t total_weight;
};

struct neigh {
    uint8_t addr[16];
    uint8_t mac[6];
    uint8_t family, used;
    uint8_t failed;          /* the kernel's resolution failed: no MAC */
    int port_id;             /* with family and addr, the key: link-local addresses repeat across links */
    uint32_t epoch;          /* io_ctx.epoch when last forwarded to (io_neigh_used); workers store it racily */
};

struct hop {
    uint32_t gen;            /* io_ctx.gen when filled; 0 = empty */
    uint32_t serial;         /* the session's serial: its slot's next session must look up again */
    int16_t port_id;
    uint16_t nslot;          /* the next hop's neighbour slot: its MAC, as it is now */
};

/* A frame queued by a worker for the slow path, and then back for
 * transmission (io_worker.c). */
struct io_miss {
    struct nat_frame f;      /* f.data points at buf */
    uint8_t buf[IO_FRAME_SIZE];
};

/* Per worker: everything the per-packet path writes. The tables in io_ctx
 * are only read by workers, and changed only while every worker is paused
 * (tables_pause). */
struct io_worker {
    struct io_ctx *ctx;
    uint32_t index;
    struct io_port *tx_port[IO_MAX_PORTS];   /* the worker's socket that transmits on a port */
    struct io_port *ports[IO_MAX_PORTS];     /* the sockets it polls */
    uint32_t nports;
    struct hop *hops;                        /* [session * 2 + dir]: a direction's next hop */
    uint64_t counters[IO_C__COUNT];          /* summed on read: io_counters_sum() */
    uint64_t icmp_tokens_at;                 /* token bucket of our ICMP errors */
    uint32_t icmp_tokens;
    /* the slow path's share of the core (io_poll.c: one worker, inline) */
    int64_t slow_credit;                     /* ns */
    uint64_t slow_at;                        /* last update */
    uint64_t miss_at;                        /* last IO_POLL_MISS return; 0: none pending */
    /* held while a batch is handled; the control plane takes every
     * worker's to change the tables (io_ctx.c) */
    pthread_mutex_t lock;
    int pause;                               /* set while the control plane waits for the lock */
    /* worker threads (io_worker.c): new flows to the slow path and back.
     * [cons, done) resolved, to transmit; [done, prod) waiting for it */
    struct io_miss *miss;
    uint32_t miss_size;                      /* a power of two */
    uint32_t miss_prod, miss_done, miss_cons;
    int miss_fd;                             /* eventfd: new misses (the slow path waits on it) */
    int wake_fd;                             /* eventfd: resolved misses or stop (the worker sleeps on it) */
    int stop;
};

struct io_ctx {
    struct io_worker *workers[IO_MAX_WORKERS];
    uint32_t n_workers;
    uint32_t max_sessions;
    uint32_t gen;            /* bumped when routes or neighbours change: every hop is stale */
    uint32_t epoch;          /* advanced by io_neigh_used() */
    /* The kernel's main table: routes and their next hops in arrays, found
     * by a hash of (family, prefix length, prefix), one probe per prefix
     * length in use (longest first), as a per-length LPM. */
    struct route *routes;
    uint32_t n_routes, cap_routes;
    struct nexthop *nhs;
    uint32_t n_nhs, cap_nhs;
    uint32_t *route_index;                   /* route + 1 per slot; 0 = empty */
    uint32_t route_slots;                    /* a power of two, > 2 * n_routes */
    uint8_t plens[2][129];                   /* [v4, v6]: the prefix lengths in use, longest first */
    uint8_t n_plens[2];
    struct neigh *neigh;                     /* IO_NEIGH_SLOTS */
    uint32_t n_neigh;
    int tap_fd;
    uint8_t tap_mac[6];
    /* the backends that see every frame (io_uring, mmap): which addresses
     * are the host's or the NAT's, as the XDP program's addrs map says
     * (io_steer.c); open addressing, NULL until loaded */
    struct steer_slot *steer;
    uint32_t steer_mask;
    uint16_t steer_port_lo, steer_port_hi;   /* the host ports they take (hi 0: none) */
    struct steer_port_slot *steer_ports;     /* and those listed besides (NULL: none) */
    uint32_t steer_ports_mask;
    uint32_t mtu[IO_MAX_PORTS];              /* frames longer go to the kernel */
    uint8_t has_port[IO_MAX_PORTS];          /* a socket of ours is on the port */
    /* for the ICMP errors the appliance sends itself */
    struct nat *nat;
    nat_session_peek_fn session_peek;
    uint8_t port_addr[IO_MAX_PORTS][2][16];  /* [port][v4, v6]: source of our ICMP errors */
    uint8_t port_has_addr[IO_MAX_PORTS][2];
};

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint32_t mix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    return h ^ (h >> 16);
}

/* io_ctx.c: the control plane changes the tables between workers' batches */
IO_INTERNAL void tables_pause(struct io_ctx *ctx);
IO_INTERNAL void tables_resume(struct io_ctx *ctx);
IO_INTERNAL void worker_enter(struct io_worker *w);   /* a batch: waits while paused */
IO_INTERNAL void worker_leave(struct io_worker *w);
IO_INTERNAL void hops_stale(struct io_ctx *ctx);

/* io_port.c: a backend's port joins its worker (port_attach, after its
 * fields are set; -1 with errno), and what the datapath calls */
IO_INTERNAL int port_attach(struct io_worker *w, struct io_port *p, const struct io_port_ops *ops,
                            uint16_t port_id, const uint8_t *mac, uint32_t mtu);
IO_INTERNAL int tx_enqueue(struct io_worker *w, struct io_port *o, const uint8_t *data, uint32_t len);
IO_INTERNAL void port_kick(struct io_port *p);
IO_INTERNAL void port_recycle(struct io_port *p, uint32_t n);
IO_INTERNAL uint32_t rx_any(struct io_worker *w, struct nat_frame *frames, uint32_t max, uint32_t *port);
IO_INTERNAL void ports_wakeup(struct io_worker *w);

/* Short frames are copied in 32-byte blocks (memcpy of a variable length
 * compiled to `rep movsq` here: 78 % of io_forward's samples); the overrun
 * (< 32 bytes) must stay inside both buffers, which every backend's
 * IO_FRAME_SIZE buffers allow. */
static inline void copy_frame(uint8_t *dst, const uint8_t *src, uint32_t len)
{
    if (len > 1024) {
        memcpy(dst, src, len);
        return;
    }
    for (uint32_t off = 0; off < len; off += 32)
        __builtin_memcpy(dst + off, src + off, 32);
}

/* io_route.c */
IO_INTERNAL const struct route *route_lookup(const struct io_ctx *ctx, uint8_t family, const uint8_t *a);
IO_INTERNAL const struct nexthop *route_nexthop(const struct io_ctx *ctx, const struct route *r,
                                                const uint8_t *src, const uint8_t *dst);

/* io_neigh.c */
IO_INTERNAL struct neigh *neigh_slot(struct io_ctx *ctx, uint8_t family, int port_id, const uint8_t *a,
                                     int insert);

/* io_icmp.c */
IO_INTERNAL int send_icmp_error(struct io_worker *w, const struct nat_frame *f, uint8_t family, uint8_t *ip,
                                uint32_t iplen, enum icmp_error kind, uint32_t mtu);
IO_INTERNAL int answer_neighbour(struct io_worker *w, const struct nat_frame *f);

/* io_steer.c: does the appliance take this frame (received on a port
 * that sees every frame, whose MAC is mac), or is it the kernel's? */
IO_INTERNAL int steer_take(const struct io_ctx *ctx, const uint8_t *frame, uint32_t len, const uint8_t *mac);

/* io_packet.c: the socket backends' AF_PACKET socket, unbound, then bound
 * to ifname (-1 with errno), and its drops (io_port_ops.kernel_stats:
 * rx_dropped only) */
IO_INTERNAL int packet_socket(void);
IO_INTERNAL int packet_bind(int sock, const char *ifname);
/* Join the socket to the fanout group *group after packet_bind (NULL:
 * none; *group 0: a new group, its id stored there). -1 with errno. */
IO_INTERNAL int packet_fanout(int sock, uint16_t *group);
IO_INTERNAL int packet_kernel_stats(int sock, uint64_t *drops, uint64_t *out6);

/* io_forward.c */
IO_INTERNAL void forward_one(struct io_worker *w, const struct nat_frame *f);

#endif
