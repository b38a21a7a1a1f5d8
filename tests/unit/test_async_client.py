"""The client on the event loop (daemon/client.py AsyncClient), which the drill, the peer pollers and the
status page share: the key on each request to the nodes, one error type for no answer, with why
(refused, untrusted, unreachable), and a problem document read once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from daemon.client import AsyncClient, Refused, Unreachable
from daemon.limits import AnswerTooLarge
from daemon.peers import Poller

KEY = "k" * 16


async def _status(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {KEY}":
        return web.json_response({"title": "unauthorized", "status": 401}, status=401)
    return web.json_response({"role": "leader", "writable": True, "epoch": 4})


async def _refuse(request: web.Request) -> web.Response:
    problem = {"type": "about:blank", "title": "promote refused", "status": 409, "detail": "behind"}
    return web.json_response(problem, status=409, content_type="application/problem+json")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)  # longer than any client's bound here; the fixture cuts it short
    return web.json_response({})


async def _big(request: web.Request) -> web.Response:
    return web.Response(body=b"[" + b"0," * 1000 + b"0]", content_type="application/json")


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"got": await request.json(), "type": request.content_type})


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/internal/status", _status)
    app.router.add_post("/internal/promote", _refuse)
    app.router.add_get("/slow", _slow)
    app.router.add_get("/big", _big)
    app.router.add_post("/echo", _echo)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_key_goes_with_each_request_and_a_problem_document_is_one_refused_error(url: str) -> None:
    async with AsyncClient(None, KEY, timeout=5) as http:
        answer = await http.send("GET", url + "/internal/status")
        assert answer.expect() == {"role": "leader", "writable": True, "epoch": 4}
        echoed = await http.send("POST", url + "/echo", payload={"paths": ["a"]})
        assert echoed.json() == {"got": {"paths": ["a"]}, "type": "application/json"}
        with pytest.raises(Refused) as refused:
            (await http.send("POST", url + "/internal/promote")).expect()
        assert (refused.value.status, refused.value.title, refused.value.detail) == (
            409,
            "promote refused",
            "behind",
        )
    async with AsyncClient(None, timeout=5) as keyless:
        assert (await keyless.send("GET", url + "/internal/status")).status == 401


async def test_no_answer_is_unreachable_with_why(url: str) -> None:
    async with AsyncClient(None, KEY, timeout=5) as http:
        with pytest.raises(Unreachable) as refused:
            await http.send("GET", f"http://127.0.0.1:{_closed_port()}/internal/status")
        assert refused.value.failure == "refused"
        with pytest.raises(Unreachable, match="timed out") as slow:
            await http.send("GET", url + "/slow", timeout=0.2)
        assert slow.value.failure == "unreachable"
        with pytest.raises(AnswerTooLarge):
            await http.send("GET", url + "/big", limit=100)
        assert (await http.send("GET", url + "/big", limit=5000)).json() == {"value": [0] * 1001}


async def test_a_poller_keeps_its_failure_labels(url: str) -> None:
    """What the control loop reads of a peer: refused (certain), untrusted (our key refused), http."""
    cases = [
        (Poller(f"http://127.0.0.1:{_closed_port()}/internal/status", 1.0, 2.0, key=KEY), "refused"),
        (Poller(url + "/internal/status", 1.0, 2.0), "untrusted"),
        (Poller(url + "/internal/promote", 1.0, 2.0, key=KEY), "http"),
        (Poller(url + "/slow", 1.0, 0.2, key=KEY), "unreachable"),
    ]
    for poller, failure in cases:
        await _one_poll(poller)
        assert (poller.ok, poller.failure) == (False, failure), poller.error
    good = Poller(url + "/internal/status", 1.0, 2.0, key=KEY)
    await _one_poll(good)
    assert good.ok and good.failure is None and good.peer_view(5.0).epoch == 4


async def _one_poll(poller: Poller) -> None:
    """The poller as the node runs it (its own client, reused), stopped after its first answer."""
    answered = asyncio.Event()
    poll = poller._poll

    async def poll_and_tell(client: AsyncClient) -> None:
        await poll(client)
        answered.set()

    poller._poll = poll_and_tell  # type: ignore[method-assign]
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.wait_for(answered.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
