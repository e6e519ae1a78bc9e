"""Following the kernel: addresses, routes and neighbours of the appliance's
network namespace.

The kernel stays the control plane: operators configure addresses and
routes with `ip`, the kernel resolves neighbours, and the appliance copies
the tables into its C forwarding step (io_routes_load / io_neigh_load, and
io_neigh_set for one neighbour's notification) and its XDP maps.
:class:`Monitor` listens to the kernel's rtnetlink multicast groups (links,
addresses, routes, neighbours). A neighbour added or given a
new MAC is applied from its notification at once (the first frames towards
a new backend wait for it); any other change triggers a new snapshot,
dumped with iproute2's JSON output. Nothing is polled.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
import struct
import subprocess


@dataclasses.dataclass(frozen=True)
class Nexthop:
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dev: str | None             # None: the kernel's to follow (a gateway of the other family)
    weight: int = 1


@dataclasses.dataclass(frozen=True)
class Route:
    """A route of the main table (or a local one). ``kind`` is the kernel's
    route type: "unicast" (through ``nexthops``; several: multipath),
    "local", "blackhole", "unreachable", "prohibit", "throw", or "dead" (a
    unicast route whose next hops are all down); any other type is left to
    the kernel."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    kind: str = "unicast"
    nexthops: tuple = ()
    metric: int = 0


def _route(r: dict, family: str) -> Route | None:
    dst = r.get("dst")
    if dst is None:
        return None
    if dst == "default":
        dst = "0.0.0.0/0" if family == "-4" else "::/0"
    try:
        net = ipaddress.ip_network(dst, strict=False)
    except ValueError:
        return None
    kind = r.get("type", "unicast")
    hops = []
    for h in r.get("nexthops", [r]) if kind == "unicast" else []:
        if "dead" in h.get("flags", ()):       # its interface is down: the kernel skips it
            continue
        gw, dev = h.get("gateway"), h.get("dev")
        if "via" in h:                         # a gateway of the other family (RFC 5549)
            gw, dev = None, None
        hops.append(Nexthop(ipaddress.ip_address(gw) if gw else None, dev, int(h.get("weight", 1))))
    if kind == "unicast" and not hops:
        kind = "dead"                          # every next hop is down: the kernel's
    return Route(net, kind, tuple(hops), int(r.get("metric", 0)))


@dataclasses.dataclass(frozen=True)
class Neighbour:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    dev: str
    mac: bytes | None           # None: the kernel failed to resolve it


@dataclasses.dataclass(frozen=True)
class Snapshot:
    # (interface, address) pairs, global addresses after link-local ones
    interface_addresses: tuple = dataclasses.field(compare=False)
    routes: tuple = dataclasses.field(compare=False)
    neighbours: tuple = dataclasses.field(compare=False)
    mtus: tuple = dataclasses.field(compare=False)   # (interface, mtu) pairs
    macs: tuple = dataclasses.field(compare=False)   # (interface, MAC) pairs of Ethernet links
    # Snapshots are equal when their contents are, compared by this hash of
    # them: it is made where the snapshot is taken, off the datapath's
    # thread (comparing 20,000 routes field by field took 28 ms).
    digest: int = 0

    @property
    def addresses(self) -> frozenset:
        """Every address of the host, whatever its interface."""
        return frozenset(a for _, a in self.interface_addresses)


def _ip_json(*args: str) -> list:
    r = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    if r.returncode != 0 and "table" in args and "FIB table does not exist" in r.stderr:
        return []   # IPv4's local table appears with the first IPv4 address (lo's 127.0.0.1)
    if r.returncode != 0:
        raise OSError(f"ip -j {' '.join(args)}: {r.stderr.strip() or f'exit status {r.returncode}'}")
    return json.loads(r.stdout or "[]")


def snapshot() -> Snapshot:
    by_dev = []
    mtus = []
    macs = []
    for link in _ip_json("addr", "show"):
        if "mtu" in link:
            mtus.append((link["ifname"], int(link["mtu"])))
        if link.get("link_type") == "ether" and "address" in link:
            macs.append((link["ifname"], bytes.fromhex(link["address"].replace(":", ""))))
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6"):
                by_dev.append((link["ifname"], ipaddress.ip_address(a["local"])))
    by_dev.sort(key=lambda pair: not pair[1].is_link_local)
    addrs = {a for _, a in by_dev}
    routes = []
    for fam in ("-4", "-6"):
        # local-table routes of type local (AnyIP prefixes; host addresses
        # are added below), then the main table, lowest metric first
        got = [_route(r, fam) for r in _ip_json(fam, "route", "show", "table", "local", "type", "local")]
        got += sorted((_route(r, fam) for r in _ip_json(fam, "route", "show", "table", "main")),
                      key=lambda r: r.metric if r else 0)
        # link-local destinations are never forwarded: the kernel's
        routes += [r for r in got if r is not None and not r.network.is_link_local]
    for a in addrs:
        routes.append(Route(ipaddress.ip_network(a), "local"))
    neigh = []
    for n in _ip_json("neigh", "show"):
        mac = n.get("lladdr")
        state = n.get("state", [])
        if "FAILED" in state:   # resolution failed: no MAC, the datapath answers "host unreachable"
            neigh.append(Neighbour(ipaddress.ip_address(n["dst"]), n["dev"], None))
            continue
        if not mac or "INCOMPLETE" in state:
            continue
        neigh.append(Neighbour(ipaddress.ip_address(n["dst"]), n["dev"], bytes.fromhex(mac.replace(":", ""))))
    tables = (tuple(by_dev), tuple(routes), tuple(neigh), tuple(mtus), tuple(macs))
    return Snapshot(*tables, digest=hash(tables))


# rtnetlink multicast groups (linux/rtnetlink.h)
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR
          | RTMGRP_IPV6_ROUTE)


RTM_NEWNEIGH = 28
NDA_DST, NDA_LLADDR = 1, 2
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20


@dataclasses.dataclass
class Changes:
    """What a batch of netlink notifications says. ``neighbours``: neighbours
    resolved or given a new MAC, as (ifindex, address, MAC), in order;
    ``other``: anything else (links, addresses, routes, neighbours failed or
    deleted, or notifications lost), which takes a new snapshot."""

    neighbours: list = dataclasses.field(default_factory=list)
    other: bool = False


def parse_notifications(data: bytes, out: Changes) -> None:
    """Add one recv()'s worth of rtnetlink messages to ``out``."""
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16 or off + length > len(data):
            out.other = True
            return
        if kind != RTM_NEWNEIGH:
            out.other = True
        elif length >= 28:
            family, ifindex, state = struct.unpack_from("=B3xiH", data, off + 16)
            addr = mac = None
            a = off + 28
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype == NDA_DST:
                    addr = data[a + 4:a + alen]
                elif atype == NDA_LLADDR:
                    mac = data[a + 4:a + alen]
                a += (alen + 3) & ~3
            if state & NUD_FAILED:
                # `ip neigh flush` says FAILED, then deleted: not a failure
                # to answer "host unreachable" for; a snapshot tells them apart
                out.other = True
            elif addr is not None and len(addr) in (4, 16) and family in (2, 10) and mac is not None \
                    and len(mac) == 6 and not state & NUD_INCOMPLETE:
                out.neighbours.append((ifindex, ipaddress.ip_address(addr), mac))
        off += (length + 3) & ~3


NTF_USE = 0x01
NLM_F_REQUEST, NLM_F_REPLACE = 0x1, 0x100


def neighbour_use_messages(items) -> bytes:
    """RTM_NEWNEIGH requests with NTF_USE for (ifindex, address) pairs: the
    kernel treats each entry as if it had sent a packet through it (a STALE
    one goes to DELAY, then PROBE: confirmed, or FAILED), and changes no
    state itself. An entry gone since gets ENOENT, which nobody needs."""
    out = []
    for seq, (ifindex, addr) in enumerate(items, 1):
        raw = addr.packed
        attr = struct.pack("=HH", 4 + len(raw), NDA_DST) + raw
        body = struct.pack("=BxxxiHBB", 2 if addr.version == 4 else 10, ifindex, 0, NTF_USE, 0) + attr
        out.append(struct.pack("=IHHII", 16 + len(body), RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_REPLACE, seq, 0)
                   + body)
    return b"".join(out)


class Requests:
    """A netlink socket for requests whose answers do not matter."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.setblocking(False)

    def send(self, messages: bytes) -> None:
        """Send, then drop whatever answers are queued (errors included)."""
        try:
            self.sock.send(messages)
        except OSError:   # a full buffer (or ENOBUFS): the next period asks again
            pass
        while True:
            try:
                self.sock.recv(65536)
            except OSError:   # nothing left (EAGAIN), or an error nobody needs
                return

    def close(self) -> None:
        self.sock.close()


class Monitor:
    """A netlink socket subscribed to the kernel's table changes."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, GROUPS))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> Changes:
        """Read every pending notification."""
        out = Changes()
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:   # ENOBUFS: we missed some; a snapshot covers it
                out.other = True
                return out
            parse_notifications(data, out)

    def close(self) -> None:
        self.sock.close()
