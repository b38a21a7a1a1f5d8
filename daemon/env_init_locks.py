"""Clear the plugin daemon's stale `env_init_lock:<identifier>` keys in Dify's Redis.

The plugin daemon takes `plugin_daemon:env_init_lock:<identifier>` (SET NX, 15 min expiry)
around each plugin's environment set-up (internal/core/control_panel/launcher_local.go
LaunchLocalPlugin; the `plugin_daemon:` prefix is pkg/utils/cache/redis.go serialKey). A
leader killed in the middle of an install leaves the key behind, and the promoted node's
daemon would wait up to 2 minutes per attempt, for 15 minutes, before launching that
plugin. Only the leader runs a plugin daemon, so at promotion every such key for a plugin
installed here belongs to a dead process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from daemon.store.errors import InvalidIdentifier
from daemon.store.identifier import parse

KEY_PREFIX = "plugin_daemon:env_init_lock:"
MAX_PLUGINS = 100_000
"""More installed plugins than this is not a plugin folder; stop listing rather than run away."""


def installed(plugin_dir: str) -> Iterator[str]:
    """Identifiers installed in `plugin_dir` (`author/name:version@checksum` or `name:...`)."""
    count = 0
    for author, name in _candidates(plugin_dir):
        text = f"{author}/{name}" if author else name
        try:
            parse(text)
        except InvalidIdentifier:
            continue
        yield text
        count += 1
        if count >= MAX_PLUGINS:
            return


def _candidates(plugin_dir: str) -> Iterator[tuple[str, str]]:
    try:
        top = list(os.scandir(plugin_dir))
    except OSError:
        return
    for entry in top:
        if entry.name.startswith("."):
            continue
        if entry.is_file(follow_symlinks=False):
            yield "", entry.name
        elif entry.is_dir(follow_symlinks=False):
            try:
                inner = list(os.scandir(entry.path))
            except OSError:
                continue
            yield from ((entry.name, e.name) for e in inner if e.is_file(follow_symlinks=False))


class RedisLockClearer:
    """Deletes the init locks of every plugin installed on this node, in one round trip."""

    def __init__(self, url: str, password: str, plugin_dir: str, timeout: float = 2.0) -> None:
        self.url = url
        self.password = password
        self.plugin_dir = plugin_dir
        self.timeout = timeout

    async def clear(self) -> int:
        import redis.asyncio as aioredis  # only nodes given Dify's Redis pay for the import

        keys = [KEY_PREFIX + identifier for identifier in installed(self.plugin_dir)]
        if not keys:
            return 0
        client = aioredis.Redis.from_url(
            self.url,
            password=self.password or None,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
        )
        try:
            return int(await client.delete(*keys))
        finally:
            await client.aclose()
