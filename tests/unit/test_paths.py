"""Relative wire paths and their containment inside STORAGE_PATH."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import replication.paths as paths_module
from replication.errors import ContainmentError, NotRegularFileError, ReplicationError
from replication.paths import (
    MAX_HELD_DIR_FDS,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    TEMP_PREFIX,
    StorageRoot,
    file_kind,
    is_temp_name,
    is_within,
    rebase,
    split_parent,
    validate_relpath,
)

DIFY_PLUGIN_ID = "langgenius/openai:0.0.1@" + "0123456789abcdef" * 4

# --- validate_relpath -------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "a",
        "a/b/c",
        "name:with:colons",
        "user@host",
        DIFY_PLUGIN_ID,
        DIFY_PLUGIN_ID + "/.venv/dify/plugin.json",
        "...",
        ".hidden/..dots../x",
        "spaces are fine/ok",
        "ünïcödé/日本語",
        "a" * MAX_NAME_BYTES,
    ],
)
def test_canonical_relative_path_is_accepted_unchanged(path):
    assert validate_relpath(path) == path


def test_dify_plugin_identifier_with_64_hex_digest_is_accepted():
    assert len(DIFY_PLUGIN_ID.rsplit("@", 1)[1]) == 64
    assert validate_relpath(DIFY_PLUGIN_ID) == DIFY_PLUGIN_ID


def test_empty_path_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("")


def test_absolute_path_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("/abs")


def test_dotdot_component_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("a/../b")


def test_bare_dotdot_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("..")


def test_trailing_dotdot_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("a/..")


def test_dot_component_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("./a")


def test_bare_dot_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath(".")


def test_empty_component_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("a//b")


def test_trailing_slash_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("a/")


@pytest.mark.parametrize("path", ["\x00", "a\x00b", "a/b\x00", "\x00/etc/passwd"])
def test_nul_byte_is_refused(path):
    with pytest.raises(ContainmentError):
        validate_relpath(path)


@pytest.mark.parametrize("value", [None, b"a", 1, ["a"], ("a",), object()])
def test_non_str_input_is_refused(value):
    with pytest.raises(ContainmentError):
        validate_relpath(value)


def test_over_long_component_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("a" * (MAX_NAME_BYTES + 1))


def test_component_length_is_counted_in_bytes_not_characters():
    name = "é" * 128  # 128 characters, 256 UTF-8 bytes
    with pytest.raises(ContainmentError):
        validate_relpath(f"dir/{name}")


def test_over_long_path_is_refused():
    path = "/".join(["d" * 200] * (MAX_PATH_BYTES // 200 + 1))
    assert len(path) > MAX_PATH_BYTES
    with pytest.raises(ContainmentError):
        validate_relpath(path)


def test_path_at_the_length_limit_is_accepted():
    path = "/".join(["d" * 255] * 16)  # 16 * 256 - 1 = 4095 bytes
    assert len(path) <= MAX_PATH_BYTES
    assert validate_relpath(path) == path


def test_unencodable_lone_surrogate_is_refused():
    with pytest.raises(ContainmentError):
        validate_relpath("a/\ud800")


def test_containment_error_is_a_value_error():
    assert issubclass(ContainmentError, ValueError)


# --- small helpers ------------------------------------------------------------


def test_is_within_accepts_the_prefix_itself_and_paths_below_it():
    assert is_within("a/b", "a/b")
    assert is_within("a/b/c", "a/b")


def test_is_within_does_not_confuse_a_shared_name_prefix():
    assert not is_within("a/bc", "a/b")
    assert not is_within("a", "a/b")


def test_rebase_moves_a_path_to_a_new_prefix():
    assert rebase("old/dir/file", "old/dir", "new/place") == "new/place/file"
    assert rebase("old/dir", "old/dir", "new") == "new"


def test_split_parent_returns_parent_and_name():
    assert split_parent("a/b/c") == ("a/b", "c")
    assert split_parent("c") == ("", "c")


def test_temp_names_are_recognised_by_their_last_component():
    assert is_temp_name(f"{TEMP_PREFIX}abc")
    assert is_temp_name(f"a/b/{TEMP_PREFIX}file.123")
    assert not is_temp_name(f"{TEMP_PREFIX}dir/file")
    assert not is_temp_name("a/b/file")


# --- StorageRoot.open_dir --------------------------------------------------------


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "outside"
    path.mkdir()
    return path


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _write_via(fd: int, name: str, data: bytes = b"x") -> None:
    file_fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
    try:
        os.write(file_fd, data)
    finally:
        os.close(file_fd)


def test_empty_rel_dir_opens_the_root_itself(root):
    with StorageRoot(str(root)).open_dir("", create=False) as fd:
        _write_via(fd, "at-root")
    assert (root / "at-root").read_bytes() == b"x"


def test_existing_directory_is_opened(root):
    (root / "a" / "b").mkdir(parents=True)
    with StorageRoot(str(root)).open_dir("a/b", create=False) as fd:
        _write_via(fd, "f")
    assert (root / "a" / "b" / "f").exists()


def test_missing_directories_are_created_with_create(root):
    with StorageRoot(str(root)).open_dir("a/b/c", create=True) as fd:
        _write_via(fd, "f")
    assert (root / "a" / "b" / "c").is_dir()
    assert (root / "a" / "b" / "c" / "f").read_bytes() == b"x"


def test_missing_directory_raises_file_not_found_without_create(root):
    with pytest.raises(FileNotFoundError), StorageRoot(str(root)).open_dir("a/b", create=False):
        pass
    assert not (root / "a").exists()


def test_invalid_rel_dir_is_refused(root):
    with pytest.raises(ContainmentError), StorageRoot(str(root)).open_dir("../outside", create=True):
        pass


def test_symlinked_parent_pointing_outside_is_refused(root, outside):
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ContainmentError), StorageRoot(str(root)).open_dir("link/sub", create=True):
        pass
    assert list(outside.iterdir()) == []


def test_symlinked_directory_as_last_component_is_refused(root, outside):
    (root / "link").symlink_to(outside, target_is_directory=True)
    for create in (True, False):
        with pytest.raises(ContainmentError), StorageRoot(str(root)).open_dir("link", create=create):
            pass
    assert list(outside.iterdir()) == []


def test_deeper_symlinked_parent_pointing_outside_is_refused(root, outside):
    (root / "a").mkdir()
    (root / "a" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ContainmentError), StorageRoot(str(root)).open_dir("a/link/b/c", create=True):
        pass
    assert list(outside.iterdir()) == []


def test_dangling_symlink_is_refused_and_its_target_is_not_created(root, outside):
    (root / "dangling").symlink_to(outside / "new")
    with pytest.raises(ContainmentError), StorageRoot(str(root)).open_dir("dangling/x", create=True):
        pass
    assert not (outside / "new").exists()


def test_symlink_to_a_directory_inside_the_root_is_refused_too(root):
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    with pytest.raises(ContainmentError), StorageRoot(str(root)).open_dir("alias", create=True):
        pass


def test_regular_file_in_the_way_is_replaced_by_a_directory_with_create(root):
    (root / "a").write_bytes(b"stale file")
    with StorageRoot(str(root)).open_dir("a/b", create=True) as fd:
        _write_via(fd, "f")
    assert (root / "a").is_dir()
    assert (root / "a" / "b" / "f").read_bytes() == b"x"


def test_regular_file_as_last_component_is_replaced_with_create(root):
    (root / "a").write_bytes(b"stale file")
    with StorageRoot(str(root)).open_dir("a", create=True):
        pass
    assert (root / "a").is_dir()


def test_regular_file_in_the_way_is_left_alone_without_create(root):
    (root / "a").write_bytes(b"keep me")
    with pytest.raises(FileNotFoundError), StorageRoot(str(root)).open_dir("a/b", create=False):
        pass
    assert (root / "a").read_bytes() == b"keep me"


def test_no_file_descriptor_leaks_on_success_or_failure(root, outside):
    (root / "link").symlink_to(outside, target_is_directory=True)
    storage = StorageRoot(str(root))
    before = _open_fds()
    with storage.open_dir("x/y/z", create=True):
        pass
    with pytest.raises(FileNotFoundError), storage.open_dir("missing/dir", create=False):
        pass
    with pytest.raises(ContainmentError), storage.open_dir("link/sub", create=True):
        pass
    with pytest.raises(RuntimeError), storage.open_dir("x/y", create=False):
        raise RuntimeError("body failed")
    assert _open_fds() == before


# --- StorageRoot: the reading side (the master's sender, scans, hashes) ------------------


MARKER = b"OUTSIDE-MARKER-9b1f"


def _fifo(path) -> None:
    os.mkfifo(path)


def _socket(path) -> socket.socket:
    """A bound unix socket at `path` (bound from its folder: sun_path is short)."""
    sock = socket.socket(socket.AF_UNIX)
    folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{folder}/{os.path.basename(path)}")
    finally:
        os.close(folder)
    return sock


def _in_thread_within(seconds: float, call):
    """Run `call` in a thread; fail (instead of hanging the run) when it does not return in time."""
    result: dict[str, object] = {}

    def target():
        try:
            result["value"] = call()
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the call blocked for more than {seconds}s"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


def test_open_regular_returns_an_fd_and_its_fstat(root):
    (root / "a").mkdir()
    (root / "a" / "f").write_bytes(b"content")
    fd, st = StorageRoot(str(root)).open_regular("a/f")
    try:
        assert os.read(fd, 100) == b"content"
        assert stat.S_ISREG(st.st_mode) and st.st_size == 7
    finally:
        os.close(fd)


def test_open_regular_never_opens_a_fifo_and_never_blocks(root):
    _fifo(root / "pipe")
    with pytest.raises(NotRegularFileError) as caught:
        _in_thread_within(5, lambda: StorageRoot(str(root)).open_regular("pipe"))
    assert stat.S_ISFIFO(caught.value.st_mode)


def test_open_regular_refuses_a_socket(root):
    sock = _socket(str(root / "sock"))
    try:
        with pytest.raises(NotRegularFileError) as caught:
            StorageRoot(str(root)).open_regular("sock")
        assert stat.S_ISSOCK(caught.value.st_mode)
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")
def test_open_regular_refuses_a_device(root):
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(NotRegularFileError) as caught:
        StorageRoot(str(root)).open_regular("null")
    assert file_kind(caught.value.st_mode) == "char_device"


def test_open_for_reading_a_fifo_does_not_block(root):
    # The receiver's older call: O_NONBLOCK, so even a caller that opens first and fstats after
    # is never stuck on a FIFO.
    _fifo(root / "pipe")
    fd = _in_thread_within(5, lambda: StorageRoot(str(root)).open_for_reading("pipe"))
    try:
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_open_regular_refuses_a_symlink_and_a_symlinked_folder(root, outside):
    (outside / "secret").write_bytes(MARKER)
    (root / "link").symlink_to(outside / "secret")
    (root / "dir").symlink_to(outside, target_is_directory=True)
    storage = StorageRoot(str(root))
    with pytest.raises(NotRegularFileError):
        storage.open_regular("link")
    with pytest.raises(ContainmentError):
        storage.open_regular("dir/secret")
    with pytest.raises(ContainmentError):
        storage.open_regular("../outside/secret")


def test_lstat_and_readlink_never_look_past_a_symlinked_folder(root, outside):
    (outside / "secret").write_bytes(MARKER)
    (outside / "inner-link").symlink_to("/etc/passwd")
    (root / "dir").symlink_to(outside, target_is_directory=True)
    storage = StorageRoot(str(root))
    assert stat.S_ISLNK(storage.lstat("dir").st_mode)
    assert storage.readlink("dir") == str(outside)
    assert storage.lstat("dir/secret") is None
    assert storage.readlink("dir/inner-link") is None
    assert storage.lstat("../outside/secret") is None
    assert storage.readlink("missing") is None


def test_list_dir_reports_symlinks_as_they_are(root, outside):
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x")
    (root / "d" / "l").symlink_to(outside, target_is_directory=True)
    entries = StorageRoot(str(root)).list_dir("d")
    assert [(e.name, file_kind(e.st.st_mode), e.target) for e in entries] == [
        ("f", "file", None),
        ("l", "symlink", str(outside)),
    ]
    assert StorageRoot(str(root)).list_dir("d/l") is None


def test_walk_dirs_never_enters_a_symlinked_folder(root, outside):
    (outside / "secret").write_bytes(MARKER)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x")
    (root / "a" / "escape").symlink_to(outside, target_is_directory=True)
    seen = {
        rel_dir: [e.name for e in entries] for rel_dir, _fd, entries in StorageRoot(str(root)).walk_dirs()
    }
    assert seen == {"": ["a"], "a": ["b", "escape"], "a/b": ["f"]}


def test_walk_dirs_with_only_lists_just_the_folders_and_the_names_it_accepts(root, outside, monkeypatch):
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("a/keep", "a/b/take.me", "take.top", "other"):
        (root / rel).write_bytes(b"x")
    (root / "a" / "take.link").symlink_to(outside, target_is_directory=True)  # listed, never entered
    (root / "a" / "escape").symlink_to(outside, target_is_directory=True)  # neither
    statted: list[str] = []
    real_entries = paths_module._entries

    def counting(dir_fd, only=None):
        for entry in real_entries(dir_fd, only):
            statted.append(entry.name)
            yield entry

    monkeypatch.setattr(paths_module, "_entries", counting)
    seen = {
        rel_dir: [(e.name, stat.S_ISDIR(e.st.st_mode)) for e in entries]
        for rel_dir, _fd, entries in StorageRoot(str(root)).walk_dirs(
            only=lambda name: name.startswith("take")
        )
    }
    assert seen == {
        "": [("a", True), ("take.top", False)],
        "a": [("b", True), ("take.link", False)],
        "a/b": [("take.me", False)],
    }
    assert sorted(statted) == ["a", "b", "take.link", "take.me", "take.top"]


def test_walk_dirs_in_pre_order_and_skipping_what_enter_refuses(root):
    for rel in ("a/x", "a/y", "b", "skip/deep"):
        (root / rel).mkdir(parents=True)
    walked = [rel for rel, _fd, _e in StorageRoot(str(root)).walk_dirs(enter=lambda r: r != "skip")]
    assert walked == ["", "a", "a/x", "a/y", "b"]


def test_walk_dirs_reopens_from_the_root_below_the_held_fd_limit(root):
    deep = "/".join(f"d{i}" for i in range(MAX_HELD_DIR_FDS + 10))
    (root / deep).mkdir(parents=True)
    (root / deep / "f").write_bytes(b"x")
    before = _open_fds()
    walked = [rel for rel, _fd, _e in StorageRoot(str(root)).walk_dirs()]
    assert walked[-1] == deep
    assert len(walked) == MAX_HELD_DIR_FDS + 11
    assert _open_fds() == before


def test_walk_dirs_closes_its_fds_when_abandoned(root):
    for rel in ("a/b/c", "d"):
        (root / rel).mkdir(parents=True)
    before = _open_fds()
    walk = StorageRoot(str(root)).walk_dirs()
    next(walk), next(walk), next(walk)
    walk.close()
    assert _open_fds() == before


def test_a_folder_swapped_for_a_symlink_is_never_read_through(root, outside):
    """A thread swaps a folder for a symlink to outside as fast as it can while the reader reads:
    whatever the timing, nothing of the outside folder is ever returned."""
    (outside / "f").write_bytes(MARKER)
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"inside")
    storage = StorageRoot(str(root))
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(root / "d", root / "d.real")
            os.symlink(outside, root / "d")
            os.unlink(root / "d")
            os.rename(root / "d.real", root / "d")

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    reads = 0
    try:
        # At least a second of races, and on until one read went through (under load the swapper can
        # win every race for a second: CI once saw none), within the test's bound.
        started = time.monotonic()
        while time.monotonic() - started < 1.0 or (reads == 0 and time.monotonic() - started < 30.0):
            with contextlib.suppress(OSError, ReplicationError):
                fd, _st = storage.open_regular("d/f")
                with os.fdopen(fd, "rb") as fh:
                    assert fh.read() == b"inside"
                reads += 1
            for _rel, _fd, entries in storage.walk_dirs():
                assert "f" not in [e.name for e in entries] or _rel in ("d", "d.real")
            st = storage.lstat("d/f")
            assert st is None or st.st_size == len(b"inside")
    finally:
        stop.set()
        swapper.join(5)
    assert reads > 0


def _reference_verdict(path: str) -> bool:
    """validate_relpath's rule written out part by part (as it was before its fast path): accepted?"""
    if not path or "\x00" in path or path.startswith("/"):
        return False
    try:
        if len(os.fsencode(path)) > 4096:
            return False
        return all(part not in ("", ".", "..") and len(os.fsencode(part)) <= 255 for part in path.split("/"))
    except UnicodeError:
        return False


_PIECES = ["a", ".", "..", "", "/", "b.txt", "\udcff", "é", "x" * 254, "é" * 128, ".hidden", "..x", "x.."]


@given(st.lists(st.sampled_from(_PIECES), max_size=8).map("".join))
def test_validate_relpath_agrees_with_the_part_by_part_rule(path: str) -> None:
    try:
        validate_relpath(path)
        accepted = True
    except ContainmentError:
        accepted = False
    assert accepted == _reference_verdict(path), repr(path)
