"""The daemon's checksum, computed from the zip, checked against one computed independently from the files."""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile

import pytest

from daemon.store import checksum
from daemon.store.checksum import package_checksum, verify_package
from daemon.store.errors import ChecksumMismatch, InvalidPackage, PackageTooLarge
from daemon.store.identifier import parse
from tests.support.marketplace import build_zip, dify_checksum, make_plugin

pytestmark = pytest.mark.timeout(30)


def test_checksum_matches_an_identifier_computed_independently() -> None:
    plugin = make_plugin(size=100_000)
    assert package_checksum(io.BytesIO(plugin.data)) == plugin.checksum
    assert verify_package(io.BytesIO(plugin.data), parse(plugin.identifier), None) == plugin.checksum


def test_checksum_is_not_the_sha256_of_the_file_and_ignores_entry_order_and_compression() -> None:
    files = {"manifest.yaml": b"name: x\n", "b.py": b"b", "a/z.py": b"z"}
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(files, reverse=True):
            archive.writestr(path, files[path])
    one, two = build_zip(files), stored.getvalue()
    assert package_checksum(io.BytesIO(one)) == package_checksum(io.BytesIO(two)) == dify_checksum(files)
    assert dify_checksum(files) != hashlib.sha256(one).hexdigest()


def test_a_known_vector() -> None:
    files = {"manifest.yaml": b"m"}
    expected = hashlib.sha256(
        hashlib.sha256(b"manifest.yaml").digest() + hashlib.sha256(b"m").digest()
    ).hexdigest()
    assert package_checksum(io.BytesIO(build_zip(files))) == expected


def test_a_mismatch_names_both_checksums() -> None:
    plugin, other = make_plugin(), make_plugin(name="other")
    with pytest.raises(ChecksumMismatch) as mismatch:
        verify_package(io.BytesIO(other.data), parse(plugin.identifier), None)
    assert plugin.checksum in str(mismatch.value) and other.checksum in str(mismatch.value)


def test_a_flipped_byte_never_verifies() -> None:
    plugin = make_plugin(size=4096)
    data = bytearray(plugin.data)
    data[len(data) // 3] ^= 0xFF
    with pytest.raises(InvalidPackage):
        verify_package(io.BytesIO(bytes(data)), parse(plugin.identifier), None)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"main.py": b"x"}, "no manifest.yaml"),
        ({"manifest.yaml": b"m", "dir/": b""}, "is a directory"),
        ({"manifest.yaml": b"m", "../evil.py": b"x"}, "outside"),
        ({"manifest.yaml": b"m", "/etc/evil": b"x"}, "outside"),
    ],
)
def test_packages_the_daemon_could_not_use_are_invalid(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidPackage, match=message):
        package_checksum(io.BytesIO(build_zip(files)))


def test_not_a_zip_and_an_unpacking_bomb_are_refused() -> None:
    with pytest.raises(InvalidPackage, match="not a readable"):
        package_checksum(io.BytesIO(b"<html>maintenance</html>"))
    bomb = build_zip({"manifest.yaml": b"m", "zeros": bytes(2_000_000)})
    assert len(bomb) < 100_000
    with pytest.raises(PackageTooLarge):
        package_checksum(io.BytesIO(bomb), max_unpacked=1_000_000)


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip with exactly these entries, duplicates included (zipfile warns but writes them)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name"
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, content in entries:
                archive.writestr(name, content)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "duplicate",
    [[("main.py", b"covered"), ("main.py", b"hidden")], [("a/b.py", b"1"), ("a//b.py", b"2")]],
)
def test_a_package_with_two_entries_for_one_path_is_refused(duplicate: list[tuple[str, bytes]]) -> None:
    """Only the last copy would be covered by the checksum; the daemon could unpack the other."""
    data = _zip([("manifest.yaml", b"m"), *duplicate])
    with pytest.raises(InvalidPackage, match="appears twice"):
        package_checksum(io.BytesIO(data))


def test_a_package_with_too_many_entries_is_refused_before_any_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checksum, "MAX_ZIP_ENTRIES", 50)
    monkeypatch.setattr(checksum, "MAX_CENTRAL_DIRECTORY", 50 * 512)
    entries = [("manifest.yaml", b"m"), *((f"f{n}.py", b"") for n in range(60))]
    assert package_checksum(io.BytesIO(_zip(entries[:50])))
    read: list[str] = []
    monkeypatch.setattr(checksum, "_content_digest", lambda archive, info: read.append(info.filename))
    with pytest.raises(InvalidPackage, match="61 entries"):
        package_checksum(io.BytesIO(_zip(entries)))
    assert read == []


def test_a_directory_larger_than_its_entries_could_need_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checksum, "MAX_CENTRAL_DIRECTORY", 200)  # the end record's count may lie; its size
    data = _zip([("manifest.yaml", b"m"), *((f"{'n' * 60}{n}.py", b"") for n in range(5))])
    with pytest.raises(InvalidPackage, match="bytes of directory"):
        package_checksum(io.BytesIO(data))


def test_the_total_declared_size_is_checked_before_anything_is_unpacked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read: list[str] = []
    monkeypatch.setattr(checksum, "_content_digest", lambda archive, info: read.append(info.filename))
    data = build_zip({"manifest.yaml": b"m", "a": bytes(600), "b": bytes(600)})
    with pytest.raises(PackageTooLarge, match="1201 bytes"):
        package_checksum(io.BytesIO(data), max_unpacked=1000)
    assert read == []


def test_an_end_record_that_understates_the_count_does_not_get_more_entries_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checksum, "MAX_ZIP_ENTRIES", 50)
    data = bytearray(_zip([("manifest.yaml", b"m"), *((f"f{n}.py", b"") for n in range(60))]))
    end = data.rindex(b"PK\x05\x06")
    data[end + 8 : end + 12] = (3).to_bytes(2, "little") * 2  # entries on this disk, entries in total
    with pytest.raises(InvalidPackage, match="holds 61 entries"):
        package_checksum(io.BytesIO(bytes(data)))
