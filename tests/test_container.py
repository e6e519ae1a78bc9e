"""The container image: built with podman from the Containerfile, run as the
appliance of a namespace topology, serving a vip; stops cleanly.

Needs root, podman and (once) debootstrap: podman cannot pull images here,
so the Debian base image is made locally as MACHINE-NOTES describes."""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
import time

import pytest

from appliance._topology import Topology, start_server

pytestmark = pytest.mark.root

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/cnat-appliance:test"
CA = "/etc/ssl/certs/ca-certificates.crt"
CAPS = "NET_ADMIN,NET_RAW,BPF,SYS_ADMIN,IPC_LOCK,SYS_NICE"   # also what examples/k8s grants

CONFIG = """
[[interface]]
name = "a0"
[[interface]]
name = "a1"
[[interface]]
name = "a2"
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->20.0.1.1 8080"]
"""


def podman(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def image():
    if podman("image", "exists", BASE, check=False).returncode != 0:
        with tempfile.TemporaryDirectory() as rootfs:
            subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs, "http://deb.debian.org/debian"],
                           check=True, capture_output=True, timeout=900)
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True)
            tar.wait()
    args = ["build", "--runtime", "runc", "--network=host", "-t", IMAGE]
    if os.path.exists(CA):   # the system's trust, also behind a TLS-intercepting proxy
        args += ["-v", f"{CA}:/run/build-ca.crt:ro", "--build-arg", "PIP_CA=/run/build-ca.crt"]
    podman(*args, str(ROOT))
    return IMAGE


def test_container_image_serves_a_vip_and_stops_cleanly(image, tmp_path):
    topo = Topology(backends=2)
    name = f"cnat-{topo.prefix}"
    try:
        for k, ns in enumerate(topo.ns_backends):
            start_server(topo, ns, "http", 8080, f"backend{k}")
        cfg = tmp_path / "appliance.toml"
        cfg.write_text(CONFIG)
        log = tmp_path / "container.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                ["podman", "--runtime", "runc", "run", "--rm", "--name", name,
                 "--network", f"ns:/run/netns/{topo.ns_app}",
                 "--cap-add", CAPS, "--device", "/dev/net/tun",
                 "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                 "-v", f"{cfg}:/etc/appliance/appliance.toml:ro", image], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while "appliance: ready on a0, a1, a2" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
        seen = set()
        for _ in range(10):
            r = topo.run(topo.ns_client, "curl", "-s", "-m", "5", "http://30.0.0.2/", check=False)
            assert r.returncode == 0, log.read_text()
            seen.add(r.stdout.strip())
        assert seen == {"backend0 10.0.0.2", "backend1 10.0.0.2"}
        r = podman("exec", name, "appliance", "show", "translations")   # the default control socket
        assert "tcp/30.0.0.2/80" in r.stdout, r.stdout + r.stderr
        podman("stop", "-t", "10", name)
        assert proc.wait(20) == 0, log.read_text()
        assert "appliance: final statistics" in log.read_text()
        assert "cannot set niceness" not in log.read_text()      # SYS_NICE is enough for --nice
        links = topo.run(topo.ns_app, "ip", "-d", "link", "show").stdout
        assert "prog/xdp" not in links and "xnat0" not in links
    finally:
        podman("rm", "-f", name, check=False)
        topo.destroy()
