"""The C-STOREs of one retrieve, into the cache: natively (:class:`CacheStore`, for
:mod:`.native` and :mod:`.native_scp`) or from pynetdicom's events (:func:`pynetdicom_sink`).

The same rules both ways: raw bytes behind a File Meta header, refused when every client has
gone (0xA700) or when the instance is not under the target (0xA900, never cached), then
handed to the flight, and the PACS held back while the clients are a window behind. Natively
each fragment is written as it arrives, so an instance is never whole in memory, and the
study and series are read from its first bytes; pynetdicom hands over each data set whole.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable
from typing import Any

import pydicom
from pynetdicom.dsutils import encode_file_meta

from ..base import Target
from ..cache import InstanceCache, InstanceWriter
from .flight import Flight
from .instances import study_and_series
from .received import dataset_uids
from .status import SUCCESS
from .wire import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION

__all__ = ["CacheStore", "part10_head", "pynetdicom_sink"]

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


# ---------------------------------------------------------------- pynetdicom's path


def pynetdicom_sink(
    cache: InstanceCache,
    loop: asyncio.AbstractEventLoop,
    flight: Flight,
    received: Callable[[], None],
    target: Target,
    room_timeout: float,
) -> Callable[[Any], int]:
    """The pynetdicom C-STORE handler of one retrieve (``native_dimse = false``): raw bytes
    to the cache, then tell the flight.

    It answers the PACS only once the clients are less than a window behind, so a slow
    client slows the PACS instead of filling the disk. The sub-retrieves of a study call it
    from several threads at once: the counts it keeps are taken under a lock.
    """
    lock = threading.Lock()

    def store(event: Any) -> int:
        if flight.cancel.is_set():
            return _REFUSED  # refused: nobody wants it any more (a C-CANCEL is on its way)
        data_set = event.request.DataSet  # pynetdicom keeps each data set in a BytesIO
        with data_set.getbuffer() as view:  # the bytes as sent, not a copy of them
            study, series = _uids_of(event, view)
            if study != target.study or (target.series is not None and series != target.series):
                with lock:
                    flight.foreign += 1
                return (
                    _NOT_ASKED  # not what was asked for (wrong parent): never cached, never served
                )
            sop = str(event.request.AffectedSOPInstanceUID)
            with cache.writer(study, series, sop, pin=True) as writer:
                writer.write(_PREAMBLE + encode_file_meta(event.file_meta))
                writer.write(view)
                item = writer.commit()
        with lock:
            received()
        try:
            loop.call_soon_threadsafe(flight.add, item)
        except RuntimeError:  # the loop is gone: the gateway is shutting down
            cache.unpin([item])
            return _REFUSED
        flight.wait_for_room(item.size, room_timeout)
        return SUCCESS

    return store


_PREAMBLE = b"\0" * 128 + b"DICM"  # PS3.10 7.1


def _uids_of(event: Any, view: memoryview) -> tuple[str, str]:
    """Study and Series Instance UIDs of a received data set: walked cheaply where its
    syntax allows and its header is sound, else decoded by pydicom."""
    uids = dataset_uids(view, str(event.context.transfer_syntax))
    return uids if uids is not None else study_and_series(event.encoded_dataset())
