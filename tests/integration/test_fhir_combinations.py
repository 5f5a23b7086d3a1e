"""The NCPeH page's search parameters (SHALL: patient.identifier, identifier, modality, started,
reason; SHOULD: bodysite; MAY: dicom-class), each alone and in every combination of the SHALL
ones, over a DICOMweb site and a DIMSE site, against an oracle that does not use the gateway:
Orthanc's own QIDO-RS for what the PACS can answer, the sample manifest for the rest."""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

import pytest
import requests
from fhir.resources.R4B.bundle import Bundle

from tests.conftest import DimseGateway, Pacs

pytestmark = pytest.mark.integration

SITES = ["web", "get"]  # the default site (DICOMweb) and a C-FIND/C-GET site
CZ_PATIENT = "456789123"


def _core(pacs: Pacs) -> list[dict[str, Any]]:
    studies: list[dict[str, Any]] = pacs.manifest["core"]["studies"]
    return studies


def _uid_of(pacs: Pacs, patient: str, date: str) -> str:
    (uid,) = [
        s["study_uid"]
        for s in _core(pacs)
        if s["patient_id"] == patient and s["study_date"] == date
    ]
    return str(uid)


def _direct(pacs: Pacs, path: str, params: dict[str, str]) -> set[str]:
    """Study Instance UIDs Orthanc itself answers for a QIDO query (the oracle)."""
    answer = requests.get(
        f"{pacs.dicomweb_root}/{path}", params={**params, "limit": "10000"}, timeout=60
    )
    assert answer.status_code == 200, answer.text[:300]
    return {d["0020000D"]["Value"][0] for d in answer.json()}


def _criteria(pacs: Pacs) -> dict[str, tuple[str, set[str]]]:
    """Each parameter: (its FHIR query, the studies it matches by the oracle)."""
    kidney_mr = _uid_of(pacs, CZ_PATIENT, "20240312")
    mueller_ct = _uid_of(pacs, "DE1000234", "20230314")
    ct_mr = _direct(pacs, "studies", {"ModalitiesInStudy": "CT"}) | _direct(
        pacs, "studies", {"ModalitiesInStudy": "MR"}
    )
    reasons = {s["study_uid"] for s in _core(pacs) if s["reason_code"][0] == "90708001"}
    return {
        "patient": (
            f"patient.identifier=|{CZ_PATIENT}",
            _direct(pacs, "studies", {"PatientID": CZ_PATIENT}),
        ),
        "identifier": (
            f"identifier=urn:dicom:uid|urn:oid:{kidney_mr},urn:dicom:uid|urn:oid:{mueller_ct}",
            {kidney_mr, mueller_ct},
        ),
        "modality": ("modality=MR,CT", ct_mr),
        "started": (
            "started=ge2024-01-01",
            _direct(pacs, "studies", {"StudyDate": "20240101-"}),
        ),
        "reason": ("reasonCode=http://snomed.info/sct|90708001", reasons),
    }


@cache
def _search_cached(url: str) -> frozenset[str]:
    answer = requests.get(url, timeout=300)
    assert answer.status_code == 200, (url, answer.text[:300])
    bundle = answer.json()
    Bundle.model_validate(bundle)
    assert bundle["total"] <= 100, "the oracle comparison needs one page"
    found = set()
    for entry in bundle.get("entry", []):
        for identifier in entry["resource"]["identifier"]:
            if identifier.get("system") == "urn:dicom:uid":
                found.add(identifier["value"].removeprefix("urn:oid:"))
    assert len(found) == bundle["total"]
    return frozenset(found)


def _search(gw: DimseGateway, site: str, query: str) -> set[str]:
    base = f"{gw.url}/fhir" if site == "web" else f"{gw.url}/site/{site}/fhir"
    return set(_search_cached(f"{base}/ImagingStudy?{query}&_count=100"))


SHALL = ["patient", "identifier", "modality", "started", "reason"]
COMBINATIONS = [
    combo for size in range(1, len(SHALL) + 1) for combo in itertools.combinations(SHALL, size)
]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("combo", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_every_combination_of_the_shall_parameters(
    dimse_gateway: DimseGateway, pacs: Pacs, site: str, combo: tuple[str, ...]
) -> None:
    criteria = _criteria(pacs)
    query = "&".join(criteria[name][0] for name in combo)
    expected = set.intersection(*(criteria[name][1] for name in combo))
    if "reason" in combo:
        # The manifest knows the core studies' reasons only: compare on them.
        core = {s["study_uid"] for s in _core(pacs)}
        assert _search(dimse_gateway, site, query) & core == expected & core
    else:
        assert _search(dimse_gateway, site, query) == expected


@pytest.mark.parametrize("site", SITES)
def test_token_forms_of_modality(dimse_gateway: DimseGateway, pacs: Pacs, site: str) -> None:
    dcm = "http://dicom.nema.org/resources/ontology/DCM"
    patient = f"patient.identifier=|{CZ_PATIENT}"
    mr = _direct(pacs, "studies", {"PatientID": CZ_PATIENT, "ModalitiesInStudy": "MR"})
    assert len(mr) == 1
    for token in (f"{dcm}|MR", "|MR", "MR"):
        assert _search(dimse_gateway, site, f"{patient}&modality={token}") == mr
    every = _direct(pacs, "studies", {"PatientID": CZ_PATIENT})
    assert _search(dimse_gateway, site, f"{patient}&modality={dcm}|") == every
    assert _search(dimse_gateway, site, f"{patient}&modality=http://other.example|MR") == set()
    assert _search(dimse_gateway, site, f"{patient}&modality:not=MR") == every - mr


@pytest.mark.parametrize("site", SITES)
def test_bodysite_and_dicom_class(dimse_gateway: DimseGateway, pacs: Pacs, site: str) -> None:
    patient = f"patient.identifier=|{CZ_PATIENT}"
    czech = [s for s in _core(pacs) if s["patient_id"] == CZ_PATIENT]
    parts = {p for s in czech for p in (x.get("body_part") for x in s["series"]) if p}
    assert parts, "the sample patient's series name their body parts"
    # dicom-class: the KOS class is in the MR study only; CT Image Storage in the CT studies.
    kos = "1.2.840.10008.5.1.4.1.1.88.59"
    with_kos = _direct(pacs, "instances", {"PatientID": CZ_PATIENT, "SOPClassUID": kos})
    assert _search(dimse_gateway, site, f"{patient}&dicom-class=urn:oid:{kos}") == with_kos
    ct_class = "1.2.840.10008.5.1.4.1.1.2"
    with_ct = _direct(pacs, "instances", {"PatientID": CZ_PATIENT, "SOPClassUID": ct_class})
    assert len(with_ct) == 2
    assert _search(dimse_gateway, site, f"{patient}&dicom-class={ct_class}") == with_ct
    # bodysite: a SNOMED code of a body part the patient's series carry, OR'ed with nonsense.
    snomed = {"KIDNEY": "64033007", "ABDOMEN": "818981001", "CHEST": "816094009"}
    for part in parts & set(snomed):
        holding = {
            s["study_uid"] for s in czech if any(x.get("body_part") == part for x in s["series"])
        }
        query = f"{patient}&bodysite=http://snomed.info/sct|{snomed[part]},|0000"
        assert _search(dimse_gateway, site, query) == holding
