"""Promise 1: whatever the master does to its tree, the slave's tree becomes identical."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.support.cluster import Pair, tree_diff

MIB = 1024 * 1024


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def test_scripted_workload_converges(pair: Pair) -> None:
    root = pair.master.storage
    started = time.monotonic()
    # 10,000 small files in nested directories.
    for i in range(10_000):
        write(root / f"small/d{i % 20:02d}/e{i % 7}/f{i:05d}.txt", f"file {i}\n".encode() * (1 + i % 50))
    # A few large files.
    for i in range(3):
        write(root / f"big/blob{i}.bin", os.urandom(50 * MIB))
    # mkdir -p and immediate writes inside, before any watch can exist.
    deep = root / "p/q/r/s/t"
    deep.mkdir(parents=True)
    for i in range(20):
        write(deep / f"n{i}", b"deep" * i)
    # Appends, truncates, chmods.
    with open(root / "small/d00/e0/f00000.txt", "ab") as fh:
        fh.write(b"appended\n")
    with open(root / "small/d01/e1/f00001.txt", "r+b") as fh:
        fh.truncate(3)
    os.truncate(root / "big/blob2.bin", 10 * MIB)
    os.chmod(root / "small/d02/e2/f00002.txt", 0o600)
    os.chmod(root / "p/q", 0o750)
    (root / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "tool.sh", 0o755)
    # Renames of files and of whole directories, deletes.
    os.rename(root / "small/d03/e3/f00003.txt", root / "small/d03/renamed.txt")
    os.rename(root / "small/d04", root / "small/d04-moved")
    os.rename(root / "big/blob1.bin", root / "big/blob1-renamed.bin")
    os.unlink(root / "small/d05/e5/f00005.txt")
    shutil.rmtree(root / "small/d06")
    # Symlinks, relative and absolute, to files and to directories; never followed.
    os.symlink("small/d00", root / "link-to-dir")
    os.symlink("/etc/hostname", root / "link-absolute")
    os.symlink("does-not-exist", root / "link-dangling")
    # A venv-like layout with its ready marker written last.
    venv = root / "langgenius/openai-0.0.1@abc/.venv"
    write(venv / "lib/python3.11/site-packages/pkg/__init__.py", b"x = 1\n")
    os.symlink("lib", venv / "lib64")
    write(venv / "dify/plugin.json", b'{"ready": true}')
    written = time.monotonic() - started
    pair.wait_converged(timeout=120)
    converged = time.monotonic() - started
    print(f"workload written in {written:.1f}s, converged {converged - written:.1f}s later")
    assert not any(p.name.startswith(".hs~") for p in pair.slave.storage.rglob("*"))
    assert tree_diff(pair.master.storage, pair.slave.storage) == []


@pytest.mark.timeout(60)
def test_a_file_still_being_written_in_a_new_folder_never_reaches_the_slave_half_written(pair: Pair) -> None:
    """The folder's scan finds each file between its creation and its writer's close: it must wait."""
    seen: list[int] = []
    stop = threading.Event()
    names = [f"fresh{i}/payload.bin" for i in range(10)]

    def sample() -> None:
        while not stop.is_set():
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    seen.append((pair.slave.storage / name).stat().st_size)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for name in names:
            folder = pair.master.storage / name.split("/")[0]
            folder.mkdir()
            with open(folder / "payload.bin", "wb") as writer:  # created now, written after the scan
                writer.write(b"a" * 1000)
                writer.flush()
                time.sleep(0.15)
                writer.write(b"b" * 1000)
        pair.wait_converged(15)
    finally:
        stop.set()
        sampler.join(5)
    assert seen, "the sampler never saw the files"
    assert set(seen) == {2000}, f"the slave showed a file mid-write: sizes {sorted(set(seen))}"
