"""The appliance's part in a group of instances (docs/cluster.md): its vips
announced over BGP while it can serve them, and draining.

What is announced follows one rule, evaluated every second and at once
after a change: the vips of the running configuration, unless the
appliance drains or a data interface is gone; the neighbors' extra
prefixes (a route towards the clients for the backends' router) while the
process runs at all, draining included, since the replies of the flows it
still serves must reach it.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import trio

from ..cluster import Bird, BirdError

log = logging.getLogger("appliance.run")

POLL_SECONDS = 1.0


class Announce:
    """BGP and drain: the part of :class:`~appliance.runtime.Appliance` that
    decides what the routers are told."""

    bird: Optional[Bird] = None
    drain_deadline: Optional[float] = None    # time.monotonic() at which a drain stops the process
    drain_started: Optional[float] = None

    def open_bgp(self) -> None:
        """Start BIRD when [bgp] is configured (nothing announced yet);
        BirdError when it cannot be had."""
        self._bgp_wake = trio.Event()
        self._drain_requested = trio.Event()
        if self.config.bgp is not None:
            self.bird = Bird(self.config.bgp)
            try:
                self.bird.start()
            except BirdError:
                self.bird.stop()
                self.bird = None
                raise

    def close_bgp(self) -> None:
        if self.bird is not None:
            self.bird.stop()      # a Cease to every peer: they withdraw our routes now

    def unhealthy(self) -> Optional[str]:
        """Why the vips must not be announced, or None."""
        if self.drain_deadline is not None:
            return "draining"
        gone = [name for name, state in self.interface_state.items() if state == "gone"]
        if gone:
            return f"data interface {', '.join(gone)} gone"
        return None

    def wanted_vips(self) -> set:
        if self.unhealthy() is not None:
            return set()
        return {t.address for t in self.config.translations if t.kind == "vip"}

    def bgp_changed(self) -> None:
        """Something the announcement depends on changed: look now."""
        wake = getattr(self, "_bgp_wake", None)   # None before open_bgp(): the first look comes anyway
        if wake is not None:
            wake.set()

    async def bgp_loop(self) -> None:
        why = None
        while True:
            self._bgp_wake = trio.Event()
            cfg = self.config.bgp
            if self.bird is not None and cfg is not None and cfg != self.bird.cfg:
                await self.bird.reconfigure(cfg)
            elif (cfg is None) != (self.bird is None):
                log.warning("[bgp] %s at a reload: takes effect at the next start",
                            "added" if cfg is not None else "removed")
            if self.bird is not None:
                now_why = self.unhealthy()
                if now_why != why and now_why is not None:
                    log.warning("BGP: withdrawing the vips: %s", now_why)
                why = now_why
                await self.bird.announce(self.wanted_vips(), serving=True)
                await self.bird.poll()
            with trio.move_on_after(POLL_SECONDS):
                await self._bgp_wake.wait()

    # -- drain ---------------------------------------------------------------------

    def start_drain(self, seconds: int) -> dict:
        """`appliance cnat drain`: vips withdrawn now, the process stops when
        its last session ends or after ``seconds``. A second drain moves the
        deadline."""
        now = time.monotonic()
        if self.drain_started is None:
            self.drain_started = now
            log.warning("draining: vips withdrawn, stopping when the last session ends or in %d s", seconds)
        self.drain_deadline = now + seconds
        self._drain_requested.set()
        self.bgp_changed()
        return self.drain_status()

    def drain_status(self) -> Optional[dict]:
        if self.drain_deadline is None:
            return None
        now = time.monotonic()
        return {"since_s": round(now - self.drain_started, 1),
                "stops_in_s": round(max(0.0, self.drain_deadline - now), 1),
                "sessions": self.core.statistics().sessions}

    async def drain_loop(self, stop: trio.CancelScope) -> None:
        """Ends the run once a drain's sessions are gone or its deadline passed."""
        await self._drain_requested.wait()
        while True:
            left = self.core.statistics().sessions
            if left == 0 or time.monotonic() >= self.drain_deadline:
                log.warning("drained: %s; stopping", "no session left" if left == 0 else
                            f"deadline reached with {left} sessions")
                stop.cancel()
                return
            await trio.sleep(0.5)

    def cluster_stats(self) -> dict:
        out = {}
        if self.bird is not None:
            out["bgp"] = {**self.bird.status(), "withheld": self.unhealthy()}
        d = self.drain_status()
        if d is not None:
            out["drain"] = d
        return out
