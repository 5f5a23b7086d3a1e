"""DIMSE sites (C-FIND, C-GET, C-MOVE) answer as the DICOMweb site does, for the same Orthanc."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.conftest import DimseGateway, Pacs
from tests.integration.multipart_split import split_multipart
from tests.integration.test_qido import INSTANCE_CASES, SERIES_CASES, STUDY_CASES, Sample, _search
from tests.integration.test_qido import sample as sample
from tests.integration.util import after_meta, pacs_json, reset_peak_rss, status_kb

pytestmark = pytest.mark.integration

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
SITES = ["get", "move"]
MB = 1 << 20


def _values(dataset: dict[str, Any]) -> dict[str, Any]:
    """Attributes with a value; bulk data references dropped (servers may differ there)."""
    return {
        tag: element.get("Value")
        for tag, element in dataset.items()
        if element.get("Value") not in (None, [])
    }


def _key(dataset: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        str(dataset.get(t, {}).get("Value", [""])[0]) for t in ("0020000D", "0020000E", "00080018")
    )


def _same_answers(dimse: list[dict[str, Any]], web: list[dict[str, Any]]) -> None:
    """Same matches; every attribute both answers carry has the same value."""
    assert sorted(map(_key, dimse)) == sorted(map(_key, web))
    by_key = {_key(d): _values(d) for d in web}
    for dataset in dimse:
        mine, theirs = _values(dataset), by_key[_key(dataset)]
        common = set(mine) & set(theirs)
        assert {t: mine[t] for t in common} == {t: theirs[t] for t in common}, _key(dataset)
        assert "00081190" in common  # RetrieveURL, pointing at the gateway (per site)


CASES = [c for c in STUDY_CASES + SERIES_CASES + INSTANCE_CASES if "limit" not in c[0]]


@pytest.mark.parametrize(("name", "level", "kwargs", "direct"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("site", SITES)
def test_search_equals_dicomweb_site(
    dimse_gateway: DimseGateway,
    sample: Sample,
    site: str,
    name: str,
    level: str,
    kwargs: Any,
    direct: Any,
) -> None:
    web = _search(DICOMwebClient(url=dimse_gateway.root("web")), level, sample, kwargs(sample))
    got = _search(DICOMwebClient(url=dimse_gateway.root(site)), level, sample, kwargs(sample))
    assert web, f"{name}: no match, proves nothing"
    # RetrieveURLs differ by site root only
    for d in web:
        if "00081190" in d:
            d["00081190"]["Value"] = [
                v.replace("/site/web/", f"/site/{site}/") for v in d["00081190"]["Value"]
            ]
    _same_answers(got, web)


def test_limit_and_offset_page_like_the_dicomweb_site(dimse_gateway: DimseGateway) -> None:
    web = DICOMwebClient(url=dimse_gateway.root("web")).search_for_studies()
    dimse = DICOMwebClient(url=dimse_gateway.root("get"))
    everything = dimse.search_for_studies()
    assert sorted(map(_key, everything)) == sorted(map(_key, web))
    page = dimse.search_for_studies(limit=3, offset=2)
    assert [_key(d) for d in page] == [_key(d) for d in everything[2:5]]


def _instances_by_sop(url: str, accept: str) -> dict[str, tuple[dict[str, str], bytes]]:
    response = requests.get(url, headers={"Accept": accept}, timeout=300)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    out = {}
    for headers, body in split_multipart(response.headers["Content-Type"], response.content):
        out[str(pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID)] = (
            headers,
            body,
        )
    return out


# The -nocache twins retrieve on pynetdicom (native_dimse = false), the others natively.
@pytest.mark.parametrize("site", [*SITES, "get-nocache", "move-nocache"])
@pytest.mark.parametrize("accept", [AS_STORED, None], ids=["as-stored", "default"])
def test_study_retrieve_equals_dicomweb_site(
    dimse_gateway: DimseGateway, pacs: Pacs, site: str, accept: str | None
) -> None:
    """Same instances; the encoded dataset after the File Meta Information byte for byte."""
    header = accept or "multipart/related; type=application/dicom"
    compared = 0
    for study in pacs.manifest["core"]["studies"]:
        uid = study["study_uid"]
        web = _instances_by_sop(f"{dimse_gateway.root('web')}/studies/{uid}", header)
        got = _instances_by_sop(f"{dimse_gateway.root(site)}/studies/{uid}", header)
        assert set(got) == set(web)
        for sop, (headers, body) in got.items():
            assert after_meta(body) == after_meta(web[sop][1]), sop
            assert headers["content-type"] == web[sop][0]["content-type"]
            assert headers["content-location"].startswith(
                f"{dimse_gateway.root(site)}/studies/{uid}/"
            )
        compared += len(got)
    assert compared >= 200


@pytest.mark.parametrize("site", SITES)
def test_series_and_instance_retrieve(dimse_gateway: DimseGateway, pacs: Pacs, site: str) -> None:
    study = pacs.manifest["core"]["studies"][0]
    series = study["series"][-1]
    sop = series["instances"][0]
    base = f"{dimse_gateway.root(site)}/studies/{study['study_uid']}/series/{series['uid']}"
    assert set(_instances_by_sop(base, AS_STORED)) == set(series["instances"])
    assert set(_instances_by_sop(f"{base}/instances/{sop}", AS_STORED)) == {sop}


@pytest.mark.parametrize("site", SITES)
def test_unknown_and_misplaced_uids_are_404(
    dimse_gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    studies = pacs.manifest["core"]["studies"]
    other_series = studies[1]["series"][0]["uid"]
    root = dimse_gateway.root(site)
    for path in (
        "studies/1.2.3.4.5.6.7.8.9",
        f"studies/{studies[0]['study_uid']}/series/{other_series}",  # series of another study
        "studies/1.2.3.4.5.6.7.8.9/metadata",
    ):
        response = requests.get(f"{root}/{path}", timeout=60)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"] == "not-found"


@pytest.mark.parametrize("site", ["get-nocache", "move-nocache"])
def test_key_object_documents_are_retrieved(
    dimse_gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    """A Key Object Selection document (no pixel data, a storage class of its own): alone, its
    series and the instance retrieved from the PACS (contexts planned from an IMAGE-level
    C-FIND that names only that class), as stored; with its study, every instance of it."""
    core = pacs.manifest["core"]
    assert core["kos"], "the core set has Key Object Selection documents"
    for kos in core["kos"]:
        base = f"{dimse_gateway.root(site)}/studies/{kos['study']}/series/{kos['series']}"
        web = f"{dimse_gateway.root('web')}/studies/{kos['study']}/series/{kos['series']}"
        before = _stats(dimse_gateway, site)["retrieves"]
        for path in ("", f"/instances/{kos['sop']}"):
            got = _instances_by_sop(base + path, AS_STORED)
            assert set(got) == {kos["sop"]}, path
            theirs = _instances_by_sop(web + path, AS_STORED)[kos["sop"]]
            assert after_meta(got[kos["sop"]][1]) == after_meta(theirs[1])
            assert got[kos["sop"]][0]["content-type"] == theirs[0]["content-type"]
        assert _stats(dimse_gateway, site)["retrieves"] > before  # from the PACS, not a cache
        study = next(s for s in core["studies"] if s["study_uid"] == kos["study"])
        whole = _instances_by_sop(f"{dimse_gateway.root(site)}/studies/{kos['study']}", AS_STORED)
        assert set(whole) == {sop for series in study["series"] for sop in series["instances"]}
        assert kos["sop"] in whole


def _normalised_metadata(datasets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["00080018"]["Value"][0]: _values(d) for d in datasets}


@pytest.mark.parametrize("site", SITES)
def test_metadata_equals_dicomweb_site(dimse_gateway: DimseGateway, pacs: Pacs, site: str) -> None:
    study = pacs.manifest["core"]["studies"][0]
    series = study["series"][0]
    uid, sop = study["study_uid"], series["instances"][0]
    for path in (
        f"studies/{uid}/metadata",
        f"studies/{uid}/series/{series['uid']}/metadata",
        f"studies/{uid}/series/{series['uid']}/instances/{sop}/metadata",
    ):
        web = requests.get(f"{dimse_gateway.root('web')}/{path}", timeout=60).json()
        got = requests.get(f"{dimse_gateway.root(site)}/{path}", timeout=60).json()
        web_n, got_n = _normalised_metadata(web), _normalised_metadata(got)
        assert set(got_n) == set(web_n)
        for sop_uid, attributes in got_n.items():
            theirs = web_n[sop_uid]
            common = set(attributes) & set(theirs)
            assert len(common) >= 0.9 * len(theirs), set(theirs) - set(attributes)
            assert {t: attributes[t] for t in common} == {t: theirs[t] for t in common}
        for dataset in got:
            uri = dataset["7FE00010"]["BulkDataURI"]
            assert uri.startswith(f"{dimse_gateway.root(site)}/studies/{uid}/series/")


def _stats(gateway: DimseGateway, site: str) -> dict[str, int]:
    return dict(requests.get(f"{gateway.url}/health/stats", timeout=10).json()["sites"][site])


@pytest.mark.parametrize("site", SITES)
def test_second_retrieve_comes_from_the_cache(
    dimse_gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    """Metadata, then the study: the PACS sends the study once."""
    study = pacs.manifest["core"]["studies"][2]["study_uid"]
    before = _stats(dimse_gateway, site)
    requests.get(
        f"{dimse_gateway.root(site)}/studies/{study}/metadata", timeout=60
    ).raise_for_status()
    middle = _stats(dimse_gateway, site)
    _instances_by_sop(f"{dimse_gateway.root(site)}/studies/{study}", AS_STORED)
    after = _stats(dimse_gateway, site)
    assert middle["retrieves"] <= before["retrieves"] + 1
    assert after["retrieves"] == middle["retrieves"]  # no second C-GET / C-MOVE
    assert after["cache_answers"] == middle["cache_answers"] + 1


def _large(pacs: Pacs) -> str:
    found = pacs_json(pacs, "studies", "PatientID=LARGE-CT-1")
    return str(found[0]["0020000D"]["Value"][0])


@pytest.mark.parametrize("site", SITES)
def test_large_study_streams_as_it_arrives(
    dimse_gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    """The first part reaches the client long before the last instance leaves the PACS."""
    study = _large(pacs)
    before_kb = status_kb(dimse_gateway.pid, "VmRSS")
    reset_peak_rss(dimse_gateway.pid)
    started = time.monotonic()
    first = None
    total = 0
    with requests.get(
        f"{dimse_gateway.root(site)}/studies/{study}",
        headers={"Accept": AS_STORED},
        stream=True,
        timeout=300,
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_content(chunk_size=MB):
            if first is None:
                first = time.monotonic() - started
            total += len(chunk)
    elapsed = time.monotonic() - started
    growth_mb = (status_kb(dimse_gateway.pid, "VmHWM") - before_kb) / 1024
    print(
        f"\n{site}: {total / MB:.0f} MB, first bytes after {first:.2f} s of {elapsed:.2f} s; "
        f"peak RSS growth {growth_mb:.1f} MB"
    )
    assert total >= 200 * MB
    assert first is not None and first < elapsed / 5
    assert growth_mb < 60


def _cache_is_clean(cache_dir: Path) -> int:
    """Every cached file is a whole instance; no temp file is left. Returns the file count."""
    assert not any((cache_dir / "tmp").iterdir()), "half-written files left in the cache"
    files = list((cache_dir / "data").rglob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path)  # a cut file fails here (or its pixels below)
        # A site's cache holds other tests' studies too: documents, compressed images.
        if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
            rows, columns, samples = ds.Rows, ds.Columns, ds.SamplesPerPixel
            assert len(ds.PixelData) == rows * columns * samples * ds.BitsAllocated // 8
    return len(files)


# The native retrieves (get, move) and pynetdicom's (the -nocache twins).
@pytest.mark.parametrize("site", ["get", "move", "get-nocache", "move-nocache"])
def test_client_hang_up_mid_retrieve(dimse_gateway: DimseGateway, pacs: Pacs, site: str) -> None:
    """The association is aborted, the cache holds no half-written instance, no thread stays."""
    import psutil

    study = _large(pacs)
    process = psutil.Process(dimse_gateway.pid)
    url = f"{dimse_gateway.root(site)}/studies/{study}"
    # Warm up: the site's worker threads and its pooled association exist from here on.
    small = pacs.manifest["core"]["studies"][0]["study_uid"]
    _instances_by_sop(f"{dimse_gateway.root(site)}/studies/{small}", AS_STORED)
    associations_before = _stats(dimse_gateway, site)["association_threads"]
    threads_before = process.num_threads()
    for _ in range(2):
        with requests.get(url, headers={"Accept": AS_STORED}, stream=True, timeout=60) as response:
            assert response.status_code == 200
            next(response.iter_content(chunk_size=2 * MB))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stats = _stats(dimse_gateway, site)
        if (
            stats["flights_in_progress"] == 0
            and stats["association_threads"] <= associations_before
        ):
            break
        time.sleep(0.2)
    stats = _stats(dimse_gateway, site)
    assert stats["flights_in_progress"] == 0
    assert stats["association_threads"] <= associations_before, "an association stayed behind"
    # Idle worker threads of the default executor may have been added; nothing else.
    assert process.num_threads() <= threads_before + 4, "threads keep piling up"
    assert _stats(dimse_gateway, site)["instances_received"] < 500 * 2  # it really stopped
    _cache_is_clean(dimse_gateway.cache_root / f"cache-{site}")
    # and the site still serves
    assert set(_instances_by_sop(f"{dimse_gateway.root(site)}/studies/{small}", AS_STORED))


def test_concurrent_requests_share_one_retrieval(dimse_gateway: DimseGateway, pacs: Pacs) -> None:
    from concurrent.futures import ThreadPoolExecutor

    site = "get-nocache"
    study = pacs.manifest["core"]["studies"][3]
    url = f"{dimse_gateway.root(site)}/studies/{study['study_uid']}"
    before = _stats(dimse_gateway, site)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _instances_by_sop(url, AS_STORED), range(4)))
    after = _stats(dimse_gateway, site)
    expected = {sop for series in study["series"] for sop in series["instances"]}
    assert all(set(a) == expected for a in answers)
    assert after["retrieves"] - before["retrieves"] < 4
    assert after["shared"] - before["shared"] == 4 - (after["retrieves"] - before["retrieves"])
