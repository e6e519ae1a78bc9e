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
import ipaddress
import pathlib
import re
import tomllib
from typing import Optional

from ._types import Backend, IPAddress, Timeouts, Translation

DEFAULT_MAX_SESSIONS = 1 << 20


class ConfigError(Exception):
    """An invalid configuration: ``path:line: key: reason``."""

    def __init__(self, path: str, key: str, reason: str, line: Optional[int] = None) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


# How the steering program attaches to an interface: "native" is the
# driver's XDP hook, "generic" the kernel's skb-level one, "auto" native
# except on veth (see appliance/io_uring/_steering.py for why).
XDP_MODES = ("auto", "native", "generic")


@dataclasses.dataclass(frozen=True)
class SnatConfig:
    ip4: Optional[ipaddress.IPv4Address] = None
    ip6: Optional[ipaddress.IPv6Address] = None
    exclude: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    interfaces: tuple[str, ...] = ()

    def address(self, family: int) -> Optional[IPAddress]:
        return self.ip4 if family == 4 else self.ip6

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


@dataclasses.dataclass(frozen=True)
class Config:
    path: str = "<default>"
    flow_hash_seed: int = 0
    timeouts: Timeouts = Timeouts()
    snat: Optional[SnatConfig] = None
    translations: tuple[Translation, ...] = ()
    plugin_modules: tuple[str, ...] = ()
    max_sessions: int = DEFAULT_MAX_SESSIONS
    interfaces: tuple[InterfaceConfig, ...] = ()   # data interfaces of `appliance run`

    @property
    def interface_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.interfaces)


# --------------------------------------------------------------------------
# Locating keys in the source text, so errors can name a line. tomllib gives
# positions only for syntax errors; keys are found again by a small scan of
# table headers, which is enough for the flat schema above.

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"']+)\s*\]\]?")


def _find_line(text: str, table: Optional[str], index: Optional[int], key: Optional[str]) -> Optional[int]:
    lines = text.splitlines()
    count = -1
    in_target = table is None
    key_re = re.compile(r"^\s*" + re.escape(key) + r"\s*=") if key else None
    header_line = None
    for no, line in enumerate(lines, 1):
        m = _HEADER.match(line)
        if m:
            name = m.group(2).strip("\"'")
            if m.group(1) == "[[" and name == table:
                count += 1
            in_target = name == table and (index is None or count == index)
            if in_target:
                header_line = no
            continue
        if in_target and key_re is not None and key_re.match(line):
            return no
    return header_line


class _Reader:
    """Pops keys off a TOML table, raising ConfigError for wrong types;
    whatever is left at the end is an unknown key."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text

    def error(self, table: Optional[str], index: Optional[int], key: Optional[str], reason: str) -> ConfigError:
        name = ""
        if table:
            name = table + (f"[{index}]" if index is not None else "")
        if key:
            name = f"{name}.{key}" if name else key
        return ConfigError(self.path, name, reason, _find_line(self.text, table, index, key))

    def take(self, data: dict, table, index, key, types, default=None, required=False):
        if key not in data:
            if required:
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
            raise self.error(table, index, key,
                             f"unknown key (known keys: {', '.join(sorted(known))})")


def _type_names(types) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table", bool: "a boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


# --------------------------------------------------------------------------

def parse_backend(text: str, family: int) -> Backend:
    """Parse the seed's ``[SRC_IP [SRC_PORT]]->DST_IP [DST_PORT]``."""
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


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse and validate a configuration; raise ConfigError on any problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"at line (\d+)", msg)
        raise ConfigError(path, "", f"TOML syntax error: {msg}", int(m.group(1)) if m else None) from None
    r = _Reader(path, text)
    known_top = {"flow_hash_seed", "timeouts", "snat", "translation", "plugins", "sessions", "interface"}

    seed = r.take(data, None, None, "flow_hash_seed", (int,), 0)
    if not 0 <= seed < 1 << 64:
        raise r.error(None, None, "flow_hash_seed", "must be between 0 and 2^64-1")

    # [timeouts]
    t = r.take(data, None, None, "timeouts", (dict,), {})
    tv = {}
    for key in ("session", "tcp_established", "tcp_closing", "tcp_half_closed"):
        v = r.take(t, "timeouts", None, key, (int, float), None)
        if v is not None:
            if not 0 < v <= 7 * 24 * 3600:
                raise r.error("timeouts", None, key, "must be > 0 and at most 604800 seconds (7 days)")
            tv[key] = float(v)
    r.no_leftovers(t, "timeouts", None, {"session", "tcp_established", "tcp_closing", "tcp_half_closed"})
    timeouts = Timeouts(**tv)

    # [sessions]
    s = r.take(data, None, None, "sessions", (dict,), {})
    max_sessions = r.take(s, "sessions", None, "max", (int,), DEFAULT_MAX_SESSIONS)
    if not 1 <= max_sessions <= 1 << 30:
        raise r.error("sessions", None, "max", "must be between 1 and 2^30")
    r.no_leftovers(s, "sessions", None, {"max"})

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
        excl = []
        for item in r.take(sn, "snat", None, "exclude", (list,), []):
            if not isinstance(item, str):
                raise r.error("snat", None, "exclude", f"expected prefixes as strings, got {item!r}")
            try:
                excl.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise r.error("snat", None, "exclude", f"'{item}' is not an IP prefix") from None
        ifaces = r.take(sn, "snat", None, "interfaces", (list,), [])
        for item in ifaces:
            if not isinstance(item, str) or not item or len(item) > 15:
                raise r.error("snat", None, "interfaces", f"{item!r} is not an interface name")
        r.no_leftovers(sn, "snat", None, {"ip4", "ip6", "exclude", "interfaces"})
        if ifaces and ip4 is None and ip6 is None:
            raise r.error("snat", None, "interfaces", "SNAT interfaces need ip4 and/or ip6")
        snat = SnatConfig(ip4=ip4, ip6=ip6, exclude=tuple(excl), interfaces=tuple(ifaces))

    # [[translation]]
    translations = []
    seen: dict[tuple, int] = {}
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
            if not isinstance(b, str):
                raise r.error("translation", i, "backends", f"backend {j} must be a string, got {b!r}")
            try:
                backends.append(parse_backend(b, address.version))
            except ValueError as exc:
                raise r.error("translation", i, "backends", f"backend {j} '{b}': {exc}") from None
        r.no_leftovers(tr, "translation", i, {"proto", "vip", "real", "port", "backends"})
        ident = (proto, address, port)
        if ident in seen:
            raise r.error("translation", i, kind,
                          f"duplicate translation {proto} {address} {port} (also translation[{seen[ident]}])")
        seen[ident] = i
        translations.append(Translation(id=i, kind=kind, address=address, port=port, proto=proto,
                                        backends=tuple(backends)))
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
    r.no_leftovers(p, "plugins", None, {"modules"})

    # [[interface]]
    interfaces: list[InterfaceConfig] = []
    for i, itf in enumerate(r.take(data, None, None, "interface", (list,), [])):
        if not isinstance(itf, dict):
            raise r.error("interface", i, None, "must be a table ([[interface]])")
        name = r.take(itf, "interface", i, "name", (str,), required=True)
        if not re.fullmatch(r"[^\s/:]{1,15}", name):
            raise r.error("interface", i, "name", f"'{name}' is not an interface name")
        if any(x.name == name for x in interfaces):
            raise r.error("interface", i, "name", f"interface '{name}' listed twice")
        mode = r.take(itf, "interface", i, "xdp_mode", (str,), "auto")
        if mode not in XDP_MODES:
            raise r.error("interface", i, "xdp_mode", f"{mode!r} is not one of {', '.join(XDP_MODES)}")
        r.no_leftovers(itf, "interface", i, {"name", "xdp_mode"})
        interfaces.append(InterfaceConfig(name, mode))

    r.no_leftovers(data, None, None, known_top)
    return Config(path=path, flow_hash_seed=seed, timeouts=timeouts, snat=snat,
                  translations=tuple(translations), plugin_modules=tuple(modules),
                  max_sessions=max_sessions, interfaces=tuple(interfaces))


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
