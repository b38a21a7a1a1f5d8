"""The daemon's checksum, computed from the zip, checked against one computed independently from the files."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

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
