"""A TAP device through which the appliance hands frames to the kernel.

Frames the appliance cannot forward itself (neighbour not resolved yet, no
route, TTL expiring, too big for the egress MTU, addressed to the host) are
written here; the kernel then forwards them, resolves neighbours, or sends
the ICMP error, exactly as a Linux router would.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import struct
import subprocess

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def _sysctl(key: str, value: str) -> None:
    path = pathlib.Path("/proc/sys") / key.replace(".", "/")
    try:
        path.write_text(value)
    except OSError:
        pass


class Tap:
    NAME = "xnat0"

    def __init__(self, name: str = NAME) -> None:
        self.name = name
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        try:   # EBUSY: another process has it (another appliance in this namespace)
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        except OSError:
            os.close(self.fd)
            raise
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        mac = pathlib.Path(f"/sys/class/net/{name}/address").read_text().strip()
        self.mac = bytes.fromhex(mac.replace(":", ""))
        # frames from the TAP carry sources that route via other interfaces
        _sysctl(f"net.ipv4.conf.{name}.rp_filter", "0")
        _sysctl("net.ipv4.conf.all.rp_filter", "0")
        # ... and may carry the host's own address as source (a backend with
        # a source rewrite to an interface address, SNAT to it)
        _sysctl(f"net.ipv4.conf.{name}.accept_local", "1")
        _sysctl(f"net.ipv6.conf.{name}.disable_ipv6", "0")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
