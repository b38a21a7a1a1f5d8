"""Named failures of the plugin store; routes.py turns each into one problem response."""

from __future__ import annotations

from typing import Any, ClassVar


class StoreError(Exception):
    """Base class: `status` and `title` say how a client sees it, `extra` adds fields to the body."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "plugin store error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class InvalidIdentifier(StoreError, ValueError):
    status, title = 400, "invalid plugin identifier"


class UnverifiableIdentifier(StoreError, ValueError):
    status, title = 400, "identifier cannot be verified"


class InvalidEvent(StoreError, ValueError):
    status, title = 400, "invalid event"


class NotFound(StoreError, LookupError):
    status, title = 404, "not found"


class NotWritable(StoreError):
    """This node must not write the replicated storage (it is not the leader)."""

    status, title = 503, "not the primary"


class PackageTooLarge(StoreError):
    status, title = 413, "package too large"


class InvalidPackage(StoreError):
    """Not a readable .difypkg: not a zip, no manifest.yaml, unsafe or unreadable entries."""

    status, title = 422, "invalid package"


class ChecksumMismatch(InvalidPackage):
    status, title = 422, "checksum mismatch"

    def __init__(self, identifier: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{identifier}: the package's checksum is {actual}, the identifier says {expected}",
            expected=expected,
            actual=actual,
        )
        self.expected, self.actual = expected, actual


class MarketplaceError(StoreError):
    """The marketplace could not be reached, or answered with an error or with bad content."""

    status, title = 502, "marketplace download failed"


class NotConfigured(StoreError):
    status, title = 503, "not configured"


class Corrupted(StoreError):
    """The package is known not to match its identifier; it is not served."""

    status, title = 409, "package corrupted"


class CatalogueError(StoreError):
    status, title = 503, "catalogue unavailable"


class NotReplicated(StoreError):
    """SYNC_MODE=sync: stored on the primary, but the replica did not confirm it in time."""

    status, title = 504, "not confirmed by the replica"
