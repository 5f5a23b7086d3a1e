"""WADO-RS through the gateway: instances byte for byte, metadata at three levels."""

from __future__ import annotations

import hashlib
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from ncpeh_dicomweb.backends.base import BodySpan, PartHead, Target
from ncpeh_dicomweb.backends.dicomweb import DicomWebBackend
from ncpeh_dicomweb.config import DicomWebSite
from tests.conftest import Gateway, Pacs
from tests.integration.multipart_split import split_multipart
from tests.integration.util import as_seen_through, pacs_json, uids

pytestmark = pytest.mark.integration

EXPLICIT_LE = "1.2.840.10008.1.2.1"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
SERIES_UID, SOP_UID, SOP_CLASS = "0020000E", "00080018", "00080016"


def _get(url: str, accept: str | None) -> requests.Response:
    headers = {"Accept": accept} if accept else {}
    response = requests.get(url, headers=headers, timeout=120)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return response


def _parts(url: str, accept: str | None) -> list[tuple[dict[str, str], bytes]]:
    response = _get(url, accept)
    return split_multipart(response.headers["Content-Type"], response.content)


def _complete(response: requests.Response) -> bool:
    boundary = response.headers["Content-Type"].split("boundary=")[1].strip('"')
    return response.content.rstrip().endswith(f"--{boundary}--".encode())


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> DICOMwebClient:
    return DICOMwebClient(url=gateway.dicomweb)


@pytest.fixture(scope="module")
def small_studies(pacs: Pacs) -> list[str]:
    """Every study but the large CT: the synthetic core set and pydicom's test files."""
    studies = pacs_json(pacs, "studies", "includefield=00100020")
    found = [
        s["0020000D"]["Value"][0]
        for s in studies
        if s.get("00100020", {}).get("Value") != ["LARGE-CT-1"]
    ]
    assert len(found) >= 10
    return found


@pytest.fixture(scope="module")
def a_series(pacs: Pacs) -> tuple[str, str, str]:
    """(study, series, instance) of a synthetic CT series of several images."""
    for study in pacs.manifest["core"]["studies"]:
        for series in study["series"]:
            if series["modality"] == "CT" and len(series["instances"]) >= 3:
                return study["study_uid"], series["uid"], series["instances"][1]
    raise AssertionError("no CT series with three instances in the core sample set")


@pytest.mark.parametrize("accept", [AS_STORED, None], ids=["as-stored", "default-explicit-le"])
def test_study_retrieve_is_byte_identical(
    gateway: Gateway, pacs: Pacs, small_studies: list[str], accept: str | None
) -> None:
    # Without transfer-syntax the gateway asks for Explicit VR Little Endian (SPEC decision).
    direct_accept = (
        accept or f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
    )
    # Orthanc converts Big Endian pixels wider than 16 bits word by word, wrongly: those are
    # checked against pydicom in test_transcoding.py, not against Orthanc here.
    by_file = pacs.manifest["testdata"]["by_file"]
    wide_big_endian = {by_file[n]["sop"] for n in ("rtdose_expb.dcm", "rtdose_expb_1frame.dcm")}
    compared = 0
    for study in small_studies:
        direct = requests.get(
            f"{pacs.dicomweb_root}/studies/{study}", headers={"Accept": direct_accept}, timeout=120
        )
        if direct.status_code != 200:
            continue
        if not _complete(direct):
            # Orthanc fails some transcodings mid-stream (JPEG-LS, JPEG 2000 to Explicit VR
            # LE); the gateway transcodes itself: compare with what Orthanc stores.
            direct = requests.get(
                f"{pacs.dicomweb_root}/studies/{study}", headers={"Accept": AS_STORED}, timeout=120
            )
        want = split_multipart(direct.headers["Content-Type"], direct.content)
        got = _parts(f"{gateway.dicomweb}/studies/{study}", accept)
        assert len(got) == len(want), study
        for (headers, mine), (_, theirs) in zip(got, want, strict=True):
            _same_instance(mine, theirs, headers["content-type"], accept is None, wide_big_endian)
        compared += len(got)
    assert compared >= 100


OFF_WEB = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2")  # Implicit VR LE, Big Endian


def _same_instance(
    mine: bytes, theirs: bytes, content_type: str, explicit: bool, unchecked: set[str]
) -> None:
    """The gateway's part against the PACS's: the same bytes when both carry the syntax the
    PACS stored; else (the gateway converted it: Explicit VR LE asked for, or a syntax kept
    off the web) the same instance, with the same pixels, labelled with what it carries."""
    ds = pydicom.dcmread(BytesIO(mine))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    assert content_type == f"application/dicom; transfer-syntax={syntax}"
    if mine == theirs:
        return
    other = pydicom.dcmread(BytesIO(theirs))
    stored = str(other.file_meta.TransferSyntaxUID)
    assert explicit or stored in OFF_WEB, (ds.SOPInstanceUID, stored, syntax)
    assert syntax in (EXPLICIT_LE, stored), ds.SOPInstanceUID
    assert ds.SOPInstanceUID == other.SOPInstanceUID
    if "PixelData" in other and syntax == EXPLICIT_LE and ds.SOPInstanceUID not in unchecked:
        ours, pacs = ds.pixel_array.astype(np.int64), other.pixel_array.astype(np.int64)
        difference = np.abs(ours - pacs)
        if ds.get("LossyImageCompression") == "01":
            # Lossy JPEG decoders differ in IDCT rounding and chroma upsampling (ours:
            # libjpeg-turbo, Orthanc's: DCMTK): close, not equal.
            assert difference.max() <= 8 and difference.mean() < 0.5, ds.SOPInstanceUID
        else:
            assert difference.max() == 0, ds.SOPInstanceUID


def test_series_and_instance_retrieve_are_byte_identical(
    gateway: Gateway, pacs: Pacs, a_series: tuple[str, str, str]
) -> None:
    study, series, sop = a_series
    for path in (
        f"studies/{study}/series/{series}",
        f"studies/{study}/series/{series}/instances/{sop}",
    ):
        direct = _parts(f"{pacs.dicomweb_root}/{path}", AS_STORED)
        got = _parts(f"{gateway.dicomweb}/{path}", AS_STORED)
        assert [p for _, p in got] == [p for _, p in direct]
        assert got, path
    assert (
        len(_parts(f"{gateway.dicomweb}/studies/{study}/series/{series}/instances/{sop}", None))
        == 1
    )


def test_response_content_type_is_multipart_dicom(
    gateway: Gateway, a_series: tuple[str, str, str]
) -> None:
    study, _, _ = a_series
    response = _get(f"{gateway.dicomweb}/studies/{study}", None)
    content_type = response.headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"')
    assert "boundary=" in content_type


def test_dicomweb_client_reads_retrieved_instances(
    client: DICOMwebClient, pacs: Pacs, a_series: tuple[str, str, str]
) -> None:
    study, series, sop = a_series
    datasets = client.retrieve_study(study)
    want = uids(pacs_json(pacs, f"studies/{study}/instances"), "00080018")
    assert sorted(d.SOPInstanceUID for d in datasets) == sorted(want)
    assert all(d.file_meta.TransferSyntaxUID == EXPLICIT_LE for d in datasets)
    assert all(d.PixelData for d in datasets)
    series_datasets = client.retrieve_series(study, series)
    assert {d.SeriesInstanceUID for d in series_datasets} == {series}
    instance = client.retrieve_instance(study, series, sop)
    assert isinstance(instance, pydicom.Dataset) and instance.SOPInstanceUID == sop


def test_metadata_at_three_levels_equals_pacs(
    client: DICOMwebClient, gateway: Gateway, pacs: Pacs, a_series: tuple[str, str, str]
) -> None:
    study, series, sop = a_series
    cases: list[tuple[Any, str]] = [
        (client.retrieve_study_metadata(study), f"studies/{study}/metadata"),
        (
            client.retrieve_series_metadata(study, series),
            f"studies/{study}/series/{series}/metadata",
        ),
        (
            client.retrieve_instance_metadata(study, series, sop),
            f"studies/{study}/series/{series}/instances/{sop}/metadata",
        ),
    ]
    for got, path in cases:
        expected = as_seen_through(gateway.dicomweb, pacs, pacs_json(pacs, path))
        if isinstance(got, dict):  # dicomweb-client unwraps a single instance's metadata
            got = [got]
        assert got == expected, path
        assert got


def test_bulk_data_uris_point_at_the_gateway(
    gateway: Gateway, pacs: Pacs, a_series: tuple[str, str, str]
) -> None:
    study, series, _ = a_series
    response = _get(f"{gateway.dicomweb}/studies/{study}/series/{series}/metadata", None)
    assert response.headers["Content-Type"] == "application/dicom+json"
    body = response.text
    assert "BulkDataURI" in body
    assert pacs.dicomweb_root.split("//")[1] not in body
    for dataset in response.json():
        uri = dataset["7FE00010"]["BulkDataURI"]
        assert uri.startswith(f"{gateway.dicomweb}/studies/{study}/series/{series}/instances/")


def test_as_stored_parts_name_their_transfer_syntax(
    gateway: Gateway, small_studies: list[str]
) -> None:
    """Orthanc labels parts plain application/dicom; the gateway reads the syntax from each."""
    seen: set[str] = set()
    for study in small_studies:
        url = f"{gateway.dicomweb}/studies/{study}"
        response = requests.get(url, headers={"Accept": AS_STORED}, timeout=60)
        if response.status_code == 404:  # one odd pydicom file: Orthanc lists it, cannot send it
            continue
        assert response.status_code == 200
        parts = split_multipart(response.headers["Content-Type"], response.content)
        for headers, body in parts:
            syntax = headers["content-type"].split("transfer-syntax=")[1]
            meta = pydicom.dcmread(BytesIO(body), stop_before_pixels=True).file_meta
            assert syntax == meta.TransferSyntaxUID
            seen.add(syntax)
    assert len(seen) >= 3  # pydicom's files come in many syntaxes


def test_key_object_documents_say_what_the_manifest_says(
    client: DICOMwebClient, gateway: Gateway, pacs: Pacs
) -> None:
    """Each core Key Object Selection document, retrieved and read through the gateway: its
    title, description and image references (content and evidence) are the manifest's, each
    reference names an instance of the study, and its metadata is the PACS's."""
    kos = pacs.manifest["core"]["kos"]
    assert kos
    for k in kos:
        ds = client.retrieve_instance(k["study"], k["series"], k["sop"])
        assert ds.SOPClassUID == k["sop_class_uid"] and ds.Modality == "KO"
        assert "PixelData" not in ds
        title = ds.ConceptNameCodeSequence[0]
        assert [title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning] == k["title"]
        texts = [i.TextValue for i in ds.ContentSequence if i.ValueType == "TEXT"]
        assert texts == ([k["description"]] if k["description"] is not None else [])
        images = [i.ReferencedSOPSequence[0] for i in ds.ContentSequence if i.ValueType == "IMAGE"]
        assert [r.ReferencedSOPInstanceUID for r in images] == [
            sop for sops in k["references"].values() for sop in sops
        ]
        assert {
            r.ReferencedSOPInstanceUID: [int(f) for f in r.get("ReferencedFrameNumber", [])]
            for r in images
            if "ReferencedFrameNumber" in r
        } == k["frames"]
        (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == k["study"]
        assert {
            s.SeriesInstanceUID: [r.ReferencedSOPInstanceUID for r in s.ReferencedSOPSequence]
            for s in evidence.ReferencedSeriesSequence
        } == k["references"]
        assert (ds.ContentDate, ds.ContentTime, ds.TimezoneOffsetFromUTC) == (
            k["content_date"],
            k["content_time"],
            k["timezone"],
        )
        held = {
            (i[SERIES_UID]["Value"][0], i[SOP_UID]["Value"][0], i[SOP_CLASS]["Value"][0])
            for i in pacs_json(pacs, f"studies/{k['study']}/instances")
        }
        classes = {r.ReferencedSOPInstanceUID: r.ReferencedSOPClassUID for r in images}
        named = {(se, sop, classes[sop]) for se, sops in k["references"].items() for sop in sops}
        assert named <= held
        path = f"studies/{k['study']}/series/{k['series']}/instances/{k['sop']}/metadata"
        got = requests.get(f"{gateway.dicomweb}/{path}", timeout=60).json()
        assert got == as_seen_through(gateway.dicomweb, pacs, pacs_json(pacs, path))


async def test_both_ways_of_reading_a_retrieve_give_the_same_parts(pacs: Pacs) -> None:
    """Over http:// a retrieve's body is read straight from the socket (http_stream), long
    parts' bodies left there as spans; over https:// by aiohttp. Both, on the same studies of
    the real Orthanc, give the same parts, headers and bytes (the https one is forced here: no
    TLS Orthanc to point it at)."""
    site = DicomWebSite(id="x", url=pacs.dicomweb_root)
    raw, via_aiohttp = DicomWebBackend.create(site), DicomWebBackend.create(site)
    via_aiohttp._raw_streams = False  # what an https:// site uses

    spans = 0

    async def parts(backend: DicomWebBackend, target: Target) -> list[tuple[dict[str, str], str]]:
        """Each part's headers and the SHA-256 of its body (a large study is not kept)."""
        nonlocal spans
        out: list[tuple[dict[str, str], Any]] = []
        async for event in backend.retrieve(target, "http://gateway/dicom-web"):
            if isinstance(event, PartHead):
                out.append((dict(event.headers), hashlib.sha256()))
            elif isinstance(event, BodySpan):  # the rest of a long part, left in the socket
                spans += 1
                async for chunk in event.chunks():
                    out[-1][1].update(chunk)
            else:
                out[-1][1].update(event)
        return [(headers, digest.hexdigest()) for headers, digest in out]

    try:
        studies = [s["study_uid"] for s in pacs.manifest["core"]["studies"][:3]]
        studies.append(pacs.manifest["large"]["studies"][0]["study_uid"])  # 512 kB instances
        for study in studies:
            first, second = await parts(raw, Target(study)), await parts(via_aiohttp, Target(study))
            assert first and first == second
            assert all(
                h["content-type"].startswith("application/dicom; transfer-syntax=")
                for h, _ in first
            )
        assert raw.stats()["pacs_requests"] == via_aiohttp.stats()["pacs_requests"] == len(studies)
        assert spans > 0  # the raw reader left long parts' bodies in the socket
    finally:
        await raw.close()
        await via_aiohttp.close()
