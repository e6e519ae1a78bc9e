/*
 * Worker threads (`[datapath] workers` > 1): each polls its own sockets in
 * C, on its own CPU, never returning to Python while it runs. Its NAT is a
 * lane over the one session table (nat.h, "Lanes"). A new flow cannot wait
 * for the slow path inside the batch as on the single worker (io_poll.c):
 * the worker copies its frame into its queue and goes on; the slow path's
 * thread (the writer: Python hooks) takes the queue in order, installs the
 * session and settles each frame, and the worker transmits them through its
 * own TX rings. Later frames of the flow find the session, or queue behind.
 *
 * The queue is one ring with three indices: [cons, done) settled, for the
 * worker to send; [done, prod) waiting for the slow path. The worker writes
 * prod and cons, the slow path done; each side wakes the other with an
 * eventfd. A full queue drops the new flow's frame (drop_new_flow_busy):
 * its sender retries, and established flows never wait for the slow path.
 */
#include "io_internal.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

static void wake(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0 && errno != EAGAIN) {
        /* an eventfd write fails only at its 2^64 - 2 limit */
    }
}

static void unwake(int fd)
{
    uint64_t v;
    if (read(fd, &v, sizeof v) < 0 && errno != EAGAIN) {
        /* nothing was pending */
    }
}

/* 1 if queued (f->verdict becomes IO_VERDICT_QUEUED), 0 if the queue is full. */
static int miss_push(struct io_worker *w, struct nat_frame *f, uint64_t now)
{
    uint32_t prod = w->miss_prod;
    if (prod - w->miss_cons >= w->miss_size || f->len > IO_FRAME_SIZE)
        return 0;   /* left NAT_MISS: io_forward() counts drop_new_flow_busy */
    struct io_miss *m = &w->miss[prod & (w->miss_size - 1)];
    memcpy(m->buf, f->data, f->len);
    m->f = *f;
    m->f.data = m->buf;
    m->f.ts_ns = now;
    __atomic_store_n(&w->miss_prod, prod + 1, __ATOMIC_RELEASE);
    f->verdict = IO_VERDICT_QUEUED;
    w->counters[IO_C_NEW_FLOW_QUEUED]++;
    return 1;
}

/* While new flows wait, a later fragment of one of them finds no first
 * fragment yet (frag_orphan, or passed as transit): it waits behind them
 * and is run again once they are settled. */
static inline int frag_waits(const struct nat_frame *f)
{
    return (f->verdict == NAT_DROP && f->reason == NAT_C_DROP_FRAG_ORPHAN) ||
           (f->verdict == NAT_PASS && f->reason == NAT_C_PASS_FRAG_TRANSIT);
}

static void handle_batch(struct io_worker *w, struct nat_lane *lane, nat_lane_process_fn process,
                         struct nat_frame *frames, uint32_t n, struct io_port *p)
{
    uint64_t now = realtime_ns();
    uint32_t queued = 0;
    for (uint32_t next = 0; next < n;) {
        next += process(lane, frames + next, n - next, now, 0);
        struct nat_frame *f = &frames[next - 1];
        if (f->verdict == NAT_MISS)
            queued += miss_push(w, f, now);
    }
    if (w->miss_prod != __atomic_load_n(&w->miss_done, __ATOMIC_ACQUIRE))
        for (uint32_t i = 0; i < n; i++)
            if (frag_waits(&frames[i]))
                queued += miss_push(w, &frames[i], now);
    if (queued)
        wake(w->miss_fd);
    io_forward(p, frames, n);
}

/* Send what the slow path settled; returns how many. */
static uint32_t send_settled(struct io_worker *w)
{
    uint32_t done = __atomic_load_n(&w->miss_done, __ATOMIC_ACQUIRE), n = 0;
    for (; w->miss_cons != done; w->miss_cons++, n++) {
        struct nat_frame *f = &w->miss[w->miss_cons & (w->miss_size - 1)].f;
        if (f->verdict == NAT_FORWARD || (f->verdict == NAT_PASS && !answer_neighbour(w, f)))
            forward_one(w, f);
        else if (f->verdict == NAT_MISS)
            w->counters[IO_C_DROP_NEW_FLOW_BUSY]++;
        else
            w->counters[IO_C_DROP_NAT]++;
    }
    return n;
}

/* The worker's sockets join its epoll set only while it sleeps (see the
 * runtime's _IdleWait: a socket always on a wait queue costs its senders a
 * wake-up per flush). The wake eventfd stays in it. */
static void sleep_on_sockets(struct io_worker *w, int epfd)
{
    struct epoll_event ev = {.events = EPOLLIN};
    ports_wakeup(w);
    for (uint32_t k = 0; k < w->nports; k++) {
        ev.data.u32 = k;
        epoll_ctl(epfd, EPOLL_CTL_ADD, io_port_fd(w->ports[k]), &ev);
    }
    struct epoll_event out[8];
    if (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE))
        epoll_wait(epfd, out, 8, 1000);
    for (uint32_t k = 0; k < w->nports; k++)
        epoll_ctl(epfd, EPOLL_CTL_DEL, io_port_fd(w->ports[k]), NULL);
    unwake(w->wake_fd);
}

int io_worker_run(struct io_worker *w, struct nat_lane *lane, nat_lane_process_fn process, uint64_t nap_ns,
                  uint64_t idle_ns)
{
    if (!w->miss)
        return -EINVAL;   /* the single worker runs io_poll() on the caller's thread */
    struct nat_frame frames[IO_BATCH_MAX];
    struct timespec nap = {.tv_sec = 0, .tv_nsec = (long)nap_ns};
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return -errno;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(epfd, EPOLL_CTL_ADD, w->wake_fd, &ev);
    uint32_t port = 0;
    uint64_t idle_since = 0;
    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        worker_enter(w);
        uint32_t sent = send_settled(w);
        uint32_t n = rx_any(w, frames, IO_BATCH_MAX, &port);
        if (n)
            handle_batch(w, lane, process, frames, n, w->ports[port]);
        if (!n)
            io_flush(w);
        worker_leave(w);
        if (n || sent) {
            idle_since = 0;
            continue;
        }
        uint64_t now = now_ns();
        if (!idle_since)
            idle_since = now;
        if (now - idle_since < idle_ns) {
            if (nap_ns) {
                nanosleep(&nap, NULL);
                w->counters[IO_C_NAPS]++;
            }
            continue;
        }
        sleep_on_sockets(w, epfd);
        idle_since = 0;
    }
    close(epfd);
    worker_enter(w);
    send_settled(w);
    io_flush(w);
    worker_leave(w);
    return 0;
}

void io_worker_stop(struct io_worker *w)
{
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    if (w->wake_fd >= 0)
        wake(w->wake_fd);
}

int io_worker_miss_fd(const struct io_worker *w) { return w->miss_fd; }

uint32_t io_worker_settle(struct io_worker *w, struct nat *nat, nat_process_fn nat_fn, uint32_t max,
                          struct nat_frame **miss)
{
    *miss = NULL;
    if (!w->miss)
        return 0;
    uint32_t prod = __atomic_load_n(&w->miss_prod, __ATOMIC_ACQUIRE), n = 0;
    for (uint32_t at = w->miss_done; at != prod && n < max; at++) {
        struct nat_frame *f = &w->miss[at & (w->miss_size - 1)].f;
        nat_fn(nat, f, 1, f->ts_ns, NAT_PF_FRAME_TIME | NAT_PF_FINAL);
        if (f->verdict == NAT_MISS) {
            *miss = f;
            break;
        }
        n++;
    }
    if (n)
        io_worker_miss_done(w, n);
    return n;
}

void io_worker_miss_done(struct io_worker *w, uint32_t n)
{
    __atomic_store_n(&w->miss_done, w->miss_done + n, __ATOMIC_RELEASE);
    wake(w->wake_fd);
}

uint32_t io_worker_miss_waiting(const struct io_worker *w)
{
    return w->miss ? __atomic_load_n(&w->miss_prod, __ATOMIC_ACQUIRE) - w->miss_done : 0;
}
