from __future__ import annotations

from typing import Any

import pytest

from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.matching import key_matches, loosen_for_upstream
from ncpeh_dicomweb.dicomweb.query import MatchKind, parse_qido

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
