"""Helpers for comparing the gateway with the PACS reached directly."""

from __future__ import annotations

import json
from typing import Any

import requests

from tests.conftest import Gateway, Pacs


def pacs_json(pacs: Pacs, path: str, raw_query: str = "") -> Any:
    """GET from Orthanc with the query string sent exactly as given (it does not decode it)."""
    url = f"{pacs.dicomweb_root}/{path}" + (f"?{raw_query}" if raw_query else "")
    session = requests.Session()
    request = requests.Request("GET", url, headers={"Accept": "application/dicom+json"})
    prepared = session.prepare_request(request)
    prepared.url = url  # requests would re-quote it
    response = session.send(prepared, timeout=60)
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return response.json()


def as_seen_through(gateway_root: str, pacs: Pacs, body: Any) -> Any:
    """The PACS's answer with its URLs moved to the gateway's root, done independently."""
    text = json.dumps(body).replace(pacs.dicomweb_root + "/", gateway_root + "/")
    return json.loads(text)


def uids(datasets: list[dict[str, Any]], tag: str) -> list[str]:
    return [d[tag]["Value"][0] for d in datasets]


def gateway_root(gateway: Gateway, site: str | None = None) -> str:
    return gateway.dicomweb if site is None else f"{gateway.url}/site/{site}/dicom-web"
