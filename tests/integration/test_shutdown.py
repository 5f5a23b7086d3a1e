"""A stop (SIGTERM) while a study streams: a client that keeps reading gets the whole study
([server] shutdown_grace), one that stalls is cut when the grace is over, never left to hold
the process; either way the gateway exits 0 and the client can tell a whole body from a cut
one."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import requests

from ncpeh_dicomweb.dicomweb import multipart
from tests.conftest import Pacs, free_port, start_gateway

pytestmark = pytest.mark.integration

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _start(work: Path, pacs: Pacs, grace: float) -> tuple[str, object, Path]:
    port = free_port()
    config = work / "gateway.toml"
    config.write_text(
        f"""
default_site = "main"
[server]
port = {port}
shutdown_grace = {grace}
[[sites]]
id = "main"
url = "{pacs.dicomweb_root}"
iocm = false
[state]
sqlite = "{work / "state.sqlite3"}"
[audit]
jsonl_path = "{work / "audit.jsonl"}"
"""
    )
    url = f"http://127.0.0.1:{port}"
    log = work / "gateway.log"
    return url, start_gateway(config, log, url), log


def test_a_stream_under_way_finishes_after_sigterm(pacs: Pacs, tmp_path: Path) -> None:
    url, proc, log = _start(tmp_path, pacs, grace=60)
    large = pacs.manifest["large"]["studies"][0]["study_uid"]
    with requests.get(
        f"{url}/dicom-web/studies/{large}", headers={"Accept": AS_STORED}, stream=True, timeout=60
    ) as answer:
        assert answer.status_code == 200
        reader = multipart.MultipartReader(
            multipart.boundary_from_content_type(answer.headers["Content-Type"])
        )
        chunks = answer.iter_content(1 << 20)
        reader.feed(next(chunks))
        proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        # Not accepted any more, while the stream goes on.
        time.sleep(0.5)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/health/live", timeout=5)
        size = 0
        for chunk in chunks:
            size += len(chunk)
            reader.feed(chunk)
        reader.finish()  # the closing boundary came: the study is whole
    assert size > pacs.manifest["large"]["bytes"] // 2
    assert proc.wait(timeout=60) == 0  # type: ignore[attr-defined]
    assert "Traceback" not in log.read_text()


def test_a_stalled_stream_is_cut_when_the_grace_is_over(pacs: Pacs, tmp_path: Path) -> None:
    url, proc, log = _start(tmp_path, pacs, grace=1)
    large = pacs.manifest["large"]["studies"][0]["study_uid"]
    with requests.get(
        f"{url}/dicom-web/studies/{large}", headers={"Accept": AS_STORED}, stream=True, timeout=60
    ) as answer:
        assert answer.status_code == 200
        chunks = answer.iter_content(1 << 16)  # kept: a dropped generator closes the socket
        next(chunks)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        assert proc.wait(timeout=30) == 0  # type: ignore[attr-defined]
        took = time.monotonic() - started
    assert 0.9 < took < 15, (took, log.read_text()[-2000:])
    assert "Traceback" not in log.read_text()
