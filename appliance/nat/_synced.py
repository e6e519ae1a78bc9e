"""The core's side of session sync (docs/cluster.md, "Session sync"):
which sessions a peer cannot recompute, as wire records, and a peer's
records installed or refreshed here. Sans-IO: the runtime moves the bytes.
"""

from __future__ import annotations

from typing import Optional

from ..cluster._wire import Record
from ._binding import ffi, lib
from ._common import NO_BACKEND, _ns

#: selectors whose choice any instance with the configuration recomputes
STATELESS_SELECTORS = ("hash", "maglev")
KEY_SIZE = 40


class Synced:
    """Part of :class:`~appliance.nat.NatCore`."""

    #: (index, serial) of sessions created since the runtime last looked;
    #: None while sync is off (then nothing is collected)
    sync_outbox: Optional[list] = None

    def needs_sync(self, info) -> bool:
        """Can a peer with our configuration not rebuild this session from
        its packets? SNAT, a rewritten source or source port, a stateful
        selector or affinity."""
        if info.flags & lib.NAT_SF_BYPASS:
            return False
        if info.flags & lib.NAT_SF_SNAT:
            return True
        if not info.flags & lib.NAT_SF_TRANSLATED or info.translation >= len(self._sets):
            return False
        k0, k1 = info.key[0], info.key[1]
        alen = 4 if k0.family == 4 else 16
        if bytes(ffi.buffer(k1.dst, alen)) != bytes(ffi.buffer(k0.src, alen)) or k1.dport != k0.sport:
            return True
        t = self._sets[info.translation].translation
        return t.selector not in STATELESS_SELECTORS or t.affinity is not None

    @staticmethod
    def _record(info, now_ns: int) -> Record:
        return Record(bytes(ffi.buffer(ffi.addressof(info.key[0]), KEY_SIZE)),
                      bytes(ffi.buffer(ffi.addressof(info.key[1]), KEY_SIZE)),
                      info.translation, info.backend, info.flags, info.state,
                      max(0, (now_ns - info.last_seen_ns) // 1_000_000),
                      max(0, (info.expires_ns - now_ns) // 1_000_000))

    def sync_records(self, entries, now: float, since: float = 0.0) -> tuple[list, list]:
        """Records of the sessions ``entries`` ((index, serial)) that are
        still alive, need sync and were seen after ``since``; and the
        entries still alive that need sync."""
        now_ns, since_ns = _ns(now), _ns(since)
        info = ffi.new("struct nat_session_info *")
        records, alive = [], []
        for index, serial in entries:
            if lib.nat_session_peek(self._nat, index, serial, info) != 0 or info.expires_ns <= now_ns:
                continue
            if not self.needs_sync(info):
                continue
            alive.append((index, serial))
            if info.last_seen_ns > since_ns:
                records.append(self._record(info, now_ns))
        return records, alive

    def dump_records(self, now: float) -> list:
        """Every session that needs sync, for a peer that joins."""
        now_ns = _ns(now)
        info = ffi.new("struct nat_session_info *")
        out = []
        i = lib.nat_session_next(self._nat, 0)
        while i != lib.NAT_NONE:
            if lib.nat_session_get(self._nat, i, info) == 0 and info.expires_ns > now_ns and self.needs_sync(info):
                out.append(self._record(info, now_ns))
            i = lib.nat_session_next(self._nat, i + 1)
        return out

    def install_synced(self, records, now: float) -> dict:
        """A peer's records: sessions we lack are installed, ours refreshed.
        Returns counts: installed, refreshed, unchanged, refused (a key taken
        by another session, the table full, or a translation we lack)."""
        counts = dict.fromkeys(("installed", "refreshed", "unchanged", "refused"), 0)
        now_ns = _ns(now)
        rec, out = ffi.new("struct nat_session_info *"), ffi.new("uint32_t *")
        for r in records:
            ffi.memmove(ffi.addressof(rec.key[0]), r.key0, KEY_SIZE)
            ffi.memmove(ffi.addressof(rec.key[1]), r.key1, KEY_SIZE)
            if rec.key[0].family not in (4, 6) or rec.key[0].family != rec.key[1].family:
                counts["refused"] += 1
                continue
            bs = None
            if r.translation != lib.NAT_NONE:
                if r.translation >= len(self._sets) or self._sets[r.translation].removed:
                    counts["refused"] += 1
                    continue
                bs = self._sets[r.translation]
            if bs is not None and r.backend != NO_BACKEND and r.backend >= len(bs.translation.backends):
                counts["refused"] += 1     # a backend we do not have: the configurations differ after all
                continue
            rec.translation, rec.backend = r.translation, r.backend
            rec.flags, rec.state = r.flags & ~lib.NAT_SF_DEAD & ~lib.NAT_SF_RESET, r.state
            rec.last_seen_ns = rec.created_ns = max(0, now_ns - r.age_ms * 1_000_000)
            rec.profile = 0 if bs is None or bs.translation.timeouts is None else self._profile(bs.translation.timeouts)
            rc = lib.nat_session_refresh(self._nat, rec, now_ns)
            if rc == 0:
                counts["refreshed"] += 1
                continue
            if rc == 1:
                counts["unchanged"] += 1
                continue
            if lib.nat_session_restore(self._nat, rec, out) != 0:
                counts["refused"] += 1
                continue
            counts["installed"] += 1
            self._restored(rec, out[0], bs)
        return counts
