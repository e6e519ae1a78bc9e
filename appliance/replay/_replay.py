"""``appliance replay``: run a capture through the NAT core, offline.

Every frame goes through the same NatCore as live traffic, in file order,
with its capture timestamp as the clock. Forwarded frames (translated or
passed unchanged) are written with their input timestamp; dropped frames are
left out. Forwarding itself (MAC rewrite, TTL) belongs to the live datapath,
so replayed frames keep their Ethernet header and TTL.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

from .._config import Config
from ..nat import Batch, NatCore, Verdict
from ..nat._binding import COUNTER_NAMES
from ._pcap import CaptureError, CaptureReader, PcapWriter

BATCH = 64
FRAME_MAX = 65536 + 64   # any frame a capture can hold (snaplen <= 256 KiB is checked)


@dataclasses.dataclass
class ReplayReport:
    frames: int = 0
    translated: int = 0
    passed: int = 0
    dropped: int = 0
    drops: dict = dataclasses.field(default_factory=dict)
    passes: dict = dataclasses.field(default_factory=dict)
    sessions_created: int = 0
    sessions_expired: int = 0
    sessions_active: int = 0
    plugin_errors: dict = dataclasses.field(default_factory=dict)
    counters: dict = dataclasses.field(default_factory=dict)
    damaged: str = ""      # where and how the capture ended early ("" if whole)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        out = [f"frames {self.frames}: translated {self.translated}, passed {self.passed}, "
               f"dropped {self.dropped}",
               f"sessions: created {self.sessions_created}, expired {self.sessions_expired}, "
               f"active at end {self.sessions_active}"]
        for title, d in (("dropped", self.drops), ("passed unchanged", self.passes)):
            for k, v in sorted(d.items()):
                out.append(f"  {title}: {k} {v}")
        for k, v in sorted(self.plugin_errors.items()):
            out.append(f"  plugin errors: {k} {v}")
        return out


FrameHook = Callable[[int, str, int, str, bytes, bytes], None]


def replay(config: Config, in_path: str, out_path: str, interface: str = "eth0",
           on_frame: Optional[FrameHook] = None, core: Optional[NatCore] = None,
           seed: Optional[int] = None) -> ReplayReport:
    """Replay in_path into out_path. on_frame(index, interface, verdict,
    reason, frame_in, frame_out) is called per frame (for -v output).

    The session table's seed (which orders SNAT port choices) is ``seed``,
    else the configuration's ``flow_hash_seed``: the same input and
    configuration give byte-identical output on every run."""
    if core is None:
        from .._plugins import Plugins

        core = NatCore(config, Plugins(config.plugin_modules, config_path=config.path),
                       table_seed=config.flow_hash_seed if seed is None else seed)
    report = ReplayReport()
    batch = Batch(BATCH, FRAME_MAX)
    last_ns = 0
    with CaptureReader(in_path) as reader:
        writer = PcapWriter(out_path, nanosecond=reader.nanosecond)
        try:
            pending: list = []

            def flush() -> None:
                items = [(p.data, core.port(p.interface or interface), p.ts_ns / 1e9) for p in pending]
                batch.load(items)
                for i, p in enumerate(pending):
                    batch.frames[i].ts_ns = p.ts_ns
                core.process(batch)
                for i, p in enumerate(pending):
                    f = batch.frames[i]
                    v = f.verdict
                    out = batch.data(i)
                    if v in (Verdict.FORWARD, Verdict.PASS):
                        writer.write(p.ts_ns, out)
                    if on_frame is not None:
                        reason = "translated" if v == Verdict.FORWARD else COUNTER_NAMES[f.reason]
                        on_frame(report.frames + i, p.interface or interface, v, reason, p.data, out)
                report.frames += len(pending)
                # incremental expiry by capture time, as the live scanner would
                core.expire(pending[-1].ts_ns / 1e9)
                pending.clear()

            try:
                for pkt in reader:
                    if len(pkt.data) > FRAME_MAX:
                        pkt = dataclasses.replace(pkt, data=pkt.data[:FRAME_MAX])
                    pending.append(pkt)
                    last_ns = max(last_ns, pkt.ts_ns)
                    if len(pending) == BATCH:
                        flush()
            except CaptureError as exc:
                # a capture cut short (a full disk, a killed tcpdump): what
                # came before the damage is replayed and written; a file
                # damaged before its first frame is no capture at all
                if report.frames + len(pending) == 0:
                    writer.close()
                    os.unlink(out_path)
                    raise
                report.damaged = str(exc)
            if pending:
                flush()
            core.expire_all(last_ns / 1e9)
        finally:
            writer.close()
    stats = core.statistics()
    c = stats.counters
    report.translated = c["translated"]
    report.passed = c["passed"]
    report.dropped = c["dropped"]
    report.drops = {k: v for k, v in c.items() if k.startswith("drop_") and v}
    report.passes = {k: v for k, v in c.items() if k.startswith("pass_") and v}
    report.sessions_created = stats.sessions_created
    report.sessions_expired = stats.sessions_expired
    report.sessions_active = stats.sessions
    report.plugin_errors = stats.plugin_errors
    report.counters = {k: v for k, v in c.items() if v}
    return report
