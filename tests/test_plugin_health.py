"""The first-party health-check plugin (plugins/health.py): real probes to
real servers on loopback, driving backend state in a NAT core (the kit)."""

import socket

import trio

from appliance.testing import Nat, tcp, udp
from appliance_plugins.health import HealthChecks, probe


async def http_server(nursery, status=b"200 OK"):
    """An HTTP server on 127.0.0.1: (port, cancel scope that stops it)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handle(stream):
        async with stream:
            try:
                await stream.receive_some(4096)
                await stream.send_all(b"HTTP/1.0 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            except trio.BrokenResourceError:
                pass

    scope = trio.CancelScope()

    async def serve():
        with scope:
            await trio.serve_listeners(handle, listeners)

    nursery.start_soon(serve)
    return port, scope


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()    # nothing listens there now: connect is refused
    return port


async def test_probe_answers_for_tcp_and_http():
    async with trio.open_nursery() as n:
        good, _ = await http_server(n)
        bad, _ = await http_server(n, b"503 Service Unavailable")
        assert await probe("127.0.0.1", good, None, 1) == ""
        assert await probe("127.0.0.1", good, "/healthz", 1) == ""
        assert await probe("127.0.0.1", bad, "/healthz", 1) == "http: status 503"
        assert (await probe("127.0.0.1", free_port(), None, 1)).startswith("connect:")
        n.cancel_scope.cancel()


CONF = """
[[translation]]
name = "api"
proto = "{proto}"
vip = "30.0.0.2"
port = 80
health = {{ interval = 0.1, timeout = 0.5, fall = 2, rise = 2, http = "/healthz", port = {hport} }}
backends = [{{ to = "->127.0.0.1 {a}", name = "a" }}, {{ to = "->127.0.0.2 {b}", name = "b" }}]
"""


async def wait_for(cond, seconds=5.0):
    with trio.fail_after(seconds):
        while not cond():
            await trio.sleep(0.02)


async def test_a_failing_backend_goes_down_takes_no_flows_and_comes_back():
    async with trio.open_nursery() as n:
        a_port, _ = await http_server(n)
        b_port, b_scope = await http_server(n)
        # one health port per backend would need two servers per address; here
        # each backend's own port is probed (health.port left out)
        text = CONF.format(proto="udp", hport=0, a=a_port, b=b_port).replace(", port = 0", "")
        text = text.replace("127.0.0.2", "127.0.0.1")
        health = HealthChecks()
        health.name = "health-under-test"
        nat = Nat(text, plugins=[health])
        s = nat.backends("api")
        n.start_soon(health.run)
        for i in range(40):
            nat.send(udp(f"10.0.0.{i + 1}", 1000, "30.0.0.2", 80))
        assert s.sessions[1] > 0
        b_scope.cancel()                       # the server of backend b dies
        await wait_for(lambda: s.state(1) == "down")
        assert s.set_by(1) == "health" and s.state(0) == "active"
        nat.tick()
        assert s.sessions[1] == 0              # default drain: its UDP sessions removed
        for i in range(40):
            nat.send(udp(f"10.0.1.{i + 1}", 1000, "30.0.0.2", 80))
            assert nat.backend() == "a"
        # b's server is back on its port: rise probes later it takes flows again
        listeners = await trio.open_tcp_listeners(b_port, host="127.0.0.1")

        async def handle(stream):
            async with stream:
                await stream.receive_some(4096)
                await stream.send_all(b"HTTP/1.0 204 No Content\r\n\r\n")

        n.start_soon(trio.serve_listeners, handle, listeners)
        await wait_for(lambda: s.state(1) == "active")
        figures = nat.plugins.figures()["health-under-test"]
        assert figures["set_down"] == 1 and figures["set_up"] == 1 and figures["down_now"] == 0
        n.cancel_scope.cancel()


async def test_a_configured_down_backend_is_not_set_up_by_probes():
    async with trio.open_nursery() as n:
        port, _ = await http_server(n)
        text = CONF.format(proto="tcp", hport=port, a=port, b=port).replace(
            'name = "b" }', 'name = "b", state = "down" }')
        health = HealthChecks()
        health.name = "health-under-test"
        nat = Nat(text, plugins=[health])
        n.start_soon(health.run)
        await trio.sleep(0.6)
        s = nat.backends("api")
        assert health.probes >= 4 and s.state(1) == "down" and s.state(0) == "active"
        assert health.ups == health.downs == 0 and s.set_by(1) == ""    # the probes never touched it
        nat.send(tcp("10.0.0.1", 1000, "30.0.0.2", 80))
        assert nat.backend() == "a"
        n.cancel_scope.cancel()


async def test_failures_that_began_while_configured_down_count_once_it_is_up():
    async with trio.open_nursery() as n:
        port, _ = await http_server(n)
        dead = free_port()
        text = CONF.format(proto="tcp", hport=0, a=port, b=dead).replace(", port = 0", "").replace(
            "127.0.0.2", "127.0.0.1")
        health = HealthChecks()
        health.name = "health-under-test"
        nat = Nat(text.replace('name = "b" }', 'name = "b", state = "down" }'), plugins=[health])
        n.start_soon(health.run)
        await trio.sleep(0.6)             # b fails its probes while configured down
        nat.reload(text)                  # the operator sets it active again; it is still dead
        s = nat.backends("api")
        await wait_for(lambda: s.state(1) == "down" and s.set_by(1) == "health", 3)
        n.cancel_scope.cancel()


async def test_a_probe_reset_mid_answer_is_a_failure_not_the_end_of_the_checks():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def rude(stream):
        await stream.receive_some(4096)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        stream.socket.close()             # RST instead of an answer

    async with trio.open_nursery() as n:
        n.start_soon(trio.serve_listeners, rude, listeners)
        good, _ = await http_server(n)
        text = CONF.format(proto="tcp", hport=0, a=good, b=port).replace(", port = 0", "").replace(
            "127.0.0.2", "127.0.0.1")
        health = HealthChecks()
        health.name = "health-under-test"
        nat = Nat(text, plugins=[health])
        n.start_soon(health.run)
        s = nat.backends("api")
        await wait_for(lambda: s.state(1) == "down", 3)
        before = health.probes
        await trio.sleep(0.3)
        assert health.probes > before and s.state(0) == "active"   # still probing everyone
        n.cancel_scope.cancel()


async def test_removing_the_checks_gives_back_what_they_set_down():
    async with trio.open_nursery() as n:
        good, _ = await http_server(n)
        text = CONF.format(proto="tcp", hport=0, a=good, b=free_port()).replace(", port = 0", "").replace(
            "127.0.0.2", "127.0.0.1")
        health = HealthChecks()
        health.name = "health-under-test"
        nat = Nat(text, plugins=[health])
        n.start_soon(health.run)
        await wait_for(lambda: nat.backends("api").state(1) == "down", 3)
        nat.reload("\n".join(line for line in text.splitlines() if not line.startswith("health")))
        assert nat.backends("api").state(1) == "active"
        n.cancel_scope.cancel()
