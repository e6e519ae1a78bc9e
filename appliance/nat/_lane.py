"""A lane: the fast path of a NatCore on another thread (a datapath worker).

Lanes read the core's session table without locks while the core's own
thread (the writer: slow path, expiry, configuration) changes it; nat.h
says what a lane may and may not do. A lane's NAT_MISS frames are settled by
the writer, never by the lane.
"""

from __future__ import annotations

from ._batch import Batch
from ._binding import COUNTER_NAMES, ffi, lib
from ._common import _ns


class Lane:
    def __init__(self, nat) -> None:
        lane = lib.nat_lane_create(nat)
        if lane == ffi.NULL:
            raise RuntimeError(f"at most {lib.NAT_MAX_LANES} lanes per core")
        self._lane = ffi.gc(lane, lib.nat_lane_destroy)

    @property
    def pointer(self):
        """The ``struct nat_lane *`` for C loops (nat_lane_process)."""
        return self._lane

    def process_pointer(self):
        """nat_lane_process as the function pointer C loops call."""
        return ffi.cast("nat_lane_process_fn", ffi.addressof(lib, "nat_lane_process"))

    def process(self, batch: Batch, now: float) -> int:
        """Run frames through the fast path up to the first NAT_MISS;
        returns how many were processed (cffi releases the GIL meanwhile)."""
        return lib.nat_lane_process(self._lane, batch.frames, batch.n, _ns(now), 0)

    def counters(self) -> dict[str, int]:
        c = lib.nat_lane_counters(self._lane)
        return {name: c[i] for i, name in enumerate(COUNTER_NAMES)}

    def close(self) -> None:
        """Give the lane back (its counters join the core's)."""
        ffi.release(self._lane)   # runs nat_lane_destroy now
        self._lane = None
