"""Design rule: a venv's ready marker reaches the slave only after the rest of its plugin folder."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tests.support.cluster import Pair

PLUGIN = "langgenius/openai-0.0.1@" + "ab" * 16


def test_ready_marker_arrives_after_every_file_of_its_plugin(pair: Pair) -> None:
    master_plugin = pair.master.storage / PLUGIN
    slave_plugin = pair.slave.storage / PLUGIN
    marker = Path(".venv/dify/plugin.json")
    files = [Path(f".venv/lib/python3.11/site-packages/pkg{i // 50}/m{i}.py") for i in range(1500)]
    seen_with_marker: list[set[str]] = []
    stop = threading.Event()

    def watch_slave() -> None:
        while not stop.is_set():
            if (slave_plugin / marker).exists():
                present = {str(p.relative_to(slave_plugin)) for p in slave_plugin.rglob("*.py")}
                seen_with_marker.append(present)
                return
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch_slave)
    watcher.start()
    try:
        for i, rel in enumerate(files):
            (master_plugin / rel).parent.mkdir(parents=True, exist_ok=True)
            (master_plugin / rel).write_text(f"value = {i}\n")
        (master_plugin / marker).parent.mkdir(parents=True, exist_ok=True)
        (master_plugin / marker).write_text('{"ready": true}')
        # Files the installer touches again after writing the marker must also precede it.
        os.utime(master_plugin / files[0])
        pair.wait_converged(30)
    finally:
        stop.set()
        watcher.join(5)
    assert seen_with_marker, "the marker never appeared on the slave"
    assert seen_with_marker[0] == {str(f) for f in files}


def test_env_init_duration_is_measured_from_folder_to_ready_marker(pair: Pair) -> None:
    plugin = pair.master.storage / "langgenius" / "openai-0.0.1@0123abcd"
    plugin.mkdir(parents=True)
    (plugin / ".venv" / "lib").mkdir(parents=True)
    time.sleep(1.0)
    assert pair.master.metric("plugin_env_init_in_progress") == 1
    (plugin / ".venv" / "dify").mkdir()
    (plugin / ".venv" / "dify" / "plugin.json").write_text("{}")
    pair.wait_converged(10)
    assert pair.master.metric("python_env_init_duration_seconds_count") == 1
    assert 0.9 <= pair.master.metric("python_env_init_duration_seconds_sum") < 5
    assert pair.master.metric("plugin_env_init_in_progress") == 0
