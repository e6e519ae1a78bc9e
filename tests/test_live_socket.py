"""The live tests of the AF_XDP mode that apply to the socket modes (issue
17, docs/io.md), run again with every interface on io_uring, and again on
PACKET_MMAP rings (mmap): the same topology, the same assertions, through
each backend, SNAT to an address of the host's and hairpin flows too (the
host ports of [datapath] reserved_ports), `real` translations (their
ports listed one by one). Not shared: the XDP-specific (its modes, its
counters, a socket per RX queue)."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest

import test_live as L
from appliance.runtime._state import STATE_HOLD_SECONDS

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
    L.test_a_backend_reaching_its_own_vip,
    L.test_real_translation_with_source_rewrite_and_host_ports,
    L.test_a_real_icmp_translation_sends_echo_requests_to_its_backend,
    L.test_a_stream_snatted_to_the_hosts_address_survives_a_restart,
    L.test_a_removed_real_translation_keeps_its_port_while_its_sessions_remain,
    L.test_a_real_stream_survives_a_restart_into_a_configuration_without_it,
]


@pytest.fixture(params=["uring", "mmap"])
def live(tmp_path, request):
    lv = L.Live(tmp_path, io=request.param)
    yield lv
    lv.close()


@pytest.mark.parametrize("test", SHARED, ids=[t.__name__.removeprefix("test_") for t in SHARED])
def test_in_socket_mode(live, test):
    test(live)


@pytest.mark.parametrize("ns, addr, port, want", L.FRAGMENTED)
def test_fragmented_datagrams_in_socket_mode(live, ns, addr, port, want):
    L.test_fragmented_datagrams_through_real_snat_and_vip(live, ns, addr, port, want)


def stats_now(live) -> dict:
    r = live.run(live.topo.ns_app, sys.executable, "-m", "appliance", "show", "stats", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_show_stats_says_each_interfaces_backend_and_why(live):
    ping = live.run(live.topo.ns_client, "ping", "-c", "1", "-W", "2", "10.0.0.1")   # the host's: its kernel answers
    assert ping.returncode == 0, ping.stdout
    stats = stats_now(live)
    assert stats["packet_io"]["a0"] == {"backend": live.io, "why": f'io = "{live.io}"'}
    assert {s["io"] for s in stats["sockets"]} == {live.io}
    # the host's own traffic (that ping, ARP) was seen and left alone
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


def test_a_killed_socket_modes_table_is_removed_by_a_start_in_xdp_mode(live):
    """SIGKILL leaves the steering table, dropping the appliance's
    traffic. A next start in AF_XDP mode removes it (it would blackhole
    transit the XDP program hands the kernel); a clean stop then leaves
    nothing."""
    assert live.stop(signal.SIGKILL) != 0
    assert live.steered(), "a killed run leaves its table"
    live.config.write_text(live.config.read_text().replace(f'io = "{live.io}"\n', ""))   # auto: AF_XDP here
    live.start()
    assert "appliance_steer" not in live.run(live.topo.ns_app, "nft", "list", "tables").stdout
    assert live.xdp_attached()
    r = live.run(live.topo.ns_client, "ping", "-c", "2", "-W", "2", "20.0.0.1")      # transit
    assert r.returncode == 0, r.stdout + r.stderr
    assert live.curl(live.topo.ns_client, "http://30.0.0.2/").startswith("backend")


def test_a_stop_with_state_file_holds_for_seconds_then_the_table_passes(live):
    """As the XDP program's hold: the table drops the appliance's traffic
    for STATE_HOLD_SECONDS after a --state-file stop (the kernel must not
    forward it untranslated while the next start comes up), then its first
    rule passes everything to the kernel."""
    state = str(live.tmp / "sessions.state")
    live.stop()
    live.start(args=("--state-file", state))
    assert live.curl(live.topo.ns_client, "http://30.0.0.2/").startswith("backend")
    assert live.stop() == 0
    held = time.time()
    assert f"the nftables table holds the appliance's traffic for {STATE_HOLD_SECONDS:.0f} s" in live.log.read_text()
    table = live.run(live.topo.ns_app, "nft", "list", "table", "netdev", "appliance_steer").stdout
    assert "meta time >" in table, table
    ping = ("ping", "-c", "1", "-W", "1", "20.0.0.1")                             # transit
    assert live.run(live.topo.ns_client, *ping).returncode != 0, "held: the kernel does not forward it"
    time.sleep(max(0.0, held + STATE_HOLD_SECONDS + 1.5 - time.time()))
    r = live.run(live.topo.ns_client, *ping)
    assert r.returncode == 0, "after the hold the kernel forwards again: " + r.stdout


def test_snat_to_the_hosts_address_takes_the_reserved_ports(live):
    """SNAT to an address of the host's (40.0.0.254): the NAT picks its
    ports in [datapath] reserved_ports, which the kernel keeps out of its
    own ephemeral ports, and the table and the C take the replies on them
    (docs/io.md): a session costs no write of the table."""
    reserved = live.run(live.topo.ns_app, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports").stdout
    pod = live.topo.ns_pod
    writes = stats_now(live)["socket_steering"]["table_writes"]
    for _ in range(6):
        assert live.curl(pod, "http://40.0.0.1:8080/") == "outside 40.0.0.254"
    r = live.run(live.topo.ns_app, sys.executable, "-m", "appliance", "show", "sessions", "--match", "40.0.0.254")
    ports = [int(line.split()[6].rpartition(":")[2]) for line in r.stdout.splitlines()
             if len(line.split()) > 6 and line.split()[6].startswith("40.0.0.254:")]
    assert live.stop() == 0
    assert live.final_stats()["socket_steering"]["table_writes"] == writes > 0
    assert "40000-65535" in reserved, reserved
    assert ports and all(40000 <= p <= 65535 for p in ports), (ports, r.stdout, r.stderr)


def test_a_restored_session_outside_the_range_gets_its_port_listed(live):
    """A stream SNATed to the host's address, saved by a stop with
    --state-file and restored by a start with another [datapath]
    reserved_ports: its host port is outside the new range, so it is
    listed (one table write) and its replies are still the appliance's;
    the kernel, which has no socket for them, would reset the stream."""
    def other_range():
        with open(live.config, "a") as f:
            f.write('\n[datapath]\nreserved_ports = "30000-39999"\n')
    shown = L.snat_stream_across_a_restart(live, other_range)   # `show sessions`, then the table
    ports = {int(w.rpartition(":")[2]) for w in shown.split() if w.startswith("40.0.0.254:")}
    assert ports and all(p >= 40000 for p in ports), shown
    assert all(f"40.0.0.254 . tcp . {p}" in shown for p in ports), shown
