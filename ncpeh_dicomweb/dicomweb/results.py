"""QIDO-RS results shaped as PS3.18 10.6.3.3 asks, whatever the PACS sent (pure, no I/O).

- Attributes of a lower level than the one searched are not returned, even when asked for by
  ``includefield`` (10.6.3.3.1: "Series or Instance Level Attributes contained in includefield
  parameters shall not be returned"; 10.6.3.3.2 the same of Instance attributes).
- A search of all series, or all instances, carries the attributes of the study (and for
  instances, the series) above each match (10.6.3.3.2, 10.6.3.3.3): :func:`parents_needed`
  says which levels the PACS's answer lacks, :func:`with_parents` merges them in.
- Required (type R) return attributes are present, empty when the PACS has no value (PS3.4
  C.2.2.1: a required return key is returned, zero-length if unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

from .attributes import Level, level_of, vr_of
from .dicomjson import first_value

__all__ = [
    "REQUIRED",
    "UID_TAGS",
    "parent_levels",
    "parents_needed",
    "shaped",
    "with_parents",
]

DicomJson = dict[str, Any]

UID_TAGS: Final = {Level.STUDY: "0020000D", Level.SERIES: "0020000E", Level.INSTANCE: "00080018"}

# The type R attributes of PS3.18 Tables 10.6.3-3/-4/-5 (the U keys are the UIDs, always there;
# the C ones are returned when known).
REQUIRED: Final[Mapping[Level, tuple[str, ...]]] = {
    Level.STUDY: (
        "00080020",  # StudyDate
        "00080030",  # StudyTime
        "00080050",  # AccessionNumber
        "00080061",  # ModalitiesInStudy
        "00080090",  # ReferringPhysicianName
        "00100010",  # PatientName
        "00100020",  # PatientID
        "00100030",  # PatientBirthDate
        "00100040",  # PatientSex
        "00200010",  # StudyID
        "00201206",  # NumberOfStudyRelatedSeries
        "00201208",  # NumberOfStudyRelatedInstances
    ),
    Level.SERIES: (
        "00080060",  # Modality
        "00200011",  # SeriesNumber
        "00201209",  # NumberOfSeriesRelatedInstances
    ),
    Level.INSTANCE: (
        "00080016",  # SOPClassUID
        "00200013",  # InstanceNumber
    ),
}
# Counted by the PACS over the whole study or series: their absence in a child's answer is what
# shows its PACS did not add the parent's attributes.
_COMPUTED: Final = {
    Level.STUDY: ("00080061", "00201206", "00201208"),
    Level.SERIES: ("00201209",),
}
_NOT_INHERITED: Final = frozenset({"00081190", "00080056", "00080201"})  # the parent's own


def _tag(key: str) -> int | None:
    try:
        return int(key, 16)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _too_low(key: str, level: Level) -> bool:
    tag = _tag(key)
    if tag is None:
        return False
    found = level_of(tag)
    return found is not None and found.depth > level.depth


def _fits(dataset: DicomJson, level: Level) -> bool:
    """No attribute of ``dataset`` is of a level below ``level`` (keys seen once are kept per
    level, so that the common answer is checked by one set comparison)."""
    seen = _FITTING[level]
    if seen.issuperset(dataset):
        return True
    fits = True
    for key in dataset:
        if key in seen:
            continue
        if _too_low(key, level):
            fits = False
        elif len(seen) < _FITTING_MAX:  # the PACS's tags: few, but bounded all the same
            seen.add(key)
    return fits


_FITTING: Final[dict[Level, set[str]]] = {level: set() for level in Level}
_FITTING_MAX = 4096


@lru_cache(maxsize=64)
def _required_tags(level: Level, scoped: Level | None) -> tuple[str, ...]:
    """The attributes each result of a search must carry (its parents' first)."""
    return tuple(tag for lv in (*parent_levels(level, scoped), level) for tag in REQUIRED[lv])


@lru_cache(maxsize=64)
def _required(level: Level, scoped: Level | None) -> frozenset[str]:
    return frozenset(_required_tags(level, scoped))


@lru_cache(maxsize=16)  # 3 levels x 3 scopes; asked twice by every search
def parent_levels(level: Level, scoped: Level | None) -> tuple[Level, ...]:
    """The levels above ``level`` whose attributes each result carries (PS3.18 10.6.3.3.2-3):
    the study's for all series; the study's and series' for all instances; the series' for a
    study's instances. ``scoped`` is the level the search is under (``/studies/{s}/...``:
    STUDY, ``.../series/{se}/...``: SERIES), None at the root."""
    if scoped is None:
        return tuple(lv for lv in Level if lv.depth < level.depth)
    if level is Level.INSTANCE and scoped is Level.STUDY:
        return (Level.SERIES,)
    return ()


def parents_needed(
    datasets: Sequence[DicomJson], level: Level, scoped: Level | None
) -> list[Level]:
    """The levels of :func:`parent_levels` whose attributes the PACS's results lack."""
    return [
        parent
        for parent in parent_levels(level, scoped)
        if any(any(tag not in d for tag in _COMPUTED[parent]) for d in datasets)
    ]


def with_parents(
    datasets: Iterable[DicomJson], parent: Level, parents: Iterable[DicomJson]
) -> list[DicomJson]:
    """``datasets`` with the attributes of their ``parent``-level ancestor (found in
    ``parents`` by UID) added where they lack them; the parent's own Retrieve URL and the like
    are not copied."""
    uid_tag = UID_TAGS[parent]
    by_uid = {first_value(p, uid_tag): p for p in parents}
    out = []
    for dataset in datasets:
        found = by_uid.get(first_value(dataset, uid_tag))
        if found is not None:
            extra = {k: v for k, v in found.items() if k not in dataset and k not in _NOT_INHERITED}
            dataset = {**dataset, **extra}
        out.append(dataset)
    return out


def shaped(
    datasets: Iterable[DicomJson], level: Level, scoped: Level | None = None
) -> list[DicomJson]:
    """Each result without attributes of a lower level than ``level``, and with every required
    attribute of its level and of :func:`parent_levels` (empty if the PACS gave none); a
    result that had to change is put in tag order."""
    present = _required(level, scoped)
    out = []
    for dataset in datasets:
        if present <= dataset.keys() and _fits(dataset, level):
            out.append(dataset)  # the common case, as the PACS sent it: nothing to do
            continue
        kept = {k: v for k, v in dataset.items() if not _too_low(k, level)}
        for tag in _required_tags(level, scoped):
            if tag not in kept:
                vr = vr_of(int(tag, 16))
                kept[tag] = {"vr": vr or "UN"}
        out.append(dict(sorted(kept.items())))
    return out
