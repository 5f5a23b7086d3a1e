"""C-FIND identifiers for QIDO-RS searches, and DICOM JSON for the answers.

A QIDO-RS search (PS3.18 10.6) is answered with a C-FIND in the Study Root Query/Retrieve
Information Model (PS3.4 C.6.2). :func:`find_identifier` turns a parsed :class:`QidoQuery` into
the request identifier (PS3.4 C.4.1.1.3.1) and sets aside the keys that identifier cannot carry;
:func:`answer_to_json` turns one response identifier (PS3.4 C.4.1.1.3.2) into DICOM JSON
(PS3.18 F.2).

Pure functions over pydicom datasets: no network I/O, no association handling.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from ...dicomweb.attributes import Level, level_of, matching_keys, required_return_tags, vr_of
from ...dicomweb.matching import loosen_wildcards
from ...dicomweb.query import MatchKey, MatchKind, QidoQuery
from ..base import DicomJson, Scope

__all__ = ["FindPlan", "answer_to_json", "find_identifier"]

_log = logging.getLogger(__name__)

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
RETRIEVE_URL = 0x00081190
MODALITIES_IN_STUDY = 0x00080061
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E

Path = tuple[int, ...]

# Query/Retrieve Level (0008,0052) of each QIDO-RS level, Study Root model (PS3.4 C.6.2.1).
_QR_LEVEL: dict[Level, str] = {
    Level.STUDY: "STUDY",
    Level.SERIES: "SERIES",
    Level.INSTANCE: "IMAGE",
}

# Unique key of the levels a QIDO-RS path can name (PS3.4 C.6.2.1.1, C.6.2.1.2).
_UNIQUE_KEY: dict[Level, int] = {Level.STUDY: STUDY_INSTANCE_UID, Level.SERIES: SERIES_INSTANCE_UID}

# Never asked for: the gateway writes its own Retrieve URL (PS3.18 10.6.3.3), the PACS's one
# would name an internal address.
_NOT_ASKED = frozenset({RETRIEVE_URL})

# Keys C-FIND can carry but many SCPs match wrongly: they are sent universal (so that every
# answer holds the attribute) and matched in the gateway on the answers (matching.key_matches).
_GATEWAY_ONLY: dict[Path, Callable[[MatchKey], bool]] = {
    # A list of modalities (PS3.4 C.6.2.1.2: any value may match): a multi-valued CS key that
    # many SCPs match as one literal string, or only against the first value.
    (MODALITIES_IN_STUDY,): lambda key: "\\" in key.value,
}

# Character sets an identifier may declare, least demanding first (PS3.5 Table C.12-2).
# PS3.4 C.4.1.1.3.1: Specific Character Set is present only if the identifier needs more than
# the default repertoire; ISO-IR 100 is supported by more SCPs than ISO-IR 192, so UTF-8 is
# declared only for values Latin-1 cannot hold (Greek, Cyrillic, Latin-2 names...).
_CHARSETS: tuple[tuple[str | None, str], ...] = (
    (None, "ascii"),
    ("ISO_IR 100", "latin_1"),
    ("ISO_IR 192", "utf_8"),
)


def _unknown(value: str, codec: str) -> bytes:
    """A private data element (VR UN, PS3.5 6.2.2) holding text: padded like text, with space."""
    data = value.encode(codec)
    return data + b" " if len(data) % 2 else data


# Value of a non-universal single, wildcard or range key as pydicom wants it, by VR.
# Absent VRs (text, DA/TM/DT, IS/DS, UI single values) take the query string as is.
_CONVERT: dict[str, Callable[[str, str], Any]] = {
    "AT": lambda value, _: int(value, 16),
    "FD": lambda value, _: float(value),
    "FL": lambda value, _: float(value),
    "SL": lambda value, _: int(value),
    "SS": lambda value, _: int(value),
    "SV": lambda value, _: int(value),
    "UL": lambda value, _: int(value),
    "US": lambda value, _: int(value),
    "UV": lambda value, _: int(value),
    "UN": _unknown,
}


@dataclass(frozen=True, slots=True)
class FindPlan:
    """How a QIDO-RS search is run as a C-FIND (PS3.4 C.4.1).

    ``identifier`` is the request identifier. ``gateway_keys`` are matched by the gateway on the
    answers (their attribute is asked for, universally). ``lower_keys`` belong to a level below
    ``level``: a C-FIND at ``level`` cannot hold them, so the backend first runs a C-FIND one
    level down with them and then restricts this one to the parents found: what a relational
    query (PS3.4 C.4.1.2.2.1) would do in one C-FIND, done in two hierarchical ones.
    Neither kind is in the identifier.
    """

    identifier: Dataset
    level: Level
    gateway_keys: tuple[MatchKey, ...] = ()
    lower_keys: tuple[MatchKey, ...] = ()


class _Route(enum.Enum):
    IDENTIFIER = "identifier"
    GATEWAY = "gateway"
    LOWER = "lower"
    ABSORBED = "absorbed"  # implied by a scope UID, nothing left to match


def find_identifier(query: QidoQuery, scope: Scope) -> FindPlan:
    """The C-FIND request identifier (PS3.4 C.4.1.1.3.1) for ``query`` under ``scope``.

    * Query/Retrieve Level is STUDY, SERIES or IMAGE.
    * Scope UIDs become single-value unique keys (PS3.4 C.2.2.2.1). Below the study level the
      unique keys of the levels above are always present, universal when the path gives no UID,
      so that the answers carry them. A universal or list value there is beyond the baseline
      hierarchical query (C.4.1.2.1) and needs relational queries (C.4.1.2.2.1), which many
      SCPs accept even unnegotiated.
    * Match keys keep their PS3.4 C.2.2.2 form: single value, wildcard (C.2.2.2.4), range
      ``a-b`` (C.2.2.2.5), UID list joined with ``\\`` (C.2.2.2.2), zero length for universal
      matching (C.2.2.2.3); a dotted path becomes a sequence of one item holding the nested key
      (sequence matching, C.2.2.2.6). Keys above the query level are sent too (relational).
      Except `?` in a text VR (PN, LO, SH...), sent as `*` (``matching.loosen_wildcards``):
      C.2.2.2.4's `?` is one character, an SCP's may be one byte or miss a non-ASCII one. The
      answers must therefore be matched again against ``query.keys``, as the backend does.
    * A key on a UID the scope fixes is absorbed when the scope implies it, else matched in the
      gateway (it then matches nothing). Keys of ``_GATEWAY_ONLY`` go to ``gateway_keys``, keys
      of a lower level to ``lower_keys``.
    * Return keys, asked with zero length (C.2.2.2.3): the attributes PS3.18 10.6.3.3 requires
      at this level, and at the levels above that the scope does not fix, except Retrieve URL;
      the ``includefield`` attributes not below the query level (a sequence path asks for its
      whole top-level sequence, unless a match key already put an item there); with
      ``includefield=all`` every key of this level and the levels above (PS3.4 C.6.2.1).
    * Specific Character Set only when a value needs it (see ``_CHARSETS``).

    ``fuzzymatching`` has no C-FIND counterpart here (it is an extended negotiation item) and
    ``limit``/``offset`` are the backend's to apply. Raises ValueError for a series scope on a
    study-level query.
    """
    level = query.level
    scoped: dict[Level, str | None] = {Level.STUDY: scope.study, Level.SERIES: scope.series}
    if scope.series is not None and level is Level.STUDY:
        raise ValueError("a series scope needs a series- or instance-level query")
    fixed: dict[Path, str] = {
        (_UNIQUE_KEY[lvl],): uid for lvl, uid in scoped.items() if uid is not None
    }
    routes: dict[_Route, list[MatchKey]] = {route: [] for route in _Route}
    for key in query.keys:
        routes[_route(key, level, fixed)].append(key)
    sent = routes[_Route.IDENTIFIER]
    gateway = routes[_Route.GATEWAY]

    charset, codec = _charset([*(key.value for key in sent), *fixed.values()])
    identifier = Dataset()
    for key in sent:
        # A `?` of a text VR goes up as `*`; the backend matches the original key on the answers.
        wide = loosen_wildcards(key) or key
        _put(identifier, key.path, key.vr, _dicom_value(wide, codec))
    for path, uid in fixed.items():
        _put(identifier, path, "UI", uid)
    for path in _return_paths(query, gateway, scoped):
        _ask(identifier, path)
    identifier.add(_element(QUERY_RETRIEVE_LEVEL, "CS", _QR_LEVEL[level]))
    if charset is not None:
        identifier.add(_element(SPECIFIC_CHARACTER_SET, "CS", charset))
    return FindPlan(
        identifier=identifier,
        level=level,
        gateway_keys=tuple(gateway),
        lower_keys=tuple(routes[_Route.LOWER]),
    )


def _route(key: MatchKey, level: Level, fixed: Mapping[Path, str]) -> _Route:
    if key.level is not None and key.level.depth > level.depth:
        return _Route.LOWER
    uid = fixed.get(key.path)
    if uid is not None:
        implied = key.kind is MatchKind.UNIVERSAL or uid in key.value.split("\\")
        return _Route.ABSORBED if implied else _Route.GATEWAY
    gateway_only = _GATEWAY_ONLY.get(key.path)
    if gateway_only is not None and gateway_only(key):
        return _Route.GATEWAY
    return _Route.IDENTIFIER


def _return_paths(
    query: QidoQuery, gateway: Iterable[MatchKey], scoped: Mapping[Level, str | None]
) -> Iterator[Path]:
    """Attributes to ask for with zero length, in order of importance (duplicates are fine)."""
    level = query.level
    above = [lvl for lvl in Level if lvl.depth < level.depth]
    yield from ((key.path[0],) for key in gateway)  # the gateway matches on them
    yield from ((_UNIQUE_KEY[lvl],) for lvl in above)  # answers need them for Retrieve URLs
    # PS3.18 10.6.3.3.2/10.6.3.3.3: a search of all series (all instances, a study's instances)
    # also returns the attributes of the levels above that the path leaves open.
    for lvl in [*(lvl for lvl in above if scoped[lvl] is None), level]:
        yield from ((tag,) for tag in required_return_tags(lvl) if tag not in _NOT_ASKED)
    # PS3.18 10.6.3.3.1/10.6.3.3.2: attributes of lower levels in includefield are not returned.
    for path in query.includefields:
        path_level = level_of(path[0])
        if path[0] not in _NOT_ASKED and (path_level is None or path_level.depth <= level.depth):
            yield path
    if query.include_all:
        for lvl in [*above, level]:
            yield from ((tag,) for tag in matching_keys(lvl))


def _charset(values: Iterable[str]) -> tuple[str | None, str]:
    """Specific Character Set value (None: default repertoire) and Python codec for ``values``."""
    text = "".join(values)
    for charset, codec in _CHARSETS:
        if _encodable(text, codec):
            return charset, codec
    return _CHARSETS[-1]  # unreachable: parse_qido lets no lone surrogate through


def _encodable(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _dicom_value(key: MatchKey, codec: str) -> Any:
    """The value of ``key`` as pydicom holds it for the key's VR (PS3.4 C.2.2.2)."""
    if key.kind is MatchKind.UNIVERSAL:
        return None
    if key.kind is MatchKind.UID_LIST:
        return key.value.split("\\")
    convert = _CONVERT.get(key.vr)
    return key.value if convert is None else convert(key.value, codec)


def _element(tag: int, vr: str, value: Any) -> DataElement:
    # Values were checked by parse_qido against the matching syntax of PS3.4 C.2.2.2; pydicom's
    # validators know stored values only and would warn about wildcards (a "C*" CS) and ranges.
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _vr(tag: int) -> str:
    return vr_of(tag) or "UN"


def _single_item(dataset: Dataset, tag: int) -> Dataset:
    """The one item of sequence ``tag`` (PS3.4 C.2.2.2.6), created if absent or empty."""
    if tag in dataset and dataset[tag].value:
        item: Dataset = dataset[tag].value[0]
        return item
    item = Dataset()
    dataset.add(_element(tag, "SQ", [item]))
    return item


def _put(dataset: Dataset, path: Path, vr: str, value: Any) -> None:
    """Add a match key, nested in one-item sequences along ``path``."""
    for tag in path[:-1]:
        dataset = _single_item(dataset, tag)
    dataset.add(_element(path[-1], vr, value))


def _ask(dataset: Dataset, path: Path) -> None:
    """Add a return key (zero length, PS3.4 C.2.2.2.3) unless already there.

    Walks into sequence items a match key created; at the first attribute absent, asks for it
    (a whole sequence as an empty one) and stops.
    """
    for tag in path:
        if tag not in dataset:
            vr = _vr(tag)
            dataset.add(_element(tag, vr, [] if vr == "SQ" else None))
            return
        element = dataset[tag]
        if element.VR != "SQ" or not element.value:
            return
        dataset = element.value[0]


# ---------------------------------------------------------------------------- answers

# Attributes of the C-FIND exchange rather than of the entity, dropped from the answers:
# Query/Retrieve Level (added by the SCP, C.4.1.1.3.2), Retrieve AE Title (an internal AE),
# Retrieve URL (an internal address; the gateway writes its own) and Specific Character Set
# (values are decoded, DICOM JSON is always UTF-8, PS3.18 F.2).
_NOT_ANSWERED = frozenset(
    {QUERY_RETRIEVE_LEVEL, RETRIEVE_AE_TITLE, RETRIEVE_URL, SPECIFIC_CHARACTER_SET}
)
# Command (0000) and File Meta (0002) groups are no part of a data set (PS3.5 7.1).
_NOT_DATA_SET_GROUPS = frozenset({0x0000, 0x0002})
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")  # PS3.18 F.2.2


def answer_to_json(answer: Dataset, query: QidoQuery) -> DicomJson:
    """DICOM JSON (PS3.18 F.2) of a C-FIND response identifier answering ``query``.

    Every attribute the SCP returned is kept, asked for or not, except the C-FIND bookkeeping
    of ``_NOT_ANSWERED``, groups 0000 and 0002, group lengths, and attributes of a level below
    ``query.level`` (PS3.18 10.6.3.3.1/10.6.3.3.2: they are not returned at that level).
    Values are decoded with the answer's Specific Character Set as pydicom reads them. An empty
    attribute has no "Value" (F.2.5); an empty value among several is ``null``. IS and DS are
    numbers (F.2.3), PN an object of component groups (F.2.2). An element pydicom cannot decode
    is left out (and logged) rather than failing the whole search.
    """
    depth = query.level.depth

    def keep(tag: int) -> bool:
        tag_level = level_of(tag)
        return _is_data(tag) and (tag_level is None or tag_level.depth <= depth)

    return _dataset_json(answer, keep)


def _is_data(tag: int) -> bool:
    return tag >> 16 not in _NOT_DATA_SET_GROUPS and tag & 0xFFFF != 0 and tag not in _NOT_ANSWERED


def _dataset_json(dataset: Dataset, keep: Callable[[int], bool]) -> DicomJson:
    out: DicomJson = {}
    for tag in sorted(dataset.keys()):
        if not keep(tag):
            continue
        try:
            element = dataset[tag]  # a raw element is decoded here, with the character set
            out[f"{tag:08X}"] = _element_json(element)
        except Exception as exc:  # one bad value from the SCP must not sink the whole answer
            _log.warning("C-FIND answer: attribute %08X left out: %s", int(tag), exc)
    return out


def _element_json(element: DataElement) -> DicomJson:
    vr = str(element.VR).split(" or ")[0]  # an ambiguous VR read implicitly: "US or SS"
    special = _JSON_VALUES.get(vr)
    if special is not None:
        values = [] if element.is_empty else special(element)
        return {"vr": vr, "Value": values} if values else {"vr": vr}
    encoded: DicomJson = element.to_json_dict(
        bulk_data_element_handler=None, bulk_data_threshold=1024
    )
    encoded["vr"] = vr
    if isinstance(encoded.get("Value"), list):
        encoded["Value"] = [None if v == "" else v for v in encoded["Value"]]
    return encoded


def _values(element: DataElement) -> list[Any]:
    return list(element.value) if element.VM > 1 else [element.value]


def _sequence(element: DataElement) -> list[Any]:
    return [_dataset_json(item, _is_data) for item in element.value]


def _person_names(element: DataElement) -> list[Any]:
    out: list[Any] = []
    for name in _values(element):
        groups = {k: v for k, v in zip(_PN_GROUPS, name.components, strict=False) if v}
        out.append(groups or None)
    return out


def _integers(element: DataElement) -> list[Any]:
    return [None if v is None or v == "" else int(v) for v in _values(element)]


def _decimals(element: DataElement) -> list[Any]:
    floats = (None if v is None or v == "" else float(v) for v in _values(element))
    return [v if v is not None and math.isfinite(v) else None for v in floats]


# VRs pydicom's DataElement.to_json_dict gets wrong (an empty PN or IS/DS value among several
# raises) or that need the item filter (SQ); the others go through pydicom.
_JSON_VALUES: dict[str, Callable[[DataElement], list[Any]]] = {
    "SQ": _sequence,
    "PN": _person_names,
    "IS": _integers,
    "DS": _decimals,
}
