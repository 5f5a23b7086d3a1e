"""A bounded first-in first-out queue of syslog frames on disk: every record for the audit
repository goes through it, so a repository that is down, a restart or a crash of the gateway
loses nothing that was recorded.

Layout of the directory: segment files ``<seq>.frames``, each a run of RFC 6587 octet-counted
frames (``LEN SP MSG``: the bytes sent on the wire), appended in order; ``cursor`` (``seq
offset``), where the first frame not yet known to be delivered starts; ``lock``, held
(``flock``) by the one process using the spool.

Two positions move forward: *read* (what was handed to the sender) and *commit* (what the
repository is known to have). A lost connection rewinds *read* to *commit*; a segment wholly
behind *commit* is deleted. The cursor file is rewritten by :meth:`Spool.sync_job`
(periodically and at close), so after a crash the frames since the last sync are sent again:
delivery is at least once, and the AuditEvent ``id`` tells duplicates apart.

The bound is on the bytes of the segment files: a frame that would pass it is dropped, counted
and logged, newest first (what is already spooled is older and kept).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .jsonl import fsync_directory, write_all

__all__ = ["Position", "Spool", "SpoolError"]

log = logging.getLogger(__name__)

Position = tuple[int, int]  # (segment number, byte offset in it)

_SEGMENT = re.compile(r"([0-9]{12})\.frames")
_MAX_LEN_DIGITS = 10
_DROP_LOG_EVERY = 10.0  # seconds between two "spool full" warnings


class SpoolError(OSError):
    """The spool cannot be used (locked by another process, not writable)."""


def parse_frame(data: bytes | memoryview, start: int) -> int | None:
    """The end of the octet-counted frame at ``data[start:]``, or None if it is incomplete.
    Raises ValueError if the bytes there are not a frame."""
    view = bytes(data[start : start + _MAX_LEN_DIGITS + 1])
    space = view.find(b" ")
    if space < 0:
        if len(view) > _MAX_LEN_DIGITS:
            raise ValueError("no frame length")
        return None
    digits = view[:space]
    if not digits.isdigit() or digits.startswith(b"0"):
        raise ValueError("bad frame length")
    end = start + space + 1 + int(digits)
    return end if end <= len(data) else None


class Spool:
    """See the module docstring. Not thread-safe: used from the event loop only (except the
    function :meth:`sync_job` returns, which is made to run in a thread)."""

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, *, segment_bytes: int | None = None
    ) -> None:
        if max_bytes < 1024:
            raise ValueError("spool max_bytes must be at least 1024")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(max(max_bytes // 16, 64 * 1024), 4 << 20)
        self.dropped = 0
        self.appended = 0
        self._sizes: dict[int, int] = {}  # segment → bytes, oldest first
        self._size = 0
        self._read: Position = (1, 0)
        self._commit: Position = (1, 0)
        self._synced_commit: Position | None = None
        self._write_fd: int | None = None
        self._write_seq = 1
        self._read_fds: dict[int, int] = {}
        self._lock_fd: int | None = None
        self._dirty = False  # appended since the last sync
        self._unsynced_fds: list[int] = []  # segments rotated away before their fsync
        self._last_drop_log = 0.0

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise SpoolError(f"audit spool {self.directory} is in use by another process") from None
        self._lock_fd = lock
        segments = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT.fullmatch(p.name))
        )
        for seq in segments:
            self._sizes[seq] = (self.directory / self._name(seq)).stat().st_size
        if segments:
            self._repair_tail(segments[-1])
        commit = self._read_cursor()
        if commit is None or commit[0] not in self._sizes:
            commit = (segments[0], 0) if segments else (1, 0)
        for seq in [s for s in self._sizes if s < commit[0]]:
            self._delete(seq)
        self._commit = self._read = commit
        self._synced_commit = commit
        self._size = sum(self._sizes.values())
        last = max(self._sizes) if self._sizes else commit[0]
        self._open_writer(last)
        if self.pending_bytes:
            log.info(
                "audit spool %s holds %d bytes not yet delivered",
                self.directory,
                self.pending_bytes,
            )

    def close(self) -> None:
        """Sync and release (call :meth:`sync_job` first to do the fsync in a thread)."""
        job = self.sync_job()
        if job is not None:
            job()
        for fd in (*self._read_fds.values(), *self._unsynced_fds, self._write_fd, self._lock_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fds.clear()
        self._write_fd = self._lock_fd = None

    def _name(self, seq: int) -> str:
        return f"{seq:012d}.frames"

    def _read_cursor(self) -> Position | None:
        try:
            text = (self.directory / "cursor").read_text()
            seq, offset = (int(v) for v in text.split())
        except (OSError, ValueError):
            return None
        size = self._sizes.get(seq)
        if size is None or not 0 <= offset <= size:
            return None
        return seq, offset

    def _repair_tail(self, seq: int) -> None:
        """Cut a frame torn by a crash off the end of the last segment."""
        path = self.directory / self._name(seq)
        data = path.read_bytes()
        end = 0
        try:
            while end < len(data):
                nxt = parse_frame(data, end)
                if nxt is None:
                    break
                end = nxt
        except ValueError:
            pass
        if end < len(data):
            log.warning("audit spool: cutting %d torn bytes off %s", len(data) - end, path.name)
            os.truncate(path, end)
            self._sizes[seq] = end

    def _open_writer(self, seq: int) -> None:
        if self._write_fd is not None:
            if self._dirty:  # fsync'd by the next sync job
                self._unsynced_fds.append(self._write_fd)
            else:
                os.close(self._write_fd)
        path = self.directory / self._name(seq)
        new = not path.exists()
        self._write_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._sizes.setdefault(seq, 0)
        self._write_seq = seq
        if new:
            fsync_directory(self.directory)

    def _delete(self, seq: int) -> None:
        fd = self._read_fds.pop(seq, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / self._name(seq)).unlink()
        self._size -= self._sizes.pop(seq, 0)

    # ------------------------------------------------------------------ writing

    def append(self, frames: Sequence[bytes]) -> int:
        """Append ``frames`` in order; return how many fitted under the bound (the others are
        dropped, counted in :attr:`dropped` and logged)."""
        if self._write_fd is None:
            raise RuntimeError("the audit spool is not open")
        chunk: list[bytes] = []
        chunk_bytes = 0
        accepted = 0
        for frame in frames:
            if self._size + len(frame) > self.max_bytes:
                self._drop()
                continue
            if chunk and self._sizes[self._write_seq] + chunk_bytes >= self.segment_bytes:
                self._flush(chunk, chunk_bytes)
                chunk, chunk_bytes = [], 0
            if self._sizes[self._write_seq] >= self.segment_bytes:
                self._open_writer(self._write_seq + 1)
            chunk.append(frame)
            chunk_bytes += len(frame)
            self._size += len(frame)
            accepted += 1
        if chunk:
            self._flush(chunk, chunk_bytes)
        self.appended += accepted
        return accepted

    def _flush(self, chunk: list[bytes], size: int) -> None:
        assert self._write_fd is not None
        try:
            write_all(self._write_fd, b"".join(chunk))
        except OSError:
            # Disk full: cut a partly written frame off, so the segment stays well-formed.
            self._size -= size
            with contextlib.suppress(OSError):
                os.ftruncate(self._write_fd, self._sizes[self._write_seq])
            raise
        self._sizes[self._write_seq] += size
        self._dirty = True

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if self.dropped == 1 or now - self._last_drop_log >= _DROP_LOG_EVERY:
            self._last_drop_log = now
            log.error(
                "audit spool %s is full (%d bytes): %d audit events dropped so far",
                self.directory,
                self.max_bytes,
                self.dropped,
            )

    # ------------------------------------------------------------------ reading

    def read(self, max_bytes: int) -> list[tuple[bytes, Position]]:
        """Frames after the read position, about ``max_bytes`` of them (at least one if any),
        each with the position just past it; moves the read position past them."""
        out: list[tuple[bytes, Position]] = []
        total = 0
        while total < max_bytes:
            seq, offset = self._read
            size = self._sizes.get(seq, 0)
            if offset >= size:
                later = [s for s in self._sizes if s > seq]
                if not later:
                    break
                self._read = (min(later), 0)
                continue
            fd = self._reader(seq)
            block = os.pread(fd, min(size - offset, max(max_bytes - total, 4096)), offset)
            position = 0
            try:
                while position < len(block) and total < max_bytes:
                    end = parse_frame(block, position)
                    if end is None:
                        if position == 0:  # one frame larger than the block
                            block = os.pread(fd, size - offset, offset)
                            continue
                        break
                    out.append((block[position:end], (seq, offset + end)))
                    total += end - position
                    position = end
            except ValueError:
                log.error(
                    "audit spool: %s is corrupt at byte %d; skipping its rest",
                    self._name(seq),
                    offset + position,
                )
                self._read = (seq, size)
                continue
            self._read = (seq, offset + position)
        return out

    def _reader(self, seq: int) -> int:
        fd = self._read_fds.get(seq)
        if fd is None:
            for old in [s for s in self._read_fds if s < seq]:
                os.close(self._read_fds.pop(old))
            fd = os.open(self.directory / self._name(seq), os.O_RDONLY | os.O_CLOEXEC)
            self._read_fds[seq] = fd
        return fd

    def commit(self, position: Position) -> None:
        """Everything up to ``position`` is delivered: forget it."""
        if position <= self._commit:
            return
        self._commit = position
        for seq in [s for s in self._sizes if s < position[0]]:
            self._delete(seq)
        seq, offset = position
        if offset < self._sizes.get(seq, 0):
            return
        later = [s for s in self._sizes if s > seq]
        if later:  # a complete segment (only the last one is written to)
            self._delete(seq)
            self._commit = (min(later), 0)
            self._read = max(self._read, self._commit)
        elif self._read == position and self._sizes[seq] >= self.segment_bytes // 4:
            # The segment being written is all delivered: start a new one, drop this one.
            self._open_writer(seq + 1)
            self._delete(seq)
            self._commit = self._read = (seq + 1, 0)

    def rewind(self) -> None:
        """Read again from the commit position (the connection was lost)."""
        self._read = self._commit

    @property
    def read_position(self) -> Position:
        return self._read

    @property
    def commit_position(self) -> Position:
        return self._commit

    @property
    def unread(self) -> bool:
        """Frames wait after the read position."""
        seq, offset = self._read
        return offset < self._sizes.get(seq, 0) or any(
            size for s, size in self._sizes.items() if s > seq
        )

    @property
    def pending_bytes(self) -> int:
        """Bytes not yet known to be delivered."""
        seq, offset = self._commit
        return sum(size for s, size in self._sizes.items() if s >= seq) - offset

    @property
    def size_bytes(self) -> int:
        return self._size

    # ------------------------------------------------------------------ durability

    def sync_job(self) -> Callable[[], None] | None:
        """A function making the spool durable as of now (fsync of the segments written since
        the last one, the cursor rewritten), to run in a thread; None if nothing changed."""
        if self._write_fd is None:
            return None
        commit = self._commit
        fds, self._unsynced_fds = self._unsynced_fds, []
        if self._dirty:
            fds.append(os.dup(self._write_fd))
        self._dirty = False
        if not fds and commit == self._synced_commit:
            return None
        self._synced_commit = commit
        directory = self.directory

        def job() -> None:
            try:
                for fd in fds:
                    os.fsync(fd)
            finally:
                for fd in fds:
                    os.close(fd)
            temporary = directory / "cursor.tmp"
            temporary.write_text(f"{commit[0]} {commit[1]}\n")
            os.replace(temporary, directory / "cursor")

        return job
