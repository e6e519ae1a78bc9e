"""The built-in behaviour, as a plugin like any other.

- the ``hash`` selector: keyed flow hash over the eligible backends,
  weighted (VPP cnat's default ``hash % N`` when the weights are equal,
  with a configurable seed so several appliances agree);
- session timeouts: the translation's ``timeouts``, else ``[timeouts]``;
- SNAT policies of ``[snat] policy`` (VPP cnat's): ``if-pfx`` (default):
  SNAT a flow received on an SNAT interface unless its destination, after
  translation, is in an excluded prefix; ``k8s``: only flows from the pod
  network to destinations outside it and outside the excluded (cluster)
  prefixes; ``none``. The address: the longest ``by_destination`` prefix
  holding the destination, else ``ip4`` / ``ip6``.

The plugin manager also calls these methods directly as the last word after
every other plugin passed or failed, so they must never raise.
"""

from __future__ import annotations

from appliance.hooks import NO_SNAT, hookimpl


def select_hash(flow, backends):
    return backends.pick_weighted(flow.hash)


class DefaultPolicies:
    name = "appliance_plugins.defaults"

    def __init__(self) -> None:
        from appliance._config import Config

        self.config = Config()

    @hookimpl(trylast=True)
    def appliance_configure(self, config):
        self.config = config

    @hookimpl(trylast=True)
    def appliance_selectors(self):
        return {"hash": select_hash}

    @hookimpl(trylast=True)
    def appliance_session_timeouts(self, flow, translation):
        if translation is not None and translation.timeouts is not None:
            return translation.timeouts
        return self.config.timeouts

    @hookimpl(trylast=True)
    def appliance_snat(self, flow, snat):
        if snat.policy == "none":
            return NO_SNAT
        if snat.policy == "k8s" and (not snat.in_pods(flow.src) or snat.in_pods(flow.dst)):
            return NO_SNAT      # only pod traffic leaving the cluster
        if snat.excluded(flow.dst) is not None:
            return NO_SNAT
        addr = snat.address_for(flow.dst)
        return addr if addr is not None else NO_SNAT
