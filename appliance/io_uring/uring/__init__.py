"""The io_uring backend of packet I/O (docs/io.md): its port
(``c/uring_port.c``), an AF_PACKET socket per interface read and written
through io_uring, for where XDP is not allowed."""
