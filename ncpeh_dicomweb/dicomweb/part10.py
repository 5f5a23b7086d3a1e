"""Reading the File Meta Information at the head of a DICOM file (PS3.10 7.1), sans I/O."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Final

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

__all__ = ["NEED_MORE", "Identity", "identity_of", "transfer_syntax_of"]

NEED_MORE = ""
"""Returned while the bytes seen so far end before the Transfer Syntax UID."""

# VRs with a 4-byte length in Explicit VR Little Endian (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def transfer_syntax_of(head: bytes) -> str:
    """The Transfer Syntax UID (0002,0010) of a Part 10 file from its first bytes.

    Returns NEED_MORE if ``head`` stops before it; raises ValueError if ``head`` is not the
    start of a Part 10 file (no "DICM" prefix, or a meta group without the element).
    """
    if len(head) < 132:
        return NEED_MORE
    if head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    pos = 132
    while True:
        if len(head) < pos + 8:
            return NEED_MORE
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            raise ValueError("the File Meta Information has no Transfer Syntax UID")
        if head[pos + 4 : pos + 6] in _LONG_VRS:
            if len(head) < pos + 12:
                return NEED_MORE
            (length,) = struct.unpack_from("<I", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if element == 0x0010:
            if len(head) < start + length:
                return NEED_MORE
            return head[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length


@dataclass(frozen=True, slots=True)
class Identity:
    """Whose an instance is: what the audit records of a retrieve."""

    patient_id: str | None
    issuer: str | None
    study_uid: str | None


_IDENTITY_TAGS: Final = ["PatientID", "IssuerOfPatientID", "StudyInstanceUID"]


def identity_of(source: bytes | str) -> Identity | None:
    """The patient and study of a Part 10 file, from its first bytes (a few kB hold them: the
    rest may be cut off) or its path; None when they cannot be read."""
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a cut-off element at the end is expected
            ds = dcmread(data, stop_before_pixels=True, specific_tags=_IDENTITY_TAGS)
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError):
        return None

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value).strip() or None if value is not None else None

    found = Identity(text("PatientID"), text("IssuerOfPatientID"), text("StudyInstanceUID"))
    return found if found.patient_id or found.study_uid else None
