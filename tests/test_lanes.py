"""Lanes: the fast path on other threads over the core's one session table
(nat.h, "Lanes"). A lane never frees or inserts; the writer reuses a slot
only after every lane has moved on; counters add up over lanes."""

from __future__ import annotations

import threading

from packets import FORWARD, Harness, tcp, udp

from appliance.nat import Batch, Verdict
from appliance.nat._binding import COUNTER_NAMES, lib

CONFIG = """
[timeouts]
session = {session}
[sessions]
max = {max}
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353", "->20.0.0.2 5353", "->20.0.0.3 5353"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
drain = "reset"
backends = ["->20.0.0.1 8080"]
"""


def harness(session: int = 30, max: int = 1000) -> Harness:
    return Harness(CONFIG.format(session=session, max=max))


def lane_run(h: Harness, lane, frames: list[bytes]) -> list[tuple[int, bytes]]:
    b = Batch(len(frames))
    b.load([(f, h.core.port("eth0"), h.now) for f in frames])
    done = 0
    while done < b.n:   # a lane stops after a NAT_MISS, as nat_process does
        sub = Batch(0)
        sub.frames, sub.n = b.frames + done, b.n - done
        done += lane.process(sub, h.now)
    return [(b.frames[i].verdict, b.data(i)) for i in range(b.n)]


def test_a_lane_translates_as_the_core_and_counts_in_its_own_counters():
    h = harness()
    first = udp("10.0.0.1", 4000, "30.0.0.2", 53)
    h.send(first)
    want = h.out
    lane = h.core.lane()
    before = h.core.counters()["session_hit"]
    [(verdict, data)] = lane_run(h, lane, [first])
    assert verdict == FORWARD and data == want
    assert lane.counters()["session_hit"] == 1
    assert h.core.counters()["session_hit"] == before + 1, "core.counters() adds the lanes' up"
    lane.close()
    assert h.core.counters()["session_hit"] == before + 1, "a closed lane's counts stay in the core's"


def test_a_lane_leaves_an_expired_session_to_the_writer():
    h = harness(session=5)
    frame = udp("10.0.0.1", 4000, "30.0.0.2", 53)
    h.send(frame)
    lane = h.core.lane()
    h.advance(10)
    [(verdict, _)] = lane_run(h, lane, [frame])
    assert verdict == Verdict.MISS, "an expired session is a miss for a lane"
    assert h.core.statistics().sessions == 1, "a lane never frees a session"
    expired = h.counter("session_expired_lazy")
    h.send(frame)   # the writer's slow path: removes the old one, installs anew
    assert h.last[0] == FORWARD
    assert h.counter("session_expired_lazy") == expired + 1
    assert h.core.statistics().sessions == 1
    lane.close()


def test_a_reset_by_a_lane_ends_the_session_through_the_writer():
    h = harness()
    syn = tcp("10.0.0.1", 4000, "30.0.0.2", 80, flags=0x02)
    h.send(syn)
    sid = h.last and h.core.find_session(4, 6, "10.0.0.1", 4000, "30.0.0.2", 80, now=h.now).index
    lib.nat_session_reset(h.core._nat, sid)
    lane = h.core.lane()
    removed = h.counter("session_removed")
    [(verdict, data)] = lane_run(h, lane, [tcp("10.0.0.1", 4000, "30.0.0.2", 80, flags=0x10)])
    assert verdict == FORWARD and data[14 + 20 + 13] & 0x04, "the segment goes on as a RST"
    assert h.counter("session_removed") == removed + 1
    assert h.core.find_session(4, 6, "10.0.0.1", 4000, "30.0.0.2", 80, now=h.now) is None, "gone for lookups"
    assert h.core.statistics().sessions == 1, "but freed only by the writer"
    h.core.expire(h.now)
    assert h.core.statistics().sessions == 0
    assert h.counter("session_removed") == removed + 1, "counted once"
    lane.close()


def test_lanes_never_mistranslate_while_the_writer_churns_the_table():
    """Two lanes forward a fixed set of established flows while the writer
    keeps creating and removing other sessions in a full table, so slots
    are freed under the lanes and reused: every frame a lane sees must come
    out exactly as it did before."""
    stable, churn = 600, 300
    h = harness(max=stable + churn)
    frames = [udp(f"10.0.{i // 250}.{i % 250 + 1}", 2000 + i, "30.0.0.2", 53) for i in range(stable)]
    want = [out for _, _, out in h.run(frames)]
    # each answered, so table pressure never evicts them for the churn
    h.run([udp(f"20.0.0.{o[14 + 19]}", 5353, f"10.0.{i // 250}.{i % 250 + 1}", 2000 + i)
           for i, o in enumerate(want)])
    assert h.core.statistics().sessions == stable
    assert h.core.statistics().sessions_tentative == 0
    lanes = [h.core.lane() for _ in range(2)]
    stop = threading.Event()
    seen = [0, 0]
    wrong: list[str] = []

    def reader(k: int) -> None:
        mine = frames[k::2]
        while not stop.is_set():
            out = lane_run(h, lanes[k], mine)
            for j, (verdict, data) in enumerate(out):
                if verdict != FORWARD or data != want[k + 2 * j]:
                    wrong.append(f"lane {k} frame {k + 2 * j}: verdict {verdict}")
            seen[k] += len(out)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    rounds = 0
    try:
        while rounds < 40 or min(seen) < 20 * stable:
            batch = [udp(f"11.{rounds % 250}.{i // 250}.{i % 250 + 1}", 3000 + i, "30.0.0.2", 53) for i in range(churn)]
            b = Batch(churn)
            b.load([(f, h.core.port("eth0"), h.now) for f in batch])
            h.core.process(b, h.now)
            for i in range(churn):
                assert b.frames[i].verdict == FORWARD, f"the churn's new flows find slots: {COUNTER_NAMES[b.frames[i].reason]}"
                lib.nat_session_remove(h.core._nat, b.frames[i].session)
            rounds += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not wrong, wrong[:5]
    assert lib.nat_slots_recycled(h.core._nat) >= churn * (rounds - 2), "slots were reused under the lanes"
    assert h.core.statistics().sessions == stable
    for lane in lanes:
        lane.close()
