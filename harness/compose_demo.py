"""`make demo`: the compose deployment, without Docker, through a failover and a rejoin.

Brings up compose/docker-compose.yml with harness/compose_runner.py (a network namespace per
service, or loopback addresses where namespaces are not permitted), writes a file through
HAProxy and shows it on both nodes, kills the master's whole process tree, times until HAProxy
serves from the promoted standby, restarts the old master and shows it rejoin as a replica, and
tears everything down. `PairView` is also what tests/cluster/ uses to look at the pair.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import netns
from harness.compose_runner import DEFAULT_FILE, Cluster, ImageRun, Printer, Reply
from replication import manifest

MASTER, SLAVE, HAPROXY = "hotstandby-master", "hotstandby-slave", "haproxy"
HAPROXY_URL = f"http://{HAPROXY}:5002"
STATS_URL = f"http://{HAPROXY}:8404/stats;csv"


class DemoError(AssertionError):
    """Something the demo shows did not happen in time."""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until predicate() is true; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise DemoError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class PairView:
    """The hotstandby pair and HAProxy of a running compose cluster, seen from its client host."""

    cluster: Cluster

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cluster.secret('server_key')}"}

    def get_json(self, url: str, *, auth: bool = True) -> tuple[int, Any]:
        reply = self.cluster.request("GET", url, headers=self._auth() if auth else None, timeout=3)
        try:
            return reply.status, json.loads(reply.body)
        except ValueError:
            return reply.status, reply.body.decode(errors="replace")

    def status(self, service: str) -> dict[str, Any] | None:
        """The node's /internal/status, or None while it does not answer."""
        code, body = self.get_json(f"http://{service}:5002/internal/status")
        return body if code == 200 and isinstance(body, dict) else None

    def served_by(self) -> str | None:
        """Which node HAProxy sends requests to now (matched by node id), or None."""
        code, body = self.get_json(f"{HAPROXY_URL}/internal/status")
        if code != 200 or not isinstance(body, dict):
            return None
        for service in (MASTER, SLAVE):
            node = self.status(service)
            if node is not None and node.get("node_id") == body.get("node_id"):
                return service
        return None

    def put(self, path: str, data: bytes) -> Reply:
        url = f"{HAPROXY_URL}/internal/files/{path}"
        return self.cluster.request("PUT", url, body=data, headers=self._auth(), timeout=15)

    def haproxy_states(self) -> dict[str, str]:
        """HAProxy's view of its servers (`master`, `standby`): UP, DOWN, 'UP 1/2', ..."""
        reply = self.cluster.request("GET", STATS_URL, timeout=3)
        lines = reply.body.decode(errors="replace").splitlines() if reply.status == 200 else []
        if not lines:
            return {}
        header = lines[0].removeprefix("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        servers = [r for r in rows if r.get("pxname") == "nodes" and r.get("svname") not in (None, "BACKEND")]
        return {r["svname"]: r["status"] for r in servers}

    def storage(self, service: str) -> Path:
        """The host folder behind the service's STORAGE_PATH."""
        return self.cluster.host_path(service, self.cluster.environment(service)["STORAGE_PATH"])

    def file(self, service: str, path: str) -> bytes | None:
        try:
            return (self.storage(service) / path).read_bytes()
        except OSError:
            return None


def _step(out: Printer, text: str) -> None:
    out(f"\n== {text}")


def _digest(data: bytes | None) -> str:
    return "(missing)" if data is None else f"sha256 {hashlib.sha256(data).hexdigest()[:16]}..."


def _show_states(out: Printer, view: PairView) -> None:
    states = view.haproxy_states()
    out(f"  HAProxy's servers: master {states.get('master', '?')}, standby {states.get('standby', '?')}")


def _show_write(out: Printer, view: PairView, path: str, data: bytes) -> dict[str, Any]:
    out(f"  PUT {HAPROXY_URL}/internal/files/{path} ({len(data)} bytes)")
    reply = view.put(path, data)
    if reply.status != 200:
        raise DemoError(f"the write through HAProxy failed: {reply.status} {reply.body[:300]!r}")
    answer: dict[str, Any] = reply.json()
    shown = {k: answer[k] for k in ("seq", "epoch", "replicated") if k in answer}
    note = "" if answer.get("replicated") else " (no replica connected: SYNC_MODE_FALLBACK=async)"
    out(f"  -> 200 {json.dumps(shown)}{note}")
    return answer


def _manifest(root: Path) -> list[tuple[str, str, int]]:
    return [(e.path, e.type, e.size) for e in manifest.walk(str(root))]


def _local_changes(out: Printer, view: PairView) -> None:
    """What the plugin daemon does beside the master: files, a rename and a delete, seen on both trees."""
    _step(
        out, f"files written, renamed and deleted directly in {MASTER}'s storage (as the plugin daemon would)"
    )
    root = view.storage(MASTER) / "demo" / "local"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("settings.yaml", "notes.txt", "scratch.tmp"):
        (root / name).write_text(f"{name} written at {time.strftime('%H:%M:%S')}\n")
    wait_for(lambda: _manifest(view.storage(SLAVE)) == _manifest(view.storage(MASTER)), 10, "the first files")
    (root / "settings.yaml").rename(root / "config.yaml")
    (root / "scratch.tmp").unlink()
    took = wait_for(
        lambda: _manifest(view.storage(SLAVE)) == _manifest(view.storage(MASTER)),
        10,
        "the rename and the delete",
    )
    out(f"  mv settings.yaml config.yaml; rm scratch.tmp -> both trees identical after {took:.2f}s")
    for service in (MASTER, SLAVE):
        out(f"  {service} manifest:")
        for path, kind, size in _manifest(view.storage(service)):
            out(f"    {kind:<4} {size:>6}  {path}")
    reply = view.cluster.request("GET", f"http://{MASTER}:5002/metrics", timeout=3)
    lag = [
        line
        for line in reply.body.decode(errors="replace").splitlines()
        if line.startswith("plugin_sync_lag_seconds ")
    ]
    out(f"  {MASTER} {lag[0] if lag else 'plugin_sync_lag_seconds (not reported)'}")


def _following(status: dict[str, Any] | None, epoch: Any) -> bool:
    return status is not None and status.get("role") == "slave" and status.get("epoch") == epoch


def status_pages(cluster: Cluster, out: Printer = print) -> None:
    """Where each node's status page is (printed only: nothing is opened), and how to reach it."""
    _step(out, "status pages (GET /ui on every node; sign in with the key below)")
    network = cluster.network
    namespaces = network if isinstance(network, netns.NamespaceNetwork) else None
    for service in (MASTER, SLAVE):
        address = network.addresses.get(service, "?") if network is not None else "?"
        out(
            f"  {service:<18} http://{address}:5002/ui/"
            + ("  (inside the client namespace)" if namespaces else "")
        )
    if namespaces is not None:
        client = namespaces.namespace(netns.CLIENT)
        out(f"  they are reachable from the client namespace: ip netns exec {client} <browser> URL")
    key_file = cluster.secret_files.get("server_key")
    out(f"  key: the SERVER_KEY secret ({key_file or 'compose/secrets/server_key'})")


def story(cluster: Cluster, out: Printer = print) -> None:
    """Everything after `up`: write, failover, rejoin."""
    view = PairView(cluster)
    status_pages(cluster, out)
    wait_for(lambda: (view.status(SLAVE) or {}).get("synced", False), 30, "the standby's first full sync")
    wait_for(lambda: view.haproxy_states().get("master") == "UP", 15, "HAProxy to mark the master up")
    _show_states(out, view)

    _step(out, "a write through HAProxy reaches both nodes")
    data = f"written through HAProxy at {time.strftime('%H:%M:%S')}\n".encode()
    _show_write(out, view, "demo/hello.txt", data)
    wait_for(lambda: view.file(SLAVE, "demo/hello.txt") == data, 10, "the standby to have demo/hello.txt")
    for service in (MASTER, SLAVE):
        shown = view.storage(service) / "demo" / "hello.txt"
        out(f"  {service:<18} {shown}  {_digest(view.file(service, 'demo/hello.txt'))}")
    out(f"  HAProxy serves from {view.served_by()}")
    _local_changes(out, view)

    _step(out, f"kill -9 {MASTER} (its whole process tree, as `docker kill` would)")
    cluster.kill(MASTER)
    killed = time.monotonic()
    env = cluster.environment(SLAVE)
    if env.get("ELECTION", "static") == "static":
        how = f"promotes itself after FAILOVER_TIMEOUT ({env.get('FAILOVER_TIMEOUT')}s) without its master"
    else:
        how = f"takes the {env['ELECTION']} lease once the dead master's lease has expired"
    out(f"  the standby {how}; HAProxy follows /primary")
    wait_for(lambda: view.served_by() == SLAVE, 30, "HAProxy to serve from the promoted standby")
    out(f"  HAProxy serves from {SLAVE} {time.monotonic() - killed:.1f}s after the kill")
    _show_states(out, view)
    after = b"written after the failover\n"
    _show_write(out, view, "demo/after-failover.txt", after)
    out(f"  {SLAVE:<18} {_digest(view.file(SLAVE, 'demo/after-failover.txt'))}")

    _step(out, f"restart {MASTER}: it finds a leader with a higher epoch and rejoins as a replica")
    cluster.start(MASTER)
    restarted = time.monotonic()
    epoch = (view.status(SLAVE) or {}).get("epoch")
    wait_for(lambda: _following(view.status(MASTER), epoch), 30, "the old master to follow")
    status, took = view.status(MASTER) or {}, time.monotonic() - restarted
    out(f"  {MASTER}: role {status.get('role')}, epoch {status.get('epoch')} after {took:.1f}s")
    wait_for(lambda: view.file(MASTER, "demo/after-failover.txt") == after, 30, "the old master to catch up")
    out(f"  {MASTER:<18} demo/after-failover.txt {_digest(view.file(MASTER, 'demo/after-failover.txt'))}")
    code, primary = view.get_json(f"http://{MASTER}:5002/primary", auth=False)
    out(f"  {MASTER} /primary: {code} {json.dumps(primary)}: HAProxy does not fail back to it")
    _show_states(out, view)
    out(f"  HAProxy serves from {view.served_by()}")


def run_demo(
    compose_file: str | Path = DEFAULT_FILE,
    *,
    env_file: str | Path | None = None,
    profiles: tuple[str, ...] = (),
    network_mode: str = "auto",
    from_image: bool = False,
    out: Printer = print,
) -> int:
    """The demo; with from_image, the pair runs from the built image's root filesystem (built
    first, as `make image` does)."""
    if not from_image:
        return _run_demo(compose_file, env_file, profiles, network_mode, None, out)
    from harness import image

    tag = image.build(("daemon",), out=out)[0]
    with image.rootfs(tag) as root:
        run = ImageRun(root, image.config(tag))
        return _run_demo(compose_file, env_file, profiles, network_mode, run, out)


def _run_demo(
    compose_file: str | Path,
    env_file: str | Path | None,
    profiles: tuple[str, ...],
    network_mode: str,
    from_image: ImageRun | None,
    out: Printer,
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="hs-demo-"))
    try:
        cluster = Cluster.from_file(
            compose_file,
            workdir,
            env_file=env_file,
            profiles=profiles,
            network_mode=network_mode,
            image=from_image,
            out=out,
        )
        where = f"from the image's files ({from_image.root})" if from_image else "as processes"
        _step(out, f"up: {cluster.project.path} {where}, without Docker (state in {workdir})")
        started = time.monotonic()
        with cluster:
            out(f"  all services up and healthy in {time.monotonic() - started:.1f}s")
            try:
                story(cluster, out)
            except DemoError as exc:
                out(f"\nFAILED: {exc}")
                for name in cluster.services:
                    out(cluster.tail(name, 15))
                return 1
            _step(out, "down: every process stopped, namespaces and temporary volumes removed")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out("  done")
    return 0
