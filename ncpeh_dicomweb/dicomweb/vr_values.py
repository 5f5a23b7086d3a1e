"""Checks of single match values by VR (PS3.5 6.2) as used in QIDO-RS / C-FIND keys (PS3.4 C.2.2.2).

Each VR with a syntax of its own has an entry in a table of validators; the others (PN, LO, SH,
LT, ST, UT, UC, AE, UR and the UN given to private data elements) are free text. DA, TM and DT
values are parsed into the span of instants they denote so that ranges can be ordered.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone, tzinfo

__all__ = [
    "BINARY_VRS",
    "NO_WILDCARD_VRS",
    "TEMPORAL_VRS",
    "Span",
    "describe",
    "is_valid",
    "is_valid_pattern",
    "temporal_span",
]

Span = tuple[datetime, datetime]
"""The first and the last instant a DA, TM or DT value denotes."""

# Binary VRs: nothing to match against, only universal matching makes sense.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
TEMPORAL_VRS = frozenset({"DA", "TM", "DT"})
# PS3.4 C.2.2.2.4: "*" and "?" are wildcards except for these VRs (UN is left out on purpose:
# private data elements get UN here because their real VR is unknown, so they stay free text).
NO_WILDCARD_VRS = frozenset(
    {"AS", "AT", "DA", "DS", "DT", "FD", "FL", "IS", "SL", "SS", "SV", "TM", "UI", "UL", "US", "UV"}
    | BINARY_VRS
)

_DA = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_TM = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?")
_DT = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})"
    r"(?:\.([0-9]{1,6}))?)?)?)?)?)?([+-][0-9]{4})?"
)
_INT = re.compile(r"[+-]?[0-9]{1,20}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_CS = re.compile(r"[A-Z0-9 _]{1,16}")
_CS_PATTERN = re.compile(r"[A-Z0-9 _*?]+")
_AS = re.compile(r"[0-9]{3}[DWMY]")
_AT = re.compile(r"[0-9A-Fa-f]{8}")


def _bounds(text: str | None, low: int, high: int) -> tuple[int, int]:
    """(value, value) for a given component, else its whole range."""
    return (low, high) if text is None else (int(text), int(text))


def _span(parts: Sequence[str | None], tz: tzinfo | None = None) -> Span | None:
    """The instants from the earliest to the latest completion of a partial date-time.

    ``parts`` are year, month, day, hour, minute, second and fraction, absent ones ``None``.
    """
    year, month, day, hour, minute, second, fraction = parts
    try:
        y = int(str(year))
        mo = _bounds(month, 1, 12)
        last_day = calendar.monthrange(y, mo[1])[1] if 1 <= mo[1] <= 12 and y >= 1 else 31
        d = _bounds(day, 1, last_day)
        h = _bounds(hour, 0, 23)
        mi = _bounds(minute, 0, 59)
        s = _bounds(second, 0, 59)
        us = (
            (0, 999999)
            if fraction is None
            else (int(fraction.ljust(6, "0")), int(fraction.ljust(6, "9")))
        )
        if s[0] == 60:  # a leap second (PS3.5 TM, DT): the last microsecond of the minute
            s, us = (59, 59), (999999, 999999)
        return (
            datetime(y, mo[0], d[0], h[0], mi[0], s[0], us[0], tz),
            datetime(y, mo[1], d[1], h[1], mi[1], s[1], us[1], tz),
        )
    except ValueError:  # month 13, 30 February, hour 24, year 0, ...
        return None


def _da(value: str) -> Span | None:
    m = _DA.fullmatch(value)
    return None if m is None else _span([*m.groups(), None, None, None, None])


def _tm(value: str) -> Span | None:
    m = _TM.fullmatch(value)
    return None if m is None else _span(["2000", "01", "01", *m.groups()])


def _dt(value: str) -> Span | None:
    m = _DT.fullmatch(value)
    if m is None:
        return None
    offset = m.group(8)
    tz: tzinfo | None = None
    if offset is not None:
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes > 59:
            return None
        delta = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-delta if offset[0] == "-" else delta)
    return _span(m.groups()[:7], tz)


_TEMPORAL: dict[str, Callable[[str], Span | None]] = {"DA": _da, "TM": _tm, "DT": _dt}


def temporal_span(vr: str, value: str) -> Span | None:
    """The span of a DA, TM or DT value (PS3.5 6.2), or ``None`` if it is not valid.

    DA is YYYYMMDD (a real calendar date); TM is HH[MM[SS[.F{1,6}]]]; DT is
    YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]. A DT with an offset gives aware datetimes.
    """
    return _TEMPORAL[vr](value)


def _integer(low: int, high: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return _INT.fullmatch(value) is not None and low <= int(value) <= high

    return check


def _decimal(value: str) -> bool:
    return _DECIMAL.fullmatch(value) is not None and math.isfinite(float(value))


def _matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return pattern.fullmatch(value) is not None

    return check


_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "AS": _matches(_AS),
    "AT": _matches(_AT),
    "CS": _matches(_CS),
    "DA": lambda v: _da(v) is not None,
    "DS": _decimal,
    "DT": lambda v: _dt(v) is not None,
    "FD": _decimal,
    "FL": _decimal,
    "IS": _integer(-(2**31), 2**31 - 1),
    "SL": _integer(-(2**31), 2**31 - 1),
    "SS": _integer(-(2**15), 2**15 - 1),
    "SV": _integer(-(2**63), 2**63 - 1),
    "TM": lambda v: _tm(v) is not None,
    "UL": _integer(0, 2**32 - 1),
    "US": _integer(0, 2**16 - 1),
    "UV": _integer(0, 2**64 - 1),
}
_PATTERN_VALIDATORS: dict[str, Callable[[str], bool]] = {"CS": _matches(_CS_PATTERN)}

_DESCRIPTIONS: dict[str, str] = {
    "AS": "age (nnnD, nnnW, nnnM or nnnY)",
    "AT": "attribute tag (8 hex digits)",
    "CS": "code string (A-Z, 0-9, space and underscore, at most 16 characters)",
    "DA": "date (YYYYMMDD)",
    "DS": "decimal number",
    "DT": "date-time (YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]][&ZZXX])",
    "FD": "decimal number",
    "FL": "decimal number",
    "IS": "integer",
    "SL": "32-bit signed integer",
    "SS": "16-bit signed integer",
    "SV": "64-bit signed integer",
    "TM": "time (HH[MM[SS[.FFFFFF]]])",
    "UI": "DICOM UID (digits and dots, at most 64 characters)",
    "UL": "32-bit unsigned integer",
    "US": "16-bit unsigned integer",
    "UV": "64-bit unsigned integer",
}


def is_valid(vr: str, value: str) -> bool:
    """True if ``value`` is one valid value of ``vr`` (PS3.5 6.2); free-text VRs accept any."""
    check = _VALIDATORS.get(vr)
    return True if check is None else check(value)


def is_valid_pattern(vr: str, value: str) -> bool:
    """True if ``value``, which holds ``*`` or ``?`` wildcards (PS3.4 C.2.2.2.4), suits ``vr``."""
    check = _PATTERN_VALIDATORS.get(vr)
    return True if check is None else check(value)


def describe(vr: str) -> str:
    """A short description of the values ``vr`` takes, for error messages."""
    return _DESCRIPTIONS.get(vr, f"{vr} value")
