"""QIDO-RS (PS3.18 10.6, the Search transaction): its resources and matching. Return
attributes, includefield, paging, Warning headers, errors and media types are checked in
``qido_attributes``; the helpers both use are in ``_qido_common``.

Sections are those of the current edition: the Search transaction's resources (10.6.1.1,
Table 10.6.1-1), its query parameters (8.3.4: matching 8.3.4.1 with PS3.4 C.2.2.2, fuzzy
matching 8.3.4.2, includefield 8.3.4.3, paging 8.3.4.4), its status codes (10.6.3.1), its
response attributes per level (10.6.3.3.1-3, Tables 10.6.3-3 to 10.6.3-5) and media types
(10.6.4, Table 10.6.4-1; negotiation 8.7.8.1). The relational resources (/series, /instances,
/studies/{s}/instances) are mandatory for a native origin server but optional for a proxy, so
their checks are SHOULD.

Each check asks about the test study (``probe.fixture()``) so its answers are known: the
study must be found by its own attributes, and nothing else may match a filter it does not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from ..context import Fixture, Probe
from ..model import Failed, Skipped, check
from ._qido_common import (
    ABSENT_UID,
    DICOM_JSON,
    MODALITY,
    MUST,
    NOT_THERE,
    PATIENT_ID,
    SERIES_UID,
    SHOULD,
    SOP_UID,
    STUDY_DATE,
    STUDY_UID,
    _column,
    _has,
    _matches,
    _not_supported,
    _only,
    _patient,
    _results,
    _search,
    _study_item,
    _text,
    _value,
    _warnings,
    _wildcard,
)

# ---------------------------------------------------------------------------- resources


@check(
    "qido.resource.studies",
    section="PS3.18 10.6.1.1 (Table 10.6.1-1)",
    level=MUST,
    title="Search for all studies (/studies) answers a DICOM JSON array of studies",
)
async def all_studies(probe: Probe) -> None:
    results = await _search(probe, "/studies", {"limit": "10"})
    if any(not _text(r, STUDY_UID) for r in results):
        raise Failed("/studies: a result without a StudyInstanceUID (0020,000D)")


@check(
    "qido.resource.study-series",
    section="PS3.18 10.6.1.1 (Table 10.6.1-1)",
    level=MUST,
    title="Search for a study's series (/studies/{study}/series)",
)
async def study_series(probe: Probe) -> None:
    f = await probe.fixture()
    path = f"/studies/{f.study}/series"
    _has(await _search(probe, path), SERIES_UID, f.series, path)


@check(
    "qido.resource.series-instances",
    section="PS3.18 10.6.1.1 (Table 10.6.1-1)",
    level=MUST,
    title="Search for a series' instances (/studies/{study}/series/{series}/instances)",
)
async def series_instances(probe: Probe) -> None:
    f = await probe.fixture()
    path = f"/studies/{f.study}/series/{f.series}/instances"
    _has(await _search(probe, path), SOP_UID, f.instance, path)


async def _relational(probe: Probe, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    answer = await probe.get(path, accept=DICOM_JSON, params=params)
    if _not_supported(answer):
        raise Failed(f"GET {answer.url}: not offered (status {answer.status})")
    return _results(answer)


@check(
    "qido.resource.study-instances",
    section="PS3.18 10.6.1.1 (Table 10.6.1-1; M native, O proxy)",
    level=SHOULD,
    title="Search for a study's instances (/studies/{study}/instances)",
)
async def study_instances(probe: Probe) -> None:
    f = await probe.fixture()
    path = f"/studies/{f.study}/instances"
    _has(await _relational(probe, path, {}), SOP_UID, f.instance, path)


@check(
    "qido.resource.all-series",
    section="PS3.18 10.6.1.1 (Table 10.6.1-1; M native, O proxy)",
    level=SHOULD,
    title="Search for all series (/series), filtered by StudyInstanceUID",
)
async def all_series(probe: Probe) -> None:
    f = await probe.fixture()
    results = await _relational(probe, "/series", {"StudyInstanceUID": f.study})
    _has(results, SERIES_UID, f.series, "/series")
    _only(results, STUDY_UID, [f.study], f"/series?StudyInstanceUID={f.study}")


@check(
    "qido.resource.all-instances",
    section="PS3.18 10.6.1.1 (Table 10.6.1-1; M native, O proxy)",
    level=SHOULD,
    title="Search for all instances (/instances), filtered by SOPInstanceUID",
)
async def all_instances(probe: Probe) -> None:
    f = await probe.fixture()
    results = await _relational(probe, "/instances", {"SOPInstanceUID": f.instance})
    _has(results, SOP_UID, f.instance, "/instances")
    _only(results, SOP_UID, [f.instance], f"/instances?SOPInstanceUID={f.instance}")


@check(
    "qido.resource.dicomweb-client",
    section="PS3.18 10.6.1.1 (with dicomweb-client)",
    level=MUST,
    title="dicomweb-client's search_for_studies/series/instances work against the endpoint",
)
async def with_dicomweb_client(probe: Probe) -> None:
    f = await probe.fixture()
    found = await asyncio.to_thread(_client_search, probe, f)
    for level, (tag, uid, results) in found.items():
        if uid not in _column(results, tag):
            raise Failed(f"dicomweb-client {level}: {len(results)} result(s), not {uid}")


def _client_search(probe: Probe, f: Fixture) -> dict[str, tuple[str, str, list[dict[str, Any]]]]:
    """The three hierarchical searches through dicomweb-client (blocking: run in a thread)."""
    from dicomweb_client.api import DICOMwebClient  # the conformance extra: loaded when used
    from requests import RequestException

    logging.getLogger("dicomweb_client").setLevel(logging.ERROR)  # its Warning-header logs
    headers = {"Authorization": f"Bearer {probe.target.token}"} if probe.target.token else None
    client = DICOMwebClient(probe.target.base_url, headers=headers, timeout=probe.target.timeout)
    client.set_http_retry_params(retry=False)
    try:
        studies = client.search_for_studies(search_filters={"StudyInstanceUID": f.study})
        series = client.search_for_series(study_instance_uid=f.study)
        instances = client.search_for_instances(
            study_instance_uid=f.study, series_instance_uid=f.series
        )
    except (RequestException, ValueError) as exc:
        raise Failed(f"dicomweb-client: {type(exc).__name__}: {exc}") from None
    return {
        "search_for_studies": (STUDY_UID, f.study, list(studies)),
        "search_for_series": (SERIES_UID, f.series, list(series)),
        "search_for_instances": (SOP_UID, f.instance, list(instances)),
    }


# ---------------------------------------------------------------------------- matching


@check(
    "qido.match.single-value",
    section="PS3.18 8.3.4.1; PS3.4 C.2.2.2.1",
    level=MUST,
    title="Single value matching: PatientID on /studies, Modality on a study's series",
)
async def single_value(probe: Probe) -> None:
    f, patient = await _patient(probe)
    results = await _matches(probe, f, {"PatientID": patient})
    _only(results, PATIENT_ID, [patient], f"/studies?PatientID={patient}")
    series = await _search(probe, f"/studies/{f.study}/series")
    modality = next((_text(s, MODALITY) for s in series if _text(s, SERIES_UID) == f.series), "")
    if modality:
        path = f"/studies/{f.study}/series"
        matched = await _search(probe, path, {"Modality": modality})
        _has(matched, SERIES_UID, f.series, f"{path}?Modality={modality}")
        _only(matched, MODALITY, [modality], f"{path}?Modality={modality}")


@check(
    "qido.match.by-tag",
    section="PS3.18 8.3.4.1 (attribute = tag / keyword)",
    level=MUST,
    title="A matching key given as a tag (0020000D=...) matches as its keyword does",
)
async def by_tag(probe: Probe) -> None:
    f = await probe.fixture()
    results = await _search(probe, "/studies", {STUDY_UID: f.study})
    where = f"/studies?{STUDY_UID}={f.study}"
    _has(results, STUDY_UID, f.study, where)
    _only(results, STUDY_UID, [f.study], where)


@check(
    "qido.match.uid-list",
    section="PS3.18 8.3.4.1 (uid-list-match); PS3.4 C.2.2.2.2",
    level=MUST,
    title="List of UID matching: StudyInstanceUID=a,b finds both and nothing else",
)
async def uid_list(probe: Probe) -> None:
    f = await probe.fixture()
    others = _column(await _search(probe, "/studies", {"limit": "5"}), STUDY_UID)
    other = next((u for u in others if u and u != f.study), ABSENT_UID)
    where = f"/studies?StudyInstanceUID={f.study},{other}"
    results = await _search(probe, "/studies", {"StudyInstanceUID": f"{f.study},{other}"})
    _has(results, STUDY_UID, f.study, where)
    if other != ABSENT_UID:
        _has(results, STUDY_UID, other, where)
    _only(results, STUDY_UID, [f.study, other], where)


@check(
    "qido.match.wildcard-star",
    section="PS3.18 8.3.4.1; PS3.4 C.2.2.2.4",
    level=MUST,
    title="Wild card matching with '*' (PatientID prefix*; '*' alone matches any value)",
)
async def wildcard_star(probe: Probe) -> None:
    f, patient = await _patient(probe)
    pattern = patient[: max(1, len(patient) // 2)] + "*"
    await _wildcard_search(probe, f, pattern)
    # '*' alone is universal matching: the study is found whatever its name.
    where = f"/studies?StudyInstanceUID={f.study}&PatientName=*"
    found = await _search(probe, "/studies", {"StudyInstanceUID": f.study, "PatientName": "*"})
    _has(found, STUDY_UID, f.study, where)


@check(
    "qido.match.wildcard-question",
    section="PS3.18 8.3.4.1; PS3.4 C.2.2.2.4",
    level=MUST,
    title="Wild card matching with '?' (PatientID with its last character as '?')",
)
async def wildcard_question(probe: Probe) -> None:
    f, patient = await _patient(probe)
    await _wildcard_search(probe, f, patient[:-1] + "?")


async def _wildcard_search(probe: Probe, f: Fixture, pattern: str) -> None:
    where = f"/studies?PatientID={pattern}"
    results = await _matches(probe, f, {"PatientID": pattern})
    regex = _wildcard(pattern)
    wrong = sorted({p for p in _column(results, PATIENT_ID) if not regex.fullmatch(p)})
    if wrong:
        raise Failed(f"{where}: results whose PatientID does not match: {', '.join(wrong[:3])}")


@check(
    "qido.match.date-range",
    section="PS3.18 8.3.4.1; PS3.4 C.2.2.2.5",
    level=MUST,
    title="Range matching on StudyDate: closed, open-ended, and ranges that exclude the study",
)
async def date_range(probe: Probe) -> None:
    f = await probe.fixture()
    date = _text(await _study_item(probe, f), STUDY_DATE)
    try:
        day = dt.datetime.strptime(date, "%Y%m%d").date()
    except ValueError:
        raise Skipped(f"the test study's StudyDate {date!r} is not a date") from None
    before = (day - dt.timedelta(days=1)).strftime("%Y%m%d")
    after = (day + dt.timedelta(days=1)).strftime("%Y%m%d")
    for value in (f"{date}-{date}", f"{before}-{after}", f"{date}-", f"-{date}"):
        low, _, high = value.partition("-")
        where = f"/studies?StudyDate={value}"
        results = await _matches(probe, f, {"StudyDate": value})
        outside = [d for d in _column(results, STUDY_DATE) if d and not low <= d <= (high or d)]
        if outside:
            raise Failed(f"{where}: results dated outside the range: {', '.join(outside[:3])}")
    for value in (f"{after}-", f"-{before}"):
        params = {"StudyInstanceUID": f.study, "StudyDate": value}
        if await _search(probe, "/studies", params):
            raise Failed(
                f"/studies?StudyInstanceUID={f.study}&StudyDate={value}: the study "
                f"(dated {date}) matched a range that excludes it"
            )


@check(
    "qido.match.sequence",
    section="PS3.18 8.3.4.1 (attribute path); PS3.4 C.2.2.2.6",
    level=SHOULD,
    title="Sequence matching by attribute path (RequestAttributesSequence.RequestedProcedureID)",
)
async def sequence_match(probe: Probe) -> None:
    f = await probe.fixture()
    path = f"/studies/{f.study}/series"
    key = "RequestAttributesSequence.RequestedProcedureID"
    answer = await probe.get(path, accept=DICOM_JSON, params={key: NOT_THERE})
    if answer.status == 400:
        raise Failed(f"{path}?{key}=...: 400, the attribute path is refused")
    if _results(answer):
        note = " (with a Warning: not supported)" if _warnings(answer) else ""
        raise Failed(f"{path}?{key}={NOT_THERE}: series returned, the key was ignored{note}")
    wanted = _requested_procedure(f.instance_metadata)
    if wanted:
        found = await _search(probe, path, {key: wanted})
        _has(found, SERIES_UID, f.series, f"{path}?{key}={wanted}")


def _requested_procedure(metadata: Mapping[str, Any]) -> str:
    """The RequestedProcedureID in the instance's RequestAttributesSequence, or ""."""
    item = _value(metadata, "00400275")
    return _text(item, "00401001") if isinstance(item, dict) else ""


@check(
    "qido.match.fuzzymatching",
    section="PS3.18 8.3.4.2 (Table 8.3.4-1)",
    level=MUST,
    title="fuzzymatching=true and =false are accepted and still find the literal match",
)
async def fuzzymatching(probe: Probe) -> None:
    f, patient = await _patient(probe)
    for flag in ("true", "false"):
        where = f"/studies?PatientID={patient}&fuzzymatching={flag}"
        found = await _search(probe, "/studies", {"PatientID": patient, "fuzzymatching": flag})
        _has(found, STUDY_UID, f.study, where)
