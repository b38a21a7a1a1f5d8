"""The short chaos run of `make test`: 120 s of random faults, then every check must pass.

The seed is random and printed (in the captured output, and in the failure message); set
CHAOS_SEED to replay a run's fault schedule. The long run is `make chaos`. Results and logs go to
a folder of their own (not tmp_path: pytest prunes old tmp_path folders, and other test runs on a
shared machine would remove a failed run's logs before anyone read them); it is removed when the
run passed and kept, with its path in the failure message, when it did not.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.chaos.runner import run

DURATION = 120.0


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_no_acknowledged_write_lost_and_never_two_leaders_under_random_faults() -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    out = Path(tempfile.mkdtemp(prefix=f"hotstandby-chaos-{seed}-"))
    print(f"chaos seed {seed} (reproduce with CHAOS_SEED={seed}); results in {out}")
    report = run(DURATION, seed, out)
    summary = report.summary()
    print(summary)
    assert report.passed, f"chaos run with CHAOS_SEED={seed} failed:\n{summary}\n(logs kept in {out})"
    shutil.rmtree(out, ignore_errors=True)
