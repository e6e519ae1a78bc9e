"""The mmap backend of packet I/O (docs/io.md): its port
(``c/mmap_port.c``), an AF_PACKET socket per interface with PACKET_MMAP
receive and transmit rings, for where neither XDP nor io_uring is
allowed (the default seccomp profiles of Docker, containerd, podman)."""
