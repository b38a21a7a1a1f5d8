"""A demoted leader preserves its divergent writes without ever leaving STORAGE_PATH (issue 13).

The preservation reads the storage through StorageRoot like the sender does: a folder
swapped for a symlink to outside between the scan and the copy is refused, never
followed; a file swapped for a FIFO is never opened (a blocking open would hang).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.divergence import DivergenceTracker
from replication import manifest

MARKER = b"outside-marker-7f3a9c"


def storage_with_plugin(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(storage, state, outside): storage/plugin/a/{main.py,secret} and a folder outside with the marker."""
    storage, state, outside = tmp_path / "storage", tmp_path / "state", tmp_path / "outside"
    (storage / "plugin" / "a").mkdir(parents=True)
    (storage / "plugin" / "a" / "main.py").write_text("print('diverged')\n")
    (storage / "plugin" / "a" / "secret").write_text("inside\n")
    (storage / "plugin" / "keep").write_text("keep\n")
    state.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(MARKER)
    (outside / "main.py").write_bytes(MARKER)
    return storage, state, outside


def tracker_before_the_writes(state: Path) -> DivergenceTracker:
    tracker = DivergenceTracker(str(state))
    tracker.leading_from(now=0.0)  # everything written after 1970 diverged
    return tracker


def swap_folder_for_symlink(storage: Path, outside: Path) -> None:
    folder = storage / "plugin" / "a"
    folder.rename(storage / "plugin" / "a.moved")
    folder.symlink_to(outside, target_is_directory=True)


def walk_then(when: str, action: Callable[[], None]) -> Callable[..., Iterator[manifest.Entry]]:
    """manifest.walk that runs `action` right after the scan found `when` (before the copy)."""
    real = manifest.walk

    def walk(*args: object, **kwargs: object) -> Iterator[manifest.Entry]:
        for entry in real(*args, **kwargs):  # type: ignore[arg-type]
            if entry.path == when:
                action()
            yield entry

    return walk


def preserved_bytes(state: Path) -> bytes:
    found = b""
    for path in (state / "conflicts").rglob("*"):
        if path.is_file() and not path.is_symlink():
            found += path.read_bytes()
    return found


def test_a_folder_swapped_for_a_symlink_after_the_scan_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, state, outside = storage_with_plugin(tmp_path)
    tracker = tracker_before_the_writes(state)
    swap = walk_then("plugin/a/main.py", lambda: swap_folder_for_symlink(storage, outside))
    monkeypatch.setattr(manifest, "walk", swap)

    found = tracker.preserve(str(storage), 3, lambda _p: False)

    assert MARKER not in preserved_bytes(state)
    paths = {c.path for c in found}
    assert "plugin/keep" in paths  # the rest of the storage is still preserved
    assert not {"plugin/a/main.py", "plugin/a/secret"} & paths


def test_a_symlinked_folder_found_by_the_scan_is_kept_as_a_link_not_entered(tmp_path: Path) -> None:
    storage, state, outside = storage_with_plugin(tmp_path)
    tracker = tracker_before_the_writes(state)
    swap_folder_for_symlink(storage, outside)

    found = {c.path: c for c in tracker.preserve(str(storage), 3, lambda _p: False)}

    assert MARKER not in preserved_bytes(state)
    assert found["plugin/a"].type == "symlink"
    assert os.readlink(state / "conflicts" / "3" / "files" / "plugin" / "a") == str(outside)


def test_a_file_swapped_for_a_fifo_is_skipped_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, state, _outside = storage_with_plugin(tmp_path)
    tracker = tracker_before_the_writes(state)
    fifo = storage / "plugin" / "a" / "secret"

    def make_fifo() -> None:
        fifo.unlink()
        os.mkfifo(fifo)

    monkeypatch.setattr(manifest, "walk", walk_then("plugin/a/main.py", make_fifo))
    done: list[set[str]] = []
    worker = threading.Thread(
        target=lambda: done.append({c.path for c in tracker.preserve(str(storage), 4, lambda _p: False)}),
        daemon=True,
    )
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the hung open so the test process can end
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        pytest.fail("preserve blocked on a FIFO")
    assert "plugin/a/secret" not in done[0]
    assert "plugin/a/main.py" in done[0]


def test_preserved_files_keep_content_and_times_but_no_setuid(tmp_path: Path) -> None:
    storage, state, _outside = storage_with_plugin(tmp_path)
    tool = storage / "plugin" / "a" / "main.py"
    tool.chmod(0o4755)
    os.utime(tool, (1_700_000_000, 1_700_000_000))
    tracker = tracker_before_the_writes(state)

    found = {c.path: c for c in tracker.preserve(str(storage), 5, lambda _p: False)}

    copy = state / "conflicts" / "5" / "files" / "plugin" / "a" / "main.py"
    assert copy.read_text() == "print('diverged')\n"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o755
    assert copy.stat().st_mtime == 1_700_000_000
    assert found["plugin/a/main.py"].sha256 is not None
