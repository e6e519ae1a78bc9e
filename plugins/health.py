"""Active health checks: ``health = { ... }`` on a translation.

Each backend of such a translation is probed from a background task of
the appliance (in its network namespace, by the kernel's routes): a TCP
connect to the health port (default: the backend's port, else the
translation's), and with ``http = "/path"`` a ``GET`` that must answer a
2xx or 3xx status. ``fall`` failures in a row set the backend ``down``
(no new flows; its sessions follow the translation's drain policy),
``rise`` successes in a row set it back to its configured state.
Transitions are logged and counted (``show stats`` → ``plugins``).

Probes of one round run concurrently, each bounded by ``timeout``; a
translation's round starts every ``interval`` seconds (not before its
last one ended), each translation on its own. Nothing here runs per flow or per
packet.
"""

from __future__ import annotations

import logging
import math

import trio

from appliance.hooks import hookimpl

log = logging.getLogger("appliance.health")


async def probe(address: str, port: int, http: str | None, timeout: float) -> str:
    """"" if the backend answered as it should, else why not."""
    try:
        return await _probe(address, port, http, timeout)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        return f"{type(exc).__name__}: {exc}"    # reset or closed mid-answer


async def _probe(address: str, port: int, http: str | None, timeout: float) -> str:
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(address, port)
        except OSError as exc:
            return f"connect: {exc.strerror or exc}"
        async with stream:
            if http is None:
                return ""
            host = f"[{address}]" if ":" in address else address
            await stream.send_all(f"GET {http} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: appliance-health\r\n"
                                  "Connection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                head += chunk
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                return "http: not an HTTP answer"
            status = int(parts[1])
            return "" if 200 <= status < 400 else f"http: status {status}"
    return "timeout" if scope.cancelled_caught else ""


class HealthChecks:
    def __init__(self) -> None:
        self.backends: dict = {}
        # (translation name, backend name) -> [successes in a row, failures in a row, last error]
        self.runs: dict[tuple[str, str], list] = {}
        self.probes = self.failures = self.downs = self.ups = 0
        self.probe = probe            # tests may hand in another probe

    @hookimpl
    def appliance_configure(self, config, backends):
        self.backends = backends
        for s in backends.values():   # checks removed: what they had set down is up to the configuration
            if s.translation.health is None:
                for i in range(len(s.translation.backends)):
                    if s.set_by(i) == "health":
                        s.set_state(i, None)
        keep = {(t, b.name) for t, s in backends.items() if s.translation.health for b in s.translation.backends}
        self.runs = {k: v for k, v in self.runs.items() if k in keep}

    @hookimpl
    def appliance_background_tasks(self):
        return [self.run]

    @hookimpl
    def appliance_statistics(self):
        return {"probes": self.probes, "failures": self.failures, "set_down": self.downs, "set_up": self.ups,
                "down_now": sum(1 for s in self.backends.values() for i in range(len(s.translation.backends))
                                if s.set_by(i) == "health")}

    async def run(self) -> None:
        # Each translation's round in its own task: a slow translation's
        # probes (a long timeout) do not hold back the others' checks.
        next_at: dict[str, float] = {}
        busy: set[str] = set()
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                for name, s in self.backends.items():
                    h = s.translation.health
                    if h is not None and name not in busy and next_at.get(name, 0.0) <= now:
                        next_at[name] = now + h.interval
                        busy.add(name)
                        nursery.start_soon(self._round, s, busy)
                wake = min((next_at.get(n, 0.0) for n, s in self.backends.items() if s.translation.health),
                           default=math.inf)
                await trio.sleep(max(0.05, min(wake - trio.current_time(), 1.0)))

    async def _round(self, s, busy: set) -> None:
        try:
            async with trio.open_nursery() as n:
                for i in range(len(s.translation.backends)):
                    n.start_soon(self._check, s, i)
        finally:
            busy.discard(s.translation.name)

    async def _check(self, s, i: int) -> None:
        t, b = s.translation, s.translation.backends[i]
        h = t.health
        port = h.port or b.dport or t.port
        try:
            error = await self.probe(str(b.dst), port, h.http, h.timeout)
        except Exception as exc:     # a probe's own fault must not end the checks of every backend
            error = f"probe failed: {exc!r}"
        self.probes += 1
        if s is not self.backends.get(t.name):
            return   # a reload replaced the set meanwhile: the next round probes the new one
        run = self.runs.setdefault((t.name, b.name), [0, 0, ""])
        if error:
            self.failures += 1
            run[0], run[1], run[2] = 0, run[1] + 1, error
            # >=: failures that began while the backend was down for another
            # reason count once that reason is gone
            if run[1] >= h.fall and s.set_by(i) != "health" and s.state(i) != "down":
                s.set_state(i, "down", by="health")
                self.downs += 1
                log.warning("translation %s: backend %s is down after %d failed probes (%s)",
                            t.name, b.name, run[1], error)
        else:
            run[0], run[1] = run[0] + 1, 0
            if run[0] >= h.rise and s.set_by(i) == "health":
                s.set_state(i, None)
                self.ups += 1
                log.warning("translation %s: backend %s is up again after %d good probes", t.name, b.name, run[0])


def plugin() -> HealthChecks:
    return HealthChecks()
