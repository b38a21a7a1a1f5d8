"""Seeded data sets, so every tool replicates exactly the same bytes in the same layout.

The layouts imitate the Dify plugin storage hotstandby is built for: `persistence/` (small key-value
files, the lag-sensitive part), `cwd/<plugin>/.venv/...` (many small files, symlinks), `plugin_packages/`
(medium files with ':' and '@' in their names) and a few large files.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
CHUNK = 16 * MIB


@dataclass(frozen=True)
class TreeSummary:
    files: int
    dirs: int
    symlinks: int
    bytes: int

    def to_json(self) -> dict[str, int]:
        return {"files": self.files, "dirs": self.dirs, "symlinks": self.symlinks, "bytes": self.bytes}


def random_bytes(rng: random.Random, size: int) -> bytes:
    """randbytes in chunks (one call is limited to 256 MiB of bits)."""
    return b"".join(rng.randbytes(min(CHUNK, size - done)) for done in range(0, size, CHUNK))


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)


def write_random_file(path: Path, size: int, seed: int) -> None:
    """A large incompressible file written chunk by chunk (never whole in memory)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for done in range(0, size, CHUNK):
            fh.write(rng.randbytes(min(CHUNK, size - done)))


def _checksum(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


# ---------------------------------------------------------------- lag


LAG_FOLDERS = 20


def lag_folders() -> list[str]:
    """Folders the lag files go to; created (and replicated) before the clock starts."""
    return [f"persistence/plugin-{k:02d}" for k in range(LAG_FOLDERS)]


def lag_files(count: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` files of 1-64 KiB spread over the persistence folders."""
    rng = random.Random(seed)
    folders = lag_folders()
    return [
        (f"{folders[i % len(folders)]}/key-{i:05d}.bin", rng.randbytes(rng.randint(1 * KIB, 64 * KIB)))
        for i in range(count)
    ]


# ---------------------------------------------------------------- full sync


def mixed_tree(root: Path, total: int, seed: int) -> TreeSummary:
    """About `total` bytes: a quarter in 1-64 KiB files (plugin venvs), a quarter in 64 KiB-4 MiB
    packages, half in four large files; plus one symlink and one ready marker per plugin."""
    rng = random.Random(seed)
    budget = total // 4
    plugin = 0
    while budget > 0:
        venv = root / "cwd" / "langgenius" / f"plugin-{plugin:03d}-0.0.1@{_checksum(plugin)}" / ".venv"
        for index in range(200):
            size = min(budget, rng.randint(1 * KIB, 64 * KIB))
            package = venv / "lib" / "python3.12" / "site-packages" / f"pkg{index // 20:02d}"
            write_file(package / f"mod{index % 20:03d}.py", rng.randbytes(size))
            budget -= size
            if budget <= 0:
                break
        (venv / "bin").mkdir(parents=True, exist_ok=True)
        os.symlink("/usr/bin/python3", venv / "bin" / "python")
        write_file(venv / "dify" / "plugin.json", b'{"ready": true}\n')
        plugin += 1
    budget = total // 4
    index = 0
    while budget > 0:
        size = min(budget, rng.randint(64 * KIB, 4 * MIB))
        name = f"plugin_packages/langgenius/package-{index:04d}:0.0.{index}@{_checksum(index)}"
        write_file(root / name, rng.randbytes(size))
        budget, index = budget - size, index + 1
    large = (total - summarize(root).bytes) // 4
    for i in range(4):
        write_random_file(root / "cwd" / "models" / f"model-{i}.bin", large, seed + 1 + i)
    return summarize(root)


def summarize(root: Path) -> TreeSummary:
    """Count what is really on disk (folders below the root, files, symlinks, file bytes)."""
    files = dirs = links = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirs += len(dirnames)
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                links += 1
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                files += 1
                size += st.st_size
    return TreeSummary(files, dirs, links, size)


# ---------------------------------------------------------------- scale


def scale_tree(root: Path, files: int, folders: int, seed: int) -> TreeSummary:
    """`files` small files (100 B-4 KiB) spread evenly over exactly `folders` folders, two levels deep."""
    rng = random.Random(seed)
    top = max(1, folders // 100)
    sub = folders // top - 1
    all_dirs: list[Path] = []
    for t in range(top):
        parent = root / f"d{t:03d}"
        all_dirs.append(parent)
        all_dirs.extend(parent / f"s{s:03d}" for s in range(sub))
    for folder in all_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    size_sum = 0
    for i in range(files):
        size = rng.randint(100, 4 * KIB)
        with open(all_dirs[i % len(all_dirs)] / f"f{i:06d}", "wb") as fh:
            fh.write(rng.randbytes(size))
        size_sum += size
    return TreeSummary(files, len(all_dirs), 0, size_sum)


def small_tree(root: Path, files: int, seed: int, per_folder: int = 200) -> TreeSummary:
    """`files` small files (0.5-48 KiB, a plugin venv's kind) in folders of `per_folder` (issue 15)."""
    rng = random.Random(seed)
    for i in range(files):
        folder = root / "cwd" / f"p{i // per_folder:03d}" / ".venv" / "lib"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        write_file(folder / f"m{i:05d}.py", rng.randbytes(rng.randint(KIB // 2, 48 * KIB)))
    return summarize(root)


# ---------------------------------------------------------------- burst


def burst_files(count: int, seed: int, per_folder: int = 200) -> list[tuple[str, bytes]]:
    """`count` files of 512 B-8 KiB in new folders of `per_folder` files (created during the burst)."""
    rng = random.Random(seed)
    return [
        (f"burst/d{i // per_folder:03d}/f{i:05d}.bin", rng.randbytes(rng.randint(512, 8 * KIB)))
        for i in range(count)
    ]


# ---------------------------------------------------------------- delta edits


def flip_byte(path: Path, offset: int) -> None:
    """A 1-byte change in place (one open, one write, one close: one close_write event)."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        old = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([old[0] ^ 0xFF]))


def insert_bytes(path: Path, offset: int, data: bytes) -> None:
    """Insert `data` at `offset` in place: the tail is rewritten after it (one open, one close)."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        tail = fh.read()
        fh.seek(offset)
        fh.write(data)
        fh.write(tail)
