"""Real `taskraft serve` processes with TLS on every port (`--tls-cert --tls-key --tls-ca`).

- A 3-node cluster under TLS elects a leader (its peers speak mutual TLS), commits, and serves
  a client that trusts the authority, over the client port and over HTTPS; plain TCP and plain
  HTTP get no answer from those ports.
- A client certificate from an authority the cluster does not trust is refused during the TLS
  handshake, before the protocol; one from the cluster's authority, or none, is served.
- A client that does not trust the node's certificate refuses to talk to it.
- The peer port refuses a TLS connection without a client certificate, and one with a
  certificate from another authority; the cluster keeps committing.
- A node whose certificate another authority issued never joins the others' Raft traffic.
- Rotation: a new certificate written over the files is served to new connections within the
  reload interval, and counted; a key that does not match keeps the certificate in force and
  counts a failed reload.
- Options: a partial TLS configuration is a configuration error (exit status 2).

Every wait is on a condition with a deadline; no test sleeps to synchronise.
"""

from __future__ import annotations

import ipaddress
import json
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

from taskraft.certificates import CertificateAuthority
from taskraft.client import Client
from taskraft.errors import Unavailable
from taskraft.local_cluster import LocalCluster
from taskraft.tls import TlsFiles, client_context

pytestmark = pytest.mark.timeout(180)

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
# A refused client gives up this soon, instead of the usual 20 s of retries.
REFUSED_CLIENT_TIMEOUT_S = 3.0


class Authorities:
    """The cluster's authority and node certificate, and a foreign authority with a client
    certificate of its own, all under one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cluster = CertificateAuthority.create(directory, "ca", "taskraft-test-ca")
        node = self.cluster.issue(
            directory,
            "node",
            common_name="taskraft-node",
            client=True,
            server=True,
            dns_names=("localhost",),
            ip_addresses=(LOOPBACK,),
        )
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


@pytest.fixture
def authorities(tmp_path: Path) -> Authorities:
    return Authorities(tmp_path / "pki")


def tls_client(cluster: LocalCluster, context: ssl.SSLContext, **options: float) -> Client:
    return Client(cluster.servers, tls=context, **options)  # type: ignore[arg-type]


def served_certificate_serial(address: str, authority: Path) -> int:
    """The serial number of the certificate a fresh TLS connection to `address` is shown."""
    host, port = address.rsplit(":", 1)
    context = client_context(authority)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def tls_handshake_error(
    address: str, context: ssl.SSLContext, server_hostname: str = "127.0.0.1"
) -> BaseException | None:
    """What a TLS handshake (and a first read, where TLS 1.3 reports a refused client
    certificate) with `context` ends in; None when the server kept the connection."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=server_hostname) as connection:
                connection.settimeout(1.0)
                try:
                    data = connection.recv(1)
                except TimeoutError:
                    return None
                return None if data else ConnectionResetError("closed by the server")
        except (ssl.SSLError, OSError) as error:
            return error


def test_a_cluster_under_tls_commits_and_serves_clients_over_tls_only(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(3, tls=authorities.node)
    leader = cluster.wait_for_leader(DEADLINE_S)
    assert cluster.http_url(leader, "/").startswith("https://")
    with tls_client(cluster, client_context(authorities.cluster.files.certificate)) as client:
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


def test_a_client_certificate_from_an_untrusted_authority_is_refused(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(1, tls=authorities.node)
    address = cluster.servers[0]
    trusted_authority = authorities.cluster.files.certificate
    foreign = client_context(
        trusted_authority,
        certificate=authorities.foreign_client.certificate,
        key=authorities.foreign_client.private_key,
    )
    error = tls_handshake_error(address, foreign)
    assert isinstance(error, ssl.SSLError | ConnectionError), error
    with (
        tls_client(cluster, foreign, request_timeout_s=REFUSED_CLIENT_TIMEOUT_S) as client,
        pytest.raises(Unavailable),
    ):
        client.enqueue("tls", b"from a stranger")
    # The same refusal on the HTTPS port.
    assert tls_handshake_error(cluster.node("n1").http_address, foreign) is not None
    trusted = client_context(
        trusted_authority,
        certificate=authorities.trusted_client.certificate,
        key=authorities.trusted_client.private_key,
    )
    assert tls_handshake_error(address, trusted) is None
    with tls_client(cluster, trusted) as client:
        client.create_queue("tls")
        client.enqueue("tls", b"from a trusted client")
    with tls_client(cluster, client_context(trusted_authority)) as client:
        assert client.count("tls").ready == 1


def test_a_client_that_does_not_trust_the_node_refuses_it(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(1, tls=authorities.node)
    distrustful = client_context(authorities.foreign.files.certificate)
    error = tls_handshake_error(cluster.servers[0], distrustful)
    assert isinstance(error, ssl.SSLCertVerificationError), error
    with (
        tls_client(cluster, distrustful, request_timeout_s=REFUSED_CLIENT_TIMEOUT_S) as client,
        pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.count("tls")
    # A name the certificate does not hold fails too, even from the right authority.
    trusting = client_context(authorities.cluster.files.certificate)
    mismatch = tls_handshake_error(cluster.servers[0], trusting, server_hostname="elsewhere")
    assert isinstance(mismatch, ssl.SSLCertVerificationError), mismatch


def test_the_peer_port_requires_a_certificate_from_the_cluster_authority(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    cluster = clusters.start(3, tls=authorities.node)
    leader = cluster.wait_for_leader(DEADLINE_S)
    peer_address = cluster.node(leader).peer_address
    trusted_authority = authorities.cluster.files.certificate
    without_certificate = client_context(trusted_authority)
    assert tls_handshake_error(peer_address, without_certificate) is not None
    foreign = client_context(
        trusted_authority,
        certificate=authorities.foreign_client.certificate,
        key=authorities.foreign_client.private_key,
    )
    assert tls_handshake_error(peer_address, foreign) is not None
    with tls_client(cluster, client_context(trusted_authority)) as client:
        client.create_queue("after-strangers")
        client.enqueue("after-strangers", b"still committing")
        assert client.count("after-strangers").ready == 1


def test_a_node_with_a_certificate_of_another_authority_gets_no_raft_traffic(
    clusters: ClusterFactory, authorities: Authorities, tmp_path: Path
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
    outsider_status_context = client_context(authorities.foreign.files.certificate)
    cluster.start_node(outsider)
    with tls_client(cluster, client_context(authorities.cluster.files.certificate)) as client:
        client.create_queue("without-outsider")
        for number in range(5):
            client.enqueue("without-outsider", f"{number}".encode())
    leader_commit = cluster.status(leader)
    assert leader_commit is not None

    def outsider_status() -> dict[str, object] | None:
        url = cluster.http_url(outsider, "/v1/status")
        try:
            with urllib.request.urlopen(url, timeout=2, context=outsider_status_context) as answer:
                document: dict[str, object] = json.load(answer)
                return document
        except (OSError, urllib.error.URLError):
            return None

    document = wait_until(outsider_status, "the outsider's status", DEADLINE_S)
    assert int(str(document["commit_index"])) < int(leader_commit["commit_index"])


def test_a_renewed_certificate_is_served_without_a_restart(
    clusters: ClusterFactory, authorities: Authorities
) -> None:
    # The cluster serves copies, so that the test can write over them.
    served = authorities.directory / "served"
    served.mkdir()
    certificate, key = served / "node.crt", served / "node.key"
    shutil.copy(authorities.node.certificate, certificate)
    shutil.copy(authorities.node.key, key)
    files = TlsFiles(certificate, key, authorities.node.authority)
    cluster = clusters.start(1, tls=files)
    address = cluster.servers[0]
    authority = authorities.cluster.files.certificate
    before = served_certificate_serial(address, authority)
    with tls_client(cluster, client_context(authority)) as client:
        client.create_queue("rotation")
        client.enqueue("rotation", b"before")
        renewed = authorities.cluster.issue(
            authorities.directory / "renewed",
            "node",
            common_name="taskraft-node",
            client=True,
            server=True,
            dns_names=("localhost",),
            ip_addresses=(LOOPBACK,),
        )
        # As a Secret volume does: the new pair appears at once.
        shutil.copy(renewed.private_key, served / "node.key.new")
        shutil.copy(renewed.certificate, served / "node.crt.new")
        (served / "node.key.new").replace(key)
        (served / "node.crt.new").replace(certificate)
        after = wait_until(
            lambda: (
                serial
                if (serial := served_certificate_serial(address, authority)) != before
                else None
            ),
            "the renewed certificate served",
            DEADLINE_S,
        )
        assert (
            after == x509.load_pem_x509_certificate(renewed.certificate.read_bytes()).serial_number
        )
        # The connection opened before the renewal still works.
        client.enqueue("rotation", b"after")
        assert client.count("rotation").ready == 2
    assert metric(cluster, "n1", "taskraft_tls_reloads_total", result="ok") == 1
    # A key that does not belong to the certificate: the renewed certificate stays in force.
    shutil.copy(authorities.foreign_client.private_key, served / "node.key.new")
    (served / "node.key.new").replace(key)
    wait_until(
        lambda: metric(cluster, "n1", "taskraft_tls_reloads_total", result="failed") == 1 or None,
        "a failed reload counted",
        DEADLINE_S,
    )
    assert served_certificate_serial(address, authority) == after
    with tls_client(cluster, client_context(authority)) as client:
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
