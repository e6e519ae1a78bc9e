"""Frames for NatCore.process(), in C memory."""

from __future__ import annotations

from typing import Sequence

from ._binding import ffi
from ._common import _ns


class Batch:
    """A batch of frames for :meth:`NatCore.process` (owned C memory).

    The live datapath fills ``frames`` from its rings in C; replay and tests
    use :meth:`load` to copy Python bytes in and :meth:`data` to read back.
    """

    def __init__(self, capacity: int = 256, frame_size: int = 2048) -> None:
        self.capacity = capacity
        self.frame_size = frame_size
        self.frames = ffi.new("struct nat_frame[]", capacity)
        self.buf = ffi.new("uint8_t[]", capacity * frame_size)
        self.n = 0

    def load(self, items: Sequence[tuple[bytes, int, float]]) -> None:
        """items: (frame bytes, ingress port id, timestamp seconds)."""
        assert len(items) <= self.capacity
        for i, (data, port, ts) in enumerate(items):
            size = min(len(data), self.frame_size)
            off = i * self.frame_size
            ffi.memmove(self.buf + off, data[:size], size)
            f = self.frames[i]
            f.data = self.buf + off
            f.len = size
            f.port = port
            f.ts_ns = _ns(ts)
        self.n = len(items)

    def data(self, i: int) -> bytes:
        f = self.frames[i]
        return bytes(ffi.buffer(f.data, f.len))
