"""Container environment variables, resolved as the kubelet resolves them.

Order: the image's ENV, the service variables of the API server (KUBERNETES_SERVICE_HOST and
its relatives, pointing at the real address of the API server, since nothing proxies the
`kubernetes` Service's cluster IP), then `envFrom` sources in order, then `env` in order. A
`value` may refer to variables defined before it as `$(NAME)` (`$$` escapes a `$`); command and
arguments are expanded against the final environment. Values from `valueFrom` are never
expanded.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from localkube.api import JsonObject

# (kind, namespace, name) -> the object or None when it does not exist.
ObjectLookup = Callable[[str, str, str], Awaitable[JsonObject | None]]

_VARIABLE_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ContainerConfigError(Exception):
    """A reference the container needs is missing: reported as CreateContainerConfigError."""


def expand(text: str, variables: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: an undefined reference stays as written; `$$` is `$`."""
    output: list[str] = []
    cursor = 0
    while cursor < len(text):
        character = text[cursor]
        if character != "$" or cursor + 1 >= len(text):
            output.append(character)
            cursor += 1
            continue
        following = text[cursor + 1]
        if following == "$":
            output.append("$")
            cursor += 2
        elif following == "(":
            closing = text.find(")", cursor + 2)
            if closing == -1:
                output.append("$(")
                cursor += 2
            else:
                name = text[cursor + 2 : closing]
                output.append(variables.get(name, f"$({name})"))
                cursor = closing + 1
        else:
            output.append("$" + following)
            cursor += 2
    return "".join(output)


def api_server_variables(server: str) -> dict[str, str]:
    """The `kubernetes` Service's variables, with the API server's own address and port."""
    parts = urlsplit(server)
    host = parts.hostname or "127.0.0.1"
    port = str(parts.port or 443)
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


def field_value(pod: JsonObject, field_path: str) -> str:
    """A downward API `fieldRef`."""
    metadata = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    selected = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", field_path)
    if selected:
        return str(metadata.get(selected.group(1), {}).get(selected.group(2), ""))
    if field_path in ("metadata.labels", "metadata.annotations"):
        entries = metadata.get(field_path.split(".")[1], {})
        return "\n".join(f"{key}={_quote(value)}" for key, value in sorted(entries.items()))
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": ",".join(entry["ip"] for entry in status.get("podIPs") or []),
        "status.hostIP": status.get("hostIP", ""),
        "status.hostIPs": ",".join(entry["ip"] for entry in status.get("hostIPs") or []),
    }
    if field_path not in simple:
        raise ContainerConfigError(f"unsupported fieldRef fieldPath {field_path!r}")
    return str(simple[field_path])


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([a-zA-Z]*)$")
_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def parse_quantity(text: str) -> Decimal:
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]


def resource_value(
    container: JsonObject, reference: JsonObject, allocatable: dict[str, str]
) -> str:
    """A downward API `resourceFieldRef`: the container's limit or request, a missing limit
    being the node's allocatable amount; rounded up to a whole multiple of the divisor."""
    resource = reference["resource"]
    kind, _, name = resource.partition(".")
    amounts = container.get("resources", {}).get(kind, {})
    amount = amounts.get(name)
    if amount is None:
        amount = allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(reference.get("divisor") or "1")
    if divisor == 0:
        divisor = Decimal(1)
    return str(math.ceil(parse_quantity(amount) / divisor))


@dataclass
class EnvironmentResolver:
    """Resolves one container's environment from the pod, the cluster's objects and the
    image's ENV."""

    pod: JsonObject
    lookup: ObjectLookup
    server: str
    allocatable: dict[str, str]

    async def resolve(
        self, container: JsonObject, image_environment: dict[str, str]
    ) -> dict[str, str]:
        namespace = self.pod["metadata"]["namespace"]
        # What `$(VAR)` may refer to: the service variables and what is defined before.
        defined: dict[str, str] = dict(api_server_variables(self.server))
        environment: dict[str, str] = {**image_environment, **defined}
        for source in container.get("envFrom") or []:
            for name, value in (await self._env_from(namespace, source)).items():
                environment[name] = value
                defined[name] = value
        for variable in container.get("env") or []:
            name = variable["name"]
            if "valueFrom" in variable:
                resolved = await self._value_from(namespace, container, variable["valueFrom"])
                if resolved is None:
                    continue
                value = resolved
            else:
                value = expand(variable.get("value", ""), defined)
            environment[name] = value
            defined[name] = value
        return environment

    async def _env_from(self, namespace: str, source: JsonObject) -> dict[str, str]:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            reference, kind = source["configMapRef"], "ConfigMap"
        else:
            reference, kind = source["secretRef"], "Secret"
        found = await self.lookup(kind, namespace, reference["name"])
        if found is None:
            if reference.get("optional"):
                return {}
            raise ContainerConfigError(f'{kind.lower()} "{reference["name"]}" not found')
        values = object_data(found)
        return {
            prefix + key: value.decode(errors="replace")
            for key, value in values.items()
            if _VARIABLE_NAME.match(prefix + key)
        }

    async def _value_from(
        self, namespace: str, container: JsonObject, source: JsonObject
    ) -> str | None:
        if "fieldRef" in source:
            return field_value(self.pod, source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            return resource_value(container, source["resourceFieldRef"], self.allocatable)
        for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            if key in source:
                reference = source[key]
                found = await self.lookup(kind, namespace, reference["name"])
                optional = bool(reference.get("optional"))
                if found is None:
                    if optional:
                        return None
                    raise ContainerConfigError(f'{kind.lower()} "{reference["name"]}" not found')
                values = object_data(found)
                if reference["key"] not in values:
                    if optional:
                        return None
                    raise ContainerConfigError(
                        f"couldn't find key {reference['key']} in {kind} "
                        f"{namespace}/{reference['name']}"
                    )
                return values[reference["key"]].decode(errors="replace")
        raise ContainerConfigError(f"unsupported valueFrom {sorted(source)}")


def object_data(item: JsonObject) -> dict[str, bytes]:
    """A ConfigMap's data and binaryData, or a Secret's data (decoded) and stringData."""
    values: dict[str, bytes] = {}
    if item.get("kind") == "Secret":
        for key, value in (item.get("data") or {}).items():
            values[key] = base64.b64decode(value)
        for key, value in (item.get("stringData") or {}).items():
            values[key] = value.encode()
        return values
    for key, value in (item.get("data") or {}).items():
        values[key] = value.encode()
    for key, value in (item.get("binaryData") or {}).items():
        values[key] = base64.b64decode(value)
    return values


def expand_all(words: list[Any], variables: dict[str, str]) -> list[str]:
    return [expand(str(word), variables) for word in words]
