"""Configuration errors name the file, the line, the key and the reason."""

import json

import pytest

from appliance import ConfigError, load_config, parse_config

GOOD = """flow_hash_seed = 1234

[timeouts]
session = 30
tcp_established = 3600
tcp_closing = 5

[snat]
ip4 = "30.0.0.1"
ip6 = "30::1"
exclude = ["20.0.0.0/24", "20::/100"]
interfaces = ["tap0"]

[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "1.2.3.4->20.0.0.2 8080"]

[plugins]
modules = []
"""


def test_the_contract_example_parses():
    c = parse_config(GOOD, "a.toml")
    assert c.flow_hash_seed == 1234
    assert c.timeouts.tcp_established == 3600
    assert str(c.snat.ip4) == "30.0.0.1" and c.snat.interfaces == ("tap0",)
    (t,) = c.translations
    assert (t.kind, str(t.address), t.port, t.proto) == ("vip", "30.0.0.2", 80, "tcp")
    assert [str(b) for b in t.backends] == ["->20.0.0.1 8080", "1.2.3.4->20.0.0.2 8080"]


def test_interfaces_and_their_xdp_modes():
    c = parse_config('[[interface]]\nname = "n0"\n[[interface]]\nname = "n1"\nxdp_mode = "native"\n', "i.toml")
    assert c.interface_names == ("n0", "n1")
    assert [i.xdp_mode for i in c.interfaces] == ["auto", "native"]


def test_defaults_when_everything_is_optional():
    c = parse_config("", "empty.toml")
    assert (c.timeouts.session, c.timeouts.tcp_established, c.timeouts.tcp_closing) == (30, 3600, 5)
    assert c.snat is None and c.translations == ()


BAD = [
    ("syntax", GOOD.replace('port = 80', 'port = = 80'), 17, "", "TOML syntax error"),
    ("unknown top-level key", "bogus = 1\n" + GOOD, 1, "bogus", "unknown key"),
    ("unknown key in a table", GOOD + "bogus = 1\n", 22, "plugins.bogus", "unknown key"),
    ("unknown key in translation", GOOD.replace('port = 80', 'port = 80\nweight = 3'), 18,
     "translation[0].weight", "unknown key"),
    ("wrong type", GOOD.replace('port = 80', 'port = "80"'), 17, "translation[0].port", "expected an integer"),
    ("bad vip", GOOD.replace('"30.0.0.2"', '"30.0.0.300"'), 16, "translation[0].vip", "not an IP address"),
    ("vip and real", GOOD.replace('vip = "30.0.0.2"', 'vip = "30.0.0.2"\nreal = "30.0.0.3"'), 16,
     "translation[0].vip", "exactly one of 'vip' or 'real'"),
    ("bad backend", GOOD.replace('"->20.0.0.1 8080"', '"20.0.0.1 8080"'), 18, "translation[0].backends",
     "missing '->'"),
    ("family mismatch", GOOD.replace('"->20.0.0.1 8080"', '"->20::1 8080"'), 18, "translation[0].backends",
     "is IPv6, the translation is IPv4"),
    ("bad port in backend", GOOD.replace('"->20.0.0.1 8080"', '"->20.0.0.1 80800"'), 18,
     "translation[0].backends", "not a port"),
    ("bad proto", GOOD.replace('proto = "tcp"', 'proto = "sctp"'), 15, "translation[0].proto", "not one of"),
    ("bad snat address", GOOD.replace('ip4 = "30.0.0.1"', 'ip4 = "30::1"'), 9, "snat.ip4", "not an IPv4 address"),
    ("bad prefix", GOOD.replace('"20.0.0.0/24"', '"20.0.0.0/33"'), 11, "snat.exclude", "not an IP prefix"),
    ("negative timeout", GOOD.replace("session = 30", "session = -1"), 4, "timeouts.session", "must be at least 0.001"),
    ("duplicate translation", GOOD + '\n[[translation]]\nproto = "tcp"\nvip = "30.0.0.2"\nport = 80\nbackends = []\n',
     25, "translation[1].vip", "duplicate translation"),
    ("missing port", GOOD.replace("port = 80\n", ""), 14, "translation[0]", "missing required key 'port'"),
    ("bad xdp_mode", GOOD + '\n[[interface]]\nname = "n0"\nxdp_mode = "fast"\n', 25, "interface[0].xdp_mode",
     "'fast' is not one of auto, native, generic"),
    ("bad io", GOOD + '\n[[interface]]\nname = "n0"\nio = "tap"\n', 25, "interface[0].io",
     "'tap' is not one of auto, xdp, uring, mmap"),
    ("no workers", GOOD + "\n[datapath]\nworkers = 0\n", 24, "datapath.workers", "must be between 1 and 64"),
    ("workers as text", GOOD + '\n[datapath]\nworkers = "2"\n', 24, "datapath.workers", "expected an integer"),
    ("unknown datapath key", GOOD + "\n[datapath]\nthreads = 2\n", 24, "datapath.threads", "unknown key"),
    # a misspelt required key: the unknown key it is, on its own line, with the name it missed
    ("misspelt required key", GOOD.replace("backends =", "backendz ="), 18, "translation[0].backendz",
     "unknown key, did you mean 'backends'? ('backends' is required)"),
    ("misspelt required port", GOOD.replace("port = 80", "prot = 80"), 17, "translation[0].prot",
     "did you mean 'port'?"),
    ("misspelt optional key", GOOD.replace("tcp_closing", "tcp_closng"), 6, "timeouts.tcp_closng",
     "unknown key (did you mean 'tcp_closing'? known keys:"),
    ("unknown key, nothing close", GOOD.replace("tcp_closing", "zzz"), 6, "timeouts.zzz",
     "unknown key (known keys:"),
]


def test_datapath_workers_default_and_value():
    assert parse_config(GOOD, "x.toml").workers is None       # one per usable CPU, capped by RX queues
    assert parse_config(GOOD + "\n[datapath]\nworkers = 2\n", "x.toml").workers == 2


def test_workers_are_capped_by_the_fewest_rx_queues():
    from appliance.runtime._datapath import worker_count

    assert worker_count(None, {"a0": 4, "a1": 1}) == 1
    assert worker_count(2, {"a0": 2, "a1": 4}) == 2
    with pytest.raises(SystemExit, match="workers = 3, but interface 'a0' has 2 RX queues"):
        worker_count(3, {"a0": 2, "a1": 4})


@pytest.mark.parametrize("what,text,line,key,reason", BAD, ids=[b[0] for b in BAD])
def test_config_errors(what, text, line, key, reason):
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "/etc/appliance.toml")
    e = ei.value
    msg = str(e)
    assert msg.startswith("/etc/appliance.toml"), msg
    assert reason in msg, msg
    assert e.key == key, msg
    if line is not None:
        assert e.line == line, msg
        assert msg.startswith(f"/etc/appliance.toml:{line}: "), msg


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["a/b", "a:1", "a b", ".", "..", "ąąąąąąąą", "a\u2028b", "x" * 16])
def test_interface_names_follow_the_kernels_rules(name):
    for text in (f'[[interface]]\nname = {json.dumps(name)}\n',
                 f'[snat]\nip4 = "1.1.1.1"\ninterfaces = [{json.dumps(name)}]\n'):
        with pytest.raises(ConfigError, match="is not an interface name"):
            parse_config(text, "i.toml")
    parse_config('[[interface]]\nname = "eth0.100"\n[snat]\nip4 = "1.1.1.1"\ninterfaces = ["veth-a_1"]\n', "i.toml")
