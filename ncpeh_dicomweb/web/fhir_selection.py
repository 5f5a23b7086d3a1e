"""FHIR R5 ImagingSelection: key-image selections read live from the Key Object Selection
documents in the PACS, and selections a client creates (kept in the gateway's store), each
retrievable as one ``multipart/related`` stream of its listed instances.

Where a selection comes from decides what can be done with it:

=======================  ===================================  ==============================
selection                id                                   interactions
=======================  ===================================  ==============================
from a KOS in the PACS   ``{KOS SOP UID}-{n}`` (n-th series   search, read; DELETE is 405:
                         referenced) or a digest on non-      the document is the PACS's
                         default sites (``fhir.selection``)
created by ``POST``      a UUID                               search, read, DELETE (then
                                                              410)
=======================  ===================================  ==============================

A KOS found by a search costs a series-level QIDO (Modality KO, narrowed by patient or study)
and the metadata of each KO series; IOCM rejection notes are not selections. The listed
instances are served at ``{DICOMweb root}/selections/{id}``, the address of the selection's
contained Endpoint, in the selection's order: one WADO-RS retrieve per instance after one QIDO
that checks which are still there (those gone are named in a ``Warning``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

from aiohttp import web

from ..backends.base import DicomJson, RetrieveEvent, Scope, Target
from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import first_value
from ..dicomweb.media import negotiate_instances
from ..errors import (
    BadRequest,
    Gone,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
    warning_value,
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
    KOS_SOP_CLASS,
    KeyObjectSelection,
    ListedInstance,
    is_rejection_note,
    read_kos,
)
from ..fhir.negotiation import FhirFormat, FhirVersion, negotiate_fhir
from ..fhir.search import study_uid_for_id
from ..fhir.selection import (
    imaging_selection,
    is_created_selection_id,
    kos_selection_id,
    new_selection_id,
    parse_kos_selection_id,
    selection_from_kos,
)
from ..fhir.selection_post import PostedSelection, SelectionInvalid, parse_posted_selection
from ..fhir.selection_search import (
    SelectionSearch,
    matches_selection,
    pacs_queries,
    parse_selection_search,
    resolve_digests,
)
from ..fhir.tokens import parse_patient_resource_id, patient_resource_id
from ..imaging.transcode import encodable
from ..state import StoredInstance, StoredSelection
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
from .keys import IMAGING_POOL, STORE, accept_of
from .streaming import stream_parts
from .transcoding import transcoded

__all__ = ["fhir_routes", "wado_routes"]

_R5_ONLY: tuple[FhirVersion, ...] = ("R5",)
_DEFAULT_COUNT = 20
_MAX_COUNT = 100
_MAX_BODY = 4 << 20  # a selection of 10,000 instances is well under 1 MiB of JSON
_UID_BATCH = 100  # SOP Instance UIDs per QIDO query when checking a selection's instances
_KIND = "ImagingSelection"  # in the store's record of ids served
_JSON_TYPES = frozenset({"application/fhir+json", "application/json"})
_SERIES_UID, _STUDY_UID, _SOP_UID, _SOP_CLASS = "0020000E", "0020000D", "00080018", "00080016"


@dataclass(frozen=True, slots=True)
class _Selection:
    """A selection found: its resource (for this request's URLs) and what it lists."""

    resource: dict[str, Any]
    study_uid: str
    series_uid: str
    instances: tuple[ListedInstance, ...]
    patient: tuple[str, str | None] | None  # PatientID, IssuerOfPatientID when known
    kos_key: str | None  # "{KOS SOP UID}/{n}" for one read from a KOS; None if created


def _format(request: web.Request, params: Mapping[str, str] | None = None) -> FhirFormat:
    query = request.query if params is None else params
    return negotiate_fhir(accept_of(request), query.get("_format"), versions=_R5_ONLY)


def _listed_url(site: FhirSite, resource_id: str) -> str:
    return f"{site.wado_root}/selections/{resource_id}"


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------- from the PACS


def _from_kos(site: FhirSite, kos: KeyObjectSelection, index: int) -> _Selection:
    resource_id = kos_selection_id(kos.kos_instance_uid, index, site.id_site)
    patient = (kos.patient_id, kos.issuer) if kos.patient_id is not None else None
    resource = selection_from_kos(
        kos,
        resource_id=resource_id,
        patient_id=None if patient is None else patient_resource_id(*patient),
        study_resource_id=site.resource_id(kos.study_uid),
        retrieve_url=_listed_url(site, resource_id),
    )
    key = f"{kos.kos_instance_uid}/{index}"
    return _Selection(resource, kos.study_uid, kos.series_uid, kos.instances, patient, key)


def _selections_of_kos(site: FhirSite, metadata: DicomJson) -> list[_Selection]:
    if first_value(metadata, _SOP_CLASS) != KOS_SOP_CLASS or is_rejection_note(metadata):
        return []
    return [_from_kos(site, kos, i) for i, kos in enumerate(read_kos(metadata), start=1)]


async def _kos_series_selections(site: FhirSite, series: DicomJson) -> list[_Selection]:
    """The selections of every KOS in one KO series: one metadata request."""
    study, series_uid = dataset_text(series, _STUDY_UID), dataset_text(series, _SERIES_UID)
    if study is None or series_uid is None:
        return []
    try:
        metadata = await site.backend.metadata(Target(study, series_uid), site.wado_root)
    except NotFound:
        return []  # gone between the QIDO and now
    return [s for dataset in metadata for s in _selections_of_kos(site, dataset)]


# ---------------------------------------------------------------------- from the store


def _from_store(site: FhirSite, stored: StoredSelection) -> _Selection:
    resource = dict(stored.resource)
    # The retrieval address follows the URL the client uses now (proxy, public_url).
    resource["contained"] = [
        {**c, "address": _listed_url(site, stored.resource_id)}
        if c.get("resourceType") == "Endpoint"
        else c
        for c in resource.get("contained", [])
    ]
    key = parse_patient_resource_id(stored.patient_id)
    patient = (key.patient_id, key.issuer) if key is not None else None
    instances = tuple(
        ListedInstance(i.sop_instance_uid, i.sop_class_uid, i.frames) for i in stored.instances
    )
    return _Selection(resource, stored.study_uid, stored.series_uid, instances, patient, None)


# ---------------------------------------------------------------------- read, delete


async def _find(request: web.Request, site: FhirSite, resource_id: str) -> _Selection:
    """The selection ``resource_id`` names; 404 if none, 410 if it was deleted or its KOS is
    no longer in the PACS."""
    store = request.app[STORE]
    if is_created_selection_id(resource_id):
        stored = await store.selection(site.site_id, resource_id)
        if stored is None:
            raise NotFound("no such ImagingSelection", detail={"id": resource_id})
        if stored.deleted is not None:
            raise Gone("the ImagingSelection was deleted", detail={"id": resource_id})
        return _from_store(site, stored)
    key = parse_kos_selection_id(resource_id) if site.default else None
    remembered = await store.recall(site.site_id, _KIND, resource_id)
    if key is None and remembered is not None:
        remembered_uid, _, position = remembered.rpartition("/")
        key = (remembered_uid, int(position)) if position.isdigit() else None
    if key is None:
        raise NotFound("no such ImagingSelection", detail={"id": resource_id[:64]})
    kos_uid, index = key
    found = await qido(
        site, [("SOPInstanceUID", kos_uid), ("includefield", _SERIES_UID)], Level.INSTANCE
    )
    selections: list[_Selection] = []
    if found:
        study, series = dataset_text(found[0], _STUDY_UID), dataset_text(found[0], _SERIES_UID)
        if study is not None and series is not None:
            try:
                target = Target(study, series, kos_uid)
                metadata = await site.backend.metadata(target, site.wado_root)
                selections = _selections_of_kos(site, metadata[0]) if metadata else []
            except NotFound:
                selections = []
    if 1 <= index <= len(selections):
        await _remember(request, site, selections[index - 1 : index])
        return selections[index - 1]
    if remembered is not None:
        raise Gone("the key object selection is no longer in the PACS", detail={"id": resource_id})
    raise NotFound("no such ImagingSelection", detail={"id": resource_id[:64]})


async def _remember(request: web.Request, site: FhirSite, found: Sequence[_Selection]) -> None:
    """Record the KOS selections served, so that one the PACS loses later is 410."""
    pairs = [(str(s.resource["id"]), s.kos_key) for s in found if s.kos_key is not None]
    if pairs:
        await request.app[STORE].remember(site.site_id, _KIND, pairs)


async def read(request: web.Request) -> web.Response:
    """``GET [base]/ImagingSelection/{id}`` (R5)."""
    fmt = _format(request)
    site = fhir_site(request)
    selection = await _find(request, site, request.match_info["id"])
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
    if is_created_selection_id(resource_id):
        if await store.delete_selection(site.site_id, resource_id, time.time()):
            return web.Response(status=204)
        if await store.selection(site.site_id, resource_id) is None:
            raise NotFound("no such ImagingSelection", detail={"id": resource_id})
        return web.Response(status=204)  # deleted already: DELETE is idempotent
    await _find(request, site, resource_id)  # 404 / 410 first
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
    study, sop_classes = await _check_in_pacs(site, posted)
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
        retrieve_url=_listed_url(site, resource_id),
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
    site: FhirSite, posted: PostedSelection
) -> tuple[DicomJson, dict[str, str | None]]:
    """The study (from the PACS) and each listed instance's SOP Class; 422 naming the first
    element the PACS does not hold."""
    studies = await qido(site, [("StudyInstanceUID", posted.study_uid)], Level.STUDY)
    if not studies:
        raise Unprocessable(
            "the study is not in the PACS", detail={"expression": "ImagingSelection.studyUid"}
        )
    scope = Scope(posted.study_uid, posted.series_uid)
    held = await _held(site, scope, [i.sop_instance_uid for i in posted.instances])
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


async def _held(site: FhirSite, scope: Scope, uids: Sequence[str]) -> dict[str, str | None]:
    """Which of ``uids`` the PACS holds in ``scope``, with their SOP Classes."""
    held: dict[str, str | None] = {}
    for start in range(0, len(uids), _UID_BATCH):
        batch = uids[start : start + _UID_BATCH]
        params = [("SOPInstanceUID", ",".join(batch)), ("includefield", _SOP_CLASS)]
        for dataset in await qido(site, params, Level.INSTANCE, scope):
            uid = dataset_text(dataset, _SOP_UID)
            if uid is not None:
                held[uid] = dataset_text(dataset, _SOP_CLASS)
    return held


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
    await _remember(request, site, page)
    entries = [
        BundleEntry(full_url(site.fhir_base, _KIND, str(s.resource["id"])), s.resource, "match")
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
) -> list[_Selection]:
    """The selections of the KOS documents the pushed-down QIDO queries find."""
    uids: dict[str, str | None] = {}
    for resource_id in query.derived_study_ids():
        uid = study_uid_for_id(resource_id) if site.default else None
        uids[resource_id] = uid or await request.app[STORE].recall(
            site.site_id, "ImagingStudy", resource_id
        )
    seen: set[str] = set()
    out: list[_Selection] = []
    for params in pacs_queries(query, issuers_of(request), uids.get):
        query_params = [*params, ("limit", str(MAX_CANDIDATES))]
        for series in await qido(site, query_params, Level.SERIES):
            series_uid = dataset_text(series, _SERIES_UID)
            if series_uid is None or series_uid in seen:
                continue
            seen.add(series_uid)
            out += await _kos_series_selections(site, series)
    return out


async def _created(
    request: web.Request, site: FhirSite, query: SelectionSearch
) -> list[_Selection]:
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
    stored = await request.app[STORE].find_selections(
        site.site_id, study_uids=study_uids, patient_ids=patient_ids, limit=MAX_CANDIDATES
    )
    return [_from_store(site, s) for s in stored]


# ---------------------------------------------------------------------- listed instances


async def retrieve_listed(request: web.Request) -> web.StreamResponse:
    """``GET {DICOMweb root}/selections/{id}``: the selection's instances, in its order, as one
    ``multipart/related; type="application/dicom"`` stream (the NCPeH "All listed instances"
    retrieval), negotiated and transcoded like a study retrieve. Instances the PACS no longer
    holds are left out and counted in a ``Warning``; none left is 404."""
    media = negotiate_instances(accept_of(request), can_produce=encodable)
    site = fhir_site(request)
    selection = await _find(request, site, request.match_info["id"])
    listed = [i.sop_instance_uid for i in selection.instances]
    held = await _held(site, Scope(selection.study_uid, selection.series_uid), listed)
    present = [uid for uid in listed if uid in held]
    if not present:
        raise NotFound(
            "none of the selection's instances is in the PACS any more",
            detail={"id": request.match_info["id"]},
        )
    headers = {}
    if len(present) < len(listed):
        gone = len(listed) - len(present)
        headers["Warning"] = warning_value(f"{gone} listed instance(s) no longer in the PACS")
    events = _listed_events(site, selection, present)
    events = transcoded(events, media.transfer_syntax, request.app[IMAGING_POOL])
    return await stream_parts(
        request,
        events,
        content_type=media.content_type,
        part_type=media.part_content_type(),
        what=f"retrieve of the instances of selection {request.match_info['id'][:64]}",
        headers=headers,
    )


async def _listed_events(
    site: FhirSite, selection: _Selection, uids: Sequence[str]
) -> AsyncGenerator[RetrieveEvent, None]:
    for uid in uids:
        target = Target(selection.study_uid, selection.series_uid, uid)
        async with aclosing(site.backend.retrieve(target, site.wado_root)) as events:
            async for event in events:
                yield event


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


def wado_routes(prefix: str) -> list[web.RouteDef]:
    """The listed-instances retrieval under a DICOMweb root."""
    return [web.get(f"{prefix}/selections/{{id}}", retrieve_listed)]
