"""FHIR ImagingStudy search (fhir/search.py): parsing, push-down to QIDO, gateway matching."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import orjson
import pytest
from pydicom.sr._concepts_dict import concepts

from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.query import parse_qido
from ncpeh_dicomweb.errors import BadRequest
from ncpeh_dicomweb.fhir import mapping
from ncpeh_dicomweb.fhir.bodysite import BODY_PART_SNOMED
from ncpeh_dicomweb.fhir.outcome import operation_outcome
from ncpeh_dicomweb.fhir.search import (
    INCLUDES,
    INSTANCE_INCLUDEFIELDS,
    MAX_QUERIES,
    SERIES_INCLUDEFIELDS,
    STUDY_INCLUDEFIELDS,
    StudySearch,
    lower_qido,
    matches_instances,
    matches_series,
    matches_study,
    needs_instances,
    needs_series,
    parse_study_search,
    resolve_digests,
    sort_studies,
    study_uid_for_id,
    to_qido,
)
from ncpeh_dicomweb.fhir.tokens import IssuerTable, NoSystem, PatientKey, patient_resource_id

CZ = "urn:oid:1.2.203.24341.1.2"
SCT = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ISSUERS = IssuerTable.from_pairs([(CZ, "CZ-NRZP")])
NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
INCLUDE = ("includefield", ",".join(STUDY_INCLUDEFIELDS))
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

Json = dict[str, Any]


def _el(vr: str, *values: Any) -> Json:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _code(value: str, scheme: str = "SCT", meaning: str = "x") -> Json:
    return {
        "00080100": _el("SH", value),
        "00080102": _el("SH", scheme),
        "00080104": _el("LO", meaning),
    }


def _study(
    uid: str = "1.2.840.1",
    *,
    pid: str | None = "456789123",
    issuer: str | None = "CZ-NRZP",
    day: str | None = "20240314",
    time: str | None = "101500",
    modalities: tuple[str, ...] = ("MR", "SR"),
    accession: str | None = "ACC1",
    extra: Json | None = None,
) -> Json:
    out: Json = {"0020000D": _el("UI", uid), "00080061": _el("CS", *modalities)}
    for tag, vr, value in (
        ("00100020", "LO", pid),
        ("00100021", "LO", issuer),
        ("00080020", "DA", day),
        ("00080030", "TM", time),
        ("00080050", "SH", accession),
    ):
        if value is not None:
            out[tag] = _el(vr, value)
    out.update(extra or {})
    return out


def _series(uid: str, body_part: str | None = None, extra: Json | None = None) -> Json:
    out: Json = {"0020000E": _el("UI", uid), "00080060": _el("CS", "MR")}
    if body_part is not None:
        out["00180015"] = _el("CS", body_part)
    out.update(extra or {})
    return out


def _search(query: str | list[tuple[str, str]], **kwargs: Any) -> StudySearch:
    params = query if isinstance(query, list) else _pairs(query)
    kwargs.setdefault("strict", True)
    return parse_study_search(params, now=NOW, **kwargs)


def _pairs(query: str) -> list[tuple[str, str]]:
    return [tuple(p.split("=", 1)) for p in query.split("&")] if query else []  # type: ignore[misc]


def _qido(query: str, issuers: IssuerTable = ISSUERS, **kwargs: Any) -> list[list[tuple[str, str]]]:
    queries = to_qido(_search(query, **kwargs), issuers)
    for params in queries:  # every push-down is a query the QIDO layer accepts as it is
        parse_qido(params, Level.STUDY)
    return queries


# --- the NCPeH page's three searches ---------------------------------------------------------

EXAMPLES = [
    (
        "patient.identifier=|456789123&started=ge2024-01-01&started=le2024-12-31",
        [("PatientID", "456789123"), ("StudyDate", "20240101-20241231"), INCLUDE],
        False,
    ),
    (
        "patient.identifier=|456789123&reasonCode=|90708001",
        [("PatientID", "456789123"), INCLUDE],
        True,
    ),
    (
        "patient.identifier=|456789123&modality=MR",
        [("PatientID", "456789123"), ("ModalitiesInStudy", "MR"), INCLUDE],
        False,
    ),
]


@pytest.mark.parametrize(("query", "pushed", "series"), EXAMPLES)
def test_ncpeh_examples_push_down(query: str, pushed: list[tuple[str, str]], series: bool) -> None:
    search = _search(query)
    assert _qido(query) == [pushed]
    assert needs_series(search) is series
    assert not needs_instances(search)


def test_ncpeh_example_1_started_in_2024() -> None:
    search = _search(EXAMPLES[0][0])
    assert search.self_params() == _pairs(EXAMPLES[0][0])
    assert matches_study(search, _study(), ISSUERS)
    assert matches_study(search, _study(day="20241231", time="235959"), ISSUERS)
    assert not matches_study(search, _study(day="20250101", time="000000"), ISSUERS)
    assert not matches_study(search, _study(day="20231231"), ISSUERS)
    assert not matches_study(search, _study(pid="456789124"), ISSUERS)
    assert not matches_study(search, _study(pid=None), ISSUERS)


def test_ncpeh_example_2_reason() -> None:
    search = _search(EXAMPLES[1][0])
    assert search.self_params() == [("patient.identifier", "|456789123"), ("reason", "|90708001")]
    kidney = _study(extra={"00401012": _el("SQ", _code("90708001", meaning="Kidney disease"))})
    assert matches_study(search, kidney, ISSUERS)
    assert matches_series(search, kidney, [])
    assert not matches_series(search, _study(), [_series("1.2.9")])
    requested = _series(
        "1.2.9", extra={"00400275": _el("SQ", {"0040100A": _el("SQ", _code("90708001"))})}
    )
    assert matches_series(search, _study(), [_series("1.2.8"), requested])


def test_ncpeh_example_3_modality() -> None:
    search = _search(EXAMPLES[2][0])
    assert matches_study(search, _study(modalities=("CT", "MR")), ISSUERS)
    assert not matches_study(search, _study(modalities=("CT",)), ISSUERS)
    # No ModalitiesInStudy: the Modality of a series-level-flavoured answer stands in.
    bare = _study(modalities=())
    del bare["00080061"]
    assert matches_study(search, bare | {"00080060": _el("CS", "MR")}, ISSUERS)


def test_include_fields() -> None:
    assert set(mapping.STUDY_INCLUDEFIELDS) <= set(STUDY_INCLUDEFIELDS)
    assert set(mapping.SERIES_INCLUDEFIELDS) <= set(SERIES_INCLUDEFIELDS)
    assert set(mapping.INSTANCE_INCLUDEFIELDS) <= set(INSTANCE_INCLUDEFIELDS)
    # What the matching reads: the patient, the start, reasons, body part, UIDs, SOP class.
    assert {"00100020", "00100021", "00080020", "00080030", "00080201", "00401012"} <= set(
        STUDY_INCLUDEFIELDS
    )
    assert {"0020000D", "0020000E", "00180015", "00400275"} <= set(SERIES_INCLUDEFIELDS)
    assert {"0020000D", "00080016", "00080018"} <= set(INSTANCE_INCLUDEFIELDS)
    assert len(set(STUDY_INCLUDEFIELDS)) == len(STUDY_INCLUDEFIELDS)


# --- patient: token forms, the issuer table, Patient ids --------------------------------------

STUDIES = {
    "cz": _study("1.1", issuer="CZ-NRZP"),
    "oid": _study("1.2", issuer="9.9.9"),
    "local": _study("1.3", issuer="LOCAL"),
    "none": _study("1.4", issuer=None),
    "other": _study("1.5", pid="111"),
}


@pytest.mark.parametrize(
    ("value", "pushed", "any_", "none"),
    [
        ("456789123", [("PatientID", "456789123")], "cz oid local none", "cz oid local none"),
        ("|456789123", [("PatientID", "456789123")], "cz oid local none", "local none"),
        (
            f"{CZ}|456789123",
            [("PatientID", "456789123"), ("IssuerOfPatientID", "CZ-NRZP")],
            "cz",
            "cz",
        ),
        (f"{CZ}|", [("IssuerOfPatientID", "CZ-NRZP")], "cz other", "cz other"),
        (
            "urn:oid:9.9.9|456789123",  # an OID issuer, not in the table: its own system
            [("PatientID", "456789123"), ("IssuerOfPatientID", "9.9.9")],
            "oid",
            "oid",
        ),
        ("http://unknown.example|456789123", None, "", ""),  # no issuer: nothing to ask
        ("|A\\,B", [("PatientID", "A?B")], "", ""),  # a comma goes as a wildcard
        ("*", None, "", ""),  # wildcards alone would scan the PACS: no patient has that id
    ],
)
def test_patient_identifier_forms(
    value: str, pushed: list[tuple[str, str]] | None, any_: str, none: str
) -> None:
    cz_other = dict(STUDIES, other=_study("1.5", pid="111", issuer="CZ-NRZP"))
    for policy, expected in ((NoSystem.ANY, any_), (NoSystem.NONE, none)):
        query = f"patient.identifier={value}"
        queries = _qido(query, no_system=policy)
        assert queries == ([] if pushed is None else [[*pushed, INCLUDE]])
        search = _search(query, no_system=policy)
        found = [k for k, s in cz_other.items() if matches_study(search, s, ISSUERS)]
        assert found == expected.split(), policy


@pytest.mark.parametrize(
    "name",
    [
        "patient.identifier",
        "subject.identifier",
        "patient:Patient.identifier",
        "patient:identifier",
    ],
)
def test_patient_identifier_spellings(name: str) -> None:
    search = _search(f"{name}=|456789123")
    assert to_qido(search, ISSUERS) == [[("PatientID", "456789123"), INCLUDE]]
    assert search.self_params()[0][1] == "|456789123"


@pytest.mark.parametrize(
    "value",
    [
        "Patient/{id}",
        "{id}",
        "http://gateway.example/fhir/Patient/{id}",
    ],
)
@pytest.mark.parametrize("name", ["patient", "subject", "patient:Patient"])
def test_patient_reference(name: str, value: str) -> None:
    resource_id = patient_resource_id("456789123", "CZ-NRZP")
    search = _search(f"{name}={value.format(id=resource_id)}")
    assert to_qido(search, ISSUERS) == [
        [("PatientID", "456789123"), ("IssuerOfPatientID", "CZ-NRZP"), INCLUDE]
    ]
    found = [k for k, s in STUDIES.items() if matches_study(search, s, ISSUERS)]
    assert found == ["cz"]
    assert search.self_params() == [(name.split(":")[0], f"Patient/{resource_id}")]


def test_patient_reference_without_issuer() -> None:
    search = _search("patient=Patient/456789123")
    assert to_qido(search, ISSUERS) == [[("PatientID", "456789123"), INCLUDE]]
    found = [k for k, s in STUDIES.items() if matches_study(search, s, ISSUERS)]
    assert found == ["none"]  # the id names the patient without issuer, not every issuer


@pytest.mark.parametrize("value", ["Group/1", "Patient/abc-2d", "Device/x"])
def test_reference_to_no_patient_of_ours(value: str) -> None:
    search = _search(f"subject={value}")
    assert to_qido(search, ISSUERS) == []
    assert not any(matches_study(search, s, ISSUERS) for s in STUDIES.values())


def test_digest_patient_id_must_be_resolved() -> None:
    issuer = ("ISSUER " * 9).strip()  # as a DICOM JSON answer gives it (LO: padding dropped)
    resource_id = patient_resource_id("456789123", issuer)
    search = _search(f"patient=Patient/{resource_id}")
    with pytest.raises(BadRequest) as info:
        to_qido(search, ISSUERS)
    assert info.value.detail["parameter"] == "patient"
    study = _study(issuer=issuer)
    assert matches_study(search, study, ISSUERS)  # the gateway can still compare ids
    resolved = resolve_digests(
        search, patient={resource_id: PatientKey("456789123", issuer)}.get, study=lambda _: None
    )
    assert to_qido(resolved, ISSUERS) == [
        [("PatientID", "456789123"), ("IssuerOfPatientID", issuer), INCLUDE]
    ]
    assert matches_study(resolved, study, ISSUERS)
    unknown = resolve_digests(search, patient=lambda _: None, study=lambda _: None)
    assert to_qido(unknown, ISSUERS) == []
    assert search.digests() == ([resource_id], [])
    assert resolved.digests() == ([], [])


# --- OR and AND ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "pushed"),
    [
        # OR'ed patients: one query each.
        (
            "patient.identifier=|111,|222",
            [[("PatientID", "111"), INCLUDE], [("PatientID", "222"), INCLUDE]],
        ),
        # AND'ed patients: both constraints in one query, or none.
        (
            f"patient.identifier=|111&patient.identifier={CZ}|111",
            [[("PatientID", "111"), ("IssuerOfPatientID", "CZ-NRZP"), INCLUDE]],
        ),
        ("patient.identifier=|111&patient.identifier=|222", []),
        (
            "patient.identifier=|111,|222&patient.identifier=|222,|333",
            [[("PatientID", "222"), INCLUDE]],
        ),
        # OR'ed modalities: one list; AND'ed: the narrowest clause goes up.
        ("modality=CT,MR", [[("ModalitiesInStudy", "CT,MR"), INCLUDE]]),
        ("modality=CT,MR&modality=MR", [[("ModalitiesInStudy", "MR"), INCLUDE]]),
        (f"modality={DCM}|MR", [[("ModalitiesInStudy", "MR"), INCLUDE]]),
        ("modality=http://other|MR", []),
        (f"modality={DCM}|", [[INCLUDE]]),  # any DCM modality: no constraint
        ("modality=mr", []),  # DCM codes are upper case: nothing can match
        ("modality:not=CT", [[INCLUDE]]),  # checked in the gateway only
        # UIDs: a list; AND'ed with _id: the intersection.
        (
            "identifier=urn:dicom:uid|urn:oid:1.2.3,urn:dicom:uid|urn:oid:1.2.4",
            [[("StudyInstanceUID", "1.2.3,1.2.4"), INCLUDE]],
        ),
        (
            "identifier=urn:dicom:uid|urn:oid:1.2.3,urn:dicom:uid|urn:oid:1.2.4&_id=1.2.4,1.2.5",
            [[("StudyInstanceUID", "1.2.4"), INCLUDE]],
        ),
        ("identifier=urn:dicom:uid|urn:oid:1.2.3&_id=1.2.4", []),
        # Accession numbers: one query each (per patient).
        (
            "patient.identifier=|111&identifier=A1,A2",
            [
                [("PatientID", "111"), ("AccessionNumber", "A1"), INCLUDE],
                [("PatientID", "111"), ("AccessionNumber", "A2"), INCLUDE],
            ],
        ),
        ("identifier=A1&identifier=A2", []),
        # A clause mixing a UID and an accession number is left to the gateway.
        ("identifier=urn:oid:1.2.3,A1", [[INCLUDE]]),
        # Everything at once.
        (
            "patient.identifier=|111&identifier=urn:oid:1.2.3&started=2024&modality=MR",
            [
                [
                    ("PatientID", "111"),
                    ("StudyInstanceUID", "1.2.3"),
                    ("StudyDate", "20240101-20241231"),
                    ("ModalitiesInStudy", "MR"),
                    INCLUDE,
                ]
            ],
        ),
        ("started=2024-06-30", [[("StudyDate", "20240630"), INCLUDE]]),
        ("started=gt2024-06", [[("StudyDate", "20240701-"), INCLUDE]]),
        ("started=lt2024-06", [[("StudyDate", "-20240531"), INCLUDE]]),
        ("started=2023&started=2024", []),
        ("status=available", [[INCLUDE]]),
        ("status=cancelled", []),
        ("status:not=available", []),
        ("bodysite=12738006&series=1.2.3&dicom-class=1.2.4&instance=1.2.5", [[INCLUDE]]),
    ],
)
def test_push_down(query: str, pushed: list[list[tuple[str, str]]]) -> None:
    assert _qido(query) == pushed


def test_modality_and_across_clauses() -> None:
    search = _search("modality=CT,MR&modality=SR")
    assert matches_study(search, _study(modalities=("MR", "SR")), ISSUERS)
    assert not matches_study(search, _study(modalities=("MR",)), ISSUERS)
    assert not matches_study(search, _study(modalities=("SR",)), ISSUERS)


def test_modality_not() -> None:
    search = _search("modality:not=CT")
    assert matches_study(search, _study(modalities=("MR",)), ISSUERS)
    assert not matches_study(search, _study(modalities=("CT", "MR")), ISSUERS)
    assert search.self_params() == [("modality:not", "CT")]


def test_modality_no_system_policy() -> None:
    assert _qido("modality=|MR") == [[("ModalitiesInStudy", "MR"), INCLUDE]]
    assert _qido("modality=|MR", no_system=NoSystem.NONE) == []
    strict = _search("modality=|MR", no_system=NoSystem.NONE)
    assert not matches_study(strict, _study(), ISSUERS)


def test_too_many_queries() -> None:
    eleven = ",".join(f"|{i}" for i in range(MAX_QUERIES + 1))
    with pytest.raises(BadRequest) as info:
        _qido(f"patient.identifier={eleven}")
    assert info.value.detail["parameter"] == "patient"
    # Patients times accessions past the limit: the accessions are left to the gateway.
    five = ",".join(f"|{i}" for i in range(5))
    queries = _qido(f"patient.identifier={five}&identifier=A1,A2,A3")
    assert [q[0] for q in queries] == [("PatientID", str(i)) for i in range(5)]
    assert all(k != "AccessionNumber" for q in queries for k, _ in q)


IDENTIFIER_STUDY = _study("1.2.840.1", accession="ACC1")


@pytest.mark.parametrize(
    ("value", "pushed", "matches"),
    [
        ("urn:dicom:uid|urn:oid:1.2.840.1", [("StudyInstanceUID", "1.2.840.1")], True),
        ("urn:dicom:uid|1.2.840.1", [("StudyInstanceUID", "1.2.840.1")], True),
        ("urn:ietf:rfc:3986|urn:oid:1.2.840.1", [("StudyInstanceUID", "1.2.840.1")], True),
        ("urn:oid:1.2.840.1", [("StudyInstanceUID", "1.2.840.1")], True),
        ("|urn:oid:1.2.840.1", [("StudyInstanceUID", "1.2.840.1")], True),
        ("urn:dicom:uid|urn:oid:1.2.840.2", [("StudyInstanceUID", "1.2.840.2")], False),
        ("ACC1", [("AccessionNumber", "ACC1")], True),
        ("|ACC1", [("AccessionNumber", "ACC1")], True),
        ("http://hospital.example/acc|ACC1", [("AccessionNumber", "ACC1")], True),
        ("ACC2", [("AccessionNumber", "ACC2")], False),
        ("acc1", [("AccessionNumber", "acc1")], False),  # exact, as FHIR identifiers
        ("1.2.840.1", [("AccessionNumber", "1.2.840.1")], False),  # a UID is urn:oid:
        ("urn:dicom:uid|", [], True),
        ("http://hospital.example/acc|", [], True),
    ],
)
def test_identifier(value: str, pushed: list[tuple[str, str]], matches: bool) -> None:
    search = _search(f"identifier={value}")
    assert _qido(f"identifier={value}") == [[*pushed, INCLUDE]]
    assert matches_study(search, IDENTIFIER_STUDY, ISSUERS) is matches
    negated = _search(f"identifier:not={value}")
    assert matches_study(negated, IDENTIFIER_STUDY, ISSUERS) is not matches
    assert _qido(f"identifier:not={value}") == [[INCLUDE]]


def test_identifier_without_accession() -> None:
    search = _search("identifier=http://hospital.example/acc|")
    assert not matches_study(search, _study(accession=None), ISSUERS)


def test_identifier_or_mixed() -> None:
    search = _search("identifier=urn:oid:1.2.840.9,ACC1")
    assert matches_study(search, IDENTIFIER_STUDY, ISSUERS)
    assert not matches_study(search, _study("1.2.840.8", accession="X"), ISSUERS)


def test_id_and_sites() -> None:
    search = _search("_id=1.2.840.1")
    assert _qido("_id=1.2.840.1") == [[("StudyInstanceUID", "1.2.840.1"), INCLUDE]]
    assert matches_study(search, IDENTIFIER_STUDY, ISSUERS)
    # On another site ImagingStudy ids are digests: the UID is no id there.
    assert not matches_study(search, IDENTIFIER_STUDY, ISSUERS, site_id="b")
    digest = mapping.study_id("1.2.840.1", "b")
    on_b = _search(f"_id={digest}")
    assert matches_study(on_b, IDENTIFIER_STUDY, ISSUERS, site_id="b")
    with pytest.raises(BadRequest) as info:
        to_qido(on_b, ISSUERS)
    assert info.value.detail["parameter"] == "_id"
    resolved = resolve_digests(on_b, patient=lambda _: None, study={digest: "1.2.840.1"}.get)
    assert to_qido(resolved, ISSUERS) == [[("StudyInstanceUID", "1.2.840.1"), INCLUDE]]
    assert (
        to_qido(resolve_digests(on_b, patient=lambda _: None, study=lambda _: None), ISSUERS) == []
    )
    assert _qido("_id=not-a-uid") == []  # no id of ours: nothing to ask
    assert on_b.digests() == ([], [digest])
    assert _search("_id=not-a-uid,1.2.3").digests() == ([], [])
    assert study_uid_for_id("1.2.840.1") == "1.2.840.1"
    assert study_uid_for_id(digest) is None


# --- aliases, self link, result parameters --------------------------------------------------


@pytest.mark.parametrize(("alias", "name"), [("reasonCode", "reason"), ("body-site", "bodysite")])
def test_aliases(alias: str, name: str) -> None:
    value = f"{SCT}|90708001,|12738006"
    assert _search(f"{alias}={value}") == _search(f"{name}={value}")
    assert _search(f"{alias}={value}").self_params() == [(name, value)]


def test_self_params_normalised() -> None:
    search = _search(
        "reasonCode=|90708001&foo=bar&started=eq2024&modality=MR,MR&identifier=A\\,B"
        "&_sort=-started&_count=5&_format=json&_include=ImagingStudy:subject&modality=",
        strict=False,
    )
    assert search.self_params() == [
        ("reason", "|90708001"),
        ("started", "2024"),
        ("modality", "MR"),
        ("identifier", "A\\,B"),
        ("_sort", "-started"),
        ("_count", "5"),
        ("_format", "json"),
        ("_include", "ImagingStudy:patient"),
    ]
    assert search.ignored == (("foo", "bar"), ("modality", ""))
    assert search.passthrough == (("_format", "json"),)


@pytest.mark.parametrize(
    ("query", "field", "value"),
    [
        ("_count=5", "count", 5),
        ("_count=0", "count", 0),
        ("_count=5000", "count", 100),  # max_count
        ("_offset=20", "offset", 20),
        ("_summary=count", "summary_count", True),
        ("_summary=false", "summary_count", False),
        ("_sort=started", "sort", "started"),
        ("_sort=-started", "sort", "-started"),
        ("_sort=-started,started", "sort", "-started"),
        ("_elements=identifier,started", "elements", ("identifier", "started")),
        ("_elements=identifier&_elements=series,identifier", "elements", ("identifier", "series")),
        ("_include=ImagingStudy:endpoint", "include", ("ImagingStudy:endpoint",)),
        (
            "_include=ImagingStudy:patient&_include:iterate=ImagingStudy:endpoint:Endpoint",
            "include",
            INCLUDES[::-1],
        ),
        ("_include=ImagingStudy:subject:Patient", "include", ("ImagingStudy:patient",)),
    ],
)
def test_result_parameters(query: str, field: str, value: object) -> None:
    assert getattr(_search(query, max_count=100), field) == value


def test_result_parameter_defaults() -> None:
    search = _search("")
    assert (search.count, search.offset, search.sort, search.include) == (None, 0, None, ())
    assert not search.summary_count and search.self_params() == []
    assert _search("_offset=0").self_params() == [("_offset", "0")]


@pytest.mark.parametrize(
    "query",
    [
        "foo=bar",
        "_lastUpdated=gt2024",
        "_total=accurate",
        "modality:text=MR",
        "modality:in=http://vs",
        "started:missing=true",
        "patient.name=Novak",
        "patient:Group=1",
        "identifier.system=x",
        "_include=ImagingStudy:referrer",
        "_include=*",
        "_include:recurse=ImagingStudy:endpoint",
        "_summary=true",
        "_summary=data",
        "_sort=_id",
        "_elements=nonsense",
        "Modality=MR",  # names are case-sensitive
    ],
)
def test_unknown_and_unsupported(query: str) -> None:
    name, value = _pairs(query)[0]
    lenient = _search(query, strict=False)
    assert lenient.self_params() == []
    assert lenient.ignored in (((name, value),), ((name, value.split(",")[0]),))
    assert lenient == StudySearch(used=(), ignored=lenient.ignored)
    with pytest.raises(BadRequest) as info:
        _search(query, strict=True)
    assert info.value.detail["parameter"] == name
    assert "strict" in info.value.message


def test_lenient_keeps_the_rest() -> None:
    search = _search("foo=1&modality=MR&_elements=started,nonsense", strict=False)
    assert search.self_params() == [("modality", "MR"), ("_elements", "started")]
    assert search.ignored == (("foo", "1"), ("_elements", "nonsense"))


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("started=2024-13", "started"),
        ("started=ge2024,xx", "started"),
        ("started=2024-06-30T10", "started"),
        ("identifier=urn:dicom:uid|urn:oid:1.2.x", "identifier"),
        ("identifier=urn:dicom:uid|urn:oid:", "identifier"),
        ("series=abc", "series"),
        ("instance=urn:oid:1..2", "instance"),
        ("dicom-class:not=1.2.", "dicom-class:not"),
        ("reason=a|b|c", "reason"),
        ("reasonCode=|", "reasonCode"),
        ("patient.identifier=|", "patient.identifier"),
        ("patient=Patient/a b", "patient"),
        ("patient=a/b/c", "patient"),
        ("subject=Patient/", "subject"),
        ("_id=bad id", "_id"),
        ("_id=" + "1" * 65, "_id"),
        ("_count=-1", "_count"),
        ("_count=ten", "_count"),
        ("_count=5&_count=6", "_count"),
        ("_offset=x", "_offset"),
        ("_sort=started&_sort=-started", "_sort"),
        ("modality=,,", "modality"),
        ("modality=" + ",".join(f"M{i}" for i in range(101)), "modality"),
        ("modality=M\x01R", "modality"),
        ("modality=" + "M" * 1025, "modality"),
    ],
)
def test_malformed(query: str, parameter: str) -> None:
    for strict in (True, False):  # malformed is a 400 whatever the handling
        with pytest.raises(BadRequest) as info:
            _search(query, strict=strict)
        assert info.value.detail["parameter"] == parameter
        assert info.value.status == 400


def test_too_many_parameters() -> None:
    with pytest.raises(BadRequest):
        _search([("modality", "MR")] * 65)
    _search([("modality", "MR")] * 64)


# --- series and instance level -------------------------------------------------------------

BRAIN = "12738006"


@pytest.mark.parametrize(
    ("query", "series", "expected"),
    [
        (f"bodysite={SCT}|{BRAIN}", [_series("1.1", "BRAIN")], True),
        (f"bodysite={BRAIN}", [_series("1.1", "CHEST"), _series("1.2", "BRAIN")], True),
        (f"bodysite=|{BRAIN}", [_series("1.1", "BRAIN")], True),
        (f"bodysite=http://other|{BRAIN}", [_series("1.1", "BRAIN")], False),
        (f"bodysite={BRAIN}", [_series("1.1", "CHEST")], False),
        (f"bodysite={BRAIN}", [_series("1.1")], False),
        (f"bodysite={BRAIN}", [], False),
        (f"bodysite:not={BRAIN}", [_series("1.1", "CHEST")], True),
        (f"bodysite:not={BRAIN}", [_series("1.1", "CHEST"), _series("1.2", "BRAIN")], False),
        ("body-site=38266002", [_series("1.1", "whole body")], True),  # as the mapping reads it
        ("bodysite=HEAD", [_series("1.1", "HEAD")], False),  # the DICOM term is no SNOMED code
        (f"bodysite={SCT}|", [_series("1.1", "HEAD")], True),
        (f"bodysite={SCT}|", [_series("1.1", "NOTATERM")], False),
        # AND: each clause may be met by another series.
        (
            f"bodysite={BRAIN}&bodysite=816094009",
            [_series("1", "BRAIN"), _series("2", "CHEST")],
            True,
        ),
        (f"bodysite={BRAIN}&bodysite=816094009", [_series("1", "BRAIN")], False),
        ("series=1.2.3", [_series("1.2.3")], True),
        ("series=urn:oid:1.2.3", [_series("1.2.3")], True),
        ("series=urn:dicom:uid|urn:oid:1.2.3", [_series("1.2.3")], True),
        ("series=|1.2.3", [_series("1.2.3")], True),
        ("series=http://other|1.2.3", [_series("1.2.3")], False),
        ("series=1.2.4,1.2.3", [_series("1.2.3")], True),
        ("series=1.2.4", [_series("1.2.3")], False),
        ("series:not=1.2.4", [_series("1.2.3")], True),
        ("series=1.2.3&bodysite=69536005", [_series("1.2.3"), _series("1.2.4", "HEAD")], True),
    ],
)
def test_matches_series(query: str, series: list[Json], expected: bool) -> None:
    search = _search(query)
    assert needs_series(search) and not needs_instances(search)
    assert matches_series(search, _study(), series) is expected


@pytest.mark.parametrize(
    ("query", "study", "series", "expected"),
    [
        # Where the reason codes sit: study (0040,1012), study (0040,100A), study or series
        # Request Attributes Sequence (0040,0275) > (0040,100A).
        ("reason=90708001", {"00401012": _el("SQ", _code("90708001"))}, [], True),
        ("reason=90708001", {"0040100A": _el("SQ", _code("90708001"))}, [], True),
        (
            "reason=90708001",
            {"00400275": _el("SQ", {"0040100A": _el("SQ", _code("90708001"))})},
            [],
            True,
        ),
        (f"reason={SCT}|90708001", {"00401012": _el("SQ", _code("90708001"))}, [], True),
        ("reason=http://loinc.org|90708001", {"00401012": _el("SQ", _code("90708001"))}, [], False),
        ("reason=|90708001", {"00401012": _el("SQ", _code("90708001"))}, [], True),
        ("reason=|L1", {"00401012": _el("SQ", _code("L1", scheme="99LOCAL"))}, [], True),
        ("reason=90708001", {"00401012": _el("SQ", _code("123"))}, [], False),
        ("reason=90708001", {}, [], False),
        ("reason:not=90708001", {}, [], True),
        (
            "reason=90708001&reason=123",  # AND over codes from both levels
            {"00401012": _el("SQ", _code("123"))},
            [{"00400275": _el("SQ", {"0040100A": _el("SQ", _code("90708001"))})}],
            True,
        ),
    ],
)
def test_matches_reason(query: str, study: Json, series: list[Json], expected: bool) -> None:
    search = _search(query)
    assert needs_series(search)
    assert matches_series(search, _study(extra=study), series) is expected


def test_reason_no_system_policy() -> None:
    study = _study(extra={"00401012": _el("SQ", _code("90708001"))})
    strict = _search("reason=|90708001", no_system=NoSystem.NONE)
    assert not matches_series(strict, study, [])
    assert matches_series(_search("reason=|90708001"), study, [])


def _instance(sop_class: str, uid: str) -> Json:
    return {"00080016": _el("UI", sop_class), "00080018": _el("UI", uid)}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"dicom-class={MR_IMAGE}", True),
        (f"dicom-class=urn:oid:{MR_IMAGE}", True),
        (f"dicom-class=urn:ietf:rfc:3986|urn:oid:{MR_IMAGE}", True),
        (f"dicom-class={CT_IMAGE}", False),
        (f"dicom-class={CT_IMAGE},{MR_IMAGE}", True),
        (f"dicom-class:not={CT_IMAGE}", True),
        (f"dicom-class=http://other|{MR_IMAGE}", False),
        ("instance=1.2.3.1", True),
        ("instance=1.2.3.9", False),
        (f"instance=1.2.3.1&dicom-class={MR_IMAGE}", True),
        (f"dicom-class={MR_IMAGE}&dicom-class=1.2.840.10008.5.1.4.1.1.88.11", True),
        (f"dicom-class={MR_IMAGE}&dicom-class=1.2.840.10008.5.1.4.1.1.88.22", False),
    ],
)
def test_matches_instances(query: str, expected: bool) -> None:
    search = _search(query)
    assert needs_instances(search) and not needs_series(search)
    instances = [
        _instance(MR_IMAGE, "1.2.3.1"),
        _instance("1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.2"),
    ]
    assert matches_instances(search, instances) is expected


def test_nothing_below_the_study_level() -> None:
    search = _search(EXAMPLES[0][0])
    assert matches_series(search, _study(), []) and matches_instances(search, [])


def test_status() -> None:
    study = _study()
    assert matches_study(_search("status=available"), study, ISSUERS)
    assert matches_study(
        _search("status=http://hl7.org/fhir/imagingstudy-status|available"), study, ISSUERS
    )
    assert not matches_study(_search("status=cancelled"), study, ISSUERS)
    assert matches_study(_search("status:not=cancelled"), study, ISSUERS)


def test_started_in_the_gateway() -> None:
    # StudyDate is pushed as whole days; the time of day and its zone are checked here.
    search = _search("started=gt2024-03-14T10:00Z")
    assert _qido("started=gt2024-03-14T10:00Z") == [[("StudyDate", "20240313-"), INCLUDE]]
    offset = {"00080201": _el("SH", "+0100")}
    assert not matches_study(search, _study(time="101500", extra=offset), ISSUERS)  # 09:15Z
    assert matches_study(search, _study(time="111500", extra=offset), ISSUERS)  # 10:15Z
    assert matches_study(search, _study(time="101500"), ISSUERS, site_tz=UTC)
    # Without an offset nor a site zone the time means nothing: the whole day overlaps.
    assert matches_study(search, _study(time="080000"), ISSUERS)
    assert not matches_study(search, _study(time="080000"), ISSUERS, site_tz=UTC)


def test_sort_studies() -> None:
    studies = [
        _study("1", day="20240301"),
        _study("2", day=None),
        _study("3", day="20250101"),
        _study("4", day="20231231"),
    ]
    uid = "0020000D"
    assert [s[uid]["Value"][0] for s in sort_studies(_search("_sort=started"), studies)] == list(
        "4132"
    )
    assert [s[uid]["Value"][0] for s in sort_studies(_search("_sort=-started"), studies)] == list(
        "3142"
    )
    assert sort_studies(_search(""), studies) == studies


def test_lower_qido() -> None:
    uids = [f"1.2.{i}" for i in range(250)]
    series = lower_qido(Level.SERIES, uids)
    assert [len(q[0][1].split(",")) for q in series] == [100, 100, 50]
    assert series[0][1] == ("includefield", ",".join(SERIES_INCLUDEFIELDS))
    for params in series:
        parse_qido(params, Level.SERIES)
    instances = lower_qido(Level.INSTANCE, uids[:3])
    assert instances == [
        [
            ("StudyInstanceUID", "1.2.0,1.2.1,1.2.2"),
            ("includefield", ",".join(INSTANCE_INCLUDEFIELDS)),
        ]
    ]
    assert lower_qido(Level.SERIES, []) == []
    with pytest.raises(ValueError, match="series or the instance"):
        lower_qido(Level.STUDY, uids)


# --- the body part table ------------------------------------------------------------------------


SCT_MEANINGS: dict[str, set[str]] = {}
for _entries in cast(dict[str, dict[str, tuple[str, list[int]]]], concepts["SCT"]).values():
    for _code_value, (_meaning, _) in _entries.items():
        SCT_MEANINGS.setdefault(_code_value, set()).add(_meaning)


@pytest.mark.parametrize(("term", "row"), sorted(BODY_PART_SNOMED.items()))
def test_body_part_codes_are_dicom_snomed_codes(term: str, row: tuple[str, str]) -> None:
    # pydicom's copy of the DICOM code tables (PS3.16): the code exists with that meaning.
    code, display = row
    assert display in SCT_MEANINGS.get(code, set()), (term, code)
    assert term == term.upper().replace(" ", "")


def test_body_part_table_covers_the_brief() -> None:
    for term in (
        "HEAD",
        "BRAIN",
        "CHEST",
        "ABDOMEN",
        "PELVIS",
        "KIDNEY",
        "LIVER",
        "HEART",
        "SPINE",
        "KNEE",
    ):
        assert term in BODY_PART_SNOMED


@pytest.mark.parametrize(
    "params",
    [
        [("patient\udcff", "x")],
        [("_count", "\ud800")],
        [("started", "2024\udcff")],
        [("identifier", "a|b|\udcff")],
        [("modality", "\x00\ud800")],
    ],
)
def test_bytes_that_are_not_utf8_are_refused_sendably(params: list[tuple[str, str]]) -> None:
    """Regression: a lone surrogate in a refused parameter was echoed in ``detail`` as it
    was, and the JSON encoder of the OperationOutcome raised (a 500)."""
    with pytest.raises(BadRequest) as caught:
        parse_study_search(params, strict=True)
    orjson.dumps(operation_outcome(caught.value))
