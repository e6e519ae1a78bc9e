"""Frames for NatCore.process(), in C memory."""

from __future__ import annotations

from typing import Sequence

from ._binding import ffi
from ._common import _ns


class Batch:
    """A batch of frames for :meth:`NatCore.process` (owned C memory).

    The live datapath fills ``frames`` from its rings in C; replay and tests
    use :meth:`load` to copy Python bytes in and :meth:`data` to read back.

    ``exact``: each frame loaded into its own allocation of exactly its
    length, so that a read past a frame's end leaves the allocation (what
    AddressSanitizer sees; tests/test_sanitizers.py). Otherwise frames sit
    in one buffer of ``frame_size`` slots, as in a ring.
    """

    def __init__(self, capacity: int = 256, frame_size: int = 2048, exact: bool = False) -> None:
        self.capacity = capacity
        self.frame_size = frame_size
        self.exact = exact
        self.frames = ffi.new("struct nat_frame[]", capacity)
        self.buf = None if exact else ffi.new("uint8_t[]", capacity * frame_size)
        self._own: list = []     # exact: the frames' allocations, alive until the next load
        self.n = 0

    def load(self, items: Sequence[tuple[bytes, int, float]]) -> None:
        """items: (frame bytes, ingress port id, timestamp seconds)."""
        assert len(items) <= self.capacity
        self._own = []
        for i, (data, port, ts) in enumerate(items):
            size = min(len(data), self.frame_size)
            f = self.frames[i]
            if self.exact:
                own = ffi.new("uint8_t[]", size)
                ffi.memmove(own, data[:size], size)
                self._own.append(own)
                f.data = own
            else:
                off = i * self.frame_size
                ffi.memmove(self.buf + off, data[:size], size)
                f.data = self.buf + off
            f.len = size
            f.port = port
            f.ts_ns = _ns(ts)
        self.n = len(items)

    def data(self, i: int) -> bytes:
        f = self.frames[i]
        return bytes(ffi.buffer(f.data, f.len))
