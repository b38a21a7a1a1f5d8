"""`hotstandby drill`: its flags, and turning them into a DrillConfig (usage errors: one line, exit 2)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from daemon import ctl
from daemon.client import ClientSettings, base_url, read_key_file
from daemon.drill.config import (
    DEFAULT_HISTORY_FILE,
    DEFAULT_MAX_SWITCHOVER,
    DEFAULT_PREFIX,
    DEFAULT_TARGET_SWITCHOVER,
    DrillConfig,
    HAProxySettings,
    LoadSettings,
    PluginCallSettings,
    SshSettings,
    StopperKind,
    StopperSettings,
    Target,
    Thresholds,
)
from daemon.errors import UsageError

if TYPE_CHECKING:
    from daemon.drill.report import DrillReport

DESCRIPTION = """\
The quarterly failover drill. Under a client load through HAProxy (writes of known content and reads),
stop the leader, measure when HAProxy marks it down, when a replica answers 200 on /primary and when
writes succeed again; verify that every acknowledged write survived; start the old leader and check that
it rejoins as a replica, and that every node follows the new leader and has every acknowledged write;
optionally fail back (--failback), or make N failovers in a row (--repeat N: their median, p95 and
worst switchover and the lost writes summed). Two or more nodes: with more than one replica, the new leader is
whichever the election promotes. Refuses to start unless the nodes are healthy; always starts again
what it stopped. Writes report.json, report.md and timeline.png to
--out/hotstandby-drill-<id>/, prints the summary, records it in the event history.

Exit status: 0 pass, 1 fail, 2 usage, 3 refused by preflight (nothing stopped), 4 a stopped node could
not be restored (the report says how to start it by hand).

Commands (--stop-cmd, --start-cmd, --remote-*-cmd) may use {name}, {host}, {port} and {url} of the
node being stopped or started (shell-quoted)."""


def add_arguments(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    drill = commands.add_parser(
        "drill",
        help="failover drill: stop the leader under load, measure, verify, restore",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_nodes(drill)
    ctl.add_common(drill)
    _haproxy(drill.add_argument_group("HAProxy"))
    _stopper(drill.add_argument_group("stopping and starting a node"))
    _ssh(drill.add_argument_group("ssh stopper"))
    _measure(drill.add_argument_group("load, timing and thresholds"))
    _plugin_call(drill.add_argument_group("plugin call probe (a Dify plugin daemon behind HAProxy)"))
    _output(drill.add_argument_group("reports and history"))


def _haproxy(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--haproxy-url", metavar="URL", help="HAProxy's frontend, where the load goes (required)"
    )
    group.add_argument("--haproxy-socket", metavar="PATH", help="HAProxy's stats socket (preferred view)")
    group.add_argument(
        "--haproxy-stats", metavar="URL", help="HAProxy's stats page, e.g. http://lb:8404/stats"
    )
    group.add_argument(
        "--haproxy-servers",
        metavar="NAME,NAME[,...]",
        help="HAProxy server names of the nodes, in --nodes order (default: by address)",
    )


def _stopper(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--stopper",
        choices=["command", "docker", "kubectl", "ssh"],
        help="how to stop/start a node (default: command with --stop-cmd, ssh with --remote-stop-cmd)",
    )
    group.add_argument("--names", metavar="NAME,...", help="container/pod names of the nodes ({name})")
    group.add_argument("--stop-cmd", metavar="CMD", help="local shell command that stops a node")
    group.add_argument("--start-cmd", metavar="CMD", help="local shell command that starts it again")
    group.add_argument(
        "--command-timeout", type=float, default=60.0, metavar="SECONDS", help="per command; 60"
    )
    group.add_argument("--docker", default="docker", metavar="PROGRAM", help="docker binary; docker")
    group.add_argument(
        "--docker-stop-timeout", type=int, default=10, metavar="SECONDS", help="docker stop -t; 10"
    )
    group.add_argument("--kubectl", default="kubectl", metavar="PROGRAM", help="kubectl binary; kubectl")
    group.add_argument("--namespace", metavar="NS", help="kubectl --namespace")
    group.add_argument("--context", metavar="CTX", help="kubectl --context")
    group.add_argument(
        "--grace-period", type=int, metavar="SECONDS", help="kubectl delete pod --grace-period"
    )


def _ssh(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--remote-stop-cmd", metavar="CMD", help="command run on the node's host to stop it")
    group.add_argument("--remote-start-cmd", metavar="CMD", help="command run on the node's host to start it")
    group.add_argument("--ssh-hosts", metavar="HOST,...", help="SSH hosts of the nodes (default: URL hosts)")
    group.add_argument("--ssh-port", type=int, default=22, metavar="PORT")
    group.add_argument("--ssh-user", metavar="USER", help="default: ~/.ssh/config, else the local user")
    group.add_argument(
        "--ssh-key", action="append", default=[], metavar="FILE", help="private key (repeatable)"
    )
    group.add_argument("--known-hosts", metavar="FILE", help="host keys to trust; default ~/.ssh/known_hosts")
    group.add_argument(
        "--no-host-key-check", action="store_true", help="do NOT check the host key (the report says so)"
    )


def _measure(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--max-switchover", type=float, default=DEFAULT_MAX_SWITCHOVER, metavar="SECONDS",
        help=f"fail when writes take longer to resume; {DEFAULT_MAX_SWITCHOVER:g}",
    )  # fmt: skip
    group.add_argument(
        "--target-switchover", type=float, default=DEFAULT_TARGET_SWITCHOVER, metavar="SECONDS",
        help=f"our target, reported beside the bound; {DEFAULT_TARGET_SWITCHOVER:g}",
    )  # fmt: skip
    group.add_argument("--rejoin-timeout", type=float, default=120.0, metavar="SECONDS", help="120")
    group.add_argument("--write-rate", type=float, default=10.0, metavar="PER_SECOND", help="10")
    group.add_argument("--read-rate", type=float, default=10.0, metavar="PER_SECOND", help="10 (0: none)")
    group.add_argument("--request-timeout", type=float, default=15.0, metavar="SECONDS", help="15")
    group.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"folder for the writes; {DEFAULT_PREFIX}")
    group.add_argument("--warmup", type=float, default=3.0, metavar="SECONDS", help="load before the stop; 3")
    group.add_argument("--settle", type=float, default=5.0, metavar="SECONDS", help="load after resume; 5")
    group.add_argument("--poll-interval", type=float, default=0.1, metavar="SECONDS", help="0.1")
    group.add_argument("--failback", action="store_true", help="then fail back the same way (--repeat 2)")
    group.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="N failovers, each stopping whichever node leads (so they alternate); the report gives the"
        " median, p95 and worst switchover and the lost writes summed; 1",
    )  # fmt: skip


def _plugin_call(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--plugin-call",
        metavar="PLUGIN",
        help="X-Plugin-ID of an installed plugin: time when its calls work again",
    )
    group.add_argument("--plugin-call-url", metavar="URL", help="the plugin daemon's frontend; --haproxy-url")
    group.add_argument(
        "--plugin-call-key-file",
        metavar="FILE",
        help="the plugin daemon's SERVER_KEY; else $PLUGIN_DAEMON_KEY",
    )
    group.add_argument("--plugin-call-tool", metavar="PROVIDER/TOOL", help="the tool to invoke")
    group.add_argument("--plugin-call-params", metavar="JSON", default="{}", help="its parameters; {}")


def _output(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--out", default=".", metavar="DIR", help="reports go to DIR/hotstandby-drill-<id>/")
    group.add_argument(
        "--history-file", default=DEFAULT_HISTORY_FILE, metavar="FILE", help=f"{DEFAULT_HISTORY_FILE}"
    )
    group.add_argument("--no-history-file", action="store_true", help="keep no local history")
    group.add_argument(
        "--no-catalogue", action="store_true", help="do not record in the nodes' event history"
    )
    group.add_argument("--history", action="store_true", help="show past drills instead of running one")
    group.add_argument("--limit", type=int, default=20, help="--history: how many; 20")
    group.add_argument("--json", action="store_true", help="--history: as JSON")


# -- running ----------------------------------------------------------------------------------------------
def main(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> int:
    try:
        if args.history:
            return show_history(args, environ)
        config = build_config(args, environ)
    except UsageError as exc:
        print(f"hotstandby drill: {exc}", file=sys.stderr)
        return 2
    from daemon.drill.markdown import markdown

    try:
        report = asyncio.run(_run(config))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            "hotstandby drill: interrupted again while restoring the nodes: check them with"
            " `hotstandby status`",
            file=sys.stderr,
        )
        return 130
    print(markdown(report))
    for kind in ("json", "markdown", "png"):
        if kind in report.files:
            print(f"{kind}: {report.files[kind]}", file=sys.stderr)
    for error in report.file_errors:
        print(f"hotstandby drill: {error}", file=sys.stderr)
    return report.exit_status


async def _run(config: DrillConfig) -> DrillReport:
    from daemon.drill.run import run_drill

    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_drill(config)


def show_history(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from daemon.drill import history

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    client = ClientSettings.from_env(environ, key_file=args.key_file).client()
    try:
        urls = ctl.node_urls(args.nodes, environ)
    except UsageError:
        urls = []  # the local file alone still answers
    path = None if args.no_history_file else args.history_file
    drills, notes = history.gather(client, urls, path, args.limit)
    if args.json:
        print(json.dumps({"drills": drills, "notes": notes}, indent=2))
    else:
        print(history.format_table(drills) if drills else "no drill recorded")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> DrillConfig:
    urls = ctl.node_urls(args.nodes, environ)
    if not args.haproxy_url:
        raise UsageError("--haproxy-url is required: the load goes through it, as clients' traffic does")
    names = _per_node(args.names, "--names", len(urls)) or tuple(_default_name(u) for u in urls)
    ssh_hosts = _per_node(args.ssh_hosts, "--ssh-hosts", len(urls)) or tuple(_host(u) for u in urls)
    targets = tuple(Target(u, n, h) for u, n, h in zip(urls, names, ssh_hosts, strict=True))
    settings = ClientSettings.from_env(environ, key_file=args.key_file, max_lag=args.max_lag)
    return DrillConfig(
        targets=targets,
        server_key=settings.server_key,
        haproxy=HAProxySettings(
            url=base_url(args.haproxy_url, "--haproxy-url"),
            socket=args.haproxy_socket,
            stats_url=args.haproxy_stats,
            servers=_per_node(args.haproxy_servers, "--haproxy-servers", len(urls)),
        ),
        stopper=_stopper_settings(args),
        load=LoadSettings(args.write_rate, args.read_rate, args.prefix.strip("/"), args.request_timeout),
        thresholds=Thresholds(
            args.max_switchover,
            args.target_switchover,
            settings.max_lag,
            args.rejoin_timeout,
        ),
        warmup=args.warmup,
        settle=args.settle,
        poll_interval=args.poll_interval,
        failback=args.failback,
        repeat=args.repeat,
        out_dir=os.path.expanduser(args.out),
        history_file=None if args.no_history_file else args.history_file,
        record_catalogue=not args.no_catalogue,
        tls=settings.tls,
        plugin_call=_plugin_call_settings(args, environ),
    )


def _plugin_call_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> PluginCallSettings | None:
    if not args.plugin_call:
        if args.plugin_call_url or args.plugin_call_tool or args.plugin_call_key_file:
            raise UsageError("--plugin-call-* options need --plugin-call PLUGIN")
        return None
    key = environ.get("PLUGIN_DAEMON_KEY", "")
    if args.plugin_call_key_file:
        key = read_key_file(args.plugin_call_key_file, "--plugin-call-key-file")
    if not key:
        raise UsageError(
            "--plugin-call needs the plugin daemon's key: --plugin-call-key-file or PLUGIN_DAEMON_KEY"
        )
    try:
        parameters = json.loads(args.plugin_call_params)
    except ValueError:
        parameters = None
    if not isinstance(parameters, dict):
        raise UsageError("--plugin-call-params must be a JSON object")
    url = args.plugin_call_url or args.haproxy_url
    return PluginCallSettings(
        url=base_url(url, "--plugin-call-url"),
        plugin=args.plugin_call,
        key=key,
        tool=args.plugin_call_tool or "",
        parameters=parameters,
    )


def _stopper_settings(args: argparse.Namespace) -> StopperSettings:
    kind: StopperKind
    if args.stopper:
        kind = args.stopper
    elif args.stop_cmd or args.start_cmd:
        kind = "command"
    elif args.remote_stop_cmd or args.remote_start_cmd:
        kind = "ssh"
    else:
        raise UsageError(
            "say how to stop and start a node: --stop-cmd/--start-cmd, --stopper docker, --stopper kubectl,"
            " or --remote-stop-cmd/--remote-start-cmd (ssh)"
        )
    if kind != "command" and (args.stop_cmd or args.start_cmd):
        raise UsageError(f"--stop-cmd/--start-cmd are for the command stopper, not {kind}")
    if kind != "ssh" and (args.remote_stop_cmd or args.remote_start_cmd):
        raise UsageError(f"--remote-stop-cmd/--remote-start-cmd are for the ssh stopper, not {kind}")
    remote = kind == "ssh"
    return StopperSettings(
        kind=kind,
        stop_cmd=(args.remote_stop_cmd if remote else args.stop_cmd) or "",
        start_cmd=(args.remote_start_cmd if remote else args.start_cmd) or "",
        timeout=args.command_timeout,
        docker=args.docker,
        docker_stop_timeout=args.docker_stop_timeout,
        kubectl=args.kubectl,
        namespace=args.namespace,
        context=args.context,
        grace_period=args.grace_period,
        ssh=SshSettings(
            port=args.ssh_port,
            user=args.ssh_user,
            keys=tuple(args.ssh_key),
            known_hosts=args.known_hosts,
            check_host_key=not args.no_host_key_check,
        ),
    )


def _per_node(text: str | None, flag: str, count: int) -> tuple[str, ...] | None:
    """One comma-separated value per node, in --nodes order."""
    if text is None:
        return None
    parts = tuple(p.strip() for p in text.split(","))
    if len(parts) != count or not all(parts):
        raise UsageError(f"{flag} takes {count} comma-separated values, one per node in --nodes order")
    return parts


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


def _default_name(url: str) -> str:
    """The URL's host; for a DNS name, its first label (hotstandby-0.hotstandby -> hotstandby-0)."""
    host = _host(url)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.split(".", 1)[0]
    return host
