"""``appliance bench core``: the NAT core measured in-process.

- new_sessions_per_s: first packets of distinct flows through the slow path
  (translation lookup, built-in selector and timeout plugins, port check,
  session install, C re-run), in batches of 256, until ``sessions`` exist.
- bytes_per_session: growth of the process's resident memory while those
  sessions were created, divided by their number (table, buckets and all).
- fastpath_pps: established-flow frames through the fast path in batches
  of 256, spread in random order over ``fastpath_flows`` sessions of a table
  sized for them, by ``workers`` threads at once, each on its own lane
  (nat_lane_bench: a loop in C, as a datapath worker's, so that the threads
  measure the core and not the GIL) and pinned to its own CPU where the
  affinity mask has one. Each batch first copies its frames from a pristine
  copy (one memcpy per batch, included in the time, as an RX copy would be)
  because the NAT rewrites frames in place. fastpath_pps_in_full_table: the
  same traffic against the table holding all ``sessions`` (bigger hash
  buckets, more cache misses). fastpath_pps_per_worker: each thread's share.
- new_sessions_per_s_evicting: new flows into a table already full of
  unanswered ones (a flood's), each evicting the oldest (table pressure).

The tables are sized so that the sessions measured stay below the pressure
threshold (15/16 of the capacity): none is evicted while they are counted.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import threading
import time

from ._config import parse_config
from ._plugins import Plugins
from .nat import Batch, NatCore, Verdict
from .nat._binding import ffi, lib

CONFIG = """
[sessions]
max = {max}
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353", "->20.0.0.2 5353", "->20.0.0.3 5353", "->20.0.0.4 5353"]
"""

FRAME = 64           # stride of a synthetic frame in the buffers
FRAME_LEN = 60       # Ethernet + IPv4 + UDP + 18 bytes payload
BATCH = 256


def _room_for(n: int) -> int:
    """A capacity whose pressure threshold (capacity - capacity // 16) is above n."""
    c = n + n // 15 + 1
    while c - c // 16 <= n:
        c += 1
    return c


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ipv4_csum(hdr: bytes) -> int:
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _frame(i: int) -> bytes:
    """Flow i: client 10.x.y.z:(1024 + i % 60000) -> 30.0.0.2:53 (UDP)."""
    src = int(ipaddress.IPv4Address("10.0.0.0")) + (i // 60000) + 1
    sport = 1024 + i % 60000
    payload = b"b" * 18
    udp = struct.pack("!HHHH", sport, 53, 8 + len(payload), 0) + payload   # checksum 0: none
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      struct.pack("!I", src), ipaddress.IPv4Address("30.0.0.2").packed)
    hdr = hdr[:10] + struct.pack("!H", _ipv4_csum(hdr)) + hdr[12:]
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + hdr + udp


def _fill(buf, frames: list[bytes]) -> None:
    for i, fr in enumerate(frames):
        ffi.memmove(buf + i * FRAME, fr, len(fr))


def _fastpath(core: NatCore, pristine: list, chunks: int, now: float, seconds: float,
              workers: int = 1) -> tuple[int, list[int]]:
    """(frames per second over all workers, frames per second per worker);
    worker k sends pristine[k]."""
    cpus = sorted(os.sched_getaffinity(0))
    lanes = [core.lane() for _ in range(workers)]
    done = [0] * workers
    start = threading.Barrier(workers + 1)
    stop = threading.Event()
    hits_before = core.counters()["session_hit"]

    def worker(k: int) -> None:
        if len(cpus) >= workers:
            os.sched_setaffinity(0, {cpus[k % len(cpus)]})   # this thread only
        work = ffi.new("uint8_t[]", BATCH * FRAME)
        frames = ffi.new("struct nat_frame[]", BATCH)
        lane = lanes[k].pointer
        start.wait()
        while not stop.is_set():   # ~64 batches a call: the GIL is taken once per ~2 ms
            got = lib.nat_lane_bench(lane, pristine[k], chunks, BATCH, FRAME, FRAME_LEN, work, frames,
                                     int(now * 1e9), 64)
            assert got == 64 * BATCH, "fast-path benchmark frames must all be forwarded"
            done[k] += got

    threads = [threading.Thread(target=worker, args=(k,), name=f"bench-worker-{k}") for k in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    hits = core.counters()["session_hit"] - hits_before
    assert hits == sum(done), "fast-path benchmark frames must all hit their sessions"
    for lane in lanes:
        lane.close()
    return round(sum(done) / elapsed), [round(d / elapsed) for d in done]


# The first-party policy plugins, each on its own translation shape.
POLICIES = {
    "maglev": 'selector = "maglev"',
    "affinity": "affinity = { timeout = 10800 }",
    "least_sessions": 'selector = "least-sessions"',
}


def _new_sessions_per_s(extra: str, sessions: int, first_party: bool = True) -> int:
    """New sessions/s through the slow path of a translation with ``extra``
    (each flow from its own client address, so affinity misses and learns)."""
    text = CONFIG.format(max=_room_for(sessions)).replace('port = 53\n', f"port = 53\n{extra}\n")
    core = NatCore(parse_config(text), Plugins(entry_points=False, first_party=first_party), table_seed=1)
    batch = Batch(BATCH, FRAME)
    for k in range(BATCH):
        batch.frames[k].data = batch.buf + k * FRAME
        batch.frames[k].len = FRAME_LEN
    spent = 0.0
    for start in range(0, sessions, BATCH):
        n = min(BATCH, sessions - start)
        _fill(batch.buf, [_frame((start + k) * 60000) for k in range(n)])   # a client each
        batch.n = n
        t0 = time.perf_counter()
        core.process(batch, 1000.0)
        spent += time.perf_counter() - t0
    assert core.statistics().sessions == sessions
    return round(sessions / spent)


def _evicting_per_s(capacity: int) -> int:
    """New sessions/s while each evicts the oldest unanswered one: a table
    of ``capacity`` driven to its pressure threshold by one round of flows,
    then timed over a second round."""
    core = NatCore(parse_config(CONFIG.format(max=capacity)), Plugins(entry_points=False), table_seed=1)
    batch = Batch(BATCH, FRAME)
    for k in range(BATCH):
        batch.frames[k].data = batch.buf + k * FRAME
        batch.frames[k].len = FRAME_LEN
    spent, timed = 0.0, 0
    for start in range(0, 2 * capacity, BATCH):
        n = min(BATCH, 2 * capacity - start)
        _fill(batch.buf, [_frame(start + k) for k in range(n)])
        batch.n = n
        t0 = time.perf_counter()
        core.process(batch, 1000.0)
        if start >= capacity:
            spent += time.perf_counter() - t0
            timed += n
    evicted = core.counters()["session_evicted_unanswered"]
    assert evicted >= timed, (evicted, timed)
    return round(timed / spent)


def run(sessions: int = 1_000_000, fastpath_flows: int = 131_072, seconds: float = 3.0,
        seed: int = 1, workers: int = 1) -> dict:
    rnd = random.Random(seed)
    core = NatCore(parse_config(CONFIG.format(max=_room_for(max(sessions, fastpath_flows)))),
                   Plugins(entry_points=False), table_seed=seed)
    batch = Batch(BATCH, FRAME)
    now = 1000.0

    # -- new sessions through the slow path ------------------------------
    rss0 = _rss_bytes()
    t_new = 0.0
    created = 0
    for k in range(BATCH):
        batch.frames[k].data = batch.buf + k * FRAME
        batch.frames[k].len = FRAME_LEN
    for start in range(0, sessions, BATCH):
        n = min(BATCH, sessions - start)
        _fill(batch.buf, [_frame(start + k) for k in range(n)])
        batch.n = n
        t0 = time.perf_counter()
        core.process(batch, now)
        t_new += time.perf_counter() - t0
        created += n
    rss1 = _rss_bytes()
    stats = core.statistics()
    assert stats.sessions == sessions, (stats.sessions, sessions)

    # -- established flows through the fast path -------------------------
    # On a table holding exactly the flows (the target's ">= 100k sessions"),
    # and on the million-session table above (more cache misses per lookup).
    small = NatCore(parse_config(CONFIG.format(max=_room_for(fastpath_flows))), Plugins(entry_points=False),
                    table_seed=seed)
    for start in range(0, fastpath_flows, BATCH):
        n = min(BATCH, fastpath_flows - start)
        _fill(batch.buf, [_frame(start + k) for k in range(n)])
        batch.n = n
        small.process(batch, now)
    # Worker k gets the flows i with i % workers == k, as RSS gives each
    # queue its own flows: the workers share the table, not its sessions.
    chunks = 64
    pristine = []
    for k in range(workers):
        order = [k + workers * rnd.randrange(fastpath_flows // workers) for _ in range(chunks * BATCH)]
        pristine.append(ffi.new("uint8_t[]", len(order) * FRAME))
        _fill(pristine[k], [_frame(i) for i in order])
    pps_small, per_worker = _fastpath(small, pristine, chunks, now, seconds, workers)
    pps_big, per_worker_big = _fastpath(core, pristine, chunks, now, seconds, workers)
    # the same table with only the built-ins: established flows never enter
    # Python, so loading the first-party plugins must not cost them anything
    bare = NatCore(parse_config(CONFIG.format(max=_room_for(fastpath_flows))),
                   Plugins(entry_points=False, first_party=False),
                   table_seed=seed)
    for start in range(0, fastpath_flows, BATCH):
        n = min(BATCH, fastpath_flows - start)
        _fill(batch.buf, [_frame(start + k) for k in range(n)])
        batch.n = n
        bare.process(batch, now)
    pps_bare, _ = _fastpath(bare, pristine, chunks, now, seconds, workers)
    per_policy = {f"new_sessions_per_s_{name}": _new_sessions_per_s(extra, min(sessions, 200_000))
                  for name, extra in POLICIES.items()}
    evicting = _evicting_per_s(min(sessions, 200_000))

    return {
        "fastpath_pps": pps_small,
        "fastpath_pps_in_full_table": pps_big,
        "fastpath_pps_builtins_only": pps_bare,
        "fastpath_pps_per_worker": per_worker,
        "fastpath_pps_in_full_table_per_worker": per_worker_big,
        "workers": workers,
        **per_policy,
        "new_sessions_per_s": round(created / t_new),
        "new_sessions_per_s_evicting": evicting,
        "bytes_per_session": round((rss1 - rss0) / sessions, 1),
        "sessions": sessions,
        "fastpath_flows": fastpath_flows,
        "batch": BATCH,
        "frame_bytes": FRAME_LEN,
        "session_struct_bytes": lib.nat_sizeof_session(),
        "table_bytes_per_session": round(core.memory_bytes() / core.statistics().capacity, 1),
    }
