"""The demo's example traffic, built frame by frame (pcapng, two interfaces).

``eth0`` faces clients and backends, ``tap0`` is the SNAT interface.
"""

from __future__ import annotations

from .._frames import icmp_echo, tcp, udp

SYN, ACK, RST = 0x02, 0x10, 0x04


def steps() -> list[tuple[str, str, bytes, bool]]:
    """(what, interface, frame, answer?) -- with answer, the demo sends the
    destination's reply to whatever the NAT forwarded, on ``eth0``."""
    return [
        ("client 1 -> vip", "eth0", tcp("10.0.0.1", 40001, "30.0.0.2", 80, SYN), True),
        ("client 2 -> vip", "eth0", tcp("10.0.0.2", 40002, "30.0.0.2", 80, SYN), True),
        ("client 3 -> vip", "eth0", tcp("10.0.0.3", 40003, "30.0.0.2", 80, SYN), True),
        ("client 4 -> vip", "eth0", tcp("10.0.0.4", 40004, "30.0.0.2", 80, SYN), True),
        ("real address, translated port (source rewritten too)", "eth0",
         tcp("10.0.0.9", 41000, "30.0.0.3", 80, SYN), True),
        ("real address, other port: the host's own", "eth0", tcp("10.0.0.9", 41001, "30.0.0.3", 22, SYN), False),
        ("vip, port without translation", "eth0", tcp("10.0.0.9", 41002, "30.0.0.2", 443, SYN), False),
        ("IPv6 UDP -> vip", "eth0", udp("10::5", 5000, "30::2", 53, b"query"), True),
        ("pod behind tap0 -> outside (SNAT)", "tap0", udp("10.1.0.5", 33333, "8.8.8.8", 53, b"query"), True),
        ("pod -> excluded prefix (no SNAT)", "tap0", udp("10.1.0.5", 33334, "20.0.0.7", 53, b"query"), True),
        ("ping through SNAT", "tap0", icmp_echo("10.1.0.5", "8.8.4.4", 7), True),
        ("client 1 closes (RST)", "eth0", tcp("10.0.0.1", 40001, "30.0.0.2", 80, RST), False),
        ("malformed: IPv4 header cut short", "eth0", tcp("10.0.0.1", 40001, "30.0.0.2", 80, ACK)[:30], False),
    ]
