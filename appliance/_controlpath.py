"""Where an appliance's control socket is when nobody says: one per network
namespace, so that `appliance show` in a namespace finds the appliance of
that namespace, and two appliances in two namespaces never collide."""

from __future__ import annotations

import os

CONTROL_DIR = "/run/appliance"


def netns_name() -> str:
    """This process's network namespace: "default" for the host's (pid 1's),
    its name when `ip netns` named it (/run/netns/NAME), else net-INODE."""
    here = os.stat("/proc/self/ns/net")
    try:
        init = os.stat("/proc/1/ns/net")
        if (init.st_dev, init.st_ino) == (here.st_dev, here.st_ino):
            return "default"
    except OSError:   # /proc/1 of another user, or a container's own pid 1
        pass
    try:
        for entry in os.scandir("/run/netns"):
            try:
                st = os.stat(entry.path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
                return entry.name
    except OSError:
        pass
    return f"net-{here.st_ino}"


def default_control_path() -> str:
    return os.path.join(CONTROL_DIR, netns_name() + ".sock")
