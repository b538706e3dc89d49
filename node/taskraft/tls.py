"""TLS for the three ports of a node and for its clients, from PEM files, reloaded on change.

A node started with `--tls-cert CERT --tls-key KEY` serves TLS on its client port, its HTTP
port and its peer port; `--tls-ca CA` names the authorities it trusts. There is no plain port
beside a TLS one: a node either encrypts everything or nothing.

- Client port and HTTP: the node presents CERT. With CA, a client MAY present a certificate; one
  that CA did not issue (or that expired) fails the handshake, so an untrusted client is refused
  before it sends a byte of the protocol. Clients prove who they are with tokens
  (`--auth-token-file`); a certificate is not required, because probes and scrapers seldom have
  one.
- Peer port: mutual TLS. CA is required; both sides present CERT and verify the other's against
  CA, and the dialing side also checks that the certificate names the host it dialed (its DNS
  name or IP address in the subjectAltName). The node's certificate must therefore allow both
  uses (extended key usage serverAuth and clientAuth, or none), and name every address peers
  dial (in Kubernetes, a wildcard for the headless Service: `*.NAME-peers.NAMESPACE.svc`).
  The cluster secret (`--cluster-secret-file`) still proves membership on top of it.
- Versions and ciphers: TLS 1.2 or newer, with OpenSSL's default secure ciphers.

Rotation: `NodeTls.reload_if_changed` reads the three files (a Kubernetes Secret volume swaps
them through a symlink) and, when their contents changed, loads that one reading into three new
contexts. Only if all load (a key that does not match its certificate, or a half-written file,
fails) do they replace the contexts in force, which every new connection uses from then on;
connections already open keep their session. A failed reload keeps the certificate in force,
logs once per change and is tried again later. An authority added to CA is trusted from the
next connection on, and one removed no longer is.

`client_context` builds what a client (the Python client, the CLI, the operator) uses: verify
the node against CA (or the system's authorities), check the host name, and optionally present
a client certificate.

`TlsAcceptor` serves TLS on a plain listening socket. The node's servers accept plain TCP and
wrap each connection in asyncio's own TLS protocol themselves, so that the handshakes under way
are bounded (`pending_max`, the oldest evicted beyond it) as well as timed out, and can be
aborted at shutdown: a flood of half-open handshakes cannot take every file descriptor, nor
keep a genuine peer out for long. (The loop's `create_server(ssl=...)` bounds neither; accepting
plain and calling `start_tls` later is not an option with uvloop, which reads the first bytes
before the protocol can pause.)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import os
import ssl
import tempfile
import time
from asyncio import sslproto
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

logger = logging.getLogger(__name__)

# A failed reload of the same files is tried again after this long (a passing error: out of
# file descriptors, say); files that change are tried at once.
RELOAD_RETRY_INTERVAL_S = 30.0


class TlsConfigurationError(ValueError):
    """The TLS files cannot be used: missing, unreadable, not PEM, or a key that does not fit."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a node's certificate chain, private key and trusted authorities are (PEM)."""

    certificate: Path
    key: Path
    authority: Path | None = None


@dataclass(frozen=True, slots=True)
class _Material:
    """The contents of the TLS files as read at one moment: what is loaded is exactly this."""

    certificate: bytes
    key: bytes
    authority: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(b"\0".join((self.certificate, self.key, self.authority))).digest()


def _read_material(files: TlsFiles) -> _Material:
    contents = []
    for path in (files.certificate, files.key, files.authority):
        if path is None:
            contents.append(b"")
            continue
        try:
            contents.append(path.read_bytes())
        except FileNotFoundError:
            raise TlsConfigurationError(f"TLS file not found: {path}") from None
        except OSError as error:
            raise TlsConfigurationError(f"cannot read {path}: {error.strerror}") from None
    return _Material(*contents)


@contextlib.contextmanager
def _private_files(*contents: bytes) -> Iterator[list[str]]:
    """Paths from which OpenSSL can read `contents`: anonymous memory files where the system
    has them (a key never touches a disk again), else a private temporary directory."""
    descriptors: list[int] = []
    try:
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            for content in contents:
                descriptor = os.memfd_create("taskraft-tls", os.MFD_CLOEXEC)
                descriptors.append(descriptor)
                view = memoryview(content)
                while view:
                    view = view[os.write(descriptor, view) :]
    except OSError:
        # No memory files here (a seccomp profile, a sandbox): the temporary directory below.
        for descriptor in descriptors:
            os.close(descriptor)
        descriptors = []
    if descriptors:
        try:
            yield [f"/proc/self/fd/{descriptor}" for descriptor in descriptors]
        finally:
            for descriptor in descriptors:
                os.close(descriptor)
        return
    with tempfile.TemporaryDirectory(prefix="taskraft-tls-") as directory:
        paths = []
        for index, content in enumerate(contents):
            path = Path(directory) / str(index)
            path.touch(mode=0o600)
            path.write_bytes(content)
            paths.append(str(path))
        yield paths


def _no_passphrase() -> bytes:
    # Called only for an encrypted key, which is not supported: the load then fails instead of
    # OpenSSL asking on a terminal.
    return b""


def _base_context(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _load(contexts: Iterable[ssl.SSLContext], material: _Material, files: TlsFiles) -> None:
    """Load `material` (read from `files`) into each of `contexts`, or raise
    TlsConfigurationError naming what is wrong."""
    with _private_files(material.certificate, material.key, material.authority) as paths:
        certificate, key, authority = paths
        for context in contexts:
            try:
                context.load_cert_chain(certificate, key, password=_no_passphrase)
            except (ssl.SSLError, OSError) as error:
                raise TlsConfigurationError(
                    f"cannot use certificate {files.certificate} with key {files.key} (a key "
                    f"must be unencrypted PEM): {error}"
                ) from None
            if files.authority is not None:
                try:
                    context.load_verify_locations(cafile=authority)
                except (ssl.SSLError, OSError) as error:
                    raise TlsConfigurationError(
                        f"cannot read the trusted authorities {files.authority}: {error}"
                    ) from None


def certificate_not_after(pem: bytes) -> float | None:
    """When the first certificate in `pem` expires (Unix seconds), or None if it is not one."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    not_after: datetime.datetime = certificate.not_valid_after_utc
    return not_after.timestamp()


class NodeTls:
    """The TLS contexts of one node, made anew from its files when they change.

    `client_port` serves the client protocol and the HTTP API; `peer_server` accepts peers and
    `peer_client` dials them (module docstring). They are attributes that a reload replaces
    with new contexts, all three together: users read them for each connection (the
    listeners through `TlsAcceptor`, the peer transport for each dial), never keep one.
    """

    def __init__(self, files: TlsFiles, *, clock: Callable[[], float] = time.monotonic) -> None:
        if files.authority is None:
            raise TlsConfigurationError(
                "TLS needs the trusted authorities too (--tls-ca): the peer port is mutual TLS"
            )
        self.files = files
        self._clock = clock
        material = _read_material(files)
        self.client_port, self.peer_server, self.peer_client = self._contexts(material)
        self._digest = material.digest
        # Successful and failed reloads since the start, for metrics and tests.
        self.reloads = 0
        self.reload_failures = 0
        self.not_after = certificate_not_after(material.certificate)
        # What failed last (the files' digest, or the error when they could not be read), and
        # when it may be tried again.
        self._failed: bytes | str | None = None
        self._retry_at = 0.0

    def _contexts(
        self, material: _Material
    ) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
        """New contexts of the three kinds, loaded with `material`; TlsConfigurationError."""
        client_port = _base_context(ssl.PROTOCOL_TLS_SERVER)
        client_port.verify_mode = ssl.CERT_OPTIONAL
        peer_server = _base_context(ssl.PROTOCOL_TLS_SERVER)
        peer_server.verify_mode = ssl.CERT_REQUIRED
        peer_client = _base_context(ssl.PROTOCOL_TLS_CLIENT)
        peer_client.check_hostname = True
        peer_client.verify_mode = ssl.CERT_REQUIRED
        _load((client_port, peer_server, peer_client), material, self.files)
        return client_port, peer_server, peer_client

    def reload_if_changed(self) -> bool:
        """Make new contexts if the files changed since the last look; True when it did.

        One reading of the files is loaded into three new contexts, which replace the ones in
        force only when all three loaded: every new connection then gets the new certificate
        and trusts exactly the new authorities. A reading that cannot be used (a key that
        does not fit: the files are being replaced one by one, say) is read again at once,
        then left until the files change, or until RELOAD_RETRY_INTERVAL_S has passed (a
        passing error: no memory, no descriptor).
        """
        for attempt in (1, 2):
            try:
                material = _read_material(self.files)
            except TlsConfigurationError as error:
                return self._reload_failed(str(error), error)
            if material.digest == self._digest:
                return False
            if material.digest == self._failed and self._clock() < self._retry_at:
                return False
            try:
                contexts = self._contexts(material)
            except TlsConfigurationError as error:
                if attempt == 1:
                    continue  # perhaps caught halfway through a replacement: read again
                return self._reload_failed(material.digest, error)
            break
        self.client_port, self.peer_server, self.peer_client = contexts
        self._digest = material.digest
        self._failed = None
        self.reloads += 1
        self.not_after = certificate_not_after(material.certificate)
        logger.info("TLS certificate reloaded from %s", self.files.certificate)
        return True

    def _reload_failed(self, failed: bytes | str, error: TlsConfigurationError) -> bool:
        now = self._clock()
        if failed == self._failed and now < self._retry_at:
            return False
        if failed != self._failed:
            logger.error(
                "TLS files changed but cannot be used; keeping the current ones: %s", error
            )
        self.reload_failures += 1
        self._failed = failed
        self._retry_at = now + RELOAD_RETRY_INTERVAL_S
        return False


def client_context(
    authority: Path | str | None = None,
    *,
    certificate: Path | str | None = None,
    key: Path | str | None = None,
) -> ssl.SSLContext:
    """A context for a client of a TLS node: verify it against `authority` (PEM; None: the
    system's authorities), check its host name, and present `certificate` if given."""
    if (certificate is None) != (key is None):
        raise TlsConfigurationError("a client certificate needs its key, and a key its certificate")
    try:
        context = ssl.create_default_context(cafile=None if authority is None else str(authority))
    except (ssl.SSLError, OSError) as error:
        raise TlsConfigurationError(
            f"cannot read the trusted authorities {authority}: {error}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None and key is not None:
        try:
            context.load_cert_chain(str(certificate), str(key))
        except (ssl.SSLError, OSError) as error:
            raise TlsConfigurationError(
                f"cannot use client certificate {certificate} with key {key}: {error}"
            ) from None
    return context


class _PendingHandshake(sslproto.SSLProtocol):
    """asyncio's TLS protocol, keeping the accepted transport so that a handshake under way
    can be aborted (evicted, or at shutdown)."""

    raw_transport: asyncio.BaseTransport | None = None
    aborted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw_transport = transport
        if self.aborted:
            _abort(transport)  # connection_lost follows, and ends the waiter
            return
        super().connection_made(transport)

    def abort(self) -> None:
        self.aborted = True
        if self.raw_transport is not None:
            _abort(self.raw_transport)


class _Connected(asyncio.Protocol):
    """The application's protocol behind a TLS handshake, noting when the handshake is done
    (the one `connection_made`), so that a connection that ends before counts as failed."""

    def __init__(self, app: asyncio.Protocol) -> None:
        self.app = app
        self.made = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self.app.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.app.data_received(data)

    def eof_received(self) -> bool | None:
        return self.app.eof_received()

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()


def _abort(transport: asyncio.BaseTransport) -> None:
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        transport.close()


class TlsAcceptor:
    """The server side of TLS for connections a plain listener accepted (module docstring).

    `wrap(app)` returns the protocol to give the loop for one accepted connection: asyncio's
    TLS protocol around `app`, which gets `connection_made` once the handshake is done and then
    speaks plain bytes. The context is `context()` at that moment (a reload replaces it). A
    connection that ends before (a failed, timed-out, evicted or abandoned handshake) is
    counted in `failures` and reported to `on_failure` with the error, if there was one.

    At most `pending_max` handshakes run at once: one more evicts the oldest (counted in
    `evicted`). A genuine handshake takes milliseconds, so the oldest under way is the likeliest
    to be a connection that sends nothing; a flood of those delays the others by no more than
    it takes to replace the whole pool, and never holds more than `pending_max` descriptors.
    Every handshake ends after `handshake_timeout_s`; `abort_pending` ends them all (shutdown).
    """

    def __init__(
        self,
        context: Callable[[], ssl.SSLContext],
        *,
        handshake_timeout_s: float,
        pending_max: int,
    ) -> None:
        if handshake_timeout_s <= 0 or pending_max < 1:
            raise ValueError("handshake_timeout_s must be positive and pending_max at least 1")
        self.context = context
        self.handshake_timeout_s = handshake_timeout_s
        self.pending_max = pending_max
        self._pending: OrderedDict[int, _PendingHandshake] = OrderedDict()
        # Handshakes that did not complete; those evicted to make room.
        self.failures = 0
        self.evicted = 0

    def wrap(
        self,
        app: asyncio.Protocol,
        *,
        on_failure: Callable[[BaseException | None], None] | None = None,
    ) -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        while len(self._pending) >= self.pending_max:
            _, oldest = self._pending.popitem(last=False)
            self.evicted += 1
            oldest.abort()
        waiter: asyncio.Future[None] = loop.create_future()
        connected = _Connected(app)
        protocol = _PendingHandshake(
            loop,
            connected,
            self.context(),
            waiter,
            server_side=True,
            # Any number of seconds (typeshed says int).
            ssl_handshake_timeout=self.handshake_timeout_s,  # type: ignore[arg-type]
        )
        key = id(protocol)
        self._pending[key] = protocol

        def expire() -> None:
            # asyncio ends every handshake it started within its timeout; this ends the one
            # the loop never started (the transport could not be made).
            if not waiter.done():
                protocol.abort()
                waiter.cancel()

        timer = loop.call_later(self.handshake_timeout_s + 1.0, expire)

        def finished(future: asyncio.Future[None]) -> None:
            timer.cancel()
            self._pending.pop(key, None)
            error = None if future.cancelled() else future.exception()
            if error is not None or not connected.made:
                self.failures += 1
                logger.debug("TLS handshake failed: %r", error)
                if on_failure is not None:
                    on_failure(error)

        waiter.add_done_callback(finished)
        return protocol

    def abort_pending(self) -> None:
        """End every handshake under way (the listener closes)."""
        for protocol in list(self._pending.values()):
            protocol.abort()
