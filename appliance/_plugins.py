"""Loading plugins and calling hooks with containment.

A plugin's exception is the plugin author's fault, not the operator's and
not the network's: it is counted per plugin, logged once per plugin with its
traceback (then every 1000th time), and the *next* plugin decides for that
flow (the built-ins last, which never fail).

Time is contained too: each hook call is timed (one clock read per call
boundary, not a wrapper per plugin) against ``[plugins] hook_budget_ms``;
an overrun is counted, and a plugin with ``disable_after`` overruns within
OVERRUN_WINDOW_NS is unregistered with a logged reason (docs/plugins.md).
Time the calling thread spent waiting for a CPU is not the plugin's: given
a ``waited`` clock (the thread's run-queue wait, runtime/_sched.py), an
apparent overrun is excused when the wait since the last mark() accounts
for it. The runtime marks once per slice of new flows, so the wait is an
upper bound (it may excuse a slow call on a saturated machine, never
blame a plugin for the scheduler). Without it (tests, replay) wall time
counts.
A call that never returns cannot be cut short from this thread: the
datapath workers run in threads of their own so established flows do not
wait on it (runtime/_datapath.py).

Order (docs/plugins.md): objects handed in (tests, the kit), then
``[plugins] modules`` as listed, then entry points by name, then the
first-party plugins, then the built-ins. pluggy calls the last registered
first, so they are registered in the reverse of that order.
"""

from __future__ import annotations

import collections
import importlib
import importlib.metadata
import inspect
import ipaddress
import logging
import math
import os
import reprlib
import sys
import time
from typing import Any, Callable, Iterable

import pluggy

from . import hooks
from ._config import Config, ConfigError

log = logging.getLogger("appliance.plugins")

DEFAULTS_NAME = "appliance_plugins.defaults"

#: Registered in every appliance: they act only where the configuration
#: asks for them (a translation's selector, affinity, health checks).
FIRST_PARTY = ("appliance_plugins.affinity", "appliance_plugins.maglev", "appliance_plugins.least_sessions",
               "appliance_plugins.health")

#: Overruns count towards disabling for this long (a plugin slow once a
#: minute under load is counted, not disabled).
OVERRUN_WINDOW_NS = 60_000_000_000
#: The most figures one plugin's appliance_statistics may report.
FIGURES_MAX = 64

_brief = reprlib.Repr()
_brief.maxstring = _brief.maxother = 80


class Plugins:
    """The plugin manager of one appliance, with contained hook calls."""

    def __init__(self, modules: Iterable[str] = (), *, entry_points: bool = True,
                 objects: Iterable[Any] = (), config_path: str = "<config>",
                 first_party: bool = True, clock: Callable[[], int] = time.perf_counter_ns,
                 waited: Callable[[], int] | None = None) -> None:
        from appliance_plugins.defaults import DefaultPolicies

        self.pm = pluggy.PluginManager(hooks.PROJECT)
        self.pm.add_hookspecs(hooks)
        self.defaults = DefaultPolicies()
        self.errors: collections.Counter[str] = collections.Counter()
        #: hook calls longer than the budget, per plugin
        self.overruns: collections.Counter[str] = collections.Counter()
        #: plugins taken out for their overruns: name -> reason
        self.disabled: dict[str, str] = {}
        self.clock = clock
        self.waited = waited
        self._waited_mark = waited() if waited is not None else 0
        #: apparent overruns excused as time spent waiting for a CPU, per plugin
        self.preempted: collections.Counter[str] = collections.Counter()
        self.budget_ns = 5_000_000
        self.disable_after = 10
        self._recent_overruns: dict[str, collections.deque] = {}
        self._task_scopes: dict[str, list] = {}
        #: who decided the last new flow's backend (for explain)
        self.decider = ""
        self._register(self.defaults, DEFAULTS_NAME, config_path)
        if first_party:
            for name in FIRST_PARTY:
                module = importlib.import_module(name)
                self._register(module.plugin(), "first-party:" + name.rpartition(".")[2], config_path)
        eps = []
        if entry_points:
            for ep in sorted(importlib.metadata.entry_points(group=hooks.ENTRY_POINT_GROUP), key=lambda e: e.name):
                try:
                    eps.append((ep.load(), f"entrypoint:{ep.name}"))
                except Exception as exc:
                    raise ConfigError(config_path, "", f"cannot load plugin entry point "
                                      f"'{ep.name}' ({ep.value}): {exc!r}") from None
        mods = []
        if modules and os.path.isfile(config_path):
            # plugin modules may sit beside the configuration file (a mounted
            # directory in the container); installed modules of the same
            # name come first
            here = os.path.dirname(os.path.abspath(config_path))
            if here not in sys.path:
                sys.path.append(here)
        for name in modules:
            try:
                mods.append((importlib.import_module(name), name))
            except Exception as exc:
                raise ConfigError(config_path, "plugins.modules",
                                  f"cannot import plugin module '{name}': {exc!r}") from None
        objs = [(obj, getattr(obj, "name", None) or repr(obj)) for obj in objects]
        for plugin, name in [*reversed(eps), *reversed(mods), *reversed(objs)]:
            self._register(plugin, name, config_path)
        self.selectors = self._collect_selectors(config_path)
        self._refresh_calls()

    # -- loading ---------------------------------------------------------

    def _register(self, plugin: Any, name: str, config_path: str) -> None:
        if self.pm.is_registered(plugin) or self.pm.get_plugin(name) is not None:
            return
        problem = self._signature_problem(plugin)
        if problem:
            raise ConfigError(config_path, "plugins", f"plugin '{name}' is invalid: {problem}")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:   # what the check above does not know of
            raise ConfigError(config_path, "plugins",
                              f"plugin '{name}' is invalid: {' '.join(str(exc).split())}") from None

    def _signature_problem(self, plugin: Any) -> str:
        """Why the plugin's hook implementations cannot be called, or ""."""
        for attr in dir(plugin):
            try:
                opts = self.pm.parse_hookimpl_opts(plugin, attr)
            except Exception:
                continue
            if opts is None:
                continue
            fn = getattr(plugin, attr)
            spec = getattr(self.pm.hook, attr, None)
            if spec is None or spec.spec is None:
                known = ", ".join(sorted(n for n in dir(hooks) if n.startswith("appliance_")))
                return f"hook '{attr}' is not a hook of this appliance (hooks: {known})"
            if opts.get("wrapper") or opts.get("hookwrapper"):
                return f"hook '{attr}' is a wrapper; the appliance calls its hooks one by one " \
                       "(firstresult, skipping a failing plugin) and does not run wrappers"
            if inspect.iscoroutinefunction(fn):
                return f"hook '{attr}' is async; hooks are called synchronously " \
                       "(return async callables from appliance_background_tasks instead)"
            try:
                params = inspect.signature(fn).parameters.values()
            except (TypeError, ValueError):
                return f"hook '{attr}' is not a function"
            allowed = spec.spec.argnames
            for p in params:
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    continue
                if p.name not in allowed and p.default is p.empty:
                    return (f"hook '{attr}' takes an argument '{p.name}' the hook does not pass "
                            f"(it passes: {', '.join(allowed) or 'nothing'})")
        return ""

    def _collect_selectors(self, config_path: str) -> dict[str, Callable[..., Any]]:
        found: dict[str, tuple[Callable[..., Any], str]] = {}
        for impl in reversed(self.pm.hook.appliance_selectors.get_hookimpls()):
            try:
                provided = impl.function() or {}
                items = list(provided.items())
            except Exception as exc:
                raise ConfigError(config_path, "plugins", f"plugin '{impl.plugin_name}': "
                                  f"appliance_selectors() failed: {exc!r}") from None
            for name, fn in items:
                if not isinstance(name, str) or not callable(fn):
                    raise ConfigError(config_path, "plugins", f"plugin '{impl.plugin_name}': selector "
                                      f"{name!r} must be a name and a callable select(flow, backends)")
                if name in found:
                    raise ConfigError(config_path, "plugins", f"selector '{name}' is provided by both "
                                      f"'{found[name][1]}' and '{impl.plugin_name}'")
                found[name] = (fn, impl.plugin_name)
        self.selector_owner = {name: owner for name, (_, owner) in found.items()}
        return {name: fn for name, (fn, _) in found.items()}

    def _refresh_calls(self) -> None:
        # Each decision hook as a list of (function, argument names, plugin
        # name) in call order, built once: a new flow walks it without
        # pluggy's dispatch, skipping a plugin that fails for that flow.
        def chain(hook_name: str, with_defaults: bool) -> list[tuple[Callable[..., Any], str]]:
            hook = getattr(self.pm.hook, hook_name)
            spec = tuple(hook.spec.argnames)
            return [(_positional(i.function, tuple(i.argnames), spec), i.plugin_name)
                    for i in reversed(hook.get_hookimpls()) if with_defaults or i.plugin is not self.defaults]

        self._select = chain("appliance_select_backend", False)
        self._timeouts = chain("appliance_session_timeouts", False)
        self._snat = chain("appliance_snat", False)
        self._chosen = chain("appliance_backend_chosen", True)
        # with only the built-ins answering, call them directly (a microsecond
        # less per new flow: bench core, new_sessions_per_s)
        if not self._timeouts:
            self.session_timeouts = self.defaults.appliance_session_timeouts
        if not self._snat:
            self.snat = self.defaults.appliance_snat
        self.wants_created = bool(self.pm.hook.appliance_session_created.get_hookimpls())
        self.wants_expired = bool(self.pm.hook.appliance_session_expired.get_hookimpls())

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def check(self, config: Config) -> None:
        """What the configuration asks of the plugins exists: ConfigError
        naming the key otherwise (a reload that fails this keeps the last
        good configuration)."""
        from ._config import _find_line

        for t in config.translations:
            if t.selector not in self.selectors:
                raise ConfigError(config.path, f"translation[{t.id}].selector",
                                  f"unknown selector '{t.selector}' (registered: "
                                  f"{', '.join(sorted(self.selectors))})",
                                  _find_line(_text(config.path), "translation", t.id, "selector"))

    # -- decisions (once per new flow) -----------------------------------
    #
    # An answer is checked by its exact type before it is compared: a
    # plugin's object never runs its own __eq__/__hash__ here.

    def _ask(self, chain: list, hook_name: str, args: tuple, valid: Callable[[Any], Any]) -> tuple[Any, str]:
        """The first valid answer along a chain (as valid() gives it back),
        and who gave it; a plugin that raises or answers invalidly is
        counted and skipped."""
        t0 = self.clock()
        for fn, name in chain:
            try:
                r = fn(*args)
            except Exception as exc:
                t0 = self._timed(t0, name, hook_name)
                self._contain(hook_name, exc, name)
                continue
            t0 = self._timed(t0, name, hook_name)
            if r is None:
                continue
            checked = valid(r)
            if checked is not None:
                return checked, name
            self._invalid(hook_name, r, name)
        return None, ""

    def select_backend(self, flow: Any, translation: Any, backends: Any) -> int | str:
        """The backend index (or hooks.DROP) for a new flow of a translation
        with at least one eligible backend. Never raises. (Written out, not
        through _ask: this runs for every new flow, ~0.5 us saved.)"""
        eligible = backends.eligible_set
        h = flow.hash
        budget, clock = self.budget_ns, self.clock
        t0 = clock()
        for fn, name in self._select:
            try:
                r = fn(flow, translation, backends)
            except Exception as exc:
                t0 = self._timed(t0, name, "appliance_select_backend")
                self._contain("appliance_select_backend", exc, name)
                continue
            t1 = clock()
            if t1 - t0 > budget:
                self._overrun(name, "appliance_select_backend", t1 - t0, t1)
            t0 = t1
            if r is None:
                continue
            if (type(r) is int and r in eligible) or (type(r) is str and r == hooks.DROP):
                self.decider = name
                return r
            self._invalid("appliance_select_backend", r, name)
        sel = translation.selector
        fn = self.selectors[sel] if sel != "hash" else None   # check() refused unknown names
        if fn is not None:
            owner = self.selector_owner[sel]
            try:
                r = fn(flow, backends)
            except Exception as exc:
                self._contain(f"selector {sel}", exc, owner)
                r = None
            t1 = clock()
            if t1 - t0 > budget:
                self._overrun(owner, f"selector {sel}", t1 - t0, t1)
            if type(r) is int and r in eligible:
                self.decider = f"selector {sel}"
                return r
            if r is not None:
                self._invalid(f"selector {sel}", r, owner)
        self.decider = "selector hash"
        return backends.pick_weighted(h)

    def backend_chosen(self, flow: Any, translation: Any, backends: Any, index: int) -> None:
        clock = self.clock
        t0 = clock()
        for fn, name in self._chosen:
            try:
                fn(flow, translation, backends, index)
            except Exception as exc:
                self._contain("appliance_backend_chosen", exc, name)
            t1 = clock()
            if t1 - t0 > self.budget_ns:
                self._overrun(name, "appliance_backend_chosen", t1 - t0, t1)
            t0 = t1

    def session_timeouts(self, flow: Any, translation: Any) -> Any:
        r, _ = self._ask(self._timeouts, "appliance_session_timeouts", (flow, translation), _valid_timeouts)
        return r if r is not None else self.defaults.appliance_session_timeouts(flow, translation)

    def snat(self, flow: Any, snat: Any) -> Any:
        """hooks.DROP, hooks.NO_SNAT or the address (an ipaddress object of
        the flow's family) to SNAT the new flow to."""
        r, _ = self._ask(self._snat, "appliance_snat", (flow, snat), lambda r: _valid_snat(r, flow))
        return r if r is not None else self.defaults.appliance_snat(flow, snat)   # NO_SNAT or an address

    # -- time ------------------------------------------------------------

    def _timed(self, t0: int, culprit: str, hook_name: str) -> int:
        """The clock now; an overrun counted if the call since t0 took longer
        than the budget."""
        t1 = self.clock()
        if t1 - t0 > self.budget_ns:
            self._overrun(culprit, hook_name, t1 - t0, t1)
        return t1

    def mark(self) -> None:
        """From here, the calling thread's run-queue wait counts against
        apparent overruns (one read of the waited clock)."""
        if self.waited is not None:
            self._waited_mark = self.waited()

    def _overrun(self, culprit: str, hook_name: str, took_ns: int, now_ns: int) -> None:
        if culprit == DEFAULTS_NAME or culprit in self.disabled:
            return      # the last word is never taken out
        if self.waited is not None:
            waited = self.waited()
            excused = took_ns - (waited - self._waited_mark) <= self.budget_ns
            self._waited_mark = waited
            if excused:
                self.preempted[culprit] += 1
                return
        self.overruns[culprit] += 1
        n = self.overruns[culprit]
        recent = self._recent_overruns.setdefault(culprit, collections.deque())
        recent.append(now_ns)
        while recent[0] < now_ns - OVERRUN_WINDOW_NS:
            recent.popleft()
        limit = self.disable_after
        if limit and len(recent) >= limit:
            self.disable(culprit, f"{len(recent)} calls over the {self.budget_ns / 1e6:g} ms budget "
                         f"within {OVERRUN_WINDOW_NS // 10**9} s, the last {hook_name} "
                         f"({took_ns / 1e6:.1f} ms)")
        elif n == 1 or n % 1000 == 0:
            log.warning("plugin %s took %.1f ms in %s, over the %g ms budget (%d so far)",
                        culprit, took_ns / 1e6, hook_name, self.budget_ns / 1e6, n)

    def disable(self, name: str, reason: str) -> None:
        """Take a plugin out of every hook until the appliance restarts: its
        decisions pass to the next plugin, its selectors to the hash, its
        background tasks are cancelled."""
        if name == DEFAULTS_NAME or name in self.disabled:
            return
        self.disabled[name] = reason
        log.error("plugin %s disabled: %s; the next plugin decides in its place until restart", name, reason)
        self.pm.unregister(name=name)
        for sel, owner in self.selector_owner.items():
            if owner == name:
                self.selectors[sel] = None
        for scope in self._task_scopes.pop(name, ()):
            scope.cancel()
        self._refresh_calls()

    # -- containment -----------------------------------------------------

    def _contain(self, hook_name: str, exc: BaseException, culprit: str) -> None:
        self.errors[culprit] += 1
        n = self.errors[culprit]
        if n == 1 or n % 1000 == 0:
            log.error("plugin %s raised in %s (%d so far); the next plugin decides",
                      culprit, hook_name, n, exc_info=exc)

    def _invalid(self, hook_name: str, answer: Any, culprit: str) -> None:
        self.errors[culprit] += 1
        n = self.errors[culprit]
        if n == 1 or n % 1000 == 0:
            log.error("plugin %s answered %s with an invalid value %s (%d so far); the next plugin decides",
                      culprit, hook_name, _describe(answer), n)

    def figures(self) -> dict[str, dict]:
        """Each plugin's own figures (appliance_statistics), by plugin: names
        as text, finite numbers only, at most FIGURES_MAX of each."""
        out: dict[str, dict] = {}
        for impl in reversed(self.pm.hook.appliance_statistics.get_hookimpls()):
            t0 = self.clock()
            try:
                got = impl.function()
                if not isinstance(got, dict):
                    continue
                figures = {}
                for k, v in got.items():
                    if type(k) is str and type(v) in (int, float) and math.isfinite(v):
                        figures[k[:64]] = v
                        if len(figures) == FIGURES_MAX:
                            break
                out[impl.plugin_name] = figures
            except Exception as exc:
                self._contain("appliance_statistics", exc, impl.plugin_name)
            finally:
                self._timed(t0, impl.plugin_name, "appliance_statistics")
        return out

    # -- notifications ---------------------------------------------------

    def notify(self, hook_name: str, timed: bool = True, **kwargs: Any) -> None:
        """Call a notification hook; every implementation runs even if one
        raises. ``timed``: calls over the budget count as overruns."""
        clock = self.clock
        t0 = clock()
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                self._contain(hook_name, exc, impl.plugin_name)
            t1 = clock()
            if timed and t1 - t0 > self.budget_ns:
                self._overrun(impl.plugin_name, hook_name, t1 - t0, t1)
            t0 = t1

    def configure(self, config: Config, backends: Any = None) -> None:
        """A configuration applies: the budget is the new one from here on,
        and every plugin hears of it. A plugin raising here rejects nothing
        (counted and logged); the configuration is the operator's, not the
        plugin's. Not held to the budget: a load may build tables (Maglev's
        take tens of milliseconds per translation), and its cost is the
        reload's."""
        self.budget_ns = round(config.plugin_budget_ms * 1e6)
        self.disable_after = config.plugin_disable_after
        self.notify("appliance_configure", timed=False, config=config,
                    backends=backends if backends is not None else {})

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
                self._contain("appliance_background_tasks", exc, impl.plugin_name)
        return tasks

    def _contained_task(self, fn: Callable[[], Any], culprit: str) -> Callable[[], Any]:
        import trio

        async def contained() -> None:
            if culprit in self.disabled:
                return
            with trio.CancelScope() as scope:    # cancelled if the plugin is disabled
                self._task_scopes.setdefault(culprit, []).append(scope)
                try:
                    await fn()
                except Exception as exc:   # cancellation is a BaseException: it passes
                    self._contain("appliance_background_tasks", exc, culprit)
                    log.error("background task %s of plugin %s ended with an error; the appliance goes on "
                              "without it", getattr(fn, "__name__", fn), culprit)
                finally:
                    scopes = self._task_scopes.get(culprit, [])
                    if scope in scopes:
                        scopes.remove(scope)

        return contained


def _positional(fn: Callable[..., Any], argnames: tuple, spec: tuple) -> Callable[..., Any]:
    """fn, callable with the hook's arguments in the spec's order (an
    implementation may take fewer, or in another order)."""
    if argnames == spec:
        return fn
    idx = tuple(spec.index(a) for a in argnames)
    return lambda *args: fn(*[args[i] for i in idx])


def _valid_snat(r: Any, flow: Any) -> Any:
    """The answer as the core takes it (DROP, NO_SNAT or an address object of
    the flow's family), or None for an invalid one."""
    t = type(r)
    if t is str:
        if r == hooks.DROP or r == hooks.NO_SNAT:
            return r
        try:
            r = ipaddress.ip_address(r)
        except ValueError:
            return None
    elif t is not ipaddress.IPv4Address and t is not ipaddress.IPv6Address:
        return None
    return r if r.version == flow.family else None


def _valid_timeouts(r: Any) -> Any:
    from ._types import Timeouts

    return r if type(r) is Timeouts else None


def _describe(answer: Any) -> str:
    """A plugin's answer for a log line: short, and whatever its __repr__ does."""
    try:
        return _brief.repr(answer)
    except Exception:
        return f"<{type(answer).__name__} whose repr() raised>"


def _text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""
