"""A leader sweeps its predecessor's temp files once its replica holds a copy, not during the seed.

The sweep walks the whole storage, as a seed's plan does (Node._sweep_once_seeded); a replica's batch
never runs before its own sweep (Receiver.apply_batch), whatever the role the node started in.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.cluster import make_pair, wait_until

LEFT_OVER = ".hs~model.bin.0123abcd"


def test_a_leader_sweeps_once_its_replica_holds_a_copy(tmp_path: Path) -> None:
    pair = make_pair(tmp_path)
    try:
        pair.master.storage.mkdir(parents=True)
        (pair.master.storage / "kept.txt").write_bytes(b"replicated")
        (pair.master.storage / LEFT_OVER).write_bytes(b"a killed replica's partial file")
        pair.master.start()  # its replica is not there: no copy, no sweep
        time.sleep(1.5)  # the sweep used to start as the server listened: done in milliseconds here
        assert (pair.master.storage / LEFT_OVER).exists(), "swept while the replica lacked a copy"
        pair.slave.start()
        pair.wait_converged(30)
        wait_until(lambda: not (pair.master.storage / LEFT_OVER).exists(), 10, message="the leader's sweep")
        assert '"event": "stale_temp_files_removed"' in pair.master.log_path.read_text()
        assert not list(pair.slave.storage.rglob(".hs~*"))
    finally:
        pair.stop()
