"""SYNC_TARGET=ssh://: a real master replicating to a plain host that runs only a real OpenSSH sshd.

The "remote host" is a folder on this machine served by the sshd fixture, so
the tests can compare trees directly and plant things in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Node, make_pair, snapshot, wait_until
from tests.support.ha import primary
from tests.support.sshd import SshServer, running_sshd
from tests.support.workload import MIB, scripted_workload, write


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    with running_sshd(tmp_path / "sshd") as server:
        yield server


def ssh_master(tmp_path: Path, sshd: SshServer, remote: Path, known_hosts: Path | None = None) -> Node:
    return Node(
        "master",
        "master",
        tmp_path / "master",
        extra_env={
            "SYNC_TARGET": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{remote}",
            "SSH_KEY_FILE": str(sshd.client_key),
            "SSH_KNOWN_HOSTS": str(known_hosts or sshd.known_hosts),
            "CONTROL_INTERVAL": "0.1",
            "EXCLUDE": "*.tmp",
        },
    )


@contextlib.contextmanager
def running(node: Node) -> Iterator[Node]:
    try:
        node.start()
        yield node
    finally:
        with contextlib.suppress(AssertionError):
            node.stop()
        node.kill()


def remote_diff(master: Node, remote: Path) -> list[str]:
    """tree_diff of the master's storage and the remote folder, leaving out excluded *.tmp files."""
    left = {p: v for p, v in snapshot(master.storage).items() if not p.endswith(".tmp")}
    right = {p: v for p, v in snapshot(remote).items() if not p.endswith(".tmp")} if remote.exists() else {}
    return [
        f"{p}: {left.get(p)} != {right.get(p)}"
        for p in sorted(set(left) | set(right))
        if left.get(p) != right.get(p)
    ]


def wait_same(master: Node, remote: Path, timeout: float) -> None:
    last: list[str] = []

    def same() -> bool:
        nonlocal last
        last = remote_diff(master, remote)
        return not last

    try:
        wait_until(same, timeout, interval=0.1, message="the remote tree to converge")
    except AssertionError:
        raise AssertionError(f"trees differ after {timeout}s: {last[:20]}\n{master.log_tail()}") from None


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".hs~")]


@pytest.mark.timeout(60)
def test_initial_sync_copies_the_tree_and_removes_what_the_source_lacks(
    tmp_path: Path, sshd: SshServer
) -> None:
    remote = tmp_path / "dr"
    node = ssh_master(tmp_path, sshd, remote)
    root = node.storage
    write(root / "a/b/c/file.txt", b"hello\n")
    write(root / "tool.sh", b"#!/bin/sh\n")
    os.chmod(root / "tool.sh", 0o755)
    os.chmod(root / "a/b", 0o750)
    write(root / "same-size.txt", b"new content")
    os.symlink("a/b", root / "link-to-dir")
    os.symlink("/etc/hostname", root / "link-absolute")
    write(root / "scratch.tmp", b"excluded here")
    # The remote host already holds strays, a stale file, a leftover temp file and an excluded file.
    write(remote / "stray/deep/x.bin", b"x")
    write(remote / "same-size.txt", b"old content")
    write(remote / ".hs~0123456789abcdef", b"interrupted")
    write(remote / "keep.tmp", b"excluded there")
    os.utime(remote / "same-size.txt", (1_000_000_000, 1_000_000_000))

    with running(node):
        wait_same(node, remote, 30)
        assert temp_files(remote) == []
        assert (remote / "keep.tmp").read_bytes() == b"excluded there"
        assert not (remote / "scratch.tmp").exists()
        assert os.readlink(remote / "link-to-dir") == "a/b"
        status = node.status()
        assert status["peer_connected"] is True and status["last_error"] is None, status
        assert primary(node), "with a plain SSH host as its only target, the master leads"
        # /internal/sync works for an ssh target: it answers once the remote host has everything.
        write(root / "after/sync.txt", b"synced")
        code, summary = node.call("POST", "/internal/sync")
        assert code == 200, summary
        assert (remote / "after/sync.txt").read_bytes() == b"synced"
        assert remote_diff(node, remote) == []
        assert node.metric("plugin_sync_bytes_total", {"direction": "sent"}) > 0


@pytest.mark.timeout(120)
def test_workload_converges_and_a_restarted_master_catches_up(tmp_path: Path, sshd: SshServer) -> None:
    remote = tmp_path / "dr"
    node = ssh_master(tmp_path, sshd, remote)
    root = node.storage
    with running(node):
        started = time.monotonic()
        scripted_workload(root, small_files=1200, big_size=4 * MIB)
        written = time.monotonic() - started
        wait_same(node, remote, 60)
        caught_up = time.monotonic() - started - written
        print(f"workload written in {written:.1f}s, remote identical {caught_up:.1f}s later")
        # Known defect (under load): a few temp files can stay behind in a folder renamed while the
        # workload ran, until the next reconciliation removes them. That reconciliation must do so.
        code, _summary = node.call("POST", "/internal/sync")
        assert code == 200
        assert temp_files(remote) == []

    # While the master is down: deletes, a folder rename, new files, a chmod, a file turned into a folder.
    shutil.rmtree(root / "small/d07")
    os.unlink(root / "big/blob0.bin")
    os.rename(root / "small/d08", root / "small/d08-renamed")
    write(root / "new/while-down.txt", b"written while the master was down")
    os.chmod(root / "tool.sh", 0o700)
    os.unlink(root / "link-dangling")
    write(root / "link-dangling/now-a-folder.txt", b"was a symlink")
    with running(node):
        started = time.monotonic()
        wait_same(node, remote, 30)
        print(f"after the restart: remote identical in {time.monotonic() - started:.1f}s")
        assert primary(node), "a restarted master with only an ssh target leads again"
    assert not (remote / "small/d07").exists() and not (remote / "big/blob0.bin").exists()


@pytest.mark.timeout(60)
def test_a_wrong_host_key_is_refused_and_nothing_is_written(tmp_path: Path, sshd: SshServer) -> None:
    remote = tmp_path / "dr"
    node = ssh_master(tmp_path, sshd, remote, known_hosts=sshd.wrong_known_hosts)
    write(node.storage / "secret.txt", b"must not reach an unverified host")
    with running(node):
        wait_until(
            lambda: "host key not verified" in (node.status()["last_error"] or ""),
            20,
            message="the host key refusal in /internal/status",
        )
        status = node.status()
        assert "SSH_KNOWN_HOSTS" in status["last_error"], status
        assert status["peer_connected"] is False
        time.sleep(2)  # a few reconnect attempts: each must be refused again
        assert not remote.exists(), list(remote.rglob("*"))
    assert "Accepted publickey" not in sshd.log()


class RemoteSampler:
    """Lists one remote folder as fast as it can and records what it saw under a final name and as temps."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self.sizes: set[int] = set()
        self.temps_seen = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RemoteSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as it:
                for entry in it:
                    with contextlib.suppress(FileNotFoundError):
                        size = entry.stat(follow_symlinks=False).st_size
                        if entry.name == self.name:
                            self.sizes.add(size)
                        elif entry.name.startswith(".hs~"):
                            self.temps_seen += 1
            self.samples += 1
            time.sleep(0.0005)


@pytest.mark.timeout(60)
def test_the_remote_host_never_shows_a_partial_file(tmp_path: Path, sshd: SshServer) -> None:
    remote = tmp_path / "dr"
    node = ssh_master(tmp_path, sshd, remote)
    first, second = 24 * MIB, 32 * MIB
    with running(node):
        write(node.storage / "big/data.bin", b"")
        wait_same(node, remote, 20)
        with RemoteSampler(remote / "big", "data.bin") as sampler:
            write(node.storage / "big/data.bin", os.urandom(first))
            wait_same(node, remote, 30)
            write(node.storage / "big/data.bin", os.urandom(second))
            wait_same(node, remote, 30)
        print(f"{sampler.samples} samples, sizes {sorted(sampler.sizes)}, temps seen {sampler.temps_seen}")
        assert sampler.sizes <= {0, first, second}, sorted(sampler.sizes)
        assert sampler.temps_seen > 0, "the sampler never saw a transfer in flight: it proves nothing"


def session_processes(sshd: SshServer) -> list[int]:
    """The per-connection sshd processes (children of the listening one)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == sshd.proc.pid:
                    found.append(int(entry))
    return found


@pytest.mark.timeout(60)
def test_a_dropped_connection_mid_transfer_reconnects_and_cleans_up(tmp_path: Path, sshd: SshServer) -> None:
    remote = tmp_path / "dr"
    node = ssh_master(tmp_path, sshd, remote)
    with running(node):
        wait_until(lambda: node.status()["peer_connected"], 20, message="the ssh link")
        sessions = session_processes(sshd)
        assert sessions, "no sshd session process found for the link"
        write(node.storage / "big/data.bin", os.urandom(64 * MIB))
        wait_until(lambda: bool(temp_files(remote)), 20, interval=0.001, message="the transfer to start")
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)  # the link drops with a temp file half written
        write(node.storage / "during/outage.txt", b"written while the link was down")
        wait_same(node, remote, 40)
        assert temp_files(remote) == [], "the leftover temp file was not removed at reconciliation"
        assert node.metric("plugin_sync_full_rescans_total", {"reason": "reconnect"}) >= 1
        assert node.status()["peer_connected"] is True


@pytest.mark.timeout(60)
def test_a_symlink_planted_on_the_remote_host_is_never_followed(tmp_path: Path, sshd: SshServer) -> None:
    remote = tmp_path / "dr"
    outside = tmp_path / "outside"
    write(outside / "victim.txt", b"keep me")
    before = snapshot(outside)
    node = ssh_master(tmp_path, sshd, remote)
    root = node.storage
    write(root / "plugins/a.txt", b"inside")
    write(root / "file.txt", b"replaces a link, never writes through it")
    write(root / "gone/x.txt", b"x")
    remote.mkdir()
    os.symlink(outside, remote / "plugins")  # a folder on the way that is a link to outside
    os.symlink(outside / "victim.txt", remote / "file.txt")  # a file that is a link to outside
    os.symlink(outside, remote / "stray-link")  # a stray: deleted as a link, its target kept
    with running(node):
        wait_same(node, remote, 30)
        assert not (remote / "plugins").is_symlink() and not (remote / "file.txt").is_symlink()
        assert snapshot(outside) == before
        # Planted while the link runs: a link where the master is about to create a folder, a link
        # in place of a folder the remote host already has, and a link where a delete will land.
        os.symlink(outside, remote / "late")
        shutil.rmtree(remote / "gone")
        os.symlink(outside, remote / "gone")
        shutil.rmtree(remote / "plugins")
        os.symlink(outside, remote / "plugins")
        write(root / "late/b.txt", b"late")
        write(root / "plugins/new.txt", b"new")
        shutil.rmtree(root / "gone")
        code, summary = node.call("POST", "/internal/sync")  # repairs what was planted on the remote
        assert code == 200, summary
        wait_same(node, remote, 30)
        assert snapshot(outside) == before, "something outside the target folder changed"
        assert not (outside / "b.txt").exists() and not (outside / "new.txt").exists()


@pytest.mark.timeout(60)
def test_a_leader_fans_out_to_a_replica_and_an_ssh_host_alike(tmp_path: Path, sshd: SshServer) -> None:
    remote = tmp_path / "dr"
    ssh_url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{remote}"
    pair = make_pair(
        tmp_path,
        master_env={"SSH_KEY_FILE": str(sshd.client_key), "SSH_KNOWN_HOSTS": str(sshd.known_hosts)},
    )
    pair.master.extra_env["SYNC_TARGET"] = f"{pair.slave.url},{ssh_url}"
    write(pair.master.storage / "before/start.txt", b"already there")
    try:
        pair.start()
        write(pair.master.storage / "after/start.txt", b"written while both links run")
        os.symlink("after", pair.master.storage / "link")
        pair.wait_converged(timeout=30)
        wait_same(pair.master, remote, 30)
        code, summary = pair.master.call("POST", "/internal/sync")
        assert code == 200, summary
        assert primary(pair.master)
    finally:
        pair.stop()
