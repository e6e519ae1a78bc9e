"""`appliance replay` end to end: pcap and pcapng in, pcap out, counters,
errors. The output is checked by dpkt's own pcap reader."""

import ipaddress
import json
import subprocess
import sys

import dpkt
import pytest

from appliance.replay import write_pcapng
from packets import icmp_echo, udp

CONF = """
[timeouts]
session = 10
[snat]
ip4 = "30.0.0.1"
interfaces = ["tap0"]
[[translation]]
proto = "udp"
vip = "30.0.0.2"
port = 53
backends = ["->20.0.0.1 5353"]
"""


def run(*args):
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True)


def write_pcap(path, frames, nano=False):
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, nano=nano)
        for ts, fr in frames:
            w.writepkt(fr, ts=ts)


def read_pcap(path):
    with open(path, "rb") as f:
        return [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(f)]


@pytest.fixture
def conf(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(CONF)
    return str(p)


def test_pcap_replay_translates_passes_drops_in_order(tmp_path, conf):
    frames = [
        (100.0, udp("10.0.0.1", 5000, "30.0.0.2", 53)),
        (100.5, udp("20.0.0.1", 5353, "10.0.0.1", 5000)),
        (101.0, udp("10.0.0.1", 5000, "40.0.0.1", 53)),       # transit: unchanged
        (101.5, udp("10.0.0.1", 5000, "30.0.0.2", 54)),       # vip, no translation: dropped
        (102.0, b"\x00" * 10),                                 # runt: dropped
    ]
    write_pcap(tmp_path / "in.pcap", frames)
    r = run("replay", "--config", conf, "--json", str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (rep["frames"], rep["translated"], rep["passed"], rep["dropped"]) == (5, 2, 1, 2)
    assert rep["drops"] == {"drop_no_translation": 1, "drop_eth_truncated": 1}
    assert rep["sessions_created"] == 1
    out = read_pcap(tmp_path / "out.pcap")
    assert [ts for ts, _ in out] == [100.0, 100.5, 101.0]
    assert out[0][1] == udp("10.0.0.1", 5000, "20.0.0.1", 5353)
    assert out[1][1] == udp("30.0.0.2", 53, "10.0.0.1", 5000)
    assert out[2][1] == frames[2][1]


def test_timeouts_follow_capture_time(tmp_path, conf):
    frames = [(0.0, udp("10.1.0.1", 5000, "9.9.9.9", 53)),
              (9.0, udp("10.1.0.2", 5000, "9.9.9.9", 53)),      # same port -> gets another
              (19.5, udp("10.1.0.2", 5000, "9.9.9.9", 53)),     # 10.5 s later: new session
              ]
    write_pcap(tmp_path / "in.pcap", frames)
    r = run("replay", "--config", conf, "--interface", "tap0", "--json", str(tmp_path / "in.pcap"),
            str(tmp_path / "out.pcap"))
    rep = json.loads(r.stdout)
    assert (rep["sessions_created"], rep["sessions_expired"], rep["sessions_active"]) == (3, 2, 1)
    out = read_pcap(tmp_path / "out.pcap")
    sports = [dpkt.ethernet.Ethernet(b).data.data.sport for _, b in out]
    assert sports[0] == 5000 and sports[1] != 5000
    assert sports[2] == 5000, "the first session expired by capture time, so the port is free again"


def test_pcapng_interfaces_by_name(tmp_path, conf):
    pkts = [(1_000_000_000, "tap0", icmp_echo("10.1.0.1", "9.9.9.9", 3)),
            (1_000_000_500, "eth0", icmp_echo("10.1.0.1", "9.9.9.9", 4)),
            (1_000_001_000, "eth0", icmp_echo("9.9.9.9", "30.0.0.1", 3, reply=True))]
    write_pcapng(str(tmp_path / "in.pcapng"), pkts)
    r = run("replay", "--config", conf, "--json", str(tmp_path / "in.pcapng"), str(tmp_path / "out.pcap"))
    assert r.returncode == 0, r.stderr
    out = read_pcap(tmp_path / "out.pcap")
    assert [b for _, b in out] == [icmp_echo("30.0.0.1", "9.9.9.9", 3), pkts[1][2],
                                   icmp_echo("9.9.9.9", "10.1.0.1", 3, reply=True)]
    with open(tmp_path / "out.pcap", "rb") as f:
        assert dpkt.pcap.Reader(f).dloff == 14      # Ethernet link type


def test_verbose_prints_a_line_per_frame(tmp_path, conf):
    write_pcap(tmp_path / "in.pcap", [(1.0, udp("10.0.0.1", 5000, "30.0.0.2", 53))])
    r = run("replay", "-v", "--config", conf, str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"))
    assert "#0 eth0 udp 10.0.0.1:5000 -> 30.0.0.2:53 -> forward: udp 10.0.0.1:5000 -> 20.0.0.1:5353" in r.stdout
    assert "translated 1" in r.stdout


def test_errors(tmp_path, conf):
    (tmp_path / "junk.pcap").write_bytes(b"not a capture at all")
    r = run("replay", "--config", conf, str(tmp_path / "junk.pcap"), str(tmp_path / "o.pcap"))
    assert r.returncode == 1 and "not a pcap or pcapng file" in r.stderr
    r = run("replay", "--config", conf, str(tmp_path / "missing.pcap"), str(tmp_path / "o.pcap"))
    assert r.returncode == 1 and "missing.pcap: cannot open" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[snat]\nip4 = 5\n")
    write_pcap(tmp_path / "in.pcap", [])
    r = run("replay", "--config", str(bad), str(tmp_path / "in.pcap"), str(tmp_path / "o.pcap"))
    assert r.returncode == 1 and f"{bad}:2: snat.ip4: expected a string" in r.stderr


def test_nanosecond_capture_time_is_exact(tmp_path, conf):
    """pcapng at nanosecond resolution: 1 ns past the 10 s timeout is expired."""
    t0 = 1_000_000_000_000_000_000
    pkts = [(t0, "tap0", udp("10.1.0.1", 5000, "9.9.9.9", 53)),
            (t0 + 10_000_000_000, "tap0", udp("10.1.0.1", 5000, "9.9.9.9", 53)),      # exactly 10 s: alive
            (t0 + 20_000_000_001, "tap0", udp("10.1.0.1", 5000, "9.9.9.9", 53))]      # 10 s + 1 ns: expired
    write_pcapng(str(tmp_path / "in.pcapng"), pkts)
    r = run("replay", "--config", conf, "--json", str(tmp_path / "in.pcapng"), str(tmp_path / "out.pcap"))
    rep = json.loads(r.stdout)
    assert (rep["sessions_created"], rep["sessions_expired"]) == (2, 1)
    magic = (tmp_path / "out.pcap").read_bytes()[:4]
    assert magic == bytes.fromhex("4d3cb2a1"), "nanosecond input -> nanosecond pcap out"


def test_replay_is_byte_identical_run_after_run(tmp_path, conf):
    """SNAT source ports collide here (fifty clients, one source port, one
    destination): the ports chosen depend on the session table's seed, which
    replay takes from flow_hash_seed (or --seed), not from the process."""
    frames = [(1.0 + i / 100, udp(f"10.1.0.{i + 1}", 5000, "9.9.9.9", 53)) for i in range(50)]
    cap = tmp_path / "in.pcap"
    write_pcap(cap, frames)
    outs = []
    for k, extra in enumerate(([], [], ["--seed", "99"])):
        out = tmp_path / f"out{k}.pcap"
        r = run("replay", "--config", conf, "--interface", "tap0", *extra, str(cap), str(out))
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]   # the seed is what decides: another one, other ports
    ports = {dpkt.ethernet.Ethernet(f).data.data.sport for _, f in read_pcap(tmp_path / "out0.pcap")}
    assert len(ports) == 50


def test_a_capture_with_both_directions_of_colliding_snat_flows_is_restored(tmp_path, conf):
    """The replies of a capture (here: written from what a first replay
    allocated) find their sessions in a later replay of the same input:
    the SNAT ports are the same on every run."""
    out_frames = [(1.0 + i / 100, udp(f"10.1.0.{i + 1}", 5000, "9.9.9.9", 53)) for i in range(20)]
    cap = tmp_path / "out.pcap"
    write_pcap(cap, out_frames)
    first = tmp_path / "first.pcap"
    assert run("replay", "--config", conf, "--interface", "tap0", str(cap), str(first)).returncode == 0
    ports = [dpkt.ethernet.Ethernet(f).data.data.sport for _, f in read_pcap(first)]
    replies = [(2.0 + i / 100, udp("9.9.9.9", 53, "30.0.0.1", p)) for i, p in enumerate(ports)]
    both = tmp_path / "both.pcap"
    write_pcap(both, out_frames + replies)
    again = tmp_path / "again.pcap"
    r = run("replay", "--config", conf, "--interface", "tap0", "--json", str(both), str(again))
    assert r.returncode == 0, r.stderr
    back = [dpkt.ethernet.Ethernet(f).data for _, f in read_pcap(again)][20:]
    assert [(str(ipaddress.ip_address(p.dst)), p.data.dport) for p in back] == \
        [(f"10.1.0.{i + 1}", 5000) for i in range(20)]
    assert len(set(ports)) == 20      # they collided: nineteen ports were chosen, not kept


def test_a_capture_cut_in_a_frame_replays_what_came_before_and_says_where(tmp_path, conf):
    frames = [(1.0 + i / 10, udp(f"10.0.0.{i + 1}", 5000, "30.0.0.2", 53)) for i in range(5)]
    whole = tmp_path / "whole.pcap"
    write_pcap(whole, frames)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) - 20])        # the last frame cut in its middle
    out = tmp_path / "out.pcap"
    r = run("replay", "--config", conf, "--json", str(cut), str(out))
    assert r.returncode == 3, r.stderr
    report = json.loads(r.stdout)
    assert report["frames"] == 4 and "truncated packet data at offset" in report["damaged"]
    assert "the capture is damaged" in r.stderr and "4 frames before it" in r.stderr
    assert len(read_pcap(out)) == 4
    # cut inside the first frame: nothing to replay, and no empty "result" left behind
    cut.write_bytes(data[:24 + 16 + 10])
    r = run("replay", "--config", conf, str(cut), str(out := tmp_path / "none.pcap"))
    assert r.returncode == 1 and "truncated packet data" in r.stderr and not out.exists()
