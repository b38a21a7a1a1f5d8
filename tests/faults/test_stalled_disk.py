"""A stalled disk on a living leader is not a dead leader (issue 16).

The leader's STORAGE_PATH is a small ext4 filesystem on a loop device, frozen with
`fsfreeze --freeze` (every write into it blocks in the kernel, as on a dying disk or a hung
SAN) for twice FAILOVER_TIMEOUT while the leader process is otherwise alive. Its heartbeats,
API and status go on (writes and the /health probe run off the event loop), so the standby
must not take over, and both nodes are never writable at once. Writes made meanwhile wait,
and after the thaw every acknowledged write is on the standby. Thaw, umount and losetup -d
run whatever happened.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import SERVER_KEY, Node, http, make_pair, tree_diff, wait_until
from tests.support.ha import PrimarySampler, primary

FAILOVER_TIMEOUT = 3.0
FROZEN_FOR = 2 * FAILOVER_TIMEOUT
IMAGE_SIZE = 64 << 20
pytestmark = pytest.mark.timeout(120)


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def loop_mounted_ext4(image: Path, mountpoint: Path) -> Iterator[None]:
    """An empty ext4 filesystem mounted at `mountpoint`; thawed, unmounted and detached on exit."""
    with image.open("wb") as fh:
        fh.truncate(IMAGE_SIZE)
    device = run("losetup", "--find", "--show", str(image))
    mounted = False
    try:
        run("mkfs.ext4", "-q", "-F", device)
        mountpoint.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "ext4", device, str(mountpoint))
        mounted = True
        (mountpoint / "lost+found").rmdir()  # not plugin data; the standby's storage has none
        yield
    finally:
        if mounted:
            subprocess.run(["fsfreeze", "--unfreeze", str(mountpoint)], capture_output=True, check=False)
            run("umount", str(mountpoint))
        run("losetup", "-d", device)


@contextlib.contextmanager
def frozen(mountpoint: Path) -> Iterator[None]:
    run("fsfreeze", "--freeze", str(mountpoint))
    try:
        yield
    finally:
        run("fsfreeze", "--unfreeze", str(mountpoint))


class Writer(threading.Thread):
    """PUTs a new file on the leader every 100 ms; remembers what the leader acknowledged."""

    def __init__(self, node: Node) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.acked: dict[str, bytes] = {}
        self.done = threading.Event()
        self.longest = 0.0

    def run(self) -> None:
        n = 0
        while not self.done.is_set():
            name, body = f"writes/w{n:04d}.txt", f"write {n}\n".encode() * 50
            started = time.monotonic()
            with contextlib.suppress(OSError):
                status, _h, _raw = http(
                    "PUT",
                    f"{self.node.url}/internal/files/{name}",
                    body=body,
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                    timeout=60,
                )
                if status == 200:
                    self.acked[name] = body
            self.longest = max(self.longest, time.monotonic() - started)
            n += 1
            self.done.wait(0.1)


def test_a_leader_whose_disk_stalls_past_failover_timeout_is_not_replaced(tmp_path: Path) -> None:
    env = {"FAILOVER": "auto", "FAILOVER_TIMEOUT": str(FAILOVER_TIMEOUT), "HEARTBEAT_INTERVAL": "1"}
    pair = make_pair(tmp_path, master_env=dict(env), slave_env=dict(env))
    with contextlib.ExitStack() as stack:
        stack.enter_context(loop_mounted_ext4(tmp_path / "disk.img", pair.master.storage))
        stack.callback(pair.stop)  # runs before the umount: nothing may hold the filesystem
        pair.start()
        wait_until(lambda: primary(pair.master), 15, message="the master to lead")
        wait_until(lambda: pair.slave.status()["synced"], 20, message="the standby to be synced")
        epoch = pair.master.status()["epoch"]
        writer = Writer(pair.master)
        stack.callback(writer.done.set)
        with PrimarySampler(pair) as sampler:
            writer.start()
            wait_until(lambda: len(writer.acked) >= 10, 20, message="writes before the freeze")
            with frozen(pair.master.storage):
                frozen_at = time.monotonic()
                time.sleep(0.5)  # the writer is now blocked in a write
                stuck = len(writer.acked)
                started = time.monotonic()
                code, _h, raw = http("GET", f"{pair.master.url}/health", timeout=10)
                answered_in = time.monotonic() - started
                while time.monotonic() - frozen_at < FROZEN_FOR:
                    assert not primary(pair.slave), "the standby took over from a leader with a stalled disk"
                    time.sleep(0.1)
                status = pair.master.status()  # the leader's API answers while its disk is frozen
                assert len(writer.acked) <= stuck + 1, "a write was acknowledged while the disk was frozen"
            assert code == 503 and b"stalled disk" in raw, (code, raw[:300])
            assert answered_in < 5, f"/health took {answered_in:.1f}s on a frozen disk"
            assert status["role"] == "master" and status["peer_connected"], status
            wait_until(lambda: len(writer.acked) > stuck + 5, 30, message="writes after the thaw")
            writer.done.set()
            writer.join(70)
            wait_until(lambda: pair.master.status()["pending_changes"] == 0, 30, message="every write acked")
            time.sleep(0.5)
        assert sampler.both == [], "both nodes were writable at once"
        assert not primary(pair.slave)
        assert (pair.master.status()["role"], pair.master.status()["epoch"]) == ("master", epoch)
        assert pair.slave.status()["role"] == "slave"
        wait_until(lambda: not tree_diff(pair.master.storage, pair.slave.storage), 30, message="convergence")
        lost = [
            name for name, body in writer.acked.items() if (pair.slave.storage / name).read_bytes() != body
        ]
        assert lost == [], f"acknowledged writes missing on the standby: {lost[:5]}"
        assert writer.longest >= FROZEN_FOR - 1, "no write waited for the thaw: was the disk frozen?"
        print(
            f"stalled disk: frozen {FROZEN_FOR:.0f}s (FAILOVER_TIMEOUT {FAILOVER_TIMEOUT:.0f}s), "
            "no failover; "
            f"{len(writer.acked)} writes acknowledged, longest {writer.longest:.1f}s, none lost; "
            f"/health answered 503 in {answered_in:.1f}s while frozen"
        )
