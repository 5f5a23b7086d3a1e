"""What the gateway reads of an instance the PACS sends, before it is cached: a pure core.

A C-STORE's data set arrives encoded in the accepted context's transfer syntax, without File
Meta Information (PS3.7 9.3.1.1). The gateway only needs its Study and Series Instance UIDs
(to refuse an instance outside the target); decoding it with pydicom costs about a millisecond
an instance, a third of what pynetdicom spends receiving a 0.5 MB CT slice. So the top-level
elements are walked up to (0020,000E) by their headers alone (PS3.5 7.1, 7.5), sequences and
items of undefined length skipped by their delimiters (PS3.5 7.5.1-7.5.2).
"""

from __future__ import annotations

import struct
from struct import unpack_from
from typing import Final

__all__ = ["dataset_uids", "walks"]

_STUDY: Final = 0x0020000D
_SERIES: Final = 0x0020000E
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_UNDEFINED: Final = 0xFFFFFFFF
# Explicit VRs with a reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_IMPLICIT_LE: Final = "1.2.840.10008.1.2"
# Little endian, not deflated: every syntax but Implicit VR (above), Explicit VR Big Endian
# and Deflated is Explicit VR Little Endian at the top level (PS3.5 A.2-A.4).
_NOT_WALKED: Final = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})


def walks(syntax: str) -> bool:
    """Whether :func:`dataset_uids` can read a data set in ``syntax`` (else: pydicom)."""
    return syntax not in _NOT_WALKED


def dataset_uids(data: bytes | memoryview, syntax: str) -> tuple[str, str] | None:
    """(Study, Series Instance UID) of an encoded data set, or None if it has not both or
    cannot be walked (a truncated or malformed header: let pydicom have its say)."""
    if not walks(syntax):
        return None
    explicit = syntax != _IMPLICIT_LE
    found: dict[int, str] = {}
    pos, end = 0, len(data)
    try:
        while pos + 8 <= end and len(found) < 2:
            tag, pos, length = _header(data, pos, explicit)
            if tag > _SERIES:
                break
            if length == _UNDEFINED:
                pos = _skip_sequence(data, pos, explicit)
                continue
            if tag in (_STUDY, _SERIES):
                if pos + length > end:  # cut short: the first bytes of a data set
                    return None
                found[tag] = bytes(data[pos : pos + length]).rstrip(b"\0 ").decode("ascii")
            pos += length
    except (struct.error, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if _STUDY not in found or _SERIES not in found:
        return None
    return found[_STUDY], found[_SERIES]


def _header(data: bytes | memoryview, pos: int, explicit: bool) -> tuple[int, int, int]:
    """(tag, where the value starts, its length) of the element at ``pos``."""
    group, element = unpack_from("<HH", data, pos)
    tag = group << 16 | element
    if group == 0xFFFE or not explicit:  # items and delimiters have no VR (PS3.5 7.5)
        return tag, pos + 8, unpack_from("<L", data, pos + 4)[0]
    if bytes(data[pos + 4 : pos + 6]) in _LONG_VRS:
        return tag, pos + 12, unpack_from("<L", data, pos + 8)[0]
    return tag, pos + 8, unpack_from("<H", data, pos + 6)[0]


def _skip_sequence(data: bytes | memoryview, pos: int, explicit: bool) -> int:
    """Past the Sequence Delimitation Item of a value of undefined length at ``pos``."""
    while True:
        tag, pos, length = _header(data, pos, explicit)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise ValueError("not an item in a sequence of undefined length")
        pos = _skip_item(data, pos, explicit) if length == _UNDEFINED else pos + length


def _skip_item(data: bytes | memoryview, pos: int, explicit: bool) -> int:
    """Past the Item Delimitation Item of an item of undefined length at ``pos``."""
    while True:
        tag, pos, length = _header(data, pos, explicit)
        if tag == _ITEM_END:
            return pos
        pos = _skip_sequence(data, pos, explicit) if length == _UNDEFINED else pos + length
