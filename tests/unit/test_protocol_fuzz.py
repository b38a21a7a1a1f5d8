"""Wire framing: headers round trip, and decoding anything else fails only with the documented errors.

Also the other direction: whatever the replica answers, the master's sender fails only with the
documented errors and never reads or sends anything from outside its storage.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from replication import manifest
from replication import sender as sender_module
from replication.delta import signature_of_fd
from replication.errors import ContainmentError, FencedError, PeerError, ProtocolError
from replication.exclude import ReadyMarkers
from replication.journal import Journal
from replication.metrics import ReplicationMetrics
from replication.paths import MAX_NAME_BYTES, is_temp_name, is_within, validate_relpath
from replication.protocol import (
    FLAG_COMPLETE,
    FLAG_DISCARD,
    MAX_FILE_BYTES,
    MAX_HEADER_BYTES,
    MAX_MTIME_NS,
    MAX_PEER_EPOCH,
    OP_KINDS,
    SHA256,
    XXH128,
    ContentCheck,
    Operation,
    content_check,
    decode_header,
    decode_length,
    decode_trailer,
    encode_trailer,
    named_check,
)
from replication.sender import LinkSettings, Sender

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
DIFY_PLUGIN = "langgenius/openai:0.0.1@" + "0123456789abcdef" * 4

SAMPLE_OPS = {
    "put": Operation(
        seq=7, op="put", path=f"{DIFY_PLUGIN}/main.py", mode=0o644, mtime_ns=1_700_000_000_123_456, size=42
    ),
    "delta": Operation(
        seq=8,
        op="delta",
        path="big.bin",
        mode=0o644,
        mtime_ns=1,
        size=1 << 28,
        block_size=16383,
        basis_size=(1 << 28) - 1,
    ),
    "mkdir": Operation(seq=1, op="mkdir", path="a/b", mode=0o755, mtime_ns=0),
    "symlink": Operation(seq=2, op="symlink", path="a/link", target="../elsewhere/x", mtime_ns=-5),
    "delete": Operation(seq=3, op="delete", path="a/gone.txt"),
    "rename": Operation(seq=4, op="rename", path="a/old", dest="b/new"),
    "attr": Operation(seq=5, op="attr", path="a/b", mode=0o7777, mtime_ns=MAX_MTIME_NS),
    "end": Operation(seq=1 << 62, op="end"),
}


def _round_trip(op: Operation) -> Operation:
    framed = op.header()
    length = decode_length(framed[:4])
    assert length == len(framed) - 4
    return decode_header(framed[4 : 4 + length])


# --- round trip ------------------------------------------------------------------


def test_every_op_kind_has_a_sample():
    assert set(SAMPLE_OPS) == OP_KINDS


@pytest.mark.parametrize("kind", sorted(OP_KINDS))
def test_header_round_trips_for_every_op_kind(kind):
    assert _round_trip(SAMPLE_OPS[kind]) == SAMPLE_OPS[kind]


def test_header_omits_absent_fields():
    framed = Operation(seq=9, op="end").header()
    assert json.loads(framed[4:]) == {"seq": 9, "op": "end"}


def test_header_keeps_zero_values():
    op = Operation(seq=0, op="mkdir", path="d", mode=0, mtime_ns=0)
    assert json.loads(op.header()[4:]) == {"seq": 0, "op": "mkdir", "path": "d", "mode": 0, "mtime_ns": 0}
    assert _round_trip(op) == op


def test_header_with_non_ascii_path_round_trips():
    op = Operation(seq=1, op="delete", path="ünïcödé/日本語/ファイル.txt")
    assert _round_trip(op) == op


def test_header_of_a_non_utf8_file_name_round_trips():
    # On Linux a file named b"caf\xe9" is seen by Python as "caf\udce9"; validate_relpath accepts it,
    # so the sender must be able to frame it and the receiver must get the same name back.
    path = os.fsdecode(b"dir/caf\xe9")
    assert validate_relpath(path) == path
    op = Operation(seq=1, op="delete", path=path)
    assert _round_trip(op) == op


_name_chars = st.characters(exclude_characters="/\x00", codec="utf-8")
_component = st.text(_name_chars, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
valid_relpaths = st.lists(_component, min_size=1, max_size=5).map("/".join)
u62 = st.integers(0, 1 << 62)


@st.composite
def valid_operations(draw):
    kind = draw(st.sampled_from(sorted(OP_KINDS)))
    seq = draw(u62)
    mode = draw(st.integers(0, 0o7777))
    mtime = draw(st.integers(-MAX_MTIME_NS, MAX_MTIME_NS))
    path = draw(valid_relpaths)
    if kind == "put":
        size = draw(st.integers(0, MAX_FILE_BYTES))
        return Operation(seq, "put", path, mode=mode, mtime_ns=mtime, size=size)
    if kind in ("mkdir", "attr"):
        return Operation(seq, kind, path, mode=mode, mtime_ns=mtime)
    if kind == "symlink":
        target = draw(st.text(st.characters(exclude_characters="\x00", codec="utf-8"), min_size=1))
        return Operation(seq, "symlink", path, target=target, mtime_ns=mtime)
    if kind == "rename":
        return Operation(seq, "rename", path, dest=draw(valid_relpaths))
    if kind == "delete":
        return Operation(seq, "delete", path)
    return Operation(seq, "end")


@FUZZ
@given(valid_operations())
def test_any_valid_operation_round_trips(op):
    assert _round_trip(op) == op


# --- decode_length ---------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, MAX_HEADER_BYTES + 1, 1 << 20, 2**32 - 1])
def test_decode_length_refuses_out_of_range_lengths(length):
    with pytest.raises(ProtocolError):
        decode_length(struct.pack(">I", length))


@pytest.mark.parametrize("length", [2, 100, MAX_HEADER_BYTES])
def test_decode_length_accepts_lengths_in_range(length):
    assert decode_length(struct.pack(">I", length)) == length


def test_max_header_is_64_kib():
    assert MAX_HEADER_BYTES == 64 * 1024


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x10", b"\x00\x00\x00\x10\x00"])
def test_decode_length_refuses_a_prefix_that_is_not_four_bytes(raw):
    # protocol.py: "Decoding is strict: anything unexpected is a ProtocolError ..., never another exception."
    with pytest.raises(ProtocolError):
        decode_length(raw)


# --- decode_trailer --------------------------------------------------------------------

CHECKS = pytest.mark.parametrize("check", [SHA256, XXH128], ids=lambda c: c.name)


@CHECKS
@pytest.mark.parametrize("flag", [FLAG_COMPLETE, FLAG_DISCARD])
def test_decode_trailer_returns_flag_and_digest(flag: int, check: ContentCheck) -> None:
    digest = check.of(b"content")
    assert len(digest) == check.digest_bytes
    assert decode_trailer(encode_trailer(flag, digest), check) == (flag, digest)


@CHECKS
@pytest.mark.parametrize("delta", [-33, -1, 1, 16, 64])
def test_decode_trailer_refuses_wrong_length(delta: int, check: ContentCheck) -> None:
    """A SHA-256 trailer under XXH3-128 and the reverse are refused too (17 against 33 bytes)."""
    with pytest.raises(ProtocolError):
        decode_trailer(bytes(max(0, check.trailer_bytes + delta)), check)


@CHECKS
@pytest.mark.parametrize("flag", [2, 3, 0x7F, 0xFF])
def test_decode_trailer_refuses_unknown_flags(flag: int, check: ContentCheck) -> None:
    with pytest.raises(ProtocolError):
        decode_trailer(bytes([flag]) + check.of(b"content"), check)


@FUZZ
@given(st.binary(max_size=80), st.sampled_from([SHA256, XXH128]))
def test_decode_trailer_on_arbitrary_bytes_returns_a_known_flag_or_refuses(raw, check):
    try:
        flag, digest = decode_trailer(raw, check)
    except ProtocolError:
        return
    assert flag in (FLAG_COMPLETE, FLAG_DISCARD)
    assert len(digest) == check.digest_bytes


def test_the_check_follows_the_protocol_and_a_batch_names_only_known_ones() -> None:
    assert [content_check(v).name for v in (1, 2, 3, 4, 5, 6)] == ["sha256"] * 4 + ["xxh128"] * 2
    assert named_check(None) is SHA256  # a sender of protocol 1-4 names none
    assert named_check("xxh128") is XXH128 and named_check("sha256") is SHA256
    for name in ("", "md5", "XXH128", "x" * 500):
        with pytest.raises(ProtocolError, match="unknown content check"):
            named_check(name)
    assert XXH128.of(b"content") == bytes.fromhex(xxhash.xxh3_128_hexdigest(b"content"))


# --- decode_header: explicit refusals --------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[]",
        b'"put"',
        b"null",
        b"{}",
        b'{"op": "nuke", "seq": 1}',
        b'{"op": ["put"], "seq": 1}',
        b'{"op": {"k": 1}, "seq": 1}',
        b'{"op": "end"}',
        b'{"op": "end", "seq": true}',
        b'{"op": "end", "seq": -1}',
        b'{"op": "end", "seq": 1.0}',
        b'{"op": "end", "seq": "1"}',
        b'{"op": "end", "seq": 4611686018427387905}',
        b'{"op": "end", "seq": 1e400}',
        b'{"op": "end", "seq": NaN}',
        b'{"op": "delete", "seq": 1}',
        b'{"op": "rename", "seq": 1, "path": "a"}',
        b'{"op": "put", "seq": 1, "path": "a", "mode": 420, "mtime_ns": 0}',
        b'{"op": "put", "seq": 1, "path": "a", "mode": 4096, "mtime_ns": 0, "size": 1}',
        b'{"op": "put", "seq": 1, "path": "a", "mode": 420, "mtime_ns": 0, "size": -1}',
        b'{"op": "put", "seq": 1, "path": "a", "mode": 420, "mtime_ns": 0, "size": 17592186044417}',
        b'{"op": "mkdir", "seq": 1, "path": "a", "mode": 493, "mtime_ns": 4611686018427387905}',
        b'{"op": "symlink", "seq": 1, "path": "a", "mtime_ns": 0, "target": ""}',
        b'{"op": "symlink", "seq": 1, "path": "a", "mtime_ns": 0, "target": "x\\u0000y"}',
        b'{"op": "symlink", "seq": 1, "path": "a", "mtime_ns": 0, "target": 5}',
        b'{"op": "end", "seq": 1' + b"0" * 5000 + b"}",
        b"[" * MAX_HEADER_BYTES,
        b'{"a":' * 30000 + b"1" + b"}" * 30000,
    ],
)
def test_decode_header_refuses_malformed_headers_with_protocol_error(raw):
    with pytest.raises(ProtocolError):
        decode_header(raw)


@pytest.mark.parametrize(
    "fields",
    [
        {"path": "../etc/passwd"},
        {"path": "/etc/passwd"},
        {"path": "a/../../b"},
        {"path": ""},
        {"path": 5},
        {"path": ["a"]},
        {"path": "a\x00b"},
        {"path": "\ud800"},
        {"path": "x" * (MAX_NAME_BYTES + 1)},
        {"path": "a", "dest": "../b"},
        {"path": "a", "dest": "/b"},
    ],
)
def test_decode_header_refuses_escaping_paths_with_containment_error(fields):
    header = {"op": "rename", "seq": 1, "path": "a", "dest": "b", **fields}
    with pytest.raises(ContainmentError):
        decode_header(json.dumps(header).encode())


@pytest.mark.parametrize("fields", [{"path": None}, {"dest": None}])
def test_decode_header_refuses_a_null_path_of_a_rename(fields):
    header = {"op": "rename", "seq": 1, "path": "a", "dest": "b", **fields}
    with pytest.raises(ProtocolError):
        decode_header(json.dumps(header).encode())


@pytest.mark.parametrize(
    "header",
    [
        {"op": "put", "seq": 1, "path": "a", "mode": 420, "mtime_ns": 0, "size": None},
        {"op": "put", "seq": 1, "path": "a", "mode": None, "mtime_ns": 0, "size": 1},
        {"op": "put", "seq": 1, "path": "a", "mode": 420, "mtime_ns": None, "size": 1},
        {"op": "mkdir", "seq": 1, "path": "a", "mode": None, "mtime_ns": 0},
        {"op": "attr", "seq": 1, "path": "a", "mode": 420, "mtime_ns": None},
        {"op": "symlink", "seq": 1, "path": "a", "mtime_ns": 0, "target": None},
        {"op": "symlink", "seq": 1, "path": "a", "mtime_ns": None, "target": "t"},
    ],
)
def test_decode_header_refuses_null_for_a_required_field(header):
    # "put lacks size" for a missing key; a JSON null must not slip through as "present".
    with pytest.raises(ProtocolError):
        decode_header(json.dumps(header).encode())


def test_decode_header_validates_dest_even_on_other_ops():
    raw = json.dumps({"op": "delete", "seq": 1, "path": "a", "dest": "../x"}).encode()
    with pytest.raises(ContainmentError):
        decode_header(raw)


def test_decode_header_ignores_unknown_keys():
    raw = json.dumps({"op": "delete", "seq": 3, "path": "a", "future": {"x": [1, 2]}}).encode()
    assert decode_header(raw) == Operation(seq=3, op="delete", path="a")


def test_decode_header_accepts_a_symlink_target_that_leaves_the_root():
    # A target is data, never followed by the receiver.
    header = {"op": "symlink", "seq": 1, "path": "l", "mtime_ns": 0, "target": "/etc/passwd"}
    raw = json.dumps(header).encode()
    assert decode_header(raw).target == "/etc/passwd"


# --- decode_header: fuzz ---------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

_bad_paths = st.sampled_from(
    ["", ".", "..", "/", "/abs", "a/../b", "./a", "a//b", "a/", "a\x00b", "\ud800", "x" * 300, "a/" * 3000]
)
_paths = st.none() | valid_relpaths | _bad_paths | st.text(max_size=30) | json_values
_ints = (
    st.none()
    | st.integers(-5, 0o10000)
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1 << 62, (1 << 62) + 1, MAX_FILE_BYTES, MAX_FILE_BYTES + 1, -MAX_MTIME_NS - 1])
    | st.booleans()
    | st.floats()
    | json_values
)
_ops = st.sampled_from(sorted(OP_KINDS)) | st.sampled_from(["PUT", "", "nuke", "end "]) | json_values
_targets = st.none() | st.text(max_size=20) | st.sampled_from(["", "x\x00", "y" * 5000]) | json_values

_plausible_fields = {
    "op": _ops,
    "seq": _ints,
    "path": _paths,
    "dest": _paths,
    "mode": _ints,
    "mtime_ns": _ints,
    "size": _ints,
    "target": _targets,
}
plausible_dicts = st.fixed_dictionaries({}, optional=_plausible_fields)
complete_dicts = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(OP_KINDS)), "seq": u62, "path": _paths},
    optional={k: v for k, v in _plausible_fields.items() if k not in ("op", "seq", "path")},
)
mostly_valid_dicts = st.builds(
    lambda op, extra: {**json.loads(op.header()[4:]), **extra},
    valid_operations(),
    st.fixed_dictionaries({}, optional=_plausible_fields),
)


def _encode(value: object, ensure_ascii: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", errors="surrogatepass")


def _assert_decodes_safely(raw: bytes) -> None:
    """decode_header returns a well-formed Operation or raises ProtocolError/ContainmentError."""
    try:
        op = decode_header(raw)
    except (ProtocolError, ContainmentError):
        return
    assert isinstance(op, Operation)
    assert op.op in OP_KINDS
    assert isinstance(op.seq, int) and 0 <= op.seq <= 1 << 62
    if op.path:
        assert validate_relpath(op.path) == op.path
    else:
        assert op.op == "end"
    if op.dest is not None:
        assert validate_relpath(op.dest) == op.dest
    if op.op == "rename":
        assert op.dest is not None
    if op.op in ("put", "mkdir", "attr"):
        assert op.mode is not None and op.mtime_ns is not None
    if op.op == "put":
        assert op.size is not None
    if op.op == "symlink":
        assert op.target is not None
    if op.mode is not None:
        assert 0 <= op.mode <= 0o7777 and not isinstance(op.mode, bool)
    if op.size is not None:
        assert 0 <= op.size <= MAX_FILE_BYTES and not isinstance(op.size, bool)
    if op.mtime_ns is not None:
        assert -MAX_MTIME_NS <= op.mtime_ns <= MAX_MTIME_NS and not isinstance(op.mtime_ns, bool)
    if op.target is not None:
        assert isinstance(op.target, str) and op.target and "\x00" not in op.target


@FUZZ
@given(st.binary(max_size=512))
def test_decode_header_on_arbitrary_bytes_never_raises_anything_else(raw):
    _assert_decodes_safely(raw)


@FUZZ
@given(json_values, st.booleans())
def test_decode_header_on_arbitrary_json_never_raises_anything_else(value, ensure_ascii):
    _assert_decodes_safely(_encode(value, ensure_ascii))


@FUZZ
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=8), st.booleans())
def test_decode_header_on_arbitrary_json_objects_never_raises_anything_else(value, ensure_ascii):
    _assert_decodes_safely(_encode(value, ensure_ascii))


@FUZZ
@given(plausible_dicts | complete_dicts, st.booleans())
def test_decode_header_on_plausible_headers_never_raises_anything_else(value, ensure_ascii):
    _assert_decodes_safely(_encode(value, ensure_ascii))


@FUZZ
@given(mostly_valid_dicts, st.booleans())
def test_decode_header_on_perturbed_valid_headers_never_raises_anything_else(value, ensure_ascii):
    _assert_decodes_safely(_encode(value, ensure_ascii))


@FUZZ
@given(valid_operations(), st.binary(min_size=1, max_size=4), st.integers(0, 200))
def test_decode_header_on_corrupted_valid_headers_never_raises_anything_else(op, junk, where):
    raw = op.header()[4:]
    where = min(where, len(raw))
    _assert_decodes_safely(raw[:where] + junk + raw[where + len(junk) :])


# --- the replica's answers, as the master parses them -----------------------------------
#
# A real Sender runs its hello, one batch and a reconciliation against a fake replica whose
# answers (status and body) are drawn by hypothesis: honest-looking, hostile (paths climbing out
# of the storage, absolute, NUL, through the storage's symlink to an outside folder, huge
# numbers, wrong types) or not JSON at all. Promises: nothing but the documented errors leaves
# the sender (PeerError family: the link retries; FencedError only for an in-bounds epoch), the
# journal only ever holds valid paths that are not below the symlink, and the marker in the
# outside folder never appears in anything the master sent.

ANSWER_MARKER = b"ANSWER-FUZZ-OUTSIDE-7d1e4a"
ROUTES = ("hello", "batch", "manifest", "hashes", "signatures")
OUR_EPOCH = 5


@dataclass
class AnswerTree:
    root: str
    outside: str
    entries: list[list[Any]]
    signature: str


@pytest.fixture(scope="module")
def answer_tree(tmp_path_factory: pytest.TempPathFactory) -> AnswerTree:
    base = tmp_path_factory.mktemp("answers")
    outside, root = base / "outside", base / "storage"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret").write_bytes(ANSWER_MARKER)
    (outside / "sub" / "secret").write_bytes(ANSWER_MARKER * 100)
    (root / "data").mkdir(parents=True)
    (root / "data" / "a.txt").write_bytes(b"alpha")
    (root / "big.bin").write_bytes(os.urandom(8192))
    (root / "escape").symlink_to(outside, target_is_directory=True)
    entries = [e.to_json() for e in manifest.walk(str(root))]
    with open(root / "big.bin", "rb") as fh:
        signature = base64.b64encode(signature_of_fd(fh.fileno()).to_bytes()).decode()
    return AnswerTree(str(root), str(outside), entries, signature)


class _Content:
    def __init__(self, raw: bytes) -> None:
        self._raw = raw

    async def iter_any(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._raw), 7):
            yield self._raw[start : start + 7]


class _Response:
    def __init__(self, status: int, raw: bytes, declared: bool) -> None:
        self.status = status
        self.reason = "Reason"
        self.content_length = len(raw) if declared else None
        self.content = _Content(raw)


class FakeReplica:
    """Stands in for aiohttp's session: records what the master sends, answers what it was told to."""

    def __init__(self, answers: dict[str, tuple[int, bytes, bool]]) -> None:
        self.answers = answers
        self.sent = bytearray()
        self.routes: list[str] = []

    def request(self, method: str, url: str, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._exchange(url, kwargs)

    @contextlib.asynccontextmanager
    async def _exchange(self, url: str, kwargs: dict[str, Any]) -> AsyncIterator[_Response]:
        if kwargs.get("data") is not None:
            async for chunk in kwargs["data"]:
                self.sent += chunk
        if kwargs.get("json") is not None:
            self.sent += json.dumps(kwargs["json"]).encode()
        route = url.rsplit("/", 1)[1]
        self.routes.append(route)
        status, raw, declared = self.answers.get(route, (200, b"{}", True))
        yield _Response(status, raw, declared)


_answer_paths = (
    st.sampled_from(
        [
            "data/a.txt",
            "big.bin",
            "escape",
            "data",
            "escape/secret",
            "escape/sub/secret",
            "escape/sub",
            "../outside/secret",
            "data/../../outside/secret",
            "/etc/passwd",
            "a\x00b",
            ".hs~x.1",
            "",
        ]
    )
    | valid_relpaths
)
_str_keys = _answer_paths | st.text(max_size=12)
_small_ints = st.integers(0, 40) | st.sampled_from([OUR_EPOCH + 1, (1 << 62) - (1 << 32), 1 << 62, 2**63, -1])
_answer_ints = _small_ints | _ints


def _answer_bodies(tree: AnswerTree) -> dict[str, st.SearchStrategy[Any]]:
    paths = _answer_paths | json_values
    entry = st.tuples(
        paths,
        st.sampled_from(["file", "dir", "symlink", "fifo"]) | json_values,
        _answer_ints,
        _answer_ints,
        _answer_ints,
        _targets,
    ).map(list)
    files = [e for e in tree.entries if e[1] == "file"]
    near = st.sampled_from(files).map(lambda e: [e[0], e[1], e[2], e[3] + 1, e[4], e[5]])  # asks hashes
    entries = st.lists(near | st.sampled_from(tree.entries) | entry, max_size=12)
    hashes = st.dictionaries(_str_keys, st.sampled_from(["ab" * 32, "zz", None]) | json_values, max_size=6)
    signatures = st.dictionaries(
        _str_keys, st.sampled_from([tree.signature, "!!", None]) | json_values, max_size=6
    )
    refusal = {
        "failed_seq": _answer_ints,
        "applied_seq": _answer_ints,
        "symlink_at": paths,
        "peer_epoch": _answer_ints,
        "detail": st.text(max_size=30) | json_values,
    }
    return {
        "hello": st.fixed_dictionaries(
            {}, optional={"journal_id": st.sampled_from(["", "J"]) | json_values, "applied_seq": _answer_ints}
        ),
        "batch": st.fixed_dictionaries(
            {},
            optional={
                "applied_seq": _answer_ints,
                "resend": st.lists(paths, max_size=20) | json_values,
                **refusal,
            },
        ),
        "manifest": st.fixed_dictionaries({"entries": entries | entries | json_values}, optional=refusal),
        "hashes": st.fixed_dictionaries({}, optional={"hashes": hashes | json_values, **refusal}),
        "signatures": st.fixed_dictionaries({}, optional={"signatures": signatures | json_values, **refusal}),
    }


@st.composite
def replica_answers(draw: st.DrawFn, tree: AnswerTree) -> dict[str, tuple[int, bytes, bool]]:
    bodies = _answer_bodies(tree)
    answers = {}
    for route in ROUTES:
        status = draw(st.sampled_from([200] * 6 + [400, 404, 409, 500, 507]))
        if draw(st.integers(0, 9)) == 0:
            raw = draw(st.binary(max_size=40))
        else:
            body = draw(st.one_of(bodies[route], bodies[route], json_values))
            raw = json.dumps(body).encode("utf-8", errors="surrogatepass")
        answers[route] = (status, raw, draw(st.booleans()))
    return answers


def _run_sender_against(
    tree: AnswerTree,
    answers: dict[str, tuple[int, bytes, bool]],
    *,
    in_hypothesis: bool = True,
    held_whole: bool = True,
) -> None:
    """`held_whole` False: the manifest answer is compared as it arrives against our whole walk
    (manifest.Comparison), as a big replica's is; True: a small one is held whole (ScanComparison)."""
    stream_max = sender_module.STREAM_MAX
    sender_module.STREAM_MAX = stream_max if held_whole else -1
    try:
        _exchange(tree, answers, in_hypothesis)
    finally:
        sender_module.STREAM_MAX = stream_max


def _exchange(tree: AnswerTree, answers: dict[str, tuple[int, bytes, bool]], in_hypothesis: bool) -> None:
    journal = Journal("J", ReadyMarkers([]))
    replica = FakeReplica(answers)
    record_tree_calls: list[str] = []

    def record_tree(rel: str) -> int:
        record_tree_calls.append(rel)
        count = 0
        for entry in manifest.walk(tree.root, rel):
            journal.record_sync(entry.path)
            count += 1
        return count

    sender = Sender(
        LinkSettings(target="http://replica.invalid", server_key="k", node_id="n", delta_min_size=1024),
        tree.root,
        journal,
        ReplicationMetrics(CollectorRegistry()),
        skip=lambda _p: False,
        epoch=lambda: OUR_EPOCH,
        record_tree=record_tree,
    )
    sender._session = replica  # type: ignore[assignment]
    for path in ("data", "data/a.txt", "big.bin", "escape"):
        journal.record_sync(path)

    async def link_up() -> None:
        await sender._link_up()
        if sender._planning is not None:  # the link's reconciliation, beside the stream
            await sender._planning

    async def exchanges() -> None:
        for step in (
            link_up,
            lambda: sender._send(journal.take_batch(100, 1 << 30, lambda _c: 0)),
            lambda: sender.reconcile("requested"),
        ):
            try:
                await step()
            except PeerError:
                pass  # the link would reconnect and try again
            except FencedError as exc:
                assert OUR_EPOCH < exc.peer_epoch <= MAX_PEER_EPOCH

    asyncio.run(exchanges())
    for route in sorted(set(replica.routes)) if in_hypothesis else []:
        event(f"the master asked for {route}")  # hypothesis statistics: is every kind of answer reached?
    assert ANSWER_MARKER not in replica.sent
    for change in journal._entries.values():
        for path in (change.path, change.dest):
            if path is not None:
                assert (validate_relpath(path) == path and not is_within(path, "escape")) or path == "escape"
                assert not is_temp_name(path)
    for rel in record_tree_calls:
        assert validate_relpath(rel) == rel and not rel.startswith("escape/")
    assert sender.fenced_by is None


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_the_master_survives_any_answer_of_its_replica_and_never_reads_outside(answer_tree, data):
    held_whole = data.draw(st.booleans(), label="manifest held whole")
    _run_sender_against(answer_tree, data.draw(replica_answers(answer_tree)), held_whole=held_whole)


def test_a_replica_path_below_our_symlink_is_never_queued_for_deletion(answer_tree):
    """Found by the fuzz above: a manifest listing `escape/secret` (below our symlink `escape`) put a
    delete of it in the journal. Sending our symlink replaces the replica's folder and all below it."""
    answers = {route: (200, b"", False) for route in ROUTES}
    answers["manifest"] = (200, b'{"entries": [["escape/secret", "file", 0, 0, 0, null]]}', False)
    for held_whole in (True, False):
        _run_sender_against(answer_tree, answers, in_hypothesis=False, held_whole=held_whole)


def test_the_fake_replica_exchange_works_with_honest_answers(answer_tree):
    """Positive control: with plausible answers the sender really sends content (the fuzz is not
    just watching a sender that gives up at once)."""
    honest = {
        "hello": (200, b'{"journal_id": "", "applied_seq": 0}', True),
        "manifest": (200, b'{"entries": []}', True),
        "batch": (200, b'{"applied_seq": 0, "resend": []}', True),
        "signatures": (200, b'{"signatures": {}}', True),
        "hashes": (200, b'{"hashes": {}}', True),
    }
    replica = FakeReplica(honest)
    journal = Journal("J", ReadyMarkers([]))
    sender = Sender(
        LinkSettings(target="http://replica.invalid", server_key="k", node_id="n"),
        answer_tree.root,
        journal,
        ReplicationMetrics(CollectorRegistry()),
        skip=lambda _p: False,
        epoch=lambda: OUR_EPOCH,
        record_tree=lambda _rel: 0,
    )
    sender._session = replica  # type: ignore[assignment]

    async def exchange() -> None:
        await sender._link_up()
        assert sender._planning is not None
        await sender._planning  # the link's reconciliation, beside the stream
        await sender._send(journal.take_batch(100, 1 << 30, lambda _c: 0))

    asyncio.run(exchange())
    assert b"alpha" in replica.sent
    assert b'"target":"' + os.fsencode(answer_tree.outside) + b'"' in replica.sent  # the link itself
    assert ANSWER_MARKER not in replica.sent
