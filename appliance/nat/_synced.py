"""The core's side of session sync (docs/cluster.md, "Session sync"):
which sessions a peer cannot recompute, as wire records built in C, and a
peer's records installed or refreshed here. Sans-IO: the runtime moves the
bytes.
"""

from __future__ import annotations

from typing import Optional

from ._binding import ffi, lib
from ._common import NO_BACKEND, _ns
from ._failover import recomputable

KEY_SIZE = 40
RECORD = lib.NAT_SYNC_RECORD
#: new sessions held between two sends (50 ms): 1.3 M/s, far above the
#: slow path's rate
OUTBOX = 65536
DUMP_CHUNK = 4096


class _Pairs:
    """(index, serial) of sessions, in two C arrays grown by doubling."""

    def __init__(self, capacity: int = 1024) -> None:
        self.n, self.capacity = 0, capacity
        self.index, self.serial = ffi.new("uint32_t[]", capacity), ffi.new("uint32_t[]", capacity)

    def extend(self, index, serial, n: int) -> None:
        if self.n + n > self.capacity:
            while self.n + n > self.capacity:
                self.capacity *= 2
            grown = _Pairs(self.capacity)
            grown.extend(self.index, self.serial, self.n)
            self.index, self.serial = grown.index, grown.serial
        ffi.memmove(self.index + self.n, index, 4 * n)
        ffi.memmove(self.serial + self.n, serial, 4 * n)
        self.n += n


class Synced:
    """Part of :class:`~appliance.nat.NatCore`. The records are built in C
    (nat_sync.c), so the sender spends no Python per session."""

    #: the sessions we keep our peers told of; None while sync is off
    _sync_set: Optional[_Pairs] = None
    _sync_taken: Optional[_Pairs] = None

    def sync_start(self, capacity: int = OUTBOX) -> None:
        """Collect new sessions from now on, up to ``capacity`` between two
        :meth:`sync_new` (more are counted ``sync_outbox_full``)."""
        if lib.nat_sync_collect(self._nat, capacity) != 0:
            raise MemoryError("session sync's outbox")
        self._sync_set, self._sync_taken = _Pairs(), _Pairs(capacity)

    @property
    def synced_sessions(self) -> int:
        return 0 if self._sync_set is None else self._sync_set.n

    def _stateful(self):
        """Per translation id: 1 when its sessions need sync whatever their
        rewrite (a choice not recomputable, or a backend another
        translation shares: failover cannot tell whose a reply is)."""
        shared = self._failover.shared
        return ffi.from_buffer("uint8_t[]", bytes(
            not recomputable(t) or t.id in shared for t in (bs.translation for bs in self._sets)) or b"\0")

    def _records(self, pairs: _Pairs, now: float, since: float) -> tuple[bytes, int]:
        out, kept = ffi.new("uint8_t[]", max(1, pairs.n) * RECORD), ffi.new("uint32_t *")
        n = lib.nat_sync_records(self._nat, pairs.index, pairs.serial, pairs.n, self._stateful(), len(self._sets),
                                 _ns(now), _ns(since), out, kept)
        pairs.n = kept[0]
        return ffi.buffer(out, n * RECORD)[:], n

    def sync_new(self, now: float) -> tuple[bytes, int]:
        """The records (``_wire.RECORD`` each, and how many) of the sessions
        created since the last call that still live and need sync; those
        join the synced set that :meth:`sync_refresh` goes over."""
        taken = self._sync_taken
        taken.n = lib.nat_sync_take(self._nat, taken.index, taken.serial, taken.capacity)
        blob, n = self._records(taken, now, 0.0)
        self._sync_set.extend(taken.index, taken.serial, taken.n)
        return blob, n

    def sync_refresh(self, now: float, since: float) -> tuple[bytes, int]:
        """Records of the synced sessions seen after ``since``; the ones
        that ended leave the set."""
        return self._records(self._sync_set, now, since)

    def dump_records(self, now: float) -> tuple[bytes, int]:
        """Every session that needs sync, for a peer that joins."""
        cursor, parts, total = ffi.new("uint32_t *", 0), [], 0
        out = ffi.new("uint8_t[]", DUMP_CHUNK * RECORD)
        stateful = self._stateful()
        while cursor[0] != lib.NAT_NONE:
            n = lib.nat_sync_dump(self._nat, cursor, stateful, len(self._sets), _ns(now), out, DUMP_CHUNK)
            parts.append(ffi.buffer(out, n * RECORD)[:])
            total += n
        return b"".join(parts), total

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
