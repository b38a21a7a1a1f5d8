"""A real OpenSSH server on 127.0.0.1 for tests (Debian's openssh-server, /usr/sbin/sshd).

`running_sshd(folder)` generates a host key and a client key, writes an sshd_config that trusts only
that client key (authorized_keys in the folder, public keys only, no PAM, StrictModes off because
pytest's folders are not owned the way sshd wants), starts `sshd -D -e` on a free port, waits for its
banner, and stops it on exit whatever happened. It serves SFTP (`internal-sftp`, with OpenSSH's
posix-rename, fsync and lsetstat extensions). `known_hosts` holds the host key as
`[127.0.0.1]:port`, so clients check it for real; `wrong_known_hosts` holds another key, for tests that
must see a host key refused.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import free_port

SSHD = "/usr/sbin/sshd"  # sshd refuses to start unless run by its absolute path
PRIVSEP_DIR = "/run/sshd"  # Debian's sshd needs it; its service unit normally creates it
START_TIMEOUT = 10.0


@dataclass
class SshServer:
    folder: Path
    port: int
    proc: subprocess.Popen[bytes]
    user: str

    @property
    def client_key(self) -> Path:
        return self.folder / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    @property
    def wrong_known_hosts(self) -> Path:
        return self.folder / "wrong_known_hosts"

    @property
    def log_path(self) -> Path:
        return self.folder / "sshd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _keygen(path: Path) -> str:
    """A new ed25519 key pair at path (and path.pub); returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


def _config(folder: Path, port: int, user: str) -> str:
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {folder / 'host_ed25519'}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            f"AllowUsers {user}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "PrintMotd no",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(64).startswith(b"SSH-2.0")
    except OSError:
        return False


@contextlib.contextmanager
def running_sshd(folder: Path) -> Iterator[SshServer]:
    folder.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    host_pub = _keygen(folder / "host_ed25519")
    client_pub = _keygen(folder / "client_ed25519")
    other_pub = _keygen(folder / "other_host_ed25519")
    (folder / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    key_type_and_key = " ".join(host_pub.split()[:2])
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type_and_key}\n")
    (folder / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(other_pub.split()[:2])}\n")
    config = folder / "sshd_config"
    config.write_text(_config(folder, port, user))
    os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
    with open(folder / "sshd.log", "wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = SshServer(folder, port, proc, user)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _banner(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sshd did not start (exit {proc.poll()}):\n{server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
