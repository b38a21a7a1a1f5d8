"""`make demo`: a master and a slave on 127.0.0.1, a few changes, both trees side by side.

Uses the same process runner as the integration tests, with temporary
storage that is removed at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.cluster import Pair, make_pair, tree_diff


def show_manifest(title: str, root: Path) -> None:
    print(f"\n{title}: {root}")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_symlink():
            print(f"  {rel} -> {os.readlink(path)}")
        elif path.is_dir():
            print(f"  {rel}/")
        else:
            st = path.stat()
            print(f"  {rel}  {st.st_size} bytes  mode {oct(st.st_mode & 0o7777)}")


def step(message: str) -> None:
    print(f"\n== {message}")


def run(pair: Pair) -> int:
    step("starting a slave and a master on 127.0.0.1")
    pair.start()
    print(f"  master {pair.master.url}  storage {pair.master.storage}")
    print(f"  slave  {pair.slave.url}  storage {pair.slave.storage}")
    root = pair.master.storage
    step("writing on the master: a plugin directory, a config, a symlink")
    plugin = root / "langgenius" / "openai-0.0.1@0123abcd"
    (plugin / ".venv" / "dify").mkdir(parents=True)
    (plugin / "main.py").write_text("print('hello from the plugin')\n")
    (plugin / ".venv" / "dify" / "plugin.json").write_text('{"ready": true}\n')
    (root / "settings.yaml").write_text("model: gpt\n")
    (root / "scratch.txt").write_text("temporary\n")
    os.symlink("settings.yaml", root / "current.yaml")
    started = time.monotonic()
    pair.wait_converged(10)
    print(f"  replicated in {time.monotonic() - started:.3f}s")
    step("renaming settings.yaml -> config.yaml and deleting scratch.txt on the master")
    os.rename(root / "settings.yaml", root / "config.yaml")
    (root / "scratch.txt").unlink()
    started = time.monotonic()
    pair.wait_converged(10)
    print(f"  replicated in {time.monotonic() - started:.3f}s")
    show_manifest("master tree", pair.master.storage)
    show_manifest("slave tree", pair.slave.storage)
    differences = tree_diff(pair.master.storage, pair.slave.storage)
    print(f"\ntrees identical: {not differences}")
    print(f"plugin_sync_lag_seconds (master): {pair.master.metric('plugin_sync_lag_seconds')}")
    slave_lag = pair.slave.metric("plugin_sync_lag_seconds")
    print(f"plugin_sync_lag_seconds (slave, since the last heartbeat): {slave_lag:.3f}")
    status = pair.master.status()
    produced, acked = status["produced_sequence"], status["acknowledged_sequence"]
    print(f"master sequence produced {produced}, acknowledged {acked}")
    return 0 if not differences else 1


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hotstandby-demo-") as tmp:
        pair = make_pair(Path(tmp))
        try:
            return run(pair)
        finally:
            step("stopping both nodes (SIGTERM)")
            pair.stop()
            print("  stopped; temporary storage removed")


if __name__ == "__main__":
    sys.exit(main())
