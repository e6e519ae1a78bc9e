"""Session sync's cost, in process (``appliance bench sync``): new SNAT
sessions created with and without sync collecting them, then turned into
records and signed messages (the sender's work), then checked and installed
into a second core (the receiver's). "Sync on" counts the sender's work
with the creation (both run on the trio thread). The UDP send itself is
not in it."""

from __future__ import annotations

import time

from ._config import parse_config
from ._frames import tcp
from ._plugins import Plugins
from .cluster import _wire
from .nat import Batch, NatCore

CONFIG = """
[sessions]
max = 262144
[snat]
ip4 = "30.0.0.1"
interfaces = ["tap0"]
"""
KEY = b"bench-sync-shared-key-0123"


def _core() -> NatCore:
    return NatCore(parse_config(CONFIG, "<bench sync>"), Plugins(entry_points=False, first_party=False))


def _create(core: NatCore, n: int, now: float) -> float:
    port = core.port("tap0")
    frames = [tcp(f"10.{1 + i // 60000}.{(i // 250) % 240}.{1 + i % 250}", 1024 + i % 60000, f"40.{i // 62500}.{(i // 250) % 250}.{1 + i % 250}", 443,
                  flags=0x02) for i in range(n)]
    b = Batch(256)
    t0 = time.perf_counter()
    for i in range(0, n, 256):
        b.load([(f, port, now) for f in frames[i:i + 256]])
        core.process(b, now)
    return time.perf_counter() - t0


def _with_sync(sessions: int, now: float):
    """New sessions with sync collecting them, and the sender's work on
    them (records in C, then signed messages): (create s, send s, core, messages)."""
    a = _core()
    a.sync_start(capacity=sessions)
    collecting = _create(a, sessions, now)
    t0 = time.perf_counter()
    blob, _ = a.sync_new(now)
    msgs = _wire.encode(_wire.SESSIONS, blob, KEY, 1, 0, _wire.config_digest(a.config.translations), now)
    return collecting, time.perf_counter() - t0, a, msgs


def run(sessions: int = 100_000, rounds: int = 3) -> dict:
    """Off and on alternate ``rounds`` times, the best of each kept: a fresh
    core's first touch of its table varies by more than sync costs."""
    now = 1000.0
    plain, on = [], []
    for _ in range(rounds):
        plain.append(_create(_core(), sessions, now))
        on.append(_with_sync(sessions, now))
    plain = min(plain)
    collecting, send, a, msgs = min(on, key=lambda r: r[0] + r[1])
    records = sum(_wire.HEADER.unpack_from(m)[3] for m in msgs)
    b = _core()
    t0 = time.perf_counter()
    got = [r for m in msgs for r in _wire.decode(m, KEY).records]
    counts = b.install_synced(got, now)
    recv = time.perf_counter() - t0
    wire = sum(len(m) for m in msgs)
    return {"sessions": sessions, "records": records, "installed": counts["installed"],
            "new_sessions_per_s": round(sessions / plain),
            "new_sessions_per_s_sync_on": round(sessions / (collecting + send)),
            "sync_on_ratio": round(plain / (collecting + send), 3),
            "sender_sessions_per_s": round(records / send), "receiver_sessions_per_s": round(len(got) / recv),
            "sender_cpu_per_10k_per_s": f"{10_000 / (records / send) * 100:.2f} % of a CPU",
            "bytes_per_session": round(wire / records, 1), "messages": len(msgs)}
