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
