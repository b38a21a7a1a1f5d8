"""How the drill stops and starts a node: a local command, docker, kubectl, a command over SSH, or (from
Python) two callables.

Commands are templates: {name}, {host}, {port} and {url} are replaced by the node's values, shell-quoted,
in one pass; other braces are left alone. Local commands also get them as DRILL_NODE_NAME, DRILL_NODE_HOST,
DRILL_NODE_PORT and DRILL_NODE_URL. A command that exits non-zero, or outlives the command timeout, fails
the step with its exit status and the end of its error output.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shlex
import shutil
from collections.abc import Awaitable, Callable
from typing import Protocol

from daemon.drill import kube
from daemon.drill.config import StopperSettings, Target
from daemon.drill.errors import StopperError
from daemon.drill.kube import Pods
from daemon.drill.templates import OUTPUT_LIMIT, render


class Stopper(Protocol):
    kind: str

    async def check(self, target: Target) -> str:
        """Raise StopperError when stop/start of this node cannot work; else say what was checked."""
        ...

    async def stop(self, target: Target) -> str: ...

    async def start(self, target: Target) -> str: ...

    def describe(self, action: str, target: Target) -> str:
        """What `action` (stop or start) runs, for the report and for a person restoring by hand."""
        ...


def node_env(target: Target) -> dict[str, str]:
    return {
        "DRILL_NODE_NAME": target.name,
        "DRILL_NODE_HOST": target.host,
        "DRILL_NODE_PORT": str(target.port),
        "DRILL_NODE_URL": target.url,
    }


async def run_local(argv: list[str] | str, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a program (argv) or a shell command (str); its output, or StopperError."""
    shown = argv if isinstance(argv, str) else shlex.join(argv)
    full_env = {**os.environ, **(env or {})}
    try:
        if isinstance(argv, str):
            proc = await asyncio.create_subprocess_shell(
                argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=full_env, start_new_session=True,
            )  # fmt: skip
        else:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=full_env, start_new_session=True,
            )  # fmt: skip
    except OSError as exc:
        raise StopperError(f"`{shown}` could not run: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        raise StopperError(f"`{shown}` did not finish within {timeout:g}s (killed)") from None
    except asyncio.CancelledError:
        _kill(proc)
        await proc.wait()
        raise
    text = _tail(out) + (("\n" + _tail(err)) if err.strip() else "")
    if proc.returncode != 0:
        raise StopperError(
            f"`{shown}` exited with {proc.returncode}: {_tail(err) or _tail(out) or 'no output'}"
        )
    return text.strip()


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL, unless it has just ended by itself: then asyncio raises ProcessLookupError, which
    turned a drill interrupted by SIGTERM during its stop command into a failed step (make test)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _tail(raw: bytes) -> str:
    return raw.decode(errors="replace").strip()[-OUTPUT_LIMIT:]


# -- a local command ---------------------------------------------------------------------------------
class CommandStopper:
    kind = "command"

    def __init__(self, stop_cmd: str, start_cmd: str, timeout: float) -> None:
        self.commands = {"stop": stop_cmd, "start": start_cmd}
        self.timeout = timeout

    async def check(self, target: Target) -> str:
        """Local commands are not tried before the drill: running one is the drill."""
        return f"stop: {self.describe('stop', target)}; start: {self.describe('start', target)}"

    async def stop(self, target: Target) -> str:
        return await run_local(render(self.commands["stop"], target), self.timeout, node_env(target))

    async def start(self, target: Target) -> str:
        return await run_local(render(self.commands["start"], target), self.timeout, node_env(target))

    def describe(self, action: str, target: Target) -> str:
        return render(self.commands[action], target)


# -- docker ------------------------------------------------------------------------------------------
class DockerStopper:
    kind = "docker"

    def __init__(self, docker: str, stop_timeout: int, timeout: float) -> None:
        self.docker = docker
        self.stop_timeout = stop_timeout
        self.timeout = timeout

    def argv(self, action: str, target: Target) -> list[str]:
        if action == "stop":
            return [self.docker, "stop", "-t", str(self.stop_timeout), target.name]
        return [self.docker, "start", target.name]

    async def check(self, target: Target) -> str:
        argv = [self.docker, "inspect", "--format", "{{.State.Running}}", target.name]
        running = await run_local(argv, self.timeout)
        if running.strip() != "true":
            raise StopperError(f"container {target.name} is not running ({running.strip() or 'unknown'})")
        return f"container {target.name} is running"

    async def stop(self, target: Target) -> str:
        return await run_local(self.argv("stop", target), self.timeout + self.stop_timeout)

    async def start(self, target: Target) -> str:
        return await run_local(self.argv("start", target), self.timeout)

    def describe(self, action: str, target: Target) -> str:
        return shlex.join(self.argv(action, target))


# -- kubectl ---------------------------------------------------------------------------------------
class KubectlStopper:
    """Deletes the node's pod; its StatefulSet recreates it, so `start` has nothing to run. Uses kubectl
    when it is on PATH; in a pod without it, the same two calls go to the API with the service account."""

    kind = "kubectl"

    def __init__(self, settings: StopperSettings, pods: Pods | None = None) -> None:
        self.settings = settings
        self.pods = pods
        if pods is None and shutil.which(settings.kubectl) is None and kube.in_cluster():
            self.pods = Pods(settings.namespace, settings.timeout)

    def _base(self) -> list[str]:
        argv = [self.settings.kubectl]
        if self.settings.context:
            argv += ["--context", self.settings.context]
        if self.settings.namespace:
            argv += ["--namespace", self.settings.namespace]
        return argv

    def argv(self, target: Target) -> list[str]:
        argv = [*self._base(), "delete", "pod", target.name, "--wait=false"]
        if self.settings.grace_period is not None:
            argv.append(f"--grace-period={self.settings.grace_period}")
        return argv

    async def check(self, target: Target) -> str:
        if self.pods is not None:
            await self.pods.get(target.name)
            return f"{self.pods.where(target.name)} exists (Kubernetes API, service account)"
        await run_local([*self._base(), "get", "pod", target.name, "--output=name"], self.settings.timeout)
        return f"pod {target.name} exists"

    async def stop(self, target: Target) -> str:
        if self.pods is not None:
            return await self.pods.delete(target.name, self.settings.grace_period)
        return await run_local(self.argv(target), self.settings.timeout)

    async def start(self, target: Target) -> str:
        return f"nothing to run: the StatefulSet recreates pod {target.name}"

    def describe(self, action: str, target: Target) -> str:
        if action != "stop":
            return f"(automatic: the StatefulSet recreates pod {target.name})"
        if self.pods is not None:
            return f"DELETE {self.pods.where(target.name)} (Kubernetes API, service account)"
        return shlex.join(self.argv(target))


# -- Python callables --------------------------------------------------------------------------------
Action = Callable[[Target], object] | Callable[[Target], Awaitable[object]]


class CallableStopper:
    """For the Python API (and tests): stop(target) and start(target), plain or async functions."""

    kind = "python"

    def __init__(self, stop: Action, start: Action) -> None:
        self.actions = {"stop": stop, "start": start}

    async def check(self, target: Target) -> str:
        return "python callables"

    async def stop(self, target: Target) -> str:
        return await self._call("stop", target)

    async def start(self, target: Target) -> str:
        return await self._call("start", target)

    async def _call(self, action: str, target: Target) -> str:
        function = self.actions[action]
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(target)
            else:
                result = await asyncio.to_thread(function, target)
                if inspect.isawaitable(result):
                    result = await result
        except StopperError:
            raise
        except Exception as exc:
            raise StopperError(f"{action} {target.name}: {type(exc).__name__}: {exc}") from exc
        return "" if result is None else str(result)

    def describe(self, action: str, target: Target) -> str:
        function = self.actions[action]
        return f"{getattr(function, '__qualname__', repr(function))}({target.name})"


def make_stopper(settings: StopperSettings) -> Stopper:
    if settings.kind == "command":
        return CommandStopper(settings.stop_cmd, settings.start_cmd, settings.timeout)
    if settings.kind == "docker":
        return DockerStopper(settings.docker, settings.docker_stop_timeout, settings.timeout)
    if settings.kind == "kubectl":
        return KubectlStopper(settings)
    if settings.kind == "ssh":
        from daemon.drill.ssh import SshStopper

        return SshStopper(settings)
    raise StopperError("the python stopper is given as callables (daemon.drill.run_drill(..., stopper=...))")
