"""C-FIND identifiers built from QIDO-RS queries (PS3.4 C.4.1, C.2.2.2) and their answers as
DICOM JSON (PS3.18 F.2)."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from ncpeh_dicomweb.backends.base import Scope
from ncpeh_dicomweb.backends.dimse.identifiers import FindPlan, answer_to_json, find_identifier
from ncpeh_dicomweb.dicomweb.attributes import Level, matching_keys, required_return_tags
from ncpeh_dicomweb.dicomweb.matching import key_matches
from ncpeh_dicomweb.dicomweb.query import QidoQuery, parse_qido

Params = list[tuple[str, str]]

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"
OTHER_UID = "1.2.826.0.1.3680043.8.498.9"
RETRIEVE_URL = 0x00081190
UNSCOPED = Scope()
IN_STUDY = Scope(study=STUDY_UID)
IN_SERIES = Scope(study=STUDY_UID, series=SERIES_UID)


def tag_of(name: str) -> int:
    if len(name) == 8 and all(c in "0123456789ABCDEF" for c in name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    assert tag is not None, name
    return tag


def path_of(name: str) -> tuple[int, ...]:
    return tuple(tag_of(part) for part in name.split("."))


def plan(params: Params, level: Level, scope: Scope = UNSCOPED) -> FindPlan:
    return find_identifier(parse_qido(params, level), scope)


def element(dataset: Dataset, name: str) -> DataElement | None:
    """The element at a dotted path, walking into the first item of each sequence."""
    *parents, last = path_of(name)
    for tag in parents:
        if tag not in dataset or not dataset[tag].value:
            return None
        dataset = dataset[tag].value[0]
    found: DataElement | None = dataset.get(last)
    return found


def value_of(dataset: Dataset, name: str) -> tuple[str, Any]:
    found = element(dataset, name)
    assert found is not None, f"{name} is not in the identifier"
    value = found.value
    if found.VR == "SQ":
        value = [dict((f"{e.tag:08X}", e.value) for e in item) for item in value]
    elif found.VM > 1:
        value = list(value)
    elif found.VR == "PN" and value is not None:
        value = str(value)
    return str(found.VR), value


def key_names(keys: tuple[Any, ...]) -> list[str]:
    return [key.name for key in keys]


# ------------------------------------------------------------------ match keys → elements

ELEMENT_CASES: list[tuple[str, Params, Level, Scope, dict[str, tuple[str, Any]]]] = [
    (
        "study keys of each kind",
        [
            ("PatientName", "Mül*"),
            ("PatientID", "ABC-1"),
            ("StudyDate", "20240101-20241231"),
            ("StudyTime", "0800-123000.5"),
            ("AccessionNumber", ""),
            ("StudyInstanceUID", f"{STUDY_UID},{OTHER_UID}"),
            ("ModalitiesInStudy", "C?"),
        ],
        Level.STUDY,
        UNSCOPED,
        {
            "QueryRetrieveLevel": ("CS", "STUDY"),
            "PatientName": ("PN", "Mül*"),
            "PatientID": ("LO", "ABC-1"),
            "StudyDate": ("DA", "20240101-20241231"),
            "StudyTime": ("TM", "0800-123000.5"),
            "AccessionNumber": ("SH", None),
            "StudyInstanceUID": ("UI", [STUDY_UID, OTHER_UID]),
            "ModalitiesInStudy": ("CS", "C?"),
        },
    ),
    (
        "Modality on /studies is ModalitiesInStudy",
        [("Modality", "MR")],
        Level.STUDY,
        UNSCOPED,
        {"ModalitiesInStudy": ("CS", "MR")},
    ),
    (
        "open-ended ranges",
        [("StudyDate", "-20241231"), ("PatientBirthDate", "19500101-")],
        Level.STUDY,
        UNSCOPED,
        {"StudyDate": ("DA", "-20241231"), "PatientBirthDate": ("DA", "19500101-")},
    ),
    (
        "series level: the study key is universal when unscoped",
        [("Modality", "CT"), ("SeriesNumber", "3"), ("SeriesDescription", "*AX*")],
        Level.SERIES,
        UNSCOPED,
        {
            "QueryRetrieveLevel": ("CS", "SERIES"),
            "StudyInstanceUID": ("UI", None),
            "Modality": ("CS", "CT"),
            "SeriesNumber": ("IS", 3),
            "SeriesDescription": ("LO", "*AX*"),
        },
    ),
    (
        "series level in a study",
        [],
        Level.SERIES,
        IN_STUDY,
        {"StudyInstanceUID": ("UI", STUDY_UID), "SeriesInstanceUID": ("UI", None)},
    ),
    (
        "instance level: both upper unique keys, universal when unscoped",
        [("SOPInstanceUID", OTHER_UID), ("Rows", "512"), ("InstanceNumber", "7")],
        Level.INSTANCE,
        UNSCOPED,
        {
            "QueryRetrieveLevel": ("CS", "IMAGE"),
            "StudyInstanceUID": ("UI", None),
            "SeriesInstanceUID": ("UI", None),
            "SOPInstanceUID": ("UI", OTHER_UID),
            "Rows": ("US", 512),
            "InstanceNumber": ("IS", 7),
        },
    ),
    (
        "instance level in a study",
        [],
        Level.INSTANCE,
        IN_STUDY,
        {"StudyInstanceUID": ("UI", STUDY_UID), "SeriesInstanceUID": ("UI", None)},
    ),
    (
        "instance level in a series",
        [("ContentDate", "20240314")],
        Level.INSTANCE,
        IN_SERIES,
        {
            "StudyInstanceUID": ("UI", STUDY_UID),
            "SeriesInstanceUID": ("UI", SERIES_UID),
            "ContentDate": ("DA", "20240314"),
        },
    ),
    (
        "study keys on a series search are sent (relational)",
        [("PatientID", "P1"), ("StudyInstanceUID", STUDY_UID)],
        Level.SERIES,
        UNSCOPED,
        {"PatientID": ("LO", "P1"), "StudyInstanceUID": ("UI", STUDY_UID)},
    ),
    (
        "sequence matching: one item holding the nested key",
        [("RequestAttributesSequence.ScheduledProcedureStepID", "SPS1")],
        Level.SERIES,
        UNSCOPED,
        {
            "RequestAttributesSequence": ("SQ", [{"00400009": "SPS1"}]),
            "RequestAttributesSequence.ScheduledProcedureStepID": ("SH", "SPS1"),
        },
    ),
    (
        "two keys in one sequence share its item",
        [
            ("RequestAttributesSequence.ScheduledProcedureStepID", "SPS1"),
            ("RequestAttributesSequence.RequestedProcedureID", "RP*"),
        ],
        Level.SERIES,
        UNSCOPED,
        {"RequestAttributesSequence": ("SQ", [{"00400009": "SPS1", "00401001": "RP*"}])},
    ),
    (
        "private creator and private data element",
        [("00090010", "ACME 1.0"), ("00091010", "abc")],
        Level.STUDY,
        UNSCOPED,
        {"00090010": ("LO", "ACME 1.0"), "00091010": ("UN", b"abc ")},
    ),
    (
        "universal private data element",
        [("00090010", "ACME"), ("00091010", "")],
        Level.STUDY,
        UNSCOPED,
        {"00091010": ("UN", None)},
    ),
    (
        "`?` of a text VR goes up as `*` (an SCP's `?` may be one byte)",
        [
            ("PatientName", "M?ller^J?rgen"),
            ("StudyDescription", "CT?Thorax*"),
            ("AccessionNumber", "A?"),
            ("ReferringPhysicianName", "Gro??^*"),
            ("ModalitiesInStudy", "C?"),  # CS: ASCII only, a byte-wise `?` is exact
        ],
        Level.STUDY,
        UNSCOPED,
        {
            "PatientName": ("PN", "M*ller^J*rgen"),
            "StudyDescription": ("LO", "CT*Thorax*"),
            "AccessionNumber": ("SH", "A*"),
            "ReferringPhysicianName": ("PN", "Gro*^*"),
            "ModalitiesInStudy": ("CS", "C?"),
        },
    ),
    (
        "only `?`: stays non-universal",
        [("PatientName", "?"), ("PatientID", "*??*")],
        Level.STUDY,
        UNSCOPED,
        {"PatientName": ("PN", "?*"), "PatientID": ("LO", "?*")},
    ),
    (
        "non-ASCII goes up as it is, `?` as `*`",
        [("PatientName", "Müller^J?rgen")],
        Level.STUDY,
        UNSCOPED,
        {"PatientName": ("PN", "Müller^J*rgen"), "SpecificCharacterSet": ("CS", "ISO_IR 100")},
    ),
    (
        "`?` in a sequence key and a private one",
        [
            ("RequestAttributesSequence.RequestedProcedureID", "RP?1"),
            ("00090010", "ACME"),
            ("00091010", "a?c"),
        ],
        Level.SERIES,
        UNSCOPED,
        {"RequestAttributesSequence": ("SQ", [{"00401001": "RP*1"}]), "00091010": ("UN", b"a*c ")},
    ),
]


@pytest.mark.parametrize(
    ("params", "level", "scope", "expected"),
    [case[1:] for case in ELEMENT_CASES],
    ids=[case[0] for case in ELEMENT_CASES],
)
def test_identifier_elements(
    params: Params, level: Level, scope: Scope, expected: dict[str, tuple[str, Any]]
) -> None:
    result = plan(params, level, scope)
    assert result.level is level
    for name, (vr, value) in expected.items():
        assert value_of(result.identifier, name) == (vr, value), name


# ------------------------------------------------------------------ where each key goes

ROUTE_CASES: list[tuple[str, Params, Level, Scope, list[str], list[str], list[str]]] = [
    # id, params, level, scope, lower keys, gateway keys, keys absent from the identifier
    (
        "series keys on /studies need a relational step",
        [("SeriesDescription", "AX"), ("SeriesInstanceUID", SERIES_UID), ("PatientID", "P")],
        Level.STUDY,
        UNSCOPED,
        ["SeriesDescription", "SeriesInstanceUID"],
        [],
        ["SeriesDescription", "SeriesInstanceUID"],
    ),
    (
        "sequence key of a lower level",
        [("RequestAttributesSequence.RequestedProcedureID", "RP1")],
        Level.STUDY,
        UNSCOPED,
        ["RequestAttributesSequence.RequestedProcedureID"],
        [],
        ["RequestAttributesSequence"],
    ),
    (
        "instance keys on /series",
        [("SOPInstanceUID", OTHER_UID), ("Modality", "CT")],
        Level.SERIES,
        UNSCOPED,
        ["SOPInstanceUID"],
        [],
        ["SOPInstanceUID"],
    ),
    (
        "several modalities are matched in the gateway",
        [("Modality", "CT,MR")],
        Level.STUDY,
        UNSCOPED,
        [],
        ["ModalitiesInStudy"],
        [],
    ),
    (
        "several modalities on a series search",
        [("ModalitiesInStudy", "CT\\MR")],
        Level.SERIES,
        UNSCOPED,
        [],
        ["ModalitiesInStudy"],
        [],
    ),
    (
        "one modality is sent",
        [("ModalitiesInStudy", "CT")],
        Level.INSTANCE,
        UNSCOPED,
        [],
        [],
        [],
    ),
    (
        "a study key the scope contradicts is left to the gateway",
        [("StudyInstanceUID", OTHER_UID)],
        Level.SERIES,
        IN_STUDY,
        [],
        ["StudyInstanceUID"],
        [],
    ),
    (
        "a study key the scope implies is absorbed",
        [("StudyInstanceUID", f"{OTHER_UID},{STUDY_UID}"), ("SeriesInstanceUID", "")],
        Level.INSTANCE,
        IN_SERIES,
        [],
        [],
        [],
    ),
    (
        "fuzzymatching is ignored",
        [("PatientName", "DOE*"), ("fuzzymatching", "true")],
        Level.STUDY,
        UNSCOPED,
        [],
        [],
        [],
    ),
]


@pytest.mark.parametrize(
    ("params", "level", "scope", "lower", "gateway", "absent"),
    [case[1:] for case in ROUTE_CASES],
    ids=[case[0] for case in ROUTE_CASES],
)
def test_key_routes(
    params: Params,
    level: Level,
    scope: Scope,
    lower: list[str],
    gateway: list[str],
    absent: list[str],
) -> None:
    result = plan(params, level, scope)
    assert key_names(result.lower_keys) == lower
    assert key_names(result.gateway_keys) == gateway
    for name in absent:
        assert element(result.identifier, name) is None, name
    # a gateway key's attribute is asked for universally, so that the answers carry it
    for key in result.gateway_keys:
        found = element(result.identifier, key.name)
        assert found is not None
        if key.name == "ModalitiesInStudy":
            assert found.value is None


def test_scope_wins_over_a_contradicting_key() -> None:
    result = plan([("StudyInstanceUID", OTHER_UID)], Level.SERIES, IN_STUDY)
    assert value_of(result.identifier, "StudyInstanceUID") == ("UI", STUDY_UID)
    answer = answer_to_json(answer_of(StudyInstanceUID=STUDY_UID), parse_qido([], Level.SERIES))
    assert not key_matches(answer, result.gateway_keys[0])  # so nothing is returned


def test_gateway_keys_match_the_answers() -> None:
    query = parse_qido([("Modality", "CT,MR")], Level.STUDY)
    result = find_identifier(query, UNSCOPED)
    (key,) = result.gateway_keys
    matching = answer_to_json(answer_of(ModalitiesInStudy=["MR", "SR"]), query)
    other = answer_to_json(answer_of(ModalitiesInStudy=["US"]), query)
    assert key_matches(matching, key)
    assert not key_matches(other, key)


def test_loosened_keys_are_matched_exactly_on_the_answers() -> None:
    """The identifier asks for M*ller*; of the answers, the query's own key keeps only the
    one with one character there (what DimseBackend._checked does with every answer)."""
    query = parse_qido([("PatientName", "M?ller*")], Level.STUDY)
    result = find_identifier(query, UNSCOPED)
    assert value_of(result.identifier, "PatientName") == ("PN", "M*ller*")
    assert result.gateway_keys == ()
    (key,) = query.keys
    names = ["Müller^Jürgen", "Mueller^Hans", "Møller^Ida", "Mller^X", "MÜLLER^Z"]
    answers = [
        answer_to_json(received(answer_of(SpecificCharacterSet="ISO_IR 192", PatientName=n)), query)
        for n in names
    ]
    kept = [n for n, a in zip(names, answers, strict=True) if key_matches(a, key)]
    assert kept == ["Müller^Jürgen", "Møller^Ida", "MÜLLER^Z"]


def test_series_scope_on_a_study_search_is_refused() -> None:
    with pytest.raises(ValueError, match="series scope"):
        plan([], Level.STUDY, IN_SERIES)


# ------------------------------------------------------------------ return keys


def _level_tags(level: Level) -> set[str]:
    return {f"{tag:08X}" for tag in required_return_tags(level) if tag != RETRIEVE_URL}


RETURN_CASES: list[tuple[str, Level, Scope, list[Level], list[Level]]] = [
    # id, level, scope, levels whose PS3.18 return attributes are asked, levels whose are not
    ("studies", Level.STUDY, UNSCOPED, [Level.STUDY], [Level.SERIES, Level.INSTANCE]),
    ("all series", Level.SERIES, UNSCOPED, [Level.STUDY, Level.SERIES], [Level.INSTANCE]),
    ("a study's series", Level.SERIES, IN_STUDY, [Level.SERIES], [Level.STUDY]),
    ("all instances", Level.INSTANCE, UNSCOPED, list(Level), []),
    ("a study's instances", Level.INSTANCE, IN_STUDY, [Level.SERIES, Level.INSTANCE], []),
    ("a series' instances", Level.INSTANCE, IN_SERIES, [Level.INSTANCE], [Level.SERIES]),
]


@pytest.mark.parametrize(
    ("level", "scope", "asked", "not_asked"),
    [case[1:] for case in RETURN_CASES],
    ids=[case[0] for case in RETURN_CASES],
)
def test_required_return_keys(
    level: Level, scope: Scope, asked: list[Level], not_asked: list[Level]
) -> None:
    identifier = plan([], level, scope).identifier
    present = {f"{e.tag:08X}": e for e in identifier}
    for lvl in asked:
        assert _level_tags(lvl) <= present.keys(), lvl
    unique = {"0020000D", "0020000E"}  # the hierarchy's unique keys are always there
    shared = set().union(*(_level_tags(lvl) for lvl in {*asked, level}))
    for lvl in not_asked:
        assert not (_level_tags(lvl) - shared - unique) & present.keys(), lvl
    assert f"{RETRIEVE_URL:08X}" not in present
    for tag, found in present.items():
        if tag not in ("00080052", "0020000D", "0020000E"):
            assert found.is_empty, tag  # return keys are zero length (PS3.4 C.2.2.2.3)


INCLUDE_CASES: list[tuple[str, Params, Level, dict[str, tuple[str, Any]], list[str]]] = [
    # id, params, level, expected elements, absent
    (
        "includefield attributes are asked empty",
        [("includefield", "StudyDescription,PatientAge,00101002")],
        Level.STUDY,
        {
            "StudyDescription": ("LO", None),
            "PatientAge": ("AS", None),
            "OtherPatientIDsSequence": ("SQ", []),
        },
        [],
    ),
    (
        "a sequence path asks for its top-level sequence",
        [("includefield", "ProcedureCodeSequence.CodeValue")],
        Level.STUDY,
        {"ProcedureCodeSequence": ("SQ", [])},
        [],
    ),
    (
        "a nested includefield joins the item of a sequence match key",
        [
            ("RequestAttributesSequence.RequestedProcedureID", "RP1"),
            ("includefield", "RequestAttributesSequence.ScheduledProcedureStepID"),
        ],
        Level.SERIES,
        {"RequestAttributesSequence": ("SQ", [{"00400009": None, "00401001": "RP1"}])},
        [],
    ),
    (
        "an includefield never overrides a match key",
        [("PatientName", "DOE^J*"), ("includefield", "PatientName,PatientID")],
        Level.STUDY,
        {"PatientName": ("PN", "DOE^J*"), "PatientID": ("LO", None)},
        [],
    ),
    (
        "lower-level includefields are not asked (PS3.18 10.6.3.3.1)",
        [("includefield", "SeriesDescription,SOPClassUID,StudyDescription")],
        Level.STUDY,
        {"StudyDescription": ("LO", None)},
        ["SeriesDescription", "SOPClassUID"],
    ),
    (
        "study-level includefield on a series search",
        [("includefield", "StudyDescription")],
        Level.SERIES,
        {"StudyDescription": ("LO", None)},
        [],
    ),
    (
        "Retrieve URL is the gateway's own",
        [("includefield", "RetrieveURL")],
        Level.INSTANCE,
        {},
        ["RetrieveURL"],
    ),
    (
        "private includefield",
        [("00091010", "x"), ("00090010", "ACME"), ("includefield", "00091011")],
        Level.STUDY,
        {"00091011": ("UN", None), "00091010": ("UN", b"x ")},
        [],
    ),
    (
        "an ambiguous VR takes its first choice",
        [("includefield", "00280106")],  # Smallest Image Pixel Value, "US or SS"
        Level.INSTANCE,
        {"00280106": ("US", None)},
        [],
    ),
]


@pytest.mark.parametrize(
    ("params", "level", "expected", "absent"),
    [case[1:] for case in INCLUDE_CASES],
    ids=[case[0] for case in INCLUDE_CASES],
)
def test_includefield(
    params: Params, level: Level, expected: dict[str, tuple[str, Any]], absent: list[str]
) -> None:
    identifier = plan(params, level).identifier
    for name, (vr, value) in expected.items():
        assert value_of(identifier, name) == (vr, value), name
    for name in absent:
        assert element(identifier, name) is None, name


@pytest.mark.parametrize(
    ("level", "included", "excluded"),
    [
        (Level.STUDY, [Level.STUDY], [Level.SERIES, Level.INSTANCE]),
        (Level.SERIES, [Level.STUDY, Level.SERIES], [Level.INSTANCE]),
        (Level.INSTANCE, list(Level), []),
    ],
)
def test_includefield_all(level: Level, included: list[Level], excluded: list[Level]) -> None:
    identifier = plan([("PatientID", "P1"), ("includefield", "all")], level).identifier
    present = {e.tag for e in identifier}
    for lvl in included:
        assert set(matching_keys(lvl)) <= present
    for lvl in excluded:
        assert not (set(matching_keys(lvl)) - set(required_return_tags(level))) & present
    assert value_of(identifier, "PatientID") == ("LO", "P1")
    assert value_of(identifier, "ReferencedStudySequence") == ("SQ", [])


# ------------------------------------------------------------------ character set


@pytest.mark.parametrize(
    ("params", "charset", "encoded"),
    [
        ([("PatientName", "DOE^JOHN")], None, b"DOE^JOHN"),
        ([("PatientName", "Müller^Jürgen")], "ISO_IR 100", "Müller^Jürgen".encode("latin_1")),
        ([("PatientName", "Wałęsa^Lech")], "ISO_IR 192", "Wałęsa^Lech".encode()),
        ([("PatientName", "Παπαδόπουλος*")], "ISO_IR 192", "Παπαδόπουλος*".encode()),
        (
            [("00090010", "ACME"), ("00091010", "Ørsted")],
            "ISO_IR 100",
            "Ørsted".encode("latin_1"),
        ),
    ],
    ids=["ascii", "latin-1", "latin-2", "greek", "private"],
)
def test_specific_character_set(params: Params, charset: str | None, encoded: bytes) -> None:
    identifier = plan(params, Level.STUDY).identifier
    if charset is None:
        assert "SpecificCharacterSet" not in identifier  # PS3.4 C.4.1.1.3.1
    else:
        assert value_of(identifier, "SpecificCharacterSet") == ("CS", charset)
    assert encoded in encode(identifier)


# ------------------------------------------------------------------ encoding round trip


def encode(identifier: Dataset) -> bytes:
    """The identifier as DIMSE sends it: Implicit VR Little Endian (PS3.5 A.1)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, identifier)
    return buffer.getvalue()


def decode(data: bytes) -> Dataset:
    return read_dataset(io.BytesIO(data), is_implicit_VR=True, is_little_endian=True)


def same_elements(sent: Dataset, received: Dataset) -> None:
    assert [e.tag for e in sent] == [e.tag for e in received]
    for ours in sent:
        theirs = received[ours.tag]
        assert (ours.tag, ours.VR) == (theirs.tag, theirs.VR)
        if ours.VR == "SQ":
            assert len(ours.value) == len(theirs.value)
            for mine, yours in zip(ours.value, theirs.value, strict=True):
                same_elements(mine, yours)
        elif ours.is_empty:
            assert theirs.is_empty, ours  # None is read back as ""
        else:
            assert ours.value == theirs.value, ours


ROUND_TRIPS: list[tuple[str, Params, Level, Scope]] = [
    (
        "study keys of every kind",
        [
            ("PatientName", "Müller^J*"),
            ("PatientBirthDate", "19500101-19601231"),
            ("StudyTime", "080000-"),
            ("StudyInstanceUID", f"{STUDY_UID},{OTHER_UID}"),
            ("AccessionNumber", "A?1"),
            ("ModalitiesInStudy", "CT"),
            ("00090010", "ACME"),
            ("00091010", "abc"),
            ("includefield", "all"),
        ],
        Level.STUDY,
        UNSCOPED,
    ),
    (
        "series with sequences",
        [
            ("RequestAttributesSequence.ScheduledProcedureStepID", "SPS1"),
            ("PerformedProcedureStepStartDate", "20240101"),
            ("Modality", "C*"),
            ("SeriesNumber", "12"),
            ("includefield", "RequestAttributesSequence.RequestedProcedureID"),
        ],
        Level.SERIES,
        IN_STUDY,
    ),
    (
        "instances with binary numbers",
        [
            ("Rows", "512"),
            ("Columns", ""),
            ("BitsAllocated", "16"),
            ("AcquisitionDateTime", "20240101120000+0100-20240102"),
            ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
            ("includefield", "all"),
        ],
        Level.INSTANCE,
        IN_SERIES,
    ),
    (
        "utf-8",
        [("PatientName", "Παπαδόπουλος^Γιώργος"), ("StudyDescription", "Θώρακας*")],
        Level.INSTANCE,
        UNSCOPED,
    ),
]


@pytest.mark.parametrize(
    ("params", "level", "scope"),
    [case[1:] for case in ROUND_TRIPS],
    ids=[case[0] for case in ROUND_TRIPS],
)
def test_identifier_survives_encoding(params: Params, level: Level, scope: Scope) -> None:
    identifier = plan(params, level, scope).identifier
    data = encode(identifier)
    assert len(data) % 2 == 0
    same_elements(identifier, decode(data))


# ------------------------------------------------------------------ answers


def answer_of(**attributes: Any) -> Dataset:
    answer = Dataset()
    for keyword, value in attributes.items():
        setattr(answer, keyword, value)
    return answer


def received(answer: Dataset) -> Dataset:
    """``answer`` as pynetdicom hands it over: decoded from implicit VR bytes, raw elements."""
    return decode(encode(answer))


STUDY_QUERY = parse_qido([], Level.STUDY)
SERIES_QUERY = parse_qido([], Level.SERIES)


def latin1_answer() -> Dataset:
    item = Dataset()
    item.PatientName = "Ñúñez^José"
    item.PatientID = "P-ñ"
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 100"
    answer.QueryRetrieveLevel = "STUDY"
    answer.RetrieveAETitle = "PACS"
    answer.PatientName = "Müller^Jürgen"
    answer.StudyDescription = "Thorax ä"
    answer.OtherPatientIDsSequence = Sequence([item])
    return answer


def utf8_answer() -> Dataset:
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 192"
    answer.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    answer.ReferringPhysicianName = "Παπαδόπουλος^Γιώργος"
    answer.StudyDescription = "Грудная клетка"
    return answer


def numbers_answer() -> Dataset:
    answer = Dataset()
    answer.add_new(0x00201208, "IS", "42")
    answer.add_new(0x00201206, "IS", ["3", ""])
    answer.add_new(0x00101030, "DS", "72.5")
    answer.add_new(0x00101020, "DS", "")
    answer.add_new(0x00280010, "US", 512)
    answer.add_new(0x00280011, "US", [256, 128])
    answer.add_new(0x00080061, "CS", ["CT", ""])
    answer.add_new(0x00080062, "UI", ["1.2.3", "1.2.4"])
    return answer


def empties_answer() -> Dataset:
    answer = Dataset()
    answer.add_new(0x00080050, "SH", "")
    answer.add_new(0x00100010, "PN", "")
    answer.add_new(0x00100030, "DA", "")
    answer.add_new(0x00201208, "IS", None)
    answer.add_new(0x00101002, "SQ", Sequence([]))
    answer.add_new(0x00080201, "SH", None)
    return answer


def bookkeeping_answer() -> Dataset:
    answer = Dataset()
    answer.add_new(0x00000902, "LO", "command group")
    answer.add_new(0x00020010, "UI", "1.2.840.10008.1.2")
    answer.add_new(0x00080000, "UL", 64)  # a group length
    answer.add_new(0x00080005, "CS", "ISO_IR 100")
    answer.add_new(0x00080052, "CS", "SERIES")
    answer.add_new(0x00080054, "AE", "INTERNAL")
    answer.add_new(0x00081190, "UR", "http://pacs.internal/studies/1")
    answer.add_new(0x00081030, "LO", "not asked for, kept")
    answer.add_new(0x0020000D, "UI", STUDY_UID)
    answer.add_new(0x0020000E, "UI", SERIES_UID)
    answer.add_new(0x00080018, "UI", OTHER_UID)  # an instance attribute on a series answer
    answer.add_new(0x00080056, "CS", "ONLINE")
    return answer


def private_answer() -> Dataset:
    answer = Dataset()
    answer.add_new(0x00090010, "LO", "ACME")
    answer.add_new(0x00091010, "UN", b"ab")
    answer.add_new(0x00280106, "US", 0)  # "US or SS" once read without its VR
    return answer


STUDY_QUERY = parse_qido([], Level.STUDY)
SERIES_QUERY = parse_qido([], Level.SERIES)
INSTANCE_QUERY = parse_qido([], Level.INSTANCE)


def pn(*groups: str) -> dict[str, Any]:
    names = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))
    return {"vr": "PN", "Value": [{k: v for k, v in names.items() if v}]}


ANSWER_CASES: list[tuple[str, Any, QidoQuery, dict[str, Any]]] = [
    (
        "latin-1, nested too",
        latin1_answer,
        STUDY_QUERY,
        {
            "00081030": {"vr": "LO", "Value": ["Thorax ä"]},
            "00100010": pn("Müller^Jürgen"),
            "00101002": {
                "vr": "SQ",
                "Value": [
                    {
                        "00100010": pn("Ñúñez^José"),
                        "00100020": {"vr": "LO", "Value": ["P-ñ"]},
                    }
                ],
            },
        },
    ),
    (
        "utf-8 with name component groups",
        utf8_answer,
        STUDY_QUERY,
        {
            "00080090": pn("Παπαδόπουλος^Γιώργος"),
            "00081030": {"vr": "LO", "Value": ["Грудная клетка"]},
            "00100010": pn("Yamada^Tarou", "山田^太郎", "やまだ^たろう"),
        },
    ),
    (
        "numbers, and empty values among several",
        numbers_answer,
        INSTANCE_QUERY,
        {
            "00080061": {"vr": "CS", "Value": ["CT", None]},
            "00080062": {"vr": "UI", "Value": ["1.2.3", "1.2.4"]},
            "00101020": {"vr": "DS"},
            "00101030": {"vr": "DS", "Value": [72.5]},
            "00201206": {"vr": "IS", "Value": [3, None]},
            "00201208": {"vr": "IS", "Value": [42]},
            "00280010": {"vr": "US", "Value": [512]},
            "00280011": {"vr": "US", "Value": [256, 128]},
        },
    ),
    (
        "empty attributes have no Value",
        empties_answer,
        STUDY_QUERY,
        {
            "00080050": {"vr": "SH"},
            "00080201": {"vr": "SH"},
            "00100010": {"vr": "PN"},
            "00100030": {"vr": "DA"},
            "00101002": {"vr": "SQ"},
            "00201208": {"vr": "IS"},
        },
    ),
    (
        "C-FIND bookkeeping and lower-level attributes are dropped",
        bookkeeping_answer,
        SERIES_QUERY,
        {
            "00080056": {"vr": "CS", "Value": ["ONLINE"]},
            "00081030": {"vr": "LO", "Value": ["not asked for, kept"]},
            "0020000D": {"vr": "UI", "Value": [STUDY_UID]},
            "0020000E": {"vr": "UI", "Value": [SERIES_UID]},
        },
    ),
    (
        "private attributes",
        private_answer,
        STUDY_QUERY,
        {
            "00090010": {"vr": "LO", "Value": ["ACME"]},
            "00091010": {"vr": "UN", "InlineBinary": base64.b64encode(b"ab").decode()},
            "00280106": {"vr": "US", "Value": [0]},
        },
    ),
]


@pytest.mark.parametrize("transport", ["as built", "as received"])
@pytest.mark.parametrize(
    ("make", "query", "expected"),
    [case[1:] for case in ANSWER_CASES],
    ids=[case[0] for case in ANSWER_CASES],
)
def test_answer_to_json(
    make: Any, query: QidoQuery, expected: dict[str, Any], transport: str
) -> None:
    answer: Dataset = make()
    if transport == "as received":
        answer = received(answer)
    result = answer_to_json(answer, query)
    assert result == expected
    assert all(type(element["vr"]) is str for element in result.values())


def test_undecodable_attribute_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    # Implicit VR Little Endian: Number of Study Related Instances "abc", Patient ID "P1"
    data = b"\x20\x00\x08\x12\x04\x00\x00\x00abc " + b"\x10\x00\x20\x00\x02\x00\x00\x00P1"
    result = answer_to_json(decode(data), STUDY_QUERY)
    assert result == {"00100020": {"vr": "LO", "Value": ["P1"]}}
    assert "00201208" in caplog.text


def test_answer_to_json_leaves_the_answer_alone() -> None:
    answer = latin1_answer()
    before = encode(answer)
    answer_to_json(answer, STUDY_QUERY)
    assert encode(answer) == before
