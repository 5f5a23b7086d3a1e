"""Patient-bound tokens, the pure part: which patient a token's claims name, what a binding
allows, how it narrows QIDO queries, and the short-lived cache of whose each study is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ncpeh_dicomweb.config import ConfigError, auth_from_mapping
from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.query import MatchKind, QidoQuery, parse_qido, to_params
from ncpeh_dicomweb.fhir.tokens import IssuerTable, PatientKey, patient_resource_id
from ncpeh_dicomweb.security.patient import (
    PatientBinding,
    PatientClaimError,
    PatientClaims,
    StudyPatients,
    patient_of,
    patients_in,
    study_query,
)
from ncpeh_dicomweb.security.tokens import TokenError

CZ_SYSTEM = "urn:oid:1.2.203.24341.1.2"
ISSUERS = IssuerTable.from_pairs([(CZ_SYSTEM, "CZ-NCPEH")])
CZ = PatientKey("456789123", "CZ-NCPEH")
CZ_ID = patient_resource_id(CZ.patient_id, CZ.issuer)  # 456789123-.CZ-2DNCPEH
BOTH = PatientClaims("patient", "patient_identifier", ISSUERS)


def _dataset(patient_id: str | None, issuer: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, **extra}
    if patient_id is not None:
        out["00100020"] = {"vr": "LO", "Value": [patient_id]}
    if issuer is not None:
        out["00100021"] = {"vr": "LO", "Value": [issuer]}
    return out


# ---------------------------------------------------------------- claims


def test_the_patient_claim_takes_our_ids_and_references() -> None:
    assert CZ_ID == "456789123-.CZ-2DNCPEH"
    assert patient_of({"patient": CZ_ID}, BOTH) == CZ
    assert patient_of({"patient": f"Patient/{CZ_ID}"}, BOTH) == CZ
    assert patient_of({"patient": "DE1000234"}, BOTH) == PatientKey("DE1000234", None)


def test_the_identifier_claim_maps_its_system_through_the_issuer_table() -> None:
    assert patient_of({"patient_identifier": f"{CZ_SYSTEM}|456789123"}, BOTH) == CZ
    as_object = {"patient_identifier": {"system": CZ_SYSTEM, "value": "456789123"}}
    assert patient_of(as_object, BOTH) == CZ
    # An OID issuer needs no table entry; no system names a patient without an issuer.
    oid = {"patient_identifier": "urn:oid:1.2.3.4|X1"}
    assert patient_of(oid, BOTH) == PatientKey("X1", "1.2.3.4")
    assert patient_of({"patient_identifier": "|X1"}, BOTH) == PatientKey("X1", None)
    assert patient_of({"patient_identifier": {"value": "X1"}}, BOTH) == PatientKey("X1", None)
    # Spaces around values are not significant in DICOM (LO).
    assert patient_of({"patient_identifier": f"{CZ_SYSTEM}| 456789123 "}, BOTH) == CZ


def test_no_claim_is_an_unbound_token() -> None:
    assert patient_of({"sub": "x", "scope": "system/*.rs"}, BOTH) is None
    # A claim that is not configured is not read.
    only_patient = PatientClaims("patient", None, ISSUERS)
    assert patient_of({"patient_identifier": "garbage"}, only_patient) is None
    nothing = PatientClaims(None, None, ISSUERS)
    assert patient_of({"patient": CZ_ID}, nothing) is None


@pytest.mark.parametrize(
    "claims",
    [
        {"patient": 456789123},
        {"patient": None},
        {"patient": ""},
        {"patient": "Patient/"},
        {"patient": ["456789123"]},
        {"patient": "not an id!"},
        {"patient": "-x" + "0" * 62},  # a digest id names no patient we can match
        {"patient_identifier": "456789123"},  # no bar: not system|value
        {"patient_identifier": "urn:unknown|456789123"},  # a system without an issuer
        {"patient_identifier": f"{CZ_SYSTEM}|"},
        {"patient_identifier": f"{CZ_SYSTEM}|a\\b"},  # no LO value holds a backslash
        {"patient_identifier": f"{CZ_SYSTEM}|" + "9" * 65},  # longer than an LO
        {"patient_identifier": {"system": CZ_SYSTEM}},
        {"patient_identifier": {"system": None, "value": "1"}},
        {"patient_identifier": 12},
        # Two claims, two patients.
        {"patient": CZ_ID, "patient_identifier": "|456789123"},
    ],
)
def test_a_claim_that_cannot_be_read_refuses_the_token(claims: dict[str, Any]) -> None:
    with pytest.raises(PatientClaimError) as caught:
        patient_of(claims, BOTH)
    assert isinstance(caught.value, TokenError)  # the middleware's 401 invalid_token
    assert "456789123" not in str(caught.value)  # no echo of the claim


def test_two_claims_naming_the_same_patient_are_fine() -> None:
    claims = {"patient": CZ_ID, "patient_identifier": f"{CZ_SYSTEM}|456789123"}
    assert patient_of(claims, BOTH) == CZ


# ---------------------------------------------------------------- matching


def test_a_dataset_is_the_patients_only_with_exactly_its_id_and_issuer() -> None:
    binding = PatientBinding(CZ)
    assert binding.allows(_dataset("456789123", "CZ-NCPEH"))
    assert binding.allows(_dataset("456789123 ", " CZ-NCPEH"))  # LO padding
    assert not binding.allows(_dataset("456789123"))  # no issuer: not provably the patient
    assert not binding.allows(_dataset("456789123", "DE-OTHER"))
    assert not binding.allows(_dataset("456789124", "CZ-NCPEH"))
    assert not binding.allows(_dataset("456789123".lower() + "x", "CZ-NCPEH"))
    assert not binding.allows(_dataset("4567891*", "CZ-NCPEH"))  # no wildcards here
    assert not binding.allows(_dataset(None, "CZ-NCPEH"))
    assert not binding.allows({})
    assert not binding.allows({"00100020": {"vr": "LO"}, "00100021": {"vr": "LO"}})
    datasets = [_dataset("456789123", "CZ-NCPEH"), _dataset("DE1000234", "KLINIKUM")]
    assert binding.filter(datasets) == datasets[:1]


def test_a_patient_without_issuer_matches_datasets_without_one() -> None:
    binding = PatientBinding(PatientKey("X1"))
    assert binding.allows(_dataset("X1"))
    assert binding.allows({**_dataset("X1"), "00100021": {"vr": "LO"}})  # empty
    assert not binding.allows(_dataset("X1", "SOMEONE"))
    assert binding.resource_id == "X1"


def test_is_patient_takes_keys_and_pairs() -> None:
    binding = PatientBinding(CZ)
    assert binding.is_patient(CZ) and binding.is_patient(("456789123", "CZ-NCPEH"))
    assert not binding.is_patient(("456789123", None))
    assert not binding.is_patient(None)
    assert binding.resource_id == CZ_ID


# ---------------------------------------------------------------- narrowing QIDO


def _keys(query: QidoQuery | None) -> dict[str, tuple[MatchKind, str]]:
    assert query is not None
    return {k.name: (k.kind, k.value) for k in query.keys}


@pytest.mark.parametrize("level", list(Level))
def test_a_query_for_everything_is_narrowed_to_the_patient(level: Level) -> None:
    binding = PatientBinding(CZ)
    query = parse_qido([("limit", "5"), ("offset", "10"), ("Modality", "CT")], level)
    narrowed = binding.narrow(query)
    keys = _keys(narrowed)
    assert keys["PatientID"] == (MatchKind.SINGLE, "456789123")
    assert keys["IssuerOfPatientID"] == (MatchKind.SINGLE, "CZ-NCPEH")
    assert narrowed is not None and (narrowed.limit, narrowed.offset) == (5, 10)  # paging kept
    assert len(narrowed.keys) == len(query.keys) + 2
    # The narrowed query is one a QIDO parser reads back (it goes to a PACS as parameters).
    assert parse_qido(to_params(narrowed), level) == narrowed


@pytest.mark.parametrize(
    "params",
    [
        [("PatientID", "456789123")],
        [("PatientID", "")],  # universal
        [("PatientID", "4567*")],
        [("00100020", "45678912?"), ("IssuerOfPatientID", "CZ-*")],
        [("IssuerOfPatientID", "cz-ncpeh")],  # PACS match case-insensitively: a superset
    ],
)
def test_a_clients_own_patient_keys_that_may_match_are_replaced(
    params: list[tuple[str, str]],
) -> None:
    narrowed = PatientBinding(CZ).narrow(parse_qido(params, Level.STUDY))
    keys = _keys(narrowed)
    assert keys == {
        "PatientID": (MatchKind.SINGLE, "456789123"),
        "IssuerOfPatientID": (MatchKind.SINGLE, "CZ-NCPEH"),
    }


@pytest.mark.parametrize(
    "params",
    [
        [("PatientID", "DE1000234")],
        [("PatientID", "9*")],
        [("PatientID", "456789123"), ("IssuerOfPatientID", "KLINIKUM-NORD-MUC")],
        [("IssuerOfPatientID", "DE*")],
    ],
)
def test_a_query_for_another_patient_matches_nothing(params: list[tuple[str, str]]) -> None:
    assert PatientBinding(CZ).narrow(parse_qido(params, Level.INSTANCE)) is None
    assert PatientBinding(CZ).narrow_params(params, Level.SERIES) is None


def test_a_patient_without_issuer_asks_for_the_issuer_universally() -> None:
    binding = PatientBinding(PatientKey("X1"))
    keys = _keys(binding.narrow(parse_qido([], Level.STUDY)))
    assert keys == {
        "PatientID": (MatchKind.SINGLE, "X1"),
        "IssuerOfPatientID": (MatchKind.UNIVERSAL, ""),  # returned, so checked
    }
    assert binding.narrow(parse_qido([("IssuerOfPatientID", "ANY")], Level.STUDY)) is None


def test_characters_qido_reads_specially_go_as_wildcards() -> None:
    binding = PatientBinding(PatientKey("A,B*C"))
    keys = _keys(binding.narrow(parse_qido([], Level.STUDY)))
    assert keys["PatientID"] == (MatchKind.WILDCARD, "A?B*C")  # a superset, filtered after
    assert binding.allows(_dataset("A,B*C")) and not binding.allows(_dataset("AxB*C"))


def test_narrow_params_keeps_the_gateways_long_queries() -> None:
    uids = ",".join(f"1.2.3.{n}" for n in range(100))
    params = [("StudyInstanceUID", uids), ("includefield", "00080060"), ("limit", "1000")]
    narrowed = PatientBinding(CZ).narrow_params(params, Level.SERIES)
    assert narrowed is not None
    assert ("StudyInstanceUID", uids) in narrowed and ("limit", "1000") in narrowed
    assert ("PatientID", "456789123") in narrowed
    assert ("IssuerOfPatientID", "CZ-NCPEH") in narrowed


# ---------------------------------------------------------------- whose study


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakePacs:
    """A study-level QIDO answered from a table, counting the questions."""

    def __init__(self, studies: Mapping[str, list[dict[str, Any]]]) -> None:
        self.studies = studies
        self.asked: list[QidoQuery] = []

    async def search(self, query: QidoQuery) -> Sequence[Mapping[str, Any]]:
        self.asked.append(query)
        (uid_key,) = [k for k in query.keys if k.name == "StudyInstanceUID"]
        return self.studies.get(uid_key.value, [])


def test_the_study_query_asks_for_the_patient() -> None:
    query = study_query("1.2.3")
    assert query.level is Level.STUDY
    assert to_params(query) == [
        ("StudyInstanceUID", "1.2.3"),
        ("includefield", "PatientID,IssuerOfPatientID"),
    ]


async def test_a_study_is_the_patients_when_every_answer_is() -> None:
    pacs = FakePacs(
        {
            "1.1": [_dataset("456789123", "CZ-NCPEH")],
            "2.2": [_dataset("DE1000234", "KLINIKUM-NORD-MUC")],
            "3.3": [_dataset("456789123", "CZ-NCPEH"), _dataset("DE1000234", "K")],  # shared UID
            "4.4": [_dataset(None)],
        }
    )
    binding = PatientBinding(CZ, StudyPatients())
    assert await binding.allows_study("web", "1.1", pacs.search)
    assert not await binding.allows_study("web", "2.2", pacs.search)
    assert not await binding.allows_study("web", "3.3", pacs.search)
    assert not await binding.allows_study("web", "4.4", pacs.search)
    assert not await binding.allows_study("web", "9.9", pacs.search)  # unknown: the same


async def test_whose_study_is_kept_a_short_while_per_site_and_shared() -> None:
    clock = Clock()
    cache = StudyPatients(ttl=30, clock=clock)
    pacs = FakePacs({"1.1": [_dataset("456789123", "CZ-NCPEH")]})
    cz, other = PatientBinding(CZ, cache), PatientBinding(PatientKey("DE1000234", "K"), cache)
    assert await cz.allows_study("web", "1.1", pacs.search)
    assert await cz.allows_study("web", "1.1", pacs.search)
    assert not await other.allows_study("web", "1.1", pacs.search)  # the same answer, kept
    assert len(pacs.asked) == 1
    assert await cz.allows_study("get", "1.1", pacs.search)  # another site: asked again
    assert len(pacs.asked) == 2
    clock.now += 31
    assert await cz.allows_study("web", "1.1", pacs.search)
    assert len(pacs.asked) == 3
    # A study the PACS does not have is not kept: it may be stored the next moment.
    assert not await cz.allows_study("web", "5.5", pacs.search)
    assert not await cz.allows_study("web", "5.5", pacs.search)
    assert len(pacs.asked) == 5


def test_the_cache_is_bounded() -> None:
    cache = StudyPatients(max_entries=3, ttl=30, clock=Clock())
    patients = patients_in([_dataset("1", "A")])
    for n in range(5):
        cache.put("web", f"1.{n}", patients)
    assert len(cache) == 3
    assert cache.get("web", "1.0") is None and cache.get("web", "1.4") == patients
    cache.put("web", "1.9", frozenset())
    assert cache.get("web", "1.9") is None


# ---------------------------------------------------------------- configuration


def test_the_claims_are_configured_in_auth() -> None:
    default = auth_from_mapping({})
    assert (default.patient_claim, default.patient_identifier_claim) == ("patient", None)
    auth = auth_from_mapping({"patient_claim": False, "patient_identifier_claim": "pid"})
    assert (auth.patient_claim, auth.patient_identifier_claim) == (None, "pid")
    for bad in ("", "two words", 1, True, ["patient"]):
        with pytest.raises(ConfigError, match=r"auth\.patient_claim"):
            auth_from_mapping({"patient_claim": bad})
