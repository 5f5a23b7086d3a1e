"""What every FHIR handler needs: the site a request is for, its URLs, the issuer table, the
search parameters of a GET or POST, one QIDO query to the site's PACS, and the response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from ..backends.base import Backend, DicomJson, Scope
from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import first_value
from ..dicomweb.query import parse_qido
from ..errors import BadRequest
from ..fhir.mapping import study_id
from ..fhir.negotiation import FhirFormat
from ..fhir.tokens import IssuerTable, patient_resource_id
from .keys import METADATA_CACHE, SETTINGS, site_context
from .metadata_cache import MetadataCache

__all__ = [
    "MAX_CANDIDATES",
    "FhirSite",
    "dataset_text",
    "fhir_response",
    "fhir_site",
    "issuers_of",
    "patient_id_of",
    "qido",
    "search_params",
    "strict_handling",
]

MAX_CANDIDATES = 1000  # datasets a search may gather from the PACS before paging
# The gateway's own QIDO queries carry UID lists of up to 100 (relational.BATCH) UIDs: longer
# than a client's values may be, well within what a PACS takes in a URL (Orthanc: ~16 kB).
_INTERNAL_VALUE_LENGTH = 100 * 65
_EVERYWHERE = Scope()  # a root-level QIDO: /studies, /series, /instances


@dataclass(frozen=True, slots=True)
class FhirSite:
    site_id: str
    backend: Backend
    wado_root: str  # the gateway's DICOMweb root for the site, as the client sees it
    fhir_base: str
    default: bool  # the default site: ImagingStudy ids are the Study Instance UIDs
    # Study-level detail read from an instance's metadata, kept across requests (bounded,
    # with the metadata cache's TTL: a search repeated within it costs no detail reads).
    cache: MetadataCache
    # Studies already completed from an instance's metadata in this request, by UID.
    details: dict[str, DicomJson] = field(default_factory=dict)
    # Series or instances already read in this request: by level, then Study Instance UID.
    lowered: dict[str, dict[str, list[DicomJson]]] = field(default_factory=dict)

    def resource_id(self, study_uid: str) -> str:
        """The ImagingStudy id of ``study_uid`` on this site."""
        return study_id(study_uid, None if self.default else self.site_id)

    @property
    def id_site(self) -> str | None:
        """The site part of derived ids: None on the default site."""
        return None if self.default else self.site_id


def fhir_site(request: web.Request) -> FhirSite:
    context = site_context(request)
    default = request.match_info.get("site") is None
    root = context.base_url.removesuffix("/dicom-web")
    return FhirSite(
        context.site_id,
        context.backend,
        context.base_url,
        root + "/fhir",
        default,
        request.app[METADATA_CACHE],
    )


def issuers_of(request: web.Request) -> IssuerTable:
    return IssuerTable.from_pairs(request.app[SETTINGS].patient_id_issuers)


def fhir_response(
    body: Mapping[str, Any],
    fmt: FhirFormat,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers={**(headers or {}), "Content-Type": fmt.content_type},
    )


def strict_handling(request: web.Request) -> bool:
    """``Prefer: handling=strict`` (FHIR search.html#errors)."""
    return "handling=strict" in request.headers.get("Prefer", "").replace(" ", "")


async def search_params(request: web.Request) -> list[tuple[str, str]]:
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


async def qido(
    site: FhirSite, params: list[tuple[str, str]], level: Level, scope: Scope = _EVERYWHERE
) -> list[DicomJson]:
    """One QIDO-RS query to the site's PACS (through the gateway's one search service)."""
    query = parse_qido(
        params, level, max_limit=MAX_CANDIDATES, max_value_length=_INTERNAL_VALUE_LENGTH
    )
    return (await site.backend.search(query, scope, site.wado_root)).datasets


def dataset_text(dataset: DicomJson, tag: str) -> str | None:
    value = first_value(dataset, tag)
    return str(value) if value is not None else None


def patient_id_of(dataset: DicomJson) -> str:
    """The FHIR Patient id of a dataset's PatientID + IssuerOfPatientID."""
    return patient_resource_id(
        dataset_text(dataset, "00100020") or "", dataset_text(dataset, "00100021")
    )
