"""Exact reads of a batch's body, served from the chunks the socket delivered.

A seed's batch carries four pieces per file (frame length, header, content,
trailer). aiohttp's `StreamReader.readexactly` costs a few microseconds of
Python per call even when the bytes are already buffered: up to 0.1 s of the
replica's CPU in a 10,000-file seed (bench/results/2026-12-07-session17-notes.txt).
Here a piece that lies within the chunk already taken is a slice of it; the
stream is asked only when the chunk is used up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class ExactRead:
    """`await read(n)`: exactly `n` bytes, or asyncio.IncompleteReadError at the stream's end, as
    StreamReader.readexactly. `readany` returns the next chunk of any size, b"" at the end."""

    def __init__(self, readany: Callable[[], Awaitable[bytes]]) -> None:
        self._readany = readany
        self._chunk = b""
        self._offset = 0

    async def __call__(self, n: int) -> bytes:
        start = self._offset
        end = start + n
        if end <= len(self._chunk):
            self._offset = end
            return self._chunk[start:end]
        return await self._gather(n)

    async def _gather(self, n: int) -> bytes:
        """`n` bytes from the rest of the chunk and as many next chunks as it takes; the last chunk
        is kept for the following reads (each byte is copied once, into the result)."""
        parts = [self._chunk[self._offset :]] if self._offset < len(self._chunk) else []
        have = len(parts[0]) if parts else 0
        self._chunk, self._offset = b"", 0
        while True:
            chunk = await self._readany()
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            if have + len(chunk) >= n:
                used = n - have
                self._chunk, self._offset = chunk, used
                if not parts and used == len(chunk):
                    return chunk
                parts.append(chunk[:used])
                return b"".join(parts)
            parts.append(chunk)
            have += len(chunk)
