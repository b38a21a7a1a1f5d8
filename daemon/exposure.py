"""Is this node reachable beyond its own host with nothing guarding /internal and the link?

Without SERVER_KEY anyone who reaches the port may write files through the replication link
and the operator endpoints; that is fine on loopback (tests, a sidecar) and dangerous anywhere
else. So beyond loopback a missing key stops the daemon at start-up (daemon/config.py), unless
the operator set ALLOW_UNAUTHENTICATED=true: then the sentence below is logged at start-up as a
warning and shown in /internal/status, for as long as the node runs that way.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; a wildcard (0.0.0.0, ::) or any other name is not."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Listener(Protocol):
    """What the warning needs of a Config (daemon/config.py imports this module, not the reverse)."""

    @property
    def server_key(self) -> str: ...
    @property
    def server_host(self) -> str: ...
    @property
    def server_port(self) -> int: ...


def unguarded_warning(config: Listener) -> str | None:
    """The sentence to log and show when the node listens beyond loopback without SERVER_KEY, else None."""
    if config.server_key or is_loopback(config.server_host):
        return None
    return (
        f"UNAUTHENTICATED: SERVER_KEY is not set and the API listens on {config.server_host}:"
        f"{config.server_port} (ALLOW_UNAUTHENTICATED=true): anyone who reaches this port can write "
        "into STORAGE_PATH through /internal and the replication link, and force a promotion; set SERVER_KEY"
    )
