"""Row ↔ value conversions both stores share."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson

from ..errors import BackendBusy
from .base import StoredInstance, StoredSelection

log = logging.getLogger("ncpeh_dicomweb.state")

UNAVAILABLE = "the gateway's state store is unavailable"


def unavailable(message: str = UNAVAILABLE) -> BackendBusy:
    """The error a request gets when the store fails: 503 with ``Retry-After`` (errors.py's
    503; the store, not the PACS, is named in the message)."""
    return BackendBusy(message, headers={"Retry-After": "5"})


def first_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(id, key)`` pairs with each id once (its first key), sorted by id: writers that take
    row locks in one order cannot deadlock each other."""
    seen: dict[str, str] = {}
    for resource_id, key in pairs:
        seen.setdefault(resource_id, key)
    return sorted(seen.items())


def dump_resource(resource: dict[str, Any]) -> str:
    return orjson.dumps(resource).decode()


def load_resource(text: str | bytes) -> dict[str, Any]:
    value = orjson.loads(text)
    if not isinstance(value, dict):
        raise unavailable("the gateway's state store holds a malformed selection")
    return value


def encode_frames(frames: tuple[int, ...]) -> str:
    return ",".join(str(int(f)) for f in frames)


def decode_frames(text: str) -> tuple[int, ...]:
    return tuple(int(f) for f in text.split(",")) if text else ()


def selection(
    site: str,
    row: tuple[Any, ...],
    instances: list[StoredInstance],
) -> StoredSelection:
    """A selection from its row ``(resource_id, study_uid, series_uid, patient_id,
    instance_count, resource, created, deleted)`` and its instance rows."""
    resource_id, study_uid, series_uid, patient_id, count, resource, created, deleted = row
    if count != len(instances):
        # Each selection is written in one transaction: this is damage, not a race.
        log.error(
            "state store: selection %s/%s has %d of its %d instances",
            site,
            resource_id,
            len(instances),
            count,
        )
        raise unavailable("the gateway's state store is inconsistent")
    return StoredSelection(
        site=site,
        resource_id=str(resource_id),
        study_uid=str(study_uid),
        series_uid=str(series_uid),
        patient_id=str(patient_id),
        instances=tuple(instances),
        resource=load_resource(resource),
        created=float(created),
        deleted=None if deleted is None else float(deleted),
    )


SELECTION_COLUMNS = (
    "resource_id, study_uid, series_uid, patient_id, instance_count, resource, created, deleted"
)
