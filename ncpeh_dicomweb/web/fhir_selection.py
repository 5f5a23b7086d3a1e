"""FHIR R5 ImagingSelection: search, read, create (a client's selection, checked against the
PACS and kept in the store) and delete; where selections come from is :mod:`.selections`.

A patient-bound token (:mod:`ncpeh_dicomweb.security.patient`): searches find its patient's
selections only; reading or deleting another patient's is 404, as an unknown id; creating one
on another patient's study is 422 "the study is not in the PACS", exactly what a study the PACS
does not have gets: the POST is to the collection, which exists (so not 404), and the problem is
a reference in the body; any other answer would tell the study exists.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

from aiohttp import web

from ..backends.base import DicomJson, Scope
from ..dicomweb.attributes import Level
from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
)
from ..fhir.bundle import (
    BundleEntry,
    full_url,
    page_links,
    search_url,
    searchset,
    summary_count,
)
from ..fhir.criteria import PatientRef
from ..fhir.kos import (
    ListedInstance,
)
from ..fhir.negotiation import FhirFormat, FhirVersion, negotiate_fhir
from ..fhir.search import study_uid_for_id
from ..fhir.selection import (
    imaging_selection,
    is_created_selection_id,
    new_selection_id,
)
from ..fhir.selection_post import PostedSelection, SelectionInvalid, parse_posted_selection
from ..fhir.selection_search import (
    SelectionSearch,
    matches_selection,
    pacs_queries,
    parse_selection_search,
    resolve_digests,
)
from ..state import StoredInstance, StoredSelection
from .auth import bound_qido, patient_binding
from .fhir_site import (
    MAX_CANDIDATES,
    FhirSite,
    dataset_text,
    fhir_response,
    fhir_site,
    issuers_of,
    patient_id_of,
    qido,
    search_params,
    strict_handling,
)
from .keys import STORE, accept_of
from .selections import (
    SELECTION_KIND,
    Selection,
    find_selection,
    from_store,
    held_instances,
    kos_series_selections,
    listed_url,
    remember_served,
)

__all__ = ["fhir_routes"]

_R5_ONLY: tuple[FhirVersion, ...] = ("R5",)
_DEFAULT_COUNT = 20
_MAX_COUNT = 100
_MAX_BODY = 4 << 20  # a selection of 10,000 instances is well under 1 MiB of JSON
_JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
_SERIES_UID, _STUDY_UID, _SOP_UID, _SOP_CLASS = "0020000E", "0020000D", "00080018", "00080016"
# The selection's subject: some PACS (Orthanc) return the issuer only when asked for it.
_PATIENT_FIELDS = "PatientID,IssuerOfPatientID"


def _format(request: web.Request, params: Mapping[str, str] | None = None) -> FhirFormat:
    query = request.query if params is None else params
    return negotiate_fhir(accept_of(request), query.get("_format"), versions=_R5_ONLY)


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------- read, delete


async def read(request: web.Request) -> web.Response:
    """``GET [base]/ImagingSelection/{id}`` (R5)."""
    fmt = _format(request)
    site = fhir_site(request)
    selection = await find_selection(request, site, request.match_info["id"])
    return fhir_response(selection.resource, fmt, headers=_version_headers(selection.resource))


def _version_headers(resource: Mapping[str, Any]) -> dict[str, str]:
    meta = resource.get("meta") or {}
    headers = {}
    if "versionId" in meta:
        headers["ETag"] = f'W/"{meta["versionId"]}"'
    if "lastUpdated" in meta:
        updated = datetime.fromisoformat(str(meta["lastUpdated"]))
        headers["Last-Modified"] = formatdate(updated.timestamp(), usegmt=True)
    return headers


async def delete(request: web.Request) -> web.Response:
    """``DELETE [base]/ImagingSelection/{id}``: a created selection is deleted (then 410 on
    read, 204 again on a repeated DELETE); one read from a KOS belongs to the PACS: 405."""
    site = fhir_site(request)
    resource_id = request.match_info["id"]
    store = request.app[STORE]
    binding = patient_binding(request)
    if is_created_selection_id(resource_id):
        if binding is not None:  # another patient's (deleted or not) is an unknown one
            stored = await store.selection(site.site_id, resource_id)
            if stored is None or stored.patient_id != binding.resource_id:
                raise NotFound("no such ImagingSelection", detail={"id": resource_id})
        if await store.delete_selection(site.site_id, resource_id, time.time()):
            return web.Response(status=204)
        if await store.selection(site.site_id, resource_id) is None:
            raise NotFound("no such ImagingSelection", detail={"id": resource_id})
        return web.Response(status=204)  # deleted already: DELETE is idempotent
    await find_selection(request, site, resource_id)  # 404 / 410 first
    raise MethodNotAllowed(
        "this ImagingSelection is a Key Object Selection document in the PACS: it cannot be"
        " deleted through the gateway",
        detail={"id": resource_id},
        headers={"Allow": "GET"},
    )


# ---------------------------------------------------------------------- create


async def create(request: web.Request) -> web.Response:
    """``POST [base]/ImagingSelection``: a client's key-image selection, checked against the
    PACS (the study, the series and every instance must be there; a sopClass given must be the
    instance's) and kept in the store in one transaction. 201 with Location."""
    fmt = _format(request)
    if request.content_type not in _JSON_TYPES:
        raise UnsupportedMediaType(
            f"a FHIR resource is sent as application/fhir+json, not {request.content_type[:80]}",
            detail={"content-type": request.content_type[:80]},
        )
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise PayloadTooLarge("the selection is too large", detail={"max_bytes": _MAX_BODY})
    body = await _read_body(request)
    try:
        posted = parse_posted_selection(body)
    except SelectionInvalid as exc:
        error = BadRequest if exc.status == 400 else Unprocessable
        raise error(exc.message, detail={"expression": exc.expression}) from None
    site = fhir_site(request)
    study, sop_classes = await _check_in_pacs(request, site, posted)
    patient_id = patient_id_of(study)
    study_resource_id = site.resource_id(posted.study_uid)
    _check_references(posted, patient_id, study_resource_id)
    now = time.time()
    resource_id = new_selection_id()
    instances = tuple(
        ListedInstance(i.sop_instance_uid, sop_classes[i.sop_instance_uid], i.frames)
        for i in posted.instances
    )
    resource = imaging_selection(
        resource_id=resource_id,
        status=posted.status,
        code=posted.code,
        study_uid=posted.study_uid,
        series_uid=posted.series_uid,
        instances=instances,
        patient_id=patient_id,
        study_resource_id=study_resource_id,
        retrieve_url=listed_url(site, resource_id),
        issued=_instant(now),
        extra=posted.extra,
        meta={"versionId": "1", "lastUpdated": _instant(now)},
    )
    await request.app[STORE].add_selection(
        StoredSelection(
            site=site.site_id,
            resource_id=resource_id,
            study_uid=posted.study_uid,
            series_uid=posted.series_uid,
            patient_id=patient_id,
            instances=tuple(
                StoredInstance(i.sop_instance_uid, i.sop_class_uid, i.frames) for i in instances
            ),
            resource=resource,
            created=now,
        )
    )
    location = f"{site.fhir_base}/ImagingSelection/{resource_id}/_history/1"
    headers = {"Location": location, **_version_headers(resource)}
    return fhir_response(resource, fmt, status=201, headers=headers)


async def _read_body(request: web.Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > _MAX_BODY:
            raise PayloadTooLarge("the selection is too large", detail={"max_bytes": _MAX_BODY})
        chunks.append(chunk)
    return b"".join(chunks)


async def _check_in_pacs(
    request: web.Request, site: FhirSite, posted: PostedSelection
) -> tuple[DicomJson, dict[str, str | None]]:
    """The study (from the PACS) and each listed instance's SOP Class; 422 naming the first
    element the PACS does not hold. For a patient-bound token, another patient's study is one
    the PACS does not hold."""
    params = [("StudyInstanceUID", posted.study_uid), ("includefield", _PATIENT_FIELDS)]
    studies = await bound_qido(request, site, params, Level.STUDY)
    if not studies:
        raise Unprocessable(
            "the study is not in the PACS", detail={"expression": "ImagingSelection.studyUid"}
        )
    scope = Scope(posted.study_uid, posted.series_uid)
    held = await held_instances(site, scope, [i.sop_instance_uid for i in posted.instances])
    if not held and not await qido(site, [("limit", "1")], Level.INSTANCE, scope):
        raise Unprocessable(
            "the series is not in the study in the PACS",
            detail={"expression": "ImagingSelection.seriesUid"},
        )
    for n, listed in enumerate(posted.instances):
        if listed.sop_instance_uid not in held:
            raise Unprocessable(
                f"instance {listed.sop_instance_uid} is not in the series in the PACS",
                detail={"expression": f"ImagingSelection.instance[{n}].uid"},
            )
        stored_class = held[listed.sop_instance_uid]
        if listed.sop_class_uid is not None and stored_class not in (None, listed.sop_class_uid):
            raise Unprocessable(
                f"instance {listed.sop_instance_uid} is of SOP Class {stored_class}",
                detail={"expression": f"ImagingSelection.instance[{n}].sopClass"},
            )
    return studies[0], {uid: cls or _listed_class(posted, uid) for uid, cls in held.items()}


def _listed_class(posted: PostedSelection, uid: str) -> str | None:
    return next((i.sop_class_uid for i in posted.instances if i.sop_instance_uid == uid), None)


def _check_references(posted: PostedSelection, patient_id: str, study_resource_id: str) -> None:
    """A subject or derivedFrom given by the client must name what the PACS says."""
    if posted.subject_reference not in (None, f"Patient/{patient_id}"):
        raise Unprocessable(
            "the subject is not the study's patient",
            detail={"expression": "ImagingSelection.subject"},
        )
    for n, reference in enumerate(posted.derived_from):
        if reference != f"ImagingStudy/{study_resource_id}":
            raise Unprocessable(
                "derivedFrom must reference the ImagingStudy of the selection's study",
                detail={"expression": f"ImagingSelection.derivedFrom[{n}]"},
            )


# ---------------------------------------------------------------------- search


async def search(request: web.Request) -> web.Response:
    """``GET [base]/ImagingSelection?...`` and ``POST [base]/ImagingSelection/_search``."""
    params = await search_params(request)
    fmt = _format(request, dict(params))
    query = parse_selection_search(params, strict=strict_handling(request), max_count=_MAX_COUNT)
    # Over-long patient identities (digest ids) are not kept: they name no patient here.
    query = resolve_digests(query, patient=lambda _: None)
    site = fhir_site(request)
    found = [*await _kos_selections(request, site, query), *await _created(request, site, query)]
    issuers = issuers_of(request)
    found = [s for s in found if matches_selection(query, s.resource, issuers, s.patient)]
    binding = patient_binding(request)
    if binding is not None:  # narrowed in the queries; checked here on what was found
        found = [s for s in found if binding.is_patient(s.patient)]
    found.sort(key=lambda s: (s.study_uid, str(s.resource.get("issued", "")), s.resource["id"]))
    base = site.fhir_base + "/ImagingSelection"
    if query.summary_count:
        self_url = search_url(base, query.self_params())
        return fhir_response(summary_count(total=len(found), self_url=self_url, version="R5"), fmt)
    count = query.count if query.count is not None else _DEFAULT_COUNT
    page = found[query.offset : query.offset + count]
    self_url, next_url, previous_url = page_links(
        base, query.self_params(), offset=query.offset, count=count, total=len(found)
    )
    await remember_served(request, site, page)
    entries = [
        BundleEntry(full_url(site.fhir_base, SELECTION_KIND, str(s.resource["id"])), s.resource)
        for s in page
    ]
    bundle = searchset(
        entries,
        total=len(found),
        self_url=self_url,
        next_url=next_url,
        previous_url=previous_url,
        version="R5",
    )
    return fhir_response(bundle, fmt)


async def _kos_selections(
    request: web.Request, site: FhirSite, query: SelectionSearch
) -> list[Selection]:
    """The selections of the KOS documents the pushed-down QIDO queries find."""
    uids: dict[str, str | None] = {}
    for resource_id in query.derived_study_ids():
        uid = study_uid_for_id(resource_id) if site.default else None
        uids[resource_id] = uid or await request.app[STORE].recall(
            site.site_id, "ImagingStudy", resource_id
        )
    seen: set[str] = set()
    out: list[Selection] = []
    for params in pacs_queries(query, issuers_of(request), uids.get):
        query_params = [*params, ("limit", str(MAX_CANDIDATES))]
        for series in await bound_qido(request, site, query_params, Level.SERIES):
            series_uid = dataset_text(series, _SERIES_UID)
            if series_uid is None or series_uid in seen:
                continue
            seen.add(series_uid)
            out += await kos_series_selections(site, series)
    return out


async def _created(request: web.Request, site: FhirSite, query: SelectionSearch) -> list[Selection]:
    """The selections clients created, narrowed in the store by what it indexes (study UID,
    patient id); :func:`matches_selection` checks everything after."""
    study_uids: set[str] | None = None
    for uid_clause in query.study_uids:
        study_uids = set(uid_clause) if study_uids is None else study_uids & set(uid_clause)
    patient_ids: set[str] | None = None
    for clause in query.patients:
        if all(isinstance(c, PatientRef) for c in clause):
            ids = {c.resource_id for c in clause if isinstance(c, PatientRef)}
            patient_ids = ids if patient_ids is None else patient_ids & ids
    binding = patient_binding(request)
    if binding is not None:
        mine = {binding.resource_id}
        patient_ids = mine if patient_ids is None else patient_ids & mine
    stored = await request.app[STORE].find_selections(
        site.site_id, study_uids=study_uids, patient_ids=patient_ids, limit=MAX_CANDIDATES
    )
    return [from_store(site, s) for s in stored]


# ---------------------------------------------------------------------- routes


def fhir_routes(prefix: str) -> list[web.RouteDef]:
    """The ImagingSelection routes under a FHIR base (``/fhir`` or ``/site/{site}/fhir``)."""
    return [
        web.get(f"{prefix}/ImagingSelection", search),
        web.post(f"{prefix}/ImagingSelection/_search", search),
        web.post(f"{prefix}/ImagingSelection", create),
        web.get(f"{prefix}/ImagingSelection/{{id}}", read),
        web.delete(f"{prefix}/ImagingSelection/{{id}}", delete),
    ]
