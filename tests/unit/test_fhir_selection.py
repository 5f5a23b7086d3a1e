"""FHIR R5 ImagingSelection (fhir/selection.py): KOS reading, ids, building, POST validation."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from fhir.resources.imagingselection import ImagingSelection
from pydicom import Dataset
from pydicom.uid import generate_uid

from ncpeh_dicomweb.fhir.selection import (
    KOS_SOP_CLASS,
    MAX_INSTANCES,
    REJECTION_TITLES,
    KeyObjectSelection,
    ListedInstance,
    PostedSelection,
    SelectionInvalid,
    imaging_selection,
    is_created_selection_id,
    is_rejection_note,
    kos_selection_id,
    new_selection_id,
    parse_kos_selection_id,
    parse_posted_selection,
    read_kos,
    selection_from_kos,
)

Json = dict[str, Any]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.840.113619.2.1"
OTHER_STUDY = "1.2.840.113619.2.99"
SERIES_A = "1.2.840.113619.2.1.1"
SERIES_B = "1.2.840.113619.2.1.2"
KOS_UID = "1.2.840.113619.2.1.9.1"
RETRIEVE = "https://gw.example/dicomweb/selections/x"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


# ---- a KOS built with pydicom ------------------------------------------------------------------


def _code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ref(uid: str, sop_class: str = MR, frames: list[int] | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    if frames:
        item.ReferencedFrameNumber = frames
    return item


def _content_item(kind: str, *refs: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = kind
    item.ReferencedSOPSequence = list(refs)
    return item


def _evidence(study: str, series: dict[str, list[Dataset]]) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study
    item.ReferencedSeriesSequence = []
    for series_uid, refs in series.items():
        entry = Dataset()
        entry.SeriesInstanceUID = series_uid
        entry.ReferencedSOPSequence = refs
        item.ReferencedSeriesSequence.append(entry)
    return item


def _kos(
    *,
    evidence: list[Dataset],
    content: list[Dataset] | None = None,
    title: tuple[str, str, str] | None = ("113000", "Of Interest", "DCM"),
    description: str | None = None,
    offset: str | None = "+0100",
) -> Json:
    ds = Dataset()
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = KOS_UID
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = "1.2.840.113619.2.1.9"  # the KOS's own series
    ds.Modality = "KO"
    ds.PatientID = "456789123"
    ds.IssuerOfPatientID = "CZ-NRZP"
    ds.ContentDate = "20240314"
    ds.ContentTime = "101500.25"
    if offset is not None:
        ds.TimezoneOffsetFromUTC = offset
    if title is not None:
        ds.ConceptNameCodeSequence = [_code(title[0], title[1], title[2])]
    ds.CurrentRequestedProcedureEvidenceSequence = evidence
    items = list(content or [])
    if description is not None:
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.ConceptNameCodeSequence = [_code("113012", "Key Object Description")]
        text.TextValue = description
        items.append(text)
    if items:
        ds.ContentSequence = items
    return ds.to_json_dict()


def _three_series_kos() -> Json:
    """Two series of its own study (A with frames, B), one series of another study."""
    return _kos(
        evidence=[
            _evidence(STUDY, {SERIES_A: [_ref("1.1.1"), _ref("1.1.2")], SERIES_B: [_ref("1.2.1")]}),
            _evidence(OTHER_STUDY, {"1.9.9": [_ref("1.9.9.1")]}),
        ],
        content=[
            _content_item("IMAGE", _ref("1.2.1", CT)),
            _content_item("IMAGE", _ref("1.1.2", frames=[3, 1])),
            _content_item("IMAGE", _ref("1.1.1")),
            _content_item("IMAGE", _ref("1.9.9.1")),
        ],
        description="Lesion, follow-up",
    )


def test_read_kos_series_frames_and_order() -> None:
    found = read_kos(_three_series_kos())
    assert [k.series_uid for k in found] == [SERIES_A, SERIES_B]  # evidence order
    a, b = found
    assert a.instances == (
        ListedInstance("1.1.2", MR, (3, 1)),  # content order, frames as the document lists them
        ListedInstance("1.1.1", MR, ()),
    )
    assert b.instances == (ListedInstance("1.2.1", MR, ()),)  # the evidence's class first
    for kos in found:
        assert kos.kos_instance_uid == KOS_UID
        assert kos.study_uid == STUDY
        assert kos.title == {"system": DCM, "code": "113000", "display": "Of Interest"}
        assert kos.description == "Lesion, follow-up"
        assert kos.issued == "2024-03-14T10:15:00.25+01:00"
        assert (kos.patient_id, kos.issuer) == ("456789123", "CZ-NRZP")


def test_other_study_evidence_ignored() -> None:
    only_other = _kos(evidence=[_evidence(OTHER_STUDY, {"1.9.9": [_ref("1.9.9.1")]})])
    assert read_kos(only_other) == []


def test_no_content_sequence_evidence_order() -> None:
    kos = _kos(evidence=[_evidence(STUDY, {SERIES_A: [_ref("1.1.2"), _ref("1.1.1")]})])
    assert "0040A730" not in kos
    (found,) = read_kos(kos)
    assert [i.sop_instance_uid for i in found.instances] == ["1.1.2", "1.1.1"]
    assert all(i.frames == () for i in found.instances)
    assert found.description is None


def test_instances_missing_from_content_come_after() -> None:
    kos = _kos(
        evidence=[_evidence(STUDY, {SERIES_A: [_ref("1.1.1"), _ref("1.1.2"), _ref("1.1.3")]})],
        content=[_content_item("IMAGE", _ref("1.1.3")), _content_item("IMAGE", _ref("7.7"))],
    )
    (found,) = read_kos(kos)
    # 7.7 is in no evidence (no series to put it in): left out.
    assert [i.sop_instance_uid for i in found.instances] == ["1.1.3", "1.1.1", "1.1.2"]


def test_frames_merged_whole_wins() -> None:
    kos = _kos(
        evidence=[_evidence(STUDY, {SERIES_A: [_ref("1.1.1"), _ref("1.1.2")]})],
        content=[
            _content_item("IMAGE", _ref("1.1.1", frames=[2])),
            _content_item("IMAGE", _ref("1.1.1", frames=[5, 2])),
            _content_item("IMAGE", _ref("1.1.2", frames=[4])),
            _content_item("COMPOSITE", _ref("1.1.2")),  # the whole instance
        ],
    )
    (found,) = read_kos(kos)
    assert found.instances == (ListedInstance("1.1.1", MR, (2, 5)), ListedInstance("1.1.2", MR))


def _dicom_json_kos(**content_ref: Any) -> Json:
    """A hand-written DICOM JSON KOS, for shapes pydicom would not write."""
    ref = {
        "00081150": {"vr": "UI", "Value": [MR]},
        "00081155": {"vr": "UI", "Value": ["1.1.1"]},
        **content_ref,
    }
    return {
        "00080016": {"vr": "UI", "Value": [KOS_SOP_CLASS]},
        "00080018": {"vr": "UI", "Value": [KOS_UID]},
        "0020000D": {"vr": "UI", "Value": [STUDY]},
        "0040A043": {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": ["113000"]},
                    "00080102": {"vr": "SH", "Value": ["DCM"]},
                }
            ],
        },
        "0040A375": {
            "vr": "SQ",
            "Value": [
                {
                    "0020000D": {"vr": "UI", "Value": [STUDY]},
                    "00081115": {
                        "vr": "SQ",
                        "Value": [
                            {
                                "0020000E": {"vr": "UI", "Value": [SERIES_A]},
                                "00081199": {"vr": "SQ", "Value": [ref]},
                            }
                        ],
                    },
                }
            ],
        },
        "0040A730": {
            "vr": "SQ",
            "Value": [
                {
                    "0040A040": {"vr": "CS", "Value": ["IMAGE"]},
                    "00081199": {"vr": "SQ", "Value": [ref]},
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (["2", " 4 "], (2, 4)),  # IS as strings (some PACSs)
        ([2.0, 0, -1, "x", True, 2**31], (2,)),  # bad values dropped
        ([0, "x"], ()),  # none left: the whole instance
    ],
)
def test_frame_number_shapes(frames: list[Any], expected: tuple[int, ...]) -> None:
    kos = _dicom_json_kos(**{"00081160": {"vr": "IS", "Value": frames}})
    (found,) = read_kos(kos)
    assert found.instances[0].frames == expected
    assert found.description is None and found.issued is None and found.patient_id is None


def test_title_without_meaning() -> None:
    (found,) = read_kos(_dicom_json_kos())
    assert found.title == {"system": DCM, "code": "113000"}


@pytest.mark.parametrize(
    ("offset", "time", "expected"),
    [
        ("+0100", "101500.25", "2024-03-14T10:15:00.25+01:00"),
        ("-0500", "0930", "2024-03-14T09:30:00-05:00"),
        (None, "101500", None),  # no zone: no instant
        ("+0100", None, None),  # no time: no instant
        ("+2500", "101500", None),  # not a zone
    ],
)
def test_issued(offset: str | None, time: str | None, expected: str | None) -> None:
    kos = _dicom_json_kos()
    kos["00080023"] = {"vr": "DA", "Value": ["20240314"]}
    if time is not None:
        kos["00080033"] = {"vr": "TM", "Value": [time]}
    if offset is not None:
        kos["00080201"] = {"vr": "SH", "Value": [offset]}
    assert read_kos(kos)[0].issued == expected


def _without(kos: Json, *tags: str) -> Json:
    return {k: v for k, v in kos.items() if k not in tags}


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        _without(_dicom_json_kos(), "00080016"),
        {**_dicom_json_kos(), "00080016": {"vr": "UI", "Value": [MR]}},  # not a KOS
        _without(_dicom_json_kos(), "00080018"),  # no SOP Instance UID
        _without(_dicom_json_kos(), "0020000D"),  # no Study Instance UID
        _without(_dicom_json_kos(), "0040A043"),  # no document title
        {**_dicom_json_kos(), "00080018": {"vr": "UI", "Value": ["not a uid"]}},
        {**_dicom_json_kos(), "0040A375": {"vr": "SQ"}},  # no evidence
        {**_dicom_json_kos(), "0040A375": "garbage"},
        {**_dicom_json_kos(), "0040A375": {"vr": "SQ", "Value": [1, None, "x", {}]}},
        {**_dicom_json_kos(), "0040A043": {"vr": "SQ", "Value": [{"00080104": "x"}]}},
        _dicom_json_kos(**{"00081155": {"vr": "UI", "Value": ["1..1"]}}),  # bad instance UID
        _dicom_json_kos(**{"00081155": {"vr": "UI", "Value": [None]}}),
        _dicom_json_kos(**{"00081155": {"vr": "UI"}}),
    ],
)
def test_malformed_gives_nothing(metadata: Json) -> None:
    assert read_kos(metadata) == []
    assert is_rejection_note(metadata) is False


def test_odd_input_never_raises() -> None:
    odd: list[Any] = [None, [], "x", 1, {"0040A730": {"Value": "x"}}]
    kos = _dicom_json_kos()
    kos["0040A730"] = {"vr": "SQ", "Value": [None, 1, {"0040A040": {"Value": [1]}}]}
    odd.append(kos)
    for metadata in odd:
        assert isinstance(read_kos(metadata), list)
        is_rejection_note(metadata)


def test_series_without_valid_instance_dropped() -> None:
    kos = _kos(
        evidence=[_evidence(STUDY, {SERIES_A: [_ref("1.1.1")], SERIES_B: []})],
    )
    assert [k.series_uid for k in read_kos(kos)] == [SERIES_A]


@pytest.mark.parametrize("code", sorted(REJECTION_TITLES))
def test_rejection_notes(code: str) -> None:
    note = _kos(
        evidence=[_evidence(STUDY, {SERIES_A: [_ref("1.1.1")]})],
        title=(code, "Rejected", "DCM"),
    )
    assert is_rejection_note(note)
    assert len(read_kos(note)) == 1  # read like any KOS: the caller decides


@pytest.mark.parametrize(
    "title", [("113000", "Of Interest", "DCM"), ("113001", "Rejected", "99LOCAL")]
)
def test_not_rejection_notes(title: tuple[str, str, str]) -> None:
    kos = _kos(evidence=[_evidence(STUDY, {SERIES_A: [_ref("1.1.1")]})], title=title)
    assert not is_rejection_note(kos)


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


# ---- POST ------------------------------------------------------------------------------------


def _posted(**changes: Any) -> Json:
    body: Json = {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": DCM, "code": "113000", "display": "Of Interest"}]},
        "studyUid": STUDY,
        "seriesUid": SERIES_A,
        "instance": [
            {
                "uid": "1.1.1",
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{MR}"},
                "subset": ["1", "3", "1"],
            },
            {"uid": "1.1.2"},
        ],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def _parse(body: Json) -> PostedSelection:
    return parse_posted_selection(orjson.dumps(body))


def test_post_minimal() -> None:
    posted = _parse(_posted())
    assert posted.study_uid == STUDY and posted.series_uid == SERIES_A
    assert posted.instances == (
        ListedInstance("1.1.1", MR, (1, 3)),
        ListedInstance("1.1.2", None, ()),
    )
    assert posted.status == "available"
    assert posted.code == _posted()["code"]
    assert posted.subject_reference is None and posted.derived_from == ()
    assert posted.extra == {}


def test_post_full_round_trip() -> None:
    extras: Json = {
        "implicitRules": "http://example.org/rules",
        "language": "cs",
        "extension": [{"url": "http://example.org/e", "valueString": "v"}],
        "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": False}],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"}],
        "performer": [{"actor": {"reference": "Practitioner/1"}}],
        "basedOn": [{"reference": "ServiceRequest/1"}],
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}],
        "seriesNumber": 0,
        "frameOfReferenceUid": "1.2.3",
        "bodySite": {"concept": {"text": "chest"}},
        "focus": [{"reference": "Observation/1"}],
        "_status": {"extension": [{"url": "http://example.org/s", "valueString": "s"}]},
    }
    owned: Json = {
        "id": "client-id",
        "meta": {"versionId": "9"},
        "text": {"status": "generated", "div": "<div>x</div>"},
        "contained": [{"resourceType": "Endpoint"}],
        "endpoint": [{"reference": "Endpoint/x"}],
        "issued": "2020-01-01T00:00:00Z",
    }
    body = _posted(
        **extras,
        **owned,
        subject={"reference": "Patient/p1", "display": "x"},
        derivedFrom=[
            {"reference": f"ImagingStudy/{STUDY}"},
            {"reference": f"ImagingStudy/{STUDY}"},
        ],
        instance=[
            {
                "uid": "1.1.1",
                "number": 4,
                "subset": ["2"],
                "imageRegion2D": [{"regionType": "point", "coordinate": [1.0, 2.0]}],
                "extension": [{"url": "http://example.org/i", "valueString": "i"}],
            }
        ],
        status="unknown",
    )
    posted = _parse(body)
    assert posted.extra == extras  # server-owned elements dropped, the rest as given
    assert posted.subject_reference == "Patient/p1"
    assert posted.derived_from == (f"ImagingStudy/{STUDY}",)
    assert posted.instances == (ListedInstance("1.1.1", None, (2,)),)
    assert posted.status == "unknown"
    resource = imaging_selection(
        resource_id=new_selection_id(),
        status=posted.status,
        code=posted.code,
        study_uid=posted.study_uid,
        series_uid=posted.series_uid,
        instances=posted.instances,
        patient_id="p1",
        study_resource_id=STUDY,
        retrieve_url=RETRIEVE,
        issued="2025-01-02T03:04:05.123+01:00",
        extra=posted.extra,
        meta={"lastUpdated": "2025-01-02T03:04:05.123+01:00"},
    )
    ImagingSelection.model_validate(resource)
    assert _order_ok(resource)
    assert resource["seriesNumber"] == 0 and resource["_status"] == extras["_status"]


def test_post_code_text_only() -> None:
    assert _parse(_posted(code={"text": "key images"})).code == {"text": "key images"}


def test_post_many_instances() -> None:
    instances = [{"uid": f"1.1.{n}"} for n in range(1, MAX_INSTANCES + 1)]
    assert len(_parse(_posted(instance=instances)).instances) == MAX_INSTANCES
    with pytest.raises(SelectionInvalid) as info:
        _parse(_posted(instance=[*instances, {"uid": "1.2"}]))
    assert info.value.status == 422
    assert info.value.expression == "ImagingSelection.instance"
    assert str(MAX_INSTANCES) in info.value.message


INSTANCE_0 = "ImagingSelection.instance[0]"
INSTANCE_1 = "ImagingSelection.instance[1]"


@pytest.mark.parametrize(
    ("body", "status", "expression"),
    [
        # Not JSON, not an ImagingSelection, wrong structure: 400.
        (b"{", 400, "ImagingSelection"),
        (b"", 400, "ImagingSelection"),
        (b"[]", 400, "ImagingSelection"),
        (b'"x"', 400, "ImagingSelection"),
        (_posted(resourceType="ImagingStudy"), 400, "ImagingSelection.resourceType"),
        (_posted(resourceType=...), 400, "ImagingSelection.resourceType"),
        (_posted(started="2020"), 400, "ImagingSelection.started"),  # not an R5 element
        (_posted(_code={}), 400, "ImagingSelection._code"),
        (_posted(status=None), 400, "ImagingSelection.status"),
        (_posted(status=1), 400, "ImagingSelection.status"),
        (_posted(status=""), 400, "ImagingSelection.status"),
        (_posted(code="113000"), 400, "ImagingSelection.code"),
        (_posted(code={"coding": {"code": "x"}}), 400, "ImagingSelection.code.coding"),
        (_posted(code={"coding": ["x"]}), 400, "ImagingSelection.code.coding[0]"),
        (_posted(code={"text": ""}), 400, "ImagingSelection.code.text"),
        (_posted(code={"coding": [{"code": None}]}), 400, "ImagingSelection.code.coding[0].code"),
        (_posted(studyUid=123), 400, "ImagingSelection.studyUid"),
        (_posted(instance={"uid": "1.1"}), 400, "ImagingSelection.instance"),
        (_posted(instance=["1.1"]), 400, INSTANCE_0),
        (_posted(instance=[{"uid": "1.1", "frames": [1]}]), 400, INSTANCE_0),
        (_posted(instance=[{"uid": 1}]), 400, f"{INSTANCE_0}.uid"),
        (_posted(instance=[{"uid": "1.1", "subset": "1"}]), 400, f"{INSTANCE_0}.subset"),
        (_posted(instance=[{"uid": "1.1", "subset": [1]}]), 400, f"{INSTANCE_0}.subset[0]"),
        (_posted(instance=[{"uid": "1.1", "sopClass": MR}]), 400, f"{INSTANCE_0}.sopClass"),
        (_posted(subject="Patient/p"), 400, "ImagingSelection.subject"),
        (_posted(subject={"reference": 1}), 400, "ImagingSelection.subject.reference"),
        (_posted(derivedFrom={"reference": "x"}), 400, "ImagingSelection.derivedFrom"),
        (_posted(derivedFrom=["x"]), 400, "ImagingSelection.derivedFrom[0]"),
        (_posted(identifier={"value": "x"}), 400, "ImagingSelection.identifier"),
        (_posted(identifier=["x"]), 400, "ImagingSelection.identifier[0]"),
        (_posted(identifier=[{"value": ""}]), 400, "ImagingSelection.identifier[0].value"),
        (_posted(identifier=[{"value": None}]), 400, "ImagingSelection.identifier[0].value"),
        (_posted(identifier=[{}]), 400, "ImagingSelection.identifier[0]"),
        (_posted(bodySite=[]), 400, "ImagingSelection.bodySite"),
        (_posted(seriesNumber=-1), 400, "ImagingSelection.seriesNumber"),
        (_posted(seriesNumber="1"), 400, "ImagingSelection.seriesNumber"),
        (_posted(seriesNumber=True), 400, "ImagingSelection.seriesNumber"),
        (_posted(language=["en"]), 400, "ImagingSelection.language"),
        (_posted(frameOfReferenceUid=5), 400, "ImagingSelection.frameOfReferenceUid"),
        # Well-formed, but not a selection the gateway accepts: 422.
        (_posted(status=...), 422, "ImagingSelection.status"),
        (_posted(status="active"), 422, "ImagingSelection.status"),
        (_posted(code=...), 422, "ImagingSelection.code"),
        (_posted(code={"coding": []}), 400, "ImagingSelection.code.coding"),  # empty array
        (_posted(code={"id": "c"}), 422, "ImagingSelection.code"),  # neither coding nor text
        (_posted(studyUid=...), 422, "ImagingSelection.studyUid"),
        (_posted(seriesUid=...), 422, "ImagingSelection.seriesUid"),
        (_posted(studyUid="1.02.3"), 422, "ImagingSelection.studyUid"),  # leading zero
        (_posted(seriesUid="1.2.x"), 422, "ImagingSelection.seriesUid"),
        (_posted(seriesUid="1." + "2" * 63), 422, "ImagingSelection.seriesUid"),  # 65 chars
        (_posted(instance=...), 422, "ImagingSelection.instance"),
        (_posted(instance=[]), 422, "ImagingSelection.instance"),
        (_posted(instance=[{"sopClass": {"code": "x"}}]), 422, f"{INSTANCE_0}.uid"),
        (_posted(instance=[{"uid": "1.1"}, {"uid": "1.1"}]), 422, f"{INSTANCE_1}.uid"),
        (_posted(instance=[{"uid": "1.01"}]), 422, f"{INSTANCE_0}.uid"),
        (_posted(instance=[{"uid": "1.1", "subset": ["0"]}]), 422, f"{INSTANCE_0}.subset[0]"),
        (_posted(instance=[{"uid": "1.1", "subset": ["1", "a"]}]), 422, f"{INSTANCE_0}.subset[1]"),
        (
            _posted(instance=[{"uid": "1.1", "sopClass": {"code": f"urn:oid:{MR}"}}]),
            422,
            f"{INSTANCE_0}.sopClass.system",
        ),
        (
            _posted(
                instance=[{"uid": "1.1", "sopClass": {"system": "urn:ietf:rfc:3986", "code": MR}}]
            ),
            422,
            f"{INSTANCE_0}.sopClass.code",
        ),
        (
            _posted(
                instance=[
                    {"uid": "1.1", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:x"}}
                ]
            ),
            422,
            f"{INSTANCE_0}.sopClass.code",
        ),
        (
            _posted(instance=[{"uid": "1.1", "modifierExtension": [{"url": "http://x"}]}]),
            422,
            f"{INSTANCE_0}.modifierExtension",
        ),
        (_posted(subject={"reference": "Group/g"}), 422, "ImagingSelection.subject.reference"),
        (_posted(subject={"display": "x"}), 422, "ImagingSelection.subject.reference"),
        (
            _posted(subject={"reference": "http://x/Patient/p"}),
            422,
            "ImagingSelection.subject.reference",
        ),
        (
            _posted(derivedFrom=[{"reference": "DocumentReference/d"}]),
            422,
            "ImagingSelection.derivedFrom[0].reference",
        ),
        (_posted(frameOfReferenceUid="x"), 422, "ImagingSelection.frameOfReferenceUid"),
    ],
)
def test_post_errors(body: bytes | Json, status: int, expression: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(SelectionInvalid) as info:
        parse_posted_selection(raw)
    assert (info.value.status, info.value.expression) == (status, expression)
    assert info.value.message and isinstance(info.value, ValueError)


def test_post_deep_nesting_refused() -> None:
    deep: Any = {"url": "http://x", "valueString": "v"}
    for _ in range(40):
        deep = {"url": "http://x", "extension": [deep]}
    with pytest.raises(SelectionInvalid) as info:
        _parse(_posted(extension=[deep]))
    assert info.value.status == 400
