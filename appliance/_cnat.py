"""The seed's `cnat` verbs: parsing, and what they do to a configuration.

Sans-IO: :func:`parse` turns the words of one command into a command
object, :func:`apply` turns a configuration and commands into a new
configuration, validated like the TOML file (the same parser checks each
translation). The runtime keeps the commands as an overlay on the watched
file (docs/operations.md, "Changing it at run time").

Grammar (case-insensitive keywords and protocol, as VPP's CLI)::

    translation add proto (tcp|udp|icmp) (vip|real) ADDRESS [PORT] to BACKEND [to BACKEND ...]
    translation del proto (tcp|udp|icmp) (vip|real) ADDRESS [PORT]
    translation del NAME
    snat with ADDRESS
    snat exclude PREFIX [del]
    backend set TRANSLATION BACKEND (weight N | drain | down | up)
    show (session [verbose] | translation | snat)
    save
    drain [SECONDS]

BACKEND is ``[SRC_IP [SRC_PORT]]->DST_IP [DST_PORT]``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Union

from ._config import Config, ConfigError, SnatConfig, parse_backend, parse_config
from ._types import Translation, default_translation_name
from .cluster import ClusterConfig

FORMS = {
    "translation add": "translation add proto (tcp|udp|icmp) (vip|real) ADDRESS [PORT] to "
                       "[SRC_IP [SRC_PORT]]->DST_IP [DST_PORT] [to ...]",
    "translation del": "translation del proto (tcp|udp|icmp) (vip|real) ADDRESS [PORT]  |  translation del NAME",
    "snat with": "snat with ADDRESS",
    "snat exclude": "snat exclude PREFIX [del]",
    "backend set": "backend set TRANSLATION BACKEND (weight N | drain | down | up)",
    "show": "show (session [verbose] | translation | snat)",
    "save": "save",
    "drain": "drain [SECONDS]",
}


class CnatSyntaxError(ValueError):
    """A command that is not in the grammar: says what was expected."""

    def __init__(self, reason: str, form: str) -> None:
        super().__init__(f"{reason}; expected: cnat {FORMS[form] if form in FORMS else form}")


@dataclasses.dataclass(frozen=True)
class TranslationAdd:
    proto: str
    kind: str
    address: str
    port: int
    backends: tuple[str, ...]

    @property
    def name(self) -> str:
        return default_translation_name(self.proto, ipaddress.ip_address(self.address), self.port)


@dataclasses.dataclass(frozen=True)
class TranslationDel:
    name: str


@dataclasses.dataclass(frozen=True)
class SnatWith:
    address: str


@dataclasses.dataclass(frozen=True)
class SnatExclude:
    prefix: str
    delete: bool = False


@dataclasses.dataclass(frozen=True)
class BackendSet:
    translation: str
    backend: str
    action: str            # "weight", "drain", "down", "up"
    weight: int = 0


@dataclasses.dataclass(frozen=True)
class Save:
    """The running configuration as TOML (the file with the changes in it)."""


@dataclasses.dataclass(frozen=True)
class Show:
    what: str              # "session", "translation", "snat"
    verbose: bool = False


@dataclasses.dataclass(frozen=True)
class InstanceDrain:
    """Stop taking new work: the vips withdrawn from BGP, established
    sessions served until they end or ``seconds`` pass, then the process
    stops (docs/cluster.md)."""
    seconds: int = 60


Command = Union[TranslationAdd, TranslationDel, SnatWith, SnatExclude, BackendSet, Show, Save, InstanceDrain]
#: the commands that change the configuration (kept in the overlay)
CHANGES = (TranslationAdd, TranslationDel, SnatWith, SnatExclude)


def parse(words: list[str]) -> Command:
    """One command's words (after ``cnat``) -> a command, or CnatSyntaxError."""
    w = [x for x in words if x]
    low = [x.lower() for x in w]
    if not w:
        raise CnatSyntaxError("no command", " | ".join(("translation ...", "snat ...", "backend set ...", "show ...",
                                                       "drain ...")))
    if low[0] == "translation" and len(w) >= 2 and low[1] == "add":
        return _translation(w[2:], low[2:], "translation add", with_backends=True)
    if low[0] == "translation" and len(w) >= 2 and low[1] == "del":
        if len(w) == 3:
            return TranslationDel(w[2])
        t = _translation(w[2:], low[2:], "translation del", with_backends=False)
        return TranslationDel(t.name)
    if low[:2] == ["snat", "with"]:
        if len(w) != 3:
            raise CnatSyntaxError("one address", "snat with")
        try:
            ipaddress.ip_address(w[2])
        except ValueError:
            raise CnatSyntaxError(f"'{w[2]}' is not an IP address", "snat with") from None
        return SnatWith(w[2])
    if low[:2] == ["snat", "exclude"]:
        rest = low[2:]
        delete = "del" in rest
        args = [x for x, lx in zip(w[2:], rest) if lx != "del"]
        if len(args) != 1 or rest.count("del") > 1:
            raise CnatSyntaxError("one prefix", "snat exclude")
        try:
            ipaddress.ip_network(args[0], strict=False)
        except ValueError:
            raise CnatSyntaxError(f"'{args[0]}' is not an IP prefix", "snat exclude") from None
        return SnatExclude(args[0], delete)
    if low[:2] == ["backend", "set"]:
        rest = w[2:]
        if len(rest) == 3 and rest[2].lower() in ("drain", "down", "up"):
            return BackendSet(rest[0], rest[1], rest[2].lower())
        if len(rest) == 4 and rest[2].lower() == "weight":
            if not rest[3].isdigit() or not 0 <= int(rest[3]) <= 10000:
                raise CnatSyntaxError(f"weight '{rest[3]}' is not an integer between 0 and 10000", "backend set")
            return BackendSet(rest[0], rest[1], "weight", int(rest[3]))
        raise CnatSyntaxError("a translation, a backend and what to set", "backend set")
    if low == ["save"]:
        return Save()
    if low[0] == "drain":
        if len(w) > 2 or (len(w) == 2 and not (w[1].isdigit() and 1 <= int(w[1]) <= 86400)):
            raise CnatSyntaxError("at most one deadline, in whole seconds between 1 and 86400", "drain")
        return InstanceDrain(int(w[1])) if len(w) == 2 else InstanceDrain()
    if low[0] == "show":
        if low[1:] in (["session"], ["session", "verbose"]):
            return Show("session", len(low) == 3)
        if low[1:] in (["translation"], ["snat"]):
            return Show(low[1])
        raise CnatSyntaxError(f"cannot show '{' '.join(w[1:])}'", "show")
    raise CnatSyntaxError(f"unknown command '{' '.join(w[:2])}'",
                          " | ".join(FORMS.values()))


def _translation(w: list[str], low: list[str], form: str, with_backends: bool) -> TranslationAdd:
    if len(w) < 3 or low[0] != "proto":
        raise CnatSyntaxError("it starts with 'proto'", form)
    proto = low[1]
    if proto not in ("tcp", "udp", "icmp"):
        raise CnatSyntaxError(f"protocol '{w[1]}' is not TCP, UDP or ICMP", form)
    if len(w) < 4 or low[2] not in ("vip", "real"):
        raise CnatSyntaxError("'vip' or 'real' and an address after the protocol", form)
    kind, address = low[2], w[3]
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        raise CnatSyntaxError(f"'{address}' is not an IP address", form) from None
    i = 4
    port = 0
    if i < len(w) and w[i].isdigit():
        port = int(w[i])
        i += 1
    if proto != "icmp" and not 1 <= port <= 65535:
        raise CnatSyntaxError(f"a port (1-65535) after {addr} for {proto.upper()}", form)
    if proto == "icmp" and port:
        raise CnatSyntaxError("no port for ICMP (every echo identifier matches)", form)
    backends: list[str] = []
    rest, rlow = w[i:], low[i:]
    if not with_backends:
        if rest:
            raise CnatSyntaxError(f"nothing after the address and port, got '{' '.join(rest)}'", form)
        return TranslationAdd(proto, kind, str(addr), port, ())
    if not rest or rlow[0] != "to":
        raise CnatSyntaxError("at least one 'to BACKEND'", form)
    current: list[str] = []
    for x, lx in zip(rest[1:], rlow[1:]):
        if lx == "to":
            backends.append(" ".join(current))
            current = []
        else:
            current.append(x)
    backends.append(" ".join(current))
    for b in backends:
        try:
            parse_backend(b, addr.version)
        except ValueError as exc:
            raise CnatSyntaxError(f"backend '{b}': {exc}", form) from None
    return TranslationAdd(proto, kind, str(addr), port, tuple(backends))


def apply(config: Config, commands: list[Command], source: str = "cnat") -> Config:
    """The configuration with the commands applied in order. ConfigError
    (naming the command) when one does not fit: a translation that exists
    already, a del of one that does not, an address of the wrong kind."""
    translations = list(config.translations)
    snat = config.snat or SnatConfig()
    for n, cmd in enumerate(commands):
        where = f"{source}[{n}]"
        if isinstance(cmd, TranslationAdd):
            t = _validated(cmd, where)
            if any(x.name == t.name or (x.proto, x.address, x.port) == (t.proto, t.address, t.port)
                   for x in translations):
                raise ConfigError(where, "translation", f"translation {t.name} exists already (del it first)")
            translations.append(t)
        elif isinstance(cmd, TranslationDel):
            keep = [x for x in translations if x.name != cmd.name and str(x.id) != cmd.name]
            if len(keep) == len(translations):
                raise ConfigError(where, "translation", f"no translation named {cmd.name}")
            translations = keep
        elif isinstance(cmd, SnatWith):
            a = ipaddress.ip_address(cmd.address)
            snat = dataclasses.replace(snat, **({"ip4": a} if a.version == 4 else {"ip6": a}))
        elif isinstance(cmd, SnatExclude):
            net = ipaddress.ip_network(cmd.prefix, strict=False)
            if cmd.delete:
                if net not in snat.exclude:
                    raise ConfigError(where, "snat", f"{net} is not excluded")
                snat = dataclasses.replace(snat, exclude=tuple(x for x in snat.exclude if x != net))
            elif net not in snat.exclude:
                snat = dataclasses.replace(snat, exclude=snat.exclude + (net,))
    translations = [dataclasses.replace(t, id=i) for i, t in enumerate(translations)]
    vips = {t.address for t in translations if t.kind == "vip"}
    for t in translations:
        if t.kind == "real" and t.address in vips:
            raise ConfigError(source, "translation", f"{t.address} is a vip in another translation")
    has_snat = config.snat is not None or snat != SnatConfig()
    return dataclasses.replace(config, translations=tuple(translations), snat=snat if has_snat else None)


def _validated(cmd: TranslationAdd, where: str) -> Translation:
    """The translation as the TOML parser makes it: the same checks."""
    port = f"port = {cmd.port}\n" if cmd.proto != "icmp" else ""
    backends = ", ".join('"' + b.replace("\\", "\\\\").replace('"', '\\"') + '"' for b in cmd.backends)
    text = f'[[translation]]\nproto = "{cmd.proto}"\n{cmd.kind} = "{cmd.address}"\n{port}backends = [{backends}]\n'
    try:
        return parse_config(text, where).translations[0]
    except ConfigError as exc:
        raise ConfigError(where, "translation", exc.reason) from None


def already_in(config: Config, cmd: Command) -> bool:
    """Does the configuration hold what the change makes already (the file
    was written with it, e.g. from `cnat save`)?"""
    try:
        return apply(config, [cmd]) == config
    except ConfigError:
        if isinstance(cmd, TranslationAdd):
            t = _validated(cmd, "cnat")
            return any((x.proto, x.kind, x.address, x.port, x.backends) ==
                       (t.proto, t.kind, t.address, t.port, t.backends) for x in config.translations)
        if isinstance(cmd, TranslationDel):
            return not any(x.name == cmd.name for x in config.translations)
        return False


def simplify(commands: list) -> list:
    """The overlay without changes that undo each other: a del of what an
    earlier add made, a `snat exclude ... del` of an earlier exclude."""
    out: list = []
    for cmd in commands:
        if isinstance(cmd, TranslationDel):
            adds = [c for c in out if isinstance(c, TranslationAdd) and c.name == cmd.name]
            if adds:
                out.remove(adds[-1])
                continue
        if isinstance(cmd, SnatExclude) and cmd.delete:
            same = [c for c in out if isinstance(c, SnatExclude) and not c.delete and
                    ipaddress.ip_network(c.prefix, strict=False) == ipaddress.ip_network(cmd.prefix, strict=False)]
            if same:
                out.remove(same[-1])
                continue
        out.append(cmd)
    return out


def render(cmd: Command) -> str:
    """The command in the seed's words (what `show` lists as the overlay)."""
    if isinstance(cmd, TranslationAdd):
        port = f" {cmd.port}" if cmd.port else ""
        return (f"translation add proto {cmd.proto.upper()} {cmd.kind} {cmd.address}{port} "
                + " ".join(f"to {b}" for b in cmd.backends))
    if isinstance(cmd, TranslationDel):
        return f"translation del {cmd.name}"
    if isinstance(cmd, SnatWith):
        return f"snat with {cmd.address}"
    if isinstance(cmd, SnatExclude):
        return f"snat exclude {cmd.prefix}" + (" del" if cmd.delete else "")
    if isinstance(cmd, BackendSet):
        return f"backend set {cmd.translation} {cmd.backend} {cmd.action}" + (
            f" {cmd.weight}" if cmd.action == "weight" else "")
    if isinstance(cmd, Save):
        return "save"
    if isinstance(cmd, InstanceDrain):
        return f"drain {cmd.seconds}"
    return f"show {cmd.what}" + (" verbose" if getattr(cmd, "verbose", False) else "")


def to_toml(config: Config) -> str:
    """The configuration as TOML that parses back to it (`appliance cnat
    save`: the file's configuration with the runtime changes in it)."""
    def q(v) -> str:
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def arr(items) -> str:
        return "[" + ", ".join(q(x) for x in items) + "]"

    def table(d: dict) -> str:
        return "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }"

    def timeouts(t) -> dict:
        d = {"session": f"{t.session:g}", "tcp_established": f"{t.tcp_established:g}",
             "tcp_closing": f"{t.tcp_closing:g}", "tcp_syn": f"{t.tcp_syn:g}"}
        if t.tcp_half_closed is not None:
            d["tcp_half_closed"] = f"{t.tcp_half_closed:g}"
        return d

    out = [f"flow_hash_seed = {config.flow_hash_seed}", "", "[timeouts]"]
    out += [f"{k} = {v}" for k, v in timeouts(config.timeouts).items()]
    out += ["", "[sessions]", f"max = {config.max_sessions}"]
    sn = config.snat
    if sn is not None:
        out += ["", "[snat]"]
        if sn.ip4 is not None:
            out.append(f"ip4 = {q(sn.ip4)}")
        if sn.ip6 is not None:
            out.append(f"ip6 = {q(sn.ip6)}")
        out += [f"interfaces = {arr(sn.interfaces)}", f"exclude = {arr(sn.exclude)}", f"policy = {q(sn.policy)}"]
        if sn.pod_prefixes:
            out.append(f"pod_prefixes = {arr(sn.pod_prefixes)}")
        if sn.by_destination:
            out.append("by_destination = [" + ", ".join(table({"prefix": q(n), "address": q(a)})
                                                        for n, a in sn.by_destination) + "]")
    if config.locality:
        out += ["", "[locality]", "labels = " + table({k: q(v) for k, v in config.locality})]
    if config.plugin_modules:
        out += ["", "[plugins]", f"modules = {arr(config.plugin_modules)}"]
    for i in config.interfaces:
        out += ["", "[[interface]]", f"name = {q(i.name)}", f"xdp_mode = {q(i.xdp_mode)}", f"io = {q(i.io)}"]
    cl = config.cluster
    if cl != ClusterConfig(config.bgp is not None):
        out += ["", "[cluster]", f"stateless_failover = {'true' if cl.stateless_failover else 'false'}"]
        if cl.source_ports is not None:
            out.append(f"source_ports = {q('%d-%d' % cl.source_ports)}")
        if cl.sync:
            def ep(e) -> str:
                return q(f"[{e[0]}]:{e[1]}" if e[0].version == 6 else f"{e[0]}:{e[1]}")
            out += [f"sync_listen = {ep(cl.sync_listen)}", "sync_peers = [" + ", ".join(map(ep, cl.sync_peers)) + "]",
                    f"sync_refresh = {cl.sync_refresh}",
                    f"sync_key_file = {q(cl.sync_key_file)}" if cl.sync_key_file else
                    f"sync_key = {q(cl.sync_key.decode())}"]
    if config.bgp is not None:
        b = config.bgp
        out += ["", "[bgp]", f"asn = {b.asn}", f"router_id = {q(b.router_id)}", f"hold_time = {b.hold_time}",
                f"bird = {q(b.bird)}"] + ([f"socket = {q(b.socket)}"] if b.socket else [])
        for n in b.neighbors:
            announce = (["vips"] if n.vips else []) + [str(p) for p in n.prefixes]
            out += ["", "[[bgp.neighbor]]", f"address = {q(n.address)}", f"asn = {n.asn}", f"port = {n.port}",
                    f"announce = {arr(announce)}"]
    for t in config.translations:
        out += ["", "[[translation]]", f"name = {q(t.name)}", f"proto = {q(t.proto)}", f"{t.kind} = {q(t.address)}"]
        if t.proto != "icmp":
            out.append(f"port = {t.port}")
        out.append(f"selector = {q(t.selector)}")
        if t.timeouts is not None:
            out.append("timeouts = " + table(timeouts(t.timeouts)))
        if t.drain.mode == "deadline":
            out.append(f"drain = {{ deadline = {t.drain.deadline:g} }}")
        elif t.drain.mode != "default":
            out.append(f"drain = {q(t.drain.mode)}")
        if t.affinity is not None:
            out.append(f"affinity = {{ timeout = {t.affinity:g} }}")
        if t.allow_from:
            out.append(f"allow_from = {arr(t.allow_from)}")
        if t.health is not None:
            h = t.health
            d = {"interval": f"{h.interval:g}", "timeout": f"{h.timeout:g}", "fall": h.fall, "rise": h.rise}
            if h.port:
                d["port"] = h.port
            if h.http:
                d["http"] = q(h.http)
            out.append("health = " + table(d))
        bs = []
        for b in t.backends:
            d = {"to": q(b.rewrite)}
            if b.name != b.rewrite:
                d["name"] = q(b.name)
            if b.weight != 1:
                d["weight"] = b.weight
            if b.state != "active":
                d["state"] = q(b.state)
            if b.labels:
                d["labels"] = table({k: q(v) for k, v in b.labels.items()})
            bs.append("  " + (table(d) if len(d) > 1 else d["to"]) + ",")
        out += ["backends = ["] + bs + ["]"]
    return "\n".join(out) + "\n"
