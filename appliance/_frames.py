"""Frame builders (dpkt) for the demo traffic and the tests.

Every checksum here is a full computation (dpkt's, or over the IPv6
pseudo-header below), never an incremental update, so expected frames are
independent of the C code under test.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Optional

import dpkt


MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


def _ip(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def _v6(a: str) -> bool:
    return ":" in a


def l4(proto: str, sport: int = 0, dport: int = 0, payload: bytes = b"x" * 8, flags: Optional[int] = None,
       udp_sum: Optional[int] = None, seq: int = 1000, ack: int = 0):
    if proto == "tcp":
        return dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack,
                            flags=dpkt.tcp.TH_SYN if flags is None else flags, data=payload)
    if proto == "udp":
        u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        if udp_sum is not None:
            u.sum = udp_sum
        return u
    raise ValueError(proto)


def ip(src: str, dst: str, payload, proto: Optional[int] = None, ttl: int = 64, ident: int = 1,
       opts: bytes = b"", ext: bytes = b"", ext_nh: Optional[int] = None):
    """An IPv4 or IPv6 packet (bytes) with checksums computed by dpkt."""
    if proto is None:
        proto = {dpkt.tcp.TCP: 6, dpkt.udp.UDP: 17, dpkt.icmp.ICMP: 1, dpkt.icmp6.ICMP6: 58}[type(payload)]
    if _v6(src):
        body = bytes(_with_v6_csum(payload, src, dst, proto))
        pkt = dpkt.ip6.IP6(src=_ip(src), dst=_ip(dst), nxt=ext_nh if ext else proto, hlim=ttl,
                           plen=len(ext) + len(body))
        pkt.extension_hdrs = {}
        return bytes(pkt.pack_hdr()) + ext + body
    if not isinstance(payload, (bytes, bytearray)):
        # checksum computed over the whole L4 by dpkt
        pkt = dpkt.ip.IP(src=_ip(src), dst=_ip(dst), p=proto, ttl=ttl, id=ident, data=payload, opts=opts)
    else:
        pkt = dpkt.ip.IP(src=_ip(src), dst=_ip(dst), p=proto, ttl=ttl, id=ident, data=bytes(payload), opts=opts)
    pkt.hl = 5 + len(opts) // 4
    return bytes(pkt)


def _with_v6_csum(payload, src: str, dst: str, proto: int) -> bytes:
    """L4 bytes with a checksum over the IPv6 pseudo-header (full computation)."""
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if hasattr(payload, "sum"):
        keep_zero = isinstance(payload, dpkt.udp.UDP) and payload.sum == 0 and getattr(payload, "_keep_zero", False)
        if not keep_zero:
            payload.sum = 0
    data = bytes(payload)
    if isinstance(payload, dpkt.udp.UDP) and getattr(payload, "_keep_zero", False):
        return data
    pseudo = _ip(src) + _ip(dst) + struct.pack(">IxxxB", len(data), proto)
    csum = dpkt.dpkt.in_cksum(pseudo + data)
    if isinstance(payload, dpkt.udp.UDP) and csum == 0:
        csum = 0xFFFF
    off = {6: 16, 17: 6, 58: 2}[proto]
    return data[:off] + struct.pack(">H", csum) + data[off + 2:]


def eth(payload: bytes, v6: Optional[bool] = None, src: bytes = MAC_A, dst: bytes = MAC_B) -> bytes:
    if v6 is None:
        v6 = (payload[0] >> 4) == 6
    return dst + src + struct.pack(">H", 0x86DD if v6 else 0x0800) + payload


def tcp(src, sport, dst, dport, flags=None, payload=b"hello", seq=1000, ack=0, **kw) -> bytes:
    return eth(ip(src, dst, l4("tcp", sport, dport, payload, flags, seq=seq, ack=ack), **kw))


def udp(src, sport, dst, dport, payload=b"hello", udp_sum=None, **kw) -> bytes:
    u = l4("udp", sport, dport, payload)
    if udp_sum is not None:
        u.sum = udp_sum
        u._keep_zero = True
        if not _v6(src):
            # dpkt would fill the checksum; build by hand
            raw = struct.pack(">HHHH", sport, dport, 8 + len(payload), udp_sum) + payload
            return eth(ip(src, dst, raw, proto=17, **kw))
    return eth(ip(src, dst, u, **kw))


def icmp_echo(src, dst, ident, seq=1, reply=False, payload=b"ping") -> bytes:
    if _v6(src):
        echo = dpkt.icmp6.ICMP6.Echo(id=ident, seq=seq, data=payload)
        m = dpkt.icmp6.ICMP6(type=129 if reply else 128, code=0, data=echo)
        return eth(ip(src, dst, m, proto=58))
    echo = dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=payload)
    m = dpkt.icmp.ICMP(type=0 if reply else 8, code=0, data=echo)
    return eth(ip(src, dst, m, proto=1))


def icmp_error(src, dst, quoted_ip: bytes, type_=None, code=0, mtu=1280, quote_len=None) -> bytes:
    """An ICMP error from src to dst quoting quoted_ip (an IP packet)."""
    q = quoted_ip if quote_len is None else quoted_ip[:quote_len]
    if _v6(src):
        t = 1 if type_ is None else type_
        rest = struct.pack(">I", mtu if t == 2 else 0)
        raw = struct.pack(">BBH", t, code, 0) + rest + q
        pseudo = _ip(src) + _ip(dst) + struct.pack(">IxxxB", len(raw), 58)
        c = dpkt.dpkt.in_cksum(pseudo + raw)
        raw = raw[:2] + struct.pack(">H", c) + raw[4:]
        return eth(ip(src, dst, raw, proto=58))
    t = 3 if type_ is None else type_
    rest = struct.pack(">HH", 0, mtu if (t == 3 and code == 4) else 0)
    raw = struct.pack(">BBH", t, code, 0) + rest + q
    c = dpkt.dpkt.in_cksum(raw)
    raw = raw[:2] + struct.pack(">H", c) + raw[4:]
    return eth(ip(src, dst, raw, proto=1))


def strip_eth(frame: bytes) -> bytes:
    return frame[14:]


