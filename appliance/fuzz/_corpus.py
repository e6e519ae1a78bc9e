"""Frames of every kind the NAT core handles, built with struct (every
checksum a full computation), then some mutated or cut short.

Kinds: TCP/UDP to vips over IPv4 and IPv6 and their replies, ICMP echo to
a vip and SNATed, SNAT flows and their replies, SNAT-excluded and transit
traffic, ICMP errors quoting packets of live flows (from the far host and
from a router, quotes whole or cut to 8 bytes), first and later fragments
(and orphans), IPv4 options, IPv6 extension headers (a routing header with
and without segments left), VLAN tags, UDP checksum 0, non-IP frames,
other protocols. A share of them is then mutated: bytes flipped (the IPv4
header checksum fixed again half the time, so the flip reaches the layers
behind it), a length field changed, or the frame cut short.
"""

from __future__ import annotations

import ipaddress
import random
import struct

from ._model import ICMP4, ICMP6, TCP, UDP, Model, Rules, ones

CONFIG = """
[sessions]
max = 65536
[snat]
ip4 = "30.0.0.1"
ip6 = "30::1"
interfaces = ["tap0"]
exclude = ["20.0.0.0/24", "20::/64"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353"]
[[translation]]
proto = "tcp"
vip = "30::2"
port = 80
backends = ["->20::1 8080"]
[[translation]]
proto = "udp"
vip = "30::2"
port = 53
backends = ["->20::1 5353"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 81
backends = ["->50.0.0.1 8081"]
[[translation]]
proto = "udp"
vip = "30::2"
port = 54
backends = ["->50::1 5454"]
[[translation]]
proto = "icmp"
vip = "30.0.0.3"
backends = ["->20.0.0.3"]
[[translation]]
proto = "icmp"
vip = "30::3"
backends = ["->20::3"]
"""

A = lambda s: ipaddress.ip_address(s).packed   # noqa: E731
VIP4, VIP6, ICMP_VIP4, ICMP_VIP6 = A("30.0.0.2"), A("30::2"), A("30.0.0.3"), A("30::3")
SERVICES = {  # (proto, vip) -> [(port, backend, backend port)]
    (TCP, VIP4): [(80, A("20.0.0.1"), 8080), (81, A("50.0.0.1"), 8081)],
    (UDP, VIP4): [(53, A("20.0.0.1"), 5353)],
    (TCP, VIP6): [(80, A("20::1"), 8080)],
    (UDP, VIP6): [(53, A("20::1"), 5353), (54, A("50::1"), 5454)],
}
#: backends 50.0.0.1 and 50::1 are outside the SNAT exclusions: their flows
#: arriving on the SNAT interface are SNATed after DNAT


def rules() -> Rules:
    """What the model must know of CONFIG."""
    t = {}
    for (proto, vip), ports in SERVICES.items():
        for port, be, bp in ports:
            t[(proto, vip, port)] = (be, bp)
    t[(ICMP4, ICMP_VIP4, 0)] = (A("20.0.0.3"), 0)
    t[(ICMP6, ICMP_VIP6, 0)] = (A("20::3"), 0)
    return Rules(translations=t, vips={VIP4, VIP6, ICMP_VIP4, ICMP_VIP6},
                 snat={4: A("30.0.0.1"), 6: A("30::1")}, snat_interfaces={"tap0"},
                 excluded=[ipaddress.ip_network("20.0.0.0/24"), ipaddress.ip_network("20::/64")])


# -- builders ------------------------------------------------------------------

def _csum(data: bytes) -> int:
    return ~ones(data) & 0xFFFF


def l4(proto: int, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, flags: int = 0x02,
       udp_zero: bool = False, icmp_type: int = 8) -> bytes:
    """A TCP/UDP/ICMP-echo segment with its checksum over the pseudo-header
    (ICMPv4: none)."""
    if proto == TCP:
        seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 64240, 0, 0) + payload
        field = 16
    elif proto == UDP:
        seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        field = 6
    else:
        seg = struct.pack("!BBHHH", icmp_type, 0, 0, sport, 1) + payload
        field = 2
    if proto == UDP and udp_zero:
        return seg
    pseudo = b"" if proto == ICMP4 else src + dst + struct.pack("!HH", proto, len(seg))
    c = _csum(pseudo + seg)
    if proto == UDP and c == 0:
        c = 0xFFFF
    return seg[:field] + struct.pack("!H", c) + seg[field + 2:]


def ip4(src: bytes, dst: bytes, proto: int, body: bytes, opts: bytes = b"", ident: int = 1,
        frag: int = 0, ttl: int = 64) -> bytes:
    ihl = 5 + len(opts) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(body), ident, frag, ttl, proto, 0, src, dst) + opts
    return h[:10] + struct.pack("!H", _csum(h)) + h[12:] + body


def ip6(src: bytes, dst: bytes, proto: int, body: bytes, ext: list = (), hlim: int = 64) -> bytes:
    """``ext``: [(kind, bytes after its next-header byte)]."""
    chain = b""
    kinds = [k for k, _ in ext] + [proto]
    for i, (kind, rest) in enumerate(ext):
        chain += bytes([kinds[i + 1]]) + rest
    first = kinds[0]
    return struct.pack("!IHBB16s16s", 6 << 28, len(chain) + len(body), first, hlim, src, dst) + chain + body


def eth(packet: bytes, v6: bool, vlan: bool = False) -> bytes:
    et = struct.pack("!H", 0x86DD if v6 else 0x0800)
    tag = b"\x81\x00" + struct.pack("!H", 100) if vlan else b""
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + tag + et + packet


def ip(v6: bool, src: bytes, dst: bytes, proto: int, body: bytes, rnd: random.Random, extras: bool = True) -> bytes:
    if v6:
        ext = []
        if extras and rnd.random() < 0.15:
            ext.append((0, b"\0\x01\x04\0\0\0\0"))                      # hop-by-hop, PadN
        if extras and rnd.random() < 0.1:
            ext.append((43, bytes([0, 0, rnd.choice((0, 0, 1))]) + b"\0" * 4))   # routing, segments left 0 or 1
        if extras and rnd.random() < 0.1:
            ext.append((60, b"\0\x01\x04\0\0\0\0"))                     # destination options
        return ip6(src, dst, proto, body, ext)
    opts = b"\x94\x04\0\0" if extras and rnd.random() < 0.15 else b""   # router alert
    return ip4(src, dst, proto, body, opts, ident=rnd.randrange(65536))


# -- the corpus ------------------------------------------------------------------

class Corpus:
    """Frames for one model's state: each batch made from what the model
    knows so far (replies and errors for flows it has seen)."""

    def __init__(self, model: Model, rnd: random.Random) -> None:
        self.model, self.rnd = model, rnd
        self.flows: list[tuple] = []   # (v6, proto, client, cport, vip-or-dst, port, iface)
        self.kinds = [(self.new_vip_flow, 6), (self.reply, 6), (self.again, 3), (self.snat_flow, 3),
                      (self.icmp_error, 4), (self.fragments, 2), (self.orphan, 1), (self.echo, 2),
                      (self.excluded, 1), (self.transit, 1), (self.other, 1)]
        self.weights = [w for _, w in self.kinds]
        self.counts: dict[str, int] = {}
        self._pending: list[tuple[bytes, str, str]] = []

    def batch(self, n: int) -> list[tuple[bytes, str, str]]:
        """n frames: (frame, interface, kind). A kind's frames that do not
        fit (a datagram's second fragment) open the next batch."""
        out, self._pending = self._pending[:n], self._pending[n:]
        while len(out) < n:
            make = self.rnd.choices([k for k, _ in self.kinds], self.weights)[0]
            for frame, iface in make():
                kind = make.__name__
                if self.rnd.random() < 0.35:
                    frame, how = self.mutate(frame)
                    kind += "/" + how
                self.counts[kind] = self.counts.get(kind, 0) + 1
                out.append((frame, iface, kind))
        self._pending = out[n:] + self._pending
        return out[:n]

    # kinds ------------------------------------------------------------------

    def _client(self, v6: bool) -> bytes:
        r = self.rnd
        if v6:
            return A(f"10::{r.randrange(1, 200):x}:{r.randrange(1, 65535):x}")
        return bytes([10, 0, r.randrange(256), r.randrange(1, 255)])

    def _sport(self) -> int:
        """A client's source port: now and then 0, which is no port (the NAT picks one)."""
        return 0 if self.rnd.random() < 0.02 else self.rnd.randrange(1024, 65536)

    def _payload(self) -> bytes:
        return bytes(self.rnd.randrange(256) for _ in range(self.rnd.choice((0, 1, 5, 16, 33))))

    def _frame(self, v6, src, dst, proto, sport, dport, iface, flags=0x02, icmp_type=None):
        r = self.rnd
        if icmp_type is None:
            icmp_type = 128 if v6 else 8
        body = l4(proto, src, dst, sport, dport, self._payload(), flags=flags,
                  udp_zero=proto == UDP and not v6 and r.random() < 0.1, icmp_type=icmp_type)
        return eth(ip(v6, src, dst, proto, body, r), v6, vlan=r.random() < 0.1), iface

    def new_vip_flow(self):
        r = self.rnd
        (proto, vip), ports = r.choice(list(SERVICES.items()))
        v6 = len(vip) == 16
        port = r.choice(ports)[0] if r.random() < 0.9 else r.randrange(1, 65536)   # sometimes a port without translation
        client, cport = self._client(v6), self._sport()
        iface = "eth0" if r.random() < 0.8 else "tap0"
        self.flows.append((v6, proto, client, cport, vip, port, iface))
        yield self._frame(v6, client, vip, proto, cport, port, iface)

    def again(self):
        if not self.flows:
            return
        v6, proto, client, cport, dst, port, iface = self.rnd.choice(self.flows)
        yield self._frame(v6, client, dst, proto, cport, port, iface, flags=0x10)

    def _out(self, f):
        """What the model says the flow left as, or None."""
        v6, proto, client, cport, dst, port, iface = f
        return self.model.sessions.get((proto, client, cport, dst, port))

    def reply(self):
        if not self.flows:
            return
        f = self.rnd.choice(self.flows)
        out = self._out(f)
        if out is None:
            return
        v6, proto = f[0], f[1]
        icmp_type = None
        if proto in (ICMP4, ICMP6):
            icmp_type = 129 if v6 else 0
        yield self._frame(v6, out.dst, out.src, proto, out.dport, out.sport, "eth1", flags=0x12, icmp_type=icmp_type)

    def snat_flow(self):
        r = self.rnd
        v6 = r.random() < 0.4
        proto = r.choice((TCP, UDP, ICMP6 if v6 else ICMP4))
        client = A(f"10:1::{r.randrange(1, 65535):x}") if v6 else bytes([10, 1, r.randrange(256), r.randrange(1, 255)])
        dst = A(f"40::{r.randrange(1, 65535):x}") if v6 else bytes([40, 0, r.randrange(256), r.randrange(1, 255)])
        cport = 0 if r.random() < 0.02 else r.randrange(1, 65536)
        dport = cport if proto in (ICMP4, ICMP6) else r.choice((80, 443, 53, r.randrange(1, 65536)))
        self.flows.append((v6, proto, client, cport, dst, dport, "tap0"))
        yield self._frame(v6, client, dst, proto, cport, dport, "tap0")

    def echo(self):
        r = self.rnd
        v6 = r.random() < 0.5
        vip = ICMP_VIP6 if v6 else ICMP_VIP4
        client, ident = self._client(v6), r.randrange(65536)
        proto = ICMP6 if v6 else ICMP4
        self.flows.append((v6, proto, client, ident, vip, ident, "eth0"))
        yield self._frame(v6, client, vip, proto, ident, ident, "eth0")

    def excluded(self):
        r = self.rnd
        v6 = r.random() < 0.5
        dst = A("20::99") if v6 else A("20.0.0.99")
        yield self._frame(v6, self._client(v6), dst, r.choice((TCP, UDP)), r.randrange(1, 65536), 80, "tap0")

    def transit(self):
        r = self.rnd
        v6 = r.random() < 0.5
        dst = A("40::7") if v6 else A("40.0.0.7")
        yield self._frame(v6, self._client(v6), dst, r.choice((TCP, UDP)), r.randrange(1, 65536), 80, "eth0")

    def other(self):
        r = self.rnd
        if r.random() < 0.5:
            yield b"\xff" * 6 + b"\x02\0\0\0\0\x01" + b"\x08\x06" + bytes(28), "eth0"   # ARP
            return
        v6 = r.random() < 0.5
        dst = r.choice((VIP6, A("40::7"))) if v6 else r.choice((VIP4, A("40.0.0.7")))
        yield eth(ip(v6, self._client(v6), dst, 47, b"\0" * 8, r), v6), "eth0"             # GRE

    def icmp_error(self):
        """About a live flow, quoted as the far side saw it."""
        r = self.rnd
        if not self.flows:
            return
        f = r.choice(self.flows)
        out = self._out(f)
        if out is None:
            return
        v6, proto = f[0], f[1]
        if r.random() < 0.5:      # about the flow's packet as it left: from its destination or a router
            q = (out.src, out.dst, out.sport, out.dport)
            reporter = out.dst if r.random() < 0.5 else (A("20::fe") if v6 else A("20.0.0.254"))
        else:                     # about a reply as it left towards the client
            q = (f[4], f[2], f[5], f[3])
            reporter = f[2]
        qsrc, qdst, qsport, qdport = q
        icmp_type = None
        if proto in (ICMP4, ICMP6):   # a request as it left, or a reply
            icmp_type = (128 if v6 else 8) if reporter != f[2] else (129 if v6 else 0)
        inner = l4(proto, qsrc, qdst, qsport, qdport, self._payload(), icmp_type=8 if icmp_type is None else icmp_type)
        quoted = ip6(qsrc, qdst, proto, inner) if v6 else ip4(qsrc, qdst, proto, inner, ident=r.randrange(65536))
        if r.random() < 0.3:
            quoted = quoted[:(40 if v6 else 20) + 8]     # the minimum a router quotes
        if v6:
            etype, code = r.choice(((1, 4), (2, 0), (3, 0), (4, 0)))
            extra = struct.pack("!I", 1280 if etype == 2 else 0)
        else:
            etype, code = r.choice(((3, 3), (3, 4), (11, 0), (12, 0)))
            extra = struct.pack("!HH", 0, 1400 if code == 4 else 0)
        msg = struct.pack("!BBH", etype, code, 0) + extra + quoted
        proto_out = ICMP6 if v6 else ICMP4
        pseudo = (reporter + qsrc + struct.pack("!HH", ICMP6, len(msg))) if v6 else b""
        c = _csum(pseudo + msg)
        msg = msg[:2] + struct.pack("!H", c) + msg[4:]
        pkt = ip6(reporter, qsrc, proto_out, msg) if v6 else ip4(reporter, qsrc, proto_out, msg)
        yield eth(pkt, v6, vlan=r.random() < 0.1), "eth1"

    def fragments(self):
        """A UDP datagram to a vip in two fragments, in order; or, over
        IPv6, now and then an atomic fragment (offset 0, no more: the whole
        datagram, RFC 6946)."""
        r = self.rnd
        v6 = r.random() < 0.4
        vip = VIP6 if v6 else VIP4
        client, cport = self._client(v6), self._sport()
        seg = l4(UDP, client, vip, cport, 53, bytes(r.randrange(256) for _ in range(40)))
        if v6 and r.random() < 0.15:
            self.flows.append((v6, UDP, client, cport, vip, 53, "eth0"))
            yield eth(ip6(client, vip, UDP, seg, [(44, bytes([0]) + struct.pack("!HI", 0, r.randrange(1 << 32)))]), v6), "eth0"
            return
        cut = 16 if r.random() < 0.9 else 8
        ident = r.randrange(1, 1 << 16)
        if v6:
            fh = lambda off, more: (44, bytes([0]) + struct.pack("!HI", off | more, ident))   # noqa: E731
            first = ip6(client, vip, UDP, seg[:cut], [fh(0, 1)])
            later = ip6(client, vip, UDP, seg[cut:], [fh(cut, 0)])
        else:
            first = ip4(client, vip, UDP, seg[:cut], ident=ident, frag=0x2000)
            later = ip4(client, vip, UDP, seg[cut:], ident=ident, frag=cut // 8)
        yield eth(first, v6), "eth0"
        yield eth(later, v6), "eth0"

    def orphan(self):
        r = self.rnd
        v6 = r.random() < 0.5
        dst = r.choice((VIP6, A("40::7"))) if v6 else r.choice((VIP4, A("40.0.0.7")))
        body = bytes(16)
        ident = r.randrange(1, 1 << 16)
        if v6:
            pkt = ip6(self._client(True), dst, UDP, body, [(44, bytes([0]) + struct.pack("!HI", 16, ident))])
        else:
            pkt = ip4(self._client(False), dst, UDP, body, ident=ident, frag=2)
        yield eth(pkt, v6), "eth0"

    # mutation -------------------------------------------------------------------

    def mutate(self, frame: bytes) -> tuple[bytes, str]:
        r = self.rnd
        b = bytearray(frame)
        how = r.random()
        if how < 0.35:
            cut = r.randrange(0, len(b))
            return bytes(b[:cut]), "cut"
        l3 = 18 if b[12:14] == b"\x81\x00" else 14
        if how < 0.5 and len(b) > l3 + 6:   # a length field
            if b[l3] >> 4 == 4:
                struct.pack_into("!H", b, l3 + 2, r.randrange(0, len(b) + 8))
                _fix4(b, l3)
            elif b[l3] >> 4 == 6:
                struct.pack_into("!H", b, l3 + 4, r.randrange(0, len(b) + 8))
            return bytes(b), "length"
        for _ in range(r.randrange(1, 4)):
            off = min(len(b) - 1, int(r.expovariate(1 / 30)))
            b[off] = r.randrange(256)
        if r.random() < 0.5 and len(b) >= l3 + 20 and b[l3] >> 4 == 4:
            _fix4(b, l3)
            return bytes(b), "flip+csum"
        return bytes(b), "flip"


def _fix4(b: bytearray, off: int) -> None:
    ihl = (b[off] & 0xF) * 4
    if 20 <= ihl <= len(b) - off:
        b[off + 10:off + 12] = b"\0\0"
        b[off + 10:off + 12] = struct.pack("!H", _csum(bytes(b[off:off + ihl])))
