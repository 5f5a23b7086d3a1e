"""Bulk data of a Part 10 file, addressed as the gateway's BulkDataURIs do (PS3.18 10.4.1.1.5).

A bulk data path is ``{tag}`` for a top-level element or ``{seq}/{item}/{tag}`` (item numbers
from 1, to any depth), with 8-hex-digit tags: the form Orthanc writes, which the gateway keeps
when it rewrites a DICOMweb PACS's URIs, and writes itself for a DIMSE site.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from ..errors import GatewayError, NotAcceptable, NotFound

__all__ = ["PIXEL_DATA", "BulkPath", "parse_bulk_path", "read_bulk"]

PIXEL_DATA = 0x7FE00010

BulkPath = tuple[tuple[int, int], ...]
"""((sequence tag, item number from 1), ...) then the element: ((tag, 0),) at the end."""

_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_ITEM = re.compile(r"[1-9][0-9]{0,5}")
# Values at most this long are read when the file is opened; longer ones only if asked for.
_DEFER = 1024


def parse_bulk_path(text: str) -> BulkPath:
    """``54000100/1/54001010`` → ((0x54000100, 1), (0x54001010, 0)); ValueError if malformed."""
    pieces = text.strip("/").split("/")
    if len(pieces) % 2 != 1 or len(pieces) > 15:
        raise ValueError("a bulk data path is TAG or SEQ/ITEM/.../TAG")
    out: list[tuple[int, int]] = []
    for i in range(0, len(pieces) - 1, 2):
        tag, item = pieces[i], pieces[i + 1]
        if not _TAG.fullmatch(tag) or not _ITEM.fullmatch(item):
            raise ValueError(f"not a sequence tag and item number: {tag[:8]}/{item[:8]}")
        out.append((int(tag, 16), int(item)))
    if not _TAG.fullmatch(pieces[-1]):
        raise ValueError(f"not a tag: {pieces[-1][:16]!r}")
    out.append((int(pieces[-1], 16), 0))
    return tuple(out)


def read_bulk(path: Path, where: BulkPath) -> bytes:
    """The value of the element at ``where`` as encoded (little endian), or NotFound."""
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER)
        return _value(ds, where)
    except GatewayError:
        raise
    except Exception as exc:  # pydicom's many ways of refusing a broken file
        raise NotAcceptable(
            "the instance could not be read", detail={"reason": type(exc).__name__}
        ) from None


def _value(ds: Dataset, where: BulkPath) -> bytes:
    *items, (tag, _) = where
    for seq_tag, number in items:
        element = ds.get(seq_tag)
        if element is None or element.VR != "SQ" or not 1 <= number <= len(element.value):
            raise NotFound("no such bulk data", detail={"tag": f"{seq_tag:08X}"})
        ds = element.value[number - 1]
    if tag not in ds:
        raise NotFound("no such bulk data", detail={"tag": f"{tag:08X}"})
    element = ds.get_item(tag)
    if isinstance(element, RawDataElement) and element.value is not None:
        return bytes(element.value)  # the value as it was in the file, not decoded
    if isinstance(element, DataElement) and isinstance(element.value, bytes):
        return element.value
    return _encoded(ds[tag])


def _encoded(element: DataElement) -> bytes:
    """An element's value encoded in Explicit VR Little Endian, without its header."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_data_element(out, element)
    return bytes(out.getvalue()[8:])  # implicit VR: tag (4) + length (4), then the value
