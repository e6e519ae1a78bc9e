"""Tested with the appliance's kit: the `nat` fixture comes from its pytest
plugin (entry point pytest11), nothing to import but the packet builders."""

import appliance_example_plugin
from appliance.testing import tcp

CONF = """
[[translation]]
name = "web"
proto = "tcp"
vip = "30.0.0.2"
port = 80
selector = "round-robin"
backends = ["->20.0.0.1 80", "->20.0.0.2 80", "->20.0.0.3 80"]
"""


def test_round_robin(nat):
    n = nat(CONF, plugins=[appliance_example_plugin])
    got = []
    for port in range(1000, 1006):
        n.send(tcp("10.0.0.1", port, "30.0.0.2", 80))
        got.append(n.backend())
    assert got == ["->20.0.0.1 80", "->20.0.0.2 80", "->20.0.0.3 80"] * 2


def test_deny_list_drops(nat):
    n = nat(CONF, plugins=[appliance_example_plugin])
    assert n.send(tcp("192.0.2.9", 1000, "30.0.0.2", 80)) == [] and n.verdict == "drop_policy"
    n.send(tcp("198.51.100.1", 1000, "30.0.0.2", 80))
    assert n.verdict == "translated"
