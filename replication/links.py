"""Which link carries a target: HTTP to a hotstandby replica, or SFTP to a plain SSH host.

The node calls `make_sender` once per target; both kinds offer the same
surface (run, connected, last_error, wait_acked, reconcile, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from replication.journal import Journal
from replication.metrics import ReplicationMetrics
from replication.sender import LinkSettings, Sender
from replication.ssh_target import SshTarget, is_ssh_url

if TYPE_CHECKING:  # asyncssh costs a fifth of the start-up time: loaded only for an ssh:// target
    from replication.sftp_link import SftpSender

Link: TypeAlias = "Sender | SftpSender"


def make_sender(
    settings: LinkSettings,
    root: str,
    journal: Journal,
    metrics: ReplicationMetrics,
    skip: Callable[[str], bool],
    epoch: Callable[[], int],
    record_tree: Callable[[str], int],
    *,
    ssh_key_file: str = "",
    ssh_known_hosts: str = "",
) -> Link:
    """A Sender for an http(s):// target, an SftpSender for ssh://user@host[:port]/path."""
    if not is_ssh_url(settings.target):
        return Sender(settings, root, journal, metrics, skip, epoch, record_tree)
    from replication.sftp_link import SftpSender, SftpSettings  # late: see the TYPE_CHECKING import

    ssh = SftpSettings(
        target=SshTarget.parse(settings.target),
        key_file=ssh_key_file,
        known_hosts=ssh_known_hosts,
        heartbeat_interval=settings.heartbeat_interval,
        batch_max_ops=settings.batch_max_ops,
        batch_max_bytes=settings.batch_max_bytes,
        connect_timeout=settings.connect_timeout,
        max_backoff=settings.max_backoff,
    )
    return SftpSender(ssh, root, journal, metrics, skip, epoch, record_tree)
