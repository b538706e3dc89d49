"""A small asynchronous Kubernetes API client for the local node's components.

The kubelet, the provisioner and the name service speak JSON to the API server and keep objects
as plain dictionaries (field paths such as `metadata.labels['app']` are then simple lookups).
This module holds the connection made from an admin kubeconfig, the request helpers and the
`Reflector`: list, then watch, keep a cache, relist after `410 Gone` or any error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml  # type: ignore[import-untyped]

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]

# A watch is ended by the server after this long and started again from the last version.
WATCH_TIMEOUT_SECONDS = 300
# Between attempts after an error (list or watch), doubling up to the maximum.
RETRY_DELAY_SECONDS = 0.5
RETRY_DELAY_MAX_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 30.0


class ApiError(Exception):
    """A response with a status outside 2xx; `status` is the HTTP status code."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.body = body
        message = body
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(body).get("message", body)
        super().__init__(f"{method} {path}: {status} {message}")


@dataclass
class KubernetesApi:
    """One HTTPS connection pool to the API server, authenticated as in the kubeconfig."""

    server: str
    ssl_context: ssl.SSLContext
    headers: dict[str, str] = field(default_factory=dict)
    _client: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubernetesApi:
        """The current context's cluster and user: certificate authority, client certificate
        and key (files or inline data) or a bearer token."""
        config = yaml.safe_load(path.read_text())
        context_name = config.get("current-context") or config["contexts"][0]["name"]
        context = _named(config["contexts"], context_name)["context"]
        cluster = _named(config["clusters"], context["cluster"])["cluster"]
        user = _named(config.get("users", []), context["user"])["user"]
        base = path.parent
        ssl_context = ssl.create_default_context()
        if "certificate-authority-data" in cluster:
            ssl_context.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        elif "certificate-authority" in cluster:
            ssl_context.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        headers: dict[str, str] = {}
        if "client-certificate-data" in user or "client-certificate" in user:
            with tempfile.TemporaryDirectory() as scratch:
                certificate = _material(user, "client-certificate", base, Path(scratch))
                key = _material(user, "client-key", base, Path(scratch))
                ssl_context.load_cert_chain(str(certificate), str(key))
        if "token" in user:
            headers["Authorization"] = f"Bearer {user['token']}"
        return cls(server=cluster["server"].rstrip("/"), ssl_context=ssl_context, headers=headers)

    @property
    def connections(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                headers=self.headers, connector=aiohttp.TCPConnector(ssl=self.ssl_context)
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> JsonObject:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        async with self.connections.request(
            method, self.server + path, params=params, data=data, headers=headers, timeout=timeout
        ) as response:
            text = await response.text()
            if response.status >= 300:
                raise ApiError(response.status, method, path, text)
            result: JsonObject = json.loads(text) if text else {}
            return result

    async def get(self, path: str, params: dict[str, str] | None = None) -> JsonObject:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> JsonObject | None:
        try:
            return await self.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, path: str, body: JsonObject) -> JsonObject:
        return await self.request("POST", path, body=body)

    async def put(self, path: str, body: JsonObject) -> JsonObject:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: JsonObject, *, strategic: bool = False) -> JsonObject:
        kind = "strategic-merge-patch" if strategic else "merge-patch"
        return await self.request("PATCH", path, body=body, content_type=f"application/{kind}+json")

    async def delete(self, path: str, body: JsonObject | None = None) -> JsonObject:
        return await self.request("DELETE", path, body=body)

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[JsonObject]:
        """The events of one watch request, until the server ends it (after
        WATCH_TIMEOUT_SECONDS); an ERROR event is yielded like the others."""
        query = {
            **params,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
        }
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=WATCH_TIMEOUT_SECONDS + 30
        )
        async with self.connections.get(
            self.server + path, params=query, timeout=timeout
        ) as response:
            if response.status >= 300:
                raise ApiError(response.status, "WATCH", path, await response.text())
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


def _named(entries: list[JsonObject], name: str) -> JsonObject:
    for entry in entries:
        if entry["name"] == name:
            return entry
    raise ValueError(f"kubeconfig has no entry named {name!r}")


def _material(user: JsonObject, key: str, base: Path, scratch: Path) -> Path:
    if f"{key}-data" in user:
        target = scratch / key
        target.write_bytes(base64.b64decode(user[f"{key}-data"]))
        return target
    return base / str(user[key])


def object_key(item: JsonObject) -> tuple[str, str]:
    metadata = item["metadata"]
    return metadata.get("namespace", ""), metadata["name"]


ChangeHandler = Callable[[str, JsonObject], Awaitable[None] | None]


@dataclass
class Reflector:
    """Lists the objects at `path`, then watches them, keeping `cache` (by namespace and name)
    current and calling `handler(event_type, object)` for every change: ADDED, MODIFIED or
    DELETED. After an expired version (410 Gone) or any error it lists again and reports the
    differences, so a handler sees every object that vanished meanwhile as DELETED."""

    api: KubernetesApi
    path: str
    handler: ChangeHandler
    params: dict[str, str] = field(default_factory=dict)
    cache: dict[tuple[str, str], JsonObject] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        delay = RETRY_DELAY_SECONDS
        while True:
            try:
                version: str | None = await self._list()
                self.synced.set()
                delay = RETRY_DELAY_SECONDS
                while version is not None:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning(
                    "watch of %s failed: %s; listing again in %.1fs", self.path, error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_DELAY_MAX_SECONDS)

    async def _list(self) -> str:
        listing = await self.api.get(self.path, self.params)
        fresh = {object_key(item): item for item in listing.get("items", [])}
        for key in list(self.cache):
            if key not in fresh:
                await self._notify("DELETED", self.cache.pop(key))
        for key, item in fresh.items():
            previous = self.cache.get(key)
            self.cache[key] = item
            if previous is None:
                await self._notify("ADDED", item)
            elif previous["metadata"].get("resourceVersion") != item["metadata"].get(
                "resourceVersion"
            ):
                await self._notify("MODIFIED", item)
        version: str = listing["metadata"]["resourceVersion"]
        return version

    async def _watch(self, version: str) -> str | None:
        """Watches from `version`; the version to continue from, or None to list again."""
        async for event in self.api.watch(self.path, {**self.params, "resourceVersion": version}):
            kind = event.get("type")
            item = event.get("object", {})
            if kind == "ERROR":
                logger.info("watch of %s ended: %s", self.path, item.get("message"))
                return None
            version = item["metadata"]["resourceVersion"]
            if kind == "BOOKMARK":
                continue
            key = object_key(item)
            if kind == "DELETED":
                self.cache.pop(key, None)
            else:
                self.cache[key] = item
            await self._notify(str(kind), item)
        return version

    async def _notify(self, kind: str, item: JsonObject) -> None:
        try:
            result = self.handler(kind, item)
            if result is not None:
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("handling %s of %s failed", kind, object_key(item))
