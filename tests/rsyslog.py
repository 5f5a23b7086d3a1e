"""A real rsyslogd as the ATNA audit repository, started by scripts/rsyslog.sh.

``rsyslog`` (session): an :class:`Rsyslog` listening on loopback over TCP and, when Debian's
``rsyslog-openssl`` is there, over TLS with client certificates required (a CA, a server and a
client certificate are made here with ``cryptography``). It starts in a private temporary
directory and is stopped (and removed) at the end; set NCPEH_TEST_RSYSLOG_DIR to a directory
to reuse the server there instead (started if needed, left running). Tests may stop and start
it; each test finds it running. received.log grows across tests (and reuses): a test looks
only at the AuditEvent ids it sent.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.servers import read_env, run_script

ROOT = Path(__file__).resolve().parent.parent
RSYSLOG_SH = ROOT / "scripts" / "rsyslog.sh"

__all__ = ["Rsyslog", "Tls", "make_certificates", "rsyslog", "rsyslog_server"]


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return run_script(RSYSLOG_SH, *args, timeout=60)


def _env(directory: Path) -> dict[str, str]:
    return read_env(directory / "env")


def _has_tls_driver() -> bool:
    """rsyslog's OpenSSL stream driver (Debian's rsyslog-openssl) is installed."""
    return any(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so")) or any(
        Path("/usr/lib/rsyslog").glob("lmnsd_ossl.so")
    )


@dataclass(frozen=True)
class Tls:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificates(directory: Path) -> Tls:
    """A test CA, a certificate for 127.0.0.1 / localhost (server) and one for a gateway node
    (client), EC P-256, valid for a day; made once per directory."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(
        *(directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"))
    )
    if all(p.exists() for p in vars(tls).values()):
        return tls
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ncpeh test audit CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: str, usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    server_pem, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH)
    client_pem, client_key = leaf("ncpeh-gateway-node", ExtendedKeyUsageOID.CLIENT_AUTH)
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.server_cert.write_bytes(server_pem)
    tls.client_cert.write_bytes(client_pem)
    for path, data in ((tls.server_key, server_key), (tls.client_key, client_key)):
        path.write_bytes(data)
        path.chmod(0o600)
    return tls


@dataclass
class Rsyslog:
    directory: Path
    port: int
    tls_port: int | None
    tls: Tls | None

    @property
    def received_path(self) -> Path:
        return self.directory / "received.log"

    def start(self) -> None:
        """Start it again (same ports); a no-op if it runs."""
        started = _script("start", str(self.directory))
        if started.returncode != 0:
            pytest.fail(f"could not start rsyslogd (scripts/rsyslog.sh):\n{started.stderr[-3000:]}")

    def stop(self) -> None:
        stopped = _script("stop", str(self.directory))
        assert stopped.returncode == 0, stopped.stderr

    def running(self) -> bool:
        return _script("status", str(self.directory)).returncode == 0

    def received(self, ids: Collection[str]) -> Counter[str]:
        """How many times each AuditEvent id of ``ids`` was received (not parsing the rest)."""
        wanted = set(ids)
        counts: Counter[str] = Counter()
        for line in self.received_path.read_text(encoding="utf-8").splitlines():
            start = line.find('"id":"')
            if start < 0:
                continue
            end = line.find('"', start + 6)
            event_id = line[start + 6 : end]
            if event_id in wanted:
                counts[event_id] += 1
        return counts

    def events(self, ids: Collection[str]) -> list[dict[str, object]]:
        """The received AuditEvents among ``ids``, parsed, in the order received."""
        wanted = set(ids)
        out = []
        for line in self.received_path.read_text(encoding="utf-8").splitlines():
            if '"id":"' in line:
                event = json.loads(line)
                if event.get("id") in wanted:
                    out.append(event)
        return out

    def headers(self) -> list[list[str]]:
        """``[PRI, APP-NAME, PROCID, MSGID, HOSTNAME, TIMESTAMP]`` of each message received."""
        text = (self.directory / "received-headers.log").read_text(encoding="utf-8")
        return [line.split(" ") for line in text.splitlines()]

    def wait_for(self, ids: Collection[str], timeout: float = 15.0) -> Counter[str]:
        """Poll until every id of ``ids`` was received (or ``timeout``); the counts."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.received(ids)
            if len(counts) == len(set(ids)) or time.monotonic() > deadline:
                return counts
            time.sleep(0.05)


def _start(directory: Path) -> Rsyslog:
    args = ["start", str(directory)]
    tls: Tls | None = None
    if _has_tls_driver():
        tls = make_certificates(directory / "tls")
        args += [
            "--tls-ca", str(tls.ca),
            "--tls-cert", str(tls.server_cert),
            "--tls-key", str(tls.server_key),
            "--tls-auth", "x509/certvalid",
        ]  # fmt: skip
    started = _script(*args)
    if started.returncode != 0:
        pytest.fail(f"could not start rsyslogd (scripts/rsyslog.sh):\n{started.stderr[-3000:]}")
    env = _env(directory)
    tls_port = env.get("NCPEH_RSYSLOG_TLS_PORT") or None
    return Rsyslog(
        directory=directory,
        port=int(env["NCPEH_RSYSLOG_PORT"]),
        tls_port=int(tls_port) if tls_port else None,
        tls=tls if tls_port else None,
    )


@pytest.fixture(scope="session")
def rsyslog_server() -> Iterator[Rsyslog]:
    reuse = os.environ.get("NCPEH_TEST_RSYSLOG_DIR")
    if reuse:
        yield _start(Path(reuse).resolve())  # `start` is a no-op if it already runs
        return
    directory = Path(tempfile.mkdtemp(prefix="ncpeh-rsyslog-test-"))
    try:
        yield _start(directory)
    finally:
        _script("stop", str(directory), "--purge")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def rsyslog(rsyslog_server: Rsyslog) -> Rsyslog:
    """The session's rsyslogd, running (a test before may have stopped it)."""
    rsyslog_server.start()
    return rsyslog_server
