"""The live tests of the AF_XDP mode that apply to the socket modes (issue
17, docs/io.md), run again with every interface on io_uring, and again on
PACKET_MMAP rings (mmap): the same topology, the same assertions, through
each backend. Its configuration has no `real` translation and an SNAT
address the host does not have (40.0.0.253, fd40::fd), which the socket
modes require. Not
shared: what needs host-address ports (`real` translations, a hairpin
flow's source, an SNAT address of the host's), and the XDP-specific
(its modes, its counters, a socket per RX queue)."""

from __future__ import annotations

import json
import sys

import pytest

import test_live as L

pytestmark = pytest.mark.root

SHARED = [
    L.test_vip_tcp_reaches_and_spreads_over_backends_both_families,
    L.test_udp_request_response_through_vip_both_families,
    L.test_a_vip_on_the_clients_link_is_answered_for_by_arp_and_nd,
    L.test_ping_and_traceroute_through_the_appliance,
    L.test_sigterm_detaches_and_restart_after_sigkill,
    L.test_config_file_is_watched_bad_versions_are_rejected,
    L.test_snat_excluded_prefixes_and_ping,
    L.test_sighup_reloads_at_once_and_does_not_stop,
    L.test_sessions_survive_a_restart_with_state_file,
    L.test_path_mtu_discovery_through_a_vip_and_transit,
    L.test_a_data_interface_given_a_new_mac_at_run_time,
]


@pytest.fixture(params=["uring", "mmap"])
def live(tmp_path, request):
    lv = L.Live(tmp_path, io=request.param)
    yield lv
    lv.close()


@pytest.mark.parametrize("test", SHARED, ids=[t.__name__.removeprefix("test_") for t in SHARED])
def test_in_socket_mode(live, test):
    test(live)


def test_show_stats_says_each_interfaces_backend_and_why(live):
    r = live.run(live.topo.ns_app, sys.executable, "-m", "appliance", "show", "stats", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["packet_io"]["a0"] == {"backend": live.io, "why": f'io = "{live.io}"'}
    assert {s["io"] for s in stats["sockets"]} == {live.io}
    # the host's own traffic (the kernel's snapshot of neighbours, IPv6
    # chatter) was seen and left alone
    assert stats["io"]["left_to_kernel"] > 0 and not live.xdp_attached()


@pytest.fixture(params=["uring", "mmap"])
def two_workers(tmp_path, request):
    lv = L.Live(tmp_path, io=request.param)
    try:
        lv.stop()
        lv.config.write_text(lv.config.read_text() + "\n[datapath]\nworkers = 2\n")
        lv.start()
    except BaseException:
        lv.close()
        raise
    yield lv
    lv.close()


def test_two_workers_share_each_interface_by_fanout(two_workers):
    """[datapath] workers = 2 in a socket mode: each interface has a socket
    per worker in one PACKET_FANOUT group, frames shared by flow hash; a
    flow's reply may arrive on the other worker's socket and is
    translated all the same."""
    lv = two_workers
    seen = {lv.curl(lv.topo.ns_client, "http://30.0.0.2/") for _ in range(24)}
    assert seen == {"backend0 10.0.0.2", "backend1 10.0.0.2"}
    seen6 = {lv.curl(lv.topo.ns_client, "http://[fd30::2]/") for _ in range(8)}
    assert seen6 == {"backend0 fd00::2", "backend1 fd00::2"}
    for vip in ("30.0.0.2", "fd30::2"):
        peer, text = lv.udp(lv.topo.ns_client, vip, 53).split(" ", 1)
        assert peer == vip and text.split()[0] in ("backend0", "backend1")
    assert lv.stop() == 0
    stats = lv.final_stats()
    for itf in ("a0", "a1", "a2"):
        socks = [s for s in stats["sockets"] if s["interface"] == itf]
        assert sorted(s["worker"] for s in socks) == [0, 1] and {s["io"] for s in socks} == {lv.io}, socks
    a0 = [s["rx"] for s in stats["sockets"] if s["interface"] == "a0"]
    assert min(a0) > 0, f"32 connections' frames all on one worker's socket: {a0}"
    assert all(w["rx"] > 0 for w in stats["workers"]) and len(stats["workers"]) == 2, stats["workers"]
    assert stats["worker_threads"] and stats["io"]["drop_new_flow_busy"] == 0, stats["io"]
