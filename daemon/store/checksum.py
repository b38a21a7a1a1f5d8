"""The plugin daemon's package checksum, and the checks a package must pass before it is kept.

The daemon (pkg/plugin_packager/decoder/checksum.go) reads every zip entry, keys it by its
path (`path.Join(dir, filename)`), sorts the keys, concatenates sha256(path) + sha256(content)
as raw digests and takes the SHA-256 of the whole. That is not the SHA-256 of the file.
"""

from __future__ import annotations

import hashlib
import posixpath
import zipfile
from typing import BinaryIO

from daemon.store.errors import ChecksumMismatch, InvalidPackage, PackageTooLarge
from daemon.store.identifier import PluginIdentifier

MANIFEST = "manifest.yaml"
_CHUNK = 1024 * 1024
MAX_ZIP_ENTRIES = 20_000
"""A plugin package holds its sources and assets: hundreds of files. More is refused before any is read."""
MAX_CENTRAL_DIRECTORY = MAX_ZIP_ENTRIES * 512
"""Bytes of zip directory parsed at most (an entry takes 46 bytes and its name): bounds the memory the
parse takes whatever count the end record claims."""


def package_checksum(source: str | BinaryIO, max_unpacked: int | None = None) -> str:
    """The daemon's checksum of a .difypkg (a path or a seekable binary file), as 64 hex digits.

    Raises InvalidPackage for anything the daemon could not read either: not a zip, a
    directory entry, an entry whose path escapes the package, two entries with one path (only
    the last would count), a bad CRC, no manifest.yaml at the root, more than MAX_ZIP_ENTRIES
    entries; PackageTooLarge when the entries declare more than `max_unpacked` bytes unpacked.
    Counts and declared sizes are checked before any entry is read.
    """
    try:
        _check_directory(source)
        with zipfile.ZipFile(source) as archive:
            infos = archive.infolist()
            _check_entries(infos, max_unpacked)
            digests: dict[str, bytes] = {}
            for info in infos:
                digests[_entry_key(info.filename)] = _content_digest(archive, info)
    except zipfile.BadZipFile as exc:
        raise InvalidPackage(f"not a readable .difypkg (zip): {exc}") from None
    except (OSError, EOFError, NotImplementedError, ValueError, RuntimeError) as exc:
        if isinstance(exc, InvalidPackage | PackageTooLarge):
            raise
        raise InvalidPackage(f"the package cannot be read: {exc}") from None
    if MANIFEST not in digests:
        raise InvalidPackage(f"the package has no {MANIFEST} at its root")
    whole = hashlib.sha256()
    for key in sorted(digests, key=lambda k: k.encode()):
        whole.update(hashlib.sha256(key.encode()).digest())
        whole.update(digests[key])
    return whole.hexdigest()


def verify_package(source: str | BinaryIO, identifier: PluginIdentifier, max_unpacked: int | None) -> str:
    """Recompute the checksum and compare it with the identifier's; returns it, or raises ChecksumMismatch."""
    actual = package_checksum(source, max_unpacked)
    if actual != identifier.checksum:
        raise ChecksumMismatch(str(identifier), identifier.checksum, actual)
    return actual


def _entry_key(name: str) -> str:
    """Go's path.Join(path.Split(name)): the cleaned path."""
    cleaned = posixpath.normpath(name)
    return cleaned[1:] if cleaned.startswith("//") else cleaned


def _check_directory(source: str | BinaryIO) -> None:
    """Refuse a zip whose end record announces too many entries or too large a directory, unparsed."""
    if isinstance(source, str):
        with open(source, "rb") as fh:
            return _check_directory(fh)
    record = zipfile._EndRecData(source)  # type: ignore[attr-defined]  # stdlib, stable since 2.x
    source.seek(0)
    if not record:
        return  # not a zip: ZipFile says so in its own words
    entries, size = record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > MAX_ZIP_ENTRIES or size > MAX_CENTRAL_DIRECTORY:
        raise InvalidPackage(
            f"the package announces {entries} entries in {size} bytes of directory: "
            f"at most {MAX_ZIP_ENTRIES} entries are accepted"
        )


def _check_entries(infos: list[zipfile.ZipInfo], max_unpacked: int | None) -> None:
    if len(infos) > MAX_ZIP_ENTRIES:
        raise InvalidPackage(
            f"the package holds {len(infos)} entries: at most {MAX_ZIP_ENTRIES} are accepted"
        )
    total = 0
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name.endswith("/"):
            raise InvalidPackage(f"zip entry {name!r} is a directory: the plugin daemon cannot read it")
        key = _entry_key(name)
        if key.startswith("/") or key == ".." or key.startswith("../") or "\x00" in name:
            raise InvalidPackage(f"zip entry {name!r} would unpack outside the plugin's folder")
        if key in seen:
            raise InvalidPackage(
                f"zip entry {name!r} appears twice: only the last copy would be covered by the checksum"
            )
        seen.add(key)
        total += info.file_size
    if max_unpacked is not None and total > max_unpacked:
        raise PackageTooLarge(
            f"the package unpacks to {total} bytes, more than MAX_PLUGIN_PACKAGE_SIZE={max_unpacked}",
            limit=max_unpacked,
        )


def _content_digest(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    digest = hashlib.sha256()
    with archive.open(info) as entry:
        while chunk := entry.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()
