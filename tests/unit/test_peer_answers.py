"""The master believes nothing its replica answers without checking it (replication/peer_answers.py)."""

from __future__ import annotations

import base64

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from replication import peer_answers
from replication.delta import Signature, block_size_for
from replication.errors import MalformedAnswerError
from replication.manifest import Entry
from replication.metrics import ReplicationMetrics
from replication.peer_answers import PeerInputGuard, Refusals
from replication.protocol import MAX_EPOCH, MAX_PEER_EPOCH, MAX_SEQUENCE

ESCAPES = ["../outside/secret", "/etc/passwd", "a/../../b", "a\x00b", "", ".", "a//b", "x" * 5000]


class Env:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ReplicationMetrics(self.registry)
        self.guard = PeerInputGuard(self.metrics.peer_input_refused, target="http://replica")

    def refused(self, reason: str) -> float:
        sample = self.registry.get_sample_value("plugin_sync_peer_input_refused_total", {"reason": reason})
        return sample or 0.0

    def refusals(self, where: str = "test") -> Refusals:
        return Refusals(where, self.metrics.peer_input_refused)


@pytest.fixture
def env() -> Env:
    return Env()


def never_skip(_path: str) -> bool:
    return False


# -- the resend list of a batch answer --------------------------------------------------------------
def test_a_resend_list_keeps_only_valid_paths_of_the_batch(env: Env) -> None:
    asked = {"data/a.txt", "data/b.txt", *(f"other/{i}" for i in range(20))}
    body = {"applied_seq": 7, "resend": ["data/a.txt", *ESCAPES, "escape/secret", "data/c.txt", 5, None]}
    answer = peer_answers.batch(body, asked, env.refusals(), changes=len(asked), head=10, skip=never_skip)
    assert answer == peer_answers.BatchAnswer(7, ["data/a.txt"])
    assert env.refused("path") == len(ESCAPES) + 2  # the escapes, 5 and None
    assert env.refused("unsolicited") == 2  # escape/secret and data/c.txt: valid paths, never asked about


def test_a_huge_resend_list_is_cut_at_the_number_of_changes_sent(env: Env) -> None:
    asked = {f"f{i}" for i in range(3)}
    body = {"applied_seq": 1, "resend": ["f0"] + ["../x"] * 100_000}
    answer = peer_answers.batch(body, asked, env.refusals(), changes=3, head=10, skip=never_skip)
    assert answer.resend == ["f0"]
    assert env.refused("too_many") == 100_001 - 3


def test_a_path_may_come_back_once_per_change(env: Env) -> None:
    # A folder renamed back and forth 300 times is 600 renames of two paths: each may be resent.
    body = {"applied_seq": 1, "resend": ["race", "race.real"] * 300}
    answer = peer_answers.batch(
        body, {"race", "race.real"}, env.refusals(), changes=600, head=10, skip=never_skip
    )
    assert len(answer.resend) == 600
    assert env.refused("too_many") == 0


def test_temp_names_and_excluded_paths_are_refused(env: Env) -> None:
    asked = {".hs~x.1234", "cwd/.uv-cache/x", "ok"}
    body = {"applied_seq": 1, "resend": [".hs~x.1234", "cwd/.uv-cache/x", "ok"]}
    answer = peer_answers.batch(
        body, asked, env.refusals(), changes=3, head=10, skip=lambda p: p.startswith("cwd/.uv-cache")
    )
    assert answer.resend == ["ok"]
    assert env.refused("path") == 1 and env.refused("excluded") == 1


@pytest.mark.parametrize("applied", [None, "7", 7.0, True, -1, 11, MAX_SEQUENCE + 1, 10**30, [], {"x": 1}])
def test_an_unusable_applied_sequence_makes_the_answer_unusable(env: Env, applied: object) -> None:
    with pytest.raises(MalformedAnswerError):
        peer_answers.batch(
            {"applied_seq": applied}, set(), env.refusals(), changes=0, head=10, skip=never_skip
        )
    assert env.refused("sequence") == 1


def test_a_resend_that_is_not_a_list_is_ignored(env: Env) -> None:
    for resend in ("../x", {"../x": 1}, 5):
        answer = peer_answers.batch(
            {"applied_seq": 3, "resend": resend}, {"a"}, env.refusals(), changes=1, head=3, skip=never_skip
        )
        assert answer.resend == []
    assert env.refused("malformed") == 3


# -- hello, refusals and epochs ------------------------------------------------------------------
def test_hello_answer(env: Env) -> None:
    assert peer_answers.hello({"journal_id": "j", "applied_seq": 4}, env.refusals()) == (
        peer_answers.HelloAnswer("j", 4)
    )
    assert peer_answers.hello({"journal_id": ["j"]}, env.refusals()).journal_id is None
    assert peer_answers.hello({"applied_seq": 1, "synced": True}, env.refusals()).synced
    assert not peer_answers.hello({"applied_seq": 1, "synced": "true"}, env.refusals()).synced
    with pytest.raises(MalformedAnswerError):
        peer_answers.hello({"applied_seq": "abc"}, env.refusals())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (7, 7),
        (MAX_PEER_EPOCH, MAX_PEER_EPOCH),
        (MAX_PEER_EPOCH + 1, None),
        (MAX_EPOCH, None),
        (2**63, None),
        (10**40, None),
        (-1, None),
        (True, None),
        ("9", None),
        (9.0, None),
        (None, None),
    ],
)
def test_a_peer_epoch_is_bounded_below_the_top_so_promotions_stay_possible(
    value: object, expected: int | None
) -> None:
    assert peer_answers.peer_epoch(value) == expected
    assert MAX_EPOCH - MAX_PEER_EPOCH >= 2**20


def test_a_refusal_is_believed_only_where_it_fits_the_batch(env: Env) -> None:
    asked = {"a/b/c.txt", "x/new"}
    said = peer_answers.refusal(
        {"applied_seq": 4, "failed_seq": 6, "symlink_at": "a/b"},
        {5, 6},
        asked,
        env.refusals(),
        head=8,
        skip=never_skip,
    )
    assert said == peer_answers.RefusalAnswer(4, 6, "a/b")
    hostile = peer_answers.refusal(
        {"applied_seq": 10**9, "failed_seq": 99, "symlink_at": "../outside"},
        {5, 6},
        asked,
        env.refusals(),
        head=8,
        skip=never_skip,
    )
    assert hostile == peer_answers.RefusalAnswer()
    elsewhere = peer_answers.refusal(
        {"failed_seq": True, "symlink_at": "elsewhere"}, {1}, asked, env.refusals(), head=8, skip=never_skip
    )
    assert elsewhere == peer_answers.RefusalAnswer()
    # symlink_at must be a folder above a path of the batch, not the path itself
    itself = peer_answers.refusal(
        {"symlink_at": "x/new"}, {1}, asked, env.refusals(), head=8, skip=never_skip
    )
    assert itself.symlink_at is None


# -- manifest, hashes, signatures ------------------------------------------------------------------
def test_manifest_entries_are_checked_one_by_one(env: Env) -> None:
    good = ["data/a.txt", "file", 0o644, 1_700_000_000_000_000_000, 5, None]
    link = ["escape", "symlink", 0o777, 0, 0, "/anywhere/at/all"]
    body = {
        "entries": [
            good,
            link,
            *([path, "file", 0o644, 0, 5, None] for path in ESCAPES),
            ["bad-mode", "file", 0o10000, 0, 5, None],
            ["bad-size", "file", 0o644, 0, -1, None],
            ["bad-type", "fifo", 0o644, 0, 0, None],
            ["bad-target", "symlink", 0o777, 0, 0, "a\x00b"],
            ["file-with-target", "file", 0o644, 0, 0, "t"],
            ["short"],
            "not a list",
            None,
        ]
    }
    found = peer_answers.manifest(body, env.refusals(), skip=never_skip)
    assert found == {
        "data/a.txt": Entry("data/a.txt", "file", 0o644, 1_700_000_000_000_000_000, 5),
        "escape": Entry("escape", "symlink", 0o777, 0, 0, "/anywhere/at/all"),
    }
    assert env.refused("path") == len(ESCAPES)
    assert env.refused("manifest_entry") == 8


def test_a_manifest_without_a_list_of_entries_is_unusable(env: Env) -> None:
    for body in ({}, {"entries": {"a": 1}}, {"entries": "x"}):
        with pytest.raises(MalformedAnswerError):
            peer_answers.manifest(body, env.refusals(), skip=never_skip)


def test_hashes_of_paths_not_asked_are_refused_and_bad_values_mean_different(env: Env) -> None:
    digest = "ab" * 32
    body = {"hashes": {"a": digest, "b": "not-a-hash", "c": None, "../outside/secret": digest}}
    assert peer_answers.hashes(body, {"a", "b", "c", "d"}, env.refusals()) == {
        "a": digest,
        "b": None,
        "c": None,
        "d": None,
    }
    assert env.refused("hash") == 1 and env.refused("unsolicited") == 1
    assert peer_answers.hashes({"hashes": ["a"]}, {"a"}, env.refusals()) == {}


def _signature_b64(size: int) -> str:
    import numpy as np

    block = block_size_for(size)
    count = -(-size // block)
    sig = Signature(block, size, np.zeros(count, dtype=np.uint32), bytes(16 * count))
    return base64.b64encode(sig.to_bytes()).decode()


def test_signatures_that_do_not_parse_or_were_not_asked_for_are_refused(env: Env) -> None:
    good = _signature_b64(10_000)
    body = {
        "signatures": {
            "big.bin": good,
            "other.bin": "!!!not base64",
            "third.bin": base64.b64encode(b"HSig garbage").decode(),
            "none.bin": None,
            "../outside/secret": good,
            "num.bin": 5,
        }
    }
    asked = {"big.bin", "other.bin", "third.bin", "none.bin", "num.bin"}
    found = peer_answers.signatures(body, asked, env.refusals())
    assert list(found) == ["big.bin"] and found["big.bin"].file_size == 10_000
    assert env.refused("signature") == 3 and env.refused("unsolicited") == 1
    assert peer_answers.signatures({"signatures": []}, asked, env.refusals()) == {}


# -- counting and logging ----------------------------------------------------------------------------
def test_refusals_are_counted_each_time_but_logged_once_per_answer_and_minute() -> None:
    now = [100.0]
    registry = CollectorRegistry()
    metrics = ReplicationMetrics(registry)
    guard = PeerInputGuard(metrics.peer_input_refused, target="http://replica", clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(5):
            with guard.answer("batch") as refuse:
                peer_answers.paths_asked(["../x"] * 1000, {"a"}, refuse, limit=1, skip=never_skip)
            now[0] += 1
        now[0] += 60
        with guard.answer("batch") as refuse:
            peer_answers.paths_asked(["../x"], {"a"}, refuse, limit=1, skip=never_skip)
    lines = [entry for entry in logs if entry["event"] == "peer_input_refused"]
    assert len(lines) == 2
    assert lines[0]["refused"] == {"too_many": 999, "path": 1}
    assert lines[0]["examples"]["path"] == "../x"
    assert lines[1]["refused_since_last_log"] == {"path": 4}  # too_many: reported when it comes back
    total = registry.get_sample_value("plugin_sync_peer_input_refused_total", {"reason": "too_many"})
    assert total == 5 * 999


def test_a_hostile_value_is_quoted_short_and_printable(env: Env) -> None:
    refuse = env.refusals()
    refuse("path", "\x1b[31m" + "x" * 10_000)
    refuse("malformed", [[[[[["deep"]]]]]] * 1000)
    assert len(refuse.examples["path"]) < 200 and "\x1b" not in refuse.examples["path"]
    assert len(refuse.examples["malformed"]) < 200


def test_a_peer_detail_is_shortened() -> None:
    assert len(peer_answers.detail({"detail": "y" * 100_000}) or "") <= peer_answers.MAX_DETAIL_CHARS + 3
    assert peer_answers.detail({"detail": None}) is None
    assert peer_answers.detail([]) is None


# -- the tree digest (protocol 4) --------------------------------------------------------------------
def test_a_tree_digest_answer(env: Env) -> None:
    digest = "ab" * 32
    answer = peer_answers.tree_digest({"synced": True, "digest": digest, "entries": 3}, env.refusals())
    assert answer == peer_answers.TreeDigestAnswer(True, digest)
    assert peer_answers.tree_digest({"synced": False}, env.refusals()) == peer_answers.TreeDigestAnswer(
        False, None
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"synced": "yes"},
        {"synced": 1, "digest": "ab" * 32},
        {"synced": True},
        {"synced": True, "digest": "AB" * 32},
        {"synced": True, "digest": "ab" * 31},
        {"synced": True, "digest": "ab" * 32 + "\n"},
        {"synced": True, "digest": ["ab" * 32]},
    ],
)
def test_a_malformed_tree_digest_answer_is_refused(env: Env, body: dict[str, object]) -> None:
    with pytest.raises(MalformedAnswerError):
        peer_answers.tree_digest(body, env.refusals())
    assert env.refused("malformed") == 1
