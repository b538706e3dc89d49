"""A private certificate authority that issues certificates: for local clusters and tests.

A taskraft node serves TLS from PEM files (taskraft.tls). In Kubernetes those come from a Secret,
for example one cert-manager issues; on a developer's machine, in the tests and in the
end-to-end suite's local Kubernetes control plane, nobody issues them, so this module does: a
fresh self-signed authority, and certificates for the names and addresses given, each written
as a certificate file and a private key readable by its owner only. It is not a CA to run in
production: there is no revocation, and the authority's key lies on disk beside the rest.

Keys are ECDSA P-256: every TLS stack accepts them, and they are generated in milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from taskraft.tls import TlsFiles

VALIDITY = datetime.timedelta(days=365)
# Certificates start to be valid a little in the past, so that a clock a few minutes behind
# does not reject them.
BACKDATE = datetime.timedelta(hours=1)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@dataclass(frozen=True, slots=True)
class CertificateAndKey:
    """A PEM certificate and its PEM private key, as files."""

    certificate: Path
    private_key: Path


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    path.write_bytes(pem)


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime.datetime,
    authority: bool,
) -> x509.CertificateBuilder:
    """What every certificate here has: validity, basic constraints and key usage (an
    authority signs certificates and revocation lists; the others only sign)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=authority,
                crl_sign=authority,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


class CertificateAuthority:
    """A certificate authority whose key is at hand, to issue the cluster's certificates."""

    def __init__(
        self,
        certificate: x509.Certificate,
        private_key: ec.EllipticCurvePrivateKey,
        files: CertificateAndKey,
    ) -> None:
        self.certificate = certificate
        self.private_key = private_key
        self.files = files

    @classmethod
    def create(cls, directory: Path, name: str, common_name: str) -> CertificateAuthority:
        """A new self-signed authority, written to directory/{name}.crt and {name}.key."""
        directory.mkdir(parents=True, exist_ok=True)
        key = new_private_key()
        now = datetime.datetime.now(datetime.UTC)
        subject = _name(common_name)
        certificate = (
            _builder(subject, subject, key, now=now, authority=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        files = CertificateAndKey(directory / f"{name}.crt", directory / f"{name}.key")
        _write_certificate(files.certificate, certificate)
        write_private_key(files.private_key, key)
        return cls(certificate, key, files)

    def issue(
        self,
        directory: Path,
        name: str,
        *,
        common_name: str,
        organizations: tuple[str, ...] = (),
        client: bool = False,
        server: bool = False,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[IPAddress, ...] = (),
    ) -> CertificateAndKey:
        """A certificate for a new key, written to directory/{name}.crt and {name}.key.

        `client` and `server` are its extended key usages (a taskraft node's certificate needs
        both: it serves clients and peers, and dials peers). Kubernetes takes a client
        certificate's common name as the user name and its organizations as the groups.
        """
        if not client and not server:
            raise ValueError("a certificate is for a client, a server or both")
        directory.mkdir(parents=True, exist_ok=True)
        key = new_private_key()
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        authority_key = self.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        builder = (
            _builder(
                _name(common_name, organizations),
                self.certificate.subject,
                key,
                now=now,
                authority=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(authority_key),
                critical=False,
            )
        )
        if dns_names or ip_addresses:
            alternative_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
            alternative_names.extend(x509.IPAddress(address) for address in ip_addresses)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative_names), critical=False
            )
        certificate = builder.sign(self.private_key, hashes.SHA256())
        files = CertificateAndKey(directory / f"{name}.crt", directory / f"{name}.key")
        _write_certificate(files.certificate, certificate)
        write_private_key(files.private_key, key)
        return files

    def issue_node(
        self,
        directory: Path,
        *,
        dns_names: tuple[str, ...] = ("localhost",),
        ip_addresses: tuple[IPAddress, ...] = (LOOPBACK,),
        name: str = "node",
        common_name: str = "taskraft-node",
    ) -> CertificateAndKey:
        """A taskraft node's certificate, written to directory/{name}.crt and {name}.key: both
        usages (a node serves clients and peers, and dials peers), for the names and addresses
        its peers and clients dial (by default this machine's loopback)."""
        return self.issue(
            directory,
            name,
            common_name=common_name,
            client=True,
            server=True,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )


def local_node_tls(directory: Path) -> TlsFiles:
    """The TLS files of nodes on this machine: an authority and one node certificate for
    127.0.0.1 and `localhost` in `directory`, made when not there yet (so a cluster restarted
    on the same directory keeps trusting the same authority)."""
    files = TlsFiles(directory / "node.crt", directory / "node.key", directory / "ca.crt")
    if all(path.exists() for path in (files.certificate, files.key, directory / "ca.crt")):
        return files
    authority = CertificateAuthority.create(directory, "ca", "taskraft-local-ca")
    node = authority.issue_node(directory)
    return TlsFiles(node.certificate, node.private_key, authority.files.certificate)


__all__ = [
    "LOOPBACK",
    "CertificateAndKey",
    "CertificateAuthority",
    "IPAddress",
    "local_node_tls",
    "new_private_key",
    "write_private_key",
]
