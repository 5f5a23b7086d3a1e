"""HTTPS with client certificates, end to end: the gateway's console script in its own process,
serving HTTPS in front of the real Orthanc, with a CA, server and client certificates made by
the test (tests/unit/test_tls.py ``make_pki``).

With client certificates required, a client without one, or with one from another CA, is
refused in the TLS handshake and never gets an answer; a client with a trusted certificate is
served, and the URLs in the answer are https://. With them optional, a client without one is
served too. A TLS 1.1 client is refused whatever it sends.

With a CRL (tls_client_crl), a revoked certificate is refused in the handshake; when the CRL
file is replaced, the gateway reads it again (a bad one is logged and changes nothing)."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, Pacs, free_port, stop_gateway
from tests.unit.test_tls import CLIENT_SUBJECT, Pki, make_pki, write_crl

pytestmark = pytest.mark.integration

QIDO = "/dicom-web/studies?limit=3&includefield=00081190"
LIVE = "/health/live"


@dataclass(frozen=True)
class TlsGateway:
    url: str  # https://127.0.0.1:PORT
    port: int
    pki: Pki
    log: Path

    def get(self, path: str, *, cert: tuple[Path, Path] | None = None) -> requests.Response:
        return requests.get(
            self.url + path,
            verify=str(self.pki.ca),
            cert=None if cert is None else (str(cert[0]), str(cert[1])),
            timeout=30,
        )

    @property
    def trusted(self) -> tuple[Path, Path]:
        return self.pki.client_cert, self.pki.client_key

    @property
    def untrusted(self) -> tuple[Path, Path]:
        return self.pki.other_cert, self.pki.other_key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _wait_until_live(proc: subprocess.Popen[bytes], gateway: TlsGateway) -> None:
    """conftest's start_gateway polls without a client certificate: this loop sends one."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if gateway.get(LIVE, cert=gateway.trusted).status_code == 200:
                return
        except requests.ConnectionError:  # SSLError is one
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gateway did not start:\n{gateway.log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module", params=["required", "optional"])
def gateway(
    request: pytest.FixtureRequest,
    pacs: Pacs,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TlsGateway]:
    mode: str = request.param
    work = tmp_path_factory.mktemp(f"tls-{mode}")
    port = free_port()
    config = work / "gateway.toml"
    # No public_url: the URLs in answers come from the request, whose scheme is https.
    config.write_text(
        f"""
default_site = "main"
[server]
host = "127.0.0.1"
port = {port}
tls_cert = "{pki.server_cert}"
tls_key = "{pki.server_key}"
tls_client_ca = "{pki.ca}"
tls_client_cert = "{mode}"
[server.tls_client_identities]
"{CLIENT_SUBJECT}" = "ncpeh-test"
[[sites]]
id = "main"
url = "{pacs.dicomweb_root}"
[state]
sqlite = "{work / "state.sqlite3"}"
"""
    )
    log = work / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    tls_gateway = TlsGateway(url=f"https://127.0.0.1:{port}", port=port, pki=pki, log=log)
    _wait_until_live(proc, tls_gateway)
    try:
        yield tls_gateway
    finally:
        stop_gateway(proc, log)  # and no traceback logged, refused handshakes included


def _refused(port: int, context: ssl.SSLContext) -> str:
    """Handshake, send one request, read: how the gateway refused (never an answer).

    asyncio closes the connection when the server's handshake fails, without flushing
    OpenSSL's alert: over TLS 1.2 the client's handshake ends in EOF; over TLS 1.3 the client's
    handshake is complete before the server has checked its certificate, and its first read
    finds the connection closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
                answer = tls.recv(65536)
        except ssl.SSLCertVerificationError:
            raise  # the client's own refusal of the server: not what is tested
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            return f"{type(exc).__name__}: {exc}"
    assert answer == b"", f"the gateway answered: {answer[:200]!r}"
    return "closed after the handshake"


def _client(
    pki: Pki, cert: tuple[Path, Path] | None = None, tls: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    if tls is not None:
        context.maximum_version = tls
    return context


def _tls11_client(pki: Pki) -> ssl.SSLContext:
    """A client that speaks TLS 1.0/1.1 only (OpenSSL's security level lowered so that it
    may), with a trusted certificate."""
    context = _client(pki, (pki.client_cert, pki.client_key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def test_trusted_certificate_is_served_with_https_urls(gateway: TlsGateway) -> None:
    response = gateway.get(QIDO, cert=gateway.trusted)
    assert response.status_code == 200, response.text
    studies = response.json()
    assert studies
    urls = [s["00081190"]["Value"][0] for s in studies]
    assert all(u.startswith(f"https://127.0.0.1:{gateway.port}/dicom-web/studies/") for u in urls)
    study = urls[0].rsplit("/", 1)[1]
    series = gateway.get(f"/dicom-web/studies/{study}/series", cert=gateway.trusted)
    assert series.status_code == 200
    assert series.json()[0]["00081190"]["Value"][0].startswith("https://")
    # FHIR answers build their URLs the same way.
    query = "patient.identifier=|456789123&_include=ImagingStudy:endpoint"
    fhir = gateway.get(f"/fhir/ImagingStudy?{query}", cert=gateway.trusted)
    assert fhir.status_code == 200, fhir.text[:500]
    entries = fhir.json()["entry"]
    assert entries and all(e["fullUrl"].startswith(f"{gateway.url}/fhir/") for e in entries)
    (endpoint,) = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Endpoint"]
    assert endpoint["address"] == f"{gateway.url}/dicom-web"


def test_untrusted_certificate_is_refused(gateway: TlsGateway) -> None:
    with pytest.raises(requests.ConnectionError):  # SSLError, or closed without an answer
        gateway.get(QIDO, cert=gateway.untrusted)
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _refused(gateway.port, _client(gateway.pki, gateway.untrusted, version))
    assert gateway.get(LIVE, cert=gateway.trusted).status_code == 200  # still serving


def test_without_a_certificate(gateway: TlsGateway, request: pytest.FixtureRequest) -> None:
    if request.node.callspec.params["gateway"] == "optional":
        response = gateway.get(QIDO)
        assert response.status_code == 200 and response.json()
        assert response.json()[0]["00081190"]["Value"][0].startswith("https://")
        return
    with pytest.raises(requests.ConnectionError):
        gateway.get(QIDO)
    with pytest.raises(requests.ConnectionError):
        gateway.get(LIVE)  # health too: nothing is answered without the handshake
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _refused(gateway.port, _client(gateway.pki, tls=version))


def test_tls_1_1_is_refused(gateway: TlsGateway) -> None:
    """A TLS 1.1 client with a trusted certificate is refused; the same client completes a
    TLS 1.1 handshake with a server that allows it, so the refusal is the gateway's."""
    with pytest.raises(ssl.SSLError):
        _handshake(gateway.port, _tls11_client(gateway.pki))
    assert _tls11_control(gateway.pki) == "TLSv1.1"


def _handshake(port: int, context: ssl.SSLContext) -> str | None:
    """The TLS version a handshake with 127.0.0.1:port agrees on."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version()


def _tls11_control(pki: Pki) -> str | None:
    """The TLS version :func:`_tls11_client` gets from a server that allows TLS 1.0 and up."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            connection, _ = listener.accept()
            with contextlib.suppress(OSError), server.wrap_socket(connection, server_side=True):
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        version = _handshake(port, _tls11_client(pki))
        thread.join(10)
    return version


def test_plain_http_on_the_https_port_gets_no_answer(gateway: TlsGateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        raw.sendall(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = raw.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert b"HTTP/" not in answer
    # ...and the gateway serves the next client as before.
    assert gateway.get(LIVE, cert=gateway.trusted).status_code == 200


# ---------------------------------------------------------------------- revocation (CRLs)


@pytest.fixture
def crl_gateway(pacs: Pacs, pki: Pki, tmp_path: Path) -> Iterator[tuple[TlsGateway, Path]]:
    """A gateway requiring client certificates, checked against a CRL (revoking
    pki.revoked_cert) it looks at every second; the CRL file."""
    port = free_port()
    crl = write_crl(pki, tmp_path / "clients.crl.pem", [pki.revoked_cert])
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
default_site = "main"
[server]
host = "127.0.0.1"
port = {port}
tls_cert = "{pki.server_cert}"
tls_key = "{pki.server_key}"
tls_client_ca = "{pki.ca}"
tls_client_cert = "required"
tls_client_crl = "{crl}"
tls_client_crl_interval = 1
[[sites]]
id = "main"
url = "{pacs.dicomweb_root}"
[state]
sqlite = "{tmp_path / "state.sqlite3"}"
"""
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    tls_gateway = TlsGateway(url=f"https://127.0.0.1:{port}", port=port, pki=pki, log=log)
    _wait_until_live(proc, tls_gateway)
    try:
        yield tls_gateway, crl
    finally:
        stop_gateway(proc, log)  # and no traceback logged, refused handshakes included


def _refused_get(gateway: TlsGateway, cert: tuple[Path, Path]) -> bool:
    try:
        gateway.get(LIVE, cert=cert)
    except requests.ConnectionError:  # SSLError is one
        return True
    return False


def _eventually(check: Callable[[], bool], what: str, gateway: TlsGateway) -> None:
    """Ask until ``check()`` (the gateway looks at the file when a handshake comes, at most
    once a second, and reads it in a thread: the change shows a few handshakes later)."""
    deadline = time.monotonic() + 20
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what}:\n{gateway.log.read_text()[-3000:]}")
        time.sleep(0.2)


def test_revoked_certificate_is_refused_and_the_crl_reloaded(
    crl_gateway: tuple[TlsGateway, Path],
) -> None:
    gateway, crl = crl_gateway
    pki = gateway.pki
    revoked = (pki.revoked_cert, pki.revoked_key)
    response = gateway.get(QIDO, cert=gateway.trusted)
    assert response.status_code == 200 and response.json()
    with pytest.raises(requests.ConnectionError):  # refused in the handshake, no answer
        gateway.get(QIDO, cert=revoked)
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _refused(gateway.port, _client(pki, revoked, version))

    # A bad CRL (expired: OpenSSL would refuse everyone) is logged; the one in force stays.
    write_crl(
        pki,
        crl,
        [],
        last_update=-datetime.timedelta(hours=2),
        next_update=-datetime.timedelta(hours=1),
    )
    _eventually(
        lambda: (
            gateway.get(LIVE, cert=gateway.trusted).status_code == 200
            and "stay in force" in gateway.log.read_text()
        ),
        "the bad CRL logged",
        gateway,
    )
    assert "expired at" in gateway.log.read_text()
    assert gateway.get(QIDO, cert=gateway.trusted).status_code == 200
    assert _refused_get(gateway, revoked)

    # A new CRL revoking the good certificate too: read again, that client is refused.
    write_crl(pki, crl, [pki.revoked_cert, pki.client_cert])
    _eventually(lambda: _refused_get(gateway, gateway.trusted), "the new CRL in force", gateway)
    assert "read again: 1 CRL(s), 2 revoked certificate(s)" in gateway.log.read_text()
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        _refused(gateway.port, _client(pki, gateway.trusted, version))
        _refused(gateway.port, _client(pki, revoked, version))
