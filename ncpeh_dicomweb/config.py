"""Frozen settings: public URL, sites (id → backend settings), limits.

Read from a TOML file (``--config`` or ``NCPEH_CONFIG``), with environment overrides for
secrets, and validated at start-up: a bad value raises :class:`ConfigError` naming the key.

Example::

    public_url = "https://ncp.example.org/imaging"   # optional; else taken from each request
    default_site = "central"

    [server]
    host = "0.0.0.0"
    port = 8080
    request_header_timeout = 15              # seconds a client may take to send a request head
    shutdown_grace = 20                      # at SIGTERM, seconds streams under way may finish in
    workers = 1                              # processes serving the port (web/workers.py)
    tls_cert = "/etc/ncpeh/server.pem"       # optional: serve HTTPS (PEM certificate chain)
    tls_key = "/etc/ncpeh/server.key"        # its key (passphrase: NCPEH_TLS_KEY_PASSWORD)
    tls_client_ca = "/etc/ncpeh/clients-ca.pem"  # optional: verify client certificates
    tls_client_cert = "required"             # required (default with a CA) | optional | none
    tls_client_crl = "/etc/ncpeh/clients.crl.pem"  # optional: the CAs' CRLs (PEM), re-read
    tls_client_crl_interval = 60             # when its mtime changes, looked at this often
    [server.tls_client_identities]           # optional: RFC 4514 subject = client id
    "CN=ncp-cz,O=NCPeH CZ,C=CZ" = "ncpeh-cz"

    [limits]
    qido_max_results = 1000

    [viewer]
    dir = "/srv/ohif/dist"   # optional: serve the OHIF viewer (scripts/ohif.sh) at /viewer/

    [auth]   # bearer tokens of clients; without a key source: loopback only, unauthenticated
    jwks_url = "https://idp.example.org/.well-known/jwks.json"   # or jwks_file = "..."
    issuer = "https://idp.example.org"
    audience = "https://ncp.example.org/imaging"                 # or a list
    # opaque tokens: checked at the IdP's RFC 7662 introspection endpoint (with or without JWKS;
    # the secret may come from NCPEH_INTROSPECTION_CLIENT_SECRET)
    # introspection_url = "https://idp.example.org/oauth2/introspect"
    # introspection_client_id = "ncp-imaging-gateway"

    [state]
    sqlite = "var/ncpeh-state.sqlite3"   # the default store: one SQLite file
    # or PostgreSQL, shared by replicas (NCPEH_DATABASE_URL overrides; it may hold a password):
    # database_url = "postgresql://gateway@db.internal/ncpeh"

    [[sites]]
    id = "central"
    kind = "dicomweb"
    url = "http://pacs.internal:8042/dicom-web"
    connect_timeout = 5
    read_timeout = 60
    search_timeout = 30
    # auth: none | basic | bearer; secrets may come from the environment:
    #   NCPEH_SITE_CENTRAL_PASSWORD, NCPEH_SITE_CENTRAL_TOKEN
    auth = "basic"
    username = "gateway"
    iocm = true                  # hide IHE IOCM rejected instances and notes (default)
    iocm_refresh_seconds = 30    # read the PACS's rejection notes again this often (0: always)
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from .security.audit.settings import AuditSettings
from .security.jwks import MAX_BYTES, JwksError, parse_jwks
from .security.scopes import CONFIGURABLE, DEFAULT_SCOPES, Interaction, is_scope_token
from .security.tokens import DEFAULT_ALGORITHMS, SUPPORTED_ALGORITHMS

__all__ = [
    "MAX_WORKERS",
    "AuthSettings",
    "ConfigError",
    "DicomWebSite",
    "DimseSite",
    "Limits",
    "Settings",
    "TlsSettings",
    "auth_from_mapping",
    "check_auth",
    "check_client_crls",
    "check_database_url",
    "check_exposure",
    "check_http_url",
    "check_jwks_file",
    "check_jwks_url",
    "check_subject",
    "check_viewer_dir",
    "is_loopback",
    "load_settings",
    "parse_dimse_address",
    "settings_from_mapping",
    "tls_from_mapping",
]

_SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_WORKERS = 64  # [server] workers, serve --workers


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class DicomWebSite:
    """A site whose PACS is reached over DICOMweb (PS3.18)."""

    id: str
    url: str  # the PACS's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # longest silence while streaming
    search_timeout: float = 30.0  # whole QIDO / metadata request
    max_connections: int = 32
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    # Other URL prefixes the PACS may write into its answers (e.g. its own idea of its
    # public address); rewritten to the gateway's URL like ``url`` itself.
    url_aliases: tuple[str, ...] = ()
    # IHE IOCM: instances rejected by a rejection note in the PACS (and the notes) are never
    # served (backends/rejections.py); the notes are read again this often (0: every request).
    iocm: bool = True
    iocm_refresh_seconds: float = 30.0
    kind: Literal["dicomweb"] = "dicomweb"


@dataclass(frozen=True, slots=True)
class DimseSite:
    """A site whose PACS speaks only DIMSE: C-FIND for search, C-GET or C-MOVE to retrieve."""

    id: str
    host: str
    port: int
    called_aet: str  # the PACS's AE title
    calling_aet: str = "NCPEH-GW"  # ours; also the C-MOVE destination the PACS must know
    retrieve: Literal["c-get", "c-move"] = "c-get"
    store_host: str = "127.0.0.1"  # where our C-MOVE storage SCP listens
    store_port: int = 11113
    max_associations: int = 4
    # C-GETs / C-MOVEs a study retrieve is split into, one per series, at once (at most
    # max_associations; none if cache_max_bytes is under 32 MB each); 1: one for the study.
    retrieve_parallelism: int = 1
    # Retrieves on the gateway's own association code, several times faster: the C-GET
    # (backends/dimse/native.py) or the C-MOVE destination, the storage SCP (native_scp.py);
    # false: on pynetdicom's, as searches and C-MOVE requests always are.
    native_dimse: bool = True
    # A pooled association idle this long is released (pynetdicom's idle ones cost CPU).
    idle_release_seconds: float = 5.0
    connect_timeout: float = 5.0
    dimse_timeout: float = 30.0  # longest wait for any one DIMSE response
    search_timeout: float = 30.0  # a whole C-FIND
    operation_timeout: float = 3600.0  # a whole C-GET / C-MOVE
    cache_dir: str | None = None  # None: a private temporary directory, removed at exit
    cache_max_bytes: int = 2 << 30
    iocm: bool = True  # as DicomWebSite.iocm
    iocm_refresh_seconds: float = 30.0
    kind: Literal["dimse"] = "dimse"


Site = DicomWebSite | DimseSite


@dataclass(frozen=True, slots=True)
class Limits:
    qido_max_results: int = 1000  # server maximum for QIDO `limit`
    max_query_string: int = 8192
    # Retrievals (studies, series, frames...) one client may have streaming at once; the next
    # is 429. A client: its token's client id or subject, its certificate, else its address.
    max_streams_per_client: int = 64


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """HTTPS and client certificates (``[server] tls_*``); the context: ``web/tls.py``."""

    cert_file: str  # PEM: the server's certificate, then its chain
    key_file: str  # PEM: its private key (may be cert_file itself)
    key_password: str | None = field(default=None, repr=False)  # NCPEH_TLS_KEY_PASSWORD
    client_ca: str | None = None  # PEM bundle: the CAs a client certificate must chain to
    # Ask clients for a certificate: required (no certificate: handshake refused) | optional
    # (checked if sent) | none. Default: required when client_ca is set, else none.
    client_cert: Literal["required", "optional", "none"] = "none"
    min_version: Literal["1.2", "1.3"] = "1.2"
    # (RFC 4514 subject as check_subject normalizes it, client id): who a certificate is for.
    client_identities: tuple[tuple[str, str], ...] = ()
    # PEM: CRLs of the client CAs (one for each), checked by check_client_crls; web/tls.py
    # reads the file again when its mtime changes, looking every client_crl_interval seconds.
    client_crl: str | None = None
    client_crl_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Bearer-token authentication of clients (``[auth]``); see ``security/``."""

    enabled: bool | None = None  # None: on exactly when a key source is configured
    jwks_file: str | None = None  # the IdP's JWK Set, from a file...
    jwks_url: str | None = None  # ...or fetched from its URL
    issuer: str | None = None  # the "iss" every token must carry
    audience: tuple[str, ...] = ()  # "aud" must hold one of these
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: float = 60.0  # clock skew allowed on exp / nbf / iat
    dicomweb_scope: str = DEFAULT_SCOPES[Interaction.DICOMWEB]  # every DICOMweb route
    # (interaction, scope) pairs overriding security.scopes.DEFAULT_SCOPES (FHIR interactions)
    scopes: tuple[tuple[str, str], ...] = ()
    jwks_min_refresh_seconds: float = 30.0  # at most one JWK Set fetch per this many seconds
    # Claims binding a token to one patient (security/patient.py); None: that claim is not read.
    patient_claim: str | None = "patient"  # a Patient id of ours, or "Patient/{id}"
    patient_identifier_claim: str | None = None  # "system|value" or {"system", "value"}
    # Opaque tokens checked at the IdP (RFC 7662, security/introspection.py); None: JWTs only.
    introspection_url: str | None = None
    introspection_client_id: str | None = None
    introspection_client_secret: str | None = field(default=None, repr=False)
    introspection_cache_seconds: float = 60.0  # an active answer is trusted this long at most

    @property
    def key_source(self) -> str | None:
        return self.jwks_file or self.jwks_url

    @property
    def token_source(self) -> str | None:
        """Where tokens are checked: the JWK Set, else the introspection endpoint."""
        return self.key_source or self.introspection_url

    @property
    def active(self) -> bool:
        """True if every non-public request needs a valid token."""
        return self.enabled if self.enabled is not None else self.token_source is not None

    def required_scope(self, interaction: Interaction) -> str | None:
        """The scope a token needs for ``interaction``; None: none (public, or any token)."""
        if interaction is Interaction.DICOMWEB:
            return self.dicomweb_scope
        return dict(self.scopes).get(interaction.value) or DEFAULT_SCOPES.get(interaction)


@dataclass(frozen=True, slots=True)
class Settings:
    sites: tuple[Site, ...]
    default_site: str
    public_url: str | None = None  # None: derived from each request's Host and scheme
    host: str = "127.0.0.1"
    port: int = 8080
    # Seconds a client may take to send a request's head (slowloris); web/server.py.
    request_header_timeout: float = 15.0
    # At a stop, how long retrievals under way may take to finish before they are cut.
    shutdown_grace: float = 20.0
    # Processes serving the port, each the whole gateway (SO_REUSEPORT); web/workers.py.
    workers: int = 1
    tls: TlsSettings | None = None  # HTTPS ([server] tls_*); None: plain HTTP
    limits: Limits = Limits()
    viewer_dir: str | None = None  # OHIF's prebuilt dist/, served at /viewer/; None: no viewer
    # Browser origins allowed to call the gateway (CORS); ("*",) for any; () for none.
    cors_origins: tuple[str, ...] = ()
    # Proxies (addresses or networks) whose Forwarded / X-Forwarded-* headers name the public URL.
    trusted_proxies: tuple[str, ...] = ()
    # SQLite file of what the gateway remembers (FHIR ids served, for 410 Gone).
    state_path: str = "var/ncpeh-state.sqlite3"
    # PostgreSQL instead of the SQLite file (replicas share it); None: SQLite.
    database_url: str | None = field(default=None, repr=False)
    # FHIR identifier system of patient identifiers → DICOM Issuer of Patient ID, both ways.
    patient_id_issuers: tuple[tuple[str, str], ...] = ()
    auth: AuthSettings = AuthSettings()
    # The audit trail ([audit]): AuditEvents as JSON lines (default) and/or to syslog.
    audit: AuditSettings = field(default_factory=AuditSettings)

    def site(self, site_id: str) -> Site | None:
        return next((s for s in self.sites if s.id == site_id), None)


# ---------------------------------------------------------------- loading


def load_settings(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a TOML settings file; ``env`` (default: os.environ) holds secrets."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return settings_from_mapping(raw, os.environ if env is None else env)


def settings_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Build :class:`Settings` from parsed TOML (or flags), validating every key."""
    _no_unknown(
        raw,
        {
            "public_url",
            "default_site",
            "server",
            "limits",
            "sites",
            "viewer",
            "state",
            "fhir",
            "auth",
            "audit",
        },
        "",
    )
    auth = auth_from_mapping(_table(raw, "auth"), env)
    try:
        audit = AuditSettings.from_mapping(_table(raw, "audit"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    state = _table(raw, "state")
    _no_unknown(state, {"sqlite", "database_url"}, "state.")
    database_url = _opt_str(state, "database_url", "state.")
    database_url_key = "state.database_url"
    if env.get("NCPEH_DATABASE_URL"):
        database_url, database_url_key = env["NCPEH_DATABASE_URL"], "NCPEH_DATABASE_URL"
    fhir = _table(raw, "fhir")
    _no_unknown(fhir, {"patient_id_issuers"}, "fhir.")
    issuers = fhir.get("patient_id_issuers", {})
    if not isinstance(issuers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in issuers.items()
    ):
        raise ConfigError("fhir.patient_id_issuers: a table of FHIR system = DICOM issuer")
    server = _table(raw, "server")
    _no_unknown(
        server,
        {
            "host",
            "port",
            "request_header_timeout",
            "shutdown_grace",
            "workers",
            "cors_origins",
            "trusted_proxies",
            *_TLS_KEYS,
        },
        "server.",
    )
    limits_raw = _table(raw, "limits")
    _no_unknown(
        limits_raw,
        {"qido_max_results", "max_query_string", "max_streams_per_client"},
        "limits.",
    )
    viewer = _table(raw, "viewer")
    _no_unknown(viewer, {"dir"}, "viewer.")
    viewer_dir = _opt_str(viewer, "dir", "viewer.")
    sites_raw = raw.get("sites")
    if not isinstance(sites_raw, list) or not sites_raw:
        raise ConfigError("sites: at least one [[sites]] table is required")
    sites = tuple(_site(s, i, env) for i, s in enumerate(sites_raw))
    ids = [s.id for s in sites]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sites: duplicate site id in {ids}")
    default = _opt_str(raw, "default_site", "") or ids[0]
    if default not in ids:
        raise ConfigError(f"default_site: {default!r} is not one of the site ids {ids}")
    public_url = _opt_str(raw, "public_url", "")
    if public_url is not None:
        public_url = check_http_url(public_url, "public_url")
    return Settings(
        sites=sites,
        default_site=default,
        public_url=public_url,
        host=_opt_str(server, "host", "server.") or "127.0.0.1",
        port=_int(server, "port", "server.", 8080, 0, 65535),
        request_header_timeout=_number(server, "request_header_timeout", "server.", 15.0, 1, 3600),
        shutdown_grace=_number(server, "shutdown_grace", "server.", 20.0, 0, 3600),
        workers=_int(server, "workers", "server.", 1, 1, MAX_WORKERS),
        tls=tls_from_mapping(server, env),
        limits=Limits(
            qido_max_results=_int(limits_raw, "qido_max_results", "limits.", 1000, 1, 100_000),
            max_query_string=_int(limits_raw, "max_query_string", "limits.", 8192, 256, 1 << 20),
            max_streams_per_client=_int(
                limits_raw, "max_streams_per_client", "limits.", 64, 1, 10_000
            ),
        ),
        viewer_dir=None if viewer_dir is None else check_viewer_dir(viewer_dir, "viewer.dir"),
        cors_origins=tuple(
            _check_origin(o, "server.cors_origins") for o in _str_list(server, "cors_origins")
        ),
        trusted_proxies=tuple(
            _check_network(n, "server.trusted_proxies")
            for n in _str_list(server, "trusted_proxies")
        ),
        state_path=_opt_str(state, "sqlite", "state.") or "var/ncpeh-state.sqlite3",
        database_url=None
        if database_url is None
        else check_database_url(database_url, database_url_key),
        patient_id_issuers=tuple(sorted(issuers.items())),
        auth=auth,
        audit=audit,
    )


# ---------------------------------------------------------------- [server] TLS

_TLS_KEYS = {
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tls_client_cert",
    "tls_min_version",
    "tls_client_identities",
    "tls_client_crl",
    "tls_client_crl_interval",
}
_TLS_CLIENT_CERT = ("required", "optional", "none")
_TLS_VERSIONS: dict[object, Literal["1.2", "1.3"]] = {  # TOML may say "1.2" or 1.2
    "1.2": "1.2",
    "1.3": "1.3",
    1.2: "1.2",
    1.3: "1.3",
}
_PEM_MAX_BYTES = 1 << 20
_CRL_MAX_BYTES = 64 << 20  # a large CA's CRL runs to megabytes
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
# Attribute names openssl prints (`-nameopt RFC2253`) beyond those RFC 4514 itself knows.
_SUBJECT_NAMES = {
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
    "title": NameOID.TITLE,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
}


def tls_from_mapping(server: Mapping[str, Any], env: Mapping[str, str]) -> TlsSettings | None:
    """``[server] tls_*`` → :class:`TlsSettings` (None: plain HTTP). Files are read and
    checked now (certificate, key, that they match, the client CAs) so a bad one is named at
    load, not at the first handshake; the passphrase of an encrypted key comes from
    ``NCPEH_TLS_KEY_PASSWORD``."""
    where = "server."
    cert_value = _opt_str(server, "tls_cert", where)
    if cert_value is None:
        others = sorted(k for k in _TLS_KEYS if k in server)
        if others:
            raise ConfigError(
                f"server.tls_cert: required with server.{others[0]} (the server's PEM "
                "certificate: client certificates are only asked over HTTPS)"
            )
        return None
    cert_path, cert_pem = _read_pem(cert_value, "server.tls_cert")
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise ConfigError(f"server.tls_cert: {cert_value!r} holds no PEM certificate") from None
    key_value = _opt_str(server, "tls_key", where)
    if key_value is None:
        if b"PRIVATE KEY-----" not in cert_pem:
            raise ConfigError(
                f"server.tls_key: required (server.tls_cert {cert_value!r} holds no private key)"
            )
        key_path, key_pem, key_value = cert_path, cert_pem, cert_value
    else:
        key_path, key_pem = _read_pem(key_value, "server.tls_key")
    password = env.get("NCPEH_TLS_KEY_PASSWORD") or None
    key = _private_key(key_pem, password, key_value)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise ConfigError(
            f"server.tls_key: {key_value!r} is not the key of the certificate in "
            f"server.tls_cert {cert_value!r}"
        )
    ca_value = _opt_str(server, "tls_client_ca", where)
    ca_path = None
    if ca_value is not None:
        ca_path, ca_pem = _read_pem(ca_value, "server.tls_client_ca")
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise ConfigError(
                f"server.tls_client_ca: {ca_value!r} holds no PEM certificate"
            ) from None
    mode = server.get("tls_client_cert", "none" if ca_path is None else "required")
    if mode not in _TLS_CLIENT_CERT:
        raise ConfigError(
            f"server.tls_client_cert: must be 'required', 'optional' or 'none', not {mode!r}"
        )
    if mode != "none" and ca_path is None:
        raise ConfigError(
            f"server.tls_client_cert: {mode!r} needs server.tls_client_ca (the CAs that "
            "client certificates are checked against)"
        )
    if mode == "none" and ca_path is not None:
        raise ConfigError(
            "server.tls_client_cert: 'none' asks no client certificate, yet "
            "server.tls_client_ca is set: remove one of them"
        )
    version = server.get("tls_min_version", "1.2")
    if not isinstance(version, str | float) or version not in _TLS_VERSIONS:
        raise ConfigError(
            f"server.tls_min_version: must be '1.2' or '1.3' (nothing older is offered), "
            f"not {version!r}"
        )
    identities = server.get("tls_client_identities", {})
    if not isinstance(identities, dict):
        raise ConfigError(
            "server.tls_client_identities: must be a table of RFC 4514 subject = client id"
        )
    if identities and mode == "none":
        raise ConfigError(
            "server.tls_client_identities: needs client certificates (server.tls_client_ca)"
        )
    mapped: dict[str, str] = {}
    for subject, client_id in identities.items():
        key_name = f"server.tls_client_identities.{subject!r}"
        normal = check_subject(subject, key_name)
        if not isinstance(client_id, str) or not client_id.strip():
            raise ConfigError(f"{key_name}: the client id must be a non-empty string")
        if normal in mapped:
            raise ConfigError(f"{key_name}: the same subject as another entry ({normal})")
        mapped[normal] = client_id.strip()
    crl_value = _opt_str(server, "tls_client_crl", where)
    crl_path = None
    if crl_value is not None:
        crl_path = check_client_crls(crl_value, ca_path)[0]
    elif "tls_client_crl_interval" in server:
        raise ConfigError("server.tls_client_crl_interval: needs server.tls_client_crl")
    interval = _number(server, "tls_client_crl_interval", where, 60, 1, 3600)
    return TlsSettings(
        cert_file=cert_path,
        key_file=key_path,
        key_password=password,
        client_ca=ca_path,
        client_cert=mode,
        min_version=_TLS_VERSIONS[version],
        client_identities=tuple(sorted(mapped.items())),
        client_crl=crl_path,
        client_crl_interval=interval,
    )


def check_client_crls(
    value: str,
    ca_file: str | None,
    *,
    key: str = "server.tls_client_crl",
    now: datetime.datetime | None = None,
) -> tuple[str, tuple[x509.CertificateRevocationList, ...]]:
    """(absolute path, the CRLs) of the PEM file ``value``, as OpenSSL would use them to check
    the client certificates of the CAs in ``ca_file`` (``X509_V_FLAG_CRL_CHECK``, leaf only);
    else ConfigError naming ``key``. The file holds CRLs only (a certificate in it would be
    trusted like one in tls_client_ca): each signed by a CA of ``ca_file`` (whose key usage
    allows it), valid now (OpenSSL refuses every certificate of a CA whose CRL is expired or
    not yet valid), no delta CRL (OpenSSL would ignore it); and every CA of ``ca_file`` has
    one (OpenSSL refuses every certificate of a CA without a CRL)."""
    if ca_file is None:
        raise ConfigError(
            f"{key}: needs server.tls_client_ca (the CAs whose client certificates these "
            "CRLs revoke)"
        )
    path = Path(value).expanduser().resolve()
    try:
        with path.open("rb") as file:
            data = file.read(_CRL_MAX_BYTES + 1)
        with Path(ca_file).open("rb") as file:
            cas = x509.load_pem_x509_certificates(file.read(_PEM_MAX_BYTES + 1))
    except OSError as exc:
        what = value if exc.filename == str(path) else f"server.tls_client_ca {ca_file!r}"
        raise ConfigError(f"{key}: cannot read {what!r} ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(f"{key}: server.tls_client_ca {ca_file!r} holds no certificate") from None
    if len(data) > _CRL_MAX_BYTES:
        raise ConfigError(f"{key}: {value!r} is larger than {_CRL_MAX_BYTES} bytes")
    blocks = _PEM_BLOCK.findall(data)
    others = sorted({label.decode() for label, _ in blocks if label != b"X509 CRL"})
    if others:
        raise ConfigError(
            f"{key}: {value!r} holds a PEM {others[0]}: only CRLs (-----BEGIN X509 CRL-----) "
            "belong in it (the CAs go in server.tls_client_ca)"
        )
    if not blocks:
        raise ConfigError(f"{key}: {value!r} holds no PEM CRL (-----BEGIN X509 CRL-----)")
    now = now or datetime.datetime.now(datetime.UTC)
    crls: list[x509.CertificateRevocationList] = []
    covered: set[int] = set()  # indexes in cas of the CAs with a CRL
    for number, (_, body) in enumerate(blocks, 1):
        block = b"-----BEGIN X509 CRL-----" + body + b"-----END X509 CRL-----"
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError:
            raise ConfigError(f"{key}: CRL {number} in {value!r} is not an X.509 CRL") from None
        issuer = crl.issuer.rfc4514_string()
        which = f"{key}: the CRL of {issuer} in {value!r}"
        with contextlib.suppress(x509.ExtensionNotFound):
            crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
            raise ConfigError(f"{which} is a delta CRL: give the full CRL")
        named = [i for i, ca in enumerate(cas) if ca.subject == crl.issuer]
        if not named:
            raise ConfigError(
                f"{which}: {issuer} is not one of the CAs in server.tls_client_ca {ca_file!r}"
            )
        signers = [i for i in named if _signed_by(crl, cas[i])]
        if not signers:
            raise ConfigError(
                f"{which} is not signed by that CA (the one in server.tls_client_ca {ca_file!r})"
            )
        for i in signers:
            with contextlib.suppress(x509.ExtensionNotFound):
                usage = cas[i].extensions.get_extension_for_class(x509.KeyUsage).value
                if not usage.crl_sign:
                    raise ConfigError(
                        f"{which}: the CA's key usage does not allow CRL signing (cRLSign): "
                        "OpenSSL would refuse the CRL, and so every client certificate"
                    )
        if crl.last_update_utc > now:
            raise ConfigError(
                f"{which} is not valid before {crl.last_update_utc:%Y-%m-%d %H:%M:%S} UTC "
                "(its lastUpdate): until then OpenSSL would refuse every client certificate "
                "of that CA"
            )
        next_update = crl.next_update_utc
        if next_update is not None and next_update <= now:
            raise ConfigError(
                f"{which} expired at {next_update:%Y-%m-%d %H:%M:%S} UTC (its nextUpdate): "
                "OpenSSL would refuse every client certificate of that CA; publish a fresh CRL"
            )
        covered.update(signers)
        crls.append(crl)
    for i, ca in enumerate(cas):
        if i not in covered:
            raise ConfigError(
                f"{key}: {value!r} holds no CRL of the CA {ca.subject.rfc4514_string()} (in "
                f"server.tls_client_ca): with CRL checking OpenSSL refuses every client "
                "certificate of a CA without a CRL; add its CRL (an empty one if it revokes "
                "nothing)"
            )
    return str(path), tuple(crls)


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        # X25519/X448/DH keys cannot sign: TypeError, caught below.
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):  # a key that cannot sign CRLs
        return False


def check_subject(value: str, key: str) -> str:
    """``value``, a distinguished name in RFC 4514 form (``CN=ncp-a,O=Hospital,C=CZ``: most
    specific first, as ``openssl x509 -noout -subject -nameopt RFC2253`` prints it), in the
    form ``x509.Name.rfc4514_string`` gives; else ConfigError naming ``key``."""
    try:
        name = x509.Name.from_rfc4514_string(value, _SUBJECT_NAMES)
    except ValueError:
        name = None
    if name is None or not name.rdns:
        raise ConfigError(
            f"{key}: not a distinguished name in RFC 4514 form, such as CN=ncp-a,O=Hospital,C=CZ "
            "(no spaces after commas; `openssl x509 -noout -subject -nameopt RFC2253` prints it)"
        )
    return name.rfc4514_string()


def _read_pem(value: str, key: str) -> tuple[str, bytes]:
    """(absolute path, contents) of the PEM file ``value``, else ConfigError naming ``key``."""
    path = Path(value).expanduser().resolve()
    try:
        with path.open("rb") as file:
            data = file.read(_PEM_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {value!r} ({exc.strerror})") from None
    if len(data) > _PEM_MAX_BYTES:
        raise ConfigError(f"{key}: {value!r} is larger than {_PEM_MAX_BYTES} bytes")
    return str(path), data


def _private_key(pem: bytes, password: str | None, value: str) -> PrivateKeyTypes:
    """The private key in ``pem`` (decrypted with ``password`` if it is encrypted)."""
    secret = None if password is None else password.encode()
    try:
        return serialization.load_pem_private_key(pem, secret)
    except TypeError:
        if secret is None:
            raise ConfigError(
                f"server.tls_key: {value!r} is encrypted: give its passphrase in "
                "NCPEH_TLS_KEY_PASSWORD"
            ) from None
        with contextlib.suppress(ValueError, UnsupportedAlgorithm):
            return serialization.load_pem_private_key(pem, None)  # it has no passphrase
    except (ValueError, UnsupportedAlgorithm):
        pass
    raise ConfigError(
        f"server.tls_key: {value!r} holds no usable PEM private key"
        + ("" if secret is None else " (or NCPEH_TLS_KEY_PASSWORD is not its passphrase)")
    )


# ---------------------------------------------------------------- [auth]

_AUTH_KEYS = {
    "enabled",
    "jwks_file",
    "jwks_url",
    "issuer",
    "audience",
    "algorithms",
    "leeway_seconds",
    "dicomweb_scope",
    "scopes",
    "jwks_min_refresh_seconds",
    "patient_claim",
    "patient_identifier_claim",
    "introspection_url",
    "introspection_client_id",
    "introspection_client_secret",
    "introspection_cache_seconds",
}
_SCOPE_KEYS = {i.value for i in CONFIGURABLE if i is not Interaction.DICOMWEB}


def auth_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> AuthSettings:
    """``[auth]`` → :class:`AuthSettings`, every key checked (and :func:`check_auth`); ``env``
    may hold the introspection client's secret (``NCPEH_INTROSPECTION_CLIENT_SECRET``)."""
    where = "auth."
    _no_unknown(raw, _AUTH_KEYS, where)
    enabled = raw.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"{where}enabled: must be true or false, not {enabled!r}")
    jwks_file = _opt_str(raw, "jwks_file", where)
    jwks_url = _opt_str(raw, "jwks_url", where)
    audience = raw.get("audience", [])
    if isinstance(audience, str):
        audience = [audience]
    if not isinstance(audience, list) or not all(isinstance(a, str) and a for a in audience):
        raise ConfigError(f"{where}audience: must be a string or a list of strings")
    algorithms = raw.get("algorithms", list(DEFAULT_ALGORITHMS))
    if not isinstance(algorithms, list) or not algorithms:
        raise ConfigError(f"{where}algorithms: must be a non-empty list")
    for alg in algorithms:
        if alg not in SUPPORTED_ALGORITHMS:
            raise ConfigError(
                f"{where}algorithms: {alg!r} is not allowed (asymmetric signatures only: "
                f"{', '.join(SUPPORTED_ALGORITHMS)})"
            )
    scopes = _table(raw, "scopes") if "scopes" in raw else {}
    _no_unknown(scopes, _SCOPE_KEYS, where + "scopes.")
    for key, value in scopes.items():
        _scope(value, f"{where}scopes.{key}")
    dicomweb_scope = raw.get("dicomweb_scope", DEFAULT_SCOPES[Interaction.DICOMWEB])
    introspection_url = _opt_str(raw, "introspection_url", where)
    auth = AuthSettings(
        enabled=enabled,
        jwks_file=None if jwks_file is None else check_jwks_file(jwks_file, where + "jwks_file"),
        jwks_url=None if jwks_url is None else check_jwks_url(jwks_url, where + "jwks_url"),
        issuer=_opt_str(raw, "issuer", where),
        audience=tuple(audience),
        algorithms=tuple(dict.fromkeys(algorithms)),
        leeway_seconds=_number(raw, "leeway_seconds", where, 60.0, 0, 600),
        dicomweb_scope=_scope(dicomweb_scope, where + "dicomweb_scope"),
        scopes=tuple(sorted(scopes.items())),
        jwks_min_refresh_seconds=_number(raw, "jwks_min_refresh_seconds", where, 30.0, 0.01, 3600),
        patient_claim=_claim_name(raw, "patient_claim", where, "patient"),
        patient_identifier_claim=_claim_name(raw, "patient_identifier_claim", where, None),
        introspection_url=None
        if introspection_url is None
        else _introspection_url(introspection_url),
        introspection_client_id=_opt_str(raw, "introspection_client_id", where),
        introspection_client_secret=(env or {}).get("NCPEH_INTROSPECTION_CLIENT_SECRET")
        or _opt_str(raw, "introspection_client_secret", where),
        introspection_cache_seconds=_number(
            raw, "introspection_cache_seconds", where, 60.0, 0, 3600
        ),
    )
    return check_auth(auth)


def _introspection_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"auth.introspection_url: must be an http(s) URL, not {url!r}")
    return url


def check_auth(auth: AuthSettings) -> AuthSettings:
    """``auth`` if its settings fit together (one key source; with it an issuer and an
    audience), else ConfigError; also after command-line flags changed it."""
    if auth.jwks_file and auth.jwks_url:
        raise ConfigError("auth.jwks_url: give auth.jwks_file or auth.jwks_url, not both")
    if auth.enabled and auth.token_source is None:
        raise ConfigError(
            "auth.enabled: true needs a key source: auth.jwks_file or auth.jwks_url (or --jwks),"
            " or auth.introspection_url"
        )
    if auth.introspection_url and not (
        auth.introspection_client_id and auth.introspection_client_secret
    ):
        raise ConfigError(
            "auth.introspection_client_id: the introspection endpoint needs the gateway's client"
            " id and secret (auth.introspection_client_secret or NCPEH_INTROSPECTION_CLIENT_SECRET)"
        )
    if auth.active:
        if not auth.issuer:
            raise ConfigError("auth.issuer: required with a key source (or --issuer)")
        if not auth.audience:
            raise ConfigError("auth.audience: required with a key source (or --audience)")
    return auth


def _claim_name(raw: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
    """A claim's name, or None for ``false`` (the claim is not read)."""
    value = raw.get(key, default)
    if value is False or value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x7e]{1,128}", value):
        raise ConfigError(f"{where}{key}: must be a claim name, or false to read no such claim")
    return value


def _scope(value: object, key: str) -> str:
    if not isinstance(value, str) or not is_scope_token(value):
        raise ConfigError(f"{key}: must be one scope (printable, no space, quote or backslash)")
    return value


def check_jwks_file(value: str, key: str) -> str:
    """``value`` as an absolute path if it is a JWK Set with a usable key, else ConfigError
    naming ``key`` (the file is read again whenever the keys are refreshed)."""
    path = Path(value).expanduser().resolve()
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise JwksError(f"larger than {MAX_BYTES} bytes")
        keys, skipped = parse_jwks(data)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {value!r} ({exc.strerror})") from None
    except JwksError as exc:
        raise ConfigError(f"{key}: {value!r}: {exc}") from None
    if not keys.keys:
        why = f" ({skipped[0]})" if skipped else ""
        raise ConfigError(f"{key}: {value!r} holds no usable signature key{why}")
    return str(path)


def check_jwks_url(value: str, key: str) -> str:
    """``value`` if an http(s) URL (kept as written: a JWK Set URL may end with a slash)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise ConfigError(f"{key}: must be an http(s) URL, not {value!r}")
    return value


def is_loopback(host: str) -> bool:
    """True if ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name (or "" = every interface): not known to be loopback


def check_exposure(settings: Settings) -> str | None:
    """The start-up rule, safe by default: with no token key source the gateway serves only
    on a loopback address, unauthenticated; elsewhere it refuses to start (ConfigError) unless
    ``[auth] enabled = false`` says so. The warning to log loudly, or None if auth is on.

    Required TLS client certificates (``[server] tls_client_cert = "required"``) are client
    authentication too: the operator chose which CA vouches for clients, so they are enough to
    serve beyond loopback without a key source, with a warning saying that every holder of
    such a certificate reads everything (no scopes, no patient binding without tokens)."""
    auth = settings.auth
    if auth.active:
        if auth.jwks_url and urlsplit(auth.jwks_url).scheme == "http":
            host = urlsplit(auth.jwks_url).hostname or ""
            if not is_loopback(host):
                return f"auth.jwks_url is plain http: anyone on the path to {host} can forge keys"
        if auth.introspection_url and urlsplit(auth.introspection_url).scheme == "http":
            host = urlsplit(auth.introspection_url).hostname or ""
            if not is_loopback(host):
                return (
                    f"auth.introspection_url is plain http: clients' tokens and the gateway's "
                    f"secret cross the path to {host} in clear"
                )
        return None
    where = f"{settings.host}:{settings.port}"
    tls = settings.tls
    if tls is not None and tls.client_cert == "required":
        why = "[auth] enabled = false" if auth.enabled is False else "no token key source"
        return (
            f"NO BEARER TOKENS ({why}): clients are authenticated by their TLS certificate "
            f"only: any client with a certificate from server.tls_client_ca ({tls.client_ca}) "
            f"reads every patient's images on {where}"
        )
    if auth.enabled is False:
        return (
            f"AUTHENTICATION IS SWITCHED OFF ([auth] enabled = false): anyone who reaches "
            f"{where} reads every patient's images"
        )
    if not is_loopback(settings.host):
        raise ConfigError(
            f"server.host: {settings.host!r} is not a loopback address and no token key source "
            "is configured: set [auth] jwks_url or jwks_file with issuer and audience (or --jwks "
            "--issuer --audience), or require client certificates (server.tls_client_ca, "
            "tls_client_cert = 'required'), or [auth] enabled = false to serve without "
            "authentication"
        )
    return (
        f"NO AUTHENTICATION: no token key source is configured ([auth] jwks_url / jwks_file, or "
        f"--jwks), so the gateway serves {where} on loopback only, to anyone on this machine"
    )


_SITE_KEYS = {
    "id",
    "kind",
    "url",
    "connect_timeout",
    "read_timeout",
    "search_timeout",
    "max_connections",
    "auth",
    "username",
    "password",
    "token",
    "url_aliases",
    "iocm",
    "iocm_refresh_seconds",
}


def _site(raw: object, index: int, env: Mapping[str, str]) -> Site:
    where = f"sites[{index}]."
    if not isinstance(raw, dict):
        raise ConfigError(f"sites[{index}]: must be a table")
    site_id = _opt_str(raw, "id", where)
    if site_id is None or not _SITE_ID.fullmatch(site_id):
        raise ConfigError(f"{where}id: required, letters, digits, '-' or '_' (at most 64)")
    kind = raw.get("kind", "dicomweb")
    if kind == "dimse":
        return _dimse_site(raw, site_id, where)
    if kind != "dicomweb":
        raise ConfigError(f"{where}kind: {kind!r} is not supported (use 'dicomweb' or 'dimse')")
    _no_unknown(raw, _SITE_KEYS, where)
    url = _opt_str(raw, "url", where)
    if url is None:
        raise ConfigError(f"{where}url: required (the PACS's DICOMweb root)")
    prefix = "NCPEH_SITE_" + re.sub(r"[^A-Z0-9]", "_", site_id.upper()) + "_"
    auth = raw.get("auth", "none")
    if auth not in ("none", "basic", "bearer"):
        raise ConfigError(f"{where}auth: must be 'none', 'basic' or 'bearer', not {auth!r}")
    username = env.get(prefix + "USERNAME") or _opt_str(raw, "username", where)
    password = env.get(prefix + "PASSWORD") or _opt_str(raw, "password", where)
    token = env.get(prefix + "TOKEN") or _opt_str(raw, "token", where)
    if auth == "basic" and (not username or password is None):
        raise ConfigError(
            f"{where}username/password: required for auth = 'basic' (or {prefix}PASSWORD)"
        )
    if auth == "bearer" and not token:
        raise ConfigError(f"{where}token: required for auth = 'bearer' (or {prefix}TOKEN)")
    aliases = raw.get("url_aliases", [])
    if not isinstance(aliases, list):
        raise ConfigError(f"{where}url_aliases: must be a list of URLs")
    return DicomWebSite(
        id=site_id,
        url=check_http_url(url, where + "url"),
        connect_timeout=_float(raw, "connect_timeout", where, 5.0),
        read_timeout=_float(raw, "read_timeout", where, 60.0),
        search_timeout=_float(raw, "search_timeout", where, 30.0),
        max_connections=_int(raw, "max_connections", where, 32, 1, 1024),
        auth=auth,
        username=username,
        password=password,
        token=token,
        url_aliases=tuple(check_http_url(a, where + "url_aliases") for a in aliases),
        iocm=_bool(raw, "iocm", where, True),
        iocm_refresh_seconds=_number(raw, "iocm_refresh_seconds", where, 30.0, 0, 86400),
    )


_DIMSE_KEYS = {
    "id",
    "kind",
    "host",
    "port",
    "called_aet",
    "calling_aet",
    "retrieve",
    "store_host",
    "store_port",
    "max_associations",
    "retrieve_parallelism",
    "native_dimse",
    "idle_release_seconds",
    "connect_timeout",
    "dimse_timeout",
    "search_timeout",
    "operation_timeout",
    "cache_dir",
    "cache_max_bytes",
    "iocm",
    "iocm_refresh_seconds",
}
_AET = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # PS3.5 AE VR: no backslash, no control chars


def _dimse_site(raw: Mapping[str, Any], site_id: str, where: str) -> DimseSite:
    _no_unknown(raw, _DIMSE_KEYS, where)
    host = _opt_str(raw, "host", where)
    if host is None:
        raise ConfigError(f"{where}host: required (the PACS's DICOM host)")
    aets = {}
    for key, default in (("called_aet", None), ("calling_aet", "NCPEH-GW")):
        value = _opt_str(raw, key, where) or default
        if value is None or not _AET.fullmatch(value) or not value.strip():
            raise ConfigError(f"{where}{key}: required, 1-16 characters, no backslash")
        aets[key] = value.strip()
    retrieve = raw.get("retrieve", "c-get")
    if retrieve not in ("c-get", "c-move"):
        raise ConfigError(f"{where}retrieve: must be 'c-get' or 'c-move', not {retrieve!r}")
    return DimseSite(
        id=site_id,
        host=host,
        port=_int(raw, "port", where, 104, 1, 65535),
        called_aet=aets["called_aet"],
        calling_aet=aets["calling_aet"],
        retrieve=retrieve,
        store_host=_opt_str(raw, "store_host", where) or "127.0.0.1",
        store_port=_int(raw, "store_port", where, 11113, 0, 65535),
        max_associations=_int(raw, "max_associations", where, 4, 1, 64),
        retrieve_parallelism=_int(raw, "retrieve_parallelism", where, 1, 1, 64),
        native_dimse=_bool(raw, "native_dimse", where, True),
        idle_release_seconds=_number(raw, "idle_release_seconds", where, 5.0, 0.1, 86400),
        connect_timeout=_float(raw, "connect_timeout", where, 5.0),
        dimse_timeout=_float(raw, "dimse_timeout", where, 30.0),
        search_timeout=_float(raw, "search_timeout", where, 30.0),
        operation_timeout=_float(raw, "operation_timeout", where, 3600.0),
        cache_dir=_opt_str(raw, "cache_dir", where),
        cache_max_bytes=_int(raw, "cache_max_bytes", where, 2 << 30, 1 << 20, 1 << 50),
        iocm=_bool(raw, "iocm", where, True),
        iocm_refresh_seconds=_number(raw, "iocm_refresh_seconds", where, 30.0, 0, 86400),
    )


def parse_dimse_address(value: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` → (aet, host, port), as ``--pacs-dimse`` takes it."""
    aet, at, hostport = value.rpartition("@")
    host, colon, port = hostport.rpartition(":")
    if not at or not colon or not aet or not host or not port.isdigit():
        raise ConfigError(f"--pacs-dimse: {value!r} is not AET@HOST:PORT")
    return aet, host, int(port)


# ---------------------------------------------------------------- value checks


def _no_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a table")
    return value


def _opt_str(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}{key}: must be a non-empty string")
    return value


def _int(raw: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}{key}: must be an integer in [{lo}, {hi}], not {value!r}")
    return value


def _bool(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{key}: must be true or false, not {value!r}")
    return value


def _number(
    raw: Mapping[str, Any], key: str, where: str, default: float, lo: float, hi: float
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{where}{key}: must be a number in [{lo:g}, {hi:g}], not {value!r}")
    return float(value)


def _float(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
        raise ConfigError(f"{where}{key}: must be a number of seconds in (0, 86400], not {value!r}")
    return float(value)


def _str_list(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"server.{key}: must be a list of strings")
    return value


def _check_origin(value: str, key: str) -> str:
    """``*`` or a browser origin (scheme://host[:port], RFC 6454), without a trailing slash."""
    if value == "*":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(f"{key}: {value!r} is not an origin such as https://viewer.example")
    return f"{parts.scheme}://{parts.netloc}".lower()


def _check_network(value: str, key: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an IP address or network") from None


def check_viewer_dir(value: str, key: str) -> str:
    """``value`` as an absolute path if it holds a viewer (an index.html), else ConfigError."""
    path = Path(value).expanduser().resolve()
    if not (path / "index.html").is_file():
        raise ConfigError(f"{key}: no index.html in {value!r} (scripts/ohif.sh fetches the viewer)")
    return str(path)


def check_database_url(value: str, key: str) -> str:
    """``value`` if a PostgreSQL URL (postgresql://[user[:password]@]host[:port]/database),
    else ConfigError naming ``key`` (and never the password)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("postgresql", "postgres") or parts.fragment:
        raise ConfigError(f"{key}: must be a URL such as postgresql://user@host:5432/database")
    return value


def check_http_url(value: str, key: str) -> str:
    """``value`` without trailing slash if an http(s) URL, else ConfigError naming ``key``."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{key}: must be an http(s) URL without query, not {value!r}")
    return value.rstrip("/")
