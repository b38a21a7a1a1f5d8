"""EXCLUDE and READY_MARKERS globs, matched against paths relative to STORAGE_PATH.

`*` and `?` stay inside one path component, `**` spans any number of them;
a pattern without '/' matches a name at any depth (as in .gitignore).
A path is excluded when it or any of its parent directories matches, so
excluding `cwd/.uv-cache` excludes everything below it too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile one glob into an anchored regex over '/'-separated relative paths."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


class PathMatcher:
    """A set of globs; `matches` tests a path and each of its parents."""

    def __init__(self, patterns: Iterable[str]) -> None:
        cleaned = (p.strip().strip("/") for p in patterns)
        self.patterns = tuple(p if "/" in p else f"**/{p}" for p in cleaned if p)
        self._regexes = tuple(glob_to_regex(p) for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self._regexes)

    def matches_exactly(self, path: str) -> bool:
        return any(rx.match(path) for rx in self._regexes)

    def matches(self, path: str) -> bool:
        if not self._regexes:
            return False
        parts = path.split("/")
        return any(self.matches_exactly("/".join(parts[:n])) for n in range(1, len(parts) + 1))


class ReadyMarkers:
    """Files that declare their plugin directory complete (READY_MARKERS).

    For `**/.venv/dify/plugin.json` the plugin directory of
    `a/p-1@x/.venv/dify/plugin.json` is `a/p-1@x`: the part the leading `**`
    matched. The journal keeps a marker behind every other change there.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        cleaned = (q.strip().strip("/") for q in patterns)
        anchored = [p if "/" in p else f"**/{p}" for p in cleaned if p]
        self._rules = tuple(
            (glob_to_regex(p), len(p.split("/")) - (1 if p.startswith("**/") else 0)) for p in anchored
        )

    def plugin_dir(self, path: str) -> str | None:
        """The directory `path` is the ready marker of, or None if it is no marker."""
        for regex, tail in self._rules:
            if regex.match(path):
                parts = path.split("/")
                return "/".join(parts[: max(len(parts) - tail, 0)])
        return None
