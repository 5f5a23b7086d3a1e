"""The FHIR ``date`` parameter against StudyDate/StudyTime (fhir/dates.py): every prefix at
every precision, time zones, and the StudyDate range pushed down."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from ncpeh_dicomweb.errors import BadRequest
from ncpeh_dicomweb.fhir.dates import (
    DateValue,
    date_matches,
    parse_date,
    study_date_range,
    study_times,
)

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))


def _study(day: str | None, time: str | None = None, offset: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, vr, value in (("00080020", "DA", day), ("00080030", "TM", time)):
        if value is not None:
            out[tag] = {"vr": vr, "Value": [value]}
    if offset is not None:
        out["00080201"] = {"vr": "SH", "Value": [offset]}
    return out


def _value(text: str) -> DateValue:
    return parse_date(text, "started", now=NOW)


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2024", datetime(2024, 1, 1), datetime(2024, 12, 31, 23, 59, 59, 999999)),
        ("2024-02", datetime(2024, 2, 1), datetime(2024, 2, 29, 23, 59, 59, 999999)),
        ("2024-06-30", datetime(2024, 6, 30), datetime(2024, 6, 30, 23, 59, 59, 999999)),
        (
            "2024-06-30T12:00",
            datetime(2024, 6, 30, 12, 0),
            datetime(2024, 6, 30, 12, 0, 59, 999999),
        ),
        (
            "2024-06-30T12:00:05",
            datetime(2024, 6, 30, 12, 0, 5),
            datetime(2024, 6, 30, 12, 0, 5, 999999),
        ),
        (
            "2024-06-30T12:00:05.25",
            datetime(2024, 6, 30, 12, 0, 5, 250000),
            datetime(2024, 6, 30, 12, 0, 5, 259999),
        ),
        (
            "2024-06-30T12:00:05.1234567",  # beyond microseconds: cut
            datetime(2024, 6, 30, 12, 0, 5, 123456),
            datetime(2024, 6, 30, 12, 0, 5, 123456),
        ),
        (
            "2024-06-30T12:00Z",
            datetime(2024, 6, 30, 12, 0, tzinfo=UTC),
            datetime(2024, 6, 30, 12, 0, 59, 999999, tzinfo=UTC),
        ),
        (
            "2024-06-30T12:00:00+02:00",
            datetime(2024, 6, 30, 12, 0, tzinfo=PLUS2),
            datetime(2024, 6, 30, 12, 0, 0, 999999, tzinfo=PLUS2),
        ),
        (
            "2024-06-30T12:00:00-05:30",
            datetime(2024, 6, 30, 17, 30, tzinfo=UTC),
            datetime(2024, 6, 30, 17, 30, 0, 999999, tzinfo=UTC),
        ),
    ],
)
def test_precision(text: str, low: datetime, high: datetime) -> None:
    for prefix in ("", "eq", "gt", "ap"):
        value = _value(prefix + text)
        assert (value.low, value.high) == (low, high)
        assert value.prefix == (prefix or "eq")
        assert value.aware is (low.tzinfo is not None)


def test_plus_decoded_as_space() -> None:
    value = _value("ge2024-06-30T12:00:00 02:00")  # "+" unencoded in a query string
    assert value.low == datetime(2024, 6, 30, 12, 0, tzinfo=PLUS2)
    assert value.normalised() == "ge2024-06-30T12:00:00+02:00"


@pytest.mark.parametrize(
    ("text", "normalised"),
    [("2024", "2024"), ("eq2024", "2024"), ("ne2024-06", "ne2024-06"), ("sa2024", "sa2024")],
)
def test_normalised(text: str, normalised: str) -> None:
    assert _value(text).normalised() == normalised


@pytest.mark.parametrize(
    "text",
    [
        "24",
        "2024-6",
        "2024-13",
        "2023-02-29",
        "2024-06-31",
        "2024-06-30T12",  # an hour needs its minutes
        "2024-06-30T24:00",
        "2024-06-30T12:60",
        "2024-06-30T12:00+15:00",
        "2024-06-30 12:00",
        "20240630",  # the DICOM form is not the FHIR form
        "xx2024",
        "GE2024",
        "0000",
        "ge",
        "2024-06-30T12:00:00.",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_date(text, "started", now=NOW)
    assert info.value.detail["parameter"] == "started"
    assert info.value.status == 400


# Studies: StudyDate + StudyTime, placed in UTC (site_tz) so that every search value applies.
STUDIES = {
    "A": _study("20231231", "235959"),
    "B": _study("20240101", "000000"),
    "C": _study("20240630", "120000"),
    "D": _study("20240701", "000000"),
    "E": _study("20241231", "235959"),
    "F": _study("20250101", "000000"),
    "G": _study("20240630"),  # no time: the whole day
}

# Each prefix at each precision: the value and the studies it matches (R4 search #prefix).
PREFIX_TABLE = [
    ("2024", "BCDEG"),
    ("eq2024", "BCDEG"),
    ("ne2024", "AF"),
    ("gt2024", "F"),
    ("lt2024", "A"),
    ("ge2024", "BCDEFG"),
    ("le2024", "ABCDEG"),
    ("sa2024", "F"),
    ("eb2024", "A"),
    ("2024-06", "CG"),
    ("ne2024-06", "ABDEF"),
    ("gt2024-06", "DEF"),
    ("lt2024-06", "AB"),
    ("ge2024-06", "CDEFG"),
    ("le2024-06", "ABCG"),
    ("sa2024-06", "DEF"),
    ("eb2024-06", "AB"),
    ("2024-06-30", "CG"),
    ("ne2024-06-30", "ABDEF"),
    ("gt2024-06-30", "DEF"),
    ("lt2024-06-30", "AB"),
    ("ge2024-06-30", "CDEFG"),
    ("le2024-06-30", "ABCG"),
    ("sa2024-06-30", "DEF"),
    ("eb2024-06-30", "AB"),
    # A minute: the whole-day study G overlaps it without being inside it.
    ("2024-06-30T12:00", "C"),
    ("ne2024-06-30T12:00", "ABDEFG"),
    ("gt2024-06-30T12:00", "DEFG"),
    ("lt2024-06-30T12:00", "ABG"),
    ("ge2024-06-30T12:00", "CDEFG"),
    ("le2024-06-30T12:00", "ABCG"),
    ("sa2024-06-30T12:00", "DEF"),
    ("eb2024-06-30T12:00", "AB"),
    # The whole day G starts (ends) at the very minute searched: overlapping is not enough.
    ("le2024-06-30T00:00", "AB"),
    ("ge2024-06-30T23:59", "DEF"),
    ("2024-06-30T12:00:00", "C"),
    ("gt2024-06-30T12:00:00", "DEFG"),
    ("2024-06-30T12:00:00.5", ""),  # C spans its whole second: not inside half of it
    ("gt2024-06-30T12:00:00.5", "CDEFG"),
    ("lt2024-06-30T12:00:00.5", "ABCG"),
    ("2024-06-30T12:00Z", "C"),  # with a zone: instants (the studies are at UTC here)
    ("2024-06-30T14:00+02:00", "C"),
    ("lt2024-06-30T14:00+02:00", "ABG"),
    # ap: 10% of the gap to now (NOW - 2024-06-30 = 885 days, so 88.5 days either side).
    ("ap2024-06-30", "CDG"),
    ("ap2024", "ABCDEFG"),  # 10% of 1066 days: 107 days either side of 2024
    ("ap2026-12-02", ""),
]


@pytest.mark.parametrize(("text", "expected"), PREFIX_TABLE)
def test_prefix_and_precision(text: str, expected: str) -> None:
    value = _value(text)
    found = "".join(k for k, s in STUDIES.items() if date_matches(value, study_times(s, UTC)))
    assert found == expected


@pytest.mark.parametrize(
    ("study", "text", "expected"),
    [
        # The study's own offset places it: 12:00+02:00 is 10:00Z.
        (_study("20240630", "120000", "+0200"), "2024-06-30T10:00Z", True),
        (_study("20240630", "120000", "+0200"), "2024-06-30T12:00Z", False),
        (_study("20240630", "120000", "+0200"), "lt2024-06-30T12:00Z", True),
        # ... and a value without a zone reads the wall clock of the study's place.
        (_study("20240630", "120000", "+0200"), "2024-06-30T12:00", True),
        (_study("20240630", "120000", "+0200"), "2024-06-30T10:00", False),
        # Late evening west of UTC is the next day in UTC.
        (_study("20240630", "230000", "-0500"), "2024-07-01T04:00Z", True),
        (_study("20240630", "230000", "-0500"), "2024-06-30", True),
        (_study("20240630", "230000", "-0500"), "2024-07-01", False),
        # A bad offset is ignored (site_tz places the study then).
        (_study("20240630", "120000", "+2500"), "2024-06-30T12:00Z", True),
        # ACR-NEMA forms still read.
        (_study("2024.06.30", "12:00:00"), "2024-06-30T12:00", True),
        # Without a StudyDate, no value matches, not even ne.
        (_study(None, "120000"), "ne2024", False),
        (_study("2024063", "120000"), "ne2024", False),
        # An invalid time is ignored: the whole day.
        (_study("20240630", "126100"), "2024-06-30", True),
        (_study("20240630", "126100"), "2024-06-30T12:00", False),
    ],
)
def test_time_zones(study: dict[str, Any], text: str, expected: bool) -> None:
    assert date_matches(_value(text), study_times(study, UTC)) is expected


def test_site_tz_places_a_study_without_offset() -> None:
    study = _study("20240630", "120000")
    assert date_matches(_value("2024-06-30T10:00Z"), study_times(study, PLUS2))
    assert not date_matches(_value("2024-06-30T10:00Z"), study_times(study, UTC))


def test_no_zone_at_all_drops_the_time() -> None:
    # As the mapping then writes started as a date: the study spans its day.
    study = _study("20240630", "120000")
    times = study_times(study, None)
    assert times is not None
    assert times.wall == (datetime(2024, 6, 30), datetime(2024, 6, 30, 23, 59, 59, 999999))
    assert not date_matches(_value("2024-06-30T12:00"), times)
    assert date_matches(_value("2024-06-30"), times)
    assert date_matches(_value("gt2024-06-30T12:00Z"), times)
    # With an offset of its own the time stays.
    assert study_times(_study("20240630", "120000", "+0000"), None) is not None
    assert date_matches(
        _value("2024-06-30T12:00"), study_times(_study("20240630", "1200", "+0000"), None)
    )


def test_ap_slack_follows_now() -> None:
    assert _value("ap2024-06-30").slack == (NOW.replace(tzinfo=None) - datetime(2024, 6, 30)) / 10
    assert _value("ap2026-12-02T06:00Z").slack == timedelta(0)
    assert _value("2024").slack == timedelta(0)


def _range(*clauses: list[str]) -> tuple[date | None, date | None] | None:
    return study_date_range([[_value(v) for v in clause] for clause in clauses])


@pytest.mark.parametrize(
    ("clauses", "expected"),
    [
        ([["ge2024-01-01"], ["le2024-12-31"]], (date(2024, 1, 1), date(2024, 12, 31))),
        ([["2024"]], (date(2024, 1, 1), date(2024, 12, 31))),
        ([["2024-06-30"]], (date(2024, 6, 30), date(2024, 6, 30))),
        ([["2024-06-30T12:00"]], (date(2024, 6, 30), date(2024, 6, 30))),
        ([["gt2024-06"]], (date(2024, 7, 1), None)),
        ([["sa2024-06"]], (date(2024, 7, 1), None)),
        ([["gt2024-06-30T12:00"]], (date(2024, 6, 30), None)),
        ([["ge2024-06"]], (date(2024, 6, 1), None)),
        ([["lt2024-06"]], (None, date(2024, 5, 31))),
        ([["eb2024-06"]], (None, date(2024, 5, 31))),
        ([["le2024-06"]], (None, date(2024, 6, 30))),
        ([["ne2024"]], (None, None)),
        ([["ne2024"], ["2024-03"]], (date(2024, 3, 1), date(2024, 3, 31))),
        # With a zone the study may be anywhere from UTC-12 to UTC+14.
        ([["2024-06-30T12:00Z"]], (date(2024, 6, 30), date(2024, 7, 1))),
        ([["2024-06-30T01:00Z"]], (date(2024, 6, 29), date(2024, 6, 30))),
        ([["gt2024-06-30T23:00+02:00"]], (date(2024, 6, 30), None)),
        ([["lt2024-06-30T05:00+02:00"]], (None, date(2024, 6, 30))),
        # OR: the hull; AND: the intersection.
        ([["2024-01", "2024-03"]], (date(2024, 1, 1), date(2024, 3, 31))),
        ([["2024-01", "ge2025"]], (date(2024, 1, 1), None)),
        ([["2024"], ["ge2024-06"], ["lt2024-09"]], (date(2024, 6, 1), date(2024, 8, 31))),
        ([["2023"], ["2024"]], None),
        ([["ap2024-06-30"]], (date(2024, 4, 2), date(2024, 9, 27))),
        ([], (None, None)),
    ],
)
def test_study_date_range(
    clauses: list[list[str]], expected: tuple[date | None, date | None] | None
) -> None:
    assert _range(*clauses) == expected


def test_study_date_range_is_a_superset() -> None:
    # Every study a value matches has a StudyDate inside the pushed-down range.
    for text, _ in PREFIX_TABLE:
        pushed = _range([text])
        assert pushed is not None
        low, high = pushed
        for study in STUDIES.values():
            if date_matches(_value(text), study_times(study, UTC)):
                day = datetime.strptime(study["00080020"]["Value"][0], "%Y%m%d").date()
                assert (low is None or low <= day) and (high is None or day <= high), text
