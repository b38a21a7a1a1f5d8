"""The stat-free listing of a folder just made (manifest.walk_kinds, StorageRoot.kinds_below) lists what
the full walk lists, with the same kinds, and goes no further than it: no symlinked folder entered, no
temp file, no skipped path, no FIFO."""

from __future__ import annotations

import os
from pathlib import Path

from replication import manifest
from replication.paths import TEMP_PREFIX


def test_the_listing_holds_what_the_walk_holds(tmp_path: Path) -> None:
    top = tmp_path / "venv"
    (top / "lib" / "pkg").mkdir(parents=True)
    (top / "skipped").mkdir()
    (top / "skipped" / "inside.py").write_text("x")
    (top / "a.py").write_text("a")
    (top / "lib" / "pkg" / "b.py").write_text("b")
    (top / "lib" / f"{TEMP_PREFIX}half").write_text("partial")
    os.symlink("lib", top / "to-lib")  # a symlinked folder: listed, never entered
    os.symlink("/etc", top / "lib" / "outside")
    os.mkfifo(top / "lib" / "fifo")

    def skip(path: str) -> bool:
        return path == "venv/skipped"

    listed = sorted(manifest.walk_kinds(str(tmp_path), "venv", skip))
    walked = sorted((entry.path, entry.type) for entry in manifest.walk(str(tmp_path), "venv", skip))
    assert listed == walked
    assert listed == [
        ("venv", "dir"),
        ("venv/a.py", "file"),
        ("venv/lib", "dir"),
        ("venv/lib/outside", "symlink"),
        ("venv/lib/pkg", "dir"),
        ("venv/lib/pkg/b.py", "file"),
        ("venv/to-lib", "symlink"),
    ]


def test_a_folder_that_is_gone_or_a_symlink_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("f")
    os.symlink("real", tmp_path / "link")
    assert list(manifest.walk_kinds(str(tmp_path), "gone", lambda _p: False)) == []
    assert list(manifest.walk_kinds(str(tmp_path), "link", lambda _p: False)) == []
    assert list(manifest.walk_kinds(str(tmp_path), "link/f", lambda _p: False)) == []
