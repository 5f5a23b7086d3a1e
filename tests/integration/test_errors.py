"""Every failure answers with the right status and a JSON body; never a traceback or a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from io import BytesIO
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.config import settings_from_mapping
from tests.conftest import Pacs, free_port
from tests.integration.util import pacs_json

pytestmark = pytest.mark.integration

UID = "1.2.840.113619.2.55.3.604688119.971.1"
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[..., Awaitable[TestServer]]


def _settings(sites: list[dict[str, Any]], **extra: Any) -> Any:
    return settings_from_mapping({"sites": sites, **extra}, {})


@pytest.fixture
async def stalling_pacs() -> AsyncIterator[str]:
    """Accepts connections, reads the request, never answers: a PACS that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/dicom-web"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def gateway_client(
    aiohttp_client: ClientFactory, pacs: Pacs, stalling_pacs: str
) -> TestClient[Any, Any]:
    closed_port = free_port()  # nothing listens there
    settings = _settings(
        [
            {"id": "main", "url": pacs.dicomweb_root},
            {
                "id": "down",
                "url": f"http://127.0.0.1:{closed_port}/dicom-web",
                "connect_timeout": 2,
            },
            {"id": "slow", "url": stalling_pacs, "search_timeout": 1, "read_timeout": 1},
        ],
        limits={"qido_max_results": 50, "max_query_string": 2048},
    )
    return await aiohttp_client(create_app(settings))


async def _error(
    client: TestClient[Any, Any],
    path: str,
    status: int,
    code: str,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = await client.get(path, headers=headers or {})
    text = await response.text()
    assert response.status == status, (path, response.status, text)
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert body["status"] == status and body["error"] == code and body["message"]
    assert "Traceback" not in text and "127.0.0.1" not in text
    return dict(body)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/site/nowhere/dicom-web/studies", 404, "not-found"),
        ("/dicom-web/nothing-here", 404, "not-found"),
        ("/dicom-web/studies/1.2.3/frames/1/extra/path", 404, "not-found"),
        (f"/dicom-web/studies/{UID}", 404, "not-found"),
        (f"/dicom-web/studies/{UID}/metadata", 404, "not-found"),
        (f"/dicom-web/studies/{UID}/series/1.2.3/instances/4.5.6", 404, "not-found"),
        ("/dicom-web/studies/1.2.abc", 400, "invalid-uid"),
        ("/dicom-web/studies/1.2.abc/metadata", 400, "invalid-uid"),
        (f"/dicom-web/studies/{'1.' * 40}1", 400, "invalid-uid"),
        ("/dicom-web/studies/1.2.3/series/x.y/instances", 400, "invalid-uid"),
    ],
)
async def test_paths(
    gateway_client: TestClient[Any, Any], path: str, status: int, code: str
) -> None:
    await _error(gateway_client, path, status, code)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("StudyDate=2020-XX", "StudyDate"),
        ("StudyDate=20231301", "StudyDate"),
        ("StudyDate=20240101-20230101", "StudyDate"),
        ("StudyTime=25", "StudyTime"),
        ("NoSuchKeyword=1", "NoSuchKeyword"),
        ("StudyInstanceUID=1.2.x", "StudyInstanceUID"),
        ("StudyInstanceUID=1.2.*", "StudyInstanceUID"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("offset=-5", "offset"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("includefield=NotAnAttribute", "includefield"),
    ],
)
async def test_malformed_query_is_400_naming_the_parameter(
    gateway_client: TestClient[Any, Any], query: str, parameter: str
) -> None:
    body = await _error(gateway_client, f"/dicom-web/studies?{query}", 400, "invalid-query")
    assert body["detail"]["parameter"] == parameter


async def test_overlong_query_string_is_414(gateway_client: TestClient[Any, Any]) -> None:
    await _error(gateway_client, "/dicom-web/studies?PatientID=" + "A" * 3000, 414, "uri-too-long")


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        (f"/dicom-web/studies/{UID}", "image/jpeg"),
        (f"/dicom-web/studies/{UID}", "application/dicom"),
        (
            f"/dicom-web/studies/{UID}",
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4',
        ),
        (
            f"/dicom-web/studies/{UID}",
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',
        ),
        ("/dicom-web/studies", "application/dicom+xml"),  # XML is multipart only (PS3.18 8.7.5)
        ("/dicom-web/studies", "text/html"),
        (f"/dicom-web/studies/{UID}/metadata", "image/png"),
    ],
)
async def test_unsupported_accept_is_406(
    gateway_client: TestClient[Any, Any], path: str, accept: str
) -> None:
    await _error(gateway_client, path, 406, "not-acceptable", {"Accept": accept})


@pytest.mark.parametrize(
    "path",
    [
        "/site/down/dicom-web/studies",
        f"/site/down/dicom-web/studies/{UID}",
        f"/site/down/dicom-web/studies/{UID}/metadata",
    ],
)
async def test_pacs_unreachable_is_502(gateway_client: TestClient[Any, Any], path: str) -> None:
    await _error(gateway_client, path, 502, "pacs-unreachable")


@pytest.mark.parametrize(
    "path",
    [
        "/site/slow/dicom-web/studies",
        f"/site/slow/dicom-web/studies/{UID}",
        f"/site/slow/dicom-web/studies/{UID}/metadata",
    ],
)
async def test_pacs_too_slow_is_504(gateway_client: TestClient[Any, Any], path: str) -> None:
    await _error(gateway_client, path, 504, "pacs-timeout")


async def test_readiness_names_the_sick_sites(gateway_client: TestClient[Any, Any]) -> None:
    response = await gateway_client.get("/health/ready")
    assert response.status == 503
    body = await response.json()
    assert body["sites"] == {"main": "ok", "down": "pacs-unreachable", "slow": "pacs-timeout"}


async def test_limit_above_server_maximum_is_capped_with_warning(
    gateway_client: TestClient[Any, Any], pacs: Pacs
) -> None:
    response = await gateway_client.get("/dicom-web/instances?limit=100000")
    assert response.status == 200
    assert len(await response.json()) == 50
    assert response.headers["Warning"].startswith('299 ncpeh-dicomweb "')
    # no limit at all: the server maximum applies, and the client is told
    response = await gateway_client.get("/dicom-web/instances")
    assert len(await response.json()) == 50 and "Warning" in response.headers
    assert len(pacs_json(pacs, "instances", "limit=51")) == 51  # there really are more


# ------------------------------------------------------------ faults a real PACS won't show


def _fake_pacs(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_get("/dicom-web/{tail:.*}", handler)
    return app


@pytest.mark.parametrize(
    ("upstream", "status", "code"),
    [
        (400, 400, "rejected-by-pacs"),
        (404, 404, "not-found"),
        (410, 410, "rejected-by-pacs"),
        (401, 502, "bad-gateway"),
        (403, 502, "bad-gateway"),
        (500, 502, "bad-gateway"),
        (503, 503, "pacs-busy"),
        (504, 504, "pacs-timeout"),
    ],
)
async def test_pacs_status_is_mapped(
    aiohttp_client: ClientFactory,
    aiohttp_server: ServerFactory,
    upstream: int,
    status: int,
    code: str,
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=upstream, text="internal detail http://10.0.0.7/secret")

    server = await aiohttp_server(_fake_pacs(answer))
    client = await aiohttp_client(
        create_app(_settings([{"id": "x", "url": str(server.make_url("/dicom-web"))}]))
    )
    for path in (
        "/dicom-web/studies",
        f"/dicom-web/studies/{UID}",
        f"/dicom-web/studies/{UID}/metadata",
    ):
        body = await _error(client, path, status, code)
        assert "10.0.0.7" not in str(body)
        if status == 503:
            response = await client.get(path)
            assert response.headers["Retry-After"]


async def test_truncated_upstream_stream_is_cut_not_completed(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    """The PACS dies mid-study: the client must see a broken stream, not a complete one."""

    async def half_a_study(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'}
        )
        await response.prepare(request)
        instance = _part10(100_000)
        await response.write(b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + instance)
        await response.write(
            b"\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + instance[:50_000]
        )
        assert request.transport is not None
        request.transport.close()  # no closing delimiter, connection gone
        return response

    server = await aiohttp_server(_fake_pacs(half_a_study))
    client = await aiohttp_client(
        create_app(_settings([{"id": "x", "url": str(server.make_url("/dicom-web"))}]))
    )
    response = await client.get(f"/dicom-web/studies/{UID}")
    assert response.status == 200, await response.text()  # headers went out before the failure
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


@pytest.mark.parametrize("delta", [-7, 7])
async def test_a_part_whose_content_length_lies_cuts_the_stream(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory, delta: int
) -> None:
    """Parts are read by their Content-Length: one that does not match its body (shorter or
    longer) must cut the client's stream, never pass on a part cut short or run into the next."""

    async def lying_lengths(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'}
        )
        await response.prepare(request)
        good, bad = _part10(100_000), _part10(80_000)
        await response.write(
            b"--XyZ\r\nContent-Type: application/dicom\r\n"
            + f"Content-Length: {len(good)}\r\n\r\n".encode()
            + good
            + b"\r\n--XyZ\r\nContent-Type: application/dicom\r\n"
            + f"Content-Length: {len(bad) + delta}\r\n\r\n".encode()
            + bad
            + b"\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\n"
            + good
            + b"\r\n--XyZ--\r\n"
        )
        return response

    server = await aiohttp_server(_fake_pacs(lying_lengths))
    client = await aiohttp_client(
        create_app(_settings([{"id": "x", "url": str(server.make_url("/dicom-web"))}]))
    )
    response = await client.get(f"/dicom-web/studies/{UID}")
    assert response.status == 200, await response.text()  # the first part went out
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


def _part10(size: int) -> bytes:
    """A real DICOM file (Explicit VR Little Endian) of about ``size`` bytes."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.add_new(0x00091010, "OB", b"\0" * size)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()


async def test_upstream_without_multipart_is_502(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    async def json_instead(request: web.Request) -> web.Response:
        return web.json_response([])

    server = await aiohttp_server(_fake_pacs(json_instead))
    client = await aiohttp_client(
        create_app(_settings([{"id": "x", "url": str(server.make_url("/dicom-web"))}]))
    )
    await _error(client, f"/dicom-web/studies/{UID}", 502, "bad-gateway")


async def test_invalid_utf8_in_query_is_400(gateway_client: TestClient[Any, Any]) -> None:
    body = await _error(gateway_client, "/dicom-web/studies?PatientName=%FF", 400, "invalid-query")
    assert body["detail"]["parameter"] == "query"


async def test_syntax_the_pacs_cannot_make_is_406(
    gateway_client: TestClient[Any, Any], pacs: Pacs
) -> None:
    study = pacs_json(pacs, "studies", "PatientID=LARGE-CT-1")[0]["0020000D"]["Value"][0]
    htj2k = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.201'
    await _error(
        gateway_client, f"/dicom-web/studies/{study}", 406, "not-acceptable", {"Accept": htj2k}
    )


async def test_retry_after_and_odd_part_headers_are_sanitised(
    aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    async def busy_or_odd(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/studies"):
            return web.Response(status=503, headers={"Retry-After": "http://pacs.internal/"})
        response = web.StreamResponse(
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'}
        )
        await response.prepare(request)
        await response.write(
            b"--B\r\nContent-Type: application/dicom\r\n"
            + b"Content-Description: Thorax \xc3\xa9\r\n\r\n"
            + _part10(1000)
            + b"\r\n--B--\r\n"
        )
        return response

    server = await aiohttp_server(_fake_pacs(busy_or_odd))
    client = await aiohttp_client(
        create_app(_settings([{"id": "x", "url": str(server.make_url("/dicom-web"))}]))
    )
    response = await client.get("/dicom-web/studies")
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    response = await client.get(f"/dicom-web/studies/{UID}")
    assert response.status == 200
    body = await response.read()  # complete, no second response spliced in
    assert body.rstrip().endswith(b"--")
    assert b"Thorax" not in body
    assert b"transfer-syntax=1.2.840.10008.1.2.1" in body


@pytest.mark.parametrize(
    "path",
    [
        "fhir/ImagingStudy?patient.identifier=|P1",
        "fhir/Patient/P1",
        "fhir/ImagingSelection?patient=Patient/P1",
    ],
)
@pytest.mark.parametrize(
    ("site", "status", "issue_code"), [("down", 502, "transient"), ("slow", 504, "timeout")]
)
async def test_pacs_faults_on_fhir_routes_are_operation_outcomes(
    gateway_client: TestClient[Any, Any], path: str, site: str, status: int, issue_code: str
) -> None:
    response = await gateway_client.get(f"/site/{site}/{path}")
    text = await response.text()
    assert response.status == status, (path, text)
    assert "Traceback" not in text and "127.0.0.1" not in text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = await response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == issue_code


async def test_a_selection_posted_to_a_site_whose_pacs_is_down_is_502(
    gateway_client: TestClient[Any, Any],
) -> None:
    selection = {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"text": "x"},
        "studyUid": UID,
        "seriesUid": UID + ".1",
        "instance": [{"uid": UID + ".1.1"}],
    }
    response = await gateway_client.post(
        "/site/down/fhir/ImagingSelection",
        json=selection,
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status == 502
    assert (await response.json())["issue"][0]["code"] == "transient"
