"""Pixel work keeps the gateway's memory bounded: thumbnails of every instance of the 500-slice
study and every frame of a 100-frame instance, fetched as a viewer does (one request each),
through a DICOMweb site and a DIMSE site."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import psutil
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MultiFrameGrayscaleWordSecondaryCaptureImageStorage

from tests.conftest import DimseGateway, Pacs
from tests.integration.util import pacs_json, reset_peak_rss, status_kb

pytestmark = pytest.mark.integration

OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
FRAMES, SIZE = 100, 512
STUDY = "1.2.826.0.1.3680043.8.498.100100"
SERIES, SOP = f"{STUDY}.1", f"{STUDY}.1.1"


def _hundred_frames() -> bytes:
    """A 100-frame, 512x512, 16-bit instance (50 MB): each frame its number in every pixel."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = SOP
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, SOP
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.PatientID, ds.PatientName, ds.Modality = "MULTIFRAME-100", "Frames^Hundred", "OT"
    ds.Rows = ds.Columns = SIZE
    ds.NumberOfFrames = FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    frames = np.repeat(np.arange(1, FRAMES + 1, dtype=np.uint16), SIZE * SIZE)
    ds.PixelData = frames.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def hundred_frames(pacs: Pacs) -> None:
    stored = requests.post(f"{pacs.url}/instances", data=_hundred_frames(), timeout=120)
    assert stored.status_code == 200, stored.text


def _growth_mb(pid: int, before_kb: int) -> float:
    return (status_kb(pid, "VmHWM") - before_kb) / 1024


def _workers_mb(pid: int) -> float:
    """Peak resident memory of the imaging pool's worker processes, together."""
    total = 0
    for worker in psutil.Process(pid).children(recursive=True):
        # a worker replaced (max_tasks_per_child) since it was listed has no figure
        with contextlib.suppress(AssertionError, OSError):
            total += status_kb(worker.pid, "VmHWM")
    return total / 1024


@pytest.mark.parametrize("site", ["web", "get"])
def test_every_frame_of_a_hundred_frame_instance(
    hundred_frames: None, dimse_gateway: DimseGateway, site: str
) -> None:
    url = f"{dimse_gateway.root(site)}/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames"
    warm = requests.get(f"{url}/1", headers={"Accept": OHIF_FRAMES}, timeout=120)
    assert warm.status_code == 200, warm.text[:300]
    before_kb = status_kb(dimse_gateway.pid, "VmRSS")
    reset_peak_rss(dimse_gateway.pid)
    with requests.Session() as session:
        for number in range(1, FRAMES + 1):
            answer = session.get(f"{url}/{number}", headers={"Accept": OHIF_FRAMES}, timeout=60)
            assert answer.status_code == 200
            body = answer.content
            assert body.count(number.to_bytes(2, "little") * 64) > 0, number
    growth = _growth_mb(dimse_gateway.pid, before_kb)
    print(f"\n{site}: {FRAMES} frames of a 50 MB instance, peak RSS growth {growth:.1f} MB")
    assert growth < 40


@pytest.mark.parametrize("site", ["web", "get"])
def test_thumbnails_of_every_instance_of_the_large_study(
    pacs: Pacs, dimse_gateway: DimseGateway, site: str
) -> None:
    (study,) = pacs_json(pacs, "studies", "PatientID=LARGE-CT-1")
    study_uid = study["0020000D"]["Value"][0]
    instances = pacs_json(pacs, f"studies/{study_uid}/instances")
    assert len(instances) >= 500
    root = f"{dimse_gateway.root(site)}/studies/{study_uid}"
    # As a viewer does: the metadata first (on a DIMSE site, one C-GET fills the cache).
    warm = requests.get(f"{root}/metadata", timeout=300)
    assert warm.status_code == 200, warm.text[:300]
    before_kb = status_kb(dimse_gateway.pid, "VmRSS")
    reset_peak_rss(dimse_gateway.pid)
    with requests.Session() as session:
        for dataset in instances:
            series, sop = dataset["0020000E"]["Value"][0], dataset["00080018"]["Value"][0]
            answer = session.get(
                f"{root}/series/{series}/instances/{sop}/thumbnail?viewport=128,128",
                headers={"Accept": "image/jpeg"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text[:300]
            assert max(Image.open(io.BytesIO(answer.content)).size) == 128
    growth = _growth_mb(dimse_gateway.pid, before_kb)
    workers = _workers_mb(dimse_gateway.pid)
    print(
        f"\n{site}: {len(instances)} thumbnails, peak RSS growth {growth:.1f} MB; "
        f"imaging workers' peak RSS {workers:.0f} MB in all"
    )
    assert growth < 40
    assert workers < 4 * 250  # at most 4 workers, each decoding one 512x512 frame at a time


def test_pydicom_reads_the_generated_instance() -> None:
    ds = pydicom.dcmread(io.BytesIO(_hundred_frames()), stop_before_pixels=True)
    assert int(ds.NumberOfFrames) == FRAMES
