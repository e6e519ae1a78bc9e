"""The first-party client-address affinity plugin (plugins/affinity.py)."""

from appliance.testing import Nat, udp

CONF = """
[[translation]]
name = "dns"
proto = "udp"
vip = "30.0.0.2"
port = 53
affinity = { timeout = 100 }
backends = ["->20.0.0.1", "->20.0.0.2", "->20.0.0.3", "->20.0.0.4"]
"""


def test_same_client_same_backend_also_after_its_session_ended():
    nat = Nat(CONF)
    for client in range(1, 20):
        got = set()
        for port in range(1000, 1010):
            nat.send(udp(f"10.0.0.{client}", port, "30.0.0.2", 53))
            got.add(nat.backend())
        assert len(got) == 1
    nat.send(udp("10.0.0.1", 999, "30.0.0.2", 53))
    was = nat.backend()
    nat.advance(60)            # the session (30 s) ended; the entry (100 s) lives
    assert nat.sessions == []
    nat.send(udp("10.0.0.1", 5555, "30.0.0.2", 53))
    assert nat.backend() == was and nat.plugins.decider == "first-party:affinity"


def test_entries_expire_and_a_down_backend_breaks_affinity():
    nat = Nat(CONF)
    nat.send(udp("10.0.0.1", 1000, "30.0.0.2", 53))
    was = nat.backend()
    nat.set_state("dns", was, "down")
    nat.send(udp("10.0.0.1", 1001, "30.0.0.2", 53))
    assert nat.backend() != was
    now_at = nat.backend()
    nat.advance(101)
    nat.send(udp("10.0.0.1", 1002, "30.0.0.2", 53))
    assert nat.plugins.decider != "first-party:affinity"   # expired: placed afresh
    assert nat.plugins.figures()["first-party:affinity"]["expired"] >= 1
    assert now_at != was and nat.plugin_errors == {}   # it never offered the down backend


def test_translations_without_affinity_are_not_sticky():
    nat = Nat(CONF.replace("affinity = { timeout = 100 }\n", ""))
    got = set()
    for port in range(1000, 1100):
        nat.send(udp("10.0.0.1", port, "30.0.0.2", 53))
        got.add(nat.backend())
    assert len(got) == 4


def test_memory_is_bounded_and_evictions_counted():
    from appliance_plugins.affinity import Affinity

    small = Affinity(max_entries=50)
    small.name = "small-affinity"
    nat = Nat(CONF, plugins=[small])
    for i in range(80):
        nat.send(udp(f"10.0.{i // 200}.{i % 200 + 1}", 1000, "30.0.0.2", 53))
    assert len(small.entries) == 50 and small.evictions == 30
