"""Real `taskraft serve` processes with a cluster secret (`--cluster-secret-file`).

- A 3-node cluster with a secret elects a leader and commits. While a client keeps enqueuing,
  processes that cannot prove the secret connect to a node's peer port: random bytes, a
  handshake followed by a Raft message (no secret), a handshake and challenge followed by a
  wrong proof, and a real node of a second cluster, started with another secret, whose
  configuration points at this cluster's peer address. Each connection is closed, the node's
  `taskraft_peer_handshakes_refused_total` counter rises for the reason, and enqueues keep
  succeeding.
- A process that knows the secret but claims a node id outside the configuration is refused
  (`unknown_sender`), while a member's id is admitted.
- The cluster survives a leader restart: the nodes reconnect, authenticate again and commit.
- A secret file that is too short is a configuration error (exit status 2), and
  `--print-config` shows the file's path, never the secret.

Every wait is on a condition with a deadline; no test sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_cluster import (
    DEADLINE_S,
    SHUTDOWN_TIMEOUT_MS,
    ClusterFactory,
    client,
    free_base_port,
    metric,
    wait_caught_up,
    wait_until,
)

from taskraft.local_cluster import LocalCluster
from taskraft.peer import (
    ChallengeResponseReceiver,
    PeerChallenge,
    PeerChallengeResponse,
    PeerHandshake,
    PeerProof,
    ProofDirection,
    encode_challenge,
    encode_handshake,
    encode_message,
    encode_proof,
    handshake_proof,
)
from taskraft.raft import NodeId, ReadIndexRequest, Term

pytestmark = pytest.mark.timeout(180)

def write_secret(path: Path, secret: str | None = None) -> Path:
    path.write_text((secret or secrets.token_urlsafe(48)) + "\n")
    path.chmod(0o600)
    return path


def secret_of(path: Path) -> bytes:
    return path.read_bytes().strip()


def refused(cluster: LocalCluster, node_id: str, reason: str, side: str = "incoming") -> float:
    return metric(
        cluster, node_id, "taskraft_peer_handshakes_refused_total", side=side, reason=reason
    )


class Enqueuer:
    """A client enqueuing in a loop on its own thread; counts successes and failures."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._servers = cluster.servers
        self.succeeded = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with client(self._servers) as queue_client:
            queue_client.create_queue("work")
            sequence = 0
            while not self._stop.is_set():
                try:
                    queue_client.enqueue("work", b"task %d" % sequence)
                    self.succeeded += 1
                except Exception as error:
                    self.failures.append(error)
                sequence += 1

    def wait_for_more(self, count: int = 20) -> None:
        """Wait until `count` more enqueues succeeded."""
        target = self.succeeded + count
        wait_until(lambda: self.succeeded >= target, f"{count} more enqueues", DEADLINE_S)

    @contextlib.contextmanager
    def running(self) -> Iterator[Enqueuer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(DEADLINE_S)


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    connection = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
    return connection


def closed_by_node(connection: socket.socket) -> bytes:
    """Everything the node wrote until it closed the connection."""
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := connection.recv(65536):
            received += chunk
    connection.close()
    return received


def challenge(connection: socket.socket, sender: str, nonce: bytes) -> PeerChallengeResponse:
    """Send a handshake and a challenge as `sender`; the node's answer."""
    connection.sendall(
        encode_handshake(PeerHandshake(sender=NodeId(sender)))
        + encode_challenge(PeerChallenge(nonce))
    )
    answers = ChallengeResponseReceiver()
    while True:
        event = answers.next_event()
        if isinstance(event, PeerChallengeResponse):
            return event
        assert event is None, "the node closed the connection instead of answering"
        answers.receive_data(connection.recv(1024))


def test_processes_without_the_secret_are_refused_while_the_cluster_commits(
    clusters: ClusterFactory, tmp_path: Path
) -> None:
    secret_file = write_secret(tmp_path / "cluster.secret")
    cluster = clusters.start(3, extra_arguments=["--cluster-secret-file", str(secret_file)])
    target = "n2"
    peer_address = cluster.node(target).peer_address
    assert metric(cluster, target, "taskraft_peer_handshakes_authenticated_total", side="incoming")

    with Enqueuer(cluster).running() as enqueuer:
        enqueuer.wait_for_more()

        # (a) random bytes
        connection = connect(peer_address)
        connection.sendall(os.urandom(4096))
        assert closed_by_node(connection) == b""
        wait_until(lambda: refused(cluster, target, "malformed") >= 1, "refusal", DEADLINE_S)
        enqueuer.wait_for_more()

        # (b) a valid-looking handshake, then a Raft message: no challenge, no secret
        connection = connect(peer_address)
        connection.sendall(
            encode_handshake(PeerHandshake(sender=NodeId("n1")))
            + encode_message(ReadIndexRequest(NodeId("n1"), NodeId(target), Term(1), 1))
        )
        assert closed_by_node(connection) == b""
        wait_until(lambda: refused(cluster, target, "unauthenticated") >= 1, "refusal", DEADLINE_S)
        enqueuer.wait_for_more()

        # (c) the whole exchange, with a proof made from a wrong secret
        connection = connect(peer_address)
        nonce = secrets.token_bytes(32)
        answer = challenge(connection, "n1", nonce)
        wrong = handshake_proof(
            b"not the secret of this cluster, but 32 bytes or more",
            direction=ProofDirection.INITIATOR,
            cluster_id=None,
            initiator="n1",
            acceptor=target,
            initiator_nonce=nonce,
            acceptor_nonce=answer.nonce,
        )
        connection.sendall(encode_proof(PeerProof(wrong)))
        assert closed_by_node(connection) == b""
        wait_until(lambda: refused(cluster, target, "bad_proof") >= 1, "refusal", DEADLINE_S)
        enqueuer.wait_for_more()

        # (d) a node of a second cluster, with another secret, whose configuration names this
        # cluster's node as its peer n2
        before = refused(cluster, target, "unauthenticated")
        foreign_secret = write_secret(tmp_path / "foreign.secret")
        foreign = LocalCluster(
            1,
            base_port=free_base_port(1),
            data_directory=tmp_path / "foreign",
            tick_interval_ms=30,
            extra_arguments=[
                "--shutdown-timeout-ms",
                str(SHUTDOWN_TIMEOUT_MS),
                "--cluster-secret-file",
                str(foreign_secret),
            ],
        )
        own = foreign.node("n1").peer_address
        foreign.extra_arguments += ["--initial-members", f"n1={own},{target}={peer_address}"]
        clusters.started.append(foreign)
        foreign.start()
        # It campaigns: its vote requests reach n2, whose proof it finds wrong, so it closes.
        wait_until(
            lambda: refused(cluster, target, "unauthenticated") > before,
            "refusal of the foreign node",
            DEADLINE_S,
        )
        wait_until(
            lambda: refused(foreign, "n1", "bad_proof", side="outgoing") >= 1,
            "the foreign node's refusal of n2",
            DEADLINE_S,
        )
        enqueuer.wait_for_more()
        foreign.stop()

    assert enqueuer.failures == []
    assert cluster.leader() is not None
    # Between the cluster's own nodes, nothing was refused.
    for node_id in cluster.node_ids:
        assert refused(cluster, node_id, "bad_proof", side="outgoing") == 0
        assert refused(cluster, node_id, "unknown_sender") == 0
    log = cluster.log_path(target).read_text()
    assert secret_of(secret_file).decode() not in log


def test_an_unknown_node_id_with_the_secret_is_refused_and_a_member_is_admitted(
    clusters: ClusterFactory, tmp_path: Path
) -> None:
    secret_file = write_secret(tmp_path / "cluster.secret")
    secret = secret_of(secret_file)
    cluster = clusters.start(3, extra_arguments=["--cluster-secret-file", str(secret_file)])
    target = "n1"

    def authenticate(sender: str) -> socket.socket:
        connection = connect(cluster.node(target).peer_address)
        nonce = secrets.token_bytes(32)
        answer = challenge(connection, sender, nonce)

        def proof(direction: ProofDirection) -> bytes:
            return handshake_proof(
                secret,
                direction=direction,
                cluster_id=None,
                initiator=sender,
                acceptor=target,
                initiator_nonce=nonce,
                acceptor_nonce=answer.nonce,
            )

        # The node proved the secret first.
        assert answer.proof == proof(ProofDirection.ACCEPTOR)
        connection.sendall(encode_proof(PeerProof(proof(ProofDirection.INITIATOR))))
        return connection

    with Enqueuer(cluster).running() as enqueuer:
        enqueuer.wait_for_more()
        stranger = authenticate("n9")
        assert closed_by_node(stranger) == b""
        wait_until(lambda: refused(cluster, target, "unknown_sender") >= 1, "refusal", DEADLINE_S)
        enqueuer.wait_for_more()

        # A member's id with the secret is admitted. (The real n3 soon connects again, and its
        # newer connection replaces this one.)
        admitted_before = metric(
            cluster, target, "taskraft_peer_handshakes_authenticated_total", side="incoming"
        )
        member = authenticate("n3")
        wait_until(
            lambda: (
                metric(
                    cluster, target, "taskraft_peer_handshakes_authenticated_total", side="incoming"
                )
                > admitted_before
            ),
            "the member admitted",
            DEADLINE_S,
        )
        member.close()
        assert refused(cluster, target, "unknown_sender") == 1
        enqueuer.wait_for_more()
    assert enqueuer.failures == []


def test_a_cluster_with_a_secret_survives_a_leader_restart(
    clusters: ClusterFactory, tmp_path: Path
) -> None:
    secret_file = write_secret(tmp_path / "cluster.secret")
    cluster = clusters.start(3, extra_arguments=["--cluster-secret-file", str(secret_file)])
    with Enqueuer(cluster).running() as enqueuer:
        enqueuer.wait_for_more()
        leader = cluster.wait_for_leader(DEADLINE_S)
        cluster.kill_node(leader)
        new_leader = cluster.wait_for_leader(
            DEADLINE_S, among=[node for node in cluster.node_ids if node != leader]
        )
        enqueuer.wait_for_more()
        cluster.start_node(leader)
        document = cluster.status(new_leader)
        assert document is not None
        wait_caught_up(cluster, leader, int(document["commit_index"]))
        enqueuer.wait_for_more()
        assert (
            metric(cluster, leader, "taskraft_peer_handshakes_authenticated_total", side="incoming")
            >= 1
        )
    assert enqueuer.failures == []
    for node_id in cluster.node_ids:
        for reason in ("bad_proof", "unauthenticated", "unknown_sender", "malformed"):
            assert refused(cluster, node_id, reason) == 0, (node_id, reason)


def test_a_short_secret_is_a_configuration_error_and_print_config_shows_only_the_path(
    tmp_path: Path,
) -> None:
    short = write_secret(tmp_path / "short.secret", "k" * 31)
    good = write_secret(tmp_path / "good.secret")
    base = [
        sys.executable,
        "-m",
        "taskraft",
        "serve",
        "--node-id",
        "n1",
        "--data-dir",
        str(tmp_path / "data"),
        "--initial-members",
        "n1=127.0.0.1:1",
        "--client-address",
        "127.0.0.1:0",
        "--peer-address",
        "127.0.0.1:0",
        "--http-address",
        "127.0.0.1:0",
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKRAFT_")}
    result = subprocess.run(
        [*base, "--cluster-secret-file", str(short)],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env=environment,
    )
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "31 bytes; it needs at least 32" in output
    assert "k" * 31 not in output

    result = subprocess.run(
        [*base, "--print-config"],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env={**environment, "TASKRAFT_CLUSTER_SECRET_FILE": str(good)},
    )
    assert result.returncode == 0, result.stderr
    assert str(good) in result.stdout
    assert secret_of(good).decode() not in result.stdout
