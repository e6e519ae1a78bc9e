"""The built-in behaviour, as a plugin like any other.

- backend selection: keyed flow hash modulo the number of backends (VPP
  cnat's default, with a configurable seed so several appliances agree);
- session timeouts: the configured ``[timeouts]``;
- SNAT policy: interface-and-prefix (VPP's ``if-pfx``): SNAT a flow received
  on an SNAT interface unless its destination, after translation, is in an
  excluded prefix (longest match).

The NAT core also calls these methods directly as the fallback when another
plugin raises, so they must never raise themselves.
"""

from __future__ import annotations

from appliance.hooks import NO_SNAT, hookimpl


class DefaultPolicies:
    name = "appliance_plugins.defaults"

    def __init__(self) -> None:
        from appliance._config import Config

        self.config = Config()

    @hookimpl(trylast=True)
    def appliance_configure(self, config):
        self.config = config

    @hookimpl(trylast=True)
    def appliance_select_backend(self, flow, translation):
        return flow.hash % len(translation.backends)

    @hookimpl(trylast=True)
    def appliance_session_timeouts(self, flow, translation):
        return self.config.timeouts

    @hookimpl(trylast=True)
    def appliance_snat(self, flow, snat):
        if snat.excluded(flow.dst) is not None:
            return NO_SNAT
        addr = snat.address(flow.family)
        return addr if addr is not None else NO_SNAT
