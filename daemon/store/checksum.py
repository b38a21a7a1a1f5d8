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


def package_checksum(source: str | BinaryIO, max_unpacked: int | None = None) -> str:
    """The daemon's checksum of a .difypkg (a path or a seekable binary file), as 64 hex digits.

    Raises InvalidPackage for anything the daemon could not read either: not a zip, a
    directory entry, an entry whose path escapes the package, a bad CRC, no manifest.yaml
    at the root; PackageTooLarge when the entries unpack to more than `max_unpacked` bytes.
    """
    try:
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


def _check_entries(infos: list[zipfile.ZipInfo], max_unpacked: int | None) -> None:
    total = 0
    for info in infos:
        name = info.filename
        if name.endswith("/"):
            raise InvalidPackage(f"zip entry {name!r} is a directory: the plugin daemon cannot read it")
        key = _entry_key(name)
        if key.startswith("/") or key == ".." or key.startswith("../") or "\x00" in name:
            raise InvalidPackage(f"zip entry {name!r} would unpack outside the plugin's folder")
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
