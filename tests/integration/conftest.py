from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Pair, running_pair


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    """A master replicating to a slave, both real processes on loopback."""
    with running_pair(tmp_path) as started:
        yield started
