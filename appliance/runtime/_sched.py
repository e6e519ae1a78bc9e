"""The calling thread's run-queue wait: how long it was ready to run but
had no CPU (the second field of /proc/thread-self/schedstat, in ns). The
hook budget does not charge a plugin for it (appliance/_plugins.py)."""

from __future__ import annotations

import os
import threading

_fds: dict[int, int] = {}


def run_queue_wait_ns() -> int:
    """0 where the kernel keeps no schedstat (the budget is then wall
    time)."""
    tid = threading.get_native_id()
    fd = _fds.get(tid)
    try:
        if fd is None:
            fd = _fds[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(fd, 96, 0).split()[1])
    except (OSError, ValueError, IndexError):
        return 0
