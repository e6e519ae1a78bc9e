"""``appliance demo``: the seed's examples through the NAT core, explained.

A scripted conversation with a fake clock: each request goes through the
core, the destination answers whatever was forwarded, the answer comes back
through the core. Then the session table and the counters. No root, no
interfaces: this is the NAT core alone (the live datapath is `appliance run`).
"""

from __future__ import annotations

import importlib.resources
import sys

import dpkt

from . import parse_config
from ._describe import describe
from ._plugins import Plugins
from .examples.demo_traffic import steps
from .nat import Batch, NatCore, Verdict
from .nat._binding import COUNTER_NAMES


def _answer(frame: bytes) -> bytes:
    """The reply a destination would send to this frame."""
    e = dpkt.ethernet.Ethernet(frame)
    ipp = e.data
    l4 = ipp.data
    ipp.src, ipp.dst = ipp.dst, ipp.src
    if isinstance(l4, dpkt.tcp.TCP):
        l4.sport, l4.dport = l4.dport, l4.sport
        l4.flags = dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
        l4.ack = l4.seq + 1
        l4.sum = 0
    elif isinstance(l4, dpkt.udp.UDP):
        l4.sport, l4.dport = l4.dport, l4.sport
        l4.data = b"answer"
        l4.ulen = 8 + len(l4.data)
        l4.sum = 0
    else:
        l4.type = 129 if isinstance(l4, dpkt.icmp6.ICMP6) else 0
        l4.sum = 0
    if isinstance(ipp, dpkt.ip6.IP6):
        ipp.plen = len(bytes(l4))
        # dpkt computes the IPv6 L4 checksum when packing the IP6 object
    else:
        ipp.len = 0
        ipp.sum = 0
    e.src, e.dst = e.dst, e.src
    return bytes(e)


def run(out=sys.stdout) -> int:
    text = importlib.resources.files("appliance.examples").joinpath("demo.toml").read_text()
    config = parse_config(text, "appliance/examples/demo.toml")
    core = NatCore(config, Plugins(entry_points=False))
    now = 1000.0
    batch = Batch(1)

    def send(frame: bytes, iface: str) -> tuple[int, str, bytes]:
        batch.load([(frame, core.port(iface), now)])
        core.process(batch, now)
        f = batch.frames[0]
        reason = "translated" if f.verdict == Verdict.FORWARD else COUNTER_NAMES[f.reason]
        return f.verdict, reason, batch.data(0)

    print("Configuration (appliance/examples/demo.toml):", file=out)
    for t in config.translations:
        print(f"  translation {t}", file=out)
    s = config.snat
    print(f"  snat {s.ip4} / {s.ip6} on {', '.join(s.interfaces)}, excluding "
          f"{', '.join(map(str, s.exclude))}\n", file=out)

    names = {0: "forward", 1: "pass", 2: "drop"}
    for what, iface, frame, answer in steps():
        now += 0.01
        verdict, reason, data = send(frame, iface)
        print(f"{what}", file=out)
        print(f"  in  {iface:4} {describe(frame)}", file=out)
        if verdict == Verdict.DROP:
            print(f"  DROPPED ({reason})", file=out)
        else:
            print(f"  out      {describe(data)}   [{names[verdict]}: {reason}]", file=out)
        if answer and verdict in (Verdict.FORWARD, Verdict.PASS):
            reply = _answer(data)
            v2, r2, d2 = send(reply, "eth0")
            print(f"  reply    {describe(reply)}", file=out)
            print(f"  back     {describe(d2)}   [{names.get(v2, v2)}: {r2}]", file=out)
        print(file=out)

    print("Sessions (show sessions):", file=out)
    for sess in core.sessions():
        backend = ""
        if sess.translation is not None:
            backend = f" backend {config.translations[sess.translation].backends[sess.backend]}"
        print(f"  {sess}{backend}", file=out)
    st = core.statistics()
    print("\nCounters:", file=out)
    for k, v in st.counters.items():
        if v:
            print(f"  {k:24} {v}", file=out)
    print(f"\nsessions created {st.sessions_created}, active {st.sessions}; new flows per translation "
          f"{st.new_flows_per_translation}", file=out)
    return 0
