"""Backups of snapshots to a PVC (`spec.backup.claimName`): the planner's Job, its manifest, and
the Job's inline download script run against a real `taskraft serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
from operator_support import free_base_port
from planner_scenarios import (
    Operator,
    SimCluster,
    actions_of,
    desired_spec,
    running_cluster,
)
from test_crd import KUBERNETES_VERSION, queue_cluster, status_errors

from taskraft.certificates import CertificateAuthority
from taskraft.local_cluster import LocalCluster
from taskraft.tls import TlsFiles
from taskraft_operator import resource
from taskraft_operator.model import (
    BackupRecord,
    ClusterStatus,
    SnapshotPolicy,
    status_from_dict,
    status_to_dict,
)
from taskraft_operator.observe import observed_job
from taskraft_operator.planner import (
    BACKUP_BACKOFF_LIMIT,
    BACKUP_MOUNT_PATH,
    EnsureObject,
    Nothing,
    TakeSnapshot,
    backup_job_manifest,
    backup_job_name,
)

CLAIM = "qc-backups"


def backup_jobs(plans: list[Any]) -> list[EnsureObject]:
    return [action for action in actions_of(plans, EnsureObject) if action.kind == "Job"]


def scheduled(**overrides: Any) -> Operator:
    return running_cluster(
        snapshots=SnapshotPolicy(schedule="*/10 * * * *"), backup_claim_name=CLAIM, **overrides
    )


def run_until_backup_recorded(operator: Operator, max_steps: int = 300) -> list[Any]:
    plans = []
    for _ in range(max_steps):
        plans.append(operator.step())
        backup = operator.status.last_backup
        if backup is not None and backup.state != "Running":
            return plans
    raise AssertionError("no backup finished")


# ---------------------------------------------------------------------------------------------
# The planner


def test_a_completed_scheduled_round_is_backed_up_once() -> None:
    operator = scheduled()
    plans = run_until_backup_recorded(operator)
    jobs = backup_jobs(plans)
    assert len(jobs) == 1
    snapshot = operator.status.last_snapshot
    assert snapshot is not None and snapshot.trigger == "schedule"
    job = jobs[0]
    assert job.name == backup_job_name("qc", snapshot.index) == f"qc-backup-{snapshot.index}"
    # The Job comes after the round: every member had been asked first.
    first_job = next(i for i, result in enumerate(plans) if result.action is job)
    assert len(actions_of(plans[:first_job], TakeSnapshot)) == 3
    assert not actions_of(plans[first_job:], TakeSnapshot)
    # It downloads from the pod that took the recorded snapshot (the leader, asked first).
    url = job.manifest["spec"]["template"]["spec"]["containers"][0]["command"][3]
    assert url == f"http://{snapshot.pod}.qc-peers.queues.svc:7102/v1/snapshot"
    backup = operator.status.last_backup
    assert backup == BackupRecord(
        index=snapshot.index,
        term=snapshot.term,
        pod=snapshot.pod,
        job=job.name,
        state="Succeeded",
        started_at=backup.started_at,
        finished_at=backup.finished_at,
    )
    assert backup.finished_at is not None and backup.finished_at > backup.started_at
    degraded = operator.status.condition("Degraded")
    assert degraded is not None and degraded.status == "False"
    assert status_errors(status_to_dict(operator.status)) == []
    # Nothing more until the next round brings another snapshot.
    later = operator.run_steps(20)
    assert not backup_jobs(later)
    assert isinstance(later[-1].action, Nothing)


def test_every_round_with_a_new_snapshot_gets_its_own_backup() -> None:
    operator = scheduled()
    # 25 minutes: two or three 10-minute slots, each a round and then a backup.
    plans = operator.run_steps(300)
    jobs = backup_jobs(plans)
    slots = {record.token for record in operator.status.snapshots}
    assert len(jobs) == len(slots) >= 2
    assert len({job.name for job in jobs}) == len(jobs)


def test_no_second_job_while_one_runs() -> None:
    operator = scheduled()
    operator.sim.backup_ticks = 10_000  # the Job never finishes
    # The simulator raises Violation on a second Job while one runs.
    plans = operator.run_steps(400)
    jobs = backup_jobs(plans)
    assert len(jobs) == 1
    # Rounds still happen; their snapshots wait for the running Job.
    assert len({record.token for record in operator.status.snapshots}) >= 2
    backup = operator.status.last_backup
    assert backup is not None and backup.state == "Running" and backup.job == jobs[0].name
    # The planner looks again while the Job runs (nothing else announces its end).
    idle = [result.action for result in plans[-20:] if isinstance(result.action, Nothing)]
    assert idle and all(a.recheck_after_s is not None and a.recheck_after_s <= 30 for a in idle)


def test_a_failed_job_degrades_the_cluster_with_an_event() -> None:
    operator = scheduled()
    operator.sim.fail_backups = True
    plans = run_until_backup_recorded(operator)
    backup = operator.status.last_backup
    assert backup is not None and backup.state == "Failed"
    degraded = operator.status.condition("Degraded")
    assert degraded is not None
    assert (degraded.status, degraded.reason) == ("True", "BackupFailed")
    assert backup.job in degraded.message
    assert operator.status.phase == "Degraded"
    events = [event for result in plans for event in result.events]
    assert [e.type for e in events if e.reason == "BackupFailed"] == ["Warning"]
    # The next round's snapshot is backed up anew; its success clears the condition.
    operator.sim.fail_backups = False
    plans = operator.run_steps(300)
    assert backup_jobs(plans)
    assert operator.status.last_backup is not None
    assert operator.status.last_backup.state == "Succeeded"
    degraded = operator.status.condition("Degraded")
    assert degraded is not None and degraded.status == "False"


def test_no_backup_without_a_claim() -> None:
    operator = running_cluster(snapshots=SnapshotPolicy(schedule="*/10 * * * *"))
    plans = operator.run_steps(300)
    assert actions_of(plans, TakeSnapshot)
    assert not backup_jobs(plans)
    assert operator.status.last_backup is None


def test_an_on_demand_snapshot_is_backed_up_and_a_lost_job_is_ensured_again() -> None:
    operator = running_cluster(backup_claim_name=CLAIM)
    operator.change(snapshot_request="r1")
    # The Job's creation is lost (the handler died after writing the status).
    plans = []
    for _ in range(20):
        plans.append(operator.step())
        if operator.status.last_backup is not None:
            break
    assert operator.status.last_backup is not None
    assert backup_jobs(plans)
    operator.sim.manifests.pop(("Job", operator.status.last_backup.job))
    operator.sim.jobs_running.clear()
    plans = run_until_backup_recorded(operator)
    assert len(backup_jobs(plans)) == 1
    assert operator.status.last_backup.state == "Succeeded"


def test_paused_clusters_start_no_backup() -> None:
    operator = Operator(SimCluster(), desired_spec(backup_claim_name=CLAIM))
    operator.run()
    operator.change(snapshot_request="r1", paused=True)
    plans = operator.run_steps(20)
    assert not backup_jobs(plans) and not actions_of(plans, TakeSnapshot)


def test_the_backup_record_survives_json() -> None:
    operator = scheduled()
    run_until_backup_recorded(operator)
    status = operator.status
    assert isinstance(status, ClusterStatus) and status.last_backup is not None
    assert status_from_dict(json.loads(json.dumps(status_to_dict(status)))) == status


def test_the_claim_name_reaches_the_desired_spec() -> None:
    body = queue_cluster(backup={"claimName": CLAIM})
    assert resource.desired_spec_from_body(body).backup_claim_name == CLAIM
    assert resource.desired_spec_from_body(queue_cluster()).backup_claim_name is None


def test_observed_jobs_by_their_conditions() -> None:
    def job(**status: Any) -> dict[str, Any]:
        return {"metadata": {"name": "qc-backup-7"}, "status": status}

    running = observed_job(job(active=1))
    assert (running.succeeded, running.failed, running.finished) == (False, False, False)
    done = observed_job(job(succeeded=1, conditions=[{"type": "Complete", "status": "True"}]))
    assert done.succeeded and not done.failed
    failed = observed_job(job(failed=3, conditions=[{"type": "Failed", "status": "True"}]))
    assert failed.failed and not failed.succeeded


# ---------------------------------------------------------------------------------------------
# The Job manifest


def manifest() -> dict[str, Any]:
    return backup_job_manifest(desired_spec(backup_claim_name=CLAIM), pod="qc-1", index=42)


def test_the_job_manifest_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(manifest(), KUBERNETES_VERSION, strict=True)


def test_the_job_runs_the_node_image_as_non_root_with_only_the_claim_writable() -> None:
    job = manifest()
    assert job["metadata"]["name"] == "qc-backup-42"
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == "qc"
    spec = job["spec"]
    assert spec["backoffLimit"] == BACKUP_BACKOFF_LIMIT == 2
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    # The Services and the PDB select the node pods by these labels: not the backup's pod.
    labels = spec["template"]["metadata"]["labels"]
    assert labels.get("app.kubernetes.io/name") != "taskraft"
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["image"] == "taskraft:0.1.0"
    assert container["command"][:2] == ["python", "-c"]
    assert container["command"][3:] == [
        "http://qc-1.qc-peers.queues.svc:7102/v1/snapshot",
        BACKUP_MOUNT_PATH,
        "qc",
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["volumeMounts"] == [{"name": "backup", "mountPath": BACKUP_MOUNT_PATH}]
    assert pod["volumes"] == [{"name": "backup", "persistentVolumeClaim": {"claimName": CLAIM}}]


# ---------------------------------------------------------------------------------------------
# The Job's script against a real node


def _post(url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def test_the_job_script_downloads_and_verifies_a_real_snapshot(tmp_path: Path) -> None:
    command = manifest()["spec"]["template"]["spec"]["containers"][0]["command"]
    script = command[2]
    with LocalCluster(
        1, base_port=free_base_port(1), data_directory=tmp_path / "node", tick_interval_ms=30
    ) as cluster:
        cluster.start()
        node = cluster.node_ids[0]
        cluster.wait_ready(timeout_s=30)
        base = f"http://{cluster.node(node).http_address}"
        taken = _post(f"{base}/v1/snapshot")
        backup = tmp_path / "backup"
        backup.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", script, f"{base}/v1/snapshot", str(backup), "qc"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        with urllib.request.urlopen(f"{base}/v1/snapshot", timeout=30) as response:
            headers = dict(response.headers)
            served = response.read()
    index = int(headers["X-Taskraft-Snapshot-Index"])
    term = int(headers["X-Taskraft-Snapshot-Term"])
    assert index == taken["index"] and term == taken["term"]
    names = sorted(path.name for path in backup.iterdir())
    assert names == [f"qc-{index}-{term}.json", f"qc-{index}-{term}.snapshot"]
    data = (backup / f"qc-{index}-{term}.snapshot").read_bytes()
    assert data == served
    assert f"{zlib.crc32(data):08x}" == headers["X-Taskraft-Snapshot-Crc32"]
    meta = json.loads((backup / f"qc-{index}-{term}.json").read_text())
    assert meta["index"] == index and meta["term"] == term
    assert meta["crc32"] == headers["X-Taskraft-Snapshot-Crc32"]
    assert meta["size_bytes"] == len(data)
    assert meta["headers"] == {
        name: headers[name]
        for name in (
            "X-Taskraft-Snapshot-Index",
            "X-Taskraft-Snapshot-Term",
            "X-Taskraft-Snapshot-Crc32",
        )
    }
    assert f"index {index}" in result.stdout


def test_the_job_of_a_secured_cluster_sends_the_admin_token_and_trusts_its_authority() -> None:
    desired = desired_spec(backup_claim_name=CLAIM, tls_secret_name="qc-tls")
    job = backup_job_manifest(desired, pod="qc-1", index=42)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][3] == "https://qc-1.qc-peers.queues.svc:7102/v1/snapshot"
    environment = {variable["name"]: variable for variable in container["env"]}
    assert environment["TASKRAFT_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "qc-credentials", "key": "admin-token"}
    }
    assert environment["TASKRAFT_TLS_CA"]["value"] == "/etc/taskraft-tls/ca.crt"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    # The authority only: the Job never holds the nodes' private key.
    assert volumes["tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    open_job = backup_job_manifest(
        replace(desired, authentication=False, tls_secret_name=None), pod="qc-1", index=42
    )
    open_container = open_job["spec"]["template"]["spec"]["containers"][0]
    assert open_container["command"][3].startswith("http://")
    assert [variable["name"] for variable in open_container["env"]] == ["PYTHONDONTWRITEBYTECODE"]


def test_the_job_script_downloads_over_tls_with_the_admin_token(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path / "pki", "ca", "backup-test-ca")
    node = authority.issue_node(tmp_path / "pki")
    admin_token = "backup-admin-" + "a" * 32
    tokens = tmp_path / "tokens"
    tokens.write_text(f"operator admin {admin_token}\napplications client {'c' * 40}\n")
    script = manifest()["spec"]["template"]["spec"]["containers"][0]["command"][2]
    with LocalCluster(
        1,
        base_port=free_base_port(1),
        data_directory=tmp_path / "node",
        tick_interval_ms=30,
        tls=TlsFiles(node.certificate, node.private_key, authority.files.certificate),
        extra_arguments=["--auth-token-file", str(tokens)],
        http_token=admin_token,
    ) as cluster:
        cluster.start()
        cluster.wait_ready(timeout_s=30)
        url = cluster.http_url(cluster.node_ids[0], "/v1/snapshot")
        assert url.startswith("https://")
        backup = tmp_path / "backup"
        backup.mkdir()

        def run(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-c", script, url, str(backup), "qc"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={"PATH": os.environ.get("PATH", ""), **environment},
            )

        trusted = str(authority.files.certificate)
        refused = run({"TASKRAFT_TLS_CA": trusted})
        assert refused.returncode != 0 and "401" in refused.stderr
        wrong = run({"TASKRAFT_TLS_CA": trusted, "TASKRAFT_TOKEN": "applications-" + "c" * 40})
        assert wrong.returncode != 0
        distrustful = run({"TASKRAFT_TOKEN": admin_token})
        assert distrustful.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in distrustful.stderr
        assert list(backup.iterdir()) == []
        done = run({"TASKRAFT_TLS_CA": trusted, "TASKRAFT_TOKEN": admin_token})
        assert done.returncode == 0, done.stderr
    assert sorted(path.suffix for path in backup.iterdir()) == [".json", ".snapshot"]


def test_the_job_script_fails_without_leaving_a_file(tmp_path: Path) -> None:
    """A wrong crc32 (served by a stand-in) exits non-zero and leaves nothing behind."""
    import http.server
    import threading

    body = b"not what the checksum says"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("X-Taskraft-Snapshot-Index", "9")
            self.send_header("X-Taskraft-Snapshot-Term", "2")
            self.send_header("X-Taskraft-Snapshot-Crc32", "00000000")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/snapshot"
        script = manifest()["spec"]["template"]["spec"]["containers"][0]["command"][2]
        result = subprocess.run(
            [sys.executable, "-c", script, url, str(tmp_path), "qc"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert result.returncode != 0
    assert "crc32 mismatch" in result.stderr
    assert list(tmp_path.iterdir()) == []
