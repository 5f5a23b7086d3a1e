"""Attribute matching done in the gateway (PS3.4 C.2.2.2), for what a PACS cannot match.

Used when a key had to be loosened before it could be sent upstream (see
:func:`loosen_for_upstream` for a DICOMweb PACS, :func:`loosen_wildcards` for a C-FIND SCP)
and for keys a DIMSE peer ignores. Matching here is character-wise: `?` is one character
(one code point) whatever its encoding, as PS3.4 C.2.2.2.4 has it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

from .query import MatchKey, MatchKind, QidoQuery

__all__ = [
    "key_matches",
    "loosen_for_upstream",
    "loosen_wildcards",
    "matches_all",
    "unchecked_keys",
]

# Characters a query value cannot carry to a PACS that does not percent-decode its query
# string (Orthanc 1.10): each run of them is sent as `*` instead, and the exact match is then
# done here. `?` is dealt with apart (see _EXTENDED_VRS).
_UNSENDABLE = re.compile(r"(?:[^\x21-\x7e]|[&#+%=;])+")

# VRs whose values may hold characters beyond the default repertoire (PS3.5 6.1.2.3: SH, LO,
# UC, ST, LT, UT, PN), and UN (a private data element, VR unknown). Only there can a `?` land
# on a non-ASCII character, which a PACS's own `?` may not match: a byte-wise matcher
# wants one `?` per byte, and Orthanc 1.10 matches a non-ASCII character with neither
# `?` nor `??` (tests/integration/test_wildcards.py), over DICOMweb and C-FIND alike. So each
# such `?` goes up as `*`, which matches any run of characters or bytes, and the gateway then
# matches the original key itself. In the other VRs (CS, AE, DA...) values are ASCII and a
# byte-wise `?` is exact.
_EXTENDED_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UN", "UT"})
_STARS = re.compile(r"\*{2,}")


@lru_cache(maxsize=1024)  # pure, and asked of every key of every search
def loosen_for_upstream(key: MatchKey) -> MatchKey | None:
    """A wider key for a DICOMweb PACS, or None if ``key`` can go up as it is.

    Runs of characters the PACS cannot receive unencoded become `*`, and so does each `?` of
    a VR of :data:`_EXTENDED_VRS` (PS3.4 C.2.2.2.4: `?` is one character; a PACS may match it
    against one byte). The caller matches the original key on the answers
    (:func:`matches_all`), so a value reduced to `*` alone (universal matching) is fine.
    """
    if key.kind not in (MatchKind.SINGLE, MatchKind.WILDCARD):
        return None
    value = _UNSENDABLE.sub("*", key.value)
    if key.vr in _EXTENDED_VRS:
        value = value.replace("?", "*")
    if value == key.value:
        return None
    return replace(key, kind=MatchKind.WILDCARD, value=_STARS.sub("*", value))


def loosen_wildcards(key: MatchKey) -> MatchKey | None:
    """``key`` with each `?` sent as `*`, for a C-FIND SCP; None if it has none to loosen.

    Only VRs of :data:`_EXTENDED_VRS` are loosened (PS3.4 C.2.2.2.4: `?` is one character;
    the SCP may match it against one byte, or miss a non-ASCII character altogether).
    Non-ASCII characters need no loosening here: C-FIND carries them with a Specific
    Character Set. A value that would become `*` alone stays ``?*``: a lone `*` is universal
    matching, which also returns entities without a value, and an answer without the
    attribute is not checked again by the gateway (the SCP may just not return it); ``?*``
    still asks for a value of at least one character. Each value of a multi-valued key is
    loosened on its own. The caller matches the original key on the answers.
    """
    if key.kind is not MatchKind.WILDCARD or key.vr not in _EXTENDED_VRS or "?" not in key.value:
        return None
    return replace(key, value="\\".join(map(_loosen_part, key.value.split("\\"))))


def _loosen_part(value: str) -> str:
    if "?" not in value:
        return value
    wide = _STARS.sub("*", value.replace("?", "*"))
    return "?*" if wide == "*" else wide


def unchecked_keys(datasets: Sequence[dict[str, Any]], query: QidoQuery) -> list[MatchKey]:
    """The keys of ``query`` (of its level or above) that no answer carries: a PACS that
    returns a matched attribute (PS3.18 10.6.3.3: it shall) but not this one ignored it, or
    matched without saying on what, so the answers are unchecked for it. None without
    answers (nothing to tell), for universal keys, and for names matched fuzzily."""
    if not datasets:
        return []
    return [key for key, tag in _checkable(query) if not any(tag in d for d in datasets)]


@lru_cache(maxsize=256)
def _checkable(query: QidoQuery) -> tuple[tuple[MatchKey, str], ...]:
    """The keys :func:`unchecked_keys` looks for, each with its top attribute's JSON key."""
    return tuple(
        (key, f"{key.path[0]:08X}")
        for key in query.keys
        if key.kind is not MatchKind.UNIVERSAL
        and (key.level is None or key.level.depth <= query.level.depth)
        and not (query.fuzzymatching and key.vr == "PN")
    )


def matches_all(dataset: dict[str, Any], keys: Iterable[MatchKey]) -> bool:
    return all(key_matches(dataset, key) for key in keys)


def key_matches(dataset: dict[str, Any], key: MatchKey) -> bool:
    """True if ``dataset`` (DICOM JSON) matches ``key`` (PS3.4 C.2.2.2.1-C.2.2.2.6)."""
    if key.kind is MatchKind.UNIVERSAL:
        return True
    return any(_value_matches(v, key) for v in _values(dataset, key.path))


def _values(dataset: dict[str, Any], path: tuple[int, ...]) -> list[Any]:
    element = dataset.get(f"{path[0]:08X}")
    if not isinstance(element, dict):
        return []
    values = element.get("Value")
    if not isinstance(values, list):
        return []
    if len(path) == 1:
        return values
    # Sequence matching (C.2.2.2.6): any item may match the rest of the path.
    return [v for item in values if isinstance(item, dict) for v in _values(item, path[1:])]


def _value_matches(value: Any, key: MatchKey) -> bool:
    text = _as_text(value, key.vr)
    if text is None:
        return False
    if key.kind is MatchKind.UID_LIST:
        return text in key.value.split("\\")
    if key.kind is MatchKind.RANGE:
        low, _, high = key.value.partition("-")
        return (not low or text[: len(low)] >= low) and (not high or text[: len(high)] <= high)
    # Several values (ModalitiesInStudy=CT\\MR): any of them may match.
    return any(_text_matches(text, pattern, key.kind) for pattern in key.value.split("\\"))


def _text_matches(text: str, pattern: str, kind: MatchKind) -> bool:
    # Case-insensitive, as the PACS the gateway fronts match (Orthanc, dcm4chee): a loosened
    # key checked here must not answer differently from the same key matched upstream.
    if kind is MatchKind.WILDCARD or "*" in pattern or "?" in pattern:
        return _wildcard_matches(pattern, text)
    return text.casefold() == pattern.casefold()


def _as_text(value: Any, vr: str) -> str | None:
    if isinstance(value, str):
        return value
    if vr == "PN" and isinstance(value, dict):
        name = value.get("Alphabetic")
        return name if isinstance(name, str) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _wildcard_matches(pattern: str, text: str) -> bool:
    """``text`` matches the whole of ``pattern`` (``*`` any run, ``?`` one character; PS3.4
    C.2.2.2.4), each character compared case-folded.

    In at most ``len(pattern) * len(text)`` steps: on a mismatch only the last ``*`` seen takes
    one more character. A regular expression (``.*a.*a.*b``) backtracks into every earlier
    ``*`` as well, which takes time exponential in their number: a query value of a few dozen
    characters (``*a*a*a*a*a*a*a*a*b?``) against a 64-character name would hold the event loop
    for minutes.
    """
    pat = [c.casefold() for c in pattern]
    txt = [c.casefold() for c in text]
    p = t = 0
    star, resumed = -1, 0
    while t < len(txt):
        if p < len(pat) and pat[p] == "*":
            star, resumed = p, t
            p += 1
        elif p < len(pat) and (pat[p] == "?" or pat[p] == txt[t]):
            p += 1
            t += 1
        elif star >= 0:  # let the last `*` take one more character
            resumed += 1
            p, t = star + 1, resumed
        else:
            return False
    return all(c == "*" for c in pat[p:])
