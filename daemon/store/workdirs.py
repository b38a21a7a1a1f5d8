"""`.plugin.sha256` manifests for unpacked plugins under the working path.

A plugin folder is `<WORKING_PATH>/<author>/<name>-<version>@<checksum>/`. Once it is complete
(its `.venv/dify/plugin.json` ready marker exists) the leader writes `.plugin.sha256` into it:
`<sha256>  <path>` per file, sorted, in `sha256sum` format, covering every file except the
`.venv/` folder, `__pycache__/` folders (Python writes those at run time) and the manifest
itself; a symlink is recorded as the SHA-256 of `symlink:<target>`. Before a standby is
promoted the manifests are checked: a missing or changed file is a failure; a file the
manifest does not know is listed as `extra` (plugins may write into their folder) but does
not fail the check. Nothing is ever written into `plugin/` or `plugin_packages/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from replication.paths import TEMP_PREFIX

MANIFEST_NAME = ".plugin.sha256"
READY_MARKER = ".venv/dify/plugin.json"
LIST_LIMIT = 100
"""Paths listed per kind in a report (the rest are counted): a folder full of junk files, or a
storage with thousands of plugin folders, must not make an answer, a log line or an event huge."""
_SKIPPED_TOP = frozenset({".venv", MANIFEST_NAME})
_SKIPPED_ANYWHERE = frozenset({"__pycache__"})
_WORKDIR = re.compile(
    r"^[a-z0-9_-]{1,255}-[0-9]{1,4}(?:\.[0-9]{1,4}){1,3}(?:-\w{1,16})?@[a-f0-9]{32,64}$", re.ASCII
)
_AUTHOR = re.compile(r"^[a-z0-9_-]{1,64}$", re.ASCII)
_CHUNK = 1024 * 1024
MANIFEST_LIMIT = 4 * 1024 * 1024
"""A manifest is a line per file (about 100 bytes): a plugin would need 40,000 files to fill this."""
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Never through a symlink, never blocking on a FIFO swapped in."""


@dataclass
class WorkdirResult:
    path: str
    """Relative to the working path: `author/name-version@checksum`."""
    status: str
    """ok, failed, unchecked (complete, no manifest yet) or incomplete (no ready marker)."""
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"path": self.path, "status": self.status}
        for name in ("missing", "changed", "extra"):
            if getattr(self, name):
                body.update(bounded(name, getattr(self, name)))
        if self.detail:
            body["detail"] = self.detail
        return body


@dataclass
class WorkdirReport:
    results: list[WorkdirResult] = field(default_factory=list)

    def of(self, status: str) -> list[WorkdirResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[WorkdirResult]:
        return self.of("failed")

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": len(self.of("ok")) + len(self.failed),
            "ok": len(self.of("ok")),
            **bounded("failed", [r.to_json() for r in self.failed[:LIST_LIMIT]], len(self.failed)),
            **bounded("unchecked", [r.path for r in self.of("unchecked")]),
            **bounded("incomplete", [r.path for r in self.of("incomplete")]),
        }


def bounded(name: str, items: list[Any], total: int | None = None) -> dict[str, Any]:
    """{name: the first LIST_LIMIT items}, and {name_total: how many there were} when cut."""
    total = len(items) if total is None else total
    body: dict[str, Any] = {name: items[:LIST_LIMIT]}
    if total > LIST_LIMIT:
        body[f"{name}_total"] = total
    return body


def find_workdirs(working_path: str) -> list[str]:
    """Plugin folders under the working path (`author/dir` or `dir`), never through a symlink."""
    found: list[str] = []
    for name in _real_dirs(working_path):
        if _WORKDIR.fullmatch(name):
            found.append(name)
        elif _AUTHOR.fullmatch(name):
            found.extend(
                f"{name}/{child}"
                for child in _real_dirs(os.path.join(working_path, name))
                if _WORKDIR.fullmatch(child)
            )
    return sorted(found)


def needing_manifest(working_path: str) -> list[str]:
    """Complete plugin folders without a manifest yet."""
    return [
        rel
        for rel in find_workdirs(working_path)
        if is_complete(os.path.join(working_path, rel))
        and not os.path.lexists(os.path.join(working_path, rel, MANIFEST_NAME))
    ]


def is_complete(folder: str) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISREG(os.lstat(os.path.join(folder, READY_MARKER)).st_mode)
    return False


def digest_tree(folder: str) -> dict[str, str]:
    """{relative path: sha256 hex} for the files the manifest covers."""
    digests: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder)
        top = rel_dir == "."
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIPPED_ANYWHERE and not (top and d in _SKIPPED_TOP)
        )
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in links]
        for name in filenames + links:
            if (top and name in _SKIPPED_TOP) or name.startswith(TEMP_PREFIX):
                continue
            rel = name if top else f"{rel_dir}/{name}"
            with contextlib.suppress(FileNotFoundError):
                digest = _digest(os.path.join(dirpath, name))
                if digest is not None:
                    digests[rel] = digest
    return digests


def render(digests: dict[str, str]) -> bytes:
    lines = []
    for path in sorted(digests, key=lambda p: p.encode("utf-8", "surrogateescape")):
        escaped = path.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(("\\" if escaped != path else "") + f"{digests[path]}  {escaped}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def parse(content: bytes) -> dict[str, str]:
    digests: dict[str, str] = {}
    for number, line in enumerate(content.decode("utf-8", "surrogateescape").splitlines(), start=1):
        escaped = line.startswith("\\")
        digest, sep, path = line[1 if escaped else 0 :].partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not path:
            raise ValueError(f"line {number} is not '<sha256>  <path>'")
        if escaped:
            path = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], path)
        digests[path] = digest
    return digests


def check(folder: str, rel: str) -> WorkdirResult:
    """Compare one plugin folder with its manifest."""
    if not is_complete(folder):
        return WorkdirResult(rel, "incomplete")
    try:
        expected = parse(read_manifest(folder))
    except FileNotFoundError:
        return WorkdirResult(rel, "unchecked")
    except (OSError, ValueError) as exc:
        return WorkdirResult(rel, "failed", detail=f"unreadable {MANIFEST_NAME}: {exc}")
    actual = digest_tree(folder)
    result = WorkdirResult(
        rel,
        "ok",
        missing=sorted(set(expected) - set(actual)),
        changed=sorted(p for p in expected if p in actual and actual[p] != expected[p]),
        extra=sorted(set(actual) - set(expected)),
    )
    if result.missing or result.changed:
        result.status = "failed"
    return result


def read_manifest(folder: str) -> bytes:
    """The folder's `.plugin.sha256`: a regular file, reached without following a symlink, bounded.

    The folder itself must not be a symlink either (find_workdirs skipped those, but one may have
    been swapped in since). Raises FileNotFoundError when absent, OSError or ValueError when refused.
    """
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(MANIFEST_NAME, _READ_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MANIFEST_LIMIT:
            raise ValueError(f"{st.st_size} bytes, more than {MANIFEST_LIMIT}")
        content = fh.read(MANIFEST_LIMIT + 1)
    if len(content) > MANIFEST_LIMIT:
        raise ValueError(f"more than {MANIFEST_LIMIT} bytes")
    return content


def check_all(working_path: str) -> WorkdirReport:
    return WorkdirReport([check(os.path.join(working_path, rel), rel) for rel in find_workdirs(working_path)])


def _real_dirs(path: str) -> list[str]:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))


def _digest(path: str) -> str | None:
    """SHA-256 of a file's content or of a symlink's target; None for sockets, FIFOs and devices."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return hashlib.sha256(b"symlink:" + os.fsencode(os.readlink(path))).hexdigest()
    if not stat.S_ISREG(st.st_mode):
        return None
    digest = hashlib.sha256()
    fd = os.open(path, _READ_FLAGS)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None  # swapped for a FIFO or a device since the lstat
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
