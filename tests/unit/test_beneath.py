"""The openat2 fast path (replication/beneath.py) answers exactly as the component-by-component walk.

Every StorageRoot read on the leader resolves its folder through it; a difference in what it refuses
would open a hole in the containment that tests/unit/test_paths.py and the trust-boundary tests
check, so each case is asked of both paths and the answers compared.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest

from replication.beneath import OPEN_BENEATH
from replication.errors import ContainmentError, NotRegularFileError
from replication.paths import StorageRoot

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@pytest.fixture
def root(tmp_path: Path) -> Path:
    storage, outside = tmp_path / "storage", tmp_path / "outside"
    (storage / "a" / "b" / "c").mkdir(parents=True)
    (storage / "a" / "b" / "c" / "f.txt").write_text("deep")
    (storage / "a" / "file").write_text("not a folder")
    (outside / "d").mkdir(parents=True)
    (outside / "d" / "secret").write_text("outside")
    os.symlink(outside, storage / "a" / "out")  # a folder on the way that is a symlink to outside
    os.symlink("b", storage / "a" / "inner")  # ... and one that stays inside
    os.symlink("c/f.txt", storage / "a" / "b" / "flink")
    return storage


CASES = [
    "a/b/c/f.txt",
    "a/b/c",
    "a/b/flink",
    "a/out/d/secret",
    "a/out/d",
    "a/inner/c/f.txt",
    "a/file/x",
    "a/missing/f.txt",
    "a/b/c/missing",
]


def test_this_kernel_takes_the_fast_path() -> None:
    """Linux 5.6+ has openat2; were it refused here (seccomp), every other test would check nothing new."""
    assert OPEN_BENEATH is not None


def outcome(call: object) -> object:
    try:
        result = call() if callable(call) else call
    except ContainmentError as exc:
        return ("ContainmentError", exc.symlink_at)
    except (OSError, NotRegularFileError) as exc:
        return type(exc).__name__
    if isinstance(result, os.stat_result):
        return ("stat", result.st_ino, result.st_mode)
    if isinstance(result, tuple):  # open_regular: (fd, stat)
        os.close(result[0])
        return ("opened", result[1].st_ino)
    if isinstance(result, int):  # open_for_reading: an fd
        inode = os.fstat(result).st_ino
        os.close(result)
        return ("opened", inode)
    return result


@pytest.mark.parametrize("rel", CASES)
def test_the_fast_path_answers_like_the_walk(root: Path, rel: str) -> None:
    fast, slow = StorageRoot(str(root)), StorageRoot(str(root), open_beneath=None)
    for name in ("lstat", "readlink", "open_regular", "open_for_reading"):
        got = outcome(partial(getattr(fast, name), rel))
        expected = outcome(partial(getattr(slow, name), rel))
        assert got == expected, (name, rel)


def test_nothing_outside_is_reached_through_a_symlinked_folder(root: Path) -> None:
    storage = StorageRoot(str(root))
    assert storage.lstat("a/out/d/secret") is None
    with pytest.raises(ContainmentError):
        storage.open_regular("a/out/d/secret")


def test_the_fast_path_leaves_every_doubt_to_the_walk(root: Path) -> None:
    assert OPEN_BENEATH is not None
    top = os.open(root, DIR_FLAGS)
    try:
        fd = OPEN_BENEATH(top, "a/b/c", DIR_FLAGS)
        assert fd is not None and os.path.samestat(os.fstat(fd), os.stat(root / "a" / "b" / "c"))
        os.close(fd)
        assert OPEN_BENEATH(top, "a/out/d", DIR_FLAGS) is None  # a symlink on the way
        assert OPEN_BENEATH(top, "a/inner", DIR_FLAGS) is None  # even one that stays inside
        assert OPEN_BENEATH(top, "a/file/x", DIR_FLAGS) is None  # a file where a folder should be
        assert OPEN_BENEATH(top, "../storage", DIR_FLAGS) is None  # out of the starting folder
        with pytest.raises(FileNotFoundError):
            OPEN_BENEATH(top, "a/missing", DIR_FLAGS)
    finally:
        os.close(top)
