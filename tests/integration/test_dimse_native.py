"""NativeAssociation (native.py: the gateway's own C-GET on asyncio streams) against a
pynetdicom SCP (one for the module, each test giving it its C-GET handler), and, for faults
pynetdicom cannot be made to show (a PDU cut in the middle of a data set), against a scripted
PACS whose PDUs pynetdicom encodes.

What must hold: each C-STORE's data set reaches the StoreReceiver byte for byte as the PACS
encoded it, each C-STORE is answered with the receiver's status, the C-GET's final counts come
back as the PACS computed them, and every fault (abort, stall, cancel, refusal, broken PDU)
ends as a gateway error with the half-received instance dropped, never as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_GET_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_GET, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from ncpeh_dicomweb.backends.dimse.contexts import (
    ELE,
    GET_MODEL,
    ILE,
    ContextPlan,
    plan_retrieve,
    query_plan,
)
from ncpeh_dicomweb.backends.dimse.native import MAX_PDU, NativeAssociation
from ncpeh_dicomweb.backends.dimse.operations import RetrieveOutcome
from ncpeh_dicomweb.errors import BackendBusy, BackendError, BackendTimeout, BackendUnreachable
from tests.integration.receivers import Incoming, Receiving, RecordingReceiver
from tests.integration.receivers import encoded as _encoded

SCP_AET = "NATIVE-PACS"
GATEWAY_AET = "NCPEH-NATIVE"
CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
STUDY = "1.2.826.0.1.3680043.8.498.5150"
SERIES = f"{STUDY}.1"
PENDING, CANCEL = 0xFF00, 0xFE00
PLAN = ContextPlan(contexts=((GET_MODEL, (ELE, ILE)), (CT, (ELE,))), roles=(CT,))
FALLBACK_PLAN = plan_retrieve(None, query_plan("c-get"))  # CT: one context ELE, one ILE+...

# ---------------------------------------------------------------------- data sets


def _ct(number: int, syntax: str = ELE) -> Dataset:
    """A small CT image (4x4, 16 bits) as the PACS holds it, stored in ``syntax``."""
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = f"{SERIES}.{number}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.PatientID = "NATIVE-1"
    ds.PatientName = "Native^Association"
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = bytes((number * 7 + i) % 256 for i in range(4 * 4 * 2))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = STUDY
    return ds


# ---------------------------------------------------------------------- the receiver


class Receiver(RecordingReceiver):
    """Refuses (at ``begin``) or fails (at ``finish``) the SOP instances named, and calls
    ``on_finish`` as each one is whole."""

    def __init__(
        self,
        *,
        refuse: dict[str, int] | None = None,
        fail: dict[str, int] | None = None,
        on_finish: Callable[[Incoming], None] | None = None,
    ) -> None:
        super().__init__()
        self.refuse, self.fail = refuse or {}, fail or {}
        self.on_finish = on_finish
        self.refused: list[str] = []

    def refusal(self, sop: str) -> int | None:
        if sop in self.refuse:
            self.refused.append(sop)
            return self.refuse[sop]
        return None

    def finished(self, incoming: Incoming) -> int:
        if self.on_finish is not None:
            self.on_finish(incoming)
        return self.fail.get(incoming.sop, 0)

    def by_sop(self) -> dict[str, bytes]:
        return {i.sop: bytes(i.data) for i in self.incoming if i.finished}


# ---------------------------------------------------------------------- the pynetdicom PACS

Handler = Callable[[Event, "Scp"], Any]


@dataclass
class Scp:
    """A pynetdicom C-GET SCP on loopback, noting what it saw; one for the module (stopping a
    pynetdicom server takes ~0.5 s), its C-GET handler set by each test."""

    ae: AE
    server: ThreadedAssociationServer
    port: int
    get: Handler | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    events: list[str] = field(default_factory=list)
    identifiers: list[Dataset] = field(default_factory=list)
    store_statuses: list[int] = field(default_factory=list)  # of the C-STORE-RSPs it got
    assocs: list[Association] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, what: str) -> None:
        with self._lock:
            self.events.append(what)

    def wait_for(self, *what: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(w in self.events for w in what):
                    return True
            time.sleep(0.02)
        return False

    def pause(self, seconds: float, event: Event) -> str | None:
        """Sleep up to ``seconds``; wake early (and say why) on abort, C-CANCEL or teardown.
        ``event.is_cancelled`` is True once per C-CANCEL (pynetdicom consumes it)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if event.assoc.is_aborted or event.assoc.acse.is_aborted():
                return "aborted"
            if event.is_cancelled:
                return "cancelled"
            if self.stop.wait(0.02):
                return "teardown"
        return None

    def end_test(self) -> None:
        """Wake any handler still running, end the test's associations, forget it all."""
        self.stop.set()
        with self._lock:
            assocs = list(self.assocs)
        for assoc in assocs:
            if assoc.is_alive():
                assoc.abort()
            assoc.join(5)
            assoc.dul.join(5)
        with self._lock:
            for sock in self.sockets:
                sock.close()
            for kept in (self.events, self.identifiers, self.store_statuses):
                kept.clear()
            self.assocs.clear()
            self.sockets.clear()
        self.get = None
        self.ae.require_called_aet = False
        self.stop.clear()

    def shutdown(self) -> None:
        self.end_test()
        self.ae.shutdown()


def _start_scp() -> Scp:
    ae = AE(ae_title=SCP_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_supported_context(GET_MODEL)
    ae.add_supported_context(
        CT,
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        scu_role=True,
        scp_role=True,
    )
    holder: list[Scp] = []

    def on_open(event: Event) -> None:
        scp = holder[0]
        with scp._lock:
            scp.assocs.append(event.assoc)
            transport = event.assoc.dul.socket
            if transport is not None and transport.socket is not None:
                scp.sockets.append(transport.socket)

    def on_dimse(event: Event) -> None:
        message, scp = event.message, holder[0]
        kind = type(message).__name__
        if kind == "C_STORE_RSP":
            with scp._lock:
                scp.store_statuses.append(int(message.command_set.Status))
        elif kind == "C_CANCEL_RQ":
            scp.note("c-cancel")

    def on_get(event: Event) -> Any:
        scp = holder[0]
        with scp._lock:
            scp.identifiers.append(event.identifier)
        assert scp.get is not None
        return scp.get(event, scp)

    bound: list[Any] = [
        (evt.EVT_CONN_OPEN, on_open),
        (evt.EVT_DIMSE_RECV, on_dimse),
        (evt.EVT_RELEASED, lambda event: holder[0].note("released")),
        (evt.EVT_ABORTED, lambda event: holder[0].note("aborted")),
        (evt.EVT_C_GET, on_get),
    ]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=bound)
    assert server is not None
    holder.append(Scp(ae=ae, server=server, port=int(server.server_address[1])))
    return holder[0]


@pytest.fixture(scope="module")
def pacs() -> Iterator[Scp]:
    scp = _start_scp()
    yield scp
    scp.shutdown()


@pytest.fixture
def start_scp(pacs: Scp) -> Iterator[Callable[..., Scp]]:
    """The module's SCP with this test's C-GET handler; its associations ended afterwards."""

    def start(get: Handler, *, require_called_aet: bool = False) -> Scp:
        pacs.get = get
        pacs.ae.require_called_aet = require_called_aet
        return pacs

    yield start
    pacs.end_test()


def _shutdown_then_close(self: AssociationSocket) -> None:
    """pynetdicom 3.0.4 drops a socket unclosed when ``shutdown()`` fails (the peer reset
    it): its ResourceWarning would fail some later test (see test_dimse_faults)."""
    sock = self.socket
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture(autouse=True, scope="module")
def _pynetdicom_closes_its_sockets() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AssociationSocket, "_shutdown_socket", _shutdown_then_close)
        yield


def _get_handler(
    datasets: list[Dataset],
    *,
    pace: float = 0.0,
    stall_after: int | None = None,
    abort_after: int | None = None,
) -> Handler:
    """C-GET SCP: announce and send ``datasets`` (``pace`` apart, waking on a C-CANCEL);
    optionally abort, or stall (until aborted), after so many of them."""

    def handle(event: Event, scp: Scp) -> Any:
        scp.note("get")
        yield len(datasets)
        for number, ds in enumerate(datasets):
            why = scp.pause(pace, event) if pace else None
            if why is None and event.is_cancelled:
                why = "cancelled"
            if why is not None:
                scp.note(why)
                if why == "cancelled":
                    yield CANCEL, None
                return
            yield PENDING, ds
            scp.note("stored")
            if abort_after == number + 1:
                scp.note("scp-aborts")
                event.assoc.abort()
                return
            if stall_after == number + 1:
                scp.note(scp.pause(10, event) or "slept-through")
                return
        scp.note("get-done")

    return handle


# ---------------------------------------------------------------------- the association


@pytest.fixture
async def opened() -> AsyncIterator[list[NativeAssociation]]:
    """Associations a test opened: aborted afterwards if the test left them established."""
    assocs: list[NativeAssociation] = []
    yield assocs
    for assoc in assocs:
        if assoc.is_established:
            await assoc.abort()


async def _open(
    opened: list[NativeAssociation],
    port: int,
    *,
    plan: ContextPlan = PLAN,
    called: str = SCP_AET,
    acse_timeout: float = 2.0,
) -> NativeAssociation:
    assoc = await NativeAssociation.open(
        "127.0.0.1", port, GATEWAY_AET, called, plan, connect_timeout=2, acse_timeout=acse_timeout
    )
    opened.append(assoc)
    return assoc


async def _get(
    assoc: NativeAssociation,
    receiver: Receiver,
    *,
    message_id: int = 1,
    stop: threading.Event | None = None,
    within: float = 30.0,
    max_wait: float = 2.0,
) -> RetrieveOutcome:
    return await assoc.c_get(
        _identifier(),
        message_id,
        receiver,
        stop or threading.Event(),
        time.monotonic() + within,
        max_wait,
    )


async def _scp_saw(scp: Scp, *what: str, within: float = 2.0) -> bool:
    return await asyncio.to_thread(scp.wait_for, *what, timeout=within)


# ---------------------------------------------------------------------- C-GET with pynetdicom


@pytest.mark.parametrize(
    ("syntax", "plan"),
    [(ELE, PLAN), (ILE, FALLBACK_PLAN)],
    ids=["explicit-own-plan", "implicit-fallback-plan"],
)
async def test_c_get_brings_each_instance_as_encoded_then_releases(
    start_scp: Callable[..., Scp],
    opened: list[NativeAssociation],
    syntax: str,
    plan: ContextPlan,
) -> None:
    scp = start_scp(_get_handler([_ct(n, syntax) for n in range(3)]))
    assoc = await _open(opened, scp.port, plan=plan)
    receiver = Receiver()
    outcome = await _get(assoc, receiver)
    assert outcome == RetrieveOutcome(status=0, completed=3, failed=0, warning=0)
    expected = {_ct(n).SOPInstanceUID: _encoded(_ct(n, syntax), syntax) for n in range(3)}
    assert receiver.by_sop() == expected
    assert [(i.sop_class, i.syntax, i.aborted) for i in receiver.incoming] == [
        (CT, syntax, False)
    ] * 3
    assert receiver.rooms == 3
    assert scp.store_statuses == [0, 0, 0]
    asked = scp.identifiers[0]
    assert (asked.QueryRetrieveLevel, asked.StudyInstanceUID) == ("STUDY", STUDY)

    # the association is still good for another C-GET, then a clean A-RELEASE
    again = Receiver()
    outcome = await _get(assoc, again, message_id=2)
    assert (outcome.status, outcome.completed) == (0, 3)
    assert again.by_sop() == expected
    await assoc.release()
    assert not assoc.is_established
    assert await _scp_saw(scp, "released")
    assert "aborted" not in scp.events


async def test_c_get_of_a_large_instance_across_many_pdus(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    """pynetdicom sends to our 1 MB max PDU: a 3 MB instance comes in several P-DATA-TFs."""
    big = _ct(1)
    big.Rows = big.Columns = 1200
    big.PixelData = bytes(i % 253 for i in range(1200 * 1200 * 2))
    scp = start_scp(_get_handler([big]))
    assoc = await _open(opened, scp.port)
    receiver = Receiver()
    outcome = await _get(assoc, receiver)
    assert (outcome.status, outcome.completed) == (0, 1)
    assert receiver.incoming[0].writes >= 3
    assert receiver.by_sop() == {big.SOPInstanceUID: _encoded(big, ELE)}
    await assoc.release()


@pytest.mark.parametrize(
    ("refuse", "fail", "statuses", "counts"),
    [
        ({1: 0xA700}, {}, [0, 0xA700, 0], (2, 1, 0)),
        ({1: 0xB000}, {}, [0, 0xB000, 0], (2, 0, 1)),
        ({}, {1: 0xA900}, [0, 0xA900, 0], (2, 1, 0)),
        ({0: 0xA700, 2: 0xA700}, {1: 0xB007}, [0xA700, 0xB007, 0xA700], (0, 2, 1)),
    ],
    ids=["refused", "warning", "failed-at-finish", "none-completed"],
)
async def test_c_store_answers_carry_the_receiver_status(
    start_scp: Callable[..., Scp],
    opened: list[NativeAssociation],
    refuse: dict[int, int],
    fail: dict[int, int],
    statuses: list[int],
    counts: tuple[int, int, int],
) -> None:
    scp = start_scp(_get_handler([_ct(n) for n in range(3)]))
    assoc = await _open(opened, scp.port)
    receiver = Receiver(
        refuse={_ct(n).SOPInstanceUID: s for n, s in refuse.items()},
        fail={_ct(n).SOPInstanceUID: s for n, s in fail.items()},
    )
    outcome = await _get(assoc, receiver)
    assert scp.store_statuses == statuses
    # pynetdicom: Warning 0xB000 when any sub-operation failed or warned (PS3.4 C.4.3.1.4)
    assert outcome == RetrieveOutcome(0xB000, *counts)
    assert receiver.refused == [_ct(n).SOPInstanceUID for n in sorted(refuse)]
    begun = [_ct(n).SOPInstanceUID for n in range(3) if n not in refuse]
    assert [i.sop for i in receiver.incoming] == begun
    assert all(i.finished and not i.aborted for i in receiver.incoming)
    assert receiver.rooms == 3 - len(refuse) - len(fail)  # held back only after a success
    await assoc.release()
    assert await _scp_saw(scp, "released")


class _Broken(Receiver):
    """A receiver whose own side fails (a full disk, say): at begin for instance 0, at the
    first write for instance 1, at finish for instance 2."""

    def begin(self, sop_class: str, sop: str, syntax: str) -> Receiving | int:
        if sop == _ct(0).SOPInstanceUID:
            raise OSError(28, "No space left on device")
        started = super().begin(sop_class, sop, syntax)
        if sop == _ct(1).SOPInstanceUID and not isinstance(started, int):
            started.write = _raise  # type: ignore[method-assign,assignment]
        return started

    def finished(self, incoming: Incoming) -> int:
        if incoming.sop == _ct(2).SOPInstanceUID:
            raise OSError(28, "No space left on device")
        return super().finished(incoming)


def _raise(_: memoryview) -> None:
    raise OSError(28, "No space left on device")


async def test_our_own_failures_refuse_the_instance_and_the_c_get_goes_on(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    """A failure on the gateway's side is not the PACS's: that C-STORE is answered 0xA700
    (Out of Resources), what was written of it is dropped, and the next instance comes."""
    scp = start_scp(_get_handler([_ct(n) for n in range(4)]))
    assoc = await _open(opened, scp.port)
    receiver = _Broken()
    outcome = await _get(assoc, receiver)
    assert scp.store_statuses == [0xA700, 0xA700, 0xA700, 0]
    assert outcome == RetrieveOutcome(0xB000, 1, 3, 0)
    by_sop = {i.sop: i for i in receiver.incoming}
    for failed in (_ct(1).SOPInstanceUID, _ct(2).SOPInstanceUID):  # dropped, never kept
        assert by_sop[failed].aborted and not by_sop[failed].finished
    assert receiver.by_sop() == {_ct(3).SOPInstanceUID: by_sop[_ct(3).SOPInstanceUID].data}
    assert receiver.rooms == 1
    assert assoc.is_established
    await assoc.release()


async def test_every_c_store_failed_is_the_scp_failure_status(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    """pynetdicom ends with 0xA702 (unable to perform sub-operations) when all failed: a
    failure with nothing completed is an error, 503 like any Out of Resources."""
    scp = start_scp(_get_handler([_ct(n) for n in range(2)]))
    assoc = await _open(opened, scp.port)
    receiver = Receiver(fail={_ct(0).SOPInstanceUID: 0xA900, _ct(1).SOPInstanceUID: 0xC000})
    with pytest.raises(BackendBusy) as raised:
        await _get(assoc, receiver)
    assert raised.value.detail == {"dimse_status": "0xA702"}
    assert scp.store_statuses == [0xA900, 0xC000]
    assert assoc.is_established  # the C-GET itself ended cleanly
    await assoc.release()
    assert await _scp_saw(scp, "released")


async def test_scp_abort_mid_c_get_is_a_backend_error(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    scp = start_scp(_get_handler([_ct(n) for n in range(3)], abort_after=1))
    assoc = await _open(opened, scp.port)
    receiver = Receiver()
    started = time.monotonic()
    with pytest.raises(BackendError) as raised:
        await _get(assoc, receiver, max_wait=3)
    assert type(raised.value) is BackendError  # not a timeout: the A-ABORT ends it at once
    assert time.monotonic() - started < 2.0
    assert not assoc.is_established
    # the one whole instance was kept; none was left half-written
    assert [(i.finished, i.aborted) for i in receiver.incoming] == [(True, False)]
    assert receiver.by_sop() == {_ct(0).SOPInstanceUID: _encoded(_ct(0), ELE)}
    await assoc.release()  # a no-op now


async def test_stalled_scp_ends_within_max_wait_and_is_aborted(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    scp = start_scp(_get_handler([_ct(n) for n in range(3)], stall_after=1))
    assoc = await _open(opened, scp.port)
    receiver = Receiver()
    started = time.monotonic()
    with pytest.raises(BackendError):
        await _get(assoc, receiver, max_wait=1)
    elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 2.0, elapsed
    assert not assoc.is_established
    assert await _scp_saw(scp, "aborted")  # the PACS is told: an A-ABORT
    assert [(i.finished, i.aborted) for i in receiver.incoming] == [(True, False)]


async def test_stalled_scp_is_a_backend_timeout(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    scp = start_scp(_get_handler([_ct(n) for n in range(3)], stall_after=1))
    assoc = await _open(opened, scp.port)
    with pytest.raises(BackendTimeout):
        await _get(assoc, Receiver(), max_wait=1)


async def test_stop_set_while_the_scp_stalls_ends_as_cancelled(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    """No message comes to send the C-CANCEL at: max_wait runs out, the association is
    aborted, and the C-GET counts as cancelled (native.py: ``if stop.is_set(): return
    RetrieveOutcome(CANCEL, ...)``), not as a failure."""
    scp = start_scp(_get_handler([_ct(n) for n in range(3)], stall_after=1))
    assoc = await _open(opened, scp.port)
    stop = threading.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    outcome = await _get(assoc, Receiver(), stop=stop, max_wait=1)
    assert outcome.status == CANCEL
    assert not assoc.is_established


async def test_stop_cancels_the_c_get_at_the_scp(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    stop = threading.Event()
    scp = start_scp(_get_handler([_ct(n) for n in range(4)], pace=0.3))
    assoc = await _open(opened, scp.port)
    receiver = Receiver(on_finish=lambda incoming: stop.set())  # before the 2nd instance
    started = time.monotonic()
    outcome = await _get(assoc, receiver, stop=stop)
    assert time.monotonic() - started < 1.5  # not the 4 x 0.3 s of the whole study
    assert outcome.status == CANCEL
    assert outcome.completed == 1
    assert "c-cancel" in scp.events and "cancelled" in scp.events, scp.events
    assert scp.events.count("stored") == 1 and "get-done" not in scp.events
    assert [i.sop for i in receiver.incoming] == [_ct(0).SOPInstanceUID]
    # the C-GET ended cleanly: the association is still good for a release
    assert assoc.is_established
    await assoc.release()
    assert await _scp_saw(scp, "released")


async def test_stop_set_before_a_c_store_refuses_it(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    """A C-STORE that was already on its way when stop was set is refused (0xA700), not
    written; the C-CANCEL follows."""
    stop = threading.Event()
    scp = start_scp(_get_handler([_ct(n) for n in range(3)]))
    assoc = await _open(opened, scp.port)
    receiver = Receiver(on_finish=lambda incoming: stop.set())
    outcome = await _get(assoc, receiver, stop=stop)
    assert outcome.status in (CANCEL, 0xB000), outcome  # as far as the PACS got
    assert outcome.completed == 1
    assert scp.store_statuses[0] == 0
    assert all(s == 0xA700 for s in scp.store_statuses[1:]), scp.store_statuses
    assert [i.sop for i in receiver.incoming] == [_ct(0).SOPInstanceUID]
    assert await _scp_saw(scp, "c-cancel")
    await assoc.release()


async def test_past_the_deadline_cancels_and_is_a_timeout(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    scp = start_scp(_get_handler([_ct(n) for n in range(5)], pace=0.25))
    assoc = await _open(opened, scp.port)
    receiver = Receiver()
    started = time.monotonic()
    with pytest.raises(BackendTimeout):
        await _get(assoc, receiver, within=0.4, max_wait=2)
    assert time.monotonic() - started < 1.5
    assert await _scp_saw(scp, "c-cancel")
    assert "get-done" not in scp.events
    assert all(i.finished for i in receiver.incoming) and len(receiver.incoming) < 5


async def test_cancelling_the_task_aborts_the_association(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    scp = start_scp(_get_handler([_ct(n) for n in range(3)], stall_after=1))
    assoc = await _open(opened, scp.port)
    receiver = Receiver()
    task = asyncio.create_task(_get(assoc, receiver, max_wait=5))
    await _scp_saw(scp, "stored")
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not assoc.is_established
    assert await _scp_saw(scp, "aborted")


# ---------------------------------------------------------------------- open


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_nothing_listening_is_unreachable(opened: list[NativeAssociation]) -> None:
    with pytest.raises(BackendUnreachable):
        await _open(opened, _free_port())


async def test_rejected_association_is_unreachable(
    start_scp: Callable[..., Scp], opened: list[NativeAssociation]
) -> None:
    scp = start_scp(_get_handler([]), require_called_aet=True)
    with pytest.raises(BackendUnreachable):
        await _open(opened, scp.port, called="SOMEONE-ELSE")
    assoc = await _open(opened, scp.port)  # the right called AE title is accepted
    await assoc.release()


# ---------------------------------------------------------------------- a scripted PACS

Script = Callable[["RawPacs", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawPacs:
    """A PACS on loopback running ``script`` on each connection; pynetdicom encodes its PDUs.
    ``seen``: the types of the PDUs it read after the C-GET (what the gateway answered)."""

    port: int = 0
    seen: list[int] = field(default_factory=list)
    contexts: dict[str, int] = field(default_factory=dict)  # abstract syntax -> context id
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(6)
    kind, length = struct.unpack(">BxL", head)
    return kind, head + await reader.readexactly(length)


async def _accept(
    pacs: RawPacs,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    refuse: tuple[str, ...] = (),
) -> None:
    """Read the A-ASSOCIATE-RQ; accept each context (but those of ``refuse``) in its first
    transfer syntax, with a max PDU of 16 KB."""
    kind, raw = await _read_pdu(reader)
    assert kind == 0x01
    request = A_ASSOCIATE_RQ()
    request.decode(raw)
    asked = request.to_primitive()
    answer = A_ASSOCIATE()
    answer.application_context_name = UID("1.2.840.10008.3.1.1.1")
    answer.calling_ae_title, answer.called_ae_title = asked.calling_ae_title, asked.called_ae_title
    answer.result, answer.result_source = 0, 1
    results = []
    for proposed in asked.presentation_context_definition_list:
        context = PresentationContext()
        context.context_id = proposed.context_id
        context.transfer_syntax = [proposed.transfer_syntax[0]]
        context.result = 3 if proposed.abstract_syntax in refuse else 0
        if context.result == 0:
            assert proposed.context_id is not None
            pacs.contexts.setdefault(str(proposed.abstract_syntax), proposed.context_id)
        results.append(context)
    answer.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID("1.2.826.0.1.3680043.9.3811.3.0.4")
    answer.user_information = [length, implementation]
    writer.write(A_ASSOCIATE_AC(answer).encode())


def _pdata(context: int, control: int, value: bytes) -> bytes:
    item = PresentationDataValueItem()
    item.presentation_context_id = context
    item.presentation_data_value = bytes((control,)) + value
    pdu = P_DATA_TF()
    pdu.presentation_data_value_items.append(item)
    raw: bytes = pdu.encode()
    return raw


async def _read_message(reader: asyncio.StreamReader, *, with_data: bool) -> None:
    """Read P-DATA-TFs up to the last fragment of the message's command (or data set)."""
    want = 0x02 if with_data else 0x03
    while True:
        kind, raw = await _read_pdu(reader)
        assert kind == 0x04, kind
        decoded = P_DATA_TF()
        decoded.decode(raw)
        for _, value in decoded.to_primitive().presentation_data_value_list:
            if value[0] == want:
                return


def _store_rq(ds: Dataset, message_id: int = 1) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = UID(CT)
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 0
    primitive.DataSet = BytesIO(b"\0")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    raw = encode(message.command_set, True, True)
    assert raw is not None
    return raw


def _get_rsp(status: int, completed: int) -> bytes:
    primitive = C_GET()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = UID(GET_MODEL)
    primitive.Status = status
    primitive.NumberOfCompletedSuboperations = completed
    primitive.NumberOfFailedSuboperations = 0
    primitive.NumberOfWarningSuboperations = 0
    message = C_GET_RSP()
    message.primitive_to_message(primitive)
    raw = encode(message.command_set, True, True)
    assert raw is not None
    return raw


async def _drain(pacs: RawPacs, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Note the types of the PDUs the gateway sends from now until it hangs up; answer an
    A-RELEASE-RQ."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            kind = (await _read_pdu(reader))[0]
            pacs.seen.append(kind)
            if kind == 0x05:
                writer.write(_RELEASE_RP_PDU)


@pytest.fixture
async def raw_pacs() -> AsyncIterator[Callable[[Script], Awaitable[RawPacs]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(script: Script) -> RawPacs:
        pacs = RawPacs()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await script(pacs, reader, writer)
            finally:
                pacs.done.set()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        pacs.port = server.sockets[0].getsockname()[1]
        return pacs

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


_ABORT_PDU = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0))  # A-ABORT, source: the provider
_RELEASE_RQ_PDU = bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0))
_RELEASE_RP_PDU = bytes((0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("fault", "then_seen"),
    [
        (_ABORT_PDU, None),  # (the gateway answers with an A-ABORT of its own: harmless)
        (_RELEASE_RQ_PDU, [0x06, 0x07]),  # answered with A-RELEASE-RP, then aborted
        (b"", None),  # the connection just ends
        (struct.pack(">BxL", 0x04, MAX_PDU + 7), [0x07]),  # longer than we said we take
        (struct.pack(">BxL", 0x09, 4) + bytes(4), [0x07]),  # no such PDU
        (_pdata(3, 0x03, b"\0\0\0\0"), [0x07]),  # a broken command amid the data set
    ],
    ids=["a-abort", "a-release", "eof", "oversized-pdu", "unknown-pdu", "garbled-command"],
)
async def test_fault_in_the_middle_of_a_data_set_drops_the_partial_instance(
    raw_pacs: Callable[[Script], Awaitable[RawPacs]],
    opened: list[NativeAssociation],
    fault: bytes,
    then_seen: list[int] | None,
) -> None:
    ds = _ct(0)
    data = _encoded(ds, ELE)

    async def script(
        pacs: RawPacs, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _accept(pacs, reader, writer)
        await _read_message(reader, with_data=True)  # the C-GET and its identifier
        ct = pacs.contexts[CT]
        writer.write(_pdata(ct, 0x03, _store_rq(ds)))
        writer.write(_pdata(ct, 0x00, data[:100]))
        await writer.drain()
        await asyncio.sleep(0.05)
        if fault:
            writer.write(fault)
            await _drain(pacs, reader, writer)
        writer.close()

    pacs = await raw_pacs(script)
    assoc = await _open(opened, pacs.port)
    receiver = Receiver()
    started = time.monotonic()
    with pytest.raises(BackendError) as raised:
        await _get(assoc, receiver, max_wait=3)
    assert not isinstance(raised.value, BackendTimeout | BackendUnreachable)
    assert time.monotonic() - started < 1.5
    assert not assoc.is_established
    (incoming,) = receiver.incoming
    assert (incoming.sop, bytes(incoming.data)) == (ds.SOPInstanceUID, data[:100])
    assert incoming.aborted and not incoming.finished
    await asyncio.wait_for(pacs.done.wait(), 2)
    if then_seen is not None:
        assert pacs.seen == then_seen


@pytest.mark.parametrize("max_wait", [1.0, 0.4])
async def test_max_wait_bounds_each_wait_not_the_whole_c_get(
    raw_pacs: Callable[[Script], Awaitable[RawPacs]],
    opened: list[NativeAssociation],
    max_wait: float,
) -> None:
    """A PACS sending a fragment every ``max_wait`` / 3 never waits max_wait: the C-GET lasts
    ~1.7 x max_wait and must not time out ("max_wait each wait for the PACS")."""
    ds = _ct(0)
    ds.PixelData = bytes(i % 251 for i in range(8000))
    ds.Rows, ds.Columns = 40, 100
    data = _encoded(ds, ELE)
    pieces = [data[i : i + 2000] for i in range(0, len(data), 2000)]
    assert len(pieces) == 5

    async def script(
        pacs: RawPacs, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _accept(pacs, reader, writer)
        await _read_message(reader, with_data=True)
        ct, get = pacs.contexts[CT], pacs.contexts[GET_MODEL]
        writer.write(_pdata(ct, 0x03, _store_rq(ds)))
        for n, piece in enumerate(pieces):
            await asyncio.sleep(max_wait / 3)
            writer.write(_pdata(ct, 0x02 if n == len(pieces) - 1 else 0x00, piece))
        await _read_message(reader, with_data=False)  # the C-STORE-RSP
        writer.write(_pdata(get, 0x03, _get_rsp(0x0000, 1)))
        await _drain(pacs, reader, writer)

    pacs = await raw_pacs(script)
    assoc = await _open(opened, pacs.port)
    receiver = Receiver()
    outcome = await _get(assoc, receiver, max_wait=max_wait)
    assert (outcome.status, outcome.completed) == (0, 1)
    assert receiver.by_sop() == {ds.SOPInstanceUID: data}
    await assoc.release()


async def test_c_get_model_refused_is_a_backend_error(
    raw_pacs: Callable[[Script], Awaitable[RawPacs]], opened: list[NativeAssociation]
) -> None:
    async def script(
        pacs: RawPacs, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _accept(pacs, reader, writer, refuse=(GET_MODEL,))
        await _drain(pacs, reader, writer)

    pacs = await raw_pacs(script)
    assoc = await _open(opened, pacs.port)
    with pytest.raises(BackendError, match="C-GET model"):
        await _get(assoc, Receiver())
    await assoc.release()
    await asyncio.wait_for(pacs.done.wait(), 2)
    assert pacs.seen == [0x05]  # nothing but the A-RELEASE-RQ went out


async def test_association_never_answered_is_a_timeout(
    raw_pacs: Callable[[Script], Awaitable[RawPacs]], opened: list[NativeAssociation]
) -> None:
    async def script(
        pacs: RawPacs, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _drain(pacs, reader, writer)

    pacs = await raw_pacs(script)
    started = time.monotonic()
    with pytest.raises(BackendTimeout):
        await _open(opened, pacs.port, acse_timeout=0.5)
    assert time.monotonic() - started < 1.5


async def test_a_c_store_begun_amid_another_is_an_error_leaving_no_instance_open(
    raw_pacs: Callable[[Script], Awaitable[RawPacs]], opened: list[NativeAssociation]
) -> None:
    """A second C-STORE-RQ while the first one's data set is still coming (interleaving is a
    protocol error, PS3.7 9.1.3 / PS3.8 9.3.5): the association is aborted, and the first
    instance dropped, not left open (a pinned cache file)."""
    first, second = _ct(0), _ct(1)

    async def script(
        pacs: RawPacs, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _accept(pacs, reader, writer)
        await _read_message(reader, with_data=True)
        ct = pacs.contexts[CT]
        writer.write(_pdata(ct, 0x03, _store_rq(first, 1)))
        writer.write(_pdata(ct, 0x00, _encoded(first, ELE)[:100]))
        writer.write(_pdata(ct, 0x03, _store_rq(second, 2)))
        writer.write(_pdata(ct, 0x02, _encoded(second, ELE)))
        await _drain(pacs, reader, writer)

    pacs = await raw_pacs(script)
    assoc = await _open(opened, pacs.port)
    receiver = Receiver()
    with pytest.raises(BackendError):
        await _get(assoc, receiver, max_wait=2)
    assert not assoc.is_established
    left_open = [i.sop for i in receiver.incoming if not (i.finished or i.aborted)]
    assert left_open == []
    assert [(i.sop, i.aborted) for i in receiver.incoming] == [(first.SOPInstanceUID, True)]
    await asyncio.wait_for(pacs.done.wait(), 2)
    assert pacs.seen == [0x07]
