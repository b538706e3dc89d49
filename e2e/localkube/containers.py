"""One container of a pod on the local node: its process, probes, restarts and status.

A container is a process started by `launcher.py` in its own mount and UTS namespaces, in its
own process group (so a signal reaches everything it started), with stdout and stderr in
`<directory>/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`. `ContainerRunner` starts
it, runs the startup, liveness and readiness probes, restarts it per the pod's restartPolicy
with the kubelet's back-off (10 s doubling to 5 minutes, forgotten after 10 minutes of
running), and stops it gracefully (preStop, SIGTERM, SIGKILL after the grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from localkube.api import JsonObject
from localkube.environment import (
    ContainerConfigError,
    EnvironmentResolver,
    ObjectLookup,
    expand,
    expand_all,
)
from localkube.images import (
    DEFAULT_PATH,
    REPOSITORY_ROOT,
    VIRTUAL_ENVIRONMENT_BIN,
    ImageConfig,
    UnknownImageError,
    resolve_image,
    with_virtual_environment_first,
)
from localkube.probes import ProbeCounter, ProbeResult, probe_timing, run_handler
from localkube.volumes import PreparedVolume

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("launcher.py")
BACKOFF_INITIAL_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
# A container that ran this long starts its back-off afresh.
BACKOFF_RESET_SECONDS = 600.0
START_TIMEOUT_SECONDS = 30.0
STOP_WAIT_SECONDS = 10.0
DEFAULT_GRACE_SECONDS = 30.0
RETRY_INITIAL_SECONDS = 2.0


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodContext:
    """What the containers of one pod share."""

    pod: JsonObject  # the latest version seen
    address: str
    hostname: str
    hosts_file: Path
    volumes: dict[str, PreparedVolume]
    log_directory: Path
    server: str
    allocatable: dict[str, str]
    lookup: ObjectLookup
    changed: Callable[[], None]  # the pod's status needs reporting
    processes: set[int]  # process groups of the whole node, for its last-resort cleanup
    scratch_directory: Path  # the pod's files that are no volume (e.g. the image's passwd)
    # The pod's network namespace (network.py); None: the cluster's own (hostNetwork).
    network_namespace: Path | None = None

    @property
    def grace_seconds(self) -> float:
        value = self.pod["spec"].get("terminationGracePeriodSeconds")
        return DEFAULT_GRACE_SECONDS if value is None else float(value)


@dataclass
class RestartBackoff:
    delay: float | None = None
    last_update: float = 0.0

    def next_delay(self, ran_for: float) -> float:
        """Seconds to wait before the restart that follows a run of `ran_for` seconds: none
        the first time, then 10 s doubling to 5 minutes; reset after a long run."""
        now = time.monotonic()
        if ran_for >= BACKOFF_RESET_SECONDS or now - self.last_update > BACKOFF_RESET_SECONDS:
            self.delay = None
        current = self.delay or 0.0
        self.delay = (
            BACKOFF_INITIAL_SECONDS
            if self.delay is None
            else min(self.delay * 2, BACKOFF_MAX_SECONDS)
        )
        self.last_update = now
        return current


class PreparationError(Exception):
    """The container cannot be created yet; `reason` is its waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class LaunchPlan:
    arguments: list[str]
    environment: dict[str, str]
    user: int
    group: int
    supplemental_groups: list[int]
    working_directory: str
    mounts: list[dict[str, Any]]
    image: ImageConfig


@dataclass
class ContainerRunner:
    context: PodContext
    spec: JsonObject
    init: bool = False
    restart_count: int = 0
    state: JsonObject = field(default_factory=dict)
    last_state: JsonObject = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    container_id: str = ""
    image_id: str = ""
    process: asyncio.subprocess.Process | None = None
    plan: LaunchPlan | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    kill_message: str = ""

    def __post_init__(self) -> None:
        has_init = bool(self.context.pod["spec"].get("initContainers"))
        reason = "PodInitializing" if has_init else "ContainerCreating"
        self.state = {"waiting": {"reason": reason}}

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def pod_label(self) -> str:
        metadata = self.context.pod["metadata"]
        return f"{metadata['name']}_{metadata['namespace']}({metadata['uid']})"

    def status(self) -> JsonObject:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": self.image_id,
            "containerID": self.container_id or None,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": _state_patch(self.state),
            "lastState": _state_patch(self.last_state),
        }

    def _set_state(self, state: JsonObject, *, ready: bool | None = None) -> None:
        self.state = state
        if ready is not None:
            self.ready = ready
        self.context.changed()

    # ------------------------------------------------------------------------------------
    # The lifecycle

    async def run(self) -> int | None:
        """Runs (and restarts) the container until the restart policy ends it or `stop`;
        the last exit status (None when it never ran)."""
        policy = self.context.pod["spec"].get("restartPolicy", "Always")
        preparation_delay = RETRY_INITIAL_SECONDS
        exit_code: int | None = None
        while not self.stop_event.is_set():
            try:
                self.plan = await self._plan()
            except PreparationError as error:
                self._set_state({"waiting": {"reason": error.reason, "message": error.message}})
                if error.reason == "ErrImagePull":
                    await self._pause(preparation_delay)
                    self._set_state(
                        {"waiting": {"reason": "ImagePullBackOff", "message": error.message}}
                    )
                await self._pause(preparation_delay)
                preparation_delay = min(preparation_delay * 2, BACKOFF_MAX_SECONDS)
                continue
            preparation_delay = RETRY_INITIAL_SECONDS
            started_at = time.monotonic()
            exit_code = await self._attempt(self.plan)
            if self.stop_event.is_set():
                break
            restart = policy == "Always" and not self.init
            restart = restart or (policy != "Never" and exit_code != 0)
            if not restart:
                break
            delay = self.backoff.next_delay(time.monotonic() - started_at)
            self.last_state = self.state
            if delay > 0:
                self._set_state(
                    {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off {delay:g}s restarting failed "
                            f"container={self.name} pod={self.pod_label}",
                        }
                    }
                )
                await self._pause(delay)
                if self.stop_event.is_set():
                    break
            self.restart_count += 1
        return exit_code

    async def _pause(self, seconds: float) -> None:
        """Sleeps, ending early when the container is stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)

    async def stop(self, deadline: float, run_task: asyncio.Task[Any] | None) -> None:
        """preStop, SIGTERM, and SIGKILL at `deadline` (monotonic); no more restarts."""
        self.stop_event.set()
        await self.terminate(deadline, run_pre_stop=True)
        if run_task is not None:
            await asyncio.wait({run_task}, timeout=STOP_WAIT_SECONDS)
            if not run_task.done():
                run_task.cancel()
                await asyncio.wait({run_task}, timeout=STOP_WAIT_SECONDS)

    async def terminate(self, deadline: float, *, run_pre_stop: bool) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        pre_stop = (self.spec.get("lifecycle") or {}).get("preStop")
        if run_pre_stop and pre_stop:
            remaining = max(0.0, deadline - time.monotonic())
            result = await asyncio.wait_for(self._handler(pre_stop, remaining), remaining + 5)
            if not result.success:
                logger.info(
                    "preStop of %s in %s failed: %s", self.name, self.pod_label, result.message
                )
        _signal_group(process.pid, signal.SIGTERM)
        remaining = max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), remaining)
        except TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), STOP_WAIT_SECONDS)

    async def _attempt(self, plan: LaunchPlan) -> int:
        self.container_id = f"localkube://{uuid.uuid4().hex}"
        self.image_id = f"{self.spec.get('image', '')}@{plan.image.image_id}"
        self.started = False
        self.ready = False
        self.kill_message = ""
        log_path = self.context.log_directory / self.name / f"{self.restart_count}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        failure = await self._spawn(plan, log_path)
        assert self.process is not None
        process = self.process
        started_at = now_text()
        if failure is not None:
            await process.wait()
            _signal_group(process.pid, signal.SIGKILL)
            self.context.processes.discard(process.pid)
            self._set_state(
                {
                    "terminated": {
                        "exitCode": 128,
                        "reason": "StartError",
                        "message": failure,
                        "startedAt": started_at,
                        "finishedAt": now_text(),
                        "containerID": self.container_id,
                    }
                },
                ready=False,
            )
            return 128
        self._set_state({"running": {"startedAt": started_at}})
        if self.stop_event.is_set():
            _signal_group(process.pid, signal.SIGTERM)
        probes = asyncio.create_task(self._probe_all())
        try:
            exit_status = await process.wait()
        finally:
            probes.cancel()
            await asyncio.wait({probes}, timeout=STOP_WAIT_SECONDS)
        # Whatever the main process left behind in its group goes with it.
        _signal_group(process.pid, signal.SIGKILL)
        self.context.processes.discard(process.pid)
        exit_code = 128 - exit_status if exit_status < 0 else exit_status
        terminated: JsonObject = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": now_text(),
            "containerID": self.container_id,
        }
        message = self.kill_message or self._fallback_message(log_path, exit_code)
        if message:
            terminated["message"] = message
        if exit_status < 0:
            terminated["signal"] = -exit_status
        self.started = False
        self._set_state({"terminated": terminated}, ready=False)
        return exit_code

    def _fallback_message(self, log_path: Path, exit_code: int) -> str:
        if exit_code == 0 or self.spec.get("terminationMessagePolicy") != "FallbackToLogsOnError":
            return ""
        try:
            lines = log_path.read_text(errors="replace").splitlines()[-80:]
        except OSError:
            return ""
        return "\n".join(lines)[-2048:]

    # ------------------------------------------------------------------------------------
    # Starting processes

    async def _plan(self) -> LaunchPlan:
        try:
            image = resolve_image(self.spec.get("image", ""))
        except UnknownImageError as error:
            raise PreparationError("ErrImagePull", str(error)) from error
        pod = self.context.pod
        resolver = EnvironmentResolver(
            pod, self.context.lookup, self.context.server, self.context.allocatable
        )
        try:
            environment = await resolver.resolve(self.spec, image.environment)
            user, group, groups = _identity(pod, self.spec, image)
        except ContainerConfigError as error:
            raise PreparationError("CreateContainerConfigError", str(error)) from error
        environment["PATH"] = with_virtual_environment_first(environment.get("PATH", DEFAULT_PATH))
        environment.setdefault("HOSTNAME", self.context.hostname)
        environment.setdefault("HOME", _home(image, user))
        command = self.spec.get("command")
        arguments = self.spec.get("args")
        if command is None:
            words = list(image.entrypoint) + list(image.command if arguments is None else arguments)
        else:
            words = list(command) + list(arguments or [])
        mounts = self._mounts(environment, image)
        return LaunchPlan(
            arguments=expand_all(words, environment),
            environment=environment,
            user=user,
            group=group,
            supplemental_groups=groups,
            working_directory=self.spec.get("workingDir") or image.working_directory,
            mounts=mounts,
            image=image,
        )

    def _mounts(self, environment: dict[str, str], image: ImageConfig) -> list[dict[str, Any]]:
        mounts: list[dict[str, Any]] = []
        for mount in self.spec.get("volumeMounts") or []:
            volume = self.context.volumes.get(mount["name"])
            if volume is None:
                raise PreparationError(
                    "CreateContainerConfigError", f"volume {mount['name']!r} is not prepared"
                )
            source = volume.path
            sub_path = mount.get("subPath") or expand(mount.get("subPathExpr", ""), environment)
            if sub_path:
                if sub_path.startswith("/") or ".." in Path(sub_path).parts:
                    raise PreparationError(
                        "CreateContainerConfigError", f"subPath {sub_path!r} must be relative"
                    )
                source = source / sub_path
                if not source.exists():
                    source.mkdir(parents=True, exist_ok=True)
            mounts.append(
                {
                    "source": str(source),
                    "target": mount["mountPath"],
                    "read_only": bool(mount.get("readOnly")) or volume.read_only,
                }
            )
        targets = {mount["target"] for mount in mounts}
        if "/etc/hosts" not in targets:
            mounts.append({"source": str(self.context.hosts_file), "target": "/etc/hosts"})
        passwd, group = write_account_files(image, self.context.scratch_directory / self.name)
        for source, target in ((passwd, "/etc/passwd"), (group, "/etc/group")):
            if target not in targets:
                mounts.append({"source": str(source), "target": target, "read_only": True})
        # Parents before children, as the container runtime mounts them.
        return sorted(mounts, key=lambda mount: len(Path(mount["target"]).parts))

    def _specification(self, plan: LaunchPlan, status_descriptor: int) -> JsonObject:
        python_home = Path(os.path.realpath(VIRTUAL_ENVIRONMENT_BIN / "python")).parents[1]
        return {
            "mode": "start",
            "network_namespace": (
                None
                if self.context.network_namespace is None
                else str(self.context.network_namespace)
            ),
            "hostname": self.context.hostname,
            "arguments": plan.arguments,
            "environment": plan.environment,
            "user": plan.user,
            "group": plan.group,
            "supplemental_groups": plan.supplemental_groups,
            "working_directory": plan.working_directory,
            "mounts": plan.mounts,
            "expose": [str(python_home), str(REPOSITORY_ROOT)],
            "status_descriptor": status_descriptor,
        }

    async def _spawn(self, plan: LaunchPlan, log_path: Path) -> str | None:
        """Starts the process (`self.process`); the reason it could not run, or None."""
        read_end, write_end = os.pipe()
        specification = self._specification(plan, write_end)
        try:
            with log_path.open("ab") as log:
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    str(LAUNCHER),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(write_end,),
                )
        finally:
            os.close(write_end)
        self.context.processes.add(self.process.pid)
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(specification).encode())
            await self.process.stdin.drain()
            self.process.stdin.close()
            failure = await asyncio.wait_for(
                asyncio.to_thread(_read_to_end, read_end), START_TIMEOUT_SECONDS
            )
        except (TimeoutError, OSError) as error:
            _signal_group(self.process.pid, signal.SIGKILL)
            return f"the container did not start: {error or 'timed out'}"
        return failure.decode(errors="replace") or None

    async def exec_in_container(self, command: list[str], timeout: float) -> tuple[int, str]:
        """Runs `command` in the running container's namespaces, as its user, with its
        environment; (exit status, output). Killed after `timeout` seconds."""
        process = self.process
        plan = self.plan
        if process is None or process.returncode is not None or plan is None:
            return 1, "container is not running"
        read_end, write_end = os.pipe()
        specification = {
            "mode": "enter",
            "process_id": process.pid,
            "arguments": command,
            "environment": plan.environment,
            "user": plan.user,
            "group": plan.group,
            "supplemental_groups": plan.supplemental_groups,
            "working_directory": plan.working_directory,
            "status_descriptor": write_end,
        }
        try:
            command_process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                str(LAUNCHER),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(write_end,),
            )
        finally:
            os.close(write_end)
        self.context.processes.add(command_process.pid)
        try:
            output, _ = await asyncio.wait_for(
                command_process.communicate(json.dumps(specification).encode()), timeout
            )
            failure = await asyncio.wait_for(asyncio.to_thread(_read_to_end, read_end), 5)
            text = output.decode(errors="replace")
            if failure:
                text = failure.decode(errors="replace")
            code = command_process.returncode if command_process.returncode is not None else 1
            return (128 - code if code < 0 else code), text
        except TimeoutError:
            _signal_group(command_process.pid, signal.SIGKILL)
            await asyncio.wait_for(command_process.wait(), STOP_WAIT_SECONDS)
            raise
        finally:
            _signal_group(command_process.pid, signal.SIGKILL)
            self.context.processes.discard(command_process.pid)

    # ------------------------------------------------------------------------------------
    # Probes and hooks

    async def _handler(self, handler: JsonObject, timeout: float) -> ProbeResult:
        return await run_handler(
            handler,
            container=self.spec,
            pod_address=self.context.address,
            timeout=timeout,
            run_exec=self.exec_in_container,
        )

    async def _probe_all(self) -> None:
        post_start = (self.spec.get("lifecycle") or {}).get("postStart")
        if post_start:
            result = await self._handler(post_start, self.context.grace_seconds)
            if not result.success:
                await self._kill_for_restart(f"PostStartHookError: {result.message}")
                return
        startup = self.spec.get("startupProbe")
        if startup and not self.init and not await self._probe_loop(startup, "Startup"):
            return
        self.started = True
        readiness = self.spec.get("readinessProbe")
        if self.init or not readiness:
            self.ready = not self.init
        self.context.changed()
        if self.init:
            return
        async with asyncio.TaskGroup() as group:
            if readiness:
                group.create_task(self._probe_loop(readiness, "Readiness"))
            liveness = self.spec.get("livenessProbe")
            if liveness:
                group.create_task(self._probe_loop(liveness, "Liveness"))

    async def _probe_loop(self, probe: JsonObject, kind: str) -> bool:
        """Runs the probe for the container's life (a startup probe: until it passes, then
        True). Readiness sets `ready`; a failing liveness or startup probe restarts."""
        initial_delay, period, timeout = probe_timing(probe)
        counter = ProbeCounter.of(probe)
        await asyncio.sleep(initial_delay)
        while True:
            began = time.monotonic()
            result = await self._handler(probe, timeout)
            verdict = counter.record(result.success)
            if not result.success:
                logger.debug(
                    "%s probe of %s in %s failed: %s",
                    kind,
                    self.name,
                    self.pod_label,
                    result.message,
                )
            if kind == "Startup" and verdict is True:
                return True
            if kind == "Readiness" and verdict is not None:
                self.ready = verdict
                self.context.changed()
            if kind in ("Startup", "Liveness") and verdict is False:
                grace = probe.get("terminationGracePeriodSeconds")
                await self._kill_for_restart(
                    f"Container {self.name} failed {kind.lower()} probe, will be restarted: "
                    f"{result.message}",
                    None if grace is None else float(grace),
                )
                return False
            await asyncio.sleep(max(0.0, period - (time.monotonic() - began)))

    async def _kill_for_restart(self, message: str, grace: float | None = None) -> None:
        logger.info("%s in %s: %s", self.name, self.pod_label, message)
        self.kill_message = message
        self.ready = False
        self.context.changed()
        seconds = self.context.grace_seconds if grace is None else grace
        await self.terminate(time.monotonic() + seconds, run_pre_stop=True)


def _state_patch(state: JsonObject) -> JsonObject | None:
    """A container state for a strategic merge patch: the other two kinds removed."""
    if not state:
        return None
    return {kind: state.get(kind) for kind in ("waiting", "running", "terminated")}


def _read_to_end(descriptor: int) -> bytes:
    chunks: list[bytes] = []
    try:
        while True:
            chunk = os.read(descriptor, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(descriptor)


def _signal_group(process_group: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process_group, number)


def _identity(
    pod: JsonObject, container: JsonObject, image: ImageConfig
) -> tuple[int, int, list[int]]:
    """(user, group, supplemental groups) as a container runtime decides them: runAsUser from
    the container's securityContext, else the pod's, else the image's USER, else root;
    runAsGroup, else (with runAsUser) that user's primary group, else the USER's group, else
    the user's primary group. fsGroup joins the supplemental groups. Accounts are looked up in
    the image's passwd (this host's, plus what its Dockerfile adds)."""
    pod_context = pod["spec"].get("securityContext") or {}
    container_context = container.get("securityContext") or {}

    def setting(name: str) -> Any:
        if container_context.get(name) is not None:
            return container_context[name]
        return pod_context.get(name)

    image_user, _, image_group = image.user.partition(":")
    if setting("runAsUser") is not None:
        user_id = int(setting("runAsUser"))
    elif image_user:
        user_id = _user_id(image, image_user)
    else:
        user_id = 0
    if setting("runAsGroup") is not None:
        group_id = int(setting("runAsGroup"))
    elif setting("runAsUser") is None and image_group:
        group_id = _group_id(image, image_group)
    else:
        group_id = _primary_group(image, user_id)
    if setting("runAsNonRoot") and user_id == 0:
        raise ContainerConfigError("container has runAsNonRoot and image will run as root")
    groups = [int(group) for group in pod_context.get("supplementalGroups") or []]
    if pod_context.get("fsGroup") is not None:
        groups.append(int(pod_context["fsGroup"]))
    return user_id, group_id, sorted(set(groups))


def _user_id(image: ImageConfig, text: str) -> int:
    if text.isdigit():
        return int(text)
    for user in image.users:
        if user.name == text:
            return user.user_id
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError as error:
        raise ContainerConfigError(
            f"unable to find user {text}: no matching entries in passwd file"
        ) from error


def _group_id(image: ImageConfig, text: str) -> int:
    number = image.group_id(text)
    if number is not None:
        return number
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError as error:
        raise ContainerConfigError(
            f"unable to find group {text}: no matching entries in group file"
        ) from error


def _primary_group(image: ImageConfig, user_id: int) -> int:
    entry = image.passwd_entry(user_id)
    if entry is not None:
        return image.group_id(entry.group) or 0
    try:
        return pwd.getpwuid(user_id).pw_gid
    except KeyError:
        return 0


def _home(image: ImageConfig, user_id: int) -> str:
    entry = image.passwd_entry(user_id)
    if entry is not None:
        return entry.home
    try:
        return pwd.getpwuid(user_id).pw_dir
    except KeyError:
        return "/"


def write_account_files(image: ImageConfig, directory: Path) -> tuple[Path, Path]:
    """The image's /etc/passwd and /etc/group: this host's, plus the Dockerfile's accounts."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name, added in (("passwd", image.passwd_lines()), ("group", image.group_lines())):
        host = Path("/etc", name).read_text().splitlines()
        taken = {line.split(":", 1)[0] for line in added}
        lines = [line for line in host if line.split(":", 1)[0] not in taken] + added
        path = directory / name
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o644)
        files.append(path)
    return files[0], files[1]
