"""A stand-in plugin daemon for the gate's tests: it writes into its storage while it runs.

Like the real one it writes files of its own into the storage (`__pycache__`, persistence),
and it watches for files the leader wrote: one seen while it runs means hotstandby applied
replicated changes under a running daemon, the fight the gate exists to prevent.

    python -m tests.support.busy_daemon STORAGE EVENTS_FILE [LINGER_SECONDS]

On SIGTERM it goes on for LINGER_SECONDS (default 2) before it exits, as the real daemon
does while it shuts its plugins down.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

FOREIGN_PREFIX = "from-leader-"


def main(storage: str, events: str, linger: float = 2.0) -> int:
    stop_at = float("inf")

    def stop(signum: int, frame: object) -> None:
        nonlocal stop_at
        stop_at = min(stop_at, time.monotonic() + linger)

    signal.signal(signal.SIGTERM, stop)
    own = os.path.join(storage, "persistence")
    os.makedirs(own, exist_ok=True)
    pid = os.getpid()
    seen: set[str] = set(os.listdir(storage))
    note(events, "started", pid=pid)
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        with open(os.path.join(own, f"written-by-{pid}"), "w") as fh:
            fh.write(str(n))
        for name in set(os.listdir(storage)) - seen:
            seen.add(name)
            if name.startswith(FOREIGN_PREFIX):
                note(events, "foreign_file_while_running", pid=pid, name=name)
        time.sleep(0.02)
    note(events, "stopped", pid=pid)
    return 0


def note(events: str, event: str, **fields: object) -> None:
    with open(events, "a") as fh:
        fh.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *(float(a) for a in sys.argv[3:4])))
