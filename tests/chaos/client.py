"""The chaos client: writes through HAProxy and records what each write's answer promises.

Each write has a unique content (path, version and random bytes), so its SHA-256 names it. A
write is `acked` only on 200 with "replicated": true (SYNC_MODE=sync: durable on both nodes),
`failed` only when the answer says nothing was written (503 from a node before it wrote, or
HAProxy's 503 when no server is up), and `unknown` otherwise: a timeout, 502, 504 (written on the
leader, not confirmed by the replica), 500. About one write in five overwrites an earlier path,
chosen among paths whose every write so far was answered acked or failed: after an unknown write
nobody can say which content is the latest, and an honest check needs to know.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field

from tests.chaos.checks import Outcome, Write
from tests.chaos.nsthread import enter_netns
from tests.support.cluster import SERVER_KEY, http

TIMEOUT = 8.0
PAUSE = 0.05  # between writes: about 15 writes a second keeps the small disks far from full
OVERWRITE_SHARE = 0.2
HAPROXY_NO_SERVER = b"No server is available"
REFUSED_BEFORE_WRITING = ("not the primary", "no replica connected")


def classify(status: int, body: bytes) -> tuple[Outcome, str]:
    if status == 200:
        try:
            replicated = json.loads(body).get("replicated") is True
        except (ValueError, AttributeError):
            return "unknown", "200 without a JSON body"
        return ("acked", "") if replicated else ("unknown", "200 but not replicated")
    if status == 503:
        if HAPROXY_NO_SERVER in body:
            return "failed", "haproxy: no server"
        try:
            title = str(json.loads(body).get("title", ""))
        except (ValueError, AttributeError):
            title = ""
        if title in REFUSED_BEFORE_WRITING:
            return "failed", title
        return "unknown", f"503 {body[:80]!r}"
    if status == 0:
        return "unknown", body.decode(errors="replace")[:120]
    return "unknown", f"{status} {body[:120]!r}"


@dataclass
class Writer:
    url: str
    namespace: str
    rng: random.Random
    writes: list[Write] = field(default_factory=list)
    _clean: list[str] = field(default_factory=list)  # paths with an acked write and no unknown one
    _tainted: set[str] = field(default_factory=set)
    _versions: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT + 10)
        if self.error is not None:
            raise RuntimeError(f"the writer failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            enter_netns(self.namespace)
            number = 0
            while not self._stop.is_set():
                if self._clean and self.rng.random() < OVERWRITE_SHARE:
                    self._write(self.rng.choice(self._clean), overwrite=True)
                else:
                    self._write(f"chaos/{number // 200:03d}/{number:06d}.bin", overwrite=False)
                    number += 1
                time.sleep(PAUSE)
        except BaseException as exc:
            self.error = exc

    def _write(self, path: str, overwrite: bool) -> None:
        version = self._versions[path] = self._versions.get(path, -1) + 1
        head = f"{path} v{version}\n".encode()
        content = head + self.rng.randbytes(self.rng.randint(32, 2048))
        started = time.monotonic()
        try:
            status, _headers, body = http(
                "PUT",
                f"{self.url}/internal/files/{path}",
                body=content,
                timeout=TIMEOUT,
                headers={"Authorization": f"Bearer {SERVER_KEY}"},
            )
        except OSError as exc:
            status, body = 0, f"{type(exc).__name__}: {exc}".encode()
        outcome, detail = classify(status, body)
        write = Write(
            path,
            hashlib.sha256(content).hexdigest(),
            len(content),
            overwrite,
            started,
            time.monotonic(),
            status,
            outcome,
            detail,
        )
        self.writes.append(write)
        if outcome == "unknown":
            self._tainted.add(path)
            if path in self._clean:
                self._clean.remove(path)
        elif outcome == "acked" and path not in self._tainted and path not in self._clean:
            self._clean.append(path)
