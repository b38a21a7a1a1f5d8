"""The watcher's hand-off gives the loop back between chunks of a burst (replication/watcher.py _Handoff)."""

from __future__ import annotations

import asyncio
import threading

from watchdog.events import FileClosedEvent, FileSystemEvent

from replication.watcher import HANDOFF_CHUNK, _Handoff


def test_a_burst_is_drained_in_order_in_chunks_with_the_loop_free_in_between() -> None:
    total = HANDOFF_CHUNK * 10 + 7
    drained: list[list[str]] = []
    ticks: list[int] = []  # len(drained) each time another task got a turn

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def drain(events: list[FileSystemEvent]) -> None:
            drained.append([str(e.src_path) for e in events])
            if sum(map(len, drained)) == total:
                done.set()

        handoff = _Handoff(loop, drain)

        def produce() -> None:  # watchdog's thread: the whole burst before the loop runs a callback
            for i in range(total):
                handoff.on_any_event(FileClosedEvent(f"/s/f{i:05d}"))

        async def other_work() -> None:
            while not done.is_set():
                ticks.append(len(drained))
                await asyncio.sleep(0)

        producer = threading.Thread(target=produce)
        producer.start()
        producer.join()  # everything is buffered: one wake-up is pending
        worker = asyncio.create_task(other_work())
        await asyncio.wait_for(done.wait(), 10)
        await worker

    asyncio.run(main())
    assert [p for chunk in drained for p in chunk] == [f"/s/f{i:05d}" for i in range(total)]
    assert max(map(len, drained)) <= HANDOFF_CHUNK
    assert len(drained) >= 11
    # The other task ran between chunks, not only before the first or after the last.
    assert len({t for t in ticks if 0 < t < len(drained)}) >= 5, ticks


def test_events_arriving_while_a_burst_drains_are_all_delivered() -> None:
    drained: list[str] = []
    expected = sorted(f"/s/{k}-{i}" for k in range(4) for i in range(HANDOFF_CHUNK * 3))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        complete = asyncio.Event()

        def drain(events: list[FileSystemEvent]) -> None:
            drained.extend(str(e.src_path) for e in events)
            if len(drained) >= len(expected):
                complete.set()

        handoff = _Handoff(loop, drain)

        def write(k: int) -> None:
            for i in range(HANDOFF_CHUNK * 3):
                handoff.on_any_event(FileClosedEvent(f"/s/{k}-{i}"))

        writers = [threading.Thread(target=write, args=(k,)) for k in range(4)]
        for writer in writers:
            writer.start()
        await asyncio.wait_for(complete.wait(), 10)
        for writer in writers:
            writer.join()

    asyncio.run(main())
    assert sorted(drained) == expected
