"""Noticing that the watcher may have missed events, so that nothing is lost silently.

watchdog (7.x) handles an inotify queue overflow or a failed watch inside its
own threads and only says so in its log. `WatchdogAlarm` is a logging
handler on watchdog's loggers that turns those lines into a call on the event
loop; `Watcher.check` separately notices inotify reader or emitter threads that
died (for example when inotify watches run out: ENOSPC). Either way the
leader rescans and repairs by manifest comparison. The integration test
that overflows a real kernel queue guards this against watchdog changing
its wording.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify", "watchdog.observers.api")
_SIGNS = (
    ("overflow", "inotify_overflow"),
    ("Unable to rebuild", "watch_error"),
    ("watch limit", "inotify_watch_limit"),
    ("No space left", "inotify_watch_limit"),
)


class WatchdogAlarm(logging.Handler):
    """Runs on watchdog's threads: recognise a loss and hand its reason to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_loss: Callable[[str], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._loop = loop
        self._on_loss = on_loss

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f" {record.exc_info[1]}"
        for sign, reason in _SIGNS:
            if sign in message and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._on_loss, reason)
                return

    def install(self) -> None:
        for name in WATCHDOG_LOGGERS:
            logging.getLogger(name).addHandler(self)

    def uninstall(self) -> None:
        for name in WATCHDOG_LOGGERS:
            logging.getLogger(name).removeHandler(self)


def inotify_watches_held() -> int:
    """Watches held by this process, read from the kernel (/proc/self/fdinfo), not from watchdog."""
    total = 0
    fdinfo = "/proc/self/fdinfo"
    for name in os.listdir(fdinfo):
        try:
            with open(os.path.join(fdinfo, name), encoding="ascii", errors="replace") as fh:
                total += fh.read().count("inotify wd:")
        except OSError:
            continue
    return total


def directories_below(root: str) -> int:
    """Directories a recursive watch needs (the root included), never following symlinks."""
    count = 0
    stack = [root]
    while stack:
        count += 1
        try:
            with os.scandir(stack.pop()) as entries:
                stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return count


@dataclass(frozen=True)
class Coverage:
    """Folders a recursive watch needs against watches the kernel says this process holds."""

    needed: int
    held: int

    def short(self, slack: int = 2) -> bool:
        return self.held + slack < self.needed

    def sentence(self) -> str:
        return (
            f"only {self.held} of {self.needed} directories are watched: inotify watches ran out "
            "(raise fs.inotify.max_user_watches); periodic rescans cover the rest"
        )


def coverage(root: str) -> Coverage:
    """Count both now (a walk of every folder: call it off the loop)."""
    needed = directories_below(root)
    return Coverage(needed=needed, held=inotify_watches_held())
