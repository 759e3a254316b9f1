"""The outbound guard (easyfaas/outbound.py): what the pod connects to on a caller's behalf.

Each refused kind of destination is tried, by address and by name, and the remote code loader
(funclet/code_source.py) is aimed at a real server on loopback: refused while the guard is on
(the server sees no request), fetched once ``--outbound-allow`` opens exactly that address and port.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from easyfaas.errors import OutboundRefused
from easyfaas.models import CodeLocation
from easyfaas.outbound import OutboundGuard, parse_allow
from funclet.code_source import load_code
from easyfaas.pod_names import free_port

PUBLIC = "192.0.2.10"  # TEST-NET-1: never connected to here, only checked


def guard(allow: str = "", own: tuple[str, ...] = ("10.9.8.7",)) -> OutboundGuard:
    return OutboundGuard(enabled=True, allow=parse_allow(allow), own_addresses={ipaddress.ip_address(a) for a in own})


@pytest.mark.parametrize("address,why", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "not a unicast"), ("::", "not a unicast"), ("224.0.0.1", "not a unicast"),
    ("10.9.8.7", "address of this host"),
])
def test_refused_destinations(address: str, why: str) -> None:
    g = guard()
    assert why in (g.refusal(address, 80) or "")
    with pytest.raises(OutboundRefused) as exc:
        g.check_address(address, 80, "callback URL")
    assert exc.value.status == 403 and "--outbound-allow" in exc.value.cause


def test_other_destinations_pass_and_a_disabled_guard_passes_everything() -> None:
    assert guard().refusal(PUBLIC, 443) is None
    assert OutboundGuard(enabled=False).refusal("127.0.0.1", 8001) is None


def test_the_hosts_own_addresses_are_found() -> None:
    g = OutboundGuard(enabled=True)
    assert ipaddress.ip_address("127.0.0.1") in g.own_addresses


@pytest.mark.parametrize("allow,address,port,passes", [
    ("127.0.0.1:9000", "127.0.0.1", 9000, True),
    ("127.0.0.1:9000", "127.0.0.1", 9001, False),      # the port is part of the rule
    ("127.0.0.0/8", "127.4.4.4", 22, True),
    ("[::1]:8443", "::1", 8443, True),
    ("[::1]:8443", "127.0.0.1", 8443, False),
    ("10.0.0.0/8:1883", "10.9.8.7", 1883, True),
    ("10.0.0.0/8:1883", "10.9.8.7", 80, False),
])
def test_outbound_allow_opens_exactly_what_it_names(allow: str, address: str, port: int, passes: bool) -> None:
    assert (guard(allow).refusal(address, port) is None) is passes


@pytest.mark.parametrize("text", ["nonsense", "10.0.0.0/33", "1.2.3.4:99999", "[::1"])
def test_bad_allow_entries_are_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_allow(text)


async def test_names_are_resolved_and_every_address_checked() -> None:
    g = guard()
    with pytest.raises(OutboundRefused, match="loopback"):
        await g.check_url("http://localhost:8001/v1/functions", "callback URL")
    with pytest.raises(OutboundRefused, match="http or https"):
        await g.check_url("file:///etc/passwd")
    with pytest.raises(OutboundRefused, match="does not resolve"):
        await g.check_url("http://no-such-host.invalid/")
    assert await g.check_url(f"https://{PUBLIC}/hook") == (PUBLIC, 443, [PUBLIC])


@pytest.fixture
async def code_server() -> AsyncIterator[tuple[int, list[str]]]:
    hits: list[str] = []

    async def code(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/redirect":
            raise web.HTTPFound("/code.zip")
        return web.Response(body=b"PK-zip-bytes")

    app = web.Application()
    app.router.add_get("/{name}", code)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, hits
    finally:
        await runner.cleanup()


async def test_remote_code_on_loopback_is_refused_unless_allowed(code_server: tuple[int, list[str]]) -> None:
    port, hits = code_server
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(OutboundRefused):
            await load_code(CodeLocation(Location=f"http://{host}:{port}/code.zip"), max_size=1 << 20, guard=guard())
    assert hits == []  # nothing reached the server
    opened = guard(f"127.0.0.1:{port}")
    data = await load_code(CodeLocation(Location=f"http://127.0.0.1:{port}/code.zip"), max_size=1 << 20,
                           guard=opened)
    assert data == b"PK-zip-bytes" and hits == ["/code.zip"]
    # A redirect is not followed (it would skip the check): the download fails instead.
    with pytest.raises(Exception, match="HTTP 302"):
        await load_code(CodeLocation(Location=f"http://127.0.0.1:{port}/redirect"), max_size=1 << 20, guard=opened)
    assert hits == ["/code.zip", "/redirect"]
    # Without a guard (keys off), as before.
    assert await load_code(CodeLocation(Location=f"http://127.0.0.1:{port}/code.zip"), max_size=1 << 20) == \
        b"PK-zip-bytes"


def test_outbound_allow_is_an_option_of_the_funclet_and_the_daemons(tmp_path: Path) -> None:
    from easyfaas.config import parse_options
    from funclet.options import OPTIONS as FUNCLET
    from stubs.daemon import OPTIONS as STUBS

    env = {"EASYFAAS_OUTBOUND_ALLOW": "127.0.0.1:9000"}
    assert parse_options("funclet", FUNCLET, ["--outbound-guard", "true"], env).outbound_allow == "127.0.0.1:9000"
    assert parse_options("stubs", STUBS, [], env).outbound_allow == "127.0.0.1:9000"


async def test_mqtt_brokers_on_loopback_or_the_host_are_refused_unless_allowed() -> None:
    from eventsources.mqtt import MqttSource
    from eventsources.source import SourceTrigger, TriggerChange

    def trigger(tid: str, broker: str) -> SourceTrigger:
        return SourceTrigger(trigger_id=tid, type="mqtt", function_brn="brn:cloud:faas:bj:x:function:f:$LATEST",
                             uid="acct", config={"Broker": broker, "Topic": "t/#"})

    source = MqttSource(intake=None, guard=guard())  # type: ignore[arg-type]  # refused before any intake
    for tid, broker in (("t1", "mqtt://127.0.0.1:1883"), ("t2", "mqtts://localhost:8883"),
                        ("t3", "mqtt://169.254.1.1:1883"), ("t4", "mqtt://10.9.8.7:1883")):
        await source.apply(TriggerChange.ADDED, trigger(tid, broker))
        status = source.status(tid)
        assert status is not None and status["State"] == "error" and "--outbound-allow" in status["LastError"], \
            (broker, status)
    assert not source._subs  # nothing connected
    await source.stop()


async def test_an_allowed_mqtt_broker_is_connected_to_by_its_checked_address() -> None:
    from eventsources.mqtt import MqttSource
    from eventsources.source import SourceTrigger, TriggerChange

    port = free_port()  # nothing listens: the subscription keeps trying, which is all this needs
    source = MqttSource(intake=None, guard=guard(f"127.0.0.1:{port},[::1]:{port}"))  # type: ignore[arg-type]
    await source.apply(TriggerChange.ADDED, SourceTrigger(
        trigger_id="ok", type="mqtt", function_brn="brn:cloud:faas:bj:x:function:f:$LATEST", uid="acct",
        config={"Broker": f"mqtt://localhost:{port}", "Topic": "t/#"}))
    try:
        assert "ok" in source._subs and source._subs["ok"].config.host in ("127.0.0.1", "::1")
    finally:
        await source.stop()
