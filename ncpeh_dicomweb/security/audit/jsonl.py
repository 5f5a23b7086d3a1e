"""The default audit sink: one AuditEvent per line, appended to a local file.

The file is opened ``O_APPEND`` (each batch is one ``write()``, so lines of several processes
never interleave within a line), with mode 0600; every write goes straight to the kernel (no
user-space buffer), so a crash of the gateway loses nothing already recorded. ``fsync`` makes
it survive a crash of the machine: after every batch when ``fsync_interval`` is 0 (slow: it
waits on the disk in the event loop), else at most every ``fsync_interval`` seconds, in a
thread. Rotation is left to the operator (``logrotate`` with ``copytruncate``, or a rename
followed by a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .base import AuditRecord

__all__ = ["JsonlSink"]

log = logging.getLogger(__name__)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a regular file may take less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(path: Path) -> None:
    """Make a new entry in ``path`` durable (POSIX: fsync the directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class JsonlSink:
    """Append-only JSON lines (see the module docstring)."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str], *, fsync_interval: float = 1.0) -> None:
        if fsync_interval < 0:
            raise ValueError("fsync_interval must be >= 0")
        self.path = Path(path)
        self.fsync_interval = fsync_interval
        self.fsyncs = 0  # counters, for stats and tests
        self.lines = 0
        self.errors = 0
        self._fd: int | None = None
        self._unsynced = False  # written since the last fsync
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        # O_RDWR only to read the last byte back below; writes all go to the end (O_APPEND).
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            write_all(fd, b"\n")  # a line torn by a crash must not swallow the next one
        if not existed:
            fsync_directory(self.path.parent)
        self._fd = fd
        if self.fsync_interval > 0:
            self._task = asyncio.create_task(self._fsync_loop(), name="audit-jsonl-fsync")

    def write(self, records: Sequence[AuditRecord]) -> None:
        if self._fd is None:
            raise RuntimeError("the JSON lines audit sink is not open")
        if not records:
            return
        try:
            write_all(self._fd, b"".join(r.data + b"\n" for r in records))
        except OSError:
            self.errors += 1
            raise
        self.lines += len(records)
        if self.fsync_interval == 0:
            os.fsync(self._fd)
            self.fsyncs += 1
        else:
            self._unsynced = True
            self._dirty.set()

    async def _fsync_loop(self) -> None:
        # Never cancelled: an fsync running in its thread must finish before the fd closes.
        while True:
            await self._dirty.wait()
            with contextlib.suppress(TimeoutError):  # batch what comes meanwhile
                await asyncio.wait_for(self._stop.wait(), self.fsync_interval)
            self._dirty.clear()
            if self._unsynced and self._fd is not None:
                self._unsynced = False
                try:
                    await asyncio.to_thread(os.fsync, self._fd)
                    self.fsyncs += 1
                except OSError:
                    self.errors += 1
                    log.exception("audit: fsync of %s failed", self.path)
            if self._stop.is_set():
                return

    async def close(self) -> None:
        if self._task is not None:
            self._stop.set()
            self._dirty.set()
            await self._task
            self._task = None
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._unsynced:
                self._unsynced = False
                os.fsync(fd)
                self.fsyncs += 1
        finally:
            os.close(fd)

    def stats(self) -> dict[str, int | bool]:
        return {"lines": self.lines, "fsyncs": self.fsyncs, "errors": self.errors}
