"""Typed application state (aiohttp ``AppKey``s) and the per-request site context."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web
from yarl import URL

from ..backends.base import Backend
from ..config import Settings
from ..errors import NotFound
from ..imaging.pool import ImagingPool
from ..security.patient import PatientBinding
from ..security.tokens import Principal
from ..state import Store
from .forwarded import forwarded_origin, is_trusted
from .metadata_cache import MetadataCache

__all__ = [
    "ACTIVE_STREAMS",
    "BACKENDS",
    "CLIENT_CERTIFICATE",
    "CLIENT_STREAMS",
    "IMAGING_POOL",
    "METADATA_CACHE",
    "PATIENT_BINDING",
    "PRINCIPAL",
    "REQUEST_ID",
    "SETTINGS",
    "STORE",
    "ClientCertificate",
    "SiteContext",
    "abort_connection",
    "accept_of",
    "site_context",
]

SETTINGS = web.AppKey("settings", Settings)
BACKENDS = web.AppKey("backends", dict[str, Backend])
IMAGING_POOL = web.AppKey("imaging_pool", ImagingPool)
METADATA_CACHE = web.AppKey("metadata_cache", MetadataCache)
# What outlives a request: FHIR ids served (for 410), selections created by clients.
STORE = web.AppKey("store", Store)
# Requests whose streamed answer is under way: cut on shutdown, so a client that stopped
# reading cannot hold the process.
ACTIVE_STREAMS: web.AppKey[set[asyncio.BaseTransport]] = web.AppKey("active_streams")
# Retrievals streaming now, by client (web/streaming.py: [limits] max_streams_per_client).
CLIENT_STREAMS: web.AppKey[Counter[str]] = web.AppKey("client_streams")
# Per request: who the bearer token speaks for (set by web/auth.py when auth is on).
PRINCIPAL = web.RequestKey("ncpeh.principal", Principal)
# The request's id (web/audit.py): returned in X-Request-ID, in its AuditEvent and its log lines.
REQUEST_ID = web.RequestKey("ncpeh.request_id", str)
# Per request: the one patient a patient-bound token may see (web/auth.py); absent: unbound.
PATIENT_BINDING = web.RequestKey("ncpeh.patient_binding", PatientBinding)


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A request's TLS client certificate, verified in the handshake (see web/tls.py)."""

    subject: str  # RFC 4514, most specific first: "CN=ncp-cz,O=NCPeH CZ,C=CZ"
    client_id: str | None  # [server.tls_client_identities][subject], else the subject's CN
    serial: str  # hexadecimal, upper case (as openssl prints it)
    issuer: str  # RFC 4514


# Per request, when client certificates are asked (web/tls.py): the certificate, or None if
# the client sent none (tls_client_cert = "optional"). Absent over plain HTTP.
CLIENT_CERTIFICATE: web.RequestKey[ClientCertificate | None] = web.RequestKey(
    "ncpeh.client_certificate"
)


def accept_of(request: web.Request) -> str | None:
    """Every Accept line of the request as one list (RFC 9110 5.3: several lines are one
    header; some Java clients send one line per transfer syntax); None if there is none."""
    lines = request.headers.getall("Accept", [])
    return ", ".join(lines) if lines else None


def abort_connection(request: web.Request) -> None:
    """Drop the client's connection at once: no closing boundary, no last chunk."""
    transport = request.transport
    if transport is not None:
        transport.abort()


@dataclass(frozen=True, slots=True)
class SiteContext:
    site_id: str
    backend: Backend
    base_url: str  # the gateway's public DICOMweb root for this site, as the client sees it


def _public_root(request: web.Request, settings: Settings) -> str:
    """The gateway's root as the client sees it: from a trusted proxy's Forwarded headers,
    else the configured public URL, else the request's own scheme and Host."""
    if is_trusted(request.remote, settings.trusted_proxies):
        forwarded = forwarded_origin(request.headers)
        if forwarded is not None:
            return forwarded
    return settings.public_url or _origin(request.scheme, request.host)


@lru_cache(maxsize=256)
def _origin(scheme: str, host: str) -> str:
    """``request.url.origin()`` without building the request's whole URL (a search's cost)."""
    return str(URL.build(scheme=scheme, authority=host).origin())


def site_context(request: web.Request) -> SiteContext:
    """The site a request is for (``/site/{site}/...`` or the default), or 404."""
    settings = request.app[SETTINGS]
    site_id = request.match_info.get("site")
    backends = request.app[BACKENDS]
    if site_id is None:
        site_id = settings.default_site
        suffix = "/dicom-web"
    else:
        suffix = f"/site/{site_id}/dicom-web"
    backend = backends.get(site_id)
    if backend is None:
        raise NotFound("no such site", detail={"site": site_id[:64]})
    public = _public_root(request, settings)
    return SiteContext(site_id, backend, public.rstrip("/") + suffix)
