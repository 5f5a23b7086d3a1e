"""Transfer syntax transcoding of whole DICOM Part 10 instances for WADO-RS retrieves.

A client may ask for instances in a transfer syntax other than the one the PACS stored them in
(PS3.18 8.7.3, 8.7.3.5.2). The gateway must know *before* a multipart response starts whether it
can produce what was asked for every instance, so a study of mixed stored syntaxes is never cut
mid-stream: :func:`producible` answers from the transfer syntaxes alone (a pure capability
table), and :func:`transcode` does the work on one file, in a worker process.

What can be produced (PS3.5 Annex A, section 8.2):

* The same syntax: always (the file is copied untouched).
* Implicit VR Little Endian and Explicit VR Big Endian: never (PS3.18 8.7.3 forbids them on the
  web), whatever was stored.
* An instance without pixel data: any other syntax used on the web; the data set is written
  Explicit VR Little Endian (deflated for Deflated Explicit VR Little Endian), which is how every
  encapsulated syntax encodes it (PS3.5 A.4).
* Video (MPEG-2, H.264, HEVC): only as stored; nothing here decodes or encodes video.
* Explicit VR Little Endian or Deflated: from a native syntax (data set re-encoded, byte order
  swapped for Big Endian) or from any syntax an installed decoder reads (PS3.5 8.2: the colour
  model and image pixel attributes are made to match the decoded pixels, e.g. YBR_FULL_422
  JPEG becomes RGB).
* RLE, JPEG-LS (lossless and near-lossless), JPEG 2000 (lossless and lossy): from any syntax an
  installed decoder reads, if pydicom's encoder for the target is available. Lossless targets
  are pixel-exact. A lossy result carries Lossy Image Compression "01" with its method and
  ratio (PS3.3 C.7.6.1.1.5); so does anything made from lossy stored pixel data.

Whether one particular image fits the target (float pixel data, 32-bit samples in RLE or
JPEG-LS, palette colour in a lossy syntax...) is only known from the file: :func:`transcode`
raises :class:`~ncpeh_dicomweb.errors.NotAcceptable` then.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import compress, get_expected_length, pack_bits
from pydicom.uid import UID

from ..dicomweb.transfer_syntaxes import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAXES,
)
from ..errors import NotAcceptable

__all__ = ["decodable", "encodable", "producible", "targets_for", "transcode"]

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS: Final = "1.2.840.10008.1.2.5"
JPEG_BASELINE: Final = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED: Final = "1.2.840.10008.1.2.4.51"
JPEG_LS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS: Final = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"
JPEG_2000: Final = "1.2.840.10008.1.2.4.91"
HTJ2K: Final = "1.2.840.10008.1.2.4.203"

# PS3.5 A.1-A.3, A.5: syntaxes whose pixel data is native (not encapsulated).
_NATIVE: Final = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)
# The native syntaxes we write: the two PS3.18 8.7.3 allows on the web.
_NATIVE_TARGETS: Final = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN})


@dataclass(frozen=True, slots=True)
class _Encoding:
    """How we write pixel data in one encapsulated syntax (PS3.5 8.2, A.4).

    ``options`` go to pydicom's encoder (the lossy parameters); ``mct`` is the Photometric
    Interpretation of RGB pixel data compressed with the multiple-component transformation
    (PS3.5 8.2.4), None where there is none; ``method`` is the Lossy Image Compression Method
    (PS3.3 C.7.6.1.1.5.1) of a lossy result, None for a lossless one.
    """

    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    mct: str | None = None
    method: str | None = None


# Near-lossless JPEG-LS: every sample within +-2 of the original. Lossy JPEG 2000: 10:1, a
# conservative ratio for diagnostic images. Both are our choice; the Standard leaves it open.
JPEG_LS_NEAR: Final = 2
JPEG_2000_RATIO: Final = 10.0

_ENCODINGS: Final[Mapping[str, _Encoding]] = MappingProxyType(
    {
        RLE_LOSSLESS: _Encoding(),
        JPEG_LS_LOSSLESS: _Encoding(),
        JPEG_LS_NEAR_LOSSLESS: _Encoding(
            MappingProxyType({"jls_error": JPEG_LS_NEAR}), method="ISO_14495_1"
        ),
        JPEG_2000_LOSSLESS: _Encoding(mct="YBR_RCT"),
        JPEG_2000: _Encoding(
            MappingProxyType({"j2k_cr": [JPEG_2000_RATIO]}), mct="YBR_ICT", method="ISO_15444_1"
        ),
    }
)

# Lossy Image Compression Method of pixel data stored in a lossy syntax (PS3.3 C.7.6.1.1.5.1),
# and whether that syntax is always lossy (JPEG's DCT) or only may be (a "00" in the file is
# then believed: JPEG-LS with NEAR 0, a reversible JPEG 2000 wavelet).
_STORED_LOSSY: Final[Mapping[str, tuple[str, bool]]] = MappingProxyType(
    {
        JPEG_BASELINE: ("ISO_10918_1", True),
        JPEG_EXTENDED: ("ISO_10918_1", True),
        JPEG_LS_NEAR_LOSSLESS: ("ISO_14495_1", False),
        JPEG_2000: ("ISO_15444_1", False),
        HTJ2K: ("ISO_15444_15", False),
    }
)

# Lossy JPEG applies its colour transform as part of the codec (PS3.5 8.2.1): decoded pixels
# are RGB. Elsewhere the stored colour model is kept, so lossless round trips stay exact.
_DECODE_AS_RGB: Final = frozenset({JPEG_BASELINE, JPEG_EXTENDED})

# PS3.5 7.3: byte order applies to each word of these VRs (OB, UN and strings have none).
_WORD_BYTES: Final[Mapping[str, int]] = MappingProxyType(
    {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
)

_PIXEL_DATA: Final = 0x7FE00010
# PS3.3 C.7.6.3: the three pixel data elements; only Pixel Data can be encapsulated.
_PIXEL_KEYWORDS: Final = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Stale once the pixel data is re-encoded (PS3.3 C.7.6.3.1.8); pydicom adds them if needed.
_OFFSET_TABLES: Final = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")
# PS3.10 7.1: they name the implementation that wrote the file; pydicom fills in its own.
_WRITER_META: Final = ("ImplementationClassUID", "ImplementationVersionName")

# What third-party codecs raise on pixel data they cannot handle (pydicom wraps plugin
# failures in RuntimeError, its checks raise ValueError/AttributeError, Pillow raises OSError).
_CODEC_ERRORS: Final = (ValueError, RuntimeError, AttributeError, TypeError, KeyError, OSError)

_AS_STORED_HINT: Final = "ask for transfer-syntax=* to receive instances as stored"


# --------------------------------------------------------------------------------------
# Capabilities (pure: syntaxes in, answers out)
# --------------------------------------------------------------------------------------


@functools.cache
def decodable(stored: str) -> bool:
    """True if an installed decoder reads pixel data in transfer syntax ``stored``
    (PS3.5 Annex A; native syntaxes included, they are read by pydicom itself)."""
    try:
        return bool(get_decoder(stored).is_available)
    except NotImplementedError:  # pydicom has no decoder for it at all (video, JPEG XL)
        return False


@functools.cache
def encodable(target: str) -> bool:
    """True if :func:`transcode` can write pixel data in transfer syntax ``target``.

    The native syntaxes PS3.18 8.7.3 allows on the web (Explicit VR Little Endian and its
    deflated form) always; RLE, JPEG-LS lossless and near-lossless, JPEG 2000 lossless and
    lossy if pydicom's encoder for them is available (PS3.5 8.2). Never Implicit VR Little
    Endian or Explicit VR Big Endian, which are never sent on the web.
    """
    if target in _NATIVE_TARGETS:
        return True
    if target not in _ENCODINGS:
        return False
    try:
        return bool(get_encoder(target).is_available)
    except NotImplementedError:
        return False


def _is_video(uid: str) -> bool:
    info = TRANSFER_SYNTAXES.get(uid)
    return info is not None and info.media_type.startswith("video/")


def _readable(uid: str) -> bool:
    """pydicom knows how the data set of a file in ``uid`` is encoded, to read or to write."""
    return bool(UID(uid).is_transfer_syntax)


def _name(uid: str) -> str:
    info = TRANSFER_SYNTAXES.get(uid)
    return f"{uid} ({info.name})" if info is not None else uid


def _refusal(stored: str, target: str, has_pixel_data: bool) -> str | None:
    """Why an instance stored as ``stored`` cannot be sent as ``target``; None if it can."""
    info = TRANSFER_SYNTAXES.get(target)
    if info is None:
        return f"transfer syntax {target} is not supported"
    if not info.web:
        return f"{_name(target)} is not used with DICOMweb (PS3.18 8.7.3)"
    if stored == target:
        return None
    if not _readable(stored):
        return f"the gateway cannot read instances stored as {_name(stored)}"
    if not _readable(target):
        return f"the gateway cannot write instances as {_name(target)}"
    if not has_pixel_data:
        return None
    if _is_video(stored) or _is_video(target):
        return "video is only sent in the transfer syntax it was stored in"
    if stored not in _NATIVE and not decodable(stored):
        return f"the gateway cannot decode pixel data stored as {_name(stored)}"
    if not encodable(target):
        return f"the gateway cannot encode pixel data as {_name(target)}"
    return None


def producible(stored: str, target: str, *, has_pixel_data: bool = True) -> bool:
    """Can an instance stored as ``stored`` be sent as ``target`` (PS3.18 8.7.3.5.2)?

    Yes for the same syntax; never for Implicit VR Little Endian or Explicit VR Big Endian
    (PS3.18 8.7.3); without pixel data, yes for any other web syntax (the data set is
    re-encoded, PS3.5 A.4); video only as stored; Explicit VR Little Endian (or deflated) from
    a native syntax or a decodable one; a compressed syntax (PS3.5 8.2) from a decodable one
    if :func:`encodable`. Decided from the syntaxes alone, so a whole study can be checked
    before its response starts; a particular image may still not fit (see :func:`transcode`).
    """
    return _refusal(stored, target, has_pixel_data) is None


def targets_for(stored: str) -> tuple[str, ...]:
    """Every transfer syntax an instance with pixel data stored as ``stored`` can be sent in,
    in the order of the table of known syntaxes (for 406 messages, PS3.18 8.7.3.5.2)."""
    return tuple(uid for uid in TRANSFER_SYNTAXES if producible(stored, uid))


# --------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------


def transcode(src: Path, dst: Path, target: str) -> str:
    """Write the Part 10 file ``src`` (as stored) to ``dst`` in transfer syntax ``target``
    and return the syntax written (PS3.18 8.7.3.5.2, PS3.5 Annex A and 8.2, PS3.10 7.1).

    Native to native re-encodes the data set (byte order swapped from Big Endian, inflated
    from Deflated); encapsulated pixel data is decoded, with Photometric Interpretation,
    Planar Configuration and High Bit made to match; a compressed target gets every frame
    encoded and encapsulated with a Basic Offset Table (PS3.5 A.4). Encapsulated pixel data in
    sequence items (icons) becomes native. Lossy results and lossy stored pixel data carry
    Lossy Image Compression "01" with method and ratio (PS3.3 C.7.6.1.1.5). File meta keeps the
    SOP Class and Instance UIDs (the data set's, should the stored meta disagree); Transfer
    Syntax UID and the writer's implementation change.

    One instance in memory at a time; a top-level function so a ``ProcessPoolExecutor`` can
    run it. Raises :class:`~ncpeh_dicomweb.errors.NotAcceptable` for what cannot be produced
    (see :func:`producible`) and for an image that does not fit ``target`` or cannot be
    decoded, or that pydicom cannot read or write (a malformed element).
    """
    try:
        return _transcode(src, dst, target)
    except NotAcceptable:
        raise
    except Exception as exc:  # pydicom's many ways of refusing a malformed file
        raise _not_acceptable(
            f"it cannot be read or written ({type(exc).__name__})", "unknown", target
        ) from None


def _transcode(src: Path, dst: Path, target: str) -> str:
    ds = _read(src)
    stored = str(ds.file_meta.get("TransferSyntaxUID", ""))
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if (why := _refusal(stored, target, keyword is not None)) is not None:
        raise _not_acceptable(why, stored, target)
    if stored == target:
        shutil.copyfile(src, dst)
        return target
    if keyword not in (None, "PixelData") and target not in _NATIVE_TARGETS:
        raise _not_acceptable(f"{keyword} has no encapsulated form (PS3.5 A.4)", stored, target)

    image = keyword == "PixelData"
    if image and stored in _NATIVE and len(ds.PixelData) < get_expected_length(ds):
        raise _not_acceptable("its pixel data is truncated (PS3.5 8.1.1)", stored, target)

    pixels: NDArray[Any] | None = None
    if image and not (stored in _NATIVE and target in _NATIVE_TARGETS):
        stored_bytes = len(ds.PixelData)
        pixels = _decode(ds, stored, target)
        _take_pixel_data(ds)
        _note_stored_loss(ds, stored, _native_size(ds, pixels) / max(stored_bytes, 1))
    if stored == EXPLICIT_VR_BIG_ENDIAN:
        _to_little_endian(ds)
    if stored not in _NATIVE:
        _nested_to_native(ds, stored, target)
    if pixels is not None:
        if target in _ENCODINGS:
            _encode(ds, pixels, target, stored)
        else:
            _set_native(ds, pixels, stored, target)
        del pixels

    ds.file_meta.TransferSyntaxUID = UID(target)
    for keyword_ in _WRITER_META:
        if keyword_ in ds.file_meta:
            delattr(ds.file_meta, keyword_)
    dcmwrite(dst, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return target


def _not_acceptable(why: str, stored: str, target: str) -> NotAcceptable:
    return NotAcceptable(
        f"an instance stored as {_name(stored)} cannot be sent as {_name(target)}: {why};"
        f" {_AS_STORED_HINT}",
        detail={"stored": stored, "requested": target, "producible": list(targets_for(stored))},
    )


def _read(src: Path) -> Dataset:
    try:
        ds = dcmread(src)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise NotAcceptable(
            f"the stored instance is not a readable DICOM Part 10 file (PS3.10 7): {exc};"
            f" {_AS_STORED_HINT}"
        ) from exc
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise NotAcceptable(
            f"the stored instance has no Transfer Syntax UID (PS3.10 7.1); {_AS_STORED_HINT}"
        )
    if not len(ds):  # pydicom reads a file cut short after its meta without a word
        raise NotAcceptable(f"the stored instance has an empty data set; {_AS_STORED_HINT}")
    return ds


def _frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    return int(value) if value else 1


def _decode(ds: Dataset, stored: str, target: str) -> NDArray[Any]:
    """All frames as one array (frames, rows, columns[, samples]), planar configuration 0;
    ``ds``'s image pixel attributes updated to describe it (PS3.5 8.2)."""
    out: NDArray[Any] | None = None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    decoded = 0
    try:
        frames = get_decoder(stored).iter_array(ds, as_rgb=stored in _DECODE_AS_RGB)
        for decoded, (frame, props) in enumerate(frames, start=1):
            if out is None:
                out = np.empty((_frames(ds), *frame.shape), dtype=frame.dtype)
            out[decoded - 1] = frame
            photometric = str(props["photometric_interpretation"])
    except (*_CODEC_ERRORS, IndexError) as exc:
        why = f"its pixel data cannot be decoded ({_brief(exc)})"
        raise _not_acceptable(why, stored, target) from exc
    if out is None or decoded != len(out):
        why = f"its pixel data holds {decoded} of {_frames(ds)} frames"
        raise _not_acceptable(why, stored, target)
    ds.PhotometricInterpretation = photometric
    if int(ds.SamplesPerPixel) > 1:
        ds.PlanarConfiguration = 0
    return out


def _brief(exc: BaseException) -> str:
    """A codec's message on one line, short enough for a client."""
    return " ".join(str(exc).split())[:300]


def _take_pixel_data(ds: Dataset) -> None:
    """Drop the stored Pixel Data (decoded by now) and what describes its encapsulation."""
    del ds[_PIXEL_DATA]
    for keyword in _OFFSET_TABLES:
        if keyword in ds:
            delattr(ds, keyword)


def _native_size(ds: Dataset, pixels: NDArray[Any]) -> float:
    """Bytes of ``pixels`` as native pixel data (PS3.5 8.1.1)."""
    return pixels.size * int(ds.BitsAllocated) / 8


def _set_native(ds: Dataset, pixels: NDArray[Any], stored: str, target: str) -> None:
    """Native Pixel Data (PS3.5 8.1.1): little endian, bit-packed for Bits Allocated 1; OB up
    to 8 bits allocated, else OW (pydicom pads an odd length when it writes)."""
    bits = int(ds.BitsAllocated)
    if bits == 1:
        data = pack_bits(pixels)
    elif bits in (8, 16, 32, 64) and pixels.dtype.itemsize * 8 <= bits:
        data = pixels.astype(f"<{pixels.dtype.kind}{bits // 8}", copy=False).tobytes()
    else:
        raise _not_acceptable(
            f"decoded {pixels.dtype} samples do not fit Bits Allocated {bits}", stored, target
        )
    ds.BitsStored = int(ds.BitsStored)
    ds.HighBit = int(ds.BitsStored) - 1  # PS3.3 C.7.6.3.1: one less than Bits Stored
    ds[_PIXEL_DATA] = DataElement(_PIXEL_DATA, "OB" if bits <= 8 else "OW", data)


def _encode(ds: Dataset, pixels: NDArray[Any], target: str, stored: str) -> None:
    """Encode every frame in ``target`` and encapsulate them with a Basic Offset Table
    (PS3.5 8.2, A.4); lossy results are recorded (PS3.3 C.7.6.1.1.5)."""
    encoding = _ENCODINGS[target]
    if encoding.mct is not None and ds.PhotometricInterpretation == "RGB":
        ds.PhotometricInterpretation = encoding.mct  # PS3.5 8.2.4: RGB compressed with MCT
    ds.HighBit = int(ds.BitsStored) - 1
    native = _native_size(ds, pixels)
    try:
        compress(
            ds,
            target,
            pixels[0] if pixels.shape[0] == 1 else pixels,
            generate_instance_uid=False,
            **encoding.options,
        )
    except _CODEC_ERRORS as exc:
        raise _not_acceptable(
            f"its pixel data cannot be encoded ({_brief(exc)})", stored, target
        ) from exc
    if encoding.method is not None:
        _record_loss(ds, encoding.method, native / max(len(ds.PixelData), 1))


# --------------------------------------------------------------------------------------
# Lossy compression history (PS3.3 C.7.6.1.1.5)
# --------------------------------------------------------------------------------------


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue):
        return [str(v) for v in value]
    return [str(value)]


def _record_loss(ds: Dataset, method: str, ratio: float) -> None:
    """Lossy Image Compression "01", once set never reset; method and ratio appended in the
    order the compressions were applied, the ratio only while both lists still correspond
    (PS3.3 C.7.6.1.1.5.1, C.7.6.1.1.5.2)."""
    methods = _values(ds, "LossyImageCompressionMethod")
    ratios = _values(ds, "LossyImageCompressionRatio")
    ds.LossyImageCompression = "01"
    if len(ratios) == len(methods):
        ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*methods, method]


def _note_stored_loss(ds: Dataset, stored: str, ratio: float) -> None:
    """Pixel data decoded from a lossy syntax keeps saying so whatever it becomes (PS3.3
    C.7.6.1.1.5); a file already marked "01" has its history, one marked "00" in a syntax
    that can be reversible is believed."""
    entry = _STORED_LOSSY.get(stored)
    flag = ds.get("LossyImageCompression")
    if entry is None or flag == "01":
        return
    method, always = entry
    if flag == "00" and not always:
        return
    _record_loss(ds, method, ratio)


# --------------------------------------------------------------------------------------
# Data set re-encoding
# --------------------------------------------------------------------------------------


def _to_little_endian(ds: Dataset) -> None:
    """Swap the words of OW/OF/OL/OD/OV values read from Explicit VR Big Endian (PS3.5 7.3,
    A.3); pydicom re-encodes every other VR from its value. Pixel Data samples wider than a
    word are swapped whole, as pydicom's own decoder reads them. UN values are left as they
    are: their structure is unknown."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _to_little_endian(item)
            continue
        width = _WORD_BYTES.get(str(elem.VR), 0)
        if elem.tag == _PIXEL_DATA and width:
            width = max(width, int(ds.get("BitsAllocated") or 0) // 8)
        if width > 1 and isinstance(elem.value, bytes) and elem.value:
            words = np.frombuffer(elem.value, dtype=f">u{width}")
            elem.value = words.astype(f"<u{width}").tobytes()


def _nested_to_native(ds: Dataset, stored: str, target: str) -> None:
    """Decode encapsulated Pixel Data inside sequence items (Icon Image Sequence, PS3.3
    F.7): it is in the stored codec, which the new file no longer announces."""
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            if "PixelData" in item and item["PixelData"].is_undefined_length:
                pixels = _decode(item, stored, target)
                _take_pixel_data(item)
                _set_native(item, pixels, stored, target)
            _nested_to_native(item, stored, target)
