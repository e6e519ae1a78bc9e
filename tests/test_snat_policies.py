"""[snat] policies (VPP cnat's none / if-pfx / k8s) and the SNAT address
chosen by destination prefix, through the built-in SNAT policy."""

import pytest

from appliance import ConfigError, parse_config
from appliance.testing import Nat, udp

BASE = """
[snat]
ip4 = "30.0.0.1"
ip6 = "30::1"
interfaces = ["pods"]
exclude = ["10.96.0.0/12"]
{extra}
"""

# (policy settings, source, destination, expected source after NAT or None = unchanged)
CASES = [
    ("", "10.1.0.5", "192.0.2.1", "30.0.0.1"),                      # if-pfx: everything ...
    ("", "10.1.0.5", "10.96.0.10", None),                           # ... but excluded prefixes
    ('policy = "none"', "10.1.0.5", "192.0.2.1", None),
    ('policy = "k8s"\npod_prefixes = ["10.1.0.0/16", "fd01::/64"]', "10.1.0.5", "192.0.2.1", "30.0.0.1"),
    ('policy = "k8s"\npod_prefixes = ["10.1.0.0/16"]', "10.1.0.5", "10.1.7.7", None),       # pod to pod
    ('policy = "k8s"\npod_prefixes = ["10.1.0.0/16"]', "10.1.0.5", "10.96.0.10", None),     # to the cluster
    ('policy = "k8s"\npod_prefixes = ["10.1.0.0/16"]', "172.16.0.9", "192.0.2.1", None),    # not from a pod
    ('policy = "k8s"\npod_prefixes = ["fd01::/64"]', "fd01::5", "2001:db8::1", "30::1"),
    ('by_destination = [{ prefix = "198.51.100.0/24", address = "30.0.0.9" }, '
     '{ prefix = "198.51.100.128/25", address = "30.0.0.10" }]', "10.1.0.5", "198.51.100.7", "30.0.0.9"),
    ('by_destination = [{ prefix = "198.51.100.0/24", address = "30.0.0.9" }, '
     '{ prefix = "198.51.100.128/25", address = "30.0.0.10" }]', "10.1.0.5", "198.51.100.200", "30.0.0.10"),
    ('by_destination = [{ prefix = "198.51.100.0/24", address = "30.0.0.9" }]', "10.1.0.5", "192.0.2.1",
     "30.0.0.1"),
]


@pytest.mark.parametrize("extra, src, dst, want", CASES)
def test_policy_table(extra, src, dst, want):
    nat = Nat(BASE.format(extra=extra))
    nat.send(udp(src, 5000, dst, 53), iface="pods")
    assert nat.verdict in ("translated", "passed") and nat.sessions    # a session, rewritten or not
    got = nat.source()
    assert (got[0] if got and got[0] != src else None) == want
    # and replies to the chosen address come back to the client
    if want is not None:
        nat.send(udp(dst, 53, want, got[1]), iface="uplink")
        assert nat.verdict == "translated"


def test_by_destination_works_without_a_default_address():
    nat = Nat('[snat]\ninterfaces = ["pods"]\nby_destination = [{ prefix = "0.0.0.0/0", address = "30.0.0.7" }]\n')
    nat.send(udp("10.1.0.5", 5000, "192.0.2.1", 53), iface="pods")
    assert nat.source() == ("30.0.0.7", 5000)


@pytest.mark.parametrize("extra, message", [
    ('policy = "sometimes"', "'sometimes' is not one of if-pfx, k8s, none"),
    ('policy = "k8s"', "the k8s policy needs pod_prefixes"),
    ('by_destination = [{ prefix = "198.51.100.0/24", address = "30::9" }]', "different families"),
    ('by_destination = ["198.51.100.0/24"]', "expected { prefix ="),
])
def test_bad_policies(extra, message):
    with pytest.raises(ConfigError, match="snat.(policy|by_destination)") as e:
        parse_config(BASE.format(extra=extra))
    assert message in str(e.value)
