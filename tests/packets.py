"""A fluent NAT harness for packet-table tests (frame builders re-exported)."""

from __future__ import annotations

from typing import Optional

import dpkt

from appliance import parse_config
from appliance._plugins import Plugins

from appliance._frames import MAC_A, MAC_B, eth, icmp_echo, icmp_error, ip, l4, strip_eth, tcp, udp  # noqa: F401
from appliance.nat import Batch, NatCore, Verdict

FORWARD, PASS, DROP = Verdict.FORWARD, Verdict.PASS, Verdict.DROP


# ---------------------------------------------------------------------------

class Harness:
    """Fluent send -> expect helper over a NatCore with a fake clock."""

    def __init__(self, config_text: str = "", now: float = 1000.0, plugins=None, **kw) -> None:
        self.config = parse_config(config_text, "test.toml")
        if plugins is None:
            plugins = Plugins(self.config.plugin_modules, entry_points=False)
        self.core = NatCore(self.config, plugins, **kw)
        self.now = now
        self.last: Optional[tuple[int, int, bytes]] = None

    def advance(self, seconds: float) -> "Harness":
        self.now += seconds
        return self

    def run(self, frames, iface: str = "eth0"):
        """Process frames as one batch; returns [(verdict, reason_name, bytes)]."""
        from appliance.nat._binding import COUNTER_NAMES

        if isinstance(frames, (bytes, bytearray)):
            frames = [frames]
        b = Batch(max(1, len(frames)))
        port = self.core.port(iface)
        b.load([(f, port, self.now) for f in frames])
        self.core.process(b, self.now)
        return [(b.frames[i].verdict, COUNTER_NAMES[b.frames[i].reason] if b.frames[i].verdict != FORWARD else "translated",
                 b.data(i)) for i in range(len(frames))]

    def send(self, frame: bytes, iface: str = "eth0") -> "Harness":
        self.last = self.run([frame], iface)[0]
        return self

    def expect(self, frame: bytes) -> "Harness":
        verdict, reason, data = self.last
        assert verdict == FORWARD, f"expected a translated frame, got verdict {verdict} ({reason})"
        assert data == frame, diff(data, frame)
        return self

    def expect_pass(self, original: bytes) -> "Harness":
        verdict, reason, data = self.last
        assert verdict == PASS, f"expected pass, got verdict {verdict} ({reason})"
        assert data == original, "passed frame must be byte-for-byte unchanged"
        return self

    def expect_drop(self, reason: str) -> "Harness":
        verdict, got, _ = self.last
        assert verdict == DROP, f"expected drop ({reason}), got verdict {verdict} ({got})"
        assert got == reason, f"expected drop reason {reason}, got {got}"
        return self

    @property
    def out(self) -> bytes:
        return self.last[2]

    def counter(self, name: str) -> int:
        return self.core.statistics().counters[name]


def diff(got: bytes, want: bytes) -> str:
    lines = [f"frames differ (got {len(got)} bytes, want {len(want)}):"]
    try:
        lines.append(f"  got : {dpkt.ethernet.Ethernet(got)!r}")
        lines.append(f"  want: {dpkt.ethernet.Ethernet(want)!r}")
    except Exception:  # pragma: no cover - diagnostics only
        pass
    for i in range(0, max(len(got), len(want)), 16):
        g, w = got[i:i + 16], want[i:i + 16]
        if g != w:
            lines.append(f"  @{i:04x} got {g.hex(' ')}\n        want {w.hex(' ')}")
    return "\n".join(lines)
