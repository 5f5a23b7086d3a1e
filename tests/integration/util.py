"""Helpers for comparing the gateway with the PACS reached directly."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import Gateway, Pacs


def pacs_json(pacs: Pacs, path: str, raw_query: str = "") -> Any:
    """GET from Orthanc with the query string sent exactly as given (it does not decode it)."""
    url = urlsplit(f"{pacs.dicomweb_root}/{path}")
    target = url.path + (f"?{raw_query}" if raw_query else "")
    # http.client sends the target as given; requests/urllib3 would re-quote `^` to %5E.
    connection = http.client.HTTPConnection(url.netloc, timeout=60)
    try:
        connection.request("GET", target, headers={"Accept": "application/dicom+json"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, (target, response.status, body[:300])
    return json.loads(body)


def as_seen_through(gateway_root: str, pacs: Pacs, body: Any) -> Any:
    """The PACS's answer with its URLs moved to the gateway's root, done independently."""
    text = json.dumps(body).replace(pacs.dicomweb_root + "/", gateway_root + "/")
    return json.loads(text)


def uids(datasets: list[dict[str, Any]], tag: str) -> list[str]:
    return [d[tag]["Value"][0] for d in datasets]


def gateway_root(gateway: Gateway, site: str | None = None) -> str:
    return gateway.dicomweb if site is None else f"{gateway.url}/site/{site}/dicom-web"


def status_kb(pid: int, field: str) -> int:
    """A /proc/PID/status figure in kB (VmRSS: resident now, VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
