"""`python -m harness.compose up|demo|down|ps|exec`: the command line of the no-Docker compose runner
(harness/compose_runner.py) and its demo (harness/compose_demo.py), behind `make up`, `make demo` and
`make down`. Kept apart from both so that neither imports the other's caller.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import netns
from harness.compose_demo import run_demo
from harness.compose_file import ComposeError
from harness.compose_runner import (
    DEFAULT_FILE,
    DEFAULT_WORKDIR,
    STATE_FILE,
    Cluster,
    RunnerError,
    attach,
    down,
)
from harness.image import ImageError


def _print_ps(cluster: Cluster) -> None:
    assert cluster.network is not None
    for name in cluster.services:
        if name not in cluster.processes:
            continue
        state = "running" if cluster.running(name) else f"exited ({cluster.processes[name].exit_code()})"
        if cluster.running(name) and cluster.services[name].healthcheck is not None:
            state += " (healthy)" if cluster.healthy(name) else " (unhealthy)"
        cluster.out(f"  {name:<22} {state:<20} {cluster.describe(name)}")


def _print_reach(cluster: Cluster) -> None:
    assert cluster.network is not None
    if isinstance(cluster.network, netns.NamespaceNetwork):
        ns = cluster.network.namespace(netns.CLIENT)
        cluster.out(
            f"reach it from the client namespace: ip netns exec {ns} curl -s http://haproxy:5002/primary"
        )
        cluster.out("  or: .venv/bin/python -m harness.compose exec -- curl -s http://haproxy:5002/primary")
    else:
        address = cluster.network.addresses.get("haproxy", "?")
        cluster.out(f"reach it at http://{address}:5002/primary")


def _up(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    if (workdir / STATE_FILE).exists():
        previous = attach(workdir)
        if any(p.alive() for p in previous.processes.values()):
            print(f"already up (see {workdir / STATE_FILE}): run `make down` first", file=sys.stderr)
            return 1
        down(workdir, out=lambda _line: None)  # a stale state: clear its namespaces
    cluster = Cluster.from_file(
        args.file or [DEFAULT_FILE],
        workdir,
        env_file=args.env_file,
        profiles=tuple(args.profile),
        services=tuple(args.services),
        network_mode=args.network,
        image_files=_image_files(args.image_file),
    )
    print(f"up: {cluster.project.path} without Docker, state in {workdir}")
    try:
        cluster.up()
    except BaseException:
        cluster.down()
        raise
    _print_ps(cluster)
    _print_reach(cluster)
    print("stop with `make down` (volumes stay in place; `--volumes` removes them)")
    return 0


def _ps(args: argparse.Namespace) -> int:
    _print_ps(attach(args.workdir))
    return 0


def _exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("exec: give a command, e.g. -- curl -s http://haproxy:5002/primary", file=sys.stderr)
        return 2
    return attach(args.workdir).exec(argv, args.host)


def build_parser() -> argparse.ArgumentParser:
    """up and demo (with the compose files and how to network), down, ps and exec."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.compose",
        description="Run compose/docker-compose.yml's services as processes, without Docker.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start the services and leave them running"),
        ("demo", "up, write through HAProxy, kill the master, fail over, rejoin, down"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--file",
            "-f",
            action="append",
            default=[],
            help="compose file (repeatable: later files override earlier ones, as docker compose -f)",
        )
        sub.add_argument("--env-file", help="variables for interpolation (default: .env beside the file)")
        sub.add_argument("--profile", action="append", default=[], help="enable a profile (repeatable)")
        sub.add_argument(
            "--network",
            choices=("auto", "netns", "loopback"),
            default="auto",
            help="auto: a network namespace per service, else 127.x.y.n addresses",
        )
        if name == "demo":
            sub.add_argument(
                "--image",
                action="store_true",
                help="run the pair from the built image's own files (built first: harness/image.py)",
            )
        if name == "up":
            sub.add_argument(
                "--image-file",
                action="append",
                default=[],
                metavar="CONTAINER_PATH=HOST_PATH",
                help="a file of an image this runner cannot run (not built here), e.g. "
                "/app/entrypoint.sh=/opt/dify-plugin-daemon/run.sh (repeatable)",
            )
            sub.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="state, logs and volumes")
            sub.add_argument("services", nargs="*", help="services to start (default: all enabled)")
    stop = commands.add_parser("down", help="stop everything `up` started")
    stop.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    stop.add_argument("--volumes", "-v", action="store_true", help="also remove volumes, logs and secrets")
    ps = commands.add_parser("ps", help="list the services `up` started")
    ps.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    run = commands.add_parser("exec", help="run a command in the client namespace (or --host SERVICE's)")
    run.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    run.add_argument("--host", default=netns.CLIENT)
    run.add_argument("argv", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            return down(args.workdir, volumes=args.volumes)
        if args.command == "ps":
            return _ps(args)
        if args.command == "exec":
            return _exec(args)
        return run_demo(
            args.file[0] if args.file else DEFAULT_FILE,
            env_file=args.env_file,
            profiles=tuple(args.profile),
            network_mode=args.network,
            from_image=args.image,
        )
    except (ComposeError, RunnerError, netns.NetworkError, ImageError) as exc:
        print(f"compose_runner {args.command}: {exc}", file=sys.stderr)
        return 1


def _image_files(pairs: Sequence[str]) -> dict[str, Path]:
    result: dict[str, Path] = {}
    for pair in pairs:
        target, sep, host = pair.partition("=")
        if not sep or not target.startswith("/") or not host:
            raise RunnerError(f"--image-file {pair!r}: expected CONTAINER_PATH=HOST_PATH")
        if not Path(host).exists():
            raise RunnerError(f"--image-file {pair!r}: {host} does not exist")
        result[target] = Path(host)
    return result


if __name__ == "__main__":
    sys.exit(main())
