"""`hotstandby` command line: configuration errors become one line and exit status 2."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from daemon import __version__
from daemon.config import Config, ConfigError
from daemon.epochs import EpochError
from daemon.tls import TLSError


def main(argv: list[str] | None = None) -> int:
    args_given = sys.argv[1:] if argv is None else argv
    if args_given[:1] == ["plugin-gate"]:  # its own parser: everything after `--` is the daemon's command
        from daemon import plugin_gate

        return plugin_gate.main(args_given[1:])
    if args_given == ["serve"]:  # the daemon loads what it runs, not every operator command's parser
        return _serve_from_env()
    from daemon import ctl, haproxy_config
    from daemon.drill import cli as drill_cli
    from daemon.store import preload_cli

    parser = argparse.ArgumentParser(
        prog="hotstandby", description="Hot-standby replication for Dify plugin storage."
    )
    parser.add_argument("--version", action="version", version=f"hotstandby {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the daemon (configured from the environment)")
    commands.add_parser(
        "plugin-gate",
        help="run the Dify plugin daemon only while this node leads (plugin-gate --help)",
        add_help=False,
    )
    show = commands.add_parser("manifest", help="print the manifest of a directory as JSON lines")
    show.add_argument("path")
    ctl.add_arguments(commands)
    haproxy = commands.add_parser(
        "haproxy-config", help="render the HAProxy configuration", description=haproxy_config.DESCRIPTION
    )
    haproxy_config.add_arguments(haproxy)
    preload_cli.add_arguments(commands)
    drill_cli.add_arguments(commands)
    args = parser.parse_args(argv)
    if args.command == "manifest":
        return _print_manifest(args.path)
    if args.command == "haproxy-config":
        return haproxy_config.run(args)
    if args.command == "preload":
        return preload_cli.main(args)
    if args.command == "drill":
        return drill_cli.main(args)
    if args.command in ctl.COMMANDS:
        return _operator_command(args)
    return _serve_from_env()


def _serve_from_env() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"hotstandby: configuration error: {exc}", file=sys.stderr)
        return 2
    return _serve(config)


def _operator_command(args: argparse.Namespace) -> int:
    from daemon import ctl

    try:
        return ctl.run(args)
    except ConfigError as exc:
        print(f"hotstandby {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(config: Config) -> int:
    from daemon import logs
    from daemon.server import Server

    logs.configure(config)

    async def run() -> int:
        return await Server(config).serve()

    try:
        return asyncio.run(run())
    except TLSError as exc:  # a TLS file changed between the check and the start
        print(f"hotstandby: configuration error: {exc}", file=sys.stderr)
        return 2
    except EpochError as exc:  # STATE_PATH/node.json holds an epoch no promotion could follow
        print(f"hotstandby: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hotstandby: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _print_manifest(path: str) -> int:
    from replication import manifest

    for entry in manifest.walk(path):
        print(json.dumps(entry.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
