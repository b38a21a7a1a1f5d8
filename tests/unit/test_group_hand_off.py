"""A big batch hands its staged files to a worker thread in groups (group_commit.HAND_OFF_FILES).

The next files are received meanwhile; renames must stay in batch order, an operation on a path of
a group still in flight must wait for it, and a group whose commit fails must fail the batch back
to where it was before that group: only what a syncfs covered after its renames is acknowledged.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from replication import applier as applier_module
from replication import group_commit
from replication.applier import Applier
from replication.errors import StorageFullError
from replication.paths import StorageRoot
from replication.protocol import Operation, decode_header, decode_length
from tests.unit.test_applier import Env, Stream, delete, end, put, rename, temp_files, write

GROUP = 4


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture(autouse=True)
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "HAND_OFF_FILES", GROUP)


def files(first_seq: int, count: int, folder: str = "d", tag: bytes = b"") -> bytes:
    return b"".join(
        put(first_seq + i, f"{folder}/f{i:03d}", f"{folder}-{i}".encode() + tag) for i in range(count)
    )


async def test_a_big_batch_is_committed_group_by_group_in_batch_order(
    env: Env, monkeypatch: pytest.MonkeyPatch
):
    handed: list[int] = []
    commit_in_thread = group_commit.GroupCommit.commit_in_thread

    def counted(group: group_commit.GroupCommit) -> set[str]:
        handed.append(len(group))
        return commit_in_thread(group)

    monkeypatch.setattr(group_commit.GroupCommit, "commit_in_thread", counted)
    write(env.storage / "old" / "x", b"old")
    stream = (
        files(1, 10)  # groups of GROUP files go to the thread as they fill
        + put(11, "d/f002", b"newer")  # a path of a group handed off: waits for it, then replaces it
        + files(12, 9, "e")
        + delete(21, "d/f003")  # a delete: every group in place first
        + rename(22, "old", "e/old")
        + files(23, 6, "g")
        + end(28)
    )
    result = await env.apply(stream)

    assert result.applied_seq == 28
    assert handed and max(handed) >= GROUP, f"no group was handed off: {handed}"
    assert (env.storage / "d" / "f002").read_bytes() == b"newer"
    assert not (env.storage / "d" / "f003").exists()
    assert (env.storage / "e" / "old" / "x").read_bytes() == b"old"
    for i in (0, 1, *range(4, 10)):
        assert (env.storage / "d" / f"f{i:03d}").read_bytes() == f"d-{i}".encode()
    for folder, count in (("e", 9), ("g", 6)):
        for i in range(count):
            assert (env.storage / folder / f"f{i:03d}").read_bytes() == f"{folder}-{i}".encode()
    assert temp_files(env.storage) == []
    assert json.loads((env.state / "receiver.json").read_text())["applied_seq"] == 28


async def test_a_failed_group_fails_the_batch_back_to_before_the_first_handed_off_group(
    env: Env, monkeypatch: pytest.MonkeyPatch
):
    first = await env.apply(put(1, "acked", b"acked") + end(1))
    assert first.applied_seq == 1
    rename_into_place = group_commit.rename_into_place

    def full_disk_at_f002(folder_fd: int, temp: str, name: str) -> None:
        if name == "f002":  # in the first group: always handed off
            raise OSError(errno.ENOSPC, "No space left on device")
        rename_into_place(folder_fd, temp, name)

    monkeypatch.setattr(group_commit, "rename_into_place", full_disk_at_f002)
    with pytest.raises(StorageFullError) as info:
        await env.apply(files(2, 12) + end(13))

    assert info.value.applied_seq == 1, "files of a failed batch were reported applied"
    assert env.receiver.applied_seq == 1
    assert json.loads((env.state / "receiver.json").read_text())["applied_seq"] == 1
    assert temp_files(env.storage) == [], "a failed group left temp files behind"
    for path in (env.storage / "d").iterdir():  # renamed before the failure: complete, sent again
        index = int(path.name[1:])
        assert path.read_bytes() == f"d-{index}".encode()
    assert (env.storage / "acked").read_bytes() == b"acked"

    monkeypatch.setattr(group_commit, "rename_into_place", rename_into_place)
    again = await env.apply(files(2, 12) + end(13))  # the sender's resend from sequence 1 goes through
    assert again.applied_seq == 13
    assert sorted(p.name for p in (env.storage / "d").iterdir()) == [f"f{i:03d}" for i in range(12)]


async def test_handed_off_files_count_as_staged_until_a_syncfs_covered_their_renames(
    env: Env, monkeypatch: pytest.MonkeyPatch
):
    synced: list[int] = []
    monkeypatch.setattr(applier_module, "_syncfs_quietly", synced.append)
    applier = Applier(StorageRoot(str(env.storage)))
    for i in range(GROUP):
        await applier.apply(*_put_op(i))
    assert applier.staged == GROUP
    await applier._wait_handed_off()  # the thread renamed them; not durable yet, not acknowledgeable
    assert (env.storage / "d" / "f000").exists()
    assert applier.staged == GROUP
    await applier.commit()  # nothing staged since: still one syncfs, for the thread's renames
    assert len(synced) == 1
    assert applier.staged == 0
    assert temp_files(env.storage) == []


def _put_op(index: int) -> tuple[Operation, Stream]:
    frame = put(index + 1, f"d/f{index:03d}", b"x" * (index + 1))
    length = decode_length(frame[:4])
    op = decode_header(frame[4 : 4 + length])
    return op, Stream(frame[4 + length :])
