"""The state store (ncpeh_dicomweb.state) on SQLite and on a real PostgreSQL (tests/pg.py):
every Store behaviour on both, schema migrations, concurrent openers, errors as 503, and
selections written whole or not at all by a process killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ncpeh_dicomweb.errors import BackendBusy
from ncpeh_dicomweb.state import (
    SelectionExists,
    Store,
    StoredInstance,
    StoredSelection,
    StoreOpenError,
    open_store,
)
from ncpeh_dicomweb.state import postgres as pg_store
from ncpeh_dicomweb.state import sqlite as sqlite_store
from ncpeh_dicomweb.state.migrations import MIGRATIONS, latest_version
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CT = "1.2.840.10008.5.1.4.1.1.2"

# (sqlite path, database url) as open_store takes them
Target = tuple[str, str | None]


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite3"), None
    url: str = request.getfixturevalue("fresh_database_url")
    return str(tmp_path / "unused.sqlite3"), url


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Store]:
    opened = await open_store(*target)
    try:
        yield opened
    finally:
        await opened.close()


def _selection(
    rid: str,
    *,
    site: str = "main",
    study: str = "1.2.3",
    patient: str = "pat-1",
    created: float = 1_700_000_000.25,
    instances: tuple[StoredInstance, ...] | None = None,
) -> StoredSelection:
    if instances is None:
        instances = (
            StoredInstance("1.2.3.4.9", CT, (3, 1, 2)),
            StoredInstance("1.2.3.4.1", None),
            StoredInstance("1.2.3.4.5", CT, (1,)),
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingSelection",
        "id": rid,
        "status": "available",
        "subject": {"reference": f"Patient/{patient}"},
        "note": [{"text": "Müller^Jürgen, Łukasz 🩻"}],
        "instance": [{"uid": i.sop_instance_uid} for i in instances],
        "extension": [{"valueDecimal": 1.5, "valueInteger": 2**40, "valueBoolean": False}],
    }
    return StoredSelection(
        site=site,
        resource_id=rid,
        study_uid=study,
        series_uid=study + ".1",
        patient_id=patient,
        instances=instances,
        resource=resource,
        created=created,
    )


async def _versions(target: Target) -> list[int]:
    path, url = target
    if url is None:
        with sqlite3.connect(path) as db:
            return [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT version FROM schema_version ORDER BY 1")
    finally:
        await connection.close()
    return [r[0] for r in rows]


# ---------------------------------------------------------------- served ids


async def test_remember_and_recall_first_write_wins(store: Store) -> None:
    assert await store.recall("main", "ImagingStudy", "s1") is None
    await store.remember("main", "ImagingStudy", [("s1", "1.2.1"), ("s2", "1.2.2"), ("s1", "x")])
    await store.remember("main", "ImagingStudy", [("s2", "1.2.999"), ("s3", "1.2.3")])
    await store.remember("main", "ImagingStudy", [])
    await store.remember("main", "ImagingStudy", iter([("s4", "1.2.4")]))  # any iterable
    assert await store.recall("main", "ImagingStudy", "s1") == "1.2.1"
    assert await store.recall("main", "ImagingStudy", "s2") == "1.2.2"
    assert await store.recall("main", "ImagingStudy", "s3") == "1.2.3"
    assert await store.recall("main", "ImagingStudy", "s4") == "1.2.4"


async def test_kinds_and_sites_are_separate(store: Store) -> None:
    await store.remember("main", "ImagingStudy", [("id", "study")])
    await store.remember("main", "ImagingSelection", [("id", "selection")])
    await store.remember("other", "ImagingStudy", [("id", "elsewhere")])
    assert await store.recall("main", "ImagingStudy", "id") == "study"
    assert await store.recall("main", "ImagingSelection", "id") == "selection"
    assert await store.recall("other", "ImagingStudy", "id") == "elsewhere"
    assert await store.recall("other", "ImagingSelection", "id") is None


async def test_concurrent_remember_of_overlapping_ids(store: Store) -> None:
    pairs = [(f"r{i}", f"k{i}") for i in range(200)]
    await asyncio.gather(
        *(store.remember("main", "ImagingStudy", pairs[::step]) for step in (1, -1, 2, -3, 1))
    )
    for rid, key in pairs[::17]:
        assert await store.recall("main", "ImagingStudy", rid) == key


# ---------------------------------------------------------------- selections


async def test_selection_round_trip_keeps_instance_order(store: Store) -> None:
    added = _selection("sel-1")
    await store.add_selection(added)
    got = await store.selection("main", "sel-1")
    assert got == added
    assert got is not None and [i.sop_instance_uid for i in got.instances] == [
        "1.2.3.4.9",
        "1.2.3.4.1",
        "1.2.3.4.5",
    ]
    assert got.instances[0].frames == (3, 1, 2) and got.instances[1].sop_class_uid is None
    assert await store.selection("main", "nope") is None
    assert await store.selection("other", "sel-1") is None


async def test_selection_without_instances_and_with_many(store: Store) -> None:
    await store.add_selection(_selection("empty", instances=()))
    many = tuple(StoredInstance(f"1.9.{k}", CT, (k,) if k % 2 else ()) for k in range(2500, 0, -1))
    await store.add_selection(_selection("many", instances=many))
    empty = await store.selection("main", "empty")
    assert empty is not None and empty.instances == ()
    got = await store.selection("main", "many")
    assert got is not None and got.instances == many


async def test_duplicate_selection_is_refused_and_changes_nothing(store: Store) -> None:
    first = _selection("dup")
    await store.add_selection(first)
    second = _selection("dup", study="9.9", instances=(StoredInstance("9.9.9", CT),))
    with pytest.raises(SelectionExists):
        await store.add_selection(second)
    assert await store.selection("main", "dup") == first
    await store.add_selection(_selection("dup", site="other"))  # another site: its own ids
    assert len(await store.find_selections("main")) == 1


async def test_delete_selection(store: Store) -> None:
    await store.add_selection(_selection("a"))
    await store.add_selection(_selection("b", created=1_700_000_001.0))
    assert await store.delete_selection("main", "a", 1_700_000_100.5) is True
    assert await store.delete_selection("main", "a", 1_700_000_200.0) is False  # already
    assert await store.delete_selection("main", "unknown", 1.0) is False
    assert await store.delete_selection("other", "b", 1.0) is False  # another site's id
    deleted = await store.selection("main", "a")
    assert deleted is not None and deleted.deleted == 1_700_000_100.5
    assert deleted.instances == _selection("a").instances  # kept whole
    assert [s.resource_id for s in await store.find_selections("main")] == ["b"]
    with pytest.raises(SelectionExists):  # a deleted id stays taken
        await store.add_selection(_selection("a"))


async def test_find_selections_filters_and_order(store: Store) -> None:
    # Added out of creation order; two share a creation time (then ordered by id).
    specs = [
        ("e", "1.1", "p1", 50.0),
        ("a", "1.2", "p1", 10.0),
        ("d", "1.1", "p2", 40.0),
        ("c", "1.1", "p1", 30.0),
        ("b", "1.3", "p2", 30.0),
    ]
    for rid, study, patient, created in specs:
        await store.add_selection(_selection(rid, study=study, patient=patient, created=created))
    await store.add_selection(_selection("z", site="other", study="1.1", patient="p1"))

    async def ids(**kwargs: Any) -> list[str]:
        return [s.resource_id for s in await store.find_selections("main", **kwargs)]

    assert await ids() == ["a", "b", "c", "d", "e"]
    assert await ids(study_uids=["1.1"]) == ["c", "d", "e"]
    assert await ids(study_uids={"1.1", "1.3"}) == ["b", "c", "d", "e"]
    assert await ids(patient_ids=("p2",)) == ["b", "d"]
    assert await ids(study_uids=["1.1"], patient_ids=["p1"]) == ["c", "e"]  # AND
    assert await ids(study_uids=["1.2"], patient_ids=["p2"]) == []
    assert await ids(study_uids=[]) == []
    assert await ids(patient_ids=[]) == []
    assert await ids(study_uids=["nope"]) == []
    assert await ids(limit=2) == ["a", "b"]
    assert await ids(study_uids=["1.1"], limit=1) == ["c"]
    assert await ids(limit=0) == []
    found = await store.find_selections("main", study_uids=["1.2"])
    assert found == [_selection("a", study="1.2", patient="p1", created=10.0)]
    assert [s.resource_id for s in await store.find_selections("other")] == ["z"]


# ---------------------------------------------------------------- schema


async def test_migrations_are_idempotent_across_reopen(target: Target) -> None:
    first = await open_store(*target)
    await first.remember("main", "ImagingStudy", [("s1", "1.2.3")])
    await first.add_selection(_selection("kept"))
    await first.close()
    for _ in range(2):
        again = await open_store(*target)
        try:
            assert await again.recall("main", "ImagingStudy", "s1") == "1.2.3"
            assert await again.selection("main", "kept") == _selection("kept")
        finally:
            await again.close()
    assert await _versions(target) == [m.version for m in MIGRATIONS]


def test_migrations_list_is_ordered_and_has_both_dialects() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, latest_version() + 1))
    assert all(m.sqlite and m.postgres for m in MIGRATIONS)


async def test_unversioned_sqlite_file_is_migrated(tmp_path: Path) -> None:
    """A state file of the store before versioning (served_study only) keeps its ids."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE served_study (site TEXT NOT NULL, resource_id TEXT NOT NULL,"
            " study_uid TEXT NOT NULL, first_served REAL NOT NULL,"
            " PRIMARY KEY (site, resource_id))"
        )
        db.execute("INSERT INTO served_study VALUES ('main', 'id-1', '1.2.3', 1.0)")
    db.close()
    store = await open_store(str(path), None)
    try:
        assert await store.recall("main", "ImagingStudy", "id-1") == "1.2.3"
        assert await store.recall("main", "ImagingSelection", "id-1") is None
    finally:
        await store.close()
    assert await _versions((str(path), None)) == [m.version for m in MIGRATIONS]


async def test_concurrent_openers_of_one_postgres_database(fresh_database_url: str) -> None:
    """Replicas starting at once: the schema is migrated once and every store works."""
    stores = await asyncio.gather(*(open_store("", fresh_database_url) for _ in range(4)))
    try:
        await asyncio.gather(
            *(
                s.remember("main", "ImagingStudy", [("id", f"key-{n}")])
                for n, s in enumerate(stores)
            )
        )
        keys = {await s.recall("main", "ImagingStudy", "id") for s in stores}
        assert len(keys) == 1  # one of them won, all see it
        await stores[0].add_selection(_selection("shared"))
        assert await stores[3].selection("main", "shared") == _selection("shared")
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert await _versions(("", fresh_database_url)) == [m.version for m in MIGRATIONS]


async def test_newer_schema_is_refused(target: Target) -> None:
    await (await open_store(*target)).close()
    path, url = target
    row = "INSERT INTO schema_version VALUES (999, 'from the future', 0)"
    if url is None:
        with sqlite3.connect(path) as db:
            db.execute(row)
        db.close()
    else:
        connection = await asyncpg.connect(url)
        await connection.execute(row)
        await connection.close()
    with pytest.raises(StoreOpenError, match="version 999"):
        await open_store(*target)


# ---------------------------------------------------------------- errors


async def test_unreachable_postgres_is_a_one_line_error() -> None:
    url = f"postgresql://gw:s3cret@127.0.0.1:{free_port()}/state"
    started = time.monotonic()
    with pytest.raises(StoreOpenError) as caught:
        await open_store("", url)
    message = str(caught.value)
    assert "127.0.0.1" in message and "s3cret" not in message and "\n" not in message
    assert time.monotonic() - started < 10


def test_serve_exits_cleanly_when_the_database_is_unreachable(tmp_path: Path) -> None:
    url = f"postgresql://gw:s3cret@127.0.0.1:{free_port()}/state"
    served = subprocess.run(
        [
            *(sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--port", "0"),
            *("--pacs-dicomweb", "http://127.0.0.1:9/dicom-web", "--database-url", url),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert served.returncode == 1
    assert "Traceback" not in served.stderr and "s3cret" not in served.stderr
    assert "ncpeh-dicomweb: state store: cannot connect to the database" in served.stderr


async def test_postgres_failure_during_a_call_is_503(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_store, "COMMAND_TIMEOUT", 0.5)
    store = await open_store("", fresh_database_url)
    blocker = await asyncpg.connect(fresh_database_url)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE served IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(BackendBusy) as caught:
            await store.recall("main", "ImagingStudy", "id")
        assert caught.value.status == 503 and "Retry-After" in caught.value.headers
        assert "state store" in caught.value.message
        await transaction.rollback()
        assert await store.recall("main", "ImagingStudy", "id") is None  # and it recovers
        # A connection the server drops: 503 or a fresh connection, never a 500.
        await blocker.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        with contextlib.suppress(BackendBusy):
            await store.recall("main", "ImagingStudy", "id")
        assert await store.recall("main", "ImagingStudy", "id") is None
    finally:
        await blocker.close()
        await store.close()


async def test_sqlite_locked_past_the_busy_timeout_is_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "state.sqlite3"
    store = await open_store(str(path), None)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(BackendBusy):
            await store.remember("main", "ImagingStudy", [("id", "1.2")])
        blocker.execute("ROLLBACK")
        await store.remember("main", "ImagingStudy", [("id", "1.2")])
        assert await store.recall("main", "ImagingStudy", "id") == "1.2"
    finally:
        blocker.close()
        await store.close()


# ---------------------------------------------------------------- crash safety

# The writer: selections of ~2000 instances each, as fast as it can, until killed. Each
# resource says how many instances it was written with; "begin N" / "done N" tell where it was.
_WRITER = """
import asyncio, sys, time
from ncpeh_dicomweb.state import StoredInstance, StoredSelection, open_store

async def main(path, url, prefix):
    store = await open_store(path, url or None)
    print("ready", flush=True)
    n = 0
    while True:
        count = 2000 - 37 * (n % 5)
        instances = tuple(
            StoredInstance(f"1.2.{n}.{k}", "1.2.840", (k % 9 + 1,) if k % 4 else ())
            for k in range(count, 0, -1)
        )
        rid = f"{prefix}-{n}"
        selection = StoredSelection(
            site="crash", resource_id=rid, study_uid="1.2", series_uid="1.2.1", patient_id="p",
            instances=instances, created=time.time(),
            resource={"resourceType": "ImagingSelection", "id": rid, "expected": count},
        )
        print("begin", n, flush=True)
        await store.add_selection(selection)
        print("done", n, flush=True)
        n += 1

asyncio.run(main(*sys.argv[1:]))
"""


async def test_selections_survive_sigkill_whole_or_not_at_all(target: Target) -> None:
    path, url = target
    await (await open_store(*target)).close()  # schema in place: kills hit the writes
    rng = random.Random(20261101)
    kept, interrupted = 0, 0
    for round_ in range(5):
        writer = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", _WRITER, path, url or "", f"r{round_}"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert writer.stdout is not None and writer.stderr is not None
        try:
            line = await asyncio.wait_for(writer.stdout.readline(), 30)
            assert line == b"ready\n", await writer.stderr.read()
            await asyncio.sleep(rng.uniform(0.1, 0.6))
        finally:
            writer.send_signal(signal.SIGKILL)
            output = (await writer.stdout.read()).split()
            await writer.wait()
        interrupted += len(output) >= 2 and output[-2] == b"begin"
        store = await open_store(*target)
        try:
            found = await store.find_selections("crash", limit=100_000)
            for selection in found:
                expected = selection.resource["expected"]
                n = selection.resource_id.rsplit("-", 1)[1]
                assert len(selection.instances) == expected, selection.resource_id
                assert [i.sop_instance_uid for i in selection.instances] == [
                    f"1.2.{n}.{k}" for k in range(expected, 0, -1)
                ]
            assert len(found) >= kept + output.count(b"done")  # every write it finished stays
            kept = len(found)
        finally:
            await store.close()
    assert kept > 0
    print(f"{kept} selections kept; {interrupted} of 5 kills during a write")
