"""Stateless failover (``[cluster] stateless_failover``, docs/cluster.md):
a backend's packet that finds no session may be the reply of a flow that
another instance, with the same configuration and flow-hash seed, started
and lost. Its forward flow is rebuilt from it (client -> vip of every
translation with that backend address and port). The flow's owner is:
the translations whose selection is recomputable (hash, maglev, no
affinity) and gives that flow this backend, and any other translation with
that backend (its choice cannot be checked). With exactly one owner the
session is made as the first packet would have made it, and the packet
goes through it; with none the packet is an orphan, with more it is
ambiguous, and it is dropped either way: passed, it would reach the client
from the wrong address and be reset. Such shared backends make their
translations' sessions synced (``shared``), so the ambiguity lasts until
the session arrives.

Once per such packet, never per established packet: the session answers
the flow's later packets in C.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._config import Config
from .._types import Flow, proto_number
from ._binding import COUNTER_INDEX, ffi, lib
from ._common import Verdict, _allowed, _ntohs

if TYPE_CHECKING:
    from ._core import NatCore

_TCP_SYN, _TCP_ACK = 0x02, 0x10


class Failover:
    """The backends whose replies may be another instance's flows: built
    from a configuration, asked by :class:`~appliance.nat.NatCore`."""

    def __init__(self, config: Config) -> None:
        self.enabled = config.cluster.stateless_failover
        #: (family, proto, backend address bytes, backend port; ICMP 0) -> [(translation id, backend index)]
        self.by_backend: dict[tuple, list[tuple[int, int]]] = {}
        for t in config.translations:
            proto = proto_number(t.proto, t.family)
            for j, b in enumerate(t.backends):
                if b.src is not None:     # its replies go to the rewritten source: no client to find
                    continue
                port = 0 if t.proto == "icmp" else (b.dport or t.port)
                self.by_backend.setdefault((t.family, proto, b.dst.packed, port), []).append((t.id, j))
        #: translations with a backend (address and port) that another
        #: translation has too: a reply alone cannot tell whose flow it is
        self.shared = frozenset(tid for owners in self.by_backend.values() if len({t for t, _ in owners}) > 1
                                for tid, _ in owners)

    def addresses(self) -> set:
        """(family, address bytes) of every backend the classifier marks."""
        return {(k[0], k[2]) for k in self.by_backend} if self.enabled else set()

    def resolve(self, core: "NatCore", f, raw: bytes, iface: str, now_ns: int, flags: int) -> bool:
        """Handle the backend packet ``f`` (key bytes ``raw``): True when it
        was answered (a session made, or dropped as an orphan reply); False
        when it is no reply of a translation's flow, for the normal path."""
        family, proto = raw[37], raw[36]
        alen = 4 if family == 4 else 16
        backend, client = raw[:alen], raw[16:16 + alen]
        icmp = proto in (1, 58)
        # an echo reply's key has the identifier as destination port
        bport, cport = (0, raw[34] << 8 | raw[35]) if icmp else (raw[32] << 8 | raw[33], raw[34] << 8 | raw[35])
        if proto == 6 and f.tcp_flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN:
            return False                  # a SYN starts the backend's own flow
        candidates = self.by_backend.get((family, proto, backend, bport))
        if not candidates:
            return False
        plugins = core.plugins
        owners = []                       # (translation id, backend, forward key, flow; None: unchecked)
        for tid, j in candidates:
            bset = core._sets[tid]
            t = bset.translation
            if j not in bset.eligible_set:
                continue
            if t.allow_from and not _allowed(t.allow_from, client):
                continue          # the first packet would have been refused
            vip = t.address.packed
            fwd = ffi.new("struct nat_key *")
            ffi.memmove(fwd.src, client, alen)
            ffi.memmove(fwd.dst, vip, alen)
            fwd.proto, fwd.family = proto, family
            if icmp:
                fwd.sport, fwd.dport = _ntohs(cport), 0
            else:
                fwd.sport, fwd.dport = _ntohs(cport), _ntohs(t.port)
            if not recomputable(t):
                owners.append((tid, j, fwd, None))
                continue
            h = lib.nat_flow_hash(core._nat, fwd)
            flow = Flow(family, proto, client, vip, cport, 0 if icmp else t.port, iface, h, f.tcp_flags,
                        now_ns / 1e9)
            if plugins.select_backend(flow, t, bset) == j:
                owners.append((tid, j, fwd, flow))
        if len(owners) != 1:
            core._slow_verdict(f, Verdict.DROP, "drop_ambiguous_reply" if owners else "drop_orphan_reply")
            return True
        tid, j, fwd, flow = owners[0]
        bset = core._sets[tid]
        t = bset.translation
        if flow is not None:
            plugins.backend_chosen(flow, t, bset, j)
        else:
            flow = Flow(family, proto, client, t.address.packed, cport, 0 if icmp else t.port, iface,
                        lib.nat_flow_hash(core._nat, fwd), f.tcp_flags, now_ns / 1e9)
        timeouts = plugins.session_timeouts(flow, t)
        profile = 0 if timeouts is core.config.timeouts else core._profile(timeouts)
        rev = ffi.new("struct nat_key *")
        ffi.memmove(rev, ffi.addressof(f, "key"), ffi.sizeof("struct nat_key"))
        rc = lib.nat_flow_install_keys(core._nat, f, fwd, rev, tid, j, profile, lib.NAT_SF_TRANSLATED,
                                       now_ns, flags)
        if rc != 0:
            # -2: the table is full; else the client's own key is taken by another session
            core._slow_verdict(f, Verdict.DROP, "drop_session_full" if rc == -2 else "drop_orphan_reply")
            return True
        lib.nat_count_event(core._nat, COUNTER_INDEX["session_recovered"])
        core._drain_events()
        core.sessions_created += 1
        bset.took_flow(j)
        if plugins.wants_created:
            plugins.notify("appliance_session_created", session=core.session(f.session))
        return True


#: selectors whose choice any instance with the configuration recomputes
STATELESS_SELECTORS = ("hash", "maglev")


def recomputable(t) -> bool:
    """Does any instance with this configuration pick the backend this
    translation's first packet picked?"""
    return t.selector in STATELESS_SELECTORS and t.affinity is None
