"""The ``appliance`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .__about__ import __version__

EPILOG = """\
commands:
  demo          live demo: namespaces, appliance, traffic via a vip and SNAT (root);
                --offline: the seed's examples through the NAT core, explained
  run           NAT live traffic on the configured interfaces (AF_XDP, io_uring or mmap; root)
  show          sessions / stats / translations of a running appliance (control socket)
  cnat          the seed's cnat verbs on a running appliance (translation add/del, snat, show, drain)
  replay        run a pcap/pcapng capture through the NAT core, write what it forwards
  explain       why a new flow gets its backend, SNAT decision and rewrite
  check-config  validate a configuration file and print what it configures
  bench core    measure the NAT core in-process (fast path, slow path, memory)
  bench e2e     measure the live appliance against nftables DNAT (root)
  bench flood   a SYN flood against a full table, the appliance and nftables (root)
  bench failover  instances killed, drained and restarted behind BGP ECMP, under traffic (root)
  bench sync    session sync's cost in process (sender, receiver, new-session rate)
  bench fuzz    the NAT core against an independent model, on generated and mutated frames

Exit status: 0 success, 1 invalid configuration or unreadable file (bench
fuzz: a mismatch), 2 usage, 3 replay: the capture is damaged (the frames
before the damage were replayed).
"""


class _JsonLogs(logging.Formatter):
    """One JSON object per log line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _finish(sub: argparse.ArgumentParser, help_text: str) -> None:
    if sub.description is None:
        sub.description = help_text[:1].upper() + help_text[1:] + "."
    if not any("--log-level" in a.option_strings for a in sub._actions):
        sub.add_argument("--log-level", default=argparse.SUPPRESS,
                         help="logging level (default WARNING), here or before the command")
        sub.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS,
                         help="log as JSON lines, here or before the command")
    for action in sub._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                _finish(action.choices[choice.dest], choice.help)


def _socket_modes(text: str) -> tuple[str, ...]:
    """`bench e2e --io`: a comma-separated list of socket backends ("xdp",
    the default mode, adds none)."""
    modes = tuple(m for m in text.split(",") if m and m != "xdp")
    bad = [m for m in modes if m not in ("uring", "mmap")]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r} is not a socket mode (uring, mmap)")
    return tuple(dict.fromkeys(modes))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appliance", description="cnat-style NAT appliance",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"appliance {__version__}")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    p.add_argument("--log-json", action="store_true",
                   help="log as JSON lines (time, level, logger, message; exception when there is one)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="live demo on a namespace topology it builds and removes (root)")
    d.add_argument("--offline", action="store_true",
                   help="walk the NAT core through the seed's examples instead (no root, no interfaces)")

    rn = sub.add_parser("run", help="run the appliance on the configured data interfaces (root)",
                        description="Attach the steering XDP program and AF_XDP sockets to every "
                        "[[interface]] of the configuration (where XDP is not allowed, or with io = "
                        "\"uring\" or \"mmap\": an AF_PACKET socket read through io_uring, or through "
                        "PACKET_MMAP rings where io_uring is not allowed either, and an nftables "
                        "steering table; docs/io.md) and NAT/forward live traffic until "
                        "SIGTERM or SIGINT. The configuration file is watched (SIGHUP: read it "
                        "now). Addresses, routes and neighbours come from the kernel.")
    rn.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    rn.add_argument("--ready-file", metavar="PATH", help="write 'ready' to PATH once serving")
    rn.add_argument("--control", metavar="PATH",
                    help="serve the control socket (appliance show) at PATH (default: "
                    "/run/appliance/NETNS.sock, NETNS the network namespace's name, 'default' for the "
                    "host's; 'none': no control socket)")
    rn.add_argument("--control-group", metavar="GROUP",
                    help="also let members of GROUP use the control socket (default: root only)")
    rn.add_argument("--nice", type=int, default=-19, metavar="N",
                    help="scheduling niceness of the datapath process (default -19, so that processes it "
                    "wakes by delivering their packets do not preempt it; needs CAP_SYS_NICE, else a "
                    "warning; 0 keeps the inherited one)")
    rn.add_argument("--metrics", metavar="HOST:PORT",
                    help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9468)")
    rn.add_argument("--state-file", metavar="PATH",
                    help="keep sessions across a restart: a clean stop saves them to PATH and leaves the "
                    "steering program dropping the traffic it steers to the appliance for 5 s (instead of "
                    "letting the kernel forward it untranslated), and the next start restores them and "
                    "removes PATH")

    sh = sub.add_parser("show", help="ask a running appliance (sessions, stats, translations)")
    sh.add_argument("what", choices=["sessions", "stats", "translations"])
    sh.add_argument("--control", metavar="PATH",
                    help="its control socket (default: the one of this network namespace, "
                    "/run/appliance/NETNS.sock)")
    sh.add_argument("--json", action="store_true", help="print the raw JSON answer")
    sh.add_argument("--limit", type=int, default=1000, metavar="N",
                    help="sessions: at most N (default 1000; 0: all, which on a busy appliance takes "
                         "20-40 us a session, the datapath running in between)")
    sh.add_argument("--match", metavar="ADDRESS",
                    help="sessions: only those with ADDRESS as a source or destination, before or after NAT")

    cn = sub.add_parser("cnat", help="change or ask a running appliance in the seed's cnat words",
                        description="The seed's cnat verbs, acting on the running appliance at once: "
                        "translation add proto TCP vip 30.0.0.2 80 to ->20.0.0.1 8080 [to ...]; "
                        "translation del proto TCP vip 30.0.0.2 80 (or del NAME); snat with ADDRESS; "
                        "snat exclude PREFIX [del]; backend set TRANSLATION BACKEND (weight N | drain | down "
                        "| up); show (session [verbose] | translation | snat); save (the running configuration as "
                        "TOML); drain [SECONDS] (withdraw the vips from BGP, serve the established sessions "
                        "until they end or SECONDS pass, default 60, then stop). Changes are an overlay on the watched file: kept across its reloads, dropped at a "
                        "restart (docs/operations.md).")
    cn.add_argument("--control", metavar="PATH", help="its control socket (default: this namespace's)")
    cn.add_argument("--json", action="store_true", help="print the raw JSON answer")
    cn.add_argument("words", nargs=argparse.REMAINDER, metavar="WORDS")

    r = sub.add_parser("replay", help="replay a capture through the NAT core",
                       description="Run every frame of IN (pcap or pcapng, Ethernet) through the NAT "
                       "core in file order, with its capture timestamp as the clock, and write every "
                       "frame the appliance would forward to OUT (pcap) with its input timestamp. "
                       "pcap frames are received on --interface; pcapng frames on the interface "
                       "named by their interface description block.")
    r.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    r.add_argument("--interface", default="eth0", metavar="NAME",
                   help="ingress interface for pcap frames and unnamed pcapng interfaces (default eth0, as explain's)")
    r.add_argument("--json", action="store_true", help="print the counters as one JSON object")
    r.add_argument("--seed", type=int, metavar="N",
                   help="session table seed (SNAT port choices; default: the configuration's flow_hash_seed, "
                        "so every run of the same input gives the same output)")
    r.add_argument("-v", "--verbose", action="store_true", help="print a line per frame")
    r.add_argument("input", metavar="IN")
    r.add_argument("output", metavar="OUT")

    ex = sub.add_parser("explain", help="why a new flow gets its backend, SNAT and rewrite (offline)")
    ex.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    ex.add_argument("--interface", default="eth0", metavar="NAME", help="ingress interface (default eth0)")
    ex.add_argument("proto", choices=["tcp", "udp", "icmp"])
    ex.add_argument("src", metavar="SRC:PORT", help="source; for icmp the port is the echo identifier")
    ex.add_argument("dst", metavar="DST:PORT", help="destination (IPv6 as [ADDR]:PORT; icmp: any port)")

    c = sub.add_parser("check-config", help="validate a configuration file")
    c.add_argument("config", metavar="FILE")

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", metavar="WHAT")
    bc = bsub.add_parser("core", help="NAT core in-process: fastpath_pps, new_sessions_per_s, bytes_per_session")
    bc.add_argument("--json", action="store_true", help="print one JSON object")
    bc.add_argument("--sessions", type=int, default=1_000_000, help="sessions to create (default 1000000)")
    bc.add_argument("--flows", type=int, default=131_072,
                    help="established flows the fast-path traffic spreads over (default 131072)")
    bc.add_argument("--seconds", type=float, default=3.0, help="fast-path measurement time (default 3)")
    bc.add_argument("--workers", type=int, default=1,
                    help="threads running the fast path at once over one table, each on its own lane and CPU "
                    "(default 1)")
    be = bsub.add_parser("e2e", help="live, against nftables DNAT on the same topology (root): udp pps, "
                         "tcp connections/s, bulk tcp, CPU per packet")
    be.add_argument("--json", action="store_true", help="print one JSON object")
    be.add_argument("--io", type=_socket_modes, default=(), metavar="uring,mmap",
                    help="also the appliance in these socket modes, one worker each, under keys of their names "
                    "(uring, mmap), side by side with AF_XDP and nftables in the same runs (docs/io.md)")
    be.add_argument("--runs", type=int, default=7,
                    help="runs per mode, the modes alternating; medians reported (default 7: single runs "
                    "vary by 1.5x on a shared VM)")
    be.add_argument("--seconds", type=float, default=4.0, help="seconds per UDP/iperf3 run (default 4)")
    be.add_argument("--workers", type=int, default=1,
                    help="datapath workers; more than 1: veths with that many queues, the native XDP hook, and "
                    "on the same topology also one worker on CPU 1 (one_worker) and the N workers all on CPU 1 "
                    "(same_cpu) (default 1)")
    bf = bsub.add_parser("flood", help="a spoofed-source SYN flood against a full session table while a transfer, "
                         "a keep-alive loop and new connections use the vip, and the same against nftables DNAT "
                         "with conntrack of the same size (root)",
                         description="A SYN flood from random sources, as fast as one CPU sends it, at the vip "
                         "established flows use, with a session table far smaller than the flood. Reported per "
                         "mode (suffix _appliance / _nftables): the transfer's throughput before and during the "
                         "flood (transfer_ratio), keep-alive failures, the share of new connections that "
                         "completed during the flood, evictions and the seconds the table took to recover.")
    bf.add_argument("--json", action="store_true", help="print one JSON object")
    bf.add_argument("--table", type=int, default=8192,
                    help="session table size, [sessions] max, and nf_conntrack_max for the kernel's run "
                    "(default 8192)")
    bf.add_argument("--seconds", type=float, default=6.0, help="seconds of flood (default 6)")
    bf.add_argument("--mode", choices=("both", "appliance", "nftables"), default="both",
                    help="which NAT to flood (default both, one after the other)")
    bo = bsub.add_parser("failover", help="three instances behind a BIRD router's ECMP route: one SIGKILLed, one "
                         "drained, the first started again, under downloads, a UDP stream and pings (root)",
                         description="Builds the topology of docs/cluster.md (a router and a backend host "
                         "running BIRD, three appliance instances each with its own BIRD) and reports the time "
                         "from SIGKILL to the router's withdrawal (withdrawn_after_kill_s) and to the first "
                         "packet through a survivor, the withdrawal after a drain, the re-announcement after a "
                         "restart, each download's completeness and backend, the UDP stream's and the pings' "
                         "losses, and the survivors' session_recovered counters.")
    bo.add_argument("--json", action="store_true", help="print one JSON object")
    bo.add_argument("--drain", type=int, default=30, metavar="SECONDS",
                    help="the drained instance's deadline (default 30)")
    bs = bsub.add_parser("sync", help="session sync's cost in process: new SNAT sessions with and without sync "
                         "collecting them, the sender's records and signing, the receiver's checks and installs",
                         description="Creates --sessions SNAT sessions with sync off and on (new_sessions_per_s, "
                         "_sync_on), turns them into signed messages (sender_sessions_per_s, bytes_per_session) "
                         "and installs them into a second core (receiver_sessions_per_s). No UDP send.")
    bs.add_argument("--json", action="store_true", help="print one JSON object")
    bs.add_argument("--sessions", type=int, default=100_000, help="sessions (default 100000)")
    bz = bsub.add_parser("fuzz", help="differential fuzzing: generated, mutated and truncated frames through the "
                         "NAT core and an independent model; every verdict, byte and checksum compared",
                         description="Frames of every kind the core handles (v4/v6, TCP/UDP/ICMP, ICMP errors "
                         "with quoted packets, options, extension headers, fragments, VLAN), a third of them "
                         "mutated or cut short, through the real NAT core and through a model written from the "
                         "rules (appliance/fuzz/). Exit status 1 at the first mismatch, which is printed with "
                         "its seed, frame number, kind and bytes.")
    bz.add_argument("--json", action="store_true", help="print one JSON object")
    bz.add_argument("--frames", type=int, default=1_000_000, help="frames to run (default 1000000)")
    bz.add_argument("--seed", type=int, default=1, help="the corpus's seed (default 1)")
    # every subcommand: a description in its --help (its one-line help when
    # it has none of its own), and --log-level after it too
    for action in p._subparsers._group_actions:
        for choice in action._choices_actions:
            _finish(action.choices[choice.dest], choice.help)
    return p


def _error(msg: str) -> int:
    print(f"appliance: error: {msg}", file=sys.stderr)
    return 1


def _cnat_command(args) -> int:
    import trio

    from ._cnat import CnatSyntaxError, InstanceDrain, Save, Show, parse
    from ._controlpath import default_control_path
    from .runtime import query

    control = args.control or default_control_path()
    try:
        cmd = parse(args.words)
    except CnatSyntaxError as exc:
        return _error(str(exc))
    try:
        if isinstance(cmd, Show) and cmd.what == "session":
            answer = trio.run(query, control, "sessions limit=0")
        else:
            answer = trio.run(query, control, "cnat " + json.dumps(args.words))
    except OSError as exc:
        return _error(f"{control}: cannot reach the appliance: {exc.strerror or exc}")
    if "error" in answer:
        return _error(answer["error"])
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif isinstance(cmd, Save):
        print(answer["toml"], end="")
    elif isinstance(cmd, Show) and cmd.what == "session":
        for s in answer["sessions"]:
            line = (f"[{s['index']}] {s['proto']} {_endpoint(s['src'], s['sport'])} -> "
                    f"{_endpoint(s['dst'], s['dport'])} => {_endpoint(s['new_src'], s['new_sport'])} -> "
                    f"{_endpoint(s['new_dst'], s['new_dport'])}")
            if cmd.verbose:
                line += (f" {s['kind']} {s['state']} pkts {s['packets'][0]}/{s['packets'][1]} "
                         f"expires in {s['expires_in']}s")
            print(line)
    elif isinstance(cmd, Show) and cmd.what == "translation":
        runtime = answer.get("runtime", [])
        print("\n".join(_translation_lines(answer["translations"])))
        for c in runtime:
            print(f"runtime: cnat {c}")
    elif isinstance(cmd, InstanceDrain):
        d = answer["drain"]
        print(f"ok: cnat {answer['ok']}: {'vips withdrawn from BGP' if answer['bgp'] else 'no [bgp]: nothing to withdraw'}"
              f"; stopping when the last of {d['sessions']} sessions ends or in {d['stops_in_s']:.0f} s")
    elif isinstance(cmd, Show):
        print(json.dumps(answer.get("snat"), sort_keys=True))
        for c in answer.get("runtime", []):
            print(f"runtime: cnat {c}")
    else:
        print(f"ok: cnat {answer['ok']}")
    return 0


def _endpoint(addr: str, port: int) -> str:
    """ADDRESS:PORT, IPv6 as [ADDRESS]:PORT (what explain accepts)."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _stats_lines(answer: dict) -> list[str]:
    """show stats as text: every figure of the JSON answer, nested ones as
    dotted names (nat.plugins.first-party:health.probes; the core's
    counters directly under nat: nat.translated), aligned, zeros
    included: what the JSON has (null as "-", true/false as yes/no, a list
    of plain values joined by commas). Per-translation figures are show
    translations'."""
    rows: list[tuple[str, object]] = []

    def scalar(v) -> bool:
        return v is None or isinstance(v, (int, float, str))

    def walk(prefix: str, values: dict) -> None:
        for k, v in values.items():
            name = f"{prefix}.{k}"
            if isinstance(v, dict):
                walk(name, v)
            elif v is None:
                rows.append((name, "-"))
            elif isinstance(v, bool):
                rows.append((name, "yes" if v else "no"))
            elif isinstance(v, (int, float, str)):
                rows.append((name, v))
            elif isinstance(v, list) and all(map(scalar, v)):    # bgp.announced, sync.peers
                rows.append((name, ",".join(map(str, v)) or "-"))

    for section, values in answer.items():
        if isinstance(values, dict):
            figures = {k: v for k, v in values.items() if not isinstance(v, (dict, list))
                       or isinstance(v, list) and all(map(scalar, v))}
            walk(section, figures)
            walk(section, values.get("counters", {}))    # nat.translated, as operations.md names them
            walk(section, {k: v for k, v in values.items() if isinstance(v, dict) and k != "counters"})
    for sock in answer.get("sockets", []):       # frames received per RX queue, idle ones too
        rows.append((f"sockets.{sock['interface']}.q{sock['queue']}.rx", sock["rx"]))
        if "worker" in sock:
            rows.append((f"sockets.{sock['interface']}.q{sock['queue']}.worker", sock["worker"]))
        if "io" in sock:
            rows.append((f"sockets.{sock['interface']}.q{sock['queue']}.io", sock["io"]))
    for w in answer.get("workers", []):          # the spread over the datapath's workers
        for key, value in w.items():
            if key != "worker" and value is not None:
                rows.append((f"workers.{w['worker']}.{key}", value))
    width = max((len(n) for n, _ in rows), default=0)
    return [f"{n:{width}} {str(v).replace(' ', '_') if isinstance(v, str) else v}" for n, v in rows]


def _cluster_lines(cfg) -> list[str]:
    """check-config's lines for [bgp] and [cluster] (docs/cluster.md)."""
    out = []
    if cfg.bgp is not None:
        b = cfg.bgp
        out.append(f"bgp asn={b.asn} router_id={b.router_id} hold_time={b.hold_time}s bird={b.bird}")
        for n in b.neighbors:
            what = ["vips"] if n.vips else []
            out.append(f"  neighbor {_endpoint(str(n.address), n.port)} asn={n.asn} "
                       f"announce={','.join(what + [str(p) for p in n.prefixes]) or '-'}")
    c = cfg.cluster
    if c.stateless_failover or c.sync or c.source_ports:
        words = [f"stateless_failover={'on' if c.stateless_failover else 'off'}"]
        if c.sync:
            words += [f"sync_listen={_endpoint(str(c.sync_listen[0]), c.sync_listen[1])}",
                      "sync_peers=" + ",".join(_endpoint(str(a), p) for a, p in c.sync_peers),
                      f"sync_refresh={c.sync_refresh}s",
                      f"key from {c.sync_key_file}" if c.sync_key_file else "key inline"]
        if c.source_ports:
            words.append("source_ports=%d-%d" % c.source_ports)
        out.append("cluster " + " ".join(words))
    return out


def _translation_lines(translations: list, figures: bool = True) -> list[str]:
    """show translations (and check-config, without figures): a line per
    translation, one per backend below it."""
    out = []
    for t in translations:
        policies = [f"selector {t['selector']}"]
        if t["drain"] != "default":
            policies.append(f"drain {t['drain']}")
        if t["affinity"] is not None:
            policies.append(f"affinity {t['affinity']:g} s")
        if t["allow_from"]:
            policies.append(f"allow_from {','.join(t['allow_from'])} (denied {t['denied']})")
        if t.get("timeouts"):
            policies.append("timeouts " + ",".join(f"{k} {v:g}" for k, v in t["timeouts"].items() if v is not None))
        if t.get("health"):
            h = t["health"]
            policies.append(f"health every {h['interval']:g} s" + (f" GET {h['http']}" if h["http"] else " tcp")
                            + (f" port {h['port']}" if h["port"] else "") + f" fall {h['fall']} rise {h['rise']}")
        head = f"{t['name']}: removed, sessions remain" if t["removed"] else t["text"]
        out.append(f"{head}  [{'; '.join(policies)}]" + (f"  new flows {t['new_flows']}" if figures else ""))
        for b in t["backends"]:
            state = b["state"] + (f" (set by {b['set_by']})" if b["set_by"] else "")
            labels = "".join(f" {k}={v}" for k, v in sorted(b["labels"].items()))
            line = f"  {b['name']:24} {b['to']:28} weight {b['weight']:<5} {state:24}"
            if figures:
                line += f" sessions {b['sessions']:<7} new flows {b['new_flows']}"
            out.append((line + labels).rstrip())
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:   # `appliance show sessions | head`: the reader is done, so are we
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "log_json", False):
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_JsonLogs())
    from ._config import ConfigError, load_config

    if args.command == "demo":
        if args.offline:
            from . import _demo

            return _demo.run()
        from . import _livedemo

        return _livedemo.run()

    if args.command == "run":
        import trio

        from . import _metrics, runtime

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            return _error(str(exc))
        from .io_uring.xdp._steering import SteeringError

        try:
            metrics = _metrics.parse_address(args.metrics) if args.metrics else None
        except ValueError as exc:
            return _error(f"--metrics: {exc}")
        try:
            from ._controlpath import default_control_path

            control = args.control or default_control_path()
            if control == "none":
                control = None
            group = None
            if args.control_group:
                import grp

                try:
                    group = grp.getgrnam(args.control_group).gr_gid
                except KeyError:
                    return _error(f"--control-group: no group named '{args.control_group}'")
            return trio.run(runtime.run, cfg, args.ready_file, control, args.nice, args.state_file, metrics,
                            group)
        except SteeringError as exc:
            return _error(f"{exc} (appliance run needs root: CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN)")
        except PermissionError as exc:
            return _error(f"{exc} (appliance run needs root)")

    if args.command == "cnat":
        return _cnat_command(args)

    if args.command == "show":
        import trio

        from . import runtime

        from ._controlpath import default_control_path

        control = args.control or default_control_path()
        command = args.what
        if args.what == "sessions":
            if args.limit < 0:
                return _error("--limit: must be 0 (all) or more")
            command += f" limit={args.limit}" + (f" match={args.match}" if args.match else "")
        try:
            answer = trio.run(runtime.query, control, command)
        except OSError as exc:
            hint = ""
            if isinstance(exc, FileNotFoundError) and not args.control:
                hint = " (no appliance runs in this network namespace with the default control socket; " \
                       "start one, run this in its namespace, or give --control PATH)"
            elif isinstance(exc, PermissionError):
                hint = " (the control socket is root's, or its --control-group's)"
            return _error(f"{control}: cannot reach the appliance: {exc.strerror or exc}{hint}")
        if "error" in answer:
            return _error(answer["error"])
        if args.json:
            print(json.dumps(answer, indent=2, sort_keys=True))
        elif args.what == "sessions":
            for s in answer["sessions"]:
                ep = _endpoint
                print(f"[{s['index']}] {s['proto']} {ep(s['src'], s['sport'])} -> {ep(s['dst'], s['dport'])} => "
                      f"{ep(s['new_src'], s['new_sport'])} -> {ep(s['new_dst'], s['new_dport'])} {s['kind']} "
                      f"{s['state']} pkts {s['packets'][0]}/{s['packets'][1]} expires in {s['expires_in']}s")
            if not answer["sessions"]:   # said on stderr: stdout stays one line per session
                print("(no sessions" + (f" with {args.match})" if args.match else ")"), file=sys.stderr)
            if answer["shown"] == args.limit and answer["total"] > args.limit:
                print(f"({answer['shown']} of {answer['total']} sessions shown: --limit N, --limit 0 for all, "
                      f"--match ADDRESS)")
        elif args.what == "translations":
            print("\n".join(_translation_lines(answer["translations"])))
        else:
            print("\n".join(_stats_lines(answer)))
        return 0

    if args.command == "explain":
        from ._explain import explain

        try:
            cfg = load_config(args.config)
            print("\n".join(explain(cfg, args.proto, args.src, args.dst, args.interface)))
        except ConfigError as exc:
            return _error(str(exc))
        except ValueError as exc:
            return _error(str(exc))
        return 0

    if args.command == "check-config":
        try:
            cfg = load_config(args.config)
            from ._plugins import Plugins

            plugins = Plugins(cfg.plugin_modules, config_path=cfg.path)
            plugins.check(cfg)
        except ConfigError as exc:
            return _error(str(exc))
        print(f"{cfg.path}: ok")
        from ._backends import BackendSet

        for line in _translation_lines([BackendSet(t, cfg.locality).describe_translation()
                                        for t in cfg.translations], figures=False):
            print(f"  {line}")
        if cfg.snat:
            print(f"  snat ip4={cfg.snat.ip4} ip6={cfg.snat.ip6} interfaces={list(cfg.snat.interfaces)} "
                  f"exclude={[str(n) for n in cfg.snat.exclude]} policy={cfg.snat.policy}"
                  + (f" pod_prefixes={[str(n) for n in cfg.snat.pod_prefixes]}" if cfg.snat.pod_prefixes else ""))
        print(f"  timeouts {cfg.timeouts}")
        print(f"  plugins {plugins.names}")
        for line in _cluster_lines(cfg):
            print(f"  {line}")
        return 0

    if args.command == "replay":
        from .nat import Verdict
        from .replay import CaptureError, replay
        from ._describe import describe

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            return _error(str(exc))

        def on_frame(i, iface, verdict, reason, fin, fout):
            tag = {0: "forward", 1: "pass", 2: "drop"}.get(verdict, str(verdict))
            line = f"#{i} {iface} {describe(fin)} -> {tag}"
            if verdict in (Verdict.DROP, Verdict.PASS):
                line += f" ({reason})"
            if verdict == Verdict.FORWARD:
                line += f": {describe(fout)}"
            print(line)

        try:
            report = replay(cfg, args.input, args.output, interface=args.interface,
                            on_frame=on_frame if args.verbose else None, seed=args.seed)
        except CaptureError as exc:
            return _error(str(exc))
        except ConfigError as exc:
            return _error(str(exc))
        if args.json:
            print(json.dumps(report.as_dict(), sort_keys=True))
        else:
            print("\n".join(report.lines()))
        if report.damaged:
            print(f"appliance: error: the capture is damaged: {report.damaged}; the {report.frames} frames "
                  f"before it were replayed and written to {args.output}", file=sys.stderr)
            return 3
        return 0

    if args.command == "bench":
        if args.bench == "e2e":
            from . import _bench_e2e

            if args.workers < 1:
                raise SystemExit("appliance: error: bench e2e --workers: must be at least 1")
            result = _bench_e2e.run(seconds=args.seconds, runs=args.runs, workers=args.workers, io=args.io)
        elif args.bench == "flood":
            from . import _bench_flood

            if args.table < 64 or args.seconds <= 0:
                raise SystemExit("appliance: error: bench flood: --table must be at least 64 and --seconds "
                                 "more than 0")
            modes = ("appliance", "nftables") if args.mode == "both" else (args.mode,)
            result = _bench_flood.run(table=args.table, flood=args.seconds, modes=modes)
        elif args.bench == "failover":
            from . import _bench_failover

            if not 1 <= args.drain <= 3600:
                raise SystemExit("appliance: error: bench failover --drain: must be between 1 and 3600 seconds")
            result = _bench_failover.run(drain_seconds=args.drain)
        elif args.bench == "sync":
            from . import _bench_sync

            if not 1000 <= args.sessions <= 200_000:
                raise SystemExit("appliance: error: bench sync --sessions: must be between 1000 and 200000")
            result = _bench_sync.run(args.sessions)
        elif args.bench == "fuzz":
            from . import fuzz

            if args.frames < 1:
                raise SystemExit("appliance: error: bench fuzz --frames: must be at least 1")
            report = fuzz.run(args.frames, seed=args.seed)
            result = report.as_dict()
            if report.mismatches:
                print(f"appliance: mismatch: {report.mismatches[0]}", file=sys.stderr)
        elif args.bench == "core":
            from . import _bench

            if args.workers < 1:
                raise SystemExit("appliance: error: bench core --workers: must be at least 1")

            result = _bench.run(sessions=args.sessions, fastpath_flows=args.flows, seconds=args.seconds,
                                 workers=args.workers)
        else:
            parser.parse_args(["bench", "--help"])
            return 2
        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            def lines(prefix: str, d: dict) -> None:
                for k, v in d.items():
                    if isinstance(v, dict):   # bench e2e's one_worker and per-run samples
                        lines(f"{prefix}{k}.", v)
                    else:
                        print(f"{prefix + k:24} {v}")
            lines("", result)
        return 1 if args.bench == "fuzz" and result["mismatches"] else 0

    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
