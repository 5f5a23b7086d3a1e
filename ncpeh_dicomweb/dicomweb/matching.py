"""Attribute matching done in the gateway (PS3.4 C.2.2.2), for what a PACS cannot match.

Used when a key had to be loosened before it could be sent upstream (see
:func:`loosen_for_upstream`) and, later, for keys a DIMSE peer ignores.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from functools import lru_cache
from typing import Any

from .query import MatchKey, MatchKind

__all__ = ["key_matches", "loosen_for_upstream", "matches_all"]

# Characters a query value cannot carry to a PACS that does not percent-decode its query
# string (Orthanc 1.10): each run of them is sent as `*` instead, and the exact match is then
# done here. Not `?`: Orthanc's `?` does not match one non-ASCII character, `*` does.
_UNSENDABLE = re.compile(r"(?:[^\x21-\x7e]|[&#+%=;])+")


def loosen_for_upstream(key: MatchKey) -> MatchKey | None:
    """A wider key the PACS can receive unencoded, or None if ``key`` is fine as it is."""
    if key.kind not in (MatchKind.SINGLE, MatchKind.WILDCARD) or not _UNSENDABLE.search(key.value):
        return None
    wide = re.sub(r"\*{2,}", "*", _UNSENDABLE.sub("*", key.value))
    return replace(key, kind=MatchKind.WILDCARD, value=wide)


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
        return _wildcard(pattern).fullmatch(text) is not None
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


@lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | re.IGNORECASE)
