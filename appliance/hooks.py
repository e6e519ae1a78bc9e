"""Hook specifications: how plugins extend the appliance.

Written like pytest's ``hookspec.py``. Every hook here runs on the slow path
or the control path: once per new flow, per expiry, per configuration load.
**No hook ever runs per established-flow packet**; with only the built-in
plugins loaded, the fast path costs nothing extra.

Plugins are modules or objects with functions decorated by :data:`hookimpl`
and named like the specs below. They are loaded from the configuration
(``[plugins] modules = [...]``) and from the ``appliance.plugins`` entry-point
group. The built-in behaviour (flow-hash backend selector, configured
timeouts, interface-and-prefix SNAT policy) is itself a plugin,
``appliance_plugins.defaults``, registered first; a plugin that returns a
non-None result from a ``firstresult`` hook overrides it.

A plugin that raises is contained: the flow gets the built-in decision, the
error is counted per plugin (``plugin_errors`` in the statistics) and logged
with its traceback, and the datapath keeps running.

pluggy calls hooks synchronously. A plugin that needs background work must
not start threads or block: it returns async callables from
:func:`appliance_background_tasks`, which the runtime starts in its nursery
so that their errors propagate like any other task's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ._config import Config, SnatConfig
    from .nat import Flow, SessionInfo, Timeouts, Translation

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
def appliance_configure(config: "Config") -> None:
    """A configuration was loaded: once at start, after every plugin is
    registered, and again at every successful reload.

    Raising here rejects nothing; the error is counted and logged.
    """


@hookspec
def appliance_background_tasks() -> Optional[list[Any]]:
    """Return async callables (no arguments) for the runtime to run in its
    nursery for the appliance's lifetime. Called once at start."""


# -------------------------------------------------------------------------
# New flows (slow path: once per new flow)
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def appliance_select_backend(flow: "Flow", translation: "Translation") -> Optional[int | str]:
    """Pick the backend for a new flow that matched ``translation``.

    :param flow: the first packet's flow as received; ``flow.hash`` is the
        keyed flow hash (``flow_hash_seed``) of its 5-tuple.
    :returns: an index into ``translation.backends``, :data:`DROP` to drop
        the flow, or None for no opinion (the next plugin decides; the
        built-in returns ``flow.hash % len(backends)``).

    Called only when the translation has at least one backend. An index out
    of range counts as a plugin error and the built-in decides.
    """


@hookspec(firstresult=True)
def appliance_session_timeouts(flow: "Flow", translation: Optional["Translation"]) -> Optional["Timeouts"]:
    """Lifetimes of the session about to be created for ``flow``.

    :param translation: the matched translation, or None for SNAT-only flows.
    :returns: a :class:`appliance.nat.Timeouts`, or None for no opinion (the
        built-in returns the configured ``[timeouts]``).

    At most 255 distinct Timeouts values are in use at once; beyond that the
    configured timeouts apply (counted as a plugin error).
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
