"""``appliance demo``: the appliance live, on a namespace topology it builds.

Creates client, appliance, backend, pod and outside namespaces
(appliance/_topology.py), starts HTTP servers, runs ``appliance run`` with
appliance/examples/live.toml, sends requests through the vip and through
SNAT, prints who answered, the session table and the counters, and removes
everything it created -- also on Ctrl-C. Needs root.
"""

from __future__ import annotations

import collections
import importlib.resources
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ._topology import Topology, start_appliance, start_server


def _say(text: str = "") -> None:
    print(text, flush=True)


def run() -> int:
    if os.geteuid() != 0:
        _say("appliance demo: the live demo needs root (network namespaces, XDP); "
             "`appliance demo --offline` runs the NAT core alone.")
        return 1
    tmp = tempfile.mkdtemp(prefix="appliance-demo-")
    config = os.path.join(tmp, "live.toml")
    with open(config, "w") as f:
        f.write(importlib.resources.files("appliance.examples").joinpath("live.toml").read_text())
    control = os.path.join(tmp, "control.sock")
    topo = None
    app = None
    procs = []
    try:
        _say("Building the topology: client, appliance, 3 backends, pod, outside (network namespaces)...")
        topo = Topology(backends=3)
        for k, ns in enumerate(topo.ns_backends):
            procs.append(start_server(topo, ns, "http", 8080, f"backend-{k} ({topo.backend_addrs[k]})"))
        procs.append(start_server(topo, topo.ns_out, "http", 8080, "outside (40.0.0.1)"))
        procs.append(start_server(topo, topo.ns_client, "http", 8080, "client (10.0.0.2)"))
        try:
            app = start_appliance(topo, config, tmp, control=control)
        except RuntimeError as exc:
            _say(str(exc))
            return 1
        time.sleep(0.5)
        _say(f"Appliance running in namespace {topo.ns_app} on "
             "a0 (clients), a1-a3 (backends), ap (pods, SNAT), ax (outside)\n")

        _say("1. The client 10.0.0.2 requests http://30.0.0.2/ (a vip over three backends), 12 times:")
        served = collections.Counter()
        for i in range(12):
            r = topo.run(topo.ns_client, "curl", "-s", "-m", "5", "http://30.0.0.2/", check=False)
            answer = r.stdout.strip() or f"(curl failed: exit {r.returncode})"
            served[answer.rsplit(" ", 1)[0]] += 1
            _say(f"   request {i + 1:2}: answered by {answer.rsplit(' ', 1)[0]}, which saw client "
                 f"{answer.rsplit(' ', 1)[-1]}")
        _say("   spread: " + ", ".join(f"{k}: {v}" for k, v in sorted(served.items())) + "\n")

        _say("2. A pod 10.1.0.2 behind the SNAT interface reaches the outside host 40.0.0.1:")
        r = topo.run(topo.ns_pod, "curl", "-s", "-m", "5", "http://40.0.0.1:8080/", check=False)
        _say(f"   outside answered: {r.stdout.strip()!r}  (it saw the SNAT address)")
        r = topo.run(topo.ns_pod, "ping", "-c", "2", "-W", "2", "40.0.0.1", check=False)
        _say("   ping through SNAT: " + (r.stdout.strip().splitlines() or ["?"])[-2])
        r = topo.run(topo.ns_pod, "curl", "-s", "-m", "5", "http://10.0.0.2:8080/", check=False)
        _say(f"   to the excluded 10.0.0.0/24: {r.stdout.strip()!r}  (original source kept)\n")

        _say("3. The session table (appliance show sessions):")
        out = subprocess.run(["ip", "netns", "exec", topo.ns_app, sys.executable, "-P", "-m", "appliance", "show",
                              "sessions", "--control", control], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            _say("   " + line)
        out = subprocess.run(["ip", "netns", "exec", topo.ns_app, sys.executable, "-P", "-m", "appliance", "show",
                              "stats", "--json", "--control", control], capture_output=True, text=True)
        stats = json.loads(out.stdout)
        _say("\n4. Counters (appliance show stats):")
        for k, v in stats["nat"]["counters"].items():
            if v:
                _say(f"   nat.{k:26} {v}")
        for section in ("io", "xdp"):
            for k, v in stats[section].items():
                if v:
                    _say(f"   {section}.{k:27} {v}")
        return 0
    except KeyboardInterrupt:
        _say("\ninterrupted: cleaning up")
        return 130
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)   # finish cleaning up on a second Ctrl-C
        try:
            if app is not None and app.poll() is None:
                app.send_signal(signal.SIGTERM)
                try:
                    app.wait(10)
                except subprocess.TimeoutExpired:
                    app.kill()
            for p in procs:
                p.kill()
            if topo is not None:
                topo.destroy()
                _say(f"\nRemoved the namespaces {', '.join(n for n in [topo.ns_client, topo.ns_app, topo.ns_pod, topo.ns_out, *topo.ns_backends])}.")
            # the config, log and ready file; a failed start printed its log
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)
