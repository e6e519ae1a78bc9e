"""Table pressure (issue 15): near full, the session table makes room by
evicting tentative sessions (TCP before its handshake completes, other
flows without a reply), oldest first; answered sessions are never evicted
for a new flow. A fake clock; tables of 64 sessions (pressure from 60)."""

import pytest

from appliance import ConfigError, parse_config
from appliance.testing import Nat
from packets import tcp, udp

SYN, SYNACK, ACK = 0x02, 0x12, 0x10
CONF = """
[timeouts]
session = 30
tcp_syn = {syn}
[sessions]
max = {max}
[[translation]]
name = "web"
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
[[translation]]
name = "dns"
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353"]
"""


def nat(max=64, syn=60):
    return Nat(CONF.format(max=max, syn=syn))


def client(i):
    return f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def syn(n, i):
    return n.send(tcp(client(i), 40000, "30.0.0.2", 80, SYN))


def connect(n, i):
    """A completed handshake from client i: an established session."""
    assert syn(n, i), n.verdict
    n.send(tcp("20.0.0.1", 8080, client(i), 40000, SYNACK))
    n.send(tcp(client(i), 40000, "30.0.0.2", 80, ACK))
    assert n.session(tcp(client(i), 40000, "30.0.0.2", 80)).state == "established"


def alive(n, i, proto="tcp"):
    frame = tcp(client(i), 40000, "30.0.0.2", 80) if proto == "tcp" else udp(client(i), 5000, "30.0.0.2", 53)
    return n.session(frame) is not None


def test_a_syn_flood_evicts_its_own_oldest_half_open_sessions_and_established_ones_stay():
    n = nat()
    threshold = n.core.statistics().pressure_threshold
    assert threshold == 60
    for i in range(20):
        connect(n, i)
    for i in range(1000, 1000 + 10 * 64):          # the flood: ten times the table
        syn(n, i)
        assert n.verdict == "translated"           # each found room
    st = n.core.statistics()
    assert st.sessions == threshold and st.sessions_tentative == threshold - 20
    assert n.counter("session_evicted_half_open") == 20 + 10 * 64 - threshold
    assert n.counter("drop_session_full") == 0
    assert all(alive(n, i) for i in range(20)), "established sessions are never evicted"
    survivors = [i for i in range(1000, 1000 + 640) if alive(n, i)]
    assert survivors == list(range(1640 - 40, 1640)), "the oldest went first"
    connect(n, 5000)                               # a legitimate client during the flood
    assert alive(n, 5000)


def test_syn_received_and_mid_stream_pickups_count_as_half_open():
    n = nat()
    for i in range(30):                            # the backend answered, the client never did
        syn(n, i)
        n.send(tcp("20.0.0.1", 8080, client(i), 40000, SYNACK))
    for i in range(30, 60):                        # picked up without a SYN, no reply
        n.send(tcp(client(i), 40000, "30.0.0.2", 80, ACK))
    states = {s.state for s in n.sessions}
    assert states == {"syn-rcvd", "midstream"}
    syn(n, 100)
    assert n.counter("session_evicted_half_open") == 1 and not alive(n, 0) and alive(n, 1)


def test_unanswered_udp_is_evicted_and_answered_udp_is_not():
    n = nat()
    for i in range(30):                            # answered: DNS that works
        n.send(udp(client(i), 5000, "30.0.0.2", 53))
        n.send(udp("20.0.0.1", 5353, client(i), 5000))
    for i in range(30, 200):                       # a one-way flood
        n.send(udp(client(i), 5000, "30.0.0.2", 53))
    assert n.counter("session_evicted_unanswered") == 200 - 60
    assert all(alive(n, i, "udp") for i in range(30))
    assert [i for i in range(30, 200) if alive(n, i, "udp")] == list(range(170, 200))


def test_a_table_full_of_answered_sessions_refuses_new_flows_and_evicts_nothing():
    n = nat()
    for i in range(64):
        connect(n, i)
    syn(n, 64)
    assert n.verdict == "drop_session_full"
    assert n.counter("session_evicted_half_open") == 0 and all(alive(n, i) for i in range(64))


def test_evicted_sessions_are_ended_like_any_other_for_plugins_and_counts():
    n = nat()
    for i in range(61):
        syn(n, i)
    (ended,) = [s for s in n.expired if s.reason == "evicted"]
    assert (str(ended.src), ended.sport, ended.state) == (client(0), 40000, "syn-sent")
    assert n.backends("web").sessions == (60,)


def test_after_pressure_the_scanner_ends_tentative_sessions_idle_for_5_s():
    n = nat(syn=60)
    for i in range(20):
        connect(n, i)
    for i in range(100, 145):                      # the table reaches 60: pressure
        syn(n, i)
    n.send(udp(client(200), 5000, "30.0.0.2", 53))
    evicted = n.counter("session_evicted_half_open")
    assert evicted == 20 + 45 + 1 - 60
    n.advance(4)
    assert n.counter("session_evicted_half_open") == evicted, "not idle for 5 s yet"
    syn(n, 144)                                    # a retransmit keeps one fresh
    gone = n.advance(1.5)
    assert sorted(str(s.src) for s in gone) == sorted(client(i) for i in [*range(100 + evicted, 144), 200])
    assert {s.reason for s in gone} == {"evicted"}
    assert n.counter("session_evicted_unanswered") == 1
    assert alive(n, 144) and all(alive(n, i) for i in range(20))
    assert n.core.statistics().sessions == 21      # the flood is gone, seconds after it, not tcp_syn after
    n.advance(60)                                  # a minute without pressure: lifetimes as configured
    for i in range(300, 310):
        syn(n, i)
    n.advance(30)
    assert all(alive(n, i) for i in range(300, 310))


def test_without_pressure_tentative_sessions_live_their_lifetimes():
    n = nat(syn=60)
    for i in range(32):
        syn(n, i)
    n.advance(59)
    assert n.counter("session_evicted_half_open") == 0 and all(alive(n, i) for i in range(32))
    n.advance(1.5)
    assert not any(alive(n, i) for i in range(32))


def test_below_the_threshold_half_open_sessions_live_tcp_syn():
    n = nat(syn=20)
    for i in range(10):
        syn(n, i)
    n.advance(19)
    assert all(alive(n, i) for i in range(10)) and n.counter("session_evicted_half_open") == 0
    n.advance(1.5)
    assert not any(alive(n, i) for i in range(10))


def test_table_fill_in_statistics_and_metrics():
    from appliance._metrics import render

    n = nat()
    for i in range(20):
        connect(n, i)
    for i in range(100, 112):
        syn(n, i)
    d = n.core.statistics().as_dict()
    assert (d["sessions"], d["capacity"], d["fill"], d["sessions_tentative"], d["pressure_threshold"]) == (
        32, 64, 0.5, 12, 60)
    text = render({"nat": d, "io": {}, "xdp": {}, "sockets": [], "interfaces": {},
                   "kernel": {"snapshots": 0}, "config": {"reloads": 0, "rejected": 0}})
    for line in ("appliance_sessions_fill_ratio 0.5", "appliance_sessions_tentative 12",
                 "appliance_sessions_pressure_threshold 60", "appliance_nat_session_evicted_half_open_total 0"):
        assert line in text.splitlines(), line


@pytest.mark.parametrize("value, message", [
    (0, "must be at least 0.001 and at most 604800 seconds (7 days)"),
    ('"60"', 'expected a number, got "60"'),
])
def test_tcp_syn_is_checked(value, message):
    with pytest.raises(ConfigError) as e:
        parse_config(f"[timeouts]\ntcp_syn = {value}\n", "t.toml")
    assert str(e.value) == f"t.toml:2: timeouts.tcp_syn: {message}"


def test_a_translation_may_set_its_own_tcp_syn():
    n = Nat(CONF.format(max=64, syn=60).replace('name = "web"', 'name = "web"\ntimeouts = { tcp_syn = 3 }'))
    syn(n, 1)
    assert n.lifetime() == 3.0
