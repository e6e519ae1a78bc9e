"""Hooks: custom decisions, containment of crashing plugins, validation."""

import ipaddress

import dpkt
import pytest

from appliance import ConfigError, parse_config
from appliance._plugins import Plugins
from appliance.hooks import DROP, NO_SNAT, hookimpl
from appliance.nat import Timeouts
from packets import Harness, tcp, udp

CONF = """
[snat]
ip4 = "30.0.0.1"
interfaces = ["tap0"]
[[translation]]
proto = "tcp"
vip = "30.0.0.2"
port = 80
backends = ["->20.0.0.1 8080", "->20.0.0.2 8080", "->20.0.0.3 8080"]
"""


def dst_of(frame):
    return str(ipaddress.ip_address(dpkt.ethernet.Ethernet(frame).data.dst))


def with_plugins(*objs):
    return Harness(CONF, plugins=Plugins(objects=objs, entry_points=False))


def test_selector_plugin_overrides_builtin():
    class AlwaysLast:
        @hookimpl
        def appliance_select_backend(self, flow, translation):
            return len(translation.backends) - 1

    h = with_plugins(AlwaysLast())
    for i in range(10):
        h.send(tcp(f"10.0.0.{i + 1}", 40000, "30.0.0.2", 80))
        assert dst_of(h.out) == "20.0.0.3"


def test_selector_returning_none_defers_to_builtin():
    calls = []

    class Observer:
        @hookimpl
        def appliance_select_backend(self, flow, translation):
            calls.append(flow.hash)
            return None

    h = with_plugins(Observer())
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    assert dst_of(h.out) == f"20.0.0.{calls[0] % 3 + 1}"


def test_crashing_plugin_is_contained_and_counted():
    class Broken:
        name = "broken-plugin"

        @hookimpl
        def appliance_select_backend(self, flow, translation):
            raise RuntimeError("boom")

    h = with_plugins(Broken())
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    assert dst_of(h.out) in ("20.0.0.1", "20.0.0.2", "20.0.0.3")   # built-in decided
    h.send(tcp("10.0.0.2", 40000, "30.0.0.2", 80))
    assert h.core.statistics().plugin_errors == {"broken-plugin": 2}


def test_invalid_answer_is_a_plugin_error():
    class OutOfRange:
        name = "out-of-range"

        @hookimpl
        def appliance_select_backend(self, flow, translation):
            return 7

    h = with_plugins(OutOfRange())
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    assert h.last[0] == 0
    assert h.core.statistics().plugin_errors == {"out-of-range": 1}


def test_selector_can_drop():
    class Deny:
        @hookimpl
        def appliance_select_backend(self, flow, translation):
            return DROP

    with_plugins(Deny()).send(tcp("10.0.0.1", 40000, "30.0.0.2", 80)).expect_drop("drop_policy")


def test_timeouts_plugin():
    class Short:
        @hookimpl
        def appliance_session_timeouts(self, flow, translation):
            return Timeouts(session=2) if flow.proto == 17 else None

    h = with_plugins(Short())
    h.send(udp("10.1.0.1", 5000, "9.9.9.9", 53), "tap0")
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    by_proto = {s.proto: s.expires - s.last_seen for s in h.core.sessions()}
    assert by_proto == {"udp": 2.0, "tcp": 60.0}   # tcp: syn-sent, the default tcp_syn


def test_snat_policy_plugin():
    class OnlyDns:
        @hookimpl
        def appliance_snat(self, flow, snat):
            return None if flow.dport == 53 else NO_SNAT

    h = with_plugins(OnlyDns())
    h.send(udp("10.1.0.1", 5000, "9.9.9.9", 53), "tap0").expect(udp("30.0.0.1", 5000, "9.9.9.9", 53))
    f = udp("10.1.0.1", 5000, "9.9.9.9", 123)
    h.send(f, "tap0").expect_pass(f)


def test_session_created_notification_once_per_flow():
    seen = []

    class Watch:
        @hookimpl
        def appliance_session_created(self, session):
            seen.append((str(session.new_dst), session.kind))

    h = with_plugins(Watch())
    for _ in range(3):
        h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    assert len(seen) == 1 and seen[0][1] == "translation"


def test_restored_sessions_are_announced_as_created():
    """After a restart with saved sessions, a plugin that counts sessions
    must hear of the old ones before it hears them expire."""
    old = Harness(CONF)
    old.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    seen = []

    class Watch:
        @hookimpl
        def appliance_session_created(self, session):
            seen.append((session.sport, str(session.new_dst)))

    new = with_plugins(Watch())
    assert new.core.import_sessions(old.core.export_sessions(), old.now) == (1, 0, 0)
    assert seen == [(40000, dst_of(old.last[2]))]


def test_unknown_hook_is_rejected_naming_the_plugin():
    class Typo:
        name = "typo-plugin"

        @hookimpl
        def appliance_select_backends(self, flow):
            return 0

    with pytest.raises(ConfigError, match="typo-plugin"):
        Plugins(objects=[Typo()], entry_points=False)


def test_plugin_modules_from_config(tmp_path, monkeypatch):
    (tmp_path / "myplug.py").write_text(
        "from appliance.hooks import hookimpl\n"
        "@hookimpl\n"
        "def appliance_select_backend(flow, translation):\n"
        "    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    h = Harness(CONF + '\n[plugins]\nmodules = ["myplug"]\n')
    h.send(tcp("10.0.0.9", 40000, "30.0.0.2", 80))
    assert dst_of(h.out) == "20.0.0.1"


def test_plugin_modules_beside_the_config_file(tmp_path, monkeypatch):
    """As the docs' example: `myplugins/sticky.py` next to the configuration,
    nothing installed, the appliance started from another directory."""
    (tmp_path / "besideplugs").mkdir()
    (tmp_path / "besideplugs" / "__init__.py").write_text("")
    (tmp_path / "besideplugs" / "third.py").write_text(
        "from appliance.hooks import hookimpl\n"
        "@hookimpl\n"
        "def appliance_select_backend(flow, translation):\n"
        "    return 2\n")
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(CONF + '\n[plugins]\nmodules = ["besideplugs.third"]\n')
    monkeypatch.chdir("/")
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    config = parse_config(cfg.read_text(), str(cfg))
    h = Harness(CONF, plugins=Plugins(config.plugin_modules, entry_points=False, config_path=str(cfg)))
    h.send(tcp("10.0.0.9", 40000, "30.0.0.2", 80))
    assert dst_of(h.out) == "20.0.0.3"


def test_missing_plugin_module_is_a_config_error():
    with pytest.raises(ConfigError, match="plugins.modules.*no_such_plugin"):
        Harness(CONF + '\n[plugins]\nmodules = ["no_such_plugin"]\n')


def test_decision_hooks_run_once_per_flow_not_per_packet():
    calls = {"select": 0, "timeouts": 0, "snat": 0}

    class Count:
        @hookimpl
        def appliance_select_backend(self, flow, translation):
            calls["select"] += 1

        @hookimpl
        def appliance_session_timeouts(self, flow, translation):
            calls["timeouts"] += 1

        @hookimpl
        def appliance_snat(self, flow, snat):
            calls["snat"] += 1

    h = with_plugins(Count())
    for _ in range(50):
        h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80, 0x10))
        h.send(udp("10.1.0.1", 5000, "9.9.9.9", 53), "tap0")
    assert calls == {"select": 1, "timeouts": 2, "snat": 1}


def test_plugins_load_from_the_entry_point_group(tmp_path, monkeypatch):
    (tmp_path / "ep_plugin.py").write_text(
        "from appliance.hooks import hookimpl\n"
        "@hookimpl\n"
        "def appliance_select_backend(flow, translation):\n"
        "    return 2\n")
    dist = tmp_path / "ep_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[appliance.plugins]\nthird = ep_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = Plugins()
    assert "entrypoint:third" in plugins.names
    h = Harness(CONF, plugins=plugins)
    h.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    assert dst_of(h.out) == "20.0.0.3"


async def test_a_crashing_background_task_ends_alone():
    """Background tasks run in the appliance's own nursery: one that raises
    must end by itself, counted against its plugin, not stop the appliance."""
    import trio

    ran = []

    class Background:
        name = "bg-plugin"

        @hookimpl
        def appliance_background_tasks(self):
            async def crashes():
                await trio.sleep(0.01)
                raise RuntimeError("plugin bug")

            async def keeps_going():
                for _ in range(5):
                    await trio.sleep(0.01)
                    ran.append(1)

            return [crashes, keeps_going]

    plugins = Plugins(objects=[Background()], entry_points=False, first_party=False)   # health runs forever
    async with trio.open_nursery() as nursery:
        for task in plugins.background_tasks():
            nursery.start_soon(task)
    assert plugins.errors["bg-plugin"] == 1
    assert len(ran) == 5


# -- order and composition --------------------------------------------------------

def _answers(value, name):
    class Answer:
        @hookimpl
        def appliance_select_backend(self, flow, translation, backends):
            return value

    a = Answer()
    a.name = name
    return a


def test_first_listed_plugin_answers_first():
    from appliance.testing import Nat

    nat = Nat(CONF, plugins=[_answers(2, "first"), _answers(0, "second")])
    nat.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    assert nat.backend() == "->20.0.0.3 8080" and nat.plugins.decider == "first"


def test_modules_answer_in_config_order(tmp_path, monkeypatch):
    for name, idx in (("plug_one", 1), ("plug_two", 2)):
        (tmp_path / f"{name}.py").write_text(
            "from appliance.hooks import hookimpl\n@hookimpl\n"
            f"def appliance_select_backend(flow, translation):\n    return {idx}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for order, want in ((["plug_one", "plug_two"], "20.0.0.2"), (["plug_two", "plug_one"], "20.0.0.3")):
        h = Harness(CONF + f"\n[plugins]\nmodules = {order!r}\n".replace("'", '"'))
        h.send(tcp("10.0.0.9", 40000, "30.0.0.2", 80))
        assert dst_of(h.out) == want
        assert h.core.plugins.decider == order[0]


@pytest.mark.parametrize("bad", [7, -1, "2", 1.0, None])
def test_an_invalid_or_failing_answer_lets_the_next_plugin_decide(bad):
    from appliance.testing import Nat

    class Raises:
        name = "raises"

        @hookimpl
        def appliance_select_backend(self, flow, translation):
            raise RuntimeError("boom")

    nat = Nat(CONF, plugins=[Raises(), _answers(bad, "invalid"), _answers(1, "next")])
    nat.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    assert nat.backend() == "->20.0.0.2 8080" and nat.plugins.decider == "next"
    assert nat.plugin_errors == ({"raises": 1} if bad is None else {"raises": 1, "invalid": 1})


def test_a_backend_that_is_not_eligible_is_an_invalid_answer():
    from appliance.testing import Nat

    nat = Nat(CONF.replace('"->20.0.0.3 8080"]', '{ to = "->20.0.0.3 8080", state = "down" }]'),
              plugins=[_answers(2, "picks-down")])
    nat.send(tcp("10.0.0.1", 40000, "30.0.0.2", 80))
    assert nat.backend() != "->20.0.0.3 8080" and nat.plugin_errors == {"picks-down": 1}
    assert nat.plugins.decider == "selector hash"


@pytest.mark.parametrize("source, message", [
    ("def appliance_select_backend(flow, translation, client):\n    return 0\n",
     "plugin 'badsig' is invalid: hook 'appliance_select_backend' takes an argument 'client' the hook "
     "does not pass (it passes: flow, translation, backends)"),
    ("async def appliance_snat(flow, snat):\n    return None\n",
     "plugin 'badsig' is invalid: hook 'appliance_snat' is async"),
    ("@hookimpl(wrapper=True)\ndef appliance_snat(flow, snat):\n    return (yield)\n",
     "plugin 'badsig' is invalid: hook 'appliance_snat' is a wrapper"),
    ("def appliance_select_backends(flow):\n    return 0\n",
     "plugin 'badsig' is invalid: hook 'appliance_select_backends' is not a hook of this appliance"),
])
def test_wrong_signatures_are_refused_with_a_message_not_a_traceback(tmp_path, source, message):
    import subprocess
    import sys

    decorator = "" if source.startswith("@") else "@hookimpl\n"
    (tmp_path / "badsig.py").write_text("from appliance.hooks import hookimpl\n" + decorator + source)
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONF + '\n[plugins]\nmodules = ["badsig"]\n')
    r = subprocess.run([sys.executable, "-m", "appliance", "check-config", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and str(cfg) in r.stderr
