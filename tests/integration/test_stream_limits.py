"""[limits] max_streams_per_client: a client with its share of retrievals streaming gets 429
(with Retry-After, before the PACS is asked), its share comes back when a stream ends, hung up
ones included."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.config import settings_from_mapping
from ncpeh_dicomweb.web.keys import CLIENT_STREAMS
from tests.conftest import Pacs

pytestmark = pytest.mark.integration

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
async def client(aiohttp_client: ClientFactory, pacs: Pacs, tmp_path: Path) -> TestClient[Any, Any]:
    settings = settings_from_mapping(
        {
            "sites": [{"id": "main", "url": pacs.dicomweb_root}],
            "state": {"sqlite": str(tmp_path / "state.sqlite3")},
            "limits": {"max_streams_per_client": 2},
        },
        {},
    )
    return await aiohttp_client(create_app(settings))


async def _open(client: TestClient[Any, Any], path: str) -> ClientResponse:
    """A retrieve whose first bytes arrived, left open (the client reads no further)."""
    response = await client.get(path, headers={"Accept": AS_STORED})
    assert response.status == 200, await response.text()
    await response.content.readany()
    return response


async def test_a_client_over_its_share_gets_429_until_a_stream_ends(
    client: TestClient[Any, Any], pacs: Pacs
) -> None:
    large = pacs.manifest["large"]["studies"][0]["study_uid"]
    small = pacs.manifest["core"]["studies"][0]["study_uid"]
    path = f"/dicom-web/studies/{large}"
    first, second = await _open(client, path), await _open(client, path)
    refused = await client.get(f"/dicom-web/studies/{small}", headers={"Accept": AS_STORED})
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    body = await refused.json()
    assert body["error"] == "too-many-requests" and body["detail"] == {"limit": 2}
    # Searches and metadata are not streams: still served.
    assert (await client.get("/dicom-web/studies?limit=1")).status == 200
    assert (await client.get(f"/dicom-web/studies/{small}/metadata")).status == 200
    # One client hangs up mid-stream: its share comes back.
    first.close()
    streams = client.app[CLIENT_STREAMS]
    for _ in range(100):
        if sum(streams.values()) < 2:
            break
        await asyncio.sleep(0.05)
    served = await client.get(f"/dicom-web/studies/{small}", headers={"Accept": AS_STORED})
    assert served.status == 200
    await served.read()
    second.close()
    for _ in range(100):
        if not streams:
            break
        await asyncio.sleep(0.05)
    assert not streams  # nothing counted for streams that are over


async def test_searches_are_not_held_back_by_streams_holding_the_pacs_connections(
    aiohttp_client: ClientFactory, pacs: Pacs, tmp_path: Path
) -> None:
    """A site with max_connections 2, both taken by studies streaming to clients that do not
    read: a search still gets a connection of its own at once (it used to wait for one until
    connect_timeout and answer 504)."""
    settings = settings_from_mapping(
        {
            "sites": [
                {
                    "id": "main",
                    "url": pacs.dicomweb_root,
                    "max_connections": 2,
                    "connect_timeout": 2,
                }
            ],
            "state": {"sqlite": str(tmp_path / "state.sqlite3")},
        },
        {},
    )
    client = await aiohttp_client(create_app(settings))
    large = pacs.manifest["large"]["studies"][0]["study_uid"]
    held = [await _open(client, f"/dicom-web/studies/{large}") for _ in range(2)]
    started = asyncio.get_running_loop().time()
    search = await client.get("/dicom-web/studies?limit=1")
    assert search.status == 200, await search.text()
    assert asyncio.get_running_loop().time() - started < 1.5
    for response in held:
        response.close()
