"""Named failures of the plugin store; daemon/problems.py's table turns each into its problem response."""

from __future__ import annotations

from typing import Any

from replication.errors import HotstandbyError


class StoreError(HotstandbyError):
    """Base class: `extra` adds fields to the problem document (daemon/problems.py says status and title)."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class InvalidIdentifier(StoreError, ValueError):
    """Not a plugin identifier (author/name:version@checksum) or reference."""


class UnverifiableIdentifier(StoreError, ValueError):
    """An identifier whose checksum is not a full SHA-256, so the package cannot be checked against it."""


class InvalidEvent(StoreError, ValueError):
    """An event to record is malformed."""


class NotFound(StoreError, LookupError):
    """No such plugin or package here."""


class NotWritable(StoreError):
    """This node must not write the replicated storage (it is not the leader)."""


class PackageTooLarge(StoreError):
    """Larger than MAX_PLUGIN_PACKAGE_SIZE."""


class InvalidPackage(StoreError):
    """Not a readable .difypkg: not a zip, no manifest.yaml, unsafe or unreadable entries."""


class ChecksumMismatch(InvalidPackage):
    """The package's SHA-256 is not the one its identifier names."""

    def __init__(self, identifier: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{identifier}: the package's checksum is {actual}, the identifier says {expected}",
            expected=expected,
            actual=actual,
        )
        self.expected, self.actual = expected, actual


class MarketplaceError(StoreError):
    """The marketplace could not be reached, or answered with an error or with bad content."""


class NotConfigured(StoreError):
    """What the request needs is not configured (the marketplace, say)."""


class Corrupted(StoreError):
    """The package is known not to match its identifier; it is not served."""


class CatalogueError(StoreError):
    """The catalogue (SQLite or PostgreSQL) cannot be reached or refused the operation."""


class NotReplicated(StoreError):
    """SYNC_MODE=sync: stored on the primary, but the replica did not confirm it in time."""
