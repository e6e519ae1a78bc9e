/*
 * Ring-based packet I/O: ports of a backend, and the forwarding step.
 *
 * A struct io_port is one (interface, RX queue) of a backend: AF_XDP
 * (xdp/c/xdp_port.c, libxdp: its own UMEM, fill, completion, RX and TX
 * rings per port), io_uring (uring/c/uring_port.c, liburing: an AF_PACKET
 * socket read and written through io_uring) or mmap (mmap/c/mmap_port.c:
 * an AF_PACKET socket with PACKET_MMAP rings). io_rx() turns what it
 * received into a batch of struct nat_frame; after the NAT core, io_forward() routes each frame
 * (tables set from the kernel's routes and neighbours), rewrites MACs and
 * TTL, and queues it on the egress port's TX ring -- or hands it to the
 * kernel through a TAP device when the appliance cannot forward it itself.
 *
 * Workers: each socket belongs to one struct io_worker, which polls it and
 * transmits through its own socket on each interface; what the per-packet
 * path writes (counters, next-hop cache, TX rings, ICMP rate limit) is the
 * worker's. The tables are the context's, read by every worker, changed by
 * the control plane only between their batches. One worker runs on the
 * caller's thread (io_poll); more run on threads of their own
 * (io_worker_run), each over a lane of the NAT core.
 *
 * Files: io_ctx.c (context, workers, pausing), io_port.c (a port, whatever
 * its backend: io_port_ops), io_route.c, io_neigh.c (tables), io_forward.c,
 * io_icmp.c (our answers), io_poll.c (one worker), io_worker.c (worker
 * threads); the AF_XDP backend in xdp/c/ (xdp_port.c its port, xdp_prog.c
 * the XDP program's loading and maps, BPF), the io_uring backend in
 * uring/c/ (uring_port.c), the mmap backend in mmap/c/ (mmap_port.c); what
 * the two socket backends share: io_packet.c (the AF_PACKET socket),
 * io_steer.c (what they take); io_internal.h is what they all share.
 *
 * Declarations between CFFI-BEGIN/CFFI-END are the cffi cdef
 * (appliance/io_uring/_build.py).
 */
#ifndef APPLIANCE_IO_H
#define APPLIANCE_IO_H

#include <stdint.h>
#include <linux/types.h>
#include "nat.h"
#include "steer.h"

/* Why a frame went to the kernel or was dropped by the forwarding step. */
enum io_counter {
#define _(name, text) IO_C_##name,
#include "io_counters.def"
#undef _
    IO_C__COUNT
};

/* CFFI-BEGIN */
#define IO_FRAME_SIZE 2048     /* UMEM chunk: a 1500-byte MTU frame and headroom */
#define IO_MAX_PORTS 64
#define IO_MAX_WORKERS 64

/* IO_COUNTERS: the enum io_counter, generated from io_counters.def */
unsigned io_counter_count(void);
const char *io_counter_name(unsigned i);
const char *io_counter_help(unsigned i);
/* The XDP program's counters (bpf/steer_counters.def). */
unsigned io_steer_counter_count(void);
const char *io_steer_counter_name(unsigned i);
/* STEER_DEFINES: bpf/steer.h's constants, generated; values from the compiler */

struct io_port;
struct io_ctx;
struct io_worker;

const char *io_build_version(void);

/* max_sessions: size of the NAT session table; each session caches its
 * next hop per direction (port and MAC) in each worker, revalidated by a
 * generation number that changes whenever the routes or neighbours do.
 * n_workers: 1 (io_poll on the caller's thread) to IO_MAX_WORKERS (threads
 * running io_worker_run). NULL with errno set on failure. */
struct io_ctx *io_ctx_create(int tap_fd, const uint8_t *tap_mac, uint32_t max_sessions, uint32_t n_workers,
                             int threaded);
void io_ctx_destroy(struct io_ctx *ctx);
uint32_t io_ctx_workers(const struct io_ctx *ctx);
struct io_worker *io_ctx_worker(struct io_ctx *ctx, uint32_t i);
/* Every worker's counters added up into out[IO_C__COUNT]; one worker's. */
void io_counters_sum(const struct io_ctx *ctx, uint64_t *out);
const uint64_t *io_worker_counters(const struct io_worker *w);

/* AF_XDP: open a socket on ifname/queue for worker w, insert it into
 * xsks_map_fd at key. Its UMEM has nrx frames for the fill/RX rings and ntx
 * for the TX pool (both powers of two, at least IO_BATCH_MAX). The worker's
 * first socket on an interface is the one it transmits through there, so a
 * worker needs one on every interface. Returns NULL with errno set on
 * failure. */
struct io_port *io_xdp_port_open(struct io_worker *w, const char *ifname, uint32_t queue,
                                 uint16_t port_id, int xsks_map_fd, uint32_t key,
                                 uint32_t nrx, uint32_t ntx, const uint8_t *mac, uint32_t mtu,
                                 int zerocopy);
/* io_uring (uring/c/uring_port.c, docs/io.md): an AF_PACKET socket on
 * ifname (every frame of the interface, the kernel's copy is its own),
 * nrx receive buffers in a provided-buffer ring and ntx registered
 * transmit buffers (powers of two, IO_BATCH_MAX to 32768 for nrx). NULL
 * with errno set: EPERM when io_uring or AF_PACKET is refused (seccomp,
 * kernel.io_uring_disabled, no CAP_NET_RAW), ENOSYS without io_uring.
 * fanout: NULL, or the interface's PACKET_FANOUT group, one socket per
 * worker sharing its frames by flow hash (*fanout 0: a new group, its id
 * stored there for the next). */
struct io_port *io_uring_port_open(struct io_worker *w, const char *ifname, uint16_t port_id, uint32_t nrx,
                                   uint32_t ntx, const uint8_t *mac, uint32_t mtu, uint16_t *fanout);
/* mmap (mmap/c/mmap_port.c, docs/io.md): an AF_PACKET socket on ifname
 * with a PACKET_MMAP (TPACKET_V2) receive ring of nrx slots and transmit
 * ring of ntx (powers of two, IO_BATCH_MAX to 65536), for where neither
 * XDP nor io_uring is allowed. NULL with errno set: EPERM without
 * CAP_NET_RAW. fanout: as for io_uring_port_open. */
struct io_port *io_mmap_port_open(struct io_worker *w, const char *ifname, uint16_t port_id, uint32_t nrx,
                                  uint32_t ntx, const uint8_t *mac, uint32_t mtu, uint16_t *fanout);
/* Can this process have an io_uring? 0, or -errno (EPERM: refused by
 * kernel.io_uring_disabled or seccomp; ENOSYS: no io_uring). */
int io_uring_probe(void);
/* What a port that sees every frame (io_uring, mmap) takes, as the XDP program
 * does (docs/io.md): the addresses that are the host's (STEER_ADDR_HOST),
 * the NAT's (STEER_ADDR_NAT), and host addresses of `real` icmp
 * translations, whose echo requests it takes (STEER_ADDR_ECHO); the whole
 * set at once. 0, or -ENOMEM. */
struct io_steer_entry {
    uint8_t addr[16];
    uint8_t family, flags;
};
int io_steer_load(struct io_ctx *ctx, const struct io_steer_entry *entries, uint32_t n);
/* The ports of the host's addresses such a port takes, lo-hi (hi 0:
 * none): the range the NAT picks ports in for flows whose source becomes
 * a host address, reserved from the kernel's own. Returns 0. */
int io_steer_set_host_ports(struct io_ctx *ctx, uint16_t lo, uint16_t hi);
/* Ports of the host's addresses such a port takes besides the range: those
 * of `real` translations, and a session's outside the range (restored from
 * a run with another one). For ICMP (proto 1, 58) the port is an echo
 * reply's identifier. The whole set at once; 0, or -ENOMEM. */
struct io_steer_port {
    uint8_t addr[16];
    uint8_t family, proto;
    uint16_t port;           /* host order */
};
int io_steer_load_ports(struct io_ctx *ctx, const struct io_steer_port *ports, uint32_t n);
/* For the tests: 1 if the appliance takes this frame from a port with MAC
 * mac, 0 if it is the kernel's. */
int io_steer_take(struct io_ctx *ctx, const uint8_t *frame, uint32_t len, const uint8_t *mac);
/* Any port: closed (it leaves its worker first); its backend's name ("xdp",
 * "uring", "mmap"). */
void io_port_close(struct io_port *p);
const char *io_port_backend(const struct io_port *p);
/* The kernel's drop counters of this socket (XDP_STATISTICS): rx_dropped,
 * rx_invalid_descs, tx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs,
 * tx_ring_empty_descs. Returns 0 or -errno. */
int io_port_kernel_stats(const struct io_port *p, uint64_t *out6);
int io_port_fd(const struct io_port *p);
/* Frames received on this socket (the workers' "rx" count them all). */
uint64_t io_port_rx(const struct io_port *p);
/* Move received frames into frames[] (at most max); returns how many. */
uint32_t io_rx(struct io_port *p, struct nat_frame *frames, uint32_t max);
/* The established-flow loop of the single worker, on the caller's thread,
 * over all the worker's sockets (as a VPP worker polls its RX queues):
 * receive a batch
 * from the next non-empty ring (round robin), run it through the NAT core
 * (nat_fn is nat_process() of the NAT module, passed as a pointer), forward
 * it; repeat for up to budget_ns (0: finish the current batch, or the next
 * one). When every ring is empty it naps
 * (nanosleep of nap_ns, no wait queue, no wake-up for the sender to pay)
 * and looks again, for up to idle_ns (VPP's poll-sleep-usec). Returns
 *   IO_POLL_IDLE   every ring stayed empty for idle_ns: sleep on the sockets;
 *   IO_POLL_MISS   frames[st->next - 1] needs the slow path: resolve it
 *                  (nat_flow_install) and call again, which continues the batch.
 *                  Unless the slow path has used its share of the core (a
 *                  quarter) while frames wait: then the new flow's frame is dropped
 *                  (drop_new_flow_busy) and the batch goes on, so that a
 *                  flood of new flows cannot starve established ones;
 *   IO_POLL_BUDGET budget_ns used: let other tasks run, call again.
 * Time is CLOCK_REALTIME, read once per batch. */
#define IO_POLL_IDLE 0
#define IO_POLL_MISS 1
#define IO_POLL_BUDGET 2
struct io_poll_state {
    uint32_t n;        /* frames in the current batch */
    uint32_t next;     /* first frame the NAT has not processed */
    uint64_t now_ns;   /* the current batch's time */
    uint32_t port;     /* ports[] index the current batch came from */
};
int io_poll(struct io_worker *w, struct nat *nat, nat_process_fn nat_fn, struct nat_frame *frames,
            uint32_t max, uint64_t nap_ns, uint64_t idle_ns, uint64_t budget_ns, struct io_poll_state *st);
/* A worker thread's loop (with more than one worker): polls the worker's
 * sockets, NATs on its lane (nat_lane_process, by pointer), forwards, until
 * io_worker_stop(). It naps nap_ns on empty rings for up to idle_ns, then
 * sleeps on its sockets. Call it with the GIL released (cffi does) from
 * the thread that is to be the worker: it touches no Python object. A new
 * flow's frame is queued for the slow path, which runs the queue with
 * io_worker_settle() and resolves each new flow it stops at; the worker
 * transmits what is handed back. io_worker_miss_fd() (an eventfd) is
 * readable when frames were queued: read it, then settle until nothing is
 * left. Returns 0, or -errno. */
int io_worker_run(struct io_worker *w, struct nat_lane *lane, nat_lane_process_fn process, uint64_t nap_ns,
                  uint64_t idle_ns);
void io_worker_stop(struct io_worker *w);
int io_worker_miss_fd(const struct io_worker *w);
/* The slow path's pass over a worker's queue (on its own thread): runs the
 * waiting frames in order through nat_fn again (the writer's nat_process,
 * each at its own time, NAT_PF_FINAL) and hands back those that now have a
 * verdict — most are later frames of a flow whose session an earlier one
 * made — up to max. It stops at the first that is still a new flow: *miss
 * is then that frame, still first in the queue, for the hooks to resolve
 * and io_worker_miss_done(w, 1) to hand back (else NULL). Returns how many
 * it handed back. */
uint32_t io_worker_settle(struct io_worker *w, struct nat *nat, nat_process_fn nat_fn, uint32_t max,
                          struct nat_frame **miss);
void io_worker_miss_done(struct io_worker *w, uint32_t n);
uint32_t io_worker_miss_waiting(const struct io_worker *w);
/* For the ICMP errors about translated frames, which quote the frame as
 * sent: the NAT module's session table and its nat_session_peek() (by
 * pointer, as nat_process() in io_poll), and each port's own address per
 * family (the errors' source; cleared and re-set from the kernel's). */
void io_set_nat(struct io_ctx *ctx, struct nat *nat, nat_session_peek_fn session_peek);
void io_port_addresses_clear(struct io_ctx *ctx);
/* The port's MTU changed in the kernel (frames longer go to the kernel). */
int io_port_set_mtu(struct io_ctx *ctx, int port_id, uint32_t mtu);
/* The interface's MAC changed in the kernel: the source of what this socket
 * sends, and of our ARP / neighbour answers on its interface. */
void io_port_set_mac(struct io_port *p, const uint8_t *mac);
int io_port_address(struct io_ctx *ctx, int port_id, uint8_t family, const uint8_t *addr);
/* The calling thread's timer slack (how late a nap may end; Linux's default
 * is 50 us). Returns 0 or -errno. */
int io_timer_slack(uint64_t ns);
/* Forward a processed batch received on p (by p's worker), then recycle
 * its buffers. */
void io_forward(struct io_port *p, struct nat_frame *frames, uint32_t n);
/* Kick the worker's TX rings that need a wakeup, reap completions. */
void io_flush(struct io_worker *w);

/* Forwarding tables (replaced wholesale by the netlink follower). Every
 * change below waits for the workers to finish their batch and holds them
 * until it is done. */
void io_routes_clear(struct io_ctx *ctx);
/* A route's kind: the kernel's route types. */
#define IO_ROUTE_FORWARD 0      /* unicast: through its next hops */
#define IO_ROUTE_LOCAL 1        /* to the host itself: the kernel delivers */
#define IO_ROUTE_BLACKHOLE 2    /* dropped here (drop_blackhole) */
#define IO_ROUTE_UNREACHABLE 3  /* translated frames: our ICMP error; others: the kernel answers */
#define IO_ROUTE_PROHIBIT 4     /* as unreachable, "administratively prohibited" */
#define IO_ROUTE_KERNEL 5       /* throw, or another type: the kernel's */
/* One route; n_nh next hops for IO_ROUTE_FORWARD (more than one: multipath,
 * picked per flow by a hash of its addresses, weighted). gateways: n_nh
 * 16-byte addresses, all zeros for none (on-link), or NULL; port_ids: < 0
 * for an interface the appliance does not own (the kernel forwards such
 * frames); weights: NULL for 1 each. The first route given for a prefix
 * wins (give them lowest metric first). Returns 0, 1 if the prefix was
 * there already, or -errno. */
int io_route_add(struct io_ctx *ctx, uint8_t family, const uint8_t *prefix, uint8_t plen, uint8_t kind,
                 const uint8_t *gateways, const int *port_ids, const uint32_t *weights, uint32_t n_nh);
/* The ICMP errors the datapath sends itself, for translated frames: the
 * kernel would quote the translated frame, which its sender cannot match to
 * its flow (a vip's client never learns the path MTU, and traceroute to a
 * vip gets "network unreachable" from a kernel without a route to it). */
enum icmp_error {
    ICMP_ERR_TOO_BIG, ICMP_ERR_TIME_EXCEEDED,
    ICMP_ERR_NO_ROUTE,          /* no route at all: network unreachable / no route */
    ICMP_ERR_HOST_UNREACH,      /* the neighbour failed: host / address unreachable */
    ICMP_ERR_ROUTE_UNREACH,     /* an `unreachable` route: host unreachable / no route, as Linux */
    ICMP_ERR_PROHIBITED,        /* a `prohibit` route: administratively prohibited */
};
/* The whole table at once, replacing what was there: the runtime packs
 * the kernel's routes off the datapath's thread, and loading 20,000 takes
 * ~1 ms instead of ~55 ms of io_route_add() calls from Python. Route i has
 * the next n_nh entries of nexthops, in order; a gateway of all zeros is
 * none. Returns how many routes were refused (see io_route_add), or -errno. */
struct io_route_entry {
    uint8_t prefix[16];
    uint8_t family, plen, kind, n_nh;
};
struct io_nexthop_entry {
    uint8_t gw[16];
    int32_t port_id;
    uint32_t weight;
};
int io_routes_load(struct io_ctx *ctx, const struct io_route_entry *routes, uint32_t n,
                   const struct io_nexthop_entry *nexthops, uint32_t n_nexthops);
/* What the forwarding step does with a frame from src to dst: 0, the egress
 * port in *port_out and the next hop's MAC in mac_out (6 bytes); or the
 * negative io counter of why it goes to the kernel or is dropped, with
 * *port_out the egress port when a route names one of ours (else -1) and
 * *unreach_out an enum icmp_error when translated frames get one from us
 * (else -1).
 * For the tests; the datapath does this once per new flow. */
int io_route_resolve(struct io_ctx *ctx, uint8_t family, const uint8_t *src, const uint8_t *dst,
                     int *port_out, uint8_t *mac_out, int *unreach_out);
/* A neighbour is keyed by (port, family, address): link-local addresses
 * repeat across links. Returns 0, or -ENOSPC beyond 32768 neighbours.
 * mac NULL: a neighbour the kernel failed to resolve (FAILED): translated
 * frames towards it get ICMP host unreachable from us, and go to the kernel.
 * Adds or changes one neighbour (the netlink follower's neighbour events;
 * a changed MAC makes every cached next hop stale). */
int io_neigh_set(struct io_ctx *ctx, uint8_t family, const uint8_t *addr, int port_id,
                 const uint8_t *mac);
/* The whole neighbour table at once, replacing what was there (packed off
 * the datapath's thread, as the routes). mac is ignored when failed is set.
 * Returns how many did not fit (see io_neigh_set). */
struct io_neigh_entry {
    uint8_t addr[16];
    uint8_t mac[6];
    uint8_t family, failed;
    int32_t port_id;
};
int io_neigh_load(struct io_ctx *ctx, const struct io_neigh_entry *entries, uint32_t n);
/* How many routes and neighbours the tables hold now. */
void io_table_sizes(const struct io_ctx *ctx, uint32_t *routes, uint32_t *neighbours);
/* The neighbours frames were forwarded to since the last call (at most
 * max), then a new period starts. The kernel never sees that traffic, so
 * its entries for them would age to STALE and stay there, however their
 * MACs change: the runtime tells it they are in use (NTF_USE), and it
 * probes them as it would for its own traffic. */
struct io_neigh_use {
    uint8_t family;
    uint8_t addr[16];
    int port_id;
};
uint32_t io_neigh_used(struct io_ctx *ctx, struct io_neigh_use *out, uint32_t max);

/* libbpf/libxdp pieces the runtime uses directly. */
int io_xdp_load(const char *path, int *prog_fd);
/* What libbpf said during the last io_xdp_load (warnings and errors). */
const char *io_xdp_log(void);
int io_xdp_map_fd(int obj_id, const char *name);
/* native: 1 = driver mode, 0 = generic (skb) mode */
int io_xdp_attach(int ifindex, int prog_fd, int native);
/* The interface's driver name (ethtool -i) into out; 0 or -errno. */
int io_driver_name(const char *ifname, char *out, uint32_t size);
int io_xdp_detach(int ifindex);
int io_map_update(int fd, const void *key, const void *value, uint64_t flags);
int io_map_delete(int fd, const void *key);
int io_map_lookup(int fd, const void *key, void *value);
/* CFFI-END */

#endif
