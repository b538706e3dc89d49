"""The certificates and keys of a local Kubernetes control plane.

Kubernetes components authenticate each other with TLS client certificates signed by one
certificate authority, and the API server signs service-account tokens with a key pair of its
own. Nothing here is fetched or shared: each control plane gets a fresh authority, and every
file is written to the control plane's directory (private keys readable by the owner only).

Keys are ECDSA P-256: every component accepts them, and they are generated in milliseconds.
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

VALIDITY = datetime.timedelta(days=365)
# Certificates start to be valid a little in the past, so that a clock a few minutes behind
# does not reject them.
BACKDATE = datetime.timedelta(hours=1)

# The user name of the front-proxy client certificate, which the API server is told to accept.
FRONT_PROXY_CLIENT = "front-proxy-client"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CertificateAndKey:
    """A PEM certificate and its PEM private key, as files."""

    certificate: Path
    private_key: Path


def _new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
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
        key = _new_private_key()
        now = datetime.datetime.now(datetime.UTC)
        subject = _name(common_name)
        certificate = (
            _builder(subject, subject, key, now=now, authority=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        files = CertificateAndKey(directory / f"{name}.crt", directory / f"{name}.key")
        _write_certificate(files.certificate, certificate)
        _write_private_key(files.private_key, key)
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

        Kubernetes takes a client certificate's common name as the user name and its
        organizations as the groups.
        """
        if not client and not server:
            raise ValueError("a certificate is for a client, a server or both")
        directory.mkdir(parents=True, exist_ok=True)
        key = _new_private_key()
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
        _write_private_key(files.private_key, key)
        return files


@dataclass(frozen=True, slots=True)
class ServiceAccountKeys:
    """The key pair the API server signs service-account tokens with and checks them by."""

    private_key: Path
    public_key: Path


@dataclass(frozen=True, slots=True)
class ControlPlaneCertificates:
    """Every certificate and key file that the control plane's processes are given."""

    certificate_authority: CertificateAndKey
    apiserver: CertificateAndKey
    # The API server's client certificate towards kubelets (logs, exec, port-forward).
    apiserver_kubelet_client: CertificateAndKey
    admin: CertificateAndKey
    controller_manager: CertificateAndKey
    scheduler: CertificateAndKey
    service_account: ServiceAccountKeys
    # The aggregation layer: the API server proxies to extension API servers with the
    # front-proxy client certificate, and publishes the front-proxy authority, which the
    # controller manager and the scheduler read for their own authentication.
    front_proxy_certificate_authority: CertificateAndKey
    front_proxy_client: CertificateAndKey


LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def apiserver_dns_names() -> tuple[str, ...]:
    """The names that clients inside and outside the cluster reach the API server by."""
    return (
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    )


def write_control_plane_certificates(
    directory: Path,
    *,
    kubernetes_service_ip: IPAddress,
    advertise_address: IPAddress = LOOPBACK,
) -> ControlPlaneCertificates:
    """Create a new authority and every certificate of the control plane in `directory`.

    `kubernetes_service_ip` is the first address of the service range, the cluster IP of the
    `kubernetes` Service that pods reach the API server through; `advertise_address` the
    address the API server publishes as that Service's endpoint.
    """
    authority = CertificateAuthority.create(directory, "ca", "taskraft-local-kubernetes-ca")
    apiserver = authority.issue(
        directory,
        "apiserver",
        common_name="kube-apiserver",
        server=True,
        dns_names=apiserver_dns_names(),
        ip_addresses=tuple(dict.fromkeys((LOOPBACK, advertise_address, kubernetes_service_ip))),
    )
    apiserver_kubelet_client = authority.issue(
        directory,
        "apiserver-kubelet-client",
        common_name="kube-apiserver-kubelet-client",
        organizations=("system:masters",),
        client=True,
    )
    admin = authority.issue(
        directory,
        "admin",
        common_name="kubernetes-admin",
        organizations=("system:masters",),
        client=True,
    )
    controller_manager = authority.issue(
        directory, "controller-manager", common_name="system:kube-controller-manager", client=True
    )
    scheduler = authority.issue(
        directory, "scheduler", common_name="system:kube-scheduler", client=True
    )
    front_proxy_authority = CertificateAuthority.create(
        directory, "front-proxy-ca", "taskraft-local-kubernetes-front-proxy-ca"
    )
    front_proxy_client = front_proxy_authority.issue(
        directory, "front-proxy-client", common_name=FRONT_PROXY_CLIENT, client=True
    )
    service_account_key = _new_private_key()
    service_account = ServiceAccountKeys(
        directory / "service-account.key", directory / "service-account.pub"
    )
    _write_private_key(service_account.private_key, service_account_key)
    service_account.public_key.write_bytes(
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ControlPlaneCertificates(
        certificate_authority=authority.files,
        apiserver=apiserver,
        apiserver_kubelet_client=apiserver_kubelet_client,
        admin=admin,
        controller_manager=controller_manager,
        scheduler=scheduler,
        service_account=service_account,
        front_proxy_certificate_authority=front_proxy_authority.files,
        front_proxy_client=front_proxy_client,
    )


__all__ = [
    "FRONT_PROXY_CLIENT",
    "CertificateAndKey",
    "CertificateAuthority",
    "ControlPlaneCertificates",
    "ServiceAccountKeys",
    "apiserver_dns_names",
    "write_control_plane_certificates",
]
