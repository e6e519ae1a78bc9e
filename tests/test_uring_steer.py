"""What a port that sees every frame (the socket modes, io_uring and
mmap, docs/io.md) takes for the appliance and what it leaves to the
kernel: the XDP program's decision, made in C on the frame's copy, with a
range of host ports (40000-65535) for the XDP program's per-session ports
map, and the ports of `real` translations listed one by one. Each row: a
frame, and whether the appliance takes it. Addresses: 192.0.2.1 and
fd00::1 the host's, 30.0.0.2 and fd30::2 vips, 10.0.0.1 the host's and
SNAT's, 192.0.2.7 and fd00::7 the host's with a `real` icmp translation.
Listed: `real` TCP 192.0.2.1 port 80, `real` UDP fd00::1 port 53, and
echo identifier 7 of 192.0.2.1 (a session restored from another range)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from appliance.io_uring._binding import ffi, lib
from packets import MAC_A, MAC_B, eth, icmp_echo, icmp_error, ip, l4, tcp, udp

HOST, NAT, ECHO = lib.STEER_ADDR_HOST, lib.STEER_ADDR_NAT, lib.STEER_ADDR_ECHO
ADDRESSES = [("192.0.2.1", HOST), ("fd00::1", HOST), ("30.0.0.2", NAT), ("fd30::2", NAT),
             ("10.0.0.1", HOST), ("10.0.0.1", NAT), ("192.0.2.7", HOST | ECHO), ("fd00::7", HOST | ECHO)]
LISTED = [("192.0.2.1", 6, 80), ("fd00::1", 17, 53), ("192.0.2.1", 1, 7)]


def arp_request(target: str, sender: str = "192.0.2.9") -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_A, ipaddress.ip_address(sender).packed,
                       bytes(6), ipaddress.ip_address(target).packed)
    return b"\xff" * 6 + MAC_A + b"\x08\x06" + body


def neighbour_solicitation(target: str, icmp_type: int = 135) -> bytes:
    ns = bytes([icmp_type, 0, 0, 0, 0, 0, 0, 0]) + ipaddress.ip_address(target).packed + b"\x01\x01" + MAC_A
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(ns), 58, 255, ipaddress.ip_address("fe80::9").packed,
                      ipaddress.ip_address("ff02::1:ff00:2").packed)
    return b"\x33\x33\xff\x00\x00\x02" + MAC_A + b"\x86\xdd" + hdr + ns


def later_fragment(frame: bytes) -> bytes:
    """The IPv4 frame as a fragment at offset 128."""
    return frame[:20] + b"\x00\x10" + frame[22:]


ROWS = [
    ("transit", udp("10.1.0.2", 1000, "20.0.0.9", 53), 1),
    ("transit, TTL 1: the kernel's time-exceeded", udp("10.1.0.2", 1000, "20.0.0.9", 53, ttl=1), 0),
    ("a vip", tcp("10.1.0.2", 1000, "30.0.0.2", 80), 1),
    ("a vip at TTL 1: our time-exceeded", tcp("10.1.0.2", 1000, "30.0.0.2", 80, ttl=1), 1),
    ("the host's own (BGP, ssh, sync)", tcp("10.1.0.2", 1000, "192.0.2.1", 179), 0),
    ("an address both the host's and SNAT's: the host's", udp("40.0.0.1", 53, "10.0.0.1", 20000), 0),
    ("a reply to a host address, a port of the range", udp("40.0.0.1", 53, "10.0.0.1", 45000), 1),
    ("a reply to the host, the range's first port", tcp("40.0.0.1", 80, "192.0.2.1", 40000), 1),
    ("the port below the range: the host's", tcp("40.0.0.1", 80, "192.0.2.1", 39999), 0),
    ("an echo reply to the host, identifier in the range", icmp_echo("40.0.0.1", "10.0.0.1", 50000, reply=True), 1),
    ("an echo reply to the host, identifier below it", icmp_echo("40.0.0.1", "10.0.0.1", 7, reply=True), 0),
    ("an echo request to the host: the host's", icmp_echo("40.0.0.1", "10.0.0.1", 50000), 0),
    ("a `real` translation's port", tcp("10.1.0.2", 1000, "192.0.2.1", 80), 1),
    ("that port in another protocol: the host's", udp("10.1.0.2", 1000, "192.0.2.1", 80), 0),
    ("that port of another host address: the host's", tcp("10.1.0.2", 1000, "10.0.0.1", 80), 0),
    ("a `real` UDP port, IPv6", udp("fd01::2", 1000, "fd00::1", 53), 1),
    ("a listed echo identifier", icmp_echo("40.0.0.1", "192.0.2.1", 7, reply=True), 1),
    ("a listed identifier in an echo request: the host's", icmp_echo("40.0.0.1", "192.0.2.1", 7), 0),
    ("an echo request to a `real` icmp translation", icmp_echo("40.0.0.1", "192.0.2.7", 3), 1),
    ("an IPv6 echo request to a `real` icmp translation", icmp_echo("fd01::2", "fd00::7", 3), 1),
    ("an echo reply to it, identifier below the range: the host's",
     icmp_echo("40.0.0.1", "192.0.2.7", 3, reply=True), 0),
    ("an ICMP error to the host: the NAT matches the quoted flow",
     icmp_error("40.0.0.1", "10.0.0.1", ip("10.0.0.1", "40.0.0.1", l4("udp", 45000, 53)), type_=3, code=3), 1),
    ("a fragment to the host (not the first): its ports are in the first",
     later_fragment(eth(ip("40.0.0.1", "192.0.2.1", b"\0" * 16, proto=17))), 1),
    ("an IPv6 reply to the host, a port of the range", tcp("fd01::2", 80, "fd00::1", 50000), 1),
    ("an IPv6 echo reply to the host, identifier in the range", icmp_echo("fd01::2", "fd00::1", 40001, reply=True), 1),
    ("an IPv6 ICMP error to the host",
     icmp_error("fd01::2", "fd00::1", ip("fd00::1", "fd01::2", l4("udp", 45000, 53)), type_=1, code=4), 1),
    ("an IPv6 reply behind a hop-by-hop header: the host's (the table looks at the first header)",
     eth(ip("fd01::2", "fd00::1", l4("tcp", 80, 50000), ext=b"\x06\x00" + bytes(6), ext_nh=0)), 0),
    ("IPv6 transit", udp("fd01::2", 1000, "fd02::9", 53), 1),
    ("an IPv6 vip", tcp("fd01::2", 1000, "fd30::2", 80), 1),
    ("the host's own, IPv6", tcp("fd01::2", 1000, "fd00::1", 22), 0),
    ("IPv6 multicast", udp("fd01::2", 1000, "ff02::1", 53), 0),
    ("another host's MAC (promiscuous)", eth(udp("10.1.0.2", 1000, "20.0.0.9", 53)[14:], dst=MAC_A), 0),
    ("ARP for a vip", arp_request("30.0.0.2"), 1),
    ("ARP for the host", arp_request("192.0.2.1"), 0),
    ("ARP for an address the host has too", arp_request("10.0.0.1"), 0),
    ("a solicitation for an IPv6 vip", neighbour_solicitation("fd30::2"), 1),
    ("a solicitation for the host", neighbour_solicitation("fd00::1"), 0),
    ("a router solicitation", neighbour_solicitation("fd30::2", icmp_type=133), 0),
    ("not IP (LLDP)", b"\x01\x80\xc2\x00\x00\x0e" + MAC_A + b"\x88\xcc" + bytes(40), 0),
    ("cut short", udp("10.1.0.2", 1000, "20.0.0.9", 53)[:20], 0),
]


@pytest.fixture(scope="module")
def ctx():
    c = ffi.gc(lib.io_ctx_create(-1, b"\2\0\0\0\0\xff", 16, 1, 0), lib.io_ctx_destroy)
    entries = ffi.new("struct io_steer_entry[]", len(ADDRESSES))
    for e, (a, flags) in zip(entries, ADDRESSES):
        addr = ipaddress.ip_address(a)
        e.family, e.flags = addr.version, flags
        ffi.memmove(e.addr, addr.packed, len(addr.packed))
    assert lib.io_steer_load(c, entries, len(ADDRESSES)) == 0
    assert lib.io_steer_set_host_ports(c, 40000, 65535) == 0
    assert lib.io_steer_load_ports(c, ports(LISTED), len(LISTED)) == 0
    return c


def ports(listed):
    arr = ffi.new("struct io_steer_port[]", max(1, len(listed)))
    for e, (a, proto, port) in zip(arr, listed):
        addr = ipaddress.ip_address(a)
        e.family, e.proto, e.port = addr.version, proto, port
        ffi.memmove(e.addr, addr.packed, len(addr.packed))
    return arr


@pytest.mark.parametrize("what,frame,taken", ROWS, ids=[r[0] for r in ROWS])
def test_the_appliance_takes_what_xdp_would_redirect(ctx, what, frame, taken):
    assert lib.io_steer_take(ctx, frame, len(frame), MAC_B) == taken


def test_before_the_addresses_are_loaded_everything_is_the_kernels():
    """Else the host's own traffic (its BGP session, ssh) would be taken
    in the moment between a port's opening and the first load."""
    c = ffi.gc(lib.io_ctx_create(-1, b"\2\0\0\0\0\xff", 16, 1, 0), lib.io_ctx_destroy)
    frame = udp("10.1.0.2", 1000, "20.0.0.9", 53)
    assert lib.io_steer_take(c, frame, len(frame), MAC_B) == 0
    assert lib.io_steer_load(c, ffi.NULL, 0) == 0
    assert lib.io_steer_take(c, frame, len(frame), MAC_B) == 1


def test_the_listed_ports_are_replaced_as_a_whole():
    """A reload without the `real` translation: its port is the host's
    again, at once (the table's sets are written alike)."""
    c = ffi.gc(lib.io_ctx_create(-1, b"\2\0\0\0\0\xff", 16, 1, 0), lib.io_ctx_destroy)
    entry = ffi.new("struct io_steer_entry[]", 1)
    entry[0].family, entry[0].flags = 4, HOST
    ffi.memmove(entry[0].addr, ipaddress.ip_address("192.0.2.1").packed, 4)
    assert lib.io_steer_load(c, entry, 1) == 0
    frame = tcp("10.1.0.2", 1000, "192.0.2.1", 80)
    assert lib.io_steer_take(c, frame, len(frame), MAC_B) == 0
    assert lib.io_steer_load_ports(c, ports(LISTED), len(LISTED)) == 0
    assert lib.io_steer_take(c, frame, len(frame), MAC_B) == 1
    assert lib.io_steer_load_ports(c, ports(LISTED[1:]), 2) == 0
    assert lib.io_steer_take(c, frame, len(frame), MAC_B) == 0
    assert lib.io_steer_load_ports(c, ports(LISTED), len(LISTED)) == 0
    assert lib.io_steer_load_ports(c, ffi.NULL, 0) == 0
    assert lib.io_steer_take(c, frame, len(frame), MAC_B) == 0
