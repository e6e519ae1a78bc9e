"""The appliance: the state the planes share, and its planes composed."""

from __future__ import annotations

import gc
import logging
from typing import Optional

import trio

from .._config import Config
from .._plugins import Plugins
from ..io_uring.xdp._steering import SteeringError
from ..io_uring._tap import Tap
from ..nat import NatCore
from ._announce import Announce
from ._control import ControlSocket
from ._datapath import Datapath, Steerings
from ._host_ports import _HostPorts
from ._kernel_tables import KernelTables
from ._reload import ConfigReload
from ._sched import run_queue_wait_ns
from ._state import _restore_sessions
from ._sync import SessionSync

log = logging.getLogger("appliance.run")


class Appliance(Datapath, KernelTables, ConfigReload, ControlSocket, Announce, SessionSync):
    def __init__(self, config: Config) -> None:
        self.config = config
        # `appliance cnat` changes: an overlay on the watched file, applied
        # after it at every reload, dropped at a restart (docs/operations.md)
        self.file_config = config
        self.overlay: list = []
        self.steering = Steerings()    # each backend's, added as the datapath opens (docs/io.md)
        self.plugins = Plugins(config.plugin_modules, config_path=config.path, waited=run_queue_wait_ns)
        self.core = NatCore(config, plugins=self.plugins)
        self.core.on_host_source = self._host_source
        self.tap: Optional[Tap] = None
        self.ctx = None
        self.ports = []
        self.workers: list = []       # struct io_worker * per datapath worker
        self.worker_cpus: list = []   # the CPU each worker thread is pinned to (None: not pinned)
        self._snapshot = None
        self._lingering_real = False              # a removed `real` translation's port still steered
        self._host_ports = _HostPorts(self.steering)
        self.config_status = {"path": config.path, "reloads": 0, "rejected": 0, "last_error": None}
        # requests answered, and those refused by why (runtime/_control.py)
        self.control_counters = dict.fromkeys(
            ("requests", "refused_peer", "refused_busy", "too_long", "timeout", "malformed"), 0)
        self.kernel_status = {"snapshots": 0, "neighbour_updates": 0, "neighbour_use": 0, "errors": 0,
                              "last_error": None}
        self._config_seen: Optional[bytes] = None   # digest of the configuration file last applied
        self._reloading = trio.Lock()
        self._neigh: dict = {}   # (port, address) -> MAC (None: FAILED), as the datapath has it
        self._ifindex: dict[str, int] = {}        # data interface -> ifindex its sockets are bound to
        self.interface_state: dict[str, str] = {}  # "up", "gone" or "recreated"
        self._mtu_warned: set = set()             # (interface, MTU) pairs already warned about

    # -- set-up / tear-down --------------------------------------------------

    def open(self, state_file: Optional[str] = None) -> None:
        Datapath.open(self)
        self.sync_kernel()
        if state_file:
            _restore_sessions(self, state_file)
        self.start_steering()
        # What exists now (modules, plugins, the configuration) lives as long
        # as the process: out of the cyclic collector's sight. Its full
        # collections took 8-13 ms here, longer than a socket's 8192 RX
        # frames last at 1 Mpps (8 ms); after freeze() none took 1 ms.
        gc.collect()
        gc.freeze()
        log.info("ready: %d interfaces, %d sockets", len(self.config.interfaces), len(self.ports))

    def _host_source(self, added: bool, address, proto: int, port: int) -> None:
        try:
            self._host_ports.session(added, (address, proto, port))
        except SteeringError as exc:
            # the XDP ports map is full (STEER_MAX_PORTS): this session's
            # replies reach the kernel, not us; the appliance goes on
            self._kernel_error(exc)
