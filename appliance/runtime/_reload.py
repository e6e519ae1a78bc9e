"""The watched configuration file: polled (config_loop) and on SIGHUP
(check_config), parsed in a worker thread, applied with the runtime
changes (`appliance cnat`) that still fit it as an overlay; an invalid
version is reported and the last good one keeps serving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
from typing import Optional

import trio

from .. import _cnat
from .._config import Config, ConfigError, parse_config
from ._kernel_tables import _KERNEL_ERRORS, _read_kernel

log = logging.getLogger("appliance.run")

CONFIG_POLL = 1.0         # seconds between looks at the configuration file
CONFIG_SETTLE = 0.2      # seconds a changed file must stay unchanged before it is read
CONFIG_SETTLE_MAX = 5.0  # ... but a file rewritten without end is read after this long


class ConfigReload:
    """The configuration's part of :class:`~appliance.runtime.Appliance`
    (its state: config, file_config, overlay, config_status, _config_seen,
    _reloading)."""

    async def config_loop(self) -> None:
        """Watch the configuration file; apply a valid new version, keep
        serving the last good one when the new one is invalid."""
        self._config_seen = self._digest(pathlib.Path(self.config.path))
        while True:
            await trio.sleep(CONFIG_POLL)
            await self.check_config()

    async def check_config(self, force: bool = False) -> None:
        """Reload the configuration file if it changed (force: SIGHUP, also
        when it did not). One reload at a time (the poll and SIGHUP)."""
        async with self._reloading:
            path = pathlib.Path(self.config.path)
            digest = self._digest(path)
            if digest is None or (digest == self._config_seen and not force):
                return
            # read it once it has been still for CONFIG_SETTLE: a file caught
            # half-written may parse, and its first half must not be applied
            for _ in range(int(CONFIG_SETTLE_MAX / CONFIG_SETTLE)):
                await trio.sleep(CONFIG_SETTLE)
                again = self._digest(path)
                if again == digest:
                    break
                digest = again
            if digest is None:
                return
            self._config_seen = digest
            await self.reload(path)

    @staticmethod
    def _digest(path: pathlib.Path) -> Optional[bytes]:
        try:
            return hashlib.sha256(path.read_bytes()).digest()
        except OSError:
            return None   # being replaced, or gone: keep the current config

    async def reload(self, path: pathlib.Path) -> bool:
        """Parsing and reading the kernel's tables run in worker threads:
        5,000 translations took 180 ms to parse, which the datapath's
        thread spent not polling (1.3 % of a 400 Mbit/s UDP stream lost per
        reload); applying them takes ~13 ms there."""
        try:
            new = await trio.to_thread.run_sync(_parse_reload, path)
            self.plugins.check(new)   # e.g. a selector no plugin provides
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            self.config_status["rejected"] += 1
            self.config_status["last_error"] = str(exc)
            # one line, as the start's own lines (ready, stopped): not logged again
            print(f"appliance: configuration rejected, still serving the previous one: {exc}", flush=True)
            return False
        for what, old_v, new_v in (("[[interface]]", self.config.interfaces, new.interfaces),
                                   ("[plugins] modules", self.config.plugin_modules, new.plugin_modules),
                                   ("[sessions] max", self.config.max_sessions, new.max_sessions),
                                   ("[datapath] workers", self.config.workers, new.workers),
                                   ("[datapath] reserved_ports", self.config.reserved_ports, new.reserved_ports)):
            if old_v != new_v:
                log.warning("%s changed in %s: takes effect at restart", what, path)
        new = dataclasses.replace(new, interfaces=self.config.interfaces, plugin_modules=self.config.plugin_modules,
                                  max_sessions=self.config.max_sessions, workers=self.config.workers,
                                  reserved_ports=self.config.reserved_ports)
        self.file_config = new
        new = self._with_overlay(new)
        await self._switch_to(new)
        self.config_status["reloads"] += 1
        self.config_status["last_error"] = None
        print(f"appliance: configuration reloaded from {path}: {len(new.translations)} translations", flush=True)
        return True

    async def _switch_to(self, config: Config) -> None:
        """Serve a new configuration (a reload, a cnat change): the core's,
        then the vips and real-translation ports in the XDP maps."""
        self.config = config
        self.core.apply_config(config)
        self.bgp_changed()       # the vips announced follow the translations
        try:
            self.sync_kernel(await trio.to_thread.run_sync(_read_kernel, self._data_ports()), force=True)
        except _KERNEL_ERRORS as exc:
            self._kernel_error(exc)

    def _with_overlay(self, file_config: Config) -> Config:
        """The file's configuration with the runtime changes that still fit
        it; one that no longer does (the file now has that translation) is
        dropped, with a warning: the file is the declared truth."""
        kept: list = []
        for cmd in self.overlay:
            if _cnat.already_in(_cnat.apply(file_config, kept), cmd):
                log.info("runtime change 'cnat %s' is in %s now", _cnat.render(cmd), file_config.path)
                continue
            try:
                cfg = _cnat.apply(file_config, kept + [cmd])
                self.plugins.check(cfg)
            except ConfigError as exc:
                log.warning("runtime change 'cnat %s' dropped: it no longer fits %s (%s)",
                            _cnat.render(cmd), file_config.path, exc.reason)
                continue
            kept.append(cmd)
        self.overlay = kept
        return _cnat.apply(file_config, kept)


def _parse_reload(path: pathlib.Path) -> Config:
    """A new version of the watched file. An empty one is refused: far more
    often a file caught between an editor's truncate and write than a wish
    to stop serving everything (a comment makes an empty configuration)."""
    text = path.read_text()
    if not text.strip():
        raise ConfigError(str(path), "", "the file is empty (caught while being written?); to run with "
                          "nothing configured, write a comment in it. Replace the file atomically: write "
                          "the new version beside it, then rename it over")
    return parse_config(text, str(path))
