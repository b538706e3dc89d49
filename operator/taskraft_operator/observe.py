"""Gathering the facts the planner decides on: `observe(...) -> model.ObservedState`.

The kopf handlers (handlers.py) are a thin shell around the pure planner; this module is the
reading half of that shell, and also holds the two transports the writing half (actions.py)
uses, so both halves talk to the world the same way:

- `KubeApi`: a small asyncio client of the Kubernetes REST API on aiohttp. Why not another one:
  kopf's own client is internal; the `kubernetes` package is synchronous (every call would need
  `asyncio.to_thread`) and maps JSON through generated model classes the operator does not
  want (the planner's manifests are plain dicts); `kubernetes_asyncio` would be a second,
  untyped copy of those models as a new dependency. The operator needs a dozen verbs on
  seven resources, server-side apply (a content type those clients make awkward) and a delete
  with a uid precondition: plain REST on aiohttp does that directly. aiohttp is already a
  dependency of the project and of kopf, and the credentials are kopf's public
  `kopf.ConnectionInfo` (from the same login functions kopf uses: in-cluster service account
  or kubeconfig), so kopf and this client always talk to the same API server as the same user.
- `NodeHttp`: the nodes' HTTP API (docs/http-api.md) with short timeouts: `/v1/status` for the
  observation, the admin calls for the actions (following a follower's 307 to the leader).
- `Endpoints`: where a pod's HTTP API, a pod's peer port and the client Service are. In a
  cluster these are the stable DNS names of `model` (`{pod}.{name}-peers.{ns}.svc:7102`);
  tests map pods to `taskraft serve` processes on 127.0.0.1.

What `observe` reads, all concurrently: the StatefulSet `{name}`, the ConfigMap
`{name}-config`, the Services `{name}-peers` and `{name}`, the PodDisruptionBudget and the
NetworkPolicy `{name}` (each only for its `taskraft.io/spec-hash` annotation), the pods and
the data PVCs of the cluster (listed by the cluster's labels and then matched by name,
`{name}-{ordinal}` and `data-{name}-{ordinal}`), the backup Jobs (listed by the same labels,
only when `spec.backup.claimName` is set), and the `/v1/status` of every pod's node, ready or
not (None when it does not answer within `NodeHttp.status_timeout_s`, or answers as another
node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import kopf

from taskraft_operator import model
from taskraft_operator.planner import SPEC_HASH_ANNOTATION, configmap_name
from taskraft_operator.resource import API_VERSION, KIND, PLURAL

logger = logging.getLogger(__name__)

FIELD_MANAGER = "taskraft-operator"
USER_AGENT = "taskraft-operator"

# The labels every object of a cluster carries (planner._selector); pods and PVCs are listed by
# them. The StatefulSet controller adds `controller-revision-hash` to each pod.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
REVISION_LABEL = "controller-revision-hash"
# The pod template label that carries spec.version (planner.statefulset_manifest).
VERSION_LABEL = "app.kubernetes.io/version"
# The StatefulSet's volumeClaimTemplate (planner.statefulset_manifest).
DATA_CLAIM = "data"

KUBE_TIMEOUT_S = 30.0
# A node answers /v1/status from memory: one that takes longer than this is treated as down.
STATUS_TIMEOUT_S = 2.0
STATUS_CONNECT_TIMEOUT_S = 1.0
# Admin calls answer once the change has committed, or 503 after 30 s (docs/http-api.md).
ADMIN_TIMEOUT_S = 40.0
REDIRECTS_MAX = 3


# ---------------------------------------------------------------------------------------------
# Kubernetes resources the operator touches


@dataclass(frozen=True, slots=True)
class ApiResource:
    api_version: str
    plural: str
    kind: str

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = f"{prefix}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


CONFIG_MAPS = ApiResource("v1", "configmaps", "ConfigMap")
SERVICES = ApiResource("v1", "services", "Service")
PODS = ApiResource("v1", "pods", "Pod")
PVCS = ApiResource("v1", "persistentvolumeclaims", "PersistentVolumeClaim")
STATEFUL_SETS = ApiResource("apps/v1", "statefulsets", "StatefulSet")
PDBS = ApiResource("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget")
NETWORK_POLICIES = ApiResource("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy")
JOBS = ApiResource("batch/v1", "jobs", "Job")
SECRETS = ApiResource("v1", "secrets", "Secret")
QUEUE_CLUSTERS = ApiResource(API_VERSION, PLURAL, KIND)

RESOURCES_BY_KIND: Mapping[str, ApiResource] = {
    resource.kind: resource
    for resource in (
        CONFIG_MAPS,
        SERVICES,
        PODS,
        PVCS,
        STATEFUL_SETS,
        PDBS,
        NETWORK_POLICIES,
        JOBS,
        QUEUE_CLUSTERS,
    )
}


def selector_labels(cluster: str) -> dict[str, str]:
    return {NAME_LABEL: "taskraft", INSTANCE_LABEL: cluster}


# ---------------------------------------------------------------------------------------------
# The Kubernetes API


class KubeApiError(Exception):
    """The API server answered with an error status (a `Status` object)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


Login = Callable[[], Awaitable[kopf.ConnectionInfo]]


def _login_now() -> kopf.ConnectionInfo:
    """Credentials as kopf finds them: the `kubernetes` package's loader (in-cluster, else
    kubeconfig, with exec plugins), else kopf's minimal service-account and kubeconfig
    readers."""
    settings = kopf.OperatorSettings()
    attempts = (
        kopf.login_via_client,
        kopf.login_with_service_account,
        kopf.login_with_kubeconfig,
    )
    for attempt in attempts:
        try:
            connection = attempt(logger=logger, settings=settings)
        except kopf.LoginError:
            continue
        if connection is not None:
            return connection
    raise kopf.LoginError("no Kubernetes credentials: neither in-cluster nor a kubeconfig")


async def default_login() -> kopf.ConnectionInfo:
    # Reading files (and maybe running a kubeconfig exec plugin) blocks: off the loop.
    return await asyncio.to_thread(_login_now)


def login_to(server: str) -> Login:
    """A login without credentials to `server` (a test API server such as kmock)."""

    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server)

    return login


class KubeApi:
    """The handful of REST calls the operator makes, as JSON documents.

    Logs in lazily, and again once when the server answers 401 (a rotated service-account
    token). One aiohttp session per client, created in the running loop.
    """

    def __init__(self, login: Login = default_login, *, timeout_s: float = KUBE_TIMEOUT_S) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connection: kopf.ConnectionInfo | None = None
        self._ssl: ssl.SSLContext | bool = True
        self._session: aiohttp.ClientSession | None = None
        self._login_lock = asyncio.Lock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _connect(self, *, again: bool = False) -> kopf.ConnectionInfo:
        async with self._login_lock:
            if self._connection is None or again:
                connection = await self._login()
                if connection.server.startswith("https:"):
                    self._ssl = False if connection.insecure else connection.as_ssl_context()
                else:
                    self._ssl = True  # plain http: unused
                self._connection = connection
            return self._connection

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"User-Agent": USER_AGENT}
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """(status, JSON document or None); raises KubeApiError for an error status."""
        connection = await self._connect()
        for attempt in range(2):
            headers = dict(connection.as_http_headers())
            data = None
            if body is not None:
                headers["Content-Type"] = content_type
                data = json.dumps(body).encode()
            url = connection.server.rstrip("/") + path
            session = self._session_now()
            async with session.request(
                method, url, params=params, data=data, headers=headers, ssl=self._ssl
            ) as response:
                text = await response.text()
                status = response.status
            if status == 401 and attempt == 0:
                connection = await self._connect(again=True)
                continue
            document = _json_or_none(text)
            if status >= 400:
                raise _api_error(status, document, text)
            return status, document
        raise AssertionError("unreachable")

    async def get(self, resource: ApiResource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            _, document = await self.request("GET", resource.path(namespace, name))
        except KubeApiError as error:
            if error.status == 404:
                return None
            raise
        return _mapping(document)

    async def list(
        self, resource: ApiResource, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """The objects with all of `labels` (also checked here: a server or a test double may
        not filter)."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        _, document = await self.request(
            "GET", resource.path(namespace), params={"labelSelector": selector}
        )
        items = _mapping(document).get("items") or []
        return [item for item in items if isinstance(item, dict) and _labels_match(item, labels)]

    async def create(
        self, resource: ApiResource, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        _, document = await self.request("POST", resource.path(namespace), body=body)
        return _mapping(document)

    async def apply(
        self, resource: ApiResource, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over conflicting fields."""
        _, document = await self.request(
            "PATCH",
            resource.path(namespace, name),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )
        return _mapping(document)

    async def merge_patch(
        self,
        resource: ApiResource,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        _, document = await self.request(
            "PATCH",
            resource.path(namespace, name, subresource),
            params={"fieldManager": FIELD_MANAGER},
            body=body,
            content_type="application/merge-patch+json",
        )
        return _mapping(document)

    async def delete(
        self, resource: ApiResource, namespace: str, name: str, *, uid: str | None = None
    ) -> bool:
        """Delete the object; False when it did not exist. With `uid`, only the object of that
        uid is deleted: KubeApiError 409 when the name now belongs to another object."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", resource.path(namespace, name), body=body)
        except KubeApiError as error:
            if error.status == 404:
                return False
            raise
        return True


def _json_or_none(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _mapping(document: object) -> dict[str, Any]:
    return document if isinstance(document, dict) else {}


def _api_error(status: int, document: object, text: str) -> KubeApiError:
    if isinstance(document, dict):
        reason = str(document.get("reason") or "")
        message = str(document.get("message") or "")
        return KubeApiError(status, reason, message)
    return KubeApiError(status, "", text[:200])


def _labels_match(item: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (item.get("metadata") or {}).get("labels") or {}
    return all(have.get(key) == value for key, value in labels.items())


# ---------------------------------------------------------------------------------------------
# The nodes' HTTP API


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    status: int
    document: Any
    url: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error_message(self) -> str:
        document = self.document
        if isinstance(document, dict) and isinstance(document.get("error"), dict):
            error = document["error"]
            return f"{self.status} {error.get('name', '')}: {error.get('message', '')}"
        return f"{self.status}: {str(document)[:200]}"


@dataclass(frozen=True, slots=True)
class NodeAccess:
    """How the operator reaches one cluster's nodes: its admin token, whether the nodes
    require it, and, under TLS, the context that trusts the cluster's authority (None: plain
    HTTP).

    The token goes with every request over TLS or when the nodes require one. Over plain HTTP
    to nodes that do not (authentication turned off), it is kept back, and sent only to a node
    that answers 401: one not yet restarted since authentication was turned off.
    """

    token: str | None = None
    tls: ssl.SSLContext | None = None
    token_required: bool = True

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def sends_token(self) -> bool:
        return self.token is not None and (self.token_required or self.tls is not None)

    def headers(self, *, with_token: bool | None = None) -> dict[str, str]:
        send = self.sends_token if with_token is None else with_token and self.token is not None
        return {"Authorization": f"Bearer {self.token}"} if send else {}

    def __repr__(self) -> str:
        # Never the token.
        return f"NodeAccess(token={'set' if self.token else None}, scheme={self.scheme})"


# A cluster without authentication or TLS.
OPEN_ACCESS = NodeAccess()


class NodeHttp:
    """GET /v1/status with a short deadline; admin calls that follow 307 to the leader; each
    with the token and TLS context of the cluster's `NodeAccess`."""

    def __init__(
        self,
        *,
        status_timeout_s: float = STATUS_TIMEOUT_S,
        admin_timeout_s: float = ADMIN_TIMEOUT_S,
        redirects_max: int = REDIRECTS_MAX,
    ) -> None:
        self.status_timeout = aiohttp.ClientTimeout(
            total=status_timeout_s, connect=min(STATUS_CONNECT_TIMEOUT_S, status_timeout_s)
        )
        self.admin_timeout = aiohttp.ClientTimeout(total=admin_timeout_s)
        self.redirects_max = redirects_max
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def status(
        self, address: str, access: NodeAccess = OPEN_ACCESS
    ) -> dict[str, Any] | None:
        """The node's /v1/status document, or None when it does not answer in time."""
        with_token = access.sends_token
        for _ in range(2):
            try:
                async with self._session_now().get(
                    f"{access.scheme}://{address}/v1/status",
                    timeout=self.status_timeout,
                    headers=access.headers(with_token=with_token),
                    ssl=True if access.tls is None else access.tls,
                ) as response:
                    if response.status == 401 and not with_token and access.token is not None:
                        with_token = True  # a node that still requires it (NodeAccess)
                        continue
                    if response.status != 200:
                        return None
                    document = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None
            return document if isinstance(document, dict) else None
        return None

    async def call(
        self,
        address: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        access: NodeAccess = OPEN_ACCESS,
    ) -> NodeAnswer:
        """An admin request; a 307/308 is followed with the same method and body.

        Raises aiohttp.ClientError or TimeoutError when no answer comes.
        """
        url = f"{access.scheme}://{address}{path}"
        data = None if body is None else json.dumps(body).encode()
        with_token = access.sends_token
        for _ in range(self.redirects_max + 2):
            headers = access.headers(with_token=with_token)
            if data is not None:
                headers["Content-Type"] = "application/json"
            async with self._session_now().request(
                method,
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=self.admin_timeout,
                ssl=True if access.tls is None else access.tls,
            ) as response:
                text = await response.text()
                location = response.headers.get("Location")
                status = response.status
            if status == 401 and not with_token and access.token is not None:
                with_token = True  # a node that still requires it (NodeAccess)
                continue
            if status in (307, 308) and location:
                target = urljoin(url, location)
                if urlsplit(target).scheme != access.scheme:
                    # The token is never sent over another scheme (a plain redirect from a TLS
                    # cluster would carry it in the clear).
                    return NodeAnswer(
                        status=502,
                        document={
                            "error": {
                                "message": f"refused a redirect from {access.scheme} to "
                                f"{urlsplit(target).scheme}"
                            }
                        },
                        url=url,
                    )
                url = target
                continue
            return NodeAnswer(status=status, document=_json_or_none(text), url=url)
        return NodeAnswer(
            status=508, document={"error": {"message": "too many redirects"}}, url=url
        )


# ---------------------------------------------------------------------------------------------
# Where things are


def default_client_servers(cluster: str, namespace: str) -> list[str]:
    """The client Service: any ready pod, which redirects to the leader."""
    return [f"{cluster}.{namespace}.svc:{model.CLIENT_PORT}"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """Addresses of a cluster's nodes: `http` and `peer` of pod `ordinal` of cluster `name`
    in `namespace`, and the client protocol `client` servers of the cluster."""

    http: Callable[[str, str, int], str] = model.http_address
    peer: Callable[[str, str, int], str] = model.peer_address
    client: Callable[[str, str], Sequence[str]] = default_client_servers


# ---------------------------------------------------------------------------------------------
# Observation


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """The planner's ObservedState plus the raw pod names seen (for logs and tests)."""

    state: model.ObservedState
    unreachable: tuple[str, ...] = ()


async def observe(
    desired: model.DesiredSpec,
    status: model.ClusterStatus | None,
    api: KubeApi,
    http: NodeHttp,
    *,
    endpoints: Endpoints,
    now: datetime,
    access: NodeAccess = OPEN_ACCESS,
) -> Observation:
    """Everything the planner needs, read concurrently; Kubernetes errors propagate."""
    name, namespace = desired.name, desired.namespace
    labels = selector_labels(name)
    named_objects = (
        ("ConfigMap", configmap_name(name)),
        ("Service", model.peers_service_name(name)),
        ("Service", name),
        ("PodDisruptionBudget", name),
        ("NetworkPolicy", name),
    )
    stateful_set_body, pods, pvcs, jobs, *objects = await asyncio.gather(
        api.get(STATEFUL_SETS, namespace, name),
        api.list(PODS, namespace, labels),
        api.list(PVCS, namespace, labels),
        # Backup Jobs only when backups are configured (nothing else lists Jobs).
        _list_jobs(api, namespace, labels) if desired.backup_claim_name else _no_jobs(),
        *(
            api.get(RESOURCES_BY_KIND[kind], namespace, object_name)
            for kind, object_name in named_objects
        ),
    )
    found: dict[model.ObjectKey, str | None] = {}
    for key, body in zip(named_objects, objects, strict=True):
        if body is not None:
            found[key] = _annotations(body).get(SPEC_HASH_ANNOTATION)

    pods_by_ordinal: dict[int, dict[str, Any]] = {}
    for pod in pods:
        ordinal = model.ordinal_of(name, _name(pod))
        if ordinal is not None:
            pods_by_ordinal[ordinal] = pod
    statuses = await asyncio.gather(
        *(
            _node_status(
                http,
                endpoints.http(name, namespace, ordinal),
                model.pod_name(name, ordinal),
                access,
            )
            for ordinal in pods_by_ordinal
        )
    )
    observed_pods = {
        ordinal: observed_pod(ordinal, pod, node)
        for (ordinal, pod), node in zip(pods_by_ordinal.items(), statuses, strict=True)
    }
    pvc_ordinals = set()
    for pvc in pvcs:
        claim = _name(pvc)
        prefix = f"{DATA_CLAIM}-"
        ordinal = model.ordinal_of(name, claim[len(prefix) :]) if claim.startswith(prefix) else None
        if ordinal is not None and not _deleting(pvc):
            pvc_ordinals.add(ordinal)
    state = model.ObservedState(
        now=now,
        stateful_set=None
        if stateful_set_body is None
        else observed_stateful_set(stateful_set_body),
        objects=found,
        pods=observed_pods,
        pvcs=frozenset(pvc_ordinals),
        status=status,
        jobs={job.name: job for job in map(observed_job, jobs) if job.name},
    )
    unreachable = tuple(
        model.pod_name(name, ordinal) for ordinal, pod in observed_pods.items() if pod.node is None
    )
    return Observation(state=state, unreachable=unreachable)


async def _list_jobs(
    api: KubeApi, namespace: str, labels: Mapping[str, str]
) -> list[dict[str, Any]]:
    return await api.list(JOBS, namespace, labels)


async def _no_jobs() -> list[dict[str, Any]]:
    return []


def observed_job(body: Mapping[str, Any]) -> model.ObservedJob:
    """A Job by its Complete / Failed conditions (`status.succeeded` as a fallback)."""
    status = body.get("status") or {}
    finished = {
        condition.get("type")
        for condition in status.get("conditions") or ()
        if isinstance(condition, Mapping) and condition.get("status") == "True"
    }
    succeeded = "Complete" in finished or _integer(status.get("succeeded"), 0) > 0
    failed = "Failed" in finished and not succeeded
    return model.ObservedJob(name=_name(body), succeeded=succeeded, failed=failed)


async def _node_status(
    http: NodeHttp, address: str, pod: str, access: NodeAccess
) -> model.NodeStatus | None:
    document = await http.status(address, access)
    if document is None:
        return None
    try:
        node = model.node_status_from_json(document)
    except ValueError as error:
        logger.warning("pod %s at %s: %s", pod, address, error)
        return None
    if node.node_id != pod:
        # Another node answers at this pod's address (a stale DNS record, a misrouted test
        # resolver): its view must not be taken for this pod's.
        logger.warning("pod %s at %s answers as node %s: ignored", pod, address, node.node_id)
        return None
    return node


def observed_pod(
    ordinal: int, body: Mapping[str, Any], node: model.NodeStatus | None
) -> model.ObservedPod:
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    ready = any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or ()
        if isinstance(condition, Mapping)
    )
    return model.ObservedPod(
        ordinal=ordinal,
        uid=str(metadata.get("uid") or ""),
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        revision=(metadata.get("labels") or {}).get(REVISION_LABEL),
        version=(metadata.get("labels") or {}).get(VERSION_LABEL),
        deleting=_deleting(body),
        node=node,
    )


def observed_stateful_set(body: Mapping[str, Any]) -> model.ObservedStatefulSet:
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    generation = _integer(metadata.get("generation"), 0)
    return model.ObservedStatefulSet(
        replicas=_integer(spec.get("replicas"), 1),
        spec_hash=_annotations(body).get(SPEC_HASH_ANNOTATION),
        generation=generation,
        observed_generation=_integer(status.get("observedGeneration"), 0),
        update_revision=status.get("updateRevision") or None,
        storage=_claim_storage(spec),
    )


def _claim_storage(spec: Mapping[str, Any]) -> model.StorageSpec | None:
    for template in spec.get("volumeClaimTemplates") or ():
        if not isinstance(template, Mapping):
            continue
        if (template.get("metadata") or {}).get("name") != DATA_CLAIM:
            continue
        claim = template.get("spec") or {}
        size = ((claim.get("resources") or {}).get("requests") or {}).get("storage")
        storage_class = claim.get("storageClassName")
        return model.StorageSpec(
            size=str(size) if size is not None else model.StorageSpec().size,
            storage_class=None if storage_class is None else str(storage_class),
        )
    return None


def _integer(value: object, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return value


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name") or "")


def _annotations(body: Mapping[str, Any]) -> Mapping[str, str]:
    return (body.get("metadata") or {}).get("annotations") or {}


def _deleting(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


async def close_quietly(*closables: KubeApi | NodeHttp) -> None:
    for closable in closables:
        with contextlib.suppress(Exception):
            await closable.close()


__all__ = [
    "CONFIG_MAPS",
    "FIELD_MANAGER",
    "NETWORK_POLICIES",
    "OPEN_ACCESS",
    "PDBS",
    "PODS",
    "PVCS",
    "QUEUE_CLUSTERS",
    "RESOURCES_BY_KIND",
    "SECRETS",
    "SERVICES",
    "STATEFUL_SETS",
    "ApiResource",
    "Endpoints",
    "KubeApi",
    "KubeApiError",
    "Login",
    "NodeAccess",
    "NodeAnswer",
    "NodeHttp",
    "Observation",
    "close_quietly",
    "default_login",
    "login_to",
    "observe",
    "observed_job",
    "observed_pod",
    "observed_stateful_set",
    "selector_labels",
]
