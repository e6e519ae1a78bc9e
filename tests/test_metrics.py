"""Prometheus metrics: the exposition text built from a statistics answer
(no I/O), and `appliance run --metrics` answering a scrape live (root)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from appliance._metrics import parse_address, render

STATS = {
    "nat": {"sessions": 3, "capacity": 1024, "sessions_created": 5, "sessions_expired": 2,
            "counters": {"translated": 40, "drop_ip4_bad_checksum": 1},
            "new_flows_per_translation": {"web": 4, "dns": 1}, "plugin_errors": {'my"plugin.select': 1},
            "translations": [
                {"name": "web", "new_flows": 4, "denied": 2, "backends": [
                    {"name": "web-a", "weight": 3, "state": "active", "sessions": 2, "new_flows": 3},
                    {"name": "->20.0.0.2 8080", "weight": 1, "state": "down", "sessions": 0, "new_flows": 1}]},
                {"name": "dns", "new_flows": 1, "denied": 0, "backends": []}],
            "plugins": {"first-party:affinity": {"entries": 7}}},
    "io": {"rx": 50, "drop_new_flow_busy": 0},
    "xdp": {"pass_kernel": 7, "held": 0},
    "sockets": [{"interface": "a0", "queue": 0, "rx": 44}, {"interface": "a0", "queue": 1, "rx": 6}],
    "interfaces": {"a0": "up", "a1": "gone"},
    "kernel": {"snapshots": 9},
    "config": {"path": "x.toml", "reloads": 2, "rejected": 1, "last_error": "x.toml:3: port: bad"},
    "bgp": {"daemon": "running", "pid": 9, "announced": ["30.0.0.2", "fd30::2"], "prefixes": True,
            "neighbors": {"10.9.0.1": "Established", "fd09::1": "Active Socket: Connection refused"},
            "starts": 1, "configures": 3, "errors": 0, "last_error": None, "withheld": "draining"},
    "drain": {"since_s": 1.5, "stops_in_s": 28.5, "sessions": 4},
    "sync": {"messages_sent": 12, "sync_bad_mac": 2, "synced_sessions": 40, "peers": ["10.9.1.2:7700"]},
}

# (metric line as it must appear)
EXPECTED = [
    "appliance_sessions 3",
    "appliance_sessions_capacity 1024",
    "appliance_sessions_created_total 5",
    "appliance_nat_translated_total 40",
    "appliance_nat_drop_ip4_bad_checksum_total 1",
    'appliance_translation_new_flows_total{translation="web"} 4',
    'appliance_translation_denied_total{translation="web"} 2',
    'appliance_backend_sessions{translation="web",backend="web-a"} 2',
    'appliance_backend_new_flows_total{translation="web",backend="->20.0.0.2 8080"} 1',
    'appliance_backend_weight{translation="web",backend="web-a"} 3',
    'appliance_backend_state{translation="web",backend="->20.0.0.2 8080",state="down"} 1',
    'appliance_plugin_figure{plugin="first-party:affinity",figure="entries"} 7',
    'appliance_plugin_errors_total{where="my\\"plugin.select"} 1',
    "appliance_io_rx_total 50",
    "appliance_io_drop_new_flow_busy_total 0",
    "appliance_xdp_pass_kernel_total 7",
    'appliance_socket_rx_frames_total{interface="a0",queue="1"} 6',
    'appliance_interface_up{interface="a0"} 1',
    'appliance_interface_up{interface="a1"} 0',
    "appliance_kernel_snapshots_total 9",
    "appliance_config_reloads_total 2",
    "appliance_config_rejected_total 1",
    "appliance_bgp_daemon_up 1",
    "appliance_bgp_vips_announced 2",
    'appliance_bgp_withheld{reason="draining"} 1',
    'appliance_bgp_neighbor_established{neighbor="10.9.0.1"} 1',
    'appliance_bgp_neighbor_established{neighbor="fd09::1"} 0',
    "appliance_draining 1",
    "appliance_drain_stops_in_seconds 28.5",
    "appliance_sync_messages_sent_total 12",
    "appliance_sync_bad_mac_total 2",
    "appliance_sync_sessions 40",
]


def test_render_is_prometheus_text_with_help_and_type():
    text = render(STATS)
    lines = text.splitlines()
    for line in EXPECTED:
        assert line in lines, line
    # every sample's family is declared once, with a help text and a type
    types = [m.groups() for m in map(re.compile(r"# TYPE (\S+) (counter|gauge)$").match, lines) if m]
    families = dict(types)
    assert len(families) == len(types), "a family declared twice"
    samples = [re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines if not line.startswith("#")]
    assert set(samples) <= set(families)
    assert {f for f, kind in families.items() if kind == "counter"} == {f for f in families if f.endswith("_total")}
    assert "# HELP appliance_nat_drop_ip4_bad_checksum_total IPv4 header checksum wrong" in lines


@pytest.mark.parametrize("text, expect", [
    ("127.0.0.1:9468", ("127.0.0.1", 9468)),
    ("[::1]:9468", ("::1", 9468)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
])
def test_metrics_address(text, expect):
    assert parse_address(text) == expect


@pytest.mark.parametrize("text", ["9468", "host", ":9468", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x"])
def test_bad_metrics_address(text):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_address(text)


def test_run_refuses_a_taken_metrics_port_or_unusable_paths(tmp_path):
    """Checked (or bound) before anything is attached: a clear error, no
    traceback; the state file's would only fail at the stop otherwise."""
    import socket

    cfg = tmp_path / "c.toml"
    cfg.write_text('[[interface]]\nname = "lo"\n')
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for args, message in (
                (["--metrics", f"127.0.0.1:{port}"], f"--metrics 127.0.0.1:{port}: Address already in use"),
                (["--control", str(tmp_path / "no" / "dir" / "c.sock")], "No such file or directory"),
                (["--ready-file", str(tmp_path / "no" / "ready")], "its directory does not exist"),
                (["--state-file", str(tmp_path)], "is a directory"),
                (["--state-file", str(tmp_path / "no" / "s")], "its directory does not exist")):
            r = subprocess.run([sys.executable, "-m", "appliance", "run", "--config", str(cfg), *args],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    finally:
        taken.close()


def test_run_rejects_a_bad_metrics_address(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[interface]]\nname = "lo"\n')
    r = subprocess.run([sys.executable, "-m", "appliance", "run", "--config", str(cfg), "--metrics", "9468"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "--metrics: '9468' is not HOST:PORT" in r.stderr, r.stderr


@pytest.mark.root
def test_a_running_appliance_answers_a_scrape(tmp_path):
    from appliance._topology import Topology, start_appliance, start_server

    with Topology(backends=1) as topo:
        cfg = tmp_path / "c.toml"
        cfg.write_text('[[interface]]\nname = "a0"\n[[interface]]\nname = "a1"\n[[translation]]\nproto = "tcp"\n'
                       'vip = "30.0.0.2"\nport = 80\nbackends = ["->20.0.0.1 8080"]\n')
        server = start_server(topo, topo.ns_backends[0], "http", 8080, "backend0")
        app = start_appliance(topo, str(cfg), str(tmp_path), args=("--metrics", "127.0.0.1:9468"))
        try:
            time.sleep(0.3)
            r = topo.run(topo.ns_client, "curl", "-s", "-m", "5", "http://30.0.0.2/", check=False)
            assert r.stdout.startswith("backend0"), r.stdout + r.stderr
            scrape = topo.run(topo.ns_app, "curl", "-s", "-i", "-m", "5", "http://127.0.0.1:9468/metrics").stdout
            assert scrape.startswith("HTTP/1.0 200 OK") and "text/plain; version=0.0.4" in scrape, scrape[:300]
            translated = int(re.search(r"^appliance_nat_translated_total (\d+)", scrape, re.M).group(1))
            assert translated >= 5, scrape       # the request's packets both ways
            assert 'appliance_interface_up{interface="a0"} 1' in scrape
            other = topo.run(topo.ns_app, "curl", "-s", "-i", "-m", "5", "http://127.0.0.1:9468/").stdout
            assert other.startswith("HTTP/1.0 404"), other
            # scrapers that reset the connection, before or after asking, are their own business
            rude = ("import socket, struct\n"
                    "for ask in (b'', b'GET /metrics HTTP/1.0\\r\\n\\r\\n') * 10:\n"
                    "    s = socket.create_connection(('127.0.0.1', 9468))\n"
                    "    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
                    "    s.sendall(ask); s.close()\n")
            topo.run(topo.ns_app, sys.executable, "-c", rude)
            time.sleep(0.5)
            assert app.poll() is None, (tmp_path / "appliance.log").read_text()
            again = topo.run(topo.ns_app, "curl", "-s", "-i", "-m", "5", "http://127.0.0.1:9468/metrics").stdout
            assert again.startswith("HTTP/1.0 200 OK")
        finally:
            app.terminate()
            app.wait(15)
            server.kill()


def test_prometheus_own_parser_reads_the_metrics_of_a_real_core():
    from prometheus_client.parser import text_string_to_metric_families

    from appliance.testing import Nat, tcp

    nat = Nat('[[translation]]\nname = "web"\nproto = "tcp"\nvip = "30.0.0.2"\nport = 80\n'
              'backends = [{ to = "->20.0.0.1 8080", name = "web-a", weight = 2 }, "->20.0.0.2 8080"]\n')
    for i in range(20):
        nat.send(tcp(f"10.0.0.{i + 1}", 1000, "30.0.0.2", 80))
    nat.send(tcp("10.0.0.1", 1000, "30.0.0.2", 81))     # no translation on that port: dropped
    stats = dict(STATS, nat=nat.core.statistics().as_dict())
    families = {f.name: f for f in text_string_to_metric_families(render(stats))}
    sessions = {s.labels["backend"]: s.value for s in families["appliance_backend_sessions"].samples}
    assert sessions == {"web-a": sum(1 for x in nat.sessions if x.backend_name == "web-a"),
                        "->20.0.0.2 8080": sum(1 for x in nat.sessions if x.backend_name == "->20.0.0.2 8080")}
    assert sum(sessions.values()) == 20
    drops = {s.labels["reason"]: s.value for s in families["appliance_drops"].samples
             if s.name == "appliance_drops_total"}
    assert drops["no_translation"] == 1 and all(v == 0 for k, v in drops.items() if k != "no_translation")
