"""Where compose services run as processes: one network namespace each, or loopback addresses.

`NamespaceNetwork` gives every host (each service, plus a client for whoever drives the
cluster) its own network namespace with `lo` up and an `eth0` on 198.18.0.0/24, the other end of
a veth pair plugged into a bridge that lives in a namespace of its own: nothing is added to the
root namespace. Each host gets /etc/netns/<ns>/hosts listing every service, which `ip netns
exec` mounts over /etc/hosts, so service names resolve as on a compose network.

`LoopbackNetwork` is the fallback where namespaces are not permitted: distinct addresses in
127.0.0.0/8 (one random 127.a.b.0/24 per run), the same ports, and no name resolution: the
runner rewrites service names to addresses instead.

Both are recorded with `to_json` so that another process (`make down`) can `teardown` them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

NETNS_ETC = Path("/etc/netns")
SUBNET = ipaddress.ip_network("198.18.0.0/24")
CLIENT = "client"


class NetworkError(RuntimeError):
    """A namespace, link or address could not be set up; the message has ip's own words."""


class NamespacesUnavailable(NetworkError):
    """This process may not create network namespaces (no root, no CAP_SYS_ADMIN, a sandbox)."""


def _ip(*args: str) -> None:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"ip {' '.join(args)}: {exc}") from None
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


@dataclass
class NamespaceNetwork:
    run_id: str
    addresses: dict[str, str] = field(default_factory=dict)  # host name -> address on the bridge
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # extra names per host
    namespaces: list[str] = field(default_factory=list)  # created so far, bridge first
    created_etc_netns: bool = False
    kind: Literal["netns"] = "netns"

    @property
    def bridge_ns(self) -> str:
        return f"hs-{self.run_id}-br"

    def namespace(self, host: str) -> str:
        return f"hs-{self.run_id}-{host}"

    @classmethod
    def create(
        cls, run_id: str, hosts: Sequence[str], aliases: Mapping[str, tuple[str, ...]]
    ) -> NamespaceNetwork:
        """A bridge and one namespace per host (plus CLIENT); everything is removed again if any
        step fails. Raises NamespacesUnavailable when the first namespace cannot be made."""
        network = cls(run_id, aliases=dict(aliases))
        try:
            _ip("netns", "add", network.bridge_ns)
        except NetworkError as exc:
            raise NamespacesUnavailable(str(exc)) from None
        network.namespaces.append(network.bridge_ns)
        try:
            network._build([*hosts, CLIENT])
        except BaseException:
            network.teardown()
            raise
        return network

    def _build(self, hosts: list[str]) -> None:
        bridge = self.bridge_ns
        _ip("-n", bridge, "link", "set", "lo", "up")
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        pool = list(SUBNET.hosts())
        for index, host in enumerate(hosts):
            address = str(pool[-2] if host == CLIENT else pool[index + 1])
            ns, veth = self.namespace(host), f"v{index}"
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", bridge, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", bridge, "link", "set", veth, "master", "br0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self.addresses[host] = address
        self._write_etc()

    def _write_etc(self) -> None:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        for host, address in self.addresses.items():
            if host != CLIENT:
                lines.append("\t".join([address, host, *self.aliases.get(host, ())]))
        hosts = "\n".join(lines) + "\n"
        if not NETNS_ETC.exists():
            NETNS_ETC.mkdir(mode=0o755)
            self.created_etc_netns = True
        for host in self.addresses:
            folder = NETNS_ETC / self.namespace(host)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(hosts, encoding="utf-8")
            # No DNS server is reachable from here: leave resolution to the hosts file.
            (folder / "resolv.conf").write_text("options timeout:1 attempts:1\n", encoding="utf-8")

    def wrap(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def teardown(self) -> list[str]:
        """Delete every namespace (their veths and the bridge go with them) and the /etc/netns
        files. Processes must be gone first. Returns the problems met; never raises."""
        problems = []
        for ns in reversed(self.namespaces):
            try:
                _ip("netns", "del", ns)
            except NetworkError as exc:
                problems.append(str(exc))
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        self.namespaces.clear()
        if self.created_etc_netns:
            with contextlib.suppress(OSError):
                NETNS_ETC.rmdir()  # only when empty: another run may be using it
        return problems

    def describe(self, host: str) -> str:
        return f"netns {self.namespace(host)}, {self.addresses[host]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "addresses": self.addresses,
            "aliases": {k: list(v) for k, v in self.aliases.items()},
            "namespaces": self.namespaces,
            "created_etc_netns": self.created_etc_netns,
        }


@dataclass
class LoopbackNetwork:
    """Every host on its own 127.a.b.n address, in the root network namespace."""

    addresses: dict[str, str] = field(default_factory=dict)
    kind: Literal["loopback"] = "loopback"

    @classmethod
    def create(cls, hosts: Sequence[str]) -> LoopbackNetwork:
        prefix = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
        names = [*hosts, CLIENT]
        return cls({host: f"{prefix}.{index + 2}" for index, host in enumerate(names)})

    def wrap(self, host: str, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def teardown(self) -> list[str]:
        return []

    def describe(self, host: str) -> str:
        return f"loopback {self.addresses[host]}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "addresses": self.addresses}


Network = NamespaceNetwork | LoopbackNetwork


def create(
    run_id: str, hosts: Sequence[str], aliases: Mapping[str, tuple[str, ...]], mode: str = "auto"
) -> tuple[Network, str]:
    """A network for these hosts; `mode` is auto, netns or loopback. Returns it and, when auto fell
    back to loopback, the reason."""
    if mode == "loopback":
        return LoopbackNetwork.create(hosts), ""
    try:
        return NamespaceNetwork.create(run_id, hosts, aliases), ""
    except NamespacesUnavailable as exc:
        if mode == "netns":
            raise
        return LoopbackNetwork.create(hosts), str(exc)


def from_json(data: dict[str, Any]) -> Network:
    if data.get("kind") == "netns":
        return NamespaceNetwork(
            run_id=str(data["run_id"]),
            addresses=dict(data.get("addresses", {})),
            aliases={k: tuple(v) for k, v in data.get("aliases", {}).items()},
            namespaces=list(data.get("namespaces", [])),
            created_etc_netns=bool(data.get("created_etc_netns", False)),
        )
    return LoopbackNetwork(addresses=dict(data.get("addresses", {})))
