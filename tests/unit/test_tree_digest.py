"""manifest.TreeDigest: equal digests exactly when the entry-by-entry comparison finds nothing to do.

The no-change pass (protocol 4) trusts an equal digest instead of comparing manifests: a digest that
is equal where `difference` finds something would leave a replica stale without anyone noticing.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from replication.manifest import Entry, TreeDigest, difference, replica_digest, walk

TYPES = st.sampled_from(["file", "dir", "symlink"])
MODES = st.sampled_from([0o644, 0o755, 0o4755, 0o2644, 0o1777, 0o600])
MTIMES = st.sampled_from([1_600_000_000_000_000_000, 1_600_000_000_500_000_000, 1_600_000_001_000_000_000])
SIZES = st.sampled_from([0, 1, 4096])
TARGETS = st.sampled_from(["a", "b", "../c"])


@st.composite
def entries(draw: st.DrawFn, path: str = "p/x") -> Entry:
    type_ = draw(TYPES)
    return Entry(
        path,
        type_,
        draw(MODES),
        draw(MTIMES),
        draw(SIZES) if type_ == "file" else 0,
        draw(TARGETS) if type_ == "symlink" else None,
    )


def digest(side: str, listed: list[Entry]) -> str:
    tree = TreeDigest(side)  # type: ignore[arg-type]
    tree.add(listed)
    return tree.hexdigest()


@settings(max_examples=2000, deadline=None, database=None)
@given(entries(), entries())
def test_one_entry_digests_equal_exactly_when_nothing_differs(ours: Entry, theirs: Entry) -> None:
    nothing = difference((ours.type, ours.mode, ours.mtime_ns, ours.size, ours.target), theirs) is None
    assert (digest("source", [ours]) == digest("replica", [theirs])) == nothing


def test_paths_and_their_number_and_order_count() -> None:
    a = Entry("a", "file", 0o644, 1, 1)
    b = Entry("b", "file", 0o644, 1, 1)
    assert digest("source", [a, b]) == digest("replica", [a, b])
    assert digest("source", [a, b]) != digest("replica", [a])
    assert digest("source", [a, b]) != digest("replica", [b, a])
    assert digest("source", [a]) != digest("replica", [a._replace(path="a/")])
    assert digest("source", [a]) != digest("replica", [a._replace(path="b")])


def test_the_replicas_walk_and_a_copy_of_the_tree_agree(tmp_path: Path) -> None:
    source, replica = tmp_path / "source", tmp_path / "replica"
    for root in (source, replica):
        (root / "d/e").mkdir(parents=True)
        (root / "d/f").write_bytes(b"x" * 10)
        os.utime(root / "d/f", ns=(1, 1_600_000_000_123_456_789))
        (root / "l").symlink_to("d/f")
        os.utime(root / "l", ns=(1, 1_600_000_000_000_000_000), follow_symlinks=False)
    os.utime(replica / "d", ns=(1, 1))  # a folder's mtime is not compared
    ours = TreeDigest("source")
    ours.add(walk(str(source)))
    theirs = replica_digest(str(replica), chunk=2)
    assert (ours.hexdigest(), ours.entries) == (theirs.hexdigest(), theirs.entries) == (ours.hexdigest(), 4)
    (replica / "d/f").chmod(0o600)
    assert replica_digest(str(replica)).hexdigest() != ours.hexdigest()
