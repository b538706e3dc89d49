"""Probes and lifecycle handlers of the local node's containers, as the kubelet runs them.

A handler is httpGet (to the pod's address unless `host` is set; the port by number or by the
name of a container port; HTTP or HTTPS without verification; success is a status from 200 to
399), tcpSocket (success is an accepted connection) or exec (success is exit status 0; the
command runs inside the container's namespaces as its user). `ProbeCounter` applies
successThreshold and failureThreshold to the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from localkube.api import JsonObject
from localkube.release import KUBERNETES_MINOR

# Runs a command in the container: (command, timeout in seconds) -> (exit status, output).
ExecRunner = Callable[[list[str], float], Awaitable[tuple[int, str]]]

_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE


@dataclass(frozen=True)
class ProbeResult:
    success: bool
    message: str = ""


def resolve_port(port: int | str, container: JsonObject) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"port {port!r} is not a named port of container {container['name']!r}")


async def run_handler(
    handler: JsonObject,
    *,
    container: JsonObject,
    pod_address: str,
    timeout: float,
    run_exec: ExecRunner,
) -> ProbeResult:
    try:
        if "httpGet" in handler:
            return await _http_get(handler["httpGet"], container, pod_address, timeout)
        if "tcpSocket" in handler:
            return await _tcp_socket(handler["tcpSocket"], container, pod_address, timeout)
        if "exec" in handler:
            code, output = await run_exec(list(handler["exec"].get("command") or []), timeout)
            return ProbeResult(code == 0, output.strip()[-1024:])
        if "sleep" in handler:
            await asyncio.sleep(min(float(handler["sleep"]["seconds"]), timeout))
            return ProbeResult(True)
        return ProbeResult(False, f"unsupported handler {sorted(handler)}")
    except TimeoutError:
        return ProbeResult(False, f"timed out after {timeout:g}s")
    except (OSError, ValueError, aiohttp.ClientError) as error:
        return ProbeResult(False, str(error) or type(error).__name__)


async def _http_get(
    action: JsonObject, container: JsonObject, pod_address: str, timeout: float
) -> ProbeResult:
    scheme = str(action.get("scheme", "HTTP")).lower()
    host = action.get("host") or pod_address
    port = resolve_port(action["port"], container)
    path = action.get("path", "/")
    if not path.startswith("/"):
        path = "/" + path
    headers = {"User-Agent": f"kube-probe/{KUBERNETES_MINOR}", "Accept": "*/*"}
    for header in action.get("httpHeaders") or []:
        headers[header["name"]] = header["value"]
    url = f"{scheme}://{host}:{port}{path}"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(ssl=_UNVERIFIED if scheme == "https" else False)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=client_timeout) as client,
        client.get(url, headers=headers, allow_redirects=False) as response,
    ):
        await response.content.read(10 * 1024)
        if 200 <= response.status < 400:
            return ProbeResult(True)
        return ProbeResult(False, f"HTTP probe failed with statuscode: {response.status}")


async def _tcp_socket(
    action: JsonObject, container: JsonObject, pod_address: str, timeout: float
) -> ProbeResult:
    host = action.get("host") or pod_address
    port = resolve_port(action["port"], container)
    async with asyncio.timeout(timeout):
        _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout)
    return ProbeResult(True)


@dataclass
class ProbeCounter:
    """Consecutive results against the probe's thresholds: `record` returns the new verdict
    when it changes (True: passing, False: failing), else None."""

    success_threshold: int
    failure_threshold: int
    verdict: bool | None = None
    successes: int = 0
    failures: int = 0

    @classmethod
    def of(cls, probe: JsonObject) -> ProbeCounter:
        return cls(
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )

    def record(self, success: bool) -> bool | None:
        if success:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.success_threshold and self.verdict is not True:
                self.verdict = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.failure_threshold and self.verdict is not False:
                self.verdict = False
                return False
        return None


def probe_timing(probe: JsonObject) -> tuple[float, float, float]:
    """(initialDelaySeconds, periodSeconds, timeoutSeconds) with Kubernetes' defaults."""
    return (
        float(probe.get("initialDelaySeconds") or 0),
        float(probe.get("periodSeconds") or 10),
        float(probe.get("timeoutSeconds") or 1),
    )
