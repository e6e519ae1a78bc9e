"""One-line descriptions of frames, for ``replay -v`` and the demo."""

from __future__ import annotations

import ipaddress
import struct

import dpkt


def describe(frame: bytes) -> str:
    try:
        e = dpkt.ethernet.Ethernet(frame)
    except (dpkt.UnpackError, ValueError, IndexError, struct.error):
        return f"malformed ({len(frame)} bytes)"
    ip = e.data
    if isinstance(ip, dpkt.ip.IP):
        src, dst = str(ipaddress.IPv4Address(ip.src)), str(ipaddress.IPv4Address(ip.dst))
        fmt = "{}:{}"
    elif isinstance(ip, dpkt.ip6.IP6):
        src, dst = str(ipaddress.IPv6Address(ip.src)), str(ipaddress.IPv6Address(ip.dst))
        fmt = "[{}]:{}"
    else:
        return f"ethertype 0x{e.type:04x} ({len(frame)} bytes)"
    l4 = ip.data
    if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        name = "tcp" if isinstance(l4, dpkt.tcp.TCP) else "udp"
        flags = ""
        if name == "tcp":
            flags = " " + "".join(c for bit, c in ((2, "S"), (16, "A"), (1, "F"), (4, "R"), (8, "P"))
                                  if l4.flags & bit)
        return f"{name} {fmt.format(src, l4.sport)} -> {fmt.format(dst, l4.dport)}{flags}"
    if isinstance(l4, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
        kind = {8: "echo-request", 0: "echo-reply", 128: "echo-request", 129: "echo-reply",
                3: "unreachable", 11: "time-exceeded", 1: "unreachable", 2: "packet-too-big",
                }.get(l4.type, f"type {l4.type}")
        ident = ""
        if kind.startswith("echo") and isinstance(l4.data, (dpkt.icmp.ICMP.Echo, dpkt.icmp6.ICMP6.Echo)):
            ident = f" id {l4.data.id}"
        return f"icmp {src} -> {dst} {kind}{ident}"
    return f"ip proto {getattr(ip, 'p', getattr(ip, 'nxt', '?'))} {src} -> {dst}"
