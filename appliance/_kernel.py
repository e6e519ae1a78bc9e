"""Following the kernel: addresses, routes and neighbours of the appliance's
network namespace, read over netlink with iproute2's JSON output.

The kernel stays the control plane: operators configure addresses and
routes with `ip`, the kernel resolves neighbours, and the appliance copies
the tables into its C forwarding step (io_route_add / io_neigh_set) and its
XDP maps. A snapshot is cheap (a few netlink dumps), so the runtime takes
one every second, and sooner when frames went to the kernel for lack of a
neighbour.
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
    mac: bytes


@dataclasses.dataclass(frozen=True)
class Snapshot:
    addresses: frozenset
    routes: tuple
    neighbours: tuple


def _ip_json(*args: str) -> list:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def snapshot() -> Snapshot:
    addrs = set()
    for link in _ip_json("addr", "show"):
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6"):
                addrs.add(ipaddress.ip_address(a["local"]))
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
        if not mac or "FAILED" in state or "INCOMPLETE" in state:
            continue
        neigh.append(Neighbour(ipaddress.ip_address(n["dst"]), n["dev"], bytes.fromhex(mac.replace(":", ""))))
    return Snapshot(frozenset(addrs), tuple(routes), tuple(neigh))
