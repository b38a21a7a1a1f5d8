"""Counting the folders a StorageRoot opens: a run of paths must open each folder once, not once a path."""

from __future__ import annotations

from typing import Any

import pytest

from replication.paths import StorageRoot


def folder_opens(monkeypatch: pytest.MonkeyPatch, storage: StorageRoot) -> list[str]:
    """The folders `storage` opens from now on (StorageRoot._open_dir_fd), in order, as the list fills."""
    opened: list[str] = []
    open_dir_fd = storage._open_dir_fd

    def counted(rel_dir: str, **kwargs: Any) -> int:
        opened.append(rel_dir)
        return open_dir_fd(rel_dir, **kwargs)

    monkeypatch.setattr(storage, "_open_dir_fd", counted)
    return opened
