"""Session sync between instances (docs/cluster.md, "Session sync"): the
sessions a peer cannot recompute are sent to every peer in batches, from
the trio thread, never per packet; a peer's are installed or refreshed.

- New sessions: collected by the core's C at creation (an index and
  serial, when sync is on), turned into records there and sent every
  ``FLUSH_SECONDS`` in messages of up to ``_wire.PER_MESSAGE`` records:
  the Python here runs per message, not per session.
- Refresh: every ``sync_refresh`` seconds, the synced sessions that saw a
  packet since the last refresh are sent again, so a peer's copy expires
  when ours would: never before, at most one refresh period after.
- A peer that starts says hello; each peer that hears it answers with
  every session it has that needs sync.
- Refused: datagrams from an address that is no peer, with a bad MAC (a
  wrong key, or forged), malformed, replayed (seen before, or sent more
  than 30 s from our clock), or of another configuration. Each
  reason is counted (``show stats`` ``sync``) and nothing of the message is
  used. A peer that cannot be reached costs a counted send error; the
  sessions are not queued for it (the next refresh carries the live ones).
"""

from __future__ import annotations

import errno
import logging
import random
import time

import trio

from ..cluster import _wire

log = logging.getLogger("appliance.sync")

FLUSH_SECONDS = 0.05


class SessionSync:
    """Part of :class:`~appliance.runtime.Appliance`."""

    sync_sock = None

    async def open_sync(self) -> None:
        cl = self.config.cluster
        self.sync_counters = dict.fromkeys(
            ("messages_sent", "sessions_sent", "bytes_sent", "send_errors", "messages_received",
             "sessions_installed", "sessions_refreshed", "sessions_unchanged", "sessions_refused",
             "hellos", "sync_bad_mac", "sync_malformed", "sync_replayed", "sync_wrong_config", "sync_unknown_peer"),
            0)
        if not cl.sync:
            return
        addr, port = cl.sync_listen
        sock = trio.socket.socket(trio.socket.AF_INET6 if addr.version == 6 else trio.socket.AF_INET,
                                  trio.socket.SOCK_DGRAM)
        try:
            await sock.bind((str(addr), port))
        except OSError as exc:
            sock.close()
            raise SystemExit(f"appliance: error: {self.config.path}: cluster.sync_listen {addr}:{port}: "
                             f"{exc.strerror or exc}") from None
        self.sync_sock = sock
        self.core.sync_start()
        self._sync_id = random.getrandbits(32)
        self._sync_seq = 0
        log.info("session sync on %s:%d with %d peer(s)", addr, port, len(cl.sync_peers))

    def close_sync(self) -> None:
        if self.sync_sock is not None:
            self.sync_sock.close()
            self.sync_sock = None

    def _sync_digest(self) -> int:
        return _wire.config_digest(self.config.translations)

    async def _send(self, kind: int, records: bytes, peers=None) -> None:
        cl = self.config.cluster
        msgs = _wire.encode(kind, records, cl.sync_key, self._sync_id, self._sync_seq, self._sync_digest(),
                            time.time())
        self._sync_seq += len(msgs)
        c = self.sync_counters
        for peer in peers or [(str(a), p) for a, p in cl.sync_peers]:
            for m in msgs:
                try:
                    await self.sync_sock.sendto(m, peer)
                except OSError as exc:
                    c["send_errors"] += 1
                    if exc.errno not in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
                        log.warning("sync to %s:%d: %s", peer[0], peer[1], exc.strerror or exc)
                    break
                c["messages_sent"] += 1
                c["bytes_sent"] += len(m)
            c["sessions_sent"] += len(records) // _wire.RECORD.size

    async def sync_send_loop(self) -> None:
        if self.sync_sock is None:
            return
        await self._send(_wire.HELLO, b"")
        refresh = self.config.cluster.sync_refresh
        last_refresh = time.time()
        while True:
            await trio.sleep(FLUSH_SECONDS)
            now = time.time()
            records, n = self.core.sync_new(now)
            if n:
                await self._send(_wire.SESSIONS, records)
            if now - last_refresh >= refresh:
                records, n = self.core.sync_refresh(now, since=last_refresh)
                last_refresh = now
                if n:
                    await self._send(_wire.SESSIONS, records)

    async def sync_recv_loop(self) -> None:
        if self.sync_sock is None:
            return
        cl = self.config.cluster
        peers = {str(a) for a, _ in cl.sync_peers}
        c = self.sync_counters
        guard = _wire.ReplayGuard()
        while True:
            data, addr = await self.sync_sock.recvfrom(65536)
            if addr[0].split("%")[0] not in peers:
                c["sync_unknown_peer"] += 1
                if c["sync_unknown_peer"] in (1, 100, 10000):
                    log.warning("sync from %s: refused: not one of sync_peers (%d so far)", addr[0],
                                c["sync_unknown_peer"])
                continue
            try:
                msg = _wire.decode(data, self.config.cluster.sync_key)
                guard.admit(msg, time.time())
            except _wire.SyncError as exc:
                c[exc.reason] += 1
                if c[exc.reason] in (1, 100, 10000):
                    log.warning("sync from %s: refused: %s (%d so far)", addr[0], exc, c[exc.reason])
                continue
            if msg.digest != self._sync_digest():
                c["sync_wrong_config"] += 1
                if c["sync_wrong_config"] in (1, 100, 10000):
                    log.warning("sync from %s: refused: its translations differ from ours", addr[0])
                continue
            c["messages_received"] += 1
            if msg.kind == _wire.HELLO:
                c["hellos"] += 1
                await self._send(_wire.SESSIONS, self.core.dump_records(time.time())[0], peers=[addr[:2]])
                continue
            got = self.core.install_synced(msg.records, time.time())
            for k, v in got.items():
                c[f"sessions_{k}"] += v

    def sync_stats(self) -> dict:
        if self.sync_sock is None:
            return {}
        return {"sync": {**self.sync_counters, "synced_sessions": self.core.synced_sessions,
                         "peers": [f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"
                                   for a, p in self.config.cluster.sync_peers]}}
