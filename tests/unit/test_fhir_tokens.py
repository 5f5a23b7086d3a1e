"""FHIR token grammar and matching, the issuer table, Patient ids (fhir/tokens.py)."""

from __future__ import annotations

import random

import pytest

from ncpeh_dicomweb.errors import BadRequest
from ncpeh_dicomweb.fhir.tokens import (
    IssuerTable,
    NoSystem,
    PatientKey,
    Token,
    escape,
    is_digest_id,
    is_fhir_id,
    parse_patient_resource_id,
    parse_token,
    patient_resource_id,
    split_or,
    token_matches,
    unescape,
)

SCT = "http://snomed.info/sct"
CZ = "urn:oid:1.2.203.24341.1.2"


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("a,b", ["a", "b"]),
        ("a\\,b,c", ["a\\,b", "c"]),  # an escaped comma is no separator (R4 #escaping)
        ("a\\\\,b", ["a\\\\", "b"]),  # an escaped backslash before a real comma
        ("a,,b,", ["a", "b"]),  # empty values dropped
        ("s|c\\|d", ["s|c\\|d"]),
        ("", []),
    ],
)
def test_split_or(value: str, parts: list[str]) -> None:
    assert split_or(value) == parts


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [("a\\,b", "a,b"), ("a\\|b", "a|b"), ("a\\$b", "a$b"), ("a\\\\b", "a\\b"), ("a\\xb", "a\\xb")],
)
def test_unescape(escaped: str, plain: str) -> None:
    assert unescape(escaped) == plain


def test_escape_round_trip() -> None:
    text = "a,b|c$d\\e"
    assert escape(text) == "a\\,b\\|c\\$d\\\\e"
    assert unescape(escape(text)) == text


@pytest.mark.parametrize(
    ("value", "token", "text"),
    [
        ("MR", Token(None, "MR"), "MR"),  # code: any system
        ("|90708001", Token("", "90708001"), "|90708001"),  # |code: no system
        (f"{SCT}|90708001", Token(SCT, "90708001"), f"{SCT}|90708001"),  # system|code
        (f"{SCT}|", Token(SCT, None), f"{SCT}|"),  # system|: any code of the system
        ("a\\|b", Token(None, "a|b"), "a\\|b"),
        ("s\\|t|a\\,b", Token("s|t", "a,b"), "s\\|t|a\\,b"),
    ],
)
def test_parse_token(value: str, token: Token, text: str) -> None:
    assert parse_token(value, "p") == token
    assert token.text() == text


@pytest.mark.parametrize("value", ["|", "a|b|c", "|a|b"])
def test_parse_token_malformed(value: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_token(value, "reason")
    assert info.value.detail["parameter"] == "reason"


CODINGS: list[tuple[str | None, str]] = [(SCT, "90708001"), (None, "LOCAL1")]


@pytest.mark.parametrize(
    ("token", "any_", "none"),
    [
        (Token(None, "90708001"), True, True),
        (Token(None, "LOCAL1"), True, True),
        (Token(None, "nope"), False, False),
        (Token(SCT, "90708001"), True, True),
        (Token(SCT, "LOCAL1"), False, False),  # the code exists, not in that system
        (Token("http://loinc.org", "90708001"), False, False),
        (Token("", "90708001"), True, False),  # |code: NoSystem decides
        (Token("", "LOCAL1"), True, True),  # a code without a system matches both ways
        (Token(SCT, None), True, True),  # system|
        (Token("http://loinc.org", None), False, False),
        (Token(None, "90708001 "), False, False),  # exact comparison
    ],
)
def test_token_matches(token: Token, any_: bool, none: bool) -> None:
    assert token_matches(token, CODINGS, NoSystem.ANY) is any_
    assert token_matches(token, CODINGS, NoSystem.NONE) is none


def test_token_matches_nothing_in_empty_codings() -> None:
    assert not token_matches(Token(None, "x"), [], NoSystem.ANY)
    assert not token_matches(Token("s", None), [], NoSystem.ANY)


# --- issuer table ---------------------------------------------------------------------------

TABLE = IssuerTable.from_pairs([(CZ, "CZ-NRZP"), ("https://ids.example/mrn", "HOSP")])


@pytest.mark.parametrize(
    ("issuer", "system"),
    [
        ("CZ-NRZP", CZ),
        ("HOSP", "https://ids.example/mrn"),
        ("1.2.3.4", "urn:oid:1.2.3.4"),  # an OID issuer is its own system
        ("LOCAL", None),  # neither: an identifier without a system
        ("12345", None),  # digits alone are no OID worth a system
        (None, None),
        ("", None),
    ],
)
def test_system_for(issuer: str | None, system: str | None) -> None:
    assert TABLE.system_for(issuer) == system


@pytest.mark.parametrize(
    ("system", "issuer"),
    [
        (CZ, "CZ-NRZP"),  # the table wins over the OID reading
        ("https://ids.example/mrn", "HOSP"),
        ("urn:oid:1.2.3.4", "1.2.3.4"),
        ("urn:oid:not-an-oid", None),
        ("http://unknown.example", None),
    ],
)
def test_issuer_for(system: str, issuer: str | None) -> None:
    assert TABLE.issuer_for(system) == issuer


def test_issuer_table_is_one_to_one() -> None:
    with pytest.raises(ValueError, match="once"):
        IssuerTable({"urn:a": "X", "urn:b": "X"})
    with pytest.raises(ValueError, match="empty"):
        IssuerTable({"urn:a": ""})


def test_issuer_table_oid_shadowed_by_table() -> None:
    # An OID issuer mapped to another system has that system, and urn:oid:<it> names nothing.
    table = IssuerTable({"https://x.example": "1.2.3"})
    assert table.system_for("1.2.3") == "https://x.example"
    assert table.issuer_for("urn:oid:1.2.3") is None


def test_issuer_table_is_frozen() -> None:
    pairs = {"urn:a": "A"}
    table = IssuerTable(pairs)
    pairs["urn:b"] = "B"  # the caller's dict is copied
    assert table.issuer_for("urn:b") is None
    with pytest.raises(TypeError):
        table.systems["urn:c"] = "C"  # type: ignore[index]


# --- Patient ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient_id", "issuer", "resource_id"),
    [
        ("456789123", None, "456789123"),
        ("456789123", "1.2.203.24341.1.2", "456789123-.1.2.203.24341.1.2"),
        ("456789123", "CZ_NRZP", "456789123-.CZ-5FNRZP"),
        ("A-1", "H", "A-2D1-.H"),
        ("a b", None, "a-20b"),
        ("Ž", None, "-C5-BD"),
        ("", "X", "--.X"),
        ("", None, "-"),
    ],
)
def test_patient_resource_id(patient_id: str, issuer: str | None, resource_id: str) -> None:
    assert patient_resource_id(patient_id, issuer) == resource_id
    assert is_fhir_id(resource_id)
    assert parse_patient_resource_id(resource_id) == PatientKey(patient_id, issuer)


def test_empty_issuer_is_no_issuer() -> None:
    assert patient_resource_id("1", "") == patient_resource_id("1", None) == "1"


def test_patient_resource_id_digest() -> None:
    long_issuer = "ISSUER " * 9
    resource_id = patient_resource_id("12345", long_issuer)
    assert len(resource_id) == 64 and is_fhir_id(resource_id) and is_digest_id(resource_id)
    assert parse_patient_resource_id(resource_id) is None
    assert patient_resource_id("12345", long_issuer) == resource_id  # stable
    assert patient_resource_id("12346", long_issuer) != resource_id


@pytest.mark.parametrize(
    "resource_id",
    [
        "abc-2d",
        "abc-",
        "a-ZZ",
        "a-.",
        "a-.b-.c",
        "-FF",
        "a--b",
        "A-41",
    ],  # -41 is "A": two spellings
)
def test_foreign_ids_name_no_patient(resource_id: str) -> None:
    assert parse_patient_resource_id(resource_id) is None
    assert not is_digest_id(resource_id)


def test_patient_resource_id_round_trips_any_text() -> None:
    rng = random.Random(7)
    alphabet = "AZaz09.-_ ^/\\,|:éŽ€\u4e2d"
    for _ in range(500):
        patient_id = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        issuer = rng.choice([None, "".join(rng.choice(alphabet) for _ in range(5))])
        resource_id = patient_resource_id(patient_id, issuer)
        assert is_fhir_id(resource_id)
        if not is_digest_id(resource_id):
            assert parse_patient_resource_id(resource_id) == PatientKey(patient_id, issuer or None)
