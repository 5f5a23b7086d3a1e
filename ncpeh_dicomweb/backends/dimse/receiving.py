"""The C-STOREs of one retrieve on a native C-GET (:mod:`.native`), streamed into the cache.

The same rules as the pynetdicom sink (``backend._make_sink``): raw bytes behind a File Meta
header, refused when every client has gone (0xA700) or when the instance is not under the
target (0xA900, never cached), then handed to the flight, and the PACS held back while the
clients are a window behind. What differs: each fragment is written as it arrives, so an
instance is never whole in memory; the study and series are read from its first bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pydicom

from ..base import Target
from ..cache import InstanceCache, InstanceWriter
from .flight import Flight
from .received import dataset_uids
from .status import SUCCESS
from .wire import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION

__all__ = ["CacheStore"]

_PREAMBLE = b"\0" * 128 + b"DICM"  # PS3.10 7.1
_HEAD = 64 << 10  # the study and series UIDs are in the first bytes of any usual instance
_REFUSED = 0xA700  # Out of Resources: nobody wants it any more (a C-CANCEL is on its way)
_NOT_ASKED = 0xA900  # not under the target: never cached, never served
_CANNOT_UNDERSTAND = 0xC000


class CacheStore:
    """A :class:`~.native.StoreReceiver` writing into ``cache`` for ``flight``; used on the
    event loop only (every part of a study's native retrieve runs there)."""

    def __init__(
        self,
        cache: InstanceCache,
        flight: Flight,
        received: Callable[[], None],
        target: Target,
        room_timeout: float,
        source_aet: str,
    ) -> None:
        self._cache, self._flight, self._received = cache, flight, received
        self._target, self._room_timeout, self._source = target, room_timeout, source_aet
        self._last = 0  # size of the last instance kept, for the window

    def begin(self, sop_class: str, sop: str, syntax: str) -> _Incoming | int:
        if self._flight.cancel.is_set():
            return _REFUSED
        writer = self._cache.incoming(pin=True)
        try:
            writer.write(part10_head(sop_class, sop, syntax, self._source))
        except BaseException:
            writer.abort()
            raise
        return _Incoming(self, writer, sop, syntax)

    async def room(self) -> None:
        await self._flight.room(self._last, self._room_timeout)

    def _keep(self, writer: InstanceWriter, study: str, series: str, sop: str) -> int:
        target = self._target
        if study != target.study or (target.series is not None and series != target.series):
            writer.abort()
            self._flight.foreign += 1
            return _NOT_ASKED
        writer.place(study, series, sop)
        item = writer.commit()
        self._received()
        self._last = item.size
        self._flight.add(item)  # on the event loop already
        return SUCCESS


def part10_head(sop_class: str, sop: str, syntax: str, source_aet: str) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1) of a received instance, in
    Explicit VR Little Endian; bytes put together here, as pydicom would write them."""
    elements = [
        _element(0x0001, b"OB", b"\0\1"),
        _element(0x0002, b"UI", _uid(sop_class)),
        _element(0x0003, b"UI", _uid(sop)),
        _element(0x0010, b"UI", _uid(syntax)),
        _element(0x0012, b"UI", _uid(IMPLEMENTATION_UID)),
        _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION)),
        _element(0x0016, b"AE", _text(source_aet)),
    ]
    body = b"".join(elements)
    return _PREAMBLE + _element(0x0000, b"UL", struct.pack("<L", len(body))) + body


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


def _text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " * (len(raw) % 2)


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # a long VR: 2 reserved bytes and a 4-byte length (PS3.5 7.1.2)
        return struct.pack("<HH2s2xL", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


class _Incoming:
    """One instance on its way into the cache."""

    def __init__(self, store: CacheStore, writer: InstanceWriter, sop: str, syntax: str) -> None:
        self._store, self._writer, self._sop, self._syntax = store, writer, sop, syntax
        self._head = bytearray()
        self._uids: tuple[str, str] | None = None

    def write(self, fragment: memoryview) -> None:
        if self._uids is None and len(self._head) < _HEAD:
            self._head += fragment
            self._uids = self._walk()
        self._writer.write(fragment)

    def finish(self) -> int:
        uids = self._uids or self._walk() or self._read_uids()
        if uids is None:
            self._writer.abort()
            return _CANNOT_UNDERSTAND
        return self._store._keep(self._writer, uids[0], uids[1], self._sop)

    def abort(self) -> None:
        self._writer.abort()

    def _walk(self) -> tuple[str, str] | None:
        with memoryview(self._head) as view:  # released at once: the head grows after
            return dataset_uids(view, self._syntax)

    def _read_uids(self) -> tuple[str, str] | None:
        # A header longer than _HEAD, or a syntax the walker does not read (deflate, big
        # endian): pydicom reads the file written so far.
        try:
            ds = pydicom.dcmread(
                self._writer.written(),
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
            )
            return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception:
            return None
