"""WADO-RS metadata (PS3.18 10.4.3.3.2, Annex F: the DICOM JSON model, bulk data by reference,
tag order) and URL consistency: every URL an answer gives (Retrieve URL, BulkDataURI,
Content-Location) names the client's own origin and is fetchable by the client. Registered
after ``wado``'s retrieve and transfer syntax checks, so the reports keep their order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import urljoin

from ..context import Answer, Fixture, Probe
from ..model import Failed, Level, Skipped, check
from ._wado_common import (
    DICOM_JSON,
    _int,
    _series_count,
    _series_path,
    _value,
    bulkdata_uri,
    compressed_instance,
    instance_path,
    metadata_url,
)
from ._wado_stream import DICOM, Streamed, _ts_name, check_origin, status_of, stream_parts

__all__ = ["json_model_problems", "json_urls"]

# --------------------------------------------------------------------------------------------
# Metadata (PS3.18 10.4.3.3.2, Annex F)

# fmt: off
VRS = frozenset((
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
))
# fmt: on
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_HEX = frozenset("0123456789ABCDEF")


def json_model_problems(item: Any, where: str, out: list[str], depth: int = 0) -> None:
    """What in one DICOM JSON object breaks PS3.18 F.2 (appended to ``out``, a few at most):
    keys of 8 upper-case hex digits, no group length, each element an object with a known
    ``vr``, at most one of Value/BulkDataURI/InlineBinary, binary VRs never as a raw Value."""
    if not isinstance(item, dict):
        out.append(f"{where} is not a JSON object")
        return
    for tag, element in item.items():
        if len(out) >= 5:
            return
        at = f"{where} {tag}"
        if len(tag) != 8 or not set(tag) <= _HEX:
            out.append(f"{at}: the key is not 8 upper-case hex digits")
            continue
        if tag.endswith("0000"):
            out.append(f"{at}: a group length (F.2.2: not included)")
        if not isinstance(element, dict):
            out.append(f"{at}: not a JSON object")
            continue
        vr = element.get("vr")
        if vr not in VRS:
            out.append(f"{at}: vr {vr!r} is not a DICOM VR")
            continue
        given = [k for k in ("Value", "BulkDataURI", "InlineBinary") if k in element]
        if len(given) > 1:
            out.append(f"{at}: more than one of {given}")
        if "Value" in element:
            _value_problems(element["Value"], vr, at, out, depth)
        for key in ("BulkDataURI", "InlineBinary"):
            if key in element and not isinstance(element[key], str):
                out.append(f"{at}: {key} is not a string")


def _value_problems(values: Any, vr: str, at: str, out: list[str], depth: int) -> None:
    if not isinstance(values, list):
        out.append(f"{at}: Value is not an array")
    elif vr in BINARY_VRS:
        out.append(f"{at}: {vr} data as a raw Value, not BulkDataURI or InlineBinary (F.2.2)")
    elif vr == "SQ" and depth < 16:
        for n, sub in enumerate(values, 1):
            json_model_problems(sub, f"{at}[{n}]", out, depth + 1)
    elif vr == "PN" and not all(v is None or isinstance(v, dict) for v in values):
        out.append(f"{at}: a PN Value is not an object of name groups (F.2.2)")


async def _metadata(
    probe: Probe, path: str, study: str, series: str | None, count: int | None
) -> list[dict[str, Any]]:
    answer = (await probe.get(f"{path}/metadata", accept=DICOM_JSON)).expect(200)
    _whole(answer)
    if answer.content_type != DICOM_JSON:
        raise Failed(
            f"GET {answer.url}: Content-Type {answer.content_type!r}, expected {DICOM_JSON}"
        )
    items = answer.json()
    if not isinstance(items, list) or not items:
        raise Failed(f"GET {answer.url}: not a non-empty JSON array of data sets (F.2.1)")
    problems: list[str] = []
    for n, item in enumerate(items, 1):
        json_model_problems(item, f"data set {n}", problems)
    if problems:
        raise Failed(f"GET {answer.url}: " + "; ".join(problems))
    for n, item in enumerate(items, 1):
        if _value(item, "0020000D") != study or (
            series is not None and _value(item, "0020000E") != series
        ):
            raise Failed(f"GET {answer.url}: data set {n} is of another study or series")
    if count is not None and len(items) != count:
        raise Failed(f"GET {answer.url}: {len(items)} data sets, QIDO counts {count} instances")
    return cast(list[dict[str, Any]], items)


def _whole(answer: Answer) -> None:
    if answer.truncated:
        raise Skipped(f"GET {answer.url}: the answer is longer than --max-body")


@check(
    "wado.metadata.study",
    section="PS3.18 10.4.1.1.2, 10.4.3.3.2, F.2",
    level=Level.MUST,
    title="study metadata: a DICOM JSON array, one data set per instance, bulk data by reference",
)
async def metadata_study(probe: Probe) -> None:
    fx = await probe.fixture()
    count = _value(fx.study_json, "00201208")
    await _metadata(probe, f"/studies/{fx.study}", fx.study, None, _int(count))


@check(
    "wado.metadata.series",
    section="PS3.18 10.4.1.1.2, 10.4.3.3.2, F.2",
    level=Level.MUST,
    title="series metadata: one DICOM JSON data set per instance of the series",
)
async def metadata_series(probe: Probe) -> None:
    fx = await probe.fixture()
    await _metadata(probe, _series_path(fx), fx.study, fx.series, await _series_count(probe, fx))


@check(
    "wado.metadata.instance",
    section="PS3.18 10.4.1.1.2, 10.4.3.3.2, F.2",
    level=Level.MUST,
    title="instance metadata: one data set; Pixel Data as BulkDataURI or InlineBinary",
)
async def metadata_instance(probe: Probe) -> None:
    fx = await probe.fixture()
    item = (await _metadata(probe, instance_path(fx), fx.study, fx.series, 1))[0]
    if _value(item, "00080018") != fx.instance:
        raise Failed(f"GET {probe.url(instance_path(fx))}/metadata: another SOP Instance UID")
    _pixels_by_reference(item, probe.url(instance_path(fx)), "")
    stored = await compressed_instance(probe)
    if stored is not None:
        answer = (await probe.get(f"{stored.path}/metadata", accept=DICOM_JSON)).expect(200)
        items = answer.json()
        first = items[0] if isinstance(items, list) and items else {}
        note = f" (stored as {_ts_name(stored.transfer_syntax)})"
        _pixels_by_reference(first, probe.url(stored.path), note)


def _pixels_by_reference(item: Any, path: str, note: str) -> None:
    """PS3.18 10.4.3.3.2: metadata holds all attributes, an image's Pixel Data included (as
    BulkDataURI or InlineBinary)."""
    pixels = item.get("7FE00010") if isinstance(item, dict) else None
    if not isinstance(pixels, dict):
        raise Failed(f"GET {path}/metadata{note}: the image's Pixel Data (7FE00010) is missing")
    if not {"BulkDataURI", "InlineBinary"} & pixels.keys():
        raise Failed(
            f"GET {path}/metadata{note}: Pixel Data (7FE00010) has neither BulkDataURI nor "
            "InlineBinary"
        )


@check(
    "wado.metadata.tag-order",
    section="PS3.18 F.2.2",
    level=Level.MUST,
    title="attributes in each DICOM JSON object in ascending tag order",
)
async def metadata_tag_order(probe: Probe) -> None:
    fx = await probe.fixture()
    answer = (await probe.get(f"{_series_path(fx)}/metadata", accept=DICOM_JSON)).expect(200)
    _whole(answer)
    items = answer.json()
    for n, item in enumerate(items if isinstance(items, list) else [], 1):
        wrong = _first_disorder(item, f"data set {n}")
        if wrong:
            raise Failed(f"GET {answer.url}: {wrong}")


def _first_disorder(item: Any, where: str, depth: int = 0) -> str | None:
    if not isinstance(item, dict) or depth > 16:
        return None
    keys = list(item)
    for before, after in itertools.pairwise(keys):
        if after < before:
            return f"{where}: {after} comes after {before}"
    for tag, element in item.items():
        if isinstance(element, dict) and element.get("vr") == "SQ":
            for n, sub in enumerate(element.get("Value") or [], 1):
                wrong = _first_disorder(sub, f"{where} {tag}[{n}]", depth + 1)
                if wrong:
                    return wrong
    return None


# --------------------------------------------------------------------------------------------
# URLs in answers: the client's own origin, and fetchable by the client


def json_urls(data: Any, where: str = "", depth: int = 0) -> Iterator[tuple[str, str]]:
    """(where, url) for every BulkDataURI, every UR value and every other http(s) string in a
    DICOM JSON answer."""
    if depth > 20:
        return
    if isinstance(data, list):
        for n, sub in enumerate(data, 1):
            yield from json_urls(sub, f"{where}[{n}]", depth + 1)
    elif isinstance(data, dict):
        for key, sub in data.items():
            if key == "BulkDataURI" and isinstance(sub, str):
                yield f"{where} BulkDataURI", sub
            else:
                yield from json_urls(sub, f"{where} {key}".strip(), depth + 1)
    elif isinstance(data, str) and data.startswith(("http://", "https://")):
        yield where, data


async def _qido_items(probe: Probe, fx: Fixture) -> list[tuple[str, dict[str, Any], str]]:
    """(answer, QIDO item, the path its RetrieveURL must end with) for the fixture's study,
    series and instance."""
    out = [("QIDO /studies", fx.study_json, f"/studies/{fx.study}")]
    for path, key, uid, end in (
        (f"/studies/{fx.study}/series", "0020000E", fx.series, _series_path(fx)),
        (f"{_series_path(fx)}/instances", "00080018", fx.instance, instance_path(fx)),
    ):
        items = (await probe.get(path, accept=DICOM_JSON)).expect(200).json()
        for item in items if isinstance(items, list) else []:
            if _value(item, key) == uid:
                out.append((f"QIDO {path}", item, end))
    return out


@check(
    "wado.urls.retrieve-url",
    section="PS3.18 10.6.3.3 (Retrieve URL 0008,1190)",
    level=Level.MUST,
    title="Retrieve URLs in QIDO answers name the client's base URL and retrieve with 200",
)
async def urls_retrieve_url(probe: Probe) -> None:
    fx = await probe.fixture()
    seen = 0
    for answer, item, end in await _qido_items(probe, fx):
        url = _value(item, "00081190")
        if url is None:
            continue
        seen += 1
        where = f"{answer}: Retrieve URL (0008,1190)"
        absolute = check_origin(probe, str(url), where)
        if not absolute.rstrip("/").endswith(end):
            raise Failed(f"{where}: {url} does not end with {end}")
        status = await status_of(probe, absolute, accept=DICOM)
        if status != 200:
            raise Failed(f"{where}: GET {url} answers {status}, expected 200")
    if not seen:
        raise Failed("no Retrieve URL (0008,1190) in the QIDO answers (Table 10.6.3-3: R)")


@check(
    "wado.urls.bulkdata-uri",
    section="PS3.18 F.2.6, 10.4.3.3.2",
    level=Level.MUST,
    title="every URL in series metadata names the client's base URL; BulkDataURIs answer 200",
)
async def urls_bulkdata_uri(probe: Probe) -> None:
    fx = await probe.fixture()
    answer = (await probe.get(f"{_series_path(fx)}/metadata", accept=DICOM_JSON)).expect(200)
    _whole(answer)
    found = [
        (where, check_origin(probe, url, where, relative_to=answer.url))
        for where, url in json_urls(answer.json(), "series metadata")
    ]
    bulk = sorted({url for where, url in found if where.endswith("BulkDataURI")})
    if not bulk:
        raise Skipped("the series metadata holds no BulkDataURI")
    for url in bulk[:5]:
        status = await status_of(
            probe, url, accept='multipart/related; type="application/octet-stream"'
        )
        if status != 200:
            raise Failed(f"GET {url} (a BulkDataURI of the series metadata): status {status}")


@check(
    "wado.urls.content-location",
    section="PS3.18 10.4.3.3.5, RFC 9110 8.7",
    level=Level.MUST,
    title="Content-Location of answers and parts names the client's base URL and answers 200",
)
async def urls_content_location(probe: Probe) -> None:
    fx = await probe.fixture()
    given: list[tuple[str, str, str]] = []  # where, absolute URL, Accept to fetch it with
    got = await stream_parts(probe, instance_path(fx), accept=DICOM)
    got.expect_ok()
    for where, value in _locations(got):
        given.append((where, urljoin(got.url, value), DICOM))
    pixels = bulkdata_uri(fx.instance_metadata, "7FE00010")
    if pixels is not None:
        where = "instance metadata 7FE00010 BulkDataURI"
        pixels = check_origin(probe, pixels, where, relative_to=metadata_url(probe, fx))
        octets = 'multipart/related; type="application/octet-stream"'
        bulk = await stream_parts(probe, pixels, accept=octets)
        if bulk.status == 200:
            for where, value in _locations(bulk):
                given.append((where, urljoin(bulk.url, value), octets))
    if not given:
        raise Skipped("no Content-Location in the instance and bulk data answers")
    for where, url, accept in given[:6]:
        check_origin(probe, url, where)
        status = await status_of(probe, url, accept=accept)
        if status != 200:
            raise Failed(f"{where}: GET {url} answers {status}, expected 200")


def _locations(got: Streamed) -> Iterator[tuple[str, str]]:
    top = got.headers.get("Content-Location")
    if top:
        yield f"GET {got.url}: Content-Location", top
    for n, part in enumerate(got.parts, 1):
        value = part.header("Content-Location")
        if value:
            yield f"GET {got.url}: part {n} Content-Location", value
