"""Named failures of the replication engine, and the root of every named failure of hotstandby.

The daemon maps each class to an HTTP problem response in one place
(`daemon/problems.py`); the engine itself knows nothing about HTTP.
"""

from __future__ import annotations


class HotstandbyError(Exception):
    """Root of every named failure, engine and daemon alike (the daemon's own start in daemon/errors.py):
    one `except HotstandbyError` separates what we foresaw from a bug."""


class ReplicationError(HotstandbyError):
    """Base class: a replication step failed and nothing was half-applied."""

    applied_seq: int | None = None
    """Set by the receiver: how far the batch got before this error, for the sender to resume."""
    failed_seq: int | None = None
    """Set by the receiver: the sequence of the operation that failed."""


class ContainmentError(ReplicationError, ValueError):
    """A path would read, write or follow something outside STORAGE_PATH."""

    def __init__(self, message: str, *, symlink_at: str | None = None) -> None:
        super().__init__(message)
        self.symlink_at = symlink_at
        """The folder on the way that is a symlink here, when that was the reason."""


class NotRegularFileError(ReplicationError):
    """A path that had to be a regular file to be read is something else (a FIFO, a socket, a device,
    a folder, a symlink): it is never opened for reading. `st_mode` says what it is."""

    def __init__(self, message: str, *, st_mode: int) -> None:
        super().__init__(message)
        self.st_mode = st_mode


class ProtocolError(ReplicationError, ValueError):
    """A peer sent bytes that are not a well-formed operation stream."""


class IntegrityError(ReplicationError):
    """Received content does not match its declared size or hash."""


class FencedError(ReplicationError):
    """The peer has seen a higher epoch: the sender must stop writing."""

    def __init__(self, message: str, *, peer_epoch: int) -> None:
        super().__init__(message)
        self.peer_epoch = peer_epoch


class PeerError(ReplicationError, ConnectionError):
    """The peer is unreachable or answered with an error."""


class RefusedError(PeerError):
    """The peer refused a request (4xx); `body` is its problem document."""

    def __init__(self, message: str, *, status: int, body: dict[str, object]) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class MalformedAnswerError(PeerError):
    """The replica's answer cannot be used at all (replication/peer_answers.py); the link retries as
    after any failed request."""


class ReplicaStorageFullError(PeerError):
    """The replica answered 507: its disk is full. The change stays queued and is retried, ever
    more slowly (not at the link's 0.1 s pace), until the replica has room again."""


class RemoteOperationError(PeerError):
    """The SSH host refused one change (permissions, disk full, ...); the link itself is fine
    (replication/sftp_link.py)."""

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


class StorageFullError(ReplicationError, OSError):
    """The receiving disk has no room: the change stays queued on the sender."""
