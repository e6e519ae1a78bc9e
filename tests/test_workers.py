"""Two datapath workers (threads, one per RX queue) on veths with two queues,
each flow's two directions made to arrive on different queues, so on
different workers: the client side sends on queue 0 of its veth, the backend
and outside side on queue 1 (XPS on the senders' veths: a veth delivers
on the peer's RX queue of the number it was sent on). The live
tests of test_live.py that cover what a second worker could break run here
again: sessions made by one worker's new flow and used by the other's
replies, ICMP errors quoting a flow whose session another worker created,
the state file, reloads. Needs root."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

import test_live
from test_live import Live

pytestmark = pytest.mark.root

WORKERS = """
[datapath]
workers = 2

# a backend port nothing listens on: its ICMP port unreachable comes back
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 54
backends = ["->20.0.0.1 5999"]
"""

REFUSED = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"anyone?")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print(type(e).__name__)
"""


def _pin_queue(live: Live, ns: str, dev: str, queue: int) -> None:
    """Every CPU transmits on `queue` of dev (XPS: the kernel here has no tc
    classifiers or skbedit)."""
    every_cpu = format((1 << os.cpu_count()) - 1, "x")
    for q in range(live.topo.queues):
        live.topo.run(ns, "sh", "-c", f"echo {every_cpu if q == queue else 0} > "
                                      f"/sys/class/net/{dev}/queues/tx-{q}/xps_cpus")


class Live2(Live):
    def __init__(self, tmp_path) -> None:
        # native: a veth then delivers on its RX queue of the number sent on (generic
        # XDP records the TX queue number less one)
        super().__init__(tmp_path, queues=2, xdp_mode="native")
        try:
            t = self.topo
            _pin_queue(self, t.ns_client, "c0", 0)
            _pin_queue(self, t.ns_pod, "p0", 0)
            _pin_queue(self, t.ns_out, "o0", 1)
            for ns in t.ns_backends:
                _pin_queue(self, ns, "b0", 1)
            self.stop()
            self.config.write_text(self.config.read_text() + WORKERS)
            self.start()
        except BaseException:
            self.close()
            raise

    def worker_rx(self) -> dict:
        """(interface, queue) -> frames received, from the final statistics."""
        return {(s["interface"], s["queue"]): s["rx"] for s in self.final_stats()["sockets"]}


@pytest.fixture
def live(tmp_path):
    lv = Live2(tmp_path)
    yield lv
    lv.close()


def _split_over_workers(lv: Live2) -> None:
    """Every flow's requests came in on worker 0, its replies on worker 1."""
    stats = lv.final_stats()
    rx = {(s["interface"], s["queue"]): (s["worker"], s["rx"]) for s in stats["sockets"]}
    assert rx[("a0", 0)][0] == 0 and rx[("a0", 1)][0] == 1, rx
    assert rx[("a0", 0)][1] > 0 and rx[("a0", 1)][1] == 0, rx            # client -> vip: queue 0
    replies = rx[("a1", 1)][1] + rx[("a2", 1)][1]                           # backends -> client: queue 1
    assert replies > 0 and rx[("a1", 0)][1] + rx[("a2", 0)][1] <= 2, rx     # (an ARP/ND sent before XPS)
    workers = {w["worker"]: w for w in stats["workers"]}
    assert sorted(workers) == [0, 1] and workers[0]["rx"] > 0 and workers[1]["rx"] > 0, workers
    assert workers[0]["new_flow_queued"] > 0 and workers[1]["new_flow_queued"] == 0, workers
    assert stats["io"]["drop_new_flow_busy"] == 0, stats["io"]


def test_both_directions_on_different_workers_tcp_and_udp(live):
    seen = {live.curl(live.topo.ns_client, "http://30.0.0.2/") for _ in range(12)}
    assert seen == {"backend0 10.0.0.2", "backend1 10.0.0.2"}
    seen6 = {live.curl(live.topo.ns_client, "http://[fd30::2]/") for _ in range(12)}
    assert seen6 == {"backend0 fd00::2", "backend1 fd00::2"}
    for vip in ("30.0.0.2", "fd30::2"):
        peer, text = live.udp(live.topo.ns_client, vip, 53).split(" ", 1)
        assert peer == vip and text.split()[0] in ("backend0", "backend1")
    assert live.stop() == 0
    _split_over_workers(live)


def test_many_new_flows_at_once_are_settled_in_order_and_answered(live):
    """48 UDP flows sent at once: each new flow waits in worker 0's queue
    for the slow path and is sent by worker 0; every reply (worker 1) finds
    its session."""
    r = live.run(live.topo.ns_client, sys.executable, "-c", test_live.UDP_FLOWS, "30.0.0.2", "48", timeout=60)
    assert r.stdout.strip() == "48", r.stdout + r.stderr
    assert live.stop() == 0
    _split_over_workers(live)


def test_state_file_with_two_workers(live):
    test_live.test_sessions_survive_a_restart_with_state_file(live)
    workers = live.final_stats()["workers"]
    assert len(workers) == 2 and all(w["rx"] > 0 for w in workers), workers


@pytest.mark.parametrize("what, ttl, vips, transit, counters", test_live.ICMP_ERRORS,
                         ids=[c[0] for c in test_live.ICMP_ERRORS])
def test_icmp_errors_about_flows_of_the_other_worker(live, what, ttl, vips, transit, counters):
    test_live.test_icmp_errors_about_translated_frames_quote_the_client_flow(live, what, ttl, vips, transit,
                                                                              counters)


def test_a_backends_icmp_error_on_the_other_worker_reaches_the_client(live):
    """The request is worker 0's new flow; the backend's port unreachable,
    quoting the translated request, arrives on worker 1, which finds the
    session through the quote and translates the error back."""
    r = live.run(live.topo.ns_client, sys.executable, "-c", REFUSED, "30.0.0.2", "54")
    assert r.stdout.strip() == "refused", r.stdout + r.stderr
    assert live.stop() == 0
    rx = {(s["interface"], s["queue"]): s["rx"] for s in live.final_stats()["sockets"]}
    assert rx[("a1", 1)] >= 1, rx


def test_path_mtu_discovery_with_two_workers(live):
    test_live.test_path_mtu_discovery_through_a_vip_and_transit(live)


def test_ping_traceroute_and_snat_with_two_workers(live):
    test_live.test_ping_and_traceroute_through_the_appliance(live)
    test_live.test_snat_excluded_prefixes_and_ping(live)


def test_reload_and_route_churn_under_load_with_two_workers(live):
    """UDP request loops through the vip while the file is reloaded and
    routes come and go: the tables change only between the workers'
    batches, and every request is answered."""
    stop = threading.Event()
    answered, failed = [], []

    def loop():
        while not stop.is_set():
            r = live.run(live.topo.ns_client, sys.executable, "-c", test_live.UDP_FLOWS, "30.0.0.2", "8",
                         timeout=30)
            (answered if r.stdout.strip() == "8" else failed).append(r.stdout + r.stderr)

    t = threading.Thread(target=loop)
    t.start()
    try:
        app = live.topo.ns_app
        for i in range(20):
            live.topo.run(app, "ip", "route", "add", f"198.18.{i}.0/24", "via", "20.0.0.1")
            if i % 5 == 0:
                live.config.write_text(live.config.read_text() + f"\n# reload {i}\n")
            time.sleep(0.15)
            live.topo.run(app, "ip", "route", "del", f"198.18.{i}.0/24")
    finally:
        stop.set()
        t.join(60)
    assert len(answered) >= 3 and not failed, (len(answered), failed[:2])
    assert live.stop() == 0
    stats = live.final_stats()
    assert stats["kernel"]["snapshots"] >= 2 and stats["io"]["drop_new_flow_busy"] == 0, stats["kernel"]
    assert "configuration reloaded" in live.log.read_text()
