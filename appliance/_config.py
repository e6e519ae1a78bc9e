"""The TOML configuration: parsing and validation.

A bad configuration is the operator's fault, so every problem raises
:class:`ConfigError` naming the file, the line (when it can be found), the key
and the reason. Nothing here touches the NAT: a running appliance parses a
new file completely before it swaps it in, and keeps the last good one when
parsing fails.

The schema of docs/configuration.md is a contract: keys are added, never
changed.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import pathlib
import re
import tomllib
from typing import Optional

from .cluster import BgpConfig, ClusterConfig, parse_bgp, parse_cluster
from .cluster._config import port_range
from ._types import (BACKEND_STATES, TIMEOUT_MAX, TIMEOUT_MIN, Backend, Drain, HealthCheck, IPAddress,
                     Timeouts, Translation)

MAX_WORKERS = 64   # io.h IO_MAX_WORKERS
DEFAULT_MAX_SESSIONS = 1 << 20
DEFAULT_HOOK_BUDGET_MS = 5.0
DEFAULT_DISABLE_AFTER = 10


class ConfigError(Exception):
    """An invalid configuration: ``path:line: key: reason``."""

    def __init__(self, path: str, key: str, reason: str, line: Optional[int] = None) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(_one_line(f"{where}: {key}: {reason}" if key else f"{where}: {reason}"))


def _one_line(text: str) -> str:
    """Unprintable characters (a newline, U+2028 from a quoted value) escaped:
    an error is one line to whoever reads it."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


# How the steering program attaches to an interface: "native" is the
# driver's XDP hook, "generic" the kernel's skb-level one, "auto" native
# except on veth (see appliance/io_uring/xdp/_steering.py for why).
XDP_MODES = ("auto", "native", "generic")
#: packet I/O per interface (docs/io.md): AF_XDP, io_uring, PACKET_MMAP
#: rings, or the first of them that can be had
IO_MODES = ("auto", "xdp", "uring", "mmap")


#: [datapath] reserved_ports' default: the kernel keeps 32768-39999 of its
#: default ephemeral range (32768-60999) for its own connections
RESERVED_PORTS = (40000, 65535)


#: [snat] policy: which new flows on an SNAT interface are SNATed (VPP
#: cnat's snat policies): "if-pfx" all but those to excluded prefixes;
#: "k8s" only those from pod_prefixes to destinations outside pod_prefixes
#: and exclude (the cluster); "none" no flow.
SNAT_POLICIES = ("if-pfx", "k8s", "none")


@dataclasses.dataclass(frozen=True)
class SnatConfig:
    ip4: Optional[ipaddress.IPv4Address] = None
    ip6: Optional[ipaddress.IPv6Address] = None
    exclude: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    interfaces: tuple[str, ...] = ()
    policy: str = "if-pfx"
    pod_prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # (destination prefix, SNAT address): the address for flows towards it
    by_destination: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, IPAddress], ...] = ()

    def address(self, family: int) -> Optional[IPAddress]:
        return self.ip4 if family == 4 else self.ip6

    def address_for(self, dst: IPAddress) -> Optional[IPAddress]:
        """The SNAT address for a destination: the longest by_destination
        prefix holding it, else ip4 / ip6."""
        best = None
        for net, addr in self.by_destination:
            if net.version == dst.version and dst in net and (best is None or net.prefixlen > best[0].prefixlen):
                best = (net, addr)
        return best[1] if best is not None else self.address(dst.version)

    def can_snat(self, family: int) -> bool:
        return self.address(family) is not None or any(a.version == family for _, a in self.by_destination)

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """Every address SNATed flows may leave from (replies land on them)."""
        out = [a for a in (self.ip4, self.ip6) if a is not None]
        out += [a for _, a in self.by_destination if a not in out]
        return tuple(out)

    def in_pods(self, addr: IPAddress) -> bool:
        return any(net.version == addr.version and addr in net for net in self.pod_prefixes)

    def excluded(self, addr: IPAddress) -> Optional[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The longest excluded prefix containing addr, or None."""
        best = None
        for net in self.exclude:
            if net.version == addr.version and addr in net:
                if best is None or net.prefixlen > best.prefixlen:
                    best = net
        return best


@dataclasses.dataclass(frozen=True)
class InterfaceConfig:
    name: str
    xdp_mode: str = "auto"               # "auto", "native" or "generic"
    io: str = "auto"                     # "auto", "xdp", "uring" or "mmap" (docs/io.md)


@dataclasses.dataclass(frozen=True)
class Config:
    path: str = "<default>"
    flow_hash_seed: int = 0
    timeouts: Timeouts = Timeouts()
    snat: Optional[SnatConfig] = None
    translations: tuple[Translation, ...] = ()
    plugin_modules: tuple[str, ...] = ()
    plugin_budget_ms: float = DEFAULT_HOOK_BUDGET_MS   # [plugins] hook_budget_ms: per hook call
    plugin_disable_after: int = DEFAULT_DISABLE_AFTER  # [plugins] disable_after: overruns in 60 s; 0: never
    max_sessions: int = DEFAULT_MAX_SESSIONS
    interfaces: tuple[InterfaceConfig, ...] = ()   # data interfaces of `appliance run`
    locality: tuple[tuple[str, str], ...] = ()     # [locality] labels: this appliance's own
    workers: Optional[int] = None                  # [datapath] workers; None: one per usable CPU
    #: [datapath] reserved_ports: in the socket modes, where the NAT picks the
    #: ports of flows whose source becomes a host address (docs/io.md)
    reserved_ports: tuple = RESERVED_PORTS
    cluster: ClusterConfig = ClusterConfig()     # [cluster]
    bgp: Optional[BgpConfig] = None                # [bgp]: the vips announced by BIRD (docs/cluster.md)

    @property
    def interface_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.interfaces)


# --------------------------------------------------------------------------
# Locating keys in the source text, so errors can name a line. tomllib gives
# positions only for syntax errors; keys are found again by a small scan of
# table headers, which is enough for the flat schema above.

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"']+)\s*\]\]?")


def _find_line(text: str, table: Optional[str], index: Optional[int], key: Optional[str]) -> Optional[int]:
    # "\n" only: TOML's lines, not splitlines()'s (which also breaks at U+2028, U+0085, ...)
    lines = text.split("\n")
    count = -1
    in_target = table is None
    header_line = None
    for no, line in enumerate(lines, 1):
        m = _HEADER.match(line)
        if m:
            name = m.group(2).strip("\"'")
            if table is None and name == key:   # a top-level key written as a table: [flow_hash_seed]
                return no
            if m.group(1) == "[[" and name == table:
                count += 1
            in_target = name == table and (index is None or count == index)
            if in_target:
                header_line = no
            continue
        if in_target and key is not None and _line_key(line) == key:
            return no
    return header_line


_BARE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")   # dots: the paths this module names (timeouts.session)
_KEY = re.compile(r"""^\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")


def _line_key(line: str) -> Optional[str]:
    """The key a `key = value` line sets, bare or quoted."""
    m = _KEY.match(line)
    if not m:
        return None
    key = m.group(1)
    if key[0] == "'":
        return key[1:-1]
    if key[0] == '"':
        try:
            return tomllib.loads(f"k = {key}")["k"]
        except tomllib.TOMLDecodeError:
            return None
    return key


class _Reader:
    """Pops keys off a TOML table, raising ConfigError for wrong types;
    whatever is left at the end is an unknown key."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text

    def error(self, table: Optional[str], index: Optional[int], key: Optional[str], reason: str,
              line_key: Optional[str] = None) -> ConfigError:
        """line_key: the key whose line to name, when key is inside an
        inline table (``timeouts.session`` is on the line of ``timeouts``)."""
        name, line = "", _find_line(self.text, table, index, line_key or key)
        if table:
            name = table + (f"[{index}]" if index is not None else "")
        if key:
            if not _BARE_KEY.match(key):   # as it is written: "vip " is not vip
                key = json.dumps(key, ensure_ascii=False)
            name = f"{name}.{key}" if name else key
        return ConfigError(self.path, name, reason, line)

    def take(self, data: dict, table, index, key, types, default=None, required=False):
        if key not in data:
            if required:
                # a misspelt required key is the unknown key it is, on its line
                typo = difflib.get_close_matches(key, [k for k in data if isinstance(k, str)], 1, 0.75)
                if typo:
                    raise self.error(table, index, typo[0], f"unknown key, did you mean '{key}'? "
                                                           f"('{key}' is required)")
                raise self.error(table, index, None, f"missing required key '{key}'")
            return default
        value = data.pop(key)
        if isinstance(value, bool) and bool not in types:
            raise self.error(table, index, key, f"expected {_type_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise self.error(table, index, key,
                             f"expected {_type_names(types)}, got {type(value).__name__}")
        return value

    def no_leftovers(self, data: dict, table, index, known) -> None:
        for key in data:
            raise self.error(table, index, key, _unknown_key(key, sorted(known)))


def _unknown_key(key: str, known, named: bool = False) -> str:
    """The reason for an unknown key, with the known name closest to it."""
    close = difflib.get_close_matches(key, list(known), 1, 0.75)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key{f' {key!r}' if named else ''} ({hint}known keys: {', '.join(known)})"


def _type_names(types) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table", bool: "a boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


# --------------------------------------------------------------------------

def _interface_name(name) -> bool:
    """The kernel's rule (dev_valid_name): 1 to 15 bytes, no '/', ':' or
    space, not '.' or '..'; unprintable characters refused too."""
    return (isinstance(name, str) and 1 <= len(name.encode()) <= 15 and name not in (".", "..")
            and name.isprintable() and not re.search(r"[\s/:]", name))


def parse_backend(text: str, family: int) -> Backend:
    """Parse the seed's ``[SRC_IP [SRC_PORT]]->DST_IP [DST_PORT]``."""
    odd = next((c for c in text if not (c.isascii() and (c.isprintable() or c == "\t"))), None)
    if odd is not None:   # str.split() would take U+2028 or U+00A0 for a space
        raise ValueError(f"character {odd!r} (U+{ord(odd):04X}): only ASCII letters, digits, spaces and '->'")
    if "->" not in text:
        raise ValueError("expected '[SRC_IP [SRC_PORT]]->DST_IP [DST_PORT]' (missing '->')")
    left, _, right = text.partition("->")
    lparts, rparts = left.split(), right.split()
    if len(lparts) > 2 or not 1 <= len(rparts) <= 2:
        raise ValueError("expected '[SRC_IP [SRC_PORT]]->DST_IP [DST_PORT]'")
    src = sport = dport = None
    if lparts:
        src = _addr(lparts[0], family, "source")
        if len(lparts) == 2:
            sport = _port(lparts[1], "source port")
    dst = _addr(rparts[0], family, "destination")
    if len(rparts) == 2:
        dport = _port(rparts[1], "destination port")
    if src is not None and src.is_unspecified:
        src = None  # "0.0.0.0" / "::" is the seed's "keep the source"
    return Backend(dst=dst, dport=dport or None, src=src, sport=sport or None)


def _addr(text: str, family: int, what: str) -> IPAddress:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{what} '{text}' is not an IP address") from None
    if addr.version != family:
        raise ValueError(f"{what} {addr} is IPv{addr.version}, the translation is IPv{family}")
    return addr


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"{what} '{text}' is not a port (0-65535)")
    return int(text)


_TIMEOUT_KEYS = ("session", "tcp_established", "tcp_closing", "tcp_half_closed", "tcp_syn")
_NAME = re.compile(r"[A-Za-z0-9_.:/\-]{1,64}")
_DRAIN_MODES = ("keep", "reset")


def _take_timeouts(r: "_Reader", t: dict, table: str, index: Optional[int], prefix: str) -> dict:
    tv = {}
    for key in _TIMEOUT_KEYS:
        if key not in t:
            continue
        v = t.pop(key)
        line_key = prefix.rstrip(".") or None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise r.error(table, index, prefix + key, f"expected a number, got {_toml(v)}", line_key)
        if not TIMEOUT_MIN <= v <= TIMEOUT_MAX:
            raise r.error(table, index, prefix + key, "must be at least 0.001 and at most 604800 seconds (7 days)",
                          line_key)
        tv[key] = float(v)
    for key in t:
        raise r.error(table, index, prefix + key, _unknown_key(key, _TIMEOUT_KEYS),
                      prefix.rstrip(".") or None)
    return tv


def _toml(v) -> str:
    """A value as TOML spells it, for messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def _parse_backend_entry(r: "_Reader", i: int, j: int, b, family: int) -> Backend:
    """A backend: the seed's text, or an inline table with ``to`` and its
    weight, state, name and labels."""
    where = f"backend {j}"
    if isinstance(b, str):
        try:
            return parse_backend(b, family)
        except ValueError as exc:
            raise r.error("translation", i, "backends", f"{where} '{b}': {exc}") from None
    if not isinstance(b, dict):
        raise r.error("translation", i, "backends",
                      f"{where} must be a string or an inline table {{ to = \"->ADDR PORT\", ... }}, got {b!r}")
    b = dict(b)

    def bad(reason: str) -> ConfigError:
        return r.error("translation", i, "backends", f"{where}: {reason}")

    to = b.pop("to", None)
    if not isinstance(to, str):
        raise bad("'to' (the rewrite, e.g. \"->20.0.0.1 8080\") is required and must be a string")
    try:
        base = parse_backend(to, family)
    except ValueError as exc:
        raise bad(f"'{to}': {exc}") from None
    weight = b.pop("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 10000:
        raise bad(f"weight {_toml(weight)} is not an integer between 0 and 10000")
    state = b.pop("state", "active")
    if state not in BACKEND_STATES:
        raise bad(f"state {_toml(state)} is not one of {', '.join(BACKEND_STATES)}")
    name = b.pop("name", "")
    if not isinstance(name, str) or (name and not _NAME.fullmatch(name)):
        raise bad(f"name {name!r} is not a name (letters, digits, '._-/:', up to 64 characters)")
    labels = b.pop("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in labels.items()):
        raise bad(f"labels {labels!r} must be a table of strings, e.g. {{ zone = \"a\" }}")
    for key in b:
        raise bad(_unknown_key(key, ("labels", "name", "state", "to", "weight"), named=True))
    return dataclasses.replace(base, weight=weight, state=state, name=name or base.rewrite, labels=labels)


def _prefixes(r: "_Reader", sn: dict, key: str) -> list:
    out = []
    for item in r.take(sn, "snat", None, key, (list,), []):
        if not isinstance(item, str):
            raise r.error("snat", None, key, f"expected prefixes as strings, got {item!r}")
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise r.error("snat", None, key, f"'{item}' is not an IP prefix") from None
    return out


def _parse_health(r: "_Reader", tr: dict, i: int, proto: str) -> Optional[HealthCheck]:
    h = r.take(tr, "translation", i, "health", (dict,), None)
    if h is None:
        return None
    h = dict(h)

    def bad(reason: str) -> ConfigError:
        return r.error("translation", i, "health", reason)

    v = {}
    for key, lo, hi in (("interval", 0.1, 3600), ("timeout", 0.05, 600)):
        if key in h:
            x = h.pop(key)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi:
                raise bad(f"{key} must be a number of seconds between {lo:g} and {hi:g}")
            v[key] = float(x)
    for key, lo, hi in (("fall", 1, 100), ("rise", 1, 100), ("port", 1, 65535)):
        if key in h:
            x = h.pop(key)
            if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
                raise bad(f"{key} must be an integer between {lo} and {hi}")
            v[key] = x
    if "http" in h:
        x = h.pop("http")
        if not isinstance(x, str) or not x.startswith("/") or any(c.isspace() for c in x):
            raise bad("http must be a path such as \"/healthz\"")
        v["http"] = x
    for key in h:
        raise bad(_unknown_key(key, ("fall", "http", "interval", "port", "rise", "timeout"), named=True))
    if proto == "icmp" and "port" not in v:
        raise bad("icmp translations have no port to probe: give health a port")
    return HealthCheck(**v)


def _parse_drain(r: "_Reader", tr: dict, i: int) -> Drain:
    d = r.take(tr, "translation", i, "drain", (str, dict), None)
    if d is None:
        return Drain()
    if isinstance(d, str):
        if d not in _DRAIN_MODES:
            raise r.error("translation", i, "drain",
                          f"{d!r} is not one of \"keep\", \"reset\" or {{ deadline = SECONDS }}")
        return Drain(d)
    d = dict(d)
    for key in d:
        if key != "deadline":
            raise r.error("translation", i, "drain", _unknown_key(key, ("deadline",), named=True))
    deadline = d.pop("deadline", None)
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= 7 * 24 * 3600:
        raise r.error("translation", i, "drain", "expected { deadline = SECONDS } (> 0, at most 604800)")
    return Drain("deadline", float(deadline))


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse and validate a configuration; raise ConfigError on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"at line (\d+)", msg)
        raise ConfigError(path, "", f"TOML syntax error: {msg}", int(m.group(1)) if m else None) from None
    r = _Reader(path, text)
    known_top = {"flow_hash_seed", "timeouts", "snat", "translation", "plugins", "sessions", "interface",
                 "locality", "datapath", "bgp", "cluster"}

    seed = r.take(data, None, None, "flow_hash_seed", (int,), 0)
    if not 0 <= seed < 1 << 64:
        raise r.error(None, None, "flow_hash_seed", "must be between 0 and 2^64-1")

    # [timeouts]
    t = r.take(data, None, None, "timeouts", (dict,), {})
    tv = _take_timeouts(r, t, "timeouts", None, "")
    timeouts = Timeouts(**tv)

    # [sessions]
    s = r.take(data, None, None, "sessions", (dict,), {})
    max_sessions = r.take(s, "sessions", None, "max", (int,), DEFAULT_MAX_SESSIONS)
    if not 1 <= max_sessions <= 1 << 30:
        raise r.error("sessions", None, "max", "must be between 1 and 2^30")
    r.no_leftovers(s, "sessions", None, {"max"})

    # [datapath]
    dp = r.take(data, None, None, "datapath", (dict,), {})
    workers = r.take(dp, "datapath", None, "workers", (int,), None)
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise r.error("datapath", None, "workers", f"must be between 1 and {MAX_WORKERS}")
    reserved = r.take(dp, "datapath", None, "reserved_ports", (str,), None)
    reserved_ports = RESERVED_PORTS if reserved is None else port_range(r, "datapath", "reserved_ports", reserved, "40000-65535")
    r.no_leftovers(dp, "datapath", None, {"workers", "reserved_ports"})

    # [snat]
    snat = None
    sn = r.take(data, None, None, "snat", (dict,), None)
    if sn is not None:
        ip4 = ip6 = None
        v = r.take(sn, "snat", None, "ip4", (str,))
        if v is not None:
            try:
                ip4 = ipaddress.IPv4Address(v)
            except ValueError:
                raise r.error("snat", None, "ip4", f"'{v}' is not an IPv4 address") from None
        v = r.take(sn, "snat", None, "ip6", (str,))
        if v is not None:
            try:
                ip6 = ipaddress.IPv6Address(v)
            except ValueError:
                raise r.error("snat", None, "ip6", f"'{v}' is not an IPv6 address") from None
        excl = _prefixes(r, sn, "exclude")
        pods = _prefixes(r, sn, "pod_prefixes")
        policy = r.take(sn, "snat", None, "policy", (str,), "if-pfx")
        if policy not in SNAT_POLICIES:
            raise r.error("snat", None, "policy", f"'{policy}' is not one of {', '.join(SNAT_POLICIES)}")
        if policy == "k8s" and not pods:
            raise r.error("snat", None, "policy", "the k8s policy needs pod_prefixes (the pod network)")
        by_dst = []
        for item in r.take(sn, "snat", None, "by_destination", (list,), []):
            if not isinstance(item, dict) or set(item) != {"prefix", "address"}:
                raise r.error("snat", None, "by_destination",
                              f"expected {{ prefix = \"198.51.100.0/24\", address = \"30.0.0.9\" }}, got {item!r}")
            if not isinstance(item["prefix"], str) or not isinstance(item["address"], str):
                raise r.error("snat", None, "by_destination", f"{item!r}: prefix and address are strings")
            try:
                net = ipaddress.ip_network(item["prefix"], strict=False)
                addr = ipaddress.ip_address(item["address"])
            except (TypeError, ValueError) as exc:
                raise r.error("snat", None, "by_destination", f"{item!r}: {exc}") from None
            if net.version != addr.version:
                raise r.error("snat", None, "by_destination", f"{item!r}: prefix and address of different families")
            by_dst.append((net, addr))
        ifaces = r.take(sn, "snat", None, "interfaces", (list,), [])
        for item in ifaces:
            if not _interface_name(item):
                raise r.error("snat", None, "interfaces", f"{item!r} is not an interface name")
        r.no_leftovers(sn, "snat", None, {"ip4", "ip6", "exclude", "interfaces", "policy", "pod_prefixes",
                                          "by_destination"})
        if ifaces and ip4 is None and ip6 is None and not by_dst:
            raise r.error("snat", None, "interfaces", "SNAT interfaces need ip4 and/or ip6 (or by_destination)")
        snat = SnatConfig(ip4=ip4, ip6=ip6, exclude=tuple(excl), interfaces=tuple(ifaces), policy=policy,
                          pod_prefixes=tuple(pods), by_destination=tuple(by_dst))

    # [[translation]]
    translations = []
    seen: dict[tuple, int] = {}
    seen_names: dict[str, int] = {}
    for i, tr in enumerate(r.take(data, None, None, "translation", (list,), [])):
        if not isinstance(tr, dict):
            raise r.error("translation", i, None, "must be a table ([[translation]])")
        proto = r.take(tr, "translation", i, "proto", (str,), required=True).lower()
        if proto not in ("tcp", "udp", "icmp"):
            raise r.error("translation", i, "proto", f"'{proto}' is not one of tcp, udp, icmp")
        vip = r.take(tr, "translation", i, "vip", (str,))
        real = r.take(tr, "translation", i, "real", (str,))
        if (vip is None) == (real is None):
            raise r.error("translation", i, "vip" if vip else None, "exactly one of 'vip' or 'real' is required")
        kind, text_addr = ("vip", vip) if vip is not None else ("real", real)
        try:
            address = ipaddress.ip_address(text_addr)
        except ValueError:
            raise r.error("translation", i, kind, f"'{text_addr}' is not an IP address") from None
        if proto == "icmp":
            port = r.take(tr, "translation", i, "port", (int,), 0)
            if port != 0:
                raise r.error("translation", i, "port", "icmp translations match every echo identifier; leave port out")
        else:
            port = r.take(tr, "translation", i, "port", (int,), required=True)
            if not 1 <= port <= 65535:
                raise r.error("translation", i, "port", f"{port} is not a port (1-65535)")
        backends = []
        raw = r.take(tr, "translation", i, "backends", (list,), required=True)
        for j, b in enumerate(raw):
            backends.append(_parse_backend_entry(r, i, j, b, address.version))
        names = [b.name for b in backends]
        for j, name in enumerate(names):
            if names.index(name) != j:
                raise r.error("translation", i, "backends",
                              f"backend {j}: name '{name}' is taken by backend {names.index(name)} "
                              "(give one of them a name = \"...\")")
        name = r.take(tr, "translation", i, "name", (str,), "")
        if name and not _NAME.fullmatch(name):
            raise r.error("translation", i, "name", f"'{name}' is not a name (letters, digits, '._-/:', "
                          "up to 64 characters)")
        selector = r.take(tr, "translation", i, "selector", (str,), "hash")
        if not _NAME.fullmatch(selector):
            raise r.error("translation", i, "selector", f"'{selector}' is not a selector name")
        tt = r.take(tr, "translation", i, "timeouts", (dict,), None)
        t_timeouts = None
        if tt is not None:
            tv2 = _take_timeouts(r, tt, "translation", i, "timeouts.")
            t_timeouts = dataclasses.replace(timeouts, **tv2)
        drain = _parse_drain(r, tr, i)
        affinity = None
        af = r.take(tr, "translation", i, "affinity", (dict,), None)
        if af is not None:
            affinity = af.pop("timeout", 10800)
            if isinstance(affinity, bool) or not isinstance(affinity, (int, float)) \
                    or not 0 < affinity <= 7 * 24 * 3600:
                raise r.error("translation", i, "affinity",
                              "timeout must be > 0 and at most 604800 seconds (7 days)")
            for key in af:
                raise r.error("translation", i, "affinity", _unknown_key(key, ("timeout",), named=True))
            affinity = float(affinity)
        allow = []
        for item in r.take(tr, "translation", i, "allow_from", (list,), []):
            if not isinstance(item, str):
                raise r.error("translation", i, "allow_from", f"expected prefixes as strings, got {_toml(item)}")
            try:
                allow.append(ipaddress.ip_network(item, strict=False))
            except (TypeError, ValueError):
                raise r.error("translation", i, "allow_from", f"{item!r} is not an IP prefix") from None
        if allow and not any(n.version == address.version for n in allow):
            raise r.error("translation", i, "allow_from",
                          f"no IPv{address.version} prefix: every flow to this translation would be dropped")
        health = _parse_health(r, tr, i, proto)
        r.no_leftovers(tr, "translation", i, {"proto", "vip", "real", "port", "backends", "name", "selector",
                                              "timeouts", "drain", "affinity", "allow_from", "health"})
        ident = (proto, address, port)
        if ident in seen:
            raise r.error("translation", i, kind,
                          f"duplicate translation {proto} {address} {port} (also translation[{seen[ident]}])")
        seen[ident] = i
        t = Translation(id=i, kind=kind, address=address, port=port, proto=proto, backends=tuple(backends),
                        name=name, selector=selector, timeouts=t_timeouts, drain=drain, affinity=affinity,
                        allow_from=tuple(n for n in allow if n.version == address.version), health=health)
        if t.name in seen_names:
            raise r.error("translation", i, "name" if name else None,
                          f"name '{t.name}' is taken by translation[{seen_names[t.name]}]")
        seen_names[t.name] = i
        translations.append(t)
    vips = {t.address for t in translations if t.kind == "vip"}
    for t in translations:
        if t.kind == "real" and t.address in vips:
            raise r.error("translation", t.id, "real", f"{t.address} is a vip in another translation")

    # [plugins]
    p = r.take(data, None, None, "plugins", (dict,), {})
    modules = r.take(p, "plugins", None, "modules", (list,), [])
    for m in modules:
        if not isinstance(m, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", m):
            raise r.error("plugins", None, "modules", f"{m!r} is not a module name")
    budget = r.take(p, "plugins", None, "hook_budget_ms", (int, float), DEFAULT_HOOK_BUDGET_MS)
    if not 0.01 <= budget <= 60000:
        raise r.error("plugins", None, "hook_budget_ms", "must be between 0.01 and 60000 milliseconds")
    disable_after = r.take(p, "plugins", None, "disable_after", (int,), DEFAULT_DISABLE_AFTER)
    if not 0 <= disable_after <= 1_000_000:
        raise r.error("plugins", None, "disable_after", "must be between 0 (never disable) and 1000000 overruns")
    r.no_leftovers(p, "plugins", None, {"modules", "hook_budget_ms", "disable_after"})

    # [[interface]]
    interfaces: list[InterfaceConfig] = []
    for i, itf in enumerate(r.take(data, None, None, "interface", (list,), [])):
        if not isinstance(itf, dict):
            raise r.error("interface", i, None, "must be a table ([[interface]])")
        name = r.take(itf, "interface", i, "name", (str,), required=True)
        if not _interface_name(name):
            raise r.error("interface", i, "name", f"'{name}' is not an interface name")
        if any(x.name == name for x in interfaces):
            raise r.error("interface", i, "name", f"interface '{name}' listed twice")
        mode = r.take(itf, "interface", i, "xdp_mode", (str,), "auto")
        if mode not in XDP_MODES:
            raise r.error("interface", i, "xdp_mode", f"{mode!r} is not one of {', '.join(XDP_MODES)}")
        io_mode = r.take(itf, "interface", i, "io", (str,), "auto")
        if io_mode not in IO_MODES:
            raise r.error("interface", i, "io", f"{io_mode!r} is not one of {', '.join(IO_MODES)}")
        r.no_leftovers(itf, "interface", i, {"name", "xdp_mode", "io"})
        interfaces.append(InterfaceConfig(name, mode, io_mode))

    # [locality]
    lo = r.take(data, None, None, "locality", (dict,), {})
    labels = r.take(lo, "locality", None, "labels", (dict,), {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise r.error("locality", None, "labels", "must be a table of strings, e.g. { zone = \"a\" }")
    r.no_leftovers(lo, "locality", None, {"labels"})

    bgp = parse_bgp(r, data)
    cluster = parse_cluster(r, data, bgp)
    r.no_leftovers(data, None, None, known_top)
    return Config(path=path, flow_hash_seed=seed, timeouts=timeouts, snat=snat,
                  translations=tuple(translations), plugin_modules=tuple(modules),
                  plugin_budget_ms=float(budget), plugin_disable_after=disable_after,
                  max_sessions=max_sessions, interfaces=tuple(interfaces),
                  locality=tuple(sorted(labels.items())), workers=workers, bgp=bgp, cluster=cluster,
                  reserved_ports=reserved_ports)


def load_config(path: str | pathlib.Path) -> Config:
    """Read and parse a configuration file."""
    p = str(path)
    try:
        text = pathlib.Path(p).read_text()
    except OSError as exc:
        raise ConfigError(p, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(p, "", "not UTF-8 text") from None
    return parse_config(text, p)
