"""Loading plugins and calling hooks with containment.

A plugin's exception is the plugin author's fault, not the operator's and
not the network's: it is counted per plugin, logged once per plugin with its
traceback (then every 1000th time), and the flow gets the built-in decision.
"""

from __future__ import annotations

import collections
import importlib
import ipaddress
import importlib.metadata
import logging
import os
import sys
from typing import Any, Callable, Iterable, Optional

import pluggy

from . import hooks
from ._config import Config, ConfigError

log = logging.getLogger("appliance.plugins")

DEFAULTS_NAME = "appliance_plugins.defaults"


class Plugins:
    """The plugin manager of one appliance, with contained hook calls."""

    def __init__(self, modules: Iterable[str] = (), *, entry_points: bool = True,
                 objects: Iterable[Any] = (), config_path: str = "<config>") -> None:
        from appliance_plugins.defaults import DefaultPolicies

        self.pm = pluggy.PluginManager(hooks.PROJECT)
        self.pm.add_hookspecs(hooks)
        self.defaults = DefaultPolicies()
        self.pm.register(self.defaults, name=DEFAULTS_NAME)
        self.errors: collections.Counter[str] = collections.Counter()
        if modules and os.path.isfile(config_path):
            # plugin modules may sit beside the configuration file (a mounted
            # directory in the container); installed modules of the same
            # name come first
            here = os.path.dirname(os.path.abspath(config_path))
            if here not in sys.path:
                sys.path.append(here)
        for name in modules:
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                raise ConfigError(config_path, "plugins.modules",
                                  f"cannot import plugin module '{name}': {exc!r}") from None
            self._register(module, name, config_path)
        if entry_points:
            for ep in importlib.metadata.entry_points(group=hooks.ENTRY_POINT_GROUP):
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise ConfigError(config_path, "", f"cannot load plugin entry point "
                                      f"'{ep.name}' ({ep.value}): {exc!r}") from None
                self._register(plugin, f"entrypoint:{ep.name}", config_path)
        for obj in objects:
            self._register(obj, getattr(obj, "name", None) or repr(obj), config_path)
        self._refresh_fast_paths()

    def _register(self, plugin: Any, name: str, config_path: str) -> None:
        if self.pm.is_registered(plugin) or self.pm.get_plugin(name) is not None:
            return
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            raise ConfigError(config_path, "plugins", f"plugin '{name}' is invalid: {exc}") from None

    def _refresh_fast_paths(self) -> None:
        # With only the built-in implementation of a decision hook, call it
        # directly: same behaviour, a microsecond less per new flow.
        def bind(hook_name: str, check: Callable[..., bool]) -> Callable[..., Any]:
            impls = getattr(self.pm.hook, hook_name).get_hookimpls()
            if len(impls) == 1 and impls[0].plugin is self.defaults:
                return getattr(self.defaults, hook_name)
            argnames = impls[0].argnames if impls else ()

            def call(*args: Any) -> Any:
                return self.decide(hook_name, check, **dict(zip(argnames, args)))

            return call

        self.select_backend = bind("appliance_select_backend", _valid_backend)
        self.session_timeouts = bind("appliance_session_timeouts", _valid_timeouts)
        self.snat = bind("appliance_snat", _valid_snat)
        self.wants_created = bool(self.pm.hook.appliance_session_created.get_hookimpls())
        self.wants_expired = bool(self.pm.hook.appliance_session_expired.get_hookimpls())

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    # ------------------------------------------------------------------

    def _culprit(self, hook: Any, exc: BaseException) -> str:
        codes = {}
        for impl in hook.get_hookimpls():
            fn = getattr(impl.function, "__func__", impl.function)
            codes[getattr(fn, "__code__", None)] = impl.plugin_name
        tb = exc.__traceback__
        culprit = "unknown"
        while tb is not None:
            name = codes.get(tb.tb_frame.f_code)
            if name is not None:
                culprit = name
            tb = tb.tb_next
        return culprit

    def _contain(self, hook_name: str, exc: BaseException, culprit: Optional[str] = None) -> None:
        hook = getattr(self.pm.hook, hook_name)
        name = culprit or self._culprit(hook, exc)
        self.errors[name] += 1
        n = self.errors[name]
        if n == 1 or n % 1000 == 0:
            log.error("plugin %s raised in %s (%d so far); using the built-in decision",
                      name, hook_name, n, exc_info=exc)

    def decide(self, hook_name: str, check: Callable[..., bool], **kwargs: Any) -> Any:
        """Call a firstresult decision hook; on exception or an invalid answer,
        the built-in plugin decides."""
        try:
            result = getattr(self.pm.hook, hook_name)(**kwargs)
        except Exception as exc:
            self._contain(hook_name, exc)
            return getattr(self.defaults, hook_name)(**kwargs)
        if not check(result, **kwargs):
            err = ValueError(f"{hook_name} returned an invalid value {result!r}")
            self._contain(hook_name, err, culprit=self._answering_plugin(hook_name, kwargs))
            return getattr(self.defaults, hook_name)(**kwargs)
        return result

    def _answering_plugin(self, hook_name: str, kwargs: dict) -> str:
        # Rare path (an invalid answer): ask each implementation in call order.
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                if impl.function(**{k: kwargs[k] for k in impl.argnames}) is not None:
                    return impl.plugin_name
            except Exception:
                return impl.plugin_name
        return "unknown"

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a notification hook; every implementation runs even if one raises."""
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                self._contain(hook_name, exc, culprit=impl.plugin_name)

    def configure(self, config: Config) -> None:
        # historic: plugins registered later receive the latest config too
        for impl in reversed(self.pm.hook.appliance_configure.get_hookimpls()):
            try:
                impl.function(config=config)
            except Exception as exc:
                self._contain("appliance_configure", exc, culprit=impl.plugin_name)

    def background_tasks(self) -> list[Any]:
        """The plugins' async callables, each wrapped so that its exception
        ends that task only: counted and logged against its plugin, while
        the appliance (whose nursery it runs in) goes on."""
        tasks: list[Any] = []
        for impl in reversed(self.pm.hook.appliance_background_tasks.get_hookimpls()):
            try:
                for fn in impl.function() or ():
                    tasks.append(self._contained_task(fn, impl.plugin_name))
            except Exception as exc:
                self._contain("appliance_background_tasks", exc, culprit=impl.plugin_name)
        return tasks

    def _contained_task(self, fn: Callable[[], Any], culprit: str) -> Callable[[], Any]:
        async def contained() -> None:
            try:
                await fn()
            except Exception as exc:   # cancellation is a BaseException: it passes
                self._contain("appliance_background_tasks", exc, culprit=culprit)
                log.error("background task %s of plugin %s ended with an error; the appliance goes on "
                          "without it", getattr(fn, "__name__", fn), culprit)

        return contained


# What a decision hook may answer (anything else is the plugin's bug).

def _valid_backend(r: Any, flow: Any, translation: Any) -> bool:
    return r == hooks.DROP or (type(r) is int and 0 <= r < len(translation.backends))


def _valid_timeouts(r: Any, **_: Any) -> bool:
    from ._types import Timeouts

    return isinstance(r, Timeouts)


def _valid_snat(r: Any, flow: Any, snat: Any) -> bool:
    if r in (hooks.DROP, hooks.NO_SNAT):
        return True
    try:
        return ipaddress.ip_address(r).version == flow.family
    except (TypeError, ValueError):
        return False
