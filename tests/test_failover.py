"""Stateless failover (issue 16, docs/cluster.md): two instances with one
configuration and flow-hash seed. A flow started on one continues on the
other from either end: the client's packet picks the same backend (the
hash), the backend's reply is matched to the flow the selection gives it.
Each row: the first packets on instance A, then a packet on instance B."""

from __future__ import annotations

import pytest

from packets import Harness, icmp_echo, tcp, udp

CONFIG = """
flow_hash_seed = 77
[cluster]
stateless_failover = true
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->20.0.1.1 8080", "->20.0.2.1 8080"]
selector = "{selector}"
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353", "->20.0.1.1 5353"]
[[translation]]
proto = "icmp"
vip = "30.0.0.3"
backends = ["->20.0.0.1", "->20.0.1.1"]
[[translation]]
proto = "tcp"
vip = "fd30::2"
port = 80
backends = ["->fd20::1 8080", "->fd20::2 8080"]
"""
ACK, SYNACK, SYN = 0x10, 0x12, 0x02
BACKENDS = {"tcp": ["20.0.0.1", "20.0.1.1", "20.0.2.1"], "udp": ["20.0.0.1", "20.0.1.1"],
            "icmp": ["20.0.0.1", "20.0.1.1"], "tcp6": ["fd20::1", "fd20::2"]}


def pair(selector="hash"):
    text = CONFIG.format(selector=selector)
    return Harness(text), Harness(text)


def _dst(frame_out: bytes) -> str:
    import ipaddress
    ip = frame_out[14:]
    if ip[0] >> 4 == 4:
        return str(ipaddress.ip_address(ip[16:20]))
    return str(ipaddress.ip_address(ip[24:40]))


def _first(a: Harness, kind: str, cport: int):
    """The flow's first packet through A: (the backend it went to, the reply to send back)."""
    if kind == "udp":
        a.send(udp("10.0.0.2", cport, "30.0.0.2", 53))
        be = _dst(a.out)
        return be, udp(be, 5353, "10.0.0.2", cport), udp("30.0.0.2", 53, "10.0.0.2", cport)
    if kind == "icmp":
        a.send(icmp_echo("10.0.0.2", "30.0.0.3", cport))
        be = _dst(a.out)
        return be, icmp_echo(be, "10.0.0.2", cport, reply=True), icmp_echo("30.0.0.3", "10.0.0.2", cport, reply=True)
    client, vip = ("fd00::2", "fd30::2") if kind == "tcp6" else ("10.0.0.2", "30.0.0.2")
    a.send(tcp(client, cport, vip, 80, flags=SYN))
    be = _dst(a.out)
    return (be, tcp(be, 8080, client, cport, flags=ACK, payload=b"more data"),
            tcp(vip, 80, client, cport, flags=ACK, payload=b"more data"))


@pytest.mark.parametrize("kind", ["tcp", "udp", "icmp", "tcp6"])
def test_a_backends_reply_continues_on_the_other_instance(kind):
    a, b = pair()
    seen = set()
    for cport in range(40000, 40012):
        be, reply, translated = _first(a, kind, cport)
        seen.add(be)
        b.send(reply, "eth1").expect(translated)     # server-first on B: as A would have rewritten it
        s = b.core.find_session(4 if "." in be else 6, {"udp": 17, "icmp": 1}.get(kind, 6),
                                "10.0.0.2" if "." in be else "fd00::2", cport,
                                "30.0.0.3" if kind == "icmp" else ("30.0.0.2" if "." in be else "fd30::2"),
                                0 if kind == "icmp" else (53 if kind == "udp" else 80), b.now)
        assert s is not None and str(s.new_dst) == be, (kind, cport, s)
    assert len(seen) > 1, "every flow went to one backend: the rows prove little"
    assert b.counter("session_recovered") == 12
    assert b.counter("drop_orphan_reply") == 0


def test_the_clients_next_packet_uses_the_recovered_session():
    a, b = pair()
    be, reply, translated = _first(a, "tcp", 41000)
    b.send(reply, "eth1").expect(translated)
    b.send(tcp("10.0.0.2", 41000, "30.0.0.2", 80, flags=ACK, payload=b"next"), "eth0")
    assert _dst(b.out) == be
    assert b.counter("session_miss") == 1      # the reply's; the client's packet hit the session


def test_a_reply_the_selection_does_not_give_that_backend_is_dropped():
    """Not this backend's flow by the hash (a wrong instance, another
    configuration): passing it would hand the client an untranslated
    segment, which it answers with a reset."""
    a, b = pair()
    be, reply, _ = _first(a, "tcp", 42000)
    other = next(x for x in BACKENDS["tcp"] if x != be)
    b.send(tcp(other, 8080, "10.0.0.2", 42000, flags=ACK), "eth1").expect_drop("drop_orphan_reply")
    assert b.counter("session_recovered") == 0


def test_packets_from_a_backend_that_are_no_reply_take_the_normal_path():
    a, b = pair()
    # another port than the translations': not a reply of theirs
    frame = udp("20.0.0.1", 9999, "40.0.0.1", 53)
    b.send(frame, "eth1").expect_pass(frame)
    # a SYN from the backend's port is its own new flow
    syn = tcp("20.0.0.1", 8080, "40.0.0.1", 443, flags=SYN)
    b.send(syn, "eth1").expect_pass(syn)
    assert b.counter("session_recovered") == 0 and b.counter("drop_orphan_reply") == 0


def test_maglev_gives_the_same_answer_on_both_instances():
    a, b = pair("maglev")
    for cport in range(43000, 43008):
        be, reply, translated = _first(a, "tcp", cport)
        b.send(reply, "eth1").expect(translated)
    assert b.counter("session_recovered") == 8


def test_off_without_the_setting():
    text = CONFIG.format(selector="hash").replace("stateless_failover = true", "stateless_failover = false")
    a, b = Harness(text), Harness(text)
    be, reply, _ = _first(a, "tcp", 44000)
    b.send(reply, "eth1").expect_pass(reply)
    assert b.counter("pass_no_match") == 1


SHARED = """
flow_hash_seed = 77
[cluster]
stateless_failover = true
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->20.0.1.1 8080"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 81
backends = ["->20.0.0.1 8080", "->20.0.1.1 8080"]
{second}
"""


def test_a_reply_two_translations_could_own_is_dropped_not_sent_from_the_wrong_port():
    """vip:80 and vip:81 to the same backends, both hashed: a reply that
    both selections give that backend is ambiguous. Recovered as vip:80 it
    would reach a vip:81 client from port 80, which resets it."""
    b = Harness(SHARED.format(second=""))
    ambiguous = 0
    for cport in range(45000, 45040):
        for be in ("20.0.0.1", "20.0.1.1"):
            before = b.counter("drop_ambiguous_reply"), b.counter("session_recovered")
            b.send(tcp(be, 8080, "10.0.0.2", cport, flags=ACK), "eth1")
            after = b.counter("drop_ambiguous_reply"), b.counter("session_recovered")
            ambiguous += after[0] - before[0]
            if after[1] > before[1]:
                # one owner: the frame leaves from the port of the translation whose hash gives be
                assert b.out[14 + 20:14 + 22] in (b"\x00\x50", b"\x00\x51")
    orphan = b.counter("drop_orphan_reply")
    assert ambiguous > 0 and b.counter("session_recovered") > 0 and orphan > 0, (ambiguous, orphan)


def test_a_translation_whose_choice_cannot_be_checked_owns_the_reply_when_it_is_the_only_candidate():
    """The hand-found case: vip:80 by hash, vip:81 with affinity, the same
    backends. Where vip:80's hash gives the reply's backend to another
    backend, vip:81 is its only owner: recovered, from port 81. Where
    vip:80's hash gives it that backend too: ambiguous, dropped."""
    b = Harness(SHARED.format(second="affinity = { timeout = 60 }"))
    t81 = b.core.config.translations[1]
    assert t81.affinity is not None, "the second translation has affinity"
    from_81 = ambiguous = 0
    for cport in range(46000, 46030):
        before = b.counter("drop_ambiguous_reply")
        b.send(tcp("20.0.0.1", 8080, "10.0.0.2", cport, flags=ACK), "eth1")
        if b.counter("drop_ambiguous_reply") > before:
            ambiguous += 1
        else:
            assert b.out[14 + 20:14 + 22] == b"\x00\x51", "recovered as vip:81, the only owner"
            from_81 += 1
    assert from_81 > 0 and ambiguous > 0 and b.counter("drop_orphan_reply") == 0


def test_translations_sharing_a_backend_have_their_sessions_synced():
    from appliance.cluster import _wire
    a = Harness(SHARED.format(second=""))
    a.core.sync_start()
    a.send(tcp("10.0.0.2", 47000, "30.0.0.2", 80, flags=SYN))
    blob, n = a.core.sync_new(a.now)
    assert n == 1 and _wire.RECORD.unpack_from(blob)[2] == 0
    lone = Harness(CONFIG.format(selector="hash"))
    lone.core.sync_start()
    lone.send(tcp("10.0.0.2", 47000, "30.0.0.2", 80, flags=SYN))
    assert lone.core.sync_new(lone.now)[1] == 0, "a backend of its own: recomputable, not synced"


def test_a_port_picked_for_a_taken_client_port_is_within_source_ports():
    """The same client port to vip:80 and vip:81, one backend: the second
    flow's source port is taken towards that backend, so one is picked,
    from this instance's share."""
    text = SHARED.format(second="").replace('"->20.0.0.1 8080", "->20.0.1.1 8080"', '"->20.0.0.1 8080"')
    h = Harness(text.replace("stateless_failover = true", 'stateless_failover = true\nsource_ports = "30000-30999"'))
    h.send(tcp("10.0.0.2", 48001, "30.0.0.2", 80, flags=SYN))
    assert int.from_bytes(h.out[14 + 20:14 + 22], "big") == 48001
    h.send(tcp("10.0.0.2", 48001, "30.0.0.2", 81, flags=SYN))
    assert 30000 <= int.from_bytes(h.out[14 + 20:14 + 22], "big") <= 30999
