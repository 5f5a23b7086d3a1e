"""A viewer on another origin (CORS), and the URLs the gateway writes behind a proxy.

The dimse_gateway's config allows the origin https://viewer.example and trusts loopback as
its proxy; the plain `gateway` trusts no proxy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from tests.conftest import DimseGateway, Gateway, Loaded

pytestmark = pytest.mark.integration

VIEWER = "https://viewer.example"


@pytest.mark.parametrize("site", ["web", "get"])
def test_preflight_and_answers_for_an_allowed_origin(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    url = loaded("CT_small.dcm").url(dimse_gateway, site) + "/frames/1"
    preflight = requests.options(
        url,
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, accept",
        },
        timeout=30,
    )
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, accept"
    answer = requests.get(
        url,
        headers={"Origin": VIEWER, "Accept": "multipart/related; type=application/octet-stream"},
        timeout=30,
    )
    assert answer.status_code == 200  # a streamed answer carries the headers too
    assert answer.headers["Access-Control-Allow-Origin"] == VIEWER
    assert "Warning" in answer.headers["Access-Control-Expose-Headers"]
    assert "Origin" in answer.headers["Vary"]
    missing = requests.get(
        f"{dimse_gateway.root(site)}/studies/1.2.3.4/metadata",
        headers={"Origin": VIEWER},
        timeout=30,
    )
    assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == VIEWER


def test_other_origins_get_no_cors(dimse_gateway: DimseGateway) -> None:
    url = f"{dimse_gateway.root('web')}/studies"
    preflight = requests.options(
        url,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        timeout=30,
    )
    assert preflight.status_code == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    answer = requests.get(url, headers={"Origin": "https://evil.example"}, timeout=30)
    assert answer.status_code == 200 and "Access-Control-Allow-Origin" not in answer.headers


def _retrieve_urls(root: str, headers: dict[str, str], loaded: Loaded) -> list[str]:
    found = requests.get(
        f"{root}/studies?StudyInstanceUID={loaded.study}", headers=headers, timeout=30
    ).json()
    return [d["00081190"]["Value"][0] for d in found]


@pytest.mark.parametrize("site", ["web", "get"])
def test_urls_follow_a_trusted_proxy(
    loaded: Callable[[str], Loaded], dimse_gateway: DimseGateway, site: str
) -> None:
    item = loaded("CT_small.dcm")
    root = dimse_gateway.root(site)
    path = root.removeprefix(dimse_gateway.url)
    proxied = {"Forwarded": "for=192.0.2.1;host=gw.example;proto=https"}
    assert _retrieve_urls(root, proxied, item) == [f"https://gw.example{path}/studies/{item.study}"]
    prefixed = {
        "X-Forwarded-Host": "gw.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/imaging",
    }
    assert _retrieve_urls(root, prefixed, item) == [
        f"https://gw.example/imaging{path}/studies/{item.study}"
    ]
    metadata = requests.get(
        f"{root}/studies/{item.study}/series/{item.series}/instances/{item.sop}/metadata",
        headers=proxied,
        timeout=30,
    ).json()
    uris = [e["BulkDataURI"] for e in metadata[0].values() if "BulkDataURI" in e]
    assert uris and all(u.startswith(f"https://gw.example{path}/") for u in uris)
    # no proxy header: the configured public URL
    assert _retrieve_urls(root, {}, item)[0].startswith(f"{dimse_gateway.url}{path}/")


def test_an_untrusted_peer_cannot_redirect_urls(
    loaded: Callable[[str], Loaded], gateway: Gateway
) -> None:
    item = loaded("CT_small.dcm")
    forged = {"Forwarded": "host=evil.example;proto=https", "X-Forwarded-Host": "evil.example"}
    urls = _retrieve_urls(gateway.dicomweb, forged, item)
    assert urls and all(u.startswith(gateway.dicomweb + "/") for u in urls)
