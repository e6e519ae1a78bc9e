"""The data plane: the ports of packet I/O (AF_XDP sockets, one per data
interface and queue, or io_uring or mmap ports, one per interface and
worker: docs/io.md), the TAP device and the steering they are opened with, the
workers that serve them (the established-flow loop in C: io_worker_run on
a thread of its own per worker; io_poll on the trio thread only for one
worker in a process with one CPU), the new flows they hand to the slow path, the session timers and
the datapath's own counters.

Imports nothing of the runtime's other modules: the control plane
(_kernel_tables, _reload) and the control socket (_control) build on it,
never the other way.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import resource
import select
import socket
import threading
import time
from typing import Optional

import trio

from ..io_uring._binding import COUNTER_NAMES as IO_COUNTER_NAMES
from ..io_uring._binding import ffi as io_ffi
from ..io_uring._binding import lib as io
from ..io_uring._tap import Tap, _sysctl
from ..io_uring._socket_steering import SocketSteering, remove_stale_table
from ..io_uring.xdp._steering import Steering, SteeringError
from ..nat import Batch

log = logging.getLogger("appliance.run")

BATCH = 256
# UMEM per socket: 8192 RX + 4096 TX chunks of 2 KiB = 24 MiB. The RX
# frames buffer 8 ms at 1 Mpps: a burst of new flows (each a few us in the
# slow path) or a scheduling hiccup of the process. TX frames are in flight
# only between a kick and its completion.
UMEM_RX_FRAMES = 8192
UMEM_TX_FRAMES = 4096
# When every RX ring is empty, io_poll() naps RX_NAP_NS and looks again, for
# up to RX_IDLE_NS; then the task sleeps on the sockets (epoll). A nap costs
# no wake-up on the sender's CPU and lets frames gather into bigger batches;
# a spin (the old way) burned the core at any load and a sleep through epoll
# at every empty ring made each sender flush pay for a wake-up. At 1 Mpps a
# 20 us nap gathers ~20 frames into an RX ring of 8192. The nap ends up to
# RX_TIMER_SLACK_NS late (Linux's default slack is 50 us).
RX_NAP_NS = 20_000
RX_IDLE_NS = 500_000
RX_TIMER_SLACK_NS = 5_000
# How long io_poll() may run before Python yields to the other trio tasks
# (control socket, timers, kernel follower): each return costs the
# interpreter ~20-40 us, 1-2 % of the core at one return per millisecond.
POLL_BUDGET_NS = 2_000_000
# With worker threads the slow path (this thread: hooks, timers, control)
# runs at this much lower priority than they: where it shares a CPU with a
# busy worker, it gets about a quarter of it (CFS weights 1024 : 335), the
# share io_poll gives new flows on one worker (io_poll.c, IO_SLOW_SHARE).
SLOW_PATH_NICE = 5
# Per turn of a worker's queue before the other trio tasks run: new flows
# resolved by the hooks (~5 us each), and frames settled in C between them.
MISS_FLOWS = 64
MISS_SLICE = 256


# The largest frame an AF_XDP socket in copy mode receives: its UMEM chunk
# less the kernel's XDP headroom (256). Longer frames are dropped by the
# kernel (xsk_rx_dropped), so a data interface's MTU may not allow them.
MAX_RX_FRAME = io.IO_FRAME_SIZE - 256
MAX_MTU = MAX_RX_FRAME - 14
# io_uring ports: receive buffers in the provided-buffer ring (the socket's
# own queue, sk_rcvbuf, holds more in front of it) and transmit buffers
URING_RX_BUFFERS = 4096
URING_TX_BUFFERS = 1024
# mmap ports: slots of the receive ring (16 MiB: as many frames as an
# AF_XDP socket's RX ring holds) and of the transmit ring
MMAP_RX_SLOTS = 8192
MMAP_TX_SLOTS = 1024


def _uring_refused(err: int) -> str:
    """Why io_uring cannot be had, for the error message."""
    try:
        disabled = pathlib.Path("/proc/sys/kernel/io_uring_disabled").read_text().strip()
    except OSError:
        disabled = "0"
    if err == errno.EPERM and disabled != "0":
        return f"io_uring is disabled (sysctl kernel.io_uring_disabled = {disabled})"
    seccomp = "a seccomp profile refuses io_uring_setup (Docker's, containerd's and podman's defaults do)"
    if err == errno.ENOSYS and os.path.exists("/proc/sys/kernel/io_uring_disabled"):
        return seccomp       # the kernel has it (the sysctl exists): the call was filtered
    if err == errno.ENOSYS:
        return "io_uring_setup is not available (a kernel without io_uring, or " + seccomp + ")"
    if err == errno.EPERM:
        return seccomp
    return f"io_uring_setup: {os.strerror(err)}"


#: the backends that read an AF_PACKET socket and share its steering
SOCKET_BACKENDS = ("uring", "mmap")
#: how the log and errors name each backend
BACKEND_NAMES = {"xdp": "AF_XDP", "uring": "io_uring", "mmap": "PACKET_MMAP rings (mmap)"}


def reserve_ports(lo: int, hi: int) -> None:
    """Keep lo-hi out of the kernel's own ephemeral ports in this network
    namespace (net.ipv4.ip_local_reserved_ports, IPv6 too): the socket
    modes take the replies to the host's addresses on those ports, so no
    connection of the host's should have one. Added to what is reserved
    already; left at the stop (a restart reserves them again). Where it
    cannot be written (a container's /proc/sys is read-only), a warning:
    a connection of the host's on such a port still works, its frames
    handed to the kernel through the TAP device, at that cost."""
    path = pathlib.Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
    try:
        now = path.read_text().strip()
        for part in filter(None, now.split(",")):
            a, _, b = part.partition("-")
            if int(a) <= lo and hi <= int(b or a):
                return
        path.write_text(f"{now},{lo}-{hi}" if now else f"{lo}-{hi}")
    except OSError as exc:
        log.warning("cannot reserve ports %d-%d from the kernel's own (%s: %s): the host's own connections may "
                    "get such a port, and their frames then reach the kernel through the appliance; set "
                    "net.ipv4.ip_local_reserved_ports = %d-%d in this network namespace (docs/io.md)",
                    lo, hi, path, exc.strerror, lo, hi)


def choose_io(interfaces) -> tuple[dict[str, str], Optional[Steering], str]:
    """Each interface's backend ("xdp", "uring" or "mmap", docs/io.md),
    the XDP steering when some interface uses AF_XDP, and why the backends
    before the one `auto` took were passed over ("" when none was). `auto`
    is AF_XDP where it can be had, else io_uring, else mmap; what cannot
    be had is a SystemExit naming the reason."""
    steering, xdp_refused = None, ""
    if any(itf.io in ("xdp", "auto") for itf in interfaces):
        try:
            steering = Steering()
        except SteeringError as exc:
            xdp_refused = f"{exc} (no CAP_BPF/CAP_SYS_ADMIN, or bpf() refused)"
    uring_refused = ""
    if any(itf.io == "uring" or (itf.io == "auto" and steering is None) for itf in interfaces):
        rc = io.io_uring_probe()
        uring_refused = _uring_refused(-rc) if rc < 0 else ""
    chosen, passed_over = {}, ""
    for itf in interfaces:
        if itf.io == "xdp" and steering is None:
            raise SystemExit(f"appliance: error: interface '{itf.name}' has io = \"xdp\": {xdp_refused}")
        if itf.io == "uring" and uring_refused:
            raise SystemExit(f"appliance: error: interface '{itf.name}' has io = \"uring\": {uring_refused}")
        if itf.io != "auto":
            chosen[itf.name] = itf.io
        elif steering is not None:
            chosen[itf.name] = "xdp"
        elif not uring_refused:
            chosen[itf.name] = "uring"
            passed_over = f"AF_XDP cannot be had: {xdp_refused}"
        else:
            chosen[itf.name] = "mmap"
            passed_over = f"AF_XDP cannot be had: {xdp_refused}; io_uring cannot be had: {uring_refused}"
    for itf in interfaces:
        if itf.io == "auto" and chosen[itf.name] != "xdp":
            log.warning("%s: %s; using %s", itf.name, passed_over, BACKEND_NAMES[chosen[itf.name]])
    if steering is not None and "xdp" not in chosen.values():
        steering = None
    return chosen, steering, passed_over


class Steerings:
    """The steering of every backend in use (AF_XDP's program, the socket
    modes' nftables table), fed alike by the control plane."""

    def __init__(self) -> None:
        self.xdp: Optional[Steering] = None
        self.socket: Optional[SocketSteering] = None

    def _all(self) -> list:
        return [x for x in (self.xdp, self.socket) if x is not None]

    def set_addresses(self, host: set, nat: set, echo: frozenset = frozenset()) -> None:
        for x in self._all():
            x.set_addresses(host, nat, echo)

    def set_host_ports(self, ports: set) -> None:
        for x in self._all():
            x.set_host_ports(ports)

    def add_port(self, p) -> None:
        for x in self._all():
            x.add_port(p)

    def remove_port(self, p) -> None:
        for x in self._all():
            x.remove_port(p)

    def hold(self, seconds: float) -> None:
        for x in self._all():
            x.hold(seconds)

    def detach_all(self) -> None:
        for x in self._all():
            x.detach_all()

    def counters(self) -> dict[str, int]:
        return self.xdp.counters() if self.xdp is not None else {}

    def socket_counters(self) -> dict[str, int]:
        return self.socket.counters() if self.socket is not None else {}

    def holder(self) -> str:
        """What holds the appliance's traffic in a restart's gap (hold)."""
        return " and ".join(n for n, x in (("the XDP program", self.xdp), ("the nftables table", self.socket))
                            if x is not None) or "nothing"


def worker_count(configured: Optional[int], queues: dict[str, int]) -> int:
    """[datapath] workers, or its default: one per CPU the process may run
    on, capped by the RX queues of the interface with the fewest (a socket
    mode's: IO_MAX_WORKERS, a socket per worker). Every worker serves a
    queue of every interface (it transmits through its own socket there),
    so more are an error."""
    fewest = min(queues.values())
    if configured is None:
        return max(1, min(len(os.sched_getaffinity(0)), fewest))
    if configured > fewest:
        name = min(queues, key=queues.get)
        raise SystemExit(f"appliance: error: [datapath] workers = {configured}, but interface '{name}' has "
                         f"{fewest} RX queue{'s' if fewest != 1 else ''}: each worker needs a queue of every "
                         f"data interface (more queues: ethtool -L {name} combined N; veth: numrxqueues and "
                         f"numtxqueues when it is created)")
    return configured


def _iface_info(name: str) -> tuple[int, bytes, int, int]:
    base = pathlib.Path("/sys/class/net") / name
    if not base.exists():
        raise SystemExit(f"appliance: error: interface '{name}' does not exist in this network namespace "
                         f"(ip link show: a [[interface]] name must be one of its interfaces)")
    ifindex = socket.if_nametoindex(name)
    mac = bytes.fromhex((base / "address").read_text().strip().replace(":", ""))
    mtu = int((base / "mtu").read_text())
    if mtu > MAX_MTU:
        raise SystemExit(f"appliance: error: interface '{name}' has MTU {mtu}; the appliance receives frames "
                         f"of up to {MAX_RX_FRAME} bytes (MTU {MAX_MTU}), larger ones would be lost: "
                         f"lower it (ip link set {name} mtu 1500)")
    queues = len([q for q in (base / "queues").iterdir() if q.name.startswith("rx-")]) or 1
    return ifindex, mac, mtu, queues


class _IdleWait:
    """Sleep until one of the AF_XDP sockets has frames, registered on their
    wait queues only while asleep.

    trio keeps a waited-on fd in its epoll set, so a socket's wait queue
    would have a sleeper for good, and every flush of frames into it
    (softirq, on the sending CPU) and every free of a frame it transmitted
    would take the wait-queue lock and run epoll's callback. Measured with
    perf in the bench e2e topology: 9 % of the generator's CPU in
    __xsk_map_flush -> sock_def_readable, and 5 % of the appliance's in
    sock_wfree on the transmitting socket. So the sockets sit in a private
    epoll set only while we sleep, and trio waits on that set. epoll_ctl(ADD)
    polls the socket, so frames that arrived between the last receive and
    the ADD wake us at once: no lost wake-up.
    """

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self.epoll = select.epoll()

    async def wait(self) -> None:
        for fd in self.fds:
            self.epoll.register(fd, select.EPOLLIN)
        try:
            await trio.lowlevel.wait_readable(self.epoll.fileno())
        finally:
            for fd in self.fds:
                self.epoll.unregister(fd)

    def close(self) -> None:
        self.epoll.close()


class Datapath:
    """The data plane's part of :class:`~appliance.runtime.Appliance`
    (which holds the state: config, core, steering, tap, ctx, ports,
    _ifindex, interface_state)."""

    def open(self) -> None:
        """The TAP device, the sockets, the steering made ready (the
        kernel's tables then come from the control plane, and the steering
        takes effect after them: Appliance.open, start_steering)."""
        if not self.config.interfaces:
            raise SystemExit(f"appliance: error: {self.config.path}: no [[interface]] to run on")
        infos = {itf.name: _iface_info(itf.name) for itf in self.config.interfaces}
        self.io_chosen, self.steering.xdp, self.io_passed_over = choose_io(
            self.config.interfaces)
        # a socket mode's earlier run may have left it, whatever this run's mode
        remove_stale_table(keep_netdev=bool(set(SOCKET_BACKENDS) & set(self.io_chosen.values())))
        # a socket mode's interface gets a socket per worker, sharing its
        # frames by PACKET_FANOUT: its RX queues set no limit
        queues = {name: info[3] if self.io_chosen[name] == "xdp" else io.IO_MAX_WORKERS
                  for name, info in infos.items()}
        n_workers = worker_count(self.config.workers, queues)
        _sysctl("net.ipv4.ip_forward", "1")
        _sysctl("net.ipv6.conf.all.forwarding", "1")
        # UMEM pages are locked memory: 24 MiB per socket (UMEM_*_FRAMES)
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        except (ValueError, OSError):
            pass   # without CAP_SYS_RESOURCE; CAP_IPC_LOCK or a high enough limit also do
        try:
            self.tap = Tap()
        except OSError as exc:
            if exc.errno == errno.EBUSY:   # the TAP device is one per namespace: it is our lock
                raise SystemExit(f"appliance: error: another appliance is running in this network namespace "
                                 f"(its TAP device {Tap.NAME} is in use); stop it first") from None
            raise SystemExit(f"appliance: error: cannot create the TAP device {Tap.NAME} "
                             f"(/dev/net/tun): {exc.strerror or exc}") from None
        # one worker polls on this thread only where there is no other CPU
        # for it; elsewhere each has its own, so established flows never
        # wait on the slow path (a hook that blocks holds up new flows only)
        self.inline = n_workers == 1 and len(os.sched_getaffinity(0)) == 1
        ctx = io.io_ctx_create(self.tap.fd, self.tap.mac, self.config.max_sessions, n_workers, not self.inline)
        if ctx == io_ffi.NULL:
            raise SystemExit(f"appliance: error: cannot set up the datapath: {os.strerror(io_ffi.errno)}")
        self.ctx = io_ffi.gc(ctx, io.io_ctx_destroy)
        self.workers = [io.io_ctx_worker(self.ctx, i) for i in range(n_workers)]
        io.io_set_nat(self.ctx, *self.core.session_peek_pointer())
        if set(SOCKET_BACKENDS) & set(self.io_chosen.values()):
            self.steering.socket = SocketSteering(self.ctx)
            # the host ports they take: where the NAT picks the ports of
            # flows whose source becomes a host address (docs/io.md)
            ports = self.config.cluster.source_ports or self.config.reserved_ports
            reserve_ports(*ports)
            self.steering.socket.set_host_port_range(*ports)
            self.core.set_default_source_ports(self.config.reserved_ports)
        key = 0
        self._xdp_attach: list = []     # attached by start_steering
        for itf in self.config.interfaces:
            name = itf.name
            ifindex, mac, mtu, queues = infos[name]
            self._ifindex[name] = ifindex
            self.interface_state[name] = "up"
            port_id = self.core.port(name)
            if self.io_chosen[name] in SOCKET_BACKENDS:
                self._open_socket_port(self.io_chosen[name], name, ifindex, port_id, mac, mtu)
                continue
            xdp = self.steering.xdp
            xdp.set_ifbase(ifindex, key)
            for q in range(queues):
                w = self.workers[q % n_workers]   # queue q: worker q mod N
                mode = "zero-copy"
                p = io.io_xdp_port_open(w, name.encode(), q, port_id, xdp.maps["xsks"], key,
                                    UMEM_RX_FRAMES, UMEM_TX_FRAMES, mac, mtu, 1)
                if p == io_ffi.NULL:   # the driver has no zero-copy (veth): copy mode
                    mode = "copy"
                    p = io.io_xdp_port_open(w, name.encode(), q, port_id, xdp.maps["xsks"],
                                        key, UMEM_RX_FRAMES, UMEM_TX_FRAMES, mac, mtu, 0)
                if p == io_ffi.NULL:
                    err = io_ffi.errno
                    hint = (" (UMEM is locked memory: raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)"
                            if err == errno.ENOBUFS else "")
                    raise SystemExit(f"appliance: error: cannot open AF_XDP socket on {name} queue {q}: "
                                     f"{os.strerror(err)}{hint}")
                log.info("%s queue %d: AF_XDP socket in %s mode, worker %d", name, q, mode, q % n_workers)
                self.ports.append((name, q, p))
                key += 1
            self._xdp_attach.append((ifindex, name, itf.xdp_mode))
        cpus = sorted(os.sched_getaffinity(0))
        # one CPU each while there are enough; else the scheduler places them
        self.worker_cpus = cpus[:n_workers] if n_workers > 1 and len(cpus) >= n_workers else [None] * n_workers

    def start_steering(self) -> None:
        """The steering takes effect once the tables are complete (the
        kernel's, and the sessions a --state-file restored): a program or
        a table that took effect before would hand the kernel the replies
        to the host ports of those sessions, and it would reset them. Until
        then the last run's, when it holds, holds."""
        for ifindex, name, mode in self._xdp_attach:
            try:
                mode = self.steering.xdp.attach(ifindex, name, mode)
            except SteeringError as exc:
                raise SystemExit(f"appliance: error: {name}: {exc}") from None
            log.info("%s: XDP attached in %s mode", name, mode)
        if self.steering.socket is not None:
            try:
                self.steering.socket.start()
            except SteeringError as exc:
                raise SystemExit(f"appliance: error: {exc}") from None

    def _open_socket_port(self, backend: str, name: str, ifindex: int, port_id: int, mac: bytes,
                          mtu: int) -> None:
        """An io_uring or mmap port on the interface for every worker
        (docs/io.md; more than one: a PACKET_FANOUT group sharing the
        interface's frames by flow hash), and the kernel kept off their
        frames by the steering table."""
        fanout = io_ffi.new("uint16_t *", 0) if len(self.workers) > 1 else io_ffi.NULL
        for k, w in enumerate(self.workers):
            if backend == "uring":
                p = io.io_uring_port_open(w, name.encode(), port_id, URING_RX_BUFFERS, URING_TX_BUFFERS, mac, mtu,
                                          fanout)
            else:
                p = io.io_mmap_port_open(w, name.encode(), port_id, MMAP_RX_SLOTS, MMAP_TX_SLOTS, mac, mtu, fanout)
            if p == io_ffi.NULL:
                err = io_ffi.errno
                hint = " (AF_PACKET needs CAP_NET_RAW)" if err == errno.EPERM else ""
                why = (_uring_refused(err) if backend == "uring" and err in (errno.EPERM, errno.ENOSYS)
                       else os.strerror(err))
                raise SystemExit(f"appliance: error: cannot open the {BACKEND_NAMES[backend]} port on {name}: "
                                 f"{why}{hint}")
            self.ports.append((name, k, p))
        try:
            self.steering.socket.attach(ifindex, name)
        except SteeringError as exc:
            raise SystemExit(f"appliance: error: {name}: {exc}") from None
        why = f" ({self.io_passed_over})" if self.io_passed_over else ""
        shared = f", {len(self.workers)} sockets in fanout group {fanout[0]}" if fanout != io_ffi.NULL else ""
        log.info("%s: %s port (AF_PACKET)%s%s", name, BACKEND_NAMES[backend], shared, why)

    def close(self) -> None:
        self.steering.detach_all()
        for _, _, p in self.ports:
            io.io_port_close(p)
        self.ports.clear()
        if self.tap is not None:
            self.tap.close()
            self.tap = None

    def io_counter(self, index: int) -> int:
        """One io counter (io.IO_C_*), summed over the workers."""
        c = io_ffi.new("uint64_t[]", len(IO_COUNTER_NAMES))
        io.io_counters_sum(self.ctx, c)
        return c[index]

    def io_counters(self) -> dict[str, int]:
        c = io_ffi.new("uint64_t[]", len(IO_COUNTER_NAMES))
        io.io_counters_sum(self.ctx, c)
        out = {name: c[i] for i, name in enumerate(IO_COUNTER_NAMES)}
        # the kernel's own drops on our sockets (ring full, fill ring empty)
        names = ("xsk_rx_dropped", "xsk_rx_invalid_descs", "xsk_tx_invalid_descs", "xsk_rx_ring_full",
                 "xsk_rx_fill_ring_empty", "xsk_tx_ring_empty")
        st = io_ffi.new("uint64_t[6]")
        for name in names:
            out[name] = 0
        for _, _, p in self.ports:
            if io.io_port_kernel_stats(p, st) == 0:
                for i, name in enumerate(names):
                    out[name] += st[i]
        return out

    def socket_counters(self) -> list[dict]:
        """Frames received per port (an AF_XDP socket per queue; in the
        socket modes a socket per worker, "queue" its index): how RSS or
        the fanout spread the traffic, and the packet-I/O backend of each."""
        n = len(self.workers) or 1
        return [{"interface": name, "queue": q, "worker": q % n, "rx": io.io_port_rx(p),
                 "io": io_ffi.string(io.io_port_backend(p)).decode()}
                for name, q, p in self.ports]

    def worker_counters(self) -> list[dict]:
        """Per worker: its CPU, its share of the frames, and its new flows."""
        out = []
        for i, w in enumerate(self.workers):
            c = io.io_worker_counters(w)
            out.append({"worker": i, "cpu": self.worker_cpus[i] if i < len(self.worker_cpus) else None,
                        "rx": c[io.IO_C_RX], "tx": c[io.IO_C_TX],
                        "new_flow_queued": c[io.IO_C_NEW_FLOW_QUEUED],
                        "drop_new_flow_busy": c[io.IO_C_DROP_NEW_FLOW_BUSY],
                        "new_flow_waiting": io.io_worker_miss_waiting(w)})
        return out

    def datapath_stats(self) -> dict:
        """The datapath's part of `show stats` and of the final statistics
        (read before close: the sockets' own counters go with them)."""
        return {"io": self.io_counters(), "sockets": self.socket_counters(), "workers": self.worker_counters(),
                "worker_threads": not self.inline, "xdp": self.steering.counters(),
                "socket_steering": self.steering.socket_counters(),
                "packet_io": {itf.name: self._io_reason(itf) for itf in self.config.interfaces
                              if itf.name in getattr(self, "io_chosen", {})}}

    def _io_reason(self, itf) -> dict:
        """An interface's backend and why (docs/io.md)."""
        backend = self.io_chosen[itf.name]
        if itf.io != "auto":
            why = f"io = \"{itf.io}\""
        elif backend == "xdp":
            why = "auto: AF_XDP could be had"
        else:
            why = f"auto: {self.io_passed_over}"
        return {"backend": backend, "why": why}

    async def rx_loop(self) -> None:
        if self.inline:
            log.info("one worker on the slow path's thread (one CPU): a blocking hook stalls every flow")
            await self._poll_loop(self.workers[0])
        else:
            await self._worker_threads()

    async def _poll_loop(self, worker) -> None:
        """One worker, on this thread: the established-flow loop runs in C
        (io_poll: receive from every socket round robin, NAT, forward, for
        up to POLL_BUDGET_NS per call); Python sees only new flows, idle
        periods and its turns to yield. A socket is on a wait queue only
        while every socket is idle."""
        batch = Batch(BATCH, 0)
        frames = batch.frames
        idle = _IdleWait([io.io_port_fd(p) for _, _, p in self.ports])
        state = io_ffi.new("struct io_poll_state *")
        nat, nat_fn = self.core.nat_process_pointer()
        poll, core = io.io_poll, self.core
        io.io_timer_slack(RX_TIMER_SLACK_NS)
        clock, mark = time.monotonic_ns, self.plugins.mark
        try:
            deadline = clock() + POLL_BUDGET_NS
            while True:
                # The budget spans the new flows resolved in between: a flood
                # of them would otherwise return MISS, never BUDGET, and starve
                # every other task (timers, control socket, kernel follower).
                rc = poll(worker, nat, nat_fn, frames, BATCH, RX_NAP_NS, RX_IDLE_NS,
                          max(0, deadline - clock()), state)
                if rc == io.IO_POLL_MISS:
                    core.resolve_miss(frames + (state.next - 1), state.now_ns)
                    continue
                core.drain_events()
                if rc == io.IO_POLL_IDLE:
                    io.io_flush(worker)
                    await idle.wait()
                else:
                    await trio.lowlevel.checkpoint()
                mark()
                deadline = clock() + POLL_BUDGET_NS
        finally:
            idle.close()

    async def _worker_threads(self) -> None:
        """Each worker on a thread of its own, in C without the GIL
        (io_worker_run, over a lane of the core), pinned to a CPU of its
        own; this thread settles their new flows, in order per worker."""
        lanes = [self.core.lane() for _ in self.workers]
        threads = []
        try:
            for i, (w, lane) in enumerate(zip(self.workers, lanes)):
                t = threading.Thread(target=self._worker_main, args=(i, w, lane, self.worker_cpus[i]),
                                     name=f"appliance-worker-{i}", daemon=True)
                t.start()
                threads.append(t)
            # after the threads were made: they keep the priority they inherited
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + SLOW_PATH_NICE))
            async with trio.open_nursery() as nursery:
                for w in self.workers:
                    nursery.start_soon(self._settle_loop, w)
        finally:
            for w in self.workers:
                io.io_worker_stop(w)
            for t in threads:
                t.join()
            for lane in lanes:
                lane.close()   # its counters join the core's

    @staticmethod
    def _worker_main(index: int, worker, lane, cpu: Optional[int]) -> None:
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})   # this thread only
            except OSError as exc:
                log.warning("worker %d: cannot pin to CPU %d: %s", index, cpu, exc.strerror)
        io.io_timer_slack(RX_TIMER_SLACK_NS)
        log.info("worker %d: running%s", index, f" on CPU {cpu}" if cpu is not None else "")
        rc = io.io_worker_run(worker, lane.pointer, lane.process_pointer(), RX_NAP_NS, RX_IDLE_NS)
        if rc:
            log.error("worker %d stopped: %s", index, os.strerror(-rc))

    async def _settle_loop(self, worker) -> None:
        """A worker's queued new flows, in its order: the queue run again in
        C (io_worker_settle: a frame an earlier one made the session of goes
        back without Python), each still-new flow resolved by the hooks,
        then handed back for the worker to transmit."""
        fd = io.io_worker_miss_fd(worker)
        settle, done, core, mark = io.io_worker_settle, io.io_worker_miss_done, self.core, self.plugins.mark
        nat, nat_fn = core.nat_process_pointer()
        head = io_ffi.new("struct nat_frame **")
        null = io_ffi.NULL
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                os.read(fd, 8)   # then settle until empty: what comes later writes it again
            except BlockingIOError:
                pass
            while True:
                mark()
                n = settle(worker, nat, nat_fn, MISS_SLICE, head)
                for _ in range(MISS_FLOWS):
                    f = head[0]
                    if f == null:
                        break
                    core.resolve_miss(f, f.ts_ns)
                    done(worker, 1)
                    n += 1 + settle(worker, nat, nat_fn, MISS_SLICE, head)
                if not n:
                    break
                core.drain_events()
                await trio.lowlevel.checkpoint()

    async def timer_loop(self) -> None:
        while True:
            now = time.time()
            self.core.expire(now)
            self.release_drained_ports()
            await trio.sleep_until(trio.current_time() + (self.core.next_deadline(now) - now))
