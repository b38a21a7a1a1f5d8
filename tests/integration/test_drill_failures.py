"""The drill's failure paths, each against a real pair behind a real HAProxy: a switchover over
--max-switchover, an acknowledged write lost, two nodes answering 200 on /primary, a node not restored.
Each ends with exit status 1 (4 when a node is left down) and says why, in the report and its summary.

The faults are made by the Python stopper (daemon.drill.CallableStopper): it kills the leader as the
drill asks, and then does the one wrong thing the test is about. (A node not restored: test_drill.py,
test_a_failing_stop_step_still_restores_the_stopped_node_or_says_it_could_not.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.drill import CallableStopper, Target, run_drill
from daemon.drill.config import LoadSettings, StopperSettings, Thresholds
from daemon.drill.report import DrillReport
from tests.integration.test_drill import STATIC_AUTO, Site, config_for, drill_site

pytestmark = pytest.mark.timeout(90)


WARMUP = 3.0
"""Seconds of load before the stop: the first write through HAProxy must be acknowledged within it, and a
loaded machine (other test workers) has been seen to need more than test_drill.py's 1 s."""


def _drill(site: Site, tmp_path: Path, stopper: CallableStopper, **overrides: object) -> DrillReport:
    config = config_for(site, tmp_path, StopperSettings("python"), **{"warmup": WARMUP, **overrides})
    return asyncio.run(run_drill(config, stopper=stopper))


def _says(report: DrillReport, *words: str) -> None:
    """The reason is in the report (its reasons, its JSON) and in the summary a person reads."""
    assert any(all(w in r for w in words) for r in report.reasons), report.reasons
    summary = Path(report.files["markdown"]).read_text()
    assert "Why it did not pass" in summary and all(w in summary for w in words), summary


def _kill_and_restart(site: Site) -> tuple[Callable[[Target], None], Callable[[Target], None]]:
    def stop(target: Target) -> None:
        site.pair.master.kill()

    def start(target: Target) -> None:
        site.pair.master.start(wait=False)

    return stop, start


def test_a_switchover_over_max_switchover_fails_with_exit_1(tmp_path: Path) -> None:
    with drill_site(tmp_path, *STATIC_AUTO) as site:
        stop, start = _kill_and_restart(site)
        limits = Thresholds(max_switchover=1.0, rejoin_timeout=30)  # FAILOVER_TIMEOUT alone is 2 s
        report = _drill(site, tmp_path, CallableStopper(stop, start), thresholds=limits)
    assert report.result == "fail" and report.exit_status == 1
    assert [r.ok for r in report.restore] == [True]  # the stopped node was started again
    _says(report, "writes through HAProxy did not resume within 1s of the stop")


def test_an_acknowledged_write_lost_fails_with_exit_1(tmp_path: Path) -> None:
    """The replica loses what it had acknowledged (deleted under it while the leader is down)."""
    load = LoadSettings(write_rate=20, read_rate=0, request_timeout=5)
    with drill_site(tmp_path, *STATIC_AUTO) as site:

        def stop(target: Target) -> None:
            site.pair.master.kill()
            written = [p for p in (site.pair.slave.storage / load.prefix).rglob("*.bin") if p.is_file()]
            assert written, "the drill's load wrote nothing before the stop"
            for path in written:
                path.unlink()

        def start(target: Target) -> None:
            site.pair.master.start(wait=False)

        report = _drill(site, tmp_path, CallableStopper(stop, start), load=load)
    assert report.result == "fail" and report.exit_status == 1
    assert report.phases[0].verification is not None and report.phases[0].verification.lost > 0
    _says(report, "acknowledged write(s) lost (must be 0)")


class _Impostor(BaseHTTPRequestHandler):
    """Takes the stopped leader's address and says "primary" to the drill's monitor (urllib) only, so
    HAProxy (its own checks) still sends the load to the real new leader and the drill can go on."""

    def do_GET(self) -> None:
        monitor = self.headers.get("User-Agent", "").startswith("Python-urllib")
        status = 200 if self.path.startswith("/primary") and monitor else 503
        body = b'{"role": "master", "writable": true}' if status == 200 else b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def _impostor_holder() -> Iterator[dict[str, ThreadingHTTPServer]]:
    held: dict[str, ThreadingHTTPServer] = {}
    try:
        yield held
    finally:
        for server in held.values():
            server.shutdown()
            server.server_close()


def test_two_nodes_answering_primary_fail_with_exit_1_as_split_brain(tmp_path: Path) -> None:
    with drill_site(tmp_path, *STATIC_AUTO) as site, _impostor_holder() as held:
        master = site.pair.master

        def stop(target: Target) -> None:
            master.kill()
            ThreadingHTTPServer.allow_reuse_address = True
            server = ThreadingHTTPServer((master.host, master.port), _Impostor)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            held["impostor"] = server

        def start(target: Target) -> None:
            server = held.pop("impostor")
            server.shutdown()
            server.server_close()
            master.start(wait=False)

        report = _drill(site, tmp_path, CallableStopper(stop, start))
    assert report.result == "fail" and report.exit_status == 1
    assert report.phases[0].both_primary
    _says(report, "two nodes answered 200 on /primary", "split brain")
