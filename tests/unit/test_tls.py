"""HTTPS and client certificates (web/tls.py): the server context, the subject → client id
mapping, and the middleware behind a real TLS listener on loopback. The certificates are made
here (``make_pki``; the integration test and test_config use it too)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
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
    ClientIdentities,
    client_certificate_middlewares,
    server_context,
)
from tests.conftest import free_port

CLIENT_SUBJECT = "CN=ncp-test,O=NCPeH Test,C=CZ"
OTHER_SUBJECT = "CN=intruder,O=Elsewhere,C=XX"
KEY_PASSWORD = "correct horse"

# ---------------------------------------------------------------------- a test PKI


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate (localhost, 127.0.0.1), a client certificate it
    issued, and a client certificate from another CA (untrusted by the gateway)."""

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
                crl_sign=True,
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
    )


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
