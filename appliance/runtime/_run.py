"""``appliance run``: the planes wired together (run): the appliance opened,
its tasks in one trio nursery, the signals, the state file at a stop, the
final statistics."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import socket
import sys
from typing import Optional

import trio

from .. import _metrics
from .._config import Config
from ..cluster import BirdError
from ._appliance import Appliance
from ._control import _control_socket, _listening_socket
from ._state import _save_sessions

log = logging.getLogger("appliance.run")


def _raise_priority(nice: int) -> None:
    """Delivering a frame to a local process wakes that process, and Linux
    places and runs the woken task on the waker's CPU: at nice 0 every
    sendto() could hand our CPU to the receiver for a time slice. Measured
    (a UDP echo server behind the appliance, nothing pinned, 100 kpps):
    44 % of frames lost for want of RX buffers at nice 0, 0.7 % at -10,
    none at -19."""
    if nice == 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning("cannot set niceness %d (%s): processes woken by our packets may preempt the "
                    "datapath; grant CAP_SYS_NICE or pin the appliance to its own CPU", nice, exc.strerror)


async def run(config: Config, ready_file: Optional[str] = None, control: Optional[str] = None,
              nice: int = 0, state_file: Optional[str] = None,
              metrics: Optional[tuple[str, int]] = None, control_group: Optional[int] = None) -> int:
    _raise_priority(nice)
    # The datapath thread needs the GIL back after each io_poll() call; a
    # worker thread (the kernel snapshot parses `ip -j` output) would keep it
    # for up to the switch interval, 5 ms by default, while the RX rings
    # fill. 0.5 ms bounds that stall.
    sys.setswitchinterval(0.0005)
    for flag, path in (("--state-file", state_file), ("--ready-file", ready_file)):
        if path and (pathlib.Path(path).is_dir() or not pathlib.Path(path).resolve().parent.is_dir()):
            why = "is a directory" if pathlib.Path(path).is_dir() else "its directory does not exist"
            raise SystemExit(f"appliance: error: {flag} {path}: {why}")
    metrics_sock = control_sock = None
    try:
        if metrics:
            family = socket.AF_INET6 if ":" in metrics[0] else socket.AF_INET
            metrics_sock = _listening_socket(family, metrics)
        if control:
            control_sock = _control_socket(control, control_group)
    except OSError as exc:
        what = f"--metrics {metrics[0]}:{metrics[1]}" if metrics and metrics_sock is None else f"--control {control}"
        raise SystemExit(f"appliance: error: {what}: {exc.strerror or exc}")
    app = Appliance(config)
    serving = False
    try:
        app.open(state_file)
        try:
            app.open_bgp()
        except BirdError as exc:
            raise SystemExit(f"appliance: error: {config.path}: [bgp]: {exc}") from None
        await app.open_sync()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.rx_loop)
            nursery.start_soon(app.timer_loop)
            nursery.start_soon(app.kernel_loop)
            nursery.start_soon(app.neighbour_use_loop)
            if config.path and pathlib.Path(config.path).is_file():
                nursery.start_soon(app.config_loop)
            nursery.start_soon(app.bgp_loop)
            nursery.start_soon(app.drain_loop, nursery.cancel_scope)
            nursery.start_soon(app.sync_send_loop)
            nursery.start_soon(app.sync_recv_loop)
            for task in app.plugins.background_tasks():
                nursery.start_soon(task)
            if control_sock is not None:
                nursery.start_soon(app.control_loop, control_sock, control, control_group)
            if metrics_sock is not None:
                nursery.start_soon(_metrics.serve, lambda: app.answer("stats"), metrics_sock)
            print(f"appliance: ready on {', '.join(config.interface_names)}", flush=True)
            serving = True
            if ready_file:
                try:
                    pathlib.Path(ready_file).write_text("ready\n")
                except OSError as exc:   # serving anyway: the file is for whoever waits on it
                    log.error("--ready-file %s: %s", ready_file, exc)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async for sig in signals:
                    if sig == signal.SIGHUP:   # reload now, as daemons do
                        if config.path and pathlib.Path(config.path).is_file():
                            await app.check_config(force=True)
                        continue
                    log.info("signal %s: stopping", sig)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        # read before close: the sockets' own counters go with the sockets
        final = {"nat": app.core.statistics().as_dict(), **app.datapath_stats(),
                 "interfaces": dict(app.interface_state), "kernel": app.kernel_figures()} if app.ctx else None
        app.close_bgp()   # first: the routers move the traffic while the datapath still runs
        app.close_sync()
        if state_file and serving:   # a start that failed half-way has nothing to hand over
            _save_sessions(app, state_file)
        app.close()
        for sock in (metrics_sock, control_sock):
            if sock is not None:
                sock.close()
        if control_sock is not None and os.path.exists(control):
            os.unlink(control)   # control_loop removes it too, if it ran
    st = app.core.statistics()
    print(f"appliance: stopped; sessions created {st.sessions_created}, expired {st.sessions_expired}, "
          f"translated {st.counters['translated']}, passed {st.counters['passed']}, "
          f"dropped {st.counters['dropped']}", flush=True)
    print("appliance: final statistics " + json.dumps(final, sort_keys=True), flush=True)
    return 0
