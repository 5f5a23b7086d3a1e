"""Metadata a viewer can live on: ETag / 304, gzip, the gateway's cache in front of the PACS,
and the XML (PS3.19) form of metadata and QIDO results, on a DICOMweb and a DIMSE site."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
import requests

from tests.conftest import DimseGateway, Loaded
from tests.integration.multipart_split import split_multipart

pytestmark = pytest.mark.integration

SITES = ["web", "get", "move"]
NATIVE = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


def _series_metadata(gw: DimseGateway, site: str, item: Loaded) -> str:
    return f"{gw.root(site)}/studies/{item.study}/series/{item.series}/metadata"


@pytest.mark.parametrize("site", SITES)
def test_repeat_metadata_load_is_a_304(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    url = _series_metadata(dimse_gateway, site, loaded("MR_small.dcm"))
    first = requests.get(url, headers={"Accept": "application/dicom+json"}, timeout=60)
    assert first.status_code == 200, first.text[:300]
    etag = first.headers["ETag"]
    assert etag.startswith('"') and first.headers["Last-Modified"].endswith("GMT")
    again = requests.get(url, headers={"If-None-Match": etag}, timeout=60)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag
    other = requests.get(url, headers={"If-None-Match": '"something-else"'}, timeout=60)
    assert other.status_code == 200 and other.json() == first.json()


@pytest.mark.parametrize("site", SITES)
def test_metadata_gzip_when_accepted(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    url = _series_metadata(dimse_gateway, site, loaded("MR_small.dcm"))
    zipped = requests.get(url, headers={"Accept-Encoding": "gzip"}, timeout=60)
    assert zipped.headers["Content-Encoding"] == "gzip"
    plain = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=60)
    assert "Content-Encoding" not in plain.headers
    assert zipped.json() == plain.json()  # requests decompressed the first


def test_dimse_metadata_after_the_first_view_costs_the_pacs_nothing(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway
) -> None:
    url = _series_metadata(dimse_gateway, "get", loaded("CT_small.dcm"))
    assert requests.get(url, timeout=60).status_code == 200
    stats = f"{dimse_gateway.url}/health/stats"
    before = requests.get(stats, timeout=10).json()["sites"]["get"]
    for _ in range(3):
        assert requests.get(url, timeout=60).status_code == 200
    after = requests.get(stats, timeout=10).json()["sites"]["get"]
    assert (after["retrieves"], after["finds"]) == (before["retrieves"], before["finds"])


def _xml_parts(response: requests.Response) -> list[ET.Element]:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith(
        'multipart/related; type="application/dicom+xml"'
    )
    parts = split_multipart(response.headers["Content-Type"], response.content)
    assert all(h["content-type"] == "application/dicom+xml" for h, _ in parts)
    return [ET.fromstring(body) for _, body in parts]


@pytest.mark.parametrize("site", SITES)
def test_metadata_and_search_as_native_dicom_xml(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    item = loaded("CT_small.dcm")
    xml_accept = {"Accept": 'multipart/related; type="application/dicom+xml"'}
    url = _series_metadata(dimse_gateway, site, item)
    documents = _xml_parts(requests.get(url, headers=xml_accept, timeout=60))
    as_json = requests.get(url, timeout=60).json()
    assert len(documents) == len(as_json) >= 1
    sops = {
        d.find(f"{NATIVE}DicomAttribute[@tag='00080018']/{NATIVE}Value").text for d in documents
    }
    assert item.sop in sops
    search = f"{dimse_gateway.root(site)}/studies?StudyInstanceUID={item.study}"
    (study,) = _xml_parts(requests.get(search, headers=xml_accept, timeout=60))
    uid = study.find(f"{NATIVE}DicomAttribute[@keyword='StudyInstanceUID']/{NATIVE}Value")
    assert uid is not None and uid.text == item.study
