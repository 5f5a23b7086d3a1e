"""The pure side of the NCPeH FHIR checks (``conformance.checks.fhir*``): FHIR validation with
``fhir.resources``, reading searchset Bundles (links, matches, paging), comparing a search entry
with its read, and DICOM JSON values. No I/O: its tests need no endpoint.

R4 answers validate with fhir.resources' R4B models (fhir.resources 8 ships no R4 package;
Bundle, ImagingStudy, Endpoint, OperationOutcome and CapabilityStatement did not change from R4
to R4B), R5 answers with its default (R5) models.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import fhir.resources
import fhir.resources.R4B

from .model import Failed, Skipped

if TYPE_CHECKING:
    from .context import Fixture

__all__ = [
    "DICOM_UID",
    "R4",
    "R5",
    "bundle_links",
    "codes",
    "dicom_value",
    "dicom_values",
    "differences",
    "entry_key",
    "match_entries",
    "paging_problems",
    "same_origin",
    "study_date",
    "study_uids",
    "validate",
]

DICOM_UID = "urn:dicom:uid"
R4, R5 = "R4", "R5"


def validate(resource: Any, version: str, where: str) -> dict[str, Any]:
    """``resource`` when it validates as FHIR ``version`` (R4 or R5), else Failed naming
    ``where`` and the first problems the model found."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise Failed(f"{where}: not a FHIR resource (no resourceType)")
    kind = resource["resourceType"]
    package = fhir.resources.R4B if version == R4 else fhir.resources
    try:
        model = package.get_fhir_model_class(kind)
    except (ValueError, AttributeError):
        raise Failed(f"{where}: {kind!r} is not a FHIR {version} resource type") from None
    try:
        model.model_validate(resource)
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        text = " ".join(str(exc).split())
        raise Failed(
            f"{where}: the {kind} does not validate as FHIR {version}: {text[:400]}"
        ) from None
    return cast(dict[str, Any], resource)


def bundle_links(bundle: Mapping[str, Any]) -> dict[str, str]:
    """Bundle.link as relation → url (the first of each relation)."""
    out: dict[str, str] = {}
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and isinstance(link.get("url"), str):
            out.setdefault(str(link.get("relation")), link["url"])
    return out


def match_entries(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entries that are matches (search.mode "match" or absent), not includes/outcomes."""
    out = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        mode = search.get("mode", "match") if isinstance(search, dict) else "match"
        if mode == "match":
            out.append(entry)
    return out


def entry_key(entry: Mapping[str, Any]) -> str:
    """What identifies an entry across pages: its resource's type/id, else its fullUrl."""
    resource = entry.get("resource") or {}
    if isinstance(resource, dict) and resource.get("id"):
        return f"{resource.get('resourceType')}/{resource['id']}"
    return str(entry.get("fullUrl"))


def study_uids(resource: Mapping[str, Any]) -> set[str]:
    """The Study Instance UIDs an ImagingStudy names: identifiers of system urn:dicom:uid, their
    value without the ``urn:oid:`` prefix (FHIR R4 ImagingStudy.identifier, IHE MADO)."""
    out = set()
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == DICOM_UID:
            out.add(str(identifier.get("value", "")).removeprefix("urn:oid:"))
    return out


def paging_problems(pages: Sequence[Mapping[str, Any]], count: int | None) -> list[str]:
    """What is wrong with the pages of one search, in order (FHIR R4 search, paging): a page
    with more matches than ``_count``, a match on two pages, a ``total`` that changes between
    pages or disagrees with the number of matches paged."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    totals = {p["total"] for p in pages if isinstance(p.get("total"), int)}
    for number, page in enumerate(pages, 1):
        matches = match_entries(page)
        if count is not None and len(matches) > count:
            problems.append(f"page {number} has {len(matches)} matches, more than _count={count}")
        for entry in matches:
            key = entry_key(entry)
            if key in seen:
                problems.append(f"{key} is on page {seen[key]} and again on page {number}")
            else:
                seen[key] = number
    if len(totals) > 1:
        problems.append(f"Bundle.total changes between pages: {sorted(totals)}")
    elif totals and (total := totals.pop()) != len(seen):
        problems.append(f"Bundle.total is {total} but the pages hold {len(seen)} matches")
    return problems


def differences(part: Any, whole: Any, path: str = "") -> list[str]:
    """Where ``part`` (a search entry) says what ``whole`` (the read) does not: an element the
    read lacks or holds otherwise. The read may say more: a search may leave detail out.
    Lists are compared item by item; ``meta`` (versions, timestamps) is left out."""
    if isinstance(part, dict) and isinstance(whole, dict):
        out: list[str] = []
        for key, value in part.items():
            if key == "meta" and not path:
                continue
            if key not in whole:
                out.append(f"{path}{key} is missing from the read")
            else:
                out += differences(value, whole[key], f"{path}{key}.")
        return out
    if isinstance(part, list) and isinstance(whole, list) and len(part) == len(whole):
        return [
            d
            for i, (a, b) in enumerate(zip(part, whole, strict=True))
            for d in differences(a, b, f"{path[:-1]}[{i}].")
        ]
    return (
        []
        if part == whole
        else [f"{path.rstrip('.')}: {_short(part)} in the search, {_short(whole)} in the read"]
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def same_origin(url: str, base: str) -> bool:
    """True when ``url`` has the scheme, host and port of ``base``."""
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


def dicom_values(element_map: Any, tag: str) -> list[Any]:
    """The Values of ``tag`` in a DICOM JSON object ([] when absent or malformed)."""
    element = element_map.get(tag) if isinstance(element_map, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def dicom_value(element_map: Any, tag: str) -> Any:
    """The first Value of ``tag`` in a DICOM JSON object, or None."""
    values = dicom_values(element_map, tag)
    return values[0] if values else None


def codes(concepts: Any) -> list[tuple[str | None, str]]:
    """(system, code) of Codings, CodeableConcepts or CodeableReferences, in order."""
    out: list[tuple[str | None, str]] = []
    for item in concepts if isinstance(concepts, list) else [concepts]:
        if not isinstance(item, dict):
            continue
        item = item.get("concept", item)  # R5 CodeableReference
        for coding in item.get("coding", [item]) if isinstance(item, dict) else []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                out.append((coding.get("system"), coding["code"]))
    return out


def study_date(fixture: Fixture) -> dt.date:
    """The test study's StudyDate (QIDO, else its metadata); Skipped when it has none."""
    text = dicom_value(fixture.study_json, "00080020") or dicom_value(
        fixture.instance_metadata, "00080020"
    )
    try:
        return dt.datetime.strptime(str(text)[:8], "%Y%m%d").date()
    except ValueError:
        raise Skipped(f"the test study has no usable StudyDate ({text!r})") from None
