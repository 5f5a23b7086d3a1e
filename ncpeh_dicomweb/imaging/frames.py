"""Frames of a Part 10 file as stored (PS3.18 10.4.1.1.4; PS3.5 8.2, A.4).

:func:`pixel_layout` reads the header and, for encapsulated Pixel Data, the item headers only;
:func:`read_frame` then returns one frame by seeking, never reading the rest of the Pixel Data.
A native frame is a slice of the Pixel Data value; an encapsulated frame is the concatenation
of its fragments (the compressed bitstream, PS3.5 A.4). :func:`decode_frame` gives one frame as
native little-endian bytes through pydicom's pixel handlers (pylibjpeg codecs), for a client
that accepts only uncompressed frames. All blocking: call them off the event loop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length, pixel_array

from ..dicomweb.part10 import Identity
from ..errors import BackendError, GatewayError, NotAcceptable, NotFound

__all__ = ["PixelLayout", "decode_frame", "parse_frame_list", "pixel_layout", "read_frame"]

_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({_PIXEL_DATA, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
# Big endian (values swapped) and deflated (the data set is compressed as a whole).
_SEEK_UNSAFE = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_ITEM = 0xE000FFFE  # (FFFE,E000) read as one little-endian uint32
_SEQUENCE_END = 0xE0DDFFFE
# Stored syntaxes whose native frames are byte-identical to Explicit VR Little Endian's.
_LITTLE_ENDIAN_NATIVE = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.98"}
)


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where each frame of an instance lies in its file.

    ``spans[i]`` lists the ``(offset, length)`` pieces of frame ``i + 1``: one piece for a
    native frame, its fragments for an encapsulated one. ``spans`` is empty when the frames
    cannot be located by seeking (big endian, deflated, 1-bit, or an encapsulated stream
    without an offset table whose fragments are not one per frame).
    """

    transfer_syntax: str
    frames: int
    encapsulated: bool
    spans: tuple[tuple[tuple[int, int], ...], ...]
    identity: Identity | None = None  # whose the instance is, for the audit


def parse_frame_list(text: str) -> tuple[int, ...]:
    """``1,3,2`` → (1, 3, 2), in the order asked (PS3.18 10.4.1.1.4: a comma-separated list).

    Raises ValueError for anything but positive integers, and for a frame asked twice: each
    would be sent again, so a URL of a few kilobytes (``1,1,1,...``) could ask for thousands
    of copies of one frame (decoded each time if it must be).
    """
    numbers: dict[int, None] = {}
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1 or len(piece) > 9:
            raise ValueError(f"not a frame number: {piece[:20]!r}")
        if int(piece) in numbers:
            raise ValueError(f"frame {int(piece)} is asked more than once")
        numbers[int(piece)] = None
    return tuple(numbers)


def pixel_layout(path: Path) -> PixelLayout:
    """The frame layout of ``path``; NotAcceptable if it has no pixel data or is unreadable."""
    try:
        return _pixel_layout(path)
    except GatewayError:
        raise
    except Exception as exc:  # pydicom's many ways of refusing a broken file
        raise NotAcceptable(
            "the instance could not be read", detail={"reason": type(exc).__name__}
        ) from None


def _pixel_layout(path: Path) -> PixelLayout:
    with path.open("rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        start = fp.tell()
        syntax = str(ds.file_meta.TransferSyntaxUID)
        frames = int(ds.get("NumberOfFrames") or 1)
        identity = Identity(_text(ds, "PatientID"), _text(ds, "IssuerOfPatientID"), None)
        if syntax in _SEEK_UNSAFE:  # positions in the file are not positions in the data set
            return PixelLayout(syntax, frames, False, (), identity)
        head = fp.read(12)
        if len(head) < 8 or _tag(head) not in _PIXEL_TAGS:
            raise NotAcceptable("the instance has no pixel data", detail={"frames": "none"})
        implicit = syntax == "1.2.840.10008.1.2"
        length, value_at = _value_header(head, start, implicit)
        if length == 0xFFFFFFFF:
            spans = _fragment_spans(fp, value_at, ds, frames)
            return PixelLayout(syntax, frames, True, spans, identity)
        bits = int(ds.get("BitsAllocated") or 0)
        if syntax not in _LITTLE_ENDIAN_NATIVE or bits < 8:
            return PixelLayout(syntax, frames, False, (), identity)
        size = get_expected_length(ds, unit="bytes") // frames  # YBR_FULL_422 is subsampled
        if size * frames > length:
            raise BackendError(
                "the PACS holds this instance with pixel data shorter than its frames",
                detail={"frames": frames},
            )
        spans = tuple(((value_at + i * size, size),) for i in range(frames))
        return PixelLayout(syntax, frames, False, spans, identity)


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return (str(value).strip() or None) if value is not None else None


def read_frame(path: Path, layout: PixelLayout, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored: native bytes, or the compressed bitstream."""
    _check_number(layout, number)
    if not layout.spans:
        if layout.encapsulated:
            return _frame_by_markers(path, layout, number)
        return decode_frame(path, number)
    with path.open("rb") as fp:
        return b"".join(_read_at(fp, offset, length) for offset, length in layout.spans[number - 1])


def decode_frame(path: Path, number: int) -> bytes:
    """Frame ``number`` (1-based) decoded to native little-endian bytes (Explicit VR LE).

    Colour comes out as RGB (a YBR JPEG frame is converted, as PS3.18's octet-stream frames
    carry no photometric parameter of their own); 1-bit frames are packed again.
    """
    try:
        array = pixel_array(path, index=number - 1)
    except IndexError:
        raise NotFound("no such frame", detail={"frame": number}) from None
    except Exception as exc:  # a codec's own error type: the data, not the request, is at fault
        raise NotAcceptable(
            "the instance's pixel data could not be decoded",
            detail={"frame": number, "reason": type(exc).__name__},
        ) from None
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["BitsAllocated"])
    if int(ds.get("BitsAllocated") or 8) == 1:
        return np.packbits(array.astype(np.uint8).ravel(), bitorder="little").tobytes()
    little: bytes = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return little


def _check_number(layout: PixelLayout, number: int) -> None:
    if not 1 <= number <= layout.frames:
        raise NotFound(
            f"frame {number} is beyond the instance's {layout.frames} frame(s)",
            detail={"frame": number, "frames": layout.frames},
        )


def _tag(head: bytes) -> int:
    group, element = struct.unpack_from("<HH", head, 0)
    return int((group << 16) | element)


def _value_header(head: bytes, start: int, implicit: bool) -> tuple[int, int]:
    """(value length, file offset of the value) of the element whose header is ``head``."""
    if implicit:
        return struct.unpack_from("<I", head, 4)[0], start + 8
    return struct.unpack_from("<I", head, 8)[0], start + 12


def _read_at(fp: BinaryIO, offset: int, length: int) -> bytes:
    fp.seek(offset)
    data = fp.read(length)
    if len(data) != length:
        raise BackendError("the PACS holds this instance with truncated pixel data")
    return data


def _fragment_spans(
    fp: BinaryIO, value_at: int, ds: pydicom.Dataset, frames: int
) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Fragments grouped into frames (PS3.5 A.4): by the Extended or Basic Offset Table, one
    frame of everything, or one fragment per frame; () when only markers could tell."""
    fp.seek(value_at)
    items: list[tuple[int, int]] = []  # (offset of the item tag, value length)
    position = value_at
    while True:
        header = fp.read(8)
        if len(header) < 8:
            break
        tag, length = struct.unpack("<II", header)
        if tag == _SEQUENCE_END:
            break
        if tag != _ITEM:
            raise NotAcceptable("the instance's encapsulated pixel data is malformed")
        items.append((position, length))
        position += 8 + length
        fp.seek(position)
    if not items:
        raise NotAcceptable("the instance's encapsulated pixel data has no offset table")
    table_at, table_length = items[0]
    fragments = items[1:]
    if not fragments:
        raise NotAcceptable("the instance's encapsulated pixel data has no fragments")
    first = fragments[0][0]
    starts: list[int] | None = None
    extended = ds.get("ExtendedOffsetTable")
    if isinstance(extended, bytes) and len(extended) == 8 * frames:
        starts = [first + o for o in struct.unpack(f"<{frames}Q", extended)]
    elif table_length == 4 * frames and frames > 1:
        fp.seek(table_at + 8)
        starts = [first + o for o in struct.unpack(f"<{frames}I", fp.read(table_length))]
    elif frames == 1:
        starts = [first]
    elif len(fragments) == frames:
        starts = [offset for offset, _ in fragments]
    if starts is None:
        return ()
    groups: list[list[tuple[int, int]]] = [[] for _ in starts]
    frame = -1
    for offset, length in fragments:
        while frame + 1 < len(starts) and offset >= starts[frame + 1]:
            frame += 1
        if frame < 0:
            raise NotAcceptable("the instance's offset table does not match its fragments")
        groups[frame].append((offset + 8, length))
    if any(not g for g in groups):
        raise NotAcceptable("the instance's offset table does not match its fragments")
    return tuple(tuple(g) for g in groups)


def _frame_by_markers(path: Path, layout: PixelLayout, number: int) -> bytes:
    """An encapsulated frame found by pydicom's end-of-frame marker search (no offset table)."""
    try:
        ds = pydicom.dcmread(path)
        for index, frame in enumerate(
            generate_frames(ds.PixelData, number_of_frames=layout.frames), start=1
        ):
            if index == number:
                return frame
    except Exception as exc:  # pydicom's search gave up on these fragments
        raise NotAcceptable(
            "the instance's frames cannot be told apart", detail={"reason": type(exc).__name__}
        ) from None
    raise NotFound("no such frame", detail={"frame": number})
