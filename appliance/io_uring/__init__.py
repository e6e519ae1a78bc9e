"""Ring-based packet I/O: AF_XDP sockets through a cffi shim over libxdp,
the XDP steering program, and the TAP hand-off to the kernel."""
