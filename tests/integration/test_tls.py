"""Real `taskraft serve` processes with TLS on every port (`--tls-cert --tls-key --tls-ca`).

- A 3-node cluster under TLS elects a leader (its peers speak mutual TLS), commits, and serves
  a client that trusts the authority, over the client port and over HTTPS; plain TCP and plain
  HTTP get no answer from those ports.
- A client certificate from an authority the cluster does not trust is refused right after
  the TLS handshake, before the protocol (client port and HTTPS); one from the cluster's
  authority, or none, is served. Each refusal is counted.
- A client that does not trust the node's certificate, or dials a name the certificate does not
  hold, refuses to talk to it.
- The peer port refuses a TLS connection without a client certificate, and one with a
  certificate from another authority, counted as refusals for `tls`; the cluster keeps
  committing.
- A node whose certificate another authority issued, and a node whose certificate (from the
  right authority) does not name the address its peers dial, get no Raft traffic: the others'
  connections to them are refused for `tls`, and they fall behind.
- Rotation: a renewed certificate, swapped in the way a Kubernetes Secret volume swaps files
  (one symbolic link), is served on all three ports without a restart and counted; a key that
  does not match keeps the certificate in force and counts a failed reload.
- A flood of connections that never handshake: the oldest handshakes are evicted at the
  port's bound, and a genuine client gets in.
- Options: a partial TLS configuration, or a key that does not fit, stops the start.

Every wait is on a condition with a deadline; no test sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from process_cluster import DEADLINE_S, ClusterFactory, metric, wait_until

from taskraft.certificates import CertificateAndKey, CertificateAuthority
from taskraft.client import Client
from taskraft.errors import Unavailable
from taskraft.local_cluster import LocalCluster
from taskraft.tls import TlsFiles, client_context

pytestmark = pytest.mark.timeout(180)

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
# A refused client gives up this soon, instead of the usual 20 s of retries.
REFUSED_CLIENT_TIMEOUT_S = 3.0
# How long a refused connection may take to be closed by the node (it closes at once).
REFUSAL_WAIT_S = 10.0


class Authorities:
    """The cluster's authority and node certificate, and a foreign authority with a client
    certificate of its own, all under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cluster = CertificateAuthority.create(directory, "ca", "taskraft-test-ca")
        node = self.issue_node(directory)
        self.node = TlsFiles(node.certificate, node.private_key, self.cluster.files.certificate)
        self.trusted_client = self.cluster.issue(
            directory, "trusted-client", common_name="trusted-client", client=True
        )
        self.foreign = CertificateAuthority.create(directory / "foreign", "ca", "foreign-ca")
        self.foreign_client = self.foreign.issue(
            directory / "foreign",
            "client",
            common_name="foreign-client",
            client=True,
            server=True,
            dns_names=("localhost",),
            ip_addresses=(LOOPBACK,),
        )

    def issue_node(self, directory: Path, *, with_address: bool = True) -> CertificateAndKey:
        """A node certificate of the cluster's authority, for 127.0.0.1 (or only for
        `localhost`, a name the peers do not dial)."""
        return self.cluster.issue_node(directory, ip_addresses=(LOOPBACK,) if with_address else ())

    @property
    def authority(self) -> Path:
        return self.cluster.files.certificate

    def with_client_certificate(self, issued: CertificateAndKey) -> ssl.SSLContext:
        return client_context(
            self.authority, certificate=issued.certificate, key=issued.private_key
        )


@pytest.fixture
def authorities(tmp_path: Path) -> Authorities:
    return Authorities(tmp_path / "pki")


def tls_client(cluster: LocalCluster, context: ssl.SSLContext, **options: float) -> Client:
    return Client(cluster.servers, tls=context, **options)


def served_certificate_serial(
    address: str, context: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> int:
    """The serial number of the certificate a fresh TLS connection to `address` is shown."""
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def refusal(
    address: str, context: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> BaseException:
    """How the node refuses a TLS connection made with `context`: the handshake's error, or,
    when the handshake went through on the client's side (TLS 1.3 checks a client's
    certificate after that), the end of the stream the node closed. AssertionError when the
    node keeps the connection open for REFUSAL_WAIT_S: it was not refused."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=REFUSAL_WAIT_S) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=server_hostname) as connection:
                try:
                    data = connection.recv(1)
                except TimeoutError:
                    raise AssertionError(f"{address} kept the connection: not refused") from None
                except (ssl.SSLError, OSError) as error:
                    return error
                assert data == b"", f"{address} sent {data!r} before any request"
                return ConnectionResetError(f"{address} closed the connection")
        except (ssl.SSLError, OSError) as error:
            return error


def metric_or_none(cluster: LocalCluster, node_id: str, name: str, **labels: str) -> float | None:
    """A metric for a wait: None while the node does not answer."""
    try:
        return metric(cluster, node_id, name, **labels)
    except (OSError, urllib.error.URLError):
        return None


def peer_refusals(cluster: LocalCluster, node_id: str, side: str) -> float | None:
    return metric_or_none(
        cluster, node_id, "taskraft_peer_handshakes_refused_total", side=side, reason="tls"
    )


def test_a_cluster_under_tls_commits_and_serves_clients_over_tls_only(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(3, tls=authorities.node)
    leader = cluster.wait_for_leader(DEADLINE_S)
    assert cluster.http_url(leader, "/").startswith("https://")
    with tls_client(cluster, client_context(authorities.authority)) as client:
        client.create_queue("tls")
        task_id = client.enqueue("tls", b"over tls", priority=3)
        task = client.dequeue("tls", lease_ms=30_000)
        assert task is not None and task.id == task_id and task.payload == b"over tls"
        client.ack(task)
    document = cluster.status(leader)
    assert document is not None and document["commit_index"] >= 2
    # Plain HTTP to the HTTPS port is not served.
    plain = urllib.request.Request(f"http://{cluster.node(leader).http_address}/healthz")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(plain, timeout=5).read()
    # A plain client gets no handshake answer from the client port.
    with (
        Client(cluster.servers, request_timeout_s=REFUSED_CLIENT_TIMEOUT_S) as plain_client,
        pytest.raises(Unavailable),
    ):
        plain_client.count("tls")
    assert metric(cluster, leader, "taskraft_tls_certificate_expiry_timestamp_seconds") > 0
    # The peers found each other over mutual TLS: nothing was refused.
    for node_id in cluster.node_ids:
        for side in ("incoming", "outgoing"):
            assert peer_refusals(cluster, node_id, side) == 0


def test_a_client_certificate_from_an_untrusted_authority_is_refused(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(1, tls=authorities.node)
    address = cluster.servers[0]
    foreign = authorities.with_client_certificate(authorities.foreign_client)
    refusal(address, foreign)
    with (
        tls_client(cluster, foreign, request_timeout_s=REFUSED_CLIENT_TIMEOUT_S) as client,
        pytest.raises(Unavailable),
    ):
        client.enqueue("tls", b"from a stranger")
    # The same refusal on the HTTPS port.
    refusal(cluster.node("n1").http_address, foreign)
    wait_until(
        lambda: (
            (
                metric_or_none(
                    cluster, "n1", "taskraft_tls_handshake_failures_total", port="client"
                )
                or 0
            )
            >= 2
            or None
        ),
        "the client port's refusals counted",
        DEADLINE_S,
    )
    assert (
        metric_or_none(cluster, "n1", "taskraft_tls_handshake_failures_total", port="http") or 0
    ) >= 1
    # A certificate of the cluster's authority is served, and so is a client without one.
    with tls_client(
        cluster, authorities.with_client_certificate(authorities.trusted_client)
    ) as client:
        client.create_queue("tls")
        client.enqueue("tls", b"from a trusted client")
    with tls_client(cluster, client_context(authorities.authority)) as client:
        assert client.count("tls").ready == 1


def test_a_client_that_does_not_trust_the_node_refuses_it(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(1, tls=authorities.node)
    distrustful = client_context(authorities.foreign.files.certificate)
    error = refusal(cluster.servers[0], distrustful)
    assert isinstance(error, ssl.SSLCertVerificationError), error
    with (
        tls_client(cluster, distrustful, request_timeout_s=REFUSED_CLIENT_TIMEOUT_S) as client,
        pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.count("tls")
    # A name the certificate does not hold fails too, even from the right authority.
    trusting = client_context(authorities.authority)
    mismatch = refusal(cluster.servers[0], trusting, server_hostname="elsewhere")
    assert isinstance(mismatch, ssl.SSLCertVerificationError), mismatch


def test_the_peer_port_requires_a_certificate_from_the_cluster_authority(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(3, tls=authorities.node)
    leader = cluster.wait_for_leader(DEADLINE_S)
    peer_address = cluster.node(leader).peer_address
    refusal(peer_address, client_context(authorities.authority))
    refusal(peer_address, authorities.with_client_certificate(authorities.foreign_client))
    wait_until(
        lambda: (peer_refusals(cluster, leader, "incoming") or 0) >= 2 or None,
        "two peer connections refused for tls",
        DEADLINE_S,
    )
    with tls_client(cluster, client_context(authorities.authority)) as client:
        client.create_queue("after-strangers")
        client.enqueue("after-strangers", b"still committing")
        assert client.count("after-strangers").ready == 1


def _node_left_behind(
    cluster: LocalCluster, outsider: str, leader: str, status_context: ssl.SSLContext
) -> None:
    """The cluster commits on without `outsider`: the leader's connections to it are refused
    for tls, and `outsider` applies none of what the others commit."""
    wait_until(
        lambda: (peer_refusals(cluster, leader, "outgoing") or 0) >= 1 or None,
        f"the leader's connections to {outsider} refused for tls",
        DEADLINE_S,
    )

    def outsider_status() -> dict[str, object] | None:
        url = cluster.http_url(outsider, "/v1/status")
        try:
            with urllib.request.urlopen(url, timeout=2, context=status_context) as answer:
                document: dict[str, object] = json.load(answer)
                return document
        except (OSError, urllib.error.URLError):
            return None

    before = wait_until(outsider_status, f"the status of {outsider}", DEADLINE_S)
    with tls_client(cluster, client_context(cluster_authority(cluster))) as client:
        client.create_queue("without-outsider")
        for number in range(5):
            client.enqueue("without-outsider", f"{number}".encode())
    leader_status = cluster.status(leader)
    assert leader_status is not None
    # The leader has sent heartbeats and appends all along; none reached the outsider.
    after = wait_until(outsider_status, f"the status of {outsider}", DEADLINE_S)
    assert int(str(after["applied_index"])) == int(str(before["applied_index"]))
    assert int(str(after["applied_index"])) < int(leader_status["commit_index"])


def cluster_authority(cluster: LocalCluster) -> Path:
    assert cluster.tls is not None and cluster.tls.authority is not None
    return cluster.tls.authority


def test_a_node_with_a_certificate_of_another_authority_gets_no_raft_traffic(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(3, tls=authorities.node)
    leader = cluster.wait_for_leader(DEADLINE_S)
    outsider = next(node_id for node_id in cluster.node_ids if node_id != leader)
    cluster.stop_node(outsider)
    # The outsider comes back with a certificate of the foreign authority, which it also
    # trusts: it cannot prove itself to its peers, nor trust theirs.
    foreign = authorities.foreign_client
    cluster.extra_arguments += [
        "--tls-cert",
        str(foreign.certificate),
        "--tls-key",
        str(foreign.private_key),
        "--tls-ca",
        str(authorities.foreign.files.certificate),
    ]
    cluster.start_node(outsider)
    _node_left_behind(
        cluster, outsider, leader, client_context(authorities.foreign.files.certificate)
    )


def test_a_node_whose_certificate_does_not_name_its_address_gets_no_raft_traffic(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    """The right authority but the wrong name: a peer dialing 127.0.0.1 refuses a certificate
    that names only `localhost` (the dialer checks the name; the listener cannot)."""
    cluster = clusters.start(3, tls=authorities.node)
    leader = cluster.wait_for_leader(DEADLINE_S)
    outsider = next(node_id for node_id in cluster.node_ids if node_id != leader)
    cluster.stop_node(outsider)
    unnamed = authorities.issue_node(authorities.directory / "unnamed", with_address=False)
    cluster.extra_arguments += [
        "--tls-cert",
        str(unnamed.certificate),
        "--tls-key",
        str(unnamed.private_key),
    ]
    cluster.start_node(outsider)
    status_context = client_context(authorities.authority)
    status_context.check_hostname = False  # its HTTPS certificate lacks the address too
    _node_left_behind(cluster, outsider, leader, status_context)


class SecretVolume:
    """Files published as a Kubernetes Secret volume publishes them: each version in a
    directory of its own, `current` a symbolic link to the one in force, swapped in one
    rename, so a reader never sees half of a change."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.version = 0
        directory.mkdir(parents=True)

    def publish(self, files: dict[str, Path]) -> None:
        self.version += 1
        target = self.directory / f"..version-{self.version}"
        target.mkdir()
        for name, source in files.items():
            shutil.copy(source, target / name)
        link = self.directory / "..current-new"
        link.symlink_to(target.name)
        os.replace(link, self.directory / "current")

    def path(self, name: str) -> Path:
        return self.directory / "current" / name


def test_a_renewed_certificate_is_served_on_every_port_without_a_restart(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    volume = SecretVolume(authorities.directory / "volume")
    first = authorities.issue_node(authorities.directory / "first")
    volume.publish({"tls.crt": first.certificate, "tls.key": first.private_key})
    files = TlsFiles(volume.path("tls.crt"), volume.path("tls.key"), authorities.authority)
    cluster = clusters.start(1, tls=files)
    node = cluster.node("n1")
    client_port = client_context(authorities.authority)
    peer = authorities.with_client_certificate(authorities.trusted_client)

    def serials() -> set[int]:
        return {
            served_certificate_serial(node.client_address, client_port),
            served_certificate_serial(node.http_address, client_port),
            served_certificate_serial(node.peer_address, peer),
        }

    assert serials() == {
        x509.load_pem_x509_certificate(first.certificate.read_bytes()).serial_number
    }
    with tls_client(cluster, client_context(authorities.authority)) as client:
        client.create_queue("rotation")
        client.enqueue("rotation", b"before")
        renewed = authorities.issue_node(authorities.directory / "renewed")
        renewed_serial = x509.load_pem_x509_certificate(
            renewed.certificate.read_bytes()
        ).serial_number
        volume.publish({"tls.crt": renewed.certificate, "tls.key": renewed.private_key})
        wait_until(
            lambda: serials() == {renewed_serial} or None,
            "the renewed certificate served on every port",
            DEADLINE_S,
        )
        # The connection opened before the renewal still works.
        client.enqueue("rotation", b"after")
        assert client.count("rotation").ready == 2
    assert metric(cluster, "n1", "taskraft_tls_reloads_total", result="ok") == 1
    assert metric(cluster, "n1", "taskraft_tls_reloads_total", result="failed") == 0
    # A key that does not belong to the certificate: the renewed certificate stays in force.
    volume.publish(
        {"tls.crt": renewed.certificate, "tls.key": authorities.foreign_client.private_key}
    )
    wait_until(
        lambda: (
            metric_or_none(cluster, "n1", "taskraft_tls_reloads_total", result="failed") == 1
            or None
        ),
        "a failed reload counted",
        DEADLINE_S,
    )
    assert serials() == {renewed_serial}
    with tls_client(cluster, client_context(authorities.authority)) as client:
        assert client.count("rotation").ready == 2


@pytest.mark.parametrize(
    "given", [["--tls-cert"], ["--tls-cert", "--tls-key"], ["--tls-ca"]], ids=str
)
def test_a_partial_tls_configuration_is_refused(tmp_path: Path, given: list[str]) -> None:
    arguments = [sys.executable, "-m", "taskraft", "serve", "--node-id", "n1"]
    arguments += ["--data-dir", str(tmp_path / "data"), "--initial-members", "n1=127.0.0.1:1"]
    for flag in given:
        arguments += [flag, str(tmp_path / "file.pem")]
    completed = subprocess.run(arguments, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert "TLS needs all of tls_cert, tls_key and tls_ca" in completed.stderr


def test_a_key_that_does_not_match_the_certificate_stops_the_start(
    tmp_path: Path, authorities: Authorities
) -> None:
    arguments = [sys.executable, "-m", "taskraft", "serve", "--node-id", "n1"]
    arguments += ["--data-dir", str(tmp_path / "data"), "--initial-members", "n1=127.0.0.1:1"]
    arguments += ["--client-address", "127.0.0.1:0", "--peer-address", "127.0.0.1:0"]
    arguments += ["--http-address", "127.0.0.1:0"]
    arguments += ["--tls-cert", str(authorities.node.certificate)]
    arguments += ["--tls-key", str(authorities.foreign_client.private_key)]
    arguments += ["--tls-ca", str(authorities.node.authority)]
    completed = subprocess.run(arguments, capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    assert "cannot use certificate" in completed.stderr


def test_connections_that_never_handshake_cannot_keep_a_client_out(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    """At most connections_max TLS handshakes run at once; beyond, the oldest is ended. A
    flood of connections that send nothing holds that many descriptors and no more, and a
    genuine client, whose handshake takes milliseconds, gets in."""
    bound = 4
    cluster = clusters.start(
        1, tls=authorities.node, extra_arguments=["--connections-max", str(bound)]
    )
    host, port = cluster.servers[0].rsplit(":", 1)
    silent = [
        socket.create_connection((host, int(port)), timeout=REFUSAL_WAIT_S)
        for _ in range(3 * bound)
    ]
    try:
        # The oldest were ended to make room for the newer ones.
        with contextlib.suppress(ConnectionResetError):  # ended with a reset: ended all the same
            assert silent[0].recv(1) == b""
        wait_until(
            lambda: (
                (
                    metric_or_none(
                        cluster, "n1", "taskraft_tls_handshakes_evicted_total", port="client"
                    )
                    or 0
                )
                >= 2 * bound
                or None
            ),
            "the oldest handshakes evicted",
            DEADLINE_S,
        )
        with tls_client(cluster, client_context(authorities.authority)) as client:
            client.create_queue("despite-the-flood")
            assert client.count("despite-the-flood").ready == 0
    finally:
        for connection in silent:
            connection.close()
