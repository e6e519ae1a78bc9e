"""Steering for the socket backends, io_uring and mmap (docs/io.md): the
appliance's C takes what the XDP program would redirect (``c/io_steer.c``,
fed the host's and the NAT's addresses here), and an nftables table keeps
the kernel off those same frames, dropping them at the ingress hook.

The same methods as the XDP steering (``xdp/_steering.py``), so the
runtime feeds both alike. Host-address ports are a range
(``set_host_port_range``: ``[datapath] reserved_ports``), not one entry
per session as in the XDP ``ports`` map: a session in it costs no table
write. Listed one by one besides, in the C and in the table's sets: the
ports of ``real`` translations, from the configuration, and a session's
host port outside the range (restored from a run with another range),
each a table write.
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
    and the port methods set what the table and the C take; ``start``
    makes all of it take effect; ``detach_all`` removes the table,
    ``hold`` keeps it dropping the appliance's traffic for a while (the
    gap of a restart with --state-file)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.interfaces: list[str] = []
        self.nat_only: set = set()
        self.host: set = set()
        self.ports: tuple = (0, 0)     # the host ports taken (set_host_port_range); (0, 0): none
        self.listed: set = set()       # (host address, proto, port) taken besides the range
        self.echo: set = set()         # host addresses of `real` icmp translations: their echo requests
        self.writes = 0                # the table written (one nft transaction each)
        self.nat: set = set()
        self.live = False              # start(): the table and the C's tables written from then on
        self.held = False
        self.until = 0                 # hold(): the table passes everything after this (Unix time)

    def _table(self) -> str:
        def elements(items) -> str:
            return "elements = { " + ", ".join(items) + " }" if items else ""
        def addrs(pool, version) -> list:
            return sorted(str(a) for a in pool if a.version == version)
        def listed(version, icmp) -> list:
            return sorted(f"{a} . {port}" if icmp else f"{a} . {proto} . {port}"
                          for a, proto, port in self.listed
                          if a.version == version and (proto in (1, 58)) == icmp)
        devices = ", ".join(f'"{n}"' for n in self.interfaces)
        lo, hi = self.ports
        ports = "" if not hi else f"""
        ip daddr @host4 ip protocol {{ tcp, udp }} th dport {lo}-{hi} drop
        ip daddr @host4 icmp type echo-reply icmp id {lo}-{hi} drop
        ip6 daddr @host6 ip6 nexthdr {{ tcp, udp }} th dport {lo}-{hi} drop
        ip6 daddr @host6 ip6 nexthdr 58 icmpv6 type echo-reply icmpv6 id {lo}-{hi} drop"""
        # the frames the appliance takes (io_steer.c): to no address of the
        # host's at a TTL it forwards, to a NAT-only address at any; to an
        # address of the host's, the ports of the range and those listed,
        # echo requests to a `real` icmp translation, ICMP errors and
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
    set echo4 {{ type ipv4_addr; {elements(addrs(self.echo, 4))} }}
    set echo6 {{ type ipv6_addr; {elements(addrs(self.echo, 6))} }}
    set ports4 {{ typeof ip daddr . ip protocol . th dport; {elements(listed(4, False))} }}
    set ports6 {{ typeof ip6 daddr . ip6 nexthdr . th dport; {elements(listed(6, False))} }}
    set ids4 {{ typeof ip daddr . icmp id; {elements(listed(4, True))} }}
    set ids6 {{ typeof ip6 daddr . icmpv6 id; {elements(listed(6, True))} }}
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
        ip6 daddr @host6 ip6 nexthdr 58 icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} drop
        ip daddr @echo4 icmp type echo-request drop
        ip6 daddr @echo6 ip6 nexthdr 58 icmpv6 type echo-request drop
        ip daddr @host4 ip daddr . ip protocol . th dport @ports4 drop
        ip6 daddr @host6 ip6 daddr . ip6 nexthdr . th dport @ports6 drop
        ip daddr @host4 icmp type echo-reply ip daddr . icmp id @ids4 drop
        ip6 daddr @host6 ip6 nexthdr 58 icmpv6 type echo-reply ip6 daddr . icmpv6 id @ids6 drop{ports}
    }}
}}
"""

    def attach(self, ifindex: int, name: str, mode: str = "auto") -> str:
        """An interface for the table's chain; the table is only tried
        here (nft -c), and written by ``start``."""
        if name not in self.interfaces:
            self.interfaces.append(name)
        _nft(self._table(), check=True)
        return "socket"

    def start(self) -> None:
        """The steering takes effect, all at once, when the tables are
        complete (the host's addresses, the listed ports, the sessions a
        --state-file restored): the table, then the C. Before, the C takes
        nothing and a table held by the last run holds; a table written
        with half of them would hand the kernel the replies to host ports,
        and it would reset those flows."""
        self.live = True
        self._write()
        self._load_addresses()
        self._load_ports()

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
        self._write()
        self.held = True

    def _write(self) -> None:
        """The table as it is now, in one transaction (once started)."""
        if self.interfaces and self.live:
            _nft(self._table())
            self.writes += 1

    def set_addresses(self, host: set, nat: set, echo: frozenset = frozenset()) -> None:
        """host: the host's own addresses; nat: vips and SNAT addresses;
        echo: addresses of `real` icmp translations (the host's ones
        count), whose echo requests are the appliance's. The table first:
        an address the kernel is kept off and the C does not take yet
        loses a frame for a moment, where the other order would have the
        kernel reset a flow."""
        echo = set(echo) & set(host)
        changed = (set(nat) - set(host), set(host), echo) != (self.nat_only, self.host, self.echo)
        self.nat_only, self.host, self.echo, self.nat = set(nat) - set(host), set(host), echo, set(nat)
        if changed:
            self._write()
        self._load_addresses()

    def _load_addresses(self) -> None:
        if not self.live:
            return
        entries = [(a, lib.STEER_ADDR_HOST | (lib.STEER_ADDR_ECHO if a in self.echo else 0)) for a in self.host]
        entries += [(a, lib.STEER_ADDR_NAT) for a in self.nat]
        arr = ffi.new("struct io_steer_entry[]", max(1, len(entries)))
        for e, (a, flags) in zip(arr, entries):
            e.family, e.flags = a.version, flags
            ffi.memmove(e.addr, a.packed, len(a.packed))
        if lib.io_steer_load(self.ctx, arr, len(entries)) != 0:
            raise SteeringError("socket steering: out of memory")

    def set_host_port_range(self, lo: int, hi: int) -> None:
        """The ports of the host's addresses taken for the appliance: where
        the NAT picks the ports of flows whose source becomes a host
        address (the runtime reserves them from the kernel's own)."""
        lib.io_steer_set_host_ports(self.ctx, lo, hi)
        self.ports = (lo, hi)
        self._write()

    def _in_range(self, p) -> bool:
        lo, hi = self.ports
        return lo <= p[2] <= hi and hi > 0

    def _list(self, listed: set) -> None:
        self.listed = listed
        self._write()
        self._load_ports()

    def _load_ports(self) -> None:
        if not self.live:
            return
        arr = ffi.new("struct io_steer_port[]", max(1, len(self.listed)))
        for e, (a, proto, port) in zip(arr, self.listed):
            e.family, e.proto, e.port = a.version, proto, port
            ffi.memmove(e.addr, a.packed, len(a.packed))
        if lib.io_steer_load_ports(self.ctx, arr, len(self.listed)) != 0:
            raise SteeringError("socket steering: out of memory")

    def set_host_ports(self, ports: set) -> None:
        """ports: {(host address, proto number, port)} that go to the
        appliance: those of the range are taken already."""
        listed = {p for p in ports if not self._in_range(p)}
        if listed != self.listed:
            self._list(listed)

    def add_port(self, p) -> None:
        if not self._in_range(p) and p not in self.listed:
            self._list(self.listed | {p})

    def remove_port(self, p) -> None:
        if p in self.listed:
            self._list(self.listed - {p})

    def counters(self) -> dict[str, int]:
        return {"table_writes": self.writes}


def remove_stale_table(keep_netdev: bool) -> None:
    """At a start: the table a socket mode's run left (SIGKILL, a stop
    with --state-file), so that it does not drop traffic of a run in
    AF_XDP mode, and the `inet` one of the first version. keep_netdev: a
    run in a socket mode replaces it in one transaction when it starts
    (SocketSteering.start) instead, so that a held one covers the gap
    until then. Nothing
    when nftables is not installed (then there can be none)."""
    if shutil.which("nft") is None:
        return
    families = ("inet",) if keep_netdev else ("netdev", "inet")
    try:
        _nft("".join(f"table {family} {TABLE}\ndelete table {family} {TABLE}\n" for family in families))
    except SteeringError as exc:
        log.error("%s", exc)
