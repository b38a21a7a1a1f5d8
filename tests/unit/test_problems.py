"""Every named exception either has its problem document in daemon/problems.py's one table, or is listed
there as never leaving a handler; and a handler that lets a mapped one through answers with that document."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import daemon
import replication
from daemon.problems import NOT_FROM_HANDLERS, PROBLEMS, problem_for, problem_middleware
from daemon.store.errors import ChecksumMismatch, NotWritable
from replication.errors import (
    ContainmentError,
    FencedError,
    HotstandbyError,
)


def _import_everything() -> None:
    for package in (daemon, replication):
        for found in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not found.name.endswith(".__main__"):  # runs the CLI
                importlib.import_module(found.name)


def _subclasses(cls: type[HotstandbyError]) -> Iterator[type[HotstandbyError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _named() -> list[type[HotstandbyError]]:
    _import_everything()
    ours = {
        c for c in _subclasses(HotstandbyError) if c.__module__.split(".")[0] in ("daemon", "replication")
    }
    return sorted(ours, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _instance(cls: type[HotstandbyError]) -> HotstandbyError:
    """One of `cls`, whatever its constructor wants."""
    special: dict[type[HotstandbyError], HotstandbyError] = {
        FencedError: FencedError("boom", peer_epoch=7),
        ContainmentError: ContainmentError("boom", symlink_at="a/b"),
        ChecksumMismatch: ChecksumMismatch("a/b:1@x", "x", "y"),
    }
    return special[cls] if cls in special else cls("boom")


def test_every_named_exception_is_mapped_or_said_to_stay_inside() -> None:
    named = _named()
    assert len(named) > 30  # the walk found the modules
    neither = [
        f"{c.__module__}.{c.__qualname__}"
        for c in named
        if problem_for(c.__new__(c)) is None and f"{c.__module__}.{c.__qualname__}" not in NOT_FROM_HANDLERS
    ]
    assert not neither, f"add these to daemon/problems.py (PROBLEMS or NOT_FROM_HANDLERS): {neither}"
    names = {f"{c.__module__}.{c.__qualname__}" for c in named}
    assert set(NOT_FROM_HANDLERS) <= names, "NOT_FROM_HANDLERS names a class that no longer exists"
    assert not {c for c in PROBLEMS if f"{c.__module__}.{c.__qualname__}" in NOT_FROM_HANDLERS}


@pytest.mark.parametrize("cls", sorted(PROBLEMS, key=lambda c: c.__qualname__), ids=lambda c: c.__qualname__)
async def test_a_mapped_exception_becomes_its_problem_document(cls: type[HotstandbyError]) -> None:
    exc = _instance(cls)

    async def handler(_request: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/x")
        body = await response.json(content_type=None)
    expected = PROBLEMS[cls]
    assert response.status == expected.status
    assert response.content_type == "application/problem+json"
    assert body["title"] == expected.title and body["status"] == expected.status
    assert body["detail"] == str(exc)


async def test_the_most_specific_row_wins_and_fields_travel() -> None:
    assert problem_for(ChecksumMismatch("a/b:1@x", "x", "y")) == PROBLEMS[ChecksumMismatch]
    assert problem_for(NotWritable("no")) == PROBLEMS[NotWritable]

    async def handler(_request: web.Request) -> web.Response:
        raise FencedError("fenced", peer_epoch=9)

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as client:
        body = await (await client.get("/x")).json(content_type=None)
    assert body["status"] == 409 and body["peer_epoch"] == 9
