"""Prometheus metrics for `appliance run --metrics HOST:PORT`.

:func:`render` turns the statistics the control socket answers with (see
docs/operations.md) into the Prometheus text exposition format, without
I/O; :func:`serve` answers ``GET /metrics`` with it over HTTP/1.0, in the
appliance's trio loop (one short response per scrape, no dependency).
"""

from __future__ import annotations

import socket
from typing import Callable

import trio

from .nat._binding import COUNTER_HELP, COUNTER_NAMES

_NAT_HELP = dict(zip(COUNTER_NAMES, COUNTER_HELP))
_XDP_HELP = {
    "pass_kernel": "frames the XDP program left to the kernel: not IP, multicast, neighbour discovery",
    "pass_ttl": "transit frames whose TTL expires here, left to the kernel",
    "pass_host": "frames to the host's own addresses, left to the kernel",
    "pass_no_socket": "frames for the appliance on an interface without its socket, left to the kernel",
    "held": "frames dropped while a stop with --state-file waited for the next start",
}


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help: str, samples: list[tuple[dict, float]]) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            tag = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{tag}}} {value}" if tag else f"{name} {value}")


def render(stats: dict) -> str:
    """The statistics of ``appliance show stats --json`` as Prometheus text."""
    out = _Out()
    nat = stats["nat"]
    out.family("appliance_sessions", "gauge", "sessions in the table", [({}, nat["sessions"])])
    out.family("appliance_sessions_capacity", "gauge", "session table size ([sessions] max)",
               [({}, nat["capacity"])])
    out.family("appliance_sessions_fill_ratio", "gauge", "sessions / capacity",
               [({}, nat.get("fill", 0.0))])
    out.family("appliance_sessions_tentative", "gauge",
               "sessions without a completed TCP handshake or a reply: evicted first under table pressure",
               [({}, nat.get("sessions_tentative", 0))])
    out.family("appliance_sessions_pressure_threshold", "gauge",
               "sessions from which each new flow evicts the oldest tentative one",
               [({}, nat.get("pressure_threshold", 0))])
    out.family("appliance_sessions_created_total", "counter", "sessions created by the slow path",
               [({}, nat["sessions_created"])])
    out.family("appliance_sessions_expired_total", "counter", "sessions ended (timeout, removed or evicted)",
               [({}, nat["sessions_expired"])])
    out.family("appliance_hairpin_flows_total", "counter",
               "translated flows whose client and backend share a link: source rewritten to the interface's address",
               [({}, nat.get("hairpin_flows", 0))])
    for name, value in nat["counters"].items():
        out.family(f"appliance_nat_{name}_total", "counter", _NAT_HELP.get(name, name), [({}, value)])
    out.family("appliance_drops_total", "counter",
               "frames the NAT dropped, by reason (the appliance_nat_drop_*_total counters as one family)",
               [({"reason": name[len("drop_"):]}, value) for name, value in nat["counters"].items()
                if name.startswith("drop_")])
    trs = nat.get("translations", [])
    out.family("appliance_translation_new_flows_total", "counter", "new flows per translation (by name)",
               [({"translation": t["name"]}, t["new_flows"]) for t in trs])
    out.family("appliance_translation_denied_total", "counter",
               "new flows dropped because their source is outside the translation's allow_from",
               [({"translation": t["name"]}, t["denied"]) for t in trs])
    # One series per (translation, backend) name: a removed backend whose
    # sessions remain and a new one of the same name (another rewrite) are
    # summed, as Prometheus refuses two samples with the same labels.
    sessions: dict = {}
    flows: dict = {}
    packets: dict = {}
    nbytes: dict = {}
    weights: dict = {}
    states: dict = {}
    for t in trs:
        for b in t["backends"]:
            key = (t["name"], b["name"])
            sessions[key] = sessions.get(key, 0) + b["sessions"]
            flows[key] = flows.get(key, 0) + b["new_flows"]
            for direction in ("to_backend", "from_backend"):
                k2 = key + (direction,)
                packets[k2] = packets.get(k2, 0) + b.get("packets", {}).get(direction, 0)
                nbytes[k2] = nbytes.get(k2, 0) + b.get("bytes", {}).get(direction, 0)
            if b["state"] != "gone" or key not in weights:
                weights[key] = b["weight"]
            states[key + (b["state"],)] = 1

    def by_backend(values: dict) -> list:
        return [({"translation": k[0], "backend": k[1], **({"state": k[2]} if len(k) > 2 else {})}, v)
                for k, v in values.items()]

    def by_direction(values: dict) -> list:
        return [({"translation": k[0], "backend": k[1], "direction": k[2]}, v) for k, v in values.items()]

    out.family("appliance_backend_sessions", "gauge", "active sessions per backend", by_backend(sessions))
    out.family("appliance_backend_new_flows_total", "counter", "new flows per backend", by_backend(flows))
    out.family("appliance_backend_packets_total", "counter",
               "packets per backend, to it and from it (its sessions' C counters, read per scrape)",
               by_direction(packets))
    out.family("appliance_backend_bytes_total", "counter",
               "frame bytes per backend (Ethernet header included), to it and from it", by_direction(nbytes))
    out.family("appliance_backend_weight", "gauge", "configured (or set) weight per backend", by_backend(weights))
    out.family("appliance_backend_state", "gauge",
               "1 for the state each backend is in (active, draining, down; gone: removed, sessions remain)",
               by_backend(states))
    out.family("appliance_plugin_figure", "gauge", "figures plugins report (appliance_statistics)",
               [({"plugin": p, "figure": k}, v) for p, fig in sorted(nat.get("plugins", {}).items())
                for k, v in sorted(fig.items())])
    out.family("appliance_plugin_errors_total", "counter", "plugin exceptions, contained, per plugin hook",
               [({"where": w}, v) for w, v in sorted(nat["plugin_errors"].items())])
    out.family("appliance_plugin_overruns_total", "counter",
               "plugin hook calls longer than [plugins] hook_budget_ms, per plugin",
               [({"plugin": p}, v) for p, v in sorted(nat.get("plugin_overruns", {}).items())])
    out.family("appliance_plugin_overruns_preempted_total", "counter",
               "plugin hook calls over the budget only while their thread waited for a CPU (not counted "
               "against the plugin), per plugin",
               [({"plugin": p}, v) for p, v in sorted(nat.get("plugin_overruns_preempted", {}).items())])
    out.family("appliance_plugin_disabled", "gauge",
               "1 for each plugin disabled for its overruns (until restart; the reason is in show stats)",
               [({"plugin": p}, 1) for p in sorted(nat.get("plugins_disabled", {}))])
    for name, value in stats["io"].items():
        out.family(f"appliance_io_{name}_total", "counter",
                   "datapath counter io." + name + " (docs/operations.md)", [({}, value)])
    for name, value in stats["xdp"].items():
        out.family(f"appliance_xdp_{name}_total", "counter", _XDP_HELP.get(name, name), [({}, value)])
    for name, value in stats.get("socket_steering", {}).items():
        out.family(f"appliance_socket_steering_{name}_total", "counter",
                   "nftables transactions that wrote the socket modes' steering table (docs/operations.md)",
                   [({}, value)])
    out.family("appliance_socket_rx_frames_total", "counter", "frames received per port (socket)",
               [({"interface": s["interface"], "queue": s["queue"]}, s["rx"]) for s in stats["sockets"]])
    out.family("appliance_interface_up", "gauge",
               "1 while a data interface is the one the appliance attached to (0: gone or recreated)",
               [({"interface": i}, int(state == "up")) for i, state in sorted(stats["interfaces"].items())])
    out.family("appliance_kernel_snapshots_total", "counter", "times the kernel's tables were read",
               [({}, stats["kernel"]["snapshots"])])
    out.family("appliance_kernel_errors_total", "counter",
               "failures reading the kernel's tables or writing the XDP maps (the datapath keeps what it has)",
               [({}, stats["kernel"].get("errors", 0))])
    out.family("appliance_kernel_neighbour_updates_total", "counter",
               "neighbours added or changed from netlink notifications, without a snapshot",
               [({}, stats["kernel"].get("neighbour_updates", 0))])
    _cluster(out, stats)
    config = stats["config"]
    out.family("appliance_config_reloads_total", "counter", "valid configuration versions applied",
               [({}, config["reloads"])])
    out.family("appliance_config_rejected_total", "counter", "invalid configuration versions rejected",
               [({}, config["rejected"])])
    return "\n".join(out.lines) + "\n"


def _cluster(out: _Out, stats: dict) -> None:
    """[bgp], a drain and session sync (docs/cluster.md): only while configured."""
    bgp = stats.get("bgp")
    if bgp is not None:
        out.family("appliance_bgp_daemon_up", "gauge", "1 while the BIRD the appliance runs is running",
                   [({}, int(bgp["daemon"] == "running"))])
        out.family("appliance_bgp_vips_announced", "gauge", "vips announced to the BGP neighbors",
                   [({}, len(bgp["announced"]))])
        out.family("appliance_bgp_withheld", "gauge",
                   "1 while the vips are withdrawn on purpose (draining, a data interface gone), with the reason",
                   [({"reason": bgp["withheld"]}, 1)] if bgp.get("withheld") else [({"reason": ""}, 0)])
        out.family("appliance_bgp_neighbor_established", "gauge", "1 for each BGP session that is Established",
                   [({"neighbor": n}, int(state.startswith("Established")))
                    for n, state in sorted(bgp["neighbors"].items())])
        out.family("appliance_bgp_daemon_starts_total", "counter", "times BIRD was started", [({}, bgp["starts"])])
        out.family("appliance_bgp_errors_total", "counter", "BIRD exits and failed commands", [({}, bgp["errors"])])
    drain = stats.get("drain")
    out.family("appliance_draining", "gauge", "1 while `cnat drain` runs", [({}, int(drain is not None))])
    if drain is not None:
        out.family("appliance_drain_stops_in_seconds", "gauge", "seconds until a drain's deadline",
                   [({}, drain["stops_in_s"])])
    sync = stats.get("sync")
    if sync is not None:
        for name, value in sync.items():
            if name == "synced_sessions":
                out.family("appliance_sync_sessions", "gauge", "sessions this instance keeps its peers told of",
                           [({}, value)])
            elif isinstance(value, int):
                out.family(f"appliance_sync_{name.removeprefix('sync_')}_total", "counter",
                           "session sync counter sync." + name + " (docs/cluster.md)", [({}, value)])


def parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" or "[V6]:PORT" -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def serve(stats: Callable[[], dict], sock: socket.socket) -> None:
    """Answer ``GET /metrics`` on a listening socket until cancelled."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    async with listener, trio.open_nursery() as nursery:
        while True:
            stream = await listener.accept()
            nursery.start_soon(_answer, stream, stats)


async def _answer(stream, stats: Callable[[], dict]) -> None:
    try:
        await _answer_one(stream, stats)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass   # the scraper hung up: its business, not the appliance's


async def _answer_one(stream, stats: Callable[[], dict]) -> None:
    async with stream:
        with trio.move_on_after(5):
            data = b""
            while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 8192:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            request = data.split(b"\n", 1)[0].decode(errors="replace").split()
            if len(request) < 2 or request[0] != "GET":
                status, body = "405 Method Not Allowed", "only GET /metrics\n"
            elif request[1].split("?", 1)[0] != "/metrics":
                status, body = "404 Not Found", "see /metrics\n"
            else:
                status, body = "200 OK", render(stats())
            payload = body.encode()
            head = (f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
            await stream.send_all(head.encode() + payload)
