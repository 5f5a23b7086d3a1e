"""Transfer syntax transcoding of Part 10 instances (PS3.18 8.7.3, PS3.5 Annex A and 8.2,
PS3.3 C.7.6.1.1.5) on pydicom's bundled files: round trips decoded back and compared."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pynetdicom  # noqa: F401 - imported as in the gateway: it registers newer syntaxes
import pytest
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import (
    encapsulate,
    encapsulate_extended,
    generate_frames,
    parse_basic_offsets,
)
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    MPEG2MPML,
    MPEG4HP41,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from ncpeh_dicomweb.dicomweb.transfer_syntaxes import TRANSFER_SYNTAXES
from ncpeh_dicomweb.errors import NotAcceptable
from ncpeh_dicomweb.imaging import transcode as transcode_module
from ncpeh_dicomweb.imaging.transcode import (
    JPEG_2000_RATIO,
    JPEG_LS_NEAR,
    decodable,
    encodable,
    producible,
    targets_for,
    transcode,
)

DATA = Path(pydicom.__file__).parent / "data" / "test_files"
ENCAPSULATED_UNCOMPRESSED = "1.2.840.10008.1.2.1.98"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
HEVC = "1.2.840.10008.1.2.4.107"

LOSSLESS_TARGETS = (
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
)
LOSSY_TARGETS = (JPEGLSNearLossless, JPEG2000)

# Elements a transcode may change on purpose (PS3.5 8.2, PS3.3 C.7.6.1.1.5, C.7.6.3).
PIXEL_KEYWORDS = frozenset(
    {
        "PixelData",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "HighBit",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "ExtendedOffsetTable",
        "ExtendedOffsetTableLengths",
    }
)
BYTE_VRS = frozenset({"OB", "OW", "OF", "OL", "OD", "OV", "UN"})


def read(path: Path) -> pydicom.FileDataset:
    return pydicom.dcmread(path)


def pixels(path: Path) -> NDArray[Any]:
    return read(path).pixel_array


def run(src: Path, tmp_path: Path, target: str, name: str = "") -> Path:
    dst = tmp_path / f"{name or src.stem}.{target}.dcm"
    assert transcode(src, dst, target) == target
    return dst


def plain(ds: Dataset, *, skip_bytes: bool) -> dict[int, Any]:
    """Every element's value, sequences as lists of dicts, the pixel description left out."""
    out: dict[int, Any] = {}
    for elem in ds:
        if elem.keyword in PIXEL_KEYWORDS or (skip_bytes and elem.VR in BYTE_VRS):
            continue
        if elem.tag.element == 0:  # group lengths: retired (PS3.5 7.2), not rewritten
            continue
        if elem.VR == "SQ":
            out[elem.tag] = [plain(item, skip_bytes=skip_bytes) for item in elem.value]
        else:
            out[elem.tag] = elem.value
    return out


def assert_same_elements(original: Path, produced: Path) -> None:
    """Every element of ``original`` but the pixel description is in ``produced``, unchanged
    (byte values are compared too, except from Big Endian where they were swapped); the file
    meta names the same SOP Instance (the data set's, should the stored meta disagree)."""
    before, after = read(original), read(produced)
    skip = before.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert plain(after, skip_bytes=skip) == plain(before, skip_bytes=skip)
    meta = before.file_meta
    sop_class = before.get("SOPClassUID", meta.MediaStorageSOPClassUID)
    sop_instance = before.get("SOPInstanceUID", meta.MediaStorageSOPInstanceUID)
    assert after.file_meta.MediaStorageSOPClassUID == sop_class
    assert after.file_meta.MediaStorageSOPInstanceUID == sop_instance


# --------------------------------------------------------------------------------------
# The capability table
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        (ExplicitVRLittleEndian, True),
        (ImplicitVRLittleEndian, True),
        (ExplicitVRBigEndian, True),
        (DeflatedExplicitVRLittleEndian, True),
        (JPEGBaseline8Bit, True),
        (JPEGExtended12Bit, True),
        (JPEGLosslessSV1, True),
        (JPEGLSLossless, True),
        (JPEGLSNearLossless, True),
        (JPEG2000Lossless, True),
        (JPEG2000, True),
        (HTJ2KLossless, True),
        (RLELossless, True),
        (ENCAPSULATED_UNCOMPRESSED, False),
        (JPEG2000MCLossless, False),
        (MPEG2MPML, False),
        (MPEG4HP41, False),
        (JPEG_XL_LOSSLESS, False),
        ("1.2.3.4", False),
    ],
)
def test_decodable(uid: str, expected: bool) -> None:
    assert decodable(uid) is expected


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        (ExplicitVRLittleEndian, True),
        (DeflatedExplicitVRLittleEndian, True),
        (RLELossless, True),
        (JPEGLSLossless, True),
        (JPEGLSNearLossless, True),
        (JPEG2000Lossless, True),
        (JPEG2000, True),
        (ImplicitVRLittleEndian, False),  # never written: PS3.18 8.7.3
        (ExplicitVRBigEndian, False),
        (JPEGBaseline8Bit, False),  # no encoder installed
        (JPEGLosslessSV1, False),
        (HTJ2KLossless, False),
        (HTJ2K, False),
        (ENCAPSULATED_UNCOMPRESSED, False),
        (MPEG2MPML, False),
        (JPEG_XL_LOSSLESS, False),
        ("1.2.3.4", False),
    ],
)
def test_encodable(uid: str, expected: bool) -> None:
    assert encodable(uid) is expected


class _Missing:
    """A codec whose plugins are not installed."""

    is_available = False


@pytest.fixture
def no_codecs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if no pydicom pixel codec plugin were installed."""
    monkeypatch.setattr(transcode_module, "get_decoder", lambda uid: _Missing())
    monkeypatch.setattr(transcode_module, "get_encoder", lambda uid: _Missing())
    decodable.cache_clear()
    encodable.cache_clear()
    yield
    decodable.cache_clear()
    encodable.cache_clear()


@pytest.mark.usefixtures("no_codecs")
def test_capabilities_follow_the_installed_plugins() -> None:
    for uid in (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEG2000):
        assert not encodable(uid)
        assert not decodable(uid)
        assert not producible(ExplicitVRLittleEndian, uid)
    assert not producible(JPEGBaseline8Bit, ExplicitVRLittleEndian)
    # native to native needs no codec; the data set alone needs none either
    assert encodable(ExplicitVRLittleEndian)
    assert producible(ExplicitVRBigEndian, ExplicitVRLittleEndian)
    assert producible(ExplicitVRLittleEndian, RLELossless, has_pixel_data=False)
    assert targets_for(ImplicitVRLittleEndian) == (
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
    )


PRODUCIBLE_ROWS = [
    # same syntax: as stored
    (JPEGBaseline8Bit, JPEGBaseline8Bit, True, True),
    (MPEG2MPML, MPEG2MPML, True, True),
    (HTJ2K, HTJ2K, True, True),
    # never Implicit VR Little Endian or Big Endian (PS3.18 8.7.3), not even as stored
    (ImplicitVRLittleEndian, ImplicitVRLittleEndian, True, False),
    (ExplicitVRBigEndian, ExplicitVRBigEndian, True, False),
    (ExplicitVRLittleEndian, ImplicitVRLittleEndian, True, False),
    (ExplicitVRLittleEndian, ExplicitVRBigEndian, False, False),
    (JPEGBaseline8Bit, ImplicitVRLittleEndian, False, False),
    # unknown syntaxes
    (ExplicitVRLittleEndian, "1.2.3.4", True, False),
    ("1.2.3.4", ExplicitVRLittleEndian, True, False),
    ("1.2.3.4", ExplicitVRLittleEndian, False, False),
    # The gateway imports pynetdicom, which teaches pydicom JPEG XL's data set encoding.
    (JPEG_XL_LOSSLESS, ExplicitVRLittleEndian, False, True),
    # native to Explicit VR Little Endian (or deflated): re-encoded
    (ImplicitVRLittleEndian, ExplicitVRLittleEndian, True, True),
    (ExplicitVRBigEndian, ExplicitVRLittleEndian, True, True),
    (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, True, True),
    (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, True, True),
    # decodable to Explicit VR Little Endian
    (JPEGBaseline8Bit, ExplicitVRLittleEndian, True, True),
    (JPEGLosslessSV1, ExplicitVRLittleEndian, True, True),
    (HTJ2KLossless, ExplicitVRLittleEndian, True, True),
    (RLELossless, DeflatedExplicitVRLittleEndian, True, True),
    (ENCAPSULATED_UNCOMPRESSED, ExplicitVRLittleEndian, True, False),  # no decoder
    (JPEG2000MCLossless, ExplicitVRLittleEndian, True, False),
    # decodable and encodable to a compressed syntax, lossless or lossy
    (ImplicitVRLittleEndian, RLELossless, True, True),
    (ExplicitVRBigEndian, JPEGLSLossless, True, True),
    (JPEGBaseline8Bit, JPEG2000Lossless, True, True),
    (HTJ2K, RLELossless, True, True),
    (JPEG2000, JPEGLSLossless, True, True),
    (ExplicitVRLittleEndian, JPEGLSNearLossless, True, True),
    (RLELossless, JPEG2000, True, True),
    (ExplicitVRLittleEndian, JPEGBaseline8Bit, True, False),  # no encoder
    (RLELossless, JPEGLosslessSV1, True, False),
    (ExplicitVRLittleEndian, HTJ2KLossless, True, False),
    (ExplicitVRLittleEndian, ENCAPSULATED_UNCOMPRESSED, True, False),
    (ENCAPSULATED_UNCOMPRESSED, RLELossless, True, False),
    # video only as stored
    (MPEG2MPML, ExplicitVRLittleEndian, True, False),
    (MPEG4HP41, MPEG2MPML, True, False),
    (HEVC, JPEG2000Lossless, True, False),
    (ExplicitVRLittleEndian, MPEG4HP41, True, False),
    # without pixel data: any web syntax, the data set re-encoded
    (ExplicitVRLittleEndian, JPEGBaseline8Bit, False, True),
    (ImplicitVRLittleEndian, HTJ2KLossless, False, True),
    (ExplicitVRLittleEndian, MPEG4HP41, False, True),
    (MPEG2MPML, ExplicitVRLittleEndian, False, True),
    (ENCAPSULATED_UNCOMPRESSED, DeflatedExplicitVRLittleEndian, False, True),
    (JPEGBaseline8Bit, ENCAPSULATED_UNCOMPRESSED, False, True),
    (ExplicitVRLittleEndian, JPEG_XL_LOSSLESS, False, True),  # no pixel data: re-encoded
    (ExplicitVRLittleEndian, JPEG_XL_LOSSLESS, True, False),  # no JPEG XL encoder
]


@pytest.mark.parametrize(
    ("stored", "target", "has_pixel_data", "expected"),
    PRODUCIBLE_ROWS,
    ids=[
        f"{s}->{t}{'' if p else '-nopixels'}-{'yes' if e else 'no'}"
        for s, t, p, e in PRODUCIBLE_ROWS
    ],
)
def test_producible(stored: str, target: str, has_pixel_data: bool, expected: bool) -> None:
    assert producible(stored, target, has_pixel_data=has_pixel_data) is expected


def test_producible_assumes_pixel_data() -> None:
    assert not producible(ExplicitVRLittleEndian, JPEGBaseline8Bit)
    assert producible(ExplicitVRLittleEndian, JPEGBaseline8Bit, has_pixel_data=False)


def test_targets_for_native() -> None:
    assert set(targets_for(ImplicitVRLittleEndian)) == {*LOSSLESS_TARGETS, *LOSSY_TARGETS}
    assert set(targets_for(ExplicitVRLittleEndian)) == {*LOSSLESS_TARGETS, *LOSSY_TARGETS}


def test_targets_for_compressed_includes_itself() -> None:
    assert set(targets_for(JPEGBaseline8Bit)) == {
        JPEGBaseline8Bit,
        *LOSSLESS_TARGETS,
        *LOSSY_TARGETS,
    }


@pytest.mark.parametrize("stored", [MPEG2MPML, HEVC, ENCAPSULATED_UNCOMPRESSED])
def test_targets_for_only_as_stored(stored: str) -> None:
    assert targets_for(stored) == (stored,)


def test_targets_for_never_offers_non_web_syntaxes() -> None:
    assert targets_for(ExplicitVRBigEndian) == tuple(
        uid for uid in TRANSFER_SYNTAXES if uid in {*LOSSLESS_TARGETS, *LOSSY_TARGETS}
    )


@pytest.mark.parametrize("stored", list(TRANSFER_SYNTAXES))
def test_targets_for_agrees_with_producible(stored: str) -> None:
    for target in TRANSFER_SYNTAXES:
        assert (target in targets_for(stored)) is producible(stored, target)


# --------------------------------------------------------------------------------------
# Lossless round trips: pixel-exact, nothing else changed
# --------------------------------------------------------------------------------------

ROUND_TRIP_FILES = [
    "MR_small.dcm",  # Explicit VR LE, signed 16-bit
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "CT_small.dcm",
    "image_dfl.dcm",  # deflated, unsigned 8-bit
    "SC_rgb_rle_2frame.dcm",  # RGB, 2 frames
    "SC_rgb_rle_16bit_2frame.dcm",
    "ExplVR_BigEnd.dcm",  # big endian, planar configuration 1
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 YBR_RCT
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1 RGB
    "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline YBR_FULL_422: decoded pixels are exact
    "J2K_pixelrep_mismatch.dcm",  # signed 13-bit with an unsigned codestream
]


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize("name", ROUND_TRIP_FILES)
def test_lossless_round_trip(name: str, target: str, tmp_path: Path) -> None:
    src = DATA / name
    original = pixels(src)
    direct = run(src, tmp_path, target, "direct")
    explicit = run(src, tmp_path, ExplicitVRLittleEndian, "explicit")
    via = run(explicit, tmp_path, target, "via-explicit")
    for produced in (direct, via):
        ds = read(produced)
        assert ds.file_meta.TransferSyntaxUID == target
        decoded = ds.pixel_array
        assert decoded.shape == original.shape
        assert decoded.dtype.str[1:] == original.dtype.str[1:]  # kind and size, any order
        assert np.array_equal(decoded, original)
        assert_same_elements(src, produced)


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("rtdose.dcm", ExplicitVRLittleEndian),  # implicit, 32-bit, 15 frames
        ("rtdose_expb.dcm", ExplicitVRLittleEndian),  # big endian 32-bit samples
        ("rtdose_expb.dcm", DeflatedExplicitVRLittleEndian),
        ("rtdose_rle.dcm", ExplicitVRLittleEndian),  # RLE 32-bit, 15 frames
        ("SC_rgb_rle_32bit_2frame.dcm", ExplicitVRLittleEndian),
        ("liver_expb_1frame.dcm", ExplicitVRLittleEndian),  # big endian, 1 bit allocated
        ("examples_palette.dcm", RLELossless),
        ("examples_palette.dcm", JPEGLSLossless),
        ("examples_palette.dcm", JPEG2000Lossless),
        ("examples_jpeg2k.dcm", JPEGLSLossless),
        ("SC_rgb_small_odd_big_endian.dcm", ExplicitVRLittleEndian),  # 3x3 RGB in OW, odd
        ("SC_rgb_small_odd_big_endian.dcm", RLELossless),
    ],
)
def test_lossless_where_only_some_targets_fit(name: str, target: str, tmp_path: Path) -> None:
    src = DATA / name
    produced = run(src, tmp_path, target)
    assert np.array_equal(pixels(produced), pixels(src))
    assert_same_elements(src, produced)


def test_big_endian_matches_its_little_endian_twin(tmp_path: Path) -> None:
    for big, little in (
        ("rtdose_expb.dcm", "rtdose.dcm"),
        ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ):
        produced = read(run(DATA / big, tmp_path, ExplicitVRLittleEndian))
        assert produced.PixelData == read(DATA / little).PixelData


def test_big_endian_words_are_swapped_everywhere(tmp_path: Path) -> None:
    """OW/OF/OD values, at any depth, come out little endian (PS3.5 7.3); numbers too."""
    overlay = np.arange(8, dtype="<u2")
    floats = np.linspace(-1.5, 2.5, 12, dtype="<f4")
    doubles = np.array([1e-300, -2.5], dtype="<f8")
    ds = _image(rows=3, columns=4, float_pixels=floats, order=">")
    ds.add_new(0x60003000, "OW", overlay.astype(">u2").tobytes())  # Overlay Data
    item = Dataset()
    item.DoubleFloatPixelData = doubles.astype(">f8").tobytes()
    item.SmallestImagePixelValue = 513
    item["SmallestImagePixelValue"].VR = "US"
    ds.IconImageSequence = [item]
    src = _save(ds, tmp_path / "big.dcm", ExplicitVRBigEndian)

    produced = read(run(src, tmp_path, ExplicitVRLittleEndian))
    assert np.array_equal(produced.pixel_array, floats.reshape(3, 4))
    assert produced[0x60003000].value == overlay.tobytes()
    icon = produced.IconImageSequence[0]
    assert icon.DoubleFloatPixelData == doubles.tobytes()
    assert icon.SmallestImagePixelValue == 513


def test_multi_frame_is_encapsulated_with_a_basic_offset_table(tmp_path: Path) -> None:
    ds = read(DATA / "MR_small.dcm")
    frame = ds.pixel_array
    ds.PixelData = np.stack([frame, frame[::-1], frame.T]).astype("<i2").tobytes()
    ds.NumberOfFrames = 3
    src = _save(ds, tmp_path / "three-frames.dcm", ImplicitVRLittleEndian)
    for target in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        produced = read(run(src, tmp_path, target))
        assert produced["PixelData"].is_undefined_length
        offsets = parse_basic_offsets(produced.PixelData)
        assert len(offsets) == produced.NumberOfFrames == 3
        assert offsets[0] == 0 and offsets == sorted(set(offsets))
        assert np.array_equal(produced.pixel_array, pixels(src))


def test_same_syntax_is_copied_byte_for_byte(tmp_path: Path) -> None:
    src = DATA / "MR_small_jpeg_ls_lossless.dcm"
    dst = run(src, tmp_path, JPEGLSLossless)
    assert dst.read_bytes() == src.read_bytes()


def test_file_meta_is_rewritten(tmp_path: Path) -> None:
    src = DATA / "MR_small_RLE.dcm"
    before = read(src)
    dst = run(src, tmp_path, JPEGLSLossless)
    raw = dst.read_bytes()
    assert raw[128:132] == b"DICM"  # PS3.10 7.1: preamble and prefix
    after = read(dst)
    assert after.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert after.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
    assert after.file_meta.MediaStorageSOPClassUID == before.SOPClassUID
    assert after.SOPInstanceUID == before.SOPInstanceUID
    assert after.file_meta.ImplementationClassUID == PYDICOM_IMPLEMENTATION_UID


# --------------------------------------------------------------------------------------
# Colour model and image pixel description (PS3.5 8.2)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "target", "photometric"),
    [
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", ExplicitVRLittleEndian, "RGB"),  # JPEG YBR_FULL_422
        ("SC_rgb_jpeg_dcmtk.dcm", ExplicitVRLittleEndian, "RGB"),  # JPEG YBR_FULL
        ("GDCMJ2K_TextGBR.dcm", ExplicitVRLittleEndian, "RGB"),  # JPEG 2000 YBR_RCT
        ("SC_ybr_full_422_uncompressed.dcm", ExplicitVRLittleEndian, "YBR_FULL_422"),  # as is
        ("SC_ybr_full_422_uncompressed.dcm", RLELossless, "YBR_FULL"),  # now full resolution
        ("SC_rgb_rle.dcm", JPEG2000Lossless, "YBR_RCT"),  # PS3.5 8.2.4: MCT
        ("SC_rgb_rle.dcm", JPEG2000, "YBR_ICT"),
        ("SC_rgb_rle.dcm", JPEGLSLossless, "RGB"),
        ("SC_rgb_rle.dcm", RLELossless, "RGB"),
        ("MR_small.dcm", JPEG2000Lossless, "MONOCHROME2"),
    ],
)
def test_photometric_interpretation_matches_the_pixels(
    name: str, target: str, photometric: str, tmp_path: Path
) -> None:
    ds = read(run(DATA / name, tmp_path, target))
    assert ds.PhotometricInterpretation == photometric
    if ds.SamplesPerPixel == 3:
        assert ds.PlanarConfiguration == 0
    assert ds.HighBit == ds.BitsStored - 1


def test_decoded_ybr_422_is_full_size_rgb(tmp_path: Path) -> None:
    src = DATA / "SC_rgb_dcmtk_+eb+cy+np.dcm"
    ds = read(run(src, tmp_path, ExplicitVRLittleEndian))
    assert len(ds.PixelData) == ds.Rows * ds.Columns * 3
    assert ds["PixelData"].VR == "OB"
    assert not ds["PixelData"].is_undefined_length
    assert np.array_equal(ds.pixel_array, pixels(src))


def test_extended_offset_table_is_dropped(tmp_path: Path) -> None:
    """PS3.3 C.7.6.3.1.8: the table describes the stored fragments only."""
    ds = read(DATA / "SC_rgb_rle_2frame.dcm")
    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
        frames
    )
    src = _save(ds, tmp_path / "eot.dcm", RLELossless)
    for target in (ExplicitVRLittleEndian, JPEGLSLossless):
        produced = read(run(src, tmp_path, target))
        assert "ExtendedOffsetTable" not in produced
        assert "ExtendedOffsetTableLengths" not in produced
        assert np.array_equal(produced.pixel_array, pixels(src))


def test_high_bit_is_made_consistent(tmp_path: Path) -> None:
    """PS3.3 C.7.6.3.1: High Bit is one less than Bits Stored."""
    ds = read(DATA / "MR_small_RLE.dcm")
    ds.HighBit = 7
    src = _save(ds, tmp_path / "high-bit.dcm", RLELossless)
    for target in (ExplicitVRLittleEndian, JPEGLSLossless):
        assert read(run(src, tmp_path, target)).HighBit == 15


def test_odd_length_pixel_data_is_padded(tmp_path: Path) -> None:
    """PS3.5 8.1.1: 3x3 RGB decoded is 27 bytes, sent as 28."""
    src = DATA / "SC_rgb_small_odd_jpeg.dcm"
    ds = read(run(src, tmp_path, ExplicitVRLittleEndian))
    assert len(ds.PixelData) == 28
    assert np.array_equal(ds.pixel_array, pixels(src))


def test_planar_configuration_1_is_reordered(tmp_path: Path) -> None:
    src = DATA / "ExplVR_BigEnd.dcm"
    assert read(src).PlanarConfiguration == 1
    ds = read(run(src, tmp_path, JPEGLSLossless))
    assert ds.PlanarConfiguration == 0
    assert np.array_equal(ds.pixel_array, pixels(src))


# --------------------------------------------------------------------------------------
# Lossy compression (PS3.3 C.7.6.1.1.5)
# --------------------------------------------------------------------------------------


def _ratio(ds: Dataset) -> float:
    native: int = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    return native * int(ds.get("NumberOfFrames") or 1) / len(ds.PixelData)


@pytest.mark.parametrize("name", ["MR_small.dcm", "SC_rgb_rle_2frame.dcm", "CT_small.dcm"])
def test_near_lossless_jpeg_ls(name: str, tmp_path: Path) -> None:
    src = DATA / name
    ds = read(run(src, tmp_path, JPEGLSNearLossless))
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_14495_1"
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(_ratio(ds), abs=0.01)
    error = np.abs(ds.pixel_array.astype(np.int64) - pixels(src).astype(np.int64))
    assert 0 < error.max() <= JPEG_LS_NEAR


@pytest.mark.parametrize("name", ["MR_small.dcm", "SC_rgb_rle_2frame.dcm", "CT_small.dcm"])
def test_lossy_jpeg_2000(name: str, tmp_path: Path) -> None:
    src = DATA / name
    ds = read(run(src, tmp_path, JPEG2000))
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_15444_1"
    ratio = float(ds.LossyImageCompressionRatio)
    assert ratio == pytest.approx(_ratio(ds), abs=0.01)
    assert ratio >= 0.9 * JPEG_2000_RATIO  # the rate asked for is a bound on the size
    original = pixels(src).astype(np.float64)
    assert not np.array_equal(ds.pixel_array, original)
    assert np.abs(ds.pixel_array - original).mean() < 0.02 * np.ptp(original)


def test_lossless_targets_set_no_lossy_flag(tmp_path: Path) -> None:
    for target in LOSSLESS_TARGETS:
        ds = read(run(DATA / "MR_small_RLE.dcm", tmp_path, target))
        assert "LossyImageCompression" not in ds
        assert "LossyImageCompressionMethod" not in ds


def _relabelled(tmp_path: Path, name: str, syntax: str, flag: str | None) -> Path:
    """A copy of ``name`` claiming another (equivalent) syntax and lossy flag."""
    ds = read(DATA / name)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    for keyword in (
        "LossyImageCompression",
        "LossyImageCompressionMethod",
        "LossyImageCompressionRatio",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    if flag is not None:
        ds.LossyImageCompression = flag
    return _save(ds, tmp_path / f"relabelled-{flag}.dcm", syntax)


@pytest.mark.parametrize(
    ("name", "syntax", "flag", "expected", "method"),
    [
        # may be lossy, nothing said: lossy
        ("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless, None, "01", "ISO_14495_1"),
        ("MR_small_jp2klossless.dcm", JPEG2000, None, "01", "ISO_15444_1"),
        # may be lossy, the file says reversible: believed
        ("MR_small_jp2klossless.dcm", JPEG2000, "00", "00", None),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSNearLossless, "00", "00", None),
        # JPEG baseline is always lossy, whatever the file says
        ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit, "00", "01", "ISO_10918_1"),
        ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit, None, "01", "ISO_10918_1"),
        # lossless syntaxes: nothing added
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless, None, None, None),
    ],
)
@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, JPEGLSLossless])
def test_lossy_stored_stays_lossy(
    name: str,
    syntax: str,
    flag: str | None,
    expected: str | None,
    method: str | None,
    target: str,
    tmp_path: Path,
) -> None:
    src = _relabelled(tmp_path, name, syntax, flag)
    ds = read(run(src, tmp_path, target))
    assert ds.get("LossyImageCompression") == expected
    assert ds.get("LossyImageCompressionMethod") == method
    if method is not None:
        assert float(ds.LossyImageCompressionRatio) > 1


def test_lossy_flag_already_set_is_kept_as_is(tmp_path: Path) -> None:
    src = DATA / "JPEG2000.dcm"  # "01", no method, no ratio
    ds = read(run(src, tmp_path, ExplicitVRLittleEndian))
    assert ds.LossyImageCompression == "01"
    assert "LossyImageCompressionMethod" not in ds
    assert np.array_equal(ds.pixel_array, pixels(src))


def test_successive_lossy_compressions_are_listed_in_order(tmp_path: Path) -> None:
    src = DATA / "SC_ybr_full_422_uncompressed.dcm"  # "01", ISO_10918_1, 21.521
    ds = read(run(src, tmp_path, JPEG2000))
    assert ds.LossyImageCompression == "01"
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    ratios = [float(r) for r in ds.LossyImageCompressionRatio]
    assert ratios[0] == pytest.approx(21.521)
    assert ratios[1] == pytest.approx(_ratio(ds), abs=0.01)


def test_lossy_stored_to_lossy_target_records_both(tmp_path: Path) -> None:
    src = _relabelled(tmp_path, "SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit, None)
    ds = read(run(src, tmp_path, JPEG2000))
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    ratios = [float(r) for r in ds.LossyImageCompressionRatio]
    assert len(ratios) == 2 and ratios[0] > 1
    assert ratios[1] == pytest.approx(_ratio(ds), abs=0.01)


def test_ratio_left_out_when_history_does_not_correspond(tmp_path: Path) -> None:
    ds = read(DATA / "MR_small.dcm")
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = ["ISO_10918_1", "ISO_14495_1"]
    ds.LossyImageCompressionRatio = "8"
    src = _save(ds, tmp_path / "odd-history.dcm", ExplicitVRLittleEndian)
    out = read(run(src, tmp_path, JPEGLSNearLossless))
    assert list(out.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_14495_1", "ISO_14495_1"]
    assert out.LossyImageCompressionRatio == 8


# --------------------------------------------------------------------------------------
# Instances without pixel data, icons
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("test-SR.dcm", DeflatedExplicitVRLittleEndian),
        ("test-SR.dcm", JPEG2000Lossless),
        ("test-SR.dcm", JPEGBaseline8Bit),
        ("test-SR.dcm", MPEG4HP41),
        ("rtplan.dcm", ExplicitVRLittleEndian),  # implicit
        ("UN_sequence.dcm", ExplicitVRLittleEndian),  # JPEG lossless syntax, no pixel data
    ],
)
def test_without_pixel_data(name: str, target: str, tmp_path: Path) -> None:
    src = DATA / name
    dst = run(src, tmp_path, target)
    ds = read(dst)
    assert ds.file_meta.TransferSyntaxUID == target
    assert "PixelData" not in ds
    assert_same_elements(src, dst)


def _rle_icon() -> Dataset:
    """An Icon Image Sequence item (PS3.3 F.7) whose pixel data is RLE encapsulated."""
    source = read(DATA / "SC_rgb_rle.dcm")
    icon = Dataset()
    for keyword in (
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    ):
        icon[keyword] = source[keyword]
    icon.PixelData = source.PixelData
    icon["PixelData"].VR = "OB"
    icon["PixelData"].is_undefined_length = True
    return icon


@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000])
def test_encapsulated_icons_become_native(target: str, tmp_path: Path) -> None:
    ds = read(DATA / "MR_small_RLE.dcm")
    ds.IconImageSequence = [_rle_icon()]
    src = _save(ds, tmp_path / "with-icon.dcm", RLELossless)
    assert read(src).IconImageSequence[0]["PixelData"].is_undefined_length

    produced = read(run(src, tmp_path, target))
    icon = produced.IconImageSequence[0]
    assert not icon["PixelData"].is_undefined_length
    assert len(icon.PixelData) == icon.Rows * icon.Columns * 3
    assert icon.PlanarConfiguration == 0
    expected = pixels(DATA / "SC_rgb_rle.dcm")
    assert np.array_equal(np.frombuffer(icon.PixelData, np.uint8).reshape(expected.shape), expected)


# --------------------------------------------------------------------------------------
# What cannot be produced: 406
# --------------------------------------------------------------------------------------


def _not_acceptable(src: Path, target: str, tmp_path: Path) -> NotAcceptable:
    dst = tmp_path / "refused.dcm"
    with pytest.raises(NotAcceptable) as caught:
        transcode(src, dst, target)
    assert caught.value.status == 406
    return caught.value


@pytest.mark.parametrize(
    ("name", "target", "reason"),
    [
        ("rtdose.dcm", RLELossless, "cannot be encoded"),  # 32 bits allocated
        ("rtdose.dcm", JPEGLSLossless, "cannot be encoded"),
        ("SC_rgb_rle_32bit.dcm", JPEGLSLossless, "cannot be encoded"),
        ("liver_1frame.dcm", RLELossless, "cannot be encoded"),  # 1 bit allocated
        ("examples_palette.dcm", JPEGLSNearLossless, "cannot be encoded"),  # lossy palette
        ("examples_palette.dcm", JPEG2000, "cannot be encoded"),
        ("MR_small.dcm", ImplicitVRLittleEndian, "PS3.18 8.7.3"),
        ("MR_small_bigendian.dcm", ExplicitVRBigEndian, "PS3.18 8.7.3"),
        ("MR_small.dcm", JPEGBaseline8Bit, "cannot encode"),
        ("MR_small.dcm", MPEG2MPML, "video"),
        ("MR_small.dcm", "1.2.3.4", "not supported"),
    ],
)
def test_not_acceptable(name: str, target: str, reason: str, tmp_path: Path) -> None:
    error = _not_acceptable(DATA / name, target, tmp_path)
    assert reason in error.message
    assert "transfer-syntax=*" in error.message
    assert error.detail["requested"] == target
    assert error.detail["stored"] == read(DATA / name).file_meta.TransferSyntaxUID
    assert not (tmp_path / "refused.dcm").exists()


def test_float_pixel_data_has_no_compressed_form(tmp_path: Path) -> None:
    floats = np.linspace(0, 1, 12, dtype="<f4")
    src = _save(
        _image(rows=3, columns=4, float_pixels=floats), tmp_path / "f.dcm", ExplicitVRLittleEndian
    )
    for target in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        assert "FloatPixelData" in _not_acceptable(src, target, tmp_path).message
    produced = read(run(src, tmp_path, DeflatedExplicitVRLittleEndian))
    assert np.array_equal(produced.pixel_array, floats.reshape(3, 4))


def test_video_is_not_decoded(tmp_path: Path) -> None:
    ds = _image(rows=4, columns=4)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\0" * 12])
    src = _save(ds, tmp_path / "video.dcm", MPEG2MPML)
    assert "video" in _not_acceptable(src, ExplicitVRLittleEndian, tmp_path).message


def test_corrupt_codestream(tmp_path: Path) -> None:
    ds = read(DATA / "MR_small_jpeg_ls_lossless.dcm")
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x5a" * 64])
    src = _save(ds, tmp_path / "corrupt.dcm", JPEGLSLossless)
    error = _not_acceptable(src, ExplicitVRLittleEndian, tmp_path)
    assert "cannot be decoded" in error.message


def test_missing_frames(tmp_path: Path) -> None:
    ds = read(DATA / "SC_rgb_rle_2frame.dcm")
    ds.NumberOfFrames = 3  # two fragments for three frames
    src = _save(ds, tmp_path / "missing-frame.dcm", RLELossless)
    for target in (ExplicitVRLittleEndian, JPEGLSLossless):
        message = _not_acceptable(src, target, tmp_path).message
        assert "2 of 3 frames" in message or "cannot be decoded" in message


@pytest.mark.parametrize(
    "content",
    [b"", b"not dicom at all" * 20, (DATA / "MR_small.dcm").read_bytes()[:300]],
    ids=["empty", "garbage", "meta-only"],
)
def test_unreadable_file(content: bytes, tmp_path: Path) -> None:
    src = tmp_path / "bad.dcm"
    src.write_bytes(content)
    message = _not_acceptable(src, ExplicitVRLittleEndian, tmp_path).message
    assert "not a readable DICOM" in message or "empty data set" in message


@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, RLELossless])
def test_truncated_pixel_data(target: str, tmp_path: Path) -> None:
    src = tmp_path / "cut.dcm"
    src.write_bytes((DATA / "MR_small_implicit.dcm").read_bytes()[:-1000])
    message = _not_acceptable(src, target, tmp_path).message
    assert "truncated" in message or "cannot be decoded" in message


@pytest.mark.parametrize(
    ("name", "target"),
    [("SC_rgb_small_odd.dcm", JPEG2000Lossless), ("JPEGLSNearLossless_16.dcm", JPEG2000)],
)
def test_images_too_small_for_the_jpeg_2000_encoder(name: str, target: str, tmp_path: Path) -> None:
    """openjpeg always uses 6 wavelet resolutions: an image under 32 pixels wide or high
    cannot be encoded; the 406 says so instead of a broken file."""
    error = _not_acceptable(DATA / name, target, tmp_path)
    assert "cannot be encoded" in error.message


def test_error_survives_the_process_boundary(tmp_path: Path) -> None:
    error = _not_acceptable(DATA / "rtdose.dcm", RLELossless, tmp_path)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, NotAcceptable)
    assert copy.body() == error.body()


def test_runs_in_a_process_pool(tmp_path: Path) -> None:
    src = DATA / "SC_rgb_rle_2frame.dcm"
    dst = tmp_path / "pooled.dcm"
    with ProcessPoolExecutor(max_workers=1) as pool:
        assert pool.submit(transcode, src, dst, JPEGLSLossless).result() == JPEGLSLossless
        refused = pool.submit(transcode, DATA / "rtdose.dcm", tmp_path / "no.dcm", RLELossless)
        with pytest.raises(NotAcceptable) as caught:
            refused.result()
    assert caught.value.detail["requested"] == RLELossless
    assert np.array_equal(pixels(dst), pixels(src))


# --------------------------------------------------------------------------------------
# Helpers building files
# --------------------------------------------------------------------------------------


def _image(
    *, rows: int, columns: int, float_pixels: NDArray[Any] | None = None, order: str = "<"
) -> Dataset:
    """A minimal image; float pixel data are written in byte order ``order``."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if float_pixels is not None:
        ds.BitsAllocated = 32
        ds.FloatPixelData = float_pixels.astype(f"{order}f4").tobytes()
        ds["FloatPixelData"].VR = "OF"
    else:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
    return ds


def _save(ds: Dataset, path: Path, syntax: str) -> Path:
    """Write ``ds`` as a Part 10 file in ``syntax``; byte values must already be in its
    byte order (pydicom does not swap them)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(syntax)
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    dcmwrite(path, ds, enforce_file_format=True)
    return path
