"""What the NAT core tells: sessions (one, all, by tuple), translations
with their backends' figures, statistics, and the session state saved
across a restart. A part of :class:`NatCore`."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Iterator, Optional

from ..__about__ import __version__
from .._backends import BackendSet, Gone
from .._types import PROTO_NAMES, SessionInfo, Timeouts, Translation
from ._binding import COUNTER_HELP, COUNTER_NAMES, ffi, lib
from ._common import NO_BACKEND, _ns, _ntohs, _u8
from ._statistics import Statistics

SESSIONS_FORMAT = 2   # export_sessions(); bump when its layout changes (2: bytes each way)


def _identity(t: Translation) -> str:
    """What a translation is, whatever its id: a saved session follows it."""
    return f"{t.proto} {t.kind} {t.address} {t.port}"


def _from_identity(text: str) -> tuple:
    """(kind, address, port, proto) from :func:`_identity`'s text;
    ValueError if it is none."""
    try:
        proto, kind, address, port = text.split()
        if proto not in PROTO_NAMES.values() or kind not in ("vip", "real"):
            raise ValueError
        return kind, ipaddress.ip_address(address), int(port), proto
    except (ValueError, AttributeError):
        raise ValueError(f"a translation it names is none: {text!r}") from None


_STATE_NAMES = {
    lib.NAT_ST_OTHER: "active",
    lib.NAT_ST_TCP_NEW: "new",
    lib.NAT_ST_TCP_SYN_SENT: "syn-sent",
    lib.NAT_ST_TCP_SYN_RCVD: "syn-rcvd",
    lib.NAT_ST_TCP_MIDSTREAM: "midstream",
    lib.NAT_ST_TCP_ESTABLISHED: "established",
    lib.NAT_ST_TCP_FIN_FWD: "fin-initiator",
    lib.NAT_ST_TCP_FIN_REV: "fin-responder",
    lib.NAT_ST_TCP_CLOSING: "closing",
}


class Introspection:
    """Sessions, figures and saved state (see :class:`NatCore`)."""

    def export_sessions(self) -> bytes:
        """Every session, for :meth:`import_sessions` in a later run of the
        same build: a JSON header line (what the translation ids and timeout
        profiles meant), then the sessions as ``struct nat_session_info``."""
        nat, none = self._nat, lib.NAT_NONE
        n = lib.nat_session_count(nat)
        recs = ffi.new("struct nat_session_info[]", max(1, n))
        k = 0
        i = lib.nat_session_next(nat, 0)
        while i != none and k < n:
            if lib.nat_session_get(nat, i, recs + k) == 0:
                k += 1
            i = lib.nat_session_next(nat, i + 1)
        size = ffi.sizeof("struct nat_session_info")
        header = {"format": SESSIONS_FORMAT, "version": __version__, "record": size, "count": k,
                  # the removed translations whose sessions remain too: restored, they remain so
                  "translations": {str(bs.translation.id): _identity(bs.translation) for bs in self._sets},
                  "names": {str(bs.translation.id): bs.translation.name for bs in self._sets},
                  "backends": {str(bs.translation.id): [[d["name"], d["to"]] for d in map(bs.describe, bs.all_indexes())]
                               for bs in self._sets},
                  "profiles": {str(v): dataclasses.astuple(t) for t, v in self._profiles.items()}}
        return json.dumps(header).encode() + b"\n" + bytes(ffi.buffer(recs, k * size))

    def import_sessions(self, data: bytes, now: float) -> tuple[int, int, int]:
        """Put back what :meth:`export_sessions` saved, as far as it still
        holds: sessions that expired meanwhile are skipped, translation ids
        and timeout profiles are matched to the current configuration (a
        session whose translation is gone keeps its rewrite under a removed
        one, as after a reload: its drain policy, the default, removes the
        connectionless ones, and a `real` one's port stays the appliance's
        while its sessions remain). Plugins hear of each restored
        session as created. Returns (restored, expired, refused: key taken
        or table full). ValueError if ``data`` is not such a state."""
        line, _, blob = data.partition(b"\n")
        try:
            h = json.loads(line)
        except ValueError:
            raise ValueError("not a session state (no header)") from None
        size = ffi.sizeof("struct nat_session_info")
        if not isinstance(h, dict) or h.get("format") != SESSIONS_FORMAT or h.get("record") != size:
            raise ValueError("not a session state of this format")
        if h.get("version") != __version__:
            raise ValueError(f"saved by version {h.get('version')}, this is {__version__}")
        if len(blob) != h["count"] * size:
            raise ValueError(f"truncated: {len(blob)} bytes for {h['count']} sessions")
        current = {_identity(t): t.id for t in self.config.translations}
        tmap = {int(k): current.get(v, lib.NAT_NONE) for k, v in h["translations"].items()}
        # what this configuration lacks, read before anything changes (a bad
        # header restores nothing): made a removed set at its first session
        lacking = {k: (_from_identity(h["translations"][str(k)]), h.get("names", {}).get(str(k), ""))
                   for k, tid in tmap.items() if tid == lib.NAT_NONE}
        removed: dict[int, int] = {}   # saved id -> the id of the removed set made for it here
        pmap = {int(k): 0 if int(k) == 0 else self._profile(Timeouts(*v)) for k, v in h["profiles"].items()}
        saved = ffi.from_buffer("struct nat_session_info[]", blob)
        # a scratch record of its own: session() below reuses self._info
        rec, out, now_ns = ffi.new("struct nat_session_info *"), ffi.new("uint32_t *"), _ns(now)
        restored = expired = refused = 0
        for i in range(h["count"]):
            ffi.memmove(rec, saved + i, size)
            if rec.expires_ns <= now_ns:
                expired += 1
                continue
            bs = None
            if rec.translation != lib.NAT_NONE:
                old_tid = rec.translation
                if old_tid not in tmap:    # a translation the header does not name
                    refused += 1
                    continue
                if old_tid in lacking and old_tid not in removed:
                    removed[old_tid] = self._removed_set(*lacking[old_tid])
                rec.translation = removed[old_tid] if old_tid in lacking else tmap[old_tid]
                bs = self._sets[rec.translation]
                rec.backend = self._restored_backend(bs, h.get("backends", {}).get(str(old_tid), []), rec.backend)
            rec.profile = pmap.get(rec.profile, 0)
            if lib.nat_session_restore(self._nat, rec, out) != 0:
                refused += 1
                continue
            restored += 1
            self._restored(rec, out[0], bs)
        for bs in self._sets:   # backends removed meanwhile: their drain policy
            for j in range(len(bs.translation.backends), len(bs.translation.backends) + len(bs.gone)):
                self._schedule_drain(bs, j)
        self._stale_from = 0
        return restored, expired, refused

    def _removed_set(self, identity: tuple, name: str) -> int:
        """A removed translation's set for restored sessions whose
        translation this configuration lacks (as a reload keeps one): the
        saved identity, its name, no backends; returns its id."""
        kind, address, port, proto = identity
        t = Translation(len(self._sets), kind, address, port, proto, (), name)
        bs = BackendSet(t, self.config.locality)
        bs.removed = True
        self._sets.append(bs)
        return t.id

    def _restored(self, rec, index: int, bs) -> None:
        """What a session put back from outside the datapath (a state file,
        a sync peer) needs: its backend's count, the steering of a host
        source's port, the plugins told."""
        if bs is not None and rec.backend != NO_BACKEND:
            bs.count(rec.backend, 1)
        k1 = rec.key[1]
        if self.host_sources and self.on_host_source is not None and \
                bytes(ffi.buffer(k1.dst, 4 if k1.family == 4 else 16)) in self.host_sources:
            s = self.session(index)
            self.on_host_source(True, s.new_src, k1.proto, s.new_sport)
        if self.plugins.wants_created:
            self.plugins.notify("appliance_session_created", session=self.session(index))

    @staticmethod
    def _restored_backend(bs, saved: list, index: int) -> int:
        """The current index of a restored session's backend, matched by
        name and rewrite; one that is gone is kept as such while its
        sessions remain."""
        if not 0 <= index < len(saved):
            return NO_BACKEND
        name, rewrite = saved[index]
        for j, b in enumerate(bs.translation.backends):
            if b.name == name and b.rewrite == rewrite:
                return j
        n = len(bs.translation.backends)
        for k, g in enumerate(bs.gone):
            if g.name == name and g.rewrite == rewrite:
                return n + k
        bs.gone.append(Gone(name, rewrite, 0, 0))
        return n + len(bs.gone) - 1

    def describe_translations(self) -> dict:
        """Each translation (and each removed one whose sessions remain) with
        its policies and, per backend, state, weight, sessions, new flows,
        and packets and bytes each way: what ``show translations`` prints.
        The live sessions' traffic is summed in C, once per call."""
        out = []
        for s, tally in zip(self._sets, self._tally()):
            if not s.removed or s.has_sessions():
                out.append(s.describe_translation([t[1:] for t in tally]))
        return {"translations": out}

    def _tally(self) -> list[list[tuple[int, ...]]]:
        """Per set, per backend index (gone ones too): its live sessions'
        (sessions, packets to, from, bytes to, from), in one C pass."""
        boff = [0]
        for s in self._sets:
            boff.append(boff[-1] + len(s.translation.backends) + len(s.gone))
        out = ffi.new("uint64_t[]", 5 * max(1, boff[-1]))
        lib.nat_backend_tally(self._nat, out, ffi.new("uint32_t[]", boff), len(self._sets))
        return [[tuple(out[5 * b + j] for j in range(5)) for b in range(boff[k], boff[k + 1])]
                for k in range(len(self._sets))]

    def new_flows(self, translation_id: int) -> int:
        """New flows the translation with this id has taken since the start."""
        s = self.backend_set(translation_id)
        return 0 if s is None else s.flows

    def session(self, index: int) -> Optional[SessionInfo]:
        if lib.nat_session_get(self._nat, index, self._info) != 0:
            return None
        return self._session_info(self._info)

    def next_session_index(self, index: int) -> Optional[int]:
        """The first session index at or after ``index`` in use, or None."""
        i = lib.nat_session_next(self._nat, index)
        return None if i == lib.NAT_NONE else i

    def sessions(self) -> Iterator[SessionInfo]:
        i = lib.nat_session_next(self._nat, 0)
        while i != lib.NAT_NONE:
            s = self.session(i)
            if s is not None:
                yield s
            i = lib.nat_session_next(self._nat, i + 1)

    @staticmethod
    def _key(family: int, proto: int, src: str, sport: int, dst: str, dport: int):
        k = ffi.new("struct nat_key *")
        a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        ffi.memmove(k.src, a, len(a))
        ffi.memmove(k.dst, b, len(b))
        k.sport, k.dport, k.proto, k.family = _ntohs(sport), _ntohs(dport), proto, family
        return k

    def translation_for(self, family: int, proto: int, address: str, port: int) -> Optional[Translation]:
        """The translation the classifier matches for (address, proto, port),
        as the fast path sees it (ICMP: port ignored)."""
        a = ipaddress.ip_address(address).packed
        port_be = 0 if proto in (1, 58) else _ntohs(port)
        tid = lib.nat_translation_lookup(self._nat, family, _u8(a), proto, port_be)
        return None if tid == lib.NAT_NONE else self._sets[tid].translation

    def flow_hash(self, family: int, proto: int, src: str, sport: int, dst: str, dport: int) -> int:
        """The keyed flow hash (flow_hash_seed) the selectors see as flow.hash.
        For ICMP echo requests sport is the identifier and dport 0."""
        return lib.nat_flow_hash(self._nat, self._key(family, proto, src, sport, dst, dport))

    def find_session(self, family: int, proto: int, src: str, sport: int, dst: str, dport: int,
                     now: float) -> Optional[SessionInfo]:
        """The session a packet with this tuple would use (either direction)."""
        k = self._key(family, proto, src, sport, dst, dport)
        i = lib.nat_session_find(self._nat, k, _ns(now))
        return None if i == lib.NAT_NONE else self.session(i)

    def _session_info(self, s) -> SessionInfo:
        fam = s.key[0].family
        alen = 4 if fam == 4 else 16

        def ip(b):
            return ipaddress.ip_address(bytes(ffi.buffer(b, alen)))

        k0, k1 = s.key[0], s.key[1]
        fl = s.flags
        if fl & lib.NAT_SF_BYPASS:
            kind = "bypass"
        else:
            kind = "+".join(n for bit, n in ((lib.NAT_SF_TRANSLATED, "translation"),
                                             (lib.NAT_SF_SNAT, "snat")) if fl & bit)
        tname = bname = ""
        if s.translation < len(self._sets):
            bs = self._sets[s.translation]
            tname = bs.translation.name
            if s.backend != NO_BACKEND and s.backend in bs.all_indexes():
                bname = bs.describe(s.backend)["name"]
        return SessionInfo(
            index=s.index,
            proto=PROTO_NAMES.get(k0.proto, str(k0.proto)),
            src=ip(k0.src), sport=_ntohs(k0.sport), dst=ip(k0.dst), dport=_ntohs(k0.dport),
            new_src=ip(k1.dst), new_sport=_ntohs(k1.dport), new_dst=ip(k1.src),
            new_dport=_ntohs(k1.sport),
            translation=None if s.translation == lib.NAT_NONE else s.translation,
            backend=None if s.backend == NO_BACKEND else s.backend,
            state=_STATE_NAMES.get(s.state, str(s.state)), kind=kind,
            created=s.created_ns / 1e9, last_seen=s.last_seen_ns / 1e9, expires=s.expires_ns / 1e9,
            packets=(s.packets[0], s.packets[1]),
            reason=("timeout", "removed", "evicted")[s.reason] if s.reason < 3 else "",
            translation_name=tname, backend_name=bname,
        )

    def counters(self) -> dict[str, int]:
        """The C counters alone (statistics() also reads the whole table
        for per-backend traffic)."""
        c = ffi.new("uint64_t[]", len(COUNTER_NAMES))
        lib.nat_counters_sum(self._nat, c)   # the writer's and every lane's
        return {name: c[i] for i, name in enumerate(COUNTER_NAMES)}

    def capacity(self) -> int:
        return lib.nat_session_capacity(self._nat)

    def statistics(self) -> Statistics:
        return Statistics(counters=self.counters(), sessions=lib.nat_session_count(self._nat),
                          capacity=lib.nat_session_capacity(self._nat),
                          new_flows_per_translation={s.translation.name: s.flows for s in self._sets
                                                     if not s.removed},
                          translations=tuple(self.describe_translations()["translations"]),
                          plugin_figures=self.plugins.figures(),
                          plugin_errors=dict(self.plugins.errors),
                          plugin_overruns=dict(self.plugins.overruns),
                          plugins_disabled=dict(self.plugins.disabled),
                          plugin_overruns_preempted=dict(self.plugins.preempted),
                          sessions_tentative=lib.nat_sessions_tentative(self._nat),
                          pressure_threshold=lib.nat_pressure_threshold(self._nat),
                          sessions_created=self.sessions_created,
                          sessions_expired=self.sessions_expired,
                          hairpin_flows=self.hairpin_flows)

    @staticmethod
    def counter_help() -> dict[str, str]:
        return dict(zip(COUNTER_NAMES, COUNTER_HELP))

    def memory_bytes(self) -> int:
        return lib.nat_memory_bytes(self._nat)
