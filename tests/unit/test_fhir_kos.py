"""DICOM Key Object Selection documents read for FHIR R5 ImagingSelection (fhir/kos.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom import Dataset

from ncpeh_dicomweb.fhir.kos import (
    KOS_SOP_CLASS,
    REJECTION_TITLES,
    ListedInstance,
    is_rejection_note,
    read_kos,
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
