"""The first-party Maglev selector plugin: even spread, minimal disruption,
and it runs through the hook like any plugin."""

import collections
import ipaddress

import dpkt

from appliance_plugins.maglev import M, build_table
from packets import Harness, tcp


def test_table_spreads_evenly():
    names = [f"->20.0.0.{i} 8080" for i in range(1, 8)]
    counts = collections.Counter(build_table(names))
    assert sum(counts.values()) == M
    assert max(counts.values()) - min(counts.values()) <= 0.01 * M / len(names)


def test_removing_a_backend_moves_few_entries():
    names = [f"->20.0.0.{i} 8080" for i in range(1, 11)]
    before = build_table(names)
    after = build_table(names[:4] + names[5:])          # backend 5 removed
    moved = sum(1 for a, b in zip(before, after)
                if names[a] != "->20.0.0.5 8080" and names[a] != (names[:4] + names[5:])[b])
    # entries of the surviving backends that changed: Maglev keeps this small
    assert moved < 0.05 * M


CONF = """
flow_hash_seed = 7
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->20.0.0.2 8080", "->20.0.0.3 8080"]
[plugins]
modules = ["appliance_plugins.maglev"]
"""


def test_plugin_selects_through_the_hook():
    from appliance._plugins import Plugins
    from appliance.hooks import hookimpl

    hashes = {}

    class Recorder:   # registered after maglev, so called first; answers None
        @hookimpl
        def appliance_select_backend(self, flow, translation):
            hashes[flow.sport] = flow.hash

    names = ["->20.0.0.1 8080", "->20.0.0.2 8080", "->20.0.0.3 8080"]
    table = build_table(names)
    h = Harness(CONF, plugins=Plugins(["appliance_plugins.maglev"], objects=[Recorder()], entry_points=False))
    seen = collections.Counter()
    for i in range(300):
        h.send(tcp(f"10.0.{i // 200}.{i % 200 + 1}", 1024 + i, "30.0.0.2", 80))
        dst = str(ipaddress.ip_address(dpkt.ethernet.Ethernet(h.out).data.dst))
        assert dst == names[table[hashes[1024 + i] % M]].split("->")[1].split()[0]
        seen[dst] += 1
    assert set(seen) == {"20.0.0.1", "20.0.0.2", "20.0.0.3"}
    assert h.core.statistics().plugin_errors == {}


def test_weights_share_the_table_and_one_weight_change_moves_few_entries():
    names = [f"->20.0.0.{i} 8080" for i in range(1, 6)]
    before = build_table(names, [1, 1, 1, 1, 1])
    after = build_table(names, [1, 1, 1, 1, 3])          # the last one's weight tripled
    share = collections.Counter(after)
    assert abs(share[4] / M - 3 / 7) < 0.01, share
    # flows that must move are those the heavier backend takes over (~3/7 - 1/5 of
    # the table); Maglev moves few beyond them
    moved = sum(1 for a, b in zip(before, after) if a != b)
    assert moved < (3 / 7 - 1 / 5 + 0.08) * M, moved / M


def test_the_selector_follows_backend_state_with_the_kit():
    from appliance.testing import Nat

    text = CONF.replace('[plugins]\nmodules = ["appliance_plugins.maglev"]\n', "").replace(
        'port = 80\n', 'port = 80\nname = "web"\nselector = "maglev"\n')
    nat = Nat(text)
    flows = [tcp(f"10.0.{i // 200}.{i % 200 + 1}", 1024 + i, "30.0.0.2", 80) for i in range(600)]
    first = []
    for f in flows:
        nat.send(f)
        first.append(nat.backend())
    nat.set_state("web", "->20.0.0.2 8080", "down")
    nat.advance(3600 * 2)    # the old sessions are gone: every flow is placed again
    moved = 0
    for f, was in zip(flows, first):
        nat.send(f)
        assert nat.backend() != "->20.0.0.2 8080"
        moved += nat.backend() != was and was != "->20.0.0.2 8080"
    assert moved < 0.05 * len(flows)          # only the down backend's flows moved
    assert nat.plugins.decider == "selector maglev"
