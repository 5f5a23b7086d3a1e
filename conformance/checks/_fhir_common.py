"""What the NCPeH FHIR checks (``fhir``, ``fhir_bundle``, ``fhir_study``) share: their sections,
the CapabilityStatement, searches followed to their last page, and the test study's ImagingStudy;
each asked for once per run (:meth:`Probe.memo`) and shared by the checks that need it, its
Failed or Skipped too. The pure helpers are in ``conformance.fhir_model``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from ..context import Answer, Fixture, Probe
from ..fhir_model import (
    R4,
    R5,
    bundle_links,
    dicom_value,
    match_entries,
    same_origin,
    study_uids,
    validate,
)
from ..model import Failed, Skipped

FHIR_JSON = "application/fhir+json"
R5_JSON = "application/fhir+json; fhirVersion=5.0"
DICOM_JSON = "application/dicom+json"
MAX_PAGES = 100  # a search that pages further than this is reported as endless
PAGE = "NCPeH Get Study Metadata (HL7 FHIR)"
SEARCH = "FHIR R4 search"
HTTP = "FHIR R4 RESTful API"
# The page's provider SHALL parameters, as a CapabilityStatement names them.
SHALL_PARAMS = ("patient", "identifier", "modality", "started", "reason")
OTHER_MODALITIES = ("XA", "NM", "MG", "US", "CT", "MR", "DX", "PT")
UNSERVED_TYPES = ("Account", "Basic", "Medication", "Observation")  # real types, rarely served


def _object(answer: Answer) -> dict[str, Any]:
    if answer.truncated:
        raise Failed(f"{answer.method} {answer.url}: the body is larger than the limit")
    body = answer.json()
    if not isinstance(body, dict):
        raise Failed(f"{answer.method} {answer.url}: the body is not a JSON object")
    return body


def _is_r5(answer: Answer, body: Mapping[str, Any]) -> bool:
    """The answer says it is R5: its media type's fhirVersion, or a CapabilityStatement's."""
    media = answer.headers.get("Content-Type", "").replace(" ", "")
    return "fhirVersion=5" in media or str(body.get("fhirVersion", "")).startswith("5")


async def _capability(probe: Probe) -> dict[str, Any]:
    async def load() -> dict[str, Any]:
        answer = (await probe.get(probe.fhir("metadata"), accept=FHIR_JSON)).expect(200)
        body = _object(answer)
        return validate(body, R5 if _is_r5(answer, body) else R4, answer.url)

    return await probe.memo("fhir " + "capability", load)


async def _r5_capability(probe: Probe) -> dict[str, Any] | None:
    """The R5 CapabilityStatement when the server offers R5 on request (a MAY), else None."""

    async def load() -> dict[str, Any] | None:
        answer = await probe.get(probe.fhir("metadata"), accept=R5_JSON)
        if answer.status != 200:
            return None
        body = _object(answer)
        return validate(body, R5, answer.url) if _is_r5(answer, body) else None

    return await probe.memo("fhir " + "capability-r5", load)


def _declared(capability: Mapping[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The CapabilityStatement.rest.resource entry of ``kind`` (server mode), or None."""
    for rest in (capability or {}).get("rest") or []:
        for resource in rest.get("resource") or [] if isinstance(rest, dict) else []:
            if isinstance(resource, dict) and resource.get("type") == kind:
                return resource
    return None


def _param(params: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in params)


async def _search_page(
    probe: Probe, url: str, params: Sequence[tuple[str, str]] | None, version: str
) -> tuple[Answer, dict[str, Any]]:
    """One page of a search: 200, a searchset Bundle that validates, each resource too."""
    accept = R5_JSON if version == R5 else FHIR_JSON
    answer = (await probe.get(url, accept=accept, params=list(params or []) or None)).expect(200)
    where = f"GET {answer.url}"
    bundle = validate(_object(answer), version, where)
    if bundle["resourceType"] != "Bundle" or bundle.get("type") != "searchset":
        kind = bundle["resourceType"]
        raise Failed(f"{where}: a {kind} of type {bundle.get('type')!r}, not a searchset Bundle")
    for entry in bundle.get("entry") or []:
        validate(entry.get("resource"), version, f"{where}: an entry")
    return answer, bundle


async def _pages(
    probe: Probe, kind: str, params: Sequence[tuple[str, str]], version: str = R4
) -> list[dict[str, Any]]:
    """Every page of a search, following ``next`` to the end (on the FHIR server's origin)."""
    base = probe.fhir(kind)
    _answer, bundle = await _search_page(probe, base, params, version)
    pages = [bundle]
    visited: set[str] = set()
    while (following := bundle_links(bundle).get("next")) is not None:
        url = urljoin(base, following)
        if not same_origin(url, base):
            raise Failed(f"{kind}?{_param(params)}: the next link {url} names another host")
        if url in visited or len(pages) >= MAX_PAGES:
            raise Failed(f"{kind}?{_param(params)}: next links loop or pass {MAX_PAGES} pages")
        visited.add(url)
        _answer, bundle = await _search_page(probe, url, None, version)
        pages.append(bundle)
    return pages


async def _matches(
    probe: Probe, params: Sequence[tuple[str, str]], kind: str = "ImagingStudy", version: str = R4
) -> list[dict[str, Any]]:
    """The matched resources of a search, over all its pages (asked once per run)."""

    async def load() -> list[dict[str, Any]]:
        pages = await _pages(probe, kind, params, version)
        return [e["resource"] for page in pages for e in match_entries(page)]

    return await probe.memo(f"fhir {version} {kind}?{_param(params)}", load)


async def _uids_found(probe: Probe, params: Sequence[tuple[str, str]]) -> set[str]:
    return {uid for r in await _matches(probe, params) for uid in study_uids(r)}


async def _patient(probe: Probe) -> tuple[Fixture, str]:
    fixture = await probe.fixture()
    if not fixture.patient_id:
        raise Skipped("the test study has no PatientID (give --patient)")
    return fixture, fixture.patient_id


async def _expect(
    probe: Probe, params: Sequence[tuple[str, str]], uid: str, *, found: bool = True
) -> str | None:
    """None when the search does (or, ``found=False``, does not) match the study ``uid``, else
    what went wrong."""
    if (uid in await _uids_found(probe, params)) == found:
        return None
    verb = "does not match" if found else "matches"
    return f"ImagingStudy?{_param(params)} {verb} the test study {uid}"


def _fail_if(problems: Sequence[str | None]) -> None:
    real = [p for p in problems if p]
    if real:
        raise Failed("; ".join(real))


@dataclass(frozen=True)
class _Study:
    fixture: Fixture
    resource: dict[str, Any]  # the test study's ImagingStudy, as its search entry holds it


async def _study(probe: Probe) -> _Study:
    """The test study's ImagingStudy as the patient search gives it."""

    async def load() -> _Study:
        fixture, patient = await _patient(probe)
        params = [("patient.identifier", f"|{patient}")]
        for page in await _pages(probe, "ImagingStudy", params):
            for entry in match_entries(page):
                if fixture.study in study_uids(entry["resource"]):
                    return _Study(fixture, entry["resource"])
        raise Failed(f"ImagingStudy?{_param(params)} does not give the test study {fixture.study}")

    return await probe.memo("fhir " + "study", load)


def _first_modality(fixture: Fixture) -> str:
    modality = dicom_value(fixture.instance_metadata, "00080060") or dicom_value(
        fixture.study_json, "00080061"
    )
    if not modality:
        raise Skipped("the test study's Modality is unknown")
    return str(modality)
