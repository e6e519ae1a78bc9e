"""Values the slow path and plugins exchange. Immutable, cheap to build."""

from __future__ import annotations

import dataclasses
import ipaddress
import operator
import socket
import types
from typing import Mapping, Optional, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTO_TCP = socket.IPPROTO_TCP
PROTO_UDP = socket.IPPROTO_UDP
PROTO_ICMP = socket.IPPROTO_ICMP
PROTO_ICMPV6 = socket.IPPROTO_ICMPV6

PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmp"}


def proto_number(name: str, family: int) -> int:
    """"tcp"/"udp"/"icmp" -> IP protocol number (ICMPv6 for family 6)."""
    if name == "icmp":
        return PROTO_ICMP if family == 4 else PROTO_ICMPV6
    return {"tcp": PROTO_TCP, "udp": PROTO_UDP}[name]


#: What a backend may be in: ``active`` takes new flows; ``draining`` takes
#: them only when no active backend of its translation is left (Kubernetes'
#: terminating endpoints); ``down`` takes none. Sessions of a backend that
#: leaves ``active`` follow its translation's drain policy.
BACKEND_STATES = ("active", "draining", "down")

#: A session's backend index when it has none (SNAT only, or removed):
#: nat.h's NAT_NO_BACKEND (tests/test_lockstep.py checks they agree).
NO_BACKEND = 0xFFFF


@dataclasses.dataclass(frozen=True)
class Backend:
    """One backend of a translation: the seed's ``[SRC_IP [SRC_PORT]]->DST_IP [DST_PORT]``.

    ``src``/``sport`` None keep the packet's source; ``dport`` None keeps
    the original destination port. ``weight`` is its share of new flows (0:
    none), ``state`` one of :data:`BACKEND_STATES` as configured, ``labels``
    free-form (``zone``, ``node``), ``name`` stable across reloads (default:
    the rewrite text) and used in ``show`` and metric labels.
    """

    dst: IPAddress
    dport: Optional[int] = None
    src: Optional[IPAddress] = None
    sport: Optional[int] = None
    weight: int = 1
    state: str = "active"
    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: _EMPTY, hash=False)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.rewrite)
        if not isinstance(self.labels, types.MappingProxyType):
            object.__setattr__(self, "labels", types.MappingProxyType(dict(self.labels)))

    @property
    def rewrite(self) -> str:
        """The seed's text of the four rewrites."""
        left = ""
        if self.src is not None:
            left = str(self.src) + (f" {self.sport}" if self.sport else "")
        right = str(self.dst) + (f" {self.dport}" if self.dport else "")
        return f"{left}->{right}"

    def __str__(self) -> str:
        return self.rewrite


_EMPTY: Mapping[str, str] = types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Drain:
    """What happens to a translation's sessions when one of its backends is
    removed, or leaves ``active`` (``draining``, ``down``).

    ``mode``: ``"default"`` (key absent: TCP sessions run to their end,
    UDP and ICMP sessions of a removed or down backend are removed at once,
    a draining backend keeps all of them); ``"keep"`` (every session runs to
    its end); ``"deadline"`` (``deadline`` seconds after its backend left,
    as ``"reset"``); ``"reset"`` (UDP and ICMP sessions removed at once, TCP
    sessions reset by their next segment, see docs/configuration.md).
    """

    mode: str = "default"
    deadline: float = 0.0

    def __str__(self) -> str:
        return f"deadline {self.deadline:g} s" if self.mode == "deadline" else self.mode


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    """``health = { ... }`` on a translation: probe each backend every
    ``interval`` s (TCP connect to ``port``, default the backend's port, else
    the translation's; with ``http``, also ``GET`` that path and expect a 2xx
    or 3xx status), each probe given ``timeout`` s; ``fall`` failures in a
    row set the backend down, ``rise`` successes set it active again."""

    interval: float = 5.0
    timeout: float = 2.0
    fall: int = 3
    rise: int = 2
    port: Optional[int] = None
    http: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Translation:
    """(address, port, protocol) -> backends. ``kind`` is "vip" or "real".

    ``id`` is its position in the configuration, which a reload may change;
    ``name`` (default ``proto/address/port``, ``icmp/address``) does not,
    and names it in logs, ``show`` and metrics. ``selector`` names the
    registered backend selector; ``timeouts`` (None: the global ones),
    ``drain``, ``affinity`` (client-address affinity timeout in seconds, or
    None) and ``allow_from`` (source prefixes; empty: everyone) are its
    policies.
    """

    id: int
    kind: str
    address: IPAddress
    port: int
    proto: str
    backends: tuple[Backend, ...]
    name: str = ""
    selector: str = "hash"
    timeouts: Optional["Timeouts"] = None
    drain: Drain = Drain()
    affinity: Optional[float] = None
    allow_from: tuple[IPNetwork, ...] = ()
    health: Optional[HealthCheck] = None

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", default_translation_name(self.proto, self.address, self.port))

    @property
    def family(self) -> int:
        return self.address.version

    def __str__(self) -> str:
        port = f" {self.port}" if self.proto != "icmp" else ""
        backends = ", ".join(str(b) for b in self.backends) or "(no backends)"
        return f"{self.name}: {self.proto} {self.kind} {self.address}{port} to {backends}"


def default_translation_name(proto: str, address: IPAddress, port: int) -> str:
    return f"{proto}/{address}" if proto == "icmp" else f"{proto}/{address}/{port}"


TIMEOUT_MIN, TIMEOUT_MAX = 0.001, 7 * 24 * 3600.0   # seconds: [timeouts] and a plugin's Timeouts


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Session lifetimes in seconds (VPP cnat defaults, plus half-closed).

    ``session``: UDP, ICMP, and TCP picked up mid-stream (no SYN seen).
    ``tcp_half_closed``: after a FIN in one direction only; a half-closed TCP
    connection can stream for hours, so it defaults to the established value.
    ``tcp_closing``: after RST, or FIN seen in both directions.
    ``tcp_syn``: from the SYN until the handshake completes (conntrack's
    SYN_RECV); under table pressure such sessions go first (docs/configuration.md).
    """

    session: float = 30.0
    tcp_established: float = 3600.0
    tcp_closing: float = 5.0
    tcp_half_closed: Optional[float] = None
    tcp_syn: float = 60.0

    def __post_init__(self) -> None:
        # a plugin's Timeouts reaches the C profiles as it is: out-of-range
        # values raise here, in the plugin, where they are contained
        for field in ("session", "tcp_established", "tcp_closing", "tcp_half_closed", "tcp_syn"):
            v = getattr(self, field)
            if v is None and field == "tcp_half_closed":
                continue
            if type(v) not in (int, float) or not TIMEOUT_MIN <= v <= TIMEOUT_MAX:
                got = f"an int of {v.bit_length()} bits" if type(v) is int else repr(v)[:40]
                raise ValueError(f"Timeouts.{field} must be a number of seconds from {TIMEOUT_MIN} to "
                                 f"{TIMEOUT_MAX}, not {got}")

    def as_ms(self) -> tuple[int, int, int, int, int]:
        """The C profile: milliseconds indexed by enum nat_lifetime."""
        half = self.tcp_established if self.tcp_half_closed is None else self.tcp_half_closed
        return (
            round(self.session * 1000),
            round(self.tcp_established * 1000),
            round(half * 1000),
            round(self.tcp_closing * 1000),
            round(self.tcp_syn * 1000),
        )


class Flow:
    """A new flow as the slow path sees it (one per new flow, never per packet).

    Read-only: every plugin is handed the same object, so one cannot change
    what the next one (or the core) sees; setting an attribute raises
    AttributeError, contained like any exception of a plugin. Addresses are
    decoded lazily: most decisions only need ``hash`` or ports.
    """

    __slots__ = ("_family", "_proto", "_src", "_dst", "_sport", "_dport", "_interface", "_hash",
                 "_tcp_flags", "_time", "_src_ip", "_dst_ip")

    def __init__(self, family: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int,
                 interface: str, hash: int, tcp_flags: int = 0, time: float = 0.0) -> None:
        self._family = family
        self._proto = proto
        self._src = src
        self._dst = dst
        self._sport = sport
        self._dport = dport
        self._interface = interface
        self._hash = hash
        self._tcp_flags = tcp_flags
        self._time = time
        self._src_ip: Optional[IPAddress] = None
        self._dst_ip: Optional[IPAddress] = None

    family = property(operator.attrgetter("_family"), doc="4 or 6")
    proto = property(operator.attrgetter("_proto"), doc="the IP protocol number")
    sport = property(operator.attrgetter("_sport"), doc="source port (ICMP echo: the identifier)")
    dport = property(operator.attrgetter("_dport"))
    interface = property(operator.attrgetter("_interface"), doc="the interface the first packet came in on")
    hash = property(operator.attrgetter("_hash"), doc="the keyed flow hash of the 5-tuple")
    tcp_flags = property(operator.attrgetter("_tcp_flags"))
    time = property(operator.attrgetter("_time"), doc="the first packet's time (the core's clock, seconds)")

    @property
    def src(self) -> IPAddress:
        if self._src_ip is None:
            self._src_ip = ipaddress.ip_address(self._src)
        return self._src_ip

    @property
    def dst(self) -> IPAddress:
        if self._dst_ip is None:
            self._dst_ip = ipaddress.ip_address(self._dst)
        return self._dst_ip

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def src_packed(self) -> bytes:
        """The source address as 4 or 16 bytes (no object built)."""
        return self._src

    def __repr__(self) -> str:
        return (f"Flow({self.proto_name} {fmt_endpoint(self.src, self.sport)} -> "
                f"{fmt_endpoint(self.dst, self.dport)} on {self.interface})")


def fmt_endpoint(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """A copy of one session, for ``show`` and for notification hooks."""

    index: int
    proto: str
    # the flow as the initiator sends it, and as it leaves the NAT
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    new_src: IPAddress
    new_sport: int
    new_dst: IPAddress
    new_dport: int
    translation: Optional[int]
    backend: Optional[int]
    state: str
    kind: str              # "translation", "snat", "translation+snat" or "bypass"
    created: float
    last_seen: float
    expires: float
    packets: tuple[int, int]
    reason: str = ""       # for expiry notifications: "timeout", "removed" or "evicted"
    translation_name: str = ""   # names of the translation and backend ("" for none)
    backend_name: str = ""

    def __str__(self) -> str:
        return (f"[{self.index}] {self.proto} {fmt_endpoint(self.src, self.sport)} -> "
                f"{fmt_endpoint(self.dst, self.dport)} => {fmt_endpoint(self.new_src, self.new_sport)}"
                f" -> {fmt_endpoint(self.new_dst, self.new_dport)} {self.kind} {self.state} "
                f"pkts {self.packets[0]}/{self.packets[1]} expires {self.expires:.3f}")
