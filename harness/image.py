"""Build the hotstandby image from compose/Dockerfile, with or without a Docker engine.

`make image` runs `python -m harness.image build`:

- engine: `docker build` when a Docker engine answers `docker info`; otherwise buildah, with vfs
  storage and chroot isolation (no daemon, no overlay or user namespaces needed) in a store of the
  project's own (~/.cache/hotstandby/containers, or $HOTSTANDBY_CONTAINERS), so nothing machine-wide
  changes. Images are built in docker format: the OCI format has no HEALTHCHECK.
- base: python:3.11-slim-bookworm when it can be pulled; otherwise the equivalent made from Debian
  packages with mmdebstrap (bookworm, python3, minimal), kept as localhost/hotstandby-base:
  bookworm-<hash of its recipe> so later builds reuse it.
- the machine's package settings: the RUN steps that download get this machine's pip settings
  (`pip config list`, PIP_* variables), CA bundle and apt proxy settings as build secrets mounted
  under /run/build/; they are not in any layer, and settings naming local files are left out.
- an image whose label records the hash of the current sources (SOURCES) is not built again: that
  check takes a second, while even a fully cached buildah build (--layers) takes minutes with vfs.

`python -m harness.image sizes` prints the image's size and its virtualenv's; `inspect` the config.
The tests use `rootfs()` to run the image's own files (tests/image/).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "compose" / "Dockerfile"
IGNOREFILE = REPO / "compose" / "Dockerfile.dockerignore"
UPSTREAM_BASE = "docker.io/library/python:3.11-slim-bookworm"
BASE_NAME = "localhost/hotstandby-base"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the mmdebstrap base is made of; its hash names the cached image (change it: a new base).
BASE_RECIPE: dict[str, Any] = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["python3", "python3-venv", "python-is-python3", "ca-certificates"],
    "dpkgopt": [
        "path-exclude=/usr/share/doc/*",
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/locale/locale.alias",
    ],
    "env": {"PATH": BASE_PATH, "LANG": "C.UTF-8"},
    "cmd": ["python3"],
}
BUILD_SECRETS = "/run/build"  # where compose/Dockerfile mounts them
PULL_TIMEOUT = 180.0
Target = Literal["daemon", "drill"]
TARGETS: tuple[Target, ...] = ("daemon", "drill")


class ImageError(RuntimeError):
    """No engine, a failed pull, base or build; the message has the tool's own last words."""


def version() -> str:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def image_tag(target: Target = "daemon") -> str:
    """hotstandby:<version> for the daemon, hotstandby:<version>-drill for the drill."""
    return f"localhost/hotstandby:{version()}" + ("-drill" if target == "drill" else "")


def store() -> Path:
    default = Path.home() / ".cache" / "hotstandby" / "containers"
    return Path(os.environ.get("HOTSTANDBY_CONTAINERS", default))


# --- the engine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    kind: Literal["docker", "buildah"]
    argv: tuple[str, ...]

    def run(
        self, *args: str, timeout: float | None = None, quiet: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the engine; a failure raises ImageError with the end of its output."""
        argv = [*self.argv, *args]
        env = {**os.environ, "DOCKER_BUILDKIT": "1"} if self.kind == "docker" else None  # for --secret
        try:
            done = subprocess.run(
                argv,
                env=env,
                capture_output=quiet,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ImageError(f"{' '.join(argv[:6])} ...: {exc}") from None
        if done.returncode != 0:
            said = ((done.stderr or "") + (done.stdout or "")).strip().splitlines()[-15:]
            raise ImageError(f"{' '.join(argv[:8])} ... exited {done.returncode}\n" + "\n".join(said))
        return done

    def succeeds(self, *args: str, timeout: float | None = 60.0) -> bool:
        try:
            self.run(*args, timeout=timeout)
        except ImageError:
            return False
        return True

    def exists(self, ref: str) -> bool:
        if self.kind == "docker":
            return self.succeeds("image", "inspect", ref)
        return self.succeeds("inspect", "--type", "image", ref)


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def buildah() -> Engine:
    """buildah on the project's own vfs store (root and run folders under store())."""
    if shutil.which("buildah") is None:
        raise ImageError("buildah is not installed (make system-deps installs it)")
    root = store()
    (root / "storage").mkdir(parents=True, exist_ok=True)
    (root / "run").mkdir(parents=True, exist_ok=True)
    return Engine(
        "buildah",
        (
            "buildah",
            "--storage-driver",
            "vfs",
            "--root",
            str(root / "storage"),
            "--runroot",
            str(root / "run"),
        ),
    )


def engine() -> Engine:
    if docker_answers():
        return Engine("docker", ("docker",))
    return buildah()


# --- the base --------------------------------------------------------------------------------------


def base_tag() -> str:
    digest = hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    return f"{BASE_NAME}:{BASE_RECIPE['suite']}-{digest}"


def base_image(eng: Engine, out: Any = print) -> str:
    """The PYTHON_IMAGE to build on: the upstream image if present or pullable, else our own."""
    own = base_tag()
    if eng.exists(own):
        return own
    if eng.exists(UPSTREAM_BASE):
        return UPSTREAM_BASE
    try:
        eng.run("pull", UPSTREAM_BASE, timeout=PULL_TIMEOUT)
        return UPSTREAM_BASE
    except ImageError as exc:
        first = str(exc).splitlines()[-1] if str(exc) else ""
        out(f"image: cannot pull {UPSTREAM_BASE} ({first[:160]}); making {own} with mmdebstrap")
    make_base(eng, own, out)
    return own


def make_base(eng: Engine, tag: str, out: Any = print) -> None:
    """Debian bookworm with python3 (minbase: no docs, man pages or locales), imported as `tag`."""
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is not installed (make system-deps installs it)")
    with tempfile.TemporaryDirectory(prefix="hotstandby-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        argv = [
            "mmdebstrap",
            f"--variant={BASE_RECIPE['variant']}",
            "--include=" + ",".join(BASE_RECIPE["include"]),
            *(f"--dpkgopt={opt}" for opt in BASE_RECIPE["dpkgopt"]),
            *(f"--aptopt={line}" for line in apt_settings()),
            BASE_RECIPE["suite"],
            str(tarball),
            *mirrors(),
        ]
        out(f"image: {' '.join(argv[:3])} ... (a few minutes, once)")
        done = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ImageError("mmdebstrap failed:\n" + "\n".join(done.stderr.strip().splitlines()[-15:]))
        _import_base(eng, tarball, tag)
    out(f"image: base {tag} made")


def _import_base(eng: Engine, tarball: Path, tag: str) -> None:
    env = BASE_RECIPE["env"]
    if eng.kind == "docker":
        changes = [f"ENV {k}={v}" for k, v in env.items()] + [f"CMD {json.dumps(BASE_RECIPE['cmd'])}"]
        eng.run("import", *(a for c in changes for a in ("--change", c)), str(tarball), tag)
        return
    container = eng.run("from", "scratch").stdout.strip()
    try:
        eng.run("add", container, str(tarball), "/")
        eng.run(
            "config",
            *(a for k, v in env.items() for a in ("--env", f"{k}={v}")),
            "--cmd",
            json.dumps(BASE_RECIPE["cmd"]),
            container,
        )
        eng.run("commit", "--format", "docker", container, tag)
    finally:
        eng.succeeds("rm", container)


def mirrors() -> list[str]:
    """The machine's Debian sources files when it runs the base's release (so the base comes from the
    same mirror as everything else here); none (mmdebstrap's default mirror) otherwise."""
    try:
        release = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return []
    if f"VERSION_CODENAME={BASE_RECIPE['suite']}" not in release:
        return []
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    found = []
    for path in candidates:
        with contextlib.suppress(OSError):
            text = path.read_text(encoding="utf-8")
            uris = re.findall(r"(?:https?|ftp)://[^\s]+", text)
            if uris and all("debian" in uri for uri in uris):
                found.append(str(path))
    return found


# --- the machine's settings, for the build only --------------------------------------------------


_APT_KEYS = re.compile(r"^Acquire::(?:[\w.-]+::)*(?:Proxy|Check-Valid-Until|Check-Date|Retries)\b", re.I)
_PIP_FILE_KEYS = {"cert": "ca.crt", "client-cert": "pip-client.pem", "constraint": "pip-constraints.txt"}


def apt_settings() -> list[str]:
    """This machine's apt proxy and validity settings (`apt-config dump`), one `Key "value";` each."""
    if shutil.which("apt-config") is None:
        return []
    done = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=False)
    return [line for line in done.stdout.splitlines() if _APT_KEYS.match(line)]


def pip_settings() -> dict[str, str]:
    """This machine's pip settings (config files and PIP_* variables) as `pip config list` shows them."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^([^.]*)\.([\w-]+)='(.*)'$", line)
        if match:
            section = "global" if match.group(1) in ("", ":env:") else match.group(1)
            settings[f"{section}.{match.group(2)}"] = match.group(3)
    return settings


def ca_bundle() -> Path | None:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_secrets(folder: Path) -> list[tuple[str, Path]]:
    """Secret files (id, path) for compose/Dockerfile's RUN steps: pip-conf, pip-constraints, ca,
    apt-conf. File-valued pip settings point at the mounted copies; local paths and file:// indexes
    (which the build cannot see) are left out."""
    found: dict[str, Path] = {}
    ca = ca_bundle()
    pip_lines: dict[str, list[str]] = {}
    for key, value in pip_settings().items():
        section, name = key.split(".", 1)
        if name in _PIP_FILE_KEYS:
            source = Path(value)
            if not source.is_file():
                continue
            secret = _PIP_FILE_KEYS[name].removesuffix(".crt").removesuffix(".txt").removesuffix(".pem")
            secret = "ca" if name == "cert" else secret
            found.setdefault(secret, source)
            value = f"{BUILD_SECRETS}/{_PIP_FILE_KEYS[name]}"
        else:
            kept = [w for w in value.split() if not w.startswith(("/", "file:", "."))]
            if not kept:
                continue
            value = " ".join(kept)
        pip_lines.setdefault(section, []).append(f"{name} = {value}")
    if ca is not None:
        found.setdefault("ca", ca)
    if pip_lines:
        conf = folder / "pip.conf"
        conf.write_text(
            "".join(f"[{s}]\n" + "".join(f"{line}\n" for line in lines) for s, lines in pip_lines.items()),
            encoding="utf-8",
        )
        found["pip-conf"] = conf
    apt = [line for line in apt_settings() if "cainfo" not in line.lower()]
    if "ca" in found:
        apt.append(f'Acquire::https::CaInfo "{BUILD_SECRETS}/ca.crt";')
    if apt:
        conf = folder / "apt.conf"
        conf.write_text("".join(f"{line}\n" for line in apt), encoding="utf-8")
        found["apt-conf"] = conf
    return sorted(found.items())


# --- building ---------------------------------------------------------------------------------------


SOURCE_LABEL = "org.hotstandby.source"
# What the image is made of. README.md is copied too (the package's long description) but left out:
# an edit to the documentation does not need a new image.
SOURCES = (
    "compose/Dockerfile",
    "compose/Dockerfile.dockerignore",
    "compose/hotstandby-entrypoint",
    "pyproject.toml",
    "daemon",
    "replication",
)


def source_digest(base: str, target: Target) -> str:
    """A hash of what the image is built from (the files the Dockerfile copies, the Dockerfile, the
    base and the target), recorded as a label: an image that has it needs no build (a cached buildah
    build with vfs still copies every layer, which takes minutes)."""
    digest = hashlib.sha256(f"{base}\0{target}\0".encode())
    for name in SOURCES:
        root = REPO / name
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(f"{path.relative_to(REPO)}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _image_id(eng: Engine, tag: str) -> str:
    if not eng.exists(tag):
        return ""
    args = (
        ("image", "inspect", "--format", "{{.Id}}")
        if eng.kind == "docker"
        else ("inspect", "--type", "image", "--format", "{{.FromImageID}}")
    )
    return eng.run(*args, tag).stdout.strip()


def up_to_date(eng: Engine, tag: str, digest: str) -> bool:
    if not eng.exists(tag):
        return False
    labels = config(tag, eng).get("Labels") or {}
    return bool(labels.get(SOURCE_LABEL) == digest)


def build(targets: Sequence[Target] = ("daemon",), out: Any = print) -> list[str]:
    """Build each target of compose/Dockerfile unless the image already has this source; returns
    the tags."""
    eng = engine()
    base = base_image(eng, out)
    tags = []
    with tempfile.TemporaryDirectory(prefix="hotstandby-build-") as tmp:
        secrets = build_secrets(Path(tmp))
        for target in targets:
            tag, digest = image_tag(target), source_digest(base, target)
            tags.append(tag)
            if up_to_date(eng, tag, digest):
                out(f"image: {tag} is up to date (source {digest})")
                continue
            argv = _build_argv(eng, target, tag, base, secrets)
            out(f"image: building {tag} (target {target}) with {eng.kind} on {base}")
            previous = _image_id(eng, tag)
            eng.run(*argv[:-1], "--label", f"{SOURCE_LABEL}={digest}", argv[-1], quiet=False)
            if previous and previous != _image_id(eng, tag):
                eng.succeeds("rmi", previous)  # the image this one replaces (with vfs, a full copy)
    return tags


def _build_argv(
    eng: Engine, target: Target, tag: str, base: str, secrets: Sequence[tuple[str, Path]]
) -> list[str]:
    argv = ["build"] if eng.kind == "docker" else ["bud", "--isolation", "chroot", "--format", "docker"]
    argv += ["--layers", "--pull=never", "--ignorefile", str(IGNOREFILE)] if eng.kind == "buildah" else []
    argv += ["-f", str(DOCKERFILE), "--target", target, "-t", tag, "--build-arg", f"PYTHON_IMAGE={base}"]
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if os.environ.get(name):
            argv += ["--build-arg", f"{name}={os.environ[name]}"]
    for secret, path in secrets:
        argv += ["--secret", f"id={secret},src={path}"]
    return [*argv, str(REPO)]


# --- looking at a built image -------------------------------------------------------------------


def config(ref: str, eng: Engine | None = None) -> dict[str, Any]:
    """The image's container config (Entrypoint, Cmd, Env, User, WorkingDir, Healthcheck), as the
    Docker image format records it."""
    eng = eng or engine()
    if eng.kind == "docker":
        return dict(json.loads(eng.run("image", "inspect", ref).stdout)[0]["Config"])
    data = json.loads(eng.run("inspect", "--type", "image", ref).stdout)
    return dict(data["Docker"]["config"])


@contextlib.contextmanager
def rootfs(ref: str) -> Iterator[Path]:
    """The image's root filesystem as a folder, removed on exit (needs root): with buildah a
    working container of the image, mounted; with Docker the files of a created container, exported."""
    eng = engine()
    if eng.kind == "docker":
        with tempfile.TemporaryDirectory(prefix="hotstandby-rootfs-") as tmp:
            container = eng.run("create", ref).stdout.strip()
            try:
                exported = subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE)
                subprocess.run(["tar", "-x", "-C", tmp], stdin=exported.stdout, check=True)
                if exported.wait() != 0:
                    raise ImageError(f"docker export {container} failed")
            finally:
                eng.succeeds("rm", container)
            yield Path(tmp)
        return
    container = eng.run("from", "--pull=never", "--quiet", ref).stdout.strip()
    try:
        yield Path(eng.run("mount", container).stdout.strip())
    finally:
        eng.succeeds("umount", container)
        eng.succeeds("rm", container)


def sizes(ref: str) -> dict[str, int]:
    """Bytes: the image (all its files) and its virtualenv (/opt/venv)."""
    with rootfs(ref) as root:
        return {"image": _du(root), "venv": _du(root / "opt" / "venv")}


def _du(path: Path) -> int:
    done = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


# --- command line -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.image", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the image(s)")
    build_cmd.add_argument(
        "--target", action="append", choices=TARGETS, help="daemon (default) and/or drill; repeatable"
    )
    for name, text in (("sizes", "the image's and its virtualenv's size"), ("inspect", "its config")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--target", choices=TARGETS, default="daemon")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for tag in build(tuple(args.target or ("daemon",))):
                print(f"image: ready {tag}")
        elif args.command == "sizes":
            found = {k: f"{v / 1e6:.0f} MB" for k, v in sizes(image_tag(args.target)).items()}
            print(f"{image_tag(args.target)}: image {found['image']}, venv {found['venv']}")
        else:
            print(json.dumps(config(image_tag(args.target)), indent=2))
    except ImageError as exc:
        print(f"harness.image {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
