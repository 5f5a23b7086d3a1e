"""The state store in one SQLite file (standard library): the zero-set-up default.

WAL journal, every change in one transaction, so a crash (even SIGKILL) leaves each change
whole or absent; ``synchronous=NORMAL``: a power cut may lose the last changes, never half of
one. Calls run in a worker thread (``asyncio.to_thread``) on one connection, serialised by a
lock; other processes may share the file (a busy wait of 10 s, then 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from . import _rows
from .base import SelectionExists, StoredInstance, StoredSelection, StoreOpenError
from .migrations import SCHEMA_VERSION_TABLE, latest_version, pending

__all__ = ["SqliteStore"]

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 10_000


class SqliteStore:
    """:class:`~ncpeh_dicomweb.state.base.Store` on SQLite; open with :meth:`open`."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        """Open (create) the file at ``path`` and bring its schema up to date."""
        return await asyncio.to_thread(cls._open, path)

    @classmethod
    def _open(cls, path: str) -> SqliteStore:
        try:
            if path != ":memory:" and not path.startswith("file:"):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1e3
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreOpenError(f"cannot open the SQLite state file {path}: {exc}") from exc
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            _migrate(connection)
        except (sqlite3.Error, StoreOpenError) as exc:
            connection.close()
            if isinstance(exc, StoreOpenError):
                raise
            raise StoreOpenError(f"cannot open the SQLite state file {path}: {exc}") from exc
        return cls(connection)

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._locked, call, *args)

    def _locked(self, call: Callable[..., T], *args: Any) -> T:
        with self._lock:
            try:
                return call(*args)
            except sqlite3.OperationalError as exc:
                # Locked past the busy timeout, disk full, I/O error: the store, not a bug.
                _rows.log.warning("state store (SQLite): %s", exc)
                raise _rows.unavailable() from exc
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                    raise
                _rows.log.error("state store (SQLite): %s", exc)  # a damaged file
                raise _rows.unavailable() from exc

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        connection = self._connection
        with _transaction(connection, begin):
            yield connection

    # ------------------------------------------------------------------ served ids

    async def remember(self, site: str, kind: str, pairs: Iterable[tuple[str, str]]) -> None:
        rows = _rows.first_pairs(pairs)
        if rows:
            await self._run(self._remember, site, kind, rows, time.time())

    def _remember(self, site: str, kind: str, rows: list[tuple[str, str]], now: float) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO served (site, kind, resource_id, key, first_served)"
                " VALUES (?, ?, ?, ?, ?)",
                [(site, kind, rid, key, now) for rid, key in rows],
            )

    async def recall(self, site: str, kind: str, resource_id: str) -> str | None:
        return await self._run(self._recall, site, kind, resource_id)

    def _recall(self, site: str, kind: str, resource_id: str) -> str | None:
        row = self._connection.execute(
            "SELECT key FROM served WHERE site = ? AND kind = ? AND resource_id = ?",
            (site, kind, resource_id),
        ).fetchone()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ selections

    async def add_selection(self, selection: StoredSelection) -> None:
        row = (
            selection.site,
            selection.resource_id,
            selection.study_uid,
            selection.series_uid,
            selection.patient_id,
            len(selection.instances),
            _rows.dump_resource(selection.resource),
            selection.created,
            selection.deleted,
        )
        instances = [
            (
                selection.site,
                selection.resource_id,
                position,
                i.sop_instance_uid,
                i.sop_class_uid,
                _rows.encode_frames(i.frames),
            )
            for position, i in enumerate(selection.instances)
        ]
        await self._run(self._add_selection, row, instances)

    def _add_selection(self, row: tuple[Any, ...], instances: list[tuple[Any, ...]]) -> None:
        with self._transaction() as db:
            added = db.execute(
                "INSERT OR IGNORE INTO selection (site, resource_id, study_uid, series_uid,"
                " patient_id, instance_count, resource, created, deleted)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            ).rowcount
            if added != 1:
                raise SelectionExists(f"selection {row[1]!r} exists on site {row[0]!r}")
            db.executemany(
                "INSERT INTO selection_instance (site, resource_id, position, sop_instance_uid,"
                " sop_class_uid, frames) VALUES (?, ?, ?, ?, ?, ?)",
                instances,
            )

    async def selection(self, site: str, resource_id: str) -> StoredSelection | None:
        return await self._run(self._selection, site, resource_id)

    def _selection(self, site: str, resource_id: str) -> StoredSelection | None:
        with self._transaction("BEGIN") as db:  # one snapshot for both reads
            row = db.execute(
                f"SELECT {_rows.SELECTION_COLUMNS} FROM selection"
                " WHERE site = ? AND resource_id = ?",
                (site, resource_id),
            ).fetchone()
            if row is None:
                return None
            instances = self._instances(db, site, [resource_id])
        return _rows.selection(site, row, instances.get(resource_id, []))

    async def delete_selection(self, site: str, resource_id: str, when: float) -> bool:
        return await self._run(self._delete_selection, site, resource_id, when)

    def _delete_selection(self, site: str, resource_id: str, when: float) -> bool:
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE selection SET deleted = ?"
                " WHERE site = ? AND resource_id = ? AND deleted IS NULL",
                (when, site, resource_id),
            ).rowcount
        return changed == 1

    async def find_selections(
        self,
        site: str,
        *,
        study_uids: Collection[str] | None = None,
        patient_ids: Collection[str] | None = None,
        limit: int = 1000,
    ) -> list[StoredSelection]:
        if limit <= 0 or (study_uids is not None and not study_uids):
            return []
        if patient_ids is not None and not patient_ids:
            return []
        where = "site = ? AND deleted IS NULL"
        params: list[Any] = [site]
        for column, values in (("study_uid", study_uids), ("patient_id", patient_ids)):
            if values is not None:
                where += f" AND {column} IN (SELECT value FROM json_each(?))"
                params.append(orjson.dumps(sorted(set(values))).decode())
        sql = (
            f"SELECT {_rows.SELECTION_COLUMNS} FROM selection WHERE {where}"
            " ORDER BY created, resource_id LIMIT ?"
        )
        return await self._run(self._find, site, sql, (*params, limit))

    def _find(self, site: str, sql: str, params: tuple[Any, ...]) -> list[StoredSelection]:
        with self._transaction("BEGIN") as db:
            rows = db.execute(sql, params).fetchall()
            instances = self._instances(db, site, [r[0] for r in rows])
        return [_rows.selection(site, r, instances.get(r[0], [])) for r in rows]

    @staticmethod
    def _instances(
        db: sqlite3.Connection, site: str, resource_ids: list[str]
    ) -> dict[str, list[StoredInstance]]:
        out: dict[str, list[StoredInstance]] = {}
        if not resource_ids:
            return out
        cursor = db.execute(
            "SELECT resource_id, sop_instance_uid, sop_class_uid, frames FROM selection_instance"
            " WHERE site = ? AND resource_id IN (SELECT value FROM json_each(?))"
            " ORDER BY resource_id, position",
            (site, orjson.dumps(resource_ids).decode()),
        )
        for rid, sop, sop_class, frames in cursor:
            out.setdefault(rid, []).append(
                StoredInstance(sop, sop_class, _rows.decode_frames(frames))
            )
        return out

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._connection.close()


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection, begin: str) -> Iterator[None]:
    connection.execute(begin)
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _migrate(connection: sqlite3.Connection) -> None:
    """Apply each pending migration in its own transaction (BEGIN IMMEDIATE: one process at a
    time), re-reading the version inside it."""
    while True:
        with _transaction(connection, "BEGIN IMMEDIATE"):
            connection.execute(SCHEMA_VERSION_TABLE["sqlite"])
            (current,) = connection.execute(
                "SELECT coalesce(max(version), 0) FROM schema_version"
            ).fetchone()
            if current > latest_version():
                raise StoreOpenError(
                    f"the state schema is at version {current}, newer than this gateway's "
                    f"{latest_version()}: upgrade the gateway"
                )
            todo = pending(current)
            if not todo:
                return
            migration = todo[0]
            for statement in migration.sqlite:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_version (version, description, applied) VALUES (?, ?, ?)",
                (migration.version, migration.description, time.time()),
            )
