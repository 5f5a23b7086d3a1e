"""One access to the gateway (:class:`Access`) as a FHIR R4 AuditEvent in the style of IHE
Basic Audit Log Patterns (BALP 1.1, https://profiles.ihe.net/ITI/BALP/). Pure: no I/O.

The event (:func:`audit_event`):

* ``type`` ``rest`` (audit-event-type), as every BALP RESTful pattern; ``subtype`` the FHIR
  restful interaction (``search-type``, ``read``, ``create``, ``delete``) and, for DICOMweb, the
  DICOM audit Event ID (PS3.15 A.5.3, CID 400: QIDO-RS ``110112 Query``; every WADO-RS retrieve
  ``110104 DICOM Instances Transferred``, as IHE RAD and dcm4chee record a retrieve by a remote
  node; not ``110103 Instances Accessed``, which is local create/read/update/delete, nor
  ``110106 Export``, which is to media or another domain) and the IHE transaction
  (``urn:ihe:event-type-code``: ``RAD-129`` QIDO-RS Query, ``RAD-107`` WADO-RS Retrieve; PS3.18
  10.4 puts metadata, frames, bulk data and rendered resources in the one Retrieve transaction);
* ``action`` E (search), R (read and every retrieve), C (create), D (delete);
* ``period`` the request's start and end, ``recorded`` its end;
* ``outcome`` ``0`` success, ``4`` minor failure (a 4xx: denied, not found...; a response cut
  short, whether by the gateway after an upstream failure or by the client going away),
  ``8`` serious failure (a 5xx); ``outcomeDesc`` says which, with the HTTP status and no PHI;
* ``agent``: the client (DCM ``110153 Source Role ID``: its OAuth ``client_id``, its network
  address, and its TLS certificate subject as ``altId``), the user the token names (v3
  ParticipationType ``IRCP``, ``requestor``; the token's ``jti`` as ``policy``, as BALP's
  OAUTHaccessTokenUse), the gateway (DCM ``110152 Destination Role ID``); the client is the
  requestor when the token names no user (none, or its ``sub`` is the client's own id);
* ``source``: the gateway (``source_id``), type 4 Application Server;
* ``entity``: the transaction (BALP ``XrequestId``: the request id, with details: interaction,
  method, route template, query parameter names, site, HTTP status, stream outcome, bytes sent,
  forwarding proxies); the query for searches (object-role 24, ``query`` base64); the patient
  (Person / Patient: PatientID with its issuer); each study, series and instance (System
  Object / Report, identifier ``urn:dicom:uid`` ``urn:oid:<UID>``, typed DCM ``110180 Study
  Instance UID`` and ``112002 Series Instance UID``; DICOM has no code for a SOP Instance
  UID, so that type is text only); the FHIR resource read, written or deleted (Domain
  Resource, by reference).

Query values are never recorded: an :class:`Access` holds only the parameters' names, and
the query entity is ``METHOD ROUTE?name&name`` (the route template, not the path). The patient
and the studies are recorded as entities, which is what an auditor looks for; free-text values
(names, dates, and whatever a hostile client sends) stay out of the trail (data minimisation).
This departs from BALP, whose query entity holds the raw request.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import quote, unquote_plus

__all__ = [
    "INTERACTIONS",
    "Access",
    "InteractionKind",
    "Patient",
    "StreamOutcome",
    "audit_event",
    "interaction_for",
    "query_names",
    "uuid4_hex",
]

#: How a streamed response ended; the values of ``web.streaming.StreamOutcome``.
StreamOutcome = Literal["complete", "client-gone", "cut"]
_STREAM_OUTCOMES: Final = frozenset({"complete", "client-gone", "cut"})

AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
IHE_EVENT_TYPE: Final = "urn:ihe:event-type-code"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
BALP_ENTITY_TYPE: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"

Coding = tuple[str, str, str]  # system, code, display

_QUERY: Final[Coding] = (DCM, "110112", "Query")
_TRANSFERRED: Final[Coding] = (DCM, "110104", "DICOM Instances Transferred")
_RAD_129: Final[Coding] = (IHE_EVENT_TYPE, "RAD-129", "QIDO-RS Query")
_RAD_107: Final[Coding] = (IHE_EVENT_TYPE, "RAD-107", "WADO-RS Retrieve")
_RESTFUL_DISPLAY: Final = {
    "search-type": "search-type",
    "read": "read",
    "create": "create",
    "delete": "delete",
}
_ACTION: Final = {"search-type": "E", "read": "R", "create": "C", "delete": "D"}


@dataclass(frozen=True, slots=True)
class InteractionKind:
    """How one interaction of the gateway is coded in its AuditEvent."""

    restful: Literal["search-type", "read", "create", "delete"]
    dicom: tuple[Coding, ...] = ()  # DICOM Event ID and IHE transaction, for DICOMweb

    @property
    def action(self) -> str:
        return _ACTION[self.restful]

    @property
    def is_search(self) -> bool:
        return self.restful == "search-type"


_QIDO: Final = InteractionKind("search-type", (_QUERY, _RAD_129))
_WADO: Final = InteractionKind("read", (_TRANSFERRED, _RAD_107))

#: Every interaction an :class:`Access` may name, and its coding.
INTERACTIONS: Final[Mapping[str, InteractionKind]] = MappingProxyType(
    {
        "qido-studies": _QIDO,
        "qido-series": _QIDO,
        "qido-instances": _QIDO,
        "wado-retrieve": _WADO,
        "wado-metadata": _WADO,
        "frames": _WADO,
        "bulkdata": _WADO,
        "rendered": _WADO,
        "thumbnail": _WADO,
        # GET {dicomweb}/selections/{id}: our own route, so no IHE transaction
        "selection-retrieve": InteractionKind("read", (_TRANSFERRED,)),
        "fhir-search": InteractionKind("search-type"),
        "fhir-read": InteractionKind("read"),  # ImagingStudy, Patient, Endpoint, vendor route
        "selection-search": InteractionKind("search-type"),
        "selection-read": InteractionKind("read"),
        "selection-create": InteractionKind("create"),
        "selection-delete": InteractionKind("delete"),
    }
)

_SEG: Final = r"[^/]+"
_WEB: Final = rf"(?:/site/{_SEG})?/dicom-web"
_FHIR: Final = rf"(?:/site/{_SEG})?/fhir"
_INSTANCE: Final = rf"{_WEB}/studies/{_SEG}/series/{_SEG}/instances/{_SEG}"
_OBJECT: Final = rf"{_WEB}/studies/{_SEG}(?:/series/{_SEG}(?:/instances/{_SEG})?)?"
_RESOURCE: Final = rf"(?:{_OBJECT}|{_INSTANCE}/frames/{_SEG})"
_GET: Final = frozenset({"GET", "HEAD"})
_POST: Final = frozenset({"POST"})

# (methods, route pattern, interaction); first match wins. Unlisted routes are not audited.
_ROUTES: Final[tuple[tuple[frozenset[str], re.Pattern[str], str], ...]] = tuple(
    (methods, re.compile(pattern), name)
    for methods, pattern, name in (
        (_GET, rf"{_WEB}/studies", "qido-studies"),
        (_GET, rf"{_WEB}(?:/studies/{_SEG})?/series", "qido-series"),
        (_GET, rf"{_WEB}(?:/studies/{_SEG}(?:/series/{_SEG})?)?/instances", "qido-instances"),
        (_GET, rf"{_RESOURCE}/rendered", "rendered"),
        (_GET, rf"{_RESOURCE}/thumbnail", "thumbnail"),
        (_GET, rf"{_INSTANCE}/frames/{_SEG}", "frames"),
        (_GET, rf"{_INSTANCE}/bulk/.+", "bulkdata"),
        (_GET, rf"{_OBJECT}/metadata", "wado-metadata"),
        (_GET, _OBJECT, "wado-retrieve"),
        (_GET, rf"{_WEB}/selections/{_SEG}", "selection-retrieve"),
        (_GET | _POST, rf"{_FHIR}/ImagingStudy", "fhir-search"),
        (_POST, rf"{_FHIR}/ImagingStudy/_search", "fhir-search"),
        (_GET, rf"{_FHIR}/(?:ImagingStudy|Patient|Endpoint)/{_SEG}", "fhir-read"),
        (_GET, rf"/site/{_SEG}/fhir/imaging-study/{_SEG}", "fhir-read"),
        (_GET, rf"{_FHIR}/ImagingSelection", "selection-search"),
        (_POST, rf"{_FHIR}/ImagingSelection/_search", "selection-search"),
        (_POST, rf"{_FHIR}/ImagingSelection", "selection-create"),
        (_GET, rf"{_FHIR}/ImagingSelection/{_SEG}", "selection-read"),
        (frozenset({"DELETE"}), rf"{_FHIR}/ImagingSelection/{_SEG}", "selection-delete"),
    )
)


# Per request, and the routes are few: remembered (a bounded cache: the method is the client's).
@lru_cache(maxsize=1024)
@lru_cache(maxsize=256)  # route templates are few; asked for every audited request
def interaction_for(method: str, route: str) -> str | None:
    """The :data:`INTERACTIONS` name of a request by its method and route template (aiohttp's
    ``request.match_info.route.resource.canonical``) or path; None for what is not audited
    (health, metrics, the viewer, FHIR ``metadata``)."""
    method = method.upper()
    for methods, pattern, name in _ROUTES:
        if method in methods and pattern.fullmatch(route):
            return name
    return None


MAX_QUERY_NAMES: Final = 64
MAX_NAME_LENGTH: Final = 128


def query_names(query: str | Iterable[str]) -> tuple[str, ...]:
    """The parameter names of a query string (``a=1&b=2&a=3`` → ``("a", "b")``), or of the
    keys of a multidict, de-duplicated in order; the values are dropped here, so they never
    reach an :class:`Access`. At most :data:`MAX_QUERY_NAMES`, each cut to
    :data:`MAX_NAME_LENGTH` characters (a hostile query must not bloat the trail)."""
    raw = (
        (unquote_plus(part.partition("=")[0]) for part in query.split("&"))
        if isinstance(query, str)
        else iter(query)
    )
    names: dict[str, None] = {}
    for name in raw:
        if name and len(names) < MAX_QUERY_NAMES:
            names.setdefault(name[:MAX_NAME_LENGTH], None)
    return tuple(names)


@dataclass(frozen=True, slots=True)
class Patient:
    """The patient whose data was accessed."""

    id: str  # PatientID (0010,0020)
    issuer: str | None = None  # Issuer of Patient ID (0010,0021), e.g. "CZ-NCPEH" or an OID
    system: str | None = None  # the FHIR identifier system (a URI) of that issuer, if known
    fhir_id: str | None = None  # the Patient resource id the gateway serves, if known


_METHOD: Final = re.compile(r"[A-Z]{1,16}")
_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_OID: Final = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
_PHRASES: Final = {s.value: s.phrase for s in HTTPStatus}


@dataclass(frozen=True, slots=True)
class Access:
    """One request, as the audit trail records it. Holds no query value and no path: the
    route template and the query parameter names only."""

    # when
    start: datetime  # timezone-aware
    end: datetime
    # what was asked
    request_id: str
    interaction: str  # a key of INTERACTIONS
    method: str
    route: str  # the route template, e.g. /site/{site}/dicom-web/studies/{study}/metadata
    status: int  # the HTTP status sent (or that would have been, for a client gone early)
    query_names: tuple[str, ...] = ()
    # who
    subject: str | None = None  # the token's `sub`
    subject_issuer: str | None = None  # the token's `iss` (a URL)
    client_id: str | None = None  # the token's `client_id` (or `azp`)
    token_id: str | None = None  # the token's `jti`
    certificate_subject: str | None = None  # the client certificate's subject (mTLS)
    # from where
    client_address: str | None = None  # the client, as the nearest trusted proxy reports it
    proxies: tuple[str, ...] = ()  # the forwarding proxies, client side first
    server_address: str | None = None  # the gateway's public base URL
    # which data
    site: str | None = None
    patient: Patient | None = None
    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    resource: str | None = None  # a FHIR resource read/created/deleted: "ImagingSelection/x"
    # how it ended
    stream: StreamOutcome | None = None  # None: not streamed
    bytes_sent: int | None = None
    reason: str | None = None  # a short reason for a failure, no PHI ("insufficient_scope")

    def __post_init__(self) -> None:
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"unknown interaction {self.interaction!r}")
        if not _METHOD.fullmatch(self.method):
            raise ValueError(f"bad HTTP method {self.method!r}")
        if not self.route.startswith("/") or "?" in self.route or "#" in self.route:
            raise ValueError("route must be a path template without query or fragment")
        if not self.request_id:
            raise ValueError("request_id is empty")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        if self.end < self.start:
            raise ValueError("end is before start")
        if not 100 <= self.status <= 599:
            raise ValueError(f"bad HTTP status {self.status}")
        if self.stream is not None and self.stream not in _STREAM_OUTCOMES:
            raise ValueError(f"bad stream outcome {self.stream!r}")
        if self.bytes_sent is not None and self.bytes_sent < 0:
            raise ValueError("bytes_sent is negative")


def _coding(coding: Coding) -> dict[str, str]:
    system, code, display = coding
    return {"system": system, "code": code, "display": display}


def _instant(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _network(address: str) -> dict[str, str]:
    """AuditEvent.agent.network: type 2 an IP address, 5 a URI, 1 a machine name."""
    return {"address": address, "type": _network_type(address)}


@lru_cache(maxsize=4096)  # the same few clients and one server: parsing showed per request
def _network_type(address: str) -> str:
    try:
        ipaddress.ip_address(address)
        return "2"
    except ValueError:
        return "5" if _URI.match(address) else "1"


def uuid4_hex() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` without the UUID
    object (made for every request and every event)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


def _uuid4() -> str:
    """A random (version 4) UUID in its canonical form, as ``str(uuid.uuid4())``."""
    h = uuid4_hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def outcome(access: Access) -> tuple[str, str | None]:
    """The AuditEvent outcome code and description (no PHI) of an access."""
    status = access.status
    sent = access.bytes_sent if access.bytes_sent is not None else 0
    phrase = _PHRASES.get(status, "status")
    why = f": {access.reason}" if access.reason else ""
    if status >= 500:
        return "8", f"HTTP {status} {phrase}{why}"
    if status >= 400:
        return "4", f"HTTP {status} {phrase}{why}"
    if access.stream == "cut":
        return "4", f"HTTP {status}: cut short by the gateway after {sent} bytes{why}"
    if access.stream == "client-gone":
        return "4", f"HTTP {status}: the client went away after {sent} bytes"
    return "0", None


def _has_user(access: Access) -> bool:
    """A token names someone other than the client (a SMART backend-services token's ``sub``
    is the client itself: then the client is the requestor)."""
    return access.subject is not None and access.subject != access.client_id


def _agents(access: Access, source_id: str) -> list[dict[str, Any]]:
    client: dict[str, Any] = {
        "type": {"coding": [_coding((DCM, "110153", "Source Role ID"))]},
        "who": (
            {"identifier": {"value": access.client_id}}
            if access.client_id
            else {"display": access.certificate_subject or "unidentified client"}
        ),
        "requestor": not _has_user(access),
    }
    if access.certificate_subject:
        client["altId"] = access.certificate_subject
    if access.client_address:
        client["network"] = _network(access.client_address)
    agents = [client]
    if _has_user(access):
        assert access.subject is not None
        identifier = {"value": access.subject}
        if access.subject_issuer:
            identifier["system"] = access.subject_issuer
        user: dict[str, Any] = {
            "type": {"coding": [_coding((PARTICIPATION_TYPE, "IRCP", "information recipient"))]},
            "who": {"identifier": identifier},
            "requestor": True,
        }
        if access.token_id:
            user["policy"] = [f"urn:ietf:params:oauth:jti:{access.token_id}"]
        agents.append(user)
    server: dict[str, Any] = {
        "type": {"coding": [_coding((DCM, "110152", "Destination Role ID"))]},
        "who": {"identifier": {"value": source_id}, "display": source_id},
        "requestor": False,
    }
    if access.server_address:
        server["network"] = _network(access.server_address)
    agents.append(server)
    return agents


def _query_text(access: Access, names: str) -> str:
    return f"{access.method} {access.route}" + (f"?{names}" if names else "")


def _transaction(access: Access, names: str) -> dict[str, Any]:
    details = [
        ("interaction", access.interaction),
        ("method", access.method),
        ("route", access.route),
        ("query-parameters", names or None),
        ("site", access.site),
        ("http-status", str(access.status)),
        ("stream-outcome", access.stream),
        ("bytes-sent", None if access.bytes_sent is None else str(access.bytes_sent)),
        ("proxies", ", ".join(access.proxies) or None),
    ]
    return {
        "type": _coding((BALP_ENTITY_TYPE, "XrequestId", "XrequestId")),
        "what": {"identifier": {"value": access.request_id}},
        "detail": [{"type": kind, "valueString": value} for kind, value in details if value],
    }


def _patient(patient: Patient) -> dict[str, Any]:
    identifier: dict[str, Any] = {"value": patient.id}
    if patient.system:
        identifier["system"] = patient.system
    elif patient.issuer and _OID.fullmatch(patient.issuer):
        identifier["system"] = f"urn:oid:{patient.issuer}"
    if patient.issuer and "system" not in identifier:
        identifier["assigner"] = {"display": patient.issuer}
    what: dict[str, Any] = {"identifier": identifier}
    if patient.fhir_id:
        what["reference"] = f"Patient/{patient.fhir_id}"
    return {
        "type": _coding((ENTITY_TYPE, "1", "Person")),
        "role": _coding((OBJECT_ROLE, "1", "Patient")),
        "what": what,
    }


_STUDY_UID: Final = {"coding": [_coding((DCM, "110180", "Study Instance UID"))]}
_SERIES_UID: Final = {"coding": [_coding((DCM, "112002", "Series Instance UID"))]}
_SOP_UID: Final = {"text": "SOP Instance UID"}


def _uid_entity(uid: str, kind: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": _coding((ENTITY_TYPE, "2", "System Object")),
        "role": _coding((OBJECT_ROLE, "3", "Report")),
        "what": {
            "identifier": {
                "type": dict(kind),
                "system": DICOM_UID_SYSTEM,
                "value": f"urn:oid:{uid}",
            }
        },
    }


def _entities(access: Access, kind: InteractionKind) -> list[dict[str, Any]]:
    names = "&".join(quote(name, safe="") for name in access.query_names)
    entities = [_transaction(access, names)]
    if kind.is_search:
        text = _query_text(access, names)
        entities.append(
            {
                "type": _coding((ENTITY_TYPE, "2", "System Object")),
                "role": _coding((OBJECT_ROLE, "24", "Query")),
                "description": text,
                "query": base64.b64encode(text.encode()).decode("ascii"),
            }
        )
    if access.patient is not None:
        entities.append(_patient(access.patient))
    entities.extend(_uid_entity(uid, _STUDY_UID) for uid in access.studies)
    entities.extend(_uid_entity(uid, _SERIES_UID) for uid in access.series)
    entities.extend(_uid_entity(uid, _SOP_UID) for uid in access.instances)
    if access.resource:
        entities.append(
            {
                "type": _coding((ENTITY_TYPE, "2", "System Object")),
                "role": _coding((OBJECT_ROLE, "4", "Domain Resource")),
                "what": {"reference": access.resource},
            }
        )
    return entities


def audit_event(
    access: Access, *, source_id: str = "ncpeh-dicomweb", event_id: str | None = None
) -> dict[str, Any]:
    """The FHIR R4 AuditEvent (JSON, a dict) recording ``access``, as observed by the gateway
    ``source_id``; coded as the module docstring says. ``event_id`` defaults to a new UUID."""
    kind = INTERACTIONS[access.interaction]
    code, description = outcome(access)
    end = _instant(access.end)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event_id or _uuid4(),
        "type": _coding((AUDIT_EVENT_TYPE, "rest", "Restful Operation")),
        "subtype": [
            _coding((RESTFUL_INTERACTION, kind.restful, _RESTFUL_DISPLAY[kind.restful])),
            *(_coding(c) for c in kind.dicom),
        ],
        "action": kind.action,
        "period": {"start": _instant(access.start), "end": end},
        "recorded": end,
        "outcome": code,
    }
    if description is not None:
        event["outcomeDesc"] = description
    event["agent"] = _agents(access, source_id)
    event["source"] = {
        "observer": {"identifier": {"value": source_id}, "display": source_id},
        "type": [_coding((SOURCE_TYPE, "4", "Application Server"))],
    }
    event["entity"] = _entities(access, kind)
    return event
