"""`ssh://user@host[:port]/absolute/path`: a replication target that is a plain host running sshd.

Parsed once, validated strictly: the user must be named (no guessing from the
environment), no password (keys only), and the path must be absolute and not
`/`, because the link deletes on the remote whatever the source does not have.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEME = "ssh"
DEFAULT_PORT = 22


def is_ssh_url(url: str) -> bool:
    return url.lower().startswith(f"{SCHEME}://")


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int
    path: str
    """Absolute, normalised folder on the remote host that mirrors STORAGE_PATH."""

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        """The target in `url`, or ValueError saying what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme.lower() != SCHEME:
            raise ValueError("expected ssh://user@host[:port]/absolute/path")
        if parts.password is not None:
            raise ValueError("passwords are not accepted in the URL: authenticate with SSH_KEY_FILE")
        if not parts.username:
            raise ValueError("the user is missing: ssh://user@host[:port]/absolute/path")
        if not parts.hostname:
            raise ValueError("the host is missing: ssh://user@host[:port]/absolute/path")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("the port is invalid") from None
        if parts.query or parts.fragment:
            raise ValueError("no query or fragment is accepted")
        raw_path = unquote(parts.path)
        if not raw_path.startswith("/") or "\x00" in raw_path:
            raise ValueError("the remote path is missing: ssh://user@host[:port]/absolute/path")
        if ".." in raw_path.split("/"):
            raise ValueError("the remote path must not contain '..'")
        path = posixpath.normpath(raw_path)
        if path in ("/", "//"):
            raise ValueError("refusing the remote root '/' as a target: name a folder")
        return cls(user=unquote(parts.username), host=parts.hostname, port=port, path=path)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}://{self.user}@{host}:{self.port}{self.path}"
