"""pcap and pcapng reading, pcap writing.

Written here rather than taken from dpkt because replay needs what dpkt's
readers do not give: exact integer timestamps (nanoseconds, no float
rounding), every interface of a pcapng section with its name and timestamp
resolution, and errors that say what is wrong with a file.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import BinaryIO, Iterator, Optional

LINKTYPE_ETHERNET = 1

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D


class CaptureError(Exception):
    """A capture file that cannot be read: names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class Packet:
    ts_ns: int
    interface: Optional[str]   # pcapng: the IDB's if_name; pcap: None
    data: bytes


class CaptureReader:
    """Iterate packets of a pcap or pcapng file (sniffed from the magic)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._f: BinaryIO = open(path, "rb")
        except OSError as exc:
            raise CaptureError(f"{path}: cannot open: {exc.strerror or exc}") from None
        head = self._f.read(4)
        if len(head) < 4:
            raise CaptureError(f"{path}: not a pcap or pcapng file (too short)")
        self._f.seek(0)
        magic_le = struct.unpack("<I", head)[0]
        magic_be = struct.unpack(">I", head)[0]
        if magic_le == PCAPNG_SHB:
            self.format = "pcapng"
            # interfaces may have any resolution (if_tsresol); write ns out
            self.nanosecond = True
        elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
            self.format = "pcap"
            self.nanosecond = PCAP_MAGIC_NS in (magic_le, magic_be)
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng file (magic {head.hex()})")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "CaptureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Packet]:
        if self.format == "pcap":
            return self._pcap()
        return self._pcapng()

    def _read(self, n: int, what: str) -> bytes:
        b = self._f.read(n)
        if len(b) != n:
            raise CaptureError(f"{self.path}: truncated {what} at offset {self._f.tell() - len(b)}")
        return b

    def _pcap(self) -> Iterator[Packet]:
        hdr = self._read(24, "pcap header")
        for e in ("<", ">"):
            magic, _vmaj, _vmin, _zone, _sig, _snap, link = struct.unpack(e + "IHHiIII", hdr)
            if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                break
        if link & 0xFFFF != LINKTYPE_ETHERNET:
            raise CaptureError(f"{self.path}: link type {link} is not Ethernet (1)")
        mult = 1 if magic == PCAP_MAGIC_NS else 1000
        while True:
            rec = self._f.read(16)
            if not rec:
                return
            if len(rec) < 16:
                raise CaptureError(f"{self.path}: truncated record header at offset {self._f.tell() - len(rec)}")
            sec, frac, incl, _orig = struct.unpack(e + "IIII", rec)
            if incl > 256 * 1024:
                raise CaptureError(f"{self.path}: record of {incl} bytes at offset {self._f.tell() - 16}: corrupt file")
            data = self._read(incl, "packet data")
            yield Packet(sec * 1_000_000_000 + frac * mult, None, data)

    def _pcapng(self) -> Iterator[Packet]:
        e = "<"
        ifaces: list[tuple[Optional[str], int, int]] = []  # (name, linktype, units per second)
        last_ts = 0
        while True:
            head = self._f.read(8)
            if not head:
                return
            if len(head) < 8:
                raise CaptureError(f"{self.path}: truncated block header at offset {self._f.tell() - len(head)}")
            btype_le = struct.unpack("<I", head[:4])[0]
            if btype_le == PCAPNG_SHB:
                bom = self._read(4, "section header")
                e = "<" if struct.unpack("<I", bom)[0] == PCAPNG_BOM else ">"
                if struct.unpack(e + "I", bom)[0] != PCAPNG_BOM:
                    raise CaptureError(f"{self.path}: bad pcapng byte-order magic")
                blen = struct.unpack(e + "I", head[4:])[0]
                if blen < 28 or blen % 4:
                    raise CaptureError(f"{self.path}: bad section header length {blen}")
                self._read(blen - 12, "section header")
                ifaces = []
                continue
            btype, blen = struct.unpack(e + "II", head)
            if blen < 12 or blen % 4:
                raise CaptureError(f"{self.path}: bad block length {blen} at offset {self._f.tell() - 8}")
            body = self._read(blen - 12, "block")
            self._read(4, "block trailer")
            if btype == 1:  # Interface Description Block
                link = struct.unpack(e + "H", body[:2])[0]
                name, units = None, 1_000_000
                for code, val in _options(body[8:], e):
                    if code == 2:
                        name = val.rstrip(b"\0").decode("utf-8", "replace")
                    elif code == 9 and val:
                        r = val[0]
                        units = 2 ** (r & 0x7F) if r & 0x80 else 10 ** r
                ifaces.append((name, link, units))
            elif btype in (6, 2):  # Enhanced / obsolete Packet Block
                if btype == 6:
                    ifid, hi, lo, cap, _orig = struct.unpack(e + "IIIII", body[:20])
                    data = body[20:20 + cap]
                else:
                    ifid, _drops, hi, lo, cap, _orig = struct.unpack(e + "HHIIII", body[:20])
                    data = body[20:20 + cap]
                if ifid >= len(ifaces):
                    raise CaptureError(f"{self.path}: packet on undeclared interface {ifid}")
                name, link, units = ifaces[ifid]
                if link != LINKTYPE_ETHERNET:
                    raise CaptureError(f"{self.path}: interface {ifid} link type {link} is not Ethernet (1)")
                if len(data) != cap:
                    raise CaptureError(f"{self.path}: packet block shorter than its captured length")
                ts = (hi << 32) | lo
                last_ts = ts * 1_000_000_000 // units
                yield Packet(last_ts, name, data)
            elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                if not ifaces:
                    raise CaptureError(f"{self.path}: simple packet block before any interface")
                name, link, _units = ifaces[0]
                orig = struct.unpack(e + "I", body[:4])[0]
                yield Packet(last_ts, name, body[4:4 + min(orig, len(body) - 4)])
            # other blocks (statistics, name resolution, custom) are skipped


def _options(buf: bytes, e: str):
    i = 0
    while i + 4 <= len(buf):
        code, length = struct.unpack(e + "HH", buf[i:i + 4])
        if code == 0:
            return
        yield code, buf[i + 4:i + 4 + length]
        i += 4 + ((length + 3) & ~3)


class PcapWriter:
    """Write Ethernet frames to a classic pcap (microsecond or nanosecond)."""

    def __init__(self, path: str, nanosecond: bool = False, snaplen: int = 262144) -> None:
        try:
            self._f = open(path, "wb")
        except OSError as exc:
            raise CaptureError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self.nanosecond = nanosecond
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        self._f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, ts_ns: int, data: bytes) -> None:
        sec, ns = divmod(ts_ns, 1_000_000_000)
        frac = ns if self.nanosecond else ns // 1000
        self._f.write(struct.pack("<IIII", sec, frac, len(data), len(data)))
        self._f.write(data)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_pcapng(path: str, packets: list[tuple[int, str, bytes]]) -> None:
    """Write (ts_ns, interface name, frame) as pcapng with one IDB per name
    (nanosecond resolution). Used by the demo and the tests."""
    names: list[str] = []
    for _, name, _ in packets:
        if name not in names:
            names.append(name)

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    def opt(code: int, val: bytes) -> bytes:
        return struct.pack("<HH", code, len(val)) + val + b"\0" * (-len(val) % 4)

    with open(path, "wb") as f:
        f.write(block(PCAPNG_SHB, struct.pack("<IHHq", PCAPNG_BOM, 1, 0, -1)))
        for name in names:
            f.write(block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 262144)
                          + opt(2, name.encode()) + opt(9, bytes([9])) + opt(0, b"")))
        for ts, name, data in packets:
            body = struct.pack("<IIIII", names.index(name), ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
            f.write(block(6, body + data))
