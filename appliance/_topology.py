"""Network-namespace topologies for the live demo, the end-to-end tests and
the end-to-end benchmark. Everything created is recorded and removed by
:meth:`Topology.destroy`, also after a failure half-way.

Default topology (names get a unique prefix)::

    client ns                appliance ns                    backend ns (x N)
    c0 10.0.0.2/24  ---  a0 10.0.0.1/24                       b0 20.0.K.1/24
       fd00::2/64           fd00::1/64                           fd20:K::1/64
                          a1.. 20.0.K.254/24, fd20:K::fe/64  ---
                          ax  40.0.0.254/24 (SNAT side) ---  outside ns: o0 40.0.0.1/24
    pod ns: p0 10.1.0.2/24 --- ap 10.1.0.1/24 (SNAT interface)
            fd10:1::2/64          fd10:1::1/64;   outside o0 also fd40::1/64, ax fd40::fe/64

Senders' veths get `ethtool -K tx off` (partial checksums look corrupt
through AF_XDP; see MACHINE-NOTES).
"""

from __future__ import annotations

import os
import subprocess
import uuid


def sh(*cmd: str, check: bool = True, ns: str | None = None, **kw) -> subprocess.CompletedProcess:
    if ns is not None:
        cmd = ("ip", "netns", "exec", ns, *cmd)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Topology:
    def __init__(self, backends: int = 2, prefix: str | None = None, queues: int = 1) -> None:
        self.prefix = prefix or "t" + uuid.uuid4().hex[:6]
        self.queues = queues   # RX/TX queues of every veth
        self.namespaces: list[str] = []
        self.ns_client = f"{self.prefix}-cli"
        self.ns_app = f"{self.prefix}-app"
        self.ns_pod = f"{self.prefix}-pod"
        self.ns_out = f"{self.prefix}-out"
        self.ns_backends = [f"{self.prefix}-be{k}" for k in range(backends)]
        self.backend_addrs = [f"20.0.{k}.1" for k in range(backends)]
        self.backend_addrs6 = [f"fd20:{k}::1" for k in range(backends)]
        self.data_interfaces = ["a0", "ap", "ax"] + [f"a{k + 1}" for k in range(backends)]
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    def _ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)

    def _link(self, ns_a: str, a: str, ns_b: str, b: str) -> None:
        tmp_a, tmp_b = f"v{uuid.uuid4().hex[:8]}", f"v{uuid.uuid4().hex[:8]}"
        q = [] if self.queues == 1 else ["numtxqueues", str(self.queues), "numrxqueues", str(self.queues)]
        sh("ip", "link", "add", tmp_a, *q, "type", "veth", "peer", "name", tmp_b, *q)
        sh("ip", "link", "set", tmp_a, "netns", ns_a)
        sh("ip", "link", "set", tmp_b, "netns", ns_b)
        sh("ip", "link", "set", tmp_a, "name", a, ns=ns_a)
        sh("ip", "link", "set", tmp_b, "name", b, ns=ns_b)
        for ns, dev in ((ns_a, a), (ns_b, b)):
            # No duplicate address detection: while a fresh link-local address
            # is tentative (1-2 s), Linux sends no neighbour solicitation for
            # forwarded traffic, so the first IPv6 packets towards a backend
            # could wait seconds (a flaky test at 1 run in 15).
            sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0", ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
            sh("ethtool", "-K", dev, "tx", "off", ns=ns, check=False)

    def _addr(self, ns: str, dev: str, *addrs: str) -> None:
        for a in addrs:
            sh("ip", "addr", "add", a, "dev", dev, "nodad", ns=ns) if ":" in a else \
                sh("ip", "addr", "add", a, "dev", dev, ns=ns)

    def _build(self) -> None:
        for ns in [self.ns_client, self.ns_app, self.ns_pod, self.ns_out, *self.ns_backends]:
            self._ns(ns)
        app = self.ns_app
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=app)
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=app)
        # client
        self._link(self.ns_client, "c0", app, "a0")
        self._addr(self.ns_client, "c0", "10.0.0.2/24", "fd00::2/64")
        self._addr(app, "a0", "10.0.0.1/24", "fd00::1/64")
        sh("ip", "route", "add", "default", "via", "10.0.0.1", ns=self.ns_client)
        sh("ip", "-6", "route", "add", "default", "via", "fd00::1", ns=self.ns_client)
        # backends
        for k, ns in enumerate(self.ns_backends):
            self._link(ns, "b0", app, f"a{k + 1}")
            self._addr(ns, "b0", f"20.0.{k}.1/24", f"fd20:{k}::1/64")
            self._addr(app, f"a{k + 1}", f"20.0.{k}.254/24", f"fd20:{k}::fe/64")
            sh("ip", "route", "add", "default", "via", f"20.0.{k}.254", ns=ns)
            sh("ip", "-6", "route", "add", "default", "via", f"fd20:{k}::fe", ns=ns)
        # pod (behind the SNAT interface) and outside host
        self._link(self.ns_pod, "p0", app, "ap")
        self._addr(self.ns_pod, "p0", "10.1.0.2/24", "fd10:1::2/64")
        self._addr(app, "ap", "10.1.0.1/24", "fd10:1::1/64")
        sh("ip", "route", "add", "default", "via", "10.1.0.1", ns=self.ns_pod)
        sh("ip", "-6", "route", "add", "default", "via", "fd10:1::1", ns=self.ns_pod)
        self._link(self.ns_out, "o0", app, "ax")
        self._addr(self.ns_out, "o0", "40.0.0.1/24", "fd40::1/64")
        self._addr(app, "ax", "40.0.0.254/24", "fd40::fe/64")
        # the outside host knows the SNAT address and the vips only via the appliance
        sh("ip", "route", "add", "30.0.0.0/24", "via", "40.0.0.254", ns=self.ns_out)

    def run(self, ns: str, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh(*cmd, ns=ns, check=check, **kw)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(("ip", "netns", "exec", ns, *cmd), **kw)

    def destroy(self) -> None:
        for ns in reversed(self.namespaces):
            # processes still in the namespace keep its veths alive: kill them
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


HTTP_SERVER = r'''
import http.server, socketserver, sys

class Server(http.server.HTTPServer):
    def server_bind(self):  # no reverse DNS lookup (hangs in a namespace without DNS)
        socketserver.TCPServer.server_bind(self)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        body = (sys.argv[2] + " " + self.client_address[0].removeprefix("::ffff:") + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

family = __import__("socket").AF_INET6 if ":" in sys.argv[3] else __import__("socket").AF_INET
Server.address_family = family
Server((sys.argv[3], int(sys.argv[1])), Handler).serve_forever()
'''

UDP_ECHO = r'''
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[2], int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(sys.argv[3].encode() + b" " + peer[0].removeprefix("::ffff:").encode() + b" " + data, peer)
'''


def start_server(topo: "Topology", ns: str, kind: str, port: int, name: str, bind: str = "0.0.0.0"):
    """Start an HTTP ("http") or UDP echo ("udp") server in ns; it answers
    with its name and the client address it saw."""
    import sys

    code = HTTP_SERVER if kind == "http" else UDP_ECHO
    args = (str(port), name, bind) if kind == "http" else (str(port), bind, name)
    # `python -c`: nothing written to disk that would outlive the server
    return topo.popen(ns, sys.executable, "-c", code, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_appliance(topo: "Topology", config: str, workdir: str, control: str | None = None,
                    cpu: int | None = None, timeout: float = 20.0, args: tuple = ()) -> subprocess.Popen:
    """Run `appliance run` in the topology's appliance namespace and wait
    until it reports ready; its output goes to WORKDIR/appliance.log."""
    import sys
    import time

    ready = os.path.join(workdir, "ready")
    if os.path.exists(ready):
        os.unlink(ready)
    # -P: the installed package, never a ./appliance source tree (unbuilt)
    # in the working directory the command was started from
    cmd = [sys.executable, "-P", "-m", "appliance", "run", "--config", config, "--ready-file", ready]
    if control:
        cmd += ["--control", control]
    cmd += list(args)
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    log_path = os.path.join(workdir, "appliance.log")
    with open(log_path, "a") as log:
        proc = topo.popen(topo.ns_app, *cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while not os.path.exists(ready):
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                proc.kill()
            with open(log_path) as f:
                raise RuntimeError("the appliance did not start:\n" + f.read())
        time.sleep(0.05)
    return proc
