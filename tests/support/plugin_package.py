"""A real, launchable test plugin package (.difypkg) and its installation into a storage root.

The package is what the plugin daemon model (tests/support/plugin_daemon_model.py) and,
in spirit, the real daemon launch: `manifest.yaml` at the zip's root, `main.py` (the
entrypoint, run as `python -m main`), a local module, `requirements.txt` and a vendored
wheel, so that `uv pip install -r requirements.txt` never touches a network:
requirements.txt itself says `--no-index` and `--find-links ./wheels` (uv reads both
options from a requirements file), which is how an offline plugin would ship anyway.

The wheel (`hsplug_dep`) is built here with zipfile (METADATA, WHEEL, RECORD), so no
build backend runs. Everything is written with a fixed timestamp: the same arguments give
the same bytes, hence the same identifier.

The identifier's checksum is the daemon's (daemon/store/checksum.py package_checksum,
after pkg/plugin_packager/decoder/checksum.go), not the SHA-256 of the file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from daemon.store.checksum import package_checksum
from daemon.store.identifier import PluginIdentifier, parse

DEP_NAME = "hsplug_dep"
DEP_VERSION = "0.1.0"
WHEEL_FILE = f"{DEP_NAME}-{DEP_VERSION}-py3-none-any.whl"
_FIXED_TIME = (2024, 1, 1, 0, 0, 0)

# The plugin speaks the daemon's stdio protocol, one JSON object a line:
# out: {"session_id", "event": "heartbeat"|"session"|"log"|"error", "data"}
#      (pkg/entities/plugin_entities/event.go ParsePluginUniversalEvent), a session's data being
#      {"type": "stream"|"end"|"error", "data"} (SessionMessage, same file);
# in:  {"session_id", ..., "event": "request", "data": {"user_id", "type", "action", ...}}
#      (internal/core/session_manager/session.go Session.Message,
#      internal/core/io_tunnel/mapping.go GetInvokePluginMap).
# It exits when stdin closes: that is how it notices its daemon is gone.
_MAIN_PY = '''\
"""hotstandby test plugin: answers invoke_tool with its dependency's and its own module's help."""

import json
import os
import sys
import threading
import time

import echo_tool
import hsplug_dep

MARKER = {marker!r}
_out_lock = threading.Lock()


def emit(event, data, session_id=""):
    line = json.dumps({{"session_id": session_id, "event": event, "data": data}})
    with _out_lock:
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()


def heartbeats(interval):
    while True:
        emit("heartbeat", {{}})
        time.sleep(interval)


def answer(request):
    session_id = request.get("session_id", "")
    data = request.get("data") or {{}}
    if data.get("action") != "invoke_tool":
        emit("session", {{"type": "error", "data": {{"message": "unsupported action",
             "error_type": "NotImplementedError", "args": {{}}}}}}, session_id)
        return
    params = data.get("tool_parameters") or {{}}
    text = echo_tool.echo(hsplug_dep.shout(str(params.get("text", ""))))
    emit("session", {{"type": "stream", "data": {{"type": "text", "message": {{"text": text}},
         "meta": None}}}}, session_id)
    facts = {{"pid": os.getpid(), "cwd": os.getcwd(), "dep_version": hsplug_dep.VERSION,
              "marker": MARKER, "tool": data.get("tool"), "provider": data.get("provider")}}
    emit("session", {{"type": "stream", "data": {{"type": "json", "message": {{"json_object": facts}},
         "meta": None}}}}, session_id)
    emit("session", {{"type": "end", "data": {{}}}}, session_id)


def main():
    interval = float(os.environ.get("HSPLUG_HEARTBEAT_INTERVAL", "5"))
    threading.Thread(target=heartbeats, args=(interval,), daemon=True).start()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
        except ValueError as exc:
            emit("error", "bad request line: " + str(exc))
            continue
        if request.get("event") == "request":
            answer(request)


if __name__ == "__main__":
    main()
'''

_ECHO_TOOL_PY = '''\
"""A local module: importing it makes the running plugin write __pycache__ into its folder."""


def echo(text):
    return "echo: " + text
'''

_DEP_INIT_PY = f'''\
"""The vendored dependency of the hotstandby test plugin."""

VERSION = "{DEP_VERSION}"


def shout(text):
    return text.upper() + "!"
'''

_MANIFEST = """\
version: {version}
type: plugin
author: {author}
name: {name}
label:
  en_US: hotstandby test plugin
description:
  en_US: Echoes its input through a vendored dependency
created_at: "2024-01-01T00:00:00.000000Z"
icon: icon.svg
resource:
  memory: 1048576
  permission:
    tool:
      enabled: true
plugins:
  tools:
    - provider/hsplug.yaml
meta:
  version: 0.0.1
  arch:
    - amd64
    - arm64
  runner:
    language: python
    version: "3.12"
    entrypoint: main
"""

_PROVIDER_YAML = """\
identity:
  author: {author}
  name: hsplug
  label:
    en_US: hsplug
  description:
    en_US: hotstandby test tool provider
  icon: icon.svg
tools: []
"""

_ICON = b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>\n'


@dataclass(frozen=True)
class PluginPackage:
    """A built package: its bytes and the unique identifier the daemon gives it."""

    data: bytes
    identifier: str
    """`author/name:version@checksum`."""
    files: dict[str, bytes]

    @property
    def parsed(self) -> PluginIdentifier:
        return parse(self.identifier)

    @property
    def workdir(self) -> str:
        """The unpacked folder under the working path (cwd/): `author/name-version@checksum`."""
        return self.parsed.workdir


def build_wheel() -> bytes:
    """hsplug_dep as a pure-Python wheel: what `uv pip install` installs offline."""
    dist_info = f"{DEP_NAME}-{DEP_VERSION}.dist-info"
    files = {
        f"{DEP_NAME}/__init__.py": _DEP_INIT_PY.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {DEP_NAME.replace('_', '-')}\nVersion: {DEP_VERSION}\n"
            "Summary: hotstandby test dependency\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hotstandby-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [f"{path},sha256={_record_digest(content)},{len(content)}" for path, content in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    return _zip(files)


def package_files(
    author: str, name: str, version: str, marker: str = "", extra_requirements: str = ""
) -> dict[str, bytes]:
    """The package's files by path; `marker` lands in main.py, so it changes the checksum.

    `extra_requirements` (the benchmark's `dify_plugin`) are fetched from the index, unlike the
    vendored wheel: only for a run that may reach PyPI, never in the tests.
    """
    index = "--find-links ./wheels\n" if extra_requirements else "--no-index\n--find-links ./wheels\n"
    return {
        "manifest.yaml": _MANIFEST.format(author=author, name=name, version=version).encode(),
        "main.py": _MAIN_PY.format(marker=marker).encode(),
        "echo_tool.py": _ECHO_TOOL_PY.encode(),
        "requirements.txt": (
            f"{index}{DEP_NAME.replace('_', '-')}=={DEP_VERSION}\n{extra_requirements}"
        ).encode(),
        f"wheels/{WHEEL_FILE}": build_wheel(),
        "provider/hsplug.yaml": _PROVIDER_YAML.format(author=author).encode(),
        "_assets/icon.svg": _ICON,
    }


def build_package(
    author: str = "hstest",
    name: str = "echo",
    version: str = "0.0.1",
    marker: str = "",
    extra_requirements: str = "",
) -> PluginPackage:
    """A launchable .difypkg and its identifier; distinct `marker`s give distinct identifiers."""
    files = package_files(author, name, version, marker, extra_requirements)
    data = _zip(files)
    checksum = package_checksum(io.BytesIO(data))
    identifier = parse(f"{author}/{name}:{version}@{checksum}")
    return PluginPackage(data=data, identifier=str(identifier), files=files)


def install_package(
    storage_root: str | os.PathLike[str],
    package: PluginPackage,
    packages_dir: str = "plugin_packages",
    plugins_dir: str = "plugin",
) -> tuple[Path, Path]:
    """Store and install `package` under `storage_root` as the real daemon leaves it.

    The upload saves the zip as `plugin_packages/<identifier>` (internal/core/plugin_manager/
    packages.go SavePackage: packageBucket.Save); installing copies the same bytes to
    `plugin/<identifier>` (internal/core/control_panel/installer_local.go InstallToLocal:
    "copy the package from packageBucket to installedBucket", media_transport/installed_bucket.go
    Save). Both are plain writes (dify-cloud-kit oss/local LocalStorage.Save: MkdirAll +
    os.WriteFile). The package is written first, so a scanner that sees plugin/<id> can read it.
    Returns (package path, installed path).
    """
    root = Path(storage_root)
    rel = package.parsed.relpath
    stored = root / packages_dir / rel
    installed = root / plugins_dir / rel
    for path in (stored, installed):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(package.data)
    return stored, installed


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, content in files.items():
            info = zipfile.ZipInfo(path, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def _record_digest(content: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
