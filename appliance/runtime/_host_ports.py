"""The host ports the XDP steering program hands to the appliance."""

from __future__ import annotations

import collections


class _HostPorts:
    """What the XDP `ports` map steers to us: the (host address, proto,
    port) of live sessions whose source was rewritten to an address of this
    host (their replies are addressed to the host), and the ports of `real`
    translations. Sessions are counted per entry: sessions to different
    destinations share a port (SNAT allocates per destination), and the
    first of them to end must not take the entry from the others, whose
    replies the kernel would then answer with resets."""

    def __init__(self, steering) -> None:
        self.steering = steering
        self.count: collections.Counter = collections.Counter()
        self.real: set = set()   # the ports of `real` translations on host addresses: always steered

    def session(self, added: bool, entry: tuple) -> None:
        n = self.count[entry] + (1 if added else -1)
        if n > 0:
            self.count[entry] = n
            if n == 1:
                self.steering.add_port(entry)
        else:
            self.count.pop(entry, None)
            if entry not in self.real:
                self.steering.remove_port(entry)

    def sync(self, host: frozenset, real: set) -> None:
        """The host's addresses or the `real` translations changed."""
        self.real = real
        self.steering.set_host_ports({p for p in self.count if p[0] in host} | real)

    def __iter__(self):
        return iter(self.count)
