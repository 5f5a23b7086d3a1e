"""HTTPS and client certificates (web/tls.py): the server context, the subject → client id
mapping, and the middleware behind a real TLS listener on loopback. The certificates are made
here (``make_pki``; the integration test and test_config use it too)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ncpeh_dicomweb.config import ConfigError, Settings, settings_from_mapping
from ncpeh_dicomweb.web.keys import CLIENT_CERTIFICATE
from ncpeh_dicomweb.web.middleware import error_middleware
from ncpeh_dicomweb.web.tls import (
    ClientCrls,
    ClientIdentities,
    client_certificate_middlewares,
    server_context,
)
from tests.conftest import free_port

CLIENT_SUBJECT = "CN=ncp-test,O=NCPeH Test,C=CZ"
REVOKED_SUBJECT = "CN=ncp-revoked,O=NCPeH Test,C=CZ"
OTHER_SUBJECT = "CN=intruder,O=Elsewhere,C=XX"
KEY_PASSWORD = "correct horse"

# ---------------------------------------------------------------------- a test PKI


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate (localhost, 127.0.0.1), a client certificate it
    issued, and a client certificate from another CA (untrusted by the gateway); a second
    client certificate of the CA that its CRL revokes (the CRL revokes nothing else)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path
    encrypted_key: Path  # the server key, encrypted with KEY_PASSWORD
    combined: Path  # the server certificate and its key in one file
    ca_key: Path  # the CA's key (write_crl signs CRLs with it)
    other_ca_key: Path
    revoked_cert: Path  # REVOKED_SUBJECT, issued by the CA, revoked by ``crl``
    revoked_key: Path
    crl: Path  # the CA's CRL: revokes revoked_cert; next update in a day


def _name(text: str) -> x509.Name:
    return x509.Name.from_rfc4514_string(text)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    san: list[x509.GeneralName] | None = None,
    serial: int | None = None,
    crl_sign: bool = True,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password.encode())
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    ca_key, other_ca_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name, other_ca_name = _name("CN=NCPeH Test CA,O=NCPeH Test,C=CZ"), _name("CN=Other CA")
    ca = _certificate(ca_name, ca_key, ca=True)
    other_ca = _certificate(other_ca_name, other_ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        _name("CN=localhost"),
        server_key,
        (ca_name, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    client_key, other_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    client = _certificate(
        _name(CLIENT_SUBJECT), client_key, (ca_name, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    other = _certificate(
        _name(OTHER_SUBJECT),
        other_key,
        (other_ca_name, other_ca_key),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    revoked_key = ec.generate_private_key(ec.SECP256R1())
    revoked = _certificate(
        _name(REVOKED_SUBJECT),
        revoked_key,
        (ca_name, ca_key),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return Pki(
        ca=write("ca.pem", _pem(ca)),
        server_cert=write("server.pem", _pem(server) + _pem(ca)),
        server_key=write("server.key", _key_pem(server_key)),
        client_cert=write("client.pem", _pem(client)),
        client_key=write("client.key", _key_pem(client_key)),
        other_ca=write("other-ca.pem", _pem(other_ca)),
        other_cert=write("other.pem", _pem(other)),
        other_key=write("other.key", _key_pem(other_key)),
        encrypted_key=write("server-encrypted.key", _key_pem(server_key, KEY_PASSWORD)),
        combined=write("server-combined.pem", _pem(server) + _key_pem(server_key)),
        ca_key=write("ca.key", _key_pem(ca_key)),
        other_ca_key=write("other-ca.key", _key_pem(other_ca_key)),
        revoked_cert=write("revoked.pem", _pem(revoked)),
        revoked_key=write("revoked.key", _key_pem(revoked_key)),
        crl=write("clients.crl.pem", crl_pem(ca, ca_key, [revoked])),
    )


def crl_pem(
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    revoked: list[x509.Certificate],
    *,
    last_update: datetime.timedelta = datetime.timedelta(minutes=-5),
    next_update: datetime.timedelta = datetime.timedelta(days=1),
    issuer_name: x509.Name | None = None,
    delta: bool = False,
) -> bytes:
    """A CRL (PEM) of ``issuer`` signed with ``key`` revoking ``revoked``; its lastUpdate and
    nextUpdate relative to now."""
    now = datetime.datetime.now(datetime.UTC)
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_name or issuer.subject)
        .last_update(now + last_update)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    if delta:
        builder = builder.add_extension(x509.DeltaCRLIndicator(1), critical=True)
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=1))
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_crl(
    pki: Pki,
    path: Path,
    revoked: list[Path],
    *,
    ca: Path | None = None,
    ca_key: Path | None = None,
    **kwargs: Any,
) -> Path:
    """Write to ``path`` (replacing it as a publisher would: a new file renamed over it) a CRL
    of ``pki``'s CA (or ``ca``, signed with ``ca_key``) revoking the certificates in the PEM
    files ``revoked``; ``kwargs``: :func:`crl_pem`'s."""
    issuer = x509.load_pem_x509_certificate((ca or pki.ca).read_bytes())
    key = serialization.load_pem_private_key((ca_key or pki.ca_key).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    certs = [x509.load_pem_x509_certificate(p.read_bytes()) for p in revoked]
    new = path.with_name(path.name + ".new")
    new.write_bytes(crl_pem(issuer, key, certs, **kwargs))
    new.replace(path)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(pki: Pki, **server: Any) -> Settings:
    """Settings of one site served over HTTPS with ``pki``'s files (``server`` adds keys)."""
    table = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), **server}
    raw = {"sites": [{"id": "a", "url": "http://pacs/dicom-web"}], "server": table}
    return settings_from_mapping(raw, {})


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


# ---------------------------------------------------------------------- the server context


def test_server_context_modern_defaults(pki: Pki) -> None:
    settings = tls_settings(pki, tls_client_ca=str(pki.ca))
    assert settings.tls is not None
    context = server_context(settings.tls)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    for option in (
        ssl.OP_NO_COMPRESSION,
        ssl.OP_CIPHER_SERVER_PREFERENCE,
        ssl.OP_NO_RENEGOTIATION,
        ssl.OP_NO_TICKET,
    ):
        assert context.options & option
    assert context.verify_mode is ssl.CERT_REQUIRED  # the default with a CA
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] in ("kx-ecdhe", "kx-dhe") for c in tls12)
    assert len(context.get_ca_certs()) == 1


@pytest.mark.parametrize(
    ("server", "verify", "minimum"),
    [
        ({}, ssl.CERT_NONE, "1.2"),
        ({"tls_client_cert": "none"}, ssl.CERT_NONE, "1.2"),
        ({"tls_client_ca": "", "tls_client_cert": "optional"}, ssl.CERT_OPTIONAL, "1.2"),
        ({"tls_client_ca": "", "tls_client_cert": "required"}, ssl.CERT_REQUIRED, "1.2"),
        ({"tls_client_ca": "", "tls_min_version": "1.3"}, ssl.CERT_REQUIRED, "1.3"),
        ({"tls_min_version": 1.3}, ssl.CERT_NONE, "1.3"),
    ],
)
def test_server_context_modes(
    pki: Pki, server: dict[str, Any], verify: ssl.VerifyMode, minimum: str
) -> None:
    if "tls_client_ca" in server:  # "": this PKI's CA
        server = {**server, "tls_client_ca": str(pki.ca)}
    settings = tls_settings(pki, **server)
    assert settings.tls is not None
    context = server_context(settings.tls)
    versions = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
    assert (context.verify_mode, context.minimum_version) == (verify, versions[minimum])


def test_server_context_encrypted_and_combined_keys(pki: Pki) -> None:
    raw = {
        "sites": [{"id": "a", "url": "http://pacs/dicom-web"}],
        "server": {"tls_cert": str(pki.server_cert), "tls_key": str(pki.encrypted_key)},
    }
    tls = settings_from_mapping(raw, {"NCPEH_TLS_KEY_PASSWORD": KEY_PASSWORD}).tls
    assert tls is not None and KEY_PASSWORD not in repr(tls)
    server_context(tls)  # decrypts with the passphrase
    # Made in code, without the passphrase: a ConfigError, never OpenSSL's prompt on the tty.
    with pytest.raises(ConfigError, match=r"server\.tls_key: .*encrypted"):
        server_context(replace(tls, key_password=None))
    with pytest.raises(ConfigError, match=r"server\.tls_key"):
        server_context(replace(tls, key_password="wrong"))
    raw["server"] = {"tls_cert": str(pki.combined)}  # certificate and key in one file
    tls = settings_from_mapping(raw, {}).tls
    assert tls is not None and tls.key_file == tls.cert_file == str(pki.combined)
    server_context(tls)
    # Files that changed after loading: OpenSSL's refusal still names the key.
    with pytest.raises(ConfigError, match=r"server\.tls_key"):
        server_context(replace(tls, key_file=str(pki.client_key)))
    with pytest.raises(ConfigError, match=r"server\.tls_client_ca"):
        server_context(replace(tls, client_ca=str(pki.client_key), client_cert="optional"))


# ---------------------------------------------------------------------- subject → client id


def _client_cert(subject: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = _name("CN=Issuing CA,O=NCPeH Test,C=CZ")
    return _certificate(_name(subject), key, (issuer, key), serial=0xC0FFEE)


def test_subjects_map_to_client_ids() -> None:
    identities = ClientIdentities(
        [(CLIENT_SUBJECT, "ncpeh-test"), ("CN=x+OU=unit,O=Multi", "multi")]
    )
    mapped = identities.certificate(_client_cert(CLIENT_SUBJECT))
    assert mapped.subject == CLIENT_SUBJECT and mapped.client_id == "ncpeh-test"
    assert mapped.serial == "C0FFEE" and mapped.issuer == "CN=Issuing CA,O=NCPeH Test,C=CZ"
    # The order inside a multi-valued RDN does not matter; the values themselves do.
    assert identities.certificate(_client_cert("OU=unit+CN=x,O=Multi")).client_id == "multi"
    unmapped = identities.certificate(_client_cert("CN=NCP-TEST,O=NCPeH Test,C=CZ"))
    assert unmapped.client_id == "NCP-TEST"  # not the mapped one: the CN
    assert identities.certificate(_client_cert("O=No Common Name,C=CZ")).client_id is None
    # The most specific CN, if a subject has several.
    assert identities.certificate(_client_cert("CN=leaf,CN=group,O=x")).client_id == "leaf"


def test_subjects_from_der_are_cached() -> None:
    identities = ClientIdentities()
    der = _client_cert(CLIENT_SUBJECT).public_bytes(serialization.Encoding.DER)
    assert identities.from_der(der) is identities.from_der(der)
    assert identities.from_der(der).client_id == "ncp-test"


# ---------------------------------------------------------------------- the middleware over TLS

Serve = Callable[..., Awaitable[str]]


async def _echo(request: web.Request) -> web.Response:
    if CLIENT_CERTIFICATE not in request:
        return web.json_response({"key": "absent"})
    certificate = request[CLIENT_CERTIFICATE]
    return web.json_response({"key": None if certificate is None else asdict(certificate)})


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an app with the TLS middleware on loopback; returns its https:// URL."""
    runners: list[web.AppRunner] = []

    async def start(settings: Settings, context: ssl.SSLContext | None = None) -> str:
        app = web.Application(
            middlewares=[error_middleware, *client_certificate_middlewares(settings)]
        )
        app.router.add_get("/echo", _echo)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        if context is None and settings.tls is not None:
            context = server_context(settings.tls)
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        return f"{'https' if context else 'http'}://127.0.0.1:{port}/echo"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=context if context is not None else True) as response,
    ):
        return response.status, await response.json()


async def test_required_certificate_reaches_the_request(pki: Pki, serve: Serve) -> None:
    settings = tls_settings(
        pki,
        tls_client_ca=str(pki.ca),
        tls_client_identities={CLIENT_SUBJECT: "ncpeh-test"},
    )
    url = await serve(settings)
    status, body = await _get(url, client_context(pki, pki.client_cert, pki.client_key))
    assert status == 200
    assert body["key"]["subject"] == CLIENT_SUBJECT
    assert body["key"]["client_id"] == "ncpeh-test"
    assert body["key"]["issuer"] == "CN=NCPeH Test CA,O=NCPeH Test,C=CZ"
    serial = x509.load_pem_x509_certificate(pki.client_cert.read_bytes()).serial_number
    assert body["key"]["serial"] == format(serial, "X")
    with pytest.raises(aiohttp.ClientError):  # no certificate: the handshake is refused
        await _get(url, client_context(pki))


async def test_optional_certificate_says_none(pki: Pki, serve: Serve) -> None:
    url = await serve(tls_settings(pki, tls_client_ca=str(pki.ca), tls_client_cert="optional"))
    assert await _get(url, client_context(pki)) == (200, {"key": None})
    status, body = await _get(url, client_context(pki, pki.client_cert, pki.client_key))
    assert status == 200 and body["key"]["client_id"] == "ncp-test"  # unmapped: the CN
    with pytest.raises(aiohttp.ClientError):  # sent, but not from a trusted CA
        await _get(url, client_context(pki, pki.other_cert, pki.other_key))


async def test_no_client_certificates_no_middleware(pki: Pki, serve: Serve) -> None:
    assert await _get(await serve(tls_settings(pki)), client_context(pki)) == (
        200,
        {"key": "absent"},
    )
    plain = settings_from_mapping({"sites": [{"id": "a", "url": "http://pacs/dicom-web"}]}, {})
    assert client_certificate_middlewares(plain) == []
    assert await _get(await serve(plain)) == (200, {"key": "absent"})


async def test_required_fails_closed_without_a_certificate(pki: Pki, serve: Serve) -> None:
    """A context that asks no certificate (not server_context's) under settings that require
    one: the middleware refuses the request rather than serve it anonymously."""
    settings = tls_settings(pki, tls_client_ca=str(pki.ca))
    assert settings.tls is not None
    lax = server_context(replace(settings.tls, client_cert="none"))
    status, body = await _get(await serve(settings, lax), client_context(pki))
    assert status == 403 and body["error"] == "forbidden"


# ---------------------------------------------------------------------- revocation (CRLs)


def crl_settings(pki: Pki, crl: Path | None = None, **server: Any) -> Settings:
    """HTTPS with client certificates required, checked against ``crl`` (pki.crl)."""
    table = {"tls_client_ca": str(pki.ca), "tls_client_crl": str(crl or pki.crl), **server}
    return tls_settings(pki, **table)


def test_crl_settings(pki: Pki, tmp_path: Path) -> None:
    tls = crl_settings(pki).tls
    assert tls is not None
    assert (tls.client_crl, tls.client_crl_interval) == (str(pki.crl.resolve()), 60.0)
    assert crl_settings(pki, tls_client_crl_interval=5).tls == replace(tls, client_crl_interval=5)
    # Two CAs, a CRL of each in one file; optional client certificates too.
    both = tmp_path / "both.pem"
    both.write_bytes(pki.ca.read_bytes() + pki.other_ca.read_bytes())
    other = write_crl(pki, tmp_path / "other.crl", [], ca=pki.other_ca, ca_key=pki.other_ca_key)
    crls = tmp_path / "crls.pem"
    crls.write_bytes(pki.crl.read_bytes() + other.read_bytes())
    tls = crl_settings(pki, crls, tls_client_ca=str(both), tls_client_cert="optional").tls
    assert tls is not None and tls.client_crl == str(crls)
    context = server_context(tls)
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert context.verify_mode is ssl.CERT_OPTIONAL
    assert len(context.get_ca_certs()) == 2  # the CAs; the CRLs are no trust anchors


def _bad_crls(pki: Pki, tmp: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """name → (``[server]`` keys beyond crl_settings', the error they give)."""
    ca, key = pki.other_ca, pki.other_ca_key
    crl = str(pki.crl)
    text = tmp / "text.pem"
    text.write_text("no CRL here\n")
    with_cert = tmp / "with-cert.pem"
    with_cert.write_bytes(pki.crl.read_bytes() + pki.ca.read_bytes())
    broken = tmp / "broken.pem"
    broken.write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    # The CA's name, another CA's signature.
    impostor = tmp / "impostor.pem"
    ca_name = x509.load_pem_x509_certificate(pki.ca.read_bytes()).subject
    write_crl(pki, impostor, [], ca=ca, ca_key=key, issuer_name=ca_name)
    both = tmp / "cas.pem"
    both.write_bytes(pki.ca.read_bytes() + pki.other_ca.read_bytes())
    no_crl_sign = tmp / "no-crl-sign.pem"
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    no_crl_sign.write_bytes(_pem(_certificate(ca_name, ca_key, ca=True, crl_sign=False)))

    def crl_file(name: str, **kwargs: Any) -> str:
        return str(write_crl(pki, tmp / name, [pki.revoked_cert], **kwargs))

    key_name = r"server\.tls_client_crl: "
    return {
        "no CA": (
            {"tls_client_ca": None, "tls_client_cert": None},
            key_name + r"needs server\.tls_client_ca",
        ),
        "missing": ({"tls_client_crl": str(tmp / "none.pem")}, key_name + "cannot read"),
        "directory": ({"tls_client_crl": str(tmp)}, key_name + "cannot read"),
        "no CRL": ({"tls_client_crl": str(text)}, key_name + ".* holds no PEM CRL"),
        "a certificate": (
            {"tls_client_crl": str(with_cert)},
            key_name + ".* holds a PEM CERTIFICATE: only CRLs",
        ),
        "not a CRL": ({"tls_client_crl": str(broken)}, key_name + "CRL 1 in .* is not an X"),
        "another CA's": (
            {"tls_client_crl": crl_file("other.pem", ca=ca, ca_key=key)},
            key_name + "the CRL of CN=Other CA .* is not one of the CAs in server.tls_client_ca",
        ),
        "not signed by the CA": (
            {"tls_client_crl": str(impostor)},
            key_name + "the CRL of CN=NCPeH Test CA.* is not signed by that CA",
        ),
        "expired": (
            {
                "tls_client_crl": crl_file(
                    "expired.pem",
                    last_update=-datetime.timedelta(hours=2),
                    next_update=-datetime.timedelta(hours=1),
                )
            },
            key_name + ".* expired at .*: OpenSSL would refuse every client certificate",
        ),
        "not yet valid": (
            {"tls_client_crl": crl_file("future.pem", last_update=datetime.timedelta(hours=1))},
            key_name + ".* is not valid before .*OpenSSL would refuse every client certificate",
        ),
        "delta": ({"tls_client_crl": crl_file("delta.pem", delta=True)}, "is a delta CRL"),
        "a CA without a CRL": (
            {"tls_client_ca": str(both)},
            key_name + ".* holds no CRL of the CA CN=Other CA .*refuses every client certificate",
        ),
        "CA may not sign CRLs": (
            {"tls_client_ca": str(no_crl_sign), "tls_client_crl": crl},
            key_name + r".*does not allow CRL signing \(cRLSign\)",
        ),
        "interval without CRL": (
            {"tls_client_crl": None, "tls_client_crl_interval": 5},
            r"server\.tls_client_crl_interval: needs server\.tls_client_crl",
        ),
        "interval 0": (
            {"tls_client_crl_interval": 0},
            r"server\.tls_client_crl_interval: must be a number in \[1, 3600\]",
        ),
    }


_BAD_CRL_NAMES = [
    "no CA",
    "missing",
    "directory",
    "no CRL",
    "a certificate",
    "not a CRL",
    "another CA's",
    "not signed by the CA",
    "expired",
    "not yet valid",
    "delta",
    "a CA without a CRL",
    "CA may not sign CRLs",
    "interval without CRL",
    "interval 0",
]


@pytest.mark.parametrize("name", _BAD_CRL_NAMES)
def test_bad_crl_settings_are_named(pki: Pki, tmp_path: Path, name: str) -> None:
    server, error = _bad_crls(pki, tmp_path)[name]
    table = {"tls_client_ca": str(pki.ca), "tls_client_crl": str(pki.crl), **server}
    with pytest.raises(ConfigError, match=error):
        tls_settings(pki, **{k: v for k, v in table.items() if v is not None})


def test_bad_crl_files_are_named_by_the_context_too(pki: Pki, tmp_path: Path) -> None:
    """A file that changed after loading: server_context checks it again."""
    tls = crl_settings(pki, write_crl(pki, tmp_path / "crl.pem", [pki.revoked_cert])).tls
    assert tls is not None and tls.client_crl is not None
    Path(tls.client_crl).write_text("gone\n")
    with pytest.raises(ConfigError, match=r"server\.tls_client_crl: .* holds no PEM CRL"):
        server_context(tls)


async def test_revoked_certificate_is_refused(pki: Pki, serve: Serve) -> None:
    url = await serve(crl_settings(pki))
    status, body = await _get(url, client_context(pki, pki.client_cert, pki.client_key))
    assert status == 200 and body["key"]["client_id"] == "ncp-test"
    with pytest.raises(aiohttp.ClientError):  # revoked: the handshake is refused
        await _get(url, client_context(pki, pki.revoked_cert, pki.revoked_key))
    with pytest.raises(aiohttp.ClientError):
        await _get(url, client_context(pki))  # still required


def _due(crls: ClientCrls) -> None:
    """Make the next handshake or request look at the CRL file (not waiting the interval)."""
    crls._next_look = 0.0


def _certificate_of(path: Path) -> Any:
    return ClientIdentities().certificate(x509.load_pem_x509_certificate(path.read_bytes()))


def test_reload_without_an_event_loop(pki: Pki, tmp_path: Path) -> None:
    crl = write_crl(pki, tmp_path / "crl.pem", [pki.revoked_cert])
    tls = crl_settings(pki, crl).tls
    assert tls is not None
    crls = ClientCrls(tls)
    first = crls.context
    assert crls.server_context is first and first.sni_callback is not None
    good, revoked = _certificate_of(pki.client_cert), _certificate_of(pki.revoked_cert)
    assert crls.revoked(revoked) and not crls.revoked(good)
    write_crl(pki, crl, [pki.revoked_cert, pki.client_cert])
    crls.look()  # not due yet
    assert crls.context is first and not crls.revoked(good)
    _due(crls)
    crls.look()
    assert crls.context is not first and crls.revoked(good) and crls.revoked(revoked)
    assert crls.context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert crls.server_context is first  # the one the server listens with


async def _wait_until(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = 10.0
) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"not {what} after {seconds} s"
        await asyncio.sleep(0.05)


async def test_reload_when_the_file_changes(
    pki: Pki, serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The CRL file replaced: the next handshakes check against the new CRLs; a bad new file
    is logged and the CRLs in force stay; a connection opened before its certificate was
    revoked gets 403 for its next requests."""
    caplog.set_level(logging.INFO, logger="ncpeh_dicomweb.web.tls")
    crl = write_crl(pki, tmp_path / "crl.pem", [pki.revoked_cert])
    settings = crl_settings(pki, crl)
    assert settings.tls is not None
    context = server_context(settings.tls)
    url = await serve(settings, context)
    crls = _crls(context)
    good = client_context(pki, pki.client_cert, pki.client_key)
    revoked = client_context(pki, pki.revoked_cert, pki.revoked_key)

    async def refused(client: ssl.SSLContext) -> bool:
        try:
            await _get(url, client)
        except aiohttp.ClientError:
            return True
        return False

    async def served(client: ssl.SSLContext) -> bool:
        return not await refused(client)

    async with aiohttp.ClientSession() as kept:  # one keep-alive connection
        async with kept.get(url, ssl=good) as response:
            assert response.status == 200
        # Revoked too now.
        write_crl(pki, crl, [pki.revoked_cert, pki.client_cert])
        _due(crls)
        await _wait_until(lambda: refused(good), "refused after the reload")
        assert await refused(revoked)
        assert "read again: 1 CRL(s), 2 revoked certificate(s)" in caplog.text
        # The connection opened before: open still, each request refused.
        async with kept.get(url, ssl=good) as response:
            assert response.status == 403
            assert (await response.json())["error"] == "forbidden"

    # A bad file: logged once, retried at each look, the CRLs in force stay.
    write_crl(pki, crl, [], next_update=-datetime.timedelta(minutes=1))
    for _ in range(3):
        _due(crls)
        assert await refused(good)
        await asyncio.sleep(0.1)
    refusals = [r for r in caplog.records if "stay in force" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    assert "expired at" in refusals[0].getMessage()
    # Fixed: taken.
    write_crl(pki, crl, [pki.revoked_cert])
    _due(crls)
    await _wait_until(lambda: served(good), "served again")
    assert await refused(revoked)
    assert not [r for r in caplog.records if r.exc_info]  # no traceback, ever


def _crls(context: ssl.SSLContext) -> ClientCrls:
    crls = getattr(context, "crls", None)
    assert isinstance(crls, ClientCrls)
    return crls


async def test_expired_crl_in_force_is_logged(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crl = write_crl(pki, tmp_path / "crl.pem", [], next_update=datetime.timedelta(seconds=1))
    tls = crl_settings(pki, crl).tls
    assert tls is not None
    crls = ClientCrls(tls)
    await asyncio.sleep(1.1)
    for _ in range(2):
        _due(crls)
        crls.look()
    expired = [r for r in caplog.records if "refuses every client certificate" in r.getMessage()]
    assert len(expired) == 1 and expired[0].levelno == logging.ERROR
    assert str(crl) in expired[0].getMessage()


def _http_get(
    url: str, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """GET ``url`` over a TLS connection of its own (resuming ``session``): the status line,
    the session, whether it was resumed."""
    host, port = url.split("/")[2].split(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer.split(b"\r\n", 1)[0], tls.session, tls.session_reused


async def test_resumed_session_of_a_revoked_certificate_is_refused(
    pki: Pki, serve: Serve, tmp_path: Path
) -> None:
    """A TLS 1.2 session resumed after its certificate was revoked skips the certificate
    check of the handshake: the middleware's refuses its requests."""
    crl = write_crl(pki, tmp_path / "crl.pem", [pki.revoked_cert])
    settings = crl_settings(pki, crl)
    assert settings.tls is not None
    context = server_context(settings.tls)
    url = await serve(settings, context)
    client = client_context(pki, pki.client_cert, pki.client_key)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    status, session, _ = await asyncio.to_thread(_http_get, url, client)
    assert status == b"HTTP/1.1 200 OK" and session is not None
    crls = _crls(context)
    before = crls.context
    write_crl(pki, crl, [pki.revoked_cert, pki.client_cert])
    _due(crls)
    with contextlib.suppress(ssl.SSLError, ConnectionError):  # this one starts the reload
        await asyncio.to_thread(_http_get, url, client)

    async def reloaded() -> bool:
        return crls.context is not before

    await _wait_until(reloaded, "reloaded")
    with pytest.raises(ssl.SSLError):  # a new session: the handshake refuses it
        await asyncio.to_thread(_http_get, url, client)
    status, _, resumed = await asyncio.to_thread(_http_get, url, client, session)
    assert resumed and status == b"HTTP/1.1 403 Forbidden"
