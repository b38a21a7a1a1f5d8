"""kill -9 of the standby in the middle of a group-committed batch (replication/group_commit.py).

The standby writes every file of a batch to a temp file and renames them into place in groups
as the batch goes, the last group just before its acknowledgement. Killed in between, it must
have lost nothing it acknowledged, and no file may be visible that is not complete.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Pair, make_pair, wait_until
from tests.support.ha import FAST, primary

pytestmark = pytest.mark.timeout(150)
FILES = 240
SIZE = 64 << 10
"""240 x 64 KiB: one batch (under the sender's 32 MiB and 2,000-operation limits). Past 8 MiB
(group_commit.HAND_OFF_BYTES) its first files are committed by a thread while the rest arrive: a kill
can find some renamed into place (complete, not acknowledged) and the others staged."""


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    started = make_pair(tmp_path, master_env=dict(FAST), slave_env=dict(FAST))
    try:
        started.start()
        wait_until(lambda: primary(started.master), 10, message="the master to lead")
        yield started
    finally:
        if started.master.proc is not None and started.master.proc.poll() is None:
            started.master.proc.send_signal(signal.SIGCONT)
        started.stop()


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".hs~*"))


def write_files(folder: Path, count: int) -> dict[str, bytes]:
    folder.mkdir(parents=True)
    written: dict[str, bytes] = {}
    for i in range(count):
        content = os.urandom(SIZE)
        (folder / f"f{i:04d}.bin").write_bytes(content)
        written[f"{folder.name}/f{i:04d}.bin"] = content
    return written


def caught_mid_batch(pair: Pair, folder: str) -> bool:
    """Write a batch's worth of files and freeze the master while the standby holds some of them staged.

    True when frozen mid-batch (staged temp files on the standby); False when the batch finished first.
    """
    assert pair.master.proc is not None
    write_files(pair.master.storage / folder, FILES)
    wait_until(lambda: len(temp_files(pair.slave.storage)) >= 3, 30, interval=0.002, message="staged files")
    pair.master.proc.send_signal(signal.SIGSTOP)
    if temp_files(pair.slave.storage):
        return True
    pair.master.proc.send_signal(signal.SIGCONT)
    pair.wait_converged(30)
    return False


def test_standby_killed_mid_batch_loses_nothing_acknowledged_and_shows_no_partial_file(pair: Pair) -> None:
    acknowledged = write_files(pair.master.storage / "acked", 50)
    pair.wait_converged(30)
    wait_until(lambda: pair.master.status()["pending_changes"] == 0, 20, message="every change acked")

    assert any(caught_mid_batch(pair, f"batch{attempt}") for attempt in range(4)), "never caught mid-batch"
    staged = temp_files(pair.slave.storage)
    pair.slave.stop(signal.SIGKILL)
    assert pair.master.proc is not None
    pair.master.proc.send_signal(signal.SIGCONT)
    acked_seq = pair.master.status()["acknowledged_sequence"]  # the standby is dead: final

    visible = [p for p in pair.slave.storage.rglob("*") if p.is_file() and not p.name.startswith(".hs~")]
    for path in visible:  # every visible file is complete: the master's files never change
        rel = path.relative_to(pair.slave.storage)
        assert path.read_bytes() == (pair.master.storage / rel).read_bytes(), f"{rel} is partial"
    for rel, content in acknowledged.items():
        assert (pair.slave.storage / rel).read_bytes() == content, f"acknowledged {rel} lost"
    state = json.loads((pair.slave.state / "receiver.json").read_text())
    assert state["applied_seq"] >= acked_seq, (state, acked_seq)
    assert staged, "nothing was staged when the standby died"

    pair.slave.start()
    pair.wait_converged(60)
    assert temp_files(pair.slave.storage) == []
