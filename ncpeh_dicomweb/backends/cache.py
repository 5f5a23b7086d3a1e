"""On-disk cache of DICOM Part 10 instances retrieved over DIMSE, so the PACS sends a study once.

Shared by a site's requests, written from pynetdicom threads and read from the event loop: one
``threading.Lock`` guards the index and is held for bookkeeping and metadata calls (mkdir,
rename, unlink) only, never while instance bodies are read or written.  Layout under ``root``:
``data/<study>/<series>/<sop>.dcm`` (the index is rebuilt from these), ``listings/<study>/``
``study.json`` or ``<series>.json`` (members of a complete retrieve, with their transfer
syntaxes) and ``tmp/`` (purged at start-up).  Files reach ``data`` and ``listings`` by an
atomic ``os.replace`` from ``tmp``.  Recency lives in memory; after a restart the LRU order
is the files' write (mtime) order.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import struct
import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

__all__ = [
    "CacheStats",
    "CachedInstance",
    "InstanceCache",
    "InstanceWriter",
    "file_syntax",
    "validate_uid",
]

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_STUDY_LISTING = "study.json"
_Key: TypeAlias = tuple[str, str, str]
_ListingKey: TypeAlias = tuple[str, str | None]
_Members: TypeAlias = tuple[tuple[str, str], ...]
_written = itertools.count()  # temporary file names
_HEAD = 4096  # holds a Part 10 file's meta information in practice (PS3.10 7.1)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def _is_uid(text: object) -> bool:
    return isinstance(text, str) and len(text) <= 64 and _UID.fullmatch(text) is not None


def validate_uid(uid: str) -> str:
    """``uid`` if it is digits and dots (no empty component), at most 64 characters.

    Anything else raises ValueError, so a UID can never name a path outside the cache.
    """
    if not _is_uid(uid):
        raise ValueError(f"invalid DICOM UID: {uid!r:.80}")
    return uid


def _key(study: str, series: str, sop: str) -> _Key:
    return validate_uid(study), validate_uid(series), validate_uid(sop)


def _scope(study: str, series: str | None) -> _ListingKey:
    return validate_uid(study), None if series is None else validate_uid(series)


@dataclass(frozen=True, slots=True)
class CachedInstance:
    study: str
    series: str
    sop: str
    path: Path
    """A complete Part 10 file; it is only sure to stay there while pinned."""
    size: int
    syntax: str | None = None
    """Its Transfer Syntax UID, None until known (an entry of an older index)."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int
    writes: int
    pinned: int = 0  # entries pinned now (being streamed or retrieved)


def file_syntax(head: bytes) -> str | None:
    """The Transfer Syntax UID (0002,0010) in the head of a Part 10 file, or None if the head
    does not show one: the 128-byte preamble, ``DICM``, then the explicit VR little endian
    group 0002 (PS3.10 7.1), read without a DICOM library."""
    if head[128:132] != b"DICM":
        return None
    at = 132
    while at + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, at)
        if group != 2:
            return None
        vr = head[at + 4 : at + 6]
        if vr in _LONG_VRS:
            if at + 12 > len(head):
                return None
            (length,) = struct.unpack_from("<I", head, at + 8)
            at += 12
        else:
            (length,) = struct.unpack_from("<H", head, at + 6)
            at += 8
        if element == 0x0010:
            value = head[at : at + length]
            uid = value.rstrip(b"\0 ").decode("ascii", "replace")
            return uid if len(value) == length and _is_uid(uid) else None
        at += length
    return None


def _syntax_of_file(path: Path) -> str | None:
    with path.open("rb") as file:
        return file_syntax(file.read(_HEAD))


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _uid_dirs(parent: Path) -> Iterator[Path]:
    """The subdirectories of ``parent`` named by a UID; deletes anything else."""
    for path in list(parent.iterdir()):
        if path.is_dir() and not path.is_symlink() and _is_uid(path.name):
            yield path
            _rmdir_quiet(path)  # if it ended up empty
        else:
            _remove(path)


class InstanceWriter:
    """Writes one instance into ``tmp``; ``commit()`` moves it into place atomically.

    Use it as a context manager: leaving the block without ``commit()`` (by an exception or
    not) deletes the temporary file.  One writer belongs to one thread.
    """

    def __init__(self, cache: InstanceCache, key: _Key | None, pin: bool) -> None:
        self._cache, self._key, self._pin = cache, key, pin
        # Not mkstemp: its random names cost ~5 % of a cold DIMSE retrieve's CPU. The tmp
        # directory is this cache's own and emptied at start, so a counter is unique.
        self._tmp = cache._tmp / f"{os.getpid()}-{next(_written)}.part"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._size = 0
        self._head = bytearray()  # for the transfer syntax, read when committed
        self._done = False

    def __enter__(self) -> InstanceWriter:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise RuntimeError("instance writer already committed or aborted")
        if len(self._head) < _HEAD:
            self._head += data[: _HEAD - len(self._head)]
        self._size += self._file.write(data)

    def place(self, study: str, series: str, sop: str) -> None:
        """Name the instance (a writer from :meth:`InstanceCache.incoming`), before commit."""
        self._key = _key(study, series, sop)

    def written(self) -> Path:
        """The temporary file, with everything written so far in it (to read a header that
        did not fit in the first bytes)."""
        self._file.flush()
        return self._tmp

    def commit(self) -> CachedInstance:
        """Install the file (replacing any cached copy), then evict down to ``max_bytes``."""
        if self._done:
            raise RuntimeError("instance writer already committed or aborted")
        if self._key is None:
            raise RuntimeError("instance writer committed before place()")
        self._done = True
        try:
            self._file.close()
            syntax = file_syntax(bytes(self._head))
            return self._cache._install(self._key, self._tmp, self._size, self._pin, syntax)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        """Discard what was written (no-op after ``commit()``)."""
        if not self._done:
            self._done = True
            try:
                self._file.close()
            finally:
                self._tmp.unlink(missing_ok=True)


class InstanceCache:
    """An LRU cache of Part 10 files bounded by ``max_bytes``, safe across threads and restarts.

    Eviction drops least recently used entries until the total is at most ``max_bytes`` but
    never a pinned entry (being streamed, or part of an in-flight retrieve): while pins hold
    more than ``max_bytes`` the cache exceeds its bound.  An instance larger than ``max_bytes``
    is still written and survives the commit that wrote it; it goes at the next eviction pass
    once unpinned.  Evicting an entry drops every listing that contains it, so ``listing()``
    never names a missing file.  ``get``, ``listing``, ``writer`` and ``adopt`` take
    ``pin=True`` to pin what they return atomically (the caller must ``unpin`` it); without
    it another thread may evict the file before the caller opens it.  Use one instance per
    root: nothing coordinates two caches (or processes) sharing a directory.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.root, self.max_bytes = Path(root), max_bytes
        self._data, self._tmp, self._lists = (self.root / d for d in ("data", "tmp", "listings"))
        self._lock = threading.Lock()
        self._entries: OrderedDict[_Key, CachedInstance] = OrderedDict()  # oldest first
        self._studies: dict[str, set[_Key]] = {}
        self._listings: dict[_ListingKey, _Members] = {}
        self._pins: Counter[_Key] = Counter()
        self._doomed: set[_Key] = set()  # evicted explicitly while pinned: dropped on unpin
        self._bytes = self._hits = self._misses = self._evictions = self._writes = 0
        shutil.rmtree(self._tmp, ignore_errors=True)
        for directory in (self._data, self._tmp, self._lists):
            directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._load()
            self._shrink_locked()

    def get(self, study: str, series: str, sop: str, *, pin: bool = False) -> CachedInstance | None:
        """The cached instance (now most recently used), or None."""
        key = _key(study, series, sop)
        with self._lock:
            item = self._entries.get(key)
            if item is None or key in self._doomed:
                self._misses += 1
                return None
            self._hits += 1
            self._use_locked(key, pin)
            return item

    def writer(self, study: str, series: str, sop: str, *, pin: bool = False) -> InstanceWriter:
        """A writer for one instance; with ``pin=True``, ``commit()`` returns it pinned."""
        return InstanceWriter(self, _key(study, series, sop), pin)

    def incoming(self, *, pin: bool = False) -> InstanceWriter:
        """A writer for an instance whose study and series are known only once part of it is
        written: :meth:`InstanceWriter.place` names it before ``commit()``."""
        return InstanceWriter(self, None, pin)

    def adopt(
        self, study: str, series: str, sop: str, source: Path, *, pin: bool = False
    ) -> CachedInstance:
        """Move the complete file ``source`` into the cache (copy + unlink across devices)."""
        key = _key(study, series, sop)
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        os.close(fd)
        tmp = Path(name)
        try:
            try:
                os.replace(source, tmp)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(source, tmp)
                os.unlink(source)
            return self._install(key, tmp, tmp.stat().st_size, pin, _syntax_of_file(tmp))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def record_listing(
        self, study: str, series: str | None, members: Sequence[tuple[str, str]]
    ) -> bool:
        """Persist the complete, ordered ``(series, sop)`` members of a retrieved study/series.

        Returns False, recording nothing, if a member is no longer cached: such a listing
        could never answer.
        """
        lk = _scope(study, series)
        pairs = tuple((validate_uid(se), validate_uid(sop)) for se, sop in members)
        if series is not None and any(se != series for se, _ in pairs):
            raise ValueError(f"the listing of series {series} names another series")
        with self._lock:  # kept with the listing: a restart need not read each file for them
            known = (self._entries.get((study, se, sop)) for se, sop in pairs)
            syntaxes = [None if item is None else item.syntax for item in known]
        doc = {"study": study, "series": series, "members": pairs, "syntaxes": syntaxes}
        fd, name = tempfile.mkstemp(dir=self._tmp, suffix=".json")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(json.dumps(doc).encode())
            with self._lock:
                if complete := self._complete_locked(study, pairs):
                    path = self._listing_path(lk)
                    path.parent.mkdir(exist_ok=True)
                    os.replace(tmp, path)
                    self._listings[lk] = pairs
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if not complete:
            tmp.unlink()
        return complete

    def listing(
        self, study: str, series: str | None = None, *, pin: bool = False
    ) -> list[CachedInstance] | None:
        """All members of a completely cached study/series (now recently used), or None.

        A recorded study listing also answers for each of its series.
        """
        _scope(study, series)
        with self._lock:
            members = self._listings.get((study, series))
            if members is None and series is not None and (study, None) in self._listings:
                members = tuple(m for m in self._listings[study, None] if m[0] == series) or None
            if members is None:
                return None
            keys = [(study, se, sop) for se, sop in members]
            if any(k not in self._entries or k in self._doomed for k in keys):
                return None  # unreachable while listings are dropped with their members
            for k in keys:
                self._use_locked(k, pin)
            return [self._entries[k] for k in keys]

    def note_syntax(self, item: CachedInstance, syntax: str) -> CachedInstance:
        """``item`` with its transfer syntax, read from its file by the caller; kept in the
        index so that the file is read for it once."""
        known = replace(item, syntax=syntax)
        key = (item.study, item.series, item.sop)
        with self._lock:
            if self._entries.get(key) == item:  # not replaced by a newer copy meanwhile
                self._entries[key] = known
        return known

    def pin(self, items: Iterable[CachedInstance]) -> None:
        """Protect items from eviction until a matching ``unpin``.

        Pins are counted per ``(study, series, sop)``, so they also hold a newer copy.
        """
        keys = [(i.study, i.series, i.sop) for i in items]
        with self._lock:
            self._pins.update(keys)

    def unpin(self, items: Iterable[CachedInstance]) -> None:
        """Release pins (unmatched ones are ignored), then evict what is over budget."""
        keys = [(i.study, i.series, i.sop) for i in items]
        with self._lock:
            for key in keys:
                self._pins[key] -= 1
                if self._pins[key] > 0:
                    continue
                del self._pins[key]
                if key in self._doomed:
                    self._drop_locked(key)
            self._shrink_locked()

    @contextlib.contextmanager
    def pinned(self, items: Iterable[CachedInstance]) -> Iterator[list[CachedInstance]]:
        """``with cache.pinned(items) as held:`` keeps ``items`` for the block."""
        held = list(items)
        self.pin(held)
        try:
            yield held
        finally:
            self.unpin(held)

    def evict(self, study: str, series: str | None = None) -> None:
        """Drop a study or series and its listings; pinned members go when unpinned."""
        _scope(study, series)
        with self._lock:
            for key in list(self._studies.get(study, ())):
                if series is None or key[1] == series:
                    if key in self._pins:
                        self._doomed.add(key)
                    else:
                        self._drop_locked(key)
            for lk in [k for k in self._listings if k[0] == study]:
                if series is None or lk[1] in (None, series):
                    self._drop_listing_locked(lk)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                len(self._entries), self._bytes, self.max_bytes, self._hits, self._misses,
                self._evictions, self._writes, len(self._pins),
            )  # fmt: skip

    def close(self) -> None:
        """Nothing to flush: every change is on disk when the call making it returns."""

    # Internals; the ``_locked`` ones need ``self._lock``.

    def _path(self, key: _Key) -> Path:
        return self._data / key[0] / key[1] / f"{key[2]}.dcm"

    def _listing_path(self, lk: _ListingKey) -> Path:
        return self._lists / lk[0] / (_STUDY_LISTING if lk[1] is None else f"{lk[1]}.json")

    def _install(
        self, key: _Key, tmp: Path, size: int, pin: bool, syntax: str | None
    ) -> CachedInstance:
        item = CachedInstance(*key, path=self._path(key), size=size, syntax=syntax)
        with self._lock:
            item.path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, item.path)
            self._add_locked(item)
            self._doomed.discard(key)
            self._writes += 1
            if pin:
                self._pins[key] += 1
            self._shrink_locked(keep=key)
        return item

    def _use_locked(self, key: _Key, pin: bool) -> None:
        self._entries.move_to_end(key)
        if pin:
            self._pins[key] += 1

    def _add_locked(self, item: CachedInstance) -> None:
        key = (item.study, item.series, item.sop)
        old = self._entries.pop(key, None)
        self._bytes += item.size - (0 if old is None else old.size)
        self._entries[key] = item
        self._studies.setdefault(item.study, set()).add(key)

    def _complete_locked(self, study: str, members: _Members) -> bool:
        keys = ((study, se, sop) for se, sop in members)
        return all(k in self._entries and k not in self._doomed for k in keys)

    def _shrink_locked(self, keep: _Key | None = None) -> None:
        excess = self._bytes - self.max_bytes
        victims: list[_Key] = []
        for key, item in self._entries.items():
            if excess <= 0:
                break
            if key != keep and key not in self._pins:
                victims.append(key)
                excess -= item.size
        for key in victims:
            self._drop_locked(key)

    def _drop_locked(self, key: _Key) -> None:
        item = self._entries.pop(key)
        self._bytes -= item.size
        self._evictions += 1
        self._doomed.discard(key)
        self._studies[key[0]].discard(key)
        if not self._studies[key[0]]:
            del self._studies[key[0]]
        item.path.unlink(missing_ok=True)
        _rmdir_quiet(item.path.parent)
        _rmdir_quiet(item.path.parent.parent)
        for lk in ((key[0], None), (key[0], key[1])):
            if (key[1], key[2]) in self._listings.get(lk, ()):
                self._drop_listing_locked(lk)

    def _drop_listing_locked(self, lk: _ListingKey) -> None:
        del self._listings[lk]
        path = self._listing_path(lk)
        path.unlink(missing_ok=True)
        _rmdir_quiet(path.parent)

    def _load(self) -> None:
        """Rebuild the index and listings from disk, deleting whatever does not fit."""
        found: list[tuple[int, str, CachedInstance]] = []
        for study_dir in _uid_dirs(self._data):
            for series_dir in _uid_dirs(study_dir):
                for file in list(series_dir.iterdir()):
                    sop = file.name.removesuffix(".dcm")
                    if (
                        file.is_symlink()
                        or not file.is_file()
                        or not _is_uid(sop)
                        or sop == file.name
                    ):
                        _remove(file)
                        continue
                    st = file.stat()
                    item = CachedInstance(study_dir.name, series_dir.name, sop, file, st.st_size)
                    found.append((st.st_mtime_ns, str(file), item))
        for _, _, item in sorted(found, key=lambda t: t[:2]):
            self._add_locked(item)
        for study_dir in _uid_dirs(self._lists):
            for file in list(study_dir.iterdir()):
                series = None if file.name == _STUDY_LISTING else file.name.removesuffix(".json")
                ok = series is None or (series != file.name and _is_uid(series))
                listing = self._read_listing(file, study_dir.name, series) if ok else None
                if listing is None:
                    _remove(file)
                else:
                    self._listings[(study_dir.name, series)] = listing

    def _read_listing(self, path: Path, study: str, series: str | None) -> _Members | None:
        """The listing in ``path`` if well-formed and complete, else None."""
        try:
            doc: Any = json.loads(path.read_bytes())
            if doc["study"] != study or doc["series"] != series:
                return None
            pairs = tuple((se, sop) for se, sop in doc["members"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not all(_is_uid(se) and _is_uid(sop) and series in (None, se) for se, sop in pairs):
            return None
        if not self._complete_locked(study, pairs):
            return None
        syntaxes = doc.get("syntaxes")  # absent from listings written before they were kept
        if isinstance(syntaxes, list) and len(syntaxes) == len(pairs):
            for (se, sop), syntax in zip(pairs, syntaxes, strict=True):
                key = (study, se, sop)
                if _is_uid(syntax) and self._entries[key].syntax is None:
                    self._entries[key] = replace(self._entries[key], syntax=syntax)
        return pairs
