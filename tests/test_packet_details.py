"""IPv4 options, IPv6 extension headers, fragments, UDP checksum 0, and
malformed frames (a table of reasons) plus fuzzing."""

import collections
import ipaddress
import struct

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packets import Harness, eth, icmp_error, ip, l4, tcp, udp
from appliance.nat import Verdict

FORWARD, PASS, DROP = Verdict.FORWARD, Verdict.PASS, Verdict.DROP
# of a property test's 400 examples, at least this many reach each branch that asserts
FUZZ_REACHED = 20

CONF = """
[snat]
ip4 = "30.0.0.1"
interfaces = ["tap0"]
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353"]
[[translation]]
proto = "udp"
vip = "30::2"
port = 53
backends = ["->20::1 5353"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
"""


def test_ipv4_options_are_skipped_and_kept():
    opts = b"\x94\x04\x00\x00"  # router alert
    h = Harness(CONF)
    h.send(eth(ip("10.0.0.1", "30.0.0.2", l4("tcp", 40000, 80), opts=opts))).expect(
        eth(ip("10.0.0.1", "20.0.0.1", l4("tcp", 40000, 8080), opts=opts)))


def _ext(nh, kind, segleft=0):
    if kind == 43:
        return bytes([nh, 0, 0, segleft]) + b"\0" * 4
    return bytes([nh, 0]) + b"\x01\x04\0\0\0\0"   # PadN


@pytest.mark.parametrize("chain", [[0], [60], [0, 60], [0, 43, 60]], ids=["hbh", "dstopt", "hbh+dstopt", "hbh+rt0+dstopt"])
def test_ipv6_extension_headers_walked(chain):
    def build(src, sport, dst, dport):
        ext = b""
        for i, kind in enumerate(chain):
            nh = chain[i + 1] if i + 1 < len(chain) else 17
            ext += _ext(nh, kind)
        return eth(ip(src, dst, l4("udp", sport, dport), proto=17, ext=ext, ext_nh=chain[0]))

    h = Harness(CONF)
    h.send(build("10::1", 5000, "30::2", 53)).expect(build("10::1", 5000, "20::1", 5353))


def test_ipv6_routing_header_with_segments_left():
    ext = _ext(17, 43, segleft=1)
    to_vip = eth(ip("10::1", "30::2", l4("udp", 5000, 53), proto=17, ext=ext, ext_nh=43))
    transit = eth(ip("10::1", "40::2", l4("udp", 5000, 53), proto=17, ext=ext, ext_nh=43))
    h = Harness(CONF)
    h.send(to_vip).expect_drop("drop_no_translation")
    h.send(transit).expect_pass(transit)


# -- fragments ---------------------------------------------------------------

def _csum(b):
    return dpkt.dpkt.in_cksum(b)


def frag4(packet: bytes, cut: int):
    """Split an IPv4 packet (no options) into two fragments at L4 offset cut."""
    hdr, body = packet[:20], packet[20:]
    out = []
    for off, chunk, mf in ((0, body[:cut], 1), (cut, body[cut:], 0)):
        h = bytearray(hdr)
        struct.pack_into("!H", h, 2, 20 + len(chunk))
        struct.pack_into("!H", h, 6, (mf << 13) | (off // 8))
        struct.pack_into("!H", h, 10, 0)
        struct.pack_into("!H", h, 10, _csum(bytes(h)))
        out.append(eth(bytes(h) + chunk))
    return out


def frag6(packet: bytes, cut: int, ident=0x12345678):
    hdr, body = packet[:40], packet[40:]
    nh = hdr[6]
    out = []
    for off, chunk, m in ((0, body[:cut], 1), (cut, body[cut:], 0)):
        h = bytearray(hdr)
        h[6] = 44
        fh = struct.pack("!BBHI", nh, 0, off | m, ident)
        struct.pack_into("!H", h, 4, 8 + len(chunk))
        out.append(eth(bytes(h) + fh + chunk))
    return out


PAYLOAD = bytes(range(256)) * 8


@pytest.mark.parametrize("family", [4, 6])
def test_fragments_follow_the_first(family):
    if family == 4:
        orig = ip("10.0.0.1", "30.0.0.2", l4("udp", 5000, 53, PAYLOAD))
        want = ip("10.0.0.1", "20.0.0.1", l4("udp", 5000, 5353, PAYLOAD))
        split = frag4
    else:
        orig = ip("10::1", "30::2", l4("udp", 5000, 53, PAYLOAD))
        want = ip("10::1", "20::1", l4("udp", 5000, 5353, PAYLOAD))
        split = frag6
    ins, outs = split(orig, 1000), split(want, 1000)
    h = Harness(CONF)
    h.send(ins[0]).expect(outs[0])
    h.send(ins[1]).expect(outs[1])
    assert h.counter("frag_followed") == 1


def test_fragments_in_one_batch_with_their_first():
    orig = ip("10.0.0.1", "30.0.0.2", l4("udp", 5000, 53, PAYLOAD))
    want = ip("10.0.0.1", "20.0.0.1", l4("udp", 5000, 5353, PAYLOAD))
    h = Harness(CONF)
    res = h.run(frag4(orig, 1000))
    assert [(v, d) for v, _, d in res] == [(FORWARD, f) for f in frag4(want, 1000)]


def test_orphan_fragments():
    h = Harness(CONF)
    to_vip = frag4(ip("10.0.0.1", "30.0.0.2", l4("udp", 5000, 53, PAYLOAD)), 1000)[1]
    h.send(to_vip).expect_drop("drop_frag_orphan")
    transit = frag4(ip("10.0.0.1", "40.0.0.2", l4("udp", 5000, 53, PAYLOAD)), 1000)[1]
    h.send(transit).expect_pass(transit)
    snat_side = frag4(ip("10.1.0.1", "40.0.0.2", l4("udp", 5000, 53, PAYLOAD)), 1000)[1]
    h.send(snat_side, "tap0").expect_drop("drop_frag_orphan")


def test_tiny_first_fragment_is_dropped():
    h = Harness(CONF)
    first = frag4(ip("10.0.0.1", "30.0.0.2", l4("tcp", 40000, 80, PAYLOAD)), 8)[0]
    h.send(first).expect_drop("drop_l4_truncated")


def test_udp_checksum_zero_stays_zero():
    h = Harness(CONF)
    h.send(udp("10.0.0.1", 5000, "30.0.0.2", 53, udp_sum=0)).expect(udp("10.0.0.1", 5000, "20.0.0.1", 5353, udp_sum=0))
    assert h.counter("udp_zero_csum") == 1


def test_vlan_tagged_frames_are_translated():
    inner = ip("10.0.0.1", "30.0.0.2", l4("udp", 5000, 53))
    want = ip("10.0.0.1", "20.0.0.1", l4("udp", 5000, 5353))
    tag = b"\x81\x00\x00\x64"
    mk = lambda p: b"\x02" * 6 + b"\x04" * 6 + tag + b"\x08\x00" + p
    Harness(CONF).send(mk(inner)).expect(mk(want))


# -- malformed frames -----------------------------------------------------------

GOOD = udp("10.0.0.1", 5000, "30.0.0.2", 53)
GOOD6 = udp("10::1", 5000, "30::2", 53)


def _mut(frame, off, val):
    b = bytearray(frame)
    b[off] = val
    return bytes(b)


def _ethertype(frame, et):
    return frame[:12] + struct.pack("!H", et) + frame[14:]


MALFORMED = [
    ("runt ethernet", GOOD[:10], DROP, "drop_eth_truncated"),
    ("arp", b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28, PASS, "pass_non_ip"),
    ("ipv4 header cut", GOOD[:14 + 12], DROP, "drop_ip4_truncated"),
    ("ipv4 ihl < 5", _mut(GOOD, 14, 0x44), DROP, "drop_ip4_bad_header"),
    ("ipv4 ihl beyond frame", _mut(GOOD[:14 + 24], 14, 0x4F), DROP, "drop_ip4_truncated"),
    ("ipv4 total length > frame", GOOD[:-3], DROP, "drop_ip4_bad_length"),
    ("ipv4 bad header checksum", _mut(GOOD, 14 + 8, 1), DROP, "drop_ip4_bad_checksum"),
    ("version 5 in ipv4 ethertype", _mut(GOOD, 14, 0x55), DROP, "drop_ip4_bad_header"),
    ("ipv6 header cut", GOOD6[:14 + 30], DROP, "drop_ip6_truncated"),
    ("ipv6 payload length > frame", GOOD6[:-2], DROP, "drop_ip6_bad_length"),
    ("ipv6 in ipv4 ethertype", GOOD6[:12] + b"\x08\x00" + GOOD6[14:], DROP, "drop_ip4_bad_header"),
    # the EtherType says which header is expected (these were counted as IPv4's)
    ("ipv4 in ipv6 ethertype", _ethertype(udp("10.0.0.1", 5000, "30.0.0.2", 53, payload=b"x" * 40), 0x86DD),
     DROP, "drop_ip6_bad_header"),
    ("ipv6 ethertype, no header", GOOD6[:14], DROP, "drop_ip6_truncated"),
    ("hop-by-hop after another header", eth(ip("10::1", "30::2", l4("udp", 5000, 53), proto=17,
                                              ext=_ext(0, 60) + _ext(17, 0), ext_nh=60)),
     DROP, "drop_ip6_bad_header"),
]


@pytest.mark.parametrize("what,frame,verdict,reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_frames_counted_by_reason(what, frame, verdict, reason):
    h = Harness(CONF)
    h.send(frame)
    if verdict == DROP:
        h.expect_drop(reason)
    else:
        h.expect_pass(frame)
        assert h.counter(reason) == 1


def test_truncated_l4_header_dropped():
    bad = eth(ip("10.0.0.1", "30.0.0.2", b"\x13\x88\x00\x35", proto=17))
    Harness(CONF).send(bad).expect_drop("drop_l4_truncated")


# not for a vip, not on an SNAT interface: the kernel's
PASSING = udp("10.0.0.1", 5000, "40.0.0.9", 53)


def test_fuzzed_frames_never_crash_or_mistranslate():
    reached = collections.Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from([GOOD, GOOD6, tcp("10.0.0.1", 1, "30.0.0.2", 80), PASSING]),
           st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6),
           st.integers(0, 140))
    def prop(base, flips, cut):
        frame = bytearray(base)
        for off, val in flips:
            if off < len(frame):
                frame[off] = val
        frame = bytes(frame[:max(cut, 0)] if cut < len(frame) else frame)
        h = Harness(CONF)
        verdict, reason, out = h.run([frame])[0]
        reached[verdict] += 1
        if verdict == PASS:
            assert out == frame
        if verdict == FORWARD:
            # whatever was translated must still parse and carry valid checksums
            e = dpkt.ethernet.Ethernet(out)
            pkt = e.data
            assert isinstance(pkt, (dpkt.ip.IP, dpkt.ip6.IP6))
            if isinstance(pkt, dpkt.ip.IP):
                assert _csum(out[14:14 + pkt.hl * 4]) == 0
            assert str(ipaddress.ip_address(pkt.dst)) in ("20.0.0.1", "20::1")

    prop()
    # the branches that assert were taken often enough to mean something
    assert reached[FORWARD] >= FUZZ_REACHED and reached[PASS] >= FUZZ_REACHED, reached


# -- checksum validity is preserved for any frame ---------------------------------

def _l4_valid(frame: bytes):
    """None if not checkable, else whether the IPv4 header and L4 checksums
    verify (full computation; independent of the C code)."""
    try:
        e = dpkt.ethernet.Ethernet(frame)
    except Exception:
        return None
    p = e.data
    raw = frame[14:]
    if isinstance(p, dpkt.ip.IP):
        hl = (raw[0] & 0xF) * 4
        if len(raw) < hl or _csum(raw[:hl]) != 0:
            return False
        tot = struct.unpack("!H", raw[2:4])[0]
        if tot > len(raw) or struct.unpack("!H", raw[6:8])[0] & 0x3FFF:
            return None
        body, proto = raw[hl:tot], raw[9]
        pseudo = raw[12:20] + struct.pack("!xBH", proto, len(body))
    elif isinstance(p, dpkt.ip6.IP6):
        plen = struct.unpack("!H", raw[4:6])[0]
        if raw[6] not in (6, 17, 58) or 40 + plen > len(raw):
            return None
        body, proto = raw[40:40 + plen], raw[6]
        pseudo = raw[8:40] + struct.pack("!IxxxB", len(body), proto)
    else:
        return None
    if proto == 1:
        return len(body) >= 8 and _csum(body) == 0
    if proto in (6, 17, 58) and len(body) >= (20 if proto == 6 else 8):
        if proto == 17 and body[6:8] == b"\0\0" and isinstance(p, dpkt.ip.IP):
            return True
        return _csum(pseudo + body) == 0
    return None


ICMP_BASES = [
    icmp_error("20.0.0.1", "10.0.0.1", ip("10.0.0.1", "20.0.0.1", l4("udp", 5000, 5353)),
                                     type_=3, code=3),
    icmp_error("20::fe", "10::1", ip("10::1", "20::1", l4("udp", 5000, 5353)), type_=2),
]


def test_valid_checksums_stay_valid_whatever_the_frame():
    reached = collections.Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from([GOOD, GOOD6, tcp("10.0.0.1", 1, "30.0.0.2", 80)] + ICMP_BASES),
           st.lists(st.tuples(st.integers(14, 100), st.integers(0, 255)), max_size=3))
    def prop(base, flips):
        h = Harness(CONF)
        h.run([udp("10.0.0.1", 5000, "30.0.0.2", 53), udp("10::1", 5000, "30::2", 53)])
        frame = bytearray(base)
        for off, val in flips:
            if off < len(frame):
                frame[off] = val
        frame = bytes(frame)
        before = _l4_valid(frame)
        verdict, reason, out = h.run([frame])[0]
        if verdict == FORWARD and before:
            reached["forward_valid"] += 1
            assert _l4_valid(out), (reason, frame.hex())
        if verdict == PASS:
            reached["pass"] += 1
            assert out == frame

    prop()
    assert reached["forward_valid"] >= FUZZ_REACHED and reached["pass"] >= FUZZ_REACHED, reached
