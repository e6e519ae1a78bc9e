"""``appliance explain``: why would a new flow get this treatment?

Runs one first packet through a fresh NatCore with the given configuration
(and its plugins) and says which translation matched, the flow hash, the
backend chosen and by which rule, the SNAT decision and which exclusion
applied, the timeouts, and the rewrite both ways.
"""

from __future__ import annotations

import ipaddress

from ._config import Config
from ._plugins import Plugins
from ._frames import icmp_echo, tcp, udp
from ._types import proto_number
from .nat import Batch, NatCore, Verdict
from .nat._binding import COUNTER_NAMES


def parse_endpoint(text: str) -> tuple[str, int]:
    """'10.0.0.1:80' or '[fd00::1]:80' -> (address, port)."""
    if text.startswith("["):
        addr, _, port = text[1:].partition("]:")
    else:
        addr, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        addr = ""
    if not addr or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"'{text}': expected ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")
    return addr, int(port)


def explain(config: Config, proto: str, src: str, dst: str, interface: str) -> list[str]:
    (saddr, sport), (daddr, dport) = parse_endpoint(src), parse_endpoint(dst)
    family = ipaddress.ip_address(saddr).version
    if ipaddress.ip_address(daddr).version != family:
        raise ValueError("source and destination are of different address families")
    if proto == "tcp":
        frame = tcp(saddr, sport, daddr, dport, 0x02)
    elif proto == "udp":
        frame = udp(saddr, sport, daddr, dport)
    else:
        frame = icmp_echo(saddr, daddr, sport)   # the identifier plays the source port
        dport = 0
    core = NatCore(config, Plugins(config.plugin_modules, config_path=config.path), table_seed=0)
    pnum = proto_number(proto, family)
    out = [f"flow: {proto} {src} -> {dst} received on {interface}"]
    h = core.flow_hash(family, pnum, saddr, sport, daddr, dport)
    out.append(f"flow hash: {h} (flow_hash_seed {config.flow_hash_seed})")
    t = core.translation_for(family, pnum, daddr, dport)
    if t is not None:
        out.append(f"translation: {t}")
        bs = core.backend_set(t.id)
        if bs is not None and bs.eligible:
            builtin = bs.pick_weighted(h)
            out.append(f"selector {t.selector}; the weighted hash would pick backend {builtin} "
                       f"({t.backends[builtin].name}) of {len(bs.eligible)} eligible")
        elif t.backends:
            out.append("no backend is eligible (weight 0, down, or draining)")
    else:
        vip = any(x.address == ipaddress.ip_address(daddr) and x.kind == "vip" for x in config.translations)
        out.append("translation: none" + (" (the address is a vip: dropped)" if vip else ""))
    match = [t] if t is not None else []
    batch = Batch(1)
    batch.load([(frame, core.port(interface), 0.0)])
    core.process(batch, 0.0)
    f = batch.frames[0]
    if f.verdict == Verdict.DROP:
        out.append(f"verdict: dropped ({COUNTER_NAMES[f.reason]})")
        return out
    snat = config.snat
    if snat is not None and interface in snat.interfaces:
        sessions = list(core.sessions())
        post_dst = sessions[0].new_dst if sessions else ipaddress.ip_address(daddr)
        excl = snat.excluded(post_dst)
        out.append(f"snat: {interface} is an SNAT interface; destination after translation {post_dst} "
                   + (f"is excluded by {excl}" if excl else "is not excluded"))
    elif snat is not None:
        out.append(f"snat: {interface} is not an SNAT interface ({', '.join(snat.interfaces) or 'none'})")
    sessions = list(core.sessions())
    if not sessions:
        out.append(f"verdict: {'passed unchanged' if f.verdict == Verdict.PASS else 'forwarded'} "
                   f"({COUNTER_NAMES[f.reason] if f.verdict != Verdict.FORWARD else 'translated'}), no session")
        return out
    s = sessions[0]
    if s.backend is not None and match:
        out.append(f"backend chosen: {s.backend} ({s.backend_name}) by {core.plugins.decider}")
    prof = config.timeouts
    out.append(f"session: {s.kind}, lifetime {s.expires - s.last_seen:g} s in state {s.state} "
               f"(configured: session {prof.session:g} s, established {prof.tcp_established:g} s)")
    fmt = (lambda a, p: f"[{a}]:{p}") if family == 6 else (lambda a, p: f"{a}:{p}")
    out.append(f"rewrite: {fmt(s.src, s.sport)} -> {fmt(s.dst, s.dport)}  =>  "
               f"{fmt(s.new_src, s.new_sport)} -> {fmt(s.new_dst, s.new_dport)}")
    out.append(f"replies: {fmt(s.new_dst, s.new_dport)} -> {fmt(s.new_src, s.new_sport)}  =>  "
               f"{fmt(s.dst, s.dport)} -> {fmt(s.src, s.sport)}")
    return out
