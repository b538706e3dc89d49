"""The credentials of a QueueCluster: generated once into a Secret, read back every run.

Every cluster's peers prove a shared cluster secret, and, with `spec.authentication.enabled`
(the default), its clients present bearer tokens. Nobody should have to invent those, so the
operator makes them, the first time it sees the cluster, into the Secret `NAME-credentials`
(owned by the QueueCluster, so it goes with it):

- `cluster-secret`: 48 random bytes, URL-safe base64; the pods read it (`--cluster-secret-file`).
- `admin-token`, `client-token`, `read-token`: 32 random bytes each; applications take the
  client token (a `secretKeyRef`), dashboards the read token, the operator the admin token.
- `tokens`: the nodes' token file (`--auth-token-file`), one `NAME ROLE TOKEN` line per token
  above: `operator admin`, `applications client`, `readers read`.

Randomness is why this is not the planner's: the planner stays a pure function of what it
observes; it only names the Secret and mounts it.

The operator never writes the Secret again. To rotate a token, edit `tokens` (add the new line,
move clients over, remove the old line; the nodes re-read the file once the kubelet updates the
volume) and the single-token key that goes with it; the operator reads `admin-token` again every
run (docs/security.md). A Secret that lacks a key the cluster needs is reported and the cluster
is left alone until it is fixed: regenerating would lock running pods out.

`node_access` also reads the TLS Secret of `spec.tls` for its `ca.crt`, the authority the
operator verifies the nodes by (client port and HTTP API); the SSL context is rebuilt only when
that authority changes.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskraft_operator.actions import owned_manifest
from taskraft_operator.model import DesiredSpec
from taskraft_operator.observe import SECRETS, KubeApi, KubeApiError, NodeAccess
from taskraft_operator.planner import (
    ADMIN_TOKEN_KEY,
    CLIENT_TOKEN_KEY,
    CLUSTER_SECRET_KEY,
    READ_TOKEN_KEY,
    TLS_AUTHORITY_KEY,
    TOKEN_FILE_KEY,
    credentials_secret_name,
)

TOKEN_BYTES = 32
CLUSTER_SECRET_BYTES = 48
# The names of the generated tokens in the token file, by key.
TOKEN_LINES = (
    (ADMIN_TOKEN_KEY, "operator", "admin"),
    (CLIENT_TOKEN_KEY, "applications", "client"),
    (READ_TOKEN_KEY, "readers", "read"),
)


class CredentialsUnavailable(Exception):
    """The cluster's credentials cannot be had now; the message says what to fix."""


def generate_credentials() -> dict[str, str]:
    """Fresh credentials: every key of the credentials Secret, as text."""
    values = {key: secrets.token_urlsafe(TOKEN_BYTES) for key, _, _ in TOKEN_LINES}
    lines = ["# NAME ROLE TOKEN: written once by the taskraft operator (docs/security.md)"]
    lines += [f"{name} {role} {values[key]}" for key, name, role in TOKEN_LINES]
    values[TOKEN_FILE_KEY] = "\n".join(lines) + "\n"
    values[CLUSTER_SECRET_KEY] = secrets.token_urlsafe(CLUSTER_SECRET_BYTES)
    return values


def credentials_manifest(desired: DesiredSpec, values: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": credentials_secret_name(desired.name),
            "namespace": desired.namespace,
            "labels": {
                "app.kubernetes.io/name": "taskraft",
                "app.kubernetes.io/instance": desired.name,
                "app.kubernetes.io/managed-by": "taskraft-operator",
            },
        },
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in values.items()},
    }


def secret_text(secret: Mapping[str, Any], key: str) -> str | None:
    """The value of `key` in a Secret as the API returns it (base64 under `data`), or None."""
    encoded = (secret.get("data") or {}).get(key)
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


_CERTIFICATE_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----"
)
# How long the operator keeps trusting a cluster's previous authority after `ca.crt` changed:
# enough for the kubelet to give every pod the new files, which it does within a minute or two.
PREVIOUS_AUTHORITY_GRACE_S = 600.0


@dataclass(slots=True)
class TrustCache:
    """The SSL context of the authorities the operator trusts a cluster's nodes by, kept while
    they do not change.

    When `ca.crt` changes (the authority is rotated), the previous authority stays trusted
    along with the new one for PREVIOUS_AUTHORITY_GRACE_S: the pods see the new files only
    when the kubelet updates their volumes, and until then serve certificates of the old one.
    Then only the new one is trusted (a rotation after a compromise ends the old trust).
    """

    clock: Callable[[], float] = time.monotonic
    authority: str | None = None
    previous: str | None = None
    previous_until: float = 0.0
    context: ssl.SSLContext | None = field(default=None, repr=False)

    def context_for(self, authority_pem: str) -> ssl.SSLContext:
        now = self.clock()
        if self.context is not None and authority_pem == self.authority:
            if self.previous is None or now < self.previous_until:
                return self.context
            self.previous = None  # the grace is over: the new authority alone
        elif self.authority is not None and authority_pem != self.authority:
            self.previous, self.previous_until = self.authority, now + PREVIOUS_AUTHORITY_GRACE_S
        pems = (authority_pem,) if self.previous is None else (authority_pem, self.previous)
        # The certificates alone: a bundle's comments may hold text that is not ASCII.
        trusted = "\n".join(block for pem in pems for block in _CERTIFICATE_BLOCK.findall(pem))
        try:
            context = ssl.create_default_context(cadata=trusted or authority_pem)
        except (ssl.SSLError, ValueError) as error:
            raise CredentialsUnavailable(f"its {TLS_AUTHORITY_KEY} is not PEM: {error}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context, self.authority = context, authority_pem
        return self.context


async def ensure_credentials(
    api: KubeApi, desired: DesiredSpec, owner: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The credentials Secret, created when it does not exist; and whether it was created."""
    name = credentials_secret_name(desired.name)
    secret = await api.get(SECRETS, desired.namespace, name)
    if secret is not None:
        _check_owner(secret, owner, name)
        return secret, False
    manifest = owned_manifest(credentials_manifest(desired, generate_credentials()), owner)
    try:
        return await api.create(SECRETS, desired.namespace, manifest), True
    except KubeApiError as error:
        if error.status != 409:
            raise
    # Created by another run in between: theirs is the one the pods mount.
    secret = await api.get(SECRETS, desired.namespace, name)
    if secret is None:
        raise CredentialsUnavailable(f"the Secret {name} was created and is gone again")
    _check_owner(secret, owner, name)
    return secret, False


def _check_owner(secret: Mapping[str, Any], owner: Mapping[str, Any], name: str) -> None:
    """The Secret must be this QueueCluster's: one planted beforehand, or the leftover of a
    deleted cluster of the same name not yet collected, is not used (nor overwritten)."""
    uid = (owner.get("metadata") or {}).get("uid")
    references = (secret.get("metadata") or {}).get("ownerReferences") or []
    if not uid or not any(reference.get("uid") == uid for reference in references):
        raise CredentialsUnavailable(
            f"the Secret {name} exists but this QueueCluster did not make it (no owner "
            "reference to it): delete it to have credentials made, or, to keep it, add an "
            "ownerReference to the QueueCluster"
        )


async def node_access(
    api: KubeApi, desired: DesiredSpec, secret: Mapping[str, Any], trust: TrustCache
) -> NodeAccess:
    """How to reach the cluster's nodes, from its credentials `secret` (`ensure_credentials`)
    and its TLS Secret; CredentialsUnavailable names what is missing."""
    name = credentials_secret_name(desired.name)
    needed = [CLUSTER_SECRET_KEY]
    if desired.authentication:
        needed += [TOKEN_FILE_KEY, ADMIN_TOKEN_KEY]
    missing = [key for key in needed if not secret_text(secret, key)]
    if missing:
        raise CredentialsUnavailable(
            f"the Secret {name} has no {', '.join(missing)} (or not as base64 text); restore "
            "them, or delete the Secret to have new credentials made (every client then needs "
            "the new tokens, and the pods a restart)"
        )
    # Known even with authentication off: a node not yet restarted since it was turned off
    # still requires it (NodeAccess says when it is sent).
    token = secret_text(secret, ADMIN_TOKEN_KEY)
    if desired.tls_secret_name is None:
        return NodeAccess(token=token, token_required=desired.authentication)
    tls_secret = await api.get(SECRETS, desired.namespace, desired.tls_secret_name)
    if tls_secret is None:
        raise CredentialsUnavailable(
            f"the TLS Secret {desired.tls_secret_name} (spec.tls.secretName) does not exist "
            "(yet); the pods wait for it too"
        )
    authority = secret_text(tls_secret, TLS_AUTHORITY_KEY)
    if not authority:
        raise CredentialsUnavailable(
            f"the TLS Secret {desired.tls_secret_name} has no {TLS_AUTHORITY_KEY}: the operator "
            "needs the authority to verify the nodes by"
        )
    try:
        context = trust.context_for(authority)
    except CredentialsUnavailable as error:
        raise CredentialsUnavailable(f"the TLS Secret {desired.tls_secret_name}: {error}") from None
    return NodeAccess(token=token, tls=context, token_required=desired.authentication)


__all__ = [
    "CredentialsUnavailable",
    "TrustCache",
    "credentials_manifest",
    "ensure_credentials",
    "generate_credentials",
    "node_access",
    "secret_text",
]
