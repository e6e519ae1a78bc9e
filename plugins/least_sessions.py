"""Load-aware backend selection: ``selector = "least-sessions"``.

A new flow goes to the eligible backend with the fewest active sessions
per unit of weight (IPVS's weighted least-connection), from the live
per-backend counts the core keeps from session created / ended events:
nothing is counted per packet. Up to 16 eligible backends every one is
compared; beyond that, two are drawn from the flow hash and the less
loaded wins (the power of two choices, Mitzenmacher 2001), which keeps
the choice O(1) and, unlike an exact minimum, does not send every new
flow of a burst to the one backend that just became least loaded.
Ties go to the backend the flow hash points at, so the choice is the same
for the same flow and counts (replays are reproducible).
"""

from __future__ import annotations

from appliance.hooks import hookimpl

EXACT_UP_TO = 16


def select(flow, backends):
    elig = backends.eligible
    sessions, weights = backends.sessions, backends.weights
    n = len(elig)
    h = flow.hash
    if n <= EXACT_UP_TO:
        start = h % n
        best, best_load = -1, 0.0
        for k in range(n):
            i = elig[(start + k) % n]
            load = sessions[i] / weights[i]
            if best < 0 or load < best_load:
                best, best_load = i, load
        return best
    j = h % n
    a, b = elig[j], elig[(j + 1 + (h // n) % (n - 1)) % n]   # two different draws
    return a if sessions[a] * weights[b] <= sessions[b] * weights[a] else b


class LeastSessions:
    @hookimpl
    def appliance_selectors(self):
        return {"least-sessions": select}


def plugin() -> LeastSessions:
    return LeastSessions()
