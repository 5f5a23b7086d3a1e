"""What the QIDO-RS checks (``qido``, ``qido_attributes``) share: the tags and return attribute
tables of PS3.18 10.6.3.3, and helpers that search the endpoint and read its DICOM JSON answers
without trusting them (an unreadable answer is :class:`Failed` saying what is wrong).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..context import Answer, Fixture, Probe
from ..model import Failed, Level, Skipped

DICOM_JSON = "application/dicom+json"
DICOM_XML = 'multipart/related; type="application/dicom+xml"'
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PATIENT_ID, STUDY_DATE, MODALITY = "00100020", "00080020", "00080060"
RETRIEVE_URL = "00081190"
# A UID no archive holds (2.25: a UUID-derived root; this one is all nines).
ABSENT_UID = "2.25.999999999999999999999999999999999999"
NOT_THERE = "CONFORMANCE-NO-SUCH-VALUE"

# The Type R and U return attributes of PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series) and
# 10.6.3-5 (instance): present in every result, empty when the archive has no value.
STUDY_ATTRIBUTES = {
    "00080020": "StudyDate",
    "00080030": "StudyTime",
    "00080050": "AccessionNumber",
    "00080061": "ModalitiesInStudy",
    "00080090": "ReferringPhysicianName",
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100030": "PatientBirthDate",
    "00100040": "PatientSex",
    "0020000D": "StudyInstanceUID",
    "00200010": "StudyID",
    "00201206": "NumberOfStudyRelatedSeries",
    "00201208": "NumberOfStudyRelatedInstances",
}
SERIES_ATTRIBUTES = {
    "00080060": "Modality",
    "0020000E": "SeriesInstanceUID",
    "00200011": "SeriesNumber",
    "00201209": "NumberOfSeriesRelatedInstances",
}
INSTANCE_ATTRIBUTES = {
    "00080016": "SOPClassUID",
    "00080018": "SOPInstanceUID",
    "00200013": "InstanceNumber",
}
# Type C in Table 10.6.3-5, present when the instance is an image (NumberOfFrames: multi-frame).
IMAGE_ATTRIBUTES = {"00280010": "Rows", "00280011": "Columns", "00280100": "BitsAllocated"}

MUST, SHOULD, MAY = Level.MUST, Level.SHOULD, Level.MAY

# ---------------------------------------------------------------------------- helpers


def _value(item: Mapping[str, Any], tag: str) -> Any:
    """The first Value of ``tag`` in a DICOM JSON object, or None."""
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _text(item: Mapping[str, Any], tag: str) -> str:
    """The first value as text ("" when absent); a PN is its Alphabetic group."""
    value = _value(item, tag)
    if isinstance(value, dict):
        value = value.get("Alphabetic", "")
    return "" if value is None else str(value)


def _column(results: Iterable[Mapping[str, Any]], tag: str) -> list[str]:
    return [_text(r, tag) for r in results]


def _results(answer: Answer, media: str = DICOM_JSON) -> list[dict[str, Any]]:
    """The matches of a search answer, or Failed saying what is wrong with the answer. An empty
    result may be 200 with ``[]`` (or no body) or 204 (PS3.18 8.3.4.4.1 before and after
    CP-2473); any other status is a failure."""
    where = f"{answer.method} {answer.url}"
    if answer.truncated:
        raise Failed(f"{where}: the answer passed the --max-body limit")
    if answer.status == 204:
        if answer.body.strip():
            raise Failed(f"{where}: 204 (No Content) with a body")
        return []
    answer.expect(200)
    if not answer.body.strip():
        return []
    if answer.content_type != media:
        raise Failed(f"{where}: Content-Type {answer.content_type or '(none)'!r}, expected {media}")
    data = answer.json()
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise Failed(f"{where}: the body is not a JSON array of DICOM JSON objects")
    return data


async def _search(
    probe: Probe,
    path: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    *,
    accept: str = DICOM_JSON,
) -> list[dict[str, Any]]:
    query = list(params.items()) if isinstance(params, Mapping) else list(params or [])
    return _results(await probe.get(path, accept=accept, params=query))


def _has(results: Sequence[Mapping[str, Any]], tag: str, uid: str, where: str) -> None:
    """Failed unless one of ``results`` has ``uid`` as ``tag``."""
    if uid not in _column(results, tag):
        raise Failed(f"{where}: {len(results)} result(s), none with {tag} = {uid}")


def _only(
    results: Sequence[Mapping[str, Any]], tag: str, allowed: Iterable[str], where: str
) -> None:
    """Failed when a result has a ``tag`` value outside ``allowed`` (the filter was ignored)."""
    allowed = set(allowed)
    extra = sorted({v for v in _column(results, tag) if v not in allowed})
    if extra:
        raise Failed(f"{where}: results that do not match, {tag} = {', '.join(extra[:3])}")


PAGE = 100  # results asked for by a matching check; more may exist in a large archive


async def _matches(probe: Probe, f: Fixture, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """The first ``PAGE`` studies matching ``params``, after making sure the test study is
    among all matches (asked again with its UID when the page is full: a large archive may
    hold more matches than one page)."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    results = await _search(probe, "/studies", {**params, "limit": str(PAGE)})
    if f.study not in _column(results, STUDY_UID) and len(results) >= PAGE:
        narrowed = await _search(probe, "/studies", {**params, "StudyInstanceUID": f.study})
        _has(narrowed, STUDY_UID, f.study, f"/studies?{query}&StudyInstanceUID={f.study}")
    else:
        _has(results, STUDY_UID, f.study, f"/studies?{query}")
    return results


def _missing(item: Mapping[str, Any], wanted: Mapping[str, str]) -> list[str]:
    return [f"{name} ({tag[:4]},{tag[4:]})" for tag, name in wanted.items() if tag not in item]


def _warnings(answer: Answer) -> list[str]:
    return answer.headers.getall("Warning", [])


async def _study_item(probe: Probe, fixture: Fixture) -> dict[str, Any]:
    """The test study's own search result."""
    found = await _search(probe, "/studies", {"StudyInstanceUID": fixture.study})
    for item in found:
        if _text(item, STUDY_UID) == fixture.study:
            return item
    raise Failed(f"/studies?StudyInstanceUID={fixture.study}: the test study is not found")


async def _patient(probe: Probe) -> tuple[Fixture, str]:
    fixture = await probe.fixture()
    patient = fixture.patient_id or _text(await _study_item(probe, fixture), PATIENT_ID)
    if not patient:
        raise Skipped("the test study has no PatientID to match on")
    return fixture, patient


def _wildcard(pattern: str) -> re.Pattern[str]:
    """PS3.4 C.2.2.2.4: ``*`` any run of characters, ``?`` any one; all else literal."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _not_supported(answer: Answer) -> bool:
    """The endpoint says it does not offer a (relational) resource at all."""
    return answer.status in (400, 404, 405, 501)
