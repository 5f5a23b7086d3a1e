"""Every request a client makes of the gateway's data, allowed or refused, as one AuditEvent
(security/audit), and its request id.

The audit middleware sits inside the error middleware and the client-certificate check, and
outside CORS and auth: it sees every refusal (as the error it raised: the status the error
middleware will send), who asked (token, certificate), and a streamed answer only once the
stream has ended, with how it ended (:data:`.streaming.STREAM_OUTCOME`). Routes that give no
data (health, metrics, the viewer's files, the CapabilityStatement) are not audited.

The request id comes from a trusted proxy's ``X-Request-ID`` when it is well-formed, else is
made here; it is returned in ``X-Request-ID`` and recorded in the event and in error logs.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..backends.base import DicomJson
from ..dicomweb.dicomjson import first_value
from ..errors import GatewayError
from ..fhir.tokens import patient_resource_id
from ..security.audit import Access, AuditTrail, Patient, interaction_for, query_names
from .forwarded import is_trusted
from .keys import CLIENT_CERTIFICATE, PATIENT_BINDING, PRINCIPAL, SETTINGS
from .streaming import STREAM_OUTCOME

__all__ = [
    "AUDIT_PATIENT",
    "AUDIT_STUDIES",
    "AUDIT_TRAIL",
    "REQUEST_ID",
    "add_request_id",
    "audit_context",
    "audit_middleware",
    "note_datasets",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AUDIT_TRAIL = web.AppKey("audit_trail", AuditTrail)
REQUEST_ID = web.RequestKey("ncpeh.request_id", str)
# Filled by handlers that learn them (a FHIR search's patient and studies, say).
AUDIT_PATIENT = web.RequestKey("ncpeh.audit_patient", Patient)
AUDIT_STUDIES: web.RequestKey[tuple[str, ...]] = web.RequestKey("ncpeh.audit_studies")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_MAX_STUDIES = 100  # study UIDs one event names (a search's page)
_CLIENT_GONE = 499  # the nginx convention: the client closed the connection first
_FHIR_TYPE = re.compile(r"/fhir/([A-Za-z]+)/\{id\}")


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    trusted = is_trusted(request.remote, request.app[SETTINGS].trusted_proxies)
    if trusted and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = _request_id(request)
    request[REQUEST_ID] = request_id
    start = datetime.now(UTC)
    status = 500  # a bug of ours, rendered so by the error middleware
    try:
        response = await handler(request)
        status = response.status
        return response
    except (GatewayError, web.HTTPException) as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = _CLIENT_GONE
        raise
    finally:
        _record(request, request_id, start, status)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``X-Request-ID`` on every answer, streamed ones too (an ``on_response_prepare`` hook)."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id


def _record(request: web.Request, request_id: str, start: datetime, status: int) -> None:
    trail = request.app.get(AUDIT_TRAIL)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    interaction = interaction_for(request.method, route) if route else None
    if trail is None or interaction is None or route is None:
        return
    principal = request.get(PRINCIPAL)
    certificate = request.get(CLIENT_CERTIFICATE)
    settings = request.app[SETTINGS]
    info = request.match_info
    fhir_type = _FHIR_TYPE.search(route)
    studies = request.get(AUDIT_STUDIES) or tuple(filter(None, [info.get("study")]))
    access = Access(
        start=start,
        end=datetime.now(UTC),
        request_id=request_id,
        interaction=interaction,
        method=request.method,
        route=route,
        status=status,
        query_names=query_names(request.query_string),
        subject=principal.subject if principal else None,
        subject_issuer=principal.issuer if principal else None,
        client_id=(principal.client_id if principal else None)
        or (certificate.client_id if certificate else None),
        token_id=_jti(principal.claims) if principal else None,
        certificate_subject=certificate.subject if certificate else None,
        client_address=request.remote,
        server_address=settings.public_url,
        site=info.get("site") or settings.default_site,
        patient=request.get(AUDIT_PATIENT) or _bound_patient(request),
        studies=studies,
        series=tuple(filter(None, [info.get("series")])),
        instances=tuple(filter(None, [info.get("instance")])),
        resource=f"{fhir_type.group(1)}/{info['id']}" if fhir_type and "id" in info else None,
        stream=request.get(STREAM_OUTCOME),
        reason="client-gone" if status == _CLIENT_GONE else None,
    )
    trail.record_access(access)


def note_datasets(request: web.Request, datasets: Sequence[DicomJson]) -> None:
    """Record, for the audit, the studies an answer was about (study-level DICOM JSON) and
    their patient when there is exactly one."""
    request[AUDIT_STUDIES] = tuple(
        uid for uid in (first_value(d, "0020000D") for d in datasets) if isinstance(uid, str)
    )[:_MAX_STUDIES]
    patients = {
        (str(first_value(d, "00100020") or ""), first_value(d, "00100021")) for d in datasets
    }
    if len(patients) == 1:
        patient_id, issuer = patients.pop()
        if patient_id:
            issuer_text = str(issuer) if issuer else None
            request[AUDIT_PATIENT] = Patient(
                id=patient_id,
                issuer=issuer_text,
                fhir_id=patient_resource_id(patient_id, issuer_text),
            )


def _bound_patient(request: web.Request) -> Patient | None:
    """The patient a patient-bound token was limited to: every answer was about them."""
    binding = request.get(PATIENT_BINDING)
    if binding is None:
        return None
    key = binding.patient
    return Patient(id=key.patient_id, issuer=key.issuer, fhir_id=binding.resource_id)


def _jti(claims: Mapping[str, Any]) -> str | None:
    jti = claims.get("jti")
    return str(jti)[:128] if jti is not None else None


async def audit_context(app: web.Application) -> AsyncIterator[None]:
    """The app's audit trail, open while it serves: first in, so that it closes last and
    records what the other cleanups' last requests did (a SIGTERM loses no event)."""
    trail = AuditTrail.from_settings(app[SETTINGS].audit)
    await trail.start()
    app[AUDIT_TRAIL] = trail
    try:
        yield
    finally:
        await trail.close()
