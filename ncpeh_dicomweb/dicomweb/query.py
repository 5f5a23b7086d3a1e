"""QIDO-RS query parameters (PS3.18 8.3.4, 10.6) parsed into an immutable, normalised model.

The model serves two backends: one forwards it to an upstream DICOMweb origin server
(:func:`to_params`, :func:`encode_query`), the other turns it into a C-FIND identifier. Values
are kept in their DICOM form: a UID list joined with ``\\``, a range as ``a-b``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn
from urllib.parse import quote

from pydicom.datadict import tag_for_keyword

from ..errors import InvalidQuery
from . import vr_values
from .attributes import Level, level_of, name_of, vr_of
from .uids import is_valid_uid

__all__ = [
    "IGNORED_PARAMS",
    "MAX_KEYS",
    "MAX_OFFSET",
    "MAX_PARAMS",
    "MAX_PATH_DEPTH",
    "MAX_VALUE_LENGTH",
    "MatchKey",
    "MatchKind",
    "QidoQuery",
    "encode_query",
    "parse_qido",
    "to_params",
]

MAX_VALUE_LENGTH = 1024  # characters in one parameter name or value
MAX_KEYS = 64  # match parameters in one query (each repetition counts)
MAX_PARAMS = 256  # parameters of any kind in one query (reserved and ignored ones included)
MAX_PATH_DEPTH = 8  # attributes in one dotted sequence path
MAX_OFFSET = 2**31 - 1  # what upstream servers parse safely
IGNORED_PARAMS = frozenset({"_"})  # cache-busters added by browsers' XHR libraries

_MODALITY = 0x00080060
_MODALITIES_IN_STUDY = 0x00080061
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_UINT = re.compile(r"[0-9]+")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # control chars, lone surrogates
_WILDCARD = re.compile(r"[*?]")
_LIST_SEPARATOR = re.compile(r"[,\\]")
_BOOLEANS = {"true": True, "false": False}


class MatchKind(enum.Enum):
    """The types of matching of PS3.4 C.2.2.2 a key uses."""

    UNIVERSAL = "universal"  # C.2.2.2.3: empty value (or "*"), the attribute is returned
    SINGLE = "single"  # C.2.2.2.1
    WILDCARD = "wildcard"  # C.2.2.2.4: "*" and "?"
    RANGE = "range"  # C.2.2.2.5: DA, TM, DT
    UID_LIST = "uid-list"  # C.2.2.2.2: several UIDs


@dataclass(frozen=True, slots=True)
class MatchKey:
    """One matching key (PS3.18 8.3.4.1) with its value normalised to DICOM form."""

    path: tuple[int, ...]
    vr: str
    kind: MatchKind
    value: str

    @property
    def name(self) -> str:
        """Canonical parameter name: dotted keywords, 8 upper-hex digits for tags without one."""
        return ".".join(name_of(tag) for tag in self.path)

    @property
    def level(self) -> Level | None:
        """Study Root level of the top attribute of the path (see :func:`level_of`)."""
        return level_of(self.path[0])


@dataclass(frozen=True, slots=True)
class QidoQuery:
    """A validated QIDO-RS search (PS3.18 10.6.1). Warnings take no part in equality."""

    level: Level
    keys: tuple[MatchKey, ...] = ()
    includefields: tuple[tuple[int, ...], ...] = ()
    include_all: bool = False
    fuzzymatching: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: tuple[str, ...] = field(default=(), compare=False)


def _fail(parameter: str, value: str, reason: str) -> NoReturn:
    # Echo at most 256 characters of a name and 80 of a value (as uids.check_uid does).
    raise InvalidQuery(
        f"query parameter {parameter[:256]!r}: {reason}",
        detail={"parameter": parameter[:256], "value": value[:80]},
    )


def _parse_path(text: str, parameter: str, value: str, *, sequence_last: bool) -> tuple[int, ...]:
    """Tag path of an attribute (PS3.18 8.3.4.1): keywords or 8-hex tags joined with dots."""
    tokens = text.split(".")
    if len(tokens) > MAX_PATH_DEPTH:
        _fail(parameter, value, f"attribute paths may hold at most {MAX_PATH_DEPTH} attributes")
    path: list[int] = []
    for i, token in enumerate(tokens):
        tag = int(token, 16) if _TAG.fullmatch(token) else None
        if tag is None and _KEYWORD.fullmatch(token):
            tag = tag_for_keyword(token)
        vr = None if tag is None else vr_of(tag)
        if tag is None or vr is None:
            what = "query parameter" if len(tokens) == 1 else "attribute"
            _fail(parameter, value, f"unknown {what} {token[:80]!r} (not a DICOM keyword or tag)")
        last = i == len(tokens) - 1
        if not last and vr != "SQ":
            _fail(parameter, value, f"{token!r} is not a sequence, so nothing can follow it")
        if last and vr == "SQ" and not sequence_last:
            _fail(parameter, value, f"{token!r} is a sequence: match an attribute inside it")
        path.append(tag)
    return tuple(path)


def _uids(parameter: str, value: str) -> list[str]:
    """The UIDs of a single value or UID list (PS3.18 8.3.4.1 uid-list-match, PS3.4 C.2.2.2.2)."""
    if _WILDCARD.search(value):
        _fail(parameter, value, "wildcards are not allowed in UIDs")
    uids = _LIST_SEPARATOR.split(value)
    for uid in uids:
        if not is_valid_uid(uid):
            _fail(parameter, value, f"{uid[:80]!r} is not a valid {vr_values.describe('UI')}")
    return uids


def _after(start: datetime, end: datetime) -> bool:
    """``start > end``; False when one has a UTC offset and the other not (not comparable)."""
    return (start.tzinfo is None) == (end.tzinfo is None) and start > end


def _temporal(parameter: str, vr: str, value: str) -> tuple[MatchKind, str]:
    """A DA/TM/DT single value or range ``a-b``, ``a-``, ``-b`` (PS3.4 C.2.2.2.5)."""
    if _WILDCARD.search(value):
        _fail(parameter, value, f"wildcards are not allowed for a {vr_values.describe(vr)}")
    if vr_values.temporal_span(vr, value) is not None:
        return MatchKind.SINGLE, value
    # A DT may hold a "-" of its own (offset -ZZXX): take the first split into two valid ends.
    for i, char in enumerate(value):
        if char != "-":
            continue
        start, end = value[:i], value[i + 1 :]
        first = vr_values.temporal_span(vr, start) if start else None
        last = vr_values.temporal_span(vr, end) if end else None
        if (start and first is None) or (end and last is None) or not (start or end):
            continue
        if first and last and _after(first[0], last[1]):
            _fail(parameter, value, "the range starts after it ends")
        return MatchKind.RANGE, f"{start}-{end}"
    _fail(parameter, value, f"not a {vr_values.describe(vr)} nor a range of them")


def _match(parameter: str, path: tuple[int, ...], vr: str, value: str) -> tuple[MatchKind, str]:
    """Kind and normalised value of a non-UI match key (PS3.4 C.2.2.2)."""
    multi = path == (_MODALITIES_IN_STUDY,)  # a list of modalities, PS3.4 C.6.2.1.2
    if "\\" in value and not multi:
        _fail(parameter, value, "multiple values ('\\') are only allowed for UIDs")
    if vr in vr_values.BINARY_VRS:
        _fail(parameter, value, f"only universal matching (an empty value) applies to VR {vr}")
    if vr in vr_values.TEMPORAL_VRS:
        return _temporal(parameter, vr, value)
    parts = _LIST_SEPARATOR.split(value) if multi else [value]
    wildcard = False
    for part in parts:
        if _WILDCARD.search(part):
            wildcard = True
            if vr in vr_values.NO_WILDCARD_VRS:
                _fail(parameter, value, f"wildcards are not allowed for a {vr_values.describe(vr)}")
            valid = vr_values.is_valid_pattern(vr, part)
        else:
            valid = vr_values.is_valid(vr, part) and part != ""
        if not valid:
            _fail(parameter, value, f"{part[:80]!r} is not a valid {vr_values.describe(vr)}")
    kind = MatchKind.WILDCARD if wildcard else MatchKind.SINGLE
    return kind, "\\".join(dict.fromkeys(parts))


class _Parser:
    """Accumulates parameters in order; :meth:`result` builds the query."""

    def __init__(self, level: Level, max_limit: int) -> None:
        self.level = level
        self.max_limit = max_limit
        self.keys: dict[tuple[int, ...], MatchKey] = {}
        self.includes: dict[tuple[int, ...], None] = {}
        self.include_all = False
        self.fuzzy = False
        self.limit: int | None = None
        self.offset = 0
        self.warnings: list[str] = []
        self.seen: set[str] = set()
        self.match_count = 0

    def once(self, name: str, value: str) -> None:
        reserved = name.lower()
        if reserved in self.seen:
            _fail(name, value, "given more than once")
        self.seen.add(reserved)

    def boolean(self, name: str, value: str) -> bool:
        flag = _BOOLEANS.get(value.lower())
        if flag is None:
            _fail(name, value, "must be 'true' or 'false'")
        return flag

    def uint(self, name: str, value: str) -> int:
        if not _UINT.fullmatch(value):
            _fail(name, value, "must be a non-negative integer")
        return int(value)

    def fuzzymatching(self, name: str, value: str) -> None:  # PS3.18 8.3.4.2
        self.once(name, value)
        self.fuzzy = self.boolean(name, value)

    def limit_(self, name: str, value: str) -> None:  # PS3.18 8.3.4.4
        self.once(name, value)
        limit = self.uint(name, value)
        if limit > self.max_limit:
            shown = str(limit) if len(value) <= 20 else value[:20] + "..."
            self.warnings.append(f"limit {shown} capped at {self.max_limit}")
            limit = self.max_limit
        self.limit = limit

    def offset_(self, name: str, value: str) -> None:  # PS3.18 8.3.4.4
        self.once(name, value)
        self.offset = self.uint(name, value)
        if self.offset > MAX_OFFSET:
            _fail(name, value, f"must be at most {MAX_OFFSET}")

    def unsupported(self, name: str, value: str) -> None:  # PS3.18 8.3.4.5, 8.3.4.6
        self.once(name, value)
        if self.boolean(name, value):
            self.warnings.append(f"{name.lower()} is not supported and was ignored")

    def includefield(self, name: str, value: str) -> None:  # PS3.18 8.3.4.3
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue  # RFC 9110 5.6.1: empty list elements are ignored
            if item.lower() == "all":
                self.include_all = True
            else:
                path = _parse_path(item, name, item, sequence_last=True)
                self.includes[path] = None
            if self.include_all and self.includes:
                _fail(name, value, "'all' excludes any other includefield")

    def match(self, name: str, value: str) -> None:  # PS3.18 8.3.4.1
        self.match_count += 1
        if self.match_count > MAX_KEYS:
            _fail(name, value, f"a query may hold at most {MAX_KEYS} matching keys")
        path = _parse_path(name, name, value, sequence_last=False)
        if path == (_MODALITY,) and self.level is Level.STUDY:
            path = (_MODALITIES_IN_STUDY,)  # NCPeH guide: Modality=MR on /studies
        vr = str(vr_of(path[-1]))
        previous = self.keys.get(path)
        if value in ("", "*"):
            if previous is not None:
                _fail(name, value, "given more than once")
            self.keys[path] = MatchKey(path, vr, MatchKind.UNIVERSAL, "")
        elif vr == "UI":
            if previous is not None and previous.kind is MatchKind.UNIVERSAL:
                _fail(name, value, "given more than once")
            old = previous.value.split("\\") if previous is not None else []
            uids = list(dict.fromkeys([*old, *_uids(name, value)]))
            kind = MatchKind.UID_LIST if len(uids) > 1 else MatchKind.SINGLE
            self.keys[path] = MatchKey(path, vr, kind, "\\".join(uids))
        elif previous is not None:
            _fail(name, value, "given more than once (only UI keys may repeat)")
        else:
            self.keys[path] = MatchKey(path, vr, *_match(name, path, vr, value))

    def result(self) -> QidoQuery:
        # PS3.18 8.3.4.3, PS3.5 7.8.1: a private data element needs its Private Creator as a key.
        for path in [*self.keys, *self.includes]:
            group, element = path[0] >> 16, path[0] & 0xFFFF
            if group % 2 and element >= 0x1000:
                creator = (group << 16) | (element >> 8)
                if (creator,) not in self.keys:
                    parameter = name_of(path[0]) if path in self.keys else "includefield"
                    _fail(parameter, "", f"needs its private creator {creator:08X} as a match key")
        return QidoQuery(
            level=self.level,
            keys=tuple(self.keys[path] for path in sorted(self.keys)),
            includefields=tuple(sorted(self.includes)),
            include_all=self.include_all,
            fuzzymatching=self.fuzzy,
            limit=self.limit,
            offset=self.offset,
            warnings=tuple(self.warnings),
        )


_RESERVED: dict[str, Callable[[_Parser, str, str], None]] = {
    "includefield": _Parser.includefield,
    "fuzzymatching": _Parser.fuzzymatching,
    "limit": _Parser.limit_,
    "offset": _Parser.offset_,
    "emptyvaluematching": _Parser.unsupported,
    "multiplevaluematching": _Parser.unsupported,
}


def parse_qido(
    params: Iterable[tuple[str, str]],
    level: Level,
    *,
    max_limit: int = 1000,
    max_value_length: int = MAX_VALUE_LENGTH,
) -> QidoQuery:
    """Validate QIDO-RS query parameters (PS3.18 8.3.4) for a search at ``level`` (10.6.1).

    ``params`` are percent-decoded (name, value) pairs in order, at most :data:`MAX_PARAMS`
    of them (:data:`MAX_KEYS` matching keys among them). Matching follows PS3.4
    C.2.2.2. Reserved names are case-insensitive, as ABNF literals are (RFC 5234 2.3).
    ``limit=0`` is valid (``uint`` in PS3.18 Table 8.3.4-1) and asks for no result; a limit
    above ``max_limit`` is capped with a warning. Anything malformed raises
    :class:`InvalidQuery` (400) naming the parameter. ``max_value_length`` bounds what a
    client may send; the gateway's own queries (UID lists of 100) pass a larger one.
    """
    params = list(params)
    if len(params) > MAX_PARAMS:
        # Refused before any is read: thousands of "_=1" or "includefield=x" are work too.
        name, value = params[MAX_PARAMS]
        _fail(name, value, f"a query may hold at most {MAX_PARAMS} parameters")
    parser = _Parser(level, max_limit)
    for name, value in params:
        for text in (name, value):
            if len(text) > max_value_length:
                _fail(name, value, f"longer than {max_value_length} characters")
            if _FORBIDDEN.search(text):
                _fail(name, value, "control characters are not allowed")
        if name in IGNORED_PARAMS:
            continue
        handler = _RESERVED.get(name.lower())
        if handler is not None:
            handler(parser, name, value)
        else:
            parser.match(name, value)
    return parser.result()


def to_params(query: QidoQuery) -> list[tuple[str, str]]:
    """Canonical query parameters (PS3.18 8.3.4) for ``query``; ``parse_qido`` reads them back.

    Multiple values (UID lists, a list of modalities) are joined with commas, never with
    backslashes: see :func:`encode_query`.
    """
    params = [(key.name, key.value.replace("\\", ",")) for key in query.keys]
    if query.include_all:
        params.append(("includefield", "all"))
    elif query.includefields:
        names = (".".join(name_of(tag) for tag in path) for path in query.includefields)
        params.append(("includefield", ",".join(names)))
    if query.fuzzymatching:
        params.append(("fuzzymatching", "true"))
    if query.limit is not None:
        params.append(("limit", str(query.limit)))
    if query.offset:
        params.append(("offset", str(query.offset)))
    return params


# Kept raw besides RFC 3986 unreserved characters (ALPHA DIGIT - . _ ~): wildcards, the PN
# component separator and the list separator, all allowed in a query component (RFC 3986 3.4).
# Orthanc 1.10.1 with DICOMweb plugin 1.7 does not percent-decode query values, so encoded
# "*", "?", "^" or "," would be matched literally. A backslash is encoded (%5C) as RFC 3986
# requires: that is why to_params joins multiple values with commas.
_RAW = "*?^,"


def encode_query(params: Iterable[tuple[str, str]]) -> str:
    """The query string (no leading ``?``) for ``params`` on an upstream URL (PS3.18 8.3.4).

    ``&``, ``=``, ``#``, ``+``, ``%``, space, ``\\`` and every other character outside
    ``A-Z a-z 0-9 - . _ ~ * ? ^ ,`` are percent-encoded, non-ASCII as UTF-8.
    """
    return "&".join(f"{quote(name, safe=_RAW)}={quote(value, safe=_RAW)}" for name, value in params)
