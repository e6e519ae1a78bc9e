"""A namespace topology of several appliance instances behind ECMP routes
announced over BGP (issue 16): for tests/test_cluster.py and
``appliance bench failover``. Everything created is removed by
:meth:`ClusterTopology.destroy`, also after a failure half-way.

::

    client ns          router ns (BIRD, AS 65000)      instance ns k (appliance + its BIRD, AS 65001)
    c0 10.0.0.2/24 --- r0 10.0.0.1/24
       fd00::2/64         fd00::1/64
                       iK 10.9.K.1/24, fd09:K::1/64 --- u0 10.9.K.2/24, fd09:K::2/64
                                                        d0 20.1.K.2/24, fd21:K::2/64 ---+
    backend ns (BIRD, AS 65100): sK 20.1.K.1/24, fd21:K::1/64 -------------------------+
        backends on lo: 20.0.0.1, 20.0.0.2, fd20::1, fd20::2

The router learns the vips from every instance and spreads flows over them
(ECMP, layer-4 hash); the backend host learns the clients' prefixes from
every instance the same way, so a flow's two directions may cross two
instances (stateless failover makes that work).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid

from ._topology import Topology, sh

ROUTER_AS, INSTANCE_AS, BACKEND_AS = 65000, 65001, 65100
BACKENDS4, BACKENDS6 = ("20.0.0.1", "20.0.0.2"), ("fd20::1", "fd20::2")
VIP4, VIP6, ICMP_VIP = "30.0.0.2", "fd30::2", "30.0.0.3"
HOLD = 3
SNAT4 = "30.0.0.1"       # the instances' shared SNAT address
OUTSIDE = "40.0.0.1"     # a host reached through SNAT (on the backend host's lo)
SYNC_PORT = 7700


CLUSTER_KEY = b"cluster-test-shared-key"


def instance_config(k: int, n: int, extra: str = "") -> str:
    """The configuration of instance k of n: the same translations, seed
    and SNAT address for all, its own [bgp] router id and neighbors, the
    others as session-sync peers."""
    peers = ", ".join(f'"10.9.{j}.2:{SYNC_PORT}"' for j in range(n) if j != k)
    b4 = ", ".join(f'"->{b} 8080"' for b in BACKENDS4)
    b6 = ", ".join(f'"->{b} 8080"' for b in BACKENDS6)
    return f"""
flow_hash_seed = 4242
[timeouts]
session = 30
[[interface]]
name = "u0"
[[interface]]
name = "d0"
[[translation]]
proto = "tcp"
vip = "{VIP4}"
port = 80
backends = [{b4}]
[[translation]]
proto = "udp"
vip = "{VIP4}"
port = 53
backends = [{", ".join(f'"->{b} 5353"' for b in BACKENDS4)}]
[[translation]]
proto = "icmp"
vip = "{ICMP_VIP}"
backends = [{", ".join(f'"->{b}"' for b in BACKENDS4)}]
[[translation]]
proto = "tcp"
vip = "{VIP6}"
port = 80
backends = [{b6}]
[snat]
ip4 = "{SNAT4}"
interfaces = ["u0"]
exclude = ["20.0.0.0/24", "fd20::/64"]   # the vips' flows come in on u0 too: their backends are not SNATed
[cluster]
sync_listen = "10.9.{k}.2:{SYNC_PORT}"
sync_peers = [{peers}]
sync_key = "{CLUSTER_KEY.decode()}"
sync_refresh = 2
source_ports = "{20000 + 10000 * k}-{29999 + 10000 * k}"   # the SNAT address is shared
[bgp]
asn = {INSTANCE_AS}
router_id = "10.9.{k}.2"
hold_time = {HOLD}
[[bgp.neighbor]]
address = "10.9.{k}.1"
asn = {ROUTER_AS}
announce = ["vips", "{OUTSIDE}/32"]
[[bgp.neighbor]]
address = "fd09:{k:x}::1"
asn = {ROUTER_AS}
[[bgp.neighbor]]
address = "20.1.{k}.1"
asn = {BACKEND_AS}
announce = ["10.0.0.0/24", "{SNAT4}/32"]
[[bgp.neighbor]]
address = "fd21:{k:x}::1"
asn = {BACKEND_AS}
announce = ["fd00::/64"]
{extra}"""


def _router_bird(router_id: str, asn: int, peers: list[str], peer_as: int) -> str:
    lines = [f"router id {router_id};", "log stderr { warning, error, fatal };", "protocol device { scan time 1; }"]
    for fam in ("ipv4", "ipv6"):
        # merge paths: the equal routes of the instances become one multipath route
        lines.append(f"protocol kernel k{fam} {{ {fam} {{ import none; export all; }}; merge paths on; }}")
    for i, p in enumerate(peers):
        fam = "ipv6" if ":" in p else "ipv4"
        lines += [f"protocol bgp p{i} {{", f"    local as {asn}; neighbor {p} as {peer_as};",
                  f"    hold time {HOLD}; keepalive time 1; connect delay time 1; connect retry time 1;",
                  "    error wait time 1, 5;",
                  f"    {fam} {{ import all; export none; }};", "}"]
    return "\n".join(lines) + "\n"


class ClusterTopology(Topology):
    def __init__(self, instances: int = 3, workdir: str = "/tmp") -> None:
        self.n = instances
        self.workdir = pathlib.Path(workdir)
        self.prefix = "k" + uuid.uuid4().hex[:6]
        self.queues = 1
        self.namespaces: list[str] = []
        self.ns_client = f"{self.prefix}-cli"
        self.ns_router = f"{self.prefix}-rtr"
        self.ns_backend = f"{self.prefix}-srv"
        self.ns_instances = [f"{self.prefix}-a{k}" for k in range(instances)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.daemons: list[subprocess.Popen] = []
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    def _build(self) -> None:
        for ns in (self.ns_client, self.ns_router, self.ns_backend, *self.ns_instances):
            self._ns(ns)
        r, s = self.ns_router, self.ns_backend
        for ns in (r, *self.ns_instances):
            sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
            sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=ns)
        for ns in (r, s):   # ECMP by the layer-4 tuple, as a router spreading flows over load balancers
            sh("sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1", ns=ns)
            sh("sysctl", "-qw", "net.ipv6.fib_multipath_hash_policy=1", ns=ns)
        self._link(self.ns_client, "c0", r, "r0")
        self._addr(self.ns_client, "c0", "10.0.0.2/24", "fd00::2/64")
        self._addr(r, "r0", "10.0.0.1/24", "fd00::1/64")
        sh("ip", "route", "add", "default", "via", "10.0.0.1", ns=self.ns_client)
        sh("ip", "-6", "route", "add", "default", "via", "fd00::1", ns=self.ns_client)
        for b in (*BACKENDS4, *BACKENDS6, OUTSIDE):
            self._addr(s, "lo", b + ("/128" if ":" in b else "/32"))
        for k, ns in enumerate(self.ns_instances):
            self._link(r, f"i{k}", ns, "u0")
            self._addr(r, f"i{k}", f"10.9.{k}.1/24", f"fd09:{k:x}::1/64")
            self._addr(ns, "u0", f"10.9.{k}.2/24", f"fd09:{k:x}::2/64")
            self._link(s, f"s{k}", ns, "d0")
            self._addr(s, f"s{k}", f"20.1.{k}.1/24", f"fd21:{k:x}::1/64")
            self._addr(ns, "d0", f"20.1.{k}.2/24", f"fd21:{k:x}::2/64")
            sh("ip", "route", "add", "20.0.0.0/24", "via", f"20.1.{k}.1", ns=ns)
            sh("ip", "route", "add", f"{OUTSIDE}/32", "via", f"20.1.{k}.1", ns=ns)
            sh("ip", "route", "add", "10.9.0.0/16", "via", f"10.9.{k}.1", ns=ns)   # the sync peers
            sh("ip", "-6", "route", "add", "fd20::/64", "via", f"fd21:{k:x}::1", ns=ns)
            sh("ip", "route", "add", "10.0.0.0/24", "via", f"10.9.{k}.1", ns=ns)
            sh("ip", "-6", "route", "add", "fd00::/64", "via", f"fd09:{k:x}::1", ns=ns)
        ks = range(self.n)
        self._bird(r, "10.0.0.1", ROUTER_AS, [f"10.9.{k}.2" for k in ks] + [f"fd09:{k:x}::2" for k in ks],
                   INSTANCE_AS)
        self._bird(s, "20.1.0.1", BACKEND_AS, [f"20.1.{k}.2" for k in ks] + [f"fd21:{k:x}::2" for k in ks],
                   INSTANCE_AS)

    def _bird(self, ns: str, rid: str, asn: int, peers: list[str], peer_as: int) -> None:
        conf = self.workdir / f"{ns}.bird.conf"
        conf.write_text(_router_bird(rid, asn, peers, peer_as))
        sock = self.workdir / f"{ns}.bird.ctl"
        self.daemons.append(self.popen(ns, "bird", "-f", "-c", str(conf), "-s", str(sock),
                                       stdout=subprocess.DEVNULL, stderr=open(self.workdir / f"{ns}.bird.log", "w")))

    # -- instances -----------------------------------------------------------------

    def control(self, k: int) -> str:
        return str(self.workdir / f"a{k}.ctl")

    def start(self, k: int, timeout: float = 30.0, extra: str = "") -> subprocess.Popen:
        cfg = self.workdir / f"a{k}.toml"
        cfg.write_text(instance_config(k, self.n, extra))
        ready = self.workdir / f"a{k}.ready"
        ready.unlink(missing_ok=True)
        log = open(self.workdir / f"a{k}.log", "a")
        proc = self.popen(self.ns_instances[k], sys.executable, "-P", "-m", "appliance", "run", "--config",
                          str(cfg), "--ready-file", str(ready), "--control", self.control(k),
                          stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.time() > deadline:
                if proc.poll() is None:
                    proc.kill()
                raise RuntimeError(f"instance {k} did not start:\n" + (self.workdir / f"a{k}.log").read_text())
            time.sleep(0.05)
        self.procs[k] = proc
        return proc

    def nexthops(self, prefix: str) -> set[str]:
        """The router's next hops for a prefix (the instances it sends it to)."""
        out = sh("ip", "-6" if ":" in prefix else "-4", "route", "show", prefix, ns=self.ns_router,
                 check=False).stdout
        return {w[i + 1] for w in [line.split() for line in out.splitlines()] for i, x in enumerate(w)
                if x == "via" and i + 1 < len(w)}

    def wait_nexthops(self, prefix: str, want: set, timeout: float) -> float:
        """Seconds until the router's next hops for prefix are ``want``."""
        t0 = time.monotonic()
        while self.nexthops(prefix) != want:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{prefix}: next hops {self.nexthops(prefix)}, wanted {want} "
                                     f"after {timeout} s")
            time.sleep(0.02)
        return time.monotonic() - t0

    @staticmethod
    def uplink(k: int, v6: bool = False) -> str:
        return f"fd09:{k:x}::2" if v6 else f"10.9.{k}.2"

    def destroy(self) -> None:
        # a SIGKILLed instance leaves its BIRD run directory (named after its namespace)
        for ns in self.ns_instances:
            if os.path.exists(f"/run/netns/{ns}"):
                shutil.rmtree(f"/run/appliance-bird-{os.stat(f'/run/netns/{ns}').st_ino}", ignore_errors=True)
        for p in list(self.procs.values()) + self.daemons:
            if p.poll() is None:
                p.kill()
        for p in list(self.procs.values()) + self.daemons:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        super().destroy()


__all__ = ["ClusterTopology", "instance_config", "VIP4", "VIP6", "ICMP_VIP", "BACKENDS4", "BACKENDS6", "HOLD", "SNAT4",
           "OUTSIDE"]
