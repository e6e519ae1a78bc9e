"""The seed's `cnat` verbs: the grammar (a table of command lines) and
what they do to a configuration (validated like the TOML file)."""

import dataclasses

import pytest

from appliance import ConfigError, parse_config
from appliance._cnat import (BackendSet, CnatSyntaxError, Show, SnatExclude, SnatWith, TranslationAdd,
                             TranslationDel, apply, parse, render)

PARSED = [
    ("translation add proto TCP vip 30.0.0.2 80 to ->20.0.0.1 8080",
     TranslationAdd("tcp", "vip", "30.0.0.2", 80, ("->20.0.0.1 8080",))),
    ("translation add proto TCP real 30.0.0.2 80 to 1.2.3.4->20.0.0.1 8080",
     TranslationAdd("tcp", "real", "30.0.0.2", 80, ("1.2.3.4->20.0.0.1 8080",))),
    ("translation add proto udp vip 30::2 53 to ->20::1 5353 to ->20::2",
     TranslationAdd("udp", "vip", "30::2", 53, ("->20::1 5353", "->20::2"))),
    ("translation add proto IcMp vip 30.0.0.2 to ->20.0.0.1",
     TranslationAdd("icmp", "vip", "30.0.0.2", 0, ("->20.0.0.1",))),
    ("translation add proto tcp vip 30.0.0.2 80 to 1.2.3.4 5000->20.0.0.1",
     TranslationAdd("tcp", "vip", "30.0.0.2", 80, ("1.2.3.4 5000->20.0.0.1",))),
    ("translation del proto TCP vip 30.0.0.2 80", TranslationDel("tcp/30.0.0.2/80")),
    ("translation del web", TranslationDel("web")),
    ("snat with 30::1", SnatWith("30::1")),
    ("snat with 30.0.0.1", SnatWith("30.0.0.1")),
    ("snat exclude 20::/100", SnatExclude("20::/100")),
    ("snat exclude 20::/100 del", SnatExclude("20::/100", True)),
    ("backend set web web-a weight 3", BackendSet("web", "web-a", "weight", 3)),
    ("show session verbose", Show("session", True)),
    ("show session", Show("session")),
    ("show translation", Show("translation")),
    ("SHOW SNAT", Show("snat")),
]


@pytest.mark.parametrize("line, want", PARSED)
def test_the_seeds_grammar(line, want):
    got = parse(line.split())
    assert got == want
    assert parse(render(got).split()) == got      # what show prints reads back


def test_backend_names_with_spaces_come_as_one_word():
    assert parse(["backend", "set", "web", "->20.0.0.1 8080", "drain"]) == BackendSet("web", "->20.0.0.1 8080",
                                                                                     "drain")


@pytest.mark.parametrize("line, message", [
    ("translation add proto SCTP vip 30.0.0.2 80 to ->20.0.0.1", "protocol 'SCTP' is not TCP, UDP or ICMP"),
    ("translation add proto tcp vip 30.0.0.2 to ->20.0.0.1", "a port (1-65535) after 30.0.0.2 for TCP"),
    ("translation add proto tcp vip 30.0.0.2 80", "at least one 'to BACKEND'"),
    ("translation add proto tcp vip 30.0.0.2 80 to 20.0.0.1 8080", "missing '->'"),
    ("translation add proto tcp vip 30.0.0.x 80 to ->20.0.0.1", "'30.0.0.x' is not an IP address"),
    ("translation add proto tcp vip 30::2 80 to ->20.0.0.1", "is IPv4, the translation is IPv6"),
    ("translation add proto icmp vip 30.0.0.2 7 to ->20.0.0.1", "no port for ICMP"),
    ("translation add vip 30.0.0.2 80 to ->20.0.0.1", "it starts with 'proto'"),
    ("snat with 30.0.0", "'30.0.0' is not an IP address"),
    ("snat exclude 20::/129", "is not an IP prefix"),
    ("backend set web web-a weight many", "weight 'many' is not an integer"),
    ("show sessions please", "cannot show"),
    ("nat44 add", "unknown command 'nat44 add'"),
])
def test_anything_else_is_refused_with_the_expected_form(line, message):
    with pytest.raises(CnatSyntaxError) as e:
        parse(line.split())
    assert message in str(e.value) and "expected: cnat " in str(e.value), str(e.value)


BASE = parse_config('[[translation]]\nname = "web"\nproto = "tcp"\nvip = "30.0.0.2"\nport = 80\n'
                    'backends = ["->20.0.0.1 8080"]\n', "base.toml")


def test_commands_apply_to_a_configuration_like_the_toml_file():
    cmds = [parse(line.split()) for line in (
        "translation add proto UDP vip 30.0.0.2 53 to ->20.0.0.1 5353 to ->20.0.0.2 5353",
        "snat with 30::1", "snat exclude 20::/100", "snat with 30.0.0.1")]
    cfg = apply(BASE, cmds)
    assert [t.name for t in cfg.translations] == ["web", "udp/30.0.0.2/53"]
    assert [t.id for t in cfg.translations] == [0, 1]
    assert str(cfg.snat.ip6) == "30::1" and str(cfg.snat.ip4) == "30.0.0.1" and len(cfg.snat.exclude) == 1
    cfg = apply(cfg, [parse("translation del web".split()), parse("snat exclude 20::/100 del".split())])
    assert [t.name for t in cfg.translations] == ["udp/30.0.0.2/53"] and cfg.snat.exclude == ()


@pytest.mark.parametrize("line, message", [
    ("translation add proto TCP vip 30.0.0.2 80 to ->20.0.0.9", "exists already"),
    ("translation del nothing", "no translation named nothing"),
    ("translation add proto TCP real 30.0.0.2 81 to ->20.0.0.9", "is a vip in another translation"),
    ("snat exclude 10.0.0.0/8 del", "is not excluded"),
])
def test_commands_that_do_not_fit_are_refused_and_name_the_command(line, message):
    with pytest.raises(ConfigError) as e:
        apply(BASE, [parse(line.split())])
    assert message in str(e.value) and "cnat" in str(e.value)


def test_saved_toml_parses_back_to_the_same_configuration():
    from appliance._cnat import to_toml

    text = """
flow_hash_seed = 7
[timeouts]
session = 20
tcp_half_closed = 100
[sessions]
max = 4096
[snat]
ip4 = "30.0.0.1"
interfaces = ["tap0"]
exclude = ["20.0.0.0/24"]
policy = "k8s"
pod_prefixes = ["10.1.0.0/16"]
by_destination = [{ prefix = "198.51.100.0/24", address = "30.0.0.9" }]
[locality]
labels = { zone = "a" }
[[interface]]
name = "n0"
xdp_mode = "generic"
[[translation]]
name = "web"
proto = "tcp"
vip = "30.0.0.2"
port = 80
selector = "maglev"
timeouts = { session = 5 }
drain = { deadline = 30 }
affinity = { timeout = 100 }
allow_from = ["10.0.0.0/8"]
health = { interval = 1, http = "/healthz", port = 9000 }
backends = ["->20.0.0.1 8080", { to = "1.2.3.4 5000->20.0.0.2 8080", weight = 3, name = "web-b", labels = { zone = "a" }, state = "draining" }]
[[translation]]
proto = "icmp"
vip = "fd30::2"
drain = "reset"
backends = ["->fd20::1"]
"""
    cfg = parse_config(text, "x.toml")
    cfg = apply(cfg, [parse("translation add proto UDP vip 30.0.0.2 53 to ->20.0.0.1 5353".split())])
    again = parse_config(to_toml(cfg), "saved.toml")
    assert dataclasses.replace(again, path=cfg.path) == cfg


def test_changes_that_undo_each_other_leave_the_overlay():
    from appliance._cnat import simplify

    add = parse("translation add proto UDP vip 30.0.0.2 53 to ->20.0.0.1".split())
    cmds = [add, parse("snat exclude 20::/100".split()), parse("translation del udp/30.0.0.2/53".split()),
            parse("snat exclude 20::/100 del".split()), parse("snat with 30::1".split())]
    assert simplify(cmds) == [SnatWith("30::1")]
    assert simplify([parse("translation del web".split())]) == [TranslationDel("web")]   # the file's: kept
