"""The control plane's view of the kernel: its tables (routes, neighbours,
addresses, MTUs, MACs) read with `ip -j` and packed in a worker thread,
then applied to the datapath's tables and the XDP maps (sync_kernel); the
netlink follower (kernel_loop), neighbours straight from netlink
(apply_neighbours) and the neighbours in use told back to the kernel
(neighbour_use_loop).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import pathlib
import subprocess
from typing import Optional

import trio

from .. import _kernel
from ..io_uring._binding import ffi as io_ffi
from ..io_uring._binding import lib as io
from ..io_uring.xdp._steering import SteeringError
from ._datapath import MAX_MTU, MAX_RX_FRAME

log = logging.getLogger("appliance.run")

KERNEL_DEBOUNCE = 0.02    # seconds: netlink changes come in bursts
# Reading the kernel's tables runs in a worker thread, but parsing holds the
# GIL: with 20,000 routes a read takes ~0.45 s, and ten route changes a
# second kept the datapath's thread short of the GIL (11 % of a 400 Mbit/s
# UDP stream lost). Reads take at most this share of the time.
KERNEL_READ_SHARE = 0.2
KERNEL_NEIGH_CHECK = 0.1  # seconds: how often to look at the "no neighbour" counter
KERNEL_NEIGH_BACKOFF = 3.2  # seconds: the longest wait when such looks find nothing new
NEIGH_USE_PERIOD = 1.0    # seconds: how often the kernel hears which neighbours we forward to

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

    routes: object             # struct io_route_entry[n_routes] (cffi)
    n_routes: int
    nexthops: object           # struct io_nexthop_entry[n_nexthops], the routes' in their order
    n_nexthops: int
    links: dict
    neighbours: object         # struct io_neigh_entry[n_neighbours] of the data interfaces' neighbours
    n_neighbours: int
    neighbour_macs: dict       # (port, address) -> MAC (None: FAILED), as those entries have them


_ROUTE_KINDS = {"unicast": io.IO_ROUTE_FORWARD, "local": io.IO_ROUTE_LOCAL, "blackhole": io.IO_ROUTE_BLACKHOLE,
                "unreachable": io.IO_ROUTE_UNREACHABLE, "prohibit": io.IO_ROUTE_PROHIBIT}


def _pack_tables(snap: _kernel.Snapshot, ports: dict[str, int]) -> _Tables:
    """ports: data interface -> the datapath's port id; next hops through
    other interfaces get -1 (the kernel forwards those frames). The arrays
    come zeroed: an IPv4 address fills 4 of its 16 bytes, a FAILED
    neighbour has no MAC."""
    kept = [r for r in snap.routes if len(r.nexthops) <= 255]
    routes = io_ffi.new("struct io_route_entry[]", len(kept))
    hops = io_ffi.new("struct io_nexthop_entry[]", sum(len(r.nexthops) for r in kept))
    k = 0
    for i, r in enumerate(kept):
        net = r.network
        e = routes[i]
        e.prefix = net.network_address.packed
        e.family = net.version
        e.plen = net.prefixlen
        e.kind = _ROUTE_KINDS.get(r.kind, io.IO_ROUTE_KERNEL)
        e.n_nh = len(r.nexthops)
        for h in r.nexthops:
            x = hops[k]
            if h.gateway is not None:
                x.gw = h.gateway.packed
            x.port_id = ports.get(h.dev, -1)
            x.weight = h.weight
            k += 1
    ours = [n for n in snap.neighbours if n.dev in ports]   # the others' routes are the kernel's to follow
    neighbours, macs = io_ffi.new("struct io_neigh_entry[]", len(ours)), {}
    for i, n in enumerate(ours):
        e = neighbours[i]
        e.addr = n.address.packed
        if n.mac is not None:
            e.mac = n.mac
        e.family = n.address.version
        e.failed = n.mac is None
        e.port_id = ports[n.dev]
        macs[(ports[n.dev], n.address)] = n.mac
    return _Tables(routes, len(kept), hops, k, _links(snap, set(ports)), neighbours, len(ours), macs)


def _read_kernel(ports: dict[str, int]) -> tuple[_kernel.Snapshot, _Tables]:
    """The kernel's tables, read and packed (run in a worker thread)."""
    snap = _kernel.snapshot()
    return snap, _pack_tables(snap, ports)


class KernelTables:
    """The kernel tables' part of :class:`~appliance.runtime.Appliance`
    (its state: _snapshot, _neigh, kernel_status, _mtu_warned)."""

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
            self.bgp_changed()   # a gone data interface withdraws the vips
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
        rc = io.io_routes_load(self.ctx, tables.routes, tables.n_routes, tables.nexthops, tables.n_nexthops)
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
        refused = io.io_neigh_load(self.ctx, tables.neighbours, tables.n_neighbours)
        self._neigh = dict(tables.neighbour_macs)
        if refused:   # counted; frames towards them go to the kernel
            self._kernel_error(OSError(errno.ENOSPC, f"{refused} neighbours refused (more than 32768)"))
        self.core.links = tables.links
        host = snap.addresses
        echo = frozenset(t.address for t in self.config.translations if t.kind == "real" and t.proto == "icmp")
        self.steering.set_addresses(set(host), self._nat_addresses(), echo)
        self.core.host_sources = frozenset(a.packed for a in host)
        self.sync_real_ports()

    def sync_real_ports(self) -> None:
        """The host ports of `real` translations steered to the appliance:
        the configuration's, and those of removed ones while their sessions
        remain (the kernel, which has no socket for them, would reset
        them); those are let go once drained (release_drained_ports)."""
        host = self._snapshot.addresses if self._snapshot is not None else ()
        lingering = [t for t in self.core.lingering() if t.kind == "real"]
        self._lingering_real = bool(lingering)
        self._host_ports.sync(host, {(t.address, 6 if t.proto == "tcp" else 17, t.port)
                                     for t in (*self.config.translations, *lingering)
                                     if t.kind == "real" and t.address in host and t.proto in ("tcp", "udp")})

    def release_drained_ports(self) -> None:
        """From the timer loop: a removed `real` translation's port goes
        back to the host when its last session has ended."""
        if self._lingering_real and not any(t.kind == "real" for t in self.core.lingering()):
            self.sync_real_ports()

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
        last_no_neigh = self.io_counter(io.IO_C_TO_KERNEL_NO_NEIGH)
        wait, not_before = KERNEL_NEIGH_CHECK, 0.0
        next_read = 0.0
        try:
            while True:
                with trio.move_on_after(KERNEL_NEIGH_CHECK):
                    await trio.lowlevel.wait_readable(mon.fileno())
                notes = mon.drain()
                no_neigh = self.io_counter(io.IO_C_TO_KERNEL_NO_NEIGH)
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
