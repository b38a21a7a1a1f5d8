"""Poll 127.0.0.1:PORT/primary every INTERVAL seconds and log `start end status` lines.

Run inside a node's network namespace (`ip netns exec`), so that what a partitioned node says
is still recorded. Times are CLOCK_MONOTONIC, shared by all namespaces; status 0 means no
answer within the timeout. Runs until terminated.

    python -m tests.support.ns_sampler PORT OUT [INTERVAL]
"""

from __future__ import annotations

import http.client
import signal
import sys
import time


def probe(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        connection.request("GET", "/primary")
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


def main(argv: list[str]) -> None:
    port, out = int(argv[0]), argv[1]
    interval = float(argv[2]) if len(argv) > 2 else 0.05
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(out, "a", buffering=1, encoding="ascii") as log:
        while True:
            started = time.monotonic()
            status = probe(port)
            log.write(f"{started:.4f} {time.monotonic():.4f} {status}\n")
            time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1:])
