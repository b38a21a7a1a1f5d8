"""Talk to the cluster from this process: threads that live in the client's network namespace.

setns(2) with CLONE_NEWNET moves only the calling thread, so a worker thread can open sockets on
the chaos bridge while the rest of the runner (signals, ip commands, files) stays in the root
namespace. Nothing is added to the root namespace's network.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceSwitchError(OSError):
    """setns(2) refused to move this thread into the namespace."""


def enter_netns(name: str) -> None:
    """Move the calling thread into /run/netns/<name> (made by `ip netns add`) for good."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NamespaceSwitchError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NamespaceCaller:
    """Runs calls on worker threads that entered one namespace when they started."""

    def __init__(self, namespace: str, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(
            workers, thread_name_prefix=f"ns-{namespace}", initializer=enter_netns, initargs=(namespace,)
        )

    def call(self, fn: Callable[..., T], *args: object, timeout: float = 30.0) -> T:
        return self._pool.submit(fn, *args).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
