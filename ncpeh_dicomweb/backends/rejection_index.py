"""What IHE IOCM rejection notes hide, and QIDO answers without it (sans-I/O).

A rejection note is a Key Object Selection document whose title is one of DCM 113001 (quality),
113037 (patient safety), 113038 (incorrect worklist entry) or 113039 (retention expired): IHE RAD
TF-1 42 (Imaging Object Change Management), PS3.16 CID 7011. The instances it references are
rejected: never served again; nor is the note itself. :func:`note_hides` reads one note (with
:func:`~ncpeh_dicomweb.fhir.kos.read_kos`), :class:`RejectionIndex` holds what every note of a
PACS hides, and the functions below apply it to what a backend answered; the I/O (which KO
series, when to read them again, the extra QIDO a decision needs) is
:mod:`~ncpeh_dicomweb.backends.rejections`' job.

Decisions:

* A note hides the instances its evidence (Current Requested Procedure Evidence Sequence) names,
  in every study the evidence names (``read_kos`` reads the note's own study; the others are
  read the same way), and itself. A content item naming an instance absent from the evidence
  hides nothing (as ``read_kos``: the evidence says where the instance is).
* Series and study rows: a row is dropped when none of its instances is left, its counts
  (NumberOfSeriesRelatedInstances, NumberOfStudyRelatedInstances / Series) and
  ModalitiesInStudy are those of what is left; both need the instances the PACS holds under the
  row (a :data:`Listing`), asked only for rows the index touches.
* Paging: a page the filter may shorten is asked for wider (:func:`widen`): from offset 0 up to
  ``offset + limit + droppable`` rows, then cut (:func:`cut`) — exact, as the PACS's order is
  stable. Past :data:`MAX_WIDE` rows the PACS's own offset is kept and only the limit widened:
  a page then starts at most ``droppable`` visible rows early (a client paging on sees some rows
  twice, never misses one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any, Final

from ..dicomweb.attributes import Level
from ..dicomweb.query import MatchKind, QidoQuery
from ..dicomweb.uids import is_valid_uid
from ..fhir.kos import is_rejection_note, read_kos
from .base import DicomJson, Scope, Target

__all__ = [
    "EMPTY",
    "MAX_WIDE",
    "Hidden",
    "KoSeries",
    "Listed",
    "RejectionIndex",
    "adjust_series_row",
    "adjust_study_row",
    "cut",
    "documents_of",
    "drop_hidden",
    "ko_series_rows",
    "listed",
    "note_hides",
    "retrieve_plan",
    "sop_of",
    "study_uids",
    "text_value",
    "widen",
    "without_hidden_uids",
]

STUDY_UID: Final = "0020000D"
SERIES_UID: Final = "0020000E"
SOP_UID: Final = "00080018"
MODALITY: Final = "00080060"
MODALITIES_IN_STUDY: Final = "00080061"
STUDY_SERIES: Final = "00201206"  # NumberOfStudyRelatedSeries
STUDY_INSTANCES: Final = "00201208"  # NumberOfStudyRelatedInstances
SERIES_INSTANCES: Final = "00201209"  # NumberOfSeriesRelatedInstances
_EVIDENCE: Final = "0040A375"  # Current Requested Procedure Evidence Sequence
_SOP_PATH: Final = (0x00080018,)
_MODALITIES_PATH: Final = (0x00080061,)

#: Rows a widened page may ask the PACS for (from offset 0); beyond, paging is approximate.
MAX_WIDE: Final = 5000


@dataclass(frozen=True, slots=True)
class Hidden:
    """One instance never served: rejected by a note, or a note itself."""

    study: str
    series: str
    sop: str


@dataclass(frozen=True, slots=True)
class KoSeries:
    """One KO series of the PACS as last read: its NumberOfSeriesRelatedInstances then (None if
    the PACS gives none, or if the reading is to be checked next time) and, by SOP Instance UID
    of each of its documents, what the document hides (``()`` for any KOS but a note)."""

    study: str
    series: str
    count: int | None
    documents: Mapping[str, tuple[Hidden, ...]]

    @property
    def hidden(self) -> list[Hidden]:
        return [h for hides in self.documents.values() for h in hides]


def documents_of(metadata: Iterable[DicomJson]) -> dict[str, tuple[Hidden, ...]]:
    """What each instance of a KO series' metadata hides, by its SOP Instance UID."""
    out: dict[str, tuple[Hidden, ...]] = {}
    for dataset in metadata:
        sop = _uid(dataset, SOP_UID) if isinstance(dataset, dict) else None
        if sop is not None:
            out[sop] = tuple(note_hides(dataset))
    return out


@dataclass(frozen=True, slots=True)
class Listed:
    """One instance the PACS holds, as an instance-level QIDO lists it."""

    series: str
    sop: str
    modality: str | None = None


# ---------------------------------------------------------------------- reading notes


def text_value(dataset: Any, tag: str) -> str | None:
    """The first value of a string attribute, stripped; None if absent or blank."""
    if not isinstance(dataset, dict):
        return None
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return None
    found = element.get("Value")
    if isinstance(found, list) and found and isinstance(found[0], str):
        return found[0].strip() or None
    return None


def _uid(dataset: Any, tag: str) -> str | None:
    value = text_value(dataset, tag)
    return value if value is not None and is_valid_uid(value) else None


def note_hides(metadata: DicomJson) -> list[Hidden]:
    """What one instance's metadata hides: nothing unless it is a rejection note; else the
    note itself and every instance its evidence names, in whichever study. Never raises."""
    if not is_rejection_note(metadata):
        return []
    study, series, sop = (_uid(metadata, t) for t in (STUDY_UID, SERIES_UID, SOP_UID))
    out: list[Hidden] = []
    if study is not None and series is not None and sop is not None:
        out.append(Hidden(study, series, sop))
    evidence = metadata.get(_EVIDENCE)
    items = evidence.get("Value") if isinstance(evidence, dict) else None
    studies = [u for i in items or [] if (u := _uid(i, STUDY_UID)) is not None]
    for uid in dict.fromkeys(studies):
        # read_kos reads the evidence of the note's own study: read each study named as such.
        as_if = {**metadata, STUDY_UID: {"vr": "UI", "Value": [uid]}}
        for selection in read_kos(as_if):
            out.extend(
                Hidden(uid, selection.series_uid, i.sop_instance_uid) for i in selection.instances
            )
    return out


# ---------------------------------------------------------------------- the index


class RejectionIndex:
    """Every instance a PACS's rejection notes hide (the notes included), by SOP Instance UID
    and by study and series. Immutable: a refresh builds a new one."""

    __slots__ = ("_by_sop", "_by_study", "_series", "generation")

    def __init__(self, hidden: Iterable[Hidden] = (), generation: int = 0) -> None:
        by_sop: dict[str, Hidden] = {}
        by_study: dict[str, dict[str, set[str]]] = {}
        for item in hidden:
            if item.sop in by_sop:
                continue
            by_sop[item.sop] = item
            by_study.setdefault(item.study, {}).setdefault(item.series, set()).add(item.sop)
        self._by_sop = by_sop
        self._by_study = by_study
        self._series = sum(len(found) for found in by_study.values())
        self.generation = generation

    def __len__(self) -> int:
        return len(self._by_sop)

    @property
    def empty(self) -> bool:
        return not self._by_sop

    def same_as(self, other: RejectionIndex) -> bool:
        return self._by_sop.keys() == other._by_sop.keys()

    def hides(self, sop: object) -> bool:
        return isinstance(sop, str) and sop in self._by_sop

    def touches(self, study: str, series: str | None = None) -> bool:
        """Whether anything of the study (of that series of it) is hidden."""
        found = self._by_study.get(study)
        if found is None:
            return False
        return series is None or series in found

    def touches_target(self, target: Target) -> bool:
        if target.instance is not None:
            return self.hides(target.instance)
        return self.touches(target.study, target.series)

    def study_of_series(self, series: str) -> str | None:
        return next((s for s, found in self._by_study.items() if series in found), None)

    def droppable(self, level: Level, scope: Scope, studies: Sequence[str] | None = None) -> int:
        """At most how many rows of a ``level`` search under ``scope`` the filter may drop
        (``studies``: the StudyInstanceUID values the query matches, None for any)."""
        if scope.study is not None:
            studies = [scope.study]
        if studies is None:  # any study: the totals, without a walk through the index
            return {Level.STUDY: len(self._by_study), Level.SERIES: self._series}.get(
                level, len(self._by_sop)
            )
        picked = (
            [self._by_study[s] for s in studies if s in self._by_study]
            if studies is not None
            else list(self._by_study.values())
        )
        if level is Level.STUDY:
            return len(picked)
        if scope.series is not None:
            picked = [
                {scope.series: found[scope.series]} for found in picked if scope.series in found
            ]
        if level is Level.SERIES:
            return sum(len(found) for found in picked)
        return sum(len(sops) for found in picked for sops in found.values())


EMPTY: Final = RejectionIndex()


# ---------------------------------------------------------------------- QIDO answers


def sop_of(dataset: DicomJson) -> str | None:
    return text_value(dataset, SOP_UID)


def drop_hidden(datasets: Iterable[DicomJson], index: RejectionIndex) -> list[DicomJson]:
    """Instance datasets (QIDO rows, metadata) without the hidden ones."""
    return [d for d in datasets if not index.hides(sop_of(d))]


def without_hidden_uids(query: QidoQuery, index: RejectionIndex) -> QidoQuery | None:
    """``query`` with hidden SOP Instance UIDs taken out of a SOPInstanceUID key (at any level:
    a study is not found through a rejected instance's UID); None when none is left, so that
    nothing can match."""
    key = next((k for k in query.keys if k.path == _SOP_PATH), None)
    if key is None or key.kind not in (MatchKind.SINGLE, MatchKind.UID_LIST):
        return query
    uids = key.value.split("\\")
    kept = [u for u in uids if not index.hides(u)]
    if len(kept) == len(uids):
        return query
    if not kept:
        return None
    kind = MatchKind.UID_LIST if len(kept) > 1 else MatchKind.SINGLE
    new = replace(key, kind=kind, value="\\".join(kept))
    return replace(query, keys=tuple(new if k is key else k for k in query.keys))


def study_uids(query: QidoQuery) -> list[str] | None:
    """The StudyInstanceUID values ``query`` is limited to, None if any study may match."""
    key = next((k for k in query.keys if k.path == (0x0020000D,)), None)
    if key is None or key.kind not in (MatchKind.SINGLE, MatchKind.UID_LIST):
        return None
    return key.value.split("\\")


def widen(query: QidoQuery, droppable: int) -> QidoQuery:
    """The query to ask the PACS so that, once up to ``droppable`` rows are dropped,
    :func:`cut` still has the page asked for (see the module docstring)."""
    if query.limit is None:
        return replace(query, offset=0)
    if query.limit == 0:
        return query
    wide = query.offset + query.limit + droppable
    if wide <= MAX_WIDE:
        return replace(query, offset=0, limit=wide)
    return replace(query, limit=query.limit + droppable)


def cut(rows: list[DicomJson], asked: QidoQuery, sent: QidoQuery) -> list[DicomJson]:
    """The page ``asked`` for, out of the filtered answer to ``sent`` (:func:`widen`)."""
    start = asked.offset - sent.offset
    end = None if asked.limit is None else start + asked.limit
    return rows[start:end]


def listed(datasets: Iterable[DicomJson], series: str | None = None) -> list[Listed]:
    """The instances of an instance-level QIDO answer, in its order (``series``: the scope's,
    for answers that leave it out)."""
    out = []
    for dataset in datasets:
        sop = sop_of(dataset)
        where = text_value(dataset, SERIES_UID) or series
        if sop is not None and where is not None:
            out.append(Listed(where, sop, text_value(dataset, MODALITY)))
    return out


def _counted(original: Any, count: int) -> Any:
    """``count`` in the form the PACS wrote the original value (IS: number or string)."""
    return str(count) if isinstance(original, str) else count


def _set_count(row: DicomJson, tag: str, count: int) -> None:
    element = row.get(tag)
    if isinstance(element, dict) and isinstance(element.get("Value"), list) and element["Value"]:
        row[tag] = {**element, "Value": [_counted(element["Value"][0], count)]}


def adjust_series_row(
    row: DicomJson, study: str, listing: Sequence[Listed], index: RejectionIndex
) -> DicomJson | None:
    """A series row once its hidden instances are gone: None if nothing is left, else its
    NumberOfSeriesRelatedInstances (when present) counting what is left. ``listing``: the
    instances the PACS holds in the row's study (or series)."""
    series = text_value(row, SERIES_UID)
    if series is None or not index.touches(study, series):
        return row
    left = sum(1 for i in listing if i.series == series and not index.hides(i.sop))
    if left == 0:
        return None
    out = dict(row)
    _set_count(out, SERIES_INSTANCES, left)
    return out


def adjust_study_row(
    row: DicomJson, listing: Sequence[Listed], index: RejectionIndex, query: QidoQuery
) -> DicomJson | None:
    """A study row once its hidden instances are gone: None if nothing is left (or if what is
    left no longer matches the query's ModalitiesInStudy), else its counts and
    ModalitiesInStudy (each when present) those of what is left."""
    study = text_value(row, STUDY_UID)
    if study is None or not index.touches(study):
        return row
    left = [i for i in listing if not index.hides(i.sop)]
    if not left:
        return None
    out = dict(row)
    _set_count(out, STUDY_INSTANCES, len(left))
    series = dict.fromkeys(i.series for i in left)
    _set_count(out, STUDY_SERIES, len(series))
    modalities = _modalities(listing, left)
    if modalities is not None:
        element = out.get(MODALITIES_IN_STUDY)
        if isinstance(element, dict) and isinstance(element.get("Value"), list):
            kept = [m for m in element["Value"] if m in modalities]
            out[MODALITIES_IN_STUDY] = {**element, "Value": kept or sorted(modalities)}
        key = next((k for k in query.keys if k.path == _MODALITIES_PATH), None)
        if key is not None and key.kind is not MatchKind.UNIVERSAL:
            wanted = key.value.split("\\")
            if not any(fnmatchcase(m, w) for m in modalities for w in wanted):
                return None
    return out


def _modalities(listing: Sequence[Listed], left: Sequence[Listed]) -> set[str] | None:
    """The modalities of the series left, None if the listing does not tell every series'."""
    by_series: dict[str, str | None] = {}
    for item in listing:
        if by_series.get(item.series) is None:
            by_series[item.series] = item.modality
    wanted = {by_series.get(i.series) for i in left}
    if None in wanted:
        return None
    return {m for m in wanted if m is not None}


def retrieve_plan(target: Target, listing: Sequence[Listed], index: RejectionIndex) -> list[Target]:
    """What to retrieve for a study or series ``target`` the index touches, in the PACS's order
    (series by first appearance in ``listing``): a series nothing of which is hidden as one
    series retrieve, each instance left of any other series on its own. ``[]``: nothing left."""
    order: dict[str, list[str]] = {}
    for item in listing:
        if target.series is not None and item.series != target.series:
            continue
        kept = order.setdefault(item.series, [])
        if not index.hides(item.sop):
            kept.append(item.sop)
    plan: list[Target] = []
    for series, sops in order.items():
        if not sops:
            continue
        if index.touches(target.study, series):
            plan.extend(Target(target.study, series, sop) for sop in sops)
        else:
            plan.append(Target(target.study, series))
    return plan


def ko_series_rows(datasets: Iterable[DicomJson]) -> list[tuple[str, str, int | None]]:
    """(study, series, NumberOfSeriesRelatedInstances or None) of a series-level QIDO answer."""
    out = []
    for dataset in datasets:
        study, series = _uid(dataset, STUDY_UID), _uid(dataset, SERIES_UID)
        if study is None or series is None:
            continue
        out.append((study, series, _count(dataset, SERIES_INSTANCES)))
    return out


def _count(dataset: Mapping[str, Any], tag: str) -> int | None:
    element = dataset.get(tag)
    found = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(found, list) or not found:
        return None
    value = found[0]
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
