"""ICMP errors through the embedded packet (both families, Packet Too Big
included), with every checksum a full recomputation in the expected frame."""

import pytest

from packets import Harness, icmp_echo, icmp_error, ip, l4, tcp, udp

CONF = """
[snat]
ip4 = "30.0.0.1"
ip6 = "30::1"
interfaces = ["tap0"]
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353"]
[[translation]]
proto = "tcp"
vip = "30::2"
port = 80
backends = ["->20::1 8080"]
"""


def setup_flows(h):
    h.send(udp("10.0.0.1", 5000, "30.0.0.2", 53), "eth0")
    h.send(tcp("10::1", 40000, "30::2", 80), "eth0")
    h.send(icmp_echo("10.1.0.5", "9.9.9.9", 7), "tap0")


def q_udp4(src, sport, dst, dport):
    return ip(src, dst, l4("udp", sport, dport, b"hello"))


def q_tcp6(src, sport, dst, dport):
    return ip(src, dst, l4("tcp", sport, dport, b"hello"))


TABLE = [
    ("v4 port unreachable from the backend itself: outer source becomes the vip",
     icmp_error("20.0.0.1", "10.0.0.1", q_udp4("10.0.0.1", 5000, "20.0.0.1", 5353), type_=3, code=3),
     icmp_error("30.0.0.2", "10.0.0.1", q_udp4("10.0.0.1", 5000, "30.0.0.2", 53), type_=3, code=3)),
    ("v4 time exceeded from a router: router stays visible",
     icmp_error("20.0.0.254", "10.0.0.1", q_udp4("10.0.0.1", 5000, "20.0.0.1", 5353), type_=11),
     icmp_error("20.0.0.254", "10.0.0.1", q_udp4("10.0.0.1", 5000, "30.0.0.2", 53), type_=11)),
    ("v4 fragmentation needed (PMTU) quoting 8 bytes of L4",
     icmp_error("20.0.0.254", "10.0.0.1", q_udp4("10.0.0.1", 5000, "20.0.0.1", 5353), type_=3, code=4,
                quote_len=28),
     icmp_error("20.0.0.254", "10.0.0.1", q_udp4("10.0.0.1", 5000, "30.0.0.2", 53), type_=3, code=4,
                quote_len=28)),
    ("v4 parameter problem",
     icmp_error("20.0.0.1", "10.0.0.1", q_udp4("10.0.0.1", 5000, "20.0.0.1", 5353), type_=12),
     icmp_error("30.0.0.2", "10.0.0.1", q_udp4("10.0.0.1", 5000, "30.0.0.2", 53), type_=12)),
    ("v6 packet too big from a router",
     icmp_error("20::fe", "10::1", q_tcp6("10::1", 40000, "20::1", 8080), type_=2, mtu=1280),
     icmp_error("20::fe", "10::1", q_tcp6("10::1", 40000, "30::2", 80), type_=2, mtu=1280)),
    ("v6 destination unreachable from the backend",
     icmp_error("20::1", "10::1", q_tcp6("10::1", 40000, "20::1", 8080), type_=1, code=4),
     icmp_error("30::2", "10::1", q_tcp6("10::1", 40000, "30::2", 80), type_=1, code=4)),
    ("v6 time exceeded",
     icmp_error("20::fe", "10::1", q_tcp6("10::1", 40000, "20::1", 8080), type_=3),
     icmp_error("20::fe", "10::1", q_tcp6("10::1", 40000, "30::2", 80), type_=3)),
    ("v6 parameter problem",
     icmp_error("20::1", "10::1", q_tcp6("10::1", 40000, "20::1", 8080), type_=4),
     icmp_error("30::2", "10::1", q_tcp6("10::1", 40000, "30::2", 80), type_=4)),
    ("error about an SNATed ping, back to the pod",
     icmp_error("8.8.8.8", "30.0.0.1", ip("30.0.0.1", "9.9.9.9", icmp_echo("30.0.0.1", "9.9.9.9", 7)[34:], proto=1),
                type_=11),
     icmp_error("8.8.8.8", "10.1.0.5", ip("10.1.0.5", "9.9.9.9", icmp_echo("10.1.0.5", "9.9.9.9", 7)[34:], proto=1),
                type_=11)),
]


@pytest.mark.parametrize("what,err,want", TABLE, ids=[t[0] for t in TABLE])
def test_icmp_error_translated(what, err, want):
    h = Harness(CONF)
    setup_flows(h)
    h.send(err, "eth1").expect(want)
    assert h.counter("icmp_error_translated") == 1


def test_icmp_error_without_session_passes_unchanged():
    h = Harness(CONF)
    err = icmp_error("20.0.0.254", "10.0.0.1", q_udp4("10.0.0.1", 6000, "40.0.0.1", 53), type_=11)
    h.send(err, "eth1").expect_pass(err)
    assert h.counter("pass_icmp_no_session") == 1


def test_icmp_error_with_truncated_quote_is_dropped():
    h = Harness(CONF)
    setup_flows(h)
    err = icmp_error("20.0.0.254", "10.0.0.1", q_udp4("10.0.0.1", 5000, "20.0.0.1", 5353), type_=11,
                     quote_len=24)
    h.send(err, "eth1").expect_drop("drop_icmp_inner_bad")
