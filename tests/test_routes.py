"""The forwarding step's tables (io.c): the kernel's routes, read from
`ip -j` (_kernel._route), and what a frame from src to dst resolves to
(io_route_resolve, the lookup the datapath does once per new flow)."""

import collections
import ipaddress

import pytest

from appliance import _kernel
from appliance.io_uring._binding import ffi, lib

MAC = {k: bytes([2, 0, 0, 0, 0, k]) for k in range(1, 10)}
NO_ROUTE, NO_NEIGH, LOCAL, BLACKHOLE = (-lib.IO_C_TO_KERNEL_NO_ROUTE, -lib.IO_C_TO_KERNEL_NO_NEIGH,
                                        -lib.IO_C_TO_KERNEL_LOCAL, -lib.IO_C_DROP_BLACKHOLE)
KINDS = {"unicast": lib.IO_ROUTE_FORWARD, "local": lib.IO_ROUTE_LOCAL, "blackhole": lib.IO_ROUTE_BLACKHOLE,
         "unreachable": lib.IO_ROUTE_UNREACHABLE, "prohibit": lib.IO_ROUTE_PROHIBIT}


class Tables:
    """An io_ctx without sockets: routes as (prefix, kind, [(gateway, port, weight)])."""

    def __init__(self) -> None:
        self.ctx = ffi.gc(lib.io_ctx_create(-1, b"\2\0\0\0\0\xff", 16, 1, 0), lib.io_ctx_destroy)

    def route(self, prefix: str, hops=(), kind: str = "unicast") -> int:
        net = ipaddress.ip_interface(prefix)   # host bits may be set: io_route_add masks them
        gws = ffi.new("uint8_t[]", 16 * max(len(hops), 1))
        for i, (gw, _, _) in enumerate(hops):
            if gw:
                packed = ipaddress.ip_address(gw).packed
                gws[16 * i:16 * i + len(packed)] = packed
        ports = ffi.new("int[]", [p for _, p, _ in hops] or [0])
        weights = ffi.new("uint32_t[]", [w for _, _, w in hops] or [0])
        return lib.io_route_add(self.ctx, net.version, net.ip.packed, net.network.prefixlen,
                                KINDS.get(kind, lib.IO_ROUTE_KERNEL), gws, ports, weights, len(hops))

    def neigh(self, addr: str, port: int, mac: bytes | None) -> int:
        a = ipaddress.ip_address(addr)
        return lib.io_neigh_set(self.ctx, a.version, a.packed, port, mac if mac else ffi.NULL)

    def resolve(self, dst: str, src: str | None = None):
        """(result, port, MAC, ICMP error for translated frames or None)"""
        d = ipaddress.ip_address(dst)
        s = ipaddress.ip_address(src or ("10.9.9.9" if d.version == 4 else "fd09::9"))
        port, mac, unreach = ffi.new("int *"), ffi.new("uint8_t[6]"), ffi.new("int *")
        rc = lib.io_route_resolve(self.ctx, d.version, s.packed, d.packed, port, mac, unreach)
        return rc, port[0], bytes(mac) if rc == 0 else None, unreach[0] if unreach[0] >= 0 else None


@pytest.fixture
def tables():
    t = Tables()
    t.route("0.0.0.0/0", [("10.0.0.1", 0, 1)])
    t.route("10.0.0.0/24", [(None, 0, 1)])
    t.route("20.0.0.0/16", [(None, 1, 1)])
    t.route("20.0.5.0/24", [("10.0.0.7", 0, 1)])
    t.route("20.0.5.9/32", [(None, 2, 1)])
    t.route("30.0.0.0/8", [("30.255.0.1", -1, 1)])          # through an interface that is not ours
    t.route("40.0.0.0/16", kind="blackhole")
    t.route("40.1.0.0/16", kind="unreachable")
    t.route("40.2.0.0/16", kind="prohibit")
    t.route("40.3.0.0/16", kind="throw")
    t.route("10.0.0.1/32", kind="local")
    t.route("fd20::/64", [("fe80::1", 1, 1)])                # link-local gateways, the same on two links
    t.route("fd21::/64", [("fe80::1", 2, 1)])
    t.route("fd40::/64", kind="unreachable")
    t.route("fd41::/64", kind="prohibit")
    for addr, port, mac in (("10.0.0.1", 0, MAC[1]), ("10.0.0.7", 0, MAC[7]), ("20.0.3.3", 1, MAC[3]),
                            ("20.0.5.9", 2, MAC[9]), ("10.0.0.9", 0, None),
                            ("fe80::1", 1, MAC[4]), ("fe80::1", 2, MAC[5])):
        assert t.neigh(addr, port, mac) == 0
    return t


ICMP_NO_ROUTE, ICMP_HOST = lib.ICMP_ERR_NO_ROUTE, lib.ICMP_ERR_HOST_UNREACH
ICMP_ROUTE_UNREACH, ICMP_PROHIBITED = lib.ICMP_ERR_ROUTE_UNREACH, lib.ICMP_ERR_PROHIBITED


@pytest.mark.parametrize("dst, want", [
    ("20.0.3.3", (0, 1, MAC[3], None)),                 # on-link /16
    ("20.0.5.1", (0, 0, MAC[7], None)),                 # the /24 via 10.0.0.7 beats the /16
    ("20.0.5.9", (0, 2, MAC[9], None)),                 # the /32 beats the /24 and the /16
    ("20.0.4.4", (NO_NEIGH, 1, None, None)),            # on-link, not resolved yet: the kernel resolves
    ("99.0.0.1", (0, 0, MAC[1], None)),                 # default route
    ("10.0.0.9", (NO_NEIGH, 0, None, ICMP_HOST)),       # the kernel failed to resolve it
    ("10.0.0.1", (LOCAL, -1, None, None)),
    ("30.1.2.3", (NO_ROUTE, -1, None, None)),           # the kernel forwards it
    ("40.0.1.1", (BLACKHOLE, -1, None, None)),
    ("40.1.1.1", (NO_ROUTE, -1, None, ICMP_ROUTE_UNREACH)),
    ("40.2.1.1", (NO_ROUTE, -1, None, ICMP_PROHIBITED)),
    ("40.3.1.1", (NO_ROUTE, -1, None, None)),           # throw: the kernel's rules decide
    ("fd20::5", (0, 1, MAC[4], None)),                  # fe80::1 on port 1 ...
    ("fd21::5", (0, 2, MAC[5], None)),                  # ... is another neighbour than fe80::1 on port 2
    ("fd22::5", (NO_ROUTE, -1, None, ICMP_NO_ROUTE)),   # no route at all (no IPv6 default)
    ("fd40::5", (NO_ROUTE, -1, None, ICMP_ROUTE_UNREACH)),
    ("fd41::5", (NO_ROUTE, -1, None, ICMP_PROHIBITED)),
])
def test_a_frame_resolves_as_the_kernel_would_forward_it(tables, dst, want):
    assert tables.resolve(dst) == want


def test_the_first_route_given_for_a_prefix_wins():
    """_kernel.snapshot() gives routes lowest metric first."""
    t = Tables()
    assert t.route("20.0.0.0/24", [(None, 1, 1)]) == 0
    assert t.route("20.0.0.0/24", [(None, 2, 1)]) == 1
    assert t.route("20.0.0.7/24", [(None, 2, 1)]) == 1       # the same prefix, host bits set
    t.neigh("20.0.0.5", 1, MAC[1])
    t.neigh("20.0.0.5", 2, MAC[2])
    assert t.resolve("20.0.0.5")[:3] == (0, 1, MAC[1])


def test_bad_routes_are_refused():
    t = Tables()
    assert t.route("20.0.0.0/24") == -22                     # unicast without a next hop (EINVAL)
    bad = ffi.new("int[]", [0])
    assert lib.io_route_add(t.ctx, 4, bytes(4), 33, lib.IO_ROUTE_FORWARD, ffi.NULL, bad, ffi.NULL, 1) == -22
    assert lib.io_route_add(t.ctx, 5, bytes(16), 8, lib.IO_ROUTE_FORWARD, ffi.NULL, bad, ffi.NULL, 1) == -22


def test_many_routes_as_a_container_host_has():
    """One /32 per pod plus a few shorter prefixes (Calico, a routed pod
    network); the table once held 256 routes and dropped the rest."""
    t = Tables()
    t.route("0.0.0.0/0", [("10.0.0.1", 0, 1)])
    t.neigh("10.0.0.1", 0, MAC[1])
    for i in range(20000):
        a = ipaddress.ip_address("100.64.0.0") + i
        assert t.route(f"{a}/32", [(None, 1 + i % 3, 1)]) == 0
    for i in range(0, 20000, 997):
        a = str(ipaddress.ip_address("100.64.0.0") + i)
        t.neigh(a, 1 + i % 3, MAC[1 + i % 3])
        assert t.resolve(a)[:3] == (0, 1 + i % 3, MAC[1 + i % 3]), a
    assert t.resolve("100.64.200.1")[:3] == (0, 0, MAC[1])   # past the /32s: the default route
    lib.io_routes_clear(t.ctx)
    assert t.resolve("100.64.0.5")[0] == NO_ROUTE


def test_multipath_spreads_flows_by_weight_and_keeps_each_flow_on_one_path():
    t = Tables()
    t.route("20.0.0.0/16", [("10.0.1.1", 1, 1), ("10.0.2.1", 2, 3)])
    t.neigh("10.0.1.1", 1, MAC[1])
    t.neigh("10.0.2.1", 2, MAC[2])
    picks = collections.Counter()
    for i in range(4000):
        src = str(ipaddress.ip_address("192.168.0.0") + i)
        dst = f"20.0.{i % 7}.{i % 200 + 1}"
        rc, port, mac, _ = t.resolve(dst, src)
        assert rc == 0 and mac == MAC[port]
        assert t.resolve(dst, src)[1] == port                 # the same flow, the same path
        picks[port] += 1
    assert picks.keys() == {1, 2}
    assert 0.65 < picks[2] / 4000 < 0.85, picks               # weights 1:3


def test_a_dead_next_hop_is_skipped_and_a_gateway_of_the_other_family_is_the_kernels():
    r = _kernel._route({"dst": "20.0.0.0/16", "nexthops": [
        {"gateway": "10.0.1.1", "dev": "a1", "weight": 1, "flags": ["dead", "linkdown"]},
        {"gateway": "10.0.2.1", "dev": "a2", "weight": 2, "flags": []}]}, "-4")
    assert r.nexthops == (_kernel.Nexthop(ipaddress.ip_address("10.0.2.1"), "a2", 2),)
    r = _kernel._route({"dst": "20.0.0.0/16", "via": {"family": "inet6", "host": "fe80::1"}, "dev": "a1"}, "-4")
    assert r.nexthops == (_kernel.Nexthop(None, None, 1),)
    r = _kernel._route({"dst": "20.0.0.0/16", "gateway": "10.0.1.1", "dev": "a1", "flags": ["dead"]}, "-4")
    assert r.kind == "dead" and r.nexthops == ()


@pytest.mark.parametrize("entry, want", [
    ({"dst": "default", "gateway": "10.0.0.1", "dev": "a0", "flags": []},
     _kernel.Route(ipaddress.ip_network("0.0.0.0/0"), "unicast",
                   (_kernel.Nexthop(ipaddress.ip_address("10.0.0.1"), "a0"),))),
    ({"dst": "fd20::/64", "gateway": "fe80::1", "dev": "a1", "metric": 1024, "flags": [], "pref": "medium"},
     _kernel.Route(ipaddress.ip_network("fd20::/64"), "unicast",
                   (_kernel.Nexthop(ipaddress.ip_address("fe80::1"), "a1"),), 1024)),
    ({"dst": "10.0.0.0/24", "dev": "a0", "protocol": "kernel", "scope": "link", "prefsrc": "10.0.0.1"},
     _kernel.Route(ipaddress.ip_network("10.0.0.0/24"), "unicast", (_kernel.Nexthop(None, "a0"),))),
    ({"type": "blackhole", "dst": "40.0.0.0/16", "flags": []},
     _kernel.Route(ipaddress.ip_network("40.0.0.0/16"), "blackhole")),
    ({"type": "unreachable", "dst": "fd40::/64", "dev": "lo", "metric": 1024},
     _kernel.Route(ipaddress.ip_network("fd40::/64"), "unreachable", (), 1024)),
    ({"dst": "fd51::/64", "metric": 1024, "nexthops": [{"gateway": "fe80::1", "dev": "a1", "weight": 2},
                                                      {"gateway": "fe80::1", "dev": "a2", "weight": 1}]},
     _kernel.Route(ipaddress.ip_network("fd51::/64"), "unicast",
                   (_kernel.Nexthop(ipaddress.ip_address("fe80::1"), "a1", 2),
                    _kernel.Nexthop(ipaddress.ip_address("fe80::1"), "a2", 1)), 1024)),
    ({"type": "multicast", "dst": "ff00::/8", "dev": "a0"}, _kernel.Route(ipaddress.ip_network("ff00::/8"), "multicast")),
    ({"dst": "not-an-address"}, None),
])
def test_routes_as_ip_json_gives_them(entry, want):
    assert _kernel._route(entry, "-6" if ":" in str(entry.get("dst")) else "-4") == want


def test_routes_packed_off_the_datapath_load_as_given():
    """The runtime packs the kernel's routes in a worker thread
    (_pack_tables, into cffi arrays of struct io_route_entry etc.) and loads
    them with one C call (io_routes_load): the tables round-trip."""
    from appliance.runtime import _kernel_tables
    ip = ipaddress.ip_address
    routes = (
        _kernel.Route(ipaddress.ip_network("20.0.0.0/16"), "unicast",
                      (_kernel.Nexthop(ip("10.0.1.1"), "a1"), _kernel.Nexthop(ip("10.0.2.1"), "a2", 3))),
        _kernel.Route(ipaddress.ip_network("fd20::/64"), "unicast", (_kernel.Nexthop(ip("fe80::1"), "a2"),)),
        _kernel.Route(ipaddress.ip_network("30.0.0.0/8"), "unicast", (_kernel.Nexthop(None, "eth9"),)),
        _kernel.Route(ipaddress.ip_network("40.0.0.0/8"), "blackhole"),
        _kernel.Route(ipaddress.ip_network("50.0.0.0/8"), "dead"),
    )
    neighbours = tuple(_kernel.Neighbour(ip(a), dev, mac) for a, dev, mac in (
        ("10.0.1.1", "a1", MAC[1]), ("10.0.2.1", "a2", MAC[2]), ("fe80::1", "a2", MAC[5]),
        ("fe80::1", "eth9", MAC[6]),                          # not a data interface: not loaded
        ("10.0.1.9", "a1", None)))                            # FAILED
    snap = _kernel.Snapshot((), routes, neighbours, (), (), digest=1)
    packed = _kernel_tables._pack_tables(snap, {"a1": 1, "a2": 2})
    assert (packed.n_routes, packed.n_nexthops, packed.n_neighbours) == (5, 4, 4)
    r, h, n = packed.routes, packed.nexthops, packed.neighbours
    assert (bytes(r[1].prefix), r[1].family, r[1].plen, r[1].kind, r[1].n_nh) == (
        ip("fd20::").packed, 6, 64, lib.IO_ROUTE_FORWARD, 1)
    assert (bytes(r[0].prefix), r[0].family, r[3].kind, r[3].n_nh, r[4].kind) == (
        ip("20.0.0.0").packed + bytes(12), 4, lib.IO_ROUTE_BLACKHOLE, 0, lib.IO_ROUTE_KERNEL)
    assert [(bytes(x.gw[0:4]), x.port_id, x.weight) for x in (h[1], h[3])] == [
        (ip("10.0.2.1").packed, 2, 3), (bytes(4), -1, 1)]                 # no gateway; not a data interface
    assert [(bytes(e.addr[0:4]), bytes(e.mac), e.family, e.failed, e.port_id) for e in (n[0], n[3])] == [
        (ip("10.0.1.1").packed, MAC[1], 4, 0, 1), (ip("10.0.1.9").packed, bytes(6), 4, 1, 1)]
    t = Tables()
    assert lib.io_routes_load(t.ctx, packed.routes, packed.n_routes, packed.nexthops, packed.n_nexthops) == 0
    assert lib.io_neigh_load(t.ctx, packed.neighbours, packed.n_neighbours) == 0
    sizes = ffi.new("uint32_t[2]")
    lib.io_table_sizes(t.ctx, sizes, sizes + 1)
    assert (sizes[0], sizes[1]) == (5, 4)
    assert packed.neighbour_macs == {(1, ip("10.0.1.1")): MAC[1], (2, ip("10.0.2.1")): MAC[2],
                                     (2, ip("fe80::1")): MAC[5], (1, ip("10.0.1.9")): None}
    t.route("10.0.1.0/24", [(None, 1, 1)])
    assert t.resolve("10.0.1.9") == (NO_NEIGH, 1, None, ICMP_HOST)
    ports = {t.resolve(f"20.0.0.{i}", f"192.168.0.{i}")[1] for i in range(1, 60)}
    assert ports == {1, 2}
    assert t.resolve("fd20::9")[:3] == (0, 2, MAC[5])
    assert t.resolve("30.1.1.1")[:2] == (NO_ROUTE, -1)          # not a data interface: the kernel's
    assert t.resolve("40.1.1.1")[0] == BLACKHOLE
    assert t.resolve("50.1.1.1") == (NO_ROUTE, -1, None, None)  # every next hop down: the kernel's
    # snapshots compare by digest
    assert snap == _kernel.Snapshot((), (), (), (), (), digest=1) and snap != _kernel.Snapshot((), routes, (), (), (), 2)


def test_a_namespace_without_ipv4_has_a_snapshot(tmp_path):
    """IPv4's local table exists only once the namespace has an IPv4
    address (lo down has none); dumping it then fails, which must not fail
    the snapshot."""
    import subprocess
    import sys
    import uuid
    ns = "t" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                            "from appliance import _kernel; print(len(_kernel.snapshot().routes))"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns])
