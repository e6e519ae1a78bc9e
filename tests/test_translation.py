"""Translations: vip and real, the four rewrites, load balancing. Tables of
packets: (what, frame in, expected frame out, reply, expected reply out)."""

import collections
import ipaddress

import dpkt
import pytest

from packets import Harness, icmp_echo, tcp, udp

SEED = """
flow_hash_seed = 1234
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
[[translation]]
proto = "tcp"
real = "30.0.0.3"
port = 80
backends = ["1.2.3.4->20.0.0.1 8080"]
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.5"]
[[translation]]
proto = "tcp"
vip = "30::2"
port = 80
backends = ["->20::1 8080"]
[[translation]]
proto = "udp"
real = "30::3"
port = 53
backends = ["30::3 5300->20::5 5353"]
[[translation]]
proto = "icmp"
vip = "30.0.0.9"
backends = ["->20.0.0.9"]
"""

TABLE = [
    ("seed vip example: tcp 30.0.0.2:80 -> 20.0.0.1:8080",
     tcp("10.0.0.1", 40000, "30.0.0.2", 80), tcp("10.0.0.1", 40000, "20.0.0.1", 8080),
     tcp("20.0.0.1", 8080, "10.0.0.1", 40000, 0x12), tcp("30.0.0.2", 80, "10.0.0.1", 40000, 0x12)),
    ("seed real example with source rewrite 1.2.3.4",
     tcp("10.0.0.1", 40001, "30.0.0.3", 80), tcp("1.2.3.4", 40001, "20.0.0.1", 8080),
     tcp("20.0.0.1", 8080, "1.2.3.4", 40001, 0x12), tcp("30.0.0.3", 80, "10.0.0.1", 40001, 0x12)),
    ("udp backend without port keeps the destination port",
     udp("10.0.0.1", 5000, "30.0.0.2", 53), udp("10.0.0.1", 5000, "20.0.0.5", 53),
     udp("20.0.0.5", 53, "10.0.0.1", 5000), udp("30.0.0.2", 53, "10.0.0.1", 5000)),
    ("ipv6 vip",
     tcp("10::1", 40000, "30::2", 80), tcp("10::1", 40000, "20::1", 8080),
     tcp("20::1", 8080, "10::1", 40000, 0x12), tcp("30::2", 80, "10::1", 40000, 0x12)),
    ("ipv6 real with source address and preferred source port",
     udp("10::1", 6000, "30::3", 53), udp("30::3", 5300, "20::5", 5353),
     udp("20::5", 5353, "30::3", 5300), udp("30::3", 53, "10::1", 6000)),
    ("icmp echo to a vip with an icmp translation",
     icmp_echo("10.0.0.1", "30.0.0.9", 99), icmp_echo("10.0.0.1", "20.0.0.9", 99),
     icmp_echo("20.0.0.9", "10.0.0.1", 99, reply=True), icmp_echo("30.0.0.9", "10.0.0.1", 99, reply=True)),
]


@pytest.mark.parametrize("what,fwd,fwd_out,ret,ret_out", TABLE, ids=[t[0] for t in TABLE])
def test_translation_both_ways(what, fwd, fwd_out, ret, ret_out):
    h = Harness(SEED)
    h.send(fwd).expect(fwd_out)
    h.send(ret, "eth1").expect(ret_out)
    # and the flow keeps using its session
    h.send(fwd).expect(fwd_out)
    assert h.core.statistics().sessions == 1


def test_vip_drops_unknown_port_and_protocol():
    h = Harness(SEED)
    h.send(tcp("10.0.0.1", 1, "30.0.0.2", 443)).expect_drop("drop_no_translation")
    h.send(udp("10.0.0.1", 1, "30.0.0.2", 80)).expect_drop("drop_no_translation")
    h.send(icmp_echo("10.0.0.1", "30.0.0.2", 5)).expect_drop("drop_no_translation")
    h.send(tcp("10::1", 1, "30::2", 443)).expect_drop("drop_no_translation")
    assert h.counter("drop_no_translation") == 4


def test_real_address_other_ports_untouched():
    h = Harness(SEED)
    for frame in (tcp("10.0.0.1", 1, "30.0.0.3", 22), udp("10.0.0.1", 1, "30.0.0.3", 80),
                  icmp_echo("10.0.0.1", "30.0.0.3", 5), udp("10::1", 1, "30::3", 54)):
        h.send(frame).expect_pass(frame)
    assert h.core.statistics().sessions == 0


def test_transit_traffic_unchanged():
    h = Harness(SEED)
    frame = tcp("10.0.0.1", 1, "40.0.0.1", 80)
    h.send(frame).expect_pass(frame)
    assert h.counter("pass_no_match") == 1


def test_return_tuple_collision_rewrites_source_port():
    """Two vips share a backend; the same client port to both would give the
    same return 5-tuple, so the second flow gets another source port."""
    h = Harness("""
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
[[translation]]
proto = "tcp"
vip = "30.0.0.4"
port = 80
backends = ["->20.0.0.1 8080"]
""")
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80)).expect(tcp("10.0.0.1", 40000, "20.0.0.1", 8080))
    out = h.send(tcp("10.0.0.1", 40000, "30.0.0.4", 80)).out
    seg = dpkt.ethernet.Ethernet(out).data.data
    assert seg.dport == 8080 and seg.sport != 40000 and 1024 <= seg.sport <= 65535
    h.send(tcp("20.0.0.1", 8080, "10.0.0.1", seg.sport, 0x12)).expect(tcp("30.0.0.4", 80, "10.0.0.1", 40000, 0x12))
    h.send(tcp("20.0.0.1", 8080, "10.0.0.1", 40000, 0x12)).expect(tcp("30.0.0.2", 80, "10.0.0.1", 40000, 0x12))


def _backends_chosen(seed, n=400):
    h = Harness(f"""
flow_hash_seed = {seed}
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1", "->20.0.0.2", "->20.0.0.3", "->20.0.0.4"]
""")
    chosen = []
    for i in range(n):
        h.send(tcp(f"10.0.{i // 200}.{i % 200 + 1}", 1024 + i, "30.0.0.2", 80))
        chosen.append(str(ipaddress.ip_address(dpkt.ethernet.Ethernet(h.out).data.dst)))
    return chosen


def test_flow_hash_spreads_equally_and_seed_is_deterministic():
    a = _backends_chosen(1234)
    counts = collections.Counter(a)
    assert set(counts) == {"20.0.0.1", "20.0.0.2", "20.0.0.3", "20.0.0.4"}
    # 400 flows over 4 backends: each within 100 +- 35 (binomial sd ~8.7, 4 sd)
    assert all(65 <= c <= 135 for c in counts.values()), counts
    assert _backends_chosen(1234) == a, "same seed, same flows -> same backends (appliances agree)"
    assert _backends_chosen(99) != a, "another seed spreads differently"


def test_sessions_keep_rewrite_after_translation_changes():
    from appliance import parse_config

    h = Harness(SEED)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80)).expect(tcp("10.0.0.1", 40000, "20.0.0.1", 8080))
    h.core.apply_config(parse_config(SEED.replace("->20.0.0.1 8080", "->20.0.0.7 9090", 1)))
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, 0x10)).expect(tcp("10.0.0.1", 40000, "20.0.0.1", 8080, 0x10))
    h.send(tcp("10.0.0.2", 40000, "30.0.0.2", 80)).expect(tcp("10.0.0.2", 40000, "20.0.0.7", 9090))


RELOAD_BEFORE = """
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353"]
[[translation]]
proto = "udp"
vip = "30.0.0.4"
port = 53
backends = ["->20.0.0.1"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
[[translation]]
proto = "icmp"
vip = "30.0.0.9"
backends = ["->20.0.0.1"]
[[translation]]
proto = "udp"
vip = "30.0.0.3"
port = 53
backends = ["->20.0.0.3"]
"""
# 20.0.0.1 is replaced by 20.0.0.2 everywhere; 30.0.0.3's translation is gone;
# 30.0.0.4's backend stays (listed again, in a different order)
RELOAD_AFTER = """
[[translation]]
proto = "udp"
vip = "30.0.0.4"
port = 53
backends = ["->20.0.0.7", "->20.0.0.1"]
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.2 5353"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.2 8080"]
[[translation]]
proto = "icmp"
vip = "30.0.0.9"
backends = ["->20.0.0.2"]
"""

# (what, frame, out before the reload, out of the same frame after it)
RELOAD_TABLE = [
    ("udp session to a removed backend: removed, the next packet picks a current one",
     udp("10.0.0.1", 5000, "30.0.0.2", 53), udp("10.0.0.1", 5000, "20.0.0.1", 5353),
     udp("10.0.0.1", 5000, "20.0.0.2", 5353)),
    ("icmp echo session to a removed backend: likewise",
     icmp_echo("10.0.0.1", "30.0.0.9", 7), icmp_echo("10.0.0.1", "20.0.0.1", 7),
     icmp_echo("10.0.0.1", "20.0.0.2", 7)),
    ("tcp session to a removed backend: kept until it ends (graceful termination)",
     tcp("10.0.0.1", 40000, "30.0.0.2", 80), tcp("10.0.0.1", 40000, "20.0.0.1", 8080),
     tcp("10.0.0.1", 40000, "20.0.0.1", 8080)),
    ("udp session whose backend is still configured (port kept): kept",
     udp("10.0.0.1", 5001, "30.0.0.4", 53), udp("10.0.0.1", 5001, "20.0.0.1", 53),
     udp("10.0.0.1", 5001, "20.0.0.1", 53)),
]


def test_reload_removes_connectionless_sessions_to_removed_backends():
    from appliance import parse_config

    h = Harness(RELOAD_BEFORE)
    for _, frame, before, _ in RELOAD_TABLE:
        h.send(frame).expect(before)
    h.send(udp("10.0.0.1", 5002, "30.0.0.3", 53)).expect(udp("10.0.0.1", 5002, "20.0.0.3", 53))
    h.core.apply_config(parse_config(RELOAD_AFTER))
    h.core.expire(h.now)
    # udp and icmp to 20.0.0.1, udp of the removed translation
    assert h.core.statistics().counters["session_removed"] == 3
    for what, frame, _, after in RELOAD_TABLE:
        h.send(frame)
        assert h.last[2] == after, what
    # the removed translation's flow is no longer translated
    h.send(udp("10.0.0.1", 5002, "30.0.0.3", 53)).expect_pass(udp("10.0.0.1", 5002, "30.0.0.3", 53))


def test_the_stale_session_sweep_runs_in_slices_until_done():
    from appliance import parse_config
    from appliance.nat._expiry import SCAN_INTERVAL, STALE_SWEEP_BUDGET, STALE_SWEEP_INTERVAL

    h = Harness(RELOAD_BEFORE)
    n = 2 * STALE_SWEEP_BUDGET + 100
    h.run([udp("10.0.0.1", 10000 + i, "30.0.0.2", 53) for i in range(n)])
    assert h.core.statistics().sessions == n
    h.core.apply_config(parse_config(RELOAD_AFTER))
    removed = lambda: h.core.statistics().counters["session_removed"]
    ticks = 0
    while h.core.next_deadline(h.now) - h.now == pytest.approx(STALE_SWEEP_INTERVAL):   # a sweep is pending
        h.core.expire(h.now)
        ticks += 1
        assert removed() <= ticks * STALE_SWEEP_BUDGET   # one slice per tick
    assert (ticks, removed(), h.core.statistics().sessions) == (3, n, 0)
    assert h.core.next_deadline(h.now) - h.now == pytest.approx(SCAN_INTERVAL)


def test_reply_in_the_same_batch_as_the_first_packet():
    """C stops at a new flow so the reply later in the batch finds its session."""
    h = Harness(SEED)
    res = h.run([tcp("10.0.0.1", 40000, "30.0.0.2", 80), tcp("20.0.0.1", 8080, "10.0.0.1", 40000, 0x12),
                 tcp("10.0.0.1", 40000, "30.0.0.2", 80, 0x10)])
    assert [d for _, _, d in res] == [tcp("10.0.0.1", 40000, "20.0.0.1", 8080),
                                      tcp("30.0.0.2", 80, "10.0.0.1", 40000, 0x12),
                                      tcp("10.0.0.1", 40000, "20.0.0.1", 8080, 0x10)]
