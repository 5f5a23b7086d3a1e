"""The transfer syntaxes the gateway knows and how DICOMweb carries each (sans-I/O).

A table, not code: UID, name, whether pixel data are compressed (encapsulated) and may be lossy,
the media type of a frame or of pixel bulk data in that syntax, and whether PS3.18 lets it be
used on the web at all.

References: PS3.5 Annex A and PS3.6 Table A-1 (the transfer syntaxes); PS3.18 section 8.7.3
(media types of DICOM resources and their ``transfer-syntax`` parameter), Tables 8.7.3-4 and
8.7.3-5 (transfer syntax UIDs and media types for pixel data and frames). PS3.18 8.7.3 forbids
Implicit VR Little Endian and Explicit VR Big Endian with web services: they are listed (a PACS
may store them) with ``web=False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "OCTET_STREAM",
    "TRANSFER_SYNTAXES",
    "TransferSyntaxInfo",
]

EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"

#: Media type of native (uncompressed) pixel data and of other bulk data (PS3.18 8.7.3).
OCTET_STREAM: Final = "application/octet-stream"


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


TRANSFER_SYNTAXES: Final[Mapping[str, TransferSyntaxInfo]] = MappingProxyType(
    {
        ts.uid: ts
        for ts in (
            _ts(
                IMPLICIT_VR_LITTLE_ENDIAN,
                "Implicit VR Little Endian",
                OCTET_STREAM,
                "native",
                web=False,
            ),
            _ts(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian", OCTET_STREAM, "native"),
            _ts(
                "1.2.840.10008.1.2.1.98",
                "Encapsulated Uncompressed Explicit VR Little Endian",
                OCTET_STREAM,
                "native",
            ),
            _ts(
                "1.2.840.10008.1.2.1.99",
                "Deflated Explicit VR Little Endian",
                OCTET_STREAM,
                "native",
            ),
            _ts(
                EXPLICIT_VR_BIG_ENDIAN,
                "Explicit VR Big Endian (Retired)",
                OCTET_STREAM,
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
