"""The live state of each translation's backends, shared by the core and
the plugins.

A :class:`BackendSet` is what a selector sees for one translation: which
backends may take a new flow now (:attr:`BackendSet.eligible`), their
weights, and live figures (active sessions and new flows per backend).
The figures are kept by the core from session created / ended events, once
per flow and never per packet. Health checks (or the control plane) set a
backend ``down`` or ``draining`` with :meth:`BackendSet.set_state`; the
configured state and the set one combine, the worse wins.

Backends are matched across reloads by name and rewrite: a backend that
keeps both keeps its figures and its set state. One that is removed while
it still has sessions stays here as *gone* (index ``len(backends)`` and
up) until its sessions end, so that they are still counted and its
translation's drain policy can find them.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import operator
from typing import Callable, Optional, Sequence

from ._types import BACKEND_STATES, NO_BACKEND, Translation

_RANK = {state: i for i, state in enumerate(BACKEND_STATES)}   # active < draining < down


class Gone:
    """A backend removed by a reload whose sessions have not all ended."""

    __slots__ = ("name", "rewrite", "sessions", "new_flows", "ended")

    def __init__(self, name: str, rewrite: str, sessions: int, new_flows: int,
                 ended: Optional[list[int]] = None) -> None:
        self.name = name
        self.rewrite = rewrite
        self.sessions = sessions
        self.new_flows = new_flows
        self.ended = ended if ended is not None else [0, 0, 0, 0]


class BackendSet:
    """One translation's backends as they are now.

    Read by selectors and plugins: :attr:`translation`, :attr:`eligible`,
    :attr:`weights`, :attr:`sessions`, :attr:`new_flows`,
    :meth:`state`. Lists are indexed like ``translation.backends``; do not
    modify them (the core keeps them).
    """

    def __init__(self, translation: Translation, locality: tuple[tuple[str, str], ...] = ()) -> None:
        self._translation = translation
        # the appliance's own labels: backends that carry all of them are
        # preferred while one of them is eligible (same zone first)
        self.locality = locality
        n = len(translation.backends)
        self._weights: list[int] = [b.weight for b in translation.backends]
        self._sessions: list[int] = [0] * n     # active sessions per backend
        self._new_flows: list[int] = [0] * n
        # packets to / from and bytes to / from each backend, of its ended
        # sessions (from their events); the live ones' are read from C
        self.ended: list[list[int]] = [[0, 0, 0, 0] for _ in range(n)]
        self.gone: list[Gone] = []
        #: new flows refused because their source is outside allow_from
        self.denied = 0
        #: new flows the translation has taken (all backends, gone ones too)
        self.flows = 0
        #: bumped whenever eligibility or weights change: selectors that
        #: build tables from them (Maglev) rebuild when it moves
        self.version = 0
        self.removed = False        # the translation itself left the configuration
        #: for plugins: what they derive from this set (tables), dropped with it
        self.cache: dict = {}
        self._by_name = {b.name: i for i, b in enumerate(translation.backends)}
        self._set: list[Optional[str]] = [None] * n
        self._set_by: list[str] = [""] * n
        self._weight_set: list[bool] = [False] * n   # set at run time: kept across reloads
        self.on_change: Optional[Callable[["BackendSet", int, str, str], None]] = None
        self._refresh()

    # -- reading ---------------------------------------------------------
    #
    # Read-only to plugins: every plugin of a flow is handed this object,
    # and the core keeps the figures (a plugin that tries to set them gets
    # AttributeError or TypeError, contained like any exception).

    translation = property(operator.attrgetter("_translation"))
    #: indexes that may take a new flow, in order
    eligible = property(operator.attrgetter("_eligible"))
    eligible_set = property(operator.attrgetter("_eligible_set"))

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(self._weights)

    @property
    def sessions(self) -> tuple[int, ...]:
        """Active sessions per backend."""
        return tuple(self._sessions)

    @property
    def new_flows(self) -> tuple[int, ...]:
        return tuple(self._new_flows)

    def state(self, i: int) -> str:
        """``active``, ``draining`` or ``down``: the worse of the configured
        state and the one set at run time; ``gone`` past the backends."""
        if i >= len(self._translation.backends):
            return "gone"
        configured = self._translation.backends[i].state
        s = self._set[i]
        return configured if s is None or _RANK[configured] >= _RANK[s] else s

    def set_by(self, i: int) -> str:
        """Who set the run-time state of backend i ("" for none)."""
        return self._set_by[i]

    def index(self, name: str) -> Optional[int]:
        """The index of the backend with this name, or None."""
        return self._by_name.get(name)

    def pick_weighted(self, h: int) -> int:
        """The eligible backend for a hash value by weight: ``h`` falls in
        one of the cumulative weight intervals. With equal weights this is
        ``eligible[h % len(eligible)]``, the seed's ``hash % N``."""
        return self._eligible[bisect.bisect_right(self._cum, h % self._cum[-1])]

    # -- changing --------------------------------------------------------

    def set_state(self, i: int, state: Optional[str], by: str = "") -> bool:
        """Set backend i's run-time state (None: back to the configured one).
        Returns whether its effective state changed; the core hears of it and
        applies the translation's drain policy."""
        if state is not None and state not in BACKEND_STATES:
            raise ValueError(f"state {state!r} is not one of {', '.join(BACKEND_STATES)}")
        before = self.state(i)
        self._set[i] = None if state == "active" else state
        self._set_by[i] = by if state not in (None, "active") else ""
        after = self.state(i)
        if after == before:
            return False
        self._refresh()
        if self.on_change is not None:
            self.on_change(self, i, before, after)
        return True

    def set_weight(self, i: int, weight: int) -> None:
        if not 0 <= weight <= 10000:
            raise ValueError(f"weight {weight} is not between 0 and 10000")
        self._weights[i] = weight
        self._weight_set[i] = weight != self._translation.backends[i].weight
        self._refresh()

    def _refresh(self) -> None:
        n = len(self._translation.backends)
        active = [i for i in range(n) if self._weights[i] > 0 and self.state(i) == "active"]
        if not active:   # terminating backends take new flows when nothing else can
            active = [i for i in range(n) if self._weights[i] > 0 and self.state(i) == "draining"]
        if self.locality:
            bs = self._translation.backends
            near = [i for i in active if all(bs[i].labels.get(k) == v for k, v in self.locality)]
            active = near or active
        self._eligible: tuple[int, ...] = tuple(active)
        self._eligible_set = frozenset(active)
        g = math.gcd(*(self._weights[i] for i in active)) if active else 1
        cum, total = [], 0     # in units of the weights' gcd: equal weights are hash % N
        for i in active:
            total += self._weights[i] // g
            cum.append(total)
        self._cum = cum or [1]
        self.version += 1

    # -- the core's bookkeeping ------------------------------------------

    def carry_from(self, old: "BackendSet") -> list[int]:
        """Take over figures and run-time states from a previous set of the
        same translation name (the last configuration's, or one kept while a
        removed translation's sessions end); returns, for each old index
        (backends, then gone ones), the new index. A gone backend that is
        back (same name and rewrite) takes its sessions and figures back."""
        mine = {(b.name, b.rewrite): j for j, b in enumerate(self._translation.backends)}
        mapping: list[int] = []
        entries = [(b.name, b.rewrite, old._sessions[i], old._new_flows[i], old.ended[i], i) for i, b in
                   enumerate(old._translation.backends)]
        entries += [(g.name, g.rewrite, g.sessions, g.new_flows, g.ended, None) for g in old.gone]
        for name, rewrite, sessions, new_flows, ended, i in entries:
            j = mine.get((name, rewrite))
            if j is not None:
                self._sessions[j] += sessions
                self._new_flows[j] += new_flows
                self.ended[j] = [a + b for a, b in zip(self.ended[j], ended)]
                if i is not None:
                    self._set[j], self._set_by[j] = old._set[i], old._set_by[i]
                    if old._weight_set[i]:
                        self._weights[j], self._weight_set[j] = old._weights[i], True
            else:
                j = self._keep_gone(name, rewrite, sessions, new_flows, ended)
            mapping.append(j)
        self.denied += old.denied
        self.flows += old.flows
        self._refresh()
        return mapping

    def _keep_gone(self, name: str, rewrite: str, sessions: int, new_flows: int, ended: list[int]) -> int:
        if sessions <= 0:
            return NO_BACKEND
        n = len(self._translation.backends)
        for k, g in enumerate(self.gone):   # gone twice: one entry
            if (g.name, g.rewrite) == (name, rewrite):
                g.sessions += sessions
                g.new_flows += new_flows
                g.ended = [a + b for a, b in zip(g.ended, ended)]
                return n + k
        self.gone.append(Gone(name, rewrite, sessions, new_flows, list(ended)))
        return n + len(self.gone) - 1

    def has_sessions(self) -> bool:
        return any(self._sessions) or any(g.sessions > 0 for g in self.gone)

    def ended_session(self, i: int, p0: int, p1: int, b0: int, b1: int) -> None:
        """A session of backend i ended, having carried this traffic."""
        n = len(self._translation.backends)
        e = self.ended[i] if i < n else self.gone[i - n].ended if i - n < len(self.gone) else None
        if e is not None:
            e[0] += p0
            e[1] += p1
            e[2] += b0
            e[3] += b1

    def took_flow(self, i: int) -> None:
        """A new flow's session was installed on backend i."""
        self._sessions[i] += 1
        self._new_flows[i] += 1
        self.flows += 1

    def recount(self, tally: Sequence[Sequence[int]]) -> None:
        """Active sessions per backend and gone backend, as the table has them."""
        n = len(self._translation.backends)
        for i in range(n):
            self._sessions[i] = tally[i][0]
        for g, gone in enumerate(self.gone):
            gone.sessions = tally[n + g][0]

    def count(self, i: int, delta: int) -> None:
        """A session of backend i was created (+1) or ended (-1)."""
        n = len(self._translation.backends)
        if i < n:
            self._sessions[i] += delta
        elif i - n < len(self.gone):
            self.gone[i - n].sessions += delta

    def describe(self, i: int, live: Sequence[int] = (0, 0, 0, 0)) -> dict:
        """The figures of backend i (or a gone one), for show and metrics;
        live: the traffic of its live sessions (read from C)."""
        n = len(self._translation.backends)
        if i < n:
            b = self._translation.backends[i]
            out = {"name": b.name, "to": b.rewrite, "weight": self._weights[i], "state": self.state(i),
                   "set_by": self._set_by[i], "labels": dict(b.labels),
                   "sessions": self._sessions[i], "new_flows": self._new_flows[i]}
            ended = self.ended[i]
        else:
            g = self.gone[i - n]
            out = {"name": g.name, "to": g.rewrite, "weight": 0, "state": "gone", "set_by": "", "labels": {},
                   "sessions": g.sessions, "new_flows": g.new_flows}
            ended = g.ended
        t = [a + b for a, b in zip(ended, live)]
        out["packets"] = {"to_backend": t[0], "from_backend": t[1]}
        out["bytes"] = {"to_backend": t[2], "from_backend": t[3]}
        return out

    def describe_translation(self, live: Optional[Sequence[Sequence[int]]] = None) -> dict:
        """The translation, its policies and its backends' figures (live:
        per index, the traffic of its live sessions)."""
        t = self._translation
        h = t.health
        return {
            "name": t.name, "id": None if self.removed else t.id, "removed": self.removed,
            "text": str(t), "proto": t.proto, "kind": t.kind, "address": str(t.address), "port": t.port,
            "selector": t.selector, "drain": str(t.drain), "affinity": t.affinity,
            "allow_from": [str(n) for n in t.allow_from], "denied": self.denied,
            "timeouts": None if t.timeouts is None else dataclasses.asdict(t.timeouts),
            "health": None if h is None else dataclasses.asdict(h),
            "new_flows": self.flows, "eligible": len(self._eligible),
            "backends": [self.describe(i, live[i] if live is not None else (0, 0, 0, 0))
                         for i in self.shown_indexes()],
        }

    def all_indexes(self) -> Sequence[int]:
        return range(len(self._translation.backends) + len(self.gone))

    def shown_indexes(self) -> list[int]:
        """The backends, and the gone ones whose sessions have not all ended
        (an ended one stays, without sessions, until the next reload drops it)."""
        n = len(self._translation.backends)
        return list(range(n)) + [n + k for k, g in enumerate(self.gone) if g.sessions > 0]

