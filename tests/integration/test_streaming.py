"""A large study streams through the gateway: flat memory, back-pressure, clean hang-ups."""

from __future__ import annotations

import hashlib
import time

import psutil
import pytest
import requests

from ncpeh_dicomweb.dicomweb import multipart
from tests.conftest import Gateway, Pacs
from tests.integration.util import pacs_json, reset_peak_rss, status_kb

pytestmark = pytest.mark.integration

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MB = 1 << 20


@pytest.fixture(scope="module")
def large_study(pacs: Pacs) -> str:
    found = pacs_json(pacs, "studies", "PatientID=LARGE-CT-1")
    assert len(found) == 1, "the large CT study must be loaded (--load large)"
    return str(found[0]["0020000D"]["Value"][0])


def _part_digests(response: requests.Response, *, pause_every: int = 0) -> tuple[list[str], int]:
    """Stream a multipart body through our reader; digests of each part and total bytes."""
    reader = multipart.MultipartReader(
        multipart.boundary_from_content_type(response.headers["Content-Type"])
    )
    digests: list[str] = []
    current = hashlib.sha256()
    total = 0
    for chunk in response.iter_content(chunk_size=MB):
        total += len(chunk)
        for event in reader.feed(chunk):
            if isinstance(event, multipart.PartData):
                current.update(event.data)
            elif isinstance(event, multipart.PartEnd):
                digests.append(current.hexdigest())
                current = hashlib.sha256()
        if pause_every and total // MB % pause_every == 0:
            time.sleep(0.05)
    reader.finish()
    return digests, total


def test_large_study_streams_with_flat_memory(
    gateway: Gateway, pacs: Pacs, large_study: str, record_property: object
) -> None:
    with requests.get(
        f"{pacs.dicomweb_root}/studies/{large_study}",
        headers={"Accept": AS_STORED},
        stream=True,
        timeout=300,
    ) as direct:
        want, direct_bytes = _part_digests(direct)
    assert direct_bytes >= 200 * MB, f"study is only {direct_bytes / MB:.0f} MB"

    before_kb = status_kb(gateway.pid, "VmRSS")
    reset_peak_rss(gateway.pid)
    started = time.monotonic()
    with requests.get(
        f"{gateway.dicomweb}/studies/{large_study}",
        headers={"Accept": AS_STORED},
        stream=True,
        timeout=300,
    ) as response:
        assert response.status_code == 200
        got, total = _part_digests(response)
    seconds = time.monotonic() - started
    growth_mb = (status_kb(gateway.pid, "VmHWM") - before_kb) / 1024
    print(
        f"\nlarge study: {total / MB:.0f} MB, {len(got)} instances in {seconds:.1f} s "
        f"({total / MB / seconds:.0f} MB/s); gateway peak RSS growth {growth_mb:.1f} MB"
    )
    assert got == want  # every instance, byte for byte, in the PACS's order
    assert growth_mb < 40, (
        f"gateway memory grew by {growth_mb:.0f} MB for a {total / MB:.0f} MB study"
    )


def test_slow_client_does_not_fill_gateway_memory(gateway: Gateway, large_study: str) -> None:
    """Back-pressure: a client that reads slowly holds the PACS back, not gateway RAM."""
    before_kb = status_kb(gateway.pid, "VmRSS")
    reset_peak_rss(gateway.pid)
    with requests.get(
        f"{gateway.dicomweb}/studies/{large_study}",
        headers={"Accept": AS_STORED},
        stream=True,
        timeout=300,
    ) as response:
        read = 0
        for chunk in response.iter_content(chunk_size=256 * 1024):
            read += len(chunk)
            time.sleep(0.01)  # ~25 MB/s, far slower than the PACS sends
            if read >= 40 * MB:
                break
    growth_mb = (status_kb(gateway.pid, "VmHWM") - before_kb) / 1024
    assert growth_mb < 40, f"gateway buffered {growth_mb:.0f} MB for a slow client"


def test_client_hang_up_mid_stream_releases_everything(
    gateway: Gateway, pacs: Pacs, large_study: str
) -> None:
    process = psutil.Process(gateway.pid)
    assert requests.get(f"{gateway.url}/health/live", timeout=10).status_code == 200
    fds_before = process.num_fds()
    threads_before = process.num_threads()
    for _ in range(3):
        with requests.get(
            f"{gateway.dicomweb}/studies/{large_study}",
            headers={"Accept": AS_STORED},
            stream=True,
            timeout=300,
        ) as response:
            next(response.iter_content(chunk_size=4 * MB))
        # leaving the block closes our socket in the middle of the study
    deadline = time.monotonic() + 10
    while process.num_fds() > fds_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.num_fds() <= fds_before, "sockets to the PACS or the client were left open"
    assert process.num_threads() <= threads_before
    # and the gateway still serves
    again = requests.get(f"{gateway.dicomweb}/studies?PatientID=LARGE-CT-1", timeout=30)
    assert again.status_code == 200 and len(again.json()) == 1
