"""Frames passed through from a DICOMweb PACS are labelled with the syntax they carry."""

from __future__ import annotations

import pytest

from ncpeh_dicomweb.backends.base import PartHead
from ncpeh_dicomweb.backends.dicomweb import _labelled_frame
from ncpeh_dicomweb.dicomweb.multipart import parse_content_type
from ncpeh_dicomweb.errors import BackendError

J2K = "1.2.840.10008.1.2.4.91"


@pytest.mark.parametrize(
    ("part", "outer", "expected"),
    [
        # Orthanc: the syntax inside the quoted type of the response, parts unlabelled
        (None, f'multipart/related; type="image/jp2; transfer-syntax={J2K}"; boundary=b', J2K),
        # the part says it itself (PS3.18 8.7.3.3.2)
        (
            f"image/jp2; transfer-syntax={J2K}",
            'multipart/related; type="image/jp2"; boundary=b',
            J2K,
        ),
        (
            'application/octet-stream; transfer-syntax="1.2.840.10008.1.2.1"',
            "multipart/related; boundary=b",
            "1.2.840.10008.1.2.1",
        ),
    ],
)
def test_labels(part: str | None, outer: str, expected: str) -> None:
    headers = {"content-location": "x"} if part is None else {"content-type": part}
    label = _labelled_frame(PartHead(headers), outer).headers["content-type"]
    assert label.endswith(f"; transfer-syntax={expected}")


@pytest.mark.parametrize(
    ("part", "outer"),
    [
        (None, 'multipart/related; type="image/jp2"; boundary=b'),
        ("image/jp2; transfer-syntax=not-a-uid", "multipart/related; boundary=b"),
        ("application/octet-stream", "multipart/related; boundary=b"),
    ],
)
def test_unlabelled_frames_are_refused(part: str | None, outer: str) -> None:
    headers = {} if part is None else {"content-type": part}
    with pytest.raises(BackendError, match="transfer syntax"):
        _labelled_frame(PartHead(headers), outer)


def test_parse_content_type() -> None:
    media, params = parse_content_type(
        'Multipart/Related; TYPE="image/jp2; transfer-syntax=1.2"; boundary=abc'
    )
    assert media == "multipart/related"
    assert params == {"type": "image/jp2; transfer-syntax=1.2", "boundary": "abc"}
