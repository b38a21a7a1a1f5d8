"""Manifests: what a tree holds, compared cheaply.

An entry records type, size, mode, mtime and symlink target, which is all a
`stat` gives for free. Content hashes are computed only for the entries
whose cheap fields disagree in a way that could still mean equal content
(same type and size, different mtime).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from replication.paths import is_temp_name

EntryType = Literal["file", "dir", "symlink"]
HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    type: EntryType
    mode: int
    mtime_ns: int
    size: int = 0
    target: str | None = None

    def to_json(self) -> list[Any]:
        return [self.path, self.type, self.mode, self.mtime_ns, self.size, self.target]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Entry:
        path, type_, mode, mtime_ns, size, target = raw
        return cls(path=path, type=type_, mode=mode, mtime_ns=mtime_ns, size=size, target=target)

    @property
    def mtime_s(self) -> int:
        return self.mtime_ns // 1_000_000_000


def entry_from_stat(path: str, st: os.stat_result, target: str | None = None) -> Entry | None:
    """The manifest entry for one lstat result, or None for types we do not replicate."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return Entry(path, "file", mode, st.st_mtime_ns, st.st_size)
    if stat.S_ISDIR(st.st_mode):
        return Entry(path, "dir", mode, st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        return Entry(path, "symlink", mode, st.st_mtime_ns, target=target)
    return None


def walk(root: str, top: str = "", skip: Callable[[str], bool] = lambda _p: False) -> Iterator[Entry]:
    """Entries under `root/top` (top included when not ''), parents before children.

    Symlinks are reported, never followed; temp files and `skip` matches are left out.
    """
    if top:
        entry = stat_entry(root, top)
        if entry is None or skip(top):
            return
        yield entry
        if entry.type != "dir":
            return
    stack = [top]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
                children = sorted(it, key=lambda d: d.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        subdirs = []
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            if is_temp_name(rel) or skip(rel):
                continue
            try:
                st = child.stat(follow_symlinks=False)
                target = os.readlink(child.path) if stat.S_ISLNK(st.st_mode) else None
            except FileNotFoundError:
                continue
            entry = entry_from_stat(rel, st, target)
            if entry is None:
                continue
            yield entry
            if entry.type == "dir":
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


def stat_entry(root: str, path: str) -> Entry | None:
    full = os.path.join(root, path)
    try:
        st = os.lstat(full)
        target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
    except (FileNotFoundError, NotADirectoryError):
        return None
    return entry_from_stat(path, st, target)


def scan(root: str, skip: Callable[[str], bool] = lambda _p: False) -> dict[str, Entry]:
    return {e.path: e for e in walk(root, "", skip)}


def file_sha256(full_path: str) -> str | None:
    """Hex SHA-256 of a regular file, without following a symlink; None if it is gone."""
    try:
        fd = os.open(full_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    return fd_sha256(fd)


def fd_sha256(fd: int) -> str | None:
    """Hex SHA-256 of an open regular file; closes `fd`."""
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Plan:
    """What makes the replica equal to the source: send these, delete those."""

    send: list[Entry]
    attrs_only: list[Entry]
    delete: list[str]
    to_hash: list[str]
    compared: int


def compare(source: dict[str, Entry], replica: dict[str, Entry]) -> Plan:
    """First pass: decide from stat fields alone; `to_hash` lists the undecided paths."""
    send: list[Entry] = []
    attrs: list[Entry] = []
    to_hash: list[str] = []
    for path, mine in source.items():
        theirs = replica.get(path)
        if theirs is None or theirs.type != mine.type:
            send.append(mine)
        elif mine.type == "file":
            if theirs.size != mine.size:
                send.append(mine)
            elif theirs.mtime_ns != mine.mtime_ns:
                to_hash.append(path)
            elif theirs.mode != mine.mode:
                attrs.append(mine)
        elif mine.type == "symlink":
            if theirs.target != mine.target:
                send.append(mine)
            elif theirs.mtime_s != mine.mtime_s:
                attrs.append(mine)
        elif theirs.mode != mine.mode:
            attrs.append(mine)
    delete = _topmost(p for p in replica if p not in source)
    return Plan(send=send, attrs_only=attrs, delete=delete, to_hash=to_hash, compared=len(source))


def resolve_hashes(
    plan: Plan, source: dict[str, Entry], mine: dict[str, str | None], theirs: dict[str, str | None]
) -> None:
    """Second pass: equal content needs only attributes, different content a full send."""
    for path in plan.to_hash:
        entry = source[path]
        if mine.get(path) is not None and mine.get(path) == theirs.get(path):
            plan.attrs_only.append(entry)
        else:
            plan.send.append(entry)
    plan.to_hash = []


def _topmost(paths: Iterable[str]) -> list[str]:
    """Drop paths that lie below another path of the set: deleting the parent covers them."""
    result: list[str] = []
    for path in sorted(paths, key=lambda p: p.split("/")):
        if result and path.startswith(result[-1] + "/"):
            continue
        result.append(path)
    return result
