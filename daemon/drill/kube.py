"""The kubectl stopper's two calls (get a pod, delete a pod) made directly against the Kubernetes API with
the pod's service account, for a drill that runs in a cluster from an image without kubectl (ours).

In cluster: the API server is https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, the token and
CA are those Kubernetes mounts into every pod (the token is read again for each call: it rotates), and
the namespace is the pod's own unless --namespace says otherwise.
"""

from __future__ import annotations

import json
import os
import ssl
from typing import Any

import aiohttp

from daemon.drill.errors import StopperError

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def in_cluster(sa_dir: str = SERVICE_ACCOUNT) -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(os.path.join(sa_dir, "token"))


class Pods:
    def __init__(
        self,
        namespace: str | None,
        timeout: float,
        base_url: str | None = None,
        sa_dir: str = SERVICE_ACCOUNT,
    ) -> None:
        self.sa_dir = sa_dir
        self.timeout = timeout
        self.base_url = base_url or _api_server()
        self.namespace = namespace or self._read("namespace")

    def _read(self, name: str) -> str:
        try:
            with open(os.path.join(self.sa_dir, name), encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise StopperError(
                f"kubernetes service account: cannot read {name}: {exc.strerror or exc}"
            ) from None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.base_url.startswith("https:"):
            return False
        return ssl.create_default_context(cafile=os.path.join(self.sa_dir, "ca.crt"))

    def where(self, name: str) -> str:
        return f"pod {self.namespace}/{name}"

    async def _call(self, method: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}/api/v1/namespaces/{self.namespace}/pods/{name}"
        headers = {"Authorization": f"Bearer {self._read('token')}", "Accept": "application/json"}
        data = None if body is None else json.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(trust_env=False) as session,
                session.request(
                    method, url, data=data, headers=headers, ssl=self._ssl(), timeout=timeout
                ) as resp,
            ):
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StopperError(f"{method} {self.where(name)}: {exc or 'timed out'}") from None
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"message": raw[:200].decode(errors="replace")}
        if status >= 300:
            message = answer.get("message") if isinstance(answer, dict) else None
            raise StopperError(f"{method} {self.where(name)}: HTTP {status}: {message or repr(raw[:200])}")
        return answer if isinstance(answer, dict) else {}

    async def get(self, name: str) -> dict[str, Any]:
        return await self._call("GET", name)

    async def delete(self, name: str, grace_period: int | None) -> str:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        await self._call("DELETE", name, body)
        return f"deleted {self.where(name)}"


def _api_server() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"
