"""Plugin identifiers, checked with the plugin daemon's own pattern.

A unique identifier is `author/name:version@checksum` (the author part is optional).
It is also the package's relative path under PACKAGE_DIR and PLUGIN_DIR: the pattern
admits no `/` beyond the author's, no `..` and no absolute path, so an identifier
that passes here cannot address anything outside those folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from daemon.store.errors import InvalidIdentifier

PATTERN = (
    r"^(?:([a-z0-9_-]{1,64})\/)?([a-z0-9_-]{1,255}):"
    r"([0-9]{1,4})(\.[0-9]{1,4}){1,3}(-\w{1,16})?@[a-f0-9]{32,64}$"
)
"""The plugin daemon's pattern, verbatim (Go's RE2: `\\w` is ASCII, `$` is the very end)."""

_UNIQUE = re.compile(PATTERN, re.ASCII)
_VERSION = r"[0-9]{1,4}(?:\.[0-9]{1,4}){1,3}(?:-\w{1,16})?"
REFERENCE_PATTERN = rf"^[a-z0-9_-]{{1,64}}/[a-z0-9_-]{{1,255}}(?::{_VERSION})?$"
"""What the marketplace resolves: `author/name` (latest) or `author/name:version`."""
_REFERENCE = re.compile(
    rf"^(?P<author>[a-z0-9_-]{{1,64}})/(?P<name>[a-z0-9_-]{{1,255}})(?::(?P<version>{_VERSION}))?$", re.ASCII
)
CHECKSUM_HEX = 64
"""The daemon's checksum is a SHA-256: only a 64-digit checksum can be recomputed and compared."""


@dataclass(frozen=True)
class PluginIdentifier:
    author: str
    name: str
    version: str
    checksum: str

    def __str__(self) -> str:
        prefix = f"{self.author}/" if self.author else ""
        return f"{prefix}{self.name}:{self.version}@{self.checksum}"

    @property
    def relpath(self) -> str:
        """The package's path relative to PACKAGE_DIR (or PLUGIN_DIR): the identifier itself."""
        return str(self)

    @property
    def plugin_id(self) -> str:
        return f"{self.author}/{self.name}" if self.author else self.name

    @property
    def verifiable(self) -> bool:
        return len(self.checksum) == CHECKSUM_HEX

    @property
    def workdir(self) -> str:
        """The unpacked plugin's folder under the working path: `author/name-version@checksum`."""
        prefix = f"{self.author}/" if self.author else ""
        return f"{prefix}{self.name}-{self.version}@{self.checksum}"


@dataclass(frozen=True)
class PluginReference:
    """`author/name[:version]`: a plugin the marketplace resolves to a unique identifier."""

    author: str
    name: str
    version: str | None

    def __str__(self) -> str:
        return f"{self.author}/{self.name}" + (f":{self.version}" if self.version else "")

    def matches(self, identifier: PluginIdentifier) -> bool:
        same = identifier.author == self.author and identifier.name == self.name
        return same and (self.version is None or identifier.version == self.version)


def parse(text: str) -> PluginIdentifier:
    """A unique identifier, or InvalidIdentifier naming the pattern."""
    if not isinstance(text, str) or not _UNIQUE.fullmatch(text):
        raise InvalidIdentifier(
            f"{_shown(text)} is not a plugin unique identifier: expected author/name:version@checksum "
            f"matching {PATTERN}",
            pattern=PATTERN,
        )
    head, checksum = text.rsplit("@", 1)
    author, _, rest = head.rpartition("/")
    name, version = rest.split(":", 1)
    return PluginIdentifier(author, name, version, checksum)


def parse_request(text: str) -> PluginIdentifier | PluginReference:
    """What a preload names: a unique identifier, or a reference the marketplace resolves."""
    if isinstance(text, str) and _UNIQUE.fullmatch(text):
        return parse(text)
    match = _REFERENCE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidIdentifier(
            f"{_shown(text)} is neither a unique identifier matching {PATTERN} "
            f"nor a marketplace reference matching {REFERENCE_PATTERN}",
            pattern=PATTERN,
            reference_pattern=REFERENCE_PATTERN,
        )
    return PluginReference(match["author"], match["name"], match["version"])


def _shown(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= 300 else shown[:300] + "..."
