"""A dynamic volume provisioner for the local cluster: a directory per PersistentVolume.

It installs the default StorageClass `local-directory` (provisioner taskraft.io/local-directory,
volumeBindingMode Immediate, reclaimPolicy Delete) and plays the external provisioner's part:
for every claim the PersistentVolume controller hands to it (annotation
volume.kubernetes.io/storage-provisioner), it creates a hostPath PersistentVolume
`pvc-<claim uid>` on `<directory>/volumes/<volume name>` with the claim's size and access modes,
a claimRef to the claim and node affinity to the local node; the controller binds the two.
When a volume of its own is Released and its policy is Delete, it removes the directory and
the PersistentVolume.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from localkube.api import ApiError, JsonObject, KubernetesApi, Reflector

logger = logging.getLogger(__name__)

STORAGE_CLASS = "local-directory"
PROVISIONER = "taskraft.io/local-directory"
PROVISIONER_ANNOTATIONS = (
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
)
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


class Provisioner:
    def __init__(self, api: KubernetesApi, directory: Path, *, node_name: str) -> None:
        self.api = api
        self.volume_root = directory / "volumes"
        self.volume_root.mkdir(parents=True, exist_ok=True)
        self.node_name = node_name
        self.claims = Reflector(api, "/api/v1/persistentvolumeclaims", self._claim_changed)
        self.volumes = Reflector(api, "/api/v1/persistentvolumes", self._volume_changed)
        self.storage_class_ready = asyncio.Event()

    async def run(self) -> None:
        await self.install_storage_class()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.claims.run())
            group.create_task(self.volumes.run())

    async def install_storage_class(self) -> None:
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }
        try:
            await self.api.create("/apis/storage.k8s.io/v1/storageclasses", body)
        except ApiError as error:
            if error.status != 409:
                raise
        self.storage_class_ready.set()

    async def _claim_changed(self, kind: str, claim: JsonObject) -> None:
        if kind == "DELETED":
            return
        annotations = claim["metadata"].get("annotations") or {}
        wanted = any(annotations.get(key) == PROVISIONER for key in PROVISIONER_ANNOTATIONS)
        if not wanted or claim.get("spec", {}).get("volumeName"):
            return
        if claim.get("status", {}).get("phase") not in (None, "Pending"):
            return
        await self._provision(claim)

    async def _provision(self, claim: JsonObject) -> None:
        metadata = claim["metadata"]
        spec = claim["spec"]
        name = f"pvc-{metadata['uid']}"
        path = self.volume_root / name
        path.mkdir(parents=True, exist_ok=True)
        # As a local-path provisioner does: writable for any user; fsGroup narrows it.
        path.chmod(0o777)
        class_name = spec.get("storageClassName") or STORAGE_CLASS
        storage_class = await self.api.get_or_none(
            f"/apis/storage.k8s.io/v1/storageclasses/{class_name}"
        )
        reclaim = (storage_class or {}).get("reclaimPolicy", "Delete")
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER}},
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "persistentVolumeReclaimPolicy": reclaim,
                "storageClassName": class_name,
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": metadata["namespace"],
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                },
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [self.node_name],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        try:
            await self.api.create("/api/v1/persistentvolumes", volume)
            logger.info("provisioned %s for %s/%s", name, metadata["namespace"], metadata["name"])
        except ApiError as error:
            if error.status != 409:
                raise

    async def _volume_changed(self, kind: str, volume: JsonObject) -> None:
        if kind == "DELETED":
            return
        annotations = volume["metadata"].get("annotations") or {}
        spec = volume.get("spec", {})
        if annotations.get(PROVISIONED_BY) != PROVISIONER:
            return
        if volume.get("status", {}).get("phase") != "Released":
            return
        if spec.get("persistentVolumeReclaimPolicy") != "Delete":
            return
        path = Path(spec.get("hostPath", {}).get("path", ""))
        # Only ever a directory this provisioner made.
        if path.parent == self.volume_root and path.name == volume["metadata"]["name"]:
            shutil.rmtree(path, ignore_errors=True)
        try:
            await self.api.delete(f"/api/v1/persistentvolumes/{volume['metadata']['name']}")
            logger.info("deleted released volume %s", volume["metadata"]["name"])
        except ApiError as error:
            if error.status != 404:
                raise
