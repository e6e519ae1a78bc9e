"""The container image: built with podman from the Containerfile, run as the
appliance of a namespace topology, serving a vip; stops cleanly. With the
capabilities XDP needs it uses AF_XDP; without CAP_BPF/CAP_SYS_ADMIN,
`io = "auto"` gives io_uring where the seccomp profile permits it, and
PACKET_MMAP rings under podman's default profile (docs/io.md).

Needs root, podman and (once) debootstrap: podman cannot pull images here,
so the Debian base image is made locally as MACHINE-NOTES describes."""

from __future__ import annotations

import json
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
#: where XDP is not allowed (docs/io.md): io = "auto" falls back to io_uring or mmap
CAPS_NO_BPF = "NET_ADMIN,NET_RAW,IPC_LOCK,SYS_NICE"

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


MODES = [
    # (capabilities, podman options, the backend io = "auto" gives, what its `why` says)
    (CAPS, [], "xdp", ["AF_XDP could be had"]),
    (CAPS_NO_BPF, ["--security-opt", "seccomp=unconfined"], "uring",   # a profile permitting io_uring
     ["AF_XDP cannot be had"]),
    # podman's default profile filters io_uring_setup, as Docker's and containerd's do
    (CAPS_NO_BPF, [], "mmap", ["AF_XDP cannot be had", "io_uring cannot be had", "seccomp profile"]),
]


@pytest.mark.parametrize("caps,options,backend,why", MODES, ids=["xdp", "no-bpf-caps", "default-seccomp"])
def test_container_image_serves_a_vip_and_stops_cleanly(image, tmp_path, caps, options, backend, why):
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
                 "--cap-add", caps, *options, "--device", "/dev/net/tun",
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
        stats = json.loads(podman("exec", name, "appliance", "show", "stats", "--json").stdout)
        assert {v["backend"] for v in stats["packet_io"].values()} == {backend}, stats["packet_io"]
        assert all(w in stats["packet_io"]["a0"]["why"] for w in why), stats["packet_io"]
        if backend != "xdp":   # a container's /proc/sys is read-only: said, and served all the same
            assert "cannot reserve ports 40000-65535" in log.read_text(), log.read_text()
        podman("stop", "-t", "10", name)
        assert proc.wait(20) == 0, log.read_text()
        assert "appliance: final statistics" in log.read_text()
        assert "cannot set niceness" not in log.read_text()      # SYS_NICE is enough for --nice
        links = topo.run(topo.ns_app, "ip", "-d", "link", "show").stdout
        assert "prog/xdp" not in links and "xnat0" not in links
        tables = topo.run(topo.ns_app, "nft", "list", "tables").stdout
        assert "appliance_steer" not in tables, "a clean stop removes the socket modes' table"
    finally:
        podman("rm", "-f", name, check=False)
        topo.destroy()


def test_without_net_raw_the_refusal_names_the_capability_and_leaves_nothing(image, tmp_path):
    """No CAP_BPF and no CAP_NET_RAW: no backend can be had (AF_PACKET
    needs CAP_NET_RAW); the start is refused with one line that says so,
    and nothing is left in the namespace."""
    topo = Topology(backends=2)
    try:
        cfg = tmp_path / "appliance.toml"
        cfg.write_text(CONFIG)
        r = subprocess.run(["podman", "--runtime", "runc", "run", "--rm", "--network", f"ns:/run/netns/{topo.ns_app}",
                            "--cap-drop", "NET_RAW", "--cap-add", "NET_ADMIN,IPC_LOCK,SYS_NICE",
                            "--device", "/dev/net/tun", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                            "-v", f"{cfg}:/etc/appliance/appliance.toml:ro", image],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr
        err = r.stderr.splitlines()[-1]
        assert "cannot open the PACKET_MMAP rings (mmap) port on a0" in err and "CAP_NET_RAW" in err, r.stderr
        assert "Traceback" not in r.stderr
        links = topo.run(topo.ns_app, "ip", "-d", "link", "show").stdout
        assert "xnat0" not in links and "prog/xdp" not in links
        assert "appliance_steer" not in topo.run(topo.ns_app, "nft", "list", "tables").stdout
    finally:
        topo.destroy()
