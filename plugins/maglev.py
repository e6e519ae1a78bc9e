"""Weighted Maglev backend selection (Eisenbud et al., NSDI 2016).

``selector = "maglev"`` on a translation. Its lookup table of M = 65537
entries (prime; Katran's and Envoy's size: with up to ~650 backends the
imbalance stays under 1 %) is filled from per-backend (offset, skip)
permutations over the eligible backends; a new flow takes
``table[flow.hash % M]``. When a backend is added, removed, set down or
re-weighted, only about the share of flows that must move does (1/N for
one of N), where ``hash % N`` moves almost all of them; established flows
keep their backend anyway (sessions).

Weights (Katran's way): in each round of the fill, a backend takes a turn
with probability weight / max weight, decided by its own deterministic
counter, so a backend of weight 3 fills three times the entries of one of
weight 1 and a change of one weight leaves the others' entries in place
as far as it can.

Tables are built in Python (about 60 ms each) when a translation's
eligible backends or weights change (after a reload, a health check),
never per flow, and cached by (names, weights). Backends are identified by
name, so appliances with the same configuration and ``flow_hash_seed``
build identical tables and agree on every flow.

Listing ``appliance_plugins.maglev`` in ``[plugins] modules`` (the form of
earlier versions) still works: then Maglev also picks for translations
that keep the default ``hash`` selector.
"""

from __future__ import annotations

import hashlib
import math

from appliance.hooks import hookimpl

M = 65537


def _h(text: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, key=salt).digest(), "big")


def build_table(names: list[str], weights: list[int] | None = None, m: int = M) -> list[int]:
    """The Maglev lookup table: entry -> index into names."""
    n = len(names)
    weights = weights or [1] * n
    g = math.gcd(*weights)
    weights = [w // g for w in weights]     # 2:2 fills like 1:1, in one round instead of two
    top = max(weights)
    offsets = [_h(name, b"offset") % m for name in names]
    skips = [_h(name, b"skip") % (m - 1) + 1 for name in names]
    nexts = [0] * n
    credit = [0] * n
    table = [-1] * m
    filled = 0
    while True:
        for i in range(n):
            credit[i] += weights[i]
            if credit[i] < top:
                continue
            credit[i] -= top
            c = (offsets[i] + nexts[i] * skips[i]) % m
            while table[c] >= 0:
                nexts[i] += 1
                c = (offsets[i] + nexts[i] * skips[i]) % m
            table[c] = i
            nexts[i] += 1
            filled += 1
            if filled == m:
                return table


class Maglev:
    def __init__(self) -> None:
        self._cache: dict[tuple, list[int]] = {}

    def table(self, backends) -> list[int]:
        """Entry -> backend index, for the set's current eligible backends."""
        got = backends.cache.get("maglev")     # (version, table), kept with the set
        if got is not None and got[0] == backends.version:
            return got[1]
        elig = backends.eligible
        names = tuple(backends.translation.backends[i].name for i in elig)
        all_weights = backends.weights
        weights = tuple(all_weights[i] for i in elig)
        local = self._cache.get((names, weights))
        if local is None:
            local = build_table(list(names), list(weights))
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[(names, weights)] = local
        table = [elig[j] for j in local]
        backends.cache["maglev"] = (backends.version, table)
        return table

    def select(self, flow, backends):
        return self.table(backends)[flow.hash % M]

    @hookimpl
    def appliance_configure(self, config, backends):
        for b in backends.values():   # built now rather than on the first flow
            if b.translation.selector == "maglev" and b.eligible:
                self.table(b)

    @hookimpl
    def appliance_selectors(self):
        return {"maglev": self.select}


def plugin() -> Maglev:
    return Maglev()


# The module form: Maglev for every translation with the default selector.
_legacy = Maglev()


@hookimpl
def appliance_select_backend(flow, translation, backends):
    if translation.selector != "hash":
        return None
    return _legacy.select(flow, backends)
