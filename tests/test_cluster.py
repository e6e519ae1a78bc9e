"""Several instances as one appliance (issue 16): BGP announcement through
BIRD, failover without shared state, drain.

The live test runs appliance/_bench_failover.py's scenario: three
instances behind a BIRD router's ECMP route, one SIGKILLed, one drained,
the first started again, while downloads, a UDP stream and pings run."""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import subprocess

import pytest

from appliance import _cnat, parse_config
from appliance._config import ConfigError
from appliance.cluster import BgpConfig, Bird, BirdError, Neighbor
from appliance.cluster._bird import render

BASE = """
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
[bgp]
asn = 65001
router_id = "10.0.0.1"
"""
NEIGHBOR = '[[bgp.neighbor]]\naddress = "10.0.0.254"\nasn = 65000\n'

BAD = [
    # (what, toml after BASE, the error's key, words of its reason)
    ("no neighbor", "", "bgp", "neighbor"),
    ("asn out of range", NEIGHBOR.replace("65000", "0"), "bgp.neighbor[0].asn", "AS number"),
    ("a v6 prefix to a v4 neighbor", NEIGHBOR + 'announce = ["fd00::/64"]\n', "bgp.neighbor[0].announce",
     "carries IPv4"),
    ("not a prefix", NEIGHBOR + 'announce = ["everything"]\n', "bgp.neighbor[0].announce", "neither"),
    ("the same neighbor twice", NEIGHBOR + NEIGHBOR, "bgp.neighbor[1].address", "listed twice"),
    ("hold time below BGP's 3 s", "hold_time = 1\n" + NEIGHBOR, "bgp.hold_time", "between 3"),
    ("a typo", "hold = 3\n" + NEIGHBOR, "bgp.hold", "unknown key"),
    ("source ports not a range", NEIGHBOR + '[cluster]\nsource_ports = "20000"\n', "cluster.source_ports",
     "not a range"),
    ("source ports below 1024", NEIGHBOR + '[cluster]\nsource_ports = "80-30000"\n', "cluster.source_ports",
     "within 1024-65535"),
    ("too few source ports", NEIGHBOR + '[cluster]\nsource_ports = "20000-20010"\n', "cluster.source_ports",
     "fewer than 256"),
]


@pytest.mark.parametrize("what,extra,key,words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_bgp_setting_names_its_key(what, extra, key, words):
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + extra, "cluster.toml")
    assert e.value.key == key and words in e.value.reason, str(e.value)
    assert str(e.value).startswith("cluster.toml:")


def test_stateless_failover_is_on_with_bgp_and_can_be_turned_off():
    assert parse_config(BASE + NEIGHBOR).cluster.stateless_failover
    assert not parse_config(BASE.split("[bgp]")[0]).cluster.stateless_failover
    off = parse_config(BASE + NEIGHBOR + "[cluster]\nstateless_failover = false\n")
    assert not off.cluster.stateless_failover
    assert parse_config(_cnat.to_toml(off)) == dataclasses.replace(off, path="<string>")   # cnat save keeps it
    ranged = parse_config(BASE + NEIGHBOR + '[cluster]\nsource_ports = "20000-29999"\n')
    assert ranged.cluster.source_ports == (20000, 29999)
    assert parse_config(_cnat.to_toml(ranged)) == dataclasses.replace(ranged, path="<string>")


def test_cnat_drain_words():
    assert _cnat.parse(["drain"]) == _cnat.InstanceDrain(60)
    assert _cnat.parse(["drain", "5"]) == _cnat.InstanceDrain(5)
    for bad in (["drain", "0"], ["drain", "soon"], ["drain", "5", "6"]):
        with pytest.raises(_cnat.CnatSyntaxError, match="drain"):
            _cnat.parse(bad)


def test_bird_accepts_the_configuration_made_from_bgp(tmp_path):
    assert shutil.which("bird"), "BIRD 2 missing: ./dev installs it (Debian bird2)"
    cfg = BgpConfig(65001, ipaddress.IPv4Address("10.0.1.2"), (
        Neighbor(ipaddress.ip_address("10.0.1.1"), 65000),
        Neighbor(ipaddress.ip_address("fd00::1"), 65000, True, (ipaddress.ip_network("::/0"),)),
        Neighbor(ipaddress.ip_address("10.0.2.1"), 65002, False, (ipaddress.ip_network("0.0.0.0/0"),))))
    for name in ("vips4", "vips6", "routes4", "routes6"):
        (tmp_path / f"{name}.routes").write_text("route 30.0.0.2/32 blackhole;\n" if name == "vips4" else "")
    (tmp_path / "bird.conf").write_text(render(cfg, tmp_path))
    r = subprocess.run(["bird", "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "bird.conf").read_text()
    assert 'if proto = "routes4" && net ~ [ 0.0.0.0/0 ] then accept;' in text   # n2: its prefix, no vips
    assert text.count('if proto = "vips4"') == 1 and text.count('if proto = "vips6"') == 1


def test_a_missing_bird_is_a_clear_error():
    b = Bird(BgpConfig(65001, ipaddress.IPv4Address("10.0.1.2"), (Neighbor(ipaddress.ip_address("10.0.1.1"), 65000),),
                       bird="no-such-bird"))
    try:
        with pytest.raises(BirdError, match="'no-such-bird' not found.*bird2"):
            b.start()
    finally:
        b.stop()


@pytest.mark.root
def test_instances_fail_over_drain_and_come_back_under_traffic(tmp_path):
    from appliance import _bench_failover
    from appliance._cluster_topology import HOLD

    r = _bench_failover.run(drain_seconds=8, workdir=str(tmp_path))   # the logs, BIRD's too, stay there
    info = {k: v for k, v in r.items() if k != "tcp"}
    # the route set follows: the killed instance withdrawn within the hold time
    # (at once, in fact: its BIRD dies with it and closes its sessions), the
    # drained one at once, the restarted one announced again
    assert r["withdrawn_after_kill_s"] <= HOLD, info
    assert r["withdrawn_after_drain_s"] <= 2, info
    assert r["announced_after_restart_s"] <= 10, info
    # every download arrived whole: no flow changed backend (the new one
    # would have reset it) and none lost bytes
    assert len(r["tcp"]) == 9 and all(t["ok"] for t in r["tcp"]), r["tcp"]
    assert {t["vip"] for t in r["tcp"]} == {"30.0.0.2", "fd30::2", "40.0.0.1"}
    # the SNAT download ran through the killed instance and went on through a
    # survivor: its session came by sync (without it the download times out:
    # a SNAT port cannot be recomputed)
    assert r["snat_flow_on_killed"], info
    assert all(n >= 1 for n in r["snat_sessions_before_kill"].values()), info   # every instance had it
    # a peer's address with garbage, a short message, another key, a replay; a stranger
    hostile = dict(r["hostile"])
    assert hostile.pop("messages_received") >= 1, info    # the recording's first copy (and the peers' own)
    assert hostile == {"sync_bad_mac": 2, "sync_malformed": 1, "sync_unknown_peer": 1, "sync_replayed": 1,
                       "sessions_installed": 0}, info
    # the UDP stream kept its backend and lost no more than was in flight
    # during the withdrawal (100 packets a second: 0.5 s of them)
    assert len(r["udp"]["backends"]) == 1, info
    assert r["udp"]["lost"] <= 50, info
    assert r["ping"]["received"] >= r["ping"]["sent"] - 20, info
    # the drained instance served on, then stopped by itself, cleanly
    assert r["drained_sessions_at_drain"] > 0, info
    assert r["drained_returncode"] == 0 and r["drained_exit_after_s"] <= 8 + 3, info
    # survivors (the drained one's counters as last read while it served)
    # continued flows they had not seen begin, from the backend's side too
    assert sum(c["session_recovered"] for c in r["counters"].values()) >= 1, info
    assert all(c["drop_orphan_reply"] == 0 for c in r["counters"].values()), info
