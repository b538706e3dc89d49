"""Start and stop a real Kubernetes control plane as processes on 127.0.0.1.

The end-to-end tests need a Kubernetes API that behaves like a real one (RBAC, admission,
service-account tokens, the controllers that turn a StatefulSet into Pods), and this machine has
no container engine to run kind in. So etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, built from Go modules by e2e/controlplane/build.sh, run here as plain processes:
each listens on 127.0.0.1 (the API server also on the address it advertises to pods, inside the
cluster's own network namespace), on ports free when it starts, and writes its log to a file in
the control plane's directory. Every wait has a deadline, and `ControlPlane.stop` ends every
process it started by its PID.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from localkube.certificates import (
    FRONT_PROXY_CLIENT,
    CertificateAndKey,
    ControlPlaneCertificates,
    write_control_plane_certificates,
)
from taskraft.local_cluster import HOST, STOP_TIMEOUT_S, free_port, ports_are_free, wait_until

SERVICE_CLUSTER_IP_RANGE = ipaddress.IPv4Network("10.96.0.0/16")
# The cluster IP of the `kubernetes` Service: the first address of the service range.
KUBERNETES_SERVICE_IP = SERVICE_CLUSTER_IP_RANGE.network_address + 1
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT_S = 180.0
_REQUEST_TIMEOUT_S = 5.0
_LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 20

# The processes, in the order they start; `stop` ends them in the reverse order, so that no
# component loses its API server (nor the API server its etcd) while it shuts down.
ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"


class ControlPlaneError(RuntimeError):
    """The control plane did not start; the message ends with the failing process's log."""


@dataclass
class ControlPlane:
    """A running control plane, from `start_control_plane`."""

    directory: Path  # everything lives here: certificates, etcd's data, logs, kubeconfigs
    server: str  # "https://127.0.0.1:PORT"
    kubeconfig: Path  # the administrator's (client certificate in group system:masters)
    certificate_authority: Path  # the PEM authority that signed every certificate here
    certificates: ControlPlaneCertificates | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: every request of a ServiceAccount outside kube-system,
        one JSON event a line (AUDIT_POLICY)."""
        return self.directory / "audit.log"

    def log_path(self, name: str) -> Path:
        """The log file of process `name` (e.g. "kube-apiserver")."""
        return self.directory / f"{name}.log"

    def log_tail(self, name: str, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def is_running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM each process by PID, last started first; SIGKILL whatever outlives timeout_s.

        The controller manager and the scheduler are stopped together, then the API server,
        then etcd.
        """
        stages = [[CONTROLLER_MANAGER, SCHEDULER], [APISERVER], [ETCD]]
        for stage in stages:
            running = [self.processes[n] for n in stage if n in self.processes]
            for process in running:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in running:
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    certificate_authority: Path,
    client: CertificateAndKey,
    user: str,
) -> Path:
    """A kubeconfig with its certificates inline, written as JSON (which is YAML too)."""

    def inline(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode("ascii")

    configuration = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": inline(certificate_authority),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": inline(client.certificate),
                    "client-key-data": inline(client.private_key),
                },
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    path.write_text(json.dumps(configuration, indent=2) + "\n")
    return path


def _free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that all bind right now."""
    for _ in range(_PORT_ATTEMPTS):
        ports = sorted({free_port() for _ in range(count)})
        if len(ports) == count and ports_are_free(ports):
            return ports
    raise ControlPlaneError(f"no {count} free ports on {HOST} after {_PORT_ATTEMPTS} tries")


def _opener(
    certificate_authority: Path | None, client: CertificateAndKey | None
) -> urllib.request.OpenerDirector:
    """HTTP(S) to this machine only: no proxy from the environment; TLS checked by the CA."""
    if certificate_authority is None:
        # Plain HTTP, or a component's own self-signed serving certificate (its /healthz).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(certificate_authority))
    if client is not None:
        context.load_cert_chain(str(client.certificate), str(client.private_key))
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )


def _get(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, bytes] | None:
    """The status and body of a GET, or None when nothing answers (yet)."""
    try:
        with opener.open(url, timeout=_REQUEST_TIMEOUT_S) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, http.client.HTTPException):
        return None


def _answers(opener: urllib.request.OpenerDirector, url: str, body: bytes | None = None) -> bool:
    """Whether GET url answers 200 (with exactly `body`, when given)."""
    answer = _get(opener, url)
    if answer is None or answer[0] != 200:
        return False
    return body is None or answer[1].strip() == body


def _etcd_is_healthy(opener: urllib.request.OpenerDirector, url: str) -> bool:
    answer = _get(opener, url)
    if answer is None or answer[0] != 200:
        return False
    try:
        health = json.loads(answer[1])
    except ValueError:
        return False
    return isinstance(health, dict) and health.get("health") == "true"


class _Starter:
    """Starts the processes of one control plane and waits for them, failing with a log."""

    def __init__(self, control_plane: ControlPlane, timeout_s: float) -> None:
        self.control_plane = control_plane
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s

    def start(self, name: str, command: Sequence[str]) -> None:
        with self.control_plane.log_path(name).open("ab") as log:
            self.control_plane.processes[name] = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.control_plane.directory,
                # Its own process group: a Ctrl-C meant for the caller reaches these processes
                # as one SIGTERM each, from `stop`.
                start_new_session=True,
            )

    def failure(self, name: str, message: str) -> ControlPlaneError:
        tail = self.control_plane.log_tail(name)
        log = self.control_plane.log_path(name)
        return ControlPlaneError(f"{message}; the end of {log}:\n{tail}")

    def check_running(self) -> None:
        for name, process in self.control_plane.processes.items():
            code = process.poll()
            if code is not None:
                raise self.failure(name, f"{name} exited with status {code} while starting")

    def wait(self, condition: Callable[[], bool], what: str, blame: str) -> None:
        """Until `condition` holds; the log of `blame` if it does not by the deadline."""

        def holds() -> bool:
            self.check_running()
            return condition()

        remaining = max(0.0, self.deadline - time.monotonic())
        try:
            wait_until(holds, what, remaining)
        except TimeoutError as error:
            message = f"no {what} within {self.timeout_s:g} s of the start"
            raise self.failure(blame, message) from error


# What the API server records: the requests of the workloads' ServiceAccounts (the operator's
# among them), at Metadata level (who, which verb on which resource, the answer's code), once
# each is answered. Not the controllers' own traffic (ServiceAccounts of kube-system), which
# would dwarf it.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted", "Panic"],
    "rules": [
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def start_control_plane(
    directory: Path,
    *,
    binaries: Path,
    timeout_s: float = START_TIMEOUT_S,
    advertise_address: str = HOST,
) -> ControlPlane:
    """Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler in `directory`.

    The API server listens on 127.0.0.1 and, when `advertise_address` is another address (the
    cluster network's gateway, which pods reach), on that address too: it publishes it as the
    endpoint of the `kubernetes` Service. The other processes listen on 127.0.0.1 only.

    `binaries` holds the four executables (e2e/.bin after e2e/controlplane/build.sh). Returns
    once the API server is ready, the controller manager has created the `default`
    ServiceAccount of namespace `default`, and the scheduler answers its health check. On a
    failure, stops whatever it started and raises ControlPlaneError.
    """
    directory = directory.resolve()
    binaries = binaries.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for name in (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER):
        if not os.access(binaries / name, os.X_OK):
            raise ControlPlaneError(f"{binaries / name} is missing: run e2e/controlplane/build.sh")

    certificates = write_control_plane_certificates(
        directory / "pki",
        kubernetes_service_ip=KUBERNETES_SERVICE_IP,
        advertise_address=ipaddress.ip_address(advertise_address),
    )
    authority = certificates.certificate_authority.certificate
    front_proxy = certificates.front_proxy_certificate_authority
    (
        etcd_client_port,
        etcd_peer_port,
        apiserver_port,
        controller_manager_port,
        scheduler_port,
    ) = _free_ports(5)
    server = f"https://{HOST}:{apiserver_port}"
    kubeconfig = write_kubeconfig(
        directory / "admin.kubeconfig",
        server=server,
        certificate_authority=authority,
        client=certificates.admin,
        user="kubernetes-admin",
    )
    controller_manager_kubeconfig = write_kubeconfig(
        directory / "controller-manager.kubeconfig",
        server=server,
        certificate_authority=authority,
        client=certificates.controller_manager,
        user="system:kube-controller-manager",
    )
    scheduler_kubeconfig = write_kubeconfig(
        directory / "scheduler.kubeconfig",
        server=server,
        certificate_authority=authority,
        client=certificates.scheduler,
        user="system:kube-scheduler",
    )
    control_plane = ControlPlane(
        directory=directory,
        server=server,
        kubeconfig=kubeconfig,
        certificate_authority=authority,
        certificates=certificates,
    )
    audit_policy = directory / "audit-policy.json"
    audit_policy.write_text(json.dumps(AUDIT_POLICY, indent=2) + "\n")
    starter = _Starter(control_plane, timeout_s)
    try:
        etcd_client_url = f"http://{HOST}:{etcd_client_port}"
        etcd_peer_url = f"http://{HOST}:{etcd_peer_port}"
        starter.start(
            ETCD,
            [
                str(binaries / ETCD),
                "--name=local",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls={etcd_client_url}",
                f"--advertise-client-urls={etcd_client_url}",
                f"--listen-peer-urls={etcd_peer_url}",
                f"--initial-advertise-peer-urls={etcd_peer_url}",
                f"--initial-cluster=local={etcd_peer_url}",
                "--initial-cluster-state=new",
                # A test cluster: losing its data on a power cut is fine, slow disks are not.
                "--unsafe-no-fsync",
            ],
        )
        plain = _opener(None, None)
        starter.wait(
            lambda: _etcd_is_healthy(plain, f"{etcd_client_url}/health"),
            "healthy etcd",
            ETCD,
        )

        starter.start(
            APISERVER,
            [
                str(binaries / APISERVER),
                f"--etcd-servers={etcd_client_url}",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={control_plane.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1",
                # One listening address: every address when pods must reach it (inside the
                # cluster's own network namespace, nothing else can).
                f"--bind-address={HOST if advertise_address == HOST else '0.0.0.0'}",
                f"--advertise-address={advertise_address}",
                f"--secure-port={apiserver_port}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--client-ca-file={authority}",
                f"--tls-cert-file={certificates.apiserver.certificate}",
                f"--tls-private-key-file={certificates.apiserver.private_key}",
                f"--kubelet-client-certificate={certificates.apiserver_kubelet_client.certificate}",
                f"--kubelet-client-key={certificates.apiserver_kubelet_client.private_key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={certificates.service_account.public_key}",
                f"--service-account-signing-key-file={certificates.service_account.private_key}",
                f"--requestheader-client-ca-file={front_proxy.certificate}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={certificates.front_proxy_client.certificate}",
                f"--proxy-client-key-file={certificates.front_proxy_client.private_key}",
                # A loopback address may not be an endpoint (validation forbids it): with only
                # 127.0.0.1, the `kubernetes` Service keeps no endpoint, rather than failing
                # to write one every 10 seconds.
                *(["--endpoint-reconciler-type=none"] if advertise_address == HOST else []),
            ],
        )
        administrator = _opener(authority, certificates.admin)
        starter.wait(
            lambda: _answers(administrator, f"{server}/readyz", b"ok"),
            "ready kube-apiserver",
            APISERVER,
        )

        starter.start(
            CONTROLLER_MANAGER,
            [
                str(binaries / CONTROLLER_MANAGER),
                f"--kubeconfig={controller_manager_kubeconfig}",
                f"--authentication-kubeconfig={controller_manager_kubeconfig}",
                f"--authorization-kubeconfig={controller_manager_kubeconfig}",
                f"--bind-address={HOST}",
                f"--secure-port={controller_manager_port}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={certificates.service_account.private_key}",
                f"--root-ca-file={authority}",
                f"--cluster-signing-cert-file={authority}",
                f"--cluster-signing-key-file={certificates.certificate_authority.private_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            ],
        )
        starter.start(
            SCHEDULER,
            [
                str(binaries / SCHEDULER),
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                f"--bind-address={HOST}",
                f"--secure-port={scheduler_port}",
                "--leader-elect=false",
            ],
        )
        default_service_account = f"{server}/api/v1/namespaces/default/serviceaccounts/default"
        starter.wait(
            lambda: _answers(administrator, default_service_account),
            "default ServiceAccount in namespace default",
            CONTROLLER_MANAGER,
        )
        starter.wait(
            lambda: _answers(plain, f"https://{HOST}:{scheduler_port}/healthz", b"ok"),
            "healthy kube-scheduler",
            SCHEDULER,
        )
    except BaseException:
        control_plane.stop()
        raise
    return control_plane


__all__ = [
    "ControlPlane",
    "ControlPlaneError",
    "start_control_plane",
    "write_kubeconfig",
]
