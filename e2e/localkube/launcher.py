"""Starts one container process of the local node: what a container runtime's shim does.

Run by the kubelet as root, as `python -I launcher.py`, with a JSON specification on stdin.
Standard library only: it is run as a script, without the localkube package.

Mode "start": joins the pod's network namespace (when the specification names one), enters a
new private mount namespace (and UTS namespace, for the pod's hostname), bind-mounts the
container's volumes and its hosts file there, changes to the container's user and groups and
working directory, and executes the program with the container's environment.
Mode "enter": joins the network, mount and UTS namespaces of a running container (for exec
probes and hooks) and does the same from the user on.

Every mount happens only after the new namespace is verified to be private, so nothing is ever
mounted on the host. A mount point missing on the host is created there as an empty directory
(or empty file), which is what a container runtime does inside an image.

Failures before the program runs are written to the status descriptor named in the
specification (closed on a successful exec), and the launcher exits with status 128.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
START_FAILURE_STATUS = 128

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source: str | None, target: str, kind: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            None if source is None else source.encode(),
            target.encode(),
            None if kind is None else kind.encode(),
            ctypes.c_ulong(flags),
            None if data is None else data.encode(),
        ),
        f"mount {source} on {target}",
    )


def _namespace(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


def enter_new_namespaces(hostname: str) -> None:
    before = _namespace("mnt")
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    if _namespace("mnt") == before:
        raise OSError("the mount namespace did not change; refusing to mount anything")
    # Nothing mounted from here on propagates back to the host.
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    encoded = hostname.encode()
    _check(_libc.sethostname(encoded, ctypes.c_size_t(len(encoded))), "sethostname")


def join_network_namespace(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(descriptor, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(descriptor)


def join_namespaces(process_id: int) -> None:
    for kind, flag in (("net", CLONE_NEWNET), ("mnt", CLONE_NEWNS), ("uts", CLONE_NEWUTS)):
        descriptor = os.open(f"/proc/{process_id}/ns/{kind}", os.O_RDONLY)
        try:
            _check(_libc.setns(descriptor, flag), f"setns {kind}")
        finally:
            os.close(descriptor)


def _searchable_by(path: Path, user_id: int, group_ids: set[int]) -> bool:
    info = path.stat()
    if user_id == 0:
        return True
    if info.st_uid == user_id:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in group_ids:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def expose(path: str, user_id: int, group_ids: set[int]) -> None:
    """Makes `path` reachable for the user inside this namespace: a directory on the way that
    the user may not search (e.g. /root, mode 0700, above the Python installation the virtual
    environment links to) is covered by an empty tmpfs holding only `path`, bound back in."""
    target = Path(path)
    blocked = next(
        (
            ancestor
            for ancestor in reversed(target.parents)
            if ancestor != Path("/") and not _searchable_by(ancestor, user_id, group_ids)
        ),
        None,
    )
    if blocked is None:
        return
    keep = os.open(target, os.O_PATH | os.O_DIRECTORY)
    try:
        _mount("tmpfs", str(blocked), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        target.mkdir(parents=True, exist_ok=True)
        _mount(f"/proc/self/fd/{keep}", str(target), None, MS_BIND | MS_REC, None)
    finally:
        os.close(keep)


def keep_visible(path: str, descriptor: int) -> None:
    """Binds `path` (open as `descriptor` since before any mount) back where it was when a
    volume mounted above it hides it: e.g. an emptyDir on /tmp with the repository under /tmp.
    """
    wanted = os.fstat(descriptor)
    try:
        found = os.stat(path)
    except OSError:
        found = None
    if found is not None and (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
        return
    bind(descriptor, stat.S_ISDIR(wanted.st_mode), path, read_only=False)


def bind(source: int, source_is_directory: bool, target: str, read_only: bool) -> None:
    """Binds the file or directory open as descriptor `source` on `target` (the source is
    opened before any mount, so an earlier mount, e.g. on /tmp, cannot hide it)."""
    target_path = Path(target)
    if source_is_directory:
        target_path.mkdir(parents=True, exist_ok=True)
    elif not target_path.exists():
        target_path.parent.mkdir(parents=True, exist_ok=True)
        target_path.touch()
    _mount(f"/proc/self/fd/{source}", target, None, MS_BIND | MS_REC, None)
    if read_only:
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)


def become(user_id: int, group_id: int, supplemental_groups: list[int]) -> None:
    os.setgroups(supplemental_groups)
    os.setgid(group_id)
    os.setuid(user_id)


def run(specification: dict[str, Any]) -> None:
    user_id = int(specification["user"])
    group_id = int(specification["group"])
    groups = [int(group) for group in specification.get("supplemental_groups", [])]
    if specification["mode"] == "start":
        mounts = specification.get("mounts", [])
        if specification.get("network_namespace"):
            join_network_namespace(specification["network_namespace"])
        enter_new_namespaces(specification["hostname"])
        # Opened in the new namespace (a bind from another namespace's mount is refused) and
        # before any mount.
        sources = [os.open(mount["source"], os.O_PATH) for mount in mounts]
        exposed = {path: os.open(path, os.O_PATH) for path in specification.get("expose", [])}
        for path in exposed:
            expose(path, user_id, {group_id, *groups})
        for mount, source in zip(mounts, sources, strict=True):
            is_directory = stat.S_ISDIR(os.fstat(source).st_mode)
            bind(source, is_directory, mount["target"], bool(mount.get("read_only")))
            os.close(source)
        for path, descriptor in exposed.items():
            keep_visible(path, descriptor)
            os.close(descriptor)
    else:
        join_namespaces(int(specification["process_id"]))
    working_directory = Path(specification.get("working_directory") or "/")
    if not working_directory.exists():
        working_directory.mkdir(parents=True, exist_ok=True)
    become(user_id, group_id, groups)
    os.chdir(working_directory)
    arguments = [str(argument) for argument in specification["arguments"]]
    if not arguments:
        raise OSError("no command: the image has no ENTRYPOINT or CMD and the container none")
    os.execvpe(arguments[0], arguments, dict(specification["environment"]))


def main() -> None:
    specification = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    status_descriptor = int(specification["status_descriptor"])
    os.set_inheritable(status_descriptor, False)
    try:
        run(specification)
    except BaseException as error:
        message = (
            f"{type(error).__name__}: {error}" if not isinstance(error, OSError) else str(error)
        )
        try:
            os.write(status_descriptor, message.encode(errors="replace"))
        finally:
            os._exit(START_FAILURE_STATUS)


if __name__ == "__main__":
    main()
