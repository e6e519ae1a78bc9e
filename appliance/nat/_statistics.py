"""A snapshot of the NAT core's figures."""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Statistics:
    """A snapshot of the core's counters (see nat_counters.def)."""

    counters: dict[str, int]
    sessions: int
    capacity: int
    new_flows_per_translation: dict[str, int]   # by translation name
    plugin_errors: dict[str, int]
    sessions_created: int
    sessions_expired: int
    hairpin_flows: int = 0
    translations: tuple = ()        # describe_translations()["translations"]
    plugin_figures: Optional[dict] = None
    plugin_overruns: dict[str, int] = dataclasses.field(default_factory=dict)   # calls over the budget
    plugins_disabled: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> reason
    plugin_overruns_preempted: dict[str, int] = dataclasses.field(default_factory=dict)  # excused: no CPU
    sessions_tentative: int = 0     # TCP before its handshake completes, others without a reply
    pressure_threshold: int = 0     # sessions from which new flows evict tentative ones

    def as_dict(self) -> dict:
        return {
            "counters": self.counters,
            "sessions": self.sessions,
            "capacity": self.capacity,
            "fill": round(self.sessions / self.capacity, 4) if self.capacity else 0.0,
            "sessions_tentative": self.sessions_tentative,
            "pressure_threshold": self.pressure_threshold,
            "sessions_created": self.sessions_created,
            "sessions_expired": self.sessions_expired,
            "hairpin_flows": self.hairpin_flows,
            "new_flows_per_translation": {str(k): v for k, v in self.new_flows_per_translation.items()},
            "plugin_errors": self.plugin_errors,
            "plugin_overruns": self.plugin_overruns,
            "plugins_disabled": self.plugins_disabled,
            "plugin_overruns_preempted": self.plugin_overruns_preempted,
            "translations": list(self.translations),
            "plugins": self.plugin_figures or {},
        }
