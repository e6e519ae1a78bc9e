"""Timers of the NAT core: the expiry scanner, session-ended events (and the
per-backend counts they keep), and the drain policies that remove the
sessions of backends that left. A part of :class:`NatCore`."""

from __future__ import annotations

import logging
from typing import Optional

from .._backends import BackendSet
from ._binding import ffi, lib
from ._common import _ns

log = logging.getLogger("appliance.nat")

# The scanner examines this many slots per tick: at ~10 ns a slot that is
# ~80 us of work, VPP's "at most ~100 us per wake-up"; a million-slot table
# is swept in 128 ticks. Expired sessions are also removed when a packet
# finds them, so the sweep only reclaims memory; it never decides liveness.
SCAN_INTERVAL = 0.1   # seconds between ticks
SCAN_BUDGET = 8192    # slots per tick

# After a reload, connectionless sessions whose backend is gone are looked
# for in slices of this many sessions (up to ~3 ms of Python each, measured
# with every session removed), a slice every STALE_SWEEP_INTERVAL: a million
# sessions are checked in ~13 s, and the loop never stalls long enough to
# overflow an RX ring.
STALE_SWEEP_BUDGET = 1024
STALE_SWEEP_INTERVAL = 0.01


EVENT_RING = 4096     # NAT_EVENT_RING in nat_internal.h

# drain = "reset": TCP sessions that no packet came for within this many
# seconds of being marked are removed without one (idle connections; a
# later segment of theirs is placed afresh and its backend resets it).
RESET_GRACE = 10.0


class _Drain:
    """Sessions of one backend that its translation's drain policy removes:
    ``what`` is "all", "connectionless" (UDP, ICMP), "reset" (TCP
    sessions marked to be reset by their next packet, the others removed)
    or "marked" (the sessions still marked: removed), ``due`` when (None:
    ``deadline`` seconds from the next tick). ``mode`` is the policy that
    set it off: a reload keeps it while the policy and the state stay."""

    __slots__ = ("what", "due", "deadline", "swept", "mode", "state")

    def __init__(self, what: str, due: Optional[float], deadline: float, mode: str = "",
                 state: str = "") -> None:
        self.what, self.due, self.deadline, self.swept = what, due, deadline, due is not None
        self.mode, self.state = mode, state


class Expiry:
    """Timers, session-ended events and drains (see :class:`NatCore`)."""

    def next_deadline(self, now: float) -> float:
        """When :meth:`expire` should run next."""
        return now + (STALE_SWEEP_INTERVAL if self._stale_from is not None else SCAN_INTERVAL)

    def expire(self, now: float, budget: int = SCAN_BUDGET) -> int:
        """Remove expired sessions among the next ``budget`` slots, and
        continue a pending sweep for sessions a reload left stale."""
        self._now = now
        n = self._expire_chunked(_ns(now), budget)
        if self._doom:
            self._start_due_drains(now)
        if self._stale_from is not None:
            self._sweep_stale(STALE_SWEEP_BUDGET, now)
        self._drain_events()
        return n

    def _start_due_drains(self, now: float) -> None:
        for d in self._doom.values():
            if d.due is None:
                d.due = now + d.deadline
            elif d.due <= now and not d.swept:
                d.swept = True
                self._stale_from = 0

    def _sweep_stale(self, budget: int, now: float) -> None:
        """Remove, a slice at a time, the sessions the drain policies have
        made due."""
        info, nat, none, doom = self._info, self._nat, lib.NAT_NONE, self._doom
        i = lib.nat_session_next(nat, self._stale_from)
        while i != none and budget > 0:
            budget -= 1
            if lib.nat_session_get(nat, i, info) == 0 and info.flags & lib.NAT_SF_TRANSLATED:
                tcp = info.key[0].proto == 6
                d = doom.get((info.translation, info.backend))
                if d is not None:
                    if d.due is not None and d.due <= now:
                        if d.what == "marked":
                            if info.flags & lib.NAT_SF_RESET:
                                lib.nat_session_remove(nat, i)   # counted: nat.session_removed
                        elif d.what == "reset" and tcp:
                            lib.nat_session_reset(nat, i)
                        elif d.what != "connectionless" or not tcp:
                            lib.nat_session_remove(nat, i)
            i = lib.nat_session_next(nat, i + 1)
        if i == none:
            self._stale_from = None
            for key, d in list(doom.items()):   # done, unless a deadline is still to come
                if d.due is not None and d.due <= now:
                    if d.what == "reset":   # what no packet came for to reset, removed later
                        doom[key] = _Drain("marked", now + RESET_GRACE, 0.0, d.mode, d.state)
                        doom[key].swept = False
                    else:
                        del doom[key]
        else:
            self._stale_from = i

    def expire_all(self, now: float) -> int:
        """Sweep the whole table once (offline use: end of a replay)."""
        return self._expire_chunked(_ns(now), lib.nat_session_capacity(self._nat))

    def _expire_chunked(self, now_ns: int, budget: int) -> int:
        # At most EVENT_RING slots between two drains: C's ring of session
        # ended events holds that many, and an event lost is a session the
        # per-backend counts (and the plugins) never hear end.
        n = 0
        while budget > 0:
            step = min(budget, EVENT_RING)
            n += lib.nat_expire(self._nat, now_ns, step)
            self._drain_events()
            budget -= step
        return n

    def drain_events(self) -> None:
        """Deliver queued expiry events (C loops call this between polls)."""
        self._drain_events()

    def _drain_events(self) -> None:
        while True:
            n = lib.nat_drain_events(self._nat, self._events, 1024)
            if not n:
                return
            self.sessions_expired += n
            sets, nsets, events = self._sets, len(self._sets), self._events
            for i in range(n):
                ev = events[i]
                t = ev.translation
                if t < nsets:
                    sets[t].count(ev.backend, -1)
                    sets[t].ended_session(ev.backend, ev.packets[0], ev.packets[1], ev.bytes[0], ev.bytes[1])
            if self.plugins.wants_expired:
                for i in range(n):
                    self.plugins.notify("appliance_session_expired",
                                        session=self._session_info(self._events[i]))
            if self.host_sources and self.on_host_source is not None:
                for i in range(n):
                    k1 = self._events[i].key[1]
                    alen = 4 if k1.family == 4 else 16
                    if bytes(ffi.buffer(k1.dst, alen)) in self.host_sources:
                        s = self._session_info(self._events[i])
                        self.on_host_source(False, s.new_src, k1.proto, s.new_sport)

    def _backend_changed(self, s: BackendSet, i: int, before: str, after: str) -> None:
        """A backend's state was set at run time (health checks, control)."""
        log.info("translation %s: backend %s is %s (was %s)", s.translation.name,
                 s.translation.backends[i].name, after, before)
        if self._doom.pop((s.translation.id, i), None) is not None and after == "active":
            # back before its sessions were all reset: none of them is
            lib.nat_sessions_unreset(self._nat, s.translation.id, i)
        self._schedule_drain(s, i)

    def _schedule_drain(self, s: BackendSet, i: int) -> None:
        """What the translation's drain policy does to backend i's sessions
        in its current state: nothing while it is active."""
        state = s.state(i)
        if state == "active":
            return
        mode = s.translation.drain.mode
        what = "all"
        if mode == "keep" or (mode == "default" and state == "draining"):
            return
        if mode == "default":
            what = "connectionless"      # TCP runs to its end; UDP must not go on to a dead backend
        elif mode == "reset":
            what = "reset"
        if mode == "deadline":   # counted from the first tick after the backend left; TCP then reset
            self._doom[(s.translation.id, i)] = _Drain("reset", None, s.translation.drain.deadline, mode, state)
        else:
            self._doom[(s.translation.id, i)] = _Drain(what, float("-inf"), 0.0, mode, state)
            self._stale_from = 0
