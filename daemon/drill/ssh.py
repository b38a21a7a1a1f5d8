"""Stop and start a node by a command run on its host over SSH (asyncssh).

Public-key authentication only (the given key files, else ~/.ssh/id_* and the agent); passwords and
keyboard-interactive are never tried, so a drill never hangs on a prompt. The server's host key is
checked against known_hosts (--known-hosts, else ~/.ssh/known_hosts) unless --no-host-key-check says
otherwise, and the report says when it was not checked.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncssh

from daemon.drill.config import StopperSettings, Target
from daemon.drill.errors import StopperError
from daemon.drill.templates import OUTPUT_LIMIT, render


class SshStopper:
    kind = "ssh"

    def __init__(self, settings: StopperSettings) -> None:
        self.settings = settings
        self.ssh = settings.ssh
        self.commands = {"stop": settings.stop_cmd, "start": settings.start_cmd}

    def options(self) -> dict[str, Any]:
        ssh = self.ssh
        known_hosts: str | tuple[()] | None
        if not ssh.check_host_key:
            known_hosts = None
        elif ssh.known_hosts:
            known_hosts = os.path.expanduser(ssh.known_hosts)
        else:
            known_hosts = ()  # asyncssh's default: ~/.ssh/known_hosts
        options: dict[str, Any] = {
            "port": ssh.port,
            "known_hosts": known_hosts,
            "password_auth": False,
            "kbdint_auth": False,
            "connect_timeout": self.settings.timeout,
        }
        if ssh.user:
            options["username"] = ssh.user
        if ssh.keys:
            options["client_keys"] = [os.path.expanduser(k) for k in ssh.keys]
        return options

    async def run(self, target: Target, command: str) -> str:
        where = f"{self.ssh.user + '@' if self.ssh.user else ''}{target.ssh_host}:{self.ssh.port}"
        try:
            async with asyncio.timeout(self.settings.timeout):
                async with asyncssh.connect(target.ssh_host, **self.options()) as conn:
                    result = await conn.run(command, check=False)
        except TimeoutError:
            raise StopperError(
                f"ssh {where}: `{command}` did not finish within {self.settings.timeout:g}s"
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise StopperError(
                f"ssh {where}: host key not verified against known_hosts: {exc.reason}"
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise StopperError(f"ssh {where}: public key refused: {exc.reason}") from None
        except (asyncssh.Error, OSError) as exc:
            raise StopperError(f"ssh {where}: {exc}") from None
        out, err = _text(result.stdout), _text(result.stderr)
        if result.exit_status != 0:
            status = result.exit_status if result.exit_status is not None else f"signal {result.exit_signal}"
            raise StopperError(f"ssh {where}: `{command}` exited with {status}: {err or out or 'no output'}")
        return (out + ("\n" + err if err else "")).strip()

    async def check(self, target: Target) -> str:
        await self.run(target, "true")
        checked = (
            "host key checked" if self.ssh.check_host_key else "host key NOT checked (--no-host-key-check)"
        )
        return f"ssh to {target.ssh_host}:{self.ssh.port} works ({checked})"

    async def stop(self, target: Target) -> str:
        return await self.run(target, render(self.commands["stop"], target))

    async def start(self, target: Target) -> str:
        return await self.run(target, render(self.commands["start"], target))

    def describe(self, action: str, target: Target) -> str:
        user = f"{self.ssh.user}@" if self.ssh.user else ""
        return f"ssh -p {self.ssh.port} {user}{target.ssh_host} {render(self.commands[action], target)}"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value or "").strip()[-OUTPUT_LIMIT:]
