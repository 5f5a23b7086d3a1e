"""State the gateway keeps beyond a request: FHIR ids served (a study served once and gone from
the PACS is ``410 Gone``, FHIR http.html#read) and the ImagingSelections clients created.

Two stores behind one interface (:class:`Store`): SQLite, one file and no set-up (the default),
and PostgreSQL (``[state] database_url``) for replicas sharing one state. Both migrate their
schema themselves when opened (:mod:`.migrations`).
"""

from __future__ import annotations

from .base import (
    SelectionExists,
    Store,
    StoredInstance,
    StoredSelection,
    StoreOpenError,
)

__all__ = [
    "SelectionExists",
    "Store",
    "StoreOpenError",
    "StoredInstance",
    "StoredSelection",
    "open_store",
]


async def open_store(sqlite_path: str, database_url: str | None) -> Store:
    """The PostgreSQL store at ``database_url`` if given, else the SQLite file at
    ``sqlite_path``; raises :class:`StoreOpenError` (one line, no password) if it cannot."""
    if database_url:
        from .postgres import PostgresStore  # asyncpg only when PostgreSQL is used

        return await PostgresStore.open(database_url)
    from .sqlite import SqliteStore

    return await SqliteStore.open(sqlite_path)
