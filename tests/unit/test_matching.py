from __future__ import annotations

import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.matching import key_matches, loosen_for_upstream, loosen_wildcards
from ncpeh_dicomweb.dicomweb.query import MatchKey, MatchKind, parse_qido

DATASET: dict[str, Any] = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
    "00081030": {"vr": "LO", "Value": ["CT CHEST W CONTRAST"]},
    "00080020": {"vr": "DA", "Value": ["20240314"]},
    "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
    "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
    "00201208": {"vr": "IS", "Value": [12]},
    "0040A730": {"vr": "SQ", "Value": [{"0040A160": {"vr": "UT", "Value": ["finding A"]}}]},
}


def _key(param: str, value: str) -> Any:
    (key,) = parse_qido([(param, value)], Level.STUDY).keys
    return key


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        ("PatientName", "Müller^Jürgen", True),
        ("PatientName", "müller^jürgen", True),  # names match case-insensitively
        ("PatientName", "Müller*", True),
        ("PatientName", "M?ller^J?rgen", True),
        # `?` is one character (PS3.4 C.2.2.2.4), not one byte: ü is two in UTF-8
        ("PatientName", "M??ller^J?rgen", False),
        ("PatientName", "M?ller^J??rgen", False),
        ("PatientName", "?üller*", True),
        ("PatientName", "m?ller^j?rgen", True),
        ("PatientName", "M*?ller^Jürgen", True),
        ("PatientName", "M?*ller^Jürgen", True),
        ("PatientName", "?", False),
        ("PatientName", "?*", True),
        ("PatientName", "Mueller*", False),
        ("StudyDescription", "CT CHEST W CONTRAST", True),
        ("StudyDescription", "ct chest w contrast", True),  # as Orthanc: case-insensitive
        ("StudyDescription", "CT CHEST*", True),
        ("StudyDescription", "CT_CHEST*", False),
        ("StudyDate", "20240101-20241231", True),
        ("StudyDate", "20240315-", False),
        ("StudyDate", "-20240314", True),
        ("StudyInstanceUID", "1.2.4,1.2.3", True),
        ("StudyInstanceUID", "1.2.4", False),
        ("ModalitiesInStudy", "SR", True),
        ("ModalitiesInStudy", "MR", False),
        ("StudyDescription", "", True),
    ],
)
def test_key_matches(param: str, value: str, expected: bool) -> None:
    assert key_matches(DATASET, _key(param, value)) is expected


def test_absent_attribute_does_not_match_a_value() -> None:
    assert not key_matches({}, _key("AccessionNumber", "A1"))


def test_loosening_replaces_what_cannot_travel_raw() -> None:
    wide = loosen_for_upstream(_key("StudyDescription", "CT CHEST+ABD"))
    assert wide is not None
    assert wide.kind is MatchKind.WILDCARD
    assert wide.value == "CT*CHEST*ABD"
    assert loosen_for_upstream(_key("PatientName", "Müller*")).value == "M*ller*"  # type: ignore[union-attr]
    assert loosen_for_upstream(_key("PatientID", "ABC-1")) is None
    assert loosen_for_upstream(_key("StudyDate", "20240101-20241231")) is None
    # the widened key still matches what the exact key matched
    assert key_matches({"00081030": {"vr": "LO", "Value": ["CT CHEST+ABD"]}}, wide)


# ---------------------------------------------------------------- `?`: one character, any script

NAMES: list[str] = [
    "Müller^Jürgen",  # UTF-8: ü is 2 bytes
    "Dubois^Élodie",  # Latin-1: É is 1 byte there, 2 in UTF-8
    "Nowak^Łukasz",
    "Smith^Alice^M",
    "山田^太郎",  # 3 bytes each in UTF-8
    "Emoji^A😀B",  # 4 bytes in UTF-8, one code point
]


def _named(name: str) -> dict[str, Any]:
    return {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}


@pytest.mark.parametrize(
    ("pattern", "found"),
    [
        ("M?ller^J?rgen", ["Müller^Jürgen"]),
        ("Dubois^?lodie", ["Dubois^Élodie"]),
        ("DUBOIS^?LODIE", ["Dubois^Élodie"]),
        ("Dubois^??lodie", []),
        ("Nowak^?ukasz", ["Nowak^Łukasz"]),
        ("山?^太郎", ["山田^太郎"]),
        ("??^??", ["山田^太郎"]),
        ("Emoji^A?B", ["Emoji^A😀B"]),
        ("Emoji^A??B", []),
        ("Emoji^A????B", []),
        ("?????^*", ["Smith^Alice^M", "Nowak^Łukasz", "Emoji^A😀B"]),
        ("Sm?th*", ["Smith^Alice^M"]),
    ],
)
def test_question_mark_is_one_character(pattern: str, found: list[str]) -> None:
    key = _key("PatientName", pattern)
    assert sorted(n for n in NAMES if key_matches(_named(n), key)) == sorted(found)


# Row by row: the key, what goes to a DICOMweb PACS, what goes to a C-FIND SCP (None: as is).
LOOSEN_CASES: list[tuple[list[tuple[str, str]], str | None, str | None]] = [
    ([("PatientName", "M?ller^J?rgen")], "M*ller^J*rgen", "M*ller^J*rgen"),
    ([("PatientName", "M?ller*")], "M*ller*", "M*ller*"),
    ([("PatientName", "M??ller*")], "M*ller*", "M*ller*"),
    ([("PatientName", "M?*?ller")], "M*ller", "M*ller"),
    ([("PatientName", "Müller*")], "M*ller*", None),  # C-FIND carries non-ASCII itself
    ([("PatientName", "Müller^J?rgen")], "M*ller^J*rgen", "Müller^J*rgen"),
    # only wildcards: universal is fine where every answer is checked, not for C-FIND
    ([("PatientName", "?")], "*", "?*"),
    ([("PatientName", "??")], "*", "?*"),
    ([("PatientName", "*?*")], "*", "?*"),
    ([("PatientID", "AB?1")], "AB*1", "AB*1"),  # LO
    ([("AccessionNumber", "A?")], "A*", "A*"),  # SH
    ([("ReferringPhysicianName", "Gro?^*")], "Gro*^*", "Gro*^*"),
    ([("StudyDescription", "CT?CHEST ABD")], "CT*CHEST*ABD", "CT*CHEST ABD"),
    ([("StudyDescription", "CT CHEST+ABD")], "CT*CHEST*ABD", None),
    ([("RequestAttributesSequence.RequestedProcedureID", "RP?1")], "RP*1", "RP*1"),
    ([("00090010", "ACME"), ("00091010", "a?c")], "a*c", "a*c"),  # private: UN
    # default-repertoire VRs: a byte-wise `?` is exact there, nothing to loosen
    ([("ModalitiesInStudy", "C?")], None, None),
    ([("ModalitiesInStudy", "CT\\M?")], None, None),
    ([("PatientSex", "?")], None, None),
    # nothing to loosen
    ([("PatientName", "Smith*")], None, None),
    ([("PatientName", "Smith")], None, None),
    ([("PatientName", "")], None, None),
    ([("PatientID", "ABC-1")], None, None),
    ([("StudyDate", "20240101-20241231")], None, None),
    ([("StudyInstanceUID", "1.2.3,1.2.4")], None, None),
]


def _last_key(params: list[tuple[str, str]]) -> MatchKey:
    return parse_qido(params, Level.STUDY).keys[-1]


@pytest.mark.parametrize(
    ("params", "dicomweb", "dimse"), LOOSEN_CASES, ids=[repr(c[0][-1]) for c in LOOSEN_CASES]
)
def test_loosening(params: list[tuple[str, str]], dicomweb: str | None, dimse: str | None) -> None:
    key = _last_key(params)
    for loosen, wanted in ((loosen_for_upstream, dicomweb), (loosen_wildcards, dimse)):
        wide = loosen(key)
        if wanted is None:
            assert wide is None, loosen.__name__
            continue
        assert wide is not None, loosen.__name__
        assert (wide.value, wide.kind, wide.path, wide.vr) == (
            wanted,
            MatchKind.WILDCARD,
            key.path,
            key.vr,
        ), loosen.__name__


@pytest.mark.parametrize(
    "pattern", ["M?ller^J?rgen", "?", "??^??", "*?", "Emoji^A?B", "Dubois^?lodie", "?????^*"]
)
def test_loosened_keys_keep_every_match(pattern: str) -> None:
    """What the exact key matches, the loosened ones match too (the gateway then narrows)."""
    key = _key("PatientName", pattern)
    for loosen in (loosen_for_upstream, loosen_wildcards):
        wide = loosen(key)
        assert wide is not None
        for name in NAMES:
            if key_matches(_named(name), key):
                assert key_matches(_named(name), wide), (loosen.__name__, name)


# ---------------------------------------------------------------- wildcard matching in linear time


def test_many_wildcards_match_in_linear_time() -> None:
    """Regression: ``*a*a*a*a*a*a*a*a*b?`` (loosened to ``*a*...*b*`` upstream, so the PACS
    returns a name ending in b) was a regular expression whose backtracking took minutes
    against a 64-character value, holding the event loop; now it is a few thousand steps."""
    key = _key("PatientName", "*a" * 12 + "*b?")
    name = _named("a" * 63 + "b")
    started = time.perf_counter()
    assert not key_matches(name, key)
    assert key_matches(_named("a" * 62 + "bc"), key)
    assert time.perf_counter() - started < 0.5


def _regex_matches(pattern: str, text: str) -> bool:
    """What the matcher answered before: a regular expression (exponential in ``*``)."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(body, text, re.DOTALL | re.IGNORECASE) is not None


_GLOB_CHARS = st.sampled_from(["*", "?", "a", "A", "b", "é", "É", "^", " ", "\n", "ß"])
_TEXT_CHARS = st.sampled_from(["a", "A", "b", "é", "É", "^", " ", "\n", "ß", "*", "?"])


@settings(max_examples=300, deadline=None)
@given(pattern=st.text(_GLOB_CHARS, max_size=8), text=st.text(_TEXT_CHARS, max_size=10))
def test_wildcard_matching_answers_as_the_regular_expression_did(pattern: str, text: str) -> None:
    key = MatchKey((0x00100010,), "PN", MatchKind.WILDCARD, pattern)
    assert key_matches(_named(text), key) is _regex_matches(pattern, text)
