"""The control socket and introspection: `appliance show` (stats,
translations, the session listing), `appliance cnat` (its verbs
dispatched: questions answered, changes applied through the reload), and
the client side (query).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import logging
import os
import socket
import struct
import time
from typing import Optional

import trio

from .. import _cnat
from .._config import Config, ConfigError

log = logging.getLogger("appliance.run")

SESSIONS_LIMIT = 1000     # `show sessions` without --limit
SESSIONS_SLICE = 64       # sessions described between two turns of the datapath (~2.5 ms)
# One request is one line: a command and its words (cnat: a JSON list).
REQUEST_MAX = 65536       # bytes; longer is refused
REQUEST_SECONDS = 5       # to send it in full
CLIENTS_MAX = 32          # connections served at once; more are told so and closed


class ControlSocket:
    """The control socket's part of :class:`~appliance.runtime.Appliance`."""

    def _with_backend_settings(self, config: Config) -> Config:
        """The configuration with the weights and states `cnat backend set`
        gave backends at run time, as `cnat save` writes them."""
        live = self.core.backends
        out = []
        for t in config.translations:
            s = live.get(t.name)
            if s is None:
                out.append(t)
                continue
            bs, weights = [], s.weights
            for i, b in enumerate(t.backends):
                state = s.state(i) if s.set_by(i) == "cnat" else b.state
                bs.append(dataclasses.replace(b, weight=weights[i], state=state))
            out.append(dataclasses.replace(t, backends=tuple(bs)))
        return dataclasses.replace(config, translations=tuple(out))

    async def cnat(self, words: list[str]) -> dict:
        """An `appliance cnat` command: a change applied at once (new flows;
        sessions follow their drain policies), or a question."""
        try:
            cmd = _cnat.parse(words)
        except _cnat.CnatSyntaxError as exc:
            return {"error": str(exc)}
        if isinstance(cmd, _cnat.Save):   # with what `cnat backend set` changed (not what health checks did)
            return {"toml": _cnat.to_toml(self._with_backend_settings(self.config)),
                    "runtime": [_cnat.render(c) for c in self.overlay]}
        if isinstance(cmd, _cnat.Show):
            if cmd.what == "translation":
                return {**self.core.describe_translations(),
                        "runtime": [_cnat.render(c) for c in self.overlay]}
            if cmd.what == "snat":
                sn = self.config.snat
                return {"snat": None if sn is None else {
                    "ip4": str(sn.ip4) if sn.ip4 else None, "ip6": str(sn.ip6) if sn.ip6 else None,
                    "interfaces": list(sn.interfaces), "exclude": [str(n) for n in sn.exclude],
                    "policy": sn.policy}, "runtime": [_cnat.render(c) for c in self.overlay
                                                      if isinstance(c, (_cnat.SnatWith, _cnat.SnatExclude))]}
            return {"error": "cnat show session: ask with `appliance cnat show session` (streamed)"}
        if isinstance(cmd, _cnat.InstanceDrain):
            return {"ok": _cnat.render(cmd), "drain": self.start_drain(cmd.seconds),
                    "bgp": self.bird is not None}
        if isinstance(cmd, _cnat.BackendSet):
            s = self.core.backends.get(cmd.translation)
            i = None if s is None else s.index(cmd.backend)
            if i is None:
                return {"error": f"no backend '{cmd.backend}' in a translation '{cmd.translation}'"}
            if cmd.action == "weight":
                s.set_weight(i, cmd.weight)
            else:
                s.set_state(i, {"drain": "draining", "down": "down", "up": None}[cmd.action], by="cnat")
            return {"ok": _cnat.render(cmd), "backend": s.describe(i)}
        try:
            cfg = _cnat.apply(self.file_config, self.overlay + [cmd])
            self.plugins.check(cfg)
        except ConfigError as exc:
            return {"error": str(exc)}
        self.overlay = _cnat.simplify(self.overlay + [cmd])
        await self._switch_to(cfg)
        log.warning("runtime change: cnat %s", _cnat.render(cmd))
        return {"ok": _cnat.render(cmd), "translations": len(cfg.translations)}

    def answer(self, command: str) -> dict:
        """A control-socket request: "stats" or "translations" ("sessions"
        is streamed: :meth:`send_sessions`)."""
        if command == "stats":
            return {"nat": self.core.statistics().as_dict(), **self.datapath_stats(),
                    "interfaces": dict(self.interface_state), "kernel": self.kernel_figures(),
                    "config": dict(self.config_status), "control": dict(self.control_counters),
                    **self.cluster_stats(), **self.sync_stats()}
        if command == "translations":   # with each backend's state and figures
            return self.core.describe_translations()
        return {"error": f"unknown command {command!r} (sessions, stats, translations)"}

    async def send_sessions(self, stream, args: list[str]) -> None:
        """Answer "sessions [limit=N] [match=ADDRESS]": at most N sessions
        (0: all) in table order, those with ADDRESS on either side of either
        direction if given, as one JSON object with the table's total. A
        session costs 20-40 us to describe, so the table is walked in slices
        with the datapath running in between (100,000 sessions once stalled
        it for ~2 s); the answer is no atomic snapshot."""
        limit, match = SESSIONS_LIMIT, None
        for arg in args:
            key, _, value = arg.partition("=")
            try:
                if key == "limit":
                    limit = int(value)
                elif key == "match":
                    match = ipaddress.ip_address(value)
                else:
                    raise ValueError(f"unknown argument {arg!r}")
            except ValueError as exc:
                await _send(stream, {"error": f"sessions: {arg}: {exc}"})
                return
        total = self.core.statistics().sessions
        await stream.send_all(b'{"total": %d, "sessions": [' % total)
        shown, i, nat = 0, 0, self.core
        while limit == 0 or shown < limit:
            chunk = []
            for _ in range(SESSIONS_SLICE):
                i = nat.next_session_index(i)
                if i is None:
                    break
                s = nat.session(i)
                i += 1
                if s is None or (match is not None and match not in (s.src, s.dst, s.new_src, s.new_dst)):
                    continue
                chunk.append(json.dumps(_session_json(s)))
                if len(chunk) + shown == limit:
                    break
            if chunk:
                await stream.send_all((", " if shown else "").encode() + ", ".join(chunk).encode())
                shown += len(chunk)
            if i is None or (limit and shown >= limit):
                break
            await trio.sleep(0)   # the datapath's turn
        await stream.send_all(b'], "shown": %d}\n' % shown)

    async def control_loop(self, sock: socket.socket, path: str, group: Optional[int] = None) -> None:
        """Answer `appliance show` and `appliance cnat` on a
        :func:`_control_socket`: for root, the appliance's own user and,
        with `group`, that group's members, checked by the peer's
        credentials (SO_PEERCRED) whatever the socket file's mode became."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        clients = 0
        warn_after = 0.0

        async def serve(stream) -> None:
            nonlocal clients
            try:
                await self._control_client(stream)
            finally:
                clients -= 1

        try:
            async with trio.open_nursery() as nursery:
                while True:
                    stream = await listener.accept()
                    refused = _peer_refused(stream.socket, group)
                    if refused:   # before it may hold one of the CLIENTS_MAX places
                        self.control_counters["refused_peer"] += 1
                        if time.monotonic() >= warn_after:   # a flood of them: a line per 10 s
                            log.warning("control socket: %s (show stats: control.refused_peer)", refused)
                            warn_after = time.monotonic() + 10
                        nursery.start_soon(_refuse, stream, refused)
                    elif clients >= CLIENTS_MAX:
                        self.control_counters["refused_busy"] += 1
                        nursery.start_soon(_refuse, stream, f"busy: {CLIENTS_MAX} requests are being answered, "
                                                            "try again")
                    else:
                        clients += 1
                        nursery.start_soon(serve, stream)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            if os.path.exists(path):
                os.unlink(path)

    async def _control_client(self, stream) -> None:
        async with stream:
            try:
                text, refused = await _read_request(stream)
                if refused:
                    counter, error = refused
                    self.control_counters[counter] += 1
                    await _send(stream, {"error": error})
                    return
                self.control_counters["requests"] += 1
                command, *args = text.split() or [""]
                if command == "sessions":
                    await self.send_sessions(stream, args)
                elif command == "cnat":   # cnat ["word", ...]: words may hold spaces (backend names)
                    try:
                        words = json.loads(text[len("cnat"):])
                        assert isinstance(words, list) and all(isinstance(w, str) for w in words)
                    except (ValueError, AssertionError):
                        answer = {"error": 'cnat: expected a JSON list of words: cnat ["show", "translation"]'}
                    else:
                        async with self._reloading:    # one change at a time, file reloads included
                            answer = await self.cnat(words)
                    await _send(stream, answer)
                else:
                    await _send(stream, self.answer(command))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass   # the asker went away: its business, not the appliance's


async def _read_request(stream) -> tuple[Optional[str], Optional[tuple[str, str]]]:
    """The request's line, or the counter and the error that refuse it."""
    data = b""
    with trio.move_on_after(REQUEST_SECONDS) as waited:
        while b"\n" not in data and len(data) <= REQUEST_MAX:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    if len(data) > REQUEST_MAX:
        return None, ("too_long", f"request longer than {REQUEST_MAX} bytes")
    if waited.cancelled_caught:
        return None, ("timeout", f"no whole request (one line, ending in a newline) within {REQUEST_SECONDS} s")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        return None, ("malformed", "request is not UTF-8 text (or holds a NUL)")
    return text, None


async def _send(stream, answer: dict) -> None:
    await stream.send_all(json.dumps(answer).encode() + b"\n")


async def _refuse(stream, reason: str) -> None:
    async with stream:
        try:
            await _send(stream, {"error": reason})
            # take the request it sent: closing with it unread would reset the
            # connection, and the asker might lose the answer
            with trio.move_on_after(1):
                await stream.receive_some(REQUEST_MAX)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _peer_refused(sock, group: Optional[int]) -> Optional[str]:
    """Why the process at the other end may not use the control socket
    (None: it may): not root, not our own user, not in `group`."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    if uid in (0, os.geteuid()):
        return None
    if group is not None and (gid == group or group in _groups(pid)):
        return None
    allowed = "root" + (f" and group {group}" if group is not None else "")
    return f"refused: uid {uid} (pid {pid}) is not allowed; the control socket is for {allowed}"


def _groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def _session_json(s) -> dict:
    return {"index": s.index, "proto": s.proto, "src": f"{s.src}", "sport": s.sport, "dst": f"{s.dst}",
            "dport": s.dport, "new_src": f"{s.new_src}", "new_sport": s.new_sport, "new_dst": f"{s.new_dst}",
            "new_dport": s.new_dport, "translation": s.translation, "backend": s.backend, "state": s.state,
            "kind": s.kind, "expires_in": round(s.expires - time.time(), 3), "packets": list(s.packets)}


async def query(path: str, command: str) -> dict:
    """Ask a running appliance over its control socket."""
    stream = await trio.open_unix_socket(path)
    data = b""
    async with stream:
        try:
            await stream.send_all(command.encode() + b"\n")
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
        except trio.BrokenResourceError as exc:   # reset: what came before it is the answer
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "the appliance closed the connection") from exc
    try:
        return json.loads(data)
    except ValueError:
        raise ConnectionResetError(errno.ECONNRESET, "the appliance closed the connection mid-answer") from None


def _control_socket(path: str, group: Optional[int]) -> socket.socket:
    """The control socket: root's (and group's) only, mode 0660 (0600
    without a group). The default directory (/run/appliance) is made if
    missing; another missing one is the operator's typo: an error."""
    from .._controlpath import CONTROL_DIR

    if os.path.dirname(os.path.abspath(path)) == CONTROL_DIR:
        os.makedirs(CONTROL_DIR, mode=0o755, exist_ok=True)
    old = os.umask(0o177)     # no moment where others could connect
    try:
        sock = _listening_socket(socket.AF_UNIX, path)
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, group)
        os.chmod(path, 0o660)
    return sock


def _listening_socket(family: int, address) -> socket.socket:
    """A listening socket for the control socket or the metrics, bound
    before the loop starts so that a taken port or a bad path is a clear
    error at start (OSError), not a failed task."""
    if family == socket.AF_UNIX and os.path.exists(address):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(address)
        except OSError:
            os.unlink(address)   # left by a killed run: nobody answers
        else:   # not ours to take: the running appliance would lose it
            raise OSError(errno.EADDRINUSE, "another appliance is serving it")
        finally:
            probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock
