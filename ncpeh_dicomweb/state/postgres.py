"""The state store in PostgreSQL (asyncpg), for several gateway replicas sharing one state.

A small pool (1 to 10 connections, 5 s to connect, 10 s per command). Every change runs in one
transaction; reads of a selection and its instances share one snapshot (REPEATABLE READ). A
database error that is the database's state (connection lost, server shutting down, timeout,
serialisation failure, too many connections) becomes :class:`~ncpeh_dicomweb.errors.
BackendBusy` (503, Retry-After); other errors are bugs and propagate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Iterable
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from . import _rows
from .base import SelectionExists, StoredInstance, StoredSelection, StoreOpenError
from .migrations import PG_LOCK_KEY, SCHEMA_VERSION_TABLE, latest_version, pending

__all__ = ["PostgresStore", "redact_url"]

POOL_MIN = 1
POOL_MAX = 10
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
# SQLSTATE classes that describe the database's condition, not our SQL: connection exception,
# invalid transaction state (e.g. read-only after a fail-over), transaction rollback
# (serialisation, deadlock), insufficient resources, object not in prerequisite state (lock not
# available), operator intervention (shutdown), system error, internal error.
_TRANSIENT_CLASSES = frozenset({"08", "25", "40", "53", "55", "57", "58", "XX"})


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured database_url"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def _unavailable(exc: BaseException) -> bool:
    # InternalClientError: e.g. a connection the server terminated while idle in the pool.
    if isinstance(
        exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
    ):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in _TRANSIENT_CLASSES
    return False


class PostgresStore:
    """:class:`~ncpeh_dicomweb.state.base.Store` on PostgreSQL; open with :meth:`open`."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        """Connect, and bring the schema up to date (once, whatever the replicas opening it)."""
        where = redact_url(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=POOL_MIN,
                max_size=POOL_MAX,
                command_timeout=COMMAND_TIMEOUT,
                timeout=CONNECT_TIMEOUT,
                max_inactive_connection_lifetime=300.0,
            )
        except Exception as exc:
            raise StoreOpenError(f"cannot connect to the database {where}: {_reason(exc)}") from exc
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT) as connection:
                await _migrate(connection)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, StoreOpenError) or not isinstance(exc, Exception):
                raise
            raise StoreOpenError(f"cannot migrate the database {where}: {_reason(exc)}") from exc
        return cls(pool)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        try:
            async with self._pool.acquire(timeout=COMMAND_TIMEOUT) as connection:
                yield connection
        except Exception as exc:
            if isinstance(exc, SelectionExists) or not _unavailable(exc):
                raise
            _rows.log.warning("state store (PostgreSQL): %s", _reason(exc))
            raise _rows.unavailable() from exc

    # ------------------------------------------------------------------ served ids

    async def remember(self, site: str, kind: str, pairs: Iterable[tuple[str, str]]) -> None:
        rows = _rows.first_pairs(pairs)
        if not rows:
            return
        async with self._connection() as db:
            await db.execute(
                "INSERT INTO served (site, kind, resource_id, key, first_served)"
                " SELECT $1, $2, r.id, r.key, $5 FROM unnest($3::text[], $4::text[]) AS r(id, key)"
                " ON CONFLICT DO NOTHING",
                site,
                kind,
                [rid for rid, _ in rows],
                [key for _, key in rows],
                time.time(),
            )

    async def recall(self, site: str, kind: str, resource_id: str) -> str | None:
        async with self._connection() as db:
            key = await db.fetchval(
                "SELECT key FROM served WHERE site = $1 AND kind = $2 AND resource_id = $3",
                site,
                kind,
                resource_id,
            )
        return None if key is None else str(key)

    # ------------------------------------------------------------------ selections

    async def add_selection(self, selection: StoredSelection) -> None:
        site, rid = selection.site, selection.resource_id
        records = [
            (site, rid, position, i.sop_instance_uid, i.sop_class_uid, list(i.frames))
            for position, i in enumerate(selection.instances)
        ]
        async with self._connection() as db, db.transaction():
            status = await db.execute(
                "INSERT INTO selection (site, resource_id, study_uid, series_uid, patient_id,"
                " instance_count, resource, created, deleted)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (site, resource_id) DO NOTHING",
                site,
                rid,
                selection.study_uid,
                selection.series_uid,
                selection.patient_id,
                len(records),
                _rows.dump_resource(selection.resource),
                selection.created,
                selection.deleted,
            )
            if status != "INSERT 0 1":
                raise SelectionExists(f"selection {rid!r} exists on site {site!r}")
            if records:
                await db.copy_records_to_table(
                    "selection_instance",
                    records=records,
                    columns=(
                        "site",
                        "resource_id",
                        "position",
                        "sop_instance_uid",
                        "sop_class_uid",
                        "frames",
                    ),
                )

    async def selection(self, site: str, resource_id: str) -> StoredSelection | None:
        async with (
            self._connection() as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await db.fetchrow(
                f"SELECT {_rows.SELECTION_COLUMNS} FROM selection"
                " WHERE site = $1 AND resource_id = $2",
                site,
                resource_id,
            )
            if row is None:
                return None
            instances = await _instances(db, site, [resource_id])
        return _rows.selection(site, tuple(row), instances.get(resource_id, []))

    async def delete_selection(self, site: str, resource_id: str, when: float) -> bool:
        async with self._connection() as db:
            status = await db.execute(
                "UPDATE selection SET deleted = $3"
                " WHERE site = $1 AND resource_id = $2 AND deleted IS NULL",
                site,
                resource_id,
                when,
            )
        return bool(status == "UPDATE 1")

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
        where = "site = $1 AND deleted IS NULL"
        params: list[Any] = [site]
        for column, values in (("study_uid", study_uids), ("patient_id", patient_ids)):
            if values is not None:
                params.append(sorted(set(values)))
                where += f" AND {column} = ANY(${len(params)}::text[])"
        params.append(limit)
        sql = (
            f"SELECT {_rows.SELECTION_COLUMNS} FROM selection WHERE {where}"
            f' ORDER BY created, resource_id COLLATE "C" LIMIT ${len(params)}'
        )
        async with (
            self._connection() as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await db.fetch(sql, *params)
            instances = await _instances(db, site, [r[0] for r in rows])
        return [_rows.selection(site, tuple(r), instances.get(r[0], [])) for r in rows]

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=COMMAND_TIMEOUT)
        except TimeoutError:
            self._pool.terminate()


async def _instances(
    db: Any, site: str, resource_ids: list[str]
) -> dict[str, list[StoredInstance]]:
    out: dict[str, list[StoredInstance]] = {}
    if not resource_ids:
        return out
    rows = await db.fetch(
        "SELECT resource_id, sop_instance_uid, sop_class_uid, frames FROM selection_instance"
        " WHERE site = $1 AND resource_id = ANY($2::text[]) ORDER BY resource_id, position",
        site,
        resource_ids,
    )
    for rid, sop, sop_class, frames in rows:
        out.setdefault(rid, []).append(StoredInstance(sop, sop_class, tuple(frames)))
    return out


async def _migrate(connection: Any) -> None:
    """Apply each pending migration in its own transaction, under the advisory lock, re-reading
    the version inside it: replicas opening the database at once migrate it once."""
    while True:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", PG_LOCK_KEY)
            await connection.execute(SCHEMA_VERSION_TABLE["postgres"])
            current = await connection.fetchval(
                "SELECT coalesce(max(version), 0) FROM schema_version"
            )
            if current > latest_version():
                raise StoreOpenError(
                    f"the state schema is at version {current}, newer than this gateway's "
                    f"{latest_version()}: upgrade the gateway"
                )
            todo = pending(current)
            if not todo:
                return
            migration = todo[0]
            for statement in migration.postgres:
                await connection.execute(statement)
            await connection.execute(
                "INSERT INTO schema_version (version, description, applied) VALUES ($1, $2, $3)",
                migration.version,
                migration.description,
                time.time(),
            )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
