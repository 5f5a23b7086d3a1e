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
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from ..backends.base import DicomJson, Scope, Target
from ..backends.rejections import rejected_study
from ..config import Settings
from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import first_value
from ..errors import Gone, NotFound
from ..fhir.bundle import (
    BundleEntry,
    SearchMode,
    full_url,
    page_links,
    search_url,
    searchset,
    summary_count,
)
from ..fhir.capability import SearchParamInfo, Security, capability_statement
from ..fhir.elements import subset
from ..fhir.mapping import STUDY_INCLUDEFIELDS, endpoint, imaging_study, patient
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
from ..fhir.tokens import IssuerTable
from ..security.scopes import CONFIGURABLE
from .audit import note_datasets
from .auth import allows_study, bound_qido, patient_binding
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
from .keys import SETTINGS, STORE, accept_of

__all__ = ["routes", "vendor_routes"]

_DEFAULT_COUNT = 20
_MANDATORY = ("status", "subject")  # ImagingStudy's 1..1 elements, kept under _elements
_MAX_COUNT = 100
_ENDPOINT_ID = "wado-rs"
# Study-level attributes no QIDO level returns from some PACS (Orthanc): read from one instance.
_DETAIL_TAGS = ("00401012", "0040100A", "00081032", "00400275", "00080201")
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"


# ---------------------------------------------------------------------- search


async def search(request: web.Request) -> web.Response:
    """``GET|POST [base]/ImagingStudy?...`` and ``POST [base]/ImagingStudy/_search``."""
    params = await search_params(request)
    fmt = negotiate_fhir(accept_of(request), dict(params).get("_format"))
    query = parse_study_search(params, strict=strict_handling(request), max_count=_MAX_COUNT)
    site = fhir_site(request)
    query = await _resolved(request, site, query)
    issuers = issuers_of(request)
    studies = await _matching_studies(request, site, query, issuers)
    self_params = query.self_params()
    if query.summary_count:
        self_url = search_url(site.fhir_base + "/ImagingStudy", self_params)
        return fhir_response(
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
    note_datasets(request, page)
    await request.app[STORE].remember(
        site.site_id, "ImagingStudy", [(site.resource_id(_uid(s)), _uid(s)) for s in page]
    )
    bundle = searchset(
        entries,
        total=len(studies),
        self_url=self_url,
        next_url=next_url,
        previous_url=previous_url,
        version=fmt.version,
    )
    return fhir_response(bundle, fmt)


async def _resolved(request: web.Request, site: FhirSite, query: StudySearch) -> StudySearch:
    """``query`` with its digest ImagingStudy ids (other sites' ids) resolved through the store
    of ids served. Over-long Patient ids are not kept there: they name no patient."""
    _, study_ids = query.digests()
    if not study_ids:
        return query
    store = request.app[STORE]
    known = {rid: await store.recall(site.site_id, "ImagingStudy", rid) for rid in study_ids}
    return resolve_digests(query, patient=lambda _: None, study=known.get)


def _uid(dataset: DicomJson) -> str:
    return str(first_value(dataset, _STUDY_UID))


async def _matching_studies(
    request: web.Request, site: FhirSite, query: StudySearch, issuers: IssuerTable
) -> list[DicomJson]:
    """Every study matching ``query``, in ``_sort`` order: the PACS's answers to the pushed-down
    queries, narrowed here by what they could not carry. A patient-bound token's queries are
    narrowed to its patient, and the answers filtered (:func:`.auth.bound_qido`): a search for
    another patient finds nothing."""
    found: dict[str, DicomJson] = {}
    for params in to_qido(query, issuers):
        params = [*params, ("limit", str(MAX_CANDIDATES))]
        for study in await bound_qido(request, site, params, Level.STUDY):
            found.setdefault(_uid(study), study)
    site_id = None if site.default else site.site_id
    studies = [s for s in found.values() if matches_study(query, s, issuers, site_id=site_id)]
    if query.reason:
        studies = [await _with_detail(site, s) for s in studies]
    if studies and needs_series(query):
        series = await _lower(request, site, Level.SERIES, studies)
        studies = [s for s in studies if matches_series(query, s, series.get(_uid(s), []))]
    if studies and needs_instances(query):
        instances = await _lower(request, site, Level.INSTANCE, studies)
        studies = [s for s in studies if matches_instances(query, instances.get(_uid(s), []))]
    return sort_studies(query, studies)


async def _lower(
    request: web.Request, site: FhirSite, level: Level, studies: Sequence[DicomJson]
) -> dict[str, list[DicomJson]]:
    """The series or instances of ``studies``, by Study Instance UID (batched UID lists),
    each study's asked once per request (matching and building both need the series); for a
    patient-bound token, only its patient's (a UID a PACS files under two patients)."""
    known = site.lowered.setdefault(level.value, {})
    missing = [uid for uid in dict.fromkeys(_uid(s) for s in studies) if uid not in known]
    for uid in missing:
        known[uid] = []
    for params in lower_qido(level, missing):
        for dataset in await bound_qido(request, site, params, level):
            known.setdefault(str(first_value(dataset, _STUDY_UID)), []).append(dataset)
    return {_uid(s): known[_uid(s)] for s in studies}


async def _with_detail(site: FhirSite, study: DicomJson) -> DicomJson:
    """``study`` with the study-level attributes QIDO may leave out (reason and procedure
    codes) read from the metadata of one of its instances: two PACS requests, none while the
    detail is in the cache."""
    uid = _uid(study)
    if uid in site.details:
        return site.details[uid]
    key = (site.site_id, site.wado_root, f"fhir-study-detail/{uid}")
    cached = site.cache.get(key)
    if cached is not None:
        detail: DicomJson = orjson.loads(cached.body)
    else:
        detail = await _read_detail(site, uid)
        site.cache.put(key, orjson.dumps(detail))
    merged = dict(study)
    for tag, value in detail.items():
        merged.setdefault(tag, value)
    site.details[uid] = merged
    return merged


async def _read_detail(site: FhirSite, uid: str) -> DicomJson:
    """The detail attributes of one instance of study ``uid`` ({} if it has none)."""
    instances = await qido(site, [("limit", "1")], Level.INSTANCE, Scope(uid))
    if not instances:
        return {}
    first = instances[0]
    target = Target(uid, str(first_value(first, _SERIES_UID)), str(first_value(first, _SOP_UID)))
    try:
        metadata = await site.backend.metadata(target, site.wado_root)
    except NotFound:
        return {}
    found = metadata[0] if metadata else {}
    return {tag: found[tag] for tag in _DETAIL_TAGS if tag in found}


async def _entries(
    request: web.Request,
    site: FhirSite,
    query: StudySearch,
    page: Sequence[DicomJson],
    fmt: FhirFormat,
    issuers: IssuerTable,
) -> list[BundleEntry]:
    """The page's ImagingStudy resources (with their series), then what ``_include`` asks."""
    if not page:
        return []
    detailed = await asyncio.gather(*(_with_detail(site, s) for s in page))
    series = await _lower(request, site, Level.SERIES, page)
    entries: list[BundleEntry] = []
    for study in detailed:
        uid = _uid(study)
        resource = imaging_study(
            study,
            series.get(uid, []),
            [],
            version=fmt.version,
            resource_id=site.resource_id(uid),
            patient_id=patient_id_of(study),
            endpoint_id=_ENDPOINT_ID,
        )
        entries.append(_entry(site, subset(resource, query.elements, _MANDATORY)))
    if "ImagingStudy:endpoint" in query.include:
        resource = endpoint(version=fmt.version, resource_id=_ENDPOINT_ID, address=site.wado_root)
        entries.append(_entry(site, resource, mode="include"))
    if "ImagingStudy:patient" in query.include:
        seen: set[str] = set()
        for study in detailed:
            pid = patient_id_of(study)
            if pid in seen:
                continue
            seen.add(pid)
            system = issuers.system_for(dataset_text(study, "00100021"))
            resource = patient(
                study, version=fmt.version, resource_id=pid, identifier_system=system
            )
            entries.append(_entry(site, resource, mode="include"))
    return entries


def _entry(site: FhirSite, resource: dict[str, Any], *, mode: SearchMode = "match") -> BundleEntry:
    url = full_url(site.fhir_base, resource["resourceType"], resource["id"])
    return BundleEntry(url, resource, mode)


# ---------------------------------------------------------------------- read


async def read(request: web.Request) -> web.Response:
    """``GET [base]/ImagingStudy/{id}``: the study with its series and instances."""
    fmt = negotiate_fhir(accept_of(request), request.query.get("_format"))
    resource = await _read_study(request, fmt)
    return fhir_response(resource, fmt)


async def vendor_read(request: web.Request) -> web.Response:
    """``GET /site/{siteId}/fhir/imaging-study/{id}`` (the vendor API of the seeds): R4 as
    ``application/json``."""
    fmt = negotiate_fhir(None, "json")
    resource = await _read_study(request, fmt)
    return web.Response(body=orjson.dumps(resource), content_type="application/json")


async def _read_study(request: web.Request, fmt: FhirFormat) -> dict[str, Any]:
    site = fhir_site(request)
    resource_id = request.match_info["id"]
    store = request.app[STORE]
    uid = study_uid_for_id(resource_id) if site.default else None
    if uid is None:
        uid = await store.recall(site.site_id, "ImagingStudy", resource_id)
    # A patient-bound token: another patient's study is exactly an unknown one (no 410 either:
    # that the id was once served would tell the study exists).
    if uid is None or not await allows_study(
        request, site.site_id, site.backend, site.wado_root, uid
    ):
        raise NotFound("no such ImagingStudy", detail={"id": resource_id[:64]})
    # The attributes the mapping reads, named: Orthanc's "all" leaves out StudyDescription and
    # IssuerOfPatientID (the read then lost its description and named another Patient).
    params = [("StudyInstanceUID", uid), ("includefield", ",".join(STUDY_INCLUDEFIELDS))]
    studies = await qido(site, params, Level.STUDY)
    if not studies:
        # Gone: served before, or every instance of it rejected by an IOCM note in the PACS.
        remembered = await store.recall(site.site_id, "ImagingStudy", resource_id)
        gone = remembered is not None or rejected_study(site.backend, uid)
        if gone and patient_binding(request) is None:
            raise Gone("the study is no longer available", detail={"id": resource_id})
        raise NotFound("no such ImagingStudy", detail={"id": resource_id[:64]})
    study = await _with_detail(site, studies[0])
    note_datasets(request, [study])
    series = (await _lower(request, site, Level.SERIES, [study])).get(uid, [])
    instances = (await _lower(request, site, Level.INSTANCE, [study])).get(uid, [])
    await store.remember(site.site_id, "ImagingStudy", [(resource_id, uid)])
    return imaging_study(
        study,
        series,
        instances,
        version=fmt.version,
        resource_id=resource_id,
        patient_id=patient_id_of(study),
        endpoint_id=_ENDPOINT_ID,
    )


async def read_endpoint(request: web.Request) -> web.Response:
    fmt = negotiate_fhir(accept_of(request), request.query.get("_format"))
    if request.match_info["id"] != _ENDPOINT_ID:
        raise NotFound("no such Endpoint", detail={"id": request.match_info["id"][:64]})
    site = fhir_site(request)
    return fhir_response(
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
    site = fhir_site(request)
    statement = capability_statement(
        version=fmt.version,
        base_url=site.fhir_base,
        search_params=_SEARCH_PARAMS,
        pushed_to_pacs=_PUSHED,
        imaging_selection=True,
        read_types=("Endpoint", "Patient"),
        security=_security(request.app[SETTINGS]),
    )
    return fhir_response(statement, fmt)


def _security(settings: Settings) -> Security | None:
    """What the CapabilityStatement says of authentication; None when tokens are not asked."""
    auth = settings.auth
    if not auth.active or auth.issuer is None:
        return None
    scopes = [auth.required_scope(i) for i in CONFIGURABLE]
    return Security(
        issuer=auth.issuer,
        scopes=[s for s in scopes if s],
        cors=bool(settings.cors_origins),
        introspection=auth.introspection_url is not None,
    )


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
