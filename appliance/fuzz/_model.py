"""An independent model of what the NAT core does to one frame, written from
the rules (docs/architecture.md, README "limits", the counters' meanings in
nat_counters.def), not from the C.

For each frame it gives an :class:`Expectation`: the verdict, the drop or
pass reason, and for a translated frame the rewrite as edits of the input
bytes. Checksums are not predicted byte for byte: the check is that every
checksum field the NAT may touch keeps the frame's one's-complement sum
over its whole span (pseudo-header included) as it was, recomputed in
full on both frames. A valid checksum stays valid, a broken one stays
broken by the same amount (what RFC 1624's update does, and what a full
recomputation of a valid frame gives), and UDP's 0 stays 0. A port the
NAT allocates (SNAT) is free: the model takes it from the output, checks
its range and uniqueness, and predicts the flow's later frames with it.

The model keeps its own session table; it never ages (the fuzz runs at one
instant) and is never full (the corpus stays below the pressure threshold).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from typing import Callable, Optional

ETH_IP4, ETH_IP6 = 0x0800, 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8)
TCP, UDP, ICMP4, ICMP6 = 6, 17, 1, 58
#: ICMP errors that quote a packet: v4 unreachable, time exceeded, parameter problem; v6 the same and too big
ICMP4_ERRORS, ICMP6_ERRORS = (3, 11, 12), (1, 2, 3, 4)
ICMP4_ECHO, ICMP6_ECHO = (8, 0), (128, 129)   # request, reply
IP6_EXT = (0, 43, 60)   # hop-by-hop, routing, destination options (fragment, 44, apart)


def ones(data: bytes) -> int:
    """The one's-complement sum of 16-bit words, folded to 16 bits."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def same_sum(a: int, b: int) -> bool:
    """Equal in one's complement, where 0x0000 and 0xFFFF are both zero."""
    return a == b or {a, b} == {0, 0xFFFF}


class Drop(Exception):
    """A frame the rules drop or pass unchanged, with the counter's name."""

    def __init__(self, reason: str, verdict: str = "drop") -> None:
        self.reason, self.verdict = reason, verdict


def _pass(reason: str) -> Drop:
    return Drop(reason, "pass")


@dataclasses.dataclass
class L3:
    """One IP header and what follows it, offsets into the frame."""
    family: int              # 4 or 6
    off: int                 # of the IP header
    hlen: int                # IPv4 IHL*4, or 40 + extension headers before the upper layer
    end: int                 # the datagram's end (total length), <= len(frame)
    proto: int
    src: bytes
    dst: bytes
    first: bool = True       # not a fragment, or the first one
    fragment: bool = False   # a fragment of either kind
    ident: int = 0
    routing_left: bool = False   # IPv6 routing header with segments left
    atomic: bool = False     # an IPv6 fragment header with offset 0 and no more

    @property
    def l4(self) -> int:
        return self.off + self.hlen

    def addr_offsets(self) -> tuple[int, int]:
        if self.family == 4:
            return self.off + 12, self.off + 16
        return self.off + 8, self.off + 24


def parse_l3(frame: bytes, off: int, family: int, inner: bool = False) -> L3:
    """An IPv4/IPv6 header at ``off``: the rules' checks in their order.
    ``inner``: a packet quoted in an ICMP error, which may be cut short
    (its lengths are what it said when it was whole)."""
    n = len(frame) - off
    if family == 4:
        if n < 20:
            raise Drop("drop_icmp_inner_bad" if inner else "drop_ip4_truncated")
        vihl = frame[off]
        ihl = (vihl & 0xF) * 4
        if vihl >> 4 != 4 or ihl < 20:
            raise Drop("drop_icmp_inner_bad" if inner else "drop_ip4_bad_header")
        if ihl > n:
            raise Drop("drop_icmp_inner_bad" if inner else "drop_ip4_truncated")
        total = struct.unpack_from("!H", frame, off + 2)[0]
        if total < ihl or (total > n and not inner):
            raise Drop("drop_icmp_inner_bad" if inner else "drop_ip4_bad_length")
        if not inner and ones(frame[off:off + ihl]) != 0xFFFF:
            raise Drop("drop_ip4_bad_checksum")
        flags = struct.unpack_from("!H", frame, off + 6)[0]
        offset, more = flags & 0x1FFF, bool(flags & 0x2000)
        return L3(4, off, ihl, off + min(total, n), frame[off + 9], frame[off + 12:off + 16],
                  frame[off + 16:off + 20], first=offset == 0, fragment=bool(offset or more),
                  ident=struct.unpack_from("!H", frame, off + 4)[0])
    if n < 40:
        raise Drop("drop_icmp_inner_bad" if inner else "drop_ip6_truncated")
    if frame[off] >> 4 != 6:
        raise Drop("drop_icmp_inner_bad" if inner else "drop_ip6_bad_header")
    plen = struct.unpack_from("!H", frame, off + 4)[0]
    if not inner and (plen == 0 or 40 + plen > n):
        raise Drop("drop_ip6_bad_length")
    end = off + min(40 + plen, n)
    l3 = L3(6, off, 40, end, frame[off + 6], frame[off + 8:off + 24], frame[off + 24:off + 40])
    nxt, p = frame[off + 6], off + 40
    while nxt in IP6_EXT or nxt == 44:
        if nxt == 0 and p != off + 40:     # RFC 8200: hop-by-hop options come first or not at all
            raise Drop("drop_icmp_inner_bad" if inner else "drop_ip6_bad_header")
        if p + 8 > end:
            raise Drop("drop_icmp_inner_bad" if inner else "drop_ip6_truncated")
        if nxt == 44:
            # an atomic fragment (offset 0, no more: RFC 6946) is the whole
            # datagram, handled as if it had no fragment header
            fo = struct.unpack_from("!H", frame, p + 2)[0]
            l3.ident = struct.unpack_from("!I", frame, p + 4)[0]
            nxt, p = frame[p], p + 8
            if fo >> 3:
                l3.fragment, l3.first = True, False
                break       # what follows is the middle of a datagram, not headers
            l3.fragment = l3.fragment or bool(fo & 1)
            l3.atomic = l3.atomic or not fo & 1
            continue
        size = (frame[p + 1] + 1) * 8
        if p + size > end:
            raise Drop("drop_icmp_inner_bad" if inner else "drop_ip6_truncated")
        if nxt == 43 and frame[p + 3] > 0:
            l3.routing_left = True
        nxt, p = frame[p], p + size
    l3.proto, l3.hlen = nxt, p - off
    return l3


@dataclasses.dataclass
class Flow:
    """What a session rewrites: the tuple as it arrives -> as it leaves."""
    proto: int
    src: bytes
    sport: int
    dst: bytes
    dport: int

    def key(self) -> tuple:
        return (self.proto, self.src, self.sport, self.dst, self.dport)

    def reverse(self) -> "Flow":
        return Flow(self.proto, self.dst, self.dport, self.src, self.sport)


@dataclasses.dataclass
class Expectation:
    verdict: str                       # "translated", "passed" or "drop"
    reason: str                        # counter name ("translated" for a rewrite)
    edits: list = dataclasses.field(default_factory=list)       # (offset, bytes)
    sums: list = dataclasses.field(default_factory=list)        # (field offset, span start, span end, pseudo fn)
    udp_zero: list = dataclasses.field(default_factory=list)    # UDP checksum fields that must stay 0
    free: list = dataclasses.field(default_factory=list)        # (offset, on_value) ports the NAT chooses
    udp_sums: set = dataclasses.field(default_factory=set)      # fields of sums that are UDP checksums
    new_src: bytes = b""                # a first fragment's rewrite, for the fragments after it
    new_dst: bytes = b""


@dataclasses.dataclass
class Rules:
    """The configuration the model knows (the corpus's)."""
    #: (proto, vip bytes, port) -> (backend bytes, backend port); ICMP echo: port 0, backend port 0
    translations: dict
    vips: set
    snat: dict                         # family -> SNAT address bytes
    snat_interfaces: set
    excluded: list                     # ipaddress networks
    #: source ports handed out (SNAT and DNAT alike); a free original one is kept (not 0), as Linux does
    snat_ports: tuple = (1024, 65535)


class Model:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.sessions: dict[tuple, Flow] = {}   # key as it arrives -> tuple as it leaves
        self.forward: set = set()               # the keys of initiators (the other: their answers)
        self.frags: dict[tuple, tuple] = {}     # (family, src, dst, proto, ident) -> (new src, new dst)
        #: how often the rules' less common paths were taken (the test's floors)
        self.paths: dict[str, int] = {}

    def _took(self, path: str) -> None:
        self.paths[path] = self.paths.get(path, 0) + 1

    # -- the frame ---------------------------------------------------------

    def expect(self, frame: bytes, iface: str) -> Expectation:
        try:
            return self._frame(frame, iface)
        except Drop as d:
            return Expectation("passed" if d.verdict == "pass" else "drop", d.reason)

    def _frame(self, frame: bytes, iface: str) -> Expectation:
        if len(frame) < 14:
            raise Drop("drop_eth_truncated")
        off, et = 12, struct.unpack_from("!H", frame, 12)[0]
        for _ in range(2):          # a VLAN tag, or two (802.1ad)
            if et not in VLAN_TPIDS:
                break
            off += 4
            if len(frame) < off + 2:
                raise Drop("drop_eth_truncated")
            et = struct.unpack_from("!H", frame, off)[0]
        off += 2
        if et not in (ETH_IP4, ETH_IP6):
            raise _pass("pass_non_ip")
        l3 = parse_l3(frame, off, 4 if et == ETH_IP4 else 6)
        if l3.atomic:
            self._took("atomic_fragment")
        return self._datagram(frame, l3, iface)

    def _vip(self, l3: L3) -> bool:
        return l3.dst in self.rules.vips

    def _datagram(self, frame: bytes, l3: L3, iface: str) -> Expectation:
        icmp = ICMP4 if l3.family == 4 else ICMP6
        proto = l3.proto
        # the upper-layer header is checked before anything is decided,
        # even where a routing header's segments make it not ours to read
        if l3.first and proto in (TCP, UDP, icmp) and l3.end - l3.l4 < (20 if proto == TCP else 8):
            raise Drop("drop_l4_truncated")
        if l3.routing_left:
            if self._vip(l3):
                raise Drop("drop_no_translation")
            raise _pass("pass_ip6_routing")
        if not l3.first:
            return self._later_fragment(frame, l3, iface)
        if not l3.fragment:
            return self._first(frame, l3, iface)
        # a first fragment: its outcome, whatever it is, is what the
        # fragments after it get (a drop as drop_no_translation, a pass as transit)
        key = (l3.family, l3.src, l3.dst, l3.proto, l3.ident)
        try:
            e = self._first(frame, l3, iface)
        except Drop as d:
            self.frags[key] = d.verdict
            raise
        self.frags[key] = (e.new_src, e.new_dst)
        return e

    def _first(self, frame: bytes, l3: L3, iface: str) -> Expectation:
        icmp = ICMP4 if l3.family == 4 else ICMP6
        proto = l3.proto
        if proto not in (TCP, UDP, icmp):
            if self._vip(l3):
                raise Drop("drop_no_translation")
            raise _pass("pass_no_ports")
        if proto == icmp:
            t = frame[l3.l4]
            if t in (ICMP4_ERRORS if l3.family == 4 else ICMP6_ERRORS):
                return self._icmp_error(frame, l3)
            if t not in (ICMP4_ECHO if l3.family == 4 else ICMP6_ECHO):
                if self._vip(l3):
                    raise Drop("drop_no_translation")
                raise _pass("pass_no_ports")
            ident = struct.unpack_from("!H", frame, l3.l4 + 4)[0]
            flow = Flow(proto, l3.src, ident, l3.dst, ident)
        else:
            sport, dport = struct.unpack_from("!HH", frame, l3.l4)
            flow = Flow(proto, l3.src, sport, l3.dst, dport)
        out = self.sessions.get(flow.key())
        # a request matches only the initiator's key, a reply only the
        # answer's; with identifier 0 the two are one key (a request is
        # keyed by the identifier as its source port, a reply as its
        # destination port, and 0 is both), so either matches
        if out is not None and proto == icmp and flow.sport and \
                (frame[l3.l4] in (8, 128)) != (flow.key() in self.forward):
            out = None
        e = Expectation("translated", "translated")
        if out is None:
            out = self._new_flow(flow, l3, iface, frame[l3.l4] if proto == icmp else None)
            if out is None:
                raise _pass("pass_no_match")
            if out is flow:
                raise _pass("pass_no_snat")
        self._rewrite(frame, l3, flow, out, e)
        e.new_src, e.new_dst = out.src, out.dst
        return e

    def _later_fragment(self, frame: bytes, l3: L3, iface: str) -> Expectation:
        got = self.frags.get((l3.family, l3.src, l3.dst, l3.proto, l3.ident))
        if got == "drop":
            raise Drop("drop_no_translation")
        if got == "pass":
            raise _pass("pass_frag_transit")
        if got is None:
            # NAT traffic: to an address the NAT owns, or received where
            # SNAT applies (the exclusions are the slow path's, with ports)
            r = self.rules
            if self._vip(l3) or l3.dst in r.snat.values() or (iface in r.snat_interfaces and l3.family in r.snat):
                raise Drop("drop_frag_orphan")
            raise _pass("pass_frag_transit")
        e = Expectation("translated", "translated")
        s, d = l3.addr_offsets()
        e.edits += [(s, got[0]), (d, got[1])]
        if l3.family == 4:
            e.sums.append((l3.off + 10, l3.off, l3.off + l3.hlen, None))
        return e

    # -- new flows -----------------------------------------------------------

    def _new_flow(self, flow: Flow, l3: L3, iface: str, icmp_type: Optional[int]) -> Optional[Flow]:
        """The session a new flow gets, as the tuple it leaves with; the
        flow itself for a session without rewrite; None when it is not NAT
        traffic."""
        r = self.rules
        if icmp_type is not None and icmp_type in (0, 129):
            return self._not_new(l3)    # an echo reply starts nothing
        if self._vip(l3):
            port = 0 if flow.proto in (ICMP4, ICMP6) else flow.dport
            t = r.translations.get((flow.proto, l3.dst, port))
            if t is None:
                raise Drop("drop_no_translation")
            be, be_port = t
            # the source port is the NAT's choice too: the sender's is kept
            # when it is free and is a port (not TCP/UDP 0)
            out = Flow(flow.proto, flow.src, -1, be, be_port or flow.dport)
            if flow.proto in (ICMP4, ICMP6):
                out.dport = -1
            # SNAT applies after DNAT, to the flow towards its backend
            if self._snats(iface, l3.family, be):
                out.src = r.snat[l3.family]
                self._took("dnat_then_snat")
            return out
        if self._snats(iface, l3.family, l3.dst):
            return Flow(flow.proto, r.snat[l3.family], -1, flow.dst, flow.dport)   # port: the NAT's choice
        if iface in r.snat_interfaces and l3.family in r.snat:      # excluded
            self._install(flow, flow)
            return flow
        return None

    def _snats(self, iface: str, family: int, dst: bytes) -> bool:
        r = self.rules
        if iface not in r.snat_interfaces or family not in r.snat:
            return False
        d = ipaddress.ip_address(dst)
        return not any(d in n for n in r.excluded)

    def _not_new(self, l3: L3) -> None:
        if self._vip(l3):
            raise Drop("drop_no_translation")
        return None

    def _install(self, flow: Flow, out: Flow) -> None:
        self.sessions[flow.key()] = out
        self.forward.add(flow.key())
        back = out.reverse()
        self.sessions[back.key()] = flow.reverse()

    # -- the rewrite ---------------------------------------------------------

    def _rewrite(self, frame: bytes, l3: L3, flow: Flow, out: Flow, e: Expectation) -> None:
        s, d = l3.addr_offsets()
        e.edits += [(s, out.src), (d, out.dst)]
        if l3.family == 4:
            e.sums.append((l3.off + 10, l3.off, l3.off + l3.hlen, None))
        l4, end = l3.l4, l3.end
        if flow.proto in (ICMP4, ICMP6):
            if out.sport >= 0:
                e.edits.append((l4 + 4, struct.pack("!H", out.sport)))
            else:
                e.free.append((l4 + 4, lambda port, flow=flow, out=out: self._port_chosen(flow, out, port)))
            e.sums.append((l4 + 2, l4, end, _pseudo(l3) if flow.proto == ICMP6 else None))
            return
        if out.sport >= 0:
            e.edits.append((l4, struct.pack("!H", out.sport)))
        else:
            e.free.append((l4, lambda port, flow=flow, out=out: self._port_chosen(flow, out, port)))
        e.edits.append((l4 + 2, struct.pack("!H", out.dport)))
        field = l4 + (16 if flow.proto == TCP else 6)
        if flow.proto == UDP and frame[field:field + 2] == b"\0\0" and l3.family == 4:
            e.udp_zero.append(field)
        else:
            e.sums.append((field, l4, end, _pseudo(l3)))
            if flow.proto == UDP:
                e.udp_sums.add(field)

    def _port_chosen(self, flow: Flow, out: Flow, port: int) -> Optional[str]:
        """A new flow's source port as the NAT chose it: the sender's when
        that is free towards the new destination and is a port (an ICMP
        identifier may be 0, a TCP/UDP port not), else one of the range."""
        lo, hi = self.rules.snat_ports
        icmp = flow.proto in (ICMP4, ICMP6)
        if icmp:
            lo = 0                  # any identifier, 0 too
        def leaving(p: int) -> Flow:
            return Flow(out.proto, out.src, p, out.dst, p if icmp else out.dport)
        chosen = leaving(port)
        if chosen.reverse().key() in self.sessions:
            return f"source port {port} already in use towards that destination"
        keepable = (flow.sport or icmp) and leaving(flow.sport).reverse().key() not in self.sessions
        if keepable and port != flow.sport:
            return f"source port {port}: the sender's ({flow.sport}) was free and not kept"
        if not keepable and not lo <= port <= hi:
            return f"source port {port}: neither the sender's ({flow.sport}) nor in {lo}-{hi}"
        self._took("source_port_kept" if keepable else "source_port_zero" if not flow.sport else "source_port_taken")
        self._install(flow, chosen)
        return None

    # -- ICMP errors -----------------------------------------------------------

    def _icmp_error(self, frame: bytes, l3: L3) -> Expectation:
        """The quoted packet is the flow as it left the NAT, seen from the
        other side: its swapped tuple is a session key."""
        qoff = l3.l4 + 8
        inner = parse_l3(frame[:l3.end], qoff, l3.family, inner=True)
        iproto = inner.proto
        icmp = ICMP4 if l3.family == 4 else ICMP6
        if iproto not in (TCP, UDP, icmp) or not inner.first:
            raise self._no_session(l3)
        # the quoted packet is as long as its header says, or as much of it as is quoted
        if inner.end - inner.l4 < 8:
            raise Drop("drop_icmp_inner_bad")
        if iproto == icmp:
            if frame[inner.l4] not in (ICMP4_ECHO if l3.family == 4 else ICMP6_ECHO):
                raise self._no_session(l3)
            ident = struct.unpack_from("!H", frame, inner.l4 + 4)[0]
            quoted = Flow(iproto, inner.src, ident, inner.dst, ident)
        else:
            sp, dp = struct.unpack_from("!HH", frame, inner.l4)
            quoted = Flow(iproto, inner.src, sp, inner.dst, dp)
        key = quoted.reverse().key()
        back = self.sessions.get(key)
        if back is not None and iproto == icmp and quoted.sport and \
                (frame[inner.l4] in (8, 128)) == (key in self.forward):
            back = None     # a quoted request answers a reply's key, and a reply a request's (not 0: above)
        if back is None:
            raise self._no_session(l3)
        # the quoted packet becomes what the other side sent: back reversed
        orig = back.reverse()
        e = Expectation("translated", "translated")
        s, d = inner.addr_offsets()
        e.edits += [(s, orig.src), (d, orig.dst)]
        if inner.family == 4:
            e.sums.append((inner.off + 10, inner.off, inner.off + inner.hlen, None))
        il4 = inner.l4
        if iproto == icmp:
            e.edits.append((il4 + 4, struct.pack("!H", orig.sport)))
            e.sums.append((il4 + 2, il4, inner.end, _pseudo(inner) if iproto == ICMP6 else None))
        else:
            e.edits += [(il4, struct.pack("!H", orig.sport)), (il4 + 2, struct.pack("!H", orig.dport))]
            field = il4 + (16 if iproto == TCP else 6)
            if field + 2 <= inner.end:
                if iproto == UDP and frame[field:field + 2] == b"\0\0" and l3.family == 4:
                    e.udp_zero.append(field)
                else:
                    e.sums.append((field, il4, inner.end, _pseudo(inner)))
                    if iproto == UDP:
                        e.udp_sums.add(field)
        # outer: the destination is the flow's other end; the source only
        # when the error comes from that end itself (not a router on the way)
        os_, od = l3.addr_offsets()
        e.edits.append((od, orig.src))
        if l3.src == quoted.dst:
            e.edits.append((os_, orig.dst))
        if l3.family == 4:
            e.sums.append((l3.off + 10, l3.off, l3.off + l3.hlen, None))
        e.sums.append((l3.l4 + 2, l3.l4, l3.end, _pseudo(l3) if l3.family == 6 else None))
        return e

    def _no_session(self, l3: L3) -> Drop:
        """An ICMP error about no flow of ours: transit, unless it is to a
        vip (whose every packet is the NAT's)."""
        return Drop("drop_no_translation") if self._vip(l3) else _pass("pass_icmp_no_session")


def _pseudo(l3: L3) -> Callable[[bytes], bytes]:
    """The pseudo-header of an L4 checksum, read from a frame (either the
    input or the output): addresses, protocol and the segment's length as
    the header says (constant across the rewrite)."""
    def build(frame: bytes) -> bytes:
        s, d = l3.addr_offsets()
        n = 4 if l3.family == 4 else 16
        return frame[s:s + n] + frame[d:d + n] + struct.pack("!HH", l3.proto, l3.end - l3.l4)
    return build


def check(frame: bytes, want: Expectation, verdict: str, reason: str, out: bytes) -> list[str]:
    """What differs between the NAT's answer and the model's; [] if none."""
    if (verdict, reason) != (want.verdict, want.reason):
        return [f"verdict {verdict}/{reason}, model {want.verdict}/{want.reason}"]
    if verdict == "drop":
        return []
    if verdict == "passed":
        return [] if out == frame else ["passed frame changed"]
    problems = []
    if len(out) != len(frame):
        return [f"length {len(out)}, model {len(frame)}"]
    expected = bytearray(frame)
    for off, data in want.edits:
        expected[off:off + len(data)] = data
    masked = set()
    for field, *_ in want.sums:
        masked |= {field, field + 1}
    for off, on_value in want.free:
        masked |= {off, off + 1}
        problem = on_value(struct.unpack_from("!H", out, off)[0])
        if problem:
            problems.append(problem)
        expected[off:off + 2] = out[off:off + 2]
    for i in range(len(frame)):
        if i not in masked and out[i] != expected[i]:
            problems.append(f"byte {i}: 0x{out[i]:02x}, model 0x{expected[i]:02x}")
            break
    for field in want.udp_zero:
        if out[field:field + 2] != b"\0\0":
            problems.append(f"UDP checksum 0 at {field} became {out[field:field + 2].hex()}")
    for field, start, end, pseudo in want.sums:
        before = ones((pseudo(frame) if pseudo else b"") + frame[start:end])
        after = ones((pseudo(out) if pseudo else b"") + out[start:end])
        if not same_sum(before, after):
            problems.append(f"checksum at {field} (over {start}-{end}): sum 0x{after:04x}, was 0x{before:04x}")
        elif field in want.udp_sums and out[field:field + 2] == b"\0\0":
            problems.append(f"UDP checksum at {field} computed as 0 (must be 0xffff)")
    return problems
