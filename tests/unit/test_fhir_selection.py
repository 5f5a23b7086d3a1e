"""FHIR R5 ImagingSelection (fhir/selection.py): ids, building."""

from __future__ import annotations

import re

import pytest
from fhir.resources.imagingselection import ImagingSelection
from pydicom.uid import generate_uid

from ncpeh_dicomweb.fhir.kos import KeyObjectSelection, ListedInstance, read_kos
from ncpeh_dicomweb.fhir.selection import (
    imaging_selection,
    is_created_selection_id,
    kos_selection_id,
    new_selection_id,
    parse_kos_selection_id,
    selection_from_kos,
)
from tests.unit.test_fhir_kos import DCM, KOS_UID, MR, SERIES_A, STUDY, Json, _three_series_kos

RETRIEVE = "https://gw.example/dicomweb/selections/x"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


# ---- ids -------------------------------------------------------------------------------------


def test_kos_ids_round_trip() -> None:
    resource_id = kos_selection_id(KOS_UID, 2, None)
    assert resource_id == f"{KOS_UID}-2"
    assert parse_kos_selection_id(resource_id) == (KOS_UID, 2)
    for _ in range(20):
        uid = generate_uid()
        for index in (1, 12):
            resource_id = kos_selection_id(uid, index, None)
            assert FHIR_ID.fullmatch(resource_id)
            if len(uid) + 1 + len(str(index)) <= 64:
                assert parse_kos_selection_id(resource_id) == (uid, index)
            else:
                assert parse_kos_selection_id(resource_id) is None


def test_kos_digest_ids() -> None:
    long_uid = "1." + "2" * 62  # 64 characters: no room for "-1"
    digest = kos_selection_id(long_uid, 1, None)
    assert re.fullmatch(r"k[0-9a-f]{48}", digest)
    assert digest != kos_selection_id(long_uid, 2, None)
    assert parse_kos_selection_id(digest) is None
    on_site = kos_selection_id(KOS_UID, 1, "site-b")
    assert re.fullmatch(r"k[0-9a-f]{48}", on_site)
    assert on_site == kos_selection_id(KOS_UID, 1, "site-b")  # stable
    assert on_site != kos_selection_id(KOS_UID, 1, "site-c")
    assert on_site != kos_selection_id(KOS_UID, 2, "site-b")
    with pytest.raises(ValueError, match="1-based"):
        kos_selection_id(KOS_UID, 0, None)


@pytest.mark.parametrize(
    "resource_id",
    ["1.2.3", "1.2.3-0", "1.2.3-01", "1.2.3--1", "-1", "1..2-1", "a.1-1", "1.2-3-4", "k" * 49, ""],
)
def test_not_kos_ids(resource_id: str) -> None:
    assert parse_kos_selection_id(resource_id) is None


def test_created_ids() -> None:
    created = new_selection_id()
    assert is_created_selection_id(created) and len(created) == 36
    assert parse_kos_selection_id(created) is None
    assert not is_created_selection_id(created.upper())
    assert not is_created_selection_id("12345678-1234-1234-8234-123456789012")  # version 1
    assert not is_created_selection_id(f"{KOS_UID}-1")
    assert not is_created_selection_id(kos_selection_id(KOS_UID, 1, "b"))


# ---- building --------------------------------------------------------------------------------


def _order_ok(resource: Json) -> bool:
    """Elements in R5's order, each "_name" right after its element."""
    order = ["resourceType", *ImagingSelection.elements_sequence()]
    names = [k.lstrip("_") for k in resource]
    return names == sorted(names, key=order.index)


def test_selection_from_kos_validates() -> None:
    kos = read_kos(_three_series_kos())[0]
    resource_id = kos_selection_id(kos.kos_instance_uid, 1, None)
    resource = selection_from_kos(
        kos,
        resource_id=resource_id,
        patient_id="456789123-.CZ-2DNRZP",
        study_resource_id=STUDY,
        retrieve_url=RETRIEVE,
    )
    ImagingSelection.model_validate(resource)
    assert _order_ok(resource)
    assert resource["id"] == resource_id
    assert resource["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{KOS_UID}"}]
    assert resource["status"] == "available"
    assert resource["subject"] == {"reference": "Patient/456789123-.CZ-2DNRZP"}
    assert resource["issued"] == "2024-03-14T10:15:00.25+01:00"
    assert resource["code"] == {
        "coding": [{"system": DCM, "code": "113000", "display": "Of Interest"}],
        "text": "Lesion, follow-up",
    }
    assert resource["studyUid"] == STUDY and resource["seriesUid"] == SERIES_A
    assert resource["derivedFrom"] == [{"reference": f"ImagingStudy/{STUDY}"}]
    assert resource["endpoint"] == [{"reference": "#listed-instances"}]
    (endpoint,) = resource["contained"]
    assert endpoint["id"] == "listed-instances" and endpoint["status"] == "active"
    assert endpoint["address"] == RETRIEVE
    assert endpoint["connectionType"][0]["coding"][0]["code"] == "dicom-wado-rs"
    assert endpoint["payload"][0]["mimeType"] == ['multipart/related; type="application/dicom"']
    assert resource["instance"] == [
        {
            "uid": "1.1.2",
            "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{MR}"},
            "subset": ["3", "1"],
        },
        {"uid": "1.1.1", "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{MR}"}},
    ]


def test_minimal_selection_validates() -> None:
    kos = KeyObjectSelection(
        kos_instance_uid=KOS_UID,
        study_uid=STUDY,
        series_uid=SERIES_A,
        instances=(ListedInstance("1.1.1", None),),
        title={"code": "113000"},
        description=None,
        issued=None,
        patient_id=None,
        issuer=None,
    )
    resource = selection_from_kos(
        kos, resource_id="k" + "0" * 48, patient_id=None, study_resource_id=None, retrieve_url="x"
    )
    ImagingSelection.model_validate(resource)
    for absent in ("subject", "issued", "derivedFrom", "meta"):
        assert absent not in resource
    assert resource["instance"] == [{"uid": "1.1.1"}]
    assert resource["code"] == {"coding": [{"code": "113000"}]}


def test_imaging_selection_extra_and_meta() -> None:
    extra = {
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"}],
        "focus": [{"reference": "Observation/1"}],
        "language": "en",
        "_language": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
        "seriesNumber": 3,
        "bodySite": {"concept": {"text": "chest"}},
        "category": [{"text": "teaching"}],
        "performer": [{"actor": {"reference": "Practitioner/1"}}],
    }
    resource = imaging_selection(
        resource_id="a",
        status="entered-in-error",
        code={"text": "key images"},
        study_uid=STUDY,
        series_uid=SERIES_A,
        instances=[ListedInstance("1.1.1", MR, (2,))],
        patient_id="p",
        study_resource_id=STUDY,
        retrieve_url=RETRIEVE,
        issued="2025-01-02T03:04:05Z",
        identifiers=[{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0"}],
        extra=extra,
        meta={"versionId": "1", "lastUpdated": "2025-01-02T03:04:05Z"},
    )
    ImagingSelection.model_validate(resource)
    assert _order_ok(resource)
    assert list(resource)[:4] == ["resourceType", "id", "meta", "language"]
    assert [i["value"] for i in resource["identifier"]] == ["urn:uuid:0", "urn:uuid:1"]
    assert resource["_language"] == extra["_language"]
    assert resource["instance"][0]["subset"] == ["2"]
    resource["focus"][0]["reference"] = "changed"
    assert extra["focus"][0]["reference"] == "Observation/1"  # copied, not shared


def test_imaging_selection_refuses() -> None:
    args: Json = {
        "resource_id": "a",
        "status": "available",
        "code": {"text": "x"},
        "study_uid": STUDY,
        "series_uid": SERIES_A,
        "instances": [ListedInstance("1.1.1", None)],
        "patient_id": None,
        "study_resource_id": None,
        "retrieve_url": RETRIEVE,
        "issued": None,
    }
    imaging_selection(**args)
    with pytest.raises(ValueError, match="instances"):
        imaging_selection(**{**args, "instances": []})
    for key in ("id", "status", "instance", "contained", "bogus", "_issued"):
        with pytest.raises(ValueError, match="extra"):
            imaging_selection(**args, extra={key: "x"})
