"""Following the kernel: rtnetlink notifications as the appliance reads them."""

import ipaddress
import struct

import pytest

from appliance._kernel import Changes, neighbour_use_messages, parse_notifications

MAC = bytes.fromhex("020000000001")


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def neigh(kind: int, addr: str, state: int, mac: bytes | None = None, ifindex: int = 7) -> bytes:
    a = ipaddress.ip_address(addr)
    body = struct.pack("=BxxxiHBB", 2 if a.version == 4 else 10, ifindex, state, 0, 0) + attr(1, a.packed)
    if mac is not None:
        body += attr(2, mac)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


NEW, DEL, NEWROUTE = 28, 29, 24
REACHABLE, STALE, INCOMPLETE, FAILED = 0x02, 0x04, 0x01, 0x20

TABLE = [
    ("resolved", neigh(NEW, "20.0.0.1", REACHABLE, MAC), [(7, "20.0.0.1", MAC)], False),
    ("stale, with its MAC", neigh(NEW, "20.0.0.1", STALE, MAC), [(7, "20.0.0.1", MAC)], False),
    ("ipv6", neigh(NEW, "fd20::1", REACHABLE, MAC, 9), [(9, "fd20::1", MAC)], False),
    ("resolving: nothing yet", neigh(NEW, "20.0.0.1", INCOMPLETE), [], False),
    ("failed (or flushed): a snapshot decides", neigh(NEW, "20.0.0.1", FAILED), [], True),
    ("deleted", neigh(DEL, "20.0.0.1", STALE, MAC), [], True),
    ("a route", struct.pack("=IHHII", 28, NEWROUTE, 0, 0, 0) + b"\0" * 12, [], True),
    ("truncated", neigh(NEW, "20.0.0.1", REACHABLE, MAC)[:-4], [], True),
    ("two in one read", neigh(NEW, "20.0.0.1", REACHABLE, MAC) + neigh(NEW, "20.0.0.2", STALE, MAC, 8),
     [(7, "20.0.0.1", MAC), (8, "20.0.0.2", MAC)], False),
]


@pytest.mark.parametrize("what, data, neighbours, other", TABLE, ids=[t[0] for t in TABLE])
def test_notifications(what, data, neighbours, other):
    out = Changes()
    parse_notifications(data, out)
    assert [(i, str(a), m) for i, a, m in out.neighbours] == neighbours
    assert out.other is other


def test_neighbour_use_requests():
    msgs = neighbour_use_messages([(7, ipaddress.ip_address("20.0.0.1")), (9, ipaddress.ip_address("fd20::1"))])
    length, kind, flags = struct.unpack_from("=IHH", msgs)
    assert kind == NEW and flags == 0x101                       # request, replace: never creates
    family, ifindex, state, ntf = struct.unpack_from("=BxxxiHB", msgs, 16)
    assert (family, ifindex, state, ntf) == (2, 7, 0, 0x01)    # NTF_USE, no state of ours
    assert msgs[32:36] == bytes([20, 0, 0, 1])
    second = msgs[length:]
    assert struct.unpack_from("=BxxxiHB", second, 16)[:2] == (10, 9)
    assert second[32:48] == ipaddress.ip_address("fd20::1").packed
