"""The first-party least-sessions selector (plugins/least_sessions.py)."""

from appliance.testing import TCP_SYN, Nat, tcp

CONF = """
[[translation]]
name = "web"
proto = "tcp"
vip = "30.0.0.2"
port = 80
selector = "least-sessions"
backends = [{backends}]
"""


def test_new_flows_go_where_the_fewest_sessions_are_per_weight():
    nat = Nat(CONF.format(backends='{ to = "->20.0.0.1 8080", name = "a", weight = 2 }, '
                                   '{ to = "->20.0.0.2 8080", name = "b" }'))
    for i in range(300):
        nat.send(tcp(f"10.0.{i // 200}.{i % 200 + 1}", 1000, "30.0.0.2", 80, TCP_SYN))
    s = nat.backends("web")
    assert abs(s.sessions[0] - 2 * s.sessions[1]) <= 2, s.sessions
    assert nat.plugins.decider == "selector least-sessions"


def test_a_backend_that_joins_takes_the_new_flows_until_it_catches_up():
    two = '"->20.0.0.1 8080", {{ to = "->20.0.0.2 8080", weight = {w} }}'
    nat = Nat(CONF.format(backends=two.format(w=0)))
    for i in range(10):
        nat.send(tcp(f"10.0.0.{i + 1}", 1000, "30.0.0.2", 80, TCP_SYN))
    nat.reload(CONF.format(backends=two.format(w=1)))
    for i in range(10):
        nat.send(tcp(f"10.0.1.{i + 1}", 1000, "30.0.0.2", 80, TCP_SYN))
        assert nat.backend() == "->20.0.0.2 8080"
    nat.advance(61)           # all half-open sessions ended (tcp_syn): the counts come down
    assert nat.backends("web").sessions == (0, 0)


def test_power_of_two_choices_beyond_sixteen_backends():
    backends = ", ".join(f'"->20.0.1.{i} 8080"' for i in range(1, 41))
    nat = Nat(CONF.format(backends=backends))
    for i in range(4000):
        nat.send(tcp(f"10.0.{i // 200}.{i % 200 + 1}", 1000 + i % 7, "30.0.0.2", 80, TCP_SYN))
    s = nat.backends("web").sessions
    assert max(s) - min(s) <= 10, s   # hash or maglev alone: 78-121 here
