"""The AF_XDP backend of packet I/O: its ports (``c/xdp_port.c``: a socket
per interface queue, libxdp), the XDP program that steers frames to them
or to the kernel (``bpf/``, loaded and fed by :mod:`._steering`)."""
