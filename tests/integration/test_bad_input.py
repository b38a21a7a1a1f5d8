"""A slave refuses every malformed, unauthenticated or escaping request, cleanly.

One real slave process (no master) receives hand-built replication batches.
For every refused request the promises are: a 4xx status, an RFC 9457
problem+json body without a traceback, nothing changed in STORAGE_PATH,
nothing changed next to it (the sibling `outside` folder), and one more
`plugin_sync_refused_requests_total`. A positive control proves the
endpoint does apply a well-formed batch, so the refusals are not just a
broken route.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from replication.delta import Signature
from replication.protocol import XXH128
from tests.support.cluster import SERVER_KEY, Node, http, snapshot

BATCH = "/internal/replication/batch"
MTIME_NS = 1_700_000_000_123_456_789
MAX_HEADER_BYTES = 64 * 1024
TRACEBACK_MARKERS = (b"Traceback (most recent call last)", b'File "', b"request_failed")


# -- wire format, built by hand so that it can be wrong --------------------------------
def frame(header: dict[str, Any] | list[Any] | str | bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw


def put(
    seq: int,
    path: Any,
    content: bytes,
    *,
    size: int | None = None,
    digest: bytes | None = None,
    flag: int = 0,
    mode: int = 0o644,
) -> bytes:
    header = {
        "op": "put",
        "seq": seq,
        "path": path,
        "mode": mode,
        "mtime_ns": MTIME_NS,
        "size": len(content) if size is None else size,
    }
    trailer = bytes([flag]) + (hashlib.sha256(content).digest() if digest is None else digest)
    return frame(header) + content + trailer


def end(seq: int) -> bytes:
    return frame({"op": "end", "seq": seq})


def op_frame(op: str, seq: int = 1, **fields: Any) -> bytes:
    return frame({"op": op, "seq": seq, **fields})


def meta_op(op: str, field_value: str, seq: int = 1) -> bytes:
    """A metadata operation whose path-like field (path, or dest for rename) is `field_value`."""
    if op == "mkdir":
        return op_frame("mkdir", seq, path=field_value, mode=0o755, mtime_ns=MTIME_NS)
    if op == "symlink":
        return op_frame("symlink", seq, path=field_value, target="somewhere", mtime_ns=MTIME_NS)
    if op == "delete":
        return op_frame("delete", seq, path=field_value)
    if op == "attr":
        return op_frame("attr", seq, path=field_value, mode=0o777, mtime_ns=MTIME_NS)
    if op == "rename-src":
        return op_frame("rename", seq, path=field_value, dest="renamed-here")
    if op == "rename-dest":
        return op_frame("rename", seq, path="local.txt", dest=field_value)
    raise AssertionError(op)


# -- the node and the checks ----------------------------------------------------------
@dataclass
class Env:
    slave: Node
    outside: Path

    def journal(self) -> str:
        return uuid.uuid4().hex


def start_slave(base: Path) -> Env:
    outside = base / "outside"
    outside.mkdir(parents=True)
    slave = Node("slave", "slave", base / "slave")
    slave.start()
    return Env(slave, outside)


def stop_slave(env: Env) -> None:
    try:
        env.slave.stop()
    finally:
        env.slave.kill()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One slave shared by the module; every test uses its own journal id."""
    started = start_slave(tmp_path_factory.mktemp("bad_input"))
    try:
        yield started
    finally:
        stop_slave(started)


@pytest.fixture
def fresh_env(tmp_path: Path) -> Iterator[Env]:
    """A slave of its own, for tests that change what the node remembers (the epoch)."""
    started = start_slave(tmp_path)
    try:
        yield started
    finally:
        stop_slave(started)


def post_batch(
    node: Node,
    body: bytes,
    *,
    journal: str | None = None,
    epoch: str | None = "1",
    authorization: str | None = f"Bearer {SERVER_KEY}",
    check: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/octet-stream"}
    if check is not None:
        headers["X-Hotstandby-Check"] = check
    if authorization is not None:
        headers["Authorization"] = authorization
    headers["X-Hotstandby-Journal"] = uuid.uuid4().hex if journal is None else journal
    if not headers["X-Hotstandby-Journal"]:
        del headers["X-Hotstandby-Journal"]
    if epoch is not None:
        headers["X-Hotstandby-Epoch"] = epoch
    return http("POST", f"{node.url}{BATCH}", body=body, headers=headers)


def post_json(node: Node, path: str, body: bytes, *, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {SERVER_KEY}"
    return http("POST", f"{node.url}{path}", body=body, headers=headers)


def header(headers: dict[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def refused_total(node: Node, reason: str | None = None) -> float:
    return node.metric("plugin_sync_refused_requests_total", {"reason": reason} if reason else None)


def assert_problem(
    response: tuple[int, dict[str, str], bytes], expected: int | tuple[int, ...]
) -> dict[str, Any]:
    status, headers, raw = response
    accepted = expected if isinstance(expected, tuple) else (expected,)
    assert status in accepted, f"expected {accepted}, got {status}: {raw[:500]!r}"
    assert 400 <= status < 500
    assert header(headers, "Content-Type").startswith("application/problem+json"), headers
    for marker in TRACEBACK_MARKERS:
        assert marker not in raw, raw[:2000]
    body = json.loads(raw)
    assert isinstance(body, dict), body
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"] and body["title"] != "internal error"
    assert isinstance(body["detail"], str) and body["detail"]
    return body


class Unchanged:
    """Snapshots storage, the outside folder, the refusal counter and the log; checks them after."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.storage = snapshot(env.slave.storage)
        self.outside = snapshot(env.outside)
        self.refused = refused_total(env.slave)
        self.log_offset = env.slave.log_path.stat().st_size

    def new_log(self) -> str:
        with open(self.env.slave.log_path, "rb") as fh:
            fh.seek(self.log_offset)
            return fh.read().decode(errors="replace")

    def check(self, *, refused: int | None = 1, outside_empty: bool = True) -> None:
        """`refused`: how much the refusal counter must have grown (None: not checked)."""
        log = self.new_log()
        assert "Traceback" not in log and "request_failed" not in log, log[-3000:]
        assert snapshot(self.env.slave.storage) == self.storage, "the refused request changed STORAGE_PATH"
        assert snapshot(self.env.outside) == self.outside, "the refused request reached outside STORAGE_PATH"
        if outside_empty:
            assert os.listdir(self.env.outside) == []
        after = refused_total(self.env.slave)
        assert refused is None or after - self.refused == refused, (
            f"plugin_sync_refused_requests_total went from {self.refused} to {after}"
        )


def refuse(
    env: Env,
    send: Callable[[], tuple[int, dict[str, str], bytes]],
    expected: int | tuple[int, ...],
    *,
    outside_empty: bool = True,
) -> dict[str, Any]:
    watch = Unchanged(env)
    body = assert_problem(send(), expected)
    watch.check(outside_empty=outside_empty)
    return body


# -- positive control -------------------------------------------------------------------
def test_a_valid_put_batch_is_applied(env: Env) -> None:
    content = bytes(range(256)) * 40 + b"\x00tail"
    refused_before = refused_total(env.slave)
    status, headers, raw = post_batch(
        env.slave, put(1, "control/data.bin", content, mode=0o640) + end(1), journal=env.journal()
    )
    assert status == 200, raw
    assert header(headers, "Content-Type").startswith("application/json")
    body = json.loads(raw)
    assert body["applied_seq"] == 1
    assert body["operations"] == 1 and body["bytes"] == len(content)
    target = env.slave.storage / "control" / "data.bin"
    assert target.read_bytes() == content
    st = target.stat()
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_mtime_ns == MTIME_NS
    assert not [p for p in os.listdir(target.parent) if p.startswith(".hs~")]
    assert env.slave.status()["applied_sequence"] == 1
    assert refused_total(env.slave) == refused_before
    assert os.listdir(env.outside) == []


# -- paths that are not canonical relative paths --------------------------------------
BAD_PATHS: dict[str, str] = {
    "dotdot-escape": "../../outside/pwned",
    "dotdot-inside": "a/../../../outside/pwned",
    "dotdot-alone": "..",
    "dotdot-last": "a/..",
    "dot-component": "a/./b",
    "empty-component": "a//b",
    "trailing-slash": "a/",
    "empty": "",
    "absolute-outside": "{outside}/pwned",
    "absolute-etc": "/etc/hotstandby-pwned",
    "nul-byte": "pwned\x00.txt",
    "nul-then-dotdot": "ok\x00/../../outside/pwned",
    "too-long": "/".join(["d" * 200] * 25),
    "component-too-long": "n" * 256,
    "lone-surrogate": "bad\ud800name",
}


def bad_path(name: str, env: Env) -> str:
    return BAD_PATHS[name].replace("{outside}", str(env.outside))


@pytest.mark.parametrize("name", list(BAD_PATHS))
def test_put_with_a_bad_path_is_refused(env: Env, name: str) -> None:
    path = bad_path(name, env)
    body = refuse(env, lambda: post_batch(env.slave, put(1, path, b"pwned") + end(1)), 400)
    assert body["title"] == "path refused"


@pytest.mark.parametrize("op", ["mkdir", "symlink", "delete", "attr", "rename-src", "rename-dest"])
@pytest.mark.parametrize("name", ["dotdot-escape", "absolute-outside", "nul-byte"])
def test_metadata_operation_with_a_bad_path_is_refused(env: Env, op: str, name: str) -> None:
    (env.slave.storage / "local.txt").write_text("local")
    try:
        body = refuse(env, lambda: post_batch(env.slave, meta_op(op, bad_path(name, env)) + end(1)), 400)
    finally:
        (env.slave.storage / "local.txt").unlink()
    assert body["title"] == "path refused"


# -- symlinked directories inside storage ---------------------------------------------
@pytest.fixture
def escapes(env: Env) -> Iterator[Path]:
    """Symlinks inside storage that lead to the outside folder, which holds one victim file."""
    storage = env.slave.storage
    victim = env.outside / "victim"
    victim.write_text("outside data")
    os.chmod(victim, 0o600)
    os.utime(victim, ns=(MTIME_NS, MTIME_NS))
    os.symlink(env.outside, storage / "escape")
    os.symlink(os.path.relpath(env.outside, storage), storage / "escape-rel")
    (storage / "real-dir").mkdir()
    os.symlink(env.outside, storage / "real-dir" / "inner-escape")
    (storage / "local.txt").write_text("local")
    try:
        yield victim
    finally:
        for link in ("escape", "escape-rel", "real-dir/inner-escape", "local.txt", "newlink"):
            if os.path.lexists(storage / link):
                os.unlink(storage / link)
        (storage / "real-dir").rmdir()
        for leftover in os.listdir(env.outside):
            os.unlink(env.outside / leftover)


SYMLINK_ESCAPES: dict[str, bytes] = {
    "put": put(1, "escape/pwned", b"pwned"),
    "put-relative-link": put(1, "escape-rel/pwned", b"pwned"),
    "put-nested-link": put(1, "real-dir/inner-escape/pwned", b"pwned"),
    "put-below-link": put(1, "escape/sub/pwned", b"pwned"),
    "put-over-victim": put(1, "escape/victim", b"overwritten"),
    "mkdir": meta_op("mkdir", "escape/newdir"),
    "symlink": meta_op("symlink", "escape/lnk"),
    "attr-victim": meta_op("attr", "escape/victim"),
    "delete-victim": meta_op("delete", "escape/victim"),
    "rename-victim-in": meta_op("rename-src", "escape/victim"),
    "rename-local-out": meta_op("rename-dest", "escape/moved"),
}


@pytest.mark.parametrize("case", list(SYMLINK_ESCAPES))
def test_writes_through_a_symlinked_directory_are_refused(env: Env, escapes: Path, case: str) -> None:
    body = refuse(
        env, lambda: post_batch(env.slave, SYMLINK_ESCAPES[case] + end(1)), 400, outside_empty=False
    )
    assert body["title"] == "path refused"
    assert escapes.read_text() == "outside data"


def test_a_symlink_created_in_the_same_batch_cannot_be_written_through(env: Env, escapes: Path) -> None:
    """The symlink itself is data and is applied; the put through it is refused."""
    watch = Unchanged(env)
    batch = (
        op_frame("symlink", 1, path="newlink", target=str(env.outside), mtime_ns=MTIME_NS)
        + put(2, "newlink/pwned", b"pwned")
        + end(2)
    )
    body = assert_problem(post_batch(env.slave, batch), 400)
    assert body["title"] == "path refused"
    assert body["applied_seq"] == 1
    assert os.readlink(env.slave.storage / "newlink") == str(env.outside)
    os.unlink(env.slave.storage / "newlink")
    watch.check(outside_empty=False)
    assert sorted(os.listdir(env.outside)) == ["victim"]


def test_hashes_do_not_read_through_a_symlinked_directory(env: Env, escapes: Path) -> None:
    payload = json.dumps({"paths": ["escape/victim", "real-dir/inner-escape/victim", "escape"]}).encode()
    status, _h, raw = post_json(env.slave, "/internal/replication/hashes", payload)
    assert status == 200, raw
    assert json.loads(raw)["hashes"] == {
        "escape/victim": None,
        "real-dir/inner-escape/victim": None,
        "escape": None,
    }


def test_signatures_come_in_the_block_hash_asked_for(env: Env) -> None:
    """Protocol 3's CRC-32 signatures (format 2) and protocol 2's SHA-256 ones (format 1); any other
    block hash, or a width that does not fit it, is a 400 naming what is accepted."""
    (env.slave.storage / "sig.bin").write_bytes(os.urandom(100_000))
    for request, version, width in [
        ({"block_hash": "crc32", "digest_bytes": 4}, 2, 4),
        ({"digest_bytes": 6}, 1, 6),
        ({}, 1, 16),
    ]:
        payload = json.dumps({"paths": ["sig.bin"], **request}).encode()
        status, _h, raw = post_json(env.slave, "/internal/replication/signatures", payload)
        assert status == 200, raw
        blob = base64.b64decode(json.loads(raw)["signatures"]["sig.bin"])
        sig = Signature.from_bytes(blob)
        assert (blob[4], sig.digest_bytes, sig.file_size) == (version, width, 100_000)
    for bad in [{"block_hash": "md5"}, {"block_hash": "crc32", "digest_bytes": 6}, {"block_hash": 3}]:
        payload = json.dumps({"paths": ["sig.bin"], **bad}).encode()
        status, _h, raw = post_json(env.slave, "/internal/replication/signatures", payload)
        assert status == 400, raw
        assert "block_hash is one of" in json.loads(raw)["detail"]
    os.unlink(env.slave.storage / "sig.bin")


# -- content that does not match its header --------------------------------------------
def test_put_with_a_wrong_sha256_is_refused(env: Env) -> None:
    digest = hashlib.sha256(b"something else").digest()
    body = refuse(env, lambda: post_batch(env.slave, put(1, "wrong-sha.txt", b"content", digest=digest)), 422)
    assert body["title"] == "content does not match its hash"


def test_put_with_a_wrong_sha256_keeps_the_existing_file(env: Env) -> None:
    existing = env.slave.storage / "existing.txt"
    existing.write_text("original")
    try:
        digest = hashlib.sha256(b"forged").digest()
        refuse(env, lambda: post_batch(env.slave, put(1, "existing.txt", b"replaced!", digest=digest)), 422)
        assert existing.read_text() == "original"
    finally:
        existing.unlink()


def test_put_with_a_wrong_sha256_creates_no_parent_directories(env: Env) -> None:
    """A refused put must not leave the directories it would have needed."""
    digest = hashlib.sha256(b"forged").digest()
    refuse(env, lambda: post_batch(env.slave, put(1, "fresh-dir/sub/f.txt", b"content", digest=digest)), 422)


@pytest.mark.parametrize(
    "extra",
    [b", and then some more bytes", b"\x00" * 40],
    ids=["extra-text", "extra-zeros"],
)
def test_put_with_content_longer_than_its_size_is_refused(env: Env, extra: bytes) -> None:
    content = b"four" + extra
    batch = put(1, "longer.txt", content, size=4) + end(1)
    refuse(env, lambda: post_batch(env.slave, batch), (400, 422))


def test_put_with_an_unknown_trailer_flag_is_refused(env: Env) -> None:
    body = refuse(env, lambda: post_batch(env.slave, put(1, "flag.txt", b"content", flag=2) + end(1)), 400)
    assert body["title"] == "malformed replication stream"


# -- streams that end early -------------------------------------------------------------
_FULL_PUT = put(1, "truncated.bin", b"x" * 1000)

TRUNCATED: dict[str, bytes] = {
    "empty-body": b"",
    "length-prefix-cut": end(1)[:2],
    "header-cut": end(1)[:-3],
    "put-header-cut": _FULL_PUT[:20],
    "content-cut": _FULL_PUT[: len(_FULL_PUT) - 33 - 500],
    "trailer-cut": _FULL_PUT[:-10],
    "size-larger-than-stream": put(1, "truncated.bin", b"y" * 10, size=1000) + end(1),
}


@pytest.mark.parametrize("case", list(TRUNCATED))
def test_a_batch_that_ends_early_is_refused(env: Env, case: str) -> None:
    body = refuse(env, lambda: post_batch(env.slave, TRUNCATED[case]), 400)
    assert body["title"] == "malformed replication stream"


# -- malformed headers and garbage ------------------------------------------------------
_PUT_FIELDS = {"path": "x", "mode": 0o644, "mtime_ns": MTIME_NS, "size": 1}

MALFORMED: dict[str, bytes] = {
    "unknown-op": op_frame("chmod", 1, path="x", mode=0o777),
    "op-missing": frame({"seq": 1, "path": "x"}),
    "op-not-a-string": frame({"op": ["put"], "seq": 1, **_PUT_FIELDS}),
    "op-null": frame({"op": None, "seq": 1}),
    "put-lacks-size": op_frame("put", 1, path="x", mode=0o644, mtime_ns=MTIME_NS),
    "rename-lacks-dest": op_frame("rename", 1, path="x"),
    "seq-missing": frame({"op": "delete", "path": "x"}),
    "seq-negative": op_frame("delete", -1, path="x"),
    "seq-bool": frame({"op": "delete", "seq": True, "path": "x"}),
    "seq-string": frame({"op": "delete", "seq": "1", "path": "x"}),
    "seq-float": frame({"op": "delete", "seq": 1.5, "path": "x"}),
    "seq-huge": op_frame("delete", 1 << 70, path="x"),
    "size-negative": frame({"op": "put", "seq": 1, **_PUT_FIELDS, "size": -1}),
    "size-huge": frame({"op": "put", "seq": 1, **_PUT_FIELDS, "size": 1 << 50}),
    "mode-too-big": frame({"op": "put", "seq": 1, **_PUT_FIELDS, "mode": 0o10000}),
    "mtime-string": frame({"op": "put", "seq": 1, **_PUT_FIELDS, "mtime_ns": "now"}),
    "path-int": frame({"op": "put", "seq": 1, **_PUT_FIELDS, "path": 5}),
    "path-null": frame({"op": "put", "seq": 1, **_PUT_FIELDS, "path": None}),
    "path-list": frame({"op": "delete", "seq": 1, "path": ["a", "b"]}),
    "symlink-target-empty": op_frame("symlink", 1, path="l", target="", mtime_ns=MTIME_NS),
    "symlink-target-nul": op_frame("symlink", 1, path="l", target="a\x00b", mtime_ns=MTIME_NS),
    "symlink-target-int": op_frame("symlink", 1, path="l", target=7, mtime_ns=MTIME_NS),
    "header-json-list": frame([1, 2, 3]),
    "header-json-string": frame("put"),
    "header-not-json": frame(b"{op: put, seq: 1}"),
    "header-not-utf8": frame(b'{"op": "\xff\xfe"}'),
    "header-deep-nesting": frame(b"[" * 60000),
    "header-length-zero": b"\x00\x00\x00\x00" + end(1),
    "header-length-one": struct.pack(">I", 1) + b"{" + end(1),
    "header-length-too-big": struct.pack(">I", MAX_HEADER_BYTES + 1) + b"{" * 64,
    "header-length-max": b"\xff\xff\xff\xff" + end(1),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_header_is_refused(env: Env, case: str) -> None:
    body = refuse(env, lambda: post_batch(env.slave, MALFORMED[case] + b"x" + bytes(33) + end(1)), 400)
    assert body["title"] in ("malformed replication stream", "path refused")


GARBAGE: dict[str, bytes] = {
    "random-bytes": random.Random(20240601).randbytes(4096),
    "zeros": bytes(4096),
    "http-request": b"GET / HTTP/1.1\r\nHost: slave\r\n\r\n",
    "json-without-frame": b'{"op": "end", "seq": 1}',
    "two-bytes": b"\x00\x01",
    "text": "¿garbage?".encode() * 100,
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_bytes_are_refused(env: Env, case: str) -> None:
    body = refuse(env, lambda: post_batch(env.slave, GARBAGE[case]), 400)
    assert body["title"] == "malformed replication stream"


# -- authentication -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-key-0123456789",
        f"Bearer {SERVER_KEY[:-1]}",
        f"Bearer {SERVER_KEY}x",
        "Bearer ",
        f"Basic {SERVER_KEY}",
        SERVER_KEY,
    ],
    ids=["missing", "wrong-key", "key-prefix", "key-suffix", "empty-bearer", "basic-scheme", "no-scheme"],
)
def test_a_batch_without_the_right_key_is_refused(env: Env, authorization: str | None) -> None:
    before = refused_total(env.slave, "unauthorized")
    batch = put(1, "unauthorized.txt", b"would be written") + end(1)
    body = refuse(env, lambda: post_batch(env.slave, batch, authorization=authorization), 401)
    assert body["title"] == "unauthorized"
    assert refused_total(env.slave, "unauthorized") == before + 1


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("GET", "/internal/status", None),
        ("GET", "/internal/replication/manifest", None),
        ("GET", "/internal/replication/manifest/digest", None),
        ("POST", "/internal/replication/hello", {"journal_id": "j", "epoch": 1, "node_id": "intruder"}),
        ("POST", "/internal/replication/hashes", {"paths": ["control/data.bin"]}),
        ("POST", "/internal/sync", {}),
    ],
    ids=["status", "manifest", "digest", "hello", "hashes", "sync"],
)
@pytest.mark.parametrize("key", [None, "wrong-key-0123456789"], ids=["missing", "wrong"])
def test_internal_endpoints_need_the_key(
    env: Env, method: str, path: str, payload: Any, key: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body_bytes = None if payload is None else json.dumps(payload).encode()
    master_before = env.slave.status()["master_node"]
    watch = Unchanged(env)
    response = http(method, f"{env.slave.url}{path}", body=body_bytes, headers=headers)
    body = assert_problem(response, 401)
    watch.check()
    assert body["title"] == "unauthorized"
    assert header(response[1], "WWW-Authenticate") == "Bearer"
    assert env.slave.status()["master_node"] == master_before


# -- required headers ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("journal", "epoch"),
    [("", "1"), (None, None), (None, "abc"), (None, "-1"), (None, "1.5"), (None, "")],
    ids=[
        "journal-missing",
        "epoch-missing",
        "epoch-not-a-number",
        "epoch-negative",
        "epoch-float",
        "epoch-empty",
    ],
)
def test_a_batch_without_valid_replication_headers_is_refused(
    env: Env, journal: str | None, epoch: str | None
) -> None:
    batch = put(1, "headerless.txt", b"would be written") + end(1)
    body = refuse(env, lambda: post_batch(env.slave, batch, journal=journal, epoch=epoch), 400)
    assert body["title"] == "bad request"


@pytest.mark.parametrize("check", ["md5", "", "SHA256", "xxh-128"])
def test_a_batch_naming_an_unknown_content_check_is_refused(env: Env, check: str) -> None:
    batch = put(1, "unchecked.txt", b"would be written") + end(1)
    body = refuse(env, lambda: post_batch(env.slave, batch, check=check), 400)
    assert body["title"] == "malformed replication stream"
    assert "unknown content check" in body["detail"]


def test_a_batch_naming_xxh128_is_checked_with_it(env: Env) -> None:
    """Protocol 5's trailers (16 bytes of XXH3-128); a SHA-256 trailer in such a batch is refused."""
    content = b"checked with xxh3-128"
    status, _h, _raw = post_batch(
        env.slave, put(1, "xxh.txt", content, digest=XXH128.of(content)) + end(1), check="xxh128"
    )
    assert status == 200
    assert (env.slave.storage / "xxh.txt").read_bytes() == content
    body = refuse(
        env, lambda: post_batch(env.slave, put(1, "sha.txt", content) + end(1), check="xxh128"), 422
    )
    assert body["title"] == "content does not match its hash"
    assert not (env.slave.storage / "sha.txt").exists()


# -- fencing --------------------------------------------------------------------------------
def test_a_batch_from_a_lower_epoch_than_a_previous_batch_is_fenced(fresh_env: Env) -> None:
    slave = fresh_env.slave
    journal = fresh_env.journal()
    status, _h, raw = post_batch(slave, put(1, "epoch5.txt", b"five") + end(1), journal=journal, epoch="5")
    assert status == 200, raw
    assert (slave.storage / "epoch5.txt").read_bytes() == b"five"
    fenced_before = refused_total(slave, "fenced")
    batch = put(2, "epoch3.txt", b"three") + end(2)
    body = refuse(fresh_env, lambda: post_batch(slave, batch, journal=journal, epoch="3"), 409)
    assert body["title"] == "fenced by a higher epoch"
    assert body["peer_epoch"] == 5
    assert refused_total(slave, "fenced") == fenced_before + 1
    assert not (slave.storage / "epoch3.txt").exists()


def test_a_batch_from_a_lower_epoch_than_a_previous_hello_is_fenced(fresh_env: Env) -> None:
    slave = fresh_env.slave
    hello = json.dumps({"journal_id": "j5", "epoch": 5, "node_id": "master-5"}).encode()
    status, _h, raw = post_json(slave, "/internal/replication/hello", hello)
    assert status == 200, raw
    body = refuse(fresh_env, lambda: post_batch(slave, put(1, "old.txt", b"old") + end(1), epoch="3"), 409)
    assert body["peer_epoch"] == 5
    old_hello = json.dumps({"journal_id": "j3", "epoch": 3, "node_id": "master-3"}).encode()
    body = refuse(fresh_env, lambda: post_json(slave, "/internal/replication/hello", old_hello), 409)
    assert body["peer_epoch"] == 5
    assert slave.status()["master_node"] == "master-5"


# -- the JSON endpoints ---------------------------------------------------------------------
BAD_HELLO: dict[str, bytes] = {
    "not-json": b"not json",
    "empty": b"",
    "truncated": b'{"journal_id": "j", "epoch": ',
    "not-utf8": b'{"epoch": "\xff"}',
    "json-list": b"[1]",
    "epoch-missing": b'{"journal_id": "j", "node_id": "n"}',
    "epoch-string": b'{"journal_id": "j", "epoch": "x", "node_id": "n"}',
    "epoch-negative": b'{"journal_id": "j", "epoch": -1, "node_id": "n"}',
}


@pytest.mark.parametrize("case", list(BAD_HELLO))
def test_hello_refuses_bad_json(env: Env, case: str) -> None:
    before = env.slave.status()
    watch = Unchanged(env)
    assert_problem(post_json(env.slave, "/internal/replication/hello", BAD_HELLO[case]), 400)
    watch.check(refused=None)
    after = env.slave.status()
    assert (after["epoch"], after["master_node"]) == (before["epoch"], before["master_node"])


BAD_HASHES: dict[str, bytes] = {
    "not-json": b"not json",
    "json-list": b'["../x"]',
    "paths-missing": b"{}",
    "paths-string": b'{"paths": "../x"}',
    "paths-not-strings": b'{"paths": [1, null]}',
    "dotdot": b'{"paths": ["../x"]}',
    "dotdot-outside": b'{"paths": ["../../outside/victim"]}',
    "absolute": b'{"paths": ["/etc/passwd"]}',
    "nul": b'{"paths": ["a\\u0000b"]}',
    "empty-path": b'{"paths": [""]}',
}


@pytest.mark.parametrize("case", list(BAD_HASHES))
def test_hashes_refuse_bad_json_and_bad_paths(env: Env, case: str) -> None:
    watch = Unchanged(env)
    assert_problem(post_json(env.slave, "/internal/replication/hashes", BAD_HASHES[case]), 400)
    watch.check(refused=None)


def test_the_slave_survives_all_of_it(env: Env) -> None:
    """After everything above, the shared slave is healthy and still applies a valid batch."""
    assert env.slave.is_up()
    status, _h, raw = post_batch(env.slave, put(7, "last.txt", b"still fine") + end(7))
    assert status == 200, raw
    assert json.loads(raw)["applied_seq"] == 7
    assert (env.slave.storage / "last.txt").read_bytes() == b"still fine"
    assert "Traceback" not in env.slave.log_path.read_text(errors="replace")
