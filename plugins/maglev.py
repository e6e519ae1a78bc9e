"""Maglev backend selection (Eisenbud et al., NSDI 2016), as a plugin.

Load it with ``[plugins] modules = ["appliance_plugins.maglev"]``. Each
translation gets a lookup table of M = 65537 entries (prime; Katran's and
Envoy's size: with up to ~650 backends the imbalance stays under 1 %),
filled from per-backend (offset, skip) permutations. A new flow takes
``table[flow.hash % M]``. When a backend is added or removed, only about 1/N
of the flows change backend, where the built-in ``hash % N`` moves almost
all of them; established flows keep their backend anyway (sessions).

Tables are built when a configuration is loaded (about 50 ms per
translation in Python), never per flow. Backends are identified by their
text (``"->20.0.0.1 8080"``), so appliances with the same configuration and
``flow_hash_seed`` build identical tables and agree on every flow.
"""

from __future__ import annotations

import hashlib

from appliance.hooks import hookimpl

M = 65537


def _h(text: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, key=salt).digest(), "big")


def build_table(names: list[str], m: int = M) -> list[int]:
    """The Maglev lookup table: entry -> index into names."""
    n = len(names)
    offsets = [_h(name, b"offset") % m for name in names]
    skips = [_h(name, b"skip") % (m - 1) + 1 for name in names]
    nexts = [0] * n
    table = [-1] * m
    filled = 0
    while True:
        for i in range(n):
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
        self.tables: dict[int, list[int]] = {}

    @hookimpl
    def appliance_configure(self, config):
        tables = {}
        cache: dict[tuple, list[int]] = {}
        for t in config.translations:
            if not t.backends:
                continue
            names = tuple(str(b) for b in t.backends)
            if names not in cache:
                cache[names] = build_table(list(names))
            tables[t.id] = cache[names]
        self.tables = tables

    @hookimpl
    def appliance_select_backend(self, flow, translation):
        table = self.tables.get(translation.id)
        if table is None:
            return None   # not built (yet): the built-in decides
        return table[flow.hash % M]


_plugin = Maglev()
appliance_configure = _plugin.appliance_configure
appliance_select_backend = _plugin.appliance_select_backend
