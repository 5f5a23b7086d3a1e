"""Instances in the cache as the client gets them: parts as stored, metadata.

Blocking functions (file reads, pydicom) are called through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from ..base import DicomJson
from ..cache import file_syntax

__all__ = ["file_chunks", "metadata_of", "stored_syntax", "study_and_series", "with_bulk_uris"]

log = logging.getLogger(__name__)

_CHUNK = 4 << 20  # fewer thread hops: one read holds a typical instance whole
_BULK_THRESHOLD = 1024  # values longer than this become BulkDataURIs (PS3.18 F.2.6)
_PLACEHOLDER = "{bulk}"


def study_and_series(encoded: bytes) -> tuple[str, str]:
    """Study and Series Instance UIDs of an encoded instance, without decoding the rest."""
    ds = pydicom.dcmread(
        BytesIO(encoded),
        stop_before_pixels=True,
        specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
    )
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


async def file_chunks(path: Path, size: int | None = None) -> AsyncGenerator[bytes, None]:
    """A file in chunks of up to 4 MiB, read off the event loop; with its ``size`` known, no
    read is spent finding the end."""
    # Opened on the loop (a local open is quick): opened in a thread, a cancellation landing
    # during the await would leave the file to the garbage collector.
    handle = path.open("rb")
    left = size
    try:
        while left is None or left > 0:
            chunk = await asyncio.to_thread(
                handle.read, _CHUNK if left is None else min(left, _CHUNK)
            )
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            yield chunk
    finally:
        handle.close()


def stored_syntax(path: Path) -> str:
    """The Transfer Syntax UID in a cached file's meta information (PS3.10 7.1)."""
    with path.open("rb") as file:
        syntax = file_syntax(file.read(8192))
    if syntax is not None:
        return syntax
    return str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)


def metadata_of(path: Path) -> DicomJson:
    """DICOM JSON of a cached instance; large values as placeholder BulkDataURIs (F.2.6)."""
    return _without_empty_values(_json_of(pydicom.dcmread(path)))


def _without_empty_values(dataset: DicomJson) -> DicomJson:
    """PS3.18 F.2.5: an attribute without a value has no "Value" (pydicom writes an empty
    sequence as ``"Value": []``). Changes ``dataset`` in place and returns it."""
    for attribute in dataset.values():
        value = attribute.get("Value")
        if value == []:
            del attribute["Value"]
        elif attribute.get("vr") == "SQ" and value:
            for item in value:
                _without_empty_values(item)
    return dataset


def _as_uri(_: Any) -> str:
    return _PLACEHOLDER


def _json_of(ds: Dataset) -> DicomJson:
    """``ds`` as DICOM JSON. A value pydicom cannot convert (an IS of "1A", say: such files
    exist in PACS) is left out of its attribute, which keeps its VR, rather than failing the
    whole study's metadata; the rest of the dataset is still given."""
    try:
        out: DicomJson = ds.to_json_dict(
            bulk_data_threshold=_BULK_THRESHOLD, bulk_data_element_handler=_as_uri
        )
        return out
    except (ValueError, TypeError, OverflowError):
        pass
    kept: DicomJson = {}
    for element in ds:
        key = f"{element.tag:08X}"
        if element.VR == "SQ":
            kept[key] = {"vr": "SQ", "Value": [_json_of(item) for item in element.value]}
            continue
        try:
            kept[key] = element.to_json_dict(_as_uri, _BULK_THRESHOLD)
        except (ValueError, TypeError, OverflowError):
            log.warning("metadata: a malformed %s value of %s left out", element.VR, key)
            kept[key] = {"vr": element.VR}
    return kept


def with_bulk_uris(metadata: DicomJson, instance_url: str) -> DicomJson:
    """A copy of cached metadata with its bulk data placeholders bound to this request's URL.

    Each URI names its element by path: ``bulk/{tag}``, or ``bulk/{seq}/{item}/{tag}`` inside
    sequences (items from 1), the form :mod:`ncpeh_dicomweb.imaging.bulkdata` reads.
    """
    return _bind(metadata, f"{instance_url}/bulk/")


def _bind(dataset: DicomJson, prefix: str) -> DicomJson:
    out: DicomJson = {}
    for tag, element in dataset.items():
        if not isinstance(element, dict):
            out[tag] = element
            continue
        element = dict(element)
        if element.get("BulkDataURI") == _PLACEHOLDER:
            element["BulkDataURI"] = f"{prefix}{tag}"
        values = element.get("Value")
        if element.get("vr") == "SQ" and isinstance(values, list):
            element["Value"] = [
                _bind(item, f"{prefix}{tag}/{number}/") if isinstance(item, dict) else item
                for number, item in enumerate(values, start=1)
            ]
        out[tag] = element
    return out
