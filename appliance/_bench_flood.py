"""``appliance bench flood`` (root): a SYN flood from spoofed sources against
the vip that established flows use, with the session table far smaller than
the flood, and the kernel's NAT (nftables DNAT + conntrack with the same
table size) under the same flood for comparison.

Topology (appliance/_topology.py, one backend): client c0 10.0.0.2 -- a0 |
appliance | a1 -- b0 20.0.0.1. tcp 30.0.0.2:80 -> 20.0.0.1:8080 (an HTTP/1.1
server) and tcp 30.0.0.2:5201 -> 20.0.0.1:5201 (iperf3). A run, in each mode:

- ``pre`` seconds of quiet, ``flood`` seconds of flood, ``post`` seconds after;
- all along: one iperf3 stream through the vip (per-second throughput), a
  request loop on one keep-alive connection, and a new connection every
  50 ms (each given 3 s to connect and answer);
- the flood: trafgen on CPU 0, SYNs to 30.0.0.2:80 from random source
  addresses and ports, as fast as one CPU sends them. The backend answers
  each with a SYN-ACK that no one acknowledges (the sources are not there):
  every flood session stays half-open.

Reported per mode (suffix _appliance / _nftables): the transfer's
throughput before and during the flood and their ratio, the keep-alive
loop's failures and longest gap, the share of new connections started
during the flood that completed within 3 s and their median time, and for
the appliance the evictions and the time from the flood's end until the
table held no more tentative sessions than before it (recovery_s).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from ._bench_e2e import _counter, _mac
from ._topology import Topology, start_appliance

CONFIG = """
[sessions]
max = {max}
[[interface]]
name = "a0"
[[interface]]
name = "a1"
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 5201
backends = ["->20.0.0.1 5201"]
"""

NFT = """
table ip floodnat {
  chain prerouting {
    type nat hook prerouting priority -100;
    ip daddr 30.0.0.2 tcp dport 80 dnat to 20.0.0.1:8080
    ip daddr 30.0.0.2 tcp dport 5201 dnat to 20.0.0.1:5201
  }
}
"""

# HTTP/1.1 with keep-alive, a thread per connection
SERVER = r'''
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    def server_bind(self):
        import socket
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
S(("0.0.0.0", 8080), H).serve_forever()
'''

# The client side: a keep-alive loop and a new connection every 50 ms, for
# argv[1] seconds; prints one JSON object of what each saw, with times.
CLIENTS = r'''
import http.client, json, socket, sys, threading, time
seconds = float(sys.argv[1])
end = time.time() + seconds
keep, fresh = [], []
def keepalive():
    c = None
    while time.time() < end:
        t = time.time()
        try:
            if c is None:
                c = http.client.HTTPConnection("30.0.0.2", 80, timeout=3)
            c.request("GET", "/")
            ok = c.getresponse().read() == b"ok\n"
        except (OSError, http.client.HTTPException):
            ok, c = False, None
        keep.append((t, time.time() - t, ok))
        time.sleep(0.01)
def one(t):
    try:
        c = http.client.HTTPConnection("30.0.0.2", 80, timeout=3)
        c.request("GET", "/", headers={"Connection": "close"})
        ok = c.getresponse().read() == b"ok\n"
        c.close()
    except (OSError, http.client.HTTPException):
        ok = False
    fresh.append((t, time.time() - t, ok))
threads = [threading.Thread(target=keepalive)]
threads[0].start()
while time.time() < end:
    t = threading.Thread(target=one, args=(time.time(),))
    t.start()
    threads.append(t)
    time.sleep(0.05)
for t in threads:
    t.join()
print(json.dumps({"keep": keep, "fresh": fresh}))
'''

REQUIRED = ["trafgen", "iperf3", "nft", "taskset"]


class Flood:
    def __init__(self, table: int, pre: float, flood: float, post: float) -> None:
        self.table, self.pre, self.flood, self.post = table, pre, flood, post
        self.tmp = tempfile.mkdtemp(prefix="appliance-flood-")
        self.topo = Topology(backends=1)
        self.procs: list[subprocess.Popen] = []
        self.app: subprocess.Popen | None = None
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        t = self.topo
        be = t.ns_backends[0]
        for ns in (t.ns_client, be):
            t.run(ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
            # the backend's own SYN queue is not what is measured: room for the flood
            t.run(ns, "sysctl", "-qw", "net.ipv4.tcp_max_syn_backlog=65536")
            t.run(ns, "sysctl", "-qw", "net.core.somaxconn=65536")
        srv = os.path.join(self.tmp, "server.py")
        with open(srv, "w") as f:
            f.write(SERVER)
        self.procs.append(t.popen(be, sys.executable, srv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.procs.append(t.popen(be, "iperf3", "-s", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        t.run(t.ns_client, "ping", "-c", "1", "-W", "1", "10.0.0.1", check=False)
        t.run(be, "ping", "-c", "1", "-W", "1", "20.0.0.254", check=False)
        t.run(t.ns_app, "ping", "-c", "1", "-W", "1", "20.0.0.1", check=False)
        self.trafgen = os.path.join(self.tmp, "syn.trafgen")
        with open(self.trafgen, "w") as f:
            f.write("{\n  eth(da=%s, sa=%s),\n"
                    "  ipv4(saddr=10.0.0.2, saddr=drnd(), daddr=30.0.0.2, ttl=64),\n"
                    "  tcp(sp=drnd(), dp=80, seq=drnd(), syn, win=64240),\n}\n"
                    % (_mac(t, t.ns_app, "a0"), _mac(t, t.ns_client, "c0")))
        time.sleep(0.5)

    # -- modes -----------------------------------------------------------------

    def start(self, mode: str) -> None:
        if mode == "appliance":
            cfg = os.path.join(self.tmp, "flood.toml")
            with open(cfg, "w") as f:
                f.write(CONFIG.format(max=self.table))
            self.control = os.path.join(self.tmp, "control.sock")
            self.app = start_appliance(self.topo, cfg, self.tmp, control=self.control)
            time.sleep(1.2)
        else:
            path = os.path.join(self.tmp, "nft.conf")
            with open(path, "w") as f:
                f.write(NFT)
            self.topo.run(self.topo.ns_app, "nft", "-f", path)

    def stop(self, mode: str) -> None:
        if mode == "appliance":
            if self.app is not None:
                self.app.terminate()
                self.app.wait(15)
                self.app = None
        else:
            self.topo.run(self.topo.ns_app, "nft", "delete", "table", "ip", "floodnat", check=False)
            self.topo.run(self.topo.ns_app, "conntrack", "-F", check=False)

    def stats(self) -> dict:
        r = self.topo.run(self.topo.ns_app, sys.executable, "-P", "-m", "appliance", "show", "stats", "--json",
                          "--control", self.control, check=False, timeout=10)
        try:
            return json.loads(r.stdout)["nat"]
        except (ValueError, KeyError):
            return {}

    def measure(self, mode: str) -> dict:
        t = self.topo
        total = self.pre + self.flood + self.post
        iperf = t.popen(t.ns_client, "iperf3", "-c", "30.0.0.2", "-t", str(int(total)), "-i", "0.5", "--json",
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        clients = t.popen(t.ns_client, sys.executable, "-c", CLIENTS, str(total),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        t0 = time.time()
        samples: list[tuple[float, dict]] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                samples.append((time.time(), self.stats()))
                stop.wait(0.25)

        poller = threading.Thread(target=poll) if mode == "appliance" else None
        if poller:
            poller.start()
        time.sleep(self.pre)
        tx0 = _counter(t, t.ns_client, "c0", "tx_packets")
        flood_from = time.time()
        t.run(t.ns_client, "timeout", "-s", "INT", str(self.flood), "taskset", "-c", "0", "trafgen",
              "--dev", "c0", "--conf", self.trafgen, "--cpp", "-P", "1", check=False)
        flood_until = time.time()
        syns = _counter(t, t.ns_client, "c0", "tx_packets") - tx0
        out_clients = json.loads(clients.communicate(timeout=total + 30)[0] or "{}")
        out_iperf = json.loads(iperf.communicate(timeout=total + 30)[0] or "{}")
        if poller:
            # until the table is back to its real flows, or 30 s
            deadline = time.time() + 30
            while time.time() < deadline and (not samples or samples[-1][1].get("sessions_tentative", 1) > 2):
                time.sleep(0.25)
            stop.set()
            poller.join()
        res = {"syns": syns, "flood_pps": round(syns / (flood_until - flood_from))}
        res.update(self._transfer(out_iperf, t0, flood_from, flood_until))
        res.update(self._clients(out_clients, flood_from, flood_until))
        if mode == "appliance":
            res.update(self._table(samples, flood_from, flood_until))
        return res

    @staticmethod
    def _transfer(out: dict, t0: float, start: float, end: float) -> dict:
        ivs = out.get("intervals", [])
        rate = [(t0 + iv["sum"]["start"], t0 + iv["sum"]["end"], iv["sum"]["bits_per_second"]) for iv in ivs]
        before = [r for a, b, r in rate if b <= start]
        during = [r for a, b, r in rate if a >= start and b <= end]
        end_sum = out.get("end", {})
        sent = end_sum.get("sum_sent", {}).get("bytes", 0)
        received = end_sum.get("sum_received", {}).get("bytes", 0)
        gb = statistics.median(before) / 1e9 if before else 0.0
        gd = statistics.median(during) / 1e9 if during else 0.0
        return {"transfer_bytes_sent": sent, "transfer_bytes_received": received,
                "transfer_gbps_before": round(gb, 3), "transfer_gbps_during": round(gd, 3),
                "transfer_ratio": round(gd / gb, 3) if gb else 0.0,
                # iperf3's receiver stops counting at the end with data still in
                # flight, so received < sent is not loss: TCP lost nothing unless
                # the connection failed or stalled
                "transfer_complete": bool(received) and "error" not in out,
                "transfer_stalled_intervals": sum(1 for a, b, r in rate if r == 0),
                "transfer_slowest_interval_gbps": round(min((r for a, b, r in rate), default=0) / 1e9, 3)}

    @staticmethod
    def _clients(out: dict, start: float, end: float) -> dict:
        keep = out.get("keep", [])
        fresh = [f for f in out.get("fresh", []) if start <= f[0] <= end]
        times = [k[0] for k in keep]
        gaps = [b - a for a, b in zip(times, times[1:])]
        ok = [f[1] for f in fresh if f[2]]
        return {"keepalive_requests": len(keep), "keepalive_failures": sum(1 for k in keep if not k[2]),
                "keepalive_max_gap_ms": round(max(gaps, default=0) * 1000),
                "keepalive_requests_during": sum(1 for k in keep if start <= k[0] <= end),
                "new_connections_during": len(fresh),
                "new_connections_ok_ratio": round(len(ok) / len(fresh), 3) if fresh else 0.0,
                "new_connection_median_ms": round(statistics.median(ok) * 1000) if ok else None}

    @staticmethod
    def _table(samples: list, flood_start: float, flood_end: float) -> dict:
        last = samples[-1][1] if samples else {}
        counters = last.get("counters", {})
        quiet = [s for t, s in samples if t < flood_start and s]
        base = quiet[-1].get("sessions_tentative", 0) if quiet else 0
        recovered = next((t for t, s in samples
                          if t > flood_end and s and s.get("sessions_tentative", 1 << 30) <= base + 2), None)
        return {"table_max_sessions": max((s.get("sessions", 0) for _, s in samples if s), default=0),
                "evicted_half_open": counters.get("session_evicted_half_open", 0),
                "drop_session_full": counters.get("drop_session_full", 0),
                "recovery_s": round(recovered - flood_end, 1) if recovered else None}

    def close(self) -> None:
        if self.app is not None and self.app.poll() is None:
            self.app.kill()
        for p in self.procs:
            p.kill()
        self.topo.destroy()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _conntrack_max(value: int | None = None) -> int:
    """The kernel's conntrack table size (global: one namespace cannot set
    its own); set it to `value` when given. Returns the previous value."""
    path = "/proc/sys/net/netfilter/nf_conntrack_max"
    with open(path) as f:
        old = int(f.read())
    if value is not None:
        with open(path, "w") as f:
            f.write(str(value))
    return old


def run(table: int = 8192, pre: float = 4.0, flood: float = 6.0, post: float = 8.0,
        modes: tuple = ("appliance", "nftables")) -> dict:
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"appliance bench flood: missing tools {missing} (./dev installs them)")
    f = Flood(table, pre, flood, post)
    out: dict = {"table": table, "flood_seconds": flood}
    old_max = None
    try:
        for mode in modes:
            f.start(mode)   # nftables' nat table loads conntrack
            try:
                if mode == "nftables":
                    old_max = _conntrack_max(table)
                res = f.measure(mode)
            finally:
                f.stop(mode)
                if old_max is not None:
                    _conntrack_max(old_max)
                    old_max = None
            out.update({f"{k}_{mode}": v for k, v in res.items()})
    finally:
        if old_max is not None:
            _conntrack_max(old_max)
        f.close()
    return out
