"""A real PostgreSQL for the state store's tests, started by scripts/postgres.sh.

``postgres_url`` (session): the server's superuser URL. It starts a server in a private
temporary directory and stops (and removes) it at the end; set NCPEH_TEST_PG_DIR to a
directory to reuse the server there instead (started if needed, left running: a fast
edit-test loop), e.g. ``NCPEH_TEST_PG_DIR=$PWD/var/postgres``.

``fresh_database_url`` (function): the URL of a new, empty database for one test.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.servers import read_env, run_script

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_SH = ROOT / "scripts" / "postgres.sh"

__all__ = ["fresh_database_url", "postgres_url", "with_database"]

_counter = itertools.count()


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return run_script(POSTGRES_SH, *args, timeout=120)


def _env(directory: Path) -> dict[str, str]:
    return read_env(directory / "env")


def _start(directory: Path) -> str:
    started = _script("start", str(directory))
    if started.returncode != 0:
        pytest.fail(f"could not start PostgreSQL (scripts/postgres.sh):\n{started.stderr[-3000:]}")
    return _env(directory)["NCPEH_PG_URL"]


def with_database(url: str, database: str) -> str:
    """``url`` naming another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    reuse = os.environ.get("NCPEH_TEST_PG_DIR")
    if reuse:
        yield _start(Path(reuse))  # `start` is a no-op if it already answers
        return
    # Not a pytest tmp dir: those are 0700, and as root the server runs as another user.
    directory = Path(tempfile.mkdtemp(prefix="ncpeh-pg-test-"))
    try:
        yield _start(directory)
    finally:
        _script("stop", str(directory), "--purge")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fresh_database_url(postgres_url: str) -> str:
    """A new empty database (left in place: the session's server is thrown away)."""
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(postgres_url, name))
    return with_database(postgres_url, name)


@pytest.fixture(scope="module")
def module_database_url(postgres_url: str) -> str:
    """A new empty database for the tests of one module (a gateway they share)."""
    name = f"m_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(postgres_url, name))
    return with_database(postgres_url, name)


async def _create_database(url: str, name: str) -> None:
    connection = await asyncpg.connect(url, timeout=30)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
