"""`?` matches one character, not one byte (PS3.4 C.2.2.2.4), whatever the PACS's `?` does.

The ``core`` sample set has a UTF-8 patient (ISO_IR 192) and a Latin-1 one (ISO_IR 100) with
non-ASCII names. Searched with `?` in place of each non-ASCII character, they are found through
the gateway on every kind of site: its DICOMweb site and its DIMSE sites (C-GET and C-MOVE
retrieve, same C-FIND). Orthanc 1.10 reached directly misses them, over DICOMweb and over
C-FIND alike. Not because its `?` is one byte: two `?` for a two-byte UTF-8 character miss
too. Its `?` matches no non-ASCII character at all, in PatientName as in ReferringPhysicianName.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from tests.conftest import DimseGateway, Gateway, Pacs
from tests.integration.util import pacs_json, uids

pytestmark = pytest.mark.integration

STUDY_UID = "0020000D"
NON_ASCII = re.compile(r"[^\x00-\x7f]")
SITES = ["web", "get", "move"]  # the DIMSE gateway's sites: DICOMweb, C-GET and C-MOVE


@dataclass(frozen=True)
class Case:
    what: str
    keyword: str
    value: str  # as stored
    pattern: str  # `?` in place of each non-ASCII character
    studies: frozenset[str]  # what the pattern must find


def _cases(pacs: Pacs) -> list[Case]:
    """The UTF-8 and the Latin-1 patient of the ``core`` set, and a referring physician."""
    studies = pacs.manifest["core"]["studies"]
    out = []
    for charset in ("ISO_IR 192", "ISO_IR 100"):
        name = next(
            s["patient_name"]
            for s in studies
            if s["specific_character_set"] == charset and NON_ASCII.search(s["patient_name"])
        )
        out.append(_case(f"PatientName {charset}", "PatientName", name, studies, "patient_name"))
    physician = next(
        s["referring_physician"] for s in studies if NON_ASCII.search(s["referring_physician"])
    )
    out.append(
        _case(
            "ReferringPhysicianName",
            "ReferringPhysicianName",
            physician,
            studies,
            "referring_physician",
        )
    )
    return out


def _case(what: str, keyword: str, value: str, studies: Any, field: str) -> Case:
    found = frozenset(s["study_uid"] for s in studies if s[field] == value)
    return Case(what, keyword, value, NON_ASCII.sub("?", value), found)


@pytest.fixture(scope="module")
def cases(pacs: Pacs) -> list[Case]:
    cases = _cases(pacs)
    assert [c.value for c in cases][:2] == ["Müller^Jürgen", "Dubois^Élodie"]  # the sample set
    assert all(c.studies for c in cases)
    return cases


def _gateway_studies(root: str, keyword: str, value: str) -> set[str]:
    # Percent-encoded, as clients send it (`?` must be, in a query string); the gateway decodes.
    url = f"{root}/studies?{keyword}={quote(value, safe='')}&includefield={keyword}"
    response = requests.get(url, headers={"Accept": "application/dicom+json"}, timeout=60)
    assert response.status_code == 200, response.text[:300]
    body: list[dict[str, Any]] = response.json() if response.content else []
    return set(uids(body, STUDY_UID))


def _roots(gateway: Gateway, dimse_gateway: DimseGateway) -> Iterator[tuple[str, str]]:
    yield "gateway", gateway.dicomweb
    for site in SITES:
        yield site, dimse_gateway.root(site)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["utf-8", "latin-1", "physician"])
def test_question_mark_finds_a_non_ascii_character_on_every_site(
    cases: list[Case], gateway: Gateway, dimse_gateway: DimseGateway, index: int
) -> None:
    case = cases[index]
    for site, root in _roots(gateway, dimse_gateway):
        assert _gateway_studies(root, case.keyword, case.pattern) == case.studies, (site, case)
        # `?` next to `*`, and a lower-case pattern: still one character each
        loose = case.pattern.split("^")[0] + "*"
        assert case.studies <= _gateway_studies(root, case.keyword, loose.lower()), (site, loose)


@pytest.mark.parametrize("index", [0, 1, 2], ids=["utf-8", "latin-1", "physician"])
def test_question_mark_is_one_character_not_one_byte(
    cases: list[Case], gateway: Gateway, dimse_gateway: DimseGateway, index: int
) -> None:
    """`??` for a two-byte character (its UTF-8 length) finds nothing: the gateway's check is
    character-wise, so the loosened upstream query lets nothing extra through."""
    case = cases[index]
    two = NON_ASCII.sub("??", case.value)
    for site, root in _roots(gateway, dimse_gateway):
        assert _gateway_studies(root, case.keyword, two) == set(), (site, two)


# ------------------------------------------------------------------ Orthanc reached directly


def _orthanc_dicomweb(pacs: Pacs, keyword: str, value: str) -> set[str]:
    return set(uids(pacs_json(pacs, "studies", f"{keyword}={value}"), STUDY_UID))


def _orthanc_c_find(pacs: Pacs, keyword: str, value: str) -> set[str]:
    ae = AE(ae_title="NCPEH-WILDCARD")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    association = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert association.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    setattr(identifier, keyword, value)
    found = set()
    try:
        for status, answer in association.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            assert status is not None and status.Status in (0x0000, 0xFF00, 0xFF01), status
            if answer is not None and status.Status in (0xFF00, 0xFF01):
                found.add(str(answer.StudyInstanceUID))
    finally:
        association.release()
    return found


@pytest.mark.parametrize("index", [0, 1, 2], ids=["utf-8", "latin-1", "physician"])
def test_orthanc_question_mark_misses_non_ascii(cases: list[Case], pacs: Pacs, index: int) -> None:
    """Why the gateway loosens `?`: Orthanc 1.10 misses with one `?` and with one `?` per
    UTF-8 byte, over DICOMweb and over C-FIND, and finds with `*`. Should a later Orthanc
    match character-wise, this test fails and the loosening is merely unneeded, not wrong."""
    case = cases[index]
    star = NON_ASCII.sub("*", case.value)
    two = NON_ASCII.sub("??", case.value)
    for search in (_orthanc_dicomweb, _orthanc_c_find):
        assert search(pacs, case.keyword, star) == case.studies, (search.__name__, star)
        assert search(pacs, case.keyword, case.pattern) == set(), (search.__name__, case.pattern)
        assert search(pacs, case.keyword, two) == set(), (search.__name__, two)
