"""imaging.frames and imaging.bulkdata on pydicom's bundled files: every frame located by
seeking equals pydicom's own reading of that frame."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels.utils import pixel_array

from ncpeh_dicomweb.errors import BackendError, NotAcceptable, NotFound
from ncpeh_dicomweb.imaging.bulkdata import parse_bulk_path, read_bulk
from ncpeh_dicomweb.imaging.frames import (
    decode_frame,
    parse_frame_list,
    pixel_layout,
    read_frame,
)

FILES = Path(pydicom.__file__).parent / "data" / "test_files"

ENCAPSULATED = [
    "examples_ybr_color.dcm",  # JPEG baseline, 30 frames
    "SC_rgb_rle_2frame.dcm",
    "rtdose_rle.dcm",  # RLE, 15 frames
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
]
NATIVE = ["CT_small.dcm", "MR_small_implicit.dcm", "rtdose.dcm", "examples_rgb_color.dcm"]
SWAPPED = ["MR_small_bigendian.dcm", "rtdose_expb.dcm", "liver_1frame.dcm"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", (1,)), ("3,1,2", (3, 1, 2)), ("2, 3", (2, 3)), ("10", (10,))],
)
def test_frame_lists(text: str, expected: tuple[int, ...]) -> None:
    assert parse_frame_list(text) == expected


@pytest.mark.parametrize(
    "text", ["", "0", "-1", "1,", "a", "1.5", "1;2", "9999999999", "2, 2", "1,2,1"]
)
def test_bad_frame_lists(text: str) -> None:
    with pytest.raises(ValueError, match="frame"):
        parse_frame_list(text)


def test_a_frame_asked_thousands_of_times_is_refused() -> None:
    """Regression: ``frames/1,1,1,...`` (3000 times, a 6 kB URL) was answered with 3000
    copies of frame 1, 99.5 MB for a 32 kB frame (and 3000 decodes of a compressed one)."""
    with pytest.raises(ValueError, match="frame 1 is asked more than once"):
        parse_frame_list(",".join(["1"] * 3000))


@pytest.mark.parametrize("name", ENCAPSULATED)
def test_encapsulated_frames_equal_pydicoms(name: str) -> None:
    layout = pixel_layout(FILES / name)
    ds = pydicom.dcmread(FILES / name)
    expected = list(generate_frames(ds.PixelData, number_of_frames=layout.frames))
    assert layout.encapsulated and layout.spans
    assert [read_frame(FILES / name, layout, n) for n in range(1, layout.frames + 1)] == expected


@pytest.mark.parametrize("name", NATIVE)
def test_native_frames_are_slices(name: str) -> None:
    layout = pixel_layout(FILES / name)
    assert not layout.encapsulated and len(layout.spans) == layout.frames
    for n in range(1, layout.frames + 1):
        array = pixel_array(FILES / name, index=n - 1)
        assert read_frame(FILES / name, layout, n) == array.tobytes()


@pytest.mark.parametrize("name", SWAPPED)
def test_frames_that_cannot_be_sliced_are_decoded(name: str) -> None:
    """Big endian and 1-bit frames: no span, the frame comes from pydicom, little endian."""
    layout = pixel_layout(FILES / name)
    assert layout.spans == ()
    array = pixel_array(FILES / name, index=0)
    frame = read_frame(FILES / name, layout, 1)
    if int(pydicom.dcmread(FILES / name, stop_before_pixels=True).BitsAllocated) == 1:
        assert frame == np.packbits(array.ravel(), bitorder="little").tobytes()
    else:
        assert frame == array.astype(array.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_decoded_frames(name: str) -> None:
    array = pixel_array(FILES / name, index=0)
    assert decode_frame(FILES / name, 1) == array.tobytes()


def _reencapsulated(tmp_path: Path, extended: bool, offsets: bool) -> tuple[Path, list[bytes]]:
    """rtdose_rle with its frames split in two fragments each: only an offset table can tell
    where a frame starts."""
    ds = pydicom.dcmread(FILES / "rtdose_rle.dcm")
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    if extended:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            frames
        )
    else:
        ds.PixelData = encapsulate(frames, fragments_per_frame=2, has_bot=offsets)
    path = tmp_path / "split.dcm"
    ds.save_as(path)
    return path, frames


@pytest.mark.parametrize("extended", [False, True])
def test_offset_tables_group_fragments(tmp_path: Path, extended: bool) -> None:
    path, frames = _reencapsulated(tmp_path, extended, offsets=True)
    layout = pixel_layout(path)
    assert layout.spans
    assert [read_frame(path, layout, n) for n in (15, 1, 8)] == [frames[14], frames[0], frames[7]]


def test_without_offset_table_markers_decide(tmp_path: Path) -> None:
    path, _ = _reencapsulated(tmp_path, extended=False, offsets=False)
    layout = pixel_layout(path)
    assert layout.spans == ()
    # RLE has no end-of-frame marker: pydicom's search cannot split it; JPEG can (below).
    ybr = tmp_path / "ybr.dcm"
    ds = pydicom.dcmread(FILES / "examples_ybr_color.dcm")
    jpeg = list(generate_frames(ds.PixelData, number_of_frames=30))
    ds.PixelData = encapsulate(jpeg, fragments_per_frame=2, has_bot=False)
    ds.save_as(ybr)
    layout = pixel_layout(ybr)
    assert read_frame(ybr, layout, 7) == jpeg[6]


def test_frame_beyond_the_last_is_not_found() -> None:
    layout = pixel_layout(FILES / "rtdose.dcm")
    with pytest.raises(NotFound):
        read_frame(FILES / "rtdose.dcm", layout, 16)


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtplan.dcm", "badVR.dcm"])
def test_no_pixel_data_or_unreadable(name: str) -> None:
    with pytest.raises(NotAcceptable):
        pixel_layout(FILES / name)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    path = tmp_path / "cut.dcm"
    shutil.copyfile(FILES / "CT_small.dcm", path)
    with path.open("r+b") as fp:
        pydicom.dcmread(fp, stop_before_pixels=True)
        fp.truncate(fp.tell() + 1000)  # the Pixel Data element says 32768 bytes
    with pytest.raises(BackendError, match=r"shorter|truncated"):
        read_frame(path, pixel_layout(path), 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7FE00010", ((0x7FE00010, 0),)),
        ("7fe00010", ((0x7FE00010, 0),)),
        ("54000100/1/54001010", ((0x54000100, 1), (0x54001010, 0))),
        ("00081115/2/00081199/1/00081155", ((0x00081115, 2), (0x00081199, 1), (0x00081155, 0))),
    ],
)
def test_bulk_paths(text: str, expected: object) -> None:
    assert parse_bulk_path(text) == expected


@pytest.mark.parametrize("text", ["", "7FE0001", "54000100/0/54001010", "54000100/1", "x" * 8])
def test_bad_bulk_paths(text: str) -> None:
    with pytest.raises(ValueError, match=r"tag|path|item"):
        parse_bulk_path(text)


def test_bulk_values_in_sequences() -> None:
    ds = pydicom.dcmread(FILES / "waveform_ecg.dcm")
    for number, item in enumerate(ds.WaveformSequence, start=1):
        got = read_bulk(FILES / "waveform_ecg.dcm", parse_bulk_path(f"54000100/{number}/54001010"))
        assert got == item.WaveformData
    with pytest.raises(NotFound):
        read_bulk(FILES / "waveform_ecg.dcm", parse_bulk_path("54000100/9/54001010"))
    with pytest.raises(NotFound):
        read_bulk(FILES / "waveform_ecg.dcm", parse_bulk_path("00991010"))


def test_bulk_value_of_a_text_element_is_its_encoding() -> None:
    assert (
        read_bulk(FILES / "CT_small.dcm", parse_bulk_path("00100010")) == b"CompressedSamples^CT1 "
    )
