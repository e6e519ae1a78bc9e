"""Slow and hostile plugins (issue 15): a time budget per hook call, plugins
disabled for repeated overruns, answers of any type and arguments a plugin
tries to change, all contained. Time here is a fake clock the plugins
advance (one test sleeps for real)."""

import math
import time

import pytest
import trio

from appliance import parse_config
from appliance._plugins import DEFAULTS_NAME, OVERRUN_WINDOW_NS, Plugins
from appliance.hooks import hookimpl
from appliance.nat import Timeouts
from packets import Harness, tcp, udp

BACKENDS = ("20.0.0.1", "20.0.0.2", "20.0.0.3")
CONF = """
[plugins]
hook_budget_ms = {budget}
disable_after = {after}
[snat]
ip4 = "30.0.0.1"
interfaces = ["tap0"]
[[translation]]
name = "web"
proto = "tcp"
vip = "30.0.0.2"
port = 80
selector = "{selector}"
backends = ["->20.0.0.1 8080", "->20.0.0.2 8080", "->20.0.0.3 8080"]
"""
MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.ns = 10**12

    def __call__(self) -> int:
        return self.ns


def harness(*objs, budget=5, after=10, selector="hash", clock=None):
    plugins = Plugins(objects=objs, entry_points=False, clock=clock or Clock())
    return Harness(CONF.format(budget=budget, after=after, selector=selector), plugins=plugins)


def new_flow(h, i):
    return h.send(tcp(f"10.0.{i // 250}.{i % 250 + 1}", 40000, "30.0.0.2", 80))


def backend_of(h):
    verdict, reason, data = h.last
    assert reason == "translated", reason
    import dpkt
    import ipaddress
    return str(ipaddress.ip_address(dpkt.ethernet.Ethernet(data).data.dst))


class Slow:
    """Takes `ms` of the fake clock in every select_backend and answers 2."""

    name = "slow"

    def __init__(self, clock, ms):
        self.clock, self.ms, self.calls = clock, ms, 0

    @hookimpl
    def appliance_select_backend(self, flow, translation, backends):
        self.calls += 1
        self.clock.ns += self.ms * MS
        return 2


# -- time -------------------------------------------------------------------


def test_an_overrun_is_counted_and_the_plugin_still_decides():
    clock = Clock()
    slow = Slow(clock, 6)
    h = harness(slow, clock=clock)
    new_flow(h, 0)
    assert backend_of(h) == "20.0.0.3"
    slow.ms = 1                              # within the budget from here on
    for i in range(1, 20):
        new_flow(h, i)
        assert backend_of(h) == "20.0.0.3"
    st = h.core.statistics()
    assert st.plugin_overruns == {"slow": 1} and st.plugins_disabled == {}


def test_a_plugin_over_budget_disable_after_times_in_a_minute_is_disabled():
    clock = Clock()
    slow = Slow(clock, 6)
    h = harness(slow, after=10, clock=clock)
    for i in range(10):
        new_flow(h, i)
        assert backend_of(h) == "20.0.0.3"   # its answer still counts while it overruns
    st = h.core.statistics()
    assert st.plugin_overruns == {"slow": 10}
    assert "slow" in st.plugins_disabled and "10 calls over the 5 ms budget" in st.plugins_disabled["slow"]
    seen = set()
    for i in range(10, 40):
        new_flow(h, i)
        seen.add(backend_of(h))
    assert slow.calls == 10                  # never asked again
    assert len(seen) > 1                     # the hash decides
    assert h.core.plugins.decider == "selector hash"


def test_overruns_spread_wider_than_the_window_do_not_disable():
    clock = Clock()
    h = harness(Slow(clock, 6), after=3, clock=clock)
    for i in range(12):
        new_flow(h, i)
        clock.ns += OVERRUN_WINDOW_NS // 2 + 1   # two overruns at most in any window
    st = h.core.statistics()
    assert st.plugin_overruns == {"slow": 12} and st.plugins_disabled == {}


def test_disable_after_zero_only_counts():
    clock = Clock()
    h = harness(Slow(clock, 50), after=0, clock=clock)
    for i in range(30):
        new_flow(h, i)
        assert backend_of(h) == "20.0.0.3"
    st = h.core.statistics()
    assert st.plugin_overruns == {"slow": 30} and st.plugins_disabled == {}


def test_a_reload_changes_the_budget():
    clock = Clock()
    h = harness(Slow(clock, 6), budget=5, clock=clock)
    new_flow(h, 0)
    assert h.core.plugins.overruns["slow"] == 1
    h.core.apply_config(parse_config(CONF.format(budget=10, after=10, selector="hash"), "test.toml"))
    for i in range(1, 5):
        new_flow(h, i)
    assert h.core.plugins.overruns["slow"] == 1
    assert h.core.plugins.budget_ns == 10 * MS and h.core.plugins.disable_after == 10


def test_a_slow_selector_is_disabled_and_the_hash_takes_over_also_after_a_reload():
    clock = Clock()

    class SlowSelector:
        name = "slow-selector"

        @hookimpl
        def appliance_selectors(self):
            def pick(flow, backends):
                clock.ns += 20 * MS
                return 0
            return {"slowest": pick}

    h = harness(SlowSelector(), after=3, selector="slowest", clock=clock)
    for i in range(3):
        new_flow(h, i)
        assert backend_of(h) == "20.0.0.1"
    assert set(h.core.plugins.disabled) == {"slow-selector"}
    picked = set()
    for i in range(3, 30):
        new_flow(h, i)
        picked.add(backend_of(h))
    assert len(picked) > 1 and h.core.plugins.decider == "selector hash"
    # a configuration naming the selector is still valid
    h.core.apply_config(parse_config(CONF.format(budget=5, after=3, selector="slowest"), "test.toml"))
    new_flow(h, 31)
    assert h.last[1] == "translated"


def test_slow_notifications_and_timeouts_count_against_their_plugin():
    clock = Clock()

    class Listener:
        name = "listener"

        @hookimpl
        def appliance_session_created(self, session):
            clock.ns += 7 * MS

        @hookimpl
        def appliance_session_timeouts(self, flow, translation):
            clock.ns += 8 * MS
            return None

    h = harness(Listener(), after=4, clock=clock)
    new_flow(h, 0)
    new_flow(h, 1)
    assert h.core.plugins.overruns["listener"] == 4
    assert "listener" in h.core.plugins.disabled
    assert not h.core.plugins.wants_created
    new_flow(h, 2)
    assert h.core.plugins.overruns["listener"] == 4


def test_a_plugin_that_really_sleeps_is_disabled():
    class Sleeper:
        name = "sleeper"

        @hookimpl
        def appliance_select_backend(self, flow, translation, backends):
            time.sleep(0.003)
            return 0

    h = harness(Sleeper(), budget=1, after=3, clock=time.perf_counter_ns)
    for i in range(5):
        new_flow(h, i)
    assert h.core.plugins.overruns["sleeper"] == 3
    assert "sleeper" in h.core.plugins.disabled


class Preempted:
    """Its call takes 6 ms of wall time, 5 of them spent waiting for a CPU
    (the fake run-queue clock `waited` moves with it), or all 6 its own."""

    name = "preempted"

    def __init__(self, clock, waited):
        self.clock, self.waited, self.own_ms = clock, waited, 1

    @hookimpl
    def appliance_select_backend(self, flow, translation, backends):
        self.clock.ns += 6 * MS
        self.waited.ns += (6 - self.own_ms) * MS
        return 2


def test_time_spent_waiting_for_a_cpu_is_not_an_overrun():
    clock, waited = Clock(), Clock()
    plug = Preempted(clock, waited)
    plugins = Plugins(objects=[plug], entry_points=False, clock=clock, waited=waited)
    h = Harness(CONF.format(budget=5, after=3, selector="hash"), plugins=plugins)
    for i in range(10):
        plugins.mark()                       # as the runtime does per slice of new flows
        new_flow(h, i)
        assert backend_of(h) == "20.0.0.3"
    assert plugins.preempted == {"preempted": 10}
    assert plugins.overruns == {} and plugins.disabled == {}
    assert h.core.statistics().as_dict()["plugin_overruns_preempted"] == {"preempted": 10}
    plug.own_ms = 6                          # now the 6 ms are its own
    for i in range(10, 13):
        plugins.mark()
        new_flow(h, i)
    assert plugins.overruns == {"preempted": 3} and "preempted" in plugins.disabled


def test_the_run_queue_clock_blames_a_plugin_that_sleeps():
    """The real clock (runtime/_sched.py): sleeping is not waiting for a CPU."""
    from appliance.runtime._sched import run_queue_wait_ns

    class Sleeper:
        name = "sleeper"

        @hookimpl
        def appliance_select_backend(self, flow, translation, backends):
            time.sleep(0.01)
            return 0

    assert run_queue_wait_ns() > 0           # the kernel keeps schedstat here
    plugins = Plugins(objects=[Sleeper()], entry_points=False, waited=run_queue_wait_ns)
    h = Harness(CONF.format(budget=1, after=3, selector="hash"), plugins=plugins)
    for i in range(3):
        plugins.mark()
        new_flow(h, i)
    assert plugins.overruns == {"sleeper": 3} and plugins.preempted == {}


def test_the_built_ins_are_never_disabled():
    h = harness()
    h.core.plugins.disable(DEFAULTS_NAME, "test")
    h.core.plugins._overrun(DEFAULTS_NAME, "appliance_snat", 10**9, 10**12)
    assert h.core.plugins.disabled == {} and h.core.plugins.overruns == {}
    new_flow(h, 0)
    assert h.last[1] == "translated"


async def test_a_disabled_plugins_background_tasks_are_cancelled():
    ran = []

    class Busy:
        name = "busy"

        @hookimpl
        def appliance_background_tasks(self):
            async def loop():
                try:
                    await trio.sleep_forever()
                finally:
                    ran.append("cancelled")
            return [loop]

    plugins = Plugins(objects=[Busy()], entry_points=False, first_party=False)
    async with trio.open_nursery() as nursery:
        for task in plugins.background_tasks():
            nursery.start_soon(task)
        await trio.sleep(0.01)
        plugins.disable("busy", "test")
        with trio.fail_after(5):
            while not ran:
                await trio.sleep(0.001)
    assert ran == ["cancelled"]


# -- answers of any type ----------------------------------------------------


class Nasty:
    """An object whose comparisons, hash and repr all raise."""

    def __eq__(self, other):
        raise RuntimeError("eq")

    def __hash__(self):
        raise RuntimeError("hash")

    def __repr__(self):
        raise RuntimeError("repr")

    def __index__(self):
        raise RuntimeError("index")


class IntLike(int):
    pass


HOSTILE = [
    pytest.param(10**5000, id="huge-int"),
    pytest.param(-1, id="negative"),
    pytest.param(IntLike(1), id="int-subclass"),
    pytest.param(True, id="bool"),
    pytest.param(1.0, id="float"),
    pytest.param(math.nan, id="nan"),
    pytest.param("drop" * 250_000, id="huge-string"),
    pytest.param(list(range(100_000)), id="huge-list"),
    pytest.param({"index": 1}, id="dict"),
    pytest.param(b"\x01", id="bytes"),
    pytest.param(Nasty(), id="raising-dunders"),
]


@pytest.mark.parametrize("answer", HOSTILE)
def test_a_hostile_backend_answer_is_an_error_and_the_next_decides(answer):
    class Hostile:
        name = "hostile"

        @hookimpl
        def appliance_select_backend(self, flow, translation, backends):
            return answer

    h = harness(Hostile())
    new_flow(h, 0)
    assert backend_of(h) in BACKENDS
    assert h.core.statistics().plugin_errors == {"hostile": 1}
    assert h.core.plugins.decider == "selector hash"


@pytest.mark.parametrize("answer", HOSTILE + [
    pytest.param("2001:db8::1", id="wrong-family"),
    pytest.param("30.0.0.1/32", id="prefix"),
    pytest.param(0x1e000001, id="address-as-int"),
])
def test_a_hostile_snat_answer_is_an_error_and_the_built_in_snats(answer):
    class Hostile:
        name = "hostile"

        @hookimpl
        def appliance_snat(self, flow, snat):
            return answer

    h = harness(Hostile())
    h.send(udp("10.1.0.1", 5000, "9.9.9.9", 53), "tap0").expect(udp("30.0.0.1", 5000, "9.9.9.9", 53))
    assert h.core.statistics().plugin_errors == {"hostile": 1}


@pytest.mark.parametrize("make", [
    pytest.param(lambda: Timeouts(session=-1), id="negative"),
    pytest.param(lambda: Timeouts(session=math.inf), id="infinite"),
    pytest.param(lambda: Timeouts(tcp_established=10**400), id="huge"),
    pytest.param(lambda: Timeouts(session="30"), id="text"),
    pytest.param(lambda: Timeouts(tcp_closing=math.nan), id="nan"),
    pytest.param(lambda: {"session": 2}, id="dict"),
    pytest.param(lambda: type("T", (Timeouts,), {})(session=2), id="subclass"),
])
def test_hostile_timeouts_are_contained_and_the_configured_ones_apply(make):
    class Hostile:
        name = "hostile"

        @hookimpl
        def appliance_session_timeouts(self, flow, translation):
            return make()

    h = harness(Hostile())
    h.send(udp("10.1.0.1", 5000, "9.9.9.9", 53), "tap0")
    assert [s.expires - s.last_seen for s in h.core.sessions()] == [30.0]
    assert h.core.statistics().plugin_errors == {"hostile": 1}


def test_hostile_statistics_are_bounded_and_kept_to_finite_numbers():
    class Noisy:
        name = "noisy"

        @hookimpl
        def appliance_statistics(self):
            figures = {f"f{i}": i for i in range(10_000)}
            figures.update({"x" * 1000: 1, "nan": math.nan, "inf": math.inf, 5: 1, "text": "1"})
            return figures

    class Broken:
        name = "broken"

        @hookimpl
        def appliance_statistics(self):
            return {Nasty(): 1}

    h = harness(Noisy(), Broken())
    figures = h.core.statistics().plugin_figures
    assert len(figures["noisy"]) == 64 and all(len(k) <= 64 for k in figures["noisy"])
    assert all(isinstance(v, int) for v in figures["noisy"].values())
    assert "broken" not in figures and h.core.plugins.errors["broken"] == 1


# -- arguments a plugin tries to change ------------------------------------


MUTATIONS = [
    pytest.param(lambda f, t, b: setattr(f, "hash", "x"), id="flow.hash"),
    pytest.param(lambda f, t, b: setattr(f, "dport", 1), id="flow.dport"),
    pytest.param(lambda f, t, b: setattr(b, "eligible", (7,)), id="backends.eligible"),
    pytest.param(lambda f, t, b: setattr(b, "eligible_set", frozenset({7})), id="backends.eligible_set"),
    pytest.param(lambda f, t, b: b.sessions.__setitem__(0, 99), id="backends.sessions[0]"),
    pytest.param(lambda f, t, b: b.weights.__setitem__(0, 0), id="backends.weights[0]"),
    pytest.param(lambda f, t, b: setattr(b, "translation", None), id="backends.translation"),
    pytest.param(lambda f, t, b: setattr(t, "backends", ()), id="translation.backends"),
    pytest.param(lambda f, t, b: t.backends[0].labels.__setitem__("zone", "x"), id="backend.labels"),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_a_plugin_changing_its_arguments_raises_in_the_plugin_and_nothing_changes(mutate):
    seen = []

    class Mutator:
        name = "mutator"

        @hookimpl
        def appliance_select_backend(self, flow, translation, backends):
            mutate(flow, translation, backends)
            return 1

    class After:
        name = "after"

        @hookimpl
        def appliance_select_backend(self, flow, translation, backends):
            seen.append((flow.hash, flow.dport, backends.eligible, backends.sessions, backends.weights,
                         len(translation.backends)))
            return None

    # listed first: asked first
    h = harness(Mutator(), After())
    new_flow(h, 0)
    hash0 = seen[0][0]
    assert seen == [(hash0, 80, (0, 1, 2), (0, 0, 0), (1, 1, 1), 3)]
    assert isinstance(hash0, int)
    assert backend_of(h) == f"20.0.0.{hash0 % 3 + 1}"     # the built-in hash, unchanged
    assert h.core.statistics().plugin_errors == {"mutator": 1}
    new_flow(h, 1)                           # the core's own figures moved, and only they
    assert seen[1][2] == (0, 1, 2) and sum(seen[1][3]) == 1 and seen[1][4:] == ((1, 1, 1), 3)
    assert h.core.statistics().plugin_errors == {"mutator": 2}


def test_a_plugin_raising_in_configure_is_counted_and_the_configuration_applies():
    configs = []

    class Picky:
        name = "picky"

        @hookimpl
        def appliance_configure(self, config):
            raise ValueError("I do not like this configuration")

    class Listener:
        name = "listener"

        @hookimpl
        def appliance_configure(self, config):
            configs.append(config.plugin_budget_ms)

    h = harness(Picky(), Listener())           # raised at start
    assert h.core.plugins.errors["picky"] == 1 and configs == [5.0]
    h.core.apply_config(parse_config(CONF.format(budget=7, after=10, selector="hash"), "test.toml"))
    assert h.core.plugins.errors["picky"] == 2 and configs == [5.0, 7.0]
    assert h.core.plugins.budget_ns == 7 * MS
    new_flow(h, 0)
    assert h.last[1] == "translated"


def test_a_slow_configure_builds_tables_and_is_not_an_overrun():
    """appliance_configure runs once per load and may build tables (Maglev's
    take tens of ms): its time is the reload's, not held to the budget."""
    clock = Clock()

    class Builder:
        name = "builder"
        loads = 0

        @hookimpl
        def appliance_configure(self, config):
            Builder.loads += 1
            clock.ns += 500 * MS

    h = harness(Builder(), after=1, clock=clock)
    for _ in range(3):
        h.core.apply_config(parse_config(CONF.format(budget=5, after=1, selector="hash"), "test.toml"))
    assert Builder.loads == 4
    assert h.core.plugins.overruns == {} and h.core.plugins.disabled == {}


def test_a_configuration_cannot_be_changed_by_a_plugin():
    class Mutator:
        name = "mutator"

        @hookimpl
        def appliance_configure(self, config, backends):
            backends.clear()
            config.translations.clear()

    h = harness(Mutator())
    assert h.core.plugins.errors["mutator"] == 1
    assert len(h.core.config.translations) == 1 and set(h.core.backends) == {"web"}


def test_the_run_queue_clock_counts_time_without_a_cpu():
    """Two busy processes on one CPU: this thread's run-queue wait grows by
    a good share of the time it spent wanting the CPU."""
    import os
    import subprocess
    import sys

    from appliance.runtime._sched import run_queue_wait_ns

    cpu = min(os.sched_getaffinity(0))
    old = os.sched_getaffinity(0)
    rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(rival.pid, {cpu})
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.05)
        w0, t0 = run_queue_wait_ns(), time.perf_counter_ns()
        while time.perf_counter_ns() - t0 < 200 * MS:
            pass
        waited = run_queue_wait_ns() - w0
    finally:
        os.sched_setaffinity(0, old)
        rival.kill()
        rival.wait()
    assert waited > 40 * MS, waited          # about half of the 200 ms, shared fairly
