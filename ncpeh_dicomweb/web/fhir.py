"""FHIR facade (NCPeH "Get Study Metadata (HL7 FHIR)"): ImagingStudy search and read, R4 and R5,
built live from the site's PACS through the same search the QIDO handlers use.

A search goes to the PACS as study-level QIDO queries (:func:`fhir.search.to_qido`: patient,
dates, modalities, UIDs, accession numbers); what the PACS cannot match is matched here on its
answers, reading series (body site, series UID, reason), one instance's metadata per study
(reason codes, which no QIDO level returns from Orthanc) and instances (SOP class, instance
UID) only when a parameter needs them. Ids served are remembered, so a study the PACS no
longer has is 410, not 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from ..backends.base import Backend, DicomJson, Scope, Target
from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import first_value
from ..dicomweb.query import parse_qido
from ..errors import BadRequest, Gone, NotFound
from ..fhir.bundle import (
    BundleEntry,
    SearchMode,
    full_url,
    page_links,
    search_url,
    searchset,
    summary_count,
)
from ..fhir.capability import SearchParamInfo, capability_statement
from ..fhir.mapping import endpoint, imaging_study, patient, study_id
from ..fhir.negotiation import FhirFormat, negotiate_fhir
from ..fhir.search import (
    StudySearch,
    lower_qido,
    matches_instances,
    matches_series,
    matches_study,
    needs_instances,
    needs_series,
    parse_study_search,
    resolve_digests,
    sort_studies,
    study_uid_for_id,
    to_qido,
)
from ..fhir.tokens import IssuerTable, patient_resource_id
from ..state import ServedStudies
from .keys import SETTINGS, accept_of, site_context

__all__ = ["SERVED_STUDIES", "routes", "vendor_routes"]

SERVED_STUDIES = web.AppKey("served_studies", ServedStudies)

_DEFAULT_COUNT = 20
_MAX_COUNT = 100
_MAX_CANDIDATES = 1000  # studies a search may gather from the PACS before paging
_ENDPOINT_ID = "wado-rs"
# Study-level attributes no QIDO level returns from some PACS (Orthanc): read from one instance.
_DETAIL_TAGS = ("00401012", "0040100A", "00081032", "00400275", "00080201")
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"


@dataclass(frozen=True, slots=True)
class _Site:
    site_id: str
    backend: Backend
    wado_root: str  # the gateway's DICOMweb root for the site, as the client sees it
    fhir_base: str
    default: bool  # the default site: ImagingStudy ids are the Study Instance UIDs
    # Studies already completed from an instance's metadata in this request, by UID.
    details: dict[str, DicomJson] = field(default_factory=dict)

    def resource_id(self, study_uid: str) -> str:
        return study_id(study_uid, None if self.default else self.site_id)


def _site(request: web.Request) -> _Site:
    context = site_context(request)
    default = request.match_info.get("site") is None
    root = context.base_url.removesuffix("/dicom-web")
    return _Site(context.site_id, context.backend, context.base_url, root + "/fhir", default)


def _issuers(request: web.Request) -> IssuerTable:
    return IssuerTable.from_pairs(request.app[SETTINGS].patient_id_issuers)


def _fhir_response(body: Mapping[str, Any], fmt: FhirFormat, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers={"Content-Type": fmt.content_type}
    )


# ---------------------------------------------------------------------- search


async def _params(request: web.Request) -> list[tuple[str, str]]:
    """Search parameters of a GET, or of a POST ``_search`` (form body, then the URL's)."""
    raw = request.rel_url.raw_query_string
    try:
        params = parse_qsl(raw, keep_blank_values=True, errors="strict")
        if request.method == "POST":
            body = (await request.read()).decode("utf-8")
            params = parse_qsl(body, keep_blank_values=True, errors="strict") + params
    except UnicodeDecodeError:
        raise BadRequest("the search parameters are not UTF-8", detail={}) from None
    return params


async def search(request: web.Request) -> web.Response:
    """``GET|POST [base]/ImagingStudy?...`` and ``POST [base]/ImagingStudy/_search``."""
    params = await _params(request)
    fmt = negotiate_fhir(accept_of(request), dict(params).get("_format"))
    strict = "handling=strict" in request.headers.get("Prefer", "").replace(" ", "")
    query = parse_study_search(params, strict=strict, max_count=_MAX_COUNT)
    site = _site(request)
    query = await _resolved(request, site, query)
    issuers = _issuers(request)
    studies = await _matching_studies(site, query, issuers)
    self_params = query.self_params()
    if query.summary_count:
        self_url = search_url(site.fhir_base + "/ImagingStudy", self_params)
        return _fhir_response(
            summary_count(total=len(studies), self_url=self_url, version=fmt.version), fmt
        )
    count = query.count if query.count is not None else _DEFAULT_COUNT
    page = studies[query.offset : query.offset + count]
    self_url, next_url, previous_url = page_links(
        site.fhir_base + "/ImagingStudy",
        self_params,
        offset=query.offset,
        count=count,
        total=len(studies),
    )
    entries = await _entries(request, site, query, page, fmt, issuers)
    await request.app[SERVED_STUDIES].remember(
        site.site_id, [(site.resource_id(_uid(s)), _uid(s)) for s in page]
    )
    bundle = searchset(
        entries,
        total=len(studies),
        self_url=self_url,
        next_url=next_url,
        previous_url=previous_url,
        version=fmt.version,
    )
    return _fhir_response(bundle, fmt)


async def _resolved(request: web.Request, site: _Site, query: StudySearch) -> StudySearch:
    """``query`` with its digest ImagingStudy ids (other sites' ids) resolved through the store
    of ids served. Over-long Patient ids are not kept there: they name no patient."""
    _, study_ids = query.digests()
    if not study_ids:
        return query
    store = request.app[SERVED_STUDIES]
    known = {rid: await store.study_for(site.site_id, rid) for rid in study_ids}
    return resolve_digests(query, patient=lambda _: None, study=known.get)


def _uid(dataset: DicomJson) -> str:
    return str(first_value(dataset, _STUDY_UID))


async def _qido(
    backend: Backend, params: list[tuple[str, str]], level: Level, scope: Scope, root: str
) -> list[DicomJson]:
    query = parse_qido(params, level, max_limit=_MAX_CANDIDATES)
    return (await backend.search(query, scope, root)).datasets


async def _matching_studies(
    site: _Site, query: StudySearch, issuers: IssuerTable
) -> list[DicomJson]:
    """Every study matching ``query``, in ``_sort`` order: the PACS's answers to the pushed-down
    queries, narrowed here by what they could not carry."""
    found: dict[str, DicomJson] = {}
    for params in to_qido(query, issuers):
        params = [*params, ("limit", str(_MAX_CANDIDATES))]
        for study in await _qido(site.backend, params, Level.STUDY, Scope(), site.wado_root):
            found.setdefault(_uid(study), study)
    site_id = None if site.default else site.site_id
    studies = [s for s in found.values() if matches_study(query, s, issuers, site_id=site_id)]
    if query.reason:
        studies = [await _with_detail(site, s) for s in studies]
    if studies and needs_series(query):
        series = await _lower(site, Level.SERIES, studies)
        studies = [s for s in studies if matches_series(query, s, series.get(_uid(s), []))]
    if studies and needs_instances(query):
        instances = await _lower(site, Level.INSTANCE, studies)
        studies = [s for s in studies if matches_instances(query, instances.get(_uid(s), []))]
    return sort_studies(query, studies)


async def _lower(
    site: _Site, level: Level, studies: Sequence[DicomJson]
) -> dict[str, list[DicomJson]]:
    """The series or instances of ``studies``, by Study Instance UID (batched UID lists)."""
    out: dict[str, list[DicomJson]] = {}
    for params in lower_qido(level, [_uid(s) for s in studies]):
        for dataset in await _qido(site.backend, params, level, Scope(), site.wado_root):
            out.setdefault(str(first_value(dataset, _STUDY_UID)), []).append(dataset)
    return out


async def _with_detail(site: _Site, study: DicomJson) -> DicomJson:
    """``study`` with the study-level attributes QIDO may leave out (reason and procedure
    codes) read from the metadata of one of its instances: two PACS requests."""
    uid = _uid(study)
    if uid in site.details:
        return site.details[uid]
    instances = await _qido(
        site.backend, [("limit", "1")], Level.INSTANCE, Scope(uid), site.wado_root
    )
    if not instances:
        return study
    first = instances[0]
    target = Target(uid, str(first_value(first, _SERIES_UID)), str(first_value(first, _SOP_UID)))
    try:
        metadata = await site.backend.metadata(target, site.wado_root)
    except NotFound:
        return study
    detail = metadata[0] if metadata else {}
    merged = dict(study)
    for tag in _DETAIL_TAGS:
        if tag not in merged and tag in detail:
            merged[tag] = detail[tag]
    site.details[uid] = merged
    return merged


async def _entries(
    request: web.Request,
    site: _Site,
    query: StudySearch,
    page: Sequence[DicomJson],
    fmt: FhirFormat,
    issuers: IssuerTable,
) -> list[BundleEntry]:
    """The page's ImagingStudy resources (with their series), then what ``_include`` asks."""
    if not page:
        return []
    detailed = await asyncio.gather(*(_with_detail(site, s) for s in page))
    series = await _lower(site, Level.SERIES, page)
    entries: list[BundleEntry] = []
    for study in detailed:
        uid = _uid(study)
        resource = imaging_study(
            study,
            series.get(uid, []),
            [],
            version=fmt.version,
            resource_id=site.resource_id(uid),
            patient_id=_patient_id(study),
            endpoint_id=_ENDPOINT_ID,
        )
        entries.append(_entry(site, resource))
    if "ImagingStudy:endpoint" in query.include:
        resource = endpoint(version=fmt.version, resource_id=_ENDPOINT_ID, address=site.wado_root)
        entries.append(_entry(site, resource, mode="include"))
    if "ImagingStudy:patient" in query.include:
        seen: set[str] = set()
        for study in detailed:
            pid = _patient_id(study)
            if pid in seen:
                continue
            seen.add(pid)
            system = issuers.system_for(_text(study, "00100021"))
            resource = patient(
                study, version=fmt.version, resource_id=pid, identifier_system=system
            )
            entries.append(_entry(site, resource, mode="include"))
    return entries


def _entry(site: _Site, resource: dict[str, Any], *, mode: SearchMode = "match") -> BundleEntry:
    url = full_url(site.fhir_base, resource["resourceType"], resource["id"])
    return BundleEntry(url, resource, mode)


def _text(dataset: DicomJson, tag: str) -> str | None:
    value = first_value(dataset, tag)
    return str(value) if value is not None else None


def _patient_id(study: DicomJson) -> str:
    return patient_resource_id(_text(study, "00100020") or "", _text(study, "00100021"))


# ---------------------------------------------------------------------- read


async def read(request: web.Request) -> web.Response:
    """``GET [base]/ImagingStudy/{id}``: the study with its series and instances."""
    fmt = negotiate_fhir(accept_of(request), request.query.get("_format"))
    resource = await _read_study(request, fmt)
    return _fhir_response(resource, fmt)


async def vendor_read(request: web.Request) -> web.Response:
    """``GET /site/{siteId}/fhir/imaging-study/{id}`` (the vendor API of the seeds): R4 as
    ``application/json``."""
    fmt = negotiate_fhir(None, "json")
    resource = await _read_study(request, fmt)
    return web.Response(body=orjson.dumps(resource), content_type="application/json")


async def _read_study(request: web.Request, fmt: FhirFormat) -> dict[str, Any]:
    site = _site(request)
    resource_id = request.match_info["id"]
    store = request.app[SERVED_STUDIES]
    uid = study_uid_for_id(resource_id) if site.default else None
    if uid is None:
        uid = await store.study_for(site.site_id, resource_id)
    if uid is None:
        raise NotFound("no such ImagingStudy", detail={"id": resource_id[:64]})
    params = [("StudyInstanceUID", uid), ("includefield", "all")]
    studies = await _qido(site.backend, params, Level.STUDY, Scope(), site.wado_root)
    if not studies:
        if await store.served(site.site_id, resource_id):
            raise Gone("the study is no longer available", detail={"id": resource_id})
        raise NotFound("no such ImagingStudy", detail={"id": resource_id[:64]})
    study = await _with_detail(site, studies[0])
    series = (await _lower(site, Level.SERIES, [study])).get(uid, [])
    instances = (await _lower(site, Level.INSTANCE, [study])).get(uid, [])
    await store.remember(site.site_id, [(resource_id, uid)])
    return imaging_study(
        study,
        series,
        instances,
        version=fmt.version,
        resource_id=resource_id,
        patient_id=_patient_id(study),
        endpoint_id=_ENDPOINT_ID,
    )


async def read_endpoint(request: web.Request) -> web.Response:
    fmt = negotiate_fhir(accept_of(request), request.query.get("_format"))
    if request.match_info["id"] != _ENDPOINT_ID:
        raise NotFound("no such Endpoint", detail={"id": request.match_info["id"][:64]})
    site = _site(request)
    return _fhir_response(
        endpoint(version=fmt.version, resource_id=_ENDPOINT_ID, address=site.wado_root), fmt
    )


# ---------------------------------------------------------------------- capabilities

_SEARCH_PARAMS = (
    SearchParamInfo("patient", "reference", "The patient (Patient/{id}); chained .identifier"),
    SearchParamInfo("subject", "reference", "Same as patient"),
    SearchParamInfo("identifier", "token", "Study Instance UID (urn:dicom:uid) or accession"),
    SearchParamInfo("modality", "token", "A modality of the study (DCM)"),
    SearchParamInfo("started", "date", "When the study started, every prefix, precision-aware"),
    SearchParamInfo("reason", "token", "The reason for the study (alias reasonCode)"),
    SearchParamInfo("bodysite", "token", "A body site studied, SNOMED CT (alias body-site)"),
    SearchParamInfo("dicom-class", "token", "The SOP Class of an instance"),
    SearchParamInfo("status", "token", "Always available"),
    SearchParamInfo("series", "token", "A Series Instance UID of the study"),
    SearchParamInfo("instance", "token", "A SOP Instance UID of the study"),
    SearchParamInfo("_id", "token", "The ImagingStudy id"),
)
_PUSHED = {"patient", "subject", "identifier", "modality", "started", "_id"}


async def metadata(request: web.Request) -> web.Response:
    """``GET [base]/metadata``: the CapabilityStatement."""
    fmt = negotiate_fhir(accept_of(request), request.query.get("_format"))
    site = _site(request)
    statement = capability_statement(
        version=fmt.version,
        base_url=site.fhir_base,
        search_params=_SEARCH_PARAMS,
        pushed_to_pacs=_PUSHED,
        imaging_selection=False,
        read_types=("Endpoint",),
    )
    return _fhir_response(statement, fmt)


# ---------------------------------------------------------------------- routes


def routes(prefix: str) -> list[web.RouteDef]:
    """The FHIR routes under ``prefix`` (``/fhir`` or ``/site/{site}/fhir``)."""
    return [
        web.get(f"{prefix}/metadata", metadata),
        web.get(f"{prefix}/ImagingStudy", search),
        web.post(f"{prefix}/ImagingStudy", search),
        web.post(f"{prefix}/ImagingStudy/_search", search),
        web.get(f"{prefix}/ImagingStudy/{{id}}", read),
        web.get(f"{prefix}/Endpoint/{{id}}", read_endpoint),
    ]


def vendor_routes() -> list[web.RouteDef]:
    return [web.get("/site/{site}/fhir/imaging-study/{id}", vendor_read)]
