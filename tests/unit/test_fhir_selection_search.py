"""FHIR R5 ImagingSelection search (fhir/selection_search.py): parsing, matching, push-down."""

from __future__ import annotations

from typing import Any

import pytest

from ncpeh_dicomweb.errors import BadRequest
from ncpeh_dicomweb.fhir.criteria import MAX_QUERIES, PatientRef
from ncpeh_dicomweb.fhir.kos import ListedInstance
from ncpeh_dicomweb.fhir.search import TokenClause
from ncpeh_dicomweb.fhir.selection import imaging_selection, kos_selection_id, new_selection_id
from ncpeh_dicomweb.fhir.selection_search import (
    STATUS_SYSTEM,
    SelectionSearch,
    matches_selection,
    pacs_queries,
    parse_selection_search,
    resolve_digests,
)
from ncpeh_dicomweb.fhir.tokens import IssuerTable, NoSystem, PatientKey, Token, patient_resource_id

CZ = "urn:oid:1.2.203.24341.1.2"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
ISSUERS = IssuerTable.from_pairs([(CZ, "CZ-NRZP")])
STUDY = "1.2.840.1"
OTHER = "1.2.840.2"
PATIENT = patient_resource_id("456789123", "CZ-NRZP")
IDENTITY = ("456789123", "CZ-NRZP")
KOS_ID = kos_selection_id("1.2.840.1.9", 1, None)

Json = dict[str, Any]
Params = list[tuple[str, str]]


def _search(params: Params, *, strict: bool = False, **kwargs: Any) -> SelectionSearch:
    return parse_selection_search(params, strict=strict, max_count=100, **kwargs)


def _q(query: str, **kwargs: Any) -> SelectionSearch:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
    return _search([(k, v) for k, v in pairs], **kwargs)


def _resource(
    *,
    resource_id: str = KOS_ID,
    status: str = "available",
    code: Json | None = None,
    study_uid: str = STUDY,
    patient_id: str | None = PATIENT,
    study_resource_id: str | None = STUDY,
) -> Json:
    return imaging_selection(
        resource_id=resource_id,
        status=status,
        code=code or {"coding": [{"system": DCM, "code": "113000", "display": "Of Interest"}]},
        study_uid=study_uid,
        series_uid=f"{study_uid}.1",
        instances=[ListedInstance(f"{study_uid}.1.1", None)],
        patient_id=patient_id,
        study_resource_id=study_resource_id,
        retrieve_url="https://gw/x",
        issued=None,
    )


def _matches(query: str, resource: Json | None = None, **kwargs: Any) -> bool:
    identity = kwargs.pop("identity", IDENTITY)
    search = _q(query, **kwargs)
    return matches_selection(search, resource or _resource(), ISSUERS, identity)


# ---- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (f"{DCM}|113000", Token(DCM, "113000")),
        ("|113000", Token("", "113000")),
        ("113000", Token(None, "113000")),
        (f"{DCM}|", Token(DCM, None)),
        ("a\\|b", Token(None, "a|b")),  # an escaped bar is part of the code
        ("a\\,b", Token(None, "a,b")),
    ],
)
def test_code_token_forms(value: str, token: Token) -> None:
    search = _search([("code", value)])
    assert search.codes == (TokenClause((token,)),)
    assert search.self_params() == [("code", token.text())]


def test_or_and_not() -> None:
    search = _q("code=113000,113001&code:not=113002&status=available,unknown")
    assert search.codes == (
        TokenClause((Token(None, "113000"), Token(None, "113001"))),
        TokenClause((Token(None, "113002"),), negated=True),
    )
    assert search.statuses == (TokenClause((Token(None, "available"), Token(None, "unknown"))),)
    assert search.self_params() == [
        ("code", "113000,113001"),
        ("code:not", "113002"),
        ("status", "available,unknown"),
    ]


@pytest.mark.parametrize(
    ("value", "uids", "text"),
    [
        (STUDY, (STUDY,), STUDY),
        (f"urn:oid:{STUDY}", (STUDY,), STUDY),
        (f"urn:dicom:uid|urn:oid:{STUDY}", (STUDY,), f"urn:dicom:uid|{STUDY}"),
        (f"urn:ietf:rfc:3986|{STUDY}", (STUDY,), f"urn:ietf:rfc:3986|{STUDY}"),
        (f"|{STUDY}", (STUDY,), f"|{STUDY}"),
        (f"http://example.org|{STUDY}", (), f"http://example.org|{STUDY}"),  # names nothing
        (f"{STUDY},urn:oid:{OTHER},{STUDY}", (STUDY, OTHER), f"{STUDY},{OTHER}"),
    ],
)
def test_study_uid_forms(value: str, uids: tuple[str, ...], text: str) -> None:
    search = _search([("study-uid", value)])
    assert search.study_uids == (uids,)
    assert search.self_params() == [("study-uid", text)]


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        (f"ImagingStudy/{STUDY}", (STUDY,)),
        (STUDY, (STUDY,)),
        (f"https://fhir.example/R5/ImagingStudy/{STUDY}", (STUDY,)),
        ("DocumentReference/d1", ()),  # another type: matches nothing
        ("ImagingStudy/a,ImagingStudy/b,DocumentReference/d", ("a", "b")),
    ],
)
def test_derived_from_forms(value: str, ids: tuple[str, ...]) -> None:
    search = _search([("derived-from", value)])
    assert search.derived_from == (ids,)
    assert _search([("derived-from:ImagingStudy", value)]).derived_from == (ids,)


def test_derived_study_ids() -> None:
    search = _q("derived-from=a,b&derived-from=b,c")
    assert search.derived_study_ids() == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("query", "criteria"),
    [
        (f"patient=Patient/{PATIENT}", (PatientRef(PATIENT, PatientKey(*IDENTITY)),)),
        (f"subject={PATIENT}", (PatientRef(PATIENT, PatientKey(*IDENTITY)),)),
        (f"patient:Patient={PATIENT}", (PatientRef(PATIENT, PatientKey(*IDENTITY)),)),
        ("patient=Group/g", (PatientRef("Group/g", None),)),
        (f"patient.identifier={CZ}|456789123", (Token(CZ, "456789123"),)),
        ("subject:identifier=|456789123", (Token("", "456789123"),)),
        ("patient.identifier=a,b", (Token(None, "a"), Token(None, "b"))),
    ],
)
def test_patient_forms(query: str, criteria: tuple[Any, ...]) -> None:
    assert _q(query).patients == (criteria,)


def test_ids_count_offset_summary() -> None:
    search = _q("_id=a,b&_id=b&_count=500&_offset=20&_summary=count&_format=json")
    assert search.ids == (("a", "b"), ("b",))
    assert search.count == 100  # lowered to max_count
    assert search.offset == 20
    assert search.summary_count
    assert search.passthrough == (("_format", "json"),)
    assert search.self_params() == [
        ("_id", "a,b"),
        ("_id", "b"),
        ("_count", "100"),
        ("_offset", "20"),
        ("_summary", "count"),
        ("_format", "json"),
    ]
    assert not _q("_summary=false").summary_count
    assert _q("").count is None and _q("").offset == 0


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("_id=a/b", "_id"),
        ("_id=" + "a" * 65, "_id"),
        ("study-uid=1.2.x", "study-uid"),
        ("study-uid=urn:dicom:uid|", "study-uid"),
        ("study-uid=|", "study-uid"),
        ("derived-from=ImagingStudy/a b", "derived-from"),
        ("derived-from=x/ImagingStudy/a", "derived-from"),
        ("patient=Patient/a b", "patient"),
        ("code=a|b|c", "code"),
        ("code=,", "code"),
        ("_count=-1", "_count"),
        ("_count=x", "_count"),
        ("_count=1&_count=2", "_count"),
        ("_offset=1.5", "_offset"),
        ("_summary=count&_summary=count", "_summary"),
        ("code=a\x01", "code"),
    ],
)
def test_bad_values_400(query: str, parameter: str) -> None:
    for strict in (False, True):
        with pytest.raises(BadRequest) as info:
            _q(query, strict=strict)
        assert info.value.status == 400
        assert info.value.detail["parameter"] == parameter


@pytest.mark.parametrize(
    "query",
    [
        "bodysite=x",  # an R5 parameter this gateway does not support
        "modality=MR",
        "code:text=key",
        "study-uid:not=1.2",
        "patient.name=x",
        "derived-from:DocumentReference=d",
        "_id:not=a",
        "_summary=true",
    ],
)
def test_unsupported_ignored_or_strict(query: str) -> None:
    search = _q(query)
    name, value = query.split("=", 1)
    assert search.ignored == ((name, value),)
    assert search.self_params() == []
    assert search == SelectionSearch(no_system=NoSystem.ANY)
    with pytest.raises(BadRequest) as info:
        _q(query, strict=True)
    assert "strict" in info.value.message
    assert info.value.detail["parameter"] == name


def test_empty_value_ignored_and_limits() -> None:
    assert _q("code=").ignored == (("code", ""),)
    with pytest.raises(BadRequest):
        _search([("code", "a")] * 65)
    _search([("code", "a")] * 64)
    with pytest.raises(BadRequest):
        _search([("code", ",".join(str(n) for n in range(101)))])


# ---- matching --------------------------------------------------------------------------------


def test_match_id() -> None:
    assert _matches(f"_id={KOS_ID},x")
    assert not _matches("_id=x")
    assert not _matches(f"_id={KOS_ID}&_id=x")  # AND


@pytest.mark.parametrize(
    ("query", "identity", "expected"),
    [
        (f"patient=Patient/{PATIENT}", IDENTITY, True),
        (f"patient={PATIENT}", None, True),  # the subject reference alone
        ("patient=Patient/other", IDENTITY, False),
        ("patient=Group/g", IDENTITY, False),
        (f"patient.identifier={CZ}|456789123", IDENTITY, True),
        ("patient.identifier=456789123", IDENTITY, True),
        ("patient.identifier=|456789123", IDENTITY, True),  # NoSystem.ANY
        ("patient.identifier=urn:oid:1.2.3|456789123", IDENTITY, False),
        (f"patient.identifier={CZ}|", IDENTITY, True),
        ("patient.identifier=456789123", None, False),  # no identity known
        ("patient.identifier=1,456789123", IDENTITY, True),
        (f"patient.identifier=1&patient={PATIENT}", IDENTITY, False),
    ],
)
def test_match_patient(query: str, identity: tuple[str, str | None] | None, expected: bool) -> None:
    assert _matches(query, identity=identity) is expected


def test_match_patient_no_system_none() -> None:
    assert not _matches("patient.identifier=|456789123", no_system=NoSystem.NONE)
    no_issuer = ("456789123", None)
    assert _matches("patient.identifier=|456789123", identity=no_issuer, no_system=NoSystem.NONE)


def test_match_digest_patient() -> None:
    long_id = "9" * 64
    digest = patient_resource_id(long_id, "CZ-NRZP")
    resource = _resource(patient_id=digest)
    assert _matches(f"patient={digest}", resource, identity=(long_id, "CZ-NRZP"))
    assert _matches(f"patient={digest}", resource, identity=None)  # by the subject reference


def test_match_no_subject() -> None:
    resource = _resource(patient_id=None)
    assert not _matches(f"patient={PATIENT}", resource, identity=None)
    assert _matches(f"patient={PATIENT}", resource)  # the caller knows who it is about


def test_match_study_uid_and_derived_from() -> None:
    assert _matches(f"study-uid={STUDY}")
    assert _matches(f"study-uid=urn:oid:{OTHER},{STUDY}")
    assert not _matches(f"study-uid={OTHER}")
    assert not _matches(f"study-uid={STUDY}&study-uid={OTHER}")
    assert not _matches(f"study-uid=http://x|{STUDY}")
    assert _matches(f"derived-from=ImagingStudy/{STUDY}")
    assert not _matches(f"derived-from=ImagingStudy/{OTHER}")
    assert not _matches("derived-from=DocumentReference/d")
    assert not _matches(f"derived-from={STUDY}", _resource(study_resource_id=None))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("code=113000", True),
        (f"code={DCM}|113000", True),
        (f"code={DCM}|", True),
        ("code=|113000", True),
        (f"code={SCT}|113000", False),
        (f"code={SCT}|", False),
        ("code=113001,113000", True),
        ("code=113001", False),
        ("code:not=113001", True),
        ("code:not=113000", False),
        ("code=113000&code=113001", False),
        ("status=available", True),
        (f"status={STATUS_SYSTEM}|available", True),
        ("status=entered-in-error", False),
        ("status:not=entered-in-error", True),
    ],
)
def test_match_code_and_status(query: str, expected: bool) -> None:
    assert _matches(query) is expected


def test_match_code_no_system() -> None:
    resource = _resource(code={"coding": [{"code": "k"}], "text": "key"})
    assert _matches("code=|k", resource, no_system=NoSystem.NONE)
    assert not _matches("code=|113000", no_system=NoSystem.NONE)
    assert not _matches("code=key", resource)  # text is not a token
    assert _matches("", _resource(code={"text": "only text"}))
    assert not _matches("code=k", _resource(code={"text": "only text"}))


def test_match_created_statuses() -> None:
    deleted = _resource(resource_id=new_selection_id(), status="entered-in-error")
    assert _matches("status=entered-in-error", deleted)
    assert not _matches("status=available", deleted)


# ---- push-down -------------------------------------------------------------------------------


def _pacs(query: str, uids: dict[str, str] | None = None) -> list[list[tuple[str, str]]]:
    return pacs_queries(_q(query), ISSUERS, (uids or {}).get)


def test_pacs_no_narrowing() -> None:
    assert _pacs("") == [[("Modality", "KO")]]
    assert _pacs("code=113000&status=available") == [[("Modality", "KO")]]
    assert _pacs(f"_id={KOS_ID}") == [[("Modality", "KO")]]
    assert _pacs("_id=k" + "0" * 48) == [[("Modality", "KO")]]  # a digest may be a KOS


def test_pacs_patient() -> None:
    by_ref = [("Modality", "KO"), ("PatientID", "456789123"), ("IssuerOfPatientID", "CZ-NRZP")]
    assert _pacs(f"patient=Patient/{PATIENT}") == [by_ref]
    assert _pacs(f"patient.identifier={CZ}|456789123") == [by_ref]
    assert _pacs("patient.identifier=456789123") == [
        [("Modality", "KO"), ("PatientID", "456789123")]
    ]
    assert _pacs("patient.identifier=a,b") == [
        [("Modality", "KO"), ("PatientID", "a")],
        [("Modality", "KO"), ("PatientID", "b")],
    ]
    assert _pacs("patient.identifier=a&patient.identifier=b") == []  # disjoint
    assert _pacs("patient.identifier=x,y|z") == [[("Modality", "KO"), ("PatientID", "x")]]
    assert _pacs("patient.identifier=*") == []  # would be a universal match
    assert _pacs("patient=Group/g") == []
    assert _pacs("patient.identifier=a\\,b") == [[("Modality", "KO"), ("PatientID", "a?b")]]


def test_pacs_too_many_patients() -> None:
    many = ",".join(str(n) for n in range(MAX_QUERIES + 1))
    with pytest.raises(BadRequest) as info:
        _pacs(f"patient.identifier={many}")
    assert info.value.detail["parameter"] == "patient"


def test_pacs_digest_patient() -> None:
    long_id = "9" * 64
    digest = patient_resource_id(long_id, "CZ-NRZP")
    search = _q(f"patient={digest},other")
    assert search.digests() == [digest]
    with pytest.raises(BadRequest) as info:
        pacs_queries(search, ISSUERS, {}.get)
    assert info.value.detail["parameter"] == "patient"
    resolved = resolve_digests(search, patient={digest: PatientKey(long_id, "CZ-NRZP")}.get)
    assert pacs_queries(resolved, ISSUERS, {}.get) == [
        [("Modality", "KO"), ("PatientID", long_id), ("IssuerOfPatientID", "CZ-NRZP")],
        [("Modality", "KO"), ("PatientID", "other")],  # Patient/other: PatientID other
    ]
    unknown = resolve_digests(search, patient=lambda _: None)
    assert pacs_queries(unknown, ISSUERS, {}.get) == [[("Modality", "KO"), ("PatientID", "other")]]
    assert (
        pacs_queries(
            resolve_digests(_q(f"patient={digest}"), patient=lambda _: None), ISSUERS, {}.get
        )
        == []
    )


def test_pacs_studies() -> None:
    both = [("Modality", "KO"), ("StudyInstanceUID", f"{STUDY},{OTHER}")]
    assert _pacs(f"study-uid={STUDY},urn:oid:{OTHER}") == [both]
    assert _pacs(f"study-uid={STUDY},{OTHER}&study-uid={OTHER}") == [
        [("Modality", "KO"), ("StudyInstanceUID", OTHER)]
    ]
    assert _pacs(f"study-uid={STUDY}&study-uid={OTHER}") == []
    assert _pacs(f"study-uid=http://x|{STUDY}") == []
    uids = {"s1": STUDY, "s2": OTHER}
    assert _pacs("derived-from=ImagingStudy/s1,s2", uids) == [both]
    assert _pacs(f"derived-from=s1&study-uid={STUDY}", uids) == [
        [("Modality", "KO"), ("StudyInstanceUID", STUDY)]
    ]
    assert _pacs(f"derived-from=s2&study-uid={STUDY}", uids) == []  # disjoint
    assert _pacs("derived-from=unknown", uids) == []  # an id naming no study
    assert _pacs("derived-from=DocumentReference/d", uids) == []


def test_pacs_patient_and_study() -> None:
    assert _pacs(f"patient.identifier=a,b&study-uid={STUDY}") == [
        [("Modality", "KO"), ("PatientID", "a"), ("StudyInstanceUID", STUDY)],
        [("Modality", "KO"), ("PatientID", "b"), ("StudyInstanceUID", STUDY)],
    ]


@pytest.mark.parametrize(
    "query",
    [
        "status=entered-in-error",
        "status:not=available",
        "status=http://example.org|available",
        f"_id={new_selection_id()}",
        f"_id={KOS_ID}&_id=plain",
    ],
)
def test_pacs_nothing_from_kos(query: str) -> None:
    assert _pacs(query) == []
