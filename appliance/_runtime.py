"""``appliance run``: the live datapath under trio.

One task for all AF_XDP sockets: wait on them while all are idle; while
busy, C (io_poll) receives from them round robin, NATs and forwards
batches of up to 256 frames for up to 2 ms per call, returning to Python only for a new
flow (the slow path) or to yield. Beside them: the session scanner, the kernel follower (netlink), the
configuration watcher (a valid new file is applied, an invalid one is
reported and the last good one keeps serving), the control socket and the
signal handler. On SIGTERM/SIGINT everything is
cancelled and the XDP programs are detached; a start after SIGKILL replaces
the stale programs.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import gc
import hashlib
import ipaddress
import json
import logging
import os
import pathlib
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Optional

import trio

from . import _kernel, _metrics
from . import _cnat
from ._config import Config, ConfigError, parse_config
from ._plugins import Plugins
from .io_uring._binding import COUNTER_NAMES as IO_COUNTER_NAMES
from .io_uring._binding import ffi as io_ffi
from .io_uring._binding import lib as io
from .io_uring._steering import Steering, SteeringError
from .io_uring._tap import Tap, _sysctl
from .nat import Batch, NatCore

log = logging.getLogger("appliance.run")

BATCH = 256
# UMEM per socket: 8192 RX + 4096 TX chunks of 2 KiB = 24 MiB. The RX
# frames buffer 8 ms at 1 Mpps: a burst of new flows (each a few us in the
# slow path) or a scheduling hiccup of the process. TX frames are in flight
# only between a kick and its completion.
UMEM_RX_FRAMES = 8192
UMEM_TX_FRAMES = 4096
KERNEL_DEBOUNCE = 0.02    # seconds: netlink changes come in bursts
# Reading the kernel's tables runs in a worker thread, but parsing holds the
# GIL: with 20,000 routes a read takes ~0.45 s, and ten route changes a
# second kept the datapath's thread short of the GIL (11 % of a 400 Mbit/s
# UDP stream lost). Reads take at most this share of the time.
KERNEL_READ_SHARE = 0.2
KERNEL_NEIGH_CHECK = 0.1  # seconds: how often to look at the "no neighbour" counter
KERNEL_NEIGH_BACKOFF = 3.2  # seconds: the longest wait when such looks find nothing new
NEIGH_USE_PERIOD = 1.0    # seconds: how often the kernel hears which neighbours we forward to
SESSIONS_LIMIT = 1000     # `show sessions` without --limit
SESSIONS_SLICE = 64       # sessions described between two turns of the datapath (~2.5 ms)
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
CONFIG_POLL = 1.0         # seconds between looks at the configuration file
CONFIG_SETTLE = 0.2      # seconds a changed file must stay unchanged before it is read
CONFIG_SETTLE_MAX = 5.0  # ... but a file rewritten without end is read after this long
# How long io_poll() may run before Python yields to the other trio tasks
# (control socket, timers, kernel follower): each return costs the
# interpreter ~20-40 us, 1-2 % of the core at one return per millisecond.
POLL_BUDGET_NS = 2_000_000


# The largest frame an AF_XDP socket in copy mode receives: its UMEM chunk
# less the kernel's XDP headroom (256). Longer frames are dropped by the
# kernel (xsk_rx_dropped), so a data interface's MTU may not allow them.
MAX_RX_FRAME = io.IO_FRAME_SIZE - 256
MAX_MTU = MAX_RX_FRAME - 14


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


# What reading the kernel's tables (`ip -j`) or writing our maps may raise.
_KERNEL_ERRORS = (OSError, subprocess.SubprocessError, ValueError, KeyError, SteeringError)


def _links(snap: _kernel.Snapshot, data: set) -> dict[str, tuple]:
    """NatCore.links: for each data interface, its on-link prefixes (routes
    through it without a gateway; not the default route, not link-local)
    with its own address inside each."""
    links: dict[str, list] = {}
    for r in snap.routes:
        net = r.network
        if r.kind != "unicast" or net.prefixlen == 0 or net.is_link_local:
            continue
        for hop in r.nexthops:
            if hop.dev not in data or hop.gateway is not None:
                continue
            own = next((a for dev, a in snap.interface_addresses if dev == hop.dev and a in net), None)
            if own is None:
                continue
            bits = net.max_prefixlen
            mask = ((1 << bits) - 1) ^ ((1 << (bits - net.prefixlen)) - 1)
            links.setdefault(hop.dev, []).append((net.version, int(net.network_address), mask, own.packed))
    return {dev: tuple(v) for dev, v in links.items()}


@dataclasses.dataclass(frozen=True)
class _Tables:
    """The kernel's routes packed for io_routes_load(), and the links: made
    off the datapath's thread, with the snapshot. 20,000 routes then take
    ~1 ms of C on the datapath's thread (one io_route_add() call each from
    Python took 55 ms there)."""

    routes: bytes
    n_routes: int
    nexthops: bytes
    n_nexthops: int
    links: dict
    neighbours: bytes          # struct io_neigh_entry[] of the data interfaces' neighbours
    neighbour_macs: dict       # (port, address) -> MAC (None: FAILED), as those entries have them


_ROUTE_KINDS = {"unicast": io.IO_ROUTE_FORWARD, "local": io.IO_ROUTE_LOCAL, "blackhole": io.IO_ROUTE_BLACKHOLE,
                "unreachable": io.IO_ROUTE_UNREACHABLE, "prohibit": io.IO_ROUTE_PROHIBIT}
_ROUTE_ENTRY = struct.Struct("=16sBBBB")      # struct io_route_entry
_NEXTHOP_ENTRY = struct.Struct("=16siI")      # struct io_nexthop_entry
_NEIGH_ENTRY = struct.Struct("=16s6sBBi")     # struct io_neigh_entry


def _pack_tables(snap: _kernel.Snapshot, ports: dict[str, int]) -> _Tables:
    """ports: data interface -> the datapath's port id; next hops through
    other interfaces get -1 (the kernel forwards those frames)."""
    routes, hops = bytearray(), bytearray()
    n_routes = n_hops = 0
    for r in snap.routes:
        if len(r.nexthops) > 255:
            continue
        net = r.network
        routes += _ROUTE_ENTRY.pack(net.network_address.packed, net.version, net.prefixlen,
                                    _ROUTE_KINDS.get(r.kind, io.IO_ROUTE_KERNEL), len(r.nexthops))
        n_routes += 1
        for h in r.nexthops:
            hops += _NEXTHOP_ENTRY.pack(h.gateway.packed if h.gateway is not None else b"",
                                        ports.get(h.dev, -1), h.weight)
            n_hops += 1
    neighbours, macs = bytearray(), {}
    for n in snap.neighbours:
        if n.dev in ports:   # the others' routes are the kernel's to follow
            neighbours += _NEIGH_ENTRY.pack(n.address.packed, n.mac or b"", n.address.version, n.mac is None,
                                            ports[n.dev])
            macs[(ports[n.dev], n.address)] = n.mac
    return _Tables(bytes(routes), n_routes, bytes(hops), n_hops, _links(snap, set(ports)), bytes(neighbours), macs)


def _read_kernel(ports: dict[str, int]) -> tuple[_kernel.Snapshot, _Tables]:
    """The kernel's tables, read and packed (run in a worker thread)."""
    snap = _kernel.snapshot()
    return snap, _pack_tables(snap, ports)


class _HostPorts:
    """What the XDP `ports` map steers to us: the (host address, proto,
    port) of live sessions whose source was rewritten to an address of this
    host (their replies are addressed to the host), and the ports of `real`
    translations. Sessions are counted per entry: sessions to different
    destinations share a port (SNAT allocates per destination), and the
    first of them to end must not take the entry from the others, whose
    replies the kernel would then answer with resets."""

    def __init__(self, steering) -> None:
        self.steering = steering
        self.count: collections.Counter = collections.Counter()
        self.real: set = set()   # the ports of `real` translations on host addresses: always steered

    def session(self, added: bool, entry: tuple) -> None:
        n = self.count[entry] + (1 if added else -1)
        if n > 0:
            self.count[entry] = n
            if n == 1:
                self.steering.add_port(entry)
        else:
            self.count.pop(entry, None)
            if entry not in self.real:
                self.steering.remove_port(entry)

    def sync(self, host: frozenset, real: set) -> None:
        """The host's addresses or the `real` translations changed."""
        self.real = real
        self.steering.set_host_ports({p for p in self.count if p[0] in host} | real)

    def __iter__(self):
        return iter(self.count)


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


class Appliance:
    def __init__(self, config: Config) -> None:
        self.config = config
        # `appliance cnat` changes: an overlay on the watched file, applied
        # after it at every reload, dropped at a restart (docs/operations.md)
        self.file_config = config
        self.overlay: list = []
        self.steering = Steering()
        self.plugins = Plugins(config.plugin_modules, config_path=config.path)
        self.core = NatCore(config, plugins=self.plugins)
        self.core.on_host_source = self._host_source
        self.tap: Optional[Tap] = None
        self.ctx = None
        self.ports = []
        self._snapshot = None
        self._host_ports = _HostPorts(self.steering)
        self.config_status = {"path": config.path, "reloads": 0, "rejected": 0, "last_error": None}
        self.kernel_status = {"snapshots": 0, "neighbour_updates": 0, "neighbour_use": 0, "errors": 0,
                              "last_error": None}
        self._config_seen: Optional[bytes] = None   # digest of the configuration file last applied
        self._reloading = trio.Lock()
        self._neigh: dict = {}   # (port, address) -> MAC (None: FAILED), as the datapath has it
        self._ifindex: dict[str, int] = {}        # data interface -> ifindex its sockets are bound to
        self.interface_state: dict[str, str] = {}  # "up", "gone" or "recreated"
        self._mtu_warned: set = set()             # (interface, MTU) pairs already warned about

    # -- set-up / tear-down --------------------------------------------------

    def open(self) -> None:
        if not self.config.interfaces:
            raise SystemExit(f"appliance: error: {self.config.path}: no [[interface]] to run on")
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
        self.ctx = io_ffi.gc(io.io_ctx_create(self.tap.fd, self.tap.mac, self.config.max_sessions),
                              io.io_ctx_destroy)
        io.io_set_nat(self.ctx, *self.core.session_get_pointer())
        key = 0
        for itf in self.config.interfaces:
            name = itf.name
            ifindex, mac, mtu, queues = _iface_info(name)
            self._ifindex[name] = ifindex
            self.interface_state[name] = "up"
            port_id = self.core.port(name)
            self.steering.set_ifbase(ifindex, key)
            for q in range(queues):
                mode = "zero-copy"
                p = io.io_port_open(self.ctx, name.encode(), q, port_id, self.steering.maps["xsks"], key,
                                    UMEM_RX_FRAMES, UMEM_TX_FRAMES, mac, mtu, 1)
                if p == io_ffi.NULL:   # the driver has no zero-copy (veth): copy mode
                    mode = "copy"
                    p = io.io_port_open(self.ctx, name.encode(), q, port_id, self.steering.maps["xsks"],
                                        key, UMEM_RX_FRAMES, UMEM_TX_FRAMES, mac, mtu, 0)
                if p == io_ffi.NULL:
                    err = io_ffi.errno
                    hint = (" (UMEM is locked memory: raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)"
                            if err == errno.ENOBUFS else "")
                    raise SystemExit(f"appliance: error: cannot open AF_XDP socket on {name} queue {q}: "
                                     f"{os.strerror(err)}{hint}")
                log.info("%s queue %d: AF_XDP socket in %s mode", name, q, mode)
                self.ports.append((name, q, p))
                key += 1
            mode = self.steering.attach(ifindex, name, itf.xdp_mode)
            log.info("%s: XDP attached in %s mode", name, mode)
        self.sync_kernel()
        # What exists now (modules, plugins, the configuration) lives as long
        # as the process: out of the cyclic collector's sight. Its full
        # collections took 8-13 ms here, longer than a socket's 8192 RX
        # frames last at 1 Mpps (8 ms); after freeze() none took 1 ms.
        gc.collect()
        gc.freeze()
        log.info("ready: %d interfaces, %d sockets", len(self.config.interfaces), len(self.ports))

    def close(self) -> None:
        self.steering.detach_all()
        for _, _, p in self.ports:
            io.io_port_close(p)
        self.ports.clear()
        if self.tap is not None:
            self.tap.close()
            self.tap = None

    def _host_source(self, added: bool, address, proto: int, port: int) -> None:
        try:
            self._host_ports.session(added, (address, proto, port))
        except SteeringError as exc:
            # the XDP ports map is full (STEER_MAX_PORTS): this session's
            # replies reach the kernel, not us; the appliance goes on
            self._kernel_error(exc)

    # -- kernel tables ---------------------------------------------------------

    def check_interfaces(self) -> None:
        """A data interface deleted at run time (a pod's veth, say) takes its
        sockets with it; one created again under the same name is a new
        interface without our XDP program or sockets. The others keep
        working either way. Say so once per change: it needs a restart."""
        for name, ifindex in self._ifindex.items():
            try:
                now = int((pathlib.Path("/sys/class/net") / name / "ifindex").read_text())
            except (OSError, ValueError):
                now = None
            state = "up" if now == ifindex else "gone" if now is None else "recreated"
            if state == self.interface_state.get(name):
                continue
            self.interface_state[name] = state
            if state == "gone":
                msg = f"data interface {name} is gone: its traffic stops, the other interfaces keep working"
            elif state == "recreated":
                msg = (f"data interface {name} was created again (ifindex {now}, was {ifindex}): it has no "
                       f"XDP program or AF_XDP socket of ours; restart the appliance to serve it")
            else:
                msg = f"data interface {name} is back (ifindex {ifindex})"
            log.warning("%s", msg)

    def _data_ports(self) -> dict[str, int]:
        return {name: self.core.port(name) for name in self.config.interface_names}

    def sync_kernel(self, read: Optional[tuple] = None, force: bool = False) -> None:
        """Copy the kernel's tables into the datapath and the XDP maps; read:
        what _read_kernel() returned, else they are read here."""
        snap, tables = read or _read_kernel(self._data_ports())
        self.check_interfaces()
        if snap == self._snapshot and not force:
            return
        self._snapshot = snap
        data = set(self.config.interface_names)
        rc = io.io_routes_load(self.ctx, io_ffi.from_buffer("struct io_route_entry[]", tables.routes),
                               tables.n_routes, io_ffi.from_buffer("struct io_nexthop_entry[]", tables.nexthops),
                               tables.n_nexthops)
        if rc != 0:   # counted; the other routes are in (ENOMEM: those before it)
            self._kernel_error(OSError(-rc if rc < 0 else errno.EINVAL,
                                       f"{os.strerror(-rc) if rc < 0 else f'{rc} routes refused'}"))
        io.io_port_addresses_clear(self.ctx)
        for dev, addr in snap.interface_addresses:      # global ones last: they win
            if dev in data:
                io.io_port_address(self.ctx, self.core.port(dev), addr.version, addr.packed)
        for dev, mtu in snap.mtus:
            if dev in data:
                io.io_port_set_mtu(self.ctx, self.core.port(dev), mtu)
                if mtu > MAX_MTU and (dev, mtu) not in self._mtu_warned:
                    self._mtu_warned.add((dev, mtu))
                    log.warning("data interface %s now has MTU %d: frames over %d bytes are lost "
                                "(io.xsk_rx_dropped); set it to %d or less", dev, mtu, MAX_RX_FRAME, MAX_MTU)
        for dev, mac in snap.macs:   # changed at run time: our frames and ARP/ND answers follow
            if dev in data:
                for name, _, p in self.ports:
                    if name == dev:
                        io.io_port_set_mac(p, mac)
        entries = len(tables.neighbours) // _NEIGH_ENTRY.size
        refused = io.io_neigh_load(self.ctx, io_ffi.from_buffer("struct io_neigh_entry[]", tables.neighbours),
                                   entries)
        self._neigh = dict(tables.neighbour_macs)
        if refused:   # counted; frames towards them go to the kernel
            self._kernel_error(OSError(errno.ENOSPC, f"{refused} neighbours refused (more than 32768)"))
        self.core.links = tables.links
        host = snap.addresses
        echo = frozenset(t.address for t in self.config.translations if t.kind == "real" and t.proto == "icmp")
        self.steering.set_addresses(set(host), self._nat_addresses(), echo)
        self.core.host_sources = frozenset(a.packed for a in host)
        self._host_ports.sync(host, {(t.address, 6 if t.proto == "tcp" else 17, t.port)
                                        for t in self.config.translations
                                        if t.kind == "real" and t.address in host and t.proto in ("tcp", "udp")})

    def apply_neighbours(self, changes: list) -> int:
        """Neighbours from netlink notifications, (ifindex, address, MAC),
        straight into the datapath; returns how many were new or changed (a
        state change with the same MAC is not)."""
        names = {i: n for n, i in self._ifindex.items()}
        done = 0
        for ifindex, addr, mac in changes:
            if ifindex not in names:
                continue
            port = self.core.port(names[ifindex])
            if self._neigh.get((port, addr), False) == mac:
                continue
            self._neigh_set(port, addr, mac)
            done += 1
        self.kernel_status["neighbour_updates"] += done
        return done

    def _neigh_set(self, port: int, addr, mac: Optional[bytes]) -> None:
        rc = io.io_neigh_set(self.ctx, addr.version, addr.packed, port, mac if mac is not None else io_ffi.NULL)
        if rc < 0:   # counted; frames towards it go to the kernel
            self._kernel_error(OSError(-rc, f"neighbour {addr}: {os.strerror(-rc)} (more than 32768)"))
            return
        self._neigh[(port, addr)] = mac

    def _nat_addresses(self) -> set:
        nat = {t.address for t in self.config.translations if t.kind == "vip"}
        sn = self.config.snat
        if sn is not None:
            nat.update(sn.addresses)
        return nat

    def io_counters(self) -> dict[str, int]:
        c = io.io_ctx_counters(self.ctx)
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
        """Frames received per AF_XDP socket: how RSS spread the traffic."""
        return [{"interface": name, "queue": q, "rx": io.io_port_rx(p)} for name, q, p in self.ports]

    # -- tasks -------------------------------------------------------------------

    async def rx_loop(self) -> None:
        """The established-flow loop runs in C (io_poll: receive from every
        socket round robin, NAT, forward, for up to POLL_BUDGET_NS per
        call); Python sees only new flows, idle periods and its turns to
        yield. One loop for all sockets: the process has one core, and a
        socket is on a wait queue only while every socket is idle."""
        batch = Batch(BATCH, 0)
        frames = batch.frames
        handles = [p for _, _, p in self.ports]
        ports = io_ffi.new("struct io_port *[]", handles)
        idle = _IdleWait([io.io_port_fd(p) for p in handles])
        state = io_ffi.new("struct io_poll_state *")
        nat, nat_fn = self.core.nat_process_pointer()
        poll, ctx, core, nports = io.io_poll, self.ctx, self.core, len(handles)
        io.io_timer_slack(RX_TIMER_SLACK_NS)
        clock = time.monotonic_ns
        try:
            deadline = clock() + POLL_BUDGET_NS
            while True:
                # The budget spans the new flows resolved in between: a flood
                # of them would otherwise return MISS, never BUDGET, and starve
                # every other task (timers, control socket, kernel follower).
                rc = poll(ctx, ports, nports, nat, nat_fn, frames, BATCH, RX_NAP_NS, RX_IDLE_NS,
                          max(0, deadline - clock()), state)
                if rc == io.IO_POLL_MISS:
                    core.resolve_miss(frames + (state.next - 1), state.now_ns)
                    continue
                core.drain_events()
                if rc == io.IO_POLL_IDLE:
                    io.io_flush(ctx)
                    await idle.wait()
                else:
                    await trio.lowlevel.checkpoint()
                deadline = clock() + POLL_BUDGET_NS
        finally:
            idle.close()

    async def timer_loop(self) -> None:
        while True:
            now = time.time()
            self.core.expire(now)
            await trio.sleep_until(trio.current_time() + (self.core.next_deadline(now) - now))

    async def kernel_loop(self) -> None:
        """Re-read the kernel's tables when netlink says they changed, or when
        frames went to the kernel for lack of a neighbour (it is resolving).
        A neighbour's notification (resolved, or a new MAC) goes straight
        into the datapath instead (apply_neighbours): no snapshot for it, and
        the frames towards a newly resolved backend stop going through the
        kernel within a millisecond rather than a snapshot's 30-50 ms.

        A neighbour that never answers (a backend that is down) keeps the
        "no neighbour" counter moving: looks prompted by the counter alone
        back off (0.1 s doubling to 3.2 s) while they find nothing new, so a
        dead backend does not cost ten snapshots (thirty `ip` runs) a
        second. Netlink's reports are followed at once, as ever."""
        mon = _kernel.Monitor()
        last_no_neigh = io.io_ctx_counters(self.ctx)[io.IO_C_TO_KERNEL_NO_NEIGH]
        wait, not_before = KERNEL_NEIGH_CHECK, 0.0
        next_read = 0.0
        try:
            while True:
                with trio.move_on_after(KERNEL_NEIGH_CHECK):
                    await trio.lowlevel.wait_readable(mon.fileno())
                notes = mon.drain()
                no_neigh = io.io_ctx_counters(self.ctx)[io.IO_C_TO_KERNEL_NO_NEIGH]
                if notes.neighbours and self.apply_neighbours(notes.neighbours):
                    last_no_neigh = no_neigh   # the kernel resolved what those frames waited for
                changed = notes.other
                if not changed and (no_neigh == last_no_neigh or trio.current_time() < not_before):
                    continue
                last_no_neigh = no_neigh
                await trio.sleep(KERNEL_DEBOUNCE)   # let a burst of changes settle
                await trio.sleep_until(next_read)   # a big table's reads: at most KERNEL_READ_SHARE of the time
                mon.drain()
                before = self._snapshot
                try:
                    started = trio.current_time()
                    read = await trio.to_thread.run_sync(_read_kernel, self._data_ports())  # ip blocks
                    next_read = started + (trio.current_time() - started) / KERNEL_READ_SHARE
                    snap = read[0]
                    self.kernel_status["snapshots"] += 1
                    self.sync_kernel(read)
                except _KERNEL_ERRORS as exc:
                    # the datapath keeps the tables it has; try again later
                    self._kernel_error(exc)
                    snap = before
                    changed = False
                if changed or snap != before:
                    wait, not_before = KERNEL_NEIGH_CHECK, 0.0
                else:
                    wait = min(wait * 2, KERNEL_NEIGH_BACKOFF)
                    not_before = trio.current_time() + wait
        finally:
            mon.close()

    def kernel_figures(self) -> dict:
        """kernel_status, and how many routes and neighbours the datapath holds."""
        routes, neighbours = io_ffi.new("uint32_t *"), io_ffi.new("uint32_t *")
        io.io_table_sizes(self.ctx, routes, neighbours)
        return dict(self.kernel_status, routes=routes[0], neighbours=neighbours[0])

    def _kernel_error(self, exc: BaseException) -> None:
        self.kernel_status["errors"] += 1
        self.kernel_status["last_error"] = f"{type(exc).__name__}: {exc}"
        n = self.kernel_status["errors"]
        if n == 1 or n % 1000 == 0:
            log.error("reading the kernel's tables or writing the XDP maps failed (%d so far; the datapath "
                      "keeps what it has): %s: %s", n, type(exc).__name__, exc)

    async def neighbour_use_loop(self) -> None:
        """Tell the kernel, once a period, which neighbours the datapath
        forwarded to (NTF_USE). It never sees that traffic itself, so its
        entries would age to STALE and stay there with their MACs: a backend
        that came back with a new MAC on the same address would be sent
        frames it never gets. Told they are in use, the kernel probes them as
        for its own traffic (confirmed, or FAILED within ~8 s, then resolved
        anew), and the notifications bring the result."""
        requests = _kernel.Requests()
        out = io_ffi.new("struct io_neigh_use[]", 4096)
        ifindex = {self.core.port(name): i for name, i in self._ifindex.items()}
        try:
            while True:
                await trio.sleep(NEIGH_USE_PERIOD)
                n = io.io_neigh_used(self.ctx, out, len(out))
                items = []
                for k in range(n):
                    e = out[k]
                    if e.port_id in ifindex:
                        raw = bytes(io_ffi.buffer(e.addr, 4 if e.family == 4 else 16))
                        items.append((ifindex[e.port_id], ipaddress.ip_address(raw)))
                if items:
                    requests.send(_kernel.neighbour_use_messages(items))
                    self.kernel_status["neighbour_use"] += len(items)
        finally:
            requests.close()

    async def config_loop(self) -> None:
        """Watch the configuration file; apply a valid new version, keep
        serving the last good one when the new one is invalid."""
        self._config_seen = self._digest(pathlib.Path(self.config.path))
        while True:
            await trio.sleep(CONFIG_POLL)
            await self.check_config()

    async def check_config(self, force: bool = False) -> None:
        """Reload the configuration file if it changed (force: SIGHUP, also
        when it did not). One reload at a time (the poll and SIGHUP)."""
        async with self._reloading:
            path = pathlib.Path(self.config.path)
            digest = self._digest(path)
            if digest is None or (digest == self._config_seen and not force):
                return
            # read it once it has been still for CONFIG_SETTLE: a file caught
            # half-written may parse, and its first half must not be applied
            for _ in range(int(CONFIG_SETTLE_MAX / CONFIG_SETTLE)):
                await trio.sleep(CONFIG_SETTLE)
                again = self._digest(path)
                if again == digest:
                    break
                digest = again
            if digest is None:
                return
            self._config_seen = digest
            await self.reload(path)

    @staticmethod
    def _digest(path: pathlib.Path) -> Optional[bytes]:
        try:
            return hashlib.sha256(path.read_bytes()).digest()
        except OSError:
            return None   # being replaced, or gone: keep the current config

    async def reload(self, path: pathlib.Path) -> bool:
        """Parsing and reading the kernel's tables run in worker threads:
        5,000 translations took 180 ms to parse, which the datapath's
        thread spent not polling (1.3 % of a 400 Mbit/s UDP stream lost per
        reload); applying them takes ~13 ms there."""
        try:
            new = await trio.to_thread.run_sync(_parse_reload, path)
            self.plugins.check(new)   # e.g. a selector no plugin provides
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            self.config_status["rejected"] += 1
            self.config_status["last_error"] = str(exc)
            log.error("configuration rejected, still serving the previous one: %s", exc)
            print(f"appliance: configuration rejected, still serving the previous one: {exc}", flush=True)
            return False
        for what, old_v, new_v in (("[[interface]]", self.config.interfaces, new.interfaces),
                                   ("[plugins] modules", self.config.plugin_modules, new.plugin_modules),
                                   ("[sessions] max", self.config.max_sessions, new.max_sessions)):
            if old_v != new_v:
                log.warning("%s changed in %s: takes effect at restart", what, path)
        new = dataclasses.replace(new, interfaces=self.config.interfaces, plugin_modules=self.config.plugin_modules,
                                  max_sessions=self.config.max_sessions)
        self.file_config = new
        new = self._with_overlay(new)
        await self._switch_to(new)
        self.config_status["reloads"] += 1
        self.config_status["last_error"] = None
        print(f"appliance: configuration reloaded from {path}: {len(new.translations)} translations", flush=True)
        return True

    async def _switch_to(self, config: Config) -> None:
        """Serve a new configuration (a reload, a cnat change): the core's,
        then the vips and real-translation ports in the XDP maps."""
        self.config = config
        self.core.apply_config(config)
        try:
            self.sync_kernel(await trio.to_thread.run_sync(_read_kernel, self._data_ports()), force=True)
        except _KERNEL_ERRORS as exc:
            self._kernel_error(exc)

    def _with_overlay(self, file_config: Config) -> Config:
        """The file's configuration with the runtime changes that still fit
        it; one that no longer does (the file now has that translation) is
        dropped, with a warning: the file is the declared truth."""
        kept: list = []
        for cmd in self.overlay:
            if _cnat.already_in(_cnat.apply(file_config, kept), cmd):
                log.info("runtime change 'cnat %s' is in %s now", _cnat.render(cmd), file_config.path)
                continue
            try:
                cfg = _cnat.apply(file_config, kept + [cmd])
                self.plugins.check(cfg)
            except ConfigError as exc:
                log.warning("runtime change 'cnat %s' dropped: it no longer fits %s (%s)",
                            _cnat.render(cmd), file_config.path, exc.reason)
                continue
            kept.append(cmd)
        self.overlay = kept
        return _cnat.apply(file_config, kept)

    def _with_backend_settings(self, config: Config) -> Config:
        """The configuration with the weights and states `cnat backend set`
        gave backends at run time, as `cnat save` writes them."""
        live = self.core.backends
        out = []
        for t in config.translations:
            s = live.get(t.name)
            if s is None:
                out.append(t)
                continue
            bs = []
            for i, b in enumerate(t.backends):
                state = s.state(i) if s.set_by(i) == "cnat" else b.state
                bs.append(dataclasses.replace(b, weight=s.weights[i], state=state))
            out.append(dataclasses.replace(t, backends=tuple(bs)))
        return dataclasses.replace(config, translations=tuple(out))

    async def cnat(self, words: list[str]) -> dict:
        """An `appliance cnat` command: a change applied at once (new flows;
        sessions follow their drain policies), or a question."""
        try:
            cmd = _cnat.parse(words)
        except _cnat.CnatSyntaxError as exc:
            return {"error": str(exc)}
        if isinstance(cmd, _cnat.Save):   # with what `cnat backend set` changed (not what health checks did)
            return {"toml": _cnat.to_toml(self._with_backend_settings(self.config)),
                    "runtime": [_cnat.render(c) for c in self.overlay]}
        if isinstance(cmd, _cnat.Show):
            if cmd.what == "translation":
                return {**self.core.describe_translations(),
                        "runtime": [_cnat.render(c) for c in self.overlay]}
            if cmd.what == "snat":
                sn = self.config.snat
                return {"snat": None if sn is None else {
                    "ip4": str(sn.ip4) if sn.ip4 else None, "ip6": str(sn.ip6) if sn.ip6 else None,
                    "interfaces": list(sn.interfaces), "exclude": [str(n) for n in sn.exclude],
                    "policy": sn.policy}, "runtime": [_cnat.render(c) for c in self.overlay
                                                      if isinstance(c, (_cnat.SnatWith, _cnat.SnatExclude))]}
            return {"error": "cnat show session: ask with `appliance cnat show session` (streamed)"}
        if isinstance(cmd, _cnat.BackendSet):
            s = self.core.backends.get(cmd.translation)
            i = None if s is None else s.index(cmd.backend)
            if i is None:
                return {"error": f"no backend '{cmd.backend}' in a translation '{cmd.translation}'"}
            if cmd.action == "weight":
                s.set_weight(i, cmd.weight)
            else:
                s.set_state(i, {"drain": "draining", "down": "down", "up": None}[cmd.action], by="cnat")
            return {"ok": _cnat.render(cmd), "backend": s.describe(i)}
        try:
            cfg = _cnat.apply(self.file_config, self.overlay + [cmd])
            self.plugins.check(cfg)
        except ConfigError as exc:
            return {"error": str(exc)}
        self.overlay = _cnat.simplify(self.overlay + [cmd])
        await self._switch_to(cfg)
        log.warning("runtime change: cnat %s", _cnat.render(cmd))
        return {"ok": _cnat.render(cmd), "translations": len(cfg.translations)}

    # -- control socket ----------------------------------------------------------

    def answer(self, command: str) -> dict:
        """A control-socket request: "stats" or "translations" ("sessions"
        is streamed: :meth:`send_sessions`)."""
        if command == "stats":
            return {"nat": self.core.statistics().as_dict(), "io": self.io_counters(),
                    "sockets": self.socket_counters(), "xdp": self.steering.counters(),
                    "interfaces": dict(self.interface_state), "kernel": self.kernel_figures(),
                    "config": dict(self.config_status)}
        if command == "translations":   # with each backend's state and figures
            return self.core.describe_translations()
        return {"error": f"unknown command {command!r} (sessions, stats, translations)"}

    async def send_sessions(self, stream, args: list[str]) -> None:
        """Answer "sessions [limit=N] [match=ADDRESS]": at most N sessions
        (0: all) in table order, those with ADDRESS on either side of either
        direction if given, as one JSON object with the table's total. A
        session costs 20-40 us to describe, so the table is walked in slices
        with the datapath running in between (100,000 sessions once stalled
        it for ~2 s); the answer is no atomic snapshot."""
        limit, match = SESSIONS_LIMIT, None
        for arg in args:
            key, _, value = arg.partition("=")
            try:
                if key == "limit":
                    limit = int(value)
                elif key == "match":
                    match = ipaddress.ip_address(value)
                else:
                    raise ValueError(f"unknown argument {arg!r}")
            except ValueError as exc:
                await stream.send_all(json.dumps({"error": f"sessions: {arg}: {exc}"}).encode() + b"\n")
                return
        total = self.core.statistics().sessions
        await stream.send_all(b'{"total": %d, "sessions": [' % total)
        shown, i, nat = 0, 0, self.core
        while limit == 0 or shown < limit:
            chunk = []
            for _ in range(SESSIONS_SLICE):
                i = nat.next_session_index(i)
                if i is None:
                    break
                s = nat.session(i)
                i += 1
                if s is None or (match is not None and match not in (s.src, s.dst, s.new_src, s.new_dst)):
                    continue
                chunk.append(json.dumps(_session_json(s)))
                if len(chunk) + shown == limit:
                    break
            if chunk:
                await stream.send_all((", " if shown else "").encode() + ", ".join(chunk).encode())
                shown += len(chunk)
            if i is None or (limit and shown >= limit):
                break
            await trio.sleep(0)   # the datapath's turn
        await stream.send_all(b'], "shown": %d}\n' % shown)

    async def control_loop(self, sock: socket.socket, path: str) -> None:
        """Answer `appliance show` on a :func:`_listening_socket`."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._control_client, stream)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            if os.path.exists(path):
                os.unlink(path)

    async def _control_client(self, stream) -> None:
        async with stream:
            try:
                data = b""
                with trio.move_on_after(5):
                    while not data.endswith(b"\n") and len(data) < 65536:
                        chunk = await stream.receive_some(1024)
                        if not chunk:
                            break
                        data += chunk
                text = data.decode(errors="replace")
                command, *args = text.split() or [""]
                if command == "sessions":
                    await self.send_sessions(stream, args)
                elif command == "cnat":   # cnat ["word", ...]: words may hold spaces (backend names)
                    try:
                        words = json.loads(text[len("cnat"):])
                        assert isinstance(words, list) and all(isinstance(w, str) for w in words)
                    except (ValueError, AssertionError):
                        answer = {"error": 'cnat: expected a JSON list of words: cnat ["show", "translation"]'}
                    else:
                        async with self._reloading:    # one change at a time, file reloads included
                            answer = await self.cnat(words)
                    await stream.send_all(json.dumps(answer).encode() + b"\n")
                else:
                    await stream.send_all(json.dumps(self.answer(command)).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass   # the asker went away: its business, not the appliance's


def _session_json(s) -> dict:
    return {"index": s.index, "proto": s.proto, "src": f"{s.src}", "sport": s.sport, "dst": f"{s.dst}",
            "dport": s.dport, "new_src": f"{s.new_src}", "new_sport": s.new_sport, "new_dst": f"{s.new_dst}",
            "new_dport": s.new_dport, "translation": s.translation, "backend": s.backend, "state": s.state,
            "kind": s.kind, "expires_in": round(s.expires - time.time(), 3), "packets": list(s.packets)}


def _parse_reload(path: pathlib.Path) -> Config:
    """A new version of the watched file. An empty one is refused: far more
    often a file caught between an editor's truncate and write than a wish
    to stop serving everything (a comment makes an empty configuration)."""
    text = path.read_text()
    if not text.strip():
        raise ConfigError(str(path), "", "the file is empty (caught while being written?); to run with "
                          "nothing configured, write a comment in it. Replace the file atomically: write "
                          "the new version beside it, then rename it over")
    return parse_config(text, str(path))


async def query(path: str, command: str) -> dict:
    """Ask a running appliance over its control socket."""
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(command.encode() + b"\n")
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def _raise_priority(nice: int) -> None:
    """Delivering a frame to a local process wakes that process, and Linux
    places and runs the woken task on the waker's CPU: at nice 0 every
    sendto() could hand our CPU to the receiver for a time slice. Measured
    (a UDP echo server behind the appliance, nothing pinned, 100 kpps):
    44 % of frames lost for want of RX buffers at nice 0, 0.7 % at -10,
    none at -19."""
    if nice == 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning("cannot set niceness %d (%s): processes woken by our packets may preempt the "
                    "datapath; grant CAP_SYS_NICE or pin the appliance to its own CPU", nice, exc.strerror)


# How long a stop with --state-file keeps dropping the traffic it would have
# handled: the next start (1-2 s here) replaces the program before that.
STATE_HOLD_SECONDS = 5.0


def _control_socket(path: str, group: Optional[int]) -> socket.socket:
    """The control socket: root's (and group's) only, mode 0660 (0600
    without a group). The default directory (/run/appliance) is made if
    missing; another missing one is the operator's typo: an error."""
    from ._controlpath import CONTROL_DIR

    if os.path.dirname(os.path.abspath(path)) == CONTROL_DIR:
        os.makedirs(CONTROL_DIR, mode=0o755, exist_ok=True)
    old = os.umask(0o177)     # no moment where others could connect
    try:
        sock = _listening_socket(socket.AF_UNIX, path)
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, group)
        os.chmod(path, 0o660)
    return sock


def _listening_socket(family: int, address) -> socket.socket:
    """A listening socket for the control socket or the metrics, bound
    before the loop starts so that a taken port or a bad path is a clear
    error at start (OSError), not a failed task."""
    if family == socket.AF_UNIX and os.path.exists(address):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(address)
        except OSError:
            os.unlink(address)   # left by a killed run: nobody answers
        else:   # not ours to take: the running appliance would lose it
            raise OSError(errno.EADDRINUSE, "another appliance is serving it")
        finally:
            probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def _restore_sessions(app: Appliance, path: str) -> None:
    """Sessions a clean stop saved (run --state-file), put back before the
    first frame is read; the file is used once."""
    p = pathlib.Path(path)
    if not p.exists():
        return
    try:
        restored, expired, refused = app.core.import_sessions(p.read_bytes(), time.time())
    except (OSError, ValueError) as exc:
        log.warning("%s: sessions not restored: %s", path, exc)
    else:
        log.warning("restored %d sessions from %s (%d expired meanwhile, %d refused)", restored, path, expired,
                    refused)
    try:
        p.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("%s: not removed: %s", path, exc)


def _save_sessions(app: Appliance, path: str) -> None:
    """At a clean stop: save the sessions for the next start, and leave the
    steering program holding (dropping) what it would give the appliance,
    so that the kernel does not forward it untranslated in between: a
    backend's segment reaching a client untranslated makes it reset."""
    tmp = pathlib.Path(path + ".tmp")
    try:
        tmp.write_bytes(app.core.export_sessions())
        tmp.replace(path)
    except OSError as exc:
        log.error("%s: sessions not saved: %s", path, exc)
        tmp.unlink(missing_ok=True)
        return
    saved = app.core.statistics().sessions
    try:
        app.steering.hold(STATE_HOLD_SECONDS)
    except SteeringError as exc:   # then the program is detached as at any stop
        log.error("saved %d sessions to %s, but %s: the kernel forwards the appliance's traffic until the "
                  "next start", saved, path, exc)
        return
    log.warning("saved %d sessions to %s; the XDP program holds the appliance's traffic for %.0f s",
                saved, path, STATE_HOLD_SECONDS)


async def run(config: Config, ready_file: Optional[str] = None, control: Optional[str] = None,
              nice: int = 0, state_file: Optional[str] = None,
              metrics: Optional[tuple[str, int]] = None, control_group: Optional[int] = None) -> int:
    _raise_priority(nice)
    # The datapath thread needs the GIL back after each io_poll() call; a
    # worker thread (the kernel snapshot parses `ip -j` output) would keep it
    # for up to the switch interval, 5 ms by default, while the RX rings
    # fill. 0.5 ms bounds that stall.
    sys.setswitchinterval(0.0005)
    for flag, path in (("--state-file", state_file), ("--ready-file", ready_file)):
        if path and (pathlib.Path(path).is_dir() or not pathlib.Path(path).resolve().parent.is_dir()):
            why = "is a directory" if pathlib.Path(path).is_dir() else "its directory does not exist"
            raise SystemExit(f"appliance: error: {flag} {path}: {why}")
    metrics_sock = control_sock = None
    try:
        if metrics:
            family = socket.AF_INET6 if ":" in metrics[0] else socket.AF_INET
            metrics_sock = _listening_socket(family, metrics)
        if control:
            control_sock = _control_socket(control, control_group)
    except OSError as exc:
        what = f"--metrics {metrics[0]}:{metrics[1]}" if metrics and metrics_sock is None else f"--control {control}"
        raise SystemExit(f"appliance: error: {what}: {exc.strerror or exc}")
    app = Appliance(config)
    serving = False
    try:
        app.open()
        if state_file:
            _restore_sessions(app, state_file)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.rx_loop)
            nursery.start_soon(app.timer_loop)
            nursery.start_soon(app.kernel_loop)
            nursery.start_soon(app.neighbour_use_loop)
            if config.path and pathlib.Path(config.path).is_file():
                nursery.start_soon(app.config_loop)
            for task in app.plugins.background_tasks():
                nursery.start_soon(task)
            if control_sock is not None:
                nursery.start_soon(app.control_loop, control_sock, control)
            if metrics_sock is not None:
                nursery.start_soon(_metrics.serve, lambda: app.answer("stats"), metrics_sock)
            print(f"appliance: ready on {', '.join(config.interface_names)}", flush=True)
            serving = True
            if ready_file:
                try:
                    pathlib.Path(ready_file).write_text("ready\n")
                except OSError as exc:   # serving anyway: the file is for whoever waits on it
                    log.error("--ready-file %s: %s", ready_file, exc)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for sig in signals:
                    if sig == signal.SIGHUP:   # reload now, as daemons do
                        if config.path and pathlib.Path(config.path).is_file():
                            await app.check_config(force=True)
                        continue
                    log.info("signal %s: stopping", sig)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        # read before close: the sockets' own counters go with the sockets
        final = {"nat": app.core.statistics().as_dict(), "io": app.io_counters(),
                 "sockets": app.socket_counters(), "xdp": app.steering.counters(),
                 "interfaces": dict(app.interface_state), "kernel": app.kernel_figures()} if app.ctx else None
        if state_file and serving:   # a start that failed half-way has nothing to hand over
            _save_sessions(app, state_file)
        app.close()
        for sock in (metrics_sock, control_sock):
            if sock is not None:
                sock.close()
        if control_sock is not None and os.path.exists(control):
            os.unlink(control)   # control_loop removes it too, if it ran
    st = app.core.statistics()
    print(f"appliance: stopped; sessions created {st.sessions_created}, expired {st.sessions_expired}, "
          f"translated {st.counters['translated']}, passed {st.counters['passed']}, "
          f"dropped {st.counters['dropped']}", flush=True)
    print("appliance: final statistics " + json.dumps(final, sort_keys=True), flush=True)
    return 0
