from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Pair, make_pair, running_pair, wait_until
from tests.support.ha import FAST, primary


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """A master replicating to a slave, both real processes on loopback."""
    with running_pair(tmp_path) as started:
        yield started


@pytest.fixture
def static_pair(tmp_path: Path) -> Iterator[Pair]:
    """A static pair with fast control timings, the master already leading."""
    pair = make_pair(tmp_path, master_env=dict(FAST), slave_env=dict(FAST))
    try:
        pair.start()
        wait_until(lambda: primary(pair.master), 10, message="the master to lead")
        yield pair
    finally:
        pair.stop()
