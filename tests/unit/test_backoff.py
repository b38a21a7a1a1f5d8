"""The links' one reconnect policy (replication/backoff.py): quick first retry, doubling to a cap,
jittered, reset by a link that came up, lengthened by another reason to wait."""

from __future__ import annotations

from replication.backoff import INITIAL, Backoff


class Waits:
    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)


async def test_waits_double_up_to_the_cap_and_reset_when_the_link_comes_up() -> None:
    waits, backoff = Waits(), Backoff(cap=1.0)
    for _ in range(6):
        await backoff.sleep(waits, draw=lambda: 0.5)  # no jitter: 0.5 + 0.5
    assert waits.seen == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.current == INITIAL


async def test_every_wait_is_jittered_within_half_and_one_and_a_half_steps() -> None:
    waits, backoff = Waits(), Backoff(cap=5.0, initial=2.0)
    await backoff.sleep(waits, draw=lambda: 0.0)
    await backoff.sleep(waits, draw=lambda: 0.999)
    assert waits.seen[0] == 1.0 and 5.99 < waits.seen[1] < 6.0


async def test_another_reason_to_wait_only_lengthens_the_step() -> None:
    backoff = Backoff(cap=5.0)
    backoff.at_least(0.05)
    assert backoff.current == INITIAL
    backoff.at_least(3.0)
    assert backoff.current == 3.0
