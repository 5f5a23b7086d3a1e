"""Accept-header negotiation for WADO-RS and QIDO-RS (sans-I/O).

References: RFC 9110 section 12.5.1 (Accept, quality values, specificity) and DICOM PS3.18
section 8.7 (media types; 8.7.3 the DICOM media types and their ``transfer-syntax``
parameter; 8.7.3.5 their syntax; 8.7.4 rendered media types; 8.7.5 media types per resource)
and section 10.4 (Retrieve transaction: 10.4.1.1.3 rendered, 10.4.1.1.4 frames, 10.4.1.1.5
bulk data).

One mechanism: each resource lists the representations it can produce as :class:`Offer` rows
(a table, in the server's order of preference) and :func:`negotiate` picks one. The
per-resource functions (:func:`negotiate_instances`, :func:`negotiate_frames`,
:func:`negotiate_bulk`, :func:`negotiate_rendered`, :func:`negotiate_dicom_json`) only build
their table and map the chosen row to what the handler needs.

Decisions, beyond what the standards fix:

* Choice (RFC 9110 12.5.1): an offer gets the ``q`` of the most specific range that matches
  it; ``q=0`` there excludes it. Among the rest: highest ``q``, then the more specific range,
  then the range the client listed first, then the server's order.
* ``transfer-syntax``: a range without it selects only an offer marked ``default`` (PS3.18
  8.7.3.5.2: the default transfer syntax of the media type, Explicit VR Little Endian for
  ``application/dicom`` and ``application/octet-stream``); with it, only an offer with that
  exact value (``*`` included). PS3.18 8.7.3 forbids Implicit VR Little Endian and Explicit
  VR Big Endian on the web, so an explicit request for either is answered 406.
* Frames: ``type=application/octet-stream; transfer-syntax=*`` (what OHIF sends) gets the
  frames as stored, in the stored syntax's own media type (``image/jp2``...), which is what
  such clients expect and decode themselves.
* Parsing is tolerant: an Accept element that cannot be parsed (bad type/subtype, or a
  ``q`` that is not a number from 0 to 1) is skipped rather than rejecting the request,
  since the other elements may still name something we offer. Only a header in which no
  element parses at all is a 400, and one of more than ``MAX_RANGES`` (128) different
  elements (a repeated element counts once). Parameters without ``=`` are ignored, and so
  are parameters an offer does not know (``boundary=`` in an Accept, say).
* Legacy ``*`` (Java's default Accept) is read as ``*/*``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import multipart
from .accept import MULTIPART_RELATED, MediaRange, Offer, choose, negotiate, parse_accept
from .transfer_syntaxes import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    OCTET_STREAM,
    TRANSFER_SYNTAXES,
    TransferSyntaxInfo,
)
from .uids import is_valid_uid

__all__ = [
    "DICOM",
    "DICOM_JSON",
    "DICOM_XML",
    "DICOM_XML_MULTIPART",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "JSON",
    "MULTIPART_RELATED",
    "OCTET_STREAM",
    "TRANSFER_SYNTAXES",
    "BulkMedia",
    "FrameMedia",
    "InstanceMedia",
    "MediaRange",
    "Offer",
    "TransferSyntaxInfo",
    "negotiate",
    "negotiate_bulk",
    "negotiate_dicom_json",
    "negotiate_frames",
    "negotiate_instances",
    "negotiate_rendered",
    "parse_accept",
]

DICOM: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
JSON: Final = "application/json"
DICOM_XML: Final = "application/dicom+xml"
#: QIDO-RS and metadata as DICOM XML (PS3.18 8.7.5, PS3.19 Native DICOM Model).
DICOM_XML_MULTIPART: Final = f'{MULTIPART_RELATED}; type="{DICOM_XML}"'


# --------------------------------------------------------------------------------------
# WADO-RS instances (study, series, instance retrieve)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceMedia:
    """The negotiated representation of a WADO-RS instance retrieve (PS3.18 10.4).

    ``transfer_syntax`` is a transfer syntax UID, or ``"*"`` for "as stored, no transcoding"
    (PS3.18 8.7.3.5.2).
    """

    transfer_syntax: str

    def __post_init__(self) -> None:
        if self.transfer_syntax != "*" and not is_valid_uid(self.transfer_syntax):
            raise ValueError(f"not a transfer syntax UID: {self.transfer_syntax!r}")

    def content_type(self, boundary: str) -> str:
        """Content-Type of the response (PS3.18 8.7.3.5.1, RFC 2387 section 3).

        ``multipart/related; type="application/dicom"; transfer-syntax=UID; boundary=B``,
        without ``transfer-syntax`` when sending as stored (parts may then differ).
        """
        if self.transfer_syntax == "*":
            return multipart.content_type(DICOM, boundary)
        return multipart.content_type(DICOM, boundary, transfer_syntax=self.transfer_syntax)

    def part_content_type(self) -> str:
        """Content-Type of each part (PS3.18 8.7.9): ``application/dicom; transfer-syntax=UID``,
        or plain ``application/dicom`` when sending as stored."""
        if self.transfer_syntax == "*":
            return DICOM
        return f"{DICOM}; transfer-syntax={self.transfer_syntax}"

    def upstream_accept(self) -> str:
        """Accept header asking an upstream DICOMweb origin server for the same thing
        (PS3.18 8.7.3.5.2; ``transfer-syntax=*`` means as stored)."""
        return f'multipart/related; type="{DICOM}"; transfer-syntax={self.transfer_syntax}'


def _instance_table(
    can_produce: Callable[[str], bool] | None,
) -> list[tuple[Offer, InstanceMedia]]:
    def row(ts: str, *, default: bool = False) -> tuple[Offer, InstanceMedia]:
        return Offer(MULTIPART_RELATED, DICOM, ts, default=default), InstanceMedia(ts)

    web = [uid for uid, info in TRANSFER_SYNTAXES.items() if info.web]
    producible = [uid for uid in web if can_produce is None or can_produce(uid)]
    table = [row("*")]  # as stored: always possible, no transcoding
    if EXPLICIT_VR_LITTLE_ENDIAN in producible:
        table.insert(0, row(EXPLICIT_VR_LITTLE_ENDIAN, default=True))
    table += [row(uid) for uid in producible if uid != EXPLICIT_VR_LITTLE_ENDIAN]
    return table


_INSTANCE_TABLE: Final = tuple(_instance_table(None))


def negotiate_instances(
    accept: str | None, can_produce: Callable[[str], bool] | None = None
) -> InstanceMedia:
    """Choose the representation of a study/series/instance retrieve (PS3.18 10.4.1.1.1,
    8.7.3.5, 8.7.5; RFC 9110 12.5.1).

    Offered: ``multipart/related; type="application/dicom"`` (``multipart/*``, ``*/*``,
    no ``type`` and wildcard types also select it) with no ``transfer-syntax`` (Explicit VR
    Little Endian), ``transfer-syntax=*`` (as stored, always producible) or any web transfer
    syntax of :data:`TRANSFER_SYNTAXES` that ``can_produce(uid)`` allows (all, when
    ``can_produce`` is None). Several ``transfer-syntax`` entries with ``q`` values: the most
    preferred producible one wins. Raises :class:`~ncpeh_dicomweb.errors.NotAcceptable`
    (406) listing what can be produced, :class:`~ncpeh_dicomweb.errors.BadRequest` if the
    header cannot be parsed at all.
    """
    table = _INSTANCE_TABLE if can_produce is None else _instance_table(can_produce)
    return choose(accept, table)


# --------------------------------------------------------------------------------------
# Frames and pixel data bulk data (PS3.18 10.4.1.1.4, 8.7.3.3, Tables 8.7.3-4/-5)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameMedia:
    """The negotiated representation of a frames or pixel data retrieve (PS3.18 10.4.1.1.4).

    ``transfer_syntax``: the syntax every part carries (Explicit VR Little Endian for native
    pixels). ``media_type``: of each part (``application/octet-stream`` for native pixels,
    else the stored syntax's own type, ``image/jp2``...). ``decode``: the stored pixel data
    must be converted first (decompressed, or byte-swapped from Big Endian). ``multipart``:
    False for a single-part answer (one frame, or the whole pixel data).
    """

    transfer_syntax: str
    media_type: str
    decode: bool
    multipart: bool = True

    def __post_init__(self) -> None:
        if not is_valid_uid(self.transfer_syntax):
            raise ValueError(f"not a transfer syntax UID: {self.transfer_syntax!r}")

    def content_type(self, boundary: str | None = None) -> str:
        """Content-Type of the response: ``multipart/related; type="T";
        transfer-syntax=UID; boundary=B`` (PS3.18 8.7.3.5.1), or the part's own type when
        single-part (``boundary`` then unused)."""
        if not self.multipart:
            return self.part_content_type()
        if boundary is None:
            raise ValueError("a multipart response needs a boundary")
        return multipart.content_type(
            self.media_type, boundary, transfer_syntax=self.transfer_syntax
        )

    def part_content_type(self) -> str:
        """Content-Type of each part, e.g. ``image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90``
        (PS3.18 8.7.3.3.2: the transfer syntax is named so the client can decode)."""
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def _frame_offer(multi: bool, part: str, ts: str, *, default: bool = False) -> Offer:
    if multi:
        return Offer(MULTIPART_RELATED, part, ts, default=default)
    return Offer(part, None, ts, default=default)


def _frame_table(
    stored: str, *, single_part: bool, decodable: bool
) -> list[tuple[Offer, FrameMedia]]:
    info = TRANSFER_SYNTAXES.get(stored)
    evrle = EXPLICIT_VR_LITTLE_ENDIAN
    table: list[tuple[Offer, FrameMedia]] = []
    for multi in (True, False) if single_part else (True,):
        if info is not None and not info.compressed:
            # Native pixels go as they are (Implicit VR LE, deflated and encapsulated
            # uncompressed frames are Explicit VR LE's bytes); Big Endian is byte-swapped.
            native = FrameMedia(evrle, OCTET_STREAM, stored == EXPLICIT_VR_BIG_ENDIAN, multi)
            table.append((_frame_offer(multi, OCTET_STREAM, evrle, default=True), native))
            table.append((_frame_offer(multi, OCTET_STREAM, "*"), native))
            continue
        # Compressed, or unknown: then carried as octet-stream under its own UID, never as
        # the default (which is native pixels).
        own = info.media_type if info is not None else OCTET_STREAM
        as_stored = FrameMedia(stored, own, False, multi)
        if decodable:
            decoded = FrameMedia(evrle, OCTET_STREAM, True, multi)
            table.append((_frame_offer(multi, OCTET_STREAM, evrle, default=True), decoded))
        table.append((_frame_offer(multi, own, stored, default=own != OCTET_STREAM), as_stored))
        table.append((_frame_offer(multi, own, "*"), as_stored))
        if own != OCTET_STREAM:
            table.append((_frame_offer(multi, OCTET_STREAM, "*"), as_stored))  # OHIF asks so
    return table


def negotiate_frames(
    accept: str | None,
    stored: str,
    *,
    allow_single_part: bool = True,
    can_decode: Callable[[str], bool] | None = None,
) -> FrameMedia:
    """Choose the representation of frames (PS3.18 10.4.1.1.4) or of Pixel Data bulk data
    (10.4.1.1.5) of an instance stored in transfer syntax ``stored`` (PS3.18 8.7.3.3,
    Tables 8.7.3-4 and 8.7.3-5).

    Offered, in this order:

    * ``multipart/related; type="application/octet-stream"`` without ``transfer-syntax`` or
      with Explicit VR Little Endian: native pixels, decoded if stored compressed. This is
      also what an absent Accept, ``*/*``, ``multipart/related`` without ``type`` and
      ``type="*/*"`` get (PS3.18's default).
    * ``multipart/related; type="<stored media type>"`` without ``transfer-syntax``, with
      the stored UID or ``*``: as stored (``image/jpeg``, ``image/jls``, ``image/jp2``,
      ``image/jpx``, ``image/jphc``, ``image/dicom-rle``, ``video/...``).
    * ``multipart/related; type="application/octet-stream"; transfer-syntax=*``: as stored,
      in the stored syntax's own media type (OHIF sends this and decodes the result).
    * The same as single-part (``application/octet-stream``, ``image/jp2``...), unless
      ``allow_single_part`` is False: a single-part body carries one frame or the whole
      pixel data, so the caller passes False when several frames are asked for.

    Decoding is offered only if ``can_decode(stored)`` (None: assumed possible); a stored
    syntax not in :data:`TRANSFER_SYNTAXES` is offered as stored only as
    ``application/octet-stream; transfer-syntax=<its UID>`` or ``*``. Raises
    :class:`~ncpeh_dicomweb.errors.NotAcceptable` (406) naming what is offered for ``stored``,
    :class:`~ncpeh_dicomweb.errors.BadRequest` for an unparseable header.
    """
    if not is_valid_uid(stored):
        raise ValueError(f"not a transfer syntax UID: {stored!r}")
    decodable = can_decode is None or can_decode(stored)
    return choose(accept, _frame_table(stored, single_part=allow_single_part, decodable=decodable))


# --------------------------------------------------------------------------------------
# Other bulk data (PS3.18 10.4.1.1.5)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BulkMedia:
    """The negotiated representation of non-pixel bulk data (PS3.18 10.4.1.1.5): its bytes
    as ``application/octet-stream``, in one part of a ``multipart/related`` body or alone."""

    multipart: bool

    def content_type(self, boundary: str | None = None) -> str:
        """``multipart/related; type="application/octet-stream"; boundary=B`` (PS3.18
        8.7.3.5.1), or ``application/octet-stream`` when single-part."""
        if not self.multipart:
            return OCTET_STREAM
        if boundary is None:
            raise ValueError("a multipart response needs a boundary")
        return multipart.content_type(OCTET_STREAM, boundary)

    def part_content_type(self) -> str:
        """Content-Type of the part (PS3.18 8.7.3.3): ``application/octet-stream``."""
        return OCTET_STREAM


_BULK_TABLE: Final = tuple(
    (offer, BulkMedia(offer.media_type == MULTIPART_RELATED))
    for media_type, part_type in ((MULTIPART_RELATED, OCTET_STREAM), (OCTET_STREAM, None))
    for offer in (
        Offer(media_type, part_type, EXPLICIT_VR_LITTLE_ENDIAN, default=True),
        Offer(media_type, part_type, "*"),
    )
)


def negotiate_bulk(accept: str | None) -> BulkMedia:
    """Choose the representation of non-pixel bulk data (PS3.18 10.4.1.1.5, 8.7.3.3).

    ``multipart/related; type="application/octet-stream"`` (the default: also for an absent
    Accept, ``*/*`` and ``multipart/related; type="*/*"``), or single-part
    ``application/octet-stream`` when that is what the client prefers; ``transfer-syntax``
    may be absent, Explicit VR Little Endian or ``*``. Raises
    :class:`~ncpeh_dicomweb.errors.NotAcceptable` (406) otherwise.
    """
    return choose(accept, _BULK_TABLE)


# --------------------------------------------------------------------------------------
# Rendered and thumbnail (PS3.18 8.7.4, 10.4.1.1.3)
# --------------------------------------------------------------------------------------

_RENDERED_TABLE: Final = tuple((Offer(mt), mt) for mt in ("image/jpeg", "image/png", "image/gif"))


def negotiate_rendered(accept: str | None) -> str:
    """Choose the media type of a rendered or thumbnail resource (PS3.18 8.7.4, 10.4.1.1.3).

    ``"image/jpeg"`` (also for an absent Accept, ``*/*`` and ``image/*``), ``"image/png"``
    or ``"image/gif"``. Raises :class:`~ncpeh_dicomweb.errors.NotAcceptable` (406)
    otherwise.
    """
    return choose(accept, _RENDERED_TABLE)


# --------------------------------------------------------------------------------------
# DICOM JSON / XML (QIDO-RS results, WADO-RS metadata)
# --------------------------------------------------------------------------------------

_UTF8: Final = (("charset", "utf-8"),)
_JSON_TABLE: Final = (
    (Offer(DICOM_JSON, params=_UTF8), DICOM_JSON),
    (Offer(JSON, params=_UTF8), JSON),
    (Offer(MULTIPART_RELATED, DICOM_XML), DICOM_XML_MULTIPART),
)


def negotiate_dicom_json(accept: str | None) -> str:
    """Choose the media type of a QIDO-RS or metadata response (PS3.18 8.7.5, 10.4.1.1.2,
    10.6.3, Annex F; PS3.19 for XML).

    Returns ``"application/dicom+json"`` (also for an absent Accept, ``*/*`` and
    ``application/*``), ``"application/json"``, or :data:`DICOM_XML_MULTIPART` when the client
    prefers ``multipart/related; type="application/dicom+xml"``. Only UTF-8 is offered.
    OHIF's combined ``application/dicom+json, multipart/related;
    type=application/octet-stream`` gets DICOM JSON. Raises
    :class:`~ncpeh_dicomweb.errors.NotAcceptable` (406) or, for an unparseable header,
    :class:`~ncpeh_dicomweb.errors.BadRequest`.
    """
    return choose(accept, _JSON_TABLE)
