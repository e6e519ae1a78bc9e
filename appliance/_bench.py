"""``appliance bench core``: the NAT core measured in-process.

- new_sessions_per_s: first packets of distinct flows through the slow path
  (translation lookup, built-in selector and timeout plugins, port check,
  session install, C re-run), in batches of 256, until ``sessions`` exist.
- bytes_per_session: growth of the process's resident memory while those
  sessions were created, divided by their number (table, buckets and all).
- fastpath_pps: established-flow frames through NatCore.process in batches
  of 256, spread in random order over ``fastpath_flows`` sessions of a table
  sized for them. Each batch first restores its frames from a pristine copy
  (one memmove per batch, included in the time) because the NAT rewrites
  frames in place. fastpath_pps_in_full_table: the same traffic against the
  table holding all ``sessions`` (bigger hash buckets, more cache misses).
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
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


def _fastpath(core: NatCore, pristine, chunks: int, now: float, seconds: float) -> int:
    batch = Batch(BATCH, FRAME)
    work = batch.buf
    for k in range(BATCH):
        batch.frames[k].data = work + k * FRAME
        batch.frames[k].len = FRAME_LEN
    batch.n = BATCH
    hits_before = core.counters()["session_hit"]
    packets = 0
    i = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        ffi.memmove(work, pristine + (i % chunks) * BATCH * FRAME, BATCH * FRAME)
        core.process(batch, now)
        packets += BATCH
        i += 1
        if i % 64 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - t0
    hits = core.counters()["session_hit"] - hits_before
    assert hits == packets, "fast-path benchmark frames must all hit their sessions"
    assert batch.frames[0].verdict == Verdict.FORWARD
    return round(packets / elapsed)


# The first-party policy plugins, each on its own translation shape.
POLICIES = {
    "maglev": 'selector = "maglev"',
    "affinity": "affinity = { timeout = 10800 }",
    "least_sessions": 'selector = "least-sessions"',
}


def _new_sessions_per_s(extra: str, sessions: int, first_party: bool = True) -> int:
    """New sessions/s through the slow path of a translation with ``extra``
    (each flow from its own client address, so affinity misses and learns)."""
    text = CONFIG.format(max=sessions).replace('port = 53\n', f"port = 53\n{extra}\n")
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


def run(sessions: int = 1_000_000, fastpath_flows: int = 131_072, seconds: float = 3.0,
        seed: int = 1) -> dict:
    rnd = random.Random(seed)
    core = NatCore(parse_config(CONFIG.format(max=max(sessions, fastpath_flows))), Plugins(entry_points=False),
                   table_seed=seed)
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
    small = NatCore(parse_config(CONFIG.format(max=fastpath_flows)), Plugins(entry_points=False), table_seed=seed)
    for start in range(0, fastpath_flows, BATCH):
        n = min(BATCH, fastpath_flows - start)
        _fill(batch.buf, [_frame(start + k) for k in range(n)])
        batch.n = n
        small.process(batch, now)
    order = [rnd.randrange(fastpath_flows) for _ in range(64 * BATCH)]
    pristine = ffi.new("uint8_t[]", len(order) * FRAME)
    _fill(pristine, [_frame(i) for i in order])
    pps_small = _fastpath(small, pristine, len(order) // BATCH, now, seconds)
    pps_big = _fastpath(core, pristine, len(order) // BATCH, now, seconds)
    # the same table with only the built-ins: established flows never enter
    # Python, so loading the first-party plugins must not cost them anything
    bare = NatCore(parse_config(CONFIG.format(max=fastpath_flows)), Plugins(entry_points=False, first_party=False),
                   table_seed=seed)
    for start in range(0, fastpath_flows, BATCH):
        n = min(BATCH, fastpath_flows - start)
        _fill(batch.buf, [_frame(start + k) for k in range(n)])
        batch.n = n
        bare.process(batch, now)
    pps_bare = _fastpath(bare, pristine, len(order) // BATCH, now, seconds)
    per_policy = {f"new_sessions_per_s_{name}": _new_sessions_per_s(extra, min(sessions, 200_000))
                  for name, extra in POLICIES.items()}

    return {
        "fastpath_pps": pps_small,
        "fastpath_pps_in_full_table": pps_big,
        "fastpath_pps_builtins_only": pps_bare,
        **per_policy,
        "new_sessions_per_s": round(created / t_new),
        "bytes_per_session": round((rss1 - rss0) / sessions, 1),
        "sessions": sessions,
        "fastpath_flows": fastpath_flows,
        "batch": BATCH,
        "frame_bytes": FRAME_LEN,
        "session_struct_bytes": lib.nat_sizeof_session(),
        "table_bytes_per_session": round(core.memory_bytes() / core.statistics().capacity, 1),
    }
