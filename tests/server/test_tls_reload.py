"""`taskraft.tls.NodeTls`: what each of a node's three TLS contexts serves, across reloads.

Handshakes run in memory (`ssl.MemoryBIO`), so each test sees exactly which certificate a
context presents and which it accepts, with no socket and no clock but the one injected.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from taskraft.certificates import CertificateAndKey, CertificateAuthority
from taskraft.tls import (
    RELOAD_RETRY_INTERVAL_S,
    NodeTls,
    TlsConfigurationError,
    TlsFiles,
    client_context,
)

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
HANDSHAKE_ROUNDS_MAX = 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Pki:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.authority = CertificateAuthority.create(directory, "ca", "test-ca")
        self.issued = 0
        first = self.issue()
        # A peer's certificate, for handshakes with the peer listener.
        self.peer = self.issue()
        # The node reads these paths; tests write over them.
        self.files = TlsFiles(directory / "node.crt", directory / "node.key", directory / "ca.crt")
        shutil.copy(first.certificate, self.files.certificate)
        shutil.copy(first.private_key, self.files.key)

    def issue(self) -> CertificateAndKey:
        self.issued += 1
        return self.authority.issue_node(self.directory / f"issued-{self.issued}")

    def install(self, issued: CertificateAndKey) -> None:
        shutil.copy(issued.private_key, self.files.key)
        shutil.copy(issued.certificate, self.files.certificate)


def serial_of(pem_path: Path) -> int:
    return int(x509.load_pem_x509_certificate(pem_path.read_bytes()).serial_number)


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> tuple[int, int | None]:
    """An in-memory handshake: the serial of the certificate the server presented, and of the
    one the client presented (None without one)."""
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(HANDSHAKE_ROUNDS_MAX):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "the handshake did not finish"
    server_der = client_side.getpeercert(binary_form=True)
    client_der = server_side.getpeercert(binary_form=True)
    assert server_der is not None
    presented = None if client_der is None else x509.load_der_x509_certificate(client_der)
    return (
        int(x509.load_der_x509_certificate(server_der).serial_number),
        None if presented is None else int(presented.serial_number),
    )


def served_serials(tls: NodeTls, pki: Pki) -> set[int]:
    """What each of the three contexts presents: the client port to a client, the peer
    listener to a peer, the peer dialer to a peer's listener (which asks for a certificate)."""
    authority = pki.authority.files.certificate
    peer = pki.peer
    trusting = client_context(authority)
    dialing_peer = client_context(authority, certificate=peer.certificate, key=peer.private_key)
    serials = {
        handshake(trusting, tls.client_port)[0],
        handshake(dialing_peer, tls.peer_server)[0],
    }
    listener = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    listener.load_cert_chain(peer.certificate, peer.private_key)
    listener.verify_mode = ssl.CERT_REQUIRED
    listener.load_verify_locations(cafile=authority)
    presented = handshake(tls.peer_client, listener)[1]
    assert presented is not None
    serials.add(presented)
    return serials


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def test_every_context_serves_the_renewed_certificate(pki: Pki) -> None:
    tls = NodeTls(pki.files, clock=Clock())
    assert pki.files.authority is not None
    first = serial_of(pki.files.certificate)
    assert served_serials(tls, pki) == {first}
    assert tls.reload_if_changed() is False
    renewed = pki.issue()
    pki.install(renewed)
    assert tls.reload_if_changed() is True
    assert (tls.reloads, tls.reload_failures) == (1, 0)
    assert served_serials(tls, pki) == {serial_of(renewed.certificate)}
    assert tls.reload_if_changed() is False


def test_a_key_that_does_not_fit_keeps_the_certificate_and_is_retried_later(pki: Pki) -> None:
    clock = Clock()
    tls = NodeTls(pki.files, clock=clock)
    assert pki.files.authority is not None
    first = serial_of(pki.files.certificate)
    other = pki.issue()
    shutil.copy(other.private_key, pki.files.key)  # the key of another certificate
    assert tls.reload_if_changed() is False
    assert tls.reload_failures == 1
    assert served_serials(tls, pki) == {first}
    # The same files are not tried again before the retry interval...
    clock.now += RELOAD_RETRY_INTERVAL_S / 2
    assert tls.reload_if_changed() is False
    assert tls.reload_failures == 1
    # ...and are after it (a passing error would be gone by then).
    clock.now += RELOAD_RETRY_INTERVAL_S
    assert tls.reload_if_changed() is False
    assert tls.reload_failures == 2
    # Files that change again are tried at once.
    shutil.copy(other.certificate, pki.files.certificate)
    assert tls.reload_if_changed() is True
    assert served_serials(tls, pki) == {serial_of(other.certificate)}


def test_missing_files_keep_the_certificate_until_they_are_back(pki: Pki) -> None:
    clock = Clock()
    tls = NodeTls(pki.files, clock=clock)
    assert pki.files.authority is not None
    first = serial_of(pki.files.certificate)
    pki.files.certificate.unlink()
    assert tls.reload_if_changed() is False
    assert tls.reload_failures == 1
    assert served_serials_with(tls, pki, first)
    renewed = pki.issue()
    pki.install(renewed)
    assert tls.reload_if_changed() is True
    assert served_serials(tls, pki) == {serial_of(renewed.certificate)}


def served_serials_with(tls: NodeTls, pki: Pki, serial: int) -> bool:
    """The client port still presents `serial` (the node's files may be gone)."""
    assert pki.files.authority is not None
    return handshake(client_context(pki.files.authority), tls.client_port)[0] == serial


def test_an_encrypted_key_is_refused_with_a_clear_error(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.files.key.read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase"),
    )
    pki.files.key.write_bytes(encrypted)
    with pytest.raises(TlsConfigurationError, match="unencrypted PEM"):
        NodeTls(pki.files, clock=Clock())


def test_tls_needs_the_authorities(pki: Pki) -> None:
    with pytest.raises(TlsConfigurationError, match="--tls-ca"):
        NodeTls(TlsFiles(pki.files.certificate, pki.files.key), clock=Clock())
