"""Accept-header negotiation for WADO-RS and QIDO-RS (sans-I/O).

References: RFC 9110 section 12.5.1 (Accept, quality values, specificity) and DICOM PS3.18
section 8.7 (media types; 8.7.3 the DICOM media types and their ``transfer-syntax``
parameter; 8.7.3.5 their syntax) and section 10.4 (Retrieve transaction, Table 10.4.4-1).

Decisions, beyond what the standards fix:

* Without a ``transfer-syntax`` parameter instances are sent in Explicit VR Little Endian.
  PS3.18 8.7.3 forbids Implicit VR Little Endian and Explicit VR Big Endian on the web, so
  an explicit request for either is answered 406, never honoured.
* Parsing is tolerant: an Accept element that cannot be parsed (bad type/subtype, or a
  ``q`` that is not a number from 0 to 1) is skipped rather than rejecting the request,
  since the other elements may still name something we offer. Only a header in which no
  element parses at all is a 400. Parameters without ``=`` are ignored.
* ``q=0`` ranges are removed by :func:`parse_accept`, but negotiation still honours them as
  exclusions (RFC 9110 12.5.1): a representation matched by a ``q=0`` range at least as
  specific as the range that selected it is not chosen.
* Legacy ``*`` (Java's default Accept) is read as ``*/*``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from ..errors import BadRequest, NotAcceptable
from . import multipart
from .uids import is_valid_uid

__all__ = [
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "TRANSFER_SYNTAXES",
    "InstanceMedia",
    "MediaRange",
    "TransferSyntaxInfo",
    "negotiate_dicom_json",
    "negotiate_instances",
    "parse_accept",
]

EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"

DICOM: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
JSON: Final = "application/json"
DICOM_XML: Final = "application/dicom+xml"


# --------------------------------------------------------------------------------------
# Transfer syntaxes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferSyntaxInfo:
    """One transfer syntax (PS3.5 Annex A, PS3.6 Table A-1) and how DICOMweb carries it.

    ``media_type`` is the media type of a frame or pixel bulk data in this transfer syntax
    (PS3.18 8.7.3, Tables 8.7.3-4 and 8.7.3-5); ``compressed`` means the pixel data is
    encapsulated compressed data rather than native; ``lossy`` means the syntax may be lossy;
    ``web`` is False for the syntaxes PS3.18 8.7.3 says shall not be used with web services.
    """

    uid: str
    name: str
    compressed: bool
    lossy: bool
    media_type: str
    web: bool = True


def _ts(uid: str, name: str, media_type: str, kind: str, *, web: bool = True) -> TransferSyntaxInfo:
    """``kind``: "native" (uncompressed pixel data), "lossless" or "lossy" (may be lossy)."""
    return TransferSyntaxInfo(uid, name, kind != "native", kind == "lossy", media_type, web)


_OCTETS: Final = "application/octet-stream"
TRANSFER_SYNTAXES: Final[Mapping[str, TransferSyntaxInfo]] = MappingProxyType(
    {
        ts.uid: ts
        for ts in (
            _ts(
                IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", _OCTETS, "native", web=False
            ),
            _ts(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", _OCTETS, "native"),
            _ts(
                "1.2.840.10008.1.2.1.98",
                "Encapsulated Uncompressed Explicit VR Little Endian",
                _OCTETS,
                "native",
            ),
            _ts("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian", _OCTETS, "native"),
            _ts(
                EXPLICIT_VR_BIG_ENDIAN,
                "Explicit VR Big Endian (Retired)",
                _OCTETS,
                "native",
                web=False,
            ),
            _ts("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", "image/jpeg", "lossy"),
            _ts("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 & 4)", "image/jpeg", "lossy"),
            _ts(
                "1.2.840.10008.1.2.4.57",
                "JPEG Lossless, Non-Hierarchical (Process 14)",
                "image/jpeg",
                "lossless",
            ),
            _ts(
                "1.2.840.10008.1.2.4.70",
                "JPEG Lossless, Non-Hierarchical, First-Order Prediction"
                " (Process 14 [Selection Value 1])",
                "image/jpeg",
                "lossless",
            ),
            _ts(
                "1.2.840.10008.1.2.4.80",
                "JPEG-LS Lossless Image Compression",
                "image/jls",
                "lossless",
            ),
            _ts(
                "1.2.840.10008.1.2.4.81",
                "JPEG-LS Lossy (Near-Lossless) Image Compression",
                "image/jls",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.90",
                "JPEG 2000 Image Compression (Lossless Only)",
                "image/jp2",
                "lossless",
            ),
            _ts("1.2.840.10008.1.2.4.91", "JPEG 2000 Image Compression", "image/jp2", "lossy"),
            _ts(
                "1.2.840.10008.1.2.4.92",
                "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)",
                "image/jpx",
                "lossless",
            ),
            _ts(
                "1.2.840.10008.1.2.4.93",
                "JPEG 2000 Part 2 Multi-component Image Compression",
                "image/jpx",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level", "video/mpeg", "lossy"
            ),
            _ts(
                "1.2.840.10008.1.2.4.100.1",
                "Fragmentable MPEG2 Main Profile / Main Level",
                "video/mpeg",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.101", "MPEG2 Main Profile / High Level", "video/mpeg", "lossy"
            ),
            _ts(
                "1.2.840.10008.1.2.4.101.1",
                "Fragmentable MPEG2 Main Profile / High Level",
                "video/mpeg",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.102",
                "MPEG-4 AVC/H.264 High Profile / Level 4.1",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.102.1",
                "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.103",
                "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.103.1",
                "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.104",
                "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.104.1",
                "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.105",
                "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.105.1",
                "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.106",
                "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.106.1",
                "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
                "video/mp4",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.107",
                "HEVC/H.265 Main Profile / Level 5.1",
                "video/H265",
                "lossy",
            ),
            _ts(
                "1.2.840.10008.1.2.4.108",
                "HEVC/H.265 Main 10 Profile / Level 5.1",
                "video/H265",
                "lossy",
            ),
            _ts("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", "image/jxl", "lossless"),
            _ts("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", "image/jxl", "lossy"),
            _ts("1.2.840.10008.1.2.4.112", "JPEG XL", "image/jxl", "lossy"),
            _ts(
                "1.2.840.10008.1.2.4.201",
                "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
                "image/jphc",
                "lossless",
            ),
            _ts(
                "1.2.840.10008.1.2.4.202",
                "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
                "image/jphc",
                "lossless",
            ),
            _ts(
                "1.2.840.10008.1.2.4.203",
                "High-Throughput JPEG 2000 Image Compression",
                "image/jphc",
                "lossy",
            ),
            _ts("1.2.840.10008.1.2.5", "RLE Lossless", "image/dicom-rle", "lossless"),
        )
    }
)


# --------------------------------------------------------------------------------------
# Accept parsing (RFC 9110 12.5.1)
# --------------------------------------------------------------------------------------

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 12.4.2 wants 0[.ddd] or 1[.000]; we also take ".5", "1.0000" and the like.
_QVALUE: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header (RFC 9110 12.5.1).

    ``type`` and ``subtype`` are lower-cased and may be ``*``; ``params`` has lower-cased
    names and unquoted values (as sent, case kept) and never contains ``q``.
    """

    type: str
    subtype: str
    params: Mapping[str, str] = field(hash=False)
    q: float = 1.0

    @property
    def specificity(self) -> tuple[int, int, int]:
        """RFC 9110 12.5.1 precedence: concrete type, concrete subtype, parameter count."""
        return (self.type != "*", self.subtype != "*", len(self.params))

    def matches(self, type_: str, subtype: str) -> bool:
        """True if this range covers ``type_/subtype`` (both lower-case, concrete)."""
        return self.type in ("*", type_) and self.subtype in ("*", subtype)


_ANY: Final = MediaRange("*", "*", MappingProxyType({}), 1.0)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except inside quoted strings (RFC 9110 5.6.4, with ``\\`` escapes)."""
    if '"' not in text:
        return text.split(sep)
    out: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == sep:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _parse_range(element: str) -> MediaRange | None:
    """Parse one Accept element; None if it cannot be understood."""
    pieces = _split_outside_quotes(element, ";")
    mtype = pieces[0].strip().lower()
    if mtype == "*":
        mtype = "*/*"
    type_, slash, subtype = mtype.partition("/")
    if (
        not slash
        or not _TOKEN.fullmatch(type_)
        or not _TOKEN.fullmatch(subtype)
        or (type_ == "*" and subtype != "*")
    ):
        return None
    params: dict[str, str] = {}
    q = 1.0
    seen_q = False
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not eq or not _TOKEN.fullmatch(name):
            continue  # empty ("a/b;;") or valueless parameter: ignore it
        value = _unquote(value.strip())
        if name == "q":
            if seen_q:
                continue
            seen_q = True
            if not _QVALUE.fullmatch(value) or not 0.0 <= (q := float(value)) <= 1.0:
                return None
        else:
            params.setdefault(name, value)
    return MediaRange(type_, subtype, MappingProxyType(params), q)


def _parse_all(header: str | None) -> list[MediaRange]:
    """Every parseable range, q=0 included, sorted; [*/*] for an absent or empty header."""
    if header is None or not header.strip():
        return [_ANY]
    elements = [e for e in _split_outside_quotes(header, ",") if e.strip()]
    if not elements:  # only empty list elements (",  ,"), allowed by RFC 9110 5.6.1
        return [_ANY]
    ranges = [r for r in map(_parse_range, elements) if r is not None]
    if not ranges:
        raise BadRequest(
            "the Accept header could not be parsed (RFC 9110 12.5.1)",
            detail={"accept": header[:200]},
        )
    # Stable sort: equal q and specificity keep the client's order.
    ranges.sort(key=lambda r: (-r.q, tuple(-x for x in r.specificity)))
    return ranges


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header (RFC 9110 12.5.1) into ranges, most preferred first.

    Sorted by ``q`` descending, then specificity (RFC 9110 12.5.1: concrete type, concrete
    subtype, more parameters), then header order. ``None`` or an empty header gives
    ``[*/*]``. Ranges with ``q=0`` are left out. Unparseable elements are skipped; if none
    parses at all, :class:`~ncpeh_dicomweb.errors.BadRequest` is raised.
    """
    return [r for r in _parse_all(header) if r.q > 0]


def _excluded(
    type_: str,
    subtype: str,
    params: Mapping[str, str],
    chosen_by: MediaRange,
    ranges: Sequence[MediaRange],
) -> bool:
    """True if a q=0 range at least as specific as ``chosen_by`` matches the representation
    (RFC 9110 12.5.1: the most specific matching range gives a representation its q).

    A range parameter the representation does not have is ignored; one it has must match
    (case-insensitively).
    """
    for r in ranges:
        if r.q > 0 or not r.matches(type_, subtype) or r.specificity < chosen_by.specificity:
            continue
        if all(params.get(k, v).lower() == v.lower() for k, v in r.params.items()):
            return True
    return False


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _type_param(r: MediaRange) -> str:
    return r.params.get("type", "").strip().lower()


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


_INSTANCE_SUPPORTED: Final[tuple[str, ...]] = (
    f'multipart/related; type="{DICOM}"; transfer-syntax=*',
    *(
        f'multipart/related; type="{DICOM}"; transfer-syntax={uid}'
        for uid, info in TRANSFER_SYNTAXES.items()
        if info.web
    ),
)
_INSTANCE_HINT: Final = (
    f'acceptable: multipart/related; type="{DICOM}" with no transfer-syntax '
    f"(Explicit VR Little Endian), transfer-syntax=* (as stored) or a supported transfer "
    f"syntax UID"
)


def _instance_candidate(r: MediaRange) -> InstanceMedia | str:
    """What range ``r`` selects for an instance retrieve, or why it selects nothing."""
    if r.type == "*" and r.subtype == "*":
        return InstanceMedia(EXPLICIT_VR_LITTLE_ENDIAN)
    if r.type == "application" and r.subtype == "dicom":
        return (
            f"single-part {DICOM} is not offered for this resource;"
            f' multipart/related; type="{DICOM}" is required'
        )
    if not r.matches("multipart", "related"):
        return f"{r.type}/{r.subtype} is not offered for this resource"
    part_type = _type_param(r)
    if part_type not in ("", DICOM, "application/*", "*/*"):
        return f'multipart/related; type="{part_type}" is not offered for this resource'
    if "transfer-syntax" not in r.params:
        return InstanceMedia(EXPLICIT_VR_LITTLE_ENDIAN)
    ts = r.params["transfer-syntax"].strip()
    if ts == "*":
        return InstanceMedia("*")
    info = TRANSFER_SYNTAXES.get(ts)
    if info is None:
        return f'transfer syntax "{ts[:64]}" is not supported'
    if not info.web:
        return f"transfer syntax {ts} ({info.name}) is not used with DICOMweb (PS3.18 8.7.3)"
    return InstanceMedia(ts)


def negotiate_instances(accept: str | None) -> InstanceMedia:
    """Choose the representation of a study/series/instance retrieve (PS3.18 10.4.4,
    8.7.3.5, Table 10.4.4-1; RFC 9110 12.5.1).

    Ranges are tried in preference order; the first that selects something we offer wins.
    Offered: ``multipart/related`` with ``type="application/dicom"`` (or no type, or a
    wildcard type) and any ``transfer-syntax`` of :data:`TRANSFER_SYNTAXES` except Implicit
    VR Little Endian and Big Endian, or ``*`` for as-stored; ``multipart/*`` and ``*/*``.
    No ``transfer-syntax`` means Explicit VR Little Endian. Raises
    :class:`~ncpeh_dicomweb.errors.NotAcceptable` (406) listing the reasons otherwise, and
    :class:`~ncpeh_dicomweb.errors.BadRequest` if the header cannot be parsed at all.
    """
    ranges = _parse_all(accept)
    reasons: list[str] = []
    for r in ranges:
        if r.q <= 0:
            continue
        cand = _instance_candidate(r)
        if isinstance(cand, str):
            reasons.append(cand)
            continue
        rep_params = {"type": DICOM, "transfer-syntax": cand.transfer_syntax}
        if _excluded("multipart", "related", rep_params, r, ranges):
            reasons.append(f"{cand.upstream_accept()} is excluded by q=0")
            continue
        return cand
    raise NotAcceptable(
        _not_acceptable_message(reasons, _INSTANCE_HINT),
        detail={"accept": (accept or "")[:200], "supported": list(_INSTANCE_SUPPORTED)},
    )


def _not_acceptable_message(reasons: list[str], hint: str) -> str:
    why = "; ".join(_dedupe(reasons)) or "the Accept header excludes every media type"
    return f"no acceptable representation ({why}); {hint}"


# --------------------------------------------------------------------------------------
# DICOM JSON (QIDO-RS results, WADO-RS metadata)
# --------------------------------------------------------------------------------------

_JSON_SUPPORTED: Final[tuple[str, ...]] = (DICOM_JSON, JSON)
_JSON_HINT: Final = f"acceptable: {DICOM_JSON} or {JSON}"


def _json_candidates(r: MediaRange) -> tuple[str, ...] | str:
    charset = r.params.get("charset", "utf-8").strip().lower()
    if charset not in ("utf-8", "utf8"):
        return f"charset {charset[:40]} is not offered (DICOM JSON is UTF-8)"
    if r.type == "*" or (r.type == "application" and r.subtype == "*"):
        return (DICOM_JSON, JSON)
    if r.type == "application" and r.subtype == "dicom+json":
        return (DICOM_JSON,)
    if r.type == "application" and r.subtype == "json":
        return (JSON,)
    if (r.type == "application" and r.subtype == "dicom+xml") or (
        r.matches("multipart", "related") and _type_param(r) == DICOM_XML
    ):
        return f"{DICOM_XML} is not supported yet"
    if r.matches("multipart", "related"):
        return f'multipart/related; type="{_type_param(r)}" is not offered for this resource'
    return f"{r.type}/{r.subtype} is not offered for this resource"


def negotiate_dicom_json(accept: str | None) -> str:
    """Choose the media type of a QIDO-RS or metadata response (PS3.18 8.7.3, 10.6, F.2).

    Returns ``"application/dicom+json"``, or ``"application/json"`` when the client accepts
    only that or prefers it by ``q``. ``application/*``, ``*/*`` and an absent header give
    DICOM JSON; XML (``application/dicom+xml``, also as a multipart ``type``) is not offered
    yet. Raises
    :class:`~ncpeh_dicomweb.errors.NotAcceptable` (406) or, for an unparseable header,
    :class:`~ncpeh_dicomweb.errors.BadRequest`.
    """
    ranges = _parse_all(accept)
    reasons: list[str] = []
    best: dict[str, float] = {}  # media type -> q of the first range that selects it
    for r in ranges:
        if r.q <= 0:
            continue
        cands = _json_candidates(r)
        if isinstance(cands, str):
            reasons.append(cands)
            continue
        for media_type in cands:
            if media_type in best:
                continue
            type_, _, subtype = media_type.partition("/")
            if _excluded(type_, subtype, {"charset": "utf-8"}, r, ranges):
                reasons.append(f"{media_type} is excluded by q=0")
            else:
                best[media_type] = r.q
    if best:
        # Highest q wins; on a tie DICOM JSON, the media type PS3.18 defines.
        return max(best, key=lambda mt: (best[mt], mt == DICOM_JSON))
    raise NotAcceptable(
        _not_acceptable_message(reasons, _JSON_HINT),
        detail={"accept": (accept or "")[:200], "supported": list(_JSON_SUPPORTED)},
    )
