"""Following the kernel: addresses, routes and neighbours of the appliance's
network namespace.

The kernel stays the control plane: operators configure addresses and
routes with `ip`, the kernel resolves neighbours, and the appliance copies
the tables into its C forwarding step (io_route_add / io_neigh_set) and its
XDP maps. :class:`Monitor` listens to the kernel's rtnetlink multicast
groups (links, addresses, routes, neighbours); a change triggers a new
snapshot, dumped with iproute2's JSON output. Nothing is polled.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import subprocess


@dataclasses.dataclass(frozen=True)
class Route:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dev: str | None
    local: bool = False


@dataclasses.dataclass(frozen=True)
class Neighbour:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    dev: str
    mac: bytes | None           # None: the kernel failed to resolve it


@dataclasses.dataclass(frozen=True)
class Snapshot:
    # (interface, address) pairs, global addresses after link-local ones
    interface_addresses: tuple
    routes: tuple
    neighbours: tuple
    mtus: tuple                 # (interface, mtu) pairs

    @property
    def addresses(self) -> frozenset:
        """Every address of the host, whatever its interface."""
        return frozenset(a for _, a in self.interface_addresses)


def _ip_json(*args: str) -> list:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def snapshot() -> Snapshot:
    by_dev = []
    mtus = []
    for link in _ip_json("addr", "show"):
        if "mtu" in link:
            mtus.append((link["ifname"], int(link["mtu"])))
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6"):
                by_dev.append((link["ifname"], ipaddress.ip_address(a["local"])))
    by_dev.sort(key=lambda pair: not pair[1].is_link_local)
    addrs = {a for _, a in by_dev}
    routes = []
    for fam in ("-4", "-6"):
        for r in _ip_json(fam, "route", "show", "table", "main"):
            dst = r.get("dst")
            if dst is None or r.get("type", "unicast") not in ("unicast",):
                continue
            if dst == "default":
                dst = "0.0.0.0/0" if fam == "-4" else "::/0"
            try:
                net = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            gw = r.get("gateway")
            routes.append(Route(net, ipaddress.ip_address(gw) if gw else None, r.get("dev")))
    for a in addrs:
        routes.append(Route(ipaddress.ip_network(a), None, None, local=True))
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
    return Snapshot(tuple(by_dev), tuple(routes), tuple(neigh), tuple(mtus))


# rtnetlink multicast groups (linux/rtnetlink.h)
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR
          | RTMGRP_IPV6_ROUTE)


class Monitor:
    """A netlink socket subscribed to the kernel's table changes."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, GROUPS))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Read every pending notification; returns how many bytes."""
        n = 0
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return n
            except OSError:   # ENOBUFS: we missed some; a snapshot covers it
                return n + 1
            n += len(data)

    def close(self) -> None:
        self.sock.close()
