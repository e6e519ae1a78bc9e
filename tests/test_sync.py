"""Session sync (issue 16, docs/cluster.md): the wire format refuses what
it should, and a session a peer cannot recompute (SNAT, a chosen source
port, a stateful selector) is carried to a second core, which then
translates the flow's packets as the first would have."""

from __future__ import annotations

import pytest

from appliance.cluster import _wire
from packets import Harness, tcp, udp

KEY = b"0123456789abcdef-shared"
CONFIG = """
flow_hash_seed = 5
[snat]
ip4 = "30.0.0.1"
interfaces = ["tap0"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->20.0.1.1 8080"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 81
selector = "least-sessions"
backends = ["->20.0.2.1 8080", "->20.0.3.1 8080"]    # a backend another translation shares is synced anyway
"""


def _blob(core, now, since=None):
    """The core's records: of its new sessions, or (since) a refresh."""
    blob, n = core.sync_new(now) if since is None else core.sync_refresh(now, since)
    assert len(blob) == n * _wire.RECORD.size
    return blob


def _records(core, now, since=None):
    blob = _blob(core, now, since)
    return [_wire.Record(*_wire.RECORD.unpack_from(blob, at)) for at in range(0, len(blob), _wire.RECORD.size)]


def pair():
    a, b = Harness(CONFIG), Harness(CONFIG)
    a.core.sync_start()
    return a, b


def carry(a, b, since=None):
    """A's new sessions (or, since, its refresh) through the wire into B:
    (messages, counts)."""
    msgs = _wire.encode(_wire.SESSIONS, _blob(a.core, a.now, since), KEY, 1, 0,
                        _wire.config_digest(a.core.config.translations), a.now)
    got = [_wire.decode(m, KEY) for m in msgs]
    assert got[0].digest == _wire.config_digest(b.core.config.translations)
    counts = b.core.install_synced([r for m in got for r in m.records], b.now)
    return msgs, counts


def test_an_snat_flow_continues_on_the_peer():
    a, b = pair()
    a.send(tcp("10.1.0.2", 5000, "40.0.0.1", 443, flags=0x02), "tap0")
    out = a.out
    port = int.from_bytes(out[14 + 20:14 + 22], "big")
    msgs, counts = carry(a, b)
    assert counts == {"installed": 1, "refreshed": 0, "unchanged": 0, "refused": 0}
    assert len(msgs) == 1 and len(msgs[0]) == _wire.HEADER.size + _wire.RECORD.size + _wire.MAC_LEN
    # the reply to the SNAT address, on B: back to the client, as A would have done
    b.send(tcp("40.0.0.1", 443, "30.0.0.1", port, flags=0x12), "eth1")
    a.send(tcp("40.0.0.1", 443, "30.0.0.1", port, flags=0x12), "eth1")
    assert b.out == a.out and b.out[14 + 16:14 + 20] == bytes([10, 1, 0, 2])
    # the client's next packet on B: the same SNAT port
    b.send(tcp("10.1.0.2", 5000, "40.0.0.1", 443, flags=0x10), "tap0")
    assert int.from_bytes(b.out[14 + 20:14 + 22], "big") == port


def test_recomputable_sessions_are_not_sent_and_a_stateful_selector_is():
    a, b = pair()
    a.send(tcp("10.0.0.2", 6000, "30.0.0.2", 80, flags=0x02))          # hash, port kept: recomputable
    a.send(tcp("10.0.0.2", 6001, "30.0.0.2", 81, flags=0x02))          # least_sessions: not
    msgs, counts = carry(a, b)
    recs = _wire.decode(msgs[0], KEY).records
    assert len(recs) == 1 and int.from_bytes(recs[0].key0[32:34], "big") == 6001
    assert counts["installed"] == 1
    assert b.core.find_session(4, 6, "10.0.0.2", 6001, "30.0.0.2", 81, b.now) is not None
    assert b.core.find_session(4, 6, "10.0.0.2", 6000, "30.0.0.2", 80, b.now) is None


def test_a_refresh_moves_the_last_seen_time_and_a_repeat_changes_nothing():
    a, b = pair()
    a.send(udp("10.1.0.2", 5000, "40.0.0.1", 53), "tap0")
    carry(a, b)
    s = b.core.find_session(4, 17, "10.1.0.2", 5000, "40.0.0.1", 53, b.now)
    first_expiry = s.expires
    a.advance(10)
    b.advance(10)
    assert _records(a.core, a.now, since=a.now - 5) == [], "not seen since: not in the refresh"
    a.send(udp("10.1.0.2", 5000, "40.0.0.1", 53), "tap0")    # traffic on A keeps it alive there
    _, counts = carry(a, b, since=a.now - 5)
    assert counts["refreshed"] == 1
    assert b.core.find_session(4, 17, "10.1.0.2", 5000, "40.0.0.1", 53, b.now).expires == first_expiry + 10
    _, counts = carry(a, b, since=a.now - 5)
    assert counts["unchanged"] == 1


def test_a_record_says_what_the_session_is():
    a, _ = pair()
    a.send(tcp("10.1.0.2", 5000, "40.0.0.1", 443, flags=0x02), "tap0")
    a.advance(2)
    (r,) = _records(a.core, a.now)
    s = a.core.find_session(4, 6, "10.1.0.2", 5000, "40.0.0.1", 443, a.now)
    assert r.key0[:4] == bytes([10, 1, 0, 2]) and r.key1[16:20] == bytes([30, 0, 0, 1])
    assert int.from_bytes(r.key1[34:36], "big") == s.new_sport
    assert r.age_ms == 2000 and r.left_ms == round((s.expires - a.now) * 1000)
    assert r.flags & 2 and r.translation == 0xFFFFFFFF and r.backend == 0xFFFF


def test_ended_sessions_leave_the_synced_set_and_a_dump_has_the_live_ones():
    a, _ = pair()
    a.send(udp("10.1.0.2", 5000, "40.0.0.1", 53), "tap0")
    a.send(tcp("10.1.0.2", 5001, "40.0.0.1", 443, flags=0x02), "tap0")
    assert len(_records(a.core, a.now)) == 2 and a.core.synced_sessions == 2
    assert a.core.dump_records(a.now)[1] == 2
    a.advance(31)                                             # past UDP's 30 s, not the SYN's
    a.send(tcp("10.1.0.2", 5001, "40.0.0.1", 443, flags=0x10), "tap0")
    assert len(_records(a.core, a.now, since=a.now - 1)) == 1
    assert a.core.synced_sessions == 1
    assert a.core.dump_records(a.now)[1] == 1


def test_more_new_sessions_than_the_outbox_holds_are_counted():
    a = Harness(CONFIG)
    a.core.sync_start(capacity=2)
    for p in range(3):
        a.send(udp("10.1.0.2", 5000 + p, "40.0.0.1", 53), "tap0")
    assert len(_records(a.core, a.now)) == 2
    assert a.core.counters()["sync_outbox_full"] == 1
    a.send(udp("10.1.0.2", 6000, "40.0.0.1", 53), "tap0")
    assert len(_records(a.core, a.now)) == 1, "taken: room again"


BAD = [
    ("garbage", lambda m: b"\x00" * len(m), "sync_bad_mac"),
    ("a flipped bit", lambda m: m[:40] + bytes([m[40] ^ 1]) + m[41:], "sync_bad_mac"),
    ("cut short", lambda m: m[:20], "sync_malformed"),
    ("another key", None, "sync_bad_mac"),
]


@pytest.mark.parametrize("what,spoil,reason", BAD, ids=[b[0] for b in BAD])
def test_a_bad_message_is_refused_whole_with_a_reason(what, spoil, reason):
    a, _ = pair()
    a.send(tcp("10.1.0.2", 5000, "40.0.0.1", 443, flags=0x02), "tap0")
    recs = _records(a.core, a.now)
    key = b"another-key-0123456" if spoil is None else KEY
    m = _wire.encode(_wire.SESSIONS, _wire.pack(recs), key, 1, 0, 0, a.now)[0]
    with pytest.raises(_wire.SyncError) as e:
        _wire.decode(m if spoil is None else spoil(m), KEY)
    assert e.value.reason == reason


def test_a_signed_message_of_another_version_or_a_wrong_count_is_malformed():
    body = _wire.HEADER.pack(b"CNSY", 2, 1, 0, 1, 0, 0, 0)
    with pytest.raises(_wire.SyncError, match="version 2"):
        _wire.decode(body + _wire._mac(KEY, body), KEY)
    body = _wire.HEADER.pack(b"CNSY", 1, 1, 3, 1, 0, 0, 0)
    with pytest.raises(_wire.SyncError, match="3 records said"):
        _wire.decode(body + _wire._mac(KEY, body), KEY)


def test_many_sessions_split_into_datagrams_that_fit():
    a, _ = pair()
    for p in range(100):
        a.send(udp("10.1.0.2", 10000 + p, "40.0.0.1", 53), "tap0")
    recs = _records(a.core, a.now)
    msgs = _wire.encode(_wire.SESSIONS, _wire.pack(recs), KEY, 1, 7, 0, a.now)
    assert len(recs) == 100 and all(len(m) <= _wire.MAX_DATAGRAM for m in msgs)
    got = [_wire.decode(m, KEY) for m in msgs]
    assert [g.seq for g in got] == list(range(7, 7 + len(msgs)))
    assert sum(len(g.records) for g in got) == 100


def test_instances_sharing_an_snat_address_with_their_own_source_ports_never_clash():
    """Two clients with one source port, to one destination, through one
    SNAT address: each instance keeps the client's port when it can, so
    without ranges both pick 5000 and the second sync is refused; with
    disjoint [cluster] source_ports both flows live on both instances."""
    def run(ranges):
        cfgs = [CONFIG + (f'[cluster]\nsource_ports = "{r}"\n' if r else "") for r in ranges]
        a, b = Harness(cfgs[0]), Harness(cfgs[1])
        a.core.sync_start()
        b.core.sync_start()
        a.send(tcp("10.1.0.2", 5000, "40.0.0.1", 443, flags=0x02), "tap0")
        pa = int.from_bytes(a.out[14 + 20:14 + 22], "big")
        b.send(tcp("10.1.0.3", 5000, "40.0.0.1", 443, flags=0x02), "tap0")
        pb = int.from_bytes(b.out[14 + 20:14 + 22], "big")
        _, into_b = carry(a, b)
        _, into_a = carry(b, a)
        return pa, pb, into_a, into_b
    pa, pb, into_a, into_b = run([None, None])
    assert pa == pb == 5000 and into_b["refused"] == 1 and into_a["refused"] == 1
    pa, pb, into_a, into_b = run(["20000-29999", "30000-39999"])
    assert 20000 <= pa <= 29999 and 30000 <= pb <= 39999
    assert into_a["installed"] == into_b["installed"] == 1


def test_a_client_port_inside_the_range_is_kept_and_ports_untouched_flows_ignore_it():
    h = Harness(CONFIG + '[cluster]\nsource_ports = "20000-29999"\n')
    h.send(tcp("10.1.0.2", 25000, "40.0.0.1", 443, flags=0x02), "tap0")       # SNAT, the port in range
    assert int.from_bytes(h.out[14 + 20:14 + 22], "big") == 25000
    h.send(udp("10.1.0.2", 1, "40.0.0.1", 53), "tap0")                          # SNAT, out of range
    assert 20000 <= int.from_bytes(h.out[14 + 20:14 + 22], "big") <= 29999
    h.send(tcp("10.0.0.2", 6000, "30.0.0.2", 80, flags=0x02))                   # DNAT only: the source is the client's
    assert int.from_bytes(h.out[14 + 20:14 + 22], "big") == 6000


def test_a_message_played_back_or_sent_long_ago_is_refused():
    guard, now = _wire.ReplayGuard(), 5000.0
    msgs = [_wire.decode(m, KEY) for m in _wire.encode(_wire.HELLO, b"", KEY, 9, 10, 0, now)
            + _wire.encode(_wire.HELLO, b"", KEY, 9, 11, 0, now) + _wire.encode(_wire.HELLO, b"", KEY, 9, 12, 0, now)]
    guard.admit(msgs[0], now)
    guard.admit(msgs[2], now)
    guard.admit(msgs[1], now + 1)              # late, out of order: once
    for m in msgs:
        with pytest.raises(_wire.SyncError, match="seen before") as e:
            guard.admit(m, now + 2)
        assert e.value.reason == "sync_replayed"
    other = _wire.decode(_wire.encode(_wire.HELLO, b"", KEY, 10, 10, 0, now)[0], KEY)
    guard.admit(other, now)                    # another sender id (a peer's restart): its own numbers
    old = _wire.decode(_wire.encode(_wire.HELLO, b"", KEY, 11, 0, 0, now - 31)[0], KEY)
    with pytest.raises(_wire.SyncError, match="more than 30 s"):
        guard.admit(old, now)
    far = _wire.decode(_wire.encode(_wire.HELLO, b"", KEY, 9, 13 + _wire.SEQ_WINDOW, 0, now)[0], KEY)
    guard.admit(far, now)
    with pytest.raises(_wire.SyncError, match="too old"):
        guard.admit(_wire.decode(_wire.encode(_wire.HELLO, b"", KEY, 9, 12 - 0, 0, now)[0], KEY), now)
