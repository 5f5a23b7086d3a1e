"""Relational queries (PS3.4 C.4.1.3.2) for PACS that only search one level at a time.

A study search that names a series or instance key (``SeriesInstanceUID`` on ``/studies``, as
the NCPeH guide does) is answered in two steps: search the lower level with those keys, then
search the original level restricted to the parents found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import first_value
from ..dicomweb.query import MatchKey, MatchKind, QidoQuery
from .base import DicomJson

__all__ = ["MAX_PARENTS", "UID_TAG", "child_query", "lower_keys", "parent_uids", "restrict_to"]

MAX_PARENTS = 500  # past this many parents the answer is cut short with a Warning
BATCH = 100  # parent UIDs per upstream query: long URLs are refused (Orthanc: ~16 kB)

UID_TAG = {Level.STUDY: "0020000D", Level.SERIES: "0020000E", Level.INSTANCE: "00080018"}
_UID_PATH = {Level.STUDY: (0x0020000D,), Level.SERIES: (0x0020000E,), Level.INSTANCE: (0x00080018,)}


def lower_keys(query: QidoQuery) -> tuple[MatchKey, ...]:
    """The keys of ``query`` that belong to a level below the one searched and match something.

    A universal (empty) lower key constrains nothing and is ignored.
    """
    return tuple(
        k
        for k in query.keys
        if k.level is not None
        and k.level.depth > query.level.depth
        and k.kind is not MatchKind.UNIVERSAL
    )


def child_query(query: QidoQuery, lower: tuple[MatchKey, ...]) -> QidoQuery:
    """The search one level down that finds the children matching ``lower``."""
    level = max((k.level for k in lower if k.level is not None), key=lambda lv: lv.depth)
    return replace(
        query,
        level=level,
        keys=lower,
        includefields=(),
        include_all=False,
        fuzzymatching=False,
        limit=None,
        offset=0,
        warnings=(),
    )


def parent_uids(children: Iterable[DicomJson], level: Level, warnings: list[str]) -> list[str]:
    """Distinct UIDs at ``level`` of the children, in order, at most MAX_PARENTS."""
    tag = UID_TAG[level]
    parents = list(dict.fromkeys(str(u) for c in children if (u := first_value(c, tag))))
    if len(parents) > MAX_PARENTS:
        warnings.append(
            f"relational query matched more than {MAX_PARENTS} {level.value} entries; "
            "only the first are returned"
        )
        parents = parents[:MAX_PARENTS]
    return parents


def restrict_to(query: QidoQuery, lower: tuple[MatchKey, ...], uids: list[str]) -> list[QidoQuery]:
    """``query`` without its lower-level keys, limited to the given UIDs of its own level.

    One query per BATCH of UIDs; with several, paging (limit/offset) is left to the caller.
    An empty list means nothing can match (the UIDs asked for are not among the parents).
    """
    uid_path = _UID_PATH[query.level]
    existing = next((k for k in query.keys if k.path == uid_path), None)
    if existing is not None and existing.kind is not MatchKind.UNIVERSAL:
        allowed = set(existing.value.split("\\"))
        uids = [u for u in uids if u in allowed]
    keys = tuple(k for k in query.keys if k not in lower and k.path != uid_path)
    batches = [uids[i : i + BATCH] for i in range(0, len(uids), BATCH)]
    paged = len(batches) > 1
    return [
        replace(
            query,
            keys=(*keys, _uid_key(uid_path, batch)),
            limit=None if paged else query.limit,
            offset=0 if paged else query.offset,
        )
        for batch in batches
    ]


def _uid_key(path: tuple[int, ...], uids: list[str]) -> MatchKey:
    kind = MatchKind.UID_LIST if len(uids) > 1 else MatchKind.SINGLE
    return MatchKey(path=path, vr="UI", kind=kind, value="\\".join(uids))


def page(datasets: list[DicomJson], query: QidoQuery) -> list[DicomJson]:
    """``query``'s offset and limit applied in the gateway."""
    end = None if query.limit is None else query.offset + query.limit
    return datasets[query.offset : end]
