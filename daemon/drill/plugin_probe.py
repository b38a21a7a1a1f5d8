"""`--plugin-call`: what a Dify user feels, a real plugin call through HAProxy, timed across the failover.

/primary answering again is not the end of a failover for Dify: the promoted node's plugin daemon must
start and launch its plugins before a tool call succeeds. The probe invokes one tool of one installed
plugin the way Dify's API does (`POST /plugin/<tenant>/dispatch/tool/invoke` with the daemon's key in
X-Api-Key and the plugin in X-Plugin-ID; the answer streams as server-sent events) every poll
interval, and records when calls fail and when they succeed again.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass

import aiohttp

from daemon.drill.config import PluginCallSettings
from daemon.drill.steps import Clock


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    ok: bool
    detail: str


class PluginProbe:
    def __init__(
        self, settings: PluginCallSettings, clock: Clock, interval: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.interval = interval
        self.tls = tls
        self.calls: list[Call] = []
        self._changed = asyncio.Event()
        self._stopping = False

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(ssl=self.tls or True)
        ) as s:
            while not self._stopping:
                started = self.clock.now()
                ok, detail = await self._call(s)
                self.calls.append(Call(started, self.clock.now(), ok, detail))
                self._changed.set()
                await asyncio.sleep(max(0.0, self.interval - (self.clock.now() - started)))

    def stop(self) -> None:
        self._stopping = True

    async def _call(self, session: aiohttp.ClientSession) -> tuple[bool, str]:
        s = self.settings
        headers = {"X-Api-Key": s.key, "X-Plugin-ID": s.plugin, "Content-Type": "application/json"}
        url = f"{s.url.rstrip('/')}/plugin/{s.tenant}/dispatch/tool/invoke"
        try:
            async with session.post(url, json=s.body(), headers=headers) as resp:
                text = (await resp.content.read(65536)).decode(errors="replace")
                if resp.status != 200:
                    return False, f"HTTP {resp.status}"
                return _first_event_ok(text)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, type(exc).__name__

    def ok_before(self, moment: float) -> int:
        return sum(1 for call in self.calls if call.ok and call.ended <= moment)

    def first_ok_after(self, moment: float) -> Call | None:
        """The first successful call begun after `moment` (one begun before the stop proves nothing)."""
        return next((c for c in self.calls if c.ok and c.started >= moment), None)

    async def wait_ok_after(self, moment: float, timeout: float) -> Call | None:
        deadline = self.clock.now() + timeout
        while (found := self.first_ok_after(moment)) is None:
            left = deadline - self.clock.now()
            if left <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return None
        return found

    def failed_between(self, start: float, end: float) -> int:
        return sum(1 for c in self.calls if not c.ok and start <= c.started <= end)

    def last_error(self) -> str:
        failed = [c for c in self.calls if not c.ok]
        return failed[-1].detail if failed else "none"


def _first_event_ok(text: str) -> tuple[bool, str]:
    """The daemon answers 200 and reports failures inside the stream: the first event must say code 0."""
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        try:
            event = json.loads(line[5:].strip())
        except ValueError:
            return False, "a stream event that is not JSON"
        if isinstance(event, dict) and event.get("code") == 0:
            return True, "ok"
        message = event.get("message") if isinstance(event, dict) else None
        return False, f"the plugin answered an error: {str(message)[:200]}"
    return False, "no event in the answer"
