"""searchset Bundles and paging links (FHIR R4 bundle.html, search.html#paging)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4
from yarl import URL

from ncpeh_dicomweb.errors import InvalidQuery
from ncpeh_dicomweb.fhir.bundle import (
    COUNT_PARAMETER,
    OFFSET_PARAMETER,
    BundleEntry,
    full_url,
    page_links,
    parse_offset,
    search_url,
    searchset,
    summary_count,
)
from ncpeh_dicomweb.fhir.negotiation import FhirVersion
from ncpeh_dicomweb.fhir.outcome import Issue, outcome

BASE = "https://ncp.example.eu/fhir"
SEARCH = f"{BASE}/ImagingStudy"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
# The NCPeH page's first example search, as parsed from the query string.
NCPEH_PARAMS = [
    ("patient.identifier", "|456789123"),
    ("started", "ge2024-01-01"),
    ("started", "le2024-12-31"),
]
VERSIONS: list[FhirVersion] = ["R4", "R5"]
MODELS: dict[str, type[BundleR4] | type[BundleR5]] = {"R4": BundleR4, "R5": BundleR5}


def _study(uid: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": uid,
        "status": "available",
        "subject": {"reference": "Patient/p1"},
        "endpoint": [{"reference": "Endpoint/wado"}],
    }


PATIENT = {"resourceType": "Patient", "id": "p1"}
ENDPOINTS: dict[str, dict[str, Any]] = {
    "R4": {
        "resourceType": "Endpoint",
        "id": "wado",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": "https://ncp.example.eu/dicomweb",
    },
    "R5": {
        "resourceType": "Endpoint",
        "id": "wado",
        "status": "active",
        "connectionType": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                        "code": "dicom-wado-rs",
                    }
                ]
            }
        ],
        "address": "https://ncp.example.eu/dicomweb",
    },
}


def _entries(version: str, *uids: str) -> list[BundleEntry]:
    matches = [BundleEntry(full_url(BASE, "ImagingStudy", u), _study(u)) for u in uids]
    return [
        *matches,
        BundleEntry(f"{BASE}/Patient/p1", PATIENT, "include"),
        BundleEntry(f"{BASE}/Endpoint/wado", ENDPOINTS[version], "include"),
    ]


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


# --------------------------------------------------------------------------------------
# searchset
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_searchset(version: FhirVersion) -> None:
    self_url, next_url, previous_url = page_links(SEARCH, NCPEH_PARAMS, offset=2, count=2, total=5)
    bundle = searchset(
        _entries(version, f"{STUDY_UID}.3", f"{STUDY_UID}.4"),
        total=5,
        self_url=self_url,
        next_url=next_url,
        previous_url=previous_url,
        version=version,
    )
    MODELS[version].model_validate(bundle)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 5
    assert bundle["link"] == [
        {"relation": "self", "url": self_url},
        {"relation": "next", "url": next_url},
        {"relation": "previous", "url": previous_url},
    ]
    assert [(e["fullUrl"], e["search"]) for e in bundle["entry"]] == [
        (f"{SEARCH}/{STUDY_UID}.3", {"mode": "match"}),
        (f"{SEARCH}/{STUDY_UID}.4", {"mode": "match"}),
        (f"{BASE}/Patient/p1", {"mode": "include"}),
        (f"{BASE}/Endpoint/wado", {"mode": "include"}),
    ]
    assert bundle["entry"][0]["resource"] == _study(f"{STUDY_UID}.3")


@pytest.mark.parametrize("version", VERSIONS)
def test_total_left_out_when_unknown(version: FhirVersion) -> None:
    bundle = searchset(
        _entries(version, STUDY_UID),
        total=None,
        self_url=SEARCH,
        next_url=None,
        previous_url=None,
        version=version,
    )
    MODELS[version].model_validate(bundle)
    assert "total" not in bundle
    assert bundle["link"] == [{"relation": "self", "url": SEARCH}]


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_searchset(version: FhirVersion) -> None:
    bundle = searchset(
        [], total=0, self_url=SEARCH, next_url=None, previous_url=None, version=version
    )
    MODELS[version].model_validate(bundle)
    assert bundle == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "link": [{"relation": "self", "url": SEARCH}],
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_summary_count(version: FhirVersion) -> None:
    self_url = search_url(SEARCH, [*NCPEH_PARAMS, ("_summary", "count")])
    bundle = summary_count(total=42, self_url=self_url, version=version)
    MODELS[version].model_validate(bundle)
    assert bundle == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 42,
        "link": [{"relation": "self", "url": self_url}],
    }
    assert _query(self_url)[-1] == ("_summary", "count")


def test_match_and_include_of_one_resource_appear_once_as_match() -> None:
    patient_url = f"{BASE}/Patient/p1"
    entries = [
        BundleEntry(patient_url, PATIENT, "include"),
        BundleEntry(f"{SEARCH}/{STUDY_UID}", _study(STUDY_UID)),
        BundleEntry(patient_url, PATIENT, "match"),
        BundleEntry(patient_url, PATIENT, "include"),
        BundleEntry(f"{SEARCH}/{STUDY_UID}", _study(STUDY_UID), "include"),
    ]
    bundle = searchset(
        entries, total=2, self_url=SEARCH, next_url=None, previous_url=None, version="R4"
    )
    BundleR4.model_validate(bundle)
    assert [(e["fullUrl"], e["search"]["mode"]) for e in bundle["entry"]] == [
        (patient_url, "match"),
        (f"{SEARCH}/{STUDY_UID}", "match"),
    ]


def test_an_include_shared_by_several_matches_appears_once() -> None:
    entries = [*_entries("R4", "1.2.1"), *_entries("R4", "1.2.2")]
    bundle = searchset(
        entries, total=2, self_url=SEARCH, next_url=None, previous_url=None, version="R4"
    )
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert urls == [
        f"{SEARCH}/1.2.1",
        f"{BASE}/Patient/p1",
        f"{BASE}/Endpoint/wado",
        f"{SEARCH}/1.2.2",
    ]


WARNING = outcome([Issue("warning", "not-supported", "foo: ignored", ("foo",))])


def test_search_warning_r4_is_an_outcome_entry() -> None:
    bundle = searchset(
        _entries("R4", STUDY_UID),
        total=1,
        self_url=SEARCH,
        next_url=None,
        previous_url=None,
        version="R4",
        outcome=WARNING,
    )
    BundleR4.model_validate(bundle)
    assert bundle["entry"][-1] == {"resource": WARNING, "search": {"mode": "outcome"}}
    assert "issues" not in bundle


def test_search_warning_r5_is_bundle_issues() -> None:
    bundle = searchset(
        [],
        total=0,
        self_url=SEARCH,
        next_url=None,
        previous_url=None,
        version="R5",
        outcome=WARNING,
    )
    BundleR5.model_validate(bundle)
    assert bundle["issues"] == WARNING
    assert "entry" not in bundle


@pytest.mark.parametrize(
    ("url", "resource"),
    [
        pytest.param(f"{SEARCH}/1.2.3", _study("1.2.4"), id="other-id"),
        pytest.param(f"{BASE}/Patient/1.2.3", _study("1.2.3"), id="other-type"),
        pytest.param("/fhir/ImagingStudy/1.2.3", _study("1.2.3"), id="relative"),
        pytest.param(f"{SEARCH}/1.2.3", {"resourceType": "ImagingStudy"}, id="no-id"),
    ],
)
def test_full_url_must_agree_with_the_resource(url: str, resource: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"fullUrl|resourceType and id"):
        BundleEntry(url, resource)


def test_negative_total_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        searchset([], total=-1, self_url=SEARCH, next_url=None, previous_url=None, version="R4")


@pytest.mark.parametrize(
    ("base", "rid", "expected"),
    [
        (BASE, STUDY_UID, f"{BASE}/ImagingStudy/{STUDY_UID}"),
        (f"{BASE}/", "a-b.C", f"{BASE}/ImagingStudy/a-b.C"),
    ],
)
def test_full_url(base: str, rid: str, expected: str) -> None:
    assert full_url(base, "ImagingStudy", rid) == expected


@pytest.mark.parametrize("rid", ["", "a/b", "a b", "x" * 65, "1.2|3"])
def test_full_url_refuses_what_is_no_fhir_id(rid: str) -> None:
    with pytest.raises(ValueError, match="not a FHIR id"):
        full_url(BASE, "ImagingStudy", rid)


# --------------------------------------------------------------------------------------
# Paging links
# --------------------------------------------------------------------------------------


def _paging(url: str | None) -> tuple[int, int] | None:
    """(offset, count) of a link, the way the web layer will read them back."""
    if url is None:
        return None
    query = dict(_query(url))
    return parse_offset(query.get(OFFSET_PARAMETER)), int(query[COUNT_PARAMETER])


@pytest.mark.parametrize(
    ("offset", "count", "total", "self_", "next_", "previous"),
    [
        pytest.param(0, 10, 25, (0, 10), (10, 10), None, id="first"),
        pytest.param(10, 10, 25, (10, 10), (20, 10), (0, 10), id="middle"),
        pytest.param(20, 10, 25, (20, 10), None, (10, 10), id="last-partial"),
        pytest.param(10, 10, 20, (10, 10), None, (0, 10), id="last-full"),
        pytest.param(0, 10, 10, (0, 10), None, None, id="only-page-full"),
        pytest.param(0, 10, 3, (0, 10), None, None, id="only-page"),
        pytest.param(0, 10, 0, (0, 10), None, None, id="no-match"),
        pytest.param(3, 10, 25, (3, 10), (13, 10), (0, 10), id="unaligned"),
        pytest.param(50, 10, 25, (50, 10), None, (20, 10), id="past-the-end"),
        pytest.param(7, 0, 25, (7, 0), None, None, id="count-0"),
        pytest.param(0, 1, 2, (0, 1), (1, 1), None, id="count-1"),
    ],
)
def test_page_links(
    offset: int,
    count: int,
    total: int,
    self_: tuple[int, int],
    next_: tuple[int, int] | None,
    previous: tuple[int, int] | None,
) -> None:
    links = page_links(SEARCH, NCPEH_PARAMS, offset=offset, count=count, total=total)
    assert tuple(map(_paging, links)) == (self_, next_, previous)
    for link in links:
        if link is not None:
            assert link.startswith(f"{SEARCH}?")
            assert _query(link)[: len(NCPEH_PARAMS)] == NCPEH_PARAMS


def test_first_page_self_link_is_the_search_plus_count() -> None:
    self_url, next_url, _ = page_links(SEARCH, NCPEH_PARAMS, offset=0, count=20, total=100)
    assert self_url == (
        f"{SEARCH}?patient.identifier=%7C456789123&started=ge2024-01-01"
        "&started=le2024-12-31&_count=20"
    )
    assert next_url == f"{self_url}&{OFFSET_PARAMETER}=20"


@pytest.mark.parametrize(("total", "count"), [(7, 3), (9, 3), (1, 5), (100, 7)])
def test_next_links_walk_to_the_end_and_previous_links_back(total: int, count: int) -> None:
    starts: list[int] = []
    url: str | None = page_links(SEARCH, NCPEH_PARAMS, offset=0, count=count, total=total)[0]
    while url is not None and len(starts) <= total:  # bounded: a loop of links fails
        offset, page_count = _paging(url) or (-1, -1)
        starts.append(offset)
        assert page_count == count
        assert [p for p in _query(url) if p[0] not in {COUNT_PARAMETER, OFFSET_PARAMETER}] == (
            NCPEH_PARAMS
        )
        # The web layer re-runs the search from the link's own parameters.
        url = page_links(SEARCH, _query(url), offset=offset, count=count, total=total)[1]
    assert starts == list(range(0, total, count))
    back: list[int] = []
    url = page_links(SEARCH, NCPEH_PARAMS, offset=starts[-1], count=count, total=total)[2]
    while url is not None and len(back) <= total:
        offset, _ = _paging(url) or (-1, -1)
        back.append(offset)
        url = page_links(SEARCH, _query(url), offset=offset, count=count, total=total)[2]
    assert back == starts[-2::-1]


def test_client_paging_parameters_are_replaced_not_repeated() -> None:
    params = [("_count", "500"), ("modality", "MR"), (OFFSET_PARAMETER, "3")]
    self_url, _, _ = page_links(SEARCH, params, offset=0, count=100, total=5)
    assert _query(self_url) == [("modality", "MR"), ("_count", "100")]


@pytest.mark.parametrize(
    ("name", "value", "encoded"),
    [
        pytest.param("patient.identifier", "|456789123", "%7C456789123", id="bar"),
        pytest.param(
            "identifier",
            "urn:dicom:uid|urn:oid:1.2.3",
            "urn:dicom:uid%7Curn:oid:1.2.3",
            id="uid-token",
        ),
        pytest.param("modality", "MR,CT", "MR,CT", id="or-comma"),
        pytest.param("reason:text", "a+b", "a%2Bb", id="plus"),
        pytest.param("reason:text", "kidney disease", "kidney%20disease", id="space"),
        pytest.param("reason:text", "a&b=c", "a%26b%3Dc", id="amp-eq"),
        pytest.param("reason:text", "50%;#", "50%25%3B%23", id="pct-semicolon-hash"),
        pytest.param("reason:text", "Niere ü", "Niere%20%C3%BC", id="non-ascii"),
        pytest.param("identifier", "a\\,b", "a%5C,b", id="escaped-comma"),
        pytest.param(
            "started", "ge2024-06-01T10:00:00+02:00", "ge2024-06-01T10:00:00%2B02:00", id="tz"
        ),
    ],
)
def test_query_encoding_round_trips(name: str, value: str, encoded: str) -> None:
    url = search_url(SEARCH, [(name, value), ("modality", "MR")])
    assert url == f"{SEARCH}?{name}={encoded}&modality=MR"
    # Read back as the standard library and as aiohttp (yarl) read a query string.
    assert _query(url) == [(name, value), ("modality", "MR")]
    assert list(URL(url).query.items()) == [(name, value), ("modality", "MR")]


def test_parameter_names_are_encoded_too() -> None:
    url = search_url(SEARCH, [("a&b", "1"), ("subject:Patient.identifier", "x")])
    assert url == f"{SEARCH}?a%26b=1&subject:Patient.identifier=x"


def test_search_url_without_parameters() -> None:
    assert search_url(SEARCH, []) == SEARCH


@pytest.mark.parametrize("base", [f"{SEARCH}?x=1", f"{SEARCH}#frag"])
def test_base_url_with_query_refused(base: str) -> None:
    with pytest.raises(ValueError, match="no query"):
        page_links(base, [], offset=0, count=10, total=1)


@pytest.mark.parametrize(("offset", "count", "total"), [(-1, 10, 5), (0, -1, 5), (0, 10, -1)])
def test_negative_paging_refused(offset: int, count: int, total: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        page_links(SEARCH, [], offset=offset, count=count, total=total)


@pytest.mark.parametrize(("value", "expected"), [(None, 0), ("", 0), ("0", 0), (" 40 ", 40)])
def test_parse_offset(value: str | None, expected: int) -> None:
    assert parse_offset(value) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "ten", "١٢", "+3"])
def test_parse_offset_refuses(value: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        parse_offset(value)
    assert info.value.detail["parameter"] == OFFSET_PARAMETER
