"""The certificates and keys of a local Kubernetes control plane.

Kubernetes components authenticate each other with TLS client certificates signed by one
certificate authority, and the API server signs service-account tokens with a key pair of its
own. Nothing here is fetched or shared: each control plane gets a fresh authority, and every
file is written to the control plane's directory (private keys readable by the owner only).

Keys are ECDSA P-256: every component accepts them, and they are generated in milliseconds.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from taskraft.certificates import (
    CertificateAndKey,
    CertificateAuthority,
    IPAddress,
    new_private_key,
    write_private_key,
)

# The user name of the front-proxy client certificate, which the API server is told to accept.
FRONT_PROXY_CLIENT = "front-proxy-client"


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
    service_account_key = new_private_key()
    service_account = ServiceAccountKeys(
        directory / "service-account.key", directory / "service-account.pub"
    )
    write_private_key(service_account.private_key, service_account_key)
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
