"""Frames, bulk data, rendered and thumbnail through the gateway, on a DICOMweb site and on DIMSE
sites (C-GET, C-MOVE), checked against pydicom's own reading of the files Orthanc was loaded with.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array

from ncpeh_dicomweb.imaging.render import parse_render_params, render
from tests.conftest import DimseGateway, Loaded, Pacs
from tests.integration.multipart_split import split_multipart

pytestmark = pytest.mark.integration

SITES = ["web", "get", "move"]
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
UNCOMPRESSED = 'multipart/related; type="application/octet-stream"'


def _parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 200, response.text[:500]
    parts: list[tuple[dict[str, str], bytes]] = split_multipart(
        response.headers["Content-Type"], response.content
    )
    return parts


def _uids(item: Loaded) -> tuple[str, str, str]:
    return item.study, item.series, item.sop


def _stored_frames(path: Path) -> list[bytes]:
    ds = pydicom.dcmread(path)
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


@pytest.mark.parametrize("site", SITES)
def test_compressed_frames_pass_through_as_stored(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    """OHIF's Accept: each JPEG frame of the 30-frame ultrasound as stored, in the order asked."""
    url = loaded("examples_ybr_color.dcm").url(dimse_gateway, site)
    response = requests.get(f"{url}/frames/3,1,30", headers={"Accept": OHIF_FRAMES}, timeout=60)
    parts = _parts(response)
    stored = _stored_frames(loaded("examples_ybr_color.dcm").path)
    assert [body for _, body in parts] == [stored[2], stored[0], stored[29]]
    for headers, _ in parts:
        assert headers["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize(
    "name", ["examples_ybr_color.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm"]
)
def test_compressed_frames_decoded_when_only_octets_accepted(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str, name: str
) -> None:
    url = loaded(name).url(dimse_gateway, site)
    response = requests.get(f"{url}/frames/1", headers={"Accept": UNCOMPRESSED}, timeout=60)
    ((headers, body),) = _parts(response)
    assert headers["content-type"] == (
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    )
    expected = pixel_array(loaded(name).path, index=0)
    assert body == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("site", SITES)
def test_native_frames_of_a_multiframe_instance(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    """rtdose.dcm: 15 native frames; each one equals pydicom's decode of that frame."""
    url = loaded("rtdose.dcm").url(dimse_gateway, site)
    numbers = [15, 2, 7]
    response = requests.get(
        f"{url}/frames/{','.join(map(str, numbers))}", headers={"Accept": UNCOMPRESSED}, timeout=60
    )
    parts = _parts(response)
    assert len(parts) == 3
    for number, (_, body) in zip(numbers, parts, strict=True):
        assert body == pixel_array(loaded("rtdose.dcm").path, index=number - 1).tobytes()


@pytest.mark.parametrize("site", SITES)
def test_bad_frame_lists(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    url = loaded("rtdose.dcm").url(dimse_gateway, site)
    beyond = requests.get(f"{url}/frames/16", headers={"Accept": OHIF_FRAMES}, timeout=60)
    assert beyond.status_code == 404, beyond.text
    for bad in ("0", "1,x", "-1"):
        answer = requests.get(f"{url}/frames/{bad}", headers={"Accept": OHIF_FRAMES}, timeout=60)
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["detail"]["parameter"] == "frames"
    refused = requests.get(f"{url}/frames/1", headers={"Accept": "image/jp2"}, timeout=60)
    assert refused.status_code == 406, refused.text


def _bulk_uris(value: Any, found: list[str]) -> list[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "BulkDataURI":
                found.append(item)
            else:
                _bulk_uris(item, found)
    elif isinstance(value, list):
        for item in value:
            _bulk_uris(item, found)
    return found


@pytest.mark.parametrize("site", SITES)
def test_every_bulk_data_uri_resolves(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    """The waveform's sample data sits in a sequence: each URI the metadata names is fetchable
    through the gateway, with the bytes of that very element."""
    url = loaded("waveform_ecg.dcm").url(dimse_gateway, site)
    metadata = requests.get(f"{url}/metadata", timeout=60).json()
    uris = _bulk_uris(metadata, [])
    assert any("/54000100/" in u for u in uris), uris
    ds = pydicom.dcmread(loaded("waveform_ecg.dcm").path)
    expected = {bytes(item.WaveformData) for item in ds.WaveformSequence}
    for uri in uris:
        assert uri.startswith(dimse_gateway.root(site) + "/"), uri
        answer = requests.get(uri, headers={"Accept": "application/octet-stream"}, timeout=60)
        assert answer.status_code == 200, (uri, answer.text[:300])
        if uri.endswith("/54001010"):
            assert answer.content in expected


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "CT_small.dcm"])
def test_pixel_data_is_in_the_metadata_by_a_uri_that_names_its_parts(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str, name: str
) -> None:
    """Every image's metadata has Pixel Data by BulkDataURI (Orthanc leaves it out of a
    compressed instance's: the gateway adds it), and the bulk data retrieve at that URI names
    its parts by it (PS3.18 10.4.3.3.5), with the frames' bytes."""
    item = loaded(name)
    (metadata,) = requests.get(f"{item.url(dimse_gateway, site)}/metadata", timeout=60).json()
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(dimse_gateway.root(site) + "/"), uri
    answer = requests.get(uri, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    parts = split_multipart(answer.headers["Content-Type"], answer.content)
    ds = pydicom.dcmread(item.path)
    assert len(parts) == int(ds.get("NumberOfFrames") or 1)
    for headers, _ in parts:
        assert headers["content-location"] == uri


@pytest.mark.parametrize("site", SITES)
def test_dicomweb_client_frames_bulk_rendered(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    client = DICOMwebClient(dimse_gateway.root(site))
    study, series, sop = _uids(loaded("examples_ybr_color.dcm"))
    frames = client.retrieve_instance_frames(
        study,
        series,
        sop,
        frame_numbers=[2],
        media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),),
    )
    assert frames == [_stored_frames(loaded("examples_ybr_color.dcm").path)[1]]
    jpeg = client.retrieve_instance_rendered(study, series, sop, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    png = client.retrieve_series_rendered(study, series, media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).format == "PNG"
    # dicomweb-client 0.61 has no thumbnail method: its own HTTP layer fetches the resource.
    thumb = client._http_get(
        f"{dimse_gateway.root(site)}/studies/{study}/series/{series}/thumbnail",
        params={"viewport": "64,64"},
        headers={"Accept": "image/jpeg"},
    )
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64
    w_study, w_series, w_sop = _uids(loaded("waveform_ecg.dcm"))
    metadata = client.retrieve_instance_metadata(w_study, w_series, w_sop)
    uri = next(u for u in _bulk_uris(metadata, []) if u.endswith("/54001010"))
    data = client.retrieve_bulkdata(uri)
    assert len(data) == 1 and len(data[0]) > 0


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm"])
def test_rendered_equals_a_rendering_of_the_stored_file(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str, name: str
) -> None:
    """The gateway renders what the PACS stores: PNG pixels equal a local rendering."""
    url = loaded(name).url(dimse_gateway, site)
    answer = requests.get(f"{url}/rendered", headers={"Accept": "image/png"}, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["Content-Type"] == "image/png"
    expected = render(loaded(name).path, 1, parse_render_params([], "image/png", thumbnail=False))
    got = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert np.array_equal(got, np.asarray(Image.open(io.BytesIO(expected))))


@pytest.mark.parametrize("site", SITES)
def test_thumbnails_at_every_level(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    """OHIF's thumbnail request (Accept: image/jpeg, viewport) at study, series and instance."""
    study, series, sop = _uids(loaded("CT_small.dcm"))
    base = f"{dimse_gateway.root(site)}/studies/{study}"
    for url in (base, f"{base}/series/{series}", f"{base}/series/{series}/instances/{sop}"):
        answer = requests.get(
            f"{url}/thumbnail?viewport=64%2C64", headers={"Accept": "image/jpeg"}, timeout=60
        )
        assert answer.status_code == 200, (url, answer.text[:300])
        image = Image.open(io.BytesIO(answer.content))
        assert image.format == "JPEG" and max(image.size) == 64


def test_dimse_frames_come_from_the_cache(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway
) -> None:
    """After the first view, frames of a DIMSE site cost the PACS nothing (counted)."""
    url = loaded("examples_ybr_color.dcm").url(dimse_gateway, "get")
    first = requests.get(f"{url}/frames/1", headers={"Accept": OHIF_FRAMES}, timeout=60)
    assert first.status_code == 200, first.text
    before = requests.get(f"{dimse_gateway.url}/health/stats", timeout=10).json()["sites"]["get"]
    for number in range(1, 31):
        again = requests.get(f"{url}/frames/{number}", headers={"Accept": OHIF_FRAMES}, timeout=60)
        assert again.status_code == 200
    metadata = requests.get(f"{url}/metadata", timeout=60)
    assert metadata.status_code == 200
    after = requests.get(f"{dimse_gateway.url}/health/stats", timeout=10).json()["sites"]["get"]
    assert after["retrieves"] == before["retrieves"]
    assert after["finds"] == before["finds"]


def test_dicomweb_site_passes_the_pacs_frames_through(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway
) -> None:
    """OHIF's Accept on a DICOMweb site: the PACS's own frames, no instance fetched; a client
    that wants a JPEG 2000 frame decoded gets it from the instance file, decoded here."""
    stats = f"{dimse_gateway.url}/health/stats"
    item = loaded("SC_rgb_jpeg_gdcm.dcm")
    before = requests.get(stats, timeout=10).json()["sites"]["web"]["instance_fetches"]
    answer = requests.get(
        f"{item.url(dimse_gateway, 'web')}/frames/1", headers={"Accept": OHIF_FRAMES}, timeout=60
    )
    ((headers, body),) = _parts(answer)
    assert headers["content-type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.70"
    assert body == _stored_frames(item.path)[0]
    assert requests.get(stats, timeout=10).json()["sites"]["web"]["instance_fetches"] == before
    j2k = loaded("693_J2KI.dcm")
    decoded = requests.get(
        f"{j2k.url(dimse_gateway, 'web')}/frames/1", headers={"Accept": UNCOMPRESSED}, timeout=60
    )
    ((headers, body),) = _parts(decoded)
    assert headers["content-type"].startswith("application/octet-stream; transfer-syntax=")
    assert body == pixel_array(j2k.path, index=0).tobytes()
    assert requests.get(stats, timeout=10).json()["sites"]["web"]["instance_fetches"] == before + 1


@pytest.mark.parametrize("site", SITES)
def test_key_object_series_is_not_rendered(
    pacs: Pacs, dimse_gateway: DimseGateway, site: str
) -> None:
    """A study holding a Key Object Selection document (no pixel data) still renders: its
    images stand for it; the KO series, the document and its "frames" are 406, not a 5xx."""
    kos = pacs.manifest["core"]["kos"]
    assert kos
    for k in kos:
        study = f"{dimse_gateway.root(site)}/studies/{k['study']}"
        for resource in ("rendered", "thumbnail"):
            answer = requests.get(
                f"{study}/{resource}", headers={"Accept": "image/jpeg"}, timeout=60
            )
            assert answer.status_code == 200, (resource, answer.text[:300])
            assert Image.open(io.BytesIO(answer.content)).format == "JPEG"
            series = f"{study}/series/{k['series']}"
            for url in (series, f"{series}/instances/{k['sop']}"):
                refused = requests.get(
                    f"{url}/{resource}", headers={"Accept": "image/jpeg"}, timeout=60
                )
                assert refused.status_code == 406, (url, resource, refused.text[:300])
                assert refused.json()["error"] == "not-acceptable"
        frames = f"{study}/series/{k['series']}/instances/{k['sop']}/frames/1"
        refused = requests.get(frames, headers={"Accept": OHIF_FRAMES}, timeout=60)
        assert refused.status_code == 406, refused.text[:300]
