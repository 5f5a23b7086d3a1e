"""NativeStorageSCP (native_scp.py: the gateway's C-MOVE destination on the event loop) with
a pynetdicom AE as the PACS storing to it, and, for what pynetdicom will not send (a PDU
claiming 2 GB, a connection dropped in the middle of a data set), raw PDUs on a socket.

What must hold: only the PACS (its AE title as calling AE) may associate; each context is
accepted in the first of the gateway's syntaxes it offers (the stored, compressed one before
uncompressed fallbacks), a context for a class or in syntaxes it does not know is refused; a
C-STORE reaches the receiver registered for its Move Originator (AE title, Message ID) byte
for byte as the PACS encoded it and is answered with the receiver's status, one nobody asked
for is refused with 0xC001; an instance cut short is aborted, never finished; a PDU longer
than the gateway takes ends the association at once; and stop() leaves no task and no
listening port behind.

The pynetdicom calls block, so they run in threads (asyncio.to_thread) while the event loop
serves the SCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from io import BytesIO

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from ncpeh_dicomweb.backends.dimse.native_scp import NativeStorageSCP
from ncpeh_dicomweb.backends.dimse.wire import (
    A_ABORT,
    A_ASSOCIATE_AC,
    C_STORE_RQ,
    P_DATA_TF,
    associate_rq,
    command_pdvs,
    data_pdvs,
    encode_command,
    pdu_header,
)
from ncpeh_dicomweb.config import DimseSite
from tests.integration.receivers import Incoming, RecordingReceiver
from tests.integration.receivers import encoded as _encoded

PACS_AET = "ORTHANC"  # the site's called_aet: the only AE that may store
GATEWAY_AET = "GWMOVE"  # the site's calling_aet: the Move Originator of our C-MOVEs
MOVE_ID = 42  # the Message ID of "our" C-MOVE
CT, ELE, ILE = str(CTImageStorage), str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)
PRIVATE = "1.2.3.999"  # a private storage class no table knows
STUDY = "1.2.826.0.1.3680043.8.498.7070"
SERIES = f"{STUDY}.1"
SUCCESS, NOT_EXPECTED, OUT_OF_RESOURCES = 0x0000, 0xC001, 0xA700

SITE = DimseSite(
    id="scp-test",
    host="127.0.0.1",
    port=4242,  # the PACS's port: never dialled here
    called_aet=PACS_AET,
    calling_aet=GATEWAY_AET,
    retrieve="c-move",
    store_host="127.0.0.1",
    store_port=0,  # ephemeral: read scp.port
    connect_timeout=2.0,
    dimse_timeout=5.0,
)

# ---------------------------------------------------------------------- data sets


def _ct(number: int, syntax: str = ELE, pixels: int = 4 * 4 * 2, sop_class: str = CT) -> Dataset:
    """A CT image as the PACS holds it, stored in ``syntax``; ``pixels`` bytes of pixel data
    (a square of 16-bit pixels)."""
    side = int((pixels // 2) ** 0.5)
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"{SERIES}.{number}"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.PatientID = "SCP-1"
    ds.PatientName = "Native^Storage"
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pattern = bytes((number * 7 + i) % 256 for i in range(256))
    ds.PixelData = (pattern * (side * side * 2 // 256 + 1))[: side * side * 2]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


# ---------------------------------------------------------------------- the receiver


class Receiver(RecordingReceiver):
    """``refuse``: the status begin() refuses with; ``status``: what finish() answers."""

    def __init__(self, *, refuse: int | None = None, status: int = SUCCESS) -> None:
        super().__init__()
        self.refuse, self.status = refuse, status

    def refusal(self, sop: str) -> int | None:
        return self.refuse

    def finished(self, incoming: Incoming) -> int:
        return self.status

    @property
    def untouched(self) -> bool:
        return not (self.begins or self.incoming or self.finishes or self.aborts or self.rooms)


# ---------------------------------------------------------------------- fixtures, helpers


@pytest.fixture
async def scp() -> AsyncIterator[NativeStorageSCP]:
    server = NativeStorageSCP(SITE)
    server.start()
    await server.serving()
    try:
        yield server
    finally:
        await server.stop()


class Pacs:
    """pynetdicom requestors storing to the SCP; whatever is still open at teardown is
    aborted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened: list[Association] = []

    async def associate(
        self,
        contexts: Iterable[tuple[str, Sequence[str]]] = ((CT, (ELE,)),),
        title: str = PACS_AET,
    ) -> Association:
        ae = AE(ae_title=title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        assoc = await asyncio.to_thread(ae.associate, "127.0.0.1", self.port, ae_title=GATEWAY_AET)
        self.opened.append(assoc)
        return assoc

    async def established(
        self, contexts: Iterable[tuple[str, Sequence[str]]] = ((CT, (ELE,)),)
    ) -> Association:
        assoc = await self.associate(contexts)
        assert assoc.is_established
        return assoc

    async def close(self) -> None:
        for assoc in self.opened:
            if assoc.is_established:
                await asyncio.to_thread(assoc.abort)


@pytest.fixture
async def pacs(scp: NativeStorageSCP) -> AsyncIterator[Pacs]:
    requestors = Pacs(scp.port)
    try:
        yield requestors
    finally:
        await requestors.close()


async def _store(
    assoc: Association,
    ds: Dataset,
    originator_aet: str | None = GATEWAY_AET,
    originator_id: int | None = MOVE_ID,
    msg_id: int = 1,
) -> int:
    """C-STORE ``ds``; the status the SCP answered (-1: no answer)."""
    answer = await asyncio.to_thread(
        assoc.send_c_store,
        ds,
        msg_id=msg_id,
        originator_aet=originator_aet,
        originator_id=originator_id,
    )
    return int(answer.Status) if "Status" in answer else -1


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(6)
    kind, length = pdu_header(head)
    return kind, await reader.readexactly(length)


async def _raw_association(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A socket the PACS associated on by hand: one context, CT in Explicit VR LE (id 1)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(associate_rq(PACS_AET, GATEWAY_AET, [(CT, [ELE])], [], 16384))
    async with asyncio.timeout(5):
        kind, _ = await _read_pdu(reader)
    assert kind == A_ASSOCIATE_AC
    return reader, writer


def _store_command(ds: Dataset, message_id: int = 1) -> bytes:
    return encode_command(
        {
            0x0002: str(ds.SOPClassUID),
            0x0100: C_STORE_RQ,
            0x0110: message_id,
            0x0700: 2,
            0x0800: 0,  # a data set follows
            0x1000: str(ds.SOPInstanceUID),
            0x1030: GATEWAY_AET,
            0x1031: MOVE_ID,
        }
    )


async def _closes(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the SCP still sends until it closes the connection (bounded)."""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionError):
            return await reader.read()
    return b""


# ---------------------------------------------------------------------- 1. storing


@pytest.mark.parametrize(
    ("syntax", "pixels"),
    [(ELE, 32), (ILE, 32), (ELE, 1200 * 1200 * 2)],
    ids=["explicit", "implicit", "3MB-explicit"],
)
async def test_routed_instance_arrives_whole(
    scp: NativeStorageSCP, pacs: Pacs, syntax: str, pixels: int
) -> None:
    """Stored with the registered Move Originator: the receiver gets the data set byte for
    byte as pydicom encodes it in the accepted syntax (a 3 MB one over several 1 MB PDUs),
    the PACS gets 0x0000, room() is awaited once, nothing is aborted."""
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    ds = _ct(1, syntax, pixels)
    assoc = await pacs.established([(CT, (syntax,))])
    assert str(assoc.accepted_contexts[0].transfer_syntax[0]) == syntax

    assert await _store(assoc, ds) == SUCCESS

    assert receiver.begins == [(CT, ds.SOPInstanceUID, syntax)]
    (incoming,) = receiver.incoming
    assert bytes(incoming.data) == _encoded(ds, syntax)
    assert incoming.finished and not incoming.aborted
    assert (receiver.finishes, receiver.aborts, receiver.rooms) == (1, 0, 1)
    await asyncio.to_thread(assoc.release)
    assert assoc.is_released


async def test_several_instances_and_moves_on_one_association(
    scp: NativeStorageSCP, pacs: Pacs
) -> None:
    """Two moves at once: each C-STORE goes to the receiver of its Move Originator Message
    ID, in order; once a move is unregistered its id is refused."""
    first, second = Receiver(), Receiver()
    scp.register(1, first)
    scp.register(2, second)
    assoc = await pacs.established()
    datasets = [_ct(n) for n in range(1, 5)]
    statuses = [
        await _store(assoc, ds, originator_id=1 + n % 2, msg_id=n + 1)
        for n, ds in enumerate(datasets)
    ]
    assert statuses == [SUCCESS] * 4
    assert [i.sop for i in first.incoming] == [
        datasets[0].SOPInstanceUID,
        datasets[2].SOPInstanceUID,
    ]
    assert [i.sop for i in second.incoming] == [
        datasets[1].SOPInstanceUID,
        datasets[3].SOPInstanceUID,
    ]
    for receiver, mine in ((first, datasets[0::2]), (second, datasets[1::2])):
        assert [bytes(i.data) for i in receiver.incoming] == [_encoded(d, ELE) for d in mine]
        assert (receiver.finishes, receiver.aborts, receiver.rooms) == (2, 0, 2)

    scp.unregister(1)
    assert await _store(assoc, _ct(9), originator_id=1, msg_id=9) == NOT_EXPECTED
    assert len(first.begins) == 2


@pytest.mark.parametrize(
    ("refuse", "status"),
    [(OUT_OF_RESOURCES, SUCCESS), (None, OUT_OF_RESOURCES), (None, 0xB000)],
    ids=["begin-refuses", "finish-fails", "finish-warns"],
)
async def test_the_receivers_status_is_the_answer(
    scp: NativeStorageSCP, pacs: Pacs, refuse: int | None, status: int
) -> None:
    """A status begin() refuses with, or finish() answers, is the C-STORE's; room() is
    awaited only for an instance kept with success, none for the others."""
    receiver = Receiver(refuse=refuse, status=status)
    scp.register(MOVE_ID, receiver)
    assoc = await pacs.established()
    ds = _ct(3)
    assert await _store(assoc, ds) == (refuse if refuse is not None else status)
    assert receiver.begins == [(CT, ds.SOPInstanceUID, ELE)]
    assert receiver.rooms == 0
    assert receiver.aborts == 0
    # the association carries on: the data set of the refused one was read past
    receiver.refuse, receiver.status = None, SUCCESS
    assert await _store(assoc, _ct(4), msg_id=2) == SUCCESS
    assert bytes(receiver.incoming[-1].data) == _encoded(_ct(4), ELE)


# ---------------------------------------------------------------------- 2. no route


@pytest.mark.parametrize(
    ("originator_aet", "originator_id"),
    [(GATEWAY_AET, MOVE_ID + 1), ("SOMEONE", MOVE_ID), (None, None), (GATEWAY_AET, None)],
    ids=["unregistered-id", "other-originator", "no-originator", "no-originator-id"],
)
async def test_a_store_nobody_asked_for_is_refused(
    scp: NativeStorageSCP, pacs: Pacs, originator_aet: str | None, originator_id: int | None
) -> None:
    """No move registered for (originator AE title, message id): 0xC001, the receiver is
    never called, and the association still takes the next (routed) C-STORE."""
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    assoc = await pacs.established()
    status = await _store(assoc, _ct(5), originator_aet=originator_aet, originator_id=originator_id)
    assert status == NOT_EXPECTED
    assert receiver.untouched
    ds = _ct(6)
    assert await _store(assoc, ds, msg_id=2) == SUCCESS
    assert [bytes(i.data) for i in receiver.incoming] == [_encoded(ds, ELE)]


# ---------------------------------------------------------------------- 3. who may store


async def test_only_the_pacs_may_associate(scp: NativeStorageSCP, pacs: Pacs) -> None:
    """A calling AE title other than the site's called_aet is rejected (permanent, by the
    service user, calling AE title not recognised), and the PACS still may."""
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    intruder = await pacs.associate(title="INTRUDER")
    assert intruder.is_rejected and not intruder.is_established
    assert receiver.untouched
    assoc = await pacs.established()
    assert await _store(assoc, _ct(7)) == SUCCESS


async def test_the_rejection_is_calling_ae_not_recognised(scp: NativeStorageSCP) -> None:
    """The A-ASSOCIATE-RJ on the wire: result 1 (permanent), source 1 (service user),
    reason 3 (calling AE title not recognised), then the connection is closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", scp.port)
    try:
        writer.write(associate_rq("INTRUDER", GATEWAY_AET, [(CT, [ELE])], [], 16384))
        async with asyncio.timeout(5):
            kind, body = await _read_pdu(reader)
        assert (kind, body[1:4]) == (0x03, bytes((1, 1, 3)))
        assert await _closes(reader) == b""
    finally:
        writer.close()


# ---------------------------------------------------------------------- 4. negotiation


@pytest.mark.parametrize(
    ("proposed", "chosen"),
    [
        ((ELE, str(JPEG2000Lossless)), str(JPEG2000Lossless)),
        ((ELE, str(JPEGBaseline8Bit), str(JPEG2000Lossless)), str(JPEG2000Lossless)),
        ((ILE, ELE), ELE),
        ((ILE,), ILE),
    ],
    ids=["j2k-over-ele", "j2k-over-baseline", "ele-over-ile", "ile-alone"],
)
async def test_the_stored_syntax_is_preferred(
    scp: NativeStorageSCP, pacs: Pacs, proposed: tuple[str, ...], chosen: str
) -> None:
    """Each context is accepted in the first of the gateway's syntaxes it offers, compressed
    before uncompressed whatever the requestor's order, so instances arrive as stored."""
    assoc = await pacs.established([(CT, proposed)])
    (context,) = assoc.accepted_contexts
    assert [str(s) for s in context.transfer_syntax] == [chosen]


async def test_unknown_syntaxes_and_classes_are_refused(scp: NativeStorageSCP, pacs: Pacs) -> None:
    """A context offering only a syntax the gateway does not know is refused (4: transfer
    syntaxes not supported), one for a private class (3: abstract syntax not supported)
    until scp.accept() names it: then it is accepted on the next association, and its
    instances are stored."""
    contexts = [
        (CT, (ELE, str(JPEG2000Lossless))),
        (str(SecondaryCaptureImageStorage), ("1.2.3.4.5",)),
        (PRIVATE, (ELE,)),
    ]
    before = await pacs.established(contexts)
    assert {
        str(c.abstract_syntax): str(c.transfer_syntax[0]) for c in before.accepted_contexts
    } == {CT: str(JPEG2000Lossless)}
    assert {str(c.abstract_syntax): c.result for c in before.rejected_contexts} == {
        str(SecondaryCaptureImageStorage): 4,
        PRIVATE: 3,
    }
    await asyncio.to_thread(before.release)

    scp.accept([PRIVATE])
    after = await pacs.established(contexts)
    assert {str(c.abstract_syntax): str(c.transfer_syntax[0]) for c in after.accepted_contexts} == {
        CT: str(JPEG2000Lossless),
        PRIVATE: ELE,
    }
    assert [str(c.abstract_syntax) for c in after.rejected_contexts] == [
        str(SecondaryCaptureImageStorage)
    ]
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    ds = _ct(8, sop_class=PRIVATE)
    assert await _store(after, ds) == SUCCESS
    assert receiver.begins == [(PRIVATE, ds.SOPInstanceUID, ELE)]
    assert bytes(receiver.incoming[0].data) == _encoded(ds, ELE)


# ---------------------------------------------------------------------- 5. cut short


async def test_requestor_aborts_in_the_middle_of_a_data_set(
    scp: NativeStorageSCP, pacs: Pacs
) -> None:
    """pynetdicom sends a C-STORE's command and the first fragments of its data set (its
    own encoding, queued on its DUL as send_c_store would), then A-ABORTs: the partial
    instance is aborted, never finished, and the SCP serves the next association."""
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    assoc = await pacs.established()
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    ds = _ct(10, pixels=64 * 1024)
    encoded = _encoded(ds, ELE)

    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = UID(CT)
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.MoveOriginatorApplicationEntityTitle = GATEWAY_AET
    request.MoveOriginatorMessageID = MOVE_ID
    request.DataSet = BytesIO(encoded)
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(request)
    pdatas = list(message.encode_msg(context_id, 16384))
    commands = [p for p in pdatas if p.presentation_data_value_list[0][1][0] & 0x01]
    data = [p for p in pdatas if not p.presentation_data_value_list[0][1][0] & 0x01]
    assert len(data) > 3
    for pdata in (*commands, *data[:2]):
        assoc.dul.send_pdu(pdata)

    await _until(lambda: bool(receiver.incoming) and receiver.incoming[0].writes == 2)
    await asyncio.to_thread(assoc.abort)
    assert assoc.is_aborted
    await _until(lambda: receiver.aborts == 1)

    (incoming,) = receiver.incoming
    assert incoming.aborted and not incoming.finished
    assert encoded.startswith(bytes(incoming.data)) and len(incoming.data) < len(encoded)
    assert (receiver.finishes, receiver.rooms) == (0, 0)

    again = await pacs.established()
    ds = _ct(11)
    assert await _store(again, ds) == SUCCESS
    assert bytes(receiver.incoming[-1].data) == _encoded(ds, ELE)
    assert receiver.aborts == 1


async def test_connection_dropped_in_the_middle_of_a_data_set(
    scp: NativeStorageSCP, pacs: Pacs
) -> None:
    """The PACS's connection goes away (no A-ABORT) after a data set's first PDU: the
    partial instance is aborted, and the SCP serves the next association."""
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    ds = _ct(12, pixels=64 * 1024)
    encoded = _encoded(ds, ELE)
    _, writer = await _raw_association(scp.port)
    try:
        for pdu in command_pdvs(1, _store_command(ds), 16384):
            writer.write(pdu)
        writer.write(next(iter(data_pdvs(1, encoded, 16384))))
        await _until(lambda: bool(receiver.incoming) and receiver.incoming[0].writes == 1)
    finally:
        writer.transport.abort()  # RST: nothing more, not even an A-ABORT
    await _until(lambda: receiver.aborts == 1)
    (incoming,) = receiver.incoming
    assert incoming.aborted and not incoming.finished and encoded.startswith(incoming.data)
    assert (receiver.finishes, receiver.rooms) == (0, 0)

    assoc = await pacs.established()
    assert await _store(assoc, _ct(13)) == SUCCESS
    assert receiver.finishes == 1


# ---------------------------------------------------------------------- 6. release, stop


async def test_release_then_stop_leaves_nothing_behind(scp: NativeStorageSCP, pacs: Pacs) -> None:
    """A-RELEASE is answered (the requestor sees the association released); stop() then
    leaves no task on the loop and the port closed."""
    tasks = asyncio.all_tasks()
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    assoc = await pacs.established()
    assert await _store(assoc, _ct(14)) == SUCCESS
    await asyncio.to_thread(assoc.release)
    assert assoc.is_released and not assoc.is_aborted

    port = scp.port
    await asyncio.wait_for(scp.stop(), 5)
    assert asyncio.all_tasks() - tasks == set()
    assert scp.port == 0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await scp.stop()  # idempotent (the fixture stops it again)


async def test_stop_ends_an_open_association(scp: NativeStorageSCP, pacs: Pacs) -> None:
    """stop() with an association still open (the PACS idle between C-STOREs) ends it at
    once: the requestor sees it aborted, no task is left behind."""
    tasks = asyncio.all_tasks()
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    assoc = await pacs.established()
    assert await _store(assoc, _ct(15)) == SUCCESS
    started = time.monotonic()
    await asyncio.wait_for(scp.stop(), 5)
    assert time.monotonic() - started < 2
    assert asyncio.all_tasks() - tasks == set()
    await asyncio.to_thread(lambda: _wait_thread(lambda: not assoc.is_established, 5))
    assert assoc.is_aborted


def _wait_thread(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


# ---------------------------------------------------------------------- 7. hostile PDUs


@pytest.mark.parametrize("associated", [True, False], ids=["p-data", "before-association"])
async def test_a_pdu_claiming_2gb_ends_the_association(
    scp: NativeStorageSCP, pacs: Pacs, associated: bool
) -> None:
    """A PDU header claiming 0x7FFFFFFF bytes (a P-DATA-TF on an association, or the first
    PDU on a connection): the SCP does not wait for them, it aborts (an A-ABORT at most)
    and closes the connection at once; it serves the next association."""
    receiver = Receiver()
    scp.register(MOVE_ID, receiver)
    if associated:
        reader, writer = await _raw_association(scp.port)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", scp.port)
    try:
        kind = P_DATA_TF if associated else 0x01
        writer.write(struct.pack(">BxL", kind, 0x7FFFFFFF) + bytes(64))
        started = time.monotonic()
        rest = await _closes(reader)
        assert time.monotonic() - started < 2
        assert rest == b"" or (rest[0] == A_ABORT and len(rest) == 10), rest
    finally:
        writer.close()
    assert receiver.untouched
    assoc = await pacs.established()
    assert await _store(assoc, _ct(16)) == SUCCESS
