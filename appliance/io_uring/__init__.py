"""Packet I/O: ports of a backend, batches of frames in and out, and the
forwarding step that follows the kernel's routes and neighbours (``c/``).

Backends, each in its own subpackage with its own C:

- :mod:`.xdp`: AF_XDP sockets through a cffi shim over libxdp, and the XDP
  program that steers frames to them.

The TAP device (:mod:`._tap`) is how any backend hands the kernel what the
appliance does not forward itself."""
