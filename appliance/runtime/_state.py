"""The state file (run --state-file): the sessions saved at a clean stop
and restored at the next start."""

from __future__ import annotations

import logging
import pathlib
import time
from typing import TYPE_CHECKING

from ..io_uring.xdp._steering import SteeringError

if TYPE_CHECKING:
    from ._appliance import Appliance

log = logging.getLogger("appliance.run")


# How long a stop with --state-file keeps dropping the traffic it would have
# handled: the next start (1-2 s here) replaces the program before that.
STATE_HOLD_SECONDS = 5.0


def _restore_sessions(app: Appliance, path: str) -> None:
    """Sessions a clean stop saved (run --state-file), put back before the
    first frame is read; the file is used once."""
    p = pathlib.Path(path)
    if not p.exists():
        return
    try:
        restored, expired, refused = app.core.import_sessions(p.read_bytes(), time.time())
    except (OSError, ValueError) as exc:
        log.warning("%s: sessions not restored: %s", path, exc)
    else:
        log.warning("restored %d sessions from %s (%d expired meanwhile, %d refused)", restored, path, expired,
                    refused)
        app.sync_real_ports()   # those of a `real` translation this configuration lacks keep its port
    try:
        p.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("%s: not removed: %s", path, exc)


def _save_sessions(app: Appliance, path: str) -> None:
    """At a clean stop: save the sessions for the next start, and leave the
    steering program holding (dropping) what it would give the appliance,
    so that the kernel does not forward it untranslated in between: a
    backend's segment reaching a client untranslated makes it reset."""
    tmp = pathlib.Path(path + ".tmp")
    try:
        tmp.write_bytes(app.core.export_sessions())
        tmp.replace(path)
    except OSError as exc:
        log.error("%s: sessions not saved: %s", path, exc)
        tmp.unlink(missing_ok=True)
        return
    saved = app.core.statistics().sessions
    try:
        app.steering.hold(STATE_HOLD_SECONDS)
    except SteeringError as exc:   # then the program is detached as at any stop
        log.error("saved %d sessions to %s, but %s: the kernel forwards the appliance's traffic until the "
                  "next start", saved, path, exc)
        return
    log.warning("saved %d sessions to %s; %s holds the appliance's traffic for %.0f s",
                saved, path, app.steering.holder(), STATE_HOLD_SECONDS)
