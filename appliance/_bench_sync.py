"""Session sync's cost, in process (``appliance bench sync``): new SNAT
sessions created with and without sync collecting them, then turned into
records and signed messages (the sender's work), then checked and installed
into a second core (the receiver's). The UDP send itself is not in it."""

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


def run(sessions: int = 100_000) -> dict:
    now = 1000.0
    plain = _create(_core(), sessions, now)
    a = _core()
    a.sync_outbox = []
    collecting = _create(a, sessions, now)
    t0 = time.perf_counter()
    records, _ = a.sync_records(a.sync_outbox, now)
    msgs = _wire.encode(_wire.SESSIONS, records, KEY, 1, 0, _wire.config_digest(a.config.translations))
    send = time.perf_counter() - t0
    b = _core()
    t0 = time.perf_counter()
    got = [r for m in msgs for r in _wire.decode(m, KEY).records]
    counts = b.install_synced(got, now)
    recv = time.perf_counter() - t0
    wire = sum(len(m) for m in msgs)
    return {"sessions": sessions, "records": len(records), "installed": counts["installed"],
            "new_sessions_per_s": round(sessions / plain), "new_sessions_per_s_sync_on": round(sessions / collecting),
            "sync_on_ratio": round(plain / collecting, 3),
            "sender_sessions_per_s": round(len(records) / send), "receiver_sessions_per_s": round(len(got) / recv),
            "sender_cpu_per_10k_per_s": f"{10_000 / (len(records) / send) * 100:.1f} % of a CPU",
            "bytes_per_session": round(wire / len(records), 1), "messages": len(msgs)}
