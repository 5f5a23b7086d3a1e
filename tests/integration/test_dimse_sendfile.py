"""A retrieve a DIMSE site answers from its instance cache alone goes out whole: a
Content-Length, each file by ``sendfile``; byte for byte what the chunked (cold) answer and
Orthanc's own DICOMweb give. Anything to transcode still streams chunked; a client leaving
mid-stream leaves no file open and no instance pinned.

In-process gateways (``aiohttp_client``) sharing one cache directory per module, so the
backend's cache can be looked at, and a restart (a new app on the same directory) is cheap.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import ssl
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.backends.base import FileAnswer, FilePart, PartHead, RetrieveEvent
from ncpeh_dicomweb.backends.cache import InstanceCache
from ncpeh_dicomweb.backends.dimse.backend import DimseBackend
from ncpeh_dicomweb.config import settings_from_mapping
from ncpeh_dicomweb.web.keys import ACTIVE_STREAMS, BACKENDS, CLIENT_STREAMS, SETTINGS
from ncpeh_dicomweb.web.streaming import stream_parts
from tests.conftest import Pacs
from tests.integration.multipart_split import split_multipart
from tests.integration.util import after_meta, orthanc_study_files, pacs_json
from tests.unit.test_tls import make_pki

pytestmark = pytest.mark.integration

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
Client = TestClient[Any, Any]
Parts = list[tuple[dict[str, str], bytes]]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sendfile-cache")


async def _gateway(
    aiohttp_client: Callable[..., Any], pacs: Pacs, cache_dir: Path, tmp_path: Path
) -> Client:
    settings = settings_from_mapping(
        {
            "sites": [
                {
                    "id": "get",
                    "kind": "dimse",
                    "host": "127.0.0.1",
                    "port": pacs.dicom_port,
                    "called_aet": pacs.aet,
                    "calling_aet": "NCPEH-SENDFILE",
                    "retrieve": "c-get",
                    "cache_dir": str(cache_dir),
                    "iocm": False,
                }
            ],
            "state": {"sqlite": str(tmp_path / "state.sqlite3")},
            "audit": {"jsonl_path": str(tmp_path / "audit.jsonl")},
        },
        {},
    )
    client: Client = await aiohttp_client(create_app(settings))
    return client


def _cache(client: Client) -> InstanceCache:
    backend: Any = client.app[BACKENDS]["get"]
    while not isinstance(backend, DimseBackend):
        backend = backend.inner  # the metrics (and IOCM) wrappers
    return backend._cache


def _study(pacs: Pacs) -> dict[str, Any]:
    """The core study with the most series: several parts of several series."""
    return max(pacs.manifest["core"]["studies"], key=lambda s: (len(s["series"]), s["study_uid"]))


async def _get(client: Client, path: str, accept: str = AS_STORED) -> tuple[Any, bytes]:
    async with client.get(path, headers={"Accept": accept}) as response:
        body = await response.read()
        assert response.status == 200, body[:300]
        return response, body


def _logged_bytes(line: str, path: str) -> str | None:
    """The byte count of aiohttp's access-log line (``"%r" %s %b``) for a GET of ``path``."""
    match = re.search(rf'"GET {re.escape(path)} HTTP/1.1" 200 (\d+)', line)
    return match.group(1) if match else None


def _parts(content_type: str, body: bytes) -> Parts:
    parts: Parts = split_multipart(content_type, body)
    return parts


def _by_location(parts: Parts) -> dict[str, tuple[dict[str, str], bytes]]:
    return {h["content-location"].rsplit("/", 1)[1]: (h, b) for h, b in parts}


async def test_warm_study_is_sent_whole_and_byte_identical(
    aiohttp_client: Callable[..., Any],
    pacs: Pacs,
    cache_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    study = _study(pacs)
    path = f"/site/get/dicom-web/studies/{study['study_uid']}"
    client = await _gateway(aiohttp_client, pacs, cache_dir, tmp_path)
    cold, cold_body = await _get(client, path)
    assert "Content-Length" not in cold.headers  # streamed as it arrives
    warm, warm_body = await _get(client, path)
    assert warm.headers["Content-Length"] == str(len(warm_body))
    assert "Transfer-Encoding" not in warm.headers
    # The access log counts the files sendfile sent, not only the part heads around them.
    logged = [int(m) for r in caplog.records if (m := _logged_bytes(r.getMessage(), path))]
    assert len(logged) == 2 and logged[1] >= len(warm_body) and logged[0] >= len(cold_body)
    # The same answer but for the boundary: headers, parts, their headers and bodies.
    strip = lambda ct: ct.rsplit("; boundary=", 1)[0]  # noqa: E731
    assert strip(warm.headers["Content-Type"]) == strip(cold.headers["Content-Type"])
    assert warm.headers.get("X-Request-ID") and cold.headers.get("X-Request-ID")
    cold_parts = _parts(cold.headers["Content-Type"], cold_body)
    warm_parts = _parts(warm.headers["Content-Type"], warm_body)
    assert len(warm_parts) == len(cold_parts) == sum(len(s["instances"]) for s in study["series"])
    assert _by_location(warm_parts) == _by_location(cold_parts)
    for headers, body in warm_parts:
        assert headers["content-length"] == str(len(body))
        assert headers["content-type"].startswith("application/dicom; transfer-syntax=1.")
    # The dataset as Orthanc stores it (the file meta is the receiver's own, PS3.10 7.1).
    orthanc = orthanc_study_files(pacs, study["study_uid"])
    mine = {sop: after_meta(body) for sop, (_, body) in _by_location(warm_parts).items()}
    assert mine == {sop: after_meta(body) for sop, body in orthanc.items()}
    assert _cache(client).stats.pinned == 0
    # HEAD: the headers a GET gets, its length included, and no body.
    async with client.head(path, headers={"Accept": AS_STORED}) as head:
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(warm_body))
        assert await head.read() == b""


async def test_over_https_the_whole_answer_falls_back_to_reads_and_writes(
    aiohttp_client: Callable[..., Any], pacs: Pacs, cache_dir: Path, tmp_path: Path
) -> None:
    """A TLS transport cannot ``sendfile``: asyncio reads and writes the files instead, and
    the warm answer is still whole, its Content-Length right, its parts the cold ones."""
    pki = make_pki(tmp_path / "pki")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    client_tls = ssl.create_default_context(cafile=str(pki.ca))
    study = _study(pacs)
    path = f"/site/get/dicom-web/studies/{study['study_uid']}"
    plain = await _gateway(aiohttp_client, pacs, cache_dir, tmp_path)
    cold, cold_body = await _get(plain, path)  # fills the cache (or finds it filled)
    settings = plain.app[SETTINGS]
    await plain.close()  # one gateway on the cache directory at a time
    server = TestServer(create_app(settings))
    await server.start_server(ssl=server_tls)  # started here: aiohttp_client would not pass ssl
    secure: Client = await aiohttp_client(server)
    assert str(secure.make_url("/")).startswith("https://")
    async with secure.get(
        path, headers={"Accept": AS_STORED}, ssl=client_tls, server_hostname="localhost"
    ) as warm:
        warm_body = await warm.read()
        assert warm.status == 200, warm_body[:300]
        assert warm.headers["Content-Length"] == str(len(warm_body))
        assert "Transfer-Encoding" not in warm.headers
        warm_type = warm.headers["Content-Type"]
    cold_parts = _by_location(_parts(cold.headers["Content-Type"], cold_body))
    warm_parts = _by_location(_parts(warm_type, warm_body))
    assert len(warm_parts) == sum(len(s["instances"]) for s in study["series"])
    assert {sop: body for sop, (_, body) in warm_parts.items()} == {
        sop: body for sop, (_, body) in cold_parts.items()
    }
    assert all(h["content-location"].startswith("https://") for h, _ in warm_parts.values())
    assert _cache(secure).stats.pinned == 0


async def test_a_restart_keeps_the_syntaxes_and_the_whole_answer(
    aiohttp_client: Callable[..., Any], pacs: Pacs, cache_dir: Path, tmp_path: Path
) -> None:
    """A new gateway on the same cache: the syntaxes come back from the index (no file
    read for them), and the study is again one answer with a Content-Length."""
    study = _study(pacs)
    path = f"/site/get/dicom-web/studies/{study['study_uid']}"
    first = await _gateway(aiohttp_client, pacs, cache_dir, tmp_path)
    await _get(first, path)  # cached, if the test above did not run
    await first.close()
    client = await _gateway(aiohttp_client, pacs, cache_dir, tmp_path)
    listed = _cache(client).listing(study["study_uid"])
    assert listed is not None and all(i.syntax for i in listed)
    answer, body = await _get(client, path)
    assert answer.headers["Content-Length"] == str(len(body))
    series = study["series"][0]
    one = f"{path}/series/{series['uid']}/instances/{series['instances'][0]}"
    instance, body = await _get(client, one)
    assert instance.headers["Content-Length"] == str(len(body))
    ((headers, part),) = _parts(instance.headers["Content-Type"], body)
    assert headers["content-length"] == str(len(part))
    assert str(pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID) == series["instances"][0]


async def test_a_transcoded_answer_still_streams(
    aiohttp_client: Callable[..., Any], pacs: Pacs, cache_dir: Path, tmp_path: Path
) -> None:
    """Another syntax than the stored one: converted part by part, chunked, from the cache."""
    study = _study(pacs)
    series = study["series"][0]
    one = (
        f"/site/get/dicom-web/studies/{study['study_uid']}/series/{series['uid']}"
        f"/instances/{series['instances'][0]}"
    )
    client = await _gateway(aiohttp_client, pacs, cache_dir, tmp_path)
    await _get(client, one)  # cached now, if it was not (this test may run alone)
    stored, stored_body = await _get(client, one)
    ((stored_headers, _),) = _parts(stored.headers["Content-Type"], stored_body)
    assert stored.headers["Content-Length"] == str(len(stored_body))
    assert stored_headers["content-type"].endswith(f"transfer-syntax={ExplicitVRLittleEndian}")
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={RLELossless}'
    converted, body = await _get(client, one, accept)
    assert "Content-Length" not in converted.headers
    assert converted.headers["Transfer-Encoding"] == "chunked"
    ((headers, part),) = _parts(converted.headers["Content-Type"], body)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={RLELossless}"
    assert pydicom.dcmread(io.BytesIO(part)).file_meta.TransferSyntaxUID == RLELossless
    assert _cache(client).stats.pinned == 0


async def _until(ready: Callable[[], bool], seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        if ready():
            return
        await asyncio.sleep(0.1)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _large(pacs: Pacs) -> str:
    found = pacs_json(pacs, "studies", "PatientID=LARGE-CT-1")
    return str(found[0]["0020000D"]["Value"][0])


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
async def test_a_client_leaving_mid_stream_leaves_nothing_open(
    aiohttp_client: Callable[..., Any], pacs: Pacs, cache_dir: Path, tmp_path: Path
) -> None:
    """The large study, warm: clients reading 1 MB of it then hanging up. No file stays
    open, no instance pinned, each stream recorded as the client's leaving."""
    path = f"/site/get/dicom-web/studies/{_large(pacs)}"
    client = await _gateway(aiohttp_client, pacs, cache_dir, tmp_path)
    async with client.get(path, headers={"Accept": AS_STORED}) as cold:  # fills the cache
        assert cold.status == 200
        async for _ in cold.content.iter_chunked(1 << 20):
            pass
    cache = _cache(client)
    await _until(lambda: cache.stats.pinned == 0, 30)  # the flight lets go
    async with client.get(path, headers={"Accept": AS_STORED}) as warm:
        size = int(warm.headers["Content-Length"])
        assert size > 200 << 20
        await warm.read()
    fds_before = _open_fds()
    for _ in range(3):
        response = await client.get(path, headers={"Accept": AS_STORED})
        assert response.headers["Content-Length"] == str(size)
        await response.content.readexactly(1 << 20)
        response.close()  # hang up, most of the study unsent
    await _until(lambda: cache.stats.pinned == 0 and _open_fds() <= fds_before, 15)
    assert cache.stats.pinned == 0, "instances stay pinned"
    assert _open_fds() <= fds_before, "files or sockets were left open"
    audit = [line for line in (tmp_path / "audit.jsonl").read_text().splitlines() if line]
    assert sum('"client-gone"' in line for line in audit) >= 3, audit[-3:]
    # and the site still answers whole
    async with client.get(path, headers={"Accept": AS_STORED}) as again:
        assert len(await again.read()) == size


# ---------------------------------------------------------------- the streaming layer alone


def _file_answer(tmp_path: Path, name: str, held: list[int]) -> FileAnswer:
    parts = []
    for n in range(2):
        path = tmp_path / f"{name}{n}.dcm"
        path.write_bytes(f"<{name}{n}>".encode() * 1000)
        headers = {"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}
        parts.append(FilePart(headers, path, path.stat().st_size, "1.2.840.10008.1.2.1"))

    def hold() -> Callable[[], None]:
        held[0] += 1
        return lambda: held.__setitem__(0, held[0] - 1)

    return FileAnswer(parts, hold)


async def _as_a_backend_gives(answer: FileAnswer) -> AsyncGenerator[RetrieveEvent, None]:
    for n, part in enumerate(answer.parts):
        yield PartHead(part.headers, answer if n == 0 else None)
        if answer.claimed:
            return
        yield part.path.read_bytes()


async def _serving(
    aiohttp_client: Callable[..., Any], events: Callable[[], AsyncGenerator[RetrieveEvent, None]]
) -> Client:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_parts(
            request,
            events(),
            content_type=lambda b: f'multipart/related; type="application/dicom"; boundary={b}',
            part_type="application/dicom",
            what="a test",
            as_stored=lambda syntax: syntax == "1.2.840.10008.1.2.1",
        )

    app = web.Application()
    app[SETTINGS] = settings_from_mapping({"sites": [{"id": "main", "url": "http://pacs"}]}, {})
    app[ACTIVE_STREAMS] = set()
    app[CLIENT_STREAMS] = Counter()
    app.router.add_get("/", handler)
    client: Client = await aiohttp_client(app)
    return client


async def test_answers_a_wrapper_joins_are_streamed_in_order(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """Two FileAnswers one after the other (the IOCM filter joins a study's series so): the
    first is claimed, then streamed from its files, the second as the backend gives it."""
    held = [0]
    first, second = _file_answer(tmp_path, "a", held), _file_answer(tmp_path, "b", held)

    async def joined() -> AsyncGenerator[RetrieveEvent, None]:
        for answer in (first, second):
            async for event in _as_a_backend_gives(answer):
                yield event

    client = await _serving(aiohttp_client, joined)
    response, body = await _get(client, "/")
    assert "Content-Length" not in response.headers
    parts = _parts(response.headers["Content-Type"], body)
    expected = [p.path.read_bytes() for a in (first, second) for p in a.parts]
    assert [b for _, b in parts] == expected
    assert first.claimed and not second.claimed and held == [0]


async def test_one_answer_is_sent_whole(aiohttp_client: Callable[..., Any], tmp_path: Path) -> None:
    held = [0]
    answer = _file_answer(tmp_path, "a", held)
    client = await _serving(aiohttp_client, lambda: _as_a_backend_gives(answer))
    response, body = await _get(client, "/")
    assert response.headers["Content-Length"] == str(len(body))
    assert [b for _, b in _parts(response.headers["Content-Type"], body)] == [
        p.path.read_bytes() for p in answer.parts
    ]
    assert answer.claimed and held == [0]
