"""Client-address affinity: ``affinity = { timeout = 10800 }`` on a translation.

Kubernetes' ``sessionAffinity: ClientIP`` (default 10800 s) and IPVS
persistence: new flows from one client address go to the backend its
first flow got, while the affinity entry lives, also after that flow's
own session ended. An entry lives ``timeout`` seconds from the last new
flow that used it, and is dropped when its backend can no longer take
new flows (down, draining with others active, weight 0, removed): the
client's next flow is placed afresh.

Memory is bounded: at most :data:`MAX_ENTRIES` entries over all
translations; past that the least recently used entry is evicted
(counted). Expired entries are reaped a few at a time as new ones come,
so no flow pays for a sweep. The figures are in ``show stats`` under
``plugins``.
"""

from __future__ import annotations

import collections

from appliance.hooks import hookimpl

MAX_ENTRIES = 1 << 18
REAP_PER_INSERT = 4


class Affinity:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        # (translation name, client address bytes) -> (backend name, expires)
        self.entries: collections.OrderedDict[tuple, tuple[str, float]] = collections.OrderedDict()
        self.hits = self.misses = self.evictions = self.expired = 0

    @hookimpl
    def appliance_select_backend(self, flow, translation, backends):
        if translation.affinity is None:
            return None
        key = (translation.name, flow.src_packed)
        got = self.entries.get(key)
        if got is None:
            self.misses += 1
            return None
        name, expires = got
        i = backends.index(name)
        if expires <= flow.time or i is None or i not in backends.eligible_set:
            del self.entries[key]
            self.expired += 1
            self.misses += 1
            return None
        self.hits += 1
        return i

    @hookimpl
    def appliance_backend_chosen(self, flow, translation, backends, index):
        timeout = translation.affinity
        if timeout is None:
            return
        key = (translation.name, flow.src_packed)
        entries = self.entries
        entries[key] = (translation.backends[index].name, flow.time + timeout)
        entries.move_to_end(key)
        now = flow.time
        for _ in range(REAP_PER_INSERT):
            oldest = next(iter(entries.values()))
            if oldest[1] > now:
                break
            entries.popitem(last=False)
            self.expired += 1
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1

    @hookimpl
    def appliance_statistics(self):
        return {"entries": len(self.entries), "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions, "expired": self.expired}


def plugin() -> Affinity:
    return Affinity()
