"""QIDO-RS query parsing (PS3.18 8.3.4, PS3.4 C.2.2.2), its attribute tables and its encoding."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from ncpeh_dicomweb.dicomweb.attributes import (
    INSTANCE_MATCHING_KEYS,
    INSTANCE_RETURN_TAGS,
    SERIES_MATCHING_KEYS,
    SERIES_RETURN_TAGS,
    STUDY_MATCHING_KEYS,
    STUDY_RETURN_TAGS,
    Level,
    level_of,
    matching_keys,
    name_of,
    required_return_tags,
    vr_of,
)
from ncpeh_dicomweb.dicomweb.query import (
    MAX_KEYS,
    MAX_OFFSET,
    MAX_PARAMS,
    MAX_VALUE_LENGTH,
    MatchKey,
    MatchKind,
    QidoQuery,
    encode_query,
    parse_qido,
    to_params,
)
from ncpeh_dicomweb.errors import InvalidQuery, sendable

STUDY_INSTANCE_UID = 0x0020000D
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
MODALITY = 0x00080060
MODALITIES_IN_STUDY = 0x00080061
REQUEST_ATTRIBUTES_SEQUENCE = 0x00400275
SCHEDULED_PROCEDURE_STEP_ID = 0x00400009

Params = list[tuple[str, str]]


def parse(params: Params, level: Level = Level.STUDY, **kwargs: int) -> QidoQuery:
    return parse_qido(params, level, **kwargs)


def only_key(params: Params, level: Level = Level.STUDY) -> MatchKey:
    query = parse(params, level)
    assert len(query.keys) == 1
    return query.keys[0]


def rejected(params: Params, level: Level = Level.STUDY, **kwargs: int) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as caught:
        parse_qido(params, level, **kwargs)
    return caught.value


# --- attribute names and paths --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path", "canonical"),
    [
        ("PatientID", (PATIENT_ID,), "PatientID"),
        ("00100020", (PATIENT_ID,), "PatientID"),
        ("0020000d", (STUDY_INSTANCE_UID,), "StudyInstanceUID"),
        ("0020000D", (STUDY_INSTANCE_UID,), "StudyInstanceUID"),
        (
            "RequestAttributesSequence.ScheduledProcedureStepID",
            (REQUEST_ATTRIBUTES_SEQUENCE, SCHEDULED_PROCEDURE_STEP_ID),
            "RequestAttributesSequence.ScheduledProcedureStepID",
        ),
        (
            "00400275.00400009",
            (REQUEST_ATTRIBUTES_SEQUENCE, SCHEDULED_PROCEDURE_STEP_ID),
            "RequestAttributesSequence.ScheduledProcedureStepID",
        ),
        (
            "00400275.ScheduledProcedureStepID",
            (REQUEST_ATTRIBUTES_SEQUENCE, SCHEDULED_PROCEDURE_STEP_ID),
            "RequestAttributesSequence.ScheduledProcedureStepID",
        ),
        ("00090010", (0x00090010,), "00090010"),
    ],
)
def test_key_names(name: str, path: tuple[int, ...], canonical: str) -> None:
    key = only_key([(name, "")])
    assert key.path == path
    assert key.name == canonical


def test_private_data_element_needs_and_has_its_creator() -> None:
    query = parse([("00091001", "v*"), ("00090010", "ACME 1.0")])
    assert [k.name for k in query.keys] == ["00090010", "00091001"]
    assert query.keys[1].vr == "UN"
    assert query.keys[1].kind is MatchKind.WILDCARD  # private VR unknown: passed on as text
    assert query.keys[0].vr == "LO"


def test_sequence_path_with_uid_list() -> None:
    key = only_key([("ReferencedStudySequence.ReferencedSOPClassUID", "1.2.3,1.2.4")])
    assert key.vr == "UI"
    assert key.kind is MatchKind.UID_LIST
    assert key.value == "1.2.3\\1.2.4"
    assert key.level is Level.STUDY


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("PatientID", Level.STUDY),
        ("StudyDate", Level.STUDY),
        ("SeriesInstanceUID", Level.SERIES),
        ("RequestAttributesSequence.ScheduledProcedureStepID", Level.SERIES),
        ("SOPInstanceUID", Level.INSTANCE),
        ("TimezoneOffsetFromUTC", None),
        ("00091001", None),
    ],
)
def test_key_level(name: str, level: Level | None) -> None:
    params = [(name, "")] + ([("00090010", "X")] if name.startswith("0009") else [])
    key = next(k for k in parse(params).keys if k.name == name)
    assert key.level is level


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("PatientId", "unknown"),  # keywords are case-sensitive
        ("patientid", "unknown"),
        ("NoSuchKeyword", "unknown"),
        ("0010002G", "unknown"),
        ("001000200", "unknown"),
        ("00081234", "unknown"),  # not in the data dictionary
        ("00020010", "unknown"),  # file meta information
        ("FFFEE000", "unknown"),  # item
        ("00090100", "unknown"),  # private but neither creator nor data element
        ("00011000", "unknown"),  # odd group below 0009
        ("PatientID.PatientName", "not a sequence"),
        ("RequestAttributesSequence", "is a sequence"),
        ("RequestAttributesSequence.", "unknown"),
        (".PatientID", "unknown"),
        ("RequestAttributesSequence..ScheduledProcedureStepID", "unknown"),
        ("ContentSequence." * 8 + "CodeValue", "at most"),
        ("foo", "unknown query parameter"),
        ("callback", "unknown query parameter"),
        ("include", "unknown query parameter"),
        ("limt", "unknown query parameter"),
        ("Patient-ID", "unknown"),
    ],
)
def test_bad_keys_are_rejected(name: str, why: str) -> None:
    error = rejected([(name, "X")])
    assert error.status == 400
    assert error.detail["parameter"] == name
    assert error.detail["value"] == "X"
    assert why in error.message
    assert repr(name) in error.message


def test_private_data_element_without_creator_is_rejected() -> None:
    assert rejected([("00091001", "v")]).detail["parameter"] == "00091001"
    assert rejected([("includefield", "00091001")]).detail["parameter"] == "includefield"


# --- universal matching ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["PatientName", "StudyInstanceUID", "StudyDate", "SeriesNumber"])
@pytest.mark.parametrize("value", ["", "*"])
def test_universal(name: str, value: str) -> None:
    key = only_key([(name, value)])
    assert key.kind is MatchKind.UNIVERSAL
    assert key.value == ""


# --- UIDs (PS3.4 C.2.2.2.2) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "kind", "value"),
    [
        ([("StudyInstanceUID", "1.2.3")], MatchKind.SINGLE, "1.2.3"),
        ([("StudyInstanceUID", "1.2.3,1.2.4")], MatchKind.UID_LIST, "1.2.3\\1.2.4"),
        ([("StudyInstanceUID", "1.2.3\\1.2.4")], MatchKind.UID_LIST, "1.2.3\\1.2.4"),
        (
            [("StudyInstanceUID", "1.2.3"), ("StudyInstanceUID", "1.2.4,1.2.5")],
            MatchKind.UID_LIST,
            "1.2.3\\1.2.4\\1.2.5",
        ),
        (
            [("StudyInstanceUID", "1.2.3"), ("0020000D", "1.2.4")],
            MatchKind.UID_LIST,
            "1.2.3\\1.2.4",
        ),
        ([("StudyInstanceUID", "1.2.3"), ("StudyInstanceUID", "1.2.3")], MatchKind.SINGLE, "1.2.3"),
        ([("StudyInstanceUID", "1.2.3,1.2.4,1.2.3")], MatchKind.UID_LIST, "1.2.3\\1.2.4"),
        ([("StudyInstanceUID", "1.02.3")], MatchKind.SINGLE, "1.02.3"),  # as uids.py: tolerated
        ([("StudyInstanceUID", "1." + "2" * 62)], MatchKind.SINGLE, "1." + "2" * 62),
    ],
)
def test_uids(params: Params, kind: MatchKind, value: str) -> None:
    key = only_key(params)
    assert (key.path, key.vr, key.kind, key.value) == ((STUDY_INSTANCE_UID,), "UI", kind, value)


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ([("StudyInstanceUID", "1.2.a")], "not a valid DICOM UID"),
        ([("StudyInstanceUID", "1..2")], "not a valid DICOM UID"),
        ([("StudyInstanceUID", ".1.2")], "not a valid DICOM UID"),
        ([("StudyInstanceUID", "1.2.")], "not a valid DICOM UID"),
        ([("StudyInstanceUID", "1.2 ")], "not a valid DICOM UID"),
        ([("StudyInstanceUID", "1." + "2" * 63)], "at most 64 characters"),
        ([("StudyInstanceUID", "1.2.3,")], "not a valid DICOM UID"),
        ([("StudyInstanceUID", "1.2.3,,1.2.4")], "not a valid DICOM UID"),
        ([("StudyInstanceUID", "1.2.3;1.2.4")], "not a valid DICOM UID"),
        ([("StudyInstanceUID", "1.2.*")], "wildcards"),
        ([("StudyInstanceUID", "1.2.?")], "wildcards"),
        ([("StudyInstanceUID", "1.2.3,*")], "wildcards"),
        ([("StudyInstanceUID", "\u0661.\u0662")], "not a valid DICOM UID"),  # non-ASCII digits
        ([("StudyInstanceUID", ""), ("StudyInstanceUID", "1.2")], "more than once"),
        ([("StudyInstanceUID", "1.2"), ("StudyInstanceUID", "")], "more than once"),
    ],
)
def test_bad_uids(params: Params, why: str) -> None:
    error = rejected(params)
    assert error.detail["parameter"] == "StudyInstanceUID"
    assert why in error.message


# --- dates, times, date-times (PS3.4 C.2.2.2.5) ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("StudyDate", "20230101", MatchKind.SINGLE),
        ("StudyDate", "20240229", MatchKind.SINGLE),
        ("StudyDate", "20230101-20231231", MatchKind.RANGE),
        ("StudyDate", "20230101-20230101", MatchKind.RANGE),
        ("StudyDate", "20230101-", MatchKind.RANGE),
        ("StudyDate", "-20231231", MatchKind.RANGE),
        ("StudyTime", "10", MatchKind.SINGLE),
        ("StudyTime", "1030", MatchKind.SINGLE),
        ("StudyTime", "103059", MatchKind.SINGLE),
        ("StudyTime", "103059.1", MatchKind.SINGLE),
        ("StudyTime", "235959.999999", MatchKind.SINGLE),
        ("StudyTime", "235960", MatchKind.SINGLE),  # leap second
        ("StudyTime", "080000-120000", MatchKind.RANGE),
        ("StudyTime", "10-1030", MatchKind.RANGE),
        ("StudyTime", "1030-10", MatchKind.RANGE),  # hour 10 lasts until 10:59:59
        ("StudyTime", "08-", MatchKind.RANGE),
        ("StudyTime", "-1200", MatchKind.RANGE),
        ("AcquisitionDateTime", "2023", MatchKind.SINGLE),
        ("AcquisitionDateTime", "202302", MatchKind.SINGLE),
        ("AcquisitionDateTime", "20230228", MatchKind.SINGLE),
        ("AcquisitionDateTime", "2023022812", MatchKind.SINGLE),
        ("AcquisitionDateTime", "20230228123059.123456", MatchKind.SINGLE),
        ("AcquisitionDateTime", "20230228123059+0100", MatchKind.SINGLE),
        ("AcquisitionDateTime", "2023-0500", MatchKind.SINGLE),  # a year with a UTC offset
        ("AcquisitionDateTime", "2022-2023", MatchKind.RANGE),
        ("AcquisitionDateTime", "20230101-0500-20230102-0500", MatchKind.RANGE),
        ("AcquisitionDateTime", "20230101120000+0100-20230101110000", MatchKind.RANGE),
        ("AcquisitionDateTime", "20230101120000+0100-20230101113000+0000", MatchKind.RANGE),
        ("AcquisitionDateTime", "-20230101", MatchKind.RANGE),
        ("AcquisitionDateTime", "2023-", MatchKind.RANGE),
    ],
)
def test_temporal_values(name: str, value: str, kind: MatchKind) -> None:
    key = only_key([(name, value)], Level.INSTANCE)
    assert (key.kind, key.value) == (kind, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("StudyDate", "20230230"),
        ("StudyDate", "20230229"),
        ("StudyDate", "20231301"),
        ("StudyDate", "20230100"),
        ("StudyDate", "00000101"),
        ("StudyDate", "2023011"),
        ("StudyDate", "202301011"),
        ("StudyDate", "2023-01-01"),
        ("StudyDate", "2023.01.01"),
        ("StudyDate", "20231231-20230101"),
        ("StudyDate", "20230101-20230230"),
        ("StudyDate", "-"),
        ("StudyDate", "20230101--20230102"),
        ("StudyDate", "20230101-20230102-20230103"),
        ("StudyDate", "2023*"),
        ("StudyDate", "2023010?"),
        ("StudyDate", "20230101\\20230102"),
        ("StudyDate", "٢٠٢٣٠١٠١"),
        ("StudyTime", "24"),
        ("StudyTime", "1060"),
        ("StudyTime", "105961"),
        ("StudyTime", "1"),
        ("StudyTime", "103"),
        ("StudyTime", "10:30"),
        ("StudyTime", "103059.1234567"),
        ("StudyTime", "1030.5"),
        ("StudyTime", "120000-080000"),
        ("StudyTime", "11-1030"),
        ("StudyTime", "10*"),
        ("AcquisitionDateTime", "20230230"),
        ("AcquisitionDateTime", "202313"),
        ("AcquisitionDateTime", "20230101+1500"),
        ("AcquisitionDateTime", "20230101+0160"),
        ("AcquisitionDateTime", "20230101+01"),
        ("AcquisitionDateTime", "2023010112.5"),
        ("AcquisitionDateTime", "2024-2023"),
        ("AcquisitionDateTime", "20230101120000+0000-20230101110000+0000"),
        ("AcquisitionDateTime", "2023*"),
    ],
)
def test_bad_temporal_values(name: str, value: str) -> None:
    error = rejected([(name, value)], Level.INSTANCE)
    assert error.detail == {"parameter": name, "value": value}


def test_reversed_range_message() -> None:
    assert "starts after it ends" in rejected([("StudyDate", "20231231-20230101")]).message


# --- text values, wildcards, other VRs ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("PatientName", "Doe^John", MatchKind.SINGLE),
        ("PatientName", "Doe*", MatchKind.WILDCARD),
        ("PatientName", "D?e^J*", MatchKind.WILDCARD),
        ("PatientName", "Yamada^Tarou=山田^太郎", MatchKind.SINGLE),
        ("PatientName", "Smith-Jones", MatchKind.SINGLE),
        ("PatientName", "Doe, John", MatchKind.SINGLE),
        ("PatientID", "ABC-123", MatchKind.SINGLE),
        ("PatientID", "ABC*", MatchKind.WILDCARD),
        ("AccessionNumber", "A?", MatchKind.WILDCARD),
        ("StudyDescription", "CT thorax + contrast", MatchKind.SINGLE),
        ("PatientSex", "F", MatchKind.SINGLE),
        ("Modality", "SR", MatchKind.SINGLE),
        ("BodyPartExamined", "HEAD_NECK", MatchKind.SINGLE),
        ("BodyPartExamined", "H*", MatchKind.WILDCARD),
        ("BodyPartExamined", "?", MatchKind.WILDCARD),
        ("BodyPartExamined", "A" * 16, MatchKind.SINGLE),
        ("SeriesNumber", "12", MatchKind.SINGLE),
        ("SeriesNumber", "-3", MatchKind.SINGLE),
        ("Rows", "512", MatchKind.SINGLE),
        ("PatientWeight", "72.5", MatchKind.SINGLE),
        ("PatientWeight", "1e2", MatchKind.SINGLE),
        ("PatientAge", "045Y", MatchKind.SINGLE),
        ("FrameIncrementPointer", "00181063", MatchKind.SINGLE),
    ],
)
def test_text_and_numeric_values(name: str, value: str, kind: MatchKind) -> None:
    key = only_key([(name, value)], Level.INSTANCE)
    assert (key.kind, key.value) == (kind, value)


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("PatientName", "Doe\\Roe", "multiple values"),
        ("PatientID", "A\\B", "multiple values"),
        ("PatientSex", "f", "code string"),
        ("BodyPartExamined", "HEAD-NECK", "code string"),
        ("BodyPartExamined", "A" * 17, "code string"),
        ("BodyPartExamined", "h*", "code string"),
        ("Modality", "CT,MR", "code string"),  # a list only for ModalitiesInStudy
        ("Modality", "CT\\MR", "multiple values"),
        ("SeriesNumber", "1.5", "integer"),
        ("SeriesNumber", "1*", "wildcards"),
        ("SeriesNumber", "99999999999", "integer"),
        ("Rows", "-1", "16-bit unsigned"),
        ("Rows", "65536", "16-bit unsigned"),
        ("PatientWeight", "heavy", "decimal"),
        ("PatientWeight", "nan", "decimal"),
        ("PatientWeight", "1e999", "decimal"),
        ("PatientAge", "45", "age"),
        ("PatientAge", "04?Y", "wildcards"),
        ("FrameIncrementPointer", "0018106", "attribute tag"),
        ("PixelData", "abc", "universal"),
    ],
)
def test_bad_values(name: str, value: str, why: str) -> None:
    error = rejected([(name, value)], Level.INSTANCE)
    assert error.detail == {"parameter": name, "value": value}
    assert why in error.message


@pytest.mark.parametrize(
    "params",
    [
        [("PatientID", "A"), ("PatientID", "B")],
        [("PatientID", "A"), ("PatientID", "A")],
        [("PatientID", "A"), ("00100020", "B")],
        [("PatientID", ""), ("PatientID", "B")],
        [("StudyDate", "20230101"), ("StudyDate", "20230102")],
    ],
)
def test_repeated_non_uid_key_is_rejected(params: Params) -> None:
    error = rejected(params)
    assert error.detail["parameter"] == params[1][0]
    assert "more than once" in error.message


# --- Modality / ModalitiesInStudy -----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "kind", "value"),
    [
        ([("ModalitiesInStudy", "CT")], MatchKind.SINGLE, "CT"),
        ([("ModalitiesInStudy", "CT,MR")], MatchKind.SINGLE, "CT\\MR"),
        ([("ModalitiesInStudy", "CT\\MR")], MatchKind.SINGLE, "CT\\MR"),
        ([("ModalitiesInStudy", "CT,MR,CT")], MatchKind.SINGLE, "CT\\MR"),
        ([("ModalitiesInStudy", "C*")], MatchKind.WILDCARD, "C*"),
        ([("Modality", "MR")], MatchKind.SINGLE, "MR"),
        ([("00080060", "MR")], MatchKind.SINGLE, "MR"),
        ([("Modality", "M?")], MatchKind.WILDCARD, "M?"),
        ([("Modality", "CT,MR")], MatchKind.SINGLE, "CT\\MR"),
    ],
)
def test_modalities_in_study(params: Params, kind: MatchKind, value: str) -> None:
    key = only_key(params, Level.STUDY)
    assert (key.path, key.vr, key.kind, key.value) == ((MODALITIES_IN_STUDY,), "CS", kind, value)
    assert key.name == "ModalitiesInStudy"


@pytest.mark.parametrize("level", [Level.SERIES, Level.INSTANCE])
def test_modality_stays_modality_below_study_level(level: Level) -> None:
    key = only_key([("Modality", "MR")], level)
    assert (key.path, key.kind, key.value) == ((MODALITY,), MatchKind.SINGLE, "MR")


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ([("ModalitiesInStudy", "CT,")], "ModalitiesInStudy"),
        ([("ModalitiesInStudy", "CT,,MR")], "ModalitiesInStudy"),
        ([("ModalitiesInStudy", "CT,mr")], "ModalitiesInStudy"),
        ([("Modality", "MR"), ("ModalitiesInStudy", "CT")], "ModalitiesInStudy"),
        ([("ModalitiesInStudy", "CT"), ("Modality", "MR")], "Modality"),
    ],
)
def test_bad_modalities_in_study(params: Params, parameter: str) -> None:
    assert rejected(params, Level.STUDY).detail["parameter"] == parameter


def test_keys_of_other_levels_are_kept() -> None:
    query = parse([("PatientID", "P1"), ("SOPInstanceUID", "1.2")], Level.SERIES)
    assert [(k.name, k.level) for k in query.keys] == [
        ("SOPInstanceUID", Level.INSTANCE),
        ("PatientID", Level.STUDY),
    ]


# --- includefield (PS3.18 8.3.4.3) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "paths"),
    [
        ([("includefield", "StudyDescription")], [(0x00081030,)]),
        ([("includefield", "00081030")], [(0x00081030,)]),
        (
            [("includefield", "StudyDescription,PatientAge")],
            [(0x00081030,), (0x00101010,)],
        ),
        (
            [("includefield", "PatientAge"), ("includefield", "StudyDescription")],
            [(0x00081030,), (0x00101010,)],
        ),
        ([("includefield", "PatientAge, StudyDescription")], [(0x00081030,), (0x00101010,)]),
        ([("includefield", "PatientAge,00101010")], [(0x00101010,)]),
        ([("includefield", "RequestAttributesSequence")], [(REQUEST_ATTRIBUTES_SEQUENCE,)]),
        (
            [("includefield", "RequestAttributesSequence.ScheduledProcedureStepID")],
            [(REQUEST_ATTRIBUTES_SEQUENCE, SCHEDULED_PROCEDURE_STEP_ID)],
        ),
        ([("includefield", "")], []),
        ([("includefield", "PatientAge,")], [(0x00101010,)]),
        ([("INCLUDEFIELD", "PatientAge")], [(0x00101010,)]),
    ],
)
def test_includefield(params: Params, paths: list[tuple[int, ...]]) -> None:
    query = parse(params)
    assert query.includefields == tuple(paths)
    assert not query.include_all
    assert query.keys == ()


@pytest.mark.parametrize(
    "params",
    [
        [("includefield", "all")],
        [("includefield", "ALL")],
        [("includefield", "all"), ("includefield", "all")],
    ],
)
def test_includefield_all(params: Params) -> None:
    query = parse(params)
    assert query.include_all
    assert query.includefields == ()


@pytest.mark.parametrize(
    ("params", "value"),
    [
        ([("includefield", "all,PatientAge")], "all,PatientAge"),
        ([("includefield", "PatientAge"), ("includefield", "all")], "all"),
        ([("includefield", "all"), ("includefield", "PatientAge")], "PatientAge"),
        ([("includefield", "NoSuchKeyword")], "NoSuchKeyword"),
        ([("includefield", "PatientAge,Bogus")], "Bogus"),
        ([("includefield", "0010101")], "0010101"),
        ([("includefield", "PatientAge.PatientName")], "PatientAge.PatientName"),
    ],
)
def test_bad_includefield(params: Params, value: str) -> None:
    error = rejected(params)
    assert error.detail == {"parameter": "includefield", "value": value}


# --- fuzzymatching, limit, offset, other reserved parameters --------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("false", False), ("TRUE", True), ("False", False)],
)
def test_fuzzymatching(value: str, expected: bool) -> None:
    assert parse([("fuzzymatching", value)]).fuzzymatching is expected


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ([("fuzzymatching", "yes")], "fuzzymatching"),
        ([("fuzzymatching", "")], "fuzzymatching"),
        ([("fuzzymatching", "1")], "fuzzymatching"),
        ([("fuzzymatching", "true"), ("fuzzymatching", "true")], "fuzzymatching"),
        ([("limit", "10"), ("limit", "10")], "limit"),
        ([("offset", "10"), ("Offset", "20")], "Offset"),
        ([("emptyvaluematching", "maybe")], "emptyvaluematching"),
        ([("multiplevaluematching", "")], "multiplevaluematching"),
    ],
)
def test_bad_reserved_parameters(params: Params, parameter: str) -> None:
    assert rejected(params).detail["parameter"] == parameter


def test_defaults() -> None:
    query = parse([])
    assert query == QidoQuery(level=Level.STUDY)
    assert (query.limit, query.offset, query.fuzzymatching, query.warnings) == (None, 0, False, ())


@pytest.mark.parametrize(
    ("params", "limit", "offset", "warnings"),
    [
        ([("limit", "10")], 10, 0, ()),
        ([("limit", "0")], 0, 0, ()),
        ([("limit", "1000")], 1000, 0, ()),
        ([("limit", "1001")], 1000, 0, ("limit 1001 capped at 1000",)),
        ([("limit", "50000")], 1000, 0, ("limit 50000 capped at 1000",)),
        ([("limit", "0050000")], 1000, 0, ("limit 50000 capped at 1000",)),
        ([("limit", "9" * 30)], 1000, 0, ("limit " + "9" * 20 + "... capped at 1000",)),
        ([("offset", "0")], None, 0, ()),
        ([("offset", "25")], None, 25, ()),
        ([("offset", str(MAX_OFFSET))], None, MAX_OFFSET, ()),
        ([("limit", "5"), ("offset", "10")], 5, 10, ()),
        ([("Limit", "5"), ("OFFSET", "10")], 5, 10, ()),
    ],
)
def test_limit_and_offset(
    params: Params, limit: int | None, offset: int, warnings: tuple[str, ...]
) -> None:
    query = parse(params)
    assert (query.limit, query.offset, query.warnings) == (limit, offset, warnings)


def test_max_limit_is_configurable() -> None:
    query = parse([("limit", "100")], max_limit=50)
    assert (query.limit, query.warnings) == (50, ("limit 100 capped at 50",))


@pytest.mark.parametrize("name", ["limit", "offset"])
@pytest.mark.parametrize(
    "value", ["-1", "", "ten", "1.5", "+5", " 5", "5 ", "1_000", "0x10", "\u0665"]
)
def test_bad_numbers(name: str, value: str) -> None:
    error = rejected([(name, value)])
    assert error.detail == {"parameter": name, "value": value}
    assert "non-negative integer" in error.message


def test_offset_too_large() -> None:
    assert rejected([("offset", str(MAX_OFFSET + 1))]).detail["parameter"] == "offset"


@pytest.mark.parametrize(
    ("params", "warnings"),
    [
        ([("emptyvaluematching", "false")], ()),
        ([("multiplevaluematching", "false")], ()),
        (
            [("emptyvaluematching", "true")],
            ("emptyvaluematching is not supported and was ignored",),
        ),
        (
            [("MultipleValueMatching", "TRUE")],
            ("multiplevaluematching is not supported and was ignored",),
        ),
    ],
)
def test_unsupported_matching_options_warn(params: Params, warnings: tuple[str, ...]) -> None:
    query = parse(params)
    assert query.warnings == warnings
    assert query == QidoQuery(level=Level.STUDY)


def test_cache_buster_is_ignored() -> None:
    assert parse([("_", "1700000000000"), ("_", "")]) == QidoQuery(level=Level.STUDY)


# --- size and character limits --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PatientName", "A" * (MAX_VALUE_LENGTH + 1)),
        ("includefield", "PatientAge," * 100),
        ("P" * (MAX_VALUE_LENGTH + 1), "x"),
        ("PatientName", "Doe\x00"),
        ("PatientName", "Doe\nJohn"),
        ("PatientName", "Doe\tJohn"),
        ("PatientName", "Doe\x7f"),
        ("PatientName", "Doe\x85"),
        ("PatientName", "Doe\ud800"),
        ("Patient\x00Name", "Doe"),
        ("limit", "1\r\n"),
        ("_", "\x1b"),
    ],
)
def test_oversized_or_control_characters(name: str, value: str) -> None:
    error = rejected([(name, value)])
    # Echoed as sent, a lone surrogate as its escape (JSON cannot carry it).
    assert error.detail == {"parameter": sendable(name[:256]), "value": sendable(value[:80])}


def test_value_of_maximum_length_is_accepted() -> None:
    assert only_key([("PatientName", "A" * MAX_VALUE_LENGTH)]).value == "A" * MAX_VALUE_LENGTH


def test_too_many_keys() -> None:
    uids = [("SOPInstanceUID", f"1.2.{i}") for i in range(MAX_KEYS)]
    assert only_key(uids).kind is MatchKind.UID_LIST
    error = rejected([*uids, ("PatientID", "P")])
    assert error.detail["parameter"] == "PatientID"
    assert str(MAX_KEYS) in error.message


@pytest.mark.parametrize(
    "repeated",
    [("_", "1"), ("includefield", "PatientID"), ("a", ""), ("SOPInstanceUID", "1.2.3")],
)
def test_thousands_of_parameters_are_refused_naming_the_limit(repeated: tuple[str, str]) -> None:
    """Regression: 4000 ``_=1`` (ignored) or ``includefield`` were all read; a malformed one
    was refused for what it was, not for the count. The count is checked first."""
    assert parse([repeated] * 2 if repeated[0] != "a" else [("_", "1")] * MAX_PARAMS)
    error = rejected([repeated] * 4000)
    assert str(MAX_PARAMS) in error.message and "parameters" in error.message
    assert error.detail["parameter"] == repeated[0]


def test_surrogates_in_a_refused_value_can_be_sent() -> None:
    """Regression: a lone surrogate (what a byte that is not UTF-8 becomes once decoded with
    ``surrogateescape``) was echoed in ``detail`` as is, and the JSON encoder of the error
    response raised (a 500)."""
    error = rejected([("PatientID\udcff", "\ud800")])
    orjson.dumps(error.body())
    assert error.detail == {"parameter": "PatientID\\udcff", "value": "\\ud800"}


# --- the model ------------------------------------------------------------------------------


def test_keys_and_includefields_are_in_canonical_order() -> None:
    one = parse([("PatientID", "P"), ("StudyDate", "20230101"), ("includefield", "PatientAge")])
    two = parse(
        [("includefield", "00101010"), ("StudyDate", "20230101"), ("00100020", "P")],
    )
    assert one == two
    assert [k.name for k in one.keys] == ["StudyDate", "PatientID"]


def test_model_is_immutable_and_hashable() -> None:
    query = parse([("PatientID", "P"), ("limit", "5000")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        query.limit = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        query.keys[0].value = "Q"  # type: ignore[misc]
    assert hash(query) == hash(dataclasses.replace(query, warnings=()))
    assert query == dataclasses.replace(query, warnings=())


# --- to_params and encode_query -------------------------------------------------------------

ROUND_TRIPS: list[tuple[Params, Level]] = [
    ([], Level.STUDY),
    ([("PatientID", "P1"), ("PatientName", "Doe^J*"), ("StudyDate", "20230101-")], Level.STUDY),
    ([("StudyInstanceUID", "1.2.3"), ("StudyInstanceUID", "1.2.4\\1.2.5")], Level.STUDY),
    ([("Modality", "MR"), ("includefield", "all"), ("fuzzymatching", "true")], Level.STUDY),
    ([("Modality", "CT\\MR"), ("limit", "0")], Level.STUDY),
    ([("Modality", "MR"), ("limit", "20000"), ("offset", "40")], Level.SERIES),
    ([("PatientName", ""), ("StudyInstanceUID", "*"), ("StudyTime", "-1200")], Level.SERIES),
    (
        [
            ("00400275.00400009", "SPS-1"),
            ("ReferencedStudySequence.ReferencedSOPClassUID", "1.2,1.3"),
            ("includefield", "00081030,RequestAttributesSequence.RequestedProcedureID"),
        ],
        Level.SERIES,
    ),
    ([("00091001", "x?"), ("00090010", "ACME"), ("includefield", "00091002")], Level.INSTANCE),
    ([("AcquisitionDateTime", "20230101-0500-20230102-0500")], Level.INSTANCE),
    ([("PatientName", "Müller, Ann=山田"), ("StudyDescription", "a&b=c#d+e%f g")], Level.STUDY),
    ([("emptyvaluematching", "true"), ("offset", "7")], Level.INSTANCE),
]


@pytest.mark.parametrize(("params", "level"), ROUND_TRIPS)
def test_to_params_round_trips(params: Params, level: Level) -> None:
    query = parse(params, level)
    again = parse_qido(to_params(query), level)
    assert again == query
    assert again.keys == query.keys  # equal field by field, not only by __eq__
    assert again.warnings == ()


def test_to_params_is_canonical() -> None:
    query = parse(
        [
            ("0020000d", "1.2.3\\1.2.4"),
            ("Modality", "CT,MR"),
            ("00100010", "Doe*"),
            ("00091001", "x"),
            ("00090010", "ACME"),
            ("includefield", "PatientAge"),
            ("includefield", "00081030"),
            ("fuzzymatching", "false"),
            ("limit", "50000"),
            ("offset", "0"),
        ]
    )
    assert to_params(query) == [
        ("ModalitiesInStudy", "CT,MR"),
        ("00090010", "ACME"),
        ("00091001", "x"),
        ("PatientName", "Doe*"),
        ("StudyInstanceUID", "1.2.3,1.2.4"),
        ("includefield", "StudyDescription,PatientAge"),
        ("limit", "1000"),
    ]


@pytest.mark.parametrize(
    ("query", "params"),
    [
        (QidoQuery(level=Level.STUDY), []),
        (QidoQuery(level=Level.STUDY, fuzzymatching=True), [("fuzzymatching", "true")]),
        (QidoQuery(level=Level.STUDY, limit=0), [("limit", "0")]),
        (QidoQuery(level=Level.STUDY, offset=3), [("offset", "3")]),
        (QidoQuery(level=Level.STUDY, include_all=True), [("includefield", "all")]),
    ],
)
def test_to_params_of_options(query: QidoQuery, params: Params) -> None:
    assert to_params(query) == params


@pytest.mark.parametrize(
    ("params", "encoded"),
    [
        ([("PatientName", "Doe^John")], "PatientName=Doe^John"),
        ([("PatientName", "D?e*")], "PatientName=D?e*"),
        ([("StudyInstanceUID", "1.2.3,1.2.4")], "StudyInstanceUID=1.2.3,1.2.4"),
        ([("StudyDate", "20230101-20231231")], "StudyDate=20230101-20231231"),
        ([("PatientID", "a_b.c~d")], "PatientID=a_b.c~d"),
        ([("PatientName", "Doe John")], "PatientName=Doe%20John"),
        ([("StudyDescription", "a&b=c")], "StudyDescription=a%26b%3Dc"),
        ([("StudyDescription", "#1+2%")], "StudyDescription=%231%2B2%25"),
        ([("StudyDescription", "a/b:c@d;e")], "StudyDescription=a%2Fb%3Ac%40d%3Be"),
        ([("StudyInstanceUID", "1.2\\1.3")], "StudyInstanceUID=1.2%5C1.3"),
        ([("PatientName", "Müller")], "PatientName=M%C3%BCller"),
        ([("PatientName", "山田")], "PatientName=%E5%B1%B1%E7%94%B0"),
        ([("PatientName", "")], "PatientName="),
        ([("limit", "10"), ("offset", "20")], "limit=10&offset=20"),
        ([("a b", "c")], "a%20b=c"),
        ([], ""),
    ],
)
def test_encode_query(params: Params, encoded: str) -> None:
    assert encode_query(params) == encoded


def test_encode_query_of_to_params() -> None:
    query = parse([("StudyInstanceUID", "1.2\\1.3"), ("PatientName", "Doe^J*"), ("limit", "5")])
    assert encode_query(to_params(query)) == ("PatientName=Doe^J*&StudyInstanceUID=1.2,1.3&limit=5")


# --- attribute tables -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "table", "keywords"),
    [
        (
            Level.STUDY,
            STUDY_RETURN_TAGS,
            "StudyDate StudyTime AccessionNumber InstanceAvailability ModalitiesInStudy "
            "ReferringPhysicianName TimezoneOffsetFromUTC RetrieveURL PatientName PatientID "
            "PatientBirthDate PatientSex StudyInstanceUID StudyID NumberOfStudyRelatedSeries "
            "NumberOfStudyRelatedInstances",
        ),
        (
            Level.SERIES,
            SERIES_RETURN_TAGS,
            "Modality TimezoneOffsetFromUTC SeriesDescription RetrieveURL SeriesInstanceUID "
            "SeriesNumber NumberOfSeriesRelatedInstances PerformedProcedureStepStartDate "
            "PerformedProcedureStepStartTime RequestAttributesSequence",
        ),
        (
            Level.INSTANCE,
            INSTANCE_RETURN_TAGS,
            "SOPClassUID SOPInstanceUID InstanceAvailability TimezoneOffsetFromUTC RetrieveURL "
            "InstanceNumber Rows Columns BitsAllocated NumberOfFrames",
        ),
    ],
)
def test_required_return_tags(level: Level, table: tuple[int, ...], keywords: str) -> None:
    assert required_return_tags(level) is table
    assert [name_of(tag) for tag in table] == keywords.split()


def test_matching_key_tables_are_disjoint_and_agree_with_level_of() -> None:
    tables = {
        Level.STUDY: STUDY_MATCHING_KEYS,
        Level.SERIES: SERIES_MATCHING_KEYS,
        Level.INSTANCE: INSTANCE_MATCHING_KEYS,
    }
    seen: set[int] = set()
    for level, table in tables.items():
        assert matching_keys(level) is table
        assert len(set(table)) == len(table)
        assert not seen & set(table)
        seen |= set(table)
        assert all(level_of(tag) is level for tag in table)
    for level, table in zip(
        tables, (STUDY_RETURN_TAGS, SERIES_RETURN_TAGS, INSTANCE_RETURN_TAGS), strict=True
    ):
        assert all(level_of(tag) in (level, None) for tag in table)


@pytest.mark.parametrize(
    ("tag", "level"),
    [
        (PATIENT_ID, Level.STUDY),
        (0x00100030, Level.STUDY),
        (0x00080050, Level.STUDY),
        (MODALITIES_IN_STUDY, Level.STUDY),
        (MODALITY, Level.SERIES),
        (0x0020000E, Level.SERIES),
        (0x00180015, Level.SERIES),
        (0x00080018, Level.INSTANCE),
        (0x00200013, Level.INSTANCE),
        (0x00080201, None),  # TimezoneOffsetFromUTC: every level
        (0x00081190, None),
        (0x00091001, None),
        (0x12345678, None),
    ],
)
def test_level_of(tag: int, level: Level | None) -> None:
    assert level_of(tag) is level


@pytest.mark.parametrize(
    ("tag", "vr"),
    [
        (PATIENT_ID, "LO"),
        (STUDY_INSTANCE_UID, "UI"),
        (REQUEST_ATTRIBUTES_SEQUENCE, "SQ"),
        (0x00280106, "US"),  # "US or SS"
        (0x7FE00010, "OB"),  # "OB or OW"
        (0x00090010, "LO"),
        (0x00091001, "UN"),
        (0x00090100, None),
        (0x00090001, None),
        (0x00081234, None),
        (0x00020010, None),
        (0xFFFEE000, None),
        (0x00100000, None),
        (-1, None),
        (0x1_0000_0000, None),
    ],
)
def test_vr_of(tag: int, vr: str | None) -> None:
    assert vr_of(tag) == vr


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        (PATIENT_ID, "PatientID"),
        (0x00091001, "00091001"),
        (0x60003000, "60003000"),  # repeating group: pydicom maps no keyword back to it
        (0x60023000, "60023000"),
    ],
)
def test_name_of(tag: int, name: str) -> None:
    assert name_of(tag) == name


def test_level_depth() -> None:
    assert [level.depth for level in Level] == [0, 1, 2]
