"""``/metrics`` of a gateway in front of the real Orthanc: its counters move by exactly the
requests made (QIDO, a retrieve's bytes as the client got them, a 404, a DIMSE retrieve and its
cache), labels are route templates with no UID anywhere, and no token is asked for it even
with auth on."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.config import settings_from_mapping
from tests.conftest import Pacs, free_port, start_gateway, stop_gateway
from tests.unit.test_security_tokens import AUDIENCE, ISSUER, jwks_document, rsa_key

pytestmark = pytest.mark.integration

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
UNKNOWN_STUDY = "1.2.826.0.1.3680043.8.498.999999999"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> tuple[str, Samples]:
    answer = requests.get(f"{url}/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    return answer.text, parse(answer.text)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@dataclass(frozen=True)
class Metered:
    url: str
    config: Path


@pytest.fixture(scope="module")
def metered(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    """A gateway of its own (no other test's traffic): a DICOMweb and a C-GET site, neither
    reading IOCM notes in the background, so every count is the test's."""
    work = tmp_path_factory.mktemp("metrics")
    port = free_port()
    config = work / "gateway.toml"
    config.write_text(
        f"""
default_site = "main"
public_url = "http://127.0.0.1:{port}"
[server]
port = {port}
[[sites]]
id = "main"
url = "{pacs.dicomweb_root}"
iocm = false
[[sites]]
id = "get"
kind = "dimse"
host = "127.0.0.1"
port = {pacs.dicom_port}
called_aet = "{pacs.aet}"
calling_aet = "NCPEH-METRICS"
cache_dir = "{work / "cache"}"
iocm = false
[state]
sqlite = "{work / "state.sqlite3"}"
[audit]
jsonl_path = "{work / "audit.jsonl"}"
"""
    )
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(config, work / "gateway.log", url)
    try:
        yield Metered(url, config)
    finally:
        stop_gateway(proc, work / "gateway.log")


def _smallest_studies(pacs: Pacs) -> list[dict[str, Any]]:
    studies = pacs.manifest["core"]["studies"]
    return sorted(studies, key=lambda s: sum(len(se["instances"]) for se in s["series"]))


def _after_bookkeeping(url: str, before: Samples, events: int = 3) -> Samples:
    """A scrape once the last answers' AuditEvents are made: they are made just after each
    answer (web/after_answer.py), so a scrape that follows at once may come before."""
    deadline = time.monotonic() + 5
    while True:
        _, after = scrape(url)
        made = moved(before, after, "ncpeh_audit_events_recorded_total")
        if made >= events or time.monotonic() > deadline:
            return after
        time.sleep(0.02)


def test_counters_move_by_exactly_the_requests_made(metered: Metered, pacs: Pacs) -> None:
    study = _smallest_studies(pacs)[0]
    _, before = scrape(metered.url)
    found = requests.get(
        f"{metered.url}/dicom-web/studies",
        params={"PatientID": study["patient_id"]},
        timeout=30,
    )
    assert found.status_code == 200 and found.json()
    retrieved = requests.get(
        f"{metered.url}/dicom-web/studies/{study['study_uid']}",
        headers={"Accept": AS_STORED},
        timeout=60,
    )
    assert retrieved.status_code == 200 and retrieved.headers.get("Transfer-Encoding") == "chunked"
    missing = requests.get(f"{metered.url}/dicom-web/studies/{UNKNOWN_STUDY}/metadata", timeout=30)
    assert missing.status_code == 404
    after = _after_bookkeeping(metered.url, before)

    search = {"route": "/dicom-web/studies", "method": "GET"}
    retrieve = {"route": "/dicom-web/studies/{study}", "method": "GET"}
    metadata = {"route": "/dicom-web/studies/{study}/metadata", "method": "GET"}
    requests_total = "ncpeh_http_requests_total"
    assert moved(before, after, requests_total, **search, status="200") == 1
    assert moved(before, after, requests_total, **retrieve, status="200") == 1
    assert moved(before, after, requests_total, **metadata, status="404") == 1
    for labels in (search, retrieve, metadata):
        assert moved(before, after, "ncpeh_http_request_duration_seconds_count", **labels) == 1
    # What the client got, to the byte: the multipart body, however it was chunked.
    sent = moved(before, after, "ncpeh_http_response_bytes_total", route=retrieve["route"])
    assert sent == len(retrieved.content)
    found_bytes = moved(before, after, "ncpeh_http_response_bytes_total", route=search["route"])
    assert found_bytes == len(found.content)
    route = retrieve["route"]
    assert moved(before, after, "ncpeh_http_streams_total", route=route, outcome="complete") == 1
    backend = "ncpeh_backend_requests_total"
    assert moved(before, after, backend, site="main", operation="search", outcome="ok") == 1
    assert moved(before, after, backend, site="main", operation="retrieve", outcome="ok") == 1
    assert (
        moved(before, after, backend, site="main", operation="metadata", outcome="not-found") == 1
    )
    # The PACS was asked three times (its own counter, published: /health/stats's source).
    assert moved(before, after, "ncpeh_pacs_http_requests_total", site="main") == 3
    assert moved(before, after, "ncpeh_metadata_cache_misses_total") == 1
    assert moved(before, after, "ncpeh_metadata_cache_hits_total") == 0
    # The audit trail recorded the three data requests (/metrics itself is not audited).
    assert moved(before, after, "ncpeh_audit_events_recorded_total") == 3
    assert after[("ncpeh_workers", ())] == 1
    assert after[("ncpeh_http_streams_in_flight", ())] == 0


def test_head_gzip_and_304_are_counted_as_sent(metered: Metered, pacs: Pacs) -> None:
    study = _smallest_studies(pacs)[3]["study_uid"]
    _, before = scrape(metered.url)
    head = requests.head(
        f"{metered.url}/dicom-web/studies/{study}", headers={"Accept": AS_STORED}, timeout=60
    )
    assert head.status_code == 200 and head.content == b""
    url = f"{metered.url}/dicom-web/studies/{study}/metadata"
    zipped = requests.get(url, headers={"Accept-Encoding": "gzip"}, timeout=60)
    assert zipped.status_code == 200 and zipped.headers["Content-Encoding"] == "gzip"
    again = requests.get(url, headers={"If-None-Match": zipped.headers["ETag"]}, timeout=60)
    assert again.status_code == 304
    _, after = scrape(metered.url)
    retrieve = "/dicom-web/studies/{study}"
    metadata = "/dicom-web/studies/{study}/metadata"
    total = "ncpeh_http_requests_total"
    assert moved(before, after, total, route=retrieve, method="HEAD", status="200") == 1
    assert moved(before, after, "ncpeh_http_response_bytes_total", route=retrieve) == 0
    assert moved(before, after, total, route=metadata, method="GET", status="200") == 1
    assert moved(before, after, total, route=metadata, method="GET", status="304") == 1
    # As sent: gzipped (requests has unzipped it; the header has the size on the wire).
    sent = moved(before, after, "ncpeh_http_response_bytes_total", route=metadata)
    assert sent == int(zipped.headers["Content-Length"]) < len(zipped.content)
    assert moved(before, after, "ncpeh_metadata_cache_misses_total") == 1
    assert moved(before, after, "ncpeh_metadata_cache_hits_total") == 1


def test_no_uid_anywhere_and_routes_are_templates(metered: Metered, pacs: Pacs) -> None:
    study = _smallest_studies(pacs)[1]
    series = study["series"][0]
    uids = [study["study_uid"], series["uid"], series["instances"][0], UNKNOWN_STUDY]
    base = f"{metered.url}/dicom-web/studies/{study['study_uid']}"
    for path in (
        "/metadata",
        f"/series/{series['uid']}",
        f"/series/{series['uid']}/instances/{series['instances'][0]}/metadata",
        f"/series/{series['uid']}/instances",
    ):
        assert requests.get(base + path, timeout=60).status_code == 200, path
    assert requests.get(f"{metered.url}/no/such/{UNKNOWN_STUDY}", timeout=10).status_code == 404
    odd = requests.request("PROPFIND", f"{metered.url}/dicom-web/studies", timeout=10)
    assert odd.status_code == 405
    text, after = scrape(metered.url)
    for uid in uids:
        assert uid not in text
    assert re.search(r"\d+(?:\.\d+){3,}", text) is None  # nothing shaped like a UID
    settings = settings_from_mapping(
        {"sites": [{"id": "main", "url": pacs.dicomweb_root}]}, {}
    )  # the routes the gateway serves, as templates
    templates = {r.canonical for r in create_app(settings).router.resources()} | {"unmatched"}
    routes = {dict(labels)["route"] for _, labels in after if "route" in dict(labels)}
    assert routes <= templates, routes - templates
    assert "/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata" in routes
    methods = {dict(labels).get("method") for _, labels in after} - {None}
    assert "PROPFIND" not in methods and "other" in methods  # no label of its own
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert after[("ncpeh_http_requests_total", unmatched)] >= 1


def test_a_client_that_leaves_mid_stream(metered: Metered, pacs: Pacs) -> None:
    large = pacs.manifest["large"]["studies"][0]["study_uid"]
    _, before = scrape(metered.url)
    with requests.get(
        f"{metered.url}/dicom-web/studies/{large}",
        headers={"Accept": AS_STORED},
        stream=True,
        timeout=60,
    ) as answer:
        assert answer.status_code == 200
        chunks = answer.iter_content(1 << 20)  # kept: a generator dropped closes the socket
        assert len(next(chunks)) > 0
        _, during = scrape(metered.url)
        assert during[("ncpeh_http_streams_in_flight", ())] == 1
    route = "/dicom-web/studies/{study}"
    after = _until(
        metered.url,
        lambda s: (
            moved(before, s, "ncpeh_http_streams_total", route=route, outcome="client-gone") == 1
        ),
    )
    assert after[("ncpeh_http_streams_in_flight", ())] == 0
    backend = "ncpeh_backend_requests_total"
    assert (
        moved(before, after, backend, site="main", operation="retrieve", outcome="abandoned") == 1
    )
    # Counted as written: at least what the client read, far less than the study.
    sent = moved(before, after, "ncpeh_http_response_bytes_total", route=route)
    assert 1 << 20 <= sent < pacs.manifest["large"]["bytes"] // 2


def _until(url: str, ready: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_a_dimse_site_publishes_its_cache_and_associations(metered: Metered, pacs: Pacs) -> None:
    study = _smallest_studies(pacs)[2]
    instances = sum(len(se["instances"]) for se in study["series"])
    url = f"{metered.url}/site/get/dicom-web/studies/{study['study_uid']}"
    _, before = scrape(metered.url)

    def fetch(_: int) -> bytes:
        answer = requests.get(url, headers={"Accept": AS_STORED}, timeout=120)
        assert answer.status_code == 200
        return answer.content

    with ThreadPoolExecutor(2) as pool:  # two cold requests at once: one C-GET
        bodies = list(pool.map(fetch, range(2)))
    again = fetch(0)  # warm: from the cache
    series = study["series"][0]
    one = f"{url}/series/{series['uid']}/instances/{series['instances'][0]}"
    assert requests.get(one, headers={"Accept": AS_STORED}, timeout=60).status_code == 200
    # A retrieve's (native) association is its own, gone with it; a search's stays pooled.
    search = f"{metered.url}/site/get/dicom-web/studies?StudyInstanceUID={study['study_uid']}"
    assert requests.get(search, timeout=60).status_code == 200
    _, after = scrape(metered.url)
    assert len(bodies[0]) == len(bodies[1]) == len(again)
    site = {"site": "get"}
    assert moved(before, after, "ncpeh_dimse_retrieves_total", **site) == 1
    assert moved(before, after, "ncpeh_dimse_instances_received_total", **site) == instances
    # The second cold request joined the retrieval under way, or came after it and found the
    # cache; the warm study and the instance found the cache.
    joined = moved(before, after, "ncpeh_instance_cache_joins_total", **site)
    answered = moved(before, after, "ncpeh_dimse_cache_answers_total", **site)
    assert joined + answered == 3 and answered >= 2
    assert after[("ncpeh_instance_cache_entries", (("site", "get"),))] >= instances
    assert after[("ncpeh_instance_cache_bytes", (("site", "get"),))] > 0
    # Instance lookups (a study's listing is not one): the single instance's.
    assert moved(before, after, "ncpeh_instance_cache_hits_total", **site) == 1
    open_now = after[("ncpeh_dimse_associations_open", (("site", "get"),))]
    assert 1 <= open_now <= 4  # the search's, pooled for the next one; max_associations is 4
    route = "/site/{site}/dicom-web/studies/{study}"
    assert moved(before, after, "ncpeh_http_response_bytes_total", route=route) == 3 * len(again)
    backend = "ncpeh_backend_requests_total"
    assert moved(before, after, backend, site="get", operation="retrieve", outcome="ok") == 4


async def test_metrics_need_no_token_with_auth_on(
    aiohttp_client: Callable[..., Any], pacs: Pacs, tmp_path: Path
) -> None:
    key = rsa_key("metrics-idp")
    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(jwks_document(key))
    settings = settings_from_mapping(
        {
            "sites": [{"id": "main", "url": pacs.dicomweb_root, "iocm": False}],
            "state": {"sqlite": str(tmp_path / "state.sqlite3")},
            "audit": {"jsonl_path": str(tmp_path / "audit.jsonl")},
            "auth": {"jwks_file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE},
        },
        {},
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    refused = await client.get("/dicom-web/studies")
    assert refused.status == 401
    answer = await client.get("/metrics")
    assert answer.status == 200, await answer.text()
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    samples = parse(await answer.text())
    key_401 = (("method", "GET"), ("route", "/dicom-web/studies"), ("status", "401"))
    assert samples[("ncpeh_http_requests_total", key_401)] == 1
    # Prometheus asks for OpenMetrics: it gets it.
    open_metrics = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert open_metrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await open_metrics.text()).endswith("# EOF\n")
    assert json.loads(await (await client.get("/health/stats")).text())["pid"] > 0
