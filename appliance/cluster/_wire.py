"""Session sync's wire format (docs/cluster.md, "Session sync"), sans-IO.

One UDP datagram is one message:

    header  28 bytes  magic "CNSY", version 1, type (1 sessions, 2 hello),
                      record count, the sender's id, its sequence number,
                      the digest of its translations, the sender's clock
                      (seconds)
    records 96 bytes each (type 1): the two session keys, translation id,
                      backend index, flags, state, milliseconds since the
                      session was last seen, its lifetime left
    mac     32 bytes  HMAC-SHA256 over everything before it, with the
                      shared key

A message whose length, magic, version, type, count or MAC is wrong is
refused whole with a reason; nothing of it is used. The MAC is checked
before anything else in it is believed. A signed message seen before, or
sent more than ``REPLAY_WINDOW`` seconds from our clock, is refused too
(:class:`ReplayGuard`): a recorded message cannot be played back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
import zlib

MAGIC = b"CNSY"
VERSION = 1
SESSIONS, HELLO = 1, 2
HEADER = struct.Struct("!4sBBHIQII")         # magic, version, type, count, sender, seq, config digest, time
KEY = struct.Struct("!16s16sHHBBH")          # src, dst, sport, dport, proto, family, zero (host order ports)
RECORD = struct.Struct("!40s40sIHBBII")      # key0, key1, translation, backend, flags, state, age ms, left ms
MAC_LEN = 32
MAX_DATAGRAM = 1400                          # below any path MTU we meet, in one IP packet
PER_MESSAGE = (MAX_DATAGRAM - HEADER.size - MAC_LEN) // RECORD.size


class SyncError(ValueError):
    """A message refused: ``reason`` is a counter's name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Record:
    key0: bytes          # 40 bytes, struct nat_key as the initiator sends
    key1: bytes          # 40 bytes, as replies arrive
    translation: int
    backend: int
    flags: int
    state: int
    age_ms: int          # since the sender last saw a packet of it
    left_ms: int         # until it expires on the sender


@dataclasses.dataclass(frozen=True)
class Message:
    kind: int
    sender: int
    seq: int
    digest: int
    records: tuple
    time: int = 0         # the sender's clock, seconds


def config_digest(translations) -> int:
    """What the translation ids mean: two instances exchange sessions only
    when theirs are the same."""
    text = "\n".join(f"{t.id} {t.name} {t.proto} {t.kind} {t.address} {t.port} "
                     + " ".join(b.rewrite for b in t.backends) for t in translations)
    return zlib.crc32(text.encode())


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def pack(records) -> bytes:
    """Records as the core builds them (nat_sync.c), from Record objects."""
    return b"".join(RECORD.pack(r.key0, r.key1, r.translation, r.backend, r.flags, r.state,
                                min(r.age_ms, 0xFFFFFFFF), min(r.left_ms, 0xFFFFFFFF)) for r in records)


def encode(kind: int, records: bytes, key: bytes, sender: int, seq: int, digest: int, now: float) -> list[bytes]:
    """Messages carrying ``records`` (packed, RECORD.size bytes each; at
    most PER_MESSAGE a message, one empty message for a hello); seq
    numbers from ``seq`` on. Per message, not per record: a header and a MAC."""
    if len(records) % RECORD.size:
        raise ValueError(f"{len(records)} bytes of records, not a multiple of {RECORD.size}")
    step = PER_MESSAGE * RECORD.size
    out = []
    for n, at in enumerate(range(0, len(records), step) if records else [0]):
        chunk = records[at:at + step]
        body = HEADER.pack(MAGIC, VERSION, kind, len(chunk) // RECORD.size, sender & 0xFFFFFFFF, seq + n,
                           digest, int(now) & 0xFFFFFFFF) + chunk
        out.append(body + _mac(key, body))
    return out


def decode(data: bytes, key: bytes) -> Message:
    """One datagram -> a Message, or SyncError(reason)."""
    if len(data) < HEADER.size + MAC_LEN:
        raise SyncError("sync_malformed", f"{len(data)} bytes, shorter than a header and its MAC")
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(_mac(key, body), mac):
        raise SyncError("sync_bad_mac", "not signed with our key")
    magic, version, kind, count, sender, seq, digest, sent = HEADER.unpack_from(body)
    if magic != MAGIC:
        raise SyncError("sync_malformed", "not a session-sync message")
    if version != VERSION:
        raise SyncError("sync_malformed", f"version {version}, we speak {VERSION}")
    if kind not in (SESSIONS, HELLO):
        raise SyncError("sync_malformed", f"unknown type {kind}")
    if len(body) != HEADER.size + count * RECORD.size:
        raise SyncError("sync_malformed", f"{count} records said, {len(body) - HEADER.size} bytes of them")
    records = tuple(Record(*RECORD.unpack_from(body, HEADER.size + i * RECORD.size)) for i in range(count))
    return Message(kind, sender, seq, digest, records, sent)


#: how far a message's time may be from ours (the peers' clocks must agree
#: within it: NTP); and how many sequence numbers back are still accepted
#: once, out of order
REPLAY_WINDOW = 30
SEQ_WINDOW = 1024
MAX_SENDERS = 64


class ReplayGuard:
    """Refuses a signed message seen before or sent too long ago: per
    sender id the highest sequence number and which of the SEQ_WINDOW
    before it arrived (as IPsec's anti-replay window). A sender id is new
    at each start of a peer; the time bounds what an old one could replay."""

    def __init__(self) -> None:
        self._senders: dict[int, tuple[int, int]] = {}    # sender -> (highest seq, bitmap of the ones below)

    def admit(self, msg: Message, now: float) -> None:
        """SyncError("sync_replayed") or None (the message is then recorded)."""
        if abs(int(now) - msg.time) > REPLAY_WINDOW:
            raise SyncError("sync_replayed", f"sent at {msg.time}, {int(now) - msg.time:+d} s from our clock "
                                             f"(more than {REPLAY_WINDOW} s: a replay, or the clocks differ)")
        top, seen = self._senders.get(msg.sender, (-1, 0))
        if msg.seq > top:
            shift = msg.seq - top
            seen = ((seen << shift) | (1 << (shift - 1))) & ((1 << SEQ_WINDOW) - 1) if top >= 0 else 0
            top = msg.seq
        else:
            back = top - msg.seq
            if back == 0 or back > SEQ_WINDOW or seen >> (back - 1) & 1:
                raise SyncError("sync_replayed", f"sequence number {msg.seq} from sender {msg.sender:#x} seen "
                                                 "before or too old")
            seen |= 1 << (back - 1)
        self._senders.pop(msg.sender, None)
        self._senders[msg.sender] = (top, seen)
        while len(self._senders) > MAX_SENDERS:      # the least recently heard
            del self._senders[next(iter(self._senders))]
