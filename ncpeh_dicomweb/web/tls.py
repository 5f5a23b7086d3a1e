"""HTTPS and TLS client certificates (``[server] tls_*``).

:func:`server_context` turns :class:`~ncpeh_dicomweb.config.TlsSettings` into the server's
``ssl.SSLContext``: TLS 1.2 at least (1.3 if configured), forward-secret AEAD suites only for
TLS 1.2, the server's cipher order, no compression, no renegotiation, no session tickets (whose
key would outlive every connection). With ``tls_client_ca`` the handshake verifies client
certificates against those CAs: ``required`` refuses a client without one, ``optional`` lets it
in without one; either way a certificate that does not verify ends the handshake, so no
request of such a client reaches a handler.

With ``tls_client_crl`` (:class:`ClientCrls`) the handshake also checks the client
certificate against its CA's CRL (OpenSSL's ``VERIFY_CRL_CHECK_LEAF``): a revoked one ends the
handshake. The CRL file is read again when it changes, and the middleware refuses (403) a
request whose certificate the CRLs in force now revoke: one on a connection, or a resumed TLS
session, that the handshake let in before its certificate was revoked.

:func:`client_certificate_middlewares` then puts the verified certificate of each request at
``request[CLIENT_CERTIFICATE]`` (None: the client sent none) as a
:class:`~ncpeh_dicomweb.web.keys.ClientCertificate`: its RFC 4514 subject and issuer, its
serial, and the client id ``[server.tls_client_identities]`` maps the subject to (else the
subject's CN), for the audit trail.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..config import ConfigError, Settings, TlsSettings, check_client_crls
from ..errors import Forbidden
from .keys import CLIENT_CERTIFICATE, ClientCertificate

__all__ = [
    "ClientCrls",
    "ClientIdentities",
    "client_certificate_middlewares",
    "peer_certificate",
    "server_context",
]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites (Mozilla "intermediate"): ECDHE/DHE key exchange, AES-GCM or ChaCha20-Poly1305.
# TLS 1.3 suites are all of that kind already (OpenSSL's defaults).
_TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
_OPTIONS = (
    ssl.OP_NO_COMPRESSION  # CRIME
    | ssl.OP_CIPHER_SERVER_PREFERENCE
    | ssl.OP_NO_RENEGOTIATION
    | ssl.OP_NO_TICKET  # stateless tickets: one key for the process's life (forward secrecy)
    | ssl.OP_SINGLE_DH_USE
    | ssl.OP_SINGLE_ECDH_USE
)
_VERIFY = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
log = logging.getLogger(__name__)


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The server's TLS context; ConfigError naming the key if OpenSSL refuses a file (or the
    CRL file fails :func:`~ncpeh_dicomweb.config.check_client_crls`)."""
    if tls.client_crl is not None and tls.client_cert != "none":
        return ClientCrls(tls).server_context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(context, tls)
    return context


def _configure(context: ssl.SSLContext, tls: TlsSettings) -> None:
    """Set up the new server ``context`` for ``tls``, CRLs aside."""
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= _OPTIONS
    context.set_ciphers(_TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])

    def password() -> str:
        # Never OpenSSL's interactive prompt: the loader checked the key already.
        if tls.key_password is None:
            raise ConfigError(
                "server.tls_key: the key is encrypted: give its passphrase in "
                "NCPEH_TLS_KEY_PASSWORD"
            )
        return tls.key_password

    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=password)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"server.tls_key: {tls.key_file!r} (with server.tls_cert {tls.cert_file!r}): {exc}"
        ) from None
    if tls.client_cert != "none":
        if tls.client_ca is None:
            raise ConfigError(f"server.tls_client_cert: {tls.client_cert!r} needs tls_client_ca")
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"server.tls_client_ca: {tls.client_ca!r}: {exc}") from None
    context.verify_mode = _VERIFY[tls.client_cert]


class _CrlContext(ssl.SSLContext):
    """A server context whose CRLs came from ``crls`` (the middleware finds them here)."""

    crls: ClientCrls


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One reading of the CRL file: the context holding its CRLs, and what they revoke."""

    context: _CrlContext
    revoked: frozenset[tuple[str, str]]  # (issuer as RFC 4514, serial as ClientCertificate has it)
    expires: datetime.datetime | None  # the earliest nextUpdate
    issuer: str  # the issuer of the CRL expiring first
    count: int


class ClientCrls:
    """The CRLs of ``[server] tls_client_crl`` in force, and TLS contexts holding them.

    CRLs are republished often, so the file is read again when it changes: the gateway looks
    at its mtime (size, inode) at most every ``tls_client_crl_interval`` seconds (60), when a
    handshake or a request comes. That, rather than SIGHUP: whatever publishes the CRL (a cron
    job, a config-management agent, a sidecar in another container) just replaces the file,
    needing neither the gateway's pid nor the right to signal it, and a SIGHUP sent to a
    gateway that does not expect one would end it. A new file is checked like the one at
    start (:func:`~ncpeh_dicomweb.config.check_client_crls`) in a thread, away from the event
    loop; a bad one is logged as an error, tried again at each look, and the CRLs in force
    stay so.

    OpenSSL cannot drop CRLs from a context's store, and a running server's context cannot be
    replaced: a reading builds a new context (from tls_cert, tls_key and tls_client_ca as they
    are then) and the server's context switches each handshake to the newest one in its SNI
    callback (``SSLObject.context = ...``, which OpenSSL allows there; the callback comes
    with or without a server name). A handshake checks the certificate against the CRLs in
    force; :meth:`revoked` lets the middleware check it again at each request."""

    def __init__(self, tls: TlsSettings) -> None:
        if tls.client_crl is None:
            raise ValueError("no tls_client_crl")
        self._tls = tls
        self._path = tls.client_crl
        self._stamp = _stamp(self._path)
        self._loaded = self._load()  # ConfigError: the caller's (start-up)
        self._interval = tls.client_crl_interval
        self._next_look = time.monotonic() + self._interval
        self._loading = False
        self._refusal: tuple[object, str] | None = None  # the last one logged
        self._expiry_logged: _Loaded | None = None
        # The context the server listens with; later ones only stand in for it.
        self.server_context: ssl.SSLContext = self._loaded.context
        self.server_context.sni_callback = self._client_hello

    @property
    def context(self) -> ssl.SSLContext:
        """The context holding the CRLs in force."""
        return self._loaded.context

    def revoked(self, certificate: ClientCertificate) -> bool:
        """Whether the CRLs in force revoke ``certificate``."""
        return (certificate.issuer, certificate.serial) in self._loaded.revoked

    def look(self) -> None:
        """Read the file again if it changed (not more often than the interval)."""
        now = time.monotonic()
        if now < self._next_look or self._loading:
            return
        self._next_look = now + self._interval
        self._log_expiry()
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return
        self._loading = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a blocking server): here and now
            self._reload(stamp)
        else:
            try:
                loop.run_in_executor(None, self._reload, stamp)
            except RuntimeError:  # the executor is shut down: the gateway is stopping
                self._loading = False

    def _client_hello(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> int | None:
        try:
            self.look()
            context = self._loaded.context
            if ssl_object.context is not context:
                ssl_object.context = context
        except Exception:  # never the old CRLs by mistake: end the handshake
            log.exception("server.tls_client_crl: switching to the CRLs in force failed")
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def _reload(self, stamp: object) -> None:
        try:
            loaded = self._load()
        except ConfigError as exc:
            if self._refusal != (stamp, str(exc)):
                self._refusal = (stamp, str(exc))
                log.error("%s; the CRLs read before stay in force", exc)
        except Exception:
            log.exception("server.tls_client_crl: reading %s again failed", self._path)
        else:
            self._loaded, self._stamp, self._refusal = loaded, stamp, None
            log.info(
                "server.tls_client_crl: %s read again: %d CRL(s), %d revoked certificate(s)",
                self._path,
                loaded.count,
                len(loaded.revoked),
            )
        finally:
            self._loading = False

    def _log_expiry(self) -> None:
        loaded = self._loaded
        if loaded.expires is None or self._expiry_logged is loaded:
            return
        if loaded.expires <= datetime.datetime.now(datetime.UTC):
            self._expiry_logged = loaded
            log.error(
                "server.tls_client_crl: the CRL of %s expired at %s (its nextUpdate): OpenSSL "
                "refuses every client certificate of that CA until a fresh CRL is in %s",
                loaded.issuer,
                f"{loaded.expires:%Y-%m-%d %H:%M:%S} UTC",
                self._path,
            )

    def _load(self) -> _Loaded:
        """Check the CRL file and build a context holding its CRLs; ConfigError naming the
        key if anything is wrong."""
        _, crls = check_client_crls(self._path, self._tls.client_ca)
        context = _CrlContext(ssl.PROTOCOL_TLS_SERVER)
        _configure(context, self._tls)
        # The CRLs as checked, and nothing else: OpenSSL would trust a certificate in the file
        # and the file may have changed since it was read.
        pem = b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)
        with tempfile.NamedTemporaryFile(prefix="ncpeh-crl-", suffix=".pem") as file:
            file.write(pem)
            file.flush()
            try:
                context.load_verify_locations(cafile=file.name)
            except ssl.SSLError as exc:
                raise ConfigError(f"server.tls_client_crl: {self._path!r}: {exc}") from None
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        context.crls = self
        revoked = frozenset(
            (crl.issuer.rfc4514_string(), format(entry.serial_number, "X"))
            for crl in crls
            for entry in crl
        )
        dated = [crl for crl in crls if crl.next_update_utc is not None]
        first = min(dated, key=lambda crl: crl.next_update_utc or 0, default=None)
        return _Loaded(
            context=context,
            revoked=revoked,
            expires=None if first is None else first.next_update_utc,
            issuer="" if first is None else first.issuer.rfc4514_string(),
            count=len(crls),
        )


def _stamp(path: str) -> object:
    """What changes when the file at ``path`` is replaced or written (None: it is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, st.st_ctime_ns)


def _client_crls(transport: asyncio.BaseTransport | None) -> ClientCrls | None:
    """The :class:`ClientCrls` the TLS connection on ``transport`` was checked with, if any."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    context = ssl_object.context
    return context.crls if isinstance(context, _CrlContext) else None


class ClientIdentities:
    """Client certificates (DER, as the handshake verified them) → :class:`ClientCertificate`:
    the client id is the one configured for the certificate's subject, else its CN.

    Subjects are compared as X.500 names (attribute by attribute, so the order inside a
    multi-valued RDN does not matter), values exactly as written."""

    def __init__(self, identities: Iterable[tuple[str, str]] = ()) -> None:
        self._by_subject = {x509.Name.from_rfc4514_string(s): cid for s, cid in identities}
        # Keep-alive connections send the same certificate with every request.
        self.from_der = functools.lru_cache(maxsize=256)(self._from_der)

    def certificate(self, cert: x509.Certificate) -> ClientCertificate:
        subject = cert.subject
        return ClientCertificate(
            subject=subject.rfc4514_string(),
            client_id=self._by_subject.get(subject) or _common_name(subject),
            serial=format(cert.serial_number, "X"),
            issuer=cert.issuer.rfc4514_string(),
        )

    def _from_der(self, der: bytes) -> ClientCertificate:
        return self.certificate(x509.load_der_x509_certificate(der))


def _common_name(name: x509.Name) -> str | None:
    """The most specific CN of ``name`` (the last in DER order), if any."""
    values = [a.value for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]
    texts = [v for v in values if isinstance(v, str) and v]
    return texts[-1] if texts else None


def peer_certificate(transport: asyncio.BaseTransport | None) -> bytes | None:
    """The client certificate (DER) the TLS handshake on ``transport`` verified, or None
    (plain HTTP, no certificate sent, or the connection is gone)."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der or None


def client_certificate_middlewares(settings: Settings) -> list[Middleware]:
    """The middleware putting each request's client certificate at
    ``request[CLIENT_CERTIFICATE]``; none when no client certificate is asked."""
    tls = settings.tls
    if tls is None or tls.client_cert == "none":
        return []
    identities = ClientIdentities(tls.client_identities)
    required = tls.client_cert == "required"

    @web.middleware
    async def client_certificate_middleware(
        request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        der = peer_certificate(request.transport)
        certificate = None if der is None else identities.from_der(der)
        if certificate is None and required:
            # The handshake refuses such clients: only a context not built by
            # server_context could let one through. Fail closed.
            raise Forbidden("a client certificate is required")
        if certificate is not None and (crls := _client_crls(request.transport)) is not None:
            crls.look()
            if crls.revoked(certificate):
                # Let in before its CRL came (a connection kept open, a resumed session).
                raise Forbidden("the client certificate is revoked")
        request[CLIENT_CERTIFICATE] = certificate
        return await handler(request)

    return [client_certificate_middleware]
