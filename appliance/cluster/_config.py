"""``[bgp]``: how the appliance has its vips announced (docs/cluster.md).

Parsed here, from the reader of ``appliance._config`` (which names the file,
line and key of a bad setting); nothing in this module talks to a daemon.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Optional, Union

Prefix = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: BGP's hold time floor (RFC 4271 4.2: 0 or at least 3 seconds)
HOLD_MIN, HOLD_MAX = 3, 65535
DEFAULT_HOLD = 3


@dataclasses.dataclass(frozen=True)
class Neighbor:
    address: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
    asn: int
    #: the vips (when ready to serve them), and these prefixes (while serving)
    vips: bool = True
    prefixes: tuple[Prefix, ...] = ()
    port: int = 179

    @property
    def family(self) -> int:
        return self.address.version


@dataclasses.dataclass(frozen=True)
class BgpConfig:
    asn: int
    router_id: ipaddress.IPv4Address
    neighbors: tuple[Neighbor, ...]
    hold_time: int = DEFAULT_HOLD
    bird: str = "bird"                 # the BIRD 2 binary, found on PATH
    #: BIRD's control socket; None: one beside the appliance's run files
    socket: Optional[str] = None

    @property
    def keepalive(self) -> int:
        return max(1, self.hold_time // 3)


def _asn(r, table, index, data, key) -> int:
    v = r.take(data, table, index, key, (int,), required=True)
    if not 1 <= v <= 4294967295:
        raise r.error(table, index, key, "must be an AS number between 1 and 4294967295")
    return v


def parse_bgp(r, data: dict) -> Optional[BgpConfig]:
    """The ``[bgp]`` table of a configuration, or None when there is none."""
    b = r.take(data, None, None, "bgp", (dict,), None)
    if b is None:
        return None
    asn = _asn(r, "bgp", None, b, "asn")
    rid = r.take(b, "bgp", None, "router_id", (str,), required=True)
    try:
        router_id = ipaddress.IPv4Address(rid)
    except ValueError:
        raise r.error("bgp", None, "router_id", f"{rid!r} is not an IPv4 address (BGP identifiers are)") from None
    hold = r.take(b, "bgp", None, "hold_time", (int,), DEFAULT_HOLD)
    if not HOLD_MIN <= hold <= HOLD_MAX:
        raise r.error("bgp", None, "hold_time", f"must be between {HOLD_MIN} and {HOLD_MAX} seconds")
    bird = r.take(b, "bgp", None, "bird", (str,), "bird")
    if not bird or "\0" in bird:
        raise r.error("bgp", None, "bird", "must name the BIRD 2 binary")
    sock = r.take(b, "bgp", None, "socket", (str,), None)
    if sock is not None and (not sock.startswith("/") or "\0" in sock):
        raise r.error("bgp", None, "socket", "must be an absolute path")
    neighbors = []
    raw = r.take(b, "bgp", None, "neighbor", (list,), required=True)
    if not raw:
        raise r.error("bgp", None, "neighbor", "at least one [[bgp.neighbor]] is needed")
    for i, n in enumerate(raw):
        if not isinstance(n, dict):
            raise r.error("bgp.neighbor", i, None, "must be a table ([[bgp.neighbor]])")
        a = r.take(n, "bgp.neighbor", i, "address", (str,), required=True)
        try:
            address = ipaddress.ip_address(a)
        except ValueError:
            raise r.error("bgp.neighbor", i, "address", f"{a!r} is not an IP address") from None
        if any(x.address == address for x in neighbors):
            raise r.error("bgp.neighbor", i, "address", f"{address} is listed twice")
        nasn = _asn(r, "bgp.neighbor", i, n, "asn")
        port = r.take(n, "bgp.neighbor", i, "port", (int,), 179)
        if not 1 <= port <= 65535:
            raise r.error("bgp.neighbor", i, "port", "must be between 1 and 65535")
        announce = r.take(n, "bgp.neighbor", i, "announce", (list,), ["vips"])
        vips, prefixes = False, []
        for item in announce:
            if item == "vips":
                vips = True
                continue
            try:
                net = ipaddress.ip_network(item) if isinstance(item, str) else None
            except ValueError:
                net = None
            if net is None:
                raise r.error("bgp.neighbor", i, "announce",
                              f"{item!r} is neither \"vips\" nor a prefix such as \"0.0.0.0/0\"")
            if net.version != address.version:
                raise r.error("bgp.neighbor", i, "announce",
                              f"{net} is IPv{net.version}, the session to {address} carries IPv{address.version}")
            prefixes.append(net)
        r.no_leftovers(n, "bgp.neighbor", i, {"address", "asn", "port", "announce"})
        neighbors.append(Neighbor(address, nasn, vips, tuple(prefixes), port))
    r.no_leftovers(b, "bgp", None, {"asn", "router_id", "hold_time", "bird", "socket", "neighbor"})
    return BgpConfig(asn, router_id, tuple(neighbors), hold, bird, sock)


Endpoint = tuple  # (IPv4Address | IPv6Address, port)
SYNC_KEY_MIN = 16


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: what instances that share a configuration do for
    each other's flows."""
    #: a backend's packet without a session is matched to the flow the
    #: translation's selection would have given that backend, so another
    #: instance's flow continues here (docs/cluster.md)
    stateless_failover: bool = False
    #: session sync: where to listen, the peers, the shared key (None: off)
    sync_listen: Optional[Endpoint] = None
    sync_peers: tuple = ()
    sync_key: Optional[bytes] = dataclasses.field(default=None, repr=False)
    sync_refresh: int = 5            # seconds between refreshes of live synced sessions
    sync_key_file: Optional[str] = None   # where sync_key was read from, if from a file
    #: (lo, hi): the source ports this instance picks when it rewrites a
    #: source (SNAT, source rewrites); None: 1024-65535
    source_ports: Optional[tuple[int, int]] = None

    @property
    def sync(self) -> bool:
        return self.sync_listen is not None


def _endpoint(r, key: str, text, index=None) -> Endpoint:
    where = f"{text!r}" if index is None else f"{text!r} (entry {index})"
    if not isinstance(text, str):
        raise r.error("cluster", None, key, f"{where} is not a string \"ADDRESS:PORT\"")
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(host)
        p = int(port)
    except ValueError:
        raise r.error("cluster", None, key, f"{where} is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT)") from None
    if not sep or not 1 <= p <= 65535:
        raise r.error("cluster", None, key, f"{where}: the port must be between 1 and 65535")
    return addr, p


def parse_cluster(r, data: dict, bgp: Optional[BgpConfig]) -> ClusterConfig:
    """The ``[cluster]`` table; stateless failover is on by default with [bgp]."""
    c = r.take(data, None, None, "cluster", (dict,), {})
    failover = r.take(c, "cluster", None, "stateless_failover", (bool,), bgp is not None)
    listen = r.take(c, "cluster", None, "sync_listen", (str,), None)
    peers = r.take(c, "cluster", None, "sync_peers", (list,), [])
    key = r.take(c, "cluster", None, "sync_key", (str,), None)
    key_file = r.take(c, "cluster", None, "sync_key_file", (str,), None)
    refresh = r.take(c, "cluster", None, "sync_refresh", (int,), 5)
    ports = _source_ports(r, r.take(c, "cluster", None, "source_ports", (str,), None))
    r.no_leftovers(c, "cluster", None, {"stateless_failover", "sync_listen", "sync_peers", "sync_key",
                                        "sync_key_file", "sync_refresh", "source_ports"})
    if listen is None:
        if peers or key or key_file:
            raise r.error("cluster", None, "sync_listen", "session sync needs sync_listen = \"ADDRESS:PORT\"")
        return ClusterConfig(failover, source_ports=ports)
    endpoint = _endpoint(r, "sync_listen", listen)
    if not peers:
        raise r.error("cluster", None, "sync_peers", "session sync needs at least one peer \"ADDRESS:PORT\"")
    peer_eps = tuple(_endpoint(r, "sync_peers", p, i) for i, p in enumerate(peers))
    if any(p[0].version != endpoint[0].version for p in peer_eps):
        raise r.error("cluster", None, "sync_peers", f"peers must be of sync_listen's family (IPv{endpoint[0].version})")
    if (key is None) == (key_file is None):
        raise r.error("cluster", None, "sync_key", "session sync needs exactly one of sync_key or sync_key_file "
                      "(the peers' shared key)")
    if key_file is not None:
        try:
            key = open(key_file, encoding="utf-8").read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise r.error("cluster", None, "sync_key_file", f"{key_file}: {getattr(exc, 'strerror', None) or exc}") \
                from None
    if len(key) < SYNC_KEY_MIN:
        raise r.error("cluster", None, "sync_key_file" if key_file else "sync_key",
                      f"the key must be at least {SYNC_KEY_MIN} characters")
    if not 1 <= refresh <= 3600:
        raise r.error("cluster", None, "sync_refresh", "must be between 1 and 3600 seconds")
    return ClusterConfig(failover, endpoint, peer_eps, key.encode(), refresh, key_file, ports)


#: fewer than this many ports would leave an instance few flows to one destination
SOURCE_PORTS_MIN = 256


def _source_ports(r, text) -> Optional[tuple[int, int]]:
    return None if text is None else port_range(r, "cluster", "source_ports", text, "20000-29999")


def port_range(r, table: str, key: str, text: str, example: str) -> tuple[int, int]:
    """A port range "LO-HI" within 1024-65535, of at least SOURCE_PORTS_MIN
    ports ([cluster] source_ports, [datapath] reserved_ports)."""
    lo, sep, hi = text.partition("-")
    try:
        lo_n, hi_n = int(lo), int(hi)
    except ValueError:
        lo_n = hi_n = -1
    if not sep or not 1024 <= lo_n <= hi_n <= 65535:
        raise r.error(table, None, key, f"{text!r} is not a range \"LO-HI\" within 1024-65535 (such as \"{example}\")")
    if hi_n - lo_n + 1 < SOURCE_PORTS_MIN:
        raise r.error(table, None, key, f"{text!r} has {hi_n - lo_n + 1} ports, fewer than {SOURCE_PORTS_MIN}")
    return lo_n, hi_n
