"""Rendered and thumbnail representations of one frame (PS3.18 8.3.5, 10.4.1.1.3, 10.4.1.1.4).

The pipeline is PS3.4 N.2 reduced to what a rendered resource needs:

1. decode the one frame asked for, never the others (pydicom's pixel handlers; YBR_FULL,
   YBR_FULL_422 and the JPEG / JPEG 2000 colour transforms come out as RGB);
2. grayscale: Modality LUT (PS3.3 C.11.1), then VOI (C.11.2): the ``window`` parameter, else
   the data set's first Window Center / Width with its VOI LUT Function, else its VOI LUT
   Sequence, else the frame's own min..max; MONOCHROME1 is inverted afterwards (C.7.6.3.1.2);
3. colour: PALETTE COLOR through its palette (C.7.6.3.1.5), RGB as stored; scaled to 8 bits,
   or windowed channel by channel when a ``window`` is given;
4. source region then viewport (PS3.18 8.3.5.1.3), then encoding (8.3.5.1.2 ``quality``).

Annotations (8.3.5.1.1) are validated but not burned in: the rendered image carries none.
Every function here is pure and blocking: the web layer runs :func:`render` in a worker process.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array

from ..errors import BadRequest, GatewayError, NotAcceptable, NotFound

__all__ = [
    "DEFAULT_QUALITY",
    "MAX_VIEWPORT",
    "RENDERED_MEDIA_TYPES",
    "THUMBNAIL_VIEWPORT",
    "RenderParams",
    "Viewport",
    "Window",
    "number_of_frames",
    "parse_render_params",
    "render",
]

RENDERED_MEDIA_TYPES: tuple[str, ...] = ("image/jpeg", "image/png", "image/gif")
DEFAULT_QUALITY = 90
MAX_VIEWPORT = 4096  # pixels per side: bounds the memory one render may take
ANNOTATIONS = frozenset({"patient", "technique"})  # PS3.18 8.3.5.1.1

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?")
_UINT = re.compile(r"\d{1,9}")

Pixels = npt.NDArray[Any]
Grey8 = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Window:
    """``window=center,width,function`` (PS3.18 8.3.5.1.4; PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str  # "linear" | "linear-exact" | "sigmoid"


@dataclass(frozen=True, slots=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3).

    ``sx, sy`` is the top-left corner of the source region (default 0, 0), ``sw, sh`` its size
    (default: to the right and bottom edges); a negative ``sw`` (``sh``) takes the region
    ``sx .. sx+|sw|`` and flips it horizontally (vertically). The region is scaled to fit in
    ``vw`` x ``vh`` with its aspect ratio kept.
    """

    width: int
    height: int
    sx: float | None = None
    sy: float | None = None
    sw: float | None = None
    sh: float | None = None


@dataclass(frozen=True, slots=True)
class RenderParams:
    """Validated rendering parameters of one request (PS3.18 Table 8.3.5-1)."""

    media_type: str
    quality: int
    window: Window | None
    viewport: Viewport | None
    annotation: tuple[str, ...]


THUMBNAIL_VIEWPORT = Viewport(128, 128)

# --- Query parameters (PS3.18 8.3.5.1) ------------------------------------------------------

# Table 8.3.5-1: a thumbnail takes only viewport (vw, vh); it must not show patient data
# (10.4.3.3.4), so annotation is ignored, and its VOI is the server's choice, so window too.
_RENDERED_KEYS = frozenset({"annotation", "quality", "viewport", "window"})
_THUMBNAIL_KEYS = frozenset({"quality", "viewport"})
_REPEATABLE_KEYS = frozenset({"annotation"})


def parse_render_params(
    query: Sequence[tuple[str, str]], media_type: str, *, thumbnail: bool
) -> RenderParams:
    """The rendering parameters of a rendered or thumbnail request (PS3.18 8.3.5.1).

    Each known parameter is validated and a malformed one raises
    :class:`~ncpeh_dicomweb.errors.BadRequest` naming it in ``detail.parameter``; unknown
    parameters are ignored. A media type outside
    :data:`RENDERED_MEDIA_TYPES` raises :class:`~ncpeh_dicomweb.errors.NotAcceptable`.
    A thumbnail gets :data:`THUMBNAIL_VIEWPORT` when it names none.
    """
    if media_type not in RENDERED_MEDIA_TYPES:
        raise NotAcceptable(
            f"{media_type} is not a rendered media type this server produces",
            detail={"supported": list(RENDERED_MEDIA_TYPES)},
        )
    given = _group(query, _THUMBNAIL_KEYS if thumbnail else _RENDERED_KEYS)
    window = _single(given, "window")
    viewport = _single(given, "viewport")
    quality = _single(given, "quality")
    parsed_viewport = None if viewport is None else _parse_viewport(viewport, thumbnail)
    return RenderParams(
        media_type=media_type,
        quality=DEFAULT_QUALITY if quality is None else _parse_quality(quality),
        window=None if window is None else _parse_window(window),
        viewport=THUMBNAIL_VIEWPORT if thumbnail and parsed_viewport is None else parsed_viewport,
        annotation=_parse_annotation(given.get("annotation", [])),
    )


def _bad(parameter: str, value: str, message: str) -> BadRequest:
    return BadRequest(message, detail={"parameter": parameter, "value": value[:100]})


def _group(query: Sequence[tuple[str, str]], keys: frozenset[str]) -> dict[str, list[str]]:
    given: dict[str, list[str]] = {}
    for key, value in query:
        if key in keys:
            given.setdefault(key, []).append(value)
    return given


def _single(given: Mapping[str, list[str]], key: str) -> str | None:
    values = given.get(key, [])
    if len(values) > 1 and key not in _REPEATABLE_KEYS:
        raise _bad(key, ",".join(values), f"{key} is given more than once")
    return values[0] if values else None


def _decimal(parameter: str, text: str) -> float:
    field = text.strip()
    value = float(field) if _DECIMAL.fullmatch(field) else math.nan
    if not math.isfinite(value):
        raise _bad(parameter, text, f"{parameter}: {field!r} is not a decimal number")
    return value


def _uint(parameter: str, text: str, low: int, high: int) -> int:
    field = text.strip()
    if not _UINT.fullmatch(field) or not low <= int(field) <= high:
        raise _bad(parameter, text, f"{parameter}: {field!r} is not an integer in {low}..{high}")
    return int(field)


def _parse_quality(text: str) -> int:
    """``quality=1..100`` (PS3.18 8.3.5.1.2); used by lossy media types only."""
    return _uint("quality", text, 1, 100)


def _parse_window(text: str) -> Window:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4).

    The function defaults to ``linear``, as an absent VOI LUT Function does
    (PS3.3 C.11.2.1.3); LINEAR needs a width >= 1 (C.11.2.1.2.1), the others > 0.
    """
    fields = text.split(",")
    if len(fields) not in (2, 3):
        raise _bad("window", text, "window must be center,width,function")
    center, width = _decimal("window", fields[0]), _decimal("window", fields[1])
    function = fields[2].strip().lower() if len(fields) == 3 else "linear"
    if function not in _WINDOW_FUNCTIONS:
        raise _bad("window", text, f"window function must be one of {sorted(_WINDOW_FUNCTIONS)}")
    if width <= 0 or width < _MIN_WIDTH[function]:
        raise _bad("window", text, f"window width too small for {function}")
    return Window(center, width, function)


def _parse_viewport(text: str, thumbnail: bool) -> Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); only ``vw,vh`` for a thumbnail."""
    fields = text.split(",")
    if len(fields) not in ((2,) if thumbnail else (2, 6)):
        raise _bad(
            "viewport", text, "viewport must be vw,vh" + ("" if thumbnail else "[,sx,sy,sw,sh]")
        )
    width, height = (_uint("viewport", field, 1, MAX_VIEWPORT) for field in fields[:2])
    region = [None if not f.strip() else _decimal("viewport", f) for f in fields[2:]] or [None] * 4
    sx, sy, sw, sh = region
    if sw == 0 or sh == 0:
        raise _bad("viewport", text, "viewport source region is empty")
    return Viewport(width, height, sx, sy, sw, sh)


def _parse_annotation(values: Sequence[str]) -> tuple[str, ...]:
    """``annotation=patient,technique`` (PS3.18 8.3.5.1.1), repeatable; accepted, not burned in."""
    keywords = [keyword.strip().lower() for value in values for keyword in value.split(",")]
    for keyword in keywords:
        if keyword not in ANNOTATIONS:
            raise _bad("annotation", keyword, f"annotation must be among {sorted(ANNOTATIONS)}")
    return tuple(dict.fromkeys(keywords))


# --- VOI functions (PS3.3 C.11.2.1.2, C.11.2.1.3): stored-value space -> 0..1 ---------------


def _linear(x: Pixels, center: float, width: float) -> Pixels:
    """C.11.2.1.2.1; the clipped line equals its three cases, and width 1 is a step."""
    if width <= 1:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _linear_exact(x: Pixels, center: float, width: float) -> Pixels:
    """C.11.2.1.3.2."""
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)


def _sigmoid(x: Pixels, center: float, width: float) -> Pixels:
    """C.11.2.1.3.1: 1 / (1 + exp(-4 (x - c) / w)), written with tanh so it cannot overflow."""
    return 0.5 * (1.0 + np.tanh(2.0 * (x - center) / width))


_WINDOW_FUNCTIONS: Mapping[str, Callable[[Pixels, float, float], Pixels]] = {
    "linear": _linear,
    "linear-exact": _linear_exact,
    "sigmoid": _sigmoid,
}
_MIN_WIDTH: Mapping[str, float] = {"linear": 1.0, "linear-exact": 0.0, "sigmoid": 0.0}
# (0028,1056) VOI LUT Function -> our function; absent or unknown is LINEAR (C.11.2.1.3).
_VOI_LUT_FUNCTIONS: Mapping[str, str] = {
    "LINEAR": "linear",
    "LINEAR_EXACT": "linear-exact",
    "SIGMOID": "sigmoid",
}


def _to_uint8(unit: Pixels) -> Grey8:
    """0..1 -> 0..255, rounded to nearest."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _windowed(values: Pixels, window: Window) -> Grey8:
    function = _WINDOW_FUNCTIONS[window.function]
    return _to_uint8(function(values.astype(np.float64), window.center, window.width))


# --- Grayscale pipeline (PS3.4 N.2.1): Modality LUT -> VOI -> Presentation ------------------


def _first_number(value: object) -> float | None:
    """The first value of a DS / FD element (Window Center may hold several), if usable."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _dataset_window(ds: Dataset) -> Window | None:
    """The data set's first window (PS3.3 C.11.2.1.2) with its VOI LUT Function, if valid."""
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    function = _VOI_LUT_FUNCTIONS.get(str(ds.get("VOILUTFunction") or "").strip(), "linear")
    return Window(center, width, function)


def _voi_lut(values: Pixels, ds: Dataset) -> Grey8:
    """The first VOI LUT Sequence item (C.11.2.1.1), its output scaled from its bit depth."""
    entries, first, depth = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    entries = entries or 65536
    # Clipping first keeps pydicom's index arithmetic inside its integer type.
    inputs = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
    return _to_uint8(apply_voi(inputs, ds).astype(np.float64) / (2**depth - 1))


def _stretched(values: Pixels) -> Grey8:
    """No VOI in request or data set: the frame's own min..max onto 0..255."""
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _windowed(values, Window((low + high) / 2, high - low, "linear-exact"))


def _voi(values: Pixels, ds: Dataset, window: Window | None) -> Grey8:
    """PS3.4 N.2.1.1 VOI transformation, choosing in the order the module docstring gives."""
    chosen = window if window is not None else _dataset_window(ds)
    if chosen is not None:
        return _windowed(values, chosen)
    if ds.get("VOILUTSequence"):
        return _voi_lut(values, ds)
    return _stretched(values)


def _monochrome2(pixels: Pixels, ds: Dataset, window: Window | None) -> Grey8:
    return _voi(apply_modality_lut(pixels, ds), ds, window)


def _monochrome1(pixels: Pixels, ds: Dataset, window: Window | None) -> Grey8:
    """MONOCHROME1: minimum is white, so the VOI output is inverted (PS3.3 C.7.6.3.1.2)."""
    return 255 - _monochrome2(pixels, ds, window)


# --- Colour pipelines (PS3.4 N.2.2, N.2.3) --------------------------------------------------


def _channels(rgb: Pixels, bits: int, window: Window | None) -> Grey8:
    if window is not None:
        return _windowed(rgb, window)
    return _to_uint8(rgb.astype(np.float64) / (2**bits - 1))


def _true_colour(pixels: Pixels, ds: Dataset, window: Window | None) -> Grey8:
    """RGB as decoded (pydicom turns YBR_FULL, YBR_FULL_422, YBR_RCT, YBR_ICT into RGB)."""
    return _channels(pixels, int(ds.get("BitsStored") or 8), window)


def _palette(pixels: Pixels, ds: Dataset, window: Window | None) -> Grey8:
    """PALETTE COLOR through its LUTs (PS3.3 C.7.6.3.1.5, C.7.9); an alpha LUT is dropped."""
    rgb = apply_color_lut(pixels, ds)[..., :3]
    return _channels(rgb, rgb.dtype.itemsize * 8, window)


_PIPELINES: Mapping[str, Callable[[Pixels, Dataset, Window | None], Grey8]] = {
    "MONOCHROME1": _monochrome1,
    "MONOCHROME2": _monochrome2,
    "PALETTE COLOR": _palette,
    "RGB": _true_colour,
    "YBR_FULL": _true_colour,
    "YBR_FULL_422": _true_colour,
    "YBR_RCT": _true_colour,
    "YBR_ICT": _true_colour,
}


# --- Source region and viewport (PS3.18 8.3.5.1.3) ------------------------------------------

Box = tuple[float, float, float, float]


def _source_region(viewport: Viewport, columns: int, rows: int) -> tuple[Box, bool, bool]:
    """The region ``(left, top, right, bottom)`` cut to the image, and whether to flip x, y."""
    sx = 0.0 if viewport.sx is None else viewport.sx
    sy = 0.0 if viewport.sy is None else viewport.sy
    sw = max(columns - sx, 0.0) if viewport.sw is None else viewport.sw
    sh = max(rows - sy, 0.0) if viewport.sh is None else viewport.sh
    left, right = max(sx, 0.0), min(sx + abs(sw), float(columns))
    top, bottom = max(sy, 0.0), min(sy + abs(sh), float(rows))
    if right <= left or bottom <= top:
        raise BadRequest(
            "The viewport's source region lies outside the image",
            detail={"parameter": "viewport", "columns": columns, "rows": rows},
        )
    return (left, top, right, bottom), sw < 0, sh < 0


def _fitted_size(width: float, height: float, viewport: Viewport) -> tuple[int, int]:
    """``width`` x ``height`` scaled to fit in the viewport, aspect ratio kept."""
    scale = min(viewport.width / width, viewport.height / height)
    return (
        min(viewport.width, max(1, round(width * scale))),
        min(viewport.height, max(1, round(height * scale))),
    )


def _viewed(picture: Image.Image, viewport: Viewport | None) -> Image.Image:
    if viewport is None:
        return picture
    box, flip_x, flip_y = _source_region(viewport, picture.width, picture.height)
    size = _fitted_size(box[2] - box[0], box[3] - box[1], viewport)
    picture = picture.resize(size, Image.Resampling.LANCZOS, box=box)
    for flipped, transpose in (
        (flip_x, Image.Transpose.FLIP_LEFT_RIGHT),
        (flip_y, Image.Transpose.FLIP_TOP_BOTTOM),
    ):
        if flipped:
            picture = picture.transpose(transpose)
    return picture


# --- Encoding (PS3.18 8.3.5.1.2, 8.7.4) -----------------------------------------------------


def _jpeg(picture: Image.Image, quality: int, out: io.BytesIO) -> None:
    picture.save(out, "JPEG", quality=quality)


def _png(picture: Image.Image, quality: int, out: io.BytesIO) -> None:
    picture.save(out, "PNG")  # lossless: quality does not apply


def _gif(picture: Image.Image, quality: int, out: io.BytesIO) -> None:
    # Grey is written with a grey palette, losslessly; colour is quantised to 256 colours.
    (picture if picture.mode == "L" else picture.quantize(256)).save(out, "GIF")


_ENCODERS: Mapping[str, Callable[[Image.Image, int, io.BytesIO], None]] = {
    "image/jpeg": _jpeg,
    "image/png": _png,
    "image/gif": _gif,
}


# --- The file: header, frame, decoding ------------------------------------------------------

# Functional group macros carrying a frame's Modality LUT and VOI (PS3.3 C.7.6.16.2.9, .10).
_FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
_IMAGE_KEYWORDS = ("Rows", "Columns", "PhotometricInterpretation")
# What pydicom raises when it cannot give the pixels, and what we tell the client.
_DECODE_FAULTS: tuple[tuple[type[Exception], str], ...] = (
    (AttributeError, "The instance has no Pixel Data to render"),
    (NotImplementedError, "The instance's transfer syntax cannot be decoded for rendering"),
    (RuntimeError, "The instance's Pixel Data could not be decoded"),
    (ValueError, "The instance's Pixel Data is malformed"),
)
# A deflated data set cannot be read from a seek position: it is inflated as a whole.
_WHOLE_FILE_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99"})


def _frame_count(header: Dataset) -> int:
    value = header.get("NumberOfFrames")
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def number_of_frames(path: Path) -> int:
    """Number of Frames (0028,0008) of the file, 1 when absent (PS3.3 C.7.6.6); header only."""
    return _frame_count(dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"]))


def _with_frame_macros(header: Dataset, index: int) -> Dataset:
    """``header`` with the frame's shared then per-frame functional groups' Pixel Value
    Transformation and Frame VOI LUT attributes set at the top level (PS3.3 C.7.6.16), so a
    multi-frame instance is rendered with its own frame's rescale and window. Mutates ``header``.
    """
    shared = list(header.get("SharedFunctionalGroupsSequence") or [])[:1]
    per_frame = list(header.get("PerFrameFunctionalGroupsSequence") or [])[index : index + 1]
    for group in shared + per_frame:
        for keyword in _FRAME_MACROS:
            for item in list(group.get(keyword) or [])[:1]:
                for element in item:
                    header[element.tag] = element
    return header


def _decode(path: Path, index: int, transfer_syntax: str) -> Pixels:
    """The frame at ``index`` (0-based) alone, as pydicom delivers it (colour as RGB)."""
    try:
        if transfer_syntax in _WHOLE_FILE_SYNTAXES:
            return pixel_array(dcmread(path), index=index)
        return pixel_array(path, index=index)
    except tuple(fault for fault, _ in _DECODE_FAULTS) as exc:
        message = next(text for fault, text in _DECODE_FAULTS if isinstance(exc, fault))
        raise NotAcceptable(message, detail={"reason": str(exc)[:200]}) from exc


def _pipeline(header: Dataset) -> Callable[[Pixels, Dataset, Window | None], Grey8]:
    missing = [keyword for keyword in _IMAGE_KEYWORDS if keyword not in header]
    if missing:
        raise NotAcceptable("The instance has no image to render", detail={"missing": missing})
    photometric = str(header.PhotometricInterpretation).strip()
    if photometric not in _PIPELINES:
        raise NotAcceptable(
            f"Photometric Interpretation {photometric} cannot be rendered",
            detail={"photometric_interpretation": photometric},
        )
    return _PIPELINES[photometric]


def render(path: Path, frame: int, params: RenderParams) -> bytes:
    """Frame ``frame`` (1-based) of the Part 10 file at ``path`` in ``params.media_type``
    (PS3.18 8.3.5, 10.4.1.1.3): decoded alone, rendered through the PS3.4 N.2 pipeline,
    cut to the source region, fitted to the viewport and encoded.

    Raises :class:`~ncpeh_dicomweb.errors.NotFound` for a frame the instance lacks,
    :class:`~ncpeh_dicomweb.errors.NotAcceptable` for an instance without renderable pixels,
    :class:`~ncpeh_dicomweb.errors.BadRequest` for a source region outside the image.
    Any other failure (a dataset pydicom or a codec refuses) is NotAcceptable too: the
    stored data, not the request, is at fault, and a worker must never answer a traceback.
    """
    try:
        return _render(path, frame, params)
    except GatewayError:
        raise
    except Exception as exc:
        raise NotAcceptable(
            "the instance could not be rendered", detail={"reason": type(exc).__name__}
        ) from None


def _render(path: Path, frame: int, params: RenderParams) -> bytes:
    header = dcmread(path, stop_before_pixels=True)
    pipeline = _pipeline(header)
    frames = _frame_count(header)
    if not 1 <= frame <= frames:
        raise NotFound(
            f"Frame {frame} does not exist: the instance has {frames}",
            detail={"frame": frame, "frames": frames},
        )
    pixels = _decode(path, frame - 1, str(header.file_meta.get("TransferSyntaxUID", "")))
    image = pipeline(pixels, _with_frame_macros(header, frame - 1), params.window)
    picture = _viewed(Image.fromarray(np.ascontiguousarray(image)), params.viewport)
    out = io.BytesIO()
    _ENCODERS[params.media_type](picture, params.quality, out)
    return out.getvalue()
