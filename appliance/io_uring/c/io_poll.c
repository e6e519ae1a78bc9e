/*
 * One worker on the caller's thread (`[datapath] workers = 1`): the
 * established-flow loop returns to Python for each new flow, which is
 * resolved inline, as the whole batch waits for it. See io.h, io_poll().
 */
#include "io_internal.h"

#include <sys/socket.h>

/* New flows and established ones share the core. The slow path (Python)
 * earns credit at 1/IO_SLOW_SHARE of the wall-clock time, up to
 * IO_SLOW_CREDIT_MAX_NS (a burst of a few thousand new flows), and spends it
 * from each MISS return to the next io_poll() call. A new flow's frame is
 * dropped unresolved (drop_new_flow_busy) only when that credit is used up
 * and more than 1/IO_SLOW_SHARE of its socket's RX ring waits behind the
 * batch: a flood of new flows then gets a quarter of the core, established
 * flows keep their RX buffers instead of losing frames at the kernel's empty
 * fill ring, and nothing is dropped while nothing waits. Their senders
 * retry. Measured (BENCHMARKS.md, overload): with half the core for new
 * flows an established flow kept 71 % of its frames, with a quarter 99 %. */
#define IO_SLOW_SHARE 4
#define IO_SLOW_CREDIT_MAX_NS 20000000ll

static void slow_credit_update(struct io_worker *w, uint64_t now)
{
    w->slow_credit += (int64_t)(now - w->slow_at) / IO_SLOW_SHARE;
    if (w->miss_at) {
        w->slow_credit -= (int64_t)(now - w->miss_at);
        w->miss_at = 0;
    }
    if (w->slow_credit > IO_SLOW_CREDIT_MAX_NS)
        w->slow_credit = IO_SLOW_CREDIT_MAX_NS;
    w->slow_at = now;
}

/* The backend's count of frames waiting is the kernel's latest; read once per new flow. */
static int slow_path_may_run(struct io_worker *w, const struct io_port *p)
{
    slow_credit_update(w, now_ns());
    if (w->slow_credit > 0)
        return 1;
    uint32_t size, waiting = p->ops->waiting(p, &size);
    return waiting <= size / IO_SLOW_SHARE;
}

static int poll_batches(struct io_worker *w, struct nat *nat, nat_process_fn process,
                        struct nat_frame *frames, uint32_t max, uint64_t nap_ns, uint64_t idle_ns,
                        uint64_t end, struct io_poll_state *st)
{
    for (;;) {
        if (st->n == 0) {
            uint32_t n = rx_any(w, frames, max, &st->port);
            if (!n && idle_ns) {
                struct timespec nap = {.tv_sec = 0, .tv_nsec = (long)nap_ns};
                uint64_t until = now_ns() + idle_ns;
                io_flush(w);
                do {
                    if (nap_ns) {
                        nanosleep(&nap, NULL);
                        w->counters[IO_C_NAPS]++;
                    }
                    n = rx_any(w, frames, max, &st->port);
                } while (!n && now_ns() < until);
            }
            if (!n) {
                ports_wakeup(w);
                return IO_POLL_IDLE;
            }
            st->n = n;
            st->next = 0;
            st->now_ns = realtime_ns();
        }
        struct io_port *p = w->ports[st->port];
        while (st->next < st->n) {
            st->next += process(nat, frames + st->next, st->n - st->next, st->now_ns, 0);
            if (frames[st->next - 1].verdict != NAT_MISS)
                break;
            if (slow_path_may_run(w, p)) {
                io_flush(w);           /* the slow path takes a while */
                w->miss_at = now_ns();
                return IO_POLL_MISS;   /* resolved by the caller; the next call goes on */
            }
            /* left a MISS: io_forward() drops it and counts it */
        }
        io_forward(p, frames, st->n);
        st->n = st->next = 0;
        if (now_ns() >= end)
            break;
    }
    io_flush(w);
    return IO_POLL_BUDGET;
}

int io_poll(struct io_worker *w, struct nat *nat, nat_process_fn process, struct nat_frame *frames,
            uint32_t max, uint64_t nap_ns, uint64_t idle_ns, uint64_t budget_ns, struct io_poll_state *st)
{
    uint64_t start = now_ns();
    if (w->miss_at)
        slow_credit_update(w, start);   /* back from the slow path */
    worker_enter(w);   /* the tables change between calls, on this thread */
    int rc = poll_batches(w, nat, process, frames, max, nap_ns, idle_ns, start + budget_ns, st);
    worker_leave(w);
    return rc;
}
