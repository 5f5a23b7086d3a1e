"""QIDO-RS (PS3.18 10.6) answers: the return attributes per level (10.6.3.3, Tables 10.6.3-3
to 10.6.3-5) and the DICOM JSON model (F.2), includefield (8.3.4.3), paging (8.3.4.4), Warning
headers (10.6.3.2), errors (10.6.3.1) and media types (10.6.4, 8.7.8.1). Resources and
matching are in ``qido``; registered after it, so the reports list them in that order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..context import Answer, Fixture, Probe
from ..model import Failed, Skipped, check
from ._qido_common import (
    ABSENT_UID,
    DICOM_JSON,
    DICOM_XML,
    IMAGE_ATTRIBUTES,
    INSTANCE_ATTRIBUTES,
    MAY,
    MUST,
    NOT_THERE,
    RETRIEVE_URL,
    SERIES_ATTRIBUTES,
    SERIES_UID,
    SHOULD,
    SOP_UID,
    STUDY_ATTRIBUTES,
    STUDY_UID,
    _column,
    _has,
    _missing,
    _not_supported,
    _results,
    _search,
    _study_item,
    _text,
    _warnings,
)

# ---------------------------------------------------------------------------- attributes


@check(
    "qido.attributes.study",
    section="PS3.18 10.6.3.3.1 (Table 10.6.3-3)",
    level=MUST,
    title="Each of the test patient's studies has the required study attributes (empty when "
    "unknown)",
)
async def study_attributes(probe: Probe) -> None:
    # The test patient's studies: a set that does not depend on the archive's order.
    f = await probe.fixture()
    params = {"PatientID": f.patient_id} if f.patient_id else {"StudyInstanceUID": f.study}
    for item in await _search(probe, "/studies", {**params, "limit": "20"}):
        missing = _missing(item, STUDY_ATTRIBUTES)
        if missing:
            raise Failed(f"study {_text(item, STUDY_UID)}: missing {', '.join(missing)}")


@check(
    "qido.attributes.series",
    section="PS3.18 10.6.3.3.2 (Table 10.6.3-4)",
    level=MUST,
    title="Each series result has the required series attributes",
)
async def series_attributes(probe: Probe) -> None:
    f = await probe.fixture()
    for item in await _search(probe, f"/studies/{f.study}/series"):
        missing = _missing(item, SERIES_ATTRIBUTES)
        if missing:
            raise Failed(f"series {_text(item, SERIES_UID)}: missing {', '.join(missing)}")


@check(
    "qido.attributes.instance",
    section="PS3.18 10.6.3.3.3 (Table 10.6.3-5)",
    level=MUST,
    title="Each instance result has the required attributes (and Rows/Columns/... for images)",
)
async def instance_attributes(probe: Probe) -> None:
    f = await probe.fixture()
    path = f"/studies/{f.study}/series/{f.series}/instances"
    for item in await _search(probe, path):
        wanted = dict(INSTANCE_ATTRIBUTES)
        if _text(item, SOP_UID) == f.instance:  # known to be an image
            wanted |= IMAGE_ATTRIBUTES
            if f.frames > 1:
                wanted["00280008"] = "NumberOfFrames"
        missing = _missing(item, wanted)
        if missing:
            raise Failed(f"instance {_text(item, SOP_UID)}: missing {', '.join(missing)}")


@check(
    "qido.attributes.relational",
    section="PS3.18 10.6.3.3.2, 10.6.3.3.3",
    level=MUST,
    title="/series carries study attributes; /instances study and series; a study's instances "
    "series attributes",
)
async def relational_attributes(probe: Probe) -> None:
    f = await probe.fixture()
    asked = (
        ("/series", {"SeriesInstanceUID": f.series}, STUDY_ATTRIBUTES),
        ("/instances", {"SOPInstanceUID": f.instance}, STUDY_ATTRIBUTES | SERIES_ATTRIBUTES),
        (f"/studies/{f.study}/instances", {"SOPInstanceUID": f.instance}, SERIES_ATTRIBUTES),
    )
    offered = 0
    for path, params, wanted in asked:
        answer = await probe.get(path, accept=DICOM_JSON, params=params)
        if _not_supported(answer):
            continue  # the resource itself is optional for a proxy: its own check says so
        offered += 1
        for item in _results(answer):
            missing = _missing(item, wanted)
            if missing:
                raise Failed(f"{path}: a result misses {', '.join(missing)}")
    if not offered:
        raise Skipped("no relational search resource offered")


@check(
    "qido.attributes.retrieve-url",
    section="PS3.18 10.6.3.3 (Tables 10.6.3-3 to 10.6.3-5, Retrieve URL)",
    level=MUST,
    title="Results of a retrievable study carry a RetrieveURL (0008,1190) naming that resource",
)
async def retrieve_url(probe: Probe) -> None:
    # The fixture was found by retrieving its metadata: the study is retrievable.
    f = await probe.fixture()
    levels: tuple[tuple[str, dict[str, str], str, str, str], ...] = (
        ("/studies", {"StudyInstanceUID": f.study}, STUDY_UID, f.study, f"/studies/{f.study}"),
        (f"/studies/{f.study}/series", {}, SERIES_UID, f.series, f"/series/{f.series}"),
        (
            f"/studies/{f.study}/series/{f.series}/instances",
            {},
            SOP_UID,
            f.instance,
            f"/instances/{f.instance}",
        ),
    )
    for path, params, tag, uid, ending in levels:
        item = next((r for r in await _search(probe, path, params) if _text(r, tag) == uid), None)
        if item is None:
            raise Failed(f"{path}: {uid} not found")
        url = _text(item, RETRIEVE_URL)
        if not url:
            raise Failed(f"{path}: {uid} has no RetrieveURL")
        if not url.startswith(("http://", "https://")) or not url.endswith(ending):
            raise Failed(f"{path}: RetrieveURL {url!r} is not an absolute URL ending {ending}")


_TAG = re.compile(r"[0-9A-F]{8}")
_VR = re.compile(r"[A-Z]{2}")


@check(
    "qido.attributes.json-model",
    section="PS3.18 F.2 (DICOM JSON Model)",
    level=MUST,
    title="Results follow the DICOM JSON model: 8-hex-digit upper-case tags, a vr, Value arrays",
)
async def json_model(probe: Probe) -> None:
    f = await probe.fixture()
    for path in ("/studies", f"/studies/{f.study}/series"):
        params = {"StudyInstanceUID": f.study} if path == "/studies" else {}
        for item in await _search(probe, path, params):
            problem = _json_problem(item)
            if problem:
                raise Failed(f"{path}: {problem}")


def _json_problem(item: Mapping[str, Any], depth: int = 0) -> str:
    """What breaks PS3.18 F.2 in one DICOM JSON object, or ""."""
    for tag, element in item.items():
        if not _TAG.fullmatch(tag):
            return f"key {tag!r} is not 8 upper-case hex digits"
        if not isinstance(element, dict) or not _VR.fullmatch(str(element.get("vr", ""))):
            return f"{tag}: no two-letter vr"
        values = element.get("Value")
        if values is not None and not isinstance(values, list):
            return f"{tag}: Value is not an array"
        if element["vr"] == "PN" and any(not isinstance(v, dict) for v in values or []):
            return f"{tag}: a PN value is not an object (Alphabetic, ...)"
        if element["vr"] == "SQ" and depth < 4:
            for nested in values or []:
                problem = _json_problem(nested, depth + 1) if isinstance(nested, dict) else "item"
                if problem:
                    return f"{tag} item: {problem}"
    return ""


# ---------------------------------------------------------------------------- includefield


@check(
    "qido.includefield.accepted",
    section="PS3.18 8.3.4.3 (Table 8.3.4-1)",
    level=MUST,
    title="includefield by keyword, by tag, as a list and 'all' are accepted",
)
async def includefield_accepted(probe: Probe) -> None:
    f = await probe.fixture()
    for value in ("StudyDescription", "00081030", "StudyDescription,00080020", "all"):
        params = {"StudyInstanceUID": f.study, "includefield": value}
        found = await _search(probe, "/studies", params)
        _has(found, STUDY_UID, f.study, f"/studies?StudyInstanceUID=...&includefield={value}")


@check(
    "qido.includefield.named",
    section="PS3.18 10.6.3.3.1; 8.3.4.3",
    level=SHOULD,
    title="includefield=StudyDescription returns (0008,1030) (returned if supported)",
)
async def includefield_named(probe: Probe) -> None:
    f = await probe.fixture()
    for value in ("StudyDescription", "00081030"):
        params = {"StudyInstanceUID": f.study, "includefield": value}
        for item in await _search(probe, "/studies", params):
            if "00081030" not in item:
                raise Failed(f"/studies?...&includefield={value}: no StudyDescription (0008,1030)")


@check(
    "qido.includefield.all",
    section="PS3.18 10.6.3.3.1; 8.3.4.3",
    level=SHOULD,
    title="includefield=all returns at least the default attributes",
)
async def includefield_all(probe: Probe) -> None:
    f = await probe.fixture()
    plain = await _study_item(probe, f)
    params = {"StudyInstanceUID": f.study, "includefield": "all"}
    full = next((r for r in await _search(probe, "/studies", params)), {})
    lost = sorted(set(plain) - set(full))
    if lost:
        raise Failed(f"/studies?...&includefield=all: lacks default attributes {', '.join(lost)}")


@check(
    "qido.includefield.level",
    section="PS3.18 10.6.3.3.1, 10.6.3.3.2",
    level=MUST,
    title="includefield of lower-level attributes is not returned (study: series/instance; "
    "series: instance)",
)
async def includefield_level(probe: Probe) -> None:
    f = await probe.fixture()
    study = [("StudyInstanceUID", f.study)]
    asked: tuple[tuple[str, list[tuple[str, str]], str, str], ...] = (
        ("/studies", study, "0008103E", "SeriesDescription"),
        ("/studies", study, "00080016", "SOPClassUID"),
        (f"/studies/{f.study}/series", [], "00080016", "SOPClassUID"),
    )
    for path, params, tag, name in asked:
        query = [*params, ("includefield", name)]
        for item in await _search(probe, path, query):
            if tag in item:
                raise Failed(f"{path}?includefield={name}: the lower-level {name} is returned")


# ---------------------------------------------------------------------------- paging


@check(
    "qido.paging.limit",
    section="PS3.18 8.3.4.4",
    level=MUST,
    title="limit=1 returns at most one result",
)
async def paging_limit(probe: Probe) -> None:
    f = await probe.fixture()
    for path in ("/studies", f"/studies/{f.study}/series/{f.series}/instances"):
        results = await _search(probe, path, {"limit": "1"})
        if len(results) > 1:
            raise Failed(f"{path}?limit=1: {len(results)} results")


@check(
    "qido.paging.offset",
    section="PS3.18 8.3.4.4",
    level=MUST,
    title="limit/offset pages cover the whole result once: no overlap, no gap, empty past the end",
)
async def paging_offset(probe: Probe) -> None:
    f = await probe.fixture()
    path, whole = await _pageable(probe, f)
    everything = _column(whole, SOP_UID)
    pages: list[str] = []
    size = 2
    for offset in range(0, len(everything) + size, size):
        page = await _search(probe, path, {"limit": str(size), "offset": str(offset)})
        if len(page) > size:
            raise Failed(f"{path}?limit={size}&offset={offset}: {len(page)} results")
        pages += _column(page, SOP_UID)
    if len(set(pages)) != len(pages):
        twice = sorted({u for u in pages if pages.count(u) > 1})
        raise Failed(f"{path}: pages of {size} overlap, {twice[0]} comes twice")
    if sorted(pages) != sorted(everything):
        raise Failed(
            f"{path}: pages of {size} give {len(pages)} instances, one search {len(everything)}"
        )


async def _pageable(probe: Probe, f: Fixture) -> tuple[str, list[dict[str, Any]]]:
    """A series of the test study with at least three instances, and its instances."""
    series = [f.series] + [
        s
        for s in _column(await _search(probe, f"/studies/{f.study}/series"), SERIES_UID)
        if s != f.series
    ]
    for uid in series[:10]:
        path = f"/studies/{f.study}/series/{uid}/instances"
        whole = await _search(probe, path)
        if 3 <= len(whole) <= 500:
            return path, whole
    raise Skipped("no series of the test study has 3 to 500 instances to page through")


@check(
    "qido.paging.warning",
    section="PS3.18 8.3.4.4",
    level=SHOULD,
    title="A result cut short by the server's maximum carries a Warning header",
)
async def paging_warning(probe: Probe) -> None:
    await probe.fixture()
    asked = "100000"
    answer = await probe.get("/studies", accept=DICOM_JSON, params={"limit": asked})
    count = len(_results(answer))
    rest = await _search(probe, "/studies", {"offset": str(count), "limit": "1"})
    if not rest:
        raise Skipped(f"no server maximum reached ({count} studies in one answer)")
    if not _warnings(answer):
        raise Failed(
            f"/studies?limit={asked}: {count} results while more exist (offset={count} finds "
            "more), and no Warning header says so"
        )


@check(
    "qido.warning.unsupported-key",
    section="PS3.18 8.3.4.1; 10.6.3.2",
    level=SHOULD,
    title="A matching key the server ignores is named in a Warning header",
)
async def unsupported_key(probe: Probe) -> None:
    f = await probe.fixture()
    params = {"StudyInstanceUID": f.study, "PatientComments": NOT_THERE}
    answer = await probe.get("/studies", accept=DICOM_JSON, params=params)
    if answer.status == 400:
        return  # refused out loud: not silently ignored
    if not _results(answer):
        return  # matched: the key is supported
    if not _warnings(answer):
        raise Failed(
            "/studies?...&PatientComments=...: the key was ignored (the study matched) and no "
            "Warning header says so"
        )


# ---------------------------------------------------------------------------- errors


async def _expect_400(probe: Probe, path: str, params: dict[str, str]) -> None:
    answer = await probe.get(path, accept=DICOM_JSON, params=params)
    if answer.status != 400:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        raise Failed(f"{path}?{query}: status {answer.status}, expected 400")


@check(
    "qido.error.bad-date",
    section="PS3.18 10.6.3.1; 8.3.4.1",
    level=MUST,
    title="A malformed date (StudyDate=notadate, 2023010) is a 400",
)
async def bad_date(probe: Probe) -> None:
    for value in ("notadate", "2023010"):
        await _expect_400(probe, "/studies", {"StudyDate": value})


@check(
    "qido.error.bad-limit",
    section="PS3.18 10.6.3.1; 8.3.4.4 (Table 8.3.4-1: uint)",
    level=MUST,
    title="limit or offset that is not an unsigned integer is a 400",
)
async def bad_limit(probe: Probe) -> None:
    for params in ({"limit": "abc"}, {"limit": "-1"}, {"offset": "x"}):
        await _expect_400(probe, "/studies", params)


@check(
    "qido.error.unknown-attribute",
    section="PS3.18 10.6.3.1; 8.3.4.1 (attribute = tag / keyword)",
    level=SHOULD,
    title="A parameter that is neither a keyword nor a tag (NoSuchKeyword=1, 0010001=x) is a 400",
)
async def unknown_attribute(probe: Probe) -> None:
    for params in ({"NoSuchKeywordXyz": "1"}, {"0010001": "x"}):
        await _expect_400(probe, "/studies", params)


# ---------------------------------------------------------------------------- media types


async def _media(probe: Probe, accept: str) -> Answer:
    f = await probe.fixture()
    return await probe.get("/studies", accept=accept, params={"StudyInstanceUID": f.study})


@check(
    "qido.media.default",
    section="PS3.18 10.6.4 (Table 10.6.4-1); 8.7.8.1",
    level=MUST,
    title="Accept: */* gets the default, application/dicom+json",
)
async def media_default(probe: Probe) -> None:
    f = await probe.fixture()
    _has(_results(await _media(probe, "*/*")), STUDY_UID, f.study, "/studies (Accept: */*)")


@check(
    "qido.media.dicom-json",
    section="PS3.18 10.6.4 (Table 10.6.4-1)",
    level=MUST,
    title="Accept: application/dicom+json gets application/dicom+json",
)
async def media_dicom_json(probe: Probe) -> None:
    f = await probe.fixture()
    _has(_results(await _media(probe, DICOM_JSON)), STUDY_UID, f.study, "/studies")


@check(
    "qido.media.dicom-xml",
    section="PS3.18 10.6.4 (Table 10.6.4-1); PS3.19 A.1",
    level=MUST,
    title='Accept: multipart/related; type="application/dicom+xml" gets XML parts',
)
async def media_dicom_xml(probe: Probe) -> None:
    f = await probe.fixture()
    answer = (await _media(probe, DICOM_XML)).expect(200)
    content_type = answer.headers.get("Content-Type", "").lower()
    if answer.content_type != "multipart/related" or "application/dicom+xml" not in content_type:
        raise Failed(f"/studies: Content-Type {content_type!r}, expected {DICOM_XML}")
    if "boundary=" not in content_type:
        raise Failed("/studies: multipart answer without a boundary parameter")
    if b"NativeDicomModel" not in answer.body or f.study.encode() not in answer.body:
        raise Failed("/studies: no NativeDicomModel part naming the test study")


@check(
    "qido.media.json",
    section="PS3.18 8.7.8.1 (interoperability)",
    level=MAY,
    title="Accept: application/json is answered with the DICOM JSON array",
)
async def media_json(probe: Probe) -> None:
    f = await probe.fixture()
    answer = await _media(probe, "application/json")
    if answer.status == 406:
        raise Failed("/studies (Accept: application/json): 406, only application/dicom+json")
    media = answer.content_type if answer.content_type == "application/json" else DICOM_JSON
    _has(_results(answer, media), STUDY_UID, f.study, "/studies (Accept: application/json)")


@check(
    "qido.media.not-acceptable",
    section="PS3.18 8.7.8.1 (step 5)",
    level=MUST,
    title="Accept: image/png on a search is a 406 (Not Acceptable)",
)
async def media_not_acceptable(probe: Probe) -> None:
    answer = await _media(probe, "image/png")
    if answer.status != 406:
        raise Failed(f"/studies (Accept: image/png): status {answer.status}, expected 406")


@check(
    "qido.media.empty-result",
    section="PS3.18 8.3.4.4.1 (CP-2473)",
    level=MUST,
    title="A search matching nothing is 200 with [] (or 204, before CP-2473)",
)
async def empty_result(probe: Probe) -> None:
    results = await _search(probe, "/studies", {"StudyInstanceUID": ABSENT_UID})
    if results:
        raise Failed(f"/studies?StudyInstanceUID={ABSENT_UID}: {len(results)} result(s)")
