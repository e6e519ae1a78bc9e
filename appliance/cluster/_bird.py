"""BIRD 2 as the appliance's BGP speaker (docs/cluster.md).

The appliance runs its own ``bird`` as a child: it writes the daemon's
configuration from ``[bgp]``, starts it with the parent-death signal set
(so a SIGKILLed appliance takes its BGP sessions down with it, and the
peers withdraw its routes at once instead of after the hold time), and
changes what is announced by rewriting the static routes' include files
and sending ``configure`` on BIRD's control socket.

What is announced is decided by the runtime (:meth:`Bird.announce`): the
vips while ready to serve them, nothing of them while draining, stopped or
with a data interface gone; a neighbor's extra prefixes while the process
serves at all.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Optional

import trio

from ._config import BgpConfig

log = logging.getLogger("appliance.bgp")

_PR_SET_PDEATHSIG = 1
REPLY_SECONDS = 5          # for BIRD to answer a command
RESTART_SECONDS = 2        # between an exit of the daemon and its restart


_BIRD_LEVELS = {"<FATAL>": logging.CRITICAL, "<ERR>": logging.ERROR, "<WARN>": logging.WARNING}
bird_log = logging.getLogger("appliance.bird")


def _relay_log(pipe) -> None:
    """BIRD's log lines into ours, at their level, under "appliance.bird".
    Its "<FATAL> Shutdown completed" is the end of a clean stop, not a fault."""
    for raw in pipe:
        line = raw.decode(errors="replace").rstrip()
        words = line.split(" ", 3)          # date, time, <LEVEL>, message
        level = _BIRD_LEVELS.get(words[2], logging.INFO) if len(words) == 4 else logging.WARNING
        message = words[3] if len(words) == 4 else line
        if message == "Shutdown completed":
            level = logging.INFO
        bird_log.log(level, "%s", message)
    pipe.close()


class BirdError(Exception):
    """BIRD could not be started or refused a command: the reason, one line."""


def _die_with_parent() -> None:   # pragma: no cover - runs in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def render(cfg: BgpConfig, rundir: pathlib.Path) -> str:
    """bird.conf for ``cfg``: four static protocols whose routes are include
    files (vips and extra prefixes, per family), one BGP protocol per
    neighbor exporting the vips and its own prefixes."""
    lines = ["# written by the appliance from [bgp]: changes here are overwritten",
             f"router id {cfg.router_id};",
             "log stderr { warning, error, fatal };",
             "protocol device { scan time 10; }"]
    for name, fam in (("vips4", "ipv4"), ("vips6", "ipv6"), ("routes4", "ipv4"), ("routes6", "ipv6")):
        # BIRD reads an include only on a line of its own
        lines += [f"protocol static {name} {{", f"    {fam};", f'    include "{rundir / (name + ".routes")}";', "}"]
    for i, n in enumerate(cfg.neighbors):
        fam = "ipv4" if n.family == 4 else "ipv6"
        v = str(n.family)
        rules = []
        if n.vips:
            rules.append(f'if proto = "vips{v}" then accept;')
        if n.prefixes:
            rules.append(f'if proto = "routes{v}" && net ~ [ {", ".join(map(str, n.prefixes))} ] then accept;')
        rules.append("reject;")
        lines += [f"protocol bgp n{i} {{",
                  f"    local as {cfg.asn};",
                  f"    neighbor {n.address} port {n.port} as {n.asn};",
                  f"    hold time {cfg.hold_time}; keepalive time {cfg.keepalive};",
                  "    connect delay time 1; connect retry time 1; error wait time 1, 5;",
                  f"    {fam} {{ import none; next hop self; export filter {{ {' '.join(rules)} }}; }};",
                  "}"]
    return "\n".join(lines) + "\n"


def _routes(prefixes) -> str:
    return "".join(f"route {p} blackhole;\n" for p in sorted(prefixes, key=lambda p: (p.version, p)))


class Bird:
    """One BIRD daemon, the appliance's child."""

    def __init__(self, cfg: BgpConfig) -> None:
        self.cfg = cfg
        # one appliance per network namespace: its run directory is named
        # after the namespace, so a restart after a SIGKILL reuses it
        netns = os.stat("/proc/self/ns/net").st_ino
        self.rundir = pathlib.Path("/run" if os.path.isdir("/run") else tempfile.gettempdir()) / f"appliance-bird-{netns}"
        self.rundir.mkdir(mode=0o700, exist_ok=True)
        self.socket = cfg.socket or str(self.rundir / "bird.ctl")
        self.proc: Optional[subprocess.Popen] = None
        self.vips: frozenset = frozenset()
        self.serving = False           # extra prefixes announced
        self.starts = 0
        self.configures = 0
        self.errors = 0
        self.last_error: Optional[str] = None
        self.neighbors: dict[str, str] = {}   # BGP protocol -> its state as BIRD shows it
        self._lock = trio.Lock()

    # -- the daemon --------------------------------------------------------------

    def start(self) -> None:
        """Write the configuration (nothing announced) and start BIRD; a
        missing binary or a configuration it refuses is a BirdError."""
        binary = shutil.which(self.cfg.bird)
        if binary is None:
            raise BirdError(f"[bgp] bird: {self.cfg.bird!r} not found (Debian: apt install bird2)")
        self._write_routes()
        conf = self.rundir / "bird.conf"
        conf.write_text(render(self.cfg, self.rundir))
        check = subprocess.run([binary, "-p", "-c", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise BirdError(f"BIRD refused the configuration made from [bgp]: "
                            f"{(check.stderr or check.stdout).strip().splitlines()[-1:]}")
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        # from the main thread: the parent-death signal follows the thread that forked
        self.proc = subprocess.Popen([binary, "-f", "-c", str(conf), "-s", self.socket],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        threading.Thread(target=_relay_log, args=(self.proc.stderr,), name="bird-log", daemon=True).start()
        self.starts += 1
        deadline = time.monotonic() + REPLY_SECONDS
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise BirdError(f"BIRD exited at start with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise BirdError(f"BIRD did not open its control socket {self.socket} within {REPLY_SECONDS} s")
            time.sleep(0.02)
        log.info("BIRD %d started: %d neighbor(s), control socket %s", self.proc.pid, len(self.cfg.neighbors),
                 self.socket)

    def stop(self) -> None:
        """Stop BIRD: it closes its sessions with a Cease, and the peers
        withdraw the routes at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(REPLY_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.rundir, ignore_errors=True)

    def _write_routes(self) -> None:
        extra = {4: set(), 6: set()}
        if self.serving:
            for n in self.cfg.neighbors:
                extra[n.family].update(n.prefixes)
        vips = {4: set(), 6: set()}
        for a in self.vips:
            vips[a.version].add(ipaddress.ip_network(a))
        for v in (4, 6):
            (self.rundir / f"vips{v}.routes").write_text(_routes(vips[v]))
            (self.rundir / f"routes{v}.routes").write_text(_routes(extra[v]))

    # -- what is announced ----------------------------------------------------------

    async def announce(self, vips, serving: bool) -> None:
        """Announce exactly these vips (addresses), and the neighbors' extra
        prefixes while ``serving``."""
        vips = frozenset(vips)
        async with self._lock:
            if vips == self.vips and serving == self.serving:
                return
            before = self.vips
            self.vips, self.serving = vips, serving
            self._write_routes()
            await self._configure()
            if vips:
                if vips != before:
                    log.warning("BGP: announcing %s", ", ".join(map(str, sorted(vips, key=lambda a: (a.version, a)))))
            elif before:
                log.warning("BGP: vips withdrawn")

    async def reconfigure(self, cfg: BgpConfig) -> None:
        """A reloaded ``[bgp]``: BIRD applies the difference (a changed
        neighbor's session restarts, the others stay up)."""
        async with self._lock:
            self.cfg = cfg
            (self.rundir / "bird.conf").write_text(render(cfg, self.rundir))
            self._write_routes()
            await self._configure()

    async def _configure(self) -> None:
        try:
            await self.command("configure")
        except BirdError as exc:
            self.errors += 1
            self.last_error = str(exc)
            log.error("BGP: %s", exc)
        else:
            self.configures += 1

    async def command(self, cmd: str) -> list[str]:
        """One command on the control socket: the reply's lines (codes
        stripped); BirdError for an error reply or no answer."""
        lines: list[str] = []
        with trio.fail_after(REPLY_SECONDS):
            try:
                stream = await trio.open_unix_socket(self.socket)
            except OSError as exc:
                raise BirdError(f"control socket {self.socket}: {exc.strerror or exc}") from None
            async with stream:
                buf = b""
                greeted = False
                if cmd:
                    await stream.send_all(cmd.encode() + b"\n")
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise BirdError(f"{cmd}: BIRD closed the control socket")
                    buf += chunk
                    while b"\n" in buf:
                        raw, buf = buf.split(b"\n", 1)
                        line = raw.decode(errors="replace")
                        code, sep = line[:4], line[4:5]
                        if not greeted:        # "0001 BIRD 2.0.12 ready."
                            greeted = sep == " "
                            continue
                        if code.isdigit() and sep in ("-", " "):
                            if code[0] in "89":
                                raise BirdError(f"{cmd}: {line[5:]}")
                            lines.append(line[5:])
                            if sep == " ":
                                return lines
                        else:
                            lines.append(line[1:])

    async def poll(self) -> None:
        """The neighbors' session states, for `show stats`; a daemon that
        exited is started again."""
        if self.proc is not None and self.proc.poll() is not None:
            self.errors += 1
            self.last_error = f"BIRD exited with status {self.proc.returncode}"
            log.error("BGP: %s; starting it again in %d s", self.last_error, RESTART_SECONDS)
            await trio.sleep(RESTART_SECONDS)
            vips, serving = self.vips, self.serving
            self.vips, self.serving = frozenset(), False
            try:
                self.start()
            except BirdError as exc:
                self.last_error = str(exc)
                log.error("BGP: %s", exc)
                return
            await self.announce(vips, serving)
            return
        try:
            out = await self.command("show protocols")
        except (BirdError, trio.TooSlowError) as exc:
            self.last_error = str(exc) or "show protocols: no answer"
            return
        states = {}
        for line in out:
            words = line.split()
            if len(words) >= 4 and words[1] == "BGP":
                states[words[0]] = " ".join(words[5:]) if len(words) > 5 else words[3]
        self.neighbors = {str(self.cfg.neighbors[int(k[1:])].address): v for k, v in states.items()
                          if k[1:].isdigit() and int(k[1:]) < len(self.cfg.neighbors)}

    def status(self) -> dict:
        return {"daemon": "running" if self.proc is not None and self.proc.poll() is None else "stopped",
                "pid": self.proc.pid if self.proc is not None else None,
                "announced": sorted(map(str, self.vips)), "prefixes": self.serving,
                "neighbors": dict(self.neighbors), "starts": self.starts, "configures": self.configures,
                "errors": self.errors, "last_error": self.last_error}
