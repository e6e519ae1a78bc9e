"""The socket backends' ports (issue 17, docs/io.md: io_uring, mmap) on
real veths in a namespace the test makes: frames sent from a peer arrive
in batches through one port, and the forwarding step sends them out of a
second port of the same backend, TTL decremented and MACs rewritten, to
the other peer. Too long a frame is counted and dropped, the host's own
frames are left to the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.root

#: run inside the namespace: u0/d0 are ours, their peers p0/p1 are the
#: hosts on either side. Prints what arrived at p1.
SCRIPT = r'''
import socket, struct, sys, time
from appliance.io_uring._binding import ffi, lib
from appliance.nat._binding import ffi as nffi, lib as nlib

def mac(name):
    return bytes.fromhex(open(f"/sys/class/net/{name}/address").read().strip().replace(":", ""))

def ip4(src, dst, ttl, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 1, 0, ttl, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    s = sum(struct.unpack("!10H", h)); s = (s & 0xFFFF) + (s >> 16); s = (s & 0xFFFF) + (s >> 16)
    h = h[:10] + struct.pack("!H", ~s & 0xFFFF) + h[12:]
    return h + struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload

ctx = ffi.gc(lib.io_ctx_create(-1, b"\2\0\0\0\0\xff", 1024, 1, 0), lib.io_ctx_destroy)
w = lib.io_ctx_worker(ctx, 0)
BACKEND = sys.argv[1]
open_port = {"uring": lib.io_uring_port_open, "mmap": lib.io_mmap_port_open}[BACKEND]
u0 = open_port(w, b"u0", 0, 256, 256, mac("u0"), 1500, ffi.NULL)
d0 = open_port(w, b"d0", 1, 256, 256, mac("d0"), 1500, ffi.NULL)
assert u0 != ffi.NULL and d0 != ffi.NULL, ffi.errno
assert ffi.string(lib.io_port_backend(u0)).decode() == BACKEND
host = ffi.new("struct io_steer_entry *", {"family": 4, "flags": lib.STEER_ADDR_HOST})
host.addr[0:4] = socket.inet_aton("10.9.9.9")
assert lib.io_steer_load(ctx, host, 1) == 0
assert lib.io_route_add(ctx, 4, socket.inet_aton("10.2.0.0") + bytes(12), 24, lib.IO_ROUTE_FORWARD,
                        ffi.NULL, ffi.new("int[]", [1]), ffi.NULL, 1) == 0
assert lib.io_neigh_set(ctx, 4, socket.inet_aton("10.2.0.2") + bytes(12), 1, mac("p1")) == 0

rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)); rx.bind(("p1", 0))
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); tx.bind(("p0", 0))
seen = []
def drain(timeout):
    rx.settimeout(timeout)
    try:
        while True:
            f = rx.recv(2048)
            if f[6:12] == mac("d0"):
                seen.append(f)
    except socket.timeout:
        pass

# longer than a receive buffer (u0's MTU allows it): dropped and counted, never cut short
tx.send(mac("u0") + mac("p0") + b"\x08\x00" + ip4("10.1.0.2", "10.2.0.2", 64, b"j" * 2500))
# the host's own traffic: left to the kernel
for i in range(5):
    tx.send(mac("u0") + mac("p0") + b"\x08\x00" + ip4("10.1.0.2", "10.9.9.9", 64, b"host"))
N, BURST = 1200, 150          # bursts: the socket's queue (or ring) holds 256 frames, as a NIC ring would
frames = nffi.new("struct nat_frame[256]")
got = batches = 0
for start in range(0, N, BURST):
    for i in range(start, start + BURST):
        tx.send(mac("u0") + mac("p0") + b"\x08\x00" + ip4("10.1.0.2", "10.2.0.2", 64, b"%06d" % i + b"x" * 40))
    deadline = time.time() + 5
    while got < start + BURST and time.time() < deadline:
        n = lib.io_rx(u0, ffi.cast("struct nat_frame *", frames), 256)
        for i in range(n):
            frames[i].verdict, frames[i].session = nlib.NAT_PASS, nlib.NAT_NONE
        lib.io_forward(u0, ffi.cast("struct nat_frame *", frames), n)
        lib.io_flush(w)
        got += n
        batches += n > 0
    drain(0.05)               # the peer's own socket queue is no bigger than ours
drain(0.3)
counters = ffi.new("uint64_t[]", lib.io_counter_count())
lib.io_counters_sum(ctx, counters)
names = [ffi.string(lib.io_counter_name(i)).decode() for i in range(lib.io_counter_count())]
c = dict(zip(names, counters))
ok_ttl = all(f[14 + 8] == 63 and f[0:6] == mac("p1") for f in seen)
payloads = sorted(int(f[14 + 28:14 + 34]) for f in seen)
print(got, len(seen), ok_ttl, payloads == list(range(N)), c["RX"], c["TX"], c["DROP_TX_FULL"], batches,
      c["DROP_TOO_LONG"], c["LEFT_TO_KERNEL"])
lib.io_port_close(u0); lib.io_port_close(d0)
'''


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns():
    ns = f"ur{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", ns)
    try:
        for a, b in (("u0", "p0"), ("d0", "p1")):
            sh("ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b)
            for x in (a, b):
                sh("ip", "-n", ns, "link", "set", x, "mtu", "3000", "up")
        yield ns
    finally:
        sh("ip", "netns", "del", ns)


@pytest.mark.parametrize("backend", ["uring", "mmap"])
def test_frames_arrive_in_batches_and_leave_through_another_port(netns, backend):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT, backend], capture_output=True,
                       text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    got, seen, ok_ttl, complete, rx, tx, tx_full, batches, truncated, left = r.stdout.split()
    assert int(got) == 1200 and int(rx) == 1200, r.stdout
    assert int(batches) < 1200, "frames came in batches"
    assert int(seen) == 1200 and complete == "True", r.stdout    # every frame out on d0, none twice
    assert ok_ttl == "True" and int(tx) == 1200 and tx_full == "0" and truncated == "1", r.stdout
    assert int(left) >= 5, "the host's frames (and IPv6 chatter) left to the kernel"


def test_io_uring_disabled_by_sysctl_is_named_and_auto_takes_af_xdp():
    from appliance._config import InterfaceConfig
    from appliance.runtime._datapath import choose_io

    path = "/proc/sys/kernel/io_uring_disabled"
    before = open(path).read().strip()
    try:
        with open(path, "w") as f:
            f.write("2")
        with pytest.raises(SystemExit, match=r'io = "uring": io_uring is disabled \(sysctl '
                                             r'kernel.io_uring_disabled = 2\)'):
            choose_io([InterfaceConfig("x0", io="uring")])
        chosen, steering, refused = choose_io([InterfaceConfig("x0", io="auto")])
        assert chosen == {"x0": "xdp"} and steering is not None and refused == ""
    finally:
        with open(path, "w") as f:
            f.write(before)


#: choose_io as a process without CAP_BPF/CAP_SYS_ADMIN sees it
CHOOSE = r'''
from appliance._config import InterfaceConfig
from appliance.runtime._datapath import choose_io
try:
    chosen, steering, why = choose_io([InterfaceConfig("x0", io="auto")])
except SystemExit as exc:
    print("refused:", exc)
else:
    print(chosen["x0"], steering is None, why, sep="|")
'''


def test_neither_af_xdp_nor_io_uring_auto_takes_mmap_and_names_both_reasons():
    """io_uring disabled by the sysctl and no BPF capabilities: `auto`
    falls back to PACKET_MMAP rings, saying why it passed over each of the
    others."""
    path = "/proc/sys/kernel/io_uring_disabled"
    before = open(path).read().strip()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    try:
        with open(path, "w") as f:
            f.write("2")
        r = subprocess.run(["capsh", "--drop=cap_bpf,cap_sys_admin,cap_perfmon", "--", "-c",
                            f"exec {sys.executable} -c '{CHOOSE}'"],
                           capture_output=True, text=True, timeout=60, env=env)
    finally:
        with open(path, "w") as f:
            f.write(before)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    backend, no_xdp, why = out.split("|")
    assert backend == "mmap" and no_xdp == "True", out
    assert why.startswith("AF_XDP cannot be had: ") and "(no CAP_BPF/CAP_SYS_ADMIN, or bpf() refused)" in why, why
    assert "io_uring cannot be had: io_uring is disabled (sysctl kernel.io_uring_disabled = 2)" in why, why
    # the log says which one it took, in words
    assert f"x0: {why}; using PACKET_MMAP rings (mmap)" in r.stderr, r.stderr
