"""Run one command inside an image's root filesystem, as a container runtime would (root only).

    python harness/rootfs_exec.py SPEC.json

harness/compose_runner.py `--image` starts each service of a built image through this script, in
the service's network namespace (`ip netns exec`, which has already put the namespace's hosts
file on /etc/hosts). SPEC gives:

- root: the image's files (read-only here: a buildah mount of the image);
- upper/work: where this container's own changes go (an overlay on root, kept between restarts
  as a container's are); without them, a throwaway layer on a tmpfs mounted on `scratch` (for
  healthchecks and one-off commands);
- mounts: [source, target] bind mounts (volumes, secrets);
- user ("uid:gid" or a name in the image's /etc/passwd), workdir, env, argv.

In a mount namespace of its own (gone with its last process): the overlay, /proc, /dev, /etc/hosts
and the mounts; then chroot, the working folder, the user, and exec: the process is the
container's PID-1 stand-in (tini, when the image's ENTRYPOINT says so). Stdlib only: it runs with
the harness's Python, outside the image.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"rootfs_exec: mount {' '.join(args)}: {done.stderr.strip()}")


def _unshare_mounts() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise SystemExit(f"rootfs_exec: unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    _mount("--make-rprivate", "/")


def _prepare(spec: dict[str, Any]) -> Path:
    """The container's root: the image under an overlay, with the runtime's mounts."""
    if spec.get("upper"):
        upper, work = Path(spec["upper"]), Path(spec["work"])
        merged = Path(spec["merged"])
    else:
        scratch = Path(spec["scratch"])  # the same folder for every check: each mounts its own tmpfs
        scratch.mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "tmpfs", str(scratch))
        upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for folder in (upper, work, merged):
        folder.mkdir(parents=True, exist_ok=True)
    _mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={spec['root']},upperdir={upper},workdir={work}",
        str(merged),
    )
    _mount("-t", "proc", "proc", str(_target(merged, "/proc", directory=True)))
    _mount("--rbind", "/dev", str(_target(merged, "/dev", directory=True)))
    _mount("--bind", "/etc/hosts", str(_target(merged, "/etc/hosts", directory=False)))
    for source, target in spec.get("mounts", []):
        _mount("--bind", source, str(_target(merged, target, directory=Path(source).is_dir())))
    return merged


def _target(root: Path, path: str, *, directory: bool) -> Path:
    target = root / path.lstrip("/")
    if directory:
        target.mkdir(parents=True, exist_ok=True)
    elif not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    return target


def _ids(user: str) -> tuple[int, int]:
    """uid and gid from "uid[:gid]" or a user name, read in the chroot's /etc/passwd."""
    name, _, group = (user or "0").partition(":")
    if name.isdigit():
        uid, gid = int(name), int(group) if group.isdigit() else 0
        if not group:
            for line in Path("/etc/passwd").read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 3 and fields[2] == name:
                    gid = int(fields[3])
        return uid, gid
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(group) if group.isdigit() else int(fields[3])
    raise SystemExit(f"rootfs_exec: no user {name!r} in the image")


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    _unshare_mounts()
    root = _prepare(spec)
    os.chroot(root)
    os.chdir(spec.get("workdir") or "/")
    uid, gid = _ids(spec.get("user", ""))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    command = spec["argv"]
    try:
        os.execvpe(command[0], command, spec["env"])
    except OSError as exc:
        raise SystemExit(f"rootfs_exec: {command[0]}: {exc.strerror}") from None


if __name__ == "__main__":
    main(sys.argv)
