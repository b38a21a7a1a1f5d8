"""The plugin store on a real pair: what the master stores, verifies and quarantines, the standby gets too."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import SERVER_KEY, Pair, http, make_pair, wait_until
from tests.support.marketplace import (
    Plugin,
    ThreadedMarketplace,
    make_plugin,
    make_workdir,
    running_marketplace,
)

pytestmark = pytest.mark.timeout(60)

FAST = {
    "CONTROL_INTERVAL": "0.1",
    "HEARTBEAT_INTERVAL": "0.3",
    "DOWNLOAD_READ_TIMEOUT": "1",
    "DOWNLOAD_RETRIES": "2",
    "DOWNLOAD_BACKOFF": "0.05",
    "WORKDIR_SCAN_INTERVAL": "1",
    "NO_PROXY": "*",
}


@pytest.fixture
def market() -> Iterator[ThreadedMarketplace]:
    with running_marketplace() as started:
        yield started


@pytest.fixture
def store_pair(tmp_path: Path, market: ThreadedMarketplace) -> Iterator[Pair]:
    env = {**FAST, "MARKETPLACE_URL": market.url}
    pair = make_pair(tmp_path, master_env=dict(env), slave_env=dict(env))
    try:
        pair.start()
        wait_until(lambda: pair.master.call("GET", "/primary", auth=False)[0] == 200, 10, message="a leader")
        yield pair
    finally:
        pair.stop()


def publish(market: ThreadedMarketplace, plugin: Plugin) -> Plugin:
    return market.call(market.market.publish, plugin)  # type: ignore[no-any-return]


def test_a_preloaded_package_reaches_the_standby_and_so_does_its_quarantine(
    store_pair: Pair, market: ThreadedMarketplace
) -> None:
    pair, plugin = store_pair, publish(market, make_plugin(size=200_000))
    code, body = pair.master.call("POST", "/internal/preload", {"plugin_identifier": plugin.identifier})
    assert code == 201, body
    assert body["checksum"] == plugin.checksum and body["size"] == len(plugin.data)
    on_slave = pair.slave.storage / "plugin_packages" / plugin.identifier
    wait_until(lambda: on_slave.exists() and on_slave.read_bytes() == plugin.data, 20, message="the package")
    code, body = pair.slave.call("POST", "/internal/preload", {"plugin_identifier": plugin.identifier})
    assert code == 503 and body["title"] == "not the primary"

    on_master = pair.master.storage / "plugin_packages" / plugin.identifier
    data = bytearray(on_master.read_bytes())
    data[len(data) // 2] ^= 0x40
    on_master.write_bytes(bytes(data))
    code, report = pair.master.call("POST", "/internal/verify")
    assert code == 200, report
    [quarantined] = report["quarantined"]
    assert quarantined["identifier"] == plugin.identifier and plugin.checksum in quarantined["detail"]
    assert pair.master.metric("plugin_packages_corrupted") == 1
    pair.wait_converged(15)
    assert not on_slave.exists()
    assert (pair.slave.storage / quarantined["moved_to"]).read_bytes() == bytes(data)
    code, listing = pair.slave.call("GET", "/internal/plugins")
    assert [q["original"] for q in listing["quarantined"]] == [f"plugin_packages/{plugin.identifier}"]
    code, purged = pair.master.call("DELETE", "/internal/plugins/corrupted")
    assert code == 200 and purged["count"] == 1
    pair.wait_converged(15)
    assert pair.slave.call("GET", "/internal/plugins")[1]["quarantined"] == []


def test_the_promotion_report_lists_plugin_folders_that_fail_their_manifest(store_pair: Pair) -> None:
    pair = store_pair
    folder = make_workdir(pair.master.storage / "cwd", make_plugin(name="tool"))
    manifest = pair.slave.storage / folder.relative_to(pair.master.storage) / ".plugin.sha256"
    wait_until(manifest.exists, 15, message="the manifest written on the master to reach the slave")
    pair.wait_converged(15)
    (manifest.parent / "main.py").write_text("damaged on the standby")
    code, body = pair.master.call("POST", "/internal/drain")
    assert code == 200, body
    wait_until(lambda: pair.slave.call("POST", "/internal/promote")[0] == 200, 10, message="promotion")
    code, events = pair.slave.call("GET", "/internal/events?kind=workdir_check")
    promotion_checks = [e for e in events["events"] if e["trigger"] == "promotion"]
    assert promotion_checks and promotion_checks[0]["failed"] == [
        str(folder.relative_to(pair.master.storage / "cwd"))
    ]
    code, report = pair.slave.call("GET", "/internal/workdirs")
    assert report["failed"][0]["changed"] == ["main.py"]


def test_the_promote_answer_carries_the_workdir_report(store_pair: Pair) -> None:
    pair = store_pair
    make_workdir(pair.master.storage / "cwd", make_plugin(name="tool"))
    wait_until(
        lambda: any(pair.slave.storage.rglob(".plugin.sha256")), 15, message="the manifest on the slave"
    )
    assert pair.master.call("POST", "/internal/drain")[0] == 200
    answer: dict[str, object] = {}

    def promoted() -> bool:
        code, body = pair.slave.call("POST", "/internal/promote")
        answer.update(body or {})
        return code == 200

    wait_until(promoted, 10, message="promotion")
    assert answer["plugin_workdirs"] == {
        "checked": 1,
        "ok": 1,
        "failed": [],
        "unchecked": [],
        "incomplete": [],
        "trigger": "promotion",
    }


def run_preload(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "SERVER_KEY": SERVER_KEY, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "daemon", "preload", "--retries", "1", "--backoff", "0.05", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=45,
    )


def test_the_preload_job_reports_each_plugin_and_fails_when_any_did(
    store_pair: Pair, market: ThreadedMarketplace, tmp_path: Path
) -> None:
    pair = store_pair
    good, other = publish(market, make_plugin(name="good")), publish(market, make_plugin(name="other"))
    listing = tmp_path / "plugins.txt"
    listing.write_text(f"# preloaded nightly\n{good.identifier}\n\nlanggenius/other  # latest\n")
    done = run_preload("--url", pair.master.url, "--from", str(listing))
    assert done.returncode == 0, done.stderr
    assert good.identifier in done.stdout and other.identifier in done.stdout
    again = run_preload("--url", pair.master.url, "--from", str(listing), "--plugin", "nobody/nothing")
    assert again.returncode == 1
    assert "already present" in again.stdout
    assert "FAIL nobody/nothing: HTTP 404" in again.stderr
    on_standby = run_preload("--url", pair.slave.url, "--plugin", good.identifier)
    assert on_standby.returncode == 1 and "not the primary" in on_standby.stderr
    assert "after 2 attempts" in on_standby.stderr
    refused = run_preload(
        "--url", pair.master.url, "--plugin", good.identifier, env={"SERVER_KEY": "wrong-key-000"}
    )
    assert refused.returncode == 2 and "401" in refused.stderr
    status, _headers, _raw = http("GET", f"{pair.master.url}/metrics")
    assert status == 200
    assert pair.master.metric("plugin_downloads_total", {"result": "success"}) == 2
    assert pair.master.metric("plugin_downloads_total", {"result": "failure"}) == 1  # nobody/nothing
    assert pair.master.metric("plugin_download_success_rate") == pytest.approx(2 / 3)
