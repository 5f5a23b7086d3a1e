"""Transfer-syntax negotiation and transcoding of instance retrieves, on a DICOMweb site and on
DIMSE sites: the PACS sends instances as stored, the gateway converts them, losslessly.

pydicom's MR_small.dcm has twins (RLE, JPEG 2000, JPEG-LS, Implicit VR, Big Endian...) in one
series, so that series is a study of mixed syntaxes.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from tests.conftest import DimseGateway, Loaded
from tests.integration.multipart_split import split_multipart

pytestmark = pytest.mark.integration

SITES = ["web", "get", "move"]
MR_TWINS = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
]


def _series_url(gw: DimseGateway, site: str, item: Loaded) -> str:
    return f"{gw.root(site)}/studies/{item.study}/series/{item.series}"


def _retrieve(url: str, accept: str | None) -> list[tuple[dict[str, str], bytes]]:
    headers = {"Accept": accept} if accept is not None else {}
    response = requests.get(url, headers=headers, timeout=120)
    assert response.status_code == 200, response.text[:500]
    parts: list[tuple[dict[str, str], bytes]] = split_multipart(
        response.headers["Content-Type"], response.content
    )
    return parts


def _by_sop(parts: list[tuple[dict[str, str], bytes]]) -> dict[str, tuple[str, pydicom.Dataset]]:
    out = {}
    for headers, body in parts:
        ds = pydicom.dcmread(io.BytesIO(body))
        syntax = str(ds.file_meta.TransferSyntaxUID)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
        out[str(ds.SOPInstanceUID)] = (syntax, ds)
    return out


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (None, ExplicitVRLittleEndian),
        ('multipart/related; type="application/dicom"', ExplicitVRLittleEndian),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={RLELossless}',
            RLELossless,
        ),
        (
            f"multipart/related; type=application/dicom; transfer-syntax={JPEGLSLossless}",
            JPEGLSLossless,
        ),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={JPEG2000Lossless}',
            JPEG2000Lossless,
        ),
        # Preferred JPEG baseline cannot be made (no encoder): the next choice by q is used.
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit},'
            f' multipart/related; type="application/dicom"; transfer-syntax={RLELossless};q=0.5',
            RLELossless,
        ),
    ],
)
def test_mixed_series_arrives_whole_in_the_syntax_asked_for(
    loaded: Callable[[str], Loaded],
    dimse_gateway: DimseGateway,
    site: str,
    accept: str | None,
    wanted: str,
) -> None:
    twins = {loaded(name).sop: loaded(name) for name in MR_TWINS}
    parts = _by_sop(_retrieve(_series_url(dimse_gateway, site, loaded("MR_small.dcm")), accept))
    assert set(twins) <= set(parts)
    for sop, item in twins.items():
        syntax, ds = parts[sop]
        assert syntax == wanted, item.path.name
        original = pydicom.dcmread(item.path)
        assert np.array_equal(ds.pixel_array, original.pixel_array), item.path.name
        assert ds.PatientName == original.PatientName and ds.Rows == original.Rows


@pytest.mark.parametrize("site", SITES)
def test_as_stored_keeps_every_syntax(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    parts = _by_sop(_retrieve(_series_url(dimse_gateway, site, loaded("MR_small.dcm")), accept))
    for name in MR_TWINS:
        item = loaded(name)
        stored = str(
            pydicom.dcmread(item.path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        )
        # PS3.18 8.7.3 keeps Implicit VR and Big Endian off the web: those become Explicit.
        off_web = stored in (ImplicitVRLittleEndian, ExplicitVRBigEndian)
        assert parts[item.sop][0] == (ExplicitVRLittleEndian if off_web else stored), name


@pytest.mark.parametrize("site", SITES)
def test_unproducible_syntax_is_406_naming_what_can_be_made(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    url = _series_url(dimse_gateway, site, loaded("MR_small.dcm"))
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit}'
    answer = requests.get(url, headers={"Accept": accept}, timeout=60)
    assert answer.status_code == 406, answer.text
    body = answer.json()
    assert RLELossless in body["message"] and ExplicitVRLittleEndian in body["message"]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", ["rtdose_expb.dcm", "MR_small_bigendian.dcm"])
def test_big_endian_becomes_explicit_little_endian_with_the_same_pixels(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str, name: str
) -> None:
    """32-bit Big Endian samples are swapped whole (Orthanc's own conversion swaps them word by
    word); the gateway's answer decodes to what pydicom reads from the stored file."""
    item = loaded(name)
    ((_, body),) = _retrieve(item.url(dimse_gateway, site), None)
    ds = pydicom.dcmread(io.BytesIO(body))
    assert str(ds.file_meta.TransferSyntaxUID) == ExplicitVRLittleEndian
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(item.path).pixel_array)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize(
    "name",
    [
        "liver_1frame.dcm",  # 1-bit pixels: no JPEG 2000 form
        "rtdose_1frame.dcm",  # 32 bits stored: past the encoder's 24
        "badVR.dcm",  # an element pydicom cannot read: nothing can be re-encoded
    ],
)
def test_one_instance_that_cannot_be_made_in_the_syntax_named_is_406(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str, name: str
) -> None:
    """The syntax is named and the instance alone is asked for: 406 before anything is sent
    (in a series it would go as stored, labelled: the rest of the series is still wanted)."""
    item = loaded(name)
    url = f"{_series_url(dimse_gateway, site, item)}/instances/{item.sop}"
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG2000Lossless}'
    answer = requests.get(url, headers={"Accept": accept}, timeout=60)
    assert answer.status_code == 406, answer.text[:300]
    assert answer.json()["detail"]["asked"] == JPEG2000Lossless
    # Not named (the default) or as stored: the instance is served.
    for accept in ('multipart/related; type="application/dicom"; transfer-syntax=*', None):
        parts = _retrieve(url, accept)
        assert len(parts) == 1
