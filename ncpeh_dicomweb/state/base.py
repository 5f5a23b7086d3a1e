"""What the gateway's state store keeps, and the interface both stores (SQLite, PostgreSQL)
implement: ids of FHIR resources served (a vanished one is ``410 Gone``) and the
ImagingSelections clients created."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "SelectionExists",
    "Store",
    "StoreOpenError",
    "StoredInstance",
    "StoredSelection",
]


class SelectionExists(Exception):
    """:meth:`Store.add_selection` of a (site, resource id) the store already holds."""


class StoreOpenError(Exception):
    """The store could not be opened (database unreachable, file not writable, schema newer
    than this gateway knows); the message says why in one line, without a password."""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str | None
    frames: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredSelection:
    site: str
    resource_id: str
    study_uid: str
    series_uid: str
    patient_id: str  # FHIR Patient id of the study's patient
    instances: tuple[StoredInstance, ...]  # in the client's order
    resource: dict[str, Any]  # the R5 ImagingSelection JSON as created (orjson-serialisable)
    created: float  # epoch seconds
    deleted: float | None = None


class Store(Protocol):
    """The gateway's state. Every method may raise :class:`~ncpeh_dicomweb.errors.BackendBusy`
    (503, ``Retry-After``, "the gateway's state store is unavailable") when the database fails
    or cannot be reached."""

    async def remember(self, site: str, kind: str, pairs: Iterable[tuple[str, str]]) -> None:
        """Record ``(resource id, key)`` pairs of resources of type ``kind`` (``"ImagingStudy"``,
        ``"ImagingSelection"``) served on ``site``; the first write of an id wins."""
        ...

    async def recall(self, site: str, kind: str, resource_id: str) -> str | None:
        """The key remembered for ``resource_id``, or None."""
        ...

    async def add_selection(self, selection: StoredSelection) -> None:
        """Store a selection and its instances in one transaction (all or nothing); raise
        :class:`SelectionExists` if (site, resource id) is taken."""
        ...

    async def selection(self, site: str, resource_id: str) -> StoredSelection | None:
        """A selection by id, deleted ones too (``deleted`` set), or None."""
        ...

    async def delete_selection(self, site: str, resource_id: str, when: float) -> bool:
        """Mark a selection deleted at ``when``; False if unknown or already deleted."""
        ...

    async def find_selections(
        self,
        site: str,
        *,
        study_uids: Collection[str] | None = None,
        patient_ids: Collection[str] | None = None,
        limit: int = 1000,
    ) -> list[StoredSelection]:
        """Selections not deleted, oldest first (then by id), at most ``limit``; ``None``: no
        filter on that; an empty collection matches nothing; both given: both must match."""
        ...

    async def close(self) -> None: ...
