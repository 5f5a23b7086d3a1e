"""The FHIR facade against the real Orthanc, over a DICOMweb site and a DIMSE site: the NCPeH
page's example searches, read by id on both routes, paging, includes, R4 and R5, errors as
OperationOutcome; every Bundle and resource validated with fhir.resources."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pydicom
import pytest
import requests
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.imagingstudy import ImagingStudy as ImagingStudyR5
from fhir.resources.R4B.bundle import Bundle as BundleR4
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as CapabilityR4
from fhir.resources.R4B.imagingstudy import ImagingStudy as ImagingStudyR4
from fhir.resources.R4B.operationoutcome import OperationOutcome as OutcomeR4
from fhir.resources.R4B.patient import Patient as PatientR4
from pydicom.uid import generate_uid

from tests.conftest import CZ_SYSTEM, DimseGateway, Pacs
from tests.integration.multipart_split import split_multipart

pytestmark = pytest.mark.integration

SITES = ["web", "get"]
R5 = {"Accept": "application/fhir+json; fhirVersion=5.0"}
# The NCPeH "Get Study Metadata (HL7 FHIR)" page's three example searches, and what the sample
# Czech patient (456789123: CT 2023, MR 2024 and CT 2024 for kidney disease) gives for each.
PAGE_EXAMPLES = [
    ("patient.identifier=|456789123&started=ge2024-01-01&started=le2024-12-31", 2),
    ("patient.identifier=|456789123&reasonCode=|90708001", 2),
    ("patient.identifier=|456789123&modality=MR", 1),
]


def _base(gw: DimseGateway, site: str) -> str:
    return f"{gw.url}/fhir" if site == "web" else f"{gw.url}/site/{site}/fhir"


def _search(
    gw: DimseGateway, site: str, query: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    answer = requests.get(f"{_base(gw, site)}/ImagingStudy?{query}", headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.headers["Content-Type"].startswith("application/fhir+json")
    bundle: dict[str, Any] = answer.json()
    (BundleR5 if headers == R5 else BundleR4).model_validate(bundle)
    return bundle


def _uids(bundle: dict[str, Any]) -> set[str]:
    out = set()
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] == "ImagingStudy":
            for identifier in resource["identifier"]:
                if identifier.get("system") == "urn:dicom:uid":
                    out.add(identifier["value"].removeprefix("urn:oid:"))
    return out


@pytest.mark.parametrize(("query", "expected"), PAGE_EXAMPLES)
def test_page_examples_on_both_kinds_of_site(
    dimse_gateway: DimseGateway, query: str, expected: int
) -> None:
    found = {site: _search(dimse_gateway, site, query) for site in SITES}
    for site, bundle in found.items():
        assert bundle["type"] == "searchset" and bundle["total"] == expected, site
        assert len(_uids(bundle)) == expected
        for entry in bundle["entry"]:
            assert entry["search"]["mode"] == "match"
            resource = entry["resource"]
            ImagingStudyR4.model_validate(resource)
            assert entry["fullUrl"] == f"{_base(dimse_gateway, site)}/ImagingStudy/{resource['id']}"
    assert _uids(found["web"]) == _uids(found["get"])


def test_started_precision_and_prefixes(dimse_gateway: DimseGateway) -> None:
    patient = "patient.identifier=|456789123"
    assert _search(dimse_gateway, "web", f"{patient}&started=2024")["total"] == 2
    assert _search(dimse_gateway, "web", f"{patient}&started=2023-05")["total"] == 1
    assert _search(dimse_gateway, "web", f"{patient}&started=gt2024-06")["total"] == 1
    assert _search(dimse_gateway, "web", f"{patient}&started=lt2024")["total"] == 1


def test_identifier_system_and_study_uid(dimse_gateway: DimseGateway) -> None:
    bundle = _search(dimse_gateway, "web", "patient.identifier=|456789123&modality=MR")
    (uid,) = _uids(bundle)
    by_uid = _search(dimse_gateway, "web", f"identifier=urn:dicom:uid|urn:oid:{uid}")
    assert _uids(by_uid) == {uid}
    with_system = _search(dimse_gateway, "web", f"patient.identifier={CZ_SYSTEM}|456789123")
    assert with_system["total"] == 3
    other_system = _search(dimse_gateway, "web", "patient.identifier=urn:oid:1.2.3|456789123")
    assert other_system["total"] == 0


@pytest.mark.parametrize("site", SITES)
def test_paging_through_next_to_the_end(dimse_gateway: DimseGateway, site: str) -> None:
    query = "patient.identifier=|456789123&_count=1&_sort=-started"
    bundle = _search(dimse_gateway, site, query)
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "next" not in links:
            break
        assert pages < 10
        target = urlsplit(links["next"])
        answer = requests.get(links["next"], timeout=120)
        assert answer.status_code == 200, (target.query, answer.text[:300])
        bundle = answer.json()
        BundleR4.model_validate(bundle)
    assert pages == 3 and len(set(seen)) == 3 == bundle["total"]


@pytest.mark.parametrize("site", SITES)
def test_include_endpoint_and_patient_and_follow_the_endpoint(
    dimse_gateway: DimseGateway, site: str
) -> None:
    query = (
        "patient.identifier=|456789123&modality=MR"
        "&_include=ImagingStudy:endpoint&_include=ImagingStudy:patient"
    )
    bundle = _search(dimse_gateway, site, query)
    kinds = {e["resource"]["resourceType"]: e for e in bundle["entry"]}
    assert set(kinds) == {"ImagingStudy", "Endpoint", "Patient"}
    assert kinds["Endpoint"]["search"]["mode"] == "include"
    patient = kinds["Patient"]["resource"]
    assert patient["identifier"][0] == {"system": CZ_SYSTEM, "value": "456789123"}
    address = kinds["Endpoint"]["resource"]["address"]
    assert address == _base(dimse_gateway, site).removesuffix("/fhir") + "/dicom-web"
    (uid,) = _uids(bundle)
    study = requests.get(
        f"{address}/studies/{uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=120,
    )
    assert study.status_code == 200
    assert len(split_multipart(study.headers["Content-Type"], study.content)) >= 2


def test_r5_on_request(dimse_gateway: DimseGateway) -> None:
    bundle = _search(dimse_gateway, "web", "patient.identifier=|456789123&modality=MR", R5)
    resource = bundle["entry"][0]["resource"]
    ImagingStudyR5.model_validate(resource)
    # R5: each modality a CodeableConcept (the study also holds its KO key-image series)
    assert "MR" in {m["coding"][0]["code"] for m in resource["modality"]}
    assert (
        "fhirVersion=5.0"
        in requests.get(f"{dimse_gateway.url}/fhir/metadata", headers=R5, timeout=30).headers[
            "Content-Type"
        ]
    )


@pytest.mark.parametrize("site", SITES)
def test_read_by_id_and_the_vendor_route(dimse_gateway: DimseGateway, site: str) -> None:
    bundle = _search(dimse_gateway, site, "patient.identifier=|456789123&modality=MR")
    resource_id = bundle["entry"][0]["resource"]["id"]
    answer = requests.get(f"{_base(dimse_gateway, site)}/ImagingStudy/{resource_id}", timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    study = answer.json()
    ImagingStudyR4.model_validate(study)
    assert study["id"] == resource_id
    assert sum(len(s.get("instance", [])) for s in study["series"]) == study["numberOfInstances"]
    # The read says all the search said of the study (it only adds the instances).
    found = bundle["entry"][0]["resource"]
    for key in ("subject", "description", "started", "identifier", "modality", "reasonCode"):
        assert study.get(key) == found.get(key), key
    vendor = requests.get(
        f"{dimse_gateway.url}/site/{site}/fhir/imaging-study/{resource_id}", timeout=120
    )
    assert vendor.status_code == 200 and vendor.headers["Content-Type"].startswith(
        "application/json"
    )
    assert vendor.json()["id"] == resource_id


def test_errors_are_operation_outcomes(dimse_gateway: DimseGateway) -> None:
    base = _base(dimse_gateway, "web")
    unknown = requests.get(f"{base}/ImagingStudy/1.2.3.4.5.6.7", timeout=30)
    assert unknown.status_code == 404
    OutcomeR4.model_validate(unknown.json())
    assert unknown.json()["issue"][0]["code"] == "not-found"
    bad_date = requests.get(f"{base}/ImagingStudy?started=2024-13", timeout=30)
    assert bad_date.status_code == 400
    issue = bad_date.json()["issue"][0]
    assert issue["severity"] == "error" and "started" in issue.get("expression", [""])[0]
    strict = requests.get(
        f"{base}/ImagingStudy?colour=blue", headers={"Prefer": "handling=strict"}, timeout=30
    )
    assert strict.status_code == 400
    lenient = _search(dimse_gateway, "web", "colour=blue&patient.identifier=|456789123")
    self_link = next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    assert "colour" not in self_link
    no_type = requests.get(f"{base}/Observation", timeout=30)
    assert no_type.status_code == 404 and no_type.json()["resourceType"] == "OperationOutcome"
    xml = requests.get(f"{base}/metadata", headers={"Accept": "application/fhir+xml"}, timeout=30)
    assert xml.status_code == 406
    vendor = requests.get(f"{dimse_gateway.url}/site/get/fhir/imaging-study/nope", timeout=30)
    assert vendor.status_code == 404
    assert vendor.json() == {"message": vendor.json()["message"], "statusCode": 404}


def test_capability_statement(dimse_gateway: DimseGateway) -> None:
    answer = requests.get(f"{dimse_gateway.url}/fhir/metadata", timeout=30)
    statement = answer.json()
    CapabilityR4.model_validate(statement)
    (resource,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "ImagingStudy"]
    names = {p["name"] for p in resource["searchParam"]}
    assert {"patient", "identifier", "modality", "started", "reason", "bodysite"} <= names


def test_post_search_equals_get(dimse_gateway: DimseGateway) -> None:
    query = "patient.identifier=|456789123&modality=MR"
    answer = requests.post(
        f"{_base(dimse_gateway, 'web')}/ImagingStudy/_search",
        data=dict(parse_qsl(query)),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text[:300]
    assert _uids(answer.json()) == _uids(_search(dimse_gateway, "web", query))


def test_a_study_served_then_gone_is_410(dimse_gateway: DimseGateway, pacs: Pacs) -> None:
    """A study the gateway answered once and the PACS has since lost: 410, not 404."""
    ds = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["fhir-gone-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["fhir-gone-series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["fhir-gone-sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "GONE-1"
    out = io.BytesIO()
    ds.save_as(out)
    stored = requests.post(f"{pacs.url}/instances", data=out.getvalue(), timeout=30).json()
    bundle = _search(dimse_gateway, "web", "patient.identifier=|GONE-1")
    (resource_id,) = [e["resource"]["id"] for e in bundle["entry"]]
    url = f"{_base(dimse_gateway, 'web')}/ImagingStudy/{resource_id}"
    assert requests.get(url, timeout=30).status_code == 200
    assert requests.delete(f"{pacs.url}/studies/{stored['ParentStudy']}", timeout=30).ok
    gone = requests.get(url, timeout=30)
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"


def test_elements_cut_the_matches_to_what_was_asked(dimse_gateway: DimseGateway) -> None:
    query = (
        "patient.identifier=|456789123&_elements=identifier,started&_include=ImagingStudy:patient"
    )
    bundle = _search(dimse_gateway, "web", query)
    assert ("_elements", "identifier,started") in parse_qsl(
        urlsplit(bundle["link"][0]["url"]).query
    )
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if entry["search"]["mode"] == "include":
            assert "meta" not in resource  # only the matches are cut
            continue
        ImagingStudyR4.model_validate(resource)
        # identifier and started as asked; status and subject are mandatory: kept.
        assert set(resource) == {
            "resourceType",
            "id",
            "meta",
            "identifier",
            "status",
            "subject",
            "started",
        }
        assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"


@pytest.mark.parametrize("site", SITES)
def test_read_the_patient_a_study_references(dimse_gateway: DimseGateway, site: str) -> None:
    bundle = _search(dimse_gateway, site, "patient.identifier=|456789123&_count=1")
    reference = bundle["entry"][0]["resource"]["subject"]["reference"]
    answer = requests.get(f"{_base(dimse_gateway, site)}/{reference}", timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    patient = answer.json()
    PatientR4.model_validate(patient)
    assert f"Patient/{patient['id']}" == reference
    assert patient["identifier"] == [{"system": CZ_SYSTEM, "value": "456789123"}]
    missing = requests.get(f"{_base(dimse_gateway, site)}/Patient/nobody-here", timeout=60)
    assert missing.status_code == 404
    OutcomeR4.model_validate(missing.json())


def test_a_search_matched_at_the_series_level_over_every_study(
    dimse_gateway: DimseGateway, pacs: Pacs
) -> None:
    """No patient: every study of the PACS is a candidate, and their series are read in UID
    lists longer than a client's QIDO value may be (the gateway batches its own queries)."""
    chest = "http://snomed.info/sct|816094009"
    found = {site: _search(dimse_gateway, site, f"bodysite={chest}&_count=100") for site in SITES}
    expected = {
        study["study_uid"]
        for study in pacs.manifest["core"]["studies"]
        if any(series.get("body_part") == "CHEST" for series in study["series"])
    }
    assert expected and expected <= _uids(found["web"])
    assert _uids(found["web"]) == _uids(found["get"])
