"""Transport security: a pair replicates over (mutual) TLS, and a peer with a wrong certificate is refused.

Certificates come from throwaway CAs generated per test (tests/support/tls.py). The "rogue" CA's
certificates look just like the good ones (same names, same usages): only the signature differs.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from http.client import HTTPException
from pathlib import Path

import pytest

from daemon.drill.config import LoadSettings
from daemon.drill.load import Load
from daemon.drill.steps import Clock
from daemon.tls import TLSFiles
from tests.support.cluster import SERVER_KEY, Pair, http, wait_until
from tests.support.haproxy import running_haproxy
from tests.support.tls import CertificateAuthority, Issued, TLSNode, https

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def good_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority("hotstandby-test", tmp_path / "pki-good")


@pytest.fixture
def rogue_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority("rogue", tmp_path / "pki-rogue")


def tls_pair(
    tmp_path: Path,
    master_env: dict[str, str],
    slave_env: dict[str, str],
    context: ssl.SSLContext,
    hosts: tuple[str, str] = ("127.0.0.1", "127.0.0.1"),
) -> Pair:
    slave = TLSNode("slave", "slave", tmp_path / "slave", extra_env=slave_env, context=context, host=hosts[1])
    master = TLSNode(
        "master", "master", tmp_path / "master", extra_env=master_env, context=context, host=hosts[0]
    )
    if hosts[0] != hosts[1]:
        master.port = slave.port  # distinct addresses, one port: as HAProxy's template wants them
    master.extra_env["SYNC_TARGET"] = slave.url
    slave.extra_env["SYNC_SOURCE"] = master.url
    return Pair(master, slave)


@pytest.fixture
def mutual_pair(tmp_path: Path, good_ca: CertificateAuthority) -> Iterator[Pair]:
    """Both nodes serve TLS and require a client certificate from the good CA (127.0.0.2 and .3)."""
    operator = good_ca.issue("operator")
    pair = tls_pair(
        tmp_path,
        good_ca.issue("master").env(good_ca.cert_file),
        good_ca.issue("slave").env(good_ca.cert_file),
        good_ca.client_context(operator),
        hosts=("127.0.0.2", "127.0.0.3"),
    )
    pair.operator = operator  # type: ignore[attr-defined]
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


def _refused(url: str, context: ssl.SSLContext | None) -> str:
    """The error a client gets from `url`; fails the test if the request succeeds."""
    try:
        status, _h, _body = https("GET", url, context, timeout=5)
    except (OSError, HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{url} answered HTTP {status}: it should have been refused")


def test_a_pair_replicates_over_mutual_tls(mutual_pair: Pair) -> None:
    master, slave = mutual_pair.master, mutual_pair.slave
    assert master.url.startswith("https://") and slave.url.startswith("https://")
    (master.storage / "plugin").mkdir()
    (master.storage / "plugin" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (master.storage / "small.txt").write_text("over TLS\n")
    mutual_pair.wait_converged(timeout=30)
    status = master.status()
    assert status["peer_connected"] and status["peer_url"] == slave.url
    assert '"tls": "mutual"' in master.log_path.read_text()


def test_the_operator_command_speaks_mutual_tls(mutual_pair: Pair, good_ca: CertificateAuthority) -> None:
    operator: Issued = mutual_pair.operator  # type: ignore[attr-defined]
    env = {
        **os.environ,
        "SERVER_KEY": SERVER_KEY,
        "HOTSTANDBY_NODES": f"{mutual_pair.master.url},{mutual_pair.slave.url}",
        **operator.env(good_ca.cert_file),
    }
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "--json"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b'"writable": true' in done.stdout
    del env["TLS_CERT_FILE"], env["TLS_KEY_FILE"]  # no client certificate: both nodes refuse
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "status", "--json"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1, done.stdout.decode() + done.stderr.decode()


def test_a_tls_node_refuses_plain_http_and_clients_without_a_good_certificate(
    mutual_pair: Pair, good_ca: CertificateAuthority, rogue_ca: CertificateAuthority
) -> None:
    node = mutual_pair.slave
    plain = f"http://{node.host}:{node.port}/health"
    with pytest.raises((OSError, HTTPException)):
        http("GET", plain, timeout=5)
    health = f"{node.url}/health"
    _refused(health, good_ca.client_context())  # no client certificate
    _refused(health, good_ca.client_context(rogue_ca.issue("intruder")))  # signed by another CA
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    _refused(health, unverified)  # not checking the server does not get a client in either
    status, _h, _b = https("GET", health, good_ca.client_context(good_ca.issue("another-client")))
    assert status == 200
    assert node.is_up()


def test_a_master_with_a_certificate_from_another_ca_is_refused_by_the_slave(
    tmp_path: Path, good_ca: CertificateAuthority, rogue_ca: CertificateAuthority
) -> None:
    impostor = rogue_ca.issue("master").env(good_ca.cert_file)  # trusts the slave, is not trusted
    pair = tls_pair(
        tmp_path, impostor, good_ca.issue("slave").env(good_ca.cert_file), ssl.create_default_context()
    )
    pair.master.context = rogue_ca.client_context()  # the master serves the rogue certificate ...
    probe = good_ca.issue(
        "probe"
    )  # ... and, as it has TLS_CA_FILE, wants a client certificate from the good CA
    pair.master.context.load_cert_chain(probe.cert, probe.key)
    pair.slave.context = good_ca.client_context(good_ca.issue("probe"))
    _assert_link_refused(pair)


def test_a_master_refuses_a_slave_whose_certificate_comes_from_another_ca(
    tmp_path: Path, good_ca: CertificateAuthority, rogue_ca: CertificateAuthority
) -> None:
    impostor = rogue_ca.issue("slave").env(None)  # serves TLS with a certificate the master must not trust
    pair = tls_pair(
        tmp_path, good_ca.issue("master").env(good_ca.cert_file), impostor, ssl.create_default_context()
    )
    pair.master.context = good_ca.client_context(good_ca.issue("probe"))
    pair.slave.context = rogue_ca.client_context()
    _assert_link_refused(pair, expect="CERTIFICATE_VERIFY_FAILED")


def _assert_link_refused(pair: Pair, expect: str = "") -> None:
    try:
        pair.slave.start()
        pair.master.start()
        (pair.master.storage / "secret.txt").write_text("must not reach an untrusted peer\n")

        def link_failed() -> bool:  # under TLS 1.3 a refused client certificate reads as a disconnect
            return pair.master.log_path.read_text().count("replication_link_down") >= 3

        def peer_unverified() -> bool:  # the master cannot verify the peer: its role is unknown, so it
            # does not even lead (a restarted leader must not confirm itself against an unknown peer)
            return any(p["failure"] == "untrusted" for p in pair.master.status()["peers"])

        wait_until(lambda: link_failed() or peer_unverified(), 20, message="the link or peer check failing")
        time.sleep(2.0)  # a few more attempts: none may get through
        status = pair.master.status()
        assert not status["peer_connected"], status
        errors = [status["last_error"] or "", *(p["error"] or "" for p in status["peers"])]
        assert any(expect in error for error in errors), errors
        assert not (pair.slave.storage / "secret.txt").exists()
        assert pair.slave.status()["applied_sequence"] == 0
    finally:
        pair.stop()


@pytest.mark.parametrize("haproxy_ca", ["good", "rogue"])
def test_haproxy_checks_and_reaches_mutual_tls_nodes_only_with_a_good_certificate(
    mutual_pair: Pair,
    good_ca: CertificateAuthority,
    rogue_ca: CertificateAuthority,
    tmp_path: Path,
    haproxy_ca: str,
) -> None:
    ca = good_ca if haproxy_ca == "good" else rogue_ca
    crt = ca.issue("haproxy").combined()
    master, slave = mutual_pair.master, mutual_pair.slave
    with running_haproxy(
        master.host,
        slave.host,
        master.port,
        workdir=tmp_path,
        tls_ca_file=str(good_ca.cert_file),
        tls_crt=str(crt),
    ) as haproxy:
        if haproxy_ca == "good":
            haproxy.wait_for_state({"master": "UP", "standby": "DOWN"}, timeout=15)
            status, _h, body = http("GET", f"{haproxy.url}/primary", timeout=5)
            assert status == 200 and json.loads(body)["role"] == "master"
        else:  # the nodes refuse HAProxy's certificate: no check passes, no traffic goes through
            time.sleep(2.0)  # ten check periods
            assert haproxy.wait_for_state({"master": "DOWN", "standby": "DOWN"}, timeout=10)
            assert http("GET", f"{haproxy.url}/primary", timeout=5)[0] == 503


def test_the_preload_command_speaks_mutual_tls(mutual_pair: Pair, good_ca: CertificateAuthority) -> None:
    operator: Issued = mutual_pair.operator  # type: ignore[attr-defined]
    env = {**os.environ, "SERVER_KEY": SERVER_KEY, **operator.env(good_ca.cert_file)}
    command = [sys.executable, "-m", "daemon", "preload", "--url", mutual_pair.master.url, "--retries", "0"]
    command += ["--plugin", "Not-An-Identifier"]  # refused by the node itself: nothing leaves loopback
    done = subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert done.returncode == 1 and b"HTTP 400" in done.stderr, done.stderr.decode()
    del env["TLS_CA_FILE"]  # the node's certificate cannot be verified any more
    done = subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert done.returncode == 1 and b"CERTIFICATE_VERIFY_FAILED" in done.stderr, done.stderr.decode()


def test_the_drills_load_writes_and_reads_over_mutual_tls(
    mutual_pair: Pair, good_ca: CertificateAuthority
) -> None:
    """The drill's own aiohttp clients (its load; its monitor uses the operator commands' client)."""
    operator: Issued = mutual_pair.operator  # type: ignore[attr-defined]
    files = TLSFiles(str(operator.cert), str(operator.key), str(good_ca.cert_file))

    async def drive(tls: TLSFiles) -> Load:
        settings = LoadSettings(write_rate=20.0, read_rate=20.0, prefix=".drill-tls", request_timeout=5.0)
        load = Load(mutual_pair.master.url, SERVER_KEY, settings, Clock(), "tls", 1, "file", tls)
        task = asyncio.create_task(load.run())
        await asyncio.sleep(1.5)
        load.stop()
        await asyncio.wait_for(task, 30)
        return load

    load = asyncio.run(drive(files))
    writes = [o for o in load.outcomes if o.kind == "write"]
    assert len(writes) >= 10 and all(o.ok for o in writes), writes[:3]
    assert load.acked and load.bad_reads == 0
    assert any(o.kind == "read" and o.ok for o in load.outcomes)
    refused = asyncio.run(drive(TLSFiles(ca=str(good_ca.cert_file))))  # no client certificate
    assert refused.outcomes and not any(o.ok for o in refused.outcomes)
