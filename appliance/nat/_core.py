"""The NAT core: the C fast path plus the Python slow path. Sans-IO.

Nothing here reads a clock, opens a socket or imports trio: ``now`` is a
parameter (seconds, float), frames come in as batches, verdicts go out in
the same batch, and timers are :meth:`NatCore.next_deadline` /
:meth:`NatCore.expire`. The runtime (live AF_XDP, ``appliance replay``, the
tests, the kit) drives it, and hands it the plugins it asks: the core
imports no plugin.

Per batch the C fast path handles every frame of an established flow. Frames
that start a flow come back as misses; for each, the slow path here asks the
hooks (backend, SNAT, timeouts), allocates a source port when the source
changes or the return 5-tuple is taken, installs the session in C and hands
the frame back to C, which rewrites it like any other.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Optional

from .. import hooks
from .._backends import BackendSet
from .._config import Config
from .._types import Backend, Flow, Timeouts, Translation, proto_number
from ._batch import Batch
from ._lane import Lane
from ._binding import COUNTER_INDEX, ffi, lib
from ._common import NO_BACKEND, Verdict, _allowed, _ntohs, _ns, _u8
from ._expiry import Expiry, _Drain
from ._failover import Failover
from ._synced import Synced
from ._introspection import Introspection

if TYPE_CHECKING:  # pragma: no cover
    from .._plugins import Plugins   # the core is handed one; it never builds one

log = logging.getLogger("appliance.nat")


class NatCore(Expiry, Introspection, Synced):
    """Translations, sessions and SNAT over the C fast path.

    Its jobs are in three files: configuration, batches and the slow path
    here; timers, expiry and drain policies in ``_expiry.py``; sessions
    across a restart and everything ``show`` reads in
    ``_introspection.py``. They share this object's state.

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
        # Where source ports are picked when [cluster] source_ports does not
        # say: set by the live runtime in the socket modes ([datapath]
        # reserved_ports, docs/io.md); None: anywhere.
        self.default_source_ports: Optional[tuple[int, int]] = None
        self._info = ffi.new("struct nat_session_info *")
        self._stale_from: Optional[int] = None   # next session index of a pending sweep
        # The live backend state, by translation id: the configuration's
        # translations, then those a reload removed that still have sessions.
        self._sets: list[BackendSet] = []
        # (translation id, backend index) -> the drain its policy has set off
        self._doom: dict[tuple[int, int], _Drain] = {}
        self._now = 0.0
        self.config = config
        self.apply_config(config)

    # ------------------------------------------------------------------
    # configuration

    def set_default_source_ports(self, ports: Optional[tuple[int, int]]) -> None:
        """Pick source ports in `ports` where [cluster] source_ports does not
        say (the socket modes: the host ports they take, docs/io.md)."""
        self.default_source_ports = ports
        self._apply_source_ports(self.config)

    def _apply_source_ports(self, config: Config) -> None:
        ports = config.cluster.source_ports or self.default_source_ports
        if ports is None:
            lib.nat_clear_source_ports(self._nat)
        else:
            lib.nat_set_source_ports(self._nat, *ports)

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
        failover = Failover(config)
        marked = failover.addresses()
        c = lib.nat_classifier_create(2 * len(config.translations) + len(marked) + 8)
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
        for family, addr in marked:
            lib.nat_classifier_add_address(c, family, _u8(addr), lib.NAT_ADDR_BACKEND)
        lib.nat_set_classifier(self._nat, c)
        self._failover = failover
        lib.nat_set_flow_hash_seed(self._nat, config.flow_hash_seed)
        self._apply_source_ports(config)
        self.config = config
        self._set_profile(0, config.timeouts)
        self._profiles = {config.timeouts: 0, **{k: v for k, v in self._profiles.items() if v != 0}}
        self._update_snat_ports()
        self._carry_backends(config)
        self.plugins.configure(config, self.backends)

    @property
    def backends(self) -> dict[str, BackendSet]:
        """The live backend state of each current translation, by name."""
        return {s.translation.name: s for s in self._sets if not s.removed}

    def lingering(self) -> list:
        """The translations a reload removed whose sessions remain."""
        return [s.translation for s in self._sets if s.removed and s.has_sessions()]

    def backend_set(self, translation_id: int) -> Optional[BackendSet]:
        return self._sets[translation_id] if 0 <= translation_id < len(self._sets) else None

    def _carry_backends(self, config: Config) -> None:
        """New BackendSets for a new configuration: figures and set states
        follow translations and backends by name, the table's sessions are
        re-pointed at them in one C pass, and the drain policies of what
        left are scheduled."""
        self._drain_events()   # counts are current before they move
        old = self._sets
        prevs: dict[str, list[BackendSet]] = {}
        for s in old:   # a name's live set, and the one kept for its sessions after a removal
            prevs.setdefault(s.translation.name, []).append(s)
        new = [BackendSet(t, config.locality) for t in config.translations]
        for s in new:
            s.on_change = self._backend_changed
        moved: dict[int, tuple[int, list[int]]] = {}   # id(old set) -> (new id, backend mapping)
        for s in new:
            for prev in prevs.pop(s.translation.name, ()):
                moved[id(prev)] = (s.translation.id, s.carry_from(prev))
        ghosts: list[BackendSet] = []
        for group in prevs.values():   # translations that left: kept while sessions remain
            ghost = BackendSet(dataclasses.replace(group[0].translation, backends=(),
                                                   id=len(new) + len(ghosts)))
            ghost.removed = True
            for prev in group:
                moved[id(prev)] = (ghost.translation.id, ghost.carry_from(prev))
            if ghost.gone:
                ghosts.append(ghost)
            else:
                for prev in group:
                    moved[id(prev)] = (lib.NAT_NONE, [])
        tmap, boff, bmap = [], [0], []
        for prev in old:
            tid, mapping = moved[id(prev)]
            tmap.append(tid)
            bmap.extend(mapping or [NO_BACKEND] * (len(prev.translation.backends) + len(prev.gone)))
            boff.append(len(bmap))
        if old:
            lib.nat_sessions_remap(self._nat, ffi.new("uint32_t[]", tmap), len(tmap), ffi.new("uint32_t[]", boff),
                                   ffi.new("uint16_t[]", bmap or [0]), len(bmap))
        self._sets = new + ghosts
        for prev in old:
            prev.on_change = None    # a set kept by a plugin no longer moves this core
        self._recount()
        # Drains under way go on where nothing changed for them (a deadline
        # does not start again at every reload); the others are set off anew.
        carried = {}
        for (ot, ob), d in self._doom.items():
            tid, mapping = moved.get(id(old[ot]), (lib.NAT_NONE, [])) if ot < len(old) else (lib.NAT_NONE, [])
            if tid != lib.NAT_NONE and ob < len(mapping) and mapping[ob] != NO_BACKEND:
                carried[(tid, mapping[ob])] = d
        self._doom = {}
        for s in self._sets:
            for i in s.all_indexes():
                d = carried.get((s.translation.id, i))
                if d is not None and d.state == s.state(i) and d.mode == s.translation.drain.mode:
                    self._doom[(s.translation.id, i)] = d
                else:
                    self._schedule_drain(s, i)

    def _recount(self) -> None:
        """Active sessions per backend, counted in the table (one C pass):
        what the events kept, healed of any event a full ring lost."""
        for s, tally in zip(self._sets, self._tally()):
            s.recount(tally)

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
            if f.verdict == Verdict.MISS:
                self._new_flow(f, f.ts_ns if now is None else now_ns, flags)
        self._drain_events()

    def resolve_miss(self, f, now_ns: int) -> None:
        """The slow path for one NAT_MISS frame (a ``struct nat_frame *``)
        from a loop that runs nat_process() itself (the live datapath's
        io_poll); afterwards the frame has its final verdict."""
        self._new_flow(f, now_ns, 0)

    def lane(self) -> Lane:
        """A fast path over this core's table for another thread."""
        return Lane(self._nat)

    def nat_process_pointer(self):
        """(struct nat *, nat_process function pointer) for C loops."""
        return self._nat, ffi.cast("nat_process_fn", ffi.addressof(lib, "nat_process"))

    def session_peek_pointer(self):
        """(struct nat *, nat_session_peek function pointer) for C code that
        needs a session's keys on any thread (the datapath's ICMP errors)."""
        return self._nat, ffi.cast("nat_session_peek_fn", ffi.addressof(lib, "nat_session_peek"))

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
        if f.dir and self._failover.resolve(self, f, raw, iface, now_ns, flags):
            return      # a backend's reply of another instance's flow
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
            if f.translation >= len(self.config.translations):   # pragma: no cover - the classifier has no other
                self._slow_verdict(f, Verdict.DROP, "drop_no_backend")
                return
            bset = self._sets[f.translation]
            translation = bset.translation
            if translation.allow_from and not _allowed(translation.allow_from, src):
                bset.denied += 1
                self._slow_verdict(f, Verdict.DROP, "drop_source_range")
                return
            if not bset.eligible:
                self._slow_verdict(f, Verdict.DROP, "drop_no_backend")
                return
            choice = plugins.select_backend(flow, translation, bset)
            if choice == hooks.DROP:
                self._slow_verdict(f, Verdict.DROP, "drop_policy")
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
            post = flow if translation is None else Flow(family, proto, src, new_dst, sport, new_dport, iface,
                                                         f.hash, f.tcp_flags, flow.time)
            decision = plugins.snat(post, snat)
            if decision == hooks.DROP:
                self._slow_verdict(f, Verdict.DROP, "drop_policy")
                return
            if decision != hooks.NO_SNAT:
                new_src = decision.packed
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
                self._slow_verdict(f, Verdict.PASS, "pass_untracked")
            elif rc == -1:
                self._slow_verdict(f, Verdict.DROP, "drop_ports_exhausted")
            elif rc == -2:
                self._slow_verdict(f, Verdict.DROP, "drop_session_full")
            else:  # pragma: no cover - the frame's own key was just looked up
                self._slow_verdict(f, Verdict.DROP, "drop_policy")
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
            bset.took_flow(backend_idx)
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
        """The C profile index of a Timeouts value. Profiles (256) are
        reused once no session and no translation holds them: a process
        that reloads new timeouts for months must not run out."""
        idx = self._profiles.get(t)
        if idx is None:
            taken = set(self._profiles.values())
            if len(taken) >= lib.NAT_MAX_PROFILES:
                taken = self._reclaim_profiles()
            free = next((i for i in range(1, lib.NAT_MAX_PROFILES) if i not in taken), None)
            if free is None:
                lib.nat_count_event(self._nat, COUNTER_INDEX["timeout_profiles_full"])
                return 0
            idx = free
            self._profiles[t] = idx
            self._set_profile(idx, t)
        return idx

    def _reclaim_profiles(self) -> set:
        usage = ffi.new("uint32_t[]", lib.NAT_MAX_PROFILES)
        lib.nat_profile_usage(self._nat, usage)
        wanted = {t.timeouts for t in self.config.translations if t.timeouts is not None}
        self._profiles = {t: i for t, i in self._profiles.items() if i == 0 or usage[i] or t in wanted}
        return set(self._profiles.values())
