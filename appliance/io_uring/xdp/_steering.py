"""The XDP steering program: load, attach, detach, and its maps.

bpffs is not mounted on these machines, so nothing is pinned: the program
lives as long as the process holds it and stays attached only until we
detach it. A process killed with SIGKILL leaves it attached; the next start
detaches whatever XDP program an interface carries before attaching ours.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import pathlib
import socket
import time

from .._binding import STEER_COUNTER_NAMES, ffi, lib

OBJ = pathlib.Path(__file__).resolve().parent / "steer.bpf.o"

ADDR_HOST = lib.STEER_ADDR_HOST   # bpf/steer.h, through the io shim
ADDR_NAT = lib.STEER_ADDR_NAT
ADDR_ECHO = lib.STEER_ADDR_ECHO
MAX_IFINDEX = lib.STEER_MAX_IFINDEX
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


log = logging.getLogger("appliance.steering")


class SteeringError(Exception):
    pass


def driver_name(ifname: str) -> str:
    """The interface's driver (as `ethtool -i` says), or "" if unknown."""
    buf = ffi.new("char[64]")
    return ffi.string(buf).decode() if lib.io_driver_name(ifname.encode(), buf, 64) == 0 else ""


def _key_addr(addr) -> bytes:
    a = ipaddress.ip_address(addr)
    return bytes([a.version, 0, 0, 0]) + a.packed.ljust(16, b"\0")


def _key_port(addr, proto: int, port: int) -> bytes:
    a = ipaddress.ip_address(addr)
    return bytes([a.version, proto]) + port.to_bytes(2, "big") + a.packed.ljust(16, b"\0")


class Steering:
    def __init__(self) -> None:
        prog = ffi.new("int *")
        obj = lib.io_xdp_load(str(OBJ).encode(), prog)
        said = ffi.string(lib.io_xdp_log()).decode(errors="replace").strip()
        if obj < 0:
            if said:    # libbpf's own words: noise where BPF is not allowed, else the verifier's reasons
                log.log(logging.DEBUG if -obj == errno.EPERM else logging.ERROR, "libbpf: %s", said)
            raise SteeringError(f"cannot load {OBJ}: {os.strerror(-obj)}")
        if said:
            log.info("libbpf: %s", said)
        self.prog_fd = prog[0]
        self.obj = obj
        self.maps = {name: lib.io_xdp_map_fd(obj, name.encode())
                     for name in ("xsks", "ifbase", "addrs", "ports", "counters", "hold")}
        self.attached: list[int] = []
        self.addr_flags: dict = {}
        self.warned_full = False
        self.host_ports: set = set()

    def attach(self, ifindex: int, name: str, mode: str = "auto") -> str:
        """Attach in `mode` ("native", "generic", or "auto": native except on
        veth, generic where the driver has no XDP); returns the mode used.

        Why generic on veth: a veth's native XDP runs on the sender's CPU
        and must copy every skb the sender built without 256 bytes of
        headroom or with page fragments (all of trafgen's and TCP's) into a
        page-pool page first; the generic hook does the same work with fewer
        allocations. Measured in the bench e2e topology, alternating runs:
        the sender delivered a median 975 kpps through the generic hook and
        880 kpps through the native one."""
        lib.io_xdp_detach(ifindex)   # a stale program from a killed run
        if mode == "auto":
            mode = "generic" if driver_name(name) == "veth" else "native"
        rc = lib.io_xdp_attach(ifindex, self.prog_fd, 1) if mode == "native" else 1
        if rc:
            if mode == "native":
                log.info("%s: no native XDP (%s): generic mode", name, os.strerror(-rc))
            mode = "generic"
            rc = lib.io_xdp_attach(ifindex, self.prog_fd, 0)
        if rc:
            raise SteeringError(f"cannot attach XDP to {name}: {os.strerror(-rc)}")
        self.attached.append(ifindex)
        return mode

    def detach_all(self) -> None:
        for ifindex in self.attached:
            lib.io_xdp_detach(ifindex)
        self.attached.clear()

    def hold(self, seconds: float) -> None:
        """Leave the program attached, dropping the frames it would give
        the appliance for `seconds` (CLOCK_MONOTONIC, as bpf_ktime_get_ns),
        then passing them to the kernel: a restart's gap. The next
        :meth:`attach` on the interface replaces the program."""
        until = ffi.new("uint64_t *", time.monotonic_ns() + int(seconds * 1e9))
        rc = lib.io_map_update(self.maps["hold"], ffi.new("uint32_t *", 0), until, 0)
        if rc:
            raise SteeringError(f"map hold: {os.strerror(-rc)}")
        self.attached.clear()

    def _update(self, name: str, key: bytes, value: int) -> None:
        v = ffi.new("uint32_t *", value)
        rc = lib.io_map_update(self.maps[name], key, v, 0)
        if rc:
            raise SteeringError(f"map {name}: {os.strerror(-rc)}")

    def _delete(self, name: str, key: bytes) -> None:
        rc = lib.io_map_delete(self.maps[name], key)
        if rc and rc != -errno.ENOENT:
            raise SteeringError(f"map {name}: {os.strerror(-rc)}")

    def set_ifbase(self, ifindex: int, base: int) -> None:
        if ifindex >= MAX_IFINDEX:
            raise SteeringError(f"ifindex {ifindex} is above {MAX_IFINDEX}: not supported")
        self._update("ifbase", ifindex.to_bytes(4, "little"), base + 1)

    def set_addresses(self, host: set, nat: set, echo: frozenset = frozenset()) -> None:
        """host: the host's own addresses; nat: vips and SNAT addresses (the
        appliance's at any TTL: the kernel has no route for them); echo:
        host addresses of `real` icmp translations, whose echo requests are
        the appliance's."""
        flags = {a: ADDR_HOST for a in host}
        for a in nat:
            flags[a] = flags.get(a, 0) | ADDR_NAT
        for a in echo:
            if a in flags:
                flags[a] |= ADDR_ECHO
        for a in self.addr_flags.keys() - flags.keys():
            self._delete("addrs", _key_addr(a))
        done, left_out = {}, []
        for a, f in sorted(flags.items(), key=lambda item: -(item[1] & ADDR_HOST)):   # host ones first
            if self.addr_flags.get(a) != f:
                try:
                    self._update("addrs", _key_addr(a), f)
                except SteeringError:
                    if f & ADDR_HOST:
                        raise
                    left_out.append(a)   # map full (STEER_MAX_ADDRS)
                    continue
            done[a] = f
        self.addr_flags = done
        if left_out and not self.warned_full:
            # their traffic is unaffected; only TTL-1 probes to them get the
            # kernel's "network unreachable" instead of our time-exceeded
            log.warning("XDP address map full: %d vip/SNAT addresses (first %s) answer traceroute's first "
                        "hop with the kernel's 'network unreachable'", len(left_out), left_out[0])
            self.warned_full = True

    def set_host_ports(self, ports: set) -> None:
        """ports: {(address, proto number, port)} that go to the appliance."""
        for p in ports - self.host_ports:
            self._update("ports", _key_port(*p), 1)
        for p in self.host_ports - ports:
            self._delete("ports", _key_port(*p))
        self.host_ports = set(ports)

    def add_port(self, p) -> None:
        if p not in self.host_ports:
            self._update("ports", _key_port(*p), 1)
            self.host_ports.add(p)

    def remove_port(self, p) -> None:
        if p in self.host_ports:
            self._delete("ports", _key_port(*p))
            self.host_ports.discard(p)

    def counters(self) -> dict[str, int]:
        ncpu = _possible_cpus()
        out = {}
        vals = ffi.new("uint64_t[]", ncpu)
        for i, name in enumerate(STEER_COUNTER_NAMES):
            key = ffi.new("uint32_t *", i)
            if lib.io_map_lookup(self.maps["counters"], key, vals) == 0:
                out[name] = sum(vals[j] for j in range(ncpu))
        out.pop("redirect", None)   # the appliance's io.rx counts those
        return out


def _possible_cpus() -> int:
    """Per-CPU map values come one per *possible* CPU (not online)."""
    try:
        text = pathlib.Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n
