"""Who may use the control socket, and what it does with bad requests:
peer credentials checked whatever the file's mode, a request too long, too
slow or not text answered with an error and closed, a connection flood
answered `busy` while the datapath goes on. Needs root (a live appliance;
setpriv for the other users)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from test_live import Live

pytestmark = pytest.mark.root

NOBODY = 65534

ASK = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(bytes.fromhex(sys.stdin.read()))
if len(sys.argv) > 2:
    time.sleep(float(sys.argv[2]))   # and send nothing more
s.settimeout(10)
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:     # closed with some of a too-long request unread
        break
    if not chunk:
        break                        # the appliance closed it
    data += chunk
print(data.decode())
"""


@pytest.fixture
def live(tmp_path):
    lv = Live(tmp_path)
    # the default socket: in /run/appliance, a directory other users may enter
    lv.control = f"/run/appliance/{lv.topo.ns_app}.sock"
    yield lv
    lv.close()


def _ask(live, payload: bytes, *, user: tuple = (), wait: float | None = None) -> dict:
    args = [sys.executable, "-c", ASK, live.control] + ([str(wait)] if wait is not None else [])
    r = live.topo.run(live.topo.ns_app, *user, *args, input=payload.hex(), check=False, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _control(live) -> dict:
    return _ask(live, b"stats\n")["control"]


def _as(uid: int, gid: int, groups: str | None = None) -> tuple:
    return ("setpriv", f"--reuid={uid}", f"--regid={gid}",
            f"--groups={groups}" if groups else "--clear-groups")


def test_peer_credentials_are_checked_whatever_the_mode(live):
    os.chmod(live.control, 0o666)      # an operator's mistake: anyone may connect
    answer = _ask(live, b"stats\n", user=_as(NOBODY, NOBODY))
    assert answer["error"].startswith(f"refused: uid {NOBODY} "), answer
    r = live.run(live.topo.ns_app, *_as(NOBODY, NOBODY), sys.executable, "-m", "appliance", "show", "stats",
                 "--control", live.control)
    assert r.returncode == 1 and "refused: uid 65534" in r.stderr, r.stderr
    assert _control(live)["refused_peer"] == 2
    assert "control socket: refused: uid 65534" in live.log.read_text()


def test_a_control_group_member_by_a_supplementary_group_is_let_in(live):
    live.stop()
    live.start(args=("--control-group", "nogroup"))
    # primary group 100, nogroup only among the supplementary ones
    answer = _ask(live, b"stats\n", user=_as(NOBODY, 100, str(NOBODY)))
    assert "nat" in answer and "error" not in answer, answer
    os.chmod(live.control, 0o666)
    answer = _ask(live, b"stats\n", user=_as(NOBODY, 100))     # in neither group
    assert "refused" in answer["error"] and "group 65534" in answer["error"], answer


@pytest.mark.parametrize("what,payload,wait,error,counter", [
    ("too long", b"s" * 70000, None, "request longer than 65536 bytes", "too_long"),
    ("not text", b"st\xffats\n", None, "not UTF-8", "malformed"),
    ("a NUL", b"stats\0\n", None, "not UTF-8", "malformed"),
    ("too slow", b"sta", 6, "within 5 s", "timeout"),
])
def test_a_bad_request_gets_an_error_and_is_closed(live, what, payload, wait, error, counter):
    answer = _ask(live, payload, wait=wait)        # _ask reads until the appliance closes
    assert error in answer["error"], answer
    assert _control(live)[counter] == 1
    assert "nat" in _ask(live, b"stats\n")         # and the next asker is answered


FLOOD = r"""
import socket, sys, time
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)                     # connected, sending nothing
time.sleep(float(sys.argv[3]))
busy = 0
for s in held:
    s.settimeout(0)
    try:
        busy += b"busy" in s.recv(1000)
    except BlockingIOError:
        pass
print(busy)
"""


def test_a_connection_flood_is_told_busy_while_flows_go_on(live):
    # the 32 answered connections time out at 5 s, before the flood reads what it got
    flood = live.topo.popen(live.topo.ns_app, sys.executable, "-c", FLOOD, live.control, "100", "6.5",
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        # 32 idle connections hold every place for 5 s: the datapath is not theirs
        for _ in range(6):
            assert live.curl(live.topo.ns_client, "http://30.0.0.2/").startswith("backend")
        out, _ = flood.communicate(timeout=30)
    finally:
        flood.kill()
    assert int(out) == 100 - 32, out
    c = _control(live)
    assert c["refused_busy"] == 100 - 32 and c["timeout"] == 32, c
