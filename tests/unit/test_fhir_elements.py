"""``_elements`` subsetting (FHIR R4 search.html#elements)."""

from __future__ import annotations

from fhir.resources.R4B.imagingstudy import ImagingStudy

from ncpeh_dicomweb.fhir.elements import SUBSETTED, subset

_STUDY = {
    "resourceType": "ImagingStudy",
    "id": "1.2.3",
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
    "status": "available",
    "subject": {"reference": "Patient/p1"},
    "started": "2024-01-02T10:00:00+01:00",
    "description": "CT chest",
    "series": [{"uid": "1.2.3.4", "modality": {"code": "CT"}}],
}


def test_keeps_listed_and_mandatory_elements_tagged_subsetted() -> None:
    out = subset(_STUDY, ["started"], mandatory=["status", "subject"])
    assert list(out) == ["resourceType", "id", "meta", "status", "subject", "started"]
    assert out["meta"]["tag"] == [dict(SUBSETTED)]
    ImagingStudy.model_validate(out)


def test_no_elements_is_the_whole_resource_untagged() -> None:
    assert subset(_STUDY, []) == _STUDY


def test_an_existing_tag_is_kept_and_subsetted_not_doubled() -> None:
    tagged = {**_STUDY, "meta": {"tag": [{"system": "x", "code": "y"}, dict(SUBSETTED)]}}
    out = subset(tagged, ["description"])
    assert out["meta"]["tag"] == [{"system": "x", "code": "y"}, dict(SUBSETTED)]
    assert "series" not in out and out["description"] == "CT chest"
    assert "meta" not in _STUDY  # the input is not changed


def test_unknown_elements_are_simply_absent() -> None:
    out = subset(_STUDY, ["nonsense"], mandatory=["status"])
    assert set(out) == {"resourceType", "id", "meta", "status"}
