"""History does not grow forever: the catalogue's events and the conflicts area have a retention.

By count and by age, configurable (EVENTS_KEEP, EVENTS_MAX_AGE, CONFLICTS_KEEP, CONFLICTS_MAX_AGE),
applied at write and periodically; each conflicts folder removed is logged and counted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog.testing

from daemon.config import DEFAULT_RETENTION_AGE, Config, ConfigError
from daemon.divergence import DivergenceTracker
from daemon.node import Node
from daemon.store import store as store_module
from tests.support.marketplace import open_store

LOOPBACK = {"SERVER_HOST": "127.0.0.1"}
DAY = 86400.0


def test_the_retention_defaults_and_bounds() -> None:
    config = Config.from_env(LOOPBACK)
    assert (config.events_keep, config.conflicts_keep) == (10_000, 50)
    assert config.events_max_age == config.conflicts_max_age == DEFAULT_RETENTION_AGE == 90 * DAY
    assert Config.from_env({**LOOPBACK, "EVENTS_MAX_AGE": "0", "CONFLICTS_KEEP": "1"}).conflicts_keep == 1
    for name, value in (("EVENTS_KEEP", "10"), ("CONFLICTS_KEEP", "0"), ("CONFLICTS_MAX_AGE", "-1")):
        with pytest.raises(ConfigError, match=name):
            Config.from_env({**LOOPBACK, name: value})


def make_conflicts(root: Path, epochs: dict[int, float]) -> None:
    """conflicts/<epoch>/ with a report of one file, last changed at the given time."""
    for epoch, changed in epochs.items():
        folder = root / "conflicts" / str(epoch)
        (folder / "files").mkdir(parents=True)
        (folder / "files" / "a.txt").write_text("divergent")
        report = folder / "report.json"
        report.write_text(json.dumps({"epoch": epoch, "conflicts": [{"path": "a.txt"}]}))
        os.utime(report, (changed, changed))


def test_conflicts_beyond_the_newest_demotions_or_too_old_are_deleted(tmp_path: Path) -> None:
    now = 1_000_000_000.0
    make_conflicts(tmp_path, {2: now - 1, 3: now - 50 * DAY, 7: now - 1, 11: now - 1, 12: now - 1})
    (tmp_path / "conflicts" / "not-ours").mkdir()
    tracker = DivergenceTracker(str(tmp_path), clock=lambda: now)
    expired = tracker.expire(keep=4, max_age=30 * DAY)
    assert [(e.epoch, e.reason, e.files) for e in expired] == [(3, "age", 1), (2, "count", 1)]
    assert sorted(os.listdir(tmp_path / "conflicts")) == ["11", "12", "7", "not-ours"]
    assert tracker.expire(keep=4, max_age=0) == (), "0: no age limit"
    assert [e.epoch for e in tracker.expire(keep=1, max_age=0)] == [11, 7]


def test_a_node_logs_and_counts_each_conflicts_folder_it_deletes(tmp_path: Path) -> None:
    env = {**LOOPBACK, "STORAGE_PATH": str(tmp_path / "s"), "STATE_PATH": str(tmp_path / "st")}
    node = Node(Config.from_env({**env, "CONFLICTS_KEEP": "2", "CONFLICTS_MAX_AGE": "0"}))
    make_conflicts(tmp_path / "st", {1: 0.0, 2: 0.0, 3: 0.0})
    with structlog.testing.capture_logs() as logged:
        assert node.expire_conflicts() == 1  # epoch 1: beyond the two newest
    assert node.conflicts_expired._value.get() == 1
    assert sorted(os.listdir(tmp_path / "st" / "conflicts")) == ["2", "3"]
    assert [(e["event"], e["epoch"], e["reason"]) for e in logged] == [("conflicts_expired", 1, "count")]


async def test_events_are_pruned_at_write_and_long_fields_are_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "PRUNE_EVERY", 10)
    store = await open_store(tmp_path, EVENTS_KEEP="100")
    try:
        big = await store.record_event(
            "verification", missing=[f"p{n}" for n in range(500)], reason="r" * 9000
        )
        assert len(big["missing"]) == store_module.EVENT_LIST_LIMIT and big["missing_total"] == 500
        assert len(big["reason"]) < 4100
        for n in range(129):
            await store.record_event("drill", n=n)
        kept = await store.events(limit=1000)
        assert 100 <= len(kept) < 110, "pruned every 10 events down to EVENTS_KEEP"
        assert kept[0]["n"] == 128 and all(e["kind"] == "drill" for e in kept)
    finally:
        await store.close()
