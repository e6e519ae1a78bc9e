"""SNAT: addresses per family, exclusions (longest match, after translation),
per-destination port allocation, exhaustion, ICMP echo identifiers."""

import ipaddress

import dpkt
import pytest

from appliance.runtime._host_ports import _HostPorts
from packets import Harness, icmp_echo, tcp, udp

CONF = """
[snat]
ip4 = "30.0.0.1"
ip6 = "30::1"
exclude = ["20.0.0.0/24", "20::/100", "8.8.0.0/16"]
interfaces = ["tap0"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->40.0.0.1 8080"]
"""


def sport_of(frame):
    return dpkt.ethernet.Ethernet(frame).data.data.sport


TABLE = [
    ("ipv4 udp", udp("10.1.0.5", 33333, "9.9.9.9", 53), udp("30.0.0.1", 33333, "9.9.9.9", 53),
     udp("9.9.9.9", 53, "30.0.0.1", 33333), udp("9.9.9.9", 53, "10.1.0.5", 33333)),
    ("ipv4 tcp", tcp("10.1.0.5", 40000, "9.9.9.9", 443), tcp("30.0.0.1", 40000, "9.9.9.9", 443),
     tcp("9.9.9.9", 443, "30.0.0.1", 40000, 0x12), tcp("9.9.9.9", 443, "10.1.0.5", 40000, 0x12)),
    ("ipv6 udp", udp("10::5", 33333, "2001:db8::9", 53), udp("30::1", 33333, "2001:db8::9", 53),
     udp("2001:db8::9", 53, "30::1", 33333), udp("2001:db8::9", 53, "10::5", 33333)),
    ("ipv4 ping", icmp_echo("10.1.0.5", "9.9.9.9", 7), icmp_echo("30.0.0.1", "9.9.9.9", 7),
     icmp_echo("9.9.9.9", "30.0.0.1", 7, reply=True), icmp_echo("9.9.9.9", "10.1.0.5", 7, reply=True)),
    ("ipv6 ping", icmp_echo("10::5", "2001:db8::9", 7), icmp_echo("30::1", "2001:db8::9", 7),
     icmp_echo("2001:db8::9", "30::1", 7, reply=True), icmp_echo("2001:db8::9", "10::5", 7, reply=True)),
]

@pytest.mark.parametrize("what,fwd,fwd_out,ret,ret_out", TABLE, ids=[t[0] for t in TABLE])
def test_snat_both_ways(what, fwd, fwd_out, ret, ret_out):
    h = Harness(CONF)
    h.send(fwd, "tap0").expect(fwd_out)
    h.send(ret, "eth1").expect(ret_out)


def test_only_listed_interfaces_are_snatted():
    h = Harness(CONF)
    f = udp("10.1.0.5", 33333, "9.9.9.9", 53)
    h.send(f, "eth0").expect_pass(f)


def test_excluded_prefixes_keep_the_source():
    h = Harness(CONF)
    for f in (udp("10.1.0.5", 1, "20.0.0.7", 53), udp("10::5", 1, "20::7", 53), udp("10.1.0.5", 1, "8.8.8.8", 53)):
        h.send(f, "tap0").expect_pass(f)
    # and the flow stays in the fast path (a tracked session without rewrite)
    h.send(udp("10.1.0.5", 1, "20.0.0.7", 53), "tap0")
    assert h.counter("pass_no_snat") == 4
    assert h.counter("session_miss") == 3


def test_exclusion_matched_after_translation():
    """A pod behind tap0 reaching a vip: backend 20.0.0.1 is excluded (no
    SNAT), backend 40.0.0.1 is not (SNAT)."""
    h = Harness(CONF)
    results = set()
    for i in range(40):
        h.send(tcp(f"10.1.0.{i + 1}", 40000, "30.0.0.2", 80), "tap0")
        ipp = dpkt.ethernet.Ethernet(h.out).data
        results.add((str(ipaddress.ip_address(ipp.dst)), str(ipaddress.ip_address(ipp.src)) == "30.0.0.1"))
    assert results == {("20.0.0.1", False), ("40.0.0.1", True)}


def test_ports_allocated_per_destination():
    h = Harness(CONF)
    # two pods, same source port, same destination: second gets another port
    h.send(udp("10.1.0.5", 5000, "9.9.9.9", 53), "tap0").expect(udp("30.0.0.1", 5000, "9.9.9.9", 53))
    h.send(udp("10.1.0.6", 5000, "9.9.9.9", 53), "tap0")
    p2 = sport_of(h.out)
    assert p2 != 5000 and 1024 <= p2 <= 65535
    h.send(udp("9.9.9.9", 53, "30.0.0.1", p2), "eth1").expect(udp("9.9.9.9", 53, "10.1.0.6", 5000))
    # same source port to other destinations (address or port): kept
    h.send(udp("10.1.0.6", 5000, "9.9.9.10", 53), "tap0").expect(udp("30.0.0.1", 5000, "9.9.9.10", 53))
    h.send(udp("10.1.0.7", 5000, "9.9.9.9", 54), "tap0").expect(udp("30.0.0.1", 5000, "9.9.9.9", 54))


def test_port_exhaustion_towards_one_destination_drops_and_counts():
    h = Harness(CONF + "\n[sessions]\nmax = 70000\n")
    # Clients all use source port 80: the first flow keeps it, every later
    # one takes one of the 64512 ports 1024-65535 towards 9.9.9.9:53.
    base = int(ipaddress.IPv4Address("10.1.0.1"))
    frames = [udp(str(ipaddress.IPv4Address(base + i)), 80, "9.9.9.9", 53) for i in range(1 + 64512 + 1)]
    first = h.run(frames[:1], "tap0")
    assert first[0][0] == 0
    for k in range(1, len(frames) - 1, 256):
        res = h.run(frames[k:min(k + 256, len(frames) - 1)], "tap0")
        assert all(v == 0 for v, _, _ in res)
    ports = {s.new_sport for s in h.core.sessions()}
    assert len(ports) == 64513 and 80 in ports and min(p for p in ports if p != 80) >= 1024
    h.send(frames[-1], "tap0").expect_drop("drop_ports_exhausted")
    assert h.counter("drop_ports_exhausted") == 1
    # other destinations are not affected (per-destination allocation)
    h.send(udp("10.200.0.1", 80, "9.9.9.9", 54), "tap0").expect(udp("30.0.0.1", 80, "9.9.9.9", 54))


@pytest.mark.parametrize("make", [tcp, udp], ids=["tcp", "udp"])
def test_a_senders_port_0_is_not_kept(make):
    """Port 0 is no port: SNAT gives the flow one of its own (found by the
    differential fuzz: a free preferred port was kept whatever it was).
    An ICMP identifier 0 is kept."""
    h = Harness(CONF)
    h.send(make("10.1.0.5", 0, "9.9.9.9", 53), "tap0")
    assert h.last[1] == "translated"
    assert sport_of(h.out) >= 1024
    h.send(icmp_echo("10.1.0.5", "9.9.9.9", 0), "tap0").expect(icmp_echo("30.0.0.1", "9.9.9.9", 0))


def test_icmp_identifier_reallocated_on_collision():
    h = Harness(CONF)
    h.send(icmp_echo("10.1.0.5", "9.9.9.9", 7), "tap0").expect(icmp_echo("30.0.0.1", "9.9.9.9", 7))
    h.send(icmp_echo("10.1.0.6", "9.9.9.9", 7), "tap0")
    new_id = dpkt.ethernet.Ethernet(h.out).data.data.data.id
    assert new_id != 7
    h.send(icmp_echo("9.9.9.9", "30.0.0.1", new_id, reply=True), "eth1").expect(
        icmp_echo("9.9.9.9", "10.1.0.6", 7, reply=True))


def test_reply_without_session_to_snat_address_passes():
    h = Harness(CONF)
    f = udp("9.9.9.9", 53, "30.0.0.1", 12345)
    h.send(f, "eth1").expect_pass(f)


def test_a_restored_snat_session_is_steered_back_when_its_address_is_the_hosts():
    """The live runtime steers replies to host-address SNAT flows to itself
    (XDP `ports` map, fed by on_host_source); after a restart, the restored
    sessions must be reported the same way, or their replies go to the host."""
    old = Harness(CONF)
    old.send(udp("10.1.0.5", 33333, "9.9.9.9", 53), iface="tap0").expect(udp("30.0.0.1", 33333, "9.9.9.9", 53))
    saved = old.core.export_sessions()
    new = Harness(CONF, now=old.now + 1)
    new.core.host_sources = frozenset({ipaddress.ip_address("30.0.0.1").packed})
    steered = []
    new.core.on_host_source = lambda added, addr, proto, port: steered.append((added, str(addr), proto, port))
    assert new.core.import_sessions(saved, new.now) == (1, 0, 0)
    assert steered == [(True, "30.0.0.1", 17, 33333)]
    new.send(udp("9.9.9.9", 53, "30.0.0.1", 33333)).expect(udp("9.9.9.9", 53, "10.1.0.5", 33333))


HAIRPIN = """
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.5 5353"]
[[translation]]
proto = "udp"
vip = "30.0.0.3"
port = 53
backends = ["->40.0.0.1 5353"]
[[translation]]
proto = "udp"
vip = "30::2"
port = 53
backends = ["->20::5 5353"]
"""


def _link(net: str, own: str) -> tuple:
    n = ipaddress.ip_network(net)
    mask = int(n.netmask)
    return (n.version, int(n.network_address), mask, ipaddress.ip_address(own).packed)


# (what, in on, client's frame, out as, backend's reply, back as)
HAIRPIN_TABLE = [
    ("client and backend share eth0's link", "eth0",
     udp("20.0.0.7", 4000, "30.0.0.2", 53), udp("20.0.0.254", 4000, "20.0.0.5", 5353),
     udp("20.0.0.5", 5353, "20.0.0.254", 4000), udp("30.0.0.2", 53, "20.0.0.7", 4000)),
    ("a backend reaching itself", "eth0",
     udp("20.0.0.5", 4000, "30.0.0.2", 53), udp("20.0.0.254", 4000, "20.0.0.5", 5353),
     udp("20.0.0.5", 5353, "20.0.0.254", 4000), udp("30.0.0.2", 53, "20.0.0.5", 4000)),
    ("ipv6", "eth0",
     udp("20::7", 4000, "30::2", 53), udp("20::fe", 4000, "20::5", 5353),
     udp("20::5", 5353, "20::fe", 4000), udp("30::2", 53, "20::7", 4000)),
]


@pytest.mark.parametrize("what,iface,fwd,fwd_out,ret,ret_out", HAIRPIN_TABLE, ids=[t[0] for t in HAIRPIN_TABLE])
def test_hairpin_flows_come_from_the_interfaces_address(what, iface, fwd, fwd_out, ret, ret_out):
    """A backend on the client's own link would answer the client directly,
    past the appliance, and the client would drop a reply from the backend's
    address: such flows get the link's own address of the appliance as
    source (the VPP k8s policy's hairpin SNAT, for any shared link)."""
    h = Harness(HAIRPIN)
    h.core.links = {"eth0": (_link("20.0.0.0/24", "20.0.0.254"), _link("20::/64", "20::fe"))}
    h.send(fwd, iface).expect(fwd_out)
    h.send(ret, iface).expect(ret_out)
    assert h.core.statistics().hairpin_flows == 1


def test_no_hairpin_when_the_backend_or_client_is_elsewhere():
    h = Harness(HAIRPIN)
    h.core.links = {"eth0": (_link("20.0.0.0/24", "20.0.0.254"),), "eth1": (_link("10.0.0.0/24", "10.0.0.1"),)}
    h.send(udp("20.0.0.7", 4000, "30.0.0.3", 53), "eth0").expect(udp("20.0.0.7", 4000, "40.0.0.1", 5353))
    h.send(udp("10.0.0.7", 4000, "30.0.0.2", 53), "eth1").expect(udp("10.0.0.7", 4000, "20.0.0.5", 5353))
    h.send(udp("9.9.9.9", 4000, "30.0.0.2", 53), "eth0").expect(udp("9.9.9.9", 4000, "20.0.0.5", 5353))
    assert h.core.statistics().hairpin_flows == 0


class Steering:
    """The XDP `ports` map as _HostPorts drives it."""

    def __init__(self):
        self.ports = set()

    def add_port(self, p):
        self.ports.add(p)

    def remove_port(self, p):
        self.ports.discard(p)

    def set_host_ports(self, ports):
        self.ports = set(ports)


def _steered(h: Harness) -> list:
    h.core.host_sources = frozenset({ipaddress.ip_address("30.0.0.1").packed})
    events = []
    h.core.on_host_source = lambda added, addr, proto, port: events.append((added, str(addr), proto, port))
    return events


def test_a_flow_that_finds_its_old_session_expired_hears_of_it_first():
    """The lookup frees the expired session and queues its event; the new
    session, on the same SNAT port, must be reported after that removal, or
    a runtime keeping one XDP entry per port drops the new flow's replies
    to the kernel (seen live: ab through a vip stalled on SYN-SENT)."""
    h = Harness(CONF)
    steered = _steered(h)
    flow = udp("10.1.0.5", 33333, "9.9.9.9", 53)
    h.send(flow, "tap0").expect(udp("30.0.0.1", 33333, "9.9.9.9", 53))
    h.advance(31)                                       # past the UDP timeout, before any scan
    h.send(flow, "tap0").expect(udp("30.0.0.1", 33333, "9.9.9.9", 53))
    assert h.counter("session_expired_lazy") == 1
    entry = ("30.0.0.1", 17, 33333)
    assert steered == [(True, *entry), (False, *entry), (True, *entry)]


def test_sessions_to_different_destinations_share_a_snat_port_and_its_steering():
    """Per-destination allocation keeps the source port for both flows, so
    both are steered by one (address, proto, port) entry: the runtime counts
    sessions per entry (_HostPorts) and removes it with the last one."""
    h = Harness(CONF)
    steering = Steering()
    host_ports = _HostPorts(steering)
    h.core.host_sources = frozenset({ipaddress.ip_address("30.0.0.1").packed})
    h.core.on_host_source = lambda added, addr, proto, port: host_ports.session(added, (str(addr), proto, port))
    h.send(udp("10.1.0.5", 33333, "9.9.9.9", 53), "tap0").expect(udp("30.0.0.1", 33333, "9.9.9.9", 53))
    h.advance(20)
    h.send(udp("10.1.0.5", 33333, "8.9.9.9", 53), "tap0").expect(udp("30.0.0.1", 33333, "8.9.9.9", 53))
    entry = ("30.0.0.1", 17, 33333)
    assert steering.ports == {entry} and list(host_ports) == [entry]
    h.advance(15)                                       # the first flow's session expires, the second's not
    h.core.expire(h.now, budget=1 << 20)
    assert h.counter("session_expired_scan") == 1
    assert steering.ports == {entry}, "the second flow's replies must still come to the appliance"
    h.send(udp("8.9.9.9", 53, "30.0.0.1", 33333), "eth1").expect(udp("8.9.9.9", 53, "10.1.0.5", 33333))
    h.advance(31)
    h.core.expire(h.now, budget=1 << 20)
    assert steering.ports == set() and list(host_ports) == []


def test_a_session_ending_on_a_real_translations_port_leaves_it_steered():
    steering = Steering()
    host_ports = _HostPorts(steering)
    real = ("10.0.0.1", 17, 53)                       # a `real` udp translation on a host address
    host_ports.sync(frozenset({"10.0.0.1"}), {real})
    host_ports.session(True, real)                    # a SNAT session kept source port 53
    host_ports.session(True, ("10.0.0.1", 17, 4000))
    host_ports.session(False, real)
    host_ports.session(False, ("10.0.0.1", 17, 4000))
    assert steering.ports == {real}
    host_ports.session(True, ("10.0.0.1", 6, 5000))
    host_ports.sync(frozenset({"10.0.0.2"}), set())   # the address is no longer the host's
    assert steering.ports == set()
