"""Relative wire paths and their containment inside STORAGE_PATH."""

from __future__ import annotations

import os

import pytest

from replication.errors import ContainmentError
from replication.paths import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    TEMP_PREFIX,
    StorageRoot,
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
