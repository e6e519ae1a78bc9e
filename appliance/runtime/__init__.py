"""``appliance run``: the live datapath under trio.

With one datapath worker, one task for all AF_XDP sockets: wait on them
while all are idle; while busy, C (io_poll) receives from them round robin,
NATs and forwards batches of up to 256 frames for up to 2 ms per call,
returning to Python only for a new flow (the slow path) or to yield. With
more (``[datapath] workers``), a thread per worker runs that loop in C
without the GIL and queues its new flows to this thread, which settles them
in order. Beside them: the session scanner, the kernel follower (netlink), the
configuration watcher (a valid new file is applied, an invalid one is
reported and the last good one keeps serving), the control socket and the
signal handler. On SIGTERM/SIGINT everything is
cancelled and the XDP programs are detached; a start after SIGKILL replaces
the stale programs.

One module per plane:

- ``_datapath``: the data plane (AF_XDP sockets, TAP, XDP attach, the
  workers and their loops, the session timers, io, socket and worker counters);
- ``_kernel_tables``: the kernel's tables read, packed (cffi) and applied
  to the datapath and the XDP maps; the netlink follower;
- ``_host_ports``: the host ports steered to us (XDP `ports` map);
- ``_reload``: the watched configuration file and the `cnat` overlay on it;
- ``_control``: the control socket and introspection (show, cnat), query;
- ``_state``: the state file (sessions saved at a stop, restored at a start);
- ``_appliance``: :class:`Appliance`, the planes composed;
- ``_run``: :func:`run`, which wires it all together.

Structure: :class:`Appliance` holds the state the planes share (its
``__init__``: config, core, steering, ctx, ports, statuses) and is made of
one mixin per plane (``Datapath``, ``KernelTables``, ``ConfigReload``,
``ControlSocket``), whose methods were the class's own and use that state
through ``self``. The planes are layered and depend one way, control
plane → datapath: ``_control`` calls into ``_reload`` (cnat changes) and
the others' counters, ``_reload`` imports and calls ``_kernel_tables``,
which imports and calls ``_datapath``; ``_host_ports`` and ``_state`` stand
aside. The datapath imports none of the other modules and calls no method
of theirs: ``Appliance.open`` opens the datapath, then has the control plane
load the kernel's tables into it. ``_appliance`` imports the planes,
``_run`` imports ``_appliance``, ``_control`` (the listening sockets) and
``_state``; this package's names are what other modules use.
"""

from ._appliance import Appliance
from ._control import query
from ._run import run

__all__ = ["Appliance", "query", "run"]
