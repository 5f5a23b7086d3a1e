"""The state store's schema, as an ordered list of versions (pure data, no I/O).

Each :class:`Migration` holds the SQL statements that bring the schema from the version before
it to its own, for each dialect. A store applies, at open, every migration newer than the
highest version in its ``schema_version`` table, each in one transaction together with the row
recording it: a crash leaves the schema at one version or the next, never between. On
PostgreSQL each such transaction first takes :data:`PG_LOCK_KEY` with ``pg_advisory_xact_lock``
and re-reads the version, so replicas opening one database at once migrate it once.

Version 1 is the table of the SQLite store before versioning (``CREATE ... IF NOT EXISTS``: a
file of that time is at version 1 as it is); version 2 moves its rows to the kind-generic
``served`` table. Never edit a released migration: add the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MIGRATIONS",
    "PG_LOCK_KEY",
    "SCHEMA_VERSION_TABLE",
    "Dialect",
    "Migration",
    "latest_version",
    "pending",
]

Dialect = Literal["sqlite", "postgres"]

# pg_advisory_xact_lock key of schema migrations (a bigint; "ncpehdw" in ASCII).
PG_LOCK_KEY = 0x6E_63_70_65_68_64_77


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: Dialect) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


SCHEMA_VERSION_TABLE: dict[Dialect, str] = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied REAL NOT NULL)"
    ),
    "postgres": (
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version integer PRIMARY KEY, description text NOT NULL,"
        " applied double precision NOT NULL)"
    ),
}

_SELECTION = (
    "CREATE TABLE selection ("
    " site TEXT NOT NULL, resource_id TEXT NOT NULL,"
    " study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, patient_id TEXT NOT NULL,"
    " instance_count INTEGER NOT NULL, resource {json} NOT NULL,"
    " created {real} NOT NULL, deleted {real},"
    " PRIMARY KEY (site, resource_id))"
)
_SELECTION_INSTANCE = (
    "CREATE TABLE selection_instance ("
    " site TEXT NOT NULL, resource_id TEXT NOT NULL, position INTEGER NOT NULL,"
    " sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT, frames {frames},"
    " PRIMARY KEY (site, resource_id, position),"
    " FOREIGN KEY (site, resource_id) REFERENCES selection (site, resource_id)"
    " ON DELETE CASCADE)"
)
_SELECTION_INDEXES = (
    "CREATE INDEX selection_by_created ON selection (site, created)",
    "CREATE INDEX selection_by_study ON selection (site, study_uid, created)",
    "CREATE INDEX selection_by_patient ON selection (site, patient_id, created)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "served_study: FHIR ImagingStudy ids served (the unversioned SQLite store's table)",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS served_study ("
            " site TEXT NOT NULL, resource_id TEXT NOT NULL, study_uid TEXT NOT NULL,"
            " first_served REAL NOT NULL, PRIMARY KEY (site, resource_id))",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS served_study ("
            " site text NOT NULL, resource_id text NOT NULL, study_uid text NOT NULL,"
            " first_served double precision NOT NULL, PRIMARY KEY (site, resource_id))",
        ),
    ),
    Migration(
        2,
        "served: ids served of any resource kind, with their key; replaces served_study",
        sqlite=(
            "CREATE TABLE served ("
            " site TEXT NOT NULL, kind TEXT NOT NULL, resource_id TEXT NOT NULL,"
            " key TEXT NOT NULL, first_served REAL NOT NULL,"
            " PRIMARY KEY (site, kind, resource_id))",
            "INSERT INTO served (site, kind, resource_id, key, first_served)"
            " SELECT site, 'ImagingStudy', resource_id, study_uid, first_served FROM served_study",
            "DROP TABLE served_study",
        ),
        postgres=(
            "CREATE TABLE served ("
            " site text NOT NULL, kind text NOT NULL, resource_id text NOT NULL,"
            " key text NOT NULL, first_served double precision NOT NULL,"
            " PRIMARY KEY (site, kind, resource_id))",
            "INSERT INTO served (site, kind, resource_id, key, first_served)"
            " SELECT site, 'ImagingStudy', resource_id, study_uid, first_served FROM served_study",
            "DROP TABLE served_study",
        ),
    ),
    Migration(
        3,
        "selection, selection_instance: ImagingSelections created by clients",
        sqlite=(
            _SELECTION.format(json="TEXT", real="REAL"),
            # frames: the frame numbers, comma-separated ("" for none)
            _SELECTION_INSTANCE.format(frames="TEXT NOT NULL DEFAULT ''"),
            *_SELECTION_INDEXES,
        ),
        postgres=(
            _SELECTION.format(json="jsonb", real="double precision"),
            _SELECTION_INSTANCE.format(frames="integer[] NOT NULL DEFAULT '{}'"),
            *_SELECTION_INDEXES,
        ),
    ),
)


def latest_version() -> int:
    return MIGRATIONS[-1].version


def pending(current: int) -> tuple[Migration, ...]:
    """The migrations a schema at version ``current`` still needs, in order."""
    return tuple(m for m in MIGRATIONS if m.version > current)


def _check() -> None:
    versions = [m.version for m in MIGRATIONS]
    if versions != list(range(1, len(MIGRATIONS) + 1)):
        raise AssertionError(f"migration versions must be 1, 2, 3...: {versions}")


_check()
