"""Differential fuzzing (issue 15): frames of every kind the core handles,
valid, mutated and cut short (appliance/fuzz/_corpus.py), through the real
NAT core and through an independent model (appliance/fuzz/_model.py):
every verdict, reason, byte and checksum must agree.

CI runs APPLIANCE_FUZZ_FRAMES (default 30000) frames per seed;
`appliance bench fuzz --frames 1000000` runs a million. A failure prints
the seed, the frame's number and kind, the frame in hex and what differed.
The model's own checks are tested below against corrupted answers, so a
run of zero mismatches means something."""

from __future__ import annotations

import os
import struct

import pytest

from appliance import fuzz
from appliance.fuzz import _corpus
from appliance.fuzz._corpus import CONFIG, rules
from appliance.fuzz._model import Model, check
from appliance.nat import Verdict
from packets import Harness, icmp_error, ip, l4, tcp, udp

FRAMES = int(os.environ.get("APPLIANCE_FUZZ_FRAMES", "30000"))

#: each must be reached this often in a CI run, or the run proved little
REACHED = {
    "translated": 1000, "pass_non_ip": 50, "pass_no_match": 50, "pass_no_ports": 20, "pass_no_snat": 50,
    "pass_frag_transit": 20, "pass_icmp_no_session": 10, "pass_ip6_routing": 10,
    "drop_eth_truncated": 50, "drop_ip4_truncated": 50, "drop_ip4_bad_header": 20, "drop_ip4_bad_length": 50,
    "drop_ip4_bad_checksum": 50, "drop_ip6_truncated": 50, "drop_ip6_bad_header": 20, "drop_ip6_bad_length": 50,
    "drop_l4_truncated": 20, "drop_icmp_inner_bad": 10, "drop_frag_orphan": 50, "drop_no_translation": 50,
}
COUNTED = {"icmp_error_translated": 200, "frag_followed": 100, "udp_zero_csum": 50}
#: the model's own less common paths (Model.paths)
TAKEN = {"source_port_kept": 1000, "source_port_zero": 50, "source_port_taken": 5, "dnat_then_snat": 80,
         "atomic_fragment": 30}


def _floor(n: int) -> int:
    return max(1, n * FRAMES // 30000)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_core_agrees_with_the_model(seed):
    r = fuzz.run(FRAMES, seed=seed)
    assert not r.mismatches, str(r.mismatches[0])
    assert r.frames == FRAMES
    short = {k: (r.verdicts.get(k, 0), n) for k, n in REACHED.items() if r.verdicts.get(k, 0) < _floor(n)}
    assert not short, f"verdicts reached too rarely (got, wanted): {short}"
    short = {k: (r.counters[k], n) for k, n in COUNTED.items() if r.counters[k] < _floor(n)}
    assert not short, f"paths taken too rarely (got, wanted): {short}"
    short = {k: (r.paths.get(k, 0), n) for k, n in TAKEN.items() if r.paths.get(k, 0) < _floor(n)}
    assert not short, f"model paths taken too rarely (got, wanted): {short}"
    kinds = {k.split("/")[0] for k in r.kinds}
    assert kinds >= {"new_vip_flow", "reply", "snat_flow", "icmp_error", "fragments", "orphan", "echo"}, kinds
    assert {k.split("/")[1] for k in r.kinds if "/" in k} == {"cut", "flip", "flip+csum", "length"}


# -- the checks catch what they should ---------------------------------------

def _answer(h, frame, iface):
    """The core's answer as the model names it: (verdict, reason, bytes)."""
    verdict, reason, out = h.run([frame], iface)[0]
    name = {Verdict.FORWARD: "translated", Verdict.PASS: "passed"}.get(verdict, "drop")
    return name, reason, out


def _model_and_answer(frame, iface="eth0", setup=()):
    """The model's expectation and the real core's answer for `frame`."""
    h = Harness(CONFIG)
    m = Model(rules())
    for f, i in setup:       # checked too: a port the NAT chose enters the model's table then
        assert check(f, m.expect(f, i), *_answer(h, f, i)) == []
    verdict, reason, out = _answer(h, frame, iface)
    return frame, m.expect(frame, iface), verdict, reason, out


def _corrupt(out: bytes, off: int, value: int) -> bytes:
    b = bytearray(out)
    b[off] ^= value
    return bytes(b)


TO_VIP = udp("10.0.0.1", 5000, "30.0.0.2", 53)
TO_VIP6 = tcp("10::1", 4000, "30::2", 80)
SNAT = tcp("10.1.0.1", 4000, "40.0.0.1", 443)
ERROR = icmp_error("20.0.0.1", "10.0.0.1", ip("10.0.0.1", "20.0.0.1", l4("udp", 5000, 5353)), type_=3, code=3)

CORRUPTIONS = [
    # (what, frame, iface, set-up frames, offset to flip in the answer)
    ("ipv4 destination", TO_VIP, "eth0", (), 14 + 19),
    ("ipv4 header checksum", TO_VIP, "eth0", (), 14 + 10),
    ("udp destination port", TO_VIP, "eth0", (), 14 + 20 + 3),
    ("udp checksum", TO_VIP, "eth0", (), 14 + 20 + 6),
    ("tcp checksum over ipv6", TO_VIP6, "eth0", (), 14 + 40 + 17),
    ("payload", TO_VIP6, "eth0", (), len(TO_VIP6) - 1),
    ("snat source address", SNAT, "tap0", (), 14 + 12),
    ("quoted packet's source", ERROR, "eth1", [(TO_VIP, "eth0")], 14 + 20 + 8 + 12),
    ("quoted packet's udp checksum", ERROR, "eth1", [(TO_VIP, "eth0")], 14 + 20 + 8 + 20 + 6),
    ("outer icmp checksum", ERROR, "eth1", [(TO_VIP, "eth0")], 14 + 20 + 2),
]


@pytest.mark.parametrize("what,frame,iface,setup,off", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_wrong_byte_in_a_translation_is_a_mismatch(what, frame, iface, setup, off):
    frame, want, verdict, reason, out = _model_and_answer(frame, iface, setup)
    assert check(frame, want, verdict, reason, out) == []          # the real answer agrees
    assert verdict == "translated"
    problems = check(frame, want, verdict, reason, _corrupt(out, off, 0x01))
    assert problems, f"a flipped bit at {off} ({what}) went unnoticed"


def test_a_wrong_verdict_or_reason_is_a_mismatch():
    frame, want, verdict, reason, out = _model_and_answer(TO_VIP[:20])
    assert (verdict, reason) == ("drop", "drop_ip4_truncated") and check(frame, want, verdict, reason, out) == []
    assert check(frame, want, "drop", "drop_ip4_bad_length", out)
    assert check(frame, want, "passed", "pass_no_match", frame)


def test_a_changed_passed_frame_is_a_mismatch():
    frame, want, verdict, reason, out = _model_and_answer(udp("10.0.0.1", 5000, "40.0.0.9", 53))
    assert verdict == "passed" and check(frame, want, verdict, reason, out) == []
    assert check(frame, want, verdict, reason, _corrupt(out, 30, 0x80))


def test_udp_checksum_zero_must_stay_zero_and_a_computed_zero_is_ffff():
    a = lambda s: bytes(map(int, s.split(".")))   # noqa: E731
    seg = _corpus.l4(17, a("10.0.0.1"), a("30.0.0.2"), 5000, 53, b"hello", udp_zero=True)
    frame = _corpus.eth(_corpus.ip4(a("10.0.0.1"), a("30.0.0.2"), 17, seg), False)
    frame, want, verdict, reason, out = _model_and_answer(frame)
    assert verdict == "translated" and out[14 + 20 + 6:14 + 20 + 8] == b"\0\0"
    assert check(frame, want, verdict, reason, out) == []
    bad = bytearray(out)
    struct.pack_into("!H", bad, 14 + 20 + 6, 0xFFFF)
    assert check(frame, want, verdict, reason, bytes(bad))


def test_a_snat_port_already_taken_is_a_mismatch():
    first, second = tcp("10.1.0.1", 4000, "40.0.0.1", 443), tcp("10.1.0.2", 4000, "40.0.0.1", 443)
    h, m = Harness(CONFIG), Model(rules())
    v1, r1, out1 = _answer(h, first, "tap0")
    assert check(first, m.expect(first, "tap0"), v1, r1, out1) == []
    v2, r2, out2 = _answer(h, second, "tap0")
    assert out2[14 + 20:14 + 22] != out1[14 + 20:14 + 22]          # the core gave it another port
    clash = bytearray(out2)
    clash[14 + 20:14 + 22] = out1[14 + 20:14 + 22]                 # as if it had given the same one
    assert any("already in use" in p for p in check(second, m.expect(second, "tap0"), v2, r2, bytes(clash)))


def _with_source_port(out: bytes, port: int) -> bytes:
    b = bytearray(out)
    struct.pack_into("!H", b, 14 + 20, port)
    return bytes(b)


def test_a_free_source_port_not_kept_is_a_mismatch():
    frame = tcp("10.1.0.1", 4000, "40.0.0.1", 443)
    h, m = Harness(CONFIG), Model(rules())
    v, r, out = _answer(h, frame, "tap0")
    assert out[14 + 20:14 + 22] == struct.pack("!H", 4000)        # kept: it was free
    assert check(frame, Model(rules()).expect(frame, "tap0"), v, r, out) == []
    assert any("was free and not kept" in p
               for p in check(frame, m.expect(frame, "tap0"), v, r, _with_source_port(out, 5000)))


def test_a_kept_source_port_zero_is_a_mismatch():
    """TCP/UDP port 0 is no port: the NAT picks one, for DNAT flows too."""
    frame = udp("10.0.0.1", 0, "30.0.0.2", 53)
    h, m = Harness(CONFIG), Model(rules())
    v, r, out = _answer(h, frame, "eth0")
    got = struct.unpack_from("!H", out, 14 + 20)[0]
    assert v == "translated" and got >= 1024
    assert check(frame, Model(rules()).expect(frame, "eth0"), v, r, out) == []
    assert any("neither the sender's" in p
               for p in check(frame, m.expect(frame, "eth0"), v, r, _with_source_port(out, 0)))


def test_a_vip_flow_from_an_snat_interface_is_snated_after_dnat():
    """Its backend (50.0.0.1) is outside the exclusions: the source becomes
    the SNAT address; one to an excluded backend keeps its source."""
    out_of = tcp("10.1.0.1", 4000, "30.0.0.2", 81)
    frame, want, verdict, reason, out = _model_and_answer(out_of, "tap0")
    assert verdict == "translated" and out[14 + 12:14 + 16] == bytes([30, 0, 0, 1])
    assert check(frame, want, verdict, reason, out) == []
    assert check(frame, want, verdict, reason, _corrupt(out, 14 + 15, 0x02))
    frame, want, verdict, reason, out = _model_and_answer(tcp("10.1.0.1", 4000, "30.0.0.2", 80), "tap0")
    assert verdict == "translated" and out[14 + 12:14 + 16] == bytes([10, 1, 0, 1])
    assert check(frame, want, verdict, reason, out) == []
