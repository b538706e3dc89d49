"""Pod volumes of the local node: directories on the host that containers get bind-mounted.

Each volume of a pod becomes a directory (a persistent volume's is the PersistentVolume's
hostPath or local path; everything else lives under `<directory>/pod-volumes/<pod uid>/`):
emptyDir, hostPath, persistentVolumeClaim (waiting until the claim is Bound), generic ephemeral
volumes (the claim the ephemeral volume controller creates), configMap, secret, downwardAPI and
projected (serviceAccountToken through the TokenRequest API, bound to the pod; configMap;
secret; downwardAPI). With a pod fsGroup, the pod's volumes are given to that group as the
kubelet does (group read for read-only kinds, read-write otherwise, setgid directories).

Files are written once, when the pod starts: later changes of ConfigMaps and Secrets, and
token rotation, are not carried into running pods (an extended service-account token is valid
for a year).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from localkube.api import ApiError, JsonObject, KubernetesApi
from localkube.environment import ContainerConfigError, field_value, object_data, resource_value

logger = logging.getLogger(__name__)

DEFAULT_FILE_MODE = 0o644
DEFAULT_TOKEN_EXPIRATION_SECONDS = 3600
# Volume kinds a container may not write, whatever its mount says.
READ_ONLY_KINDS = ("configMap", "secret", "downwardAPI", "projected")


class VolumeNotReadyError(Exception):
    """The volume cannot be set up yet (e.g. its claim is not Bound); try again later."""


@dataclass(frozen=True)
class PreparedVolume:
    path: Path
    read_only: bool


class VolumeManager:
    def __init__(self, api: KubernetesApi, directory: Path, allocatable: dict[str, str]) -> None:
        self.api = api
        self.root = directory / "pod-volumes"
        self.allocatable = allocatable

    def pod_root(self, pod: JsonObject) -> Path:
        return self.root / str(pod["metadata"]["uid"])

    async def prepare(self, pod: JsonObject) -> dict[str, PreparedVolume]:
        """Every volume of the pod by name; VolumeNotReadyError or ContainerConfigError when
        one cannot be set up yet."""
        prepared: dict[str, PreparedVolume] = {}
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            volume_path, read_only, owned = await self._prepare_one(pod, volume)
            if fs_group is not None and owned:
                give_to_group(volume_path, int(fs_group), read_only)
            prepared[name] = PreparedVolume(volume_path, read_only)
        return prepared

    def cleanup(self, pod_uid: str) -> None:
        """Removes the pod's own volume directories (never a persistent volume's)."""
        shutil.rmtree(self.root / pod_uid, ignore_errors=True)

    async def _prepare_one(self, pod: JsonObject, volume: JsonObject) -> tuple[Path, bool, bool]:
        """(path, read-only, whether fsGroup applies)."""
        name = volume["name"]
        local = self.pod_root(pod) / name
        if "emptyDir" in volume:
            local.mkdir(parents=True, exist_ok=True)
            local.chmod(0o777)
            return local, False, True
        if "hostPath" in volume:
            return _host_path(volume["hostPath"]), False, False
        if "persistentVolumeClaim" in volume:
            source = volume["persistentVolumeClaim"]
            path = await self._claim_path(pod, source["claimName"])
            return path, bool(source.get("readOnly")), True
        if "ephemeral" in volume:
            claim = f"{pod['metadata']['name']}-{name}"
            return await self._claim_path(pod, claim), False, True
        files: dict[str, tuple[bytes, int]]
        if "configMap" in volume or "secret" in volume:
            files = await self._object_files(pod, volume)
        elif "downwardAPI" in volume:
            source = volume["downwardAPI"]
            files = self._downward_files(pod, source, source.get("defaultMode", DEFAULT_FILE_MODE))
        elif "projected" in volume:
            files = await self._projected_files(pod, volume["projected"])
        else:
            kinds = sorted(key for key in volume if key != "name")
            raise ContainerConfigError(f"volume {name!r}: unsupported volume type {kinds}")
        _write_files(local, files)
        return local, True, True

    async def _claim_path(self, pod: JsonObject, claim_name: str) -> Path:
        namespace = pod["metadata"]["namespace"]
        claim = await self.api.get_or_none(
            f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}"
        )
        if claim is None:
            raise VolumeNotReadyError(f'persistentvolumeclaim "{claim_name}" not found')
        volume_name = claim.get("spec", {}).get("volumeName")
        if claim.get("status", {}).get("phase") != "Bound" or not volume_name:
            raise VolumeNotReadyError(f'persistentvolumeclaim "{claim_name}" is not bound')
        volume = await self.api.get(f"/api/v1/persistentvolumes/{volume_name}")
        spec = volume["spec"]
        if "hostPath" in spec:
            return _host_path(spec["hostPath"])
        if "local" in spec:
            path = Path(spec["local"]["path"])
            if not path.exists():
                raise VolumeNotReadyError(f"local volume path {path} does not exist")
            return path
        raise ContainerConfigError(
            f"persistentvolume {volume_name}: only hostPath and local volumes can be mounted here"
        )

    async def _lookup(self, kind: str, namespace: str, name: str) -> JsonObject | None:
        resource = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
        found = await self.api.get_or_none(f"/api/v1/namespaces/{namespace}/{resource}/{name}")
        if found is not None:
            found.setdefault("kind", kind)
        return found

    async def _object_files(
        self, pod: JsonObject, source_volume: JsonObject
    ) -> dict[str, tuple[bytes, int]]:
        if "configMap" in source_volume:
            source, kind, name_key = source_volume["configMap"], "ConfigMap", "name"
        else:
            source, kind, name_key = source_volume["secret"], "Secret", "secretName"
        return await self._source_files(
            pod,
            kind,
            source.get(name_key, ""),
            source,
            source.get("defaultMode", DEFAULT_FILE_MODE),
        )

    async def _source_files(
        self, pod: JsonObject, kind: str, name: str, source: JsonObject, default_mode: int
    ) -> dict[str, tuple[bytes, int]]:
        namespace = pod["metadata"]["namespace"]
        found = await self._lookup(kind, namespace, name)
        optional = bool(source.get("optional"))
        if found is None:
            if optional:
                return {}
            raise VolumeNotReadyError(f'{kind.lower()} "{name}" not found')
        values = object_data(found)
        items = source.get("items")
        if not items:
            return {key: (value, default_mode) for key, value in values.items()}
        files: dict[str, tuple[bytes, int]] = {}
        for item in items:
            if item["key"] not in values:
                if optional:
                    continue
                raise VolumeNotReadyError(
                    f'configuration key "{item["key"]}" not found in {kind} {namespace}/{name}'
                )
            files[item["path"]] = (values[item["key"]], item.get("mode", default_mode))
        return files

    def _downward_files(
        self, pod: JsonObject, source: JsonObject, default_mode: int
    ) -> dict[str, tuple[bytes, int]]:
        files: dict[str, tuple[bytes, int]] = {}
        containers = {c["name"]: c for c in pod["spec"].get("containers", [])}
        for item in source.get("items") or []:
            mode = item.get("mode", default_mode)
            if "fieldRef" in item:
                value = field_value(pod, item["fieldRef"]["fieldPath"])
            else:
                reference = item["resourceFieldRef"]
                container = containers.get(reference.get("containerName", ""), {})
                value = resource_value(container, reference, self.allocatable)
            files[item["path"]] = (value.encode(), mode)
        return files

    async def _projected_files(
        self, pod: JsonObject, projected: JsonObject
    ) -> dict[str, tuple[bytes, int]]:
        default_mode = projected.get("defaultMode", DEFAULT_FILE_MODE)
        files: dict[str, tuple[bytes, int]] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                token_source = source["serviceAccountToken"]
                token = await self.request_token(pod, token_source)
                files[token_source["path"]] = (token.encode(), default_mode)
            elif "configMap" in source:
                files.update(
                    await self._source_files(
                        pod,
                        "ConfigMap",
                        source["configMap"]["name"],
                        source["configMap"],
                        default_mode,
                    )
                )
            elif "secret" in source:
                files.update(
                    await self._source_files(
                        pod, "Secret", source["secret"]["name"], source["secret"], default_mode
                    )
                )
            elif "downwardAPI" in source:
                files.update(self._downward_files(pod, source["downwardAPI"], default_mode))
            else:
                raise ContainerConfigError(f"unsupported projected source {sorted(source)}")
        return files

    async def request_token(self, pod: JsonObject, source: JsonObject) -> str:
        """A service-account token for the pod's ServiceAccount, bound to the pod."""
        metadata = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: JsonObject = {
            "expirationSeconds": int(
                source.get("expirationSeconds") or DEFAULT_TOKEN_EXPIRATION_SECONDS
            ),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "uid": metadata["uid"],
            },
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{metadata['namespace']}/serviceaccounts/{account}/token"
        try:
            response = await self.api.create(path, body)
        except ApiError as error:
            raise VolumeNotReadyError(f"token request for {account}: {error}") from error
        token: str = response["status"]["token"]
        return token


def _host_path(source: JsonObject) -> Path:
    path = Path(source["path"])
    kind = source.get("type", "")
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o644)
    elif kind == "Directory" and not path.is_dir():
        raise VolumeNotReadyError(f"hostPath type check failed: {path} is not a directory")
    elif kind == "File" and not path.is_file():
        raise VolumeNotReadyError(f"hostPath type check failed: {path} is not a file")
    elif kind == "Socket" and not (path.exists() and stat.S_ISSOCK(path.stat().st_mode)):
        raise VolumeNotReadyError(f"hostPath type check failed: {path} is not a socket")
    return path


def _write_files(directory: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """The volume's files, replacing whatever an earlier attempt wrote."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    for relative, (content, mode) in files.items():
        relative_path = PurePosixPath(relative)
        if relative_path.is_absolute() or ".." in relative_path.parts:
            raise ContainerConfigError(
                f"volume file path {relative!r} must be relative, without .."
            )
        target = directory / relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(int(mode) & 0o7777)


def give_to_group(root: Path, group: int, read_only: bool) -> None:
    """The kubelet's SetVolumeOwnership: group `group`, group read (and write unless
    read-only), setgid on directories so new files inherit the group."""
    file_bits = 0o440 if read_only else 0o660
    for current, directories, files in os.walk(root):
        for name in [*directories, *files]:
            _own(Path(current) / name, group, file_bits)
        _own(Path(current), group, file_bits)


def _own(path: Path, group: int, file_bits: int) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        return
    os.chown(path, -1, group)
    mode = stat.S_IMODE(info.st_mode) | file_bits
    if stat.S_ISDIR(info.st_mode):
        mode |= stat.S_ISGID | 0o110
    os.chmod(path, mode)
