"""ExactRead: exact pieces of a body served from whatever chunks the socket delivered."""

from __future__ import annotations

import asyncio

import pytest

from replication.exact_read import ExactRead


def reader(chunks: list[bytes]) -> tuple[ExactRead, list[int]]:
    """An ExactRead over `chunks`, and the count of chunks it asked for."""
    asked: list[int] = []
    pending = list(chunks)

    async def readany() -> bytes:
        asked.append(1)
        return pending.pop(0) if pending else b""

    return ExactRead(readany), asked


def test_pieces_within_a_chunk_are_served_without_asking_the_stream_again() -> None:
    read, asked = reader([b"abcdefgh"])

    async def run() -> list[bytes]:
        return [await read(3), await read(0), await read(4), await read(1)]

    assert asyncio.run(run()) == [b"abc", b"", b"defg", b"h"]
    assert len(asked) == 1


def test_a_piece_spanning_chunks_is_joined_and_the_rest_of_the_last_chunk_kept() -> None:
    read, asked = reader([b"ab", b"cd", b"efgh", b"ij"])

    async def run() -> list[bytes]:
        return [await read(1), await read(6), await read(1), await read(2)]

    assert asyncio.run(run()) == [b"a", b"bcdefg", b"h", b"ij"]
    assert len(asked) == 4


def test_a_piece_that_is_a_whole_chunk_is_that_chunk() -> None:
    chunk = b"z" * 1000
    read, _ = reader([chunk])
    assert asyncio.run(read(1000)) is chunk


@pytest.mark.parametrize("chunks", [[], [b"ab"], [b"a", b"b"]])
def test_the_stream_ending_early_raises_like_readexactly(chunks: list[bytes]) -> None:
    read, _ = reader(chunks)
    with pytest.raises(asyncio.IncompleteReadError) as raised:
        asyncio.run(read(3))
    assert raised.value.partial == b"".join(chunks)
    assert raised.value.expected == 3
