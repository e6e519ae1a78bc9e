"""Instances lost, drained and added under traffic (issue 16): the scenario
behind tests/test_cluster.py and ``appliance bench failover``.

Three instances behind a BIRD router's ECMP route (appliance/
_cluster_topology.py). While TCP downloads (paced, so they span the
scenario), a UDP stream and pings run through the vips, one instance
carrying flows is SIGKILLed, another is drained with ``appliance cnat
drain``, and the killed one is started again. Measured: the time from the
SIGKILL to the router's withdrawal and to the first packet through a
survivor, the routes' changes, what each flow lost, and whether every
download arrived whole from the one backend it started with.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from ._cluster_topology import CLUSTER_KEY, HOLD, ICMP_VIP, OUTSIDE, VIP4, ClusterTopology, instance_config

#: a paced TCP source (each connection: "N\n" -> N bytes of a fixed pattern,
#: then its backend's name) and a UDP echo that names its backend, on every
#: backend address
SERVER = r'''
import socket, sys, threading, time
BLOCK = bytes(range(256)) * 256
def serve_tcp(addr):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 8080)); s.listen(64)
    def one(c):
        with c:
            n = int(c.makefile("rb").readline())
            sent = 0
            while sent < n:
                k = min(len(BLOCK), n - sent); c.sendall(BLOCK[:k]); sent += k; time.sleep(0.02)
            c.sendall(addr.encode().ljust(40))
    while True:
        c, _ = s.accept(); threading.Thread(target=one, args=(c,), daemon=True).start()
def serve_udp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, 5353))
    while True:
        d, a = s.recvfrom(2048); s.sendto(addr.encode().ljust(16) + d, a)
for a in sys.argv[1:]:
    threading.Thread(target=serve_tcp, args=(a,), daemon=True).start()
    if ":" not in a:
        threading.Thread(target=serve_udp, args=(a,), daemon=True).start()
print("serving", flush=True)
threading.Event().wait()
'''

#: the client: downloads, a UDP stream, a ping flow; prints one JSON line at the end
CLIENT = r'''
import hashlib, json, socket, subprocess, sys, threading, time
vip4, vip6, icmp_vip, n_tcp, size, seconds, snat_target = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
BLOCK = bytes(range(256)) * 256
def expected(n):
    h = hashlib.sha256(); left = n
    while left: k = min(len(BLOCK), left); h.update(BLOCK[:k]); left -= k
    return h.hexdigest()
want = expected(size)
res = {"tcp": [], "udp": {}, "ping": {}}
def download(i):
    vip = snat_target if i == n_tcp else vip6 if i % 4 == 3 else vip4
    r = {"vip": vip, "ok": False}
    try:
        s = socket.create_connection((vip, 8080 if vip == snat_target else 80), timeout=30); s.settimeout(30)
        s.sendall(b"%d\n" % size); h = hashlib.sha256(); got = 0; tail = b""
        while True:
            d = s.recv(262144)
            if not d: break
            if got < size:
                k = min(len(d), size - got); h.update(d[:k]); got += k; tail += d[k:]
            else:
                tail += d
        r.update(bytes=got, ok=got == size and h.hexdigest() == want, backend=tail.strip().decode(errors="replace"))
    except OSError as e:
        r["error"] = str(e)
    res["tcp"].append(r)
def udp_stream():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.005); s.connect((vip4, 53))
    sent = 0; names = {}; got = set(); t_end = time.time() + seconds; arrivals = []
    while time.time() < t_end:
        s.send(b"%08d" % sent); sent += 1
        deadline = time.time() + 0.01
        while time.time() < deadline:
            try:
                d = s.recv(2048)
            except OSError:
                continue
            names[d[:16].strip().decode()] = names.get(d[:16].strip().decode(), 0) + 1; got.add(int(d[16:24]))
            arrivals.append(time.time())
    time.sleep(0.3)
    try:
        while True:
            d = s.recv(2048); got.add(int(d[16:24])); names[d[:16].strip().decode()] = names.get(d[:16].strip().decode(), 0) + 1
    except OSError:
        pass
    missing = sorted(set(range(sent)) - got)
    gaps = [(x, y) for x, y in zip(arrivals, arrivals[1:]) if y - x > 0.03]
    res["udp"] = {"sent": sent, "received": len(got), "backends": names, "lost": len(missing), "missing": missing[:50],
                  "gaps": gaps}
def ping():
    out = subprocess.run(["ping", "-n", "-q", "-i", "0.05", "-w", str(int(seconds)), icmp_vip], capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if "transmitted" in l]
    if line:
        w = line[0].split(); res["ping"] = {"sent": int(w[0]), "received": int(w[3])}
threads = [threading.Thread(target=download, args=(i,)) for i in range(n_tcp + 1)]   # the last through SNAT
threads += [threading.Thread(target=udp_stream), threading.Thread(target=ping)]
for t in threads: t.start()
print("started", flush=True)
for t in threads: t.join()
print(json.dumps(res), flush=True)
'''


def _stats(topo: ClusterTopology, k: int) -> dict:
    r = subprocess.run([sys.executable, "-P", "-m", "appliance", "show", "stats", "--json", "--control",
                        topo.control(k)], capture_output=True, text=True, timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def _counters(topo: ClusterTopology, k: int) -> dict:
    """Instance k's counters of flows it met: made here, recovered from a
    reply, refused as orphans; {} when it does not answer."""
    return {n: v for n, v in _stats(topo, k).get("nat", {}).get("counters", {}).items()
            if n in ("session_recovered", "drop_orphan_reply", "session_miss", "translated")}


def _sessions(topo: ClusterTopology, k: int) -> int:
    return _stats(topo, k).get("nat", {}).get("sessions", 0)


#: sent from a namespace: (host, port, source address) then datagrams as hex
HOSTILE = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[3], 0))
for h in sys.argv[4:]:
    s.sendto(bytes.fromhex(h), (sys.argv[1], int(sys.argv[2])))
'''


def _hostile(topo: ClusterTopology, k: int, peer: int) -> dict:
    """Garbage, a message cut short, one signed with another key and a
    signed one twice (a recording played back), sent to instance k's sync
    port from a peer's address (instance ``peer``'s namespace), and one
    from the client's (no peer): what k counted."""
    from .cluster import _wire

    from ._config import parse_config

    forged = _wire.encode(_wire.SESSIONS, b"", b"not-the-cluster-key-0000", 1, 0, 0, time.time())[0]
    # signed with the cluster's key, recorded, then played back
    digest = _wire.config_digest(parse_config(instance_config(k, len(topo.ns_instances))).translations)
    recorded = _wire.encode(_wire.SESSIONS, b"", CLUSTER_KEY, 0xBAD, 0, digest, time.time())[0]
    before = _stats(topo, k).get("sync", {})
    target = (topo.uplink(k), "7700")
    topo.run(topo.ns_instances[peer], sys.executable, "-c", HOSTILE, *target, topo.uplink(peer),
             (b"\x00" * 200).hex(), b"short".hex(), forged.hex(), recorded.hex(), recorded.hex())
    topo.run(topo.ns_client, sys.executable, "-c", HOSTILE, *target, "10.0.0.2", forged.hex())
    time.sleep(0.3)
    after = _stats(topo, k).get("sync", {})
    return {n: after.get(n, 0) - before.get(n, 0) for n in
            ("sync_bad_mac", "sync_malformed", "sync_unknown_peer", "sync_replayed", "messages_received",
             "sessions_installed")}


def _sessions_with(topo: ClusterTopology, k: int, address: str) -> tuple[int, int]:
    """Instance k's sessions to or from ``address``: (how many, the packets
    they counted). A session a peer synced here has counted none."""
    r = subprocess.run([sys.executable, "-P", "-m", "appliance", "show", "sessions", "--json", "--match", address,
                        "--control", topo.control(k)], capture_output=True, text=True, timeout=10)
    try:
        sessions = json.loads(r.stdout).get("sessions", [])
    except ValueError:
        return 0, 0
    return len(sessions), sum(sum(s["packets"]) for s in sessions)


def run(instances: int = 3, n_tcp: int = 8, size: int = 36 << 20, seconds: float = 14.0,
        drain_seconds: int = 30, workdir: Optional[str] = None) -> dict:
    """The scenario; returns its measurements (see the module docstring).
    The daemons' and instances' logs go to ``workdir`` (kept), else to a
    temporary directory removed at the end."""
    work = workdir or tempfile.mkdtemp(prefix="failover-")
    topo = ClusterTopology(instances, work)
    out: dict = {"instances": instances, "hold_time_s": HOLD, "drain_seconds": drain_seconds}
    server = client = None
    try:
        server = topo.popen(topo.ns_backend, sys.executable, "-c", SERVER, "20.0.0.1", "20.0.0.2", "fd20::1",
                            "fd20::2", OUTSIDE, stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "serving"
        for k in range(instances):
            topo.start(k)
        everyone = {topo.uplink(k) for k in range(instances)}
        out["announced_s"] = round(topo.wait_nexthops(VIP4, everyone, 20), 2)
        topo.wait_nexthops(ICMP_VIP, everyone, 20)
        client = topo.popen(topo.ns_client, sys.executable, "-c", CLIENT, VIP4, "fd30::2", ICMP_VIP, str(n_tcp),
                            str(size), str(seconds), OUTSIDE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "started"
        time.sleep(2.5)
        load = {k: _sessions(topo, k) for k in range(instances)}
        out["sessions_before"] = load
        # kill the instance that SNATs the download to the outside host (the
        # busiest if none does yet), drain the busiest of the others
        snat = {k: _sessions_with(topo, k, OUTSIDE) for k in range(instances)}
        order = sorted(load, key=lambda k: -load[k])
        carrier = max(snat, key=lambda k: snat[k][1])
        kill = carrier if snat[carrier][1] else order[0]
        drain = next(k for k in order if k != kill)
        out["snat_flow_on_killed"] = snat[kill][1] > 0
        out["snat_sessions_before_kill"] = {k: n for k, (n, _) in snat.items()}
        out["killed"], out["drained"] = kill, drain
        before = {k: _stats(topo, k).get("nat", {}).get("counters", {}) for k in range(instances) if k != kill}
        t0, t0_wall = time.monotonic(), time.time()
        topo.procs[kill].kill()
        topo.procs[kill].wait()
        left = everyone - {topo.uplink(kill)}
        out["withdrawn_after_kill_s"] = round(topo.wait_nexthops(VIP4, left, HOLD + 2), 3)
        # the first packet through a survivor that it did not have a session for
        first = None
        while first is None and time.monotonic() - t0 < 5:
            for k in before:
                c = _stats(topo, k).get("nat", {}).get("counters", {})
                if c.get("session_miss", 0) > before[k].get("session_miss", 0):
                    first = time.monotonic() - t0
                    break
            time.sleep(0.01)
        out["first_packet_on_survivor_s"] = None if first is None else round(first, 3)
        time.sleep(2.0)
        r = subprocess.run([sys.executable, "-P", "-m", "appliance", "cnat", "--control", topo.control(drain),
                            "drain", str(drain_seconds)], capture_output=True, text=True, timeout=10)
        out["drain_answer"] = r.stdout.strip() or r.stderr.strip()
        t1 = time.monotonic()
        left -= {topo.uplink(drain)}
        out["withdrawn_after_drain_s"] = round(topo.wait_nexthops(VIP4, left, 5), 3)
        exited: list = []
        waiter = threading.Thread(target=lambda p=topo.procs[drain]: (p.wait(), exited.append(time.monotonic())),
                                  daemon=True)
        waiter.start()
        out["drained_sessions_at_drain"] = _sessions(topo, drain)
        # the drained instance is a survivor too, but gone at the end: its
        # counters are the last read while it serves
        drained_counters = _counters(topo, drain)
        time.sleep(2.0)
        topo.start(kill)
        left |= {topo.uplink(kill)}
        out["announced_after_restart_s"] = round(topo.wait_nexthops(VIP4, left, 20), 2)
        out["hostile"] = _hostile(topo, next(k for k in range(instances) if k not in (kill, drain)), kill)
        drained_counters = _counters(topo, drain) or drained_counters
        res = json.loads(client.stdout.readline())
        out.update(res)
        # the UDP stream's silence around the kill: from the SIGKILL to its first
        # reply after it, which came through a survivor (none: its flow was not
        # on the killed instance, the reply came within the 10 ms period)
        gap = next(((x, y) for x, y in res["udp"].get("gaps", []) if x - 0.05 <= t0_wall <= y), None)
        out["udp_first_reply_after_kill_s"] = None if gap is None else round(gap[1] - t0_wall, 3)
        waiter.join(max(0.0, t1 + drain_seconds + 10 - time.monotonic()))
        out["drained_exit_after_s"] = round(exited[0] - t1, 1) if exited else None
        out["drained_returncode"] = topo.procs[drain].returncode
        out["counters"] = {k: _counters(topo, k) for k in range(instances) if k != drain}
        out["counters"][drain] = drained_counters
        out["sync"] = {k: _stats(topo, k).get("sync", {}) for k in range(instances) if k != drain}
        return out
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.kill()
        topo.destroy()
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
