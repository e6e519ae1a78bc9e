"""Hook specifications: how plugins extend the appliance.

Written like pytest's ``hookspec.py``. Every hook here runs on the slow path
or the control path: once per new flow, per expiry, per configuration load.
**No hook ever runs per established-flow packet**; with only the built-in
plugins loaded, the fast path costs nothing extra.

Plugins are modules or objects with functions decorated by :data:`hookimpl`
and named like the specs below. They are loaded from the configuration
(``[plugins] modules = [...]``) and from the ``appliance.plugins`` entry-point
group. The built-in behaviour (weighted flow-hash selector, configured timeouts,
interface-and-prefix SNAT policy) is itself a plugin,
``appliance_plugins.defaults``; the first-party policy plugins (affinity,
the Maglev and least-sessions selectors, health checks) come with it.

**Order.** Decision hooks ask the plugins one after another and the first
answer that is not None decides: test objects, then ``[plugins] modules``
in the order they are listed, then entry points (by name), then the
first-party plugins, then the built-ins (``tryfirst``/``trylast`` on a
hookimpl move it to the front or the back). For a new flow of a
translation, when no plugin answers, the translation's ``selector`` picks.

A plugin that raises, or answers something invalid for the flow (an index
that is not eligible, an address of the wrong family), is skipped for that
flow and the *next* one decides; the error is counted per plugin
(``plugin_errors`` in the statistics) and logged with its traceback (first
time, then every 1000th), and the datapath keeps running. Answers are
checked by exact type; the arguments are read-only.

Every call has a time budget (``[plugins] hook_budget_ms``): calls over it
are counted (``plugin_overruns``), and a plugin with ``disable_after`` of
them within a minute is unregistered, its background tasks cancelled
(``plugins_disabled``). Established flows never wait on a hook: their
packets stay in C on the workers' own threads.

pluggy calls hooks synchronously. A plugin that needs background work must
not start threads or block: it returns async callables from
:func:`appliance_background_tasks`, which the runtime starts in its nursery,
each in a cancel scope of its own: one that raises ends alone, counted and
logged, and a disabled plugin's are cancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

import pluggy

from ._backends import BackendSet as BackendSet   # the live state plugins are handed

if TYPE_CHECKING:  # pragma: no cover
    from ._config import Config, SnatConfig
    from ._types import Flow, SessionInfo, Timeouts, Translation

PROJECT = "appliance"
ENTRY_POINT_GROUP = "appliance.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Returned by :func:`appliance_select_backend` or :func:`appliance_snat` to
#: drop the new flow (counted as ``drop_policy``).
DROP = "drop"

#: Returned by :func:`appliance_snat` to leave the source unchanged.
NO_SNAT = "no-snat"


# -------------------------------------------------------------------------
# Initialisation and configuration
# -------------------------------------------------------------------------


@hookspec
def appliance_configure(config: "Config", backends: "Mapping[str, BackendSet]") -> None:
    """A configuration was loaded: once at start, after every plugin is
    registered, and again at every successful reload.

    :param backends: the live :class:`~appliance.hooks.BackendSet` of each
        translation, by translation name: keep it to read figures or to set
        backend states from a background task (health checks).

    Raising here rejects nothing; the error is counted and logged.
    """


@hookspec
def appliance_selectors() -> Optional[dict[str, Any]]:
    """Backend selectors this plugin provides, by the name a translation's
    ``selector`` key gives: ``{"name": select}`` where
    ``select(flow, backends)`` returns an index in ``backends.eligible`` or
    None (the built-in weighted hash decides). Called once at load; two
    plugins providing one name is a load error."""


@hookspec
def appliance_statistics() -> Optional[dict[str, float]]:
    """This plugin's own figures (``{"entries": 12, "evictions": 0}``),
    read when statistics are asked for (``show stats``, metrics): shown
    under ``plugins`` and as ``appliance_plugin_figure{plugin=,figure=}``."""


@hookspec
def appliance_background_tasks() -> Optional[list[Any]]:
    """Return async callables (no arguments) for the runtime to run in its
    nursery for the appliance's lifetime. Called once at start."""


# -------------------------------------------------------------------------
# New flows (slow path: once per new flow)
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def appliance_select_backend(flow: "Flow", translation: "Translation",
                             backends: "BackendSet") -> Optional[int | str]:
    """Pick the backend for a new flow that matched ``translation``, before
    its selector does.

    :param flow: the first packet's flow as received; ``flow.hash`` is the
        keyed flow hash (``flow_hash_seed``) of its 5-tuple.
    :param backends: the translation's live backend state; only indexes in
        ``backends.eligible`` (weight > 0, active, or draining when no
        backend is active) may take a new flow.
    :returns: an index in ``backends.eligible``, :data:`DROP` to drop the
        flow, or None for no opinion (the next plugin decides, then the
        translation's selector).

    Called only when at least one backend is eligible. Any other answer
    counts as a plugin error and the next plugin decides.
    """


@hookspec
def appliance_backend_chosen(flow: "Flow", translation: "Translation", backends: "BackendSet",
                             index: int) -> None:
    """A new flow of ``translation`` was given backend ``index`` (by
    whichever plugin or selector): what affinity tables learn from. Called
    before the session is installed; no session may follow (table full)."""


@hookspec(firstresult=True)
def appliance_session_timeouts(flow: "Flow", translation: Optional["Translation"]) -> Optional["Timeouts"]:
    """Lifetimes of the session about to be created for ``flow``.

    :param translation: the matched translation, or None for SNAT-only flows.
    :returns: a :class:`appliance.nat.Timeouts`, or None for no opinion (the
        built-in returns the translation's ``timeouts``, else the configured
        ``[timeouts]``).

    At most 255 distinct Timeouts values besides ``[timeouts]`` are in use at
    once (a value no session and no translation holds any more is reused);
    beyond that the global timeouts apply, counted as
    ``nat.timeout_profiles_full``.
    """


@hookspec(firstresult=True)
def appliance_snat(flow: "Flow", snat: "SnatConfig") -> Optional[Any]:
    """Whether and how to rewrite the source of a new flow received on an
    SNAT interface.

    :param flow: the flow *after* translation (its ``dst``/``dport`` are the
        backend's), so exclusions are matched against the real destination.
    :returns: an IP address of the flow's family to SNAT to, :data:`NO_SNAT`,
        :data:`DROP`, or None for no opinion (the built-in SNATs to
        ``snat.ip4``/``snat.ip6`` unless the destination is in an excluded
        prefix, longest match).

    Not called when a translation's backend already rewrites the source.
    """


# -------------------------------------------------------------------------
# Notifications
# -------------------------------------------------------------------------


@hookspec
def appliance_session_created(session: "SessionInfo") -> None:
    """A session was installed (once per new flow, after the decision), or
    restored at start from a state a clean stop saved (``run --state-file``):
    a plugin that counts sessions sees each one created before it expires."""


@hookspec
def appliance_session_expired(session: "SessionInfo") -> None:
    """A session ended: ``session.reason`` is "timeout" or "removed".
    Delivered in batches after the fast path or the scanner removed it."""
