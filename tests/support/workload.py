"""The convergence workload every link must survive (design.md promise 1), at a size the caller picks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MIB = 1024 * 1024


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def scripted_workload(root: Path, small_files: int = 10_000, big_size: int = 50 * MIB) -> None:
    """Creates, appends, truncates, chmods, renames of files and folders, deletes, symlinks, a venv."""
    # Small files in nested directories.
    for i in range(small_files):
        write(root / f"small/d{i % 20:02d}/e{i % 7}/f{i:05d}.txt", f"file {i}\n".encode() * (1 + i % 50))
    # A few large files.
    for i in range(3):
        write(root / f"big/blob{i}.bin", os.urandom(big_size))
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
    os.truncate(root / "big/blob2.bin", big_size // 5)
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
