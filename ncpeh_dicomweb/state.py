"""State the gateway keeps beyond a request: which FHIR resources it has served.

A study the gateway once answered and the PACS no longer has is ``410 Gone``, not ``404``
(FHIR http.html#read): that needs memory. SQLite (standard library) is the zero-set-up store:
one file, WAL journal, every change in a transaction, so a crash leaves each change whole or
absent. Calls run in a worker thread; one connection, serialised by a lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ServedStudies"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS served_study ("
    " site TEXT NOT NULL, resource_id TEXT NOT NULL, study_uid TEXT NOT NULL,"
    " first_served REAL NOT NULL, PRIMARY KEY (site, resource_id))"
)


class ServedStudies:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(_SCHEMA)

    async def remember(self, site: str, studies: Iterable[tuple[str, str]]) -> None:
        """Record ``(resource id, study UID)`` pairs served for ``site`` (kept once)."""
        rows = [(site, rid, uid, time.time()) for rid, uid in studies]
        if rows:
            await asyncio.to_thread(self._insert, rows)

    def _insert(self, rows: list[tuple[str, str, str, float]]) -> None:
        with self._lock:
            self._connection.execute("BEGIN")
            try:
                self._connection.executemany(
                    "INSERT OR IGNORE INTO served_study VALUES (?, ?, ?, ?)", rows
                )
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    async def served(self, site: str, resource_id: str) -> bool:
        return await asyncio.to_thread(self._served, site, resource_id)

    def _served(self, site: str, resource_id: str) -> bool:
        with self._lock:
            row = self._connection.execute(
                "SELECT 1 FROM served_study WHERE site = ? AND resource_id = ?",
                (site, resource_id),
            ).fetchone()
        return row is not None

    async def study_for(self, site: str, resource_id: str) -> str | None:
        """The Study Instance UID a served id named, or None."""
        return await asyncio.to_thread(self._study_for, site, resource_id)

    def _study_for(self, site: str, resource_id: str) -> str | None:
        with self._lock:
            row = self._connection.execute(
                "SELECT study_uid FROM served_study WHERE site = ? AND resource_id = ?",
                (site, resource_id),
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()
