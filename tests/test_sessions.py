"""Session lifetimes (fake clock), incremental expiry, capacity, and
sessions carried across a restart."""

import ipaddress

import dpkt
import pytest

from packets import Harness, tcp, udp

BASE = """
[timeouts]
session = {session}
tcp_established = {est}
tcp_closing = {closing}
tcp_syn = {syn}
[sessions]
max = {max}
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->20.0.0.2 8080"]
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353", "->20.0.0.2 5353"]
"""

SYN, SYNACK, ACK, FIN, RST = 0x02, 0x12, 0x10, 0x11, 0x04


def harness(session=30, est=3600, closing=5, max=1000, syn=60):
    return Harness(BASE.format(session=session, est=est, closing=closing, max=max, syn=syn))


def alive(h, frame):
    return h.core.find_session(4, frame_proto(frame), *frame_tuple(frame), now=h.now) is not None


def frame_proto(frame):
    return frame[14 + 9]


def frame_tuple(frame):
    import ipaddress
    import struct
    ip = frame[14:]
    src, dst = str(ipaddress.ip_address(ip[12:16])), str(ipaddress.ip_address(ip[16:20]))
    sport, dport = struct.unpack("!HH", ip[20:24])
    return src, sport, dst, dport


def handshake(h, cport=40000):
    h.send(tcp("10.0.0.1", cport, "30.0.0.2", 80, SYN))
    backend = frame_tuple(h.out)[2]
    h.send(tcp(backend, 8080, "10.0.0.1", cport, SYNACK))
    h.send(tcp("10.0.0.1", cport, "30.0.0.2", 80, ACK))
    return backend


def state(h):
    (s,) = list(h.core.sessions())
    return s.state


def test_udp_expires_after_session_timeout_both_directions_refresh():
    h = harness(session=10)
    fwd = udp("10.0.0.1", 5000, "30.0.0.2", 53)
    h.send(fwd)
    backend = frame_tuple(h.out)[2]
    h.advance(9).send(udp(backend, 5353, "10.0.0.1", 5000))     # reply refreshes
    h.advance(9)
    assert alive(h, fwd)
    h.advance(1.001)
    assert not alive(h, fwd)
    # a packet after expiry starts a new session
    created = h.core.statistics().sessions_created
    h.send(fwd)
    assert h.core.statistics().sessions_created == created + 1


def test_tcp_handshake_then_established_timeout():
    h = harness(session=30, est=100)
    handshake(h)
    assert state(h) == "established"
    h.advance(99)
    assert alive(h, tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    h.advance(2)
    assert not alive(h, tcp("10.0.0.1", 40000, "30.0.0.2", 80))


@pytest.mark.parametrize("replies, want", [((), "syn-sent"), ((SYNACK,), "syn-rcvd")])
def test_tcp_before_its_handshake_completes_lives_tcp_syn(replies, want):
    h = harness(session=30, est=3600, syn=45)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, SYN))
    backend = frame_tuple(h.out)[2]
    for flags in replies:
        h.send(tcp(backend, 8080, "10.0.0.1", 40000, flags))
    assert state(h) == want
    h.advance(44)
    assert alive(h, tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    h.advance(1.5)
    assert not alive(h, tcp("10.0.0.1", 40000, "30.0.0.2", 80))


def test_tcp_picked_up_mid_stream_lives_session_until_answered():
    h = harness(session=30, est=3600, syn=45)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, ACK))
    assert state(h) == "midstream"
    h.advance(30.5)
    assert not alive(h, tcp("10.0.0.1", 40000, "30.0.0.2", 80))


def test_rst_cuts_to_closing_timeout():
    h = harness(closing=5)
    handshake(h)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, RST))
    assert state(h) == "closing"
    h.advance(5.5)
    assert not alive(h, tcp("10.0.0.1", 40000, "30.0.0.2", 80))


def test_single_fin_half_close_keeps_the_flow():
    h = harness(closing=5, est=3600)
    backend = handshake(h)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, FIN))
    assert state(h) == "fin-initiator"
    h.advance(600)   # far beyond the 5 s of a closed flow
    h.send(tcp(backend, 8080, "10.0.0.1", 40000, ACK)).expect(tcp("30.0.0.2", 80, "10.0.0.1", 40000, ACK))
    # FIN from the other side too: now closing, 5 s
    h.send(tcp(backend, 8080, "10.0.0.1", 40000, FIN))
    assert state(h) == "closing"
    h.advance(5.5)
    assert not alive(h, tcp("10.0.0.1", 40000, "30.0.0.2", 80))


def test_half_closed_timeout_is_configurable():
    h = Harness(BASE.format(session=30, est=3600, closing=5, max=10, syn=60).replace(
        "tcp_closing = 5", "tcp_closing = 5\ntcp_half_closed = 50"))
    handshake(h)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, FIN))
    h.advance(51)
    assert not alive(h, tcp("10.0.0.1", 40000, "30.0.0.2", 80))


def test_syn_on_closing_session_reuses_it():
    h = harness()
    handshake(h)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, RST))
    h.advance(1)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, SYN))
    assert state(h) == "syn-sent"


def test_expiry_is_incremental_with_bounded_work():
    h = harness(session=1, max=5000)
    for i in range(3000):
        h.send(udp(f"10.0.{i // 250}.{i % 250 + 1}", 5000, "30.0.0.2", 53))
    h.advance(2)
    removed = h.core.expire(h.now, budget=1000)
    assert removed <= 1000
    assert h.core.statistics().sessions == 3000 - removed
    total = removed
    while h.core.statistics().sessions:
        total += h.core.expire(h.now, budget=1000)
    assert total == 3000
    assert h.core.statistics().sessions_expired == 3000


def test_a_reused_slot_carries_a_new_serial():
    """Callers keep state per session index (io caches the next hop there):
    an expired session's slot goes to the next new flow, and the frame's
    serial is what tells the two sessions apart."""
    from appliance.nat import Batch

    def session_of(frame):
        b = Batch(1)
        b.load([(frame, h.core.port("eth0"), h.now)])
        h.core.process(b, h.now)
        return b.frames[0].session, b.frames[0].serial

    h = harness(session=1)
    first = udp("10.0.0.1", 5000, "30.0.0.2", 53)
    index, serial = session_of(first)
    assert session_of(first) == (index, serial)            # every frame of a session: the same pair
    h.advance(2)
    assert h.core.expire(h.now, budget=10) == 1
    again, new_serial = session_of(udp("10.0.0.9", 6000, "30.0.0.2", 53))
    assert again == index and new_serial != serial


def test_full_table_drops_new_flows_established_keep_working():
    h = harness(max=4)
    flows = [udp(f"10.0.0.{i}", 5000, "30.0.0.2", 53) for i in range(1, 5)]
    outs = []
    for i, f in enumerate(flows, 1):
        h.send(f)
        outs.append(h.out)
        h.send(udp(frame_tuple(h.out)[2], 5353, f"10.0.0.{i}", 5000))   # answered: never evicted
    h.send(udp("10.0.0.9", 5000, "30.0.0.2", 53)).expect_drop("drop_session_full")
    for f, o in zip(flows, outs):
        h.send(f).expect(o)
    # once sessions expire, their slots are reused by new flows
    h.advance(31)
    h.send(udp("10.0.0.9", 5000, "30.0.0.2", 53))
    assert h.last[0] == 0


def test_expired_sessions_notify_plugins():
    from appliance._plugins import Plugins
    from appliance.hooks import hookimpl

    seen = []

    class Watch:
        @hookimpl
        def appliance_session_expired(self, session):
            seen.append((session.src, session.dport, session.reason))

    h = Harness(BASE.format(session=3, est=3600, closing=5, max=100, syn=60),
                plugins=Plugins(objects=[Watch()], entry_points=False))
    h.send(udp("10.0.0.1", 5000, "30.0.0.2", 53))
    h.advance(4)
    h.core.expire(h.now)
    assert [(str(a), p, r) for a, p, r in seen] == [("10.0.0.1", 53, "timeout")]


SAVED = """
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353", "->20.0.0.2 5353"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->20.0.0.2 8080"]
"""


def test_sessions_saved_by_one_run_are_restored_by_the_next():
    """What `run --state-file` does across a restart: the new core knows the
    old flows, so a reply that arrives first is still translated back."""
    from appliance import parse_config

    old = Harness(SAVED)
    old.send(udp("10.0.0.1", 5001, "30.0.0.2", 53))   # idle from here: expired by the restore
    old.advance(20).send(udp("10.0.0.1", 5000, "30.0.0.2", 53))
    udp_out = old.last[2]
    old.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    tcp_out = old.last[2]
    saved = old.core.export_sessions()

    # the next run: translations listed in another order (other ids), 15 s later
    reordered = SAVED.split("[[translation]]")
    new = Harness("[[translation]]".join([reordered[0], reordered[2], reordered[1]]), now=old.now + 15)
    assert new.core.import_sessions(saved, new.now) == (2, 1, 0)   # restored, expired, refused
    be_udp = dpkt.ethernet.Ethernet(udp_out).data
    be_tcp = dpkt.ethernet.Ethernet(tcp_out).data
    # replies first, as a backend that keeps talking would send them
    new.send(udp(ipaddress.ip_address(be_udp.dst).compressed, 5353, "10.0.0.1", 5000)).expect(
        udp("30.0.0.2", 53, "10.0.0.1", 5000))
    new.send(tcp(ipaddress.ip_address(be_tcp.dst).compressed, be_tcp.data.dport, "10.0.0.1", 40000, 0x10)).expect(
        tcp("30.0.0.2", 80, "10.0.0.1", 40000, 0x10))
    s = {x.proto: x for x in new.core.sessions()}
    assert s["tcp"].translation == new.core.translation_for(4, 6, "30.0.0.2", 80).id
    assert s["tcp"].state == "syn-sent" and s["udp"].packets[0] == 1

    with pytest.raises(ValueError, match="truncated"):
        Harness(SAVED).core.import_sessions(saved[:-1], new.now)
    with pytest.raises(ValueError, match="not a session state"):
        Harness(SAVED).core.import_sessions(b"garbage\n", new.now)


REAL = """
[[translation]]
proto = "tcp"
real = "10.0.0.9"
port = 8000
backends = ["->20.0.0.1 8080"]
name = "web"
[[translation]]
proto = "udp"
real = "10.0.0.9"
port = 53
backends = ["->20.0.0.1 5353"]
"""


@pytest.mark.parametrize("removed_by_reload", [False, True], ids=["saved_live", "saved_while_removed"])
def test_sessions_restored_without_their_translation_remain_under_a_removed_one(removed_by_reload):
    """A state file restored into a configuration that lacks a translation:
    its sessions are kept as a reload keeps them (a removed translation, its
    backends gone), not turned into sessions of none, so a `real` one's host
    port stays the appliance's while they remain (NatCore.lingering) and
    the connectionless ones go by the drain policy. Also when the state was
    saved while a reload had already removed it."""
    from appliance import parse_config

    old = Harness(REAL)
    old.send(tcp("10.0.0.1", 40000, "10.0.0.9", 8000))
    tcp_out = dpkt.ethernet.Ethernet(old.last[2]).data
    old.send(udp("10.0.0.1", 5000, "10.0.0.9", 53))
    if removed_by_reload:
        old.core.apply_config(parse_config(VIP_ONLY))
        assert {t.name for t in old.core.lingering()} == {"web", "udp/10.0.0.9/53"}
    saved = old.core.export_sessions()

    # a header naming no translation it could be restores nothing, and says so
    bad = saved.replace(b'"tcp real 10.0.0.9 8000"', b'"tcp real nowhere 8000"', 1)
    assert bad != saved
    wrong = Harness(VIP_ONLY, now=old.now + 1)
    with pytest.raises(ValueError, match="a translation it names is none: 'tcp real nowhere 8000'"):
        wrong.core.import_sessions(bad, wrong.now)
    assert list(wrong.core.sessions()) == [] and wrong.core.lingering() == []

    new = Harness(VIP_ONLY, now=old.now + 1)
    assert new.core.lingering() == []
    assert new.core.import_sessions(saved, new.now) == (2, 0, 0)
    lingering = {t.name: t for t in new.core.lingering()}
    assert set(lingering) == {"web", "udp/10.0.0.9/53"}
    web = lingering["web"]
    assert (web.kind, str(web.address), web.port, web.proto) == ("real", "10.0.0.9", 8000, "tcp")
    shown = {t["name"]: t for t in new.core.describe_translations()["translations"]}
    assert shown["web"]["removed"] and shown["web"]["id"] is None
    # the backend's reply still goes back through the restored session
    new.send(tcp("20.0.0.1", 8080, "10.0.0.1", tcp_out.data.sport, 0x12)).expect(
        tcp("10.0.0.9", 8000, "10.0.0.1", 40000, 0x12))
    # the UDP session goes by the removed translation's drain policy (the
    # default: at once, long before its 30 s timeout); the TCP one stays
    for _ in range(3):
        new.advance(1)
        new.core.expire(new.now)
    assert [x.proto for x in new.core.sessions()] == ["tcp"]
    assert {t.name for t in new.core.lingering()} == {"web"}
    # its end lets the port go
    new.send(tcp("10.0.0.1", 40000, "10.0.0.9", 8000, 0x04))
    new.advance(60)
    new.core.expire(new.now)
    assert new.core.lingering() == []


VIP_ONLY = """
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
"""


async def _listing(core, args, other_turns):
    """The control socket's session listing over an in-memory stream, with
    another task counting the turns it gets meanwhile (the datapath's)."""
    import json
    import types

    import trio
    import trio.testing

    from appliance.runtime import Appliance

    ours, theirs = trio.testing.memory_stream_pair()
    app = types.SimpleNamespace(core=core)
    data = b""

    async def other():
        while True:
            other_turns.append(1)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await Appliance.send_sessions(app, ours, args)
        await ours.aclose()
        while True:
            chunk = await theirs.receive_some(1 << 20)
            if not chunk:
                break
            data += chunk
        nursery.cancel_scope.cancel()
    return json.loads(data)


@pytest.mark.parametrize("args, shown", [
    ([], 1000),                        # the default limit
    (["limit=0"], 1500),               # all
    (["limit=7"], 7),
    (["match=10.0.3.4"], 1),           # a client address
    (["match=20.0.0.1"], None),        # a backend: the flows hashed to it
    (["limit=0", "match=10.9.9.9"], 0),
])
async def test_show_sessions_is_limited_filtered_and_sliced(args, shown):
    h = harness(max=5000)
    for i in range(1500):
        h.send(udp(f"10.0.{i // 250}.{i % 250 + 1}", 5000 + i % 2, "30.0.0.2", 53))
    if shown is None:
        shown = sum(str(s.new_dst) == "20.0.0.1" for s in h.core.sessions())
        assert 0 < shown < 1000
    turns = []
    got = await _listing(h.core, args, turns)
    assert got["total"] == 1500 and got["shown"] == shown == len(got["sessions"])
    assert len({s["index"] for s in got["sessions"]}) == shown
    if shown > 64:
        assert len(turns) >= shown // 64, "the datapath had no turn between slices"


async def test_show_sessions_rejects_bad_arguments():
    got = await _listing(harness().core, ["limit=x"], [])
    assert "error" in got and "limit" in got["error"]
    got = await _listing(harness().core, ["match=nope"], [])
    assert "error" in got
