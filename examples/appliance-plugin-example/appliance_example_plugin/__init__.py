"""An example plugin package, installed beside the appliance.

- ``selector = "round-robin"``: new flows take the eligible backends in turn
  (per translation), weights ignored;
- a deny list: new flows from the client prefixes in ``DENY`` are dropped
  (counted as ``drop_policy``), whatever the translation.
"""

import ipaddress
import itertools

from appliance.hooks import DROP, hookimpl

DENY = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:bad::/48")]

_turns: dict = {}


def round_robin(flow, backends):
    turn = _turns.setdefault(backends.translation.name, itertools.count())
    return backends.eligible[next(turn) % len(backends.eligible)]


@hookimpl
def appliance_selectors():
    return {"round-robin": round_robin}


@hookimpl
def appliance_select_backend(flow, translation):
    if any(flow.src in net for net in DENY if net.version == flow.family):
        return DROP
    return None
