"""Polls one node's /primary from inside that node's own network namespace.

Run as `ip netns exec <ns> python -m tests.chaos.sampler URL OUT`: it asks URL every ~50 ms and
appends one line per request, `<start> <end> <status>`, with time.monotonic() taken before the
request is sent and after the answer (or the failure) came back; status 0 means no answer within
the timeout. CLOCK_MONOTONIC is shared by every namespace, so the runner can merge the files of
both nodes, and an isolated node is still observed. Stdlib only: it starts fast and stays small.
"""

from __future__ import annotations

import signal
import sys
import time
import urllib.error
import urllib.request

INTERVAL = 0.05
TIMEOUT = 0.5


def ask(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def main(argv: list[str]) -> int:
    url, out = argv
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(out, "a", buffering=1, encoding="ascii") as log:  # line-buffered: the runner tails it
        while not stopping:
            started = time.monotonic()
            status = ask(url)
            log.write(f"{started:.6f} {time.monotonic():.6f} {status}\n")
            time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
