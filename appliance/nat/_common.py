"""What the NAT core's files share: the verdicts and the conversions to C."""

from __future__ import annotations

import enum

from .._types import NO_BACKEND as NO_BACKEND   # one name, shared with _backends
from ._binding import ffi, lib


class Verdict(enum.IntEnum):
    """A frame's verdict after nat_process(), mirrored from nat.h
    (tests/test_lockstep.py checks them). Not to be confused with the hooks'
    answers (``appliance.hooks.DROP`` is a string a plugin returns)."""

    FORWARD = lib.NAT_FORWARD
    PASS = lib.NAT_PASS
    DROP = lib.NAT_DROP
    MISS = lib.NAT_MISS


def _ns(now: float) -> int:
    return int(round(now * 1_000_000_000))


def _u8(data: bytes):
    """bytes -> const uint8_t * for the C calls."""
    return ffi.from_buffer("uint8_t[]", data)


def _ntohs(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


def _allowed(prefixes, src: bytes) -> bool:
    """Is the packed source address in one of the prefixes (of its family)?"""
    a = int.from_bytes(src, "big")
    for net in prefixes:
        if a & int(net.netmask) == int(net.network_address):
            return True
    return False
