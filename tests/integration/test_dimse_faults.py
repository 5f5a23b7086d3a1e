"""Faults of a DIMSE PACS that a real one cannot be made to show, injected by a pynetdicom SCP.

Each test starts its own SCP on a free loopback port, with event handlers written for the
fault, and an in-process gateway whose ``kind = "dimse"`` site points at it with small
timeouts. What must hold (SPEC "Decisions taken"): unreachable or refused 502, too slow 504,
busy 503 with Retry-After, a DIMSE failure status 502 with a ``Warning`` naming the status; a
retrieve cut short after the headers went out is a broken stream, never a complete one; and
no fault leaves a thread, an association or a half-written cache file behind.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventType
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.backends.base import PartHead, Target
from ncpeh_dicomweb.config import settings_from_mapping
from ncpeh_dicomweb.web.keys import BACKENDS
from tests.conftest import free_port

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

SCP_AET = "FAULTY-PACS"
GATEWAY_AET = "NCPEH-FAULTS"
STUDY = "1.2.826.0.1.3680043.8.498.4242"
SERIES = f"{STUDY}.1"
PENDING, CANCEL, SUCCESS = 0xFF00, 0xFE00, 0x0000
ACCEPT_DICOM = 'multipart/related; type="application/dicom"'

# ---------------------------------------------------------------------- the fake PACS

Handler = Callable[[Event, "Scp"], Any]


@dataclass
class Scp:
    """A pynetdicom SCP on loopback; its handlers record what they saw in ``events``."""

    ae: AE
    server: ThreadedAssociationServer
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    events: list[str] = field(default_factory=list)
    requests: list[Dataset] = field(default_factory=list)  # C-FIND / C-GET identifiers
    assocs: list[Association] = field(default_factory=list)
    # closed at shutdown whatever pynetdicom did with them (see _pynetdicom_closes_its_sockets)
    sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, what: str, identifier: Dataset | None = None) -> None:
        with self._lock:
            self.events.append(what)
            if identifier is not None:
                self.requests.append(identifier)

    def count(self, what: str) -> int:
        with self._lock:
            return self.events.count(what)

    def owns(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is one of the SCP's (acceptor, its DUL, socketserver workers)."""
        with self._lock:
            mine = {t for a in self.assocs for t in (a, a.dul)}
        return thread in mine or "process_request_thread" in thread.name

    def wait_for(self, *what: str, timeout: float) -> bool:
        """Block (in a thread) until one of ``what`` has been noted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(w in self.events for w in what):
                    return True
            time.sleep(0.02)
        return False

    def pause(self, seconds: float, event: Event) -> str | None:
        """Sleep up to ``seconds``; wake early (and say why) on abort, C-CANCEL or teardown.

        The handler runs on the association's own thread, so ``assoc.is_aborted`` cannot
        change under it: an abort shows as an A-(P-)ABORT waiting in the DUL's queue. Note
        that ``event.is_cancelled`` is True only once per C-CANCEL (pynetdicom consumes it).
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if event.assoc.is_aborted or event.assoc.acse.is_aborted():
                return "aborted"
            if event.is_cancelled:
                return "cancelled"
            if self.stop.wait(0.02):
                return "teardown"
        return None

    def shutdown(self) -> None:
        self.stop.set()
        self.ae.shutdown()  # aborts the SCP's associations, closes the listening socket
        with self._lock:
            assocs = list(self.assocs)
        for assoc in assocs:
            assoc.join(5)
            assoc.dul.join(5)
        for sock in self.sockets:
            sock.close()


def _start_scp(
    handlers: dict[EventType, Handler],
    *,
    require_called_aet: bool = False,
    require_calling_aet: list[str] | None = None,
) -> Scp:
    ae = AE(ae_title=SCP_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.require_called_aet = require_called_aet
    if require_calling_aet:
        ae.require_calling_aet = require_calling_aet
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    # C-GET: the gateway takes the SCP role of the storage class and gets its C-STOREs.
    ae.add_supported_context(
        SecondaryCaptureImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True
    )
    holder: list[Scp] = []

    def on_open(event: Event) -> None:
        scp = holder[0]
        with scp._lock:
            scp.assocs.append(event.assoc)
            scp.sockets.append(event.assoc.dul.socket.socket)

    bound: list[Any] = [(evt.EVT_CONN_OPEN, on_open)]
    for event_type, handler in handlers.items():
        bound.append((event_type, lambda event, h=handler: h(event, holder[0])))
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=bound)
    assert server is not None
    holder.append(Scp(ae=ae, server=server, port=port))
    return holder[0]


@pytest.fixture
def start_scp() -> Iterator[Callable[..., Scp]]:
    """Starts SCPs for a test; shuts them down (and joins their threads) afterwards.

    Ask for it before ``aiohttp_client``: fixtures end in reverse order, so the gateway closes
    while its PACS still answers.
    """
    started: list[Scp] = []

    def start(handlers: dict[EventType, Handler], **kwargs: Any) -> Scp:
        scp = _start_scp(handlers, **kwargs)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.shutdown()


_SHUTDOWN_SOCKET = AssociationSocket._shutdown_socket


def _shutdown_then_close(self: AssociationSocket) -> None:
    """``AssociationSocket._shutdown_socket`` that closes the socket even when ``shutdown()``
    fails (ENOTCONN: the peer reset the connection, or it never connected)."""
    sock = self.socket
    if sock is None:
        return
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture(autouse=True, scope="module")
def _pynetdicom_closes_its_sockets() -> Iterator[None]:
    """pynetdicom 3.0.4 calls ``shutdown()`` and ``close()`` in one ``try``: when
    ``shutdown()`` fails, the socket is dropped unclosed and its ResourceWarning surfaces
    wherever the garbage collector happens to run, failing a random later test. The faults
    injected here (refused connections, aborts on both sides) hit that path on both the
    gateway's and the SCP's sockets, so this module runs with the fix patched in; the defect
    as the gateway shows it is pinned by test_refused_connection_closes_its_socket."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AssociationSocket, "_shutdown_socket", _shutdown_then_close)
        yield


@pytest.fixture(autouse=True)
def _no_thread_outlives_the_test() -> Iterator[None]:
    """Whatever a test started (gateway, SCP) has ended soon after it: a DIMSE thread left
    blocked would otherwise finish, or fail, during some later test.

    ``asyncio_*`` threads are the test event loop's default executor, joined when it closes.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 6
    while True:
        left = [
            t.name
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith("asyncio_")
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"threads outlived the test: {sorted(left)}"


def _study_match(number: int, patient_id: str | None = None) -> Dataset:
    """A study-level answer (the gateway checks answers against its keys: they must match)."""
    answer = Dataset()
    answer.QueryRetrieveLevel = "STUDY"
    answer.StudyInstanceUID = f"{STUDY}.{number}"
    answer.PatientID = patient_id or f"FAULT-{number}"
    answer.PatientName = f"Fault^Number{number}"
    answer.StudyDate = "20240101"
    return answer


def _instance(number: int) -> Dataset:
    """A small Secondary Capture image (8x8, 16 bits) as the PACS would send it."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = f"{SERIES}.{number}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.PatientID = "FAULT-1"
    ds.PatientName = "Fault^Injection"
    ds.Modality = "OT"
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((number + i) % 256 for i in range(8 * 8 * 2))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


# ---------------------------------------------------------------------- the gateway


def _site(port: int, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "id": "pacs",
        "kind": "dimse",
        "host": "127.0.0.1",
        "port": port,
        "called_aet": SCP_AET,
        "calling_aet": GATEWAY_AET,
        "connect_timeout": 1,
        "dimse_timeout": 1,
        "search_timeout": 2,
        "operation_timeout": 10,
        "cache_dir": str(tmp_path / "cache"),
        "iocm": False,  # the fake SCP counts C-FINDs and knows no KO series
        **overrides,
    }


class _RunAppLikeServer(TestServer):
    """The gateway as ``web.run_app`` serves it (cli.py): a client hanging up does not
    cancel the handler (aiohttp's TestServer turns ``handler_cancellation`` on)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return await super()._make_runner(**{**kwargs, "handler_cancellation": False})


async def _gateway(
    aiohttp_client: ClientFactory,
    port: int,
    tmp_path: Path,
    *,
    handler_cancellation: bool = True,
    **overrides: Any,
) -> TestClient[Any, Any]:
    settings = settings_from_mapping({"sites": [_site(port, tmp_path, **overrides)]}, {})
    app = create_app(settings)
    return await aiohttp_client(app if handler_cancellation else _RunAppLikeServer(app))


async def _error(
    client: TestClient[Any, Any], path: str, status: int, code: str | None = None
) -> aiohttp.ClientResponse:
    """The error answer: status, JSON body, and no internal host or AE title anywhere."""
    response = await client.get(path)
    text = await response.text()
    assert response.status == status, (path, response.status, text)
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert body["status"] == status and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    seen = text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in ("Traceback", "127.0.0.1", SCP_AET, GATEWAY_AET, "NOT-THE-PACS"):
        assert secret not in seen, (secret, seen)
    return response


async def _until(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _gateway_threads(before: set[threading.Thread], scp: Scp) -> list[str]:
    """Threads started since ``before`` that are neither the SCP's nor the event loop's.

    ``asyncio_*`` threads are the test event loop's default executor (``asyncio.to_thread``,
    the client's DNS lookups): idle workers owned by the loop, joined when it closes.
    """
    return sorted(
        t.name
        for t in threading.enumerate()
        if t not in before
        and t.is_alive()
        and not scp.owns(t)
        and not t.name.startswith("asyncio_")
    )


async def _no_gateway_threads(
    before: set[threading.Thread], scp: Scp, grace: float = 3.0
) -> list[str]:
    await _until(lambda: not _gateway_threads(before, scp), grace)
    return _gateway_threads(before, scp)


async def _close_gateway(client: TestClient[Any, Any], limit: float = 5.0) -> float:
    """Close the app (backend.close: pool, executor, cache); returns how long it took."""
    started = time.monotonic()
    await client.close()
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"closing the gateway took {elapsed:.1f} s"
    return elapsed


async def _read_until_cut(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The body as far as it came, and whether it was cut (ClientPayloadError)."""
    body = bytearray()
    try:
        async for chunk in response.content.iter_any():
            body += chunk
    except aiohttp.ClientPayloadError:
        return bytes(body), True
    return bytes(body), False


def _boundary(response: aiohttp.ClientResponse) -> bytes:
    for param in response.headers["Content-Type"].split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip('"').encode()
    raise AssertionError(f"no boundary in {response.headers['Content-Type']}")


@contextmanager
def _unclosed(what: str) -> Iterator[list[str]]:
    """Record (instead of raising) the ResourceWarnings "unclosed <what>" of the block, so
    the test can assert on them by name; any other warning is raised again, as the
    ``filterwarnings = error`` setting wants."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield found
        gc.collect()
    for warning in caught:
        if issubclass(warning.category, ResourceWarning) and f"unclosed {what}" in str(
            warning.message
        ):
            found.append(str(warning.message))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


# ---------------------------------------------------------------------- C-FIND faults


def _failing_find(status: int, matches_first: int = 0) -> Handler:
    def handle(event: Event, scp: Scp) -> Any:
        scp.note("find", event.identifier)
        for number in range(matches_first):
            yield PENDING, _study_match(number)
        yield status, None

    return handle


@pytest.mark.parametrize("matches_first", [0, 2], ids=["at-once", "after-2-matches"])
@pytest.mark.parametrize("status", [0xC000, 0xA900, 0xC311])
async def test_find_failure_status_is_502_with_warning(
    start_scp: Callable[..., Scp],
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    status: int,
    matches_first: int,
) -> None:
    scp = start_scp({evt.EVT_C_FIND: _failing_find(status, matches_first)})
    client = await _gateway(aiohttp_client, scp.port, tmp_path)
    response = await _error(client, "/dicom-web/studies?PatientID=FAULT*", 502, "bad-gateway")
    warning = response.headers["Warning"]
    assert warning.startswith("299 ") and f"0x{status:04X}" in warning, warning
    body = await response.json()
    assert body["detail"]["dimse_status"] == f"0x{status:04X}"
    assert scp.count("find") == 1  # a failure is not retried behind the client's back


async def test_find_out_of_resources_is_503_with_retry_after(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    scp = start_scp({evt.EVT_C_FIND: _failing_find(0xA700)})
    client = await _gateway(aiohttp_client, scp.port, tmp_path)
    response = await _error(client, "/dicom-web/studies", 503, "pacs-busy")
    assert int(response.headers["Retry-After"]) > 0
    assert "0xA700" in response.headers["Warning"]


def _slow_unless_good(event: Event, scp: Scp) -> Any:
    """PatientID=SLOW: never answers (until aborted); anything else: one match."""
    identifier = event.identifier
    scp.note("find", identifier)
    if identifier.get("PatientID") == "SLOW":
        scp.note(scp.pause(10, event) or "slept-through")
        return
    yield PENDING, _study_match(1, identifier.get("PatientID"))


@pytest.mark.parametrize(
    ("dimse_timeout", "search_timeout"),
    [(1, 2), (3, 1)],
    ids=["dimse-timeout-first", "search-timeout-first"],
)
async def test_find_too_slow_is_504_and_pool_survives(
    start_scp: Callable[..., Scp],
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    dimse_timeout: float,
    search_timeout: float,
) -> None:
    """Either timeout may fire first: pynetdicom's (per message) or the gateway's (per search).

    One association only: a slot lost to a stuck C-FIND, or an association handed back to
    the pool with the stuck C-FIND's answers still to come, would fail the good query.
    """
    scp = start_scp({evt.EVT_C_FIND: _slow_unless_good})
    client = await _gateway(
        aiohttp_client,
        scp.port,
        tmp_path,
        dimse_timeout=dimse_timeout,
        search_timeout=search_timeout,
        max_associations=1,
    )
    for _ in range(2):
        started = time.monotonic()
        await _error(client, "/dicom-web/studies?PatientID=SLOW", 504, "pacs-timeout")
        assert time.monotonic() - started < min(dimse_timeout, search_timeout) + 1.5
    started = time.monotonic()
    response = await client.get("/dicom-web/studies?PatientID=GOOD")
    assert response.status == 200, await response.text()
    assert [d["0020000D"]["Value"][0] for d in await response.json()] == [f"{STUDY}.1"]
    assert time.monotonic() - started < 1.0
    # the stuck C-FINDs' associations were aborted, so the PACS can let go of them
    assert await asyncio.to_thread(scp.wait_for, "aborted", timeout=2)


async def test_find_timeouts_do_not_starve_the_workers(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """search_timeout (0.5 s) well below dimse_timeout (3 s): three searches given up must not
    leave three threads waiting on dead associations, all of the pool's 1 + 2 workers."""
    scp = start_scp({evt.EVT_C_FIND: _slow_unless_good})
    client = await _gateway(
        aiohttp_client, scp.port, tmp_path, dimse_timeout=3, search_timeout=0.5, max_associations=1
    )
    for _ in range(3):
        await _error(client, "/dicom-web/studies?PatientID=SLOW", 504, "pacs-timeout")
    response = await client.get("/dicom-web/studies?PatientID=GOOD")
    assert response.status == 200, await response.text()


async def test_closing_does_not_block_the_event_loop(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    scp = start_scp({evt.EVT_C_FIND: _slow_unless_good})
    client = await _gateway(aiohttp_client, scp.port, tmp_path, dimse_timeout=3, search_timeout=1)
    await _error(client, "/dicom-web/studies?PatientID=SLOW", 504, "pacs-timeout")
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.1)
    try:
        await client.close()
        await asyncio.sleep(0.1)  # let the ticker see the loop again
    finally:
        ticker.cancel()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.5, f"the event loop stood still for {max(gaps):.1f} s"


@pytest.mark.parametrize(
    ("scp_options", "called_aet"),
    [
        ({"require_called_aet": True}, "NOT-THE-PACS"),
        ({"require_calling_aet": ["SOMEONE-ELSE"]}, SCP_AET),
    ],
    ids=["wrong-called-aet", "calling-aet-not-allowed"],
)
async def test_rejected_association_is_502(
    start_scp: Callable[..., Scp],
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    scp_options: dict[str, Any],
    called_aet: str,
) -> None:
    scp = start_scp({evt.EVT_C_FIND: _failing_find(SUCCESS)}, **scp_options)
    client = await _gateway(aiohttp_client, scp.port, tmp_path, called_aet=called_aet)
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{STUDY}"):
        await _error(client, path, 502, "pacs-unreachable")
    assert scp.count("find") == 0


UNREACHABLE_PATHS = (
    "/dicom-web/studies",
    f"/dicom-web/studies/{STUDY}",
    f"/dicom-web/studies/{STUDY}/metadata",
)


async def test_nothing_listening_is_502_unreachable(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await _gateway(aiohttp_client, free_port(), tmp_path)
    for path in UNREACHABLE_PATHS:
        started = time.monotonic()
        await _error(client, path, 502, "pacs-unreachable")
        assert time.monotonic() - started < 1.5


@pytest.mark.xfail(
    strict=True,
    reason="pynetdicom 3.0.4 AssociationSocket._shutdown_socket skips close() when "
    "shutdown() raises (ENOTCONN after a refused connect, or a reset before an abort): "
    "the gateway's socket is left to the garbage collector (ResourceWarning); pool.py "
    "does not work around it",
)
async def test_refused_connection_closes_its_socket(
    aiohttp_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AssociationSocket, "_shutdown_socket", _SHUTDOWN_SOCKET)  # as shipped
    client = await _gateway(aiohttp_client, free_port(), tmp_path)
    with _unclosed("<socket") as unclosed:
        for path in UNREACHABLE_PATHS:
            await _error(client, path, 502, "pacs-unreachable")
    assert unclosed == []


@pytest.fixture
async def mute_pacs() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """Accepts TCP connections, reads the A-ASSOCIATE-RQ, never answers it."""
    held: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(1 << 16)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], held
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("path", ["/dicom-web/studies", f"/dicom-web/studies/{STUDY}"])
async def test_association_never_answered_is_504(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    mute_pacs: tuple[int, list[asyncio.StreamWriter]],
    path: str,
) -> None:
    """TCP accepted, A-ASSOCIATE-RQ never answered: the PACS is reachable but too slow, like
    the DICOMweb site's stalling PACS (test_errors.test_pacs_too_slow_is_504). The ACSE
    timeout (2 x connect_timeout = 2 s) decides here, well before search_timeout."""
    port, held = mute_pacs
    client = await _gateway(aiohttp_client, port, tmp_path, search_timeout=6)
    await _error(client, path, 504, "pacs-timeout")
    assert held, "the gateway never connected"


async def test_unreachable_retrieve_tries_the_pacs_once(
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    mute_pacs: tuple[int, list[asyncio.StreamWriter]],
) -> None:
    port, held = mute_pacs
    client = await _gateway(aiohttp_client, port, tmp_path, search_timeout=6)
    started = time.monotonic()
    response = await client.get(f"/dicom-web/studies/{STUDY}", headers={"Accept": ACCEPT_DICOM})
    elapsed = time.monotonic() - started
    assert response.status in (502, 504), await response.text()
    assert len(held) == 1, f"{len(held)} association attempts"
    assert elapsed < 3.0, f"{elapsed:.1f} s for an ACSE timeout of 2 s"


async def test_find_aborted_by_pacs_is_502_at_once(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    def abort_midway(event: Event, scp: Scp) -> Any:
        scp.note("find")
        yield PENDING, _study_match(1)
        event.assoc.abort()

    scp = start_scp({evt.EVT_C_FIND: abort_midway})
    client = await _gateway(aiohttp_client, scp.port, tmp_path, dimse_timeout=3)
    started = time.monotonic()
    await _error(client, "/dicom-web/studies", 502, "bad-gateway")
    assert time.monotonic() - started < 1.5  # not a wait for the 3 s DIMSE timeout


async def test_idle_association_closed_by_pacs_is_not_reused(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A PACS that drops idle associations: the next query opens a fresh one."""

    def answer(event: Event, scp: Scp) -> Any:
        scp.note("find")
        yield PENDING, _study_match(1)

    scp = start_scp({evt.EVT_C_FIND: answer})
    client = await _gateway(aiohttp_client, scp.port, tmp_path, dimse_timeout=5)
    assert (await client.get("/dicom-web/studies")).status == 200
    for assoc in scp.ae.active_associations:
        assoc.abort()
    await asyncio.sleep(0.3)
    response = await client.get("/dicom-web/studies")
    assert response.status == 200, await response.text()
    assert scp.count("find") == 2 and len(scp.assocs) == 2


async def test_an_idle_association_is_released_then_a_new_one_opens(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Pooled, but not for ever: pynetdicom's idle associations poll (~8 % of a core each)."""

    def answer(event: Event, scp: Scp) -> Any:
        scp.note("find")
        yield PENDING, _study_match(1)

    scp = start_scp(
        {evt.EVT_C_FIND: answer, evt.EVT_RELEASED: lambda event, scp: scp.note("released")}
    )
    client = await _gateway(aiohttp_client, scp.port, tmp_path, idle_release_seconds=0.5)
    assert (await client.get("/dicom-web/studies")).status == 200
    assert (await client.get("/dicom-web/studies")).status == 200  # reused at once
    assert len(scp.assocs) == 1 and scp.count("released") == 0
    assert await asyncio.to_thread(scp.wait_for, "released", timeout=3)  # a clean A-RELEASE
    assert (await client.get("/dicom-web/studies")).status == 200
    assert len(scp.assocs) == 2 and scp.count("find") == 3


async def test_find_limit_cancels_the_rest(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    def ten_matches(event: Event, scp: Scp) -> Any:
        scp.note("find")
        for number in range(10):
            yield PENDING, _study_match(number)
            why = scp.pause(0.1, event)
            if why is not None:
                scp.note(f"{why}-after-{number + 1}")
                scp.note(why)
                if why == "cancelled":
                    yield CANCEL, None
                return
        scp.note("sent-all")

    scp = start_scp({evt.EVT_C_FIND: ten_matches})
    client = await _gateway(aiohttp_client, scp.port, tmp_path)
    started = time.monotonic()
    response = await client.get("/dicom-web/studies?limit=2")
    assert response.status == 200, await response.text()
    got = [d["0020000D"]["Value"][0] for d in await response.json()]
    assert got == [f"{STUDY}.0", f"{STUDY}.1"]
    assert time.monotonic() - started < 0.9  # did not wait for the other 8
    assert await asyncio.to_thread(scp.wait_for, "cancelled", "sent-all", timeout=2)
    assert "cancelled" in scp.events, scp.events
    sent = next(e for e in scp.events if e.startswith("cancelled-after-"))
    assert int(sent.rsplit("-", 1)[1]) <= 3, scp.events  # cancelled right after the 2nd
    # the association ended the C-FIND cleanly: it is reused, not aborted
    response = await client.get("/dicom-web/studies?limit=1")
    assert response.status == 200 and len(scp.assocs) == 1


# ---------------------------------------------------------------------- C-GET faults


def _get_handler(
    instances: int,
    *,
    announce: int | None = None,
    final: tuple[int, Dataset | None] | None = None,
    stall_after: int | None = None,
    pace: float = 0.0,
) -> Handler:
    """C-GET SCP: announce N sub-operations, send ``instances`` C-STOREs (``pace`` apart),
    optionally stall after ``stall_after`` of them, then end with ``final`` if given."""

    def handle(event: Event, scp: Scp) -> Any:
        scp.note("get", event.identifier)
        yield announce if announce is not None else instances
        for number in range(instances):
            why = scp.pause(pace, event) if pace else None
            if why is None and event.is_cancelled:
                why = "cancelled"
            if why is not None:
                scp.note(why)
                if why == "cancelled":
                    yield CANCEL, None
                return
            yield PENDING, _instance(number)
            scp.note("stored")
            if stall_after is not None and number + 1 == stall_after:
                why = scp.pause(10, event) or "slept-through"
                scp.note(why)
                if why == "cancelled":
                    yield CANCEL, None
                return
        scp.note("get-done")  # pynetdicom stops iterating at a final status: note it first
        if final is not None:
            yield final

    return handle


async def test_get_failure_after_some_instances_cuts_the_stream(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """3 of 5 sub-operations sent, then 0xC000 (2 failed). The headers (200) left with the
    first instance, so the only honest answer left is a cut stream (SPEC: "once the response
    headers have gone out, a failure aborts the connection"); a 206 with Warning would need
    the final status before the first part. Either way the client must not see a whole study,
    and the partial study must not be cached as complete."""
    scp = start_scp({evt.EVT_C_GET: _get_handler(3, announce=5, final=(0xC000, None))})
    client = await _gateway(aiohttp_client, scp.port, tmp_path)
    response = await client.get(f"/dicom-web/studies/{STUDY}", headers={"Accept": ACCEPT_DICOM})
    if response.status == 200:
        body, cut = await _read_until_cut(response)
        assert cut, "a partial study was sent as a complete multipart body"
        boundary = _boundary(response)
        assert body.count(b"--" + boundary + b"\r\n") == 3
        assert b"--" + boundary + b"--" not in body
    else:  # refused before any part went out: an error status naming the DIMSE status
        assert response.status in (206, 502), response.status
        assert "0xC000" in response.headers.get("Warning", "")
    assert await asyncio.to_thread(scp.wait_for, "get-done", timeout=2)
    asked = scp.requests[0]
    assert (asked.QueryRetrieveLevel, asked.StudyInstanceUID) == ("STUDY", STUDY)
    # no listing was recorded for the partial study: asking again goes back to the PACS
    response = await client.get(f"/dicom-web/studies/{STUDY}", headers={"Accept": ACCEPT_DICOM})
    await _read_until_cut(response)
    assert scp.count("get") == 2


async def test_get_warning_status_with_failed_suboperations_cuts_the_stream(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """0xB000 (sub-operations failed, PS3.4 C.4.3.1.4) is not a success either."""
    final = Dataset()
    final.FailedSOPInstanceUIDList = [f"{SERIES}.98", f"{SERIES}.99"]
    scp = start_scp({evt.EVT_C_GET: _get_handler(3, announce=5, final=(0xB000, final))})
    client = await _gateway(aiohttp_client, scp.port, tmp_path)
    response = await client.get(f"/dicom-web/studies/{STUDY}", headers={"Accept": ACCEPT_DICOM})
    assert response.status == 200
    _, cut = await _read_until_cut(response)
    assert cut


async def test_get_stalled_pacs_cuts_stream_and_leaves_nothing_behind(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    scp = start_scp({evt.EVT_C_GET: _get_handler(3, stall_after=1)})
    before = set(threading.enumerate())
    client = await _gateway(aiohttp_client, scp.port, tmp_path, dimse_timeout=1)
    started = time.monotonic()
    response = await client.get(f"/dicom-web/studies/{STUDY}", headers={"Accept": ACCEPT_DICOM})
    assert response.status == 200  # the first instance came: headers went out with it
    body, cut = await _read_until_cut(response)
    elapsed = time.monotonic() - started
    assert cut, "a stalled retrieve ended like a complete one"
    assert 0.8 < elapsed < 3.0, elapsed
    assert body.count(b"\r\nContent-Type: application/dicom") == 1
    # the PACS sees its association aborted (the gateway gave up on it)
    assert await asyncio.to_thread(scp.wait_for, "aborted", timeout=2), scp.events

    # while the gateway runs on: no association, abort or cancel thread is left
    left = await _no_gateway_threads(before, scp)
    assert all(name.startswith("dimse-pacs") for name in left), left  # idle pool workers only

    # the cache holds the one complete instance, readable with its pixels; tmp/ is empty
    cache = tmp_path / "cache"
    files = sorted((cache / "data").rglob("*"))
    dicom = [f for f in files if f.is_file()]
    assert [f.name for f in dicom] == [f"{SERIES}.0.dcm"], files
    ds = pydicom.dcmread(dicom[0])
    assert ds.SOPInstanceUID == f"{SERIES}.0"
    assert ds.pixel_array.shape == (8, 8)
    assert list((cache / "tmp").iterdir()) == []
    assert not (cache / "listings").exists() or not any((cache / "listings").rglob("*.json"))

    await _close_gateway(client)
    assert await _no_gateway_threads(before, scp) == []


async def _read_first_part(response: aiohttp.ClientResponse) -> bytes:
    """Read until the first part (its headers and Content-Length bytes of body) is in."""
    body = b""
    while True:
        head, sep, rest = body.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(rest) >= length:
                return body
        chunk = await response.content.readany()
        assert chunk, "the stream ended before the first part was in"
        body += chunk


@pytest.mark.parametrize(
    "handler_cancellation",
    [False, True],
    ids=["as-run_app-next-write-fails", "handler-cancelled"],
)
async def test_client_disconnect_mid_get_cancels_at_the_pacs(
    start_scp: Callable[..., Scp],
    aiohttp_client: ClientFactory,
    tmp_path: Path,
    handler_cancellation: bool,
) -> None:
    """The client takes the first instance and hangs up: the PACS must hear of it (C-CANCEL
    or abort) within a couple of seconds, well before the DIMSE timeout (3 s) or the end of
    the study (40 instances, 8 s at its pace).

    As ``web.run_app`` serves it, the gateway notices the hang-up at its next write, so the
    PACS keeps sending; with handler cancellation it notices at once, so the PACS stalls
    after the first instance (no part is being read from the cache when the cancel lands:
    test_cancelled_part_read_closes_its_file is about that).
    """
    stalls, paced = _get_handler(3, stall_after=1), _get_handler(40, pace=0.2)
    scp = start_scp({evt.EVT_C_GET: stalls if handler_cancellation else paced})
    before = set(threading.enumerate())
    client = await _gateway(
        aiohttp_client,
        scp.port,
        tmp_path,
        handler_cancellation=handler_cancellation,
        dimse_timeout=3,
    )
    response = await client.get(f"/dicom-web/studies/{STUDY}", headers={"Accept": ACCEPT_DICOM})
    assert response.status == 200
    await _read_first_part(response)
    response.close()
    hung_up = time.monotonic()
    heard = await asyncio.to_thread(scp.wait_for, "cancelled", "aborted", timeout=4)
    assert heard and time.monotonic() - hung_up < 2.0, scp.events
    assert "get-done" not in scp.events and scp.count("stored") < 40, scp.events

    # the flight is over, the cancel/abort helper threads are gone; an association whose
    # C-GET ended with a Cancel status may idle in the pool (its requestor + DUL threads)
    backend = client.app[BACKENDS]["pacs"]
    assert await _until(lambda: backend.stats()["flights_in_progress"] == 0, 2.0)
    left = await _no_gateway_threads(before, scp, grace=1.0)
    assert not {"dimse-abort", "dimse-cancel"} & set(left), left
    assert sum(n.startswith("RequestorThread") for n in left) <= 1, left

    await _close_gateway(client)
    assert await _no_gateway_threads(before, scp) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def _is_open(path: Path) -> bool:
    """Whether this process holds ``path`` open (Linux /proc)."""
    fds = Path("/proc/self/fd")
    return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
async def test_cancelled_part_read_closes_its_file(
    start_scp: Callable[..., Scp], aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    scp = start_scp({evt.EVT_C_GET: _get_handler(1)})
    client = await _gateway(aiohttp_client, scp.port, tmp_path)
    response = await client.get(f"/dicom-web/studies/{STUDY}", headers={"Accept": ACCEPT_DICOM})
    assert response.status == 200 and (await _read_until_cut(response))[1] is False
    backend = client.app[BACKENDS]["pacs"]  # the study is cached now: parts come from files
    cached = next((tmp_path / "cache" / "data").rglob("*.dcm"))
    with _unclosed("file") as unclosed:
        events = backend.retrieve(Target(STUDY), "http://x")
        assert isinstance(await anext(events), PartHead)
        body = asyncio.ensure_future(anext(events))  # the part's body: opens the file
        await asyncio.sleep(0)  # the body's first step: the file is being opened
        # Hold the loop (no await) until the file is open, on whatever thread, then cancel:
        # the cancel lands after the open, whatever the coroutine awaits then (a worker's
        # open() it has not taken the result of yet, or the first read).
        deadline = time.monotonic() + 2
        while not _is_open(cached) and time.monotonic() < deadline:
            time.sleep(0.001)  # noqa: ASYNC251 - the loop must not run meanwhile
        assert _is_open(cached)
        body.cancel()  # the client went away just then
        with pytest.raises(asyncio.CancelledError):
            await body
        await events.aclose()
        del body, events
    assert scp.count("get") == 1
    assert unclosed == []
