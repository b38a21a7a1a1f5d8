"""A demotion that fails half-way (a full disk while keeping divergent writes) is finished later.

Found by the chaos run (tests/chaos): a leader demoted while its STATE_PATH disk was full stayed a
replica that answered 409 "not a replica" to its new leader forever, so with SYNC_MODE=sync no
write was accepted again until it was restarted, even after the disk had room again.
"""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.ha_loop import ControlLoop
from daemon.node import Node
from daemon.roles import RoleState
from replication import statefile


async def test_a_demotion_that_failed_on_a_full_disk_is_finished_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config.from_env(
        {
            "STORAGE_PATH": str(tmp_path / "storage"),
            "STATE_PATH": str(tmp_path / "state"),
            "ROLE": "master",
            "SERVER_HOST": "127.0.0.1",
        }
    )
    node = Node(config)
    node.prepare_storage()
    control = ControlLoop(node, backend=None)
    await node.become_leader(1)
    node.role_state = RoleState(role="leader", epoch=1)
    node.tracker.replicated_until = time.time()
    disk_full = True
    save = statefile.save

    def save_unless_full(path: str, data: dict[str, Any]) -> None:
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        save(path, data)

    monkeypatch.setattr(statefile, "save", save_unless_full)
    try:
        node.note_peer_epoch(2)  # a new leader with a higher epoch: demote
        with pytest.raises(OSError):
            await control.tick()
        assert node.role == "slave" and not node.accepts_writes()
        assert not node.receiver.accepting, "the demotion could not finish on a full disk"
        with pytest.raises(OSError):
            await control.tick()  # still full: tried again, and still not finished
        assert not node.receiver.accepting
        disk_full = False
        await control.tick()
        assert node.receiver.accepting, "the replica must accept its leader's batches once there is room"
        assert node.identity.epoch == 2
    finally:
        await node.stop_leading()
