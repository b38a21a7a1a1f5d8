"""Hostile clients: bodies over the limit get a 413 problem, slow clients are cut off in time.

One real slave (it serves the replication link, the streamed route) and one master (it takes
PUT /internal/files), both with 2-second request head and body timeouts.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import SERVER_KEY, Node, http, wait_until
from tests.support.ha import primary

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 2.0
MARGIN = 4.0
"""Generous: the CI machine has 2 cores shared with other tests."""
SHORT = {"REQUEST_HEADER_TIMEOUT": str(TIMEOUT), "REQUEST_BODY_TIMEOUT": str(TIMEOUT)}
AUTH = f"Authorization: Bearer {SERVER_KEY}\r\n"


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Node]:
    node = Node("master", "master", tmp_path / "master", extra_env={**SHORT, "MARKETPLACE_URL": ""})
    try:
        node.start()
        # A write refused early (not yet leading) is answered before its body is read: no body timeout.
        wait_until(lambda: primary(node), 15, message="the master to lead")
        yield node
    finally:
        node.stop()


@pytest.fixture
def slave(tmp_path: Path) -> Iterator[Node]:
    node = Node("slave", "slave", tmp_path / "slave", extra_env={**SHORT, "MARKETPLACE_URL": ""})
    try:
        node.start()
        yield node
    finally:
        node.stop()


def connect(node: Node) -> socket.socket:
    sock = socket.create_connection((node.host, node.port), timeout=30)
    sock.settimeout(0.1)
    return sock


def closed(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset); drains any answer."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def trickle(sock: socket.socket, data: bytes, interval: float, until: float) -> float:
    """Send `data` a byte at a time every `interval` until cut off or `until`; the moment of the cut."""
    for byte in data:
        if time.monotonic() >= until:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic()
        end = time.monotonic() + interval
        while time.monotonic() < end:
            if closed(sock):
                return time.monotonic()
    while time.monotonic() < until:
        if closed(sock):
            return time.monotonic()
    raise AssertionError("the server kept the connection open")


def test_a_body_over_the_limit_is_a_413_problem(master: Node) -> None:
    big = b"x" * (32 * 1024 * 1024 + 1)
    headers = {"Authorization": f"Bearer {SERVER_KEY}"}
    status, got, body = http("PUT", f"{master.url}/internal/files/big.bin", body=big, headers=headers)
    assert status == 413, body[:300]
    assert got["Content-Type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["status"] == 413 and "Traceback" not in body.decode()
    assert not (master.storage / "big.bin").exists()
    status, _h, body = http(
        "POST", f"{master.url}/internal/events", body=b"{" + b" " * 70_000 + b"}", headers=headers
    )
    assert status == 413 and json.loads(body)["title"] == "event too large"
    assert master.is_up()


def test_a_client_trickling_its_request_head_is_cut_off(master: Node) -> None:
    sock = connect(master)
    started = time.monotonic()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    cut = trickle(sock, head, 0.1, until=started + TIMEOUT + MARGIN)
    sock.close()
    assert TIMEOUT * 0.75 <= cut - started <= TIMEOUT + MARGIN
    assert http("GET", f"{master.url}/health")[0] == 200


def test_an_idle_connection_is_closed(master: Node) -> None:
    sock = connect(master)
    started = time.monotonic()
    deadline = started + TIMEOUT + MARGIN
    while not closed(sock):
        assert time.monotonic() < deadline, "an idle connection was kept"
    sock.close()
    assert time.monotonic() - started >= TIMEOUT * 0.75


def test_a_client_trickling_a_body_is_cut_off_and_nothing_is_written(master: Node) -> None:
    sock = connect(master)
    head = f"PUT /internal/files/slow.txt HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 1000\r\n\r\n"
    sock.sendall(head.encode())
    started = time.monotonic()
    cut = trickle(sock, b"y" * 1000, 0.05, until=started + TIMEOUT + MARGIN)
    sock.close()
    assert TIMEOUT * 0.75 <= cut - started <= TIMEOUT + MARGIN
    assert not (master.storage / "slow.txt").exists()
    assert "slow_client_cut_off" in master.log_path.read_text()
    assert master.is_up()


def test_a_streamed_body_may_be_slow_while_it_moves_but_not_stall(slave: Node) -> None:
    """The replication stream is long by nature: it is cut only when no byte came for the timeout."""
    header = json.dumps({"op": "put", "seq": 1, "path": "slow.bin", "mode": 420, "mtime_ns": 0, "size": 100})
    frame = struct.pack(">I", len(header)) + header.encode()
    sock = connect(slave)
    head = (
        f"POST /internal/replication/batch HTTP/1.1\r\nHost: x\r\n{AUTH}"
        "X-Hotstandby-Journal: j1\r\nX-Hotstandby-Epoch: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    started = time.monotonic()
    moving_for = 2.5 * TIMEOUT
    for byte in frame:  # one byte every TIMEOUT/5 for longer than the timeout: still accepted
        if time.monotonic() - started > moving_for:
            break
        sock.sendall(b"1\r\n" + bytes([byte]) + b"\r\n")
        end = time.monotonic() + TIMEOUT / 5
        while time.monotonic() < end:
            assert not closed(sock), f"cut after {time.monotonic() - started:.1f}s while bytes kept coming"
    stalled = time.monotonic()
    while not closed(sock):  # now silent: cut within about two timeouts (checked every TIMEOUT)
        assert time.monotonic() - stalled < 2 * TIMEOUT + MARGIN, "a stalled stream was kept"
    sock.close()
    assert time.monotonic() - stalled >= TIMEOUT * 0.75
    assert not (slave.storage / "slow.bin").exists()
    assert slave.is_up()
