"""The command line: demo, check-config, bench core (small), --help."""

import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True)


def test_demo_shows_translations_sessions_and_counters():
    r = run("demo", "--offline")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "out      tcp 10.0.0.1:40001 -> 20.0.0." in out
    assert "back     tcp 30.0.0.2:80 -> 10.0.0.1:40001 SA" in out
    assert "DROPPED (drop_no_translation)" in out
    assert "udp 30.0.0.1:33333 -> 8.8.8.8:53" in out
    assert "Sessions (show sessions):" in out and "Counters:" in out


def test_check_config(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[[translation]]\nproto = "udp"\nvip = "30.0.0.2"\nport = 53\nbackends = ["->20.0.0.1"]\n')
    r = run("check-config", str(p))
    assert r.returncode == 0 and "udp/30.0.0.2/53: udp vip 30.0.0.2 53 to ->20.0.0.1  [selector hash]" in r.stdout
    p.write_text(p.read_text() + '[snat]\nip4 = "30.0.0.1"\ninterfaces = ["eth1"]\npolicy = "k8s"\n'
                 'pod_prefixes = ["10.1.0.0/16"]\n')
    r = run("check-config", str(p))
    assert r.returncode == 0 and "policy=k8s pod_prefixes=['10.1.0.0/16']" in r.stdout, r.stdout + r.stderr
    p.write_text("flow_hash_seed = -1\n")
    r = run("check-config", str(p))
    assert r.returncode == 1 and f"{p}:1: flow_hash_seed: must be between" in r.stderr


def test_bench_core_json_keys():
    r = run("bench", "core", "--json", "--sessions", "20000", "--flows", "10000", "--seconds", "0.2")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in ("fastpath_pps", "new_sessions_per_s", "new_sessions_per_s_evicting", "bytes_per_session"):
        assert res[key] > 0


def test_help_lists_the_commands():
    r = run("--help")
    for word in ("demo", "replay", "check-config", "bench core"):
        assert word in r.stdout


def test_explain_tells_backend_snat_and_rewrite():
    cfg = "appliance/examples/demo.toml"
    r = run("explain", "--config", cfg, "tcp", "10.0.0.1:40001", "30.0.0.2:80")
    assert r.returncode == 0, r.stderr
    chosen = [line for line in r.stdout.splitlines() if line.startswith("backend chosen:")][0]
    # the same flow in the offline demo goes to the same backend (same seed, same hash)
    demo = run("demo", "--offline").stdout
    went = demo.split("client 1 -> vip")[1].split("out      tcp 10.0.0.1:40001 -> ")[1].split(":")[0]
    assert went in chosen
    r = run("explain", "--config", cfg, "--interface", "tap0", "udp", "10.1.0.5:1", "20.0.0.7:53")
    assert "is excluded by 20.0.0.0/24" in r.stdout and "session: bypass" in r.stdout
    r = run("explain", "--config", cfg, "tcp", "10.0.0.1:1", "30.0.0.2:443")
    assert "verdict: dropped (drop_no_translation)" in r.stdout
    r = run("explain", "--config", cfg, "tcp", "10.0.0.1", "30.0.0.2:80")
    assert r.returncode == 1 and "expected ADDRESS:PORT" in r.stderr


def test_show_stats_text_has_every_nested_figure_aligned():
    from appliance.__main__ import _endpoint, _stats_lines

    answer = {"nat": {"sessions": 0, "capacity": 16, "counters": {"translated": 3, "dropped": 0},
                      "plugin_errors": {"my-plugin": 2}, "plugins": {"first-party:health": {"probes": 7}},
                      "new_flows_per_translation": {"web": 3}, "translations": [{"name": "web"}]},
              "io": {"rx": 5, "tx": 0}, "config": {"last_error": None, "reloads": 1},
              "sockets": [{"interface": "a0", "queue": 0, "worker": 1, "rx": 0, "io": "xdp"}],
              "workers": [{"worker": 1, "cpu": None, "rx": 9, "new_flow_waiting": 0}],
              "bgp": {"announced": ["30.0.0.2", "fd30::2"], "prefixes": True, "withheld": None},
              "sync": {"peers": ["[fd09::3]:7700"], "sync_bad_mac": 0}}
    lines = _stats_lines(answer)
    rows = dict(line.split() for line in lines)
    assert rows == {"nat.sessions": "0", "nat.capacity": "16", "nat.translated": "3", "nat.dropped": "0",
                    "nat.plugin_errors.my-plugin": "2", "nat.plugins.first-party:health.probes": "7",
                    "nat.new_flows_per_translation.web": "3", "io.rx": "5", "io.tx": "0", "config.reloads": "1",
                    "sockets.a0.q0.rx": "0", "sockets.a0.q0.worker": "1", "sockets.a0.q0.io": "xdp", "workers.1.rx": "9",
                    "workers.1.new_flow_waiting": "0", "config.last_error": "-",
                    "bgp.announced": "30.0.0.2,fd30::2", "bgp.prefixes": "yes", "bgp.withheld": "-",
                    "sync.peers": "[fd09::3]:7700", "sync.sync_bad_mac": "0"}
    assert len({line.rindex(" ") for line in lines}) == 1          # one column
    assert _endpoint("fd00::1", 53) == "[fd00::1]:53" and _endpoint("10.0.0.1", 53) == "10.0.0.1:53"


def test_every_subcommand_has_a_description_and_takes_log_level_after_it():
    from appliance.__main__ import _parser

    p = _parser()
    sub = next(a for a in p._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert parser.description, name
        assert any("--log-level" in a.option_strings for a in parser._actions), name
    r = run("check-config", "appliance/examples/demo.toml", "--log-level", "DEBUG")
    assert r.returncode == 0, r.stderr
    assert p.parse_args(["replay", "--config", "c", "i", "o"]).interface == \
        p.parse_args(["explain", "--config", "c", "tcp", "1.2.3.4:1", "5.6.7.8:2"]).interface == "eth0"


def test_logs_as_json_lines_before_or_after_the_command(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[translation]]\nproto = "udp"\nvip = "30.0.0.2"\nport = 53\nbackends = ["->20.0.0.1"]\n')
    cap = tmp_path / "in.pcap"
    cap.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x02\x00\x04\x00" + bytes(8) + b"\xff\xff\x00\x00\x01\x00\x00\x00")
    for args in (["--log-json", "--log-level", "INFO", "replay", "--config", str(cfg)],
                 ["replay", "--config", str(cfg), "--log-json", "--log-level", "INFO"]):
        r = run(*args, str(cap), str(tmp_path / "out.pcap"))
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr      # the option is taken before the command and after it
    import json as _json
    import logging

    from appliance.__main__ import _JsonLogs

    rec = logging.LogRecord("appliance.x", logging.WARNING, __file__, 1, "backend %s is down", ("b",), None)
    assert _json.loads(_JsonLogs().format(rec))["message"] == "backend b is down"


def test_every_package_of_the_tree_is_installed():
    """pyproject lists its packages by hand: a new subpackage left out is
    missing from the wheel and the container (appliance.cluster once was)."""
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "appliance").rglob("__init__.py")}
    assert found, "no package found: the walk proves nothing"
    assert found <= listed, f"not in pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
