"""The NAT core: the C fast path plus the Python slow path. Sans-IO.

Nothing here reads a clock, opens a socket or imports trio: ``now`` is a
parameter (seconds, float), frames come in as batches, verdicts go out in
the same batch, and timers are :meth:`NatCore.next_deadline` /
:meth:`NatCore.expire`. The runtime (live AF_XDP, ``appliance replay``, the
tests) drives it.

Per batch the C fast path handles every frame of an established flow. Frames
that start a flow come back as misses; for each, the slow path here asks the
hooks (backend, SNAT, timeouts), allocates a source port when the source
changes or the return 5-tuple is taken, installs the session in C and hands
the frame back to C, which rewrites it like any other.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
from typing import Iterator, Optional, Sequence

from .. import hooks
from ..__about__ import __version__
from .._backends import NO_INDEX, BackendSet
from .._config import Config
from ._binding import COUNTER_HELP, COUNTER_INDEX, COUNTER_NAMES, ffi, lib
from .._types import (
    Backend,
    Flow,
    SessionInfo,
    Timeouts,
    Translation,
    proto_number,
)

log = logging.getLogger("appliance.nat")

# Verdicts, mirrored from nat.h (tests/test_lockstep.py checks them).
FORWARD = lib.NAT_FORWARD
PASS = lib.NAT_PASS
DROP = lib.NAT_DROP
MISS = lib.NAT_MISS

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

NO_BACKEND = 0xFFFF
SESSIONS_FORMAT = 1   # export_sessions(); bump when its layout changes


def _identity(t: Translation) -> str:
    """What a translation is, whatever its id: a saved session follows it."""
    return f"{t.proto} {t.kind} {t.address} {t.port}"

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


def _ns(now: float) -> int:
    return int(round(now * 1_000_000_000))


def _u8(data: bytes):
    """bytes -> const uint8_t * for the C calls."""
    return ffi.from_buffer("uint8_t[]", data)


def _ntohs(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


class _Drain:
    """Sessions of one backend that its translation's drain policy removes:
    ``what`` is "all" or "connectionless" (UDP, ICMP), ``due`` when (None:
    ``deadline`` seconds from the next tick)."""

    __slots__ = ("what", "due", "deadline", "swept")

    def __init__(self, what: str, due: Optional[float], deadline: float) -> None:
        self.what, self.due, self.deadline, self.swept = what, due, deadline, due is not None


def _allowed(prefixes, src: bytes) -> bool:
    """Is the packed source address in one of the prefixes (of its family)?"""
    a = int.from_bytes(src, "big")
    for net in prefixes:
        if a & int(net.netmask) == int(net.network_address):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class Statistics:
    """A snapshot of the core's counters (see nat_counters.def)."""

    counters: dict[str, int]
    sessions: int
    capacity: int
    new_flows_per_translation: dict[str, int]   # by translation name
    plugin_errors: dict[str, int]
    sessions_created: int
    sessions_expired: int
    hairpin_flows: int = 0
    translations: tuple = ()        # describe_translations()["translations"]
    plugin_figures: Optional[dict] = None

    def as_dict(self) -> dict:
        return {
            "counters": self.counters,
            "sessions": self.sessions,
            "capacity": self.capacity,
            "sessions_created": self.sessions_created,
            "sessions_expired": self.sessions_expired,
            "hairpin_flows": self.hairpin_flows,
            "new_flows_per_translation": {str(k): v for k, v in self.new_flows_per_translation.items()},
            "plugin_errors": self.plugin_errors,
            "translations": list(self.translations),
            "plugins": self.plugin_figures or {},
        }


class Batch:
    """A batch of frames for :meth:`NatCore.process` (owned C memory).

    The live datapath fills ``frames`` from its rings in C; replay and tests
    use :meth:`load` to copy Python bytes in and :meth:`data` to read back.
    """

    def __init__(self, capacity: int = 256, frame_size: int = 2048) -> None:
        self.capacity = capacity
        self.frame_size = frame_size
        self.frames = ffi.new("struct nat_frame[]", capacity)
        self.buf = ffi.new("uint8_t[]", capacity * frame_size)
        self.n = 0

    def load(self, items: Sequence[tuple[bytes, int, float]]) -> None:
        """items: (frame bytes, ingress port id, timestamp seconds)."""
        assert len(items) <= self.capacity
        for i, (data, port, ts) in enumerate(items):
            size = min(len(data), self.frame_size)
            off = i * self.frame_size
            ffi.memmove(self.buf + off, data[:size], size)
            f = self.frames[i]
            f.data = self.buf + off
            f.len = size
            f.port = port
            f.ts_ns = _ns(ts)
        self.n = len(items)

    def data(self, i: int) -> bytes:
        f = self.frames[i]
        return bytes(ffi.buffer(f.data, f.len))


class NatCore:
    """Translations, sessions and SNAT over the C fast path.

    :param config: the parsed configuration.
    :param plugins: the loaded :class:`~appliance._plugins.Plugins` it asks
        (the runtime, replay, explain, bench and the test kit build it).
    :param table_seed: seed of the session table's hash (random by default,
        so nobody can aim flows at one hash chain).
    """

    def __init__(self, config: Config, plugins: "Plugins",
                 table_seed: Optional[int] = None) -> None:
        if table_seed is None:
            table_seed = int.from_bytes(os.urandom(8), "little")
        self._nat = ffi.gc(lib.nat_create(config.max_sessions, table_seed), lib.nat_destroy)
        if self._nat == ffi.NULL:
            raise MemoryError(f"cannot allocate a session table of {config.max_sessions} sessions")
        self.plugins = plugins
        self._ports: dict[str, int] = {}
        self._port_names: list[str] = []
        self._profiles: dict[Timeouts, int] = {}
        self.sessions_created = 0
        self.sessions_expired = 0
        self._events = ffi.new("struct nat_session_info[]", 1024)
        # Sessions whose new source is one of these addresses (packed bytes)
        # are reported to on_host_source(added, address, proto, port): the
        # live runtime steers their replies to itself (XDP `ports` map).
        self.host_sources: frozenset[bytes] = frozenset()
        self.on_host_source = None
        # Hairpin: per interface name, (family, network int, mask int,
        # packed address of that interface) for each of its on-link
        # prefixes; set by the live runtime from the kernel's tables.
        self.links: dict[str, tuple] = {}
        self.hairpin_flows = 0
        self._info = ffi.new("struct nat_session_info *")
        self._stale_from: Optional[int] = None   # next session index of a pending sweep
        # The live backend state, by translation id: the configuration's
        # translations, then those a reload removed that still have sessions.
        self._sets: list[BackendSet] = []
        # (translation id, backend index) -> the drain its policy has set off
        self._doom: dict[tuple[int, int], _Drain] = {}
        self._orphans = False    # restored sessions whose translation is gone
        self._now = 0.0
        self.config = config
        self.apply_config(config)

    # ------------------------------------------------------------------
    # configuration

    def apply_config(self, config: Config) -> None:
        """Switch to a new configuration. Sessions keep their rewrites,
        except UDP and ICMP sessions whose backend (or translation) is gone:
        :meth:`expire` removes those over the next ticks, so that their next
        packet picks a current backend instead of going on to a removed one
        (the "stale UDP sessions" cnat and kube-proxy users meet). TCP
        sessions keep their backend until they end: graceful termination."""
        self.plugins.check(config)   # ConfigError before anything changes
        if config.max_sessions != self.config.max_sessions:
            log.warning("sessions.max changes take effect at restart (%d kept)",
                        lib.nat_session_capacity(self._nat))
        c = lib.nat_classifier_create(2 * len(config.translations) + 8)
        if c == ffi.NULL:
            raise MemoryError("classifier")
        for t in config.translations:
            addr = _u8(t.address.packed)
            proto = proto_number(t.proto, t.family)
            port_be = 0 if t.proto == "icmp" else _ntohs(t.port)
            rc = lib.nat_classifier_add_translation(c, t.family, addr, proto, port_be, t.id)
            assert rc == 0, (t, rc)  # duplicates were rejected by the parser
            flag = lib.NAT_ADDR_VIP if t.kind == "vip" else lib.NAT_ADDR_REAL
            lib.nat_classifier_add_address(c, t.family, addr, flag)
        snat = config.snat
        if snat is not None:
            for addr in snat.addresses:
                lib.nat_classifier_add_address(c, addr.version, _u8(addr.packed), lib.NAT_ADDR_SNAT)
        lib.nat_set_classifier(self._nat, c)
        lib.nat_set_flow_hash_seed(self._nat, config.flow_hash_seed)
        self.config = config
        self._translations = {t.id: t for t in config.translations}
        self._set_profile(0, config.timeouts)
        self._profiles = {config.timeouts: 0, **{k: v for k, v in self._profiles.items() if v != 0}}
        self._update_snat_ports()
        self._carry_backends(config)
        self.plugins.configure(config, self.backends)

    @property
    def backends(self) -> dict[str, BackendSet]:
        """The live backend state of each current translation, by name."""
        return {s.translation.name: s for s in self._sets if not s.removed}

    def backend_set(self, translation_id: int) -> Optional[BackendSet]:
        return self._sets[translation_id] if 0 <= translation_id < len(self._sets) else None

    def _carry_backends(self, config: Config) -> None:
        """New BackendSets for a new configuration: figures and set states
        follow translations and backends by name, the table's sessions are
        re-pointed at them in one C pass, and the drain policies of what
        left are scheduled."""
        self._drain_events()   # counts are current before they move
        old = self._sets
        by_name = {s.translation.name: s for s in old if not s.removed}
        new = [BackendSet(t, config.locality) for t in config.translations]
        tmap, boff, bmap = [], [0], []
        for s in new:
            s.on_change = self._backend_changed
        carried: dict[int, int] = {}
        for s in new:
            prev = by_name.get(s.translation.name)
            if prev is not None:
                carried[id(prev)] = s.translation.id
                s._mapping = s.carry_from(prev)
        ghosts: list[BackendSet] = []
        for k, prev in enumerate(old):
            if id(prev) in carried:
                tid = carried[id(prev)]
                mapping = new[tid]._mapping
            else:   # the translation left (or was gone already): a ghost while sessions remain
                ghost = BackendSet(dataclasses.replace(prev.translation, backends=(),
                                                       id=len(new) + len(ghosts)))
                mapping = ghost.carry_from(prev)
                ghost.removed = True
                if ghost.gone:
                    ghosts.append(ghost)
                    tid = ghost.translation.id
                else:
                    tid = lib.NAT_NONE
            tmap.append(tid)
            bmap.extend(mapping)
            boff.append(len(bmap))
        if old:
            lib.nat_sessions_remap(self._nat, ffi.new("uint32_t[]", tmap), len(tmap), ffi.new("uint32_t[]", boff),
                                   ffi.new("uint16_t[]", bmap or [0]), len(bmap))
        for s in new:
            s.__dict__.pop("_mapping", None)
        self._sets = new + ghosts
        self._doom = {}
        for s in self._sets:
            for i in s.all_indexes():
                self._schedule_drain(s, i)

    def _backend_changed(self, s: BackendSet, i: int, before: str, after: str) -> None:
        """A backend's state was set at run time (health checks, control)."""
        log.info("translation %s: backend %s is %s (was %s)", s.translation.name,
                 s.translation.backends[i].name, after, before)
        self._doom.pop((s.translation.id, i), None)
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
        if mode == "deadline":   # counted from the first tick after the backend left
            self._doom[(s.translation.id, i)] = _Drain(what, None, s.translation.drain.deadline)
        else:
            self._doom[(s.translation.id, i)] = _Drain(what, float("-inf"), 0.0)
            self._stale_from = 0

    def _set_profile(self, index: int, t: Timeouts) -> None:
        p = ffi.new("struct nat_profile *")
        p.ms = list(t.as_ms())
        lib.nat_set_profile(self._nat, index, p)

    def _update_snat_ports(self) -> None:
        enabled = bytearray(lib.NAT_MAX_PORTS)
        snat = self.config.snat
        if snat is not None:
            for name in snat.interfaces:
                enabled[self.port(name)] = 1
        lib.nat_set_snat(self._nat, _u8(bytes(enabled)),
                         int(snat is not None and snat.can_snat(4)),
                         int(snat is not None and snat.can_snat(6)))

    def port(self, interface: str) -> int:
        """The dense id the core uses for an ingress interface."""
        p = self._ports.get(interface)
        if p is None:
            p = len(self._port_names)
            if p >= lib.NAT_MAX_PORTS:
                raise ValueError(f"more than {lib.NAT_MAX_PORTS} interfaces")
            self._ports[interface] = p
            self._port_names.append(interface)
        return p

    # ------------------------------------------------------------------
    # data path

    def process(self, batch: Batch, now: Optional[float] = None) -> None:
        """Run a batch through the NAT. With ``now`` None, each frame's own
        timestamp is its clock (replay); verdicts are left in batch.frames.

        C handles the batch in order and stops at each frame that starts a
        flow; the slow path resolves it and C continues after it, so a reply
        later in the same batch already finds the new session."""
        flags = lib.NAT_PF_FRAME_TIME if now is None else 0
        now_ns = 0 if now is None else _ns(now)
        frames = batch.frames
        n = batch.n
        i = 0
        while i < n:
            i += lib.nat_process(self._nat, frames + i, n - i, now_ns, flags)
            f = frames + (i - 1)
            if f.verdict == MISS:
                self._new_flow(f, f.ts_ns if now is None else now_ns, flags)
        self._drain_events()

    def resolve_miss(self, f, now_ns: int) -> None:
        """The slow path for one NAT_MISS frame (a ``struct nat_frame *``)
        from a loop that runs nat_process() itself (the live datapath's
        io_poll); afterwards the frame has its final verdict."""
        self._new_flow(f, now_ns, 0)

    def nat_process_pointer(self):
        """(struct nat *, nat_process function pointer) for C loops."""
        return self._nat, ffi.cast("void *", ffi.addressof(lib, "nat_process"))

    def session_get_pointer(self):
        """(struct nat *, nat_session_get function pointer) for C code that
        needs a session's keys (the datapath's ICMP errors)."""
        return self._nat, ffi.cast("void *", ffi.addressof(lib, "nat_session_get"))

    def drain_events(self) -> None:
        """Deliver queued expiry events (C loops call this between polls)."""
        self._drain_events()

    def _slow_verdict(self, f, verdict: int, reason: str) -> None:
        code = COUNTER_INDEX[reason]
        f.verdict = verdict
        f.reason = code
        lib.nat_count_verdict(self._nat, verdict, code)

    def _new_flow(self, f, now_ns: int, flags: int) -> None:
        # Once per new flow: keep this lean (bench core: new_sessions_per_s).
        raw = bytes(ffi.buffer(ffi.addressof(f, "key"), 40))
        family = raw[37]
        alen = 4 if family == 4 else 16
        src, dst = raw[:alen], raw[16:16 + alen]
        sport, dport = raw[32] << 8 | raw[33], raw[34] << 8 | raw[35]
        proto = raw[36]
        icmp = proto == 1 or proto == 58
        port = f.port
        iface = self._port_names[port] if port < len(self._port_names) else f"port{port}"
        flow = Flow(family, proto, src, dst, sport, dport, iface, f.hash, f.tcp_flags, now_ns / 1e9)
        plugins = self.plugins
        bset: Optional[BackendSet] = None

        new_src, new_dst, new_dport = src, dst, dport
        src_pref = sport  # for ICMP echo: the identifier
        src_rewritten = False
        sflags = 0
        translation: Optional[Translation] = None
        backend_idx = NO_BACKEND
        if f.translation != lib.NAT_NONE:
            translation = self._translations.get(f.translation)
            if translation is None:
                self._slow_verdict(f, DROP, "drop_no_backend")
                return
            bset = self._sets[translation.id]
            if translation.allow_from and not _allowed(translation.allow_from, src):
                bset.denied += 1
                self._slow_verdict(f, DROP, "drop_source_range")
                return
            if not bset.eligible:
                self._slow_verdict(f, DROP, "drop_no_backend")
                return
            choice = plugins.select_backend(flow, translation, bset)
            if choice == hooks.DROP:
                self._slow_verdict(f, DROP, "drop_policy")
                return
            plugins.backend_chosen(flow, translation, bset, choice)
            backend_idx = choice
            b: Backend = translation.backends[choice]
            new_dst = b.dst.packed
            if not icmp and b.dport:
                new_dport = b.dport
            if b.src is not None:
                new_src = b.src.packed
                src_rewritten = True
                if b.sport:
                    src_pref = b.sport
            sflags = lib.NAT_SF_TRANSLATED

        hairpin = None
        if translation is not None and not src_rewritten and iface in self.links:
            hairpin = self._hairpin_source(iface, family, src, new_dst)
            if hairpin is not None:
                new_src, src_rewritten = hairpin, True
                sflags |= lib.NAT_SF_SNAT

        snat = self.config.snat
        if snat is not None and not src_rewritten and iface in snat.interfaces and snat.can_snat(family):
            post = flow if translation is None else flow.replace(dst=new_dst, dport=new_dport)
            decision = plugins.snat(post, snat)
            if decision == hooks.DROP:
                self._slow_verdict(f, DROP, "drop_policy")
                return
            if decision != hooks.NO_SNAT:
                new_src = ipaddress.ip_address(decision).packed
                sflags |= lib.NAT_SF_SNAT
        if not sflags:
            sflags = lib.NAT_SF_BYPASS

        timeouts = plugins.session_timeouts(flow, translation)
        profile = 0 if timeouts is self.config.timeouts else self._profile(timeouts)
        rc = lib.nat_flow_install(self._nat, f, new_src, new_dst, _ntohs(new_dport), src_pref,
                                  translation.id if translation is not None else lib.NAT_NONE,
                                  backend_idx, profile, sflags, now_ns, flags)
        if rc != 0:
            if sflags == lib.NAT_SF_BYPASS:
                self._slow_verdict(f, PASS, "pass_untracked")
            elif rc == -1:
                self._slow_verdict(f, DROP, "drop_ports_exhausted")
            elif rc == -2:
                self._slow_verdict(f, DROP, "drop_session_full")
            else:  # pragma: no cover - the frame's own key was just looked up
                self._slow_verdict(f, DROP, "drop_policy")
            return
        # Sessions that ended first are reported first: the lookup that sent
        # this frame here may have found its own flow's old session expired
        # (and freed it), whose source port this one may now reuse.
        self._drain_events()
        self.sessions_created += 1
        if hairpin is not None:
            self.hairpin_flows += 1
        if new_src in self.host_sources and self.on_host_source is not None:
            s = self.session(f.session)
            self.on_host_source(True, s.new_src, proto, s.new_sport)
        if bset is not None:
            bset.flows += 1
            bset.sessions[backend_idx] += 1
            bset.new_flows[backend_idx] += 1
        if plugins.wants_created:
            plugins.notify("appliance_session_created", session=self.session(f.session))

    def _hairpin_source(self, iface: str, family: int, src: bytes, dst: bytes) -> Optional[bytes]:
        """The source for a translated flow whose client and backend are both
        on a link of the interface the flow came in on (or are one host): the
        backend would answer the client directly, past the appliance, unless
        the flow comes from the appliance. That interface's own address on
        the link, as Linux's masquerade would pick; None when not a hairpin."""
        s, d = int.from_bytes(src, "big"), int.from_bytes(dst, "big")
        via, backend_on_link = None, s == d
        for fam, net, mask, addr in self.links[iface]:
            if fam == family:
                if via is None and s & mask == net:
                    via = addr
                backend_on_link = backend_on_link or d & mask == net
        return via if backend_on_link else None

    def _profile(self, t: Timeouts) -> int:
        idx = self._profiles.get(t)
        if idx is None:
            if len(self._profiles) >= lib.NAT_MAX_PROFILES:
                self.plugins.errors["too-many-timeout-profiles"] += 1
                return 0
            idx = len(self._profiles)
            self._profiles[t] = idx
            self._set_profile(idx, t)
        return idx

    # ------------------------------------------------------------------
    # timers

    def next_deadline(self, now: float) -> float:
        """When :meth:`expire` should run next."""
        return now + (STALE_SWEEP_INTERVAL if self._stale_from is not None else SCAN_INTERVAL)

    def expire(self, now: float, budget: int = SCAN_BUDGET) -> int:
        """Remove expired sessions among the next ``budget`` slots, and
        continue a pending sweep for sessions a reload left stale."""
        self._now = now
        n = lib.nat_expire(self._nat, _ns(now), budget)
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
        made due (and restored sessions whose translation is gone)."""
        info, nat, none, doom = self._info, self._nat, lib.NAT_NONE, self._doom
        i = lib.nat_session_next(nat, self._stale_from)
        while i != none and budget > 0:
            budget -= 1
            if lib.nat_session_get(nat, i, info) == 0 and info.flags & lib.NAT_SF_TRANSLATED:
                tcp = info.key[0].proto == 6
                d = doom.get((info.translation, info.backend))
                if d is not None:
                    if d.due is not None and d.due <= now and (d.what == "all" or not tcp):
                        lib.nat_session_remove(nat, i)   # counted: nat.session_removed
                elif self._orphans and info.translation == none and not tcp:
                    lib.nat_session_remove(nat, i)
            i = lib.nat_session_next(nat, i + 1)
        if i == none:
            self._stale_from = None
            self._orphans = False
            for key, d in list(doom.items()):   # done, unless a deadline is still to come
                if d.due is not None and d.due <= now:
                    del doom[key]
        else:
            self._stale_from = i

    def expire_all(self, now: float) -> int:
        """Sweep the whole table once (offline use: end of a replay)."""
        n = lib.nat_expire(self._nat, _ns(now), lib.nat_session_capacity(self._nat))
        self._drain_events()
        return n

    # ------------------------------------------------------------------
    # sessions across a restart

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
                  "translations": {str(t.id): _identity(t) for t in self.config.translations},
                  "profiles": {str(v): dataclasses.astuple(t) for t, v in self._profiles.items()}}
        return json.dumps(header).encode() + b"\n" + bytes(ffi.buffer(recs, k * size))

    def import_sessions(self, data: bytes, now: float) -> tuple[int, int, int]:
        """Put back what :meth:`export_sessions` saved, as far as it still
        holds: sessions that expired meanwhile are skipped, translation ids
        and timeout profiles are matched to the current configuration (a
        session whose translation is gone keeps its rewrite; the stale
        sweep removes the connectionless ones). Plugins hear of each restored
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
            if rec.translation != lib.NAT_NONE:
                rec.translation = tmap.get(rec.translation, lib.NAT_NONE)
            rec.profile = pmap.get(rec.profile, 0)
            if lib.nat_session_restore(self._nat, rec, out) != 0:
                refused += 1
                continue
            restored += 1
            k1 = rec.key[1]
            if self.host_sources and self.on_host_source is not None and \
                    bytes(ffi.buffer(k1.dst, 4 if k1.family == 4 else 16)) in self.host_sources:
                s = self.session(out[0])
                self.on_host_source(True, s.new_src, k1.proto, s.new_sport)
            if self.plugins.wants_created:
                self.plugins.notify("appliance_session_created", session=self.session(out[0]))
        self._stale_from = 0   # sessions of backends removed meanwhile
        self._orphans = True
        return restored, expired, refused

    def _drain_events(self) -> None:
        while True:
            n = lib.nat_drain_events(self._nat, self._events, 1024)
            if not n:
                return
            self.sessions_expired += n
            sets, nsets, events = self._sets, len(self._sets), self._events
            for i in range(n):
                t = events[i].translation
                if t < nsets:
                    sets[t].count(events[i].backend, -1)
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

    # ------------------------------------------------------------------
    # introspection

    def describe_translations(self) -> dict:
        """Each translation (and each removed one whose sessions remain) with
        its policies and, per backend, state, weight, sessions and new flows:
        what ``show translations`` prints."""
        out = []
        for s in self._sets:
            t = s.translation
            out.append({
                "name": t.name, "id": None if s.removed else t.id, "removed": s.removed,
                "text": str(t), "proto": t.proto, "kind": t.kind, "address": str(t.address), "port": t.port,
                "selector": t.selector, "drain": str(t.drain), "affinity": t.affinity,
                "allow_from": [str(n) for n in t.allow_from], "denied": s.denied,
                "new_flows": s.flows,
                "eligible": len(s.eligible),
                "backends": [s.describe(i) for i in s.all_indexes()],
            })
        return {"translations": out}

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
        return None if tid == lib.NAT_NONE else self._translations.get(tid)

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
        from .._types import PROTO_NAMES
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
            reason=("timeout", "removed")[s.reason] if s.reason < 2 else "",
            translation_name=tname, backend_name=bname,
        )

    def statistics(self) -> Statistics:
        c = lib.nat_counters(self._nat)
        counters = {name: c[i] for i, name in enumerate(COUNTER_NAMES)}
        return Statistics(counters=counters, sessions=lib.nat_session_count(self._nat),
                          capacity=lib.nat_session_capacity(self._nat),
                          new_flows_per_translation={s.translation.name: s.flows for s in self._sets
                                                     if not s.removed},
                          translations=tuple(self.describe_translations()["translations"]),
                          plugin_figures=self.plugins.figures(),
                          plugin_errors=dict(self.plugins.errors),
                          sessions_created=self.sessions_created,
                          sessions_expired=self.sessions_expired,
                          hairpin_flows=self.hairpin_flows)

    @staticmethod
    def counter_help() -> dict[str, str]:
        return dict(zip(COUNTER_NAMES, COUNTER_HELP))

    def memory_bytes(self) -> int:
        return lib.nat_memory_bytes(self._nat)
