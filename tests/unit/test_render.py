"""Rendered resources (PS3.18 8.3.5, 10.4.1.1.3, 10.4.1.1.4) against renderings computed here.

Every reference is built independently of the module under test: stored values read from the
raw Pixel Data bytes with numpy, the VOI functions written out case by case as PS3.3
C.11.2.1.2 / C.11.2.1.3 give them (y_min 0, y_max 255), palettes and LUTs looked up by hand,
JPEG frames decoded by Pillow's own libjpeg.
"""

from __future__ import annotations

import io
import pickle
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from ncpeh_dicomweb.errors import BadRequest, NotAcceptable, NotFound
from ncpeh_dicomweb.imaging.render import (
    DEFAULT_QUALITY,
    MAX_VIEWPORT,
    RENDERED_MEDIA_TYPES,
    THUMBNAIL_VIEWPORT,
    RenderParams,
    Viewport,
    Window,
    number_of_frames,
    parse_render_params,
    render,
)

DATA = Path(pydicom.__file__).parent / "data" / "test_files"
CT = DATA / "CT_small.dcm"  # 128 x 128 int16, Rescale -1024, no window
MR = DATA / "MR_small.dcm"  # 64 x 64 int16, Window 600 / 1600
TALL = DATA / "JPEG2000.dcm"  # 256 columns x 1024 rows
RTDOSE = DATA / "rtdose.dcm"  # 15 frames of 10 x 10 uint32
YBR_VIDEO = DATA / "examples_ybr_color.dcm"  # 30 JPEG baseline YBR_FULL_422 frames

Array = npt.NDArray[Any]
Query = Sequence[tuple[str, str]]

# (row, column) -> RGB of the colour bars in pydicom's SC_rgb_* files.
BARS = {
    (5, 50): (255, 0, 0),
    (15, 50): (255, 128, 128),
    (25, 50): (0, 255, 0),
    (35, 50): (128, 255, 128),
    (45, 50): (0, 0, 255),
    (55, 50): (128, 128, 255),
    (65, 50): (0, 0, 0),
    (75, 50): (64, 64, 64),
    (85, 50): (192, 192, 192),
    (95, 50): (255, 255, 255),
}


# --- helpers ---------------------------------------------------------------------------------


def params(
    query: Query = (), media_type: str = "image/png", thumbnail: bool = False
) -> RenderParams:
    return parse_render_params(query, media_type, thumbnail=thumbnail)


def decoded(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def rendered(path: Path, query: Query = (), frame: int = 1, media_type: str = "image/png") -> Array:
    return np.asarray(decoded(render(path, frame, params(query, media_type))))


def stored(path: Path, dtype: str) -> Array:
    """Stored values read straight from native little-endian Pixel Data."""
    ds = dcmread(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    shape = (frames, ds.Rows, ds.Columns) if frames > 1 else (ds.Rows, ds.Columns)
    return np.frombuffer(ds.PixelData, dtype=dtype).reshape(shape)


def linear(x: Array, c: float, w: float) -> Array:
    """PS3.3 C.11.2.1.2.1, its three cases as written."""
    x = x.astype(np.float64)
    y: Array = np.select(
        [x <= c - 0.5 - (w - 1) / 2, x > c - 0.5 + (w - 1) / 2],
        [0.0, 255.0],
        ((x - (c - 0.5)) / (w - 1) + 0.5) * (255 - 0) + 0,
    )
    return np.rint(y).astype(np.uint8)


def linear_exact(x: Array, c: float, w: float) -> Array:
    """PS3.3 C.11.2.1.3.2."""
    x = x.astype(np.float64)
    y: Array = np.select(
        [x <= c - w / 2, x > c + w / 2], [0.0, 255.0], ((x - c) / w + 0.5) * (255 - 0) + 0
    )
    return np.rint(y).astype(np.uint8)


def sigmoid(x: Array, c: float, w: float) -> Array:
    """PS3.3 C.11.2.1.3.1."""
    y = (255 - 0) / (1 + np.exp(-4 * (x.astype(np.float64) - c) / w)) + 0
    return np.rint(y).astype(np.uint8)


def ct_values() -> Array:
    return stored(CT, "<i2").astype(np.float64) * 1.0 - 1024.0  # Rescale Slope / Intercept


def stretched(x: Array) -> Array:
    low, high = float(x.min()), float(x.max())
    return linear_exact(x, (low + high) / 2, high - low)


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def mr_variant(tmp_path: Path, **changes: object) -> Path:
    """MR_small with elements changed (``None`` removes one)."""
    ds = dcmread(MR)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return write(ds, tmp_path / "mr.dcm")


def lut_item(descriptor: tuple[int, int, int], data: Array) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", list(descriptor))  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(v) for v in data])  # LUT Data
    return item


def new_image(arr: Array, photometric: str, bits_stored: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(arr, photometric, bits_stored)
    return ds


# --- grayscale: Modality LUT, VOI, Presentation ------------------------------------------------


def test_window_from_the_data_set() -> None:
    expected = linear(stored(MR, "<i2"), 600, 1600)
    assert 0 < expected.min() < 255 and expected.max() == 255  # all three cases hit
    assert np.array_equal(rendered(MR), expected)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
    ],
)
def test_same_rendering_whatever_the_lossless_transfer_syntax(name: str) -> None:
    assert np.array_equal(rendered(DATA / name), linear(stored(MR, "<i2"), 600, 1600))


def test_deflated_data_set() -> None:
    path = DATA / "image_dfl.dcm"  # the whole data set is deflated: no seeking into it
    assert np.array_equal(rendered(path), stretched(dcmread(path).pixel_array))


@pytest.mark.parametrize(
    ("function", "reference"),
    [("linear", linear), ("linear-exact", linear_exact), ("sigmoid", sigmoid)],
)
def test_window_parameter_after_the_rescale(function: str, reference: object) -> None:
    assert callable(reference)
    got = rendered(CT, [("window", f"40,400,{function}")])
    assert np.array_equal(got, reference(ct_values(), 40, 400))


def test_window_parameter_overrides_the_data_set() -> None:
    got = rendered(MR, [("window", "1000,500,linear")])
    assert np.array_equal(got, linear(stored(MR, "<i2"), 1000, 500))


def test_window_function_defaults_to_linear() -> None:
    assert np.array_equal(rendered(CT, [("window", "40,400")]), linear(ct_values(), 40, 400))


def test_frame_min_max_without_any_voi() -> None:
    expected = stretched(ct_values())
    assert expected.min() == 0 and expected.max() == 255
    assert np.array_equal(rendered(CT), expected)


@pytest.mark.parametrize(
    ("voi_lut_function", "reference"),
    [("LINEAR_EXACT", linear_exact), ("SIGMOID", sigmoid), ("LINEAR", linear)],
)
def test_voi_lut_function_of_the_data_set(
    tmp_path: Path, voi_lut_function: str, reference: object
) -> None:
    assert callable(reference)
    path = mr_variant(tmp_path, VOILUTFunction=voi_lut_function)
    assert np.array_equal(rendered(path), reference(stored(MR, "<i2"), 600, 1600))


def test_voi_lut_sequence(tmp_path: Path) -> None:
    first, entries = 100, 2048
    lut = np.rint(65535 * (np.arange(entries) / (entries - 1)) ** 0.5).astype(np.uint16)
    path = mr_variant(
        tmp_path,
        WindowCenter=None,
        WindowWidth=None,
        VOILUTSequence=DicomSequence([lut_item((entries, first, 16), lut)]),
    )
    x = stored(MR, "<i2").astype(np.int64)
    looked_up = lut[np.clip(x - first, 0, entries - 1)].astype(np.float64)
    expected = np.rint(looked_up * 255 / 65535).astype(np.uint8)
    assert np.array_equal(rendered(path), expected)


def test_data_set_window_preferred_to_its_voi_lut_sequence(tmp_path: Path) -> None:
    lut = np.zeros(4096, dtype=np.uint16)  # would render all black
    path = mr_variant(tmp_path, VOILUTSequence=DicomSequence([lut_item((4096, 0, 16), lut)]))
    assert np.array_equal(rendered(path), linear(stored(MR, "<i2"), 600, 1600))


def test_modality_lut_sequence_before_the_window(tmp_path: Path) -> None:
    first, entries = 0, 4096
    lut = (np.arange(entries) * 3 // 2).astype(np.uint16)
    item = lut_item((entries, first, 16), lut)
    item.ModalityLUTType = "US"
    path = mr_variant(tmp_path, ModalityLUTSequence=DicomSequence([item]))
    x = stored(MR, "<i2").astype(np.int64)
    expected = linear(lut[np.clip(x - first, 0, entries - 1)], 1500, 2000)
    assert np.array_equal(rendered(path, [("window", "1500,2000,linear")]), expected)


def test_monochrome1_inverted_after_voi(tmp_path: Path) -> None:
    path = mr_variant(tmp_path, PhotometricInterpretation="MONOCHROME1")
    assert np.array_equal(rendered(path), 255 - linear(stored(MR, "<i2"), 600, 1600))


def test_enhanced_multi_frame_uses_its_frame_functional_groups(tmp_path: Path) -> None:
    arr = np.random.default_rng(7).integers(0, 4096, (3, 16, 16), dtype=np.uint16)
    ds = new_image(arr, "MONOCHROME2", 12)
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = -100, 2, "US"
    shared = Dataset()
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    windows = [(1000, 2000), (4000, 3000), (7000, 500)]
    per_frame = []
    for center, width in windows:
        voi, group = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group.FrameVOILUTSequence = DicomSequence([voi])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    path = write(ds, tmp_path / "enhanced.dcm")
    for frame, (center, width) in enumerate(windows, start=1):
        expected = linear(arr[frame - 1].astype(np.float64) * 2 - 100, center, width)
        assert np.array_equal(rendered(path, frame=frame), expected)


# --- multi-frame -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_rle.dcm"])
def test_a_frame_of_a_multi_frame_instance(name: str) -> None:
    frames = stored(RTDOSE, "<u4")
    got = rendered(DATA / name, frame=7)
    assert np.array_equal(got, stretched(frames[6]))
    assert not np.array_equal(got, stretched(frames[0]))


def test_a_frame_of_a_jpeg_ybr_video() -> None:
    ds = dcmread(YBR_VIDEO)
    fragments = list(generate_frames(ds.PixelData, number_of_frames=30))
    for frame in (5, 30):
        expected = np.asarray(decoded(fragments[frame - 1]).convert("RGB"), dtype=np.int16)
        got = rendered(YBR_VIDEO, frame=frame).astype(np.int16)
        assert got.shape == expected.shape
        assert np.abs(got - expected).mean() < 0.2 and np.abs(got - expected).max() <= 4
        first = rendered(YBR_VIDEO, frame=1).astype(np.int16)
        assert np.abs(first - expected).mean() > 1  # the frames do differ


def test_only_the_requested_frame_is_decoded(tmp_path: Path) -> None:
    arr = np.random.default_rng(3).integers(0, 4096, (100, 256, 256), dtype=np.uint16)
    path = write(new_image(arr, "MONOCHROME2", 12), tmp_path / "many.dcm")
    del arr
    render(path, 1, params())  # imports and caches warmed up
    tracemalloc.start()
    try:
        got = np.asarray(decoded(render(path, 80, params())))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.shape == (256, 256)
    assert peak < 4 * 2**20, f"peak {peak} bytes for a 13 MiB Pixel Data"


def test_number_of_frames() -> None:
    assert number_of_frames(RTDOSE) == 15
    assert number_of_frames(YBR_VIDEO) == 30
    assert number_of_frames(CT) == 1


# --- colour ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_rgb_lossless(name: str) -> None:
    got = rendered(DATA / name)
    assert got.shape == (100, 100, 3)
    assert {at: tuple(int(v) for v in got[at]) for at in BARS} == BARS


@pytest.mark.parametrize("planar", [0, 1])
def test_rgb_planar_configuration(tmp_path: Path, planar: int) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    ds = new_image(rgb, "RGB", 8)
    ds.PlanarConfiguration = planar
    ds.PixelData = (rgb.transpose(2, 0, 1) if planar else rgb).tobytes()
    assert np.array_equal(rendered(write(ds, tmp_path / "rgb.dcm")), rgb)


def test_ybr_full_422_to_rgb() -> None:
    path = DATA / "SC_ybr_full_422_uncompressed.dcm"
    raw = np.frombuffer(dcmread(path).PixelData, dtype=np.uint8).reshape(100, 50, 4)
    y = raw[..., :2].reshape(100, 100).astype(np.float64)
    cb = np.repeat(raw[..., 2], 2, axis=1) - 128.0
    cr = np.repeat(raw[..., 3], 2, axis=1) - 128.0
    # PS3.3 C.7.6.3.1.2, YBR_FULL
    rgb = np.stack([y + 1.402 * cr, y - 0.3441 * cb - 0.7141 * cr, y + 1.772 * cb], axis=-1)
    expected = np.clip(np.rint(rgb), 0, 255).astype(np.int16)
    got = rendered(path).astype(np.int16)
    assert np.abs(got - expected).max() <= 1
    assert all(np.abs(got[at] - BARS[at]).max() <= 5 for at in BARS)


def test_jpeg_ybr_to_rgb() -> None:
    path = DATA / "SC_rgb_jpeg_dcmtk.dcm"  # YBR_FULL in a JPEG baseline bitstream
    fragment = next(generate_frames(dcmread(path).PixelData, number_of_frames=1))
    expected = np.asarray(decoded(fragment).convert("RGB"), dtype=np.int16)
    got = rendered(path).astype(np.int16)
    assert np.abs(got - expected).max() <= 3
    assert all(np.abs(got[at] - BARS[at]).max() <= 5 for at in BARS)


def test_palette_color() -> None:
    path = DATA / "examples_palette.dcm"
    ds = dcmread(path)
    first = ds.RedPaletteColorLookupTableDescriptor[1]
    index = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns)
    luts = [
        np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, dtype="<u2")
        for colour in ("Red", "Green", "Blue")
    ]
    idx = np.clip(index.astype(np.int64) - first, 0, len(luts[0]) - 1)
    rgb16 = np.stack([lut[idx] for lut in luts], axis=-1).astype(np.float64)
    expected = np.rint(rgb16 * 255 / 65535).astype(np.uint8)
    assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 10
    assert np.array_equal(rendered(path), expected)


def test_window_parameter_on_colour(tmp_path: Path) -> None:
    rgb = np.random.default_rng(9).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = write(new_image(rgb, "RGB", 8), tmp_path / "rgb.dcm")
    assert np.array_equal(rendered(path, [("window", "128,64,linear")]), linear(rgb, 128, 64))


# --- viewport (PS3.18 8.3.5.1.3) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "viewport", "size"),
    [
        (CT, "64,32", (32, 32)),
        (CT, "300,200", (200, 200)),
        (TALL, "100,100", (25, 100)),
        (TALL, "512,128", (32, 128)),
        (CT, "20,20,0,0,40,40", (20, 20)),
        (CT, "100,100,0,0,64,32", (100, 50)),
    ],
)
def test_viewport_fits_keeping_the_aspect_ratio(
    path: Path, viewport: str, size: tuple[int, int]
) -> None:
    assert decoded(render(path, 1, params([("viewport", viewport)]))).size == size


@pytest.mark.parametrize(
    ("viewport", "rows", "columns"),
    [
        ("40,40,10,20,40,40", slice(20, 60), slice(10, 50)),
        ("40,40,10,20,-40,40", slice(20, 60), slice(49, 9, -1)),
        ("40,40,10,20,40,-40", slice(59, 19, -1), slice(10, 50)),
        ("118,108,10,20,,", slice(20, 128), slice(10, 128)),
        ("128,128,-10,-10,,", slice(0, 128), slice(0, 128)),  # cut to the image
    ],
)
def test_viewport_source_region(viewport: str, rows: slice, columns: slice) -> None:
    whole = rendered(CT)
    assert np.array_equal(rendered(CT, [("viewport", viewport)]), whole[rows, columns])


def test_viewport_region_outside_the_image() -> None:
    with pytest.raises(BadRequest) as caught:
        render(CT, 1, params([("viewport", "10,10,500,500,10,10")]))
    assert caught.value.detail["parameter"] == "viewport"


# --- encodings ---------------------------------------------------------------------------------


def test_jpeg_quality_changes_the_size_and_defaults_to_90() -> None:
    sizes = {q: len(render(CT, 1, params([("quality", str(q))], "image/jpeg"))) for q in (10, 95)}
    assert sizes[10] < sizes[95] * 0.7
    default = params(media_type="image/jpeg")
    assert default.quality == DEFAULT_QUALITY == 90
    assert render(CT, 1, default) == render(CT, 1, params([("quality", "90")], "image/jpeg"))


def test_jpeg_close_to_the_lossless_rendering() -> None:
    jpeg = decoded(render(CT, 1, params([("quality", "95")], "image/jpeg")))
    assert jpeg.format == "JPEG" and jpeg.mode == "L"
    diff = np.abs(np.asarray(jpeg, dtype=np.int16) - rendered(CT).astype(np.int16))
    assert diff.mean() < 2


@pytest.mark.parametrize(("path", "mode"), [(MR, "L"), (DATA / "SC_rgb_rle.dcm", "RGB")])
def test_gif_of_few_levels_is_exact(path: Path, mode: str) -> None:
    gif = decoded(render(path, 1, params(media_type="image/gif")))
    assert gif.format == "GIF"
    assert np.array_equal(np.asarray(gif.convert(mode)), rendered(path))


def test_png_is_png() -> None:
    assert decoded(render(MR, 1, params())).format == "PNG"


# --- parameters --------------------------------------------------------------------------------


def test_defaults() -> None:
    assert params() == RenderParams("image/png", DEFAULT_QUALITY, None, None, ())


def test_parsed_values() -> None:
    parsed = params(
        [
            ("window", " -40.5 , 4e2 , SIGMOID "),
            ("viewport", "512,256,1.5,,-20,"),
            ("quality", "75"),
            ("annotation", "patient"),
            ("annotation", "technique,patient"),
            ("charset", "utf-8"),  # known to PS3.18, not used here
            ("whatever", "x"),
        ],
        "image/jpeg",
    )
    assert parsed == RenderParams(
        "image/jpeg",
        75,
        Window(-40.5, 400.0, "sigmoid"),
        Viewport(512, 256, 1.5, None, -20.0, None),
        ("patient", "technique"),
    )


BAD = [
    ("window", "abc"),
    ("window", "40"),
    ("window", "40,400,linear,x"),
    ("window", "40,0,linear-exact"),
    ("window", "40,0.5,linear"),
    ("window", "40,-5,sigmoid"),
    ("window", "40,400,cubic"),
    ("window", "nan,400"),
    ("window", "inf,400"),
    ("window", "1e999,400"),
    ("viewport", "100"),
    ("viewport", "0,100"),
    ("viewport", "100,100,1,2,3"),
    ("viewport", "100,100,0,0,0,10"),
    ("viewport", f"{MAX_VIEWPORT + 1},10"),
    ("viewport", "a,b"),
    ("viewport", "100.5,100"),
    ("quality", "0"),
    ("quality", "101"),
    ("quality", "9.5"),
    ("quality", ""),
    ("annotation", "name"),
    ("annotation", "patient,"),
]


@pytest.mark.parametrize(("key", "value"), BAD)
def test_malformed_parameter_is_named(key: str, value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        params([(key, value)])
    assert caught.value.detail["parameter"] == key
    assert caught.value.status == 400


@pytest.mark.parametrize("key", ["window", "viewport", "quality"])
def test_parameter_given_twice(key: str) -> None:
    value = {"window": "40,400,linear", "viewport": "10,10", "quality": "50"}[key]
    with pytest.raises(BadRequest) as caught:
        params([(key, value), (key, value)])
    assert caught.value.detail["parameter"] == key


@pytest.mark.parametrize("media_type", ["image/tiff", "image/jp2", "application/dicom", ""])
def test_media_type_not_rendered(media_type: str) -> None:
    with pytest.raises(NotAcceptable):
        params(media_type=media_type)


def test_rendered_media_types() -> None:
    assert RENDERED_MEDIA_TYPES == ("image/jpeg", "image/png", "image/gif")


# --- thumbnails (PS3.18 10.4.1.1.4, 10.4.3.3.4) -------------------------------------------------


def test_thumbnail_takes_viewport_and_quality_only() -> None:
    query = [("window", "junk"), ("annotation", "patient"), ("quality", "50")]
    parsed = params(query, "image/jpeg", thumbnail=True)
    assert parsed == RenderParams("image/jpeg", 50, None, THUMBNAIL_VIEWPORT, ())
    assert params([("viewport", "64,48")], thumbnail=True).viewport == Viewport(64, 48)


def test_thumbnail_viewport_has_no_source_region() -> None:
    with pytest.raises(BadRequest) as caught:
        params([("viewport", "64,64,0,0,10,10")], thumbnail=True)
    assert caught.value.detail["parameter"] == "viewport"


def test_thumbnail_fits_128() -> None:
    assert Viewport(128, 128) == THUMBNAIL_VIEWPORT
    thumbnail = decoded(render(TALL, 1, params(media_type="image/jpeg", thumbnail=True)))
    assert thumbnail.size == (32, 128)


# --- errors and the process boundary -----------------------------------------------------------


@pytest.mark.parametrize(("path", "frame"), [(RTDOSE, 0), (RTDOSE, 16), (CT, 2), (CT, -1)])
def test_frame_out_of_range(path: Path, frame: int) -> None:
    with pytest.raises(NotFound):
        render(path, frame, params())


def test_last_frame_is_in_range() -> None:
    assert rendered(RTDOSE, frame=15).shape == (10, 10)


def test_no_image_module() -> None:
    with pytest.raises(NotAcceptable):
        render(DATA / "rtplan.dcm", 1, params())


def test_no_pixel_data(tmp_path: Path) -> None:
    with pytest.raises(NotAcceptable):
        render(mr_variant(tmp_path, PixelData=None), 1, params())


def test_photometric_interpretation_not_rendered(tmp_path: Path) -> None:
    with pytest.raises(NotAcceptable):
        render(mr_variant(tmp_path, PhotometricInterpretation="HSV"), 1, params())


def test_transfer_syntax_without_decoder(tmp_path: Path) -> None:
    ds = dcmread(MR)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 MP@ML
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    with pytest.raises(NotAcceptable):
        render(write(ds, tmp_path / "mpeg.dcm"), 1, params())


def test_render_and_its_errors_cross_a_process_boundary() -> None:
    parsed = params([("window", "1,2,linear"), ("viewport", "3,4,5,6,7,8")])
    assert pickle.loads(pickle.dumps(render)) is render
    assert pickle.loads(pickle.dumps(parsed)) == parsed
    with pytest.raises(NotFound) as caught:
        render(RTDOSE, 99, parsed)
    back = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(back, NotFound) and back.detail == {"frame": 99, "frames": 15}
