"""Steering for the socket backends, io_uring and mmap (docs/io.md): the
appliance's C takes what the XDP program would redirect (``c/io_steer.c``,
fed the host's and the NAT's addresses here), and an nftables table keeps
the kernel off those same frames, dropping them at the ingress hook.

The same methods as the XDP steering (``xdp/_steering.py``), so the
runtime feeds both alike. Host-address ports are a range
(``set_host_port_range``: ``[datapath] reserved_ports``), not one entry
per session as in the XDP ``ports`` map; a session's host port outside it
is counted and logged here. ``real`` translations are not served in these
modes: the configuration check refuses them with ``io = "uring"`` or
``"mmap"``.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import time

from ._binding import ffi, lib
from .xdp._steering import SteeringError

log = logging.getLogger("appliance.steering")

TABLE = "appliance_steer"


def _nft(script: str, check: bool = False) -> None:
    """Run `script` in one transaction; check: only try it (nft -c)."""
    nft = shutil.which("nft")
    if nft is None:
        raise SteeringError("the socket modes (io_uring, mmap) keep the kernel off the appliance's frames with "
                            "nftables: "
                            "`nft` not found (Debian: apt install nftables)")
    r = subprocess.run([nft, *(["-c"] if check else []), "-f", "-"], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        raise SteeringError(f"nftables refused the steering table: {r.stderr.strip() or r.returncode}")


class SocketSteering:
    """``attach`` adds an interface to the table's chain; ``set_addresses``
    loads the C's address set and the table's address sets; ``detach_all``
    removes the table, ``hold`` keeps it dropping the appliance's traffic
    for a while (the gap of a restart with --state-file)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.interfaces: list[str] = []
        self.nat_only: set = set()
        self.host: set = set()
        self.ports: tuple = (0, 0)     # the host ports taken (set_host_port_range); (0, 0): none
        self.warned_host_ports = False
        self.unserved = 0              # host ports sessions needed (replies to a host address): the kernel's
        self.known = False             # set_addresses done: the table is written from then on
        self.held = False
        self.until = 0                 # hold(): the table passes everything after this (Unix time)

    def _table(self) -> str:
        def elements(items) -> str:
            return "elements = { " + ", ".join(items) + " }" if items else ""
        def addrs(pool, version) -> list:
            return sorted(str(a) for a in pool if a.version == version)
        devices = ", ".join(f'"{n}"' for n in self.interfaces)
        lo, hi = self.ports
        ports = "" if not hi else f"""
        ip daddr @host4 ip protocol {{ tcp, udp }} th dport {lo}-{hi} drop
        ip daddr @host4 icmp type echo-reply icmp id {lo}-{hi} drop
        ip6 daddr @host6 ip6 nexthdr {{ tcp, udp }} th dport {lo}-{hi} drop
        ip6 daddr @host6 ip6 nexthdr 58 icmpv6 type echo-reply icmpv6 id {lo}-{hi} drop"""
        # the frames the appliance takes (io_steer.c): to no address of the
        # host's at a TTL it forwards, to a NAT-only address at any; to an
        # address of the host's, the ports of the range, ICMP errors and
        # fragments (the first header only, as the C looks; numbers, not names:
        # a slim image has no /etc/protocols). At the ingress
        # hook, after AF_PACKET's taps have seen the frame and before IP:
        # the kernel's copy costs it no IP input.
        return f"""table netdev {TABLE}
delete table netdev {TABLE}
table netdev {TABLE} {{
    set nat4 {{ type ipv4_addr; {elements(addrs(self.nat_only, 4))} }}
    set nat6 {{ type ipv6_addr; {elements(addrs(self.nat_only, 6))} }}
    set host4 {{ type ipv4_addr; {elements(addrs(self.host, 4))} }}
    set host6 {{ type ipv6_addr; {elements(addrs(self.host, 6))} }}
    chain ingress {{
        type filter hook ingress devices = {{ {devices} }} priority -500; policy accept;
        {f"meta time > {self.until} accept" if self.until else ""}
        meta protocol ip fib daddr type != {{ local, broadcast, multicast }} ip ttl > 1 drop
        meta protocol ip6 fib daddr type != {{ local, broadcast, multicast }} ip6 hoplimit > 1 drop
        ip daddr @nat4 drop
        ip6 daddr @nat6 drop
        ip daddr @host4 ip frag-off & 0x3fff != 0 drop
        ip daddr @host4 icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} drop
        ip6 daddr @host6 ip6 nexthdr 44 drop
        ip6 daddr @host6 ip6 nexthdr 58 icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} drop{ports}
    }}
}}
"""

    def attach(self, ifindex: int, name: str, mode: str = "auto") -> str:
        """Until the host's addresses are known the C takes nothing, and a
        table written now would give the kernel the replies to host ports
        (it would reset them: the flows of sessions restored with
        --state-file): the table is only tried here, and written by the
        first set_addresses; a held one holds until then."""
        if name not in self.interfaces:
            self.interfaces.append(name)
        _nft(self._table(), check=not self.known)
        return "socket"

    def set_ifbase(self, ifindex: int, base: int) -> None:
        pass

    def detach_all(self) -> None:
        if self.interfaces and not self.held:
            try:
                _nft(f"table netdev {TABLE}\ndelete table netdev {TABLE}\n")
            except SteeringError as exc:
                log.error("%s", exc)
        self.interfaces.clear()

    def hold(self, seconds: float) -> None:
        """A restart's gap, as the XDP program's hold: the table stays and
        drops the appliance's traffic for `seconds`, so the kernel does not
        forward it untranslated while the next start comes up; after that
        its first rule passes everything (`meta time`, wall-clock seconds).
        The next start replaces it."""
        self.until = math.ceil(time.time() + seconds)
        if self.interfaces and self.known:
            _nft(self._table())
        self.held = True

    def set_addresses(self, host: set, nat: set, echo: frozenset = frozenset()) -> None:
        entries = [(a, lib.STEER_ADDR_HOST) for a in host] + [(a, lib.STEER_ADDR_NAT) for a in nat]
        arr = ffi.new("struct io_steer_entry[]", max(1, len(entries)))
        for e, (a, flags) in zip(arr, entries):
            e.family, e.flags = a.version, flags
            ffi.memmove(e.addr, a.packed, len(a.packed))
        if lib.io_steer_load(self.ctx, arr, len(entries)) != 0:
            raise SteeringError("socket steering: out of memory")
        nat_only = set(nat) - set(host)
        if nat_only != self.nat_only or set(host) != self.host or not self.known:
            self.nat_only, self.host, self.known = nat_only, set(host), True
            if self.interfaces:
                _nft(self._table())

    def set_host_port_range(self, lo: int, hi: int) -> None:
        """The ports of the host's addresses taken for the appliance: where
        the NAT picks the ports of flows whose source becomes a host
        address (the runtime reserves them from the kernel's own)."""
        lib.io_steer_set_host_ports(self.ctx, lo, hi)
        self.ports = (lo, hi)
        if self.interfaces and self.known:
            _nft(self._table())

    def set_host_ports(self, ports: set) -> None:
        lo, hi = self.ports
        if any(not lo <= p[2] <= hi for p in ports):
            self._host_ports_unserved()

    def add_port(self, p) -> None:
        lo, hi = self.ports
        if not lo <= p[2] <= hi:       # a (host address, proto, port) a session needed, outside the range
            self.unserved += 1
            self._host_ports_unserved()

    def remove_port(self, p) -> None:
        pass

    def _host_ports_unserved(self) -> None:
        if not self.warned_host_ports:
            self.warned_host_ports = True
            lo, hi = self.ports
            log.error("io_uring/mmap mode: flows whose replies come to an address of the host's on a port "
                      "outside %d-%d ([datapath] reserved_ports; sessions restored from a run in another range, "
                      "say) are not served: their replies stay the kernel's (docs/io.md; counted as "
                      "socket_steering.host_ports_unserved)", lo, hi)

    def counters(self) -> dict[str, int]:
        return {"host_ports_unserved": self.unserved}


def remove_stale_table(keep_netdev: bool) -> None:
    """At a start: the table a socket mode's run left (SIGKILL, a stop
    with --state-file), so that it does not drop traffic of a run in
    AF_XDP mode, and the `inet` one of the first version. keep_netdev: a
    run in a socket mode replaces it in one transaction once it knows
    the host's addresses instead, so that a held one covers the gap until
    then. Nothing
    when nftables is not installed (then there can be none)."""
    if shutil.which("nft") is None:
        return
    families = ("inet",) if keep_netdev else ("netdev", "inet")
    try:
        _nft("".join(f"table {family} {TABLE}\ndelete table {family} {TABLE}\n" for family in families))
    except SteeringError as exc:
        log.error("%s", exc)
