"""A kit for testing plugins the way the appliance tests its own.

No root, no interfaces: an in-process NAT core (the real C fast path and
slow path) with a fake clock, packet builders for IPv4 and IPv6, and
helpers that say which backend a flow got, what SNAT did and how long a
session lives. Also a pytest plugin (entry point ``pytest11``: loaded
whenever the appliance is installed) with the fixture :func:`nat`.

::

    from appliance.testing import Nat, tcp

    def test_my_selector():
        nat = Nat(CONFIG, plugins=[MySelector()])
        nat.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
        assert nat.backend() == "web-a"
        nat.advance(31)
        assert nat.expired[-1].backend_name == "web-a"

See docs/plugins.md, "Testing a plugin".
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Optional, Union

import dpkt

from ._config import Config, parse_config
from ._frames import eth, icmp_echo, icmp_error, ip, l4, strip_eth, tcp, udp
from ._plugins import Plugins
from ._types import SessionInfo
from .hooks import hookimpl
from .nat import Batch, NatCore, Verdict
from .nat._binding import COUNTER_NAMES

__all__ = ["Nat", "tcp", "udp", "icmp_echo", "icmp_error", "ip", "l4", "eth", "strip_eth", "nat",
           "TCP_SYN", "TCP_ACK", "TCP_FIN", "TCP_RST"]

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


class _Recorder:
    """Sees every session created and ended, for the kit's assertions."""

    name = "appliance.testing"

    def __init__(self) -> None:
        self.created: list[SessionInfo] = []
        self.expired: list[SessionInfo] = []

    @hookimpl
    def appliance_session_created(self, session):
        self.created.append(session)

    @hookimpl
    def appliance_session_expired(self, session):
        self.expired.append(session)


class Nat:
    """One NAT core, its plugins and a clock that moves only when told.

    :param config: TOML text or a parsed :class:`~appliance.Config`.
    :param plugins: plugin objects or modules, asked first, in this order.
    :param now: the clock's start (seconds).
    :param seed: the session table's seed (fixed: runs are reproducible).
    :param first_party: also load the first-party plugins (selectors,
        affinity), as the appliance does.
    """

    def __init__(self, config: Union[str, Config] = "", plugins: Iterable[Any] = (), *, now: float = 1000.0,
                 seed: int = 0, first_party: bool = True) -> None:
        self.config = parse_config(config, "test.toml") if isinstance(config, str) else config
        self._recorder = _Recorder()
        self.plugins = Plugins(objects=[*plugins, self._recorder], entry_points=False,
                               first_party=first_party)
        self.core = NatCore(self.config, self.plugins, table_seed=seed)
        self.now = now
        self.verdict: Optional[str] = None     # of the last frame sent
        self.out: list[bytes] = []             # what the last send() let through

    # -- traffic ---------------------------------------------------------

    def send(self, frame: bytes, iface: str = "eth0") -> list[bytes]:
        """Run one frame through the NAT at the current time: the frames
        that leave (the rewritten or passed frame; none if dropped).
        :attr:`verdict` says "translated", "passed" or the drop reason."""
        return self.send_batch([frame], iface)[0]

    def send_batch(self, frames: list[bytes], iface: str = "eth0") -> list[list[bytes]]:
        """Frames as one batch (a reply later in it finds the session made
        by an earlier one); for each, the frames that leave."""
        b = Batch(max(1, len(frames)))
        b.load([(f, self.core.port(iface), self.now) for f in frames])
        self.core.process(b, self.now)
        outs = []
        for i in range(len(frames)):
            fr = b.frames[i]
            if fr.verdict == Verdict.FORWARD:
                self.verdict = "translated"
            elif fr.verdict == Verdict.PASS:
                self.verdict = "passed"
            else:
                self.verdict = COUNTER_NAMES[fr.reason]
            outs.append([] if self.verdict not in ("translated", "passed") else [b.data(i)])
        self.out = outs[-1] if outs else []
        return outs

    # -- time ------------------------------------------------------------

    def advance(self, seconds: float) -> list[SessionInfo]:
        """Move the clock and run the expiry scanner over the whole table
        (and any pending drain); the sessions that ended meanwhile."""
        before = len(self._recorder.expired)
        self.now += seconds
        self.tick()
        return self._recorder.expired[before:]

    def tick(self) -> None:
        cap = self.core.capacity()
        self.core.expire(self.now, cap)
        for _ in range(1000):
            if self.core._stale_from is None:
                break
            self.core.expire(self.now, 0)

    # -- configuration and backend state ----------------------------------

    def reload(self, config: Union[str, Config]) -> None:
        """Apply a new configuration, as the watched file's reload does."""
        self.config = parse_config(config, "test.toml") if isinstance(config, str) else config
        self.core.apply_config(self.config)
        self.tick()

    def set_state(self, translation: str, backend: str, state: Optional[str]) -> None:
        """Set a backend active, draining or down (None: as configured), as
        a health check would."""
        s = self.backends(translation)
        i = s.index(backend)
        if i is None:
            raise KeyError(f"translation {translation} has no backend {backend}")
        s.set_state(i, state, by="appliance.testing")
        self.tick()

    def backends(self, translation: str):
        """The live :class:`~appliance.hooks.BackendSet` of a translation."""
        return self.core.backends[translation]

    # -- what happened -----------------------------------------------------

    @property
    def created(self) -> list[SessionInfo]:
        return self._recorder.created

    @property
    def expired(self) -> list[SessionInfo]:
        return self._recorder.expired

    @property
    def sessions(self) -> list[SessionInfo]:
        return list(self.core.sessions())

    def session(self, frame: Optional[bytes] = None) -> Optional[SessionInfo]:
        """The session the frame (default: the last one created) belongs to."""
        if frame is None:
            return self.created[-1] if self.created else None
        p = dpkt.ethernet.Ethernet(frame).data
        family = 6 if isinstance(p, dpkt.ip6.IP6) else 4
        l4p = p.data
        sport = getattr(l4p, "sport", getattr(getattr(l4p, "data", None), "id", 0))
        dport = getattr(l4p, "dport", 0)
        proto = p.nxt if family == 6 else p.p
        return self.core.find_session(family, proto, str(ipaddress.ip_address(p.src)), sport,
                                      str(ipaddress.ip_address(p.dst)), dport, self.now)

    def backend(self, frame: Optional[bytes] = None) -> Optional[str]:
        """The name of the backend the frame's session (default: the last
        session created) was sent to, or None."""
        s = self.session(frame)
        return None if s is None else s.backend_name or None

    def lifetime(self, frame: Optional[bytes] = None) -> Optional[float]:
        """Seconds the frame's session has left at the current time."""
        s = self.session(frame)
        return None if s is None else s.expires - self.now

    def source(self, frame: Optional[bytes] = None) -> Optional[tuple[str, int]]:
        """The (address, port) the session rewrites the source to (SNAT)."""
        s = self.session(frame)
        return None if s is None else (str(s.new_src), s.new_sport)

    def counter(self, name: str) -> int:
        return self.core.counters()[name]

    @property
    def plugin_errors(self) -> dict[str, int]:
        return dict(self.plugins.errors)

    @property
    def plugin_overruns(self) -> dict[str, int]:
        """Hook calls over ``[plugins] hook_budget_ms``, per plugin."""
        return dict(self.plugins.overruns)

    @property
    def plugins_disabled(self) -> dict[str, str]:
        """Plugins taken out for their overruns, with the reason."""
        return dict(self.plugins.disabled)


try:
    import pytest
except ImportError:  # pragma: no cover - the kit without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def nat():
        """The :class:`Nat` class, for ``nat(CONFIG, plugins=[...])`` (the
        ``pytest11`` entry point makes this fixture available everywhere)."""
        return Nat
