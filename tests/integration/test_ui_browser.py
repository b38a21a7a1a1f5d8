"""The status page in a real headless Chromium against a real pair (FAILOVER=auto).

One browser, two tabs: one on the replica (it survives the leader's death), one on the leader. The
test signs in, sees both nodes with their roles, stops the replica for a moment so that a burst of
writes shows up as pending changes and lag on the leader's page and then as catch-up work, kills the
leader and watches the replica's page name itself the new leader, records a drill through the
drill's own history code and opens its report and timeline from the page. Screenshots (1280 and
390 px wide) are kept under the test's tmp dir; the browser's console must stay clean.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from daemon.client import AsyncClient
from daemon.drill import history
from daemon.drill.config import DrillConfig, HAProxySettings, StopperSettings, Target
from daemon.drill.nodes import Nodes
from daemon.drill.parts import Parts
from daemon.drill.preflight import Preflight
from daemon.drill.record import PhaseReport
from daemon.drill.report import DrillReport
from tests.support import browser
from tests.support.cluster import SERVER_KEY, Pair, http, make_pair, wait_until

pytestmark = pytest.mark.timeout(150)

FAST = {"CONTROL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.3", "FAILOVER": "auto", "FAILOVER_TIMEOUT": "2"}
BURST = 3000


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    started = make_pair(tmp_path, master_env=dict(FAST), slave_env=dict(FAST))
    try:
        started.start()
        wait_until(lambda: started.slave.status()["synced"], 10, message="the replica's first sync")
        yield started
    finally:
        if started.slave.proc is not None and started.slave.proc.poll() is None:
            os.kill(started.slave.proc.pid, signal.SIGCONT)
        started.stop()


@pytest.fixture
def driver() -> Iterator[Any]:
    why = browser.available()
    if why is not None:
        pytest.fail(f"the browser test {why}")
    with browser.chromium() as started:
        yield started


def page_wait(driver: Any, what: str, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll the page (the DOM, never a fixed sleep) until `predicate` returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the DOM changes under us between polls; try again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{text(driver)[:3000]}"
    )


def text(driver: Any, element_id: str = "") -> str:
    script = (
        f"return document.getElementById('{element_id}').innerText"
        if element_id
        else "return document.body.innerText"
    )
    return str(driver.execute_script(script))


def rows(driver: Any) -> dict[str, dict[str, str]]:
    """The nodes table: row name -> {column label: cell text}."""
    found: dict[str, dict[str, str]] = driver.execute_script(
        """
        const out = {};
        for (const tr of document.querySelectorAll('#nodes tbody tr')) {
          const cells = {};
          for (const c of tr.children) cells[c.dataset.label] = c.innerText;
          out[tr.dataset.node] = cells;
        }
        return out;
        """
    )
    return found


def sign_in(driver: Any, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    page_wait(driver, "the login form", lambda: driver.find_element(By.ID, "login-form").is_displayed())
    page_wait(driver, "the health facts", lambda: "This node: healthy" in text(driver, "health-facts"))
    driver.find_element(By.ID, "key").send_keys(SERVER_KEY)
    driver.find_element(By.ID, "sign-in").click()
    page_wait(driver, "the nodes table", lambda: len(rows(driver)) == 2)
    assert SERVER_KEY not in driver.current_url
    assert driver.execute_script("return sessionStorage.length") == 1


def shoot(driver: Any, folder: Path, name: str, width: int) -> Path:
    path = browser.screenshot(driver, folder / f"{name}-{width}.png", width)
    with Image.open(path) as image:
        assert image.width == width and image.height > 300, (path, image.size)
    return path


def record_drill(pair: Pair, killed_at: float, promoted_at: float, first_write_at: float) -> str:
    """A drill's history entry, recorded by the drill's own code from what this test measured."""
    targets = tuple(Target(node.url, node.name, node.host) for node in (pair.master, pair.slave))
    config = DrillConfig(
        targets=targets,
        server_key=SERVER_KEY,
        haproxy=HAProxySettings(url=pair.slave.url),
        stopper=StopperSettings(kind="python"),
        history_file=None,
    )
    report = DrillReport("20260101T000000Z-b10e55", time.time() - 30, config, "python")
    report.preflight = Preflight()
    report.preflight.add("nodes", True, "one leader, one replica in step")
    phase = PhaseReport(1, "failover", Parts.at_start(0, 2), (pair.master.url, pair.slave.url), old_epoch=1)
    phase.new_epoch = 2
    origin = killed_at - 10.0
    phase.moments.update(
        load_started=0.0,
        stop_issued=killed_at - origin,
        stop_returned=killed_at - origin + 0.01,
        new_leader_primary=promoted_at - origin,
        first_write_ok=first_write_at - origin,
        load_stopped=first_write_at - origin + 1,
    )
    report.phases.append(phase)
    report.timeline = {
        "nodes": [
            [[0.0, "leader", 1], [10.0, "down", None]],
            [[0.0, "replica", 1], [promoted_at - origin, "leader", 2]],
        ],
        "haproxy": [],
    }
    report.finished = first_write_at - origin + 2

    async def post() -> dict[str, str]:
        async with AsyncClient(None, SERVER_KEY) as http:
            nodes = Nodes(http)
            try:
                return await history.record(nodes, pair.slave.url, report, None)
            finally:
                nodes.close()

    done = asyncio.run(post())
    assert done["catalogue"].startswith("recorded on"), done
    return report.drill_id


def test_the_page_follows_the_pair_through_a_backlog_a_failover_and_a_drill(
    pair: Pair, driver: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    shots = tmp_path / "screenshots"
    shots.mkdir()
    started = time.monotonic()

    # -- the replica's page: both nodes, their roles -------------------------------------------
    driver.get(pair.slave.url + "/")
    page_wait(driver, "the login form", lambda: driver.find_element(By.ID, "login-form").is_displayed())
    shoot(driver, shots, "login", 1280)
    sign_in(driver, pair.slave.url)
    replica_tab = driver.current_window_handle
    seen = page_wait(
        driver, "both roles", lambda: (r := rows(driver)) and "replica" in r["this node"]["Role"] and r
    )
    assert "leader" in seen[pair.master.url]["Role"] and "yes" in seen[pair.master.url]["Writable"]
    page_wait(
        driver,
        "the verdict",
        lambda: "HEALTHY" in text(driver, "verdict") and "in step" in text(driver, "verdict"),
    )

    # -- the leader's page: a burst while the replica is stopped shows as pending and lag --------
    driver.switch_to.new_window("tab")
    sign_in(driver, pair.master.url)
    page_wait(driver, "the replica in step", lambda: rows(driver)[pair.slave.url]["Pending"] == "0")
    assert pair.slave.proc is not None
    os.kill(pair.slave.proc.pid, signal.SIGSTOP)
    try:
        burst = pair.master.storage / "burst"
        burst.mkdir()
        for number in range(BURST):
            (burst / f"f{number:05d}.json").write_text(f'{{"n": {number}}}')

        def backlog() -> dict[str, str] | None:
            row = rows(driver)[pair.slave.url]
            pending = int(row["Pending"].replace(",", "") or 0)
            lag = float(row["Lag"].split()[0]) if row["Lag"] != "-" else 0.0
            return row if pending >= BURST and lag >= 1.0 else None

        row = page_wait(driver, "pending changes and lag on the leader's page", backlog, timeout=15)
        assert "behind" in row["Progress"], row
    finally:
        os.kill(pair.slave.proc.pid, signal.SIGCONT)
    page_wait(
        driver,
        "the catch-up to finish",
        lambda: (
            "last caught up" in rows(driver)[pair.slave.url]["Progress"]
            and rows(driver)[pair.slave.url]["Pending"] == "0"
        ),
        timeout=30,
    )
    caught_up = rows(driver)[pair.slave.url]["Progress"]
    files = int(caught_up.split("last caught up ")[1].split(" files")[0].replace(",", ""))
    assert files >= BURST // 2, caught_up
    assert driver.execute_script("return document.querySelectorAll('#lag-chart polyline').length") >= 1
    shoot(driver, shots, "leader", 1280)
    leader_problems = browser.console_problems(driver)
    driver.close()  # the leader is about to die: its page would only report that it cannot reach it
    driver.switch_to.window(replica_tab)

    # -- kill the leader: the replica's page shows the replica leading --------------------------
    pair.master.kill()
    killed_at = time.monotonic()

    def new_leader() -> dict[str, dict[str, str]] | None:
        shown = rows(driver)
        me, old = shown["this node"], shown[pair.master.url]
        return (
            shown
            if "leader" in me["Role"] and me["Writable"] == "yes" and "unreachable" in old["Role"]
            else None
        )

    page_wait(driver, "the replica's page to show it leading", new_leader, timeout=15)
    shown_after = time.monotonic() - killed_at
    promoted_at = killed_at + shown_after  # an upper bound, as the page saw it
    assert shown_after < 10, f"the page showed the new leader {shown_after:.1f}s after the kill"
    headers = {"Authorization": f"Bearer {SERVER_KEY}"}
    assert http("PUT", f"{pair.slave.url}/internal/files/after.txt", body=b"after", headers=headers)[0] == 200
    first_write_at = time.monotonic()
    page_wait(
        driver, "the promotion in the history", lambda: "epoch 2" in text(driver, "failovers"), timeout=15
    )

    # -- a drill's report and timeline, opened from the page ------------------------------------
    drill_id = record_drill(pair, killed_at, promoted_at, first_write_at)
    driver.refresh()  # the history is asked again at once (the key is still in this tab's session)
    drill_link = (By.CSS_SELECTOR, "#drills a.drill-link")
    link = page_wait(driver, "the drill's link", lambda: driver.find_element(*drill_link), timeout=20)
    assert "PASS" in text(driver, "drills") and "switchover" in text(driver, "drills")
    shoot(driver, shots, "replica-after-failover", 1280)
    shoot(driver, shots, "replica-after-failover", 390)
    link.click()
    page_wait(
        driver,
        "the drill page",
        lambda: drill_id in driver.current_url and "# Failover drill" in text(driver, "report"),
    )
    figures = text(driver, "figures")
    assert "failover" in figures and pair.master.url in figures
    assert driver.execute_script("return document.querySelectorAll('#timeline rect').length") >= 2
    assert "stop issued" in text(driver, "moments") and "first write ok" in text(driver, "moments")
    shoot(driver, shots, "drill", 1280)
    shoot(driver, shots, "drill", 390)

    problems = leader_problems + browser.console_problems(driver)
    assert not problems, problems
    log = pair.slave.log_path.read_text() + pair.master.log_path.read_text()
    assert SERVER_KEY not in log
    took = time.monotonic() - started
    print(f"status page test: {took:.1f}s, the new leader shown {shown_after:.1f}s after the kill")
