"""The drill's local commands (daemon/drill/stoppers.py): an interruption stays an interruption."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemon.drill import stoppers


class _EndedAsCancelled:
    """A command that has just ended by itself when its drill is cancelled: kill() finds no process."""

    returncode = 0
    killed = False

    async def communicate(self) -> tuple[bytes, bytes]:
        raise asyncio.CancelledError

    def kill(self) -> None:
        self.killed = True
        raise ProcessLookupError

    async def wait(self) -> int:
        return 0


def test_a_command_that_ended_as_the_drill_was_cancelled_still_reports_the_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by make test: SIGTERM to a drill during its stop command failed the step with
    ProcessLookupError instead of reporting the drill interrupted."""
    proc = _EndedAsCancelled()

    async def spawned(*_args: Any, **_kwargs: Any) -> _EndedAsCancelled:
        return proc

    monkeypatch.setattr(stoppers.asyncio, "create_subprocess_shell", spawned)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(stoppers.run_local("stop.sh master", timeout=5))
    assert proc.killed
