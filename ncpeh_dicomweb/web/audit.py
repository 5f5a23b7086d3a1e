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
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from aiohttp import web

from ..backends.base import DicomJson
from ..dicomweb.dicomjson import first_value
from ..dicomweb.part10 import Identity, identity_of
from ..errors import GatewayError
from ..fhir.tokens import patient_resource_id
from ..security.audit import Access, AuditTrail, Patient, interaction_for, query_names
from ..security.audit.events import uuid4_hex
from .after_answer import defer
from .forwarded import client_address, is_trusted
from .keys import CLIENT_CERTIFICATE, PATIENT_BINDING, PRINCIPAL, REQUEST_ID, SETTINGS
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
    "note_identity",
    "patient_peek",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AUDIT_TRAIL = web.AppKey("audit_trail", AuditTrail)
# Filled by handlers that learn them (a FHIR search's patient and studies, say).
AUDIT_PATIENT = web.RequestKey("ncpeh.audit_patient", Patient)
AUDIT_STUDIES: web.RequestKey[tuple[str, ...]] = web.RequestKey("ncpeh.audit_studies")

# Whose each study is, as answers showed it: an access whose answer did not say (frames the
# PACS served itself) is still recorded with its patient when an earlier answer said.
STUDY_PATIENTS: web.AppKey[OrderedDict[str, Patient]] = web.AppKey("ncpeh.study_patients")
_STUDY_PATIENTS_MAX = 20_000

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_MAX_STUDIES = 100  # study UIDs one event names (a search's page)
_CLIENT_GONE = 499  # the nginx convention: the client closed the connection first
_FHIR_TYPE = re.compile(r"/fhir/([A-Za-z]+)/\{id\}")


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    trusted = is_trusted(request.remote, request.app[SETTINGS].trusted_proxies)
    if trusted and _REQUEST_ID.fullmatch(given):
        return given
    return uuid4_hex()


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


def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``X-Request-ID`` on every answer, streamed ones too (the app's
    ``on_response_prepare`` hook calls it)."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id


def _record(request: web.Request, request_id: str, start: datetime, status: int) -> None:
    """The access ends now; its AuditEvent is built and queued in the after-answer lane
    (web/after_answer.py), so that neither this client nor the next waits for it. What the
    event says is all in the request by now (its handler has returned)."""
    trail = request.app.get(AUDIT_TRAIL)
    if trail is not None:
        end = datetime.now(UTC)
        defer(request.app, _record_now, trail, request, request_id, start, end, status)


def _record_now(
    trail: AuditTrail,
    request: web.Request,
    request_id: str,
    start: datetime,
    end: datetime,
    status: int,
) -> None:
    access = _access(request, request_id, start, end, status)
    if access is not None:
        trail.record_access(access)


def _access(
    request: web.Request, request_id: str, start: datetime, end: datetime, status: int
) -> Access | None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    interaction = interaction_for(request.method, route) if route else None
    if interaction is None or route is None:
        return None
    principal = request.get(PRINCIPAL)
    certificate = request.get(CLIENT_CERTIFICATE)
    settings = request.app[SETTINGS]
    info = request.match_info
    fhir_type = _FHIR_TYPE.search(route)
    studies = request.get(AUDIT_STUDIES) or tuple(filter(None, [info.get("study")]))
    patient = request.get(AUDIT_PATIENT) or _bound_patient(request)
    if patient is None and len(studies) == 1:
        patient = _remembered(request).get(studies[0])
    return Access(
        start=start,
        end=end,
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
        client_address=client_address(request.remote, request.headers, settings.trusted_proxies),
        server_address=settings.public_url,
        site=info.get("site") or settings.default_site,
        patient=patient,
        studies=studies,
        series=tuple(filter(None, [info.get("series")])),
        instances=tuple(filter(None, [info.get("instance")])),
        resource=f"{fhir_type.group(1)}/{info['id']}" if fhir_type and "id" in info else None,
        stream=request.get(STREAM_OUTCOME),
        reason="client-gone" if status == _CLIENT_GONE else None,
    )


def note_datasets(request: web.Request, datasets: Sequence[DicomJson]) -> None:
    """Record, for the audit, the studies an answer was about (DICOM JSON of any level) and
    their patient when there is exactly one."""
    request[AUDIT_STUDIES] = tuple(
        dict.fromkeys(
            uid for uid in (first_value(d, "0020000D") for d in datasets) if isinstance(uid, str)
        )
    )[:_MAX_STUDIES]
    # A Patient (its FHIR id is a digest) is made once per distinct patient, not per dataset.
    patients: dict[tuple[object, object], Patient | None] = {}
    for dataset in datasets:
        key = (first_value(dataset, "00100020"), first_value(dataset, "00100021"))
        if key not in patients:
            patients[key] = _patient(*key)
        patient = patients[key]
        study = first_value(dataset, "0020000D")
        if patient is not None and isinstance(study, str):
            _remember(request, study, patient)
    found = [p for p in patients.values() if p is not None]
    if len(found) == 1:
        request[AUDIT_PATIENT] = found[0]


def _patient(patient_id: object, issuer: object) -> Patient | None:
    if not patient_id:
        return None
    return _known_patient(str(patient_id), str(issuer) if issuer else None)


@lru_cache(maxsize=4096)  # its FHIR id is a digest: a search's answer asks for it each time
def _known_patient(patient_id: str, issuer: str | None) -> Patient:
    return Patient(id=patient_id, issuer=issuer, fhir_id=patient_resource_id(patient_id, issuer))


def _remembered(request: web.Request) -> OrderedDict[str, Patient]:
    return request.app.get(STUDY_PATIENTS) or OrderedDict()


def _remember(request: web.Request, study: str, patient: Patient) -> None:
    known = request.app.get(STUDY_PATIENTS)
    if known is None:
        return
    known[study] = patient
    known.move_to_end(study)
    while len(known) > _STUDY_PATIENTS_MAX:
        known.popitem(last=False)


def note_identity(request: web.Request, identity: Identity | None) -> None:
    """Record the patient of an instance the answer carried (read from its DICOM header),
    unless the handler already knew whose the answer was."""
    if identity is None or AUDIT_PATIENT in request:
        return
    patient = _patient(identity.patient_id, identity.issuer)
    if patient is None:
        return
    request[AUDIT_PATIENT] = patient
    study = identity.study_uid or request.match_info.get("study")
    if study:
        _remember(request, study, patient)


def patient_peek(request: web.Request) -> Callable[[bytes], None]:
    """A ``peek`` for :func:`.streaming.stream_parts`: the patient of the first instance
    streamed, for the audit (a study, series or selection is one patient's)."""

    def peek(head: bytes) -> None:
        note_identity(request, identity_of(head))

    return peek


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
    app[STUDY_PATIENTS] = OrderedDict()
    try:
        yield
    finally:
        await trail.close()
