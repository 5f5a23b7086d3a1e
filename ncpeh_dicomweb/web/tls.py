"""HTTPS and TLS client certificates (``[server] tls_*``).

:func:`server_context` turns :class:`~ncpeh_dicomweb.config.TlsSettings` into the server's
``ssl.SSLContext``: TLS 1.2 at least (1.3 if configured), forward-secret AEAD suites only for
TLS 1.2, the server's cipher order, no compression, no renegotiation, no session tickets (whose
key would outlive every connection). With ``tls_client_ca`` the handshake verifies client
certificates against those CAs: ``required`` refuses a client without one, ``optional`` lets it
in without one; either way a certificate that does not verify ends the handshake, so no
request of such a client reaches a handler.

:func:`client_certificate_middlewares` then puts the verified certificate of each request at
``request[CLIENT_CERTIFICATE]`` (None: the client sent none) as a
:class:`~ncpeh_dicomweb.web.keys.ClientCertificate`: its RFC 4514 subject and issuer, its
serial, and the client id ``[server.tls_client_identities]`` maps the subject to (else the
subject's CN), for the audit trail.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509
from cryptography.x509.oid import NameOID

from ..config import ConfigError, Settings, TlsSettings
from ..errors import Forbidden
from .keys import CLIENT_CERTIFICATE, ClientCertificate

__all__ = [
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


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The server's TLS context; ConfigError naming the key if OpenSSL refuses a file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
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
    return context


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
        request[CLIENT_CERTIFICATE] = certificate
        return await handler(request)

    return [client_certificate_middleware]
