"""The native C-GET's bytes (wire.py: PS3.8 PDUs, PS3.7 command sets; receiving.part10_head:
PS3.10 File Meta), each checked against pynetdicom's and pydicom's own encoders and decoders."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_GET_RQ, C_GET_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_CANCEL, C_GET, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode, encode_file_meta
from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
)
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from ncpeh_dicomweb.backends.dimse import wire
from ncpeh_dicomweb.backends.dimse.contexts import (
    ELE,
    GET_MODEL,
    ILE,
    ContextPlan,
    plan_retrieve,
    query_plan,
)
from ncpeh_dicomweb.backends.dimse.receiving import part10_head
from ncpeh_dicomweb.backends.dimse.wire import (
    IMPLEMENTATION_UID,
    IMPLEMENTATION_VERSION,
    WireError,
)

CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
MR = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# ---------------------------------------------------------------------- A-ASSOCIATE-RQ

_SMALL: Sequence[tuple[str, Sequence[str]]] = (
    (GET_MODEL, (ELE, ILE)),
    (CT, (ELE,)),
    (MR, ("1.2.840.10008.1.2.4.90", ELE, ILE)),
)
_FALLBACK = plan_retrieve(None, query_plan("c-get"))


def _decoded_rq(raw: bytes) -> A_ASSOCIATE:
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(raw)
    assert pdu.protocol_version == 1
    return pdu.to_primitive()


@pytest.mark.parametrize(
    ("calling", "called", "contexts", "roles", "max_pdu"),
    [
        ("GW", "PACS", _SMALL, (CT, MR), 16384),
        ("SIXTEEN-CHARS-AE", "ODD", _SMALL[:1], (), 1 << 20),
        ("NCPEH", "ORTHANC", _FALLBACK.contexts, _FALLBACK.roles, 0),
    ],
    ids=["small", "no-roles", "fallback-plan"],
)
def test_associate_rq_as_pynetdicom_reads_it(
    calling: str,
    called: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    roles: Sequence[str],
    max_pdu: int,
) -> None:
    raw = wire.associate_rq(calling, called, contexts, roles, max_pdu)
    assert wire.pdu_header(raw) == (wire.A_ASSOCIATE_RQ, len(raw) - 6)
    primitive = _decoded_rq(raw)
    assert (primitive.calling_ae_title, primitive.called_ae_title) == (calling, called)
    assert primitive.application_context_name == APPLICATION_CONTEXT

    proposed = [
        (c.context_id, c.abstract_syntax, list(c.transfer_syntax))
        for c in primitive.presentation_context_definition_list
    ]
    assert proposed == [
        (2 * i + 1, abstract, list(syntaxes)) for i, (abstract, syntaxes) in enumerate(contexts)
    ]

    user = primitive.user_information
    lengths = [i.maximum_length_received for i in user if isinstance(i, MaximumLengthNotification)]
    assert lengths == [max_pdu]
    classes = [
        i.implementation_class_uid
        for i in user
        if isinstance(i, ImplementationClassUIDNotification)
    ]
    assert classes == [IMPLEMENTATION_UID]
    versions = [
        i.implementation_version_name
        for i in user
        if isinstance(i, ImplementationVersionNameNotification)
    ]
    assert versions == [IMPLEMENTATION_VERSION]
    selected = [
        (i.sop_class_uid, i.scu_role, i.scp_role)
        for i in user
        if isinstance(i, SCP_SCU_RoleSelectionNegotiation)
    ]
    assert selected == [(uid, True, True) for uid in roles]


def test_associate_rq_of_128_contexts_numbers_them_up_to_255() -> None:
    contexts = [(f"1.2.3.{n}", (ELE,)) for n in range(128)]
    primitive = _decoded_rq(wire.associate_rq("GW", "PACS", contexts, (), 0))
    ids = [c.context_id for c in primitive.presentation_context_definition_list]
    assert ids == list(range(1, 256, 2))
    with pytest.raises(WireError):
        wire.associate_rq("GW", "PACS", [*contexts, ("1.2.3.999", (ELE,))], (), 0)


@pytest.mark.parametrize(("calling", "called"), [("", "PACS"), ("GW", "SEVENTEEN-CHARS-A")])
def test_associate_rq_refuses_bad_ae_titles(calling: str, called: str) -> None:
    with pytest.raises(WireError):
        wire.associate_rq(calling, called, _SMALL, (), 0)


# ---------------------------------------------------------------------- A-ASSOCIATE-AC


def _ac(results: Sequence[tuple[int, int, str]], max_length: int | None = 32768) -> bytes:
    """An A-ASSOCIATE-AC as pynetdicom writes it: (context id, result, transfer syntax)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = "GW"
    primitive.called_ae_title = "PACS"
    primitive.result = 0
    primitive.result_source = 1
    answers = []
    for context_id, result, syntax in results:
        context = PresentationContext()
        context.context_id = context_id
        context.result = result
        context.transfer_syntax = [UID(syntax)]
        answers.append(context)
    primitive.presentation_context_definition_results_list = answers
    user: list[object] = []
    if max_length is not None:
        notification = MaximumLengthNotification()
        notification.maximum_length_received = max_length
        user.append(notification)
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID("1.2.826.0.1.3680043.9.3811.3.0.4")
    user.append(implementation)
    primitive.user_information = user  # type: ignore[assignment]
    raw: bytes = A_ASSOCIATE_AC(primitive).encode()
    assert wire.pdu_header(raw) == (wire.A_ASSOCIATE_AC, len(raw) - 6)
    return raw[6:]


def _item_offsets(body: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, length) of each top-level item of an A-ASSOCIATE-AC body."""
    found, pos = [], 68
    while pos < len(body):
        kind, length = struct.unpack_from(">BxH", body, pos)
        found.append((pos, kind, length))
        pos += 4 + length
    assert pos == len(body)
    return found


def test_associate_ac_from_pynetdicom() -> None:
    body = _ac([(1, 0, ILE), (3, 3, ELE), (5, 0, ELE), (7, 4, ELE)], max_length=32768)
    accepted = wire.parse_associate_ac(body, [*_SMALL, (CT, (ILE,))])
    assert accepted.contexts == {1: (GET_MODEL, ILE), 5: (MR, ELE)}
    assert accepted.refused == (3, 7)
    assert accepted.max_pdu == 32768


@pytest.mark.parametrize(("max_length", "expected"), [(0, 0), (None, 0), (16382, 16382)])
def test_associate_ac_max_pdu(max_length: int | None, expected: int) -> None:
    body = _ac([(1, 0, ELE)], max_length=max_length)
    assert wire.parse_associate_ac(body, _SMALL).max_pdu == expected


@pytest.mark.parametrize("answered", [2, 7, 255], ids=["even", "unproposed", "last-id"])
def test_associate_ac_naming_a_context_never_proposed_is_an_error(answered: int) -> None:
    body = bytearray(_ac([(1, 0, ELE), (3, 0, ELE)]))
    first = next(pos for pos, kind, _ in _item_offsets(bytes(body)) if kind == 0x21)
    assert body[first + 4] == 1
    body[first + 4] = answered
    with pytest.raises(WireError):
        wire.parse_associate_ac(bytes(body), _SMALL)


def test_associate_ac_cut_anywhere_inside_an_item_is_an_error() -> None:
    body = _ac([(1, 0, ELE), (3, 3, ELE), (5, 0, ILE)])
    items = _item_offsets(body)
    boundaries = {pos for pos, _, _ in items} | {len(body)}
    for cut in range(len(body)):
        if cut in boundaries:  # fewer items, each whole: still an A-ASSOCIATE-AC
            wire.parse_associate_ac(body[:cut], _SMALL)
            continue
        with pytest.raises(WireError):
            wire.parse_associate_ac(body[:cut], _SMALL)


def test_associate_ac_sub_item_running_past_its_item_is_an_error() -> None:
    body = bytearray(_ac([(1, 0, ELE)]))
    context = next(pos for pos, kind, _ in _item_offsets(bytes(body)) if kind == 0x21)
    syntax = context + 8  # the transfer syntax sub-item, after id, result and reserved bytes
    assert body[syntax] == 0x40
    struct.pack_into(">H", body, syntax + 2, len(ELE) + 1)
    with pytest.raises(WireError):
        wire.parse_associate_ac(bytes(body), _SMALL)
    user = next(pos for pos, kind, _ in _item_offsets(_ac([(1, 0, ELE)])) if kind == 0x50)
    body = bytearray(_ac([(1, 0, ELE)]))
    assert body[user + 4] == 0x51
    struct.pack_into(">H", body, user + 6, 0xFFF0)
    with pytest.raises(WireError):
        wire.parse_associate_ac(bytes(body), _SMALL)


def test_associate_ac_a_presentation_context_item_too_short_is_an_error() -> None:
    body = _ac([(1, 0, ELE)])
    context = next(pos for pos, kind, _ in _item_offsets(body) if kind == 0x21)
    short = body[:context] + bytes((0x21, 0, 0, 2, 1, 0))  # 2 bytes: no room for the result
    with pytest.raises(WireError):
        wire.parse_associate_ac(short, _SMALL)


def test_associate_ac_accepting_without_a_transfer_syntax_counts_as_refused() -> None:
    body = _ac([(1, 0, ELE)])
    context = next(pos for pos, kind, _ in _item_offsets(body) if kind == 0x21)
    bare = body[:context] + bytes((0x21, 0, 0, 4, 1, 0, 0, 0))  # result 0, no sub-item
    accepted = wire.parse_associate_ac(bare, _SMALL)
    assert (accepted.contexts, accepted.refused) == ({}, (1,))


def test_associate_rj_from_pynetdicom() -> None:
    primitive = A_ASSOCIATE()
    primitive.result = 0x01
    primitive.result_source = 0x01
    primitive.diagnostic = 0x07
    raw: bytes = A_ASSOCIATE_RJ(primitive).encode()
    assert wire.pdu_header(raw) == (wire.A_ASSOCIATE_RJ, 4)
    assert wire.parse_associate_rj(raw[6:]) == (1, 1, 7)
    with pytest.raises(WireError):
        wire.parse_associate_rj(raw[6:9])


def test_parse_associate_rq_of_pynetdicom() -> None:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = "STORE-SCU"
    primitive.called_ae_title = "GW"
    for context_id, abstract, syntaxes in (
        (1, CT, (ELE, ILE)),
        (3, "1.2.3", ("1.2.840.10008.1.2.4.90",)),
    ):
        context = PresentationContext()
        context.context_id = context_id
        context.abstract_syntax = UID(abstract)
        context.transfer_syntax = [UID(s) for s in syntaxes]
        primitive.presentation_context_definition_list.append(context)
    length = MaximumLengthNotification()
    length.maximum_length_received = 28672
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID("1.2.826.0.1.3680043.9.3811.3.0.4")
    primitive.user_information = [length, implementation]
    raw: bytes = A_ASSOCIATE_RQ(primitive).encode()
    proposal = wire.parse_associate_rq(raw[6:])
    assert proposal == wire.Proposal(
        called="GW",
        calling="STORE-SCU",
        contexts=((1, CT, (ELE, ILE)), (3, "1.2.3", ("1.2.840.10008.1.2.4.90",))),
        max_pdu=28672,
    )
    with pytest.raises(WireError):
        wire.parse_associate_rq(raw[6:60])
    with pytest.raises(WireError):
        wire.parse_associate_rq(raw[6:-3])  # the user information item cut short


def test_associate_ac_and_rj_as_pynetdicom_reads_them() -> None:
    proposal = wire.Proposal("GW", "STORE-SCU", ((1, CT, (ELE, ILE)), (3, "1.2.3", (ELE,))), 0)
    raw = wire.associate_ac(proposal, [(1, 0, ILE), (3, 3, ELE)], 65536)
    pdu = A_ASSOCIATE_AC()
    pdu.decode(raw)
    primitive = pdu.to_primitive()
    assert (primitive.called_ae_title, primitive.calling_ae_title) == ("GW", "STORE-SCU")
    assert primitive.application_context_name == APPLICATION_CONTEXT
    answers = [
        (c.context_id, c.result, list(c.transfer_syntax))
        for c in primitive.presentation_context_definition_results_list
    ]
    assert answers == [(1, 0, [ILE]), (3, 3, [ELE])]
    user = primitive.user_information
    assert [
        i.maximum_length_received for i in user if isinstance(i, MaximumLengthNotification)
    ] == [65536]
    assert [
        i.implementation_class_uid
        for i in user
        if isinstance(i, ImplementationClassUIDNotification)
    ] == [IMPLEMENTATION_UID]
    assert [
        i.implementation_version_name
        for i in user
        if isinstance(i, ImplementationVersionNameNotification)
    ] == [IMPLEMENTATION_VERSION]
    # and our own reader agrees
    accepted = wire.parse_associate_ac(raw[6:], [(CT, (ELE, ILE)), ("1.2.3", (ELE,))])
    assert (accepted.contexts, accepted.refused, accepted.max_pdu) == ({1: (CT, ILE)}, (3,), 65536)

    rejected = A_ASSOCIATE_RJ()
    rejected.decode(wire.associate_rj(1, 1, 3))
    assert (rejected.result, rejected.source, rejected.reason_diagnostic) == (1, 1, 3)


def test_release_and_abort_as_pynetdicom_writes_them() -> None:
    assert wire.release_rq() == A_RELEASE_RQ().encode()
    assert wire.release_rp() == A_RELEASE_RP().encode()
    pynetdicom_abort = A_ABORT_RQ()
    pynetdicom_abort.source, pynetdicom_abort.reason_diagnostic = 0, 0
    assert wire.abort() == pynetdicom_abort.encode()
    decoded = A_ABORT_RQ()
    decoded.decode(wire.abort(2, 6))
    assert (decoded.source, decoded.reason_diagnostic) == (2, 6)


# ---------------------------------------------------------------------- P-DATA-TF


def _pynetdicom_pdvs(pdu: bytes) -> list[tuple[int, int, bytes]]:
    decoded = P_DATA_TF()
    decoded.decode(pdu)
    return [(c, v[0], v[1:]) for c, v in decoded.to_primitive().presentation_data_value_list]


@pytest.mark.parametrize("command", [True, False], ids=["command", "data"])
@pytest.mark.parametrize(
    ("size", "max_pdu"), [(10_000, 4096), (16_384, 16_384), (100, 4096), (0, 4096), (5000, 0)]
)
def test_pdvs_fragment_to_the_peer_max_pdu(command: bool, size: int, max_pdu: int) -> None:
    payload = bytes(n % 251 for n in range(size))
    make = wire.command_pdvs if command else wire.data_pdvs
    pdus = list(make(7, payload, max_pdu))
    if size > max_pdu > 0:
        assert len(pdus) > 1
    if size <= 100 or max_pdu == 0:
        assert len(pdus) == 1
    fragments = []
    for n, pdu in enumerate(pdus):
        kind, length = wire.pdu_header(pdu)
        assert (kind, length) == (wire.P_DATA_TF, len(pdu) - 6)
        assert max_pdu == 0 or length <= max_pdu  # PS3.8 D.1: the peer's Maximum Length
        ((context, control, fragment),) = _pynetdicom_pdvs(pdu)
        assert context == 7
        last = n == len(pdus) - 1
        assert control == (0x01 if command else 0x00) | (0x02 if last else 0x00)
        assert [(c, m, bytes(f)) for c, m, f in wire.pdvs(memoryview(pdu)[6:])] == [
            (context, control, fragment)
        ]
        fragments.append(fragment)
    assert b"".join(fragments) == payload


def test_pdvs_reads_several_pdvs_of_one_pdu() -> None:
    pdu = P_DATA_TF()
    for context, value in ((1, b"\x03abc"), (3, b"\x00de"), (3, b"\x02")):
        item = PresentationDataValueItem()
        item.presentation_context_id, item.presentation_data_value = context, value
        pdu.presentation_data_value_items.append(item)
    body = memoryview(pdu.encode())[6:]
    got = [(c, m, bytes(f)) for c, m, f in wire.pdvs(body)]
    assert got == [(1, 0x03, b"abc"), (3, 0x00, b"de"), (3, 0x02, b"")]


@pytest.mark.parametrize(
    "body",
    [
        struct.pack(">LBB", 10, 1, 3) + b"abc",  # says 8 bytes of fragment, has 3
        struct.pack(">LBB", 1, 1, 3),  # shorter than its own header
        struct.pack(">LBB", 5, 1, 3) + b"abc" + b"\0\0\0",  # a second PDV's header cut short
    ],
    ids=["past-the-body", "length-below-2", "truncated-header"],
)
def test_pdvs_not_fitting_the_pdu_is_an_error(body: bytes) -> None:
    with pytest.raises(WireError):
        list(wire.pdvs(memoryview(body)))


# ---------------------------------------------------------------------- command sets


def _pynetdicom_command(message: object) -> bytes:
    raw = encode(message.command_set, True, True)  # type: ignore[attr-defined]
    assert raw is not None
    return raw


def _get_rq(message_id: int, sop_class: str) -> bytes:
    primitive = C_GET()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = UID(sop_class)
    primitive.Priority = 0
    primitive.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    message = C_GET_RQ()
    message.primitive_to_message(primitive)
    return _pynetdicom_command(message)


def _store_rsp(responding_to: int, sop_class: str, sop: str, status: int) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = responding_to
    primitive.AffectedSOPClassUID = UID(sop_class)
    primitive.AffectedSOPInstanceUID = UID(sop)
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return _pynetdicom_command(message)


def _cancel_rq(responding_to: int) -> bytes:
    primitive = C_CANCEL()
    primitive.MessageIDBeingRespondedTo = responding_to
    message = C_CANCEL_RQ()
    message.primitive_to_message(primitive)
    return _pynetdicom_command(message)


@pytest.mark.parametrize(
    ("values", "pynetdicom_bytes"),
    [
        (
            {0x0002: GET_MODEL, 0x0100: wire.C_GET_RQ, 0x0110: 7, 0x0700: 0, 0x0800: 1},
            _get_rq(7, GET_MODEL),  # even-length UID
        ),
        (
            {0x0002: "1.2.3", 0x0100: wire.C_GET_RQ, 0x0110: 65535, 0x0700: 0, 0x0800: 1},
            _get_rq(65535, "1.2.3"),  # odd-length UID
        ),
        (
            {
                0x0002: CT,
                0x0100: wire.C_STORE_RSP,
                0x0120: 3,
                0x0800: wire.NO_DATA_SET,
                0x0900: 0xA700,
                0x1000: "1.2.826.0.1.3680043.8.498.1",  # odd
            },
            _store_rsp(3, CT, "1.2.826.0.1.3680043.8.498.1", 0xA700),
        ),
        (
            {
                0x0002: MR,
                0x0100: wire.C_STORE_RSP,
                0x0120: 1,
                0x0800: wire.NO_DATA_SET,
                0x0900: 0,
                0x1000: "1.2.826.0.1.3680043.8.498.12",  # even
            },
            _store_rsp(1, MR, "1.2.826.0.1.3680043.8.498.12", 0),
        ),
        (
            {0x0100: wire.C_CANCEL_RQ, 0x0120: 9, 0x0800: wire.NO_DATA_SET},
            _cancel_rq(9),
        ),
    ],
    ids=["c-get-rq", "c-get-rq-odd-uid", "c-store-rsp-odd-uid", "c-store-rsp", "c-cancel-rq"],
)
def test_encode_command_as_pynetdicom_writes_it(
    values: dict[int, int | str], pynetdicom_bytes: bytes
) -> None:
    raw = wire.encode_command(values)
    assert raw == pynetdicom_bytes
    ds = decode(BytesIO(raw), True, True)
    assert ds.CommandGroupLength == len(raw) - 12
    got = {elem.tag.element: elem.value for elem in ds if elem.tag.element != 0}
    assert got == values
    assert wire.decode_command(raw).values == values


def test_encode_command_pads_odd_values_to_even_length() -> None:
    raw = wire.encode_command(
        {0x0002: "1.2.3", 0x0600: "ODD", 0x0902: "why?!", 0x1000: "1.22", 0x1030: "EVEN"}
    )
    elements = {}
    pos = 12
    while pos < len(raw):
        _, element, length = struct.unpack_from("<HHL", raw, pos)
        elements[element] = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
    assert elements == {  # each even in length (PS3.5 7.1.1), UIDs with a NUL, text a space
        0x0002: b"1.2.3\0",
        0x0600: b"ODD ",
        0x0902: b"why?! ",
        0x1000: b"1.22",
        0x1030: b"EVEN",
    }
    ds = decode(BytesIO(raw), True, True)
    assert (ds.AffectedSOPClassUID, ds.MoveDestination, ds.ErrorComment) == (
        "1.2.3",
        "ODD",
        "why?!",
    )
    assert (ds.AffectedSOPInstanceUID, ds.MoveOriginatorApplicationEntityTitle) == ("1.22", "EVEN")
    assert wire.decode_command(raw).values == {
        0x0002: "1.2.3",
        0x0600: "ODD",
        0x0902: "why?!",
        0x1000: "1.22",
        0x1030: "EVEN",
    }


def test_encode_command_refuses_elements_it_does_not_know() -> None:
    with pytest.raises(WireError):
        wire.encode_command({0x0100: wire.C_GET_RQ, 0x0901: 0x00100010})


@pytest.mark.parametrize(
    "sop", ["1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.77"], ids=["odd", "even"]
)
def test_decode_command_of_a_pynetdicom_c_store_rq(sop: str) -> None:
    primitive = C_STORE()
    primitive.MessageID = 12
    primitive.AffectedSOPClassUID = UID(CT)
    primitive.AffectedSOPInstanceUID = UID(sop)
    primitive.Priority = 2
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.MoveOriginatorMessageID = 4
    primitive.DataSet = BytesIO(b"\x08\x00\x18\x00\x02\x00\x00\x001\0")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    command = wire.decode_command(_pynetdicom_command(message))
    assert command.field == wire.C_STORE_RQ
    assert command.has_data_set
    assert command.number(0x0110) == 12
    assert command.number(0x0700) == 2
    assert command.text(0x0002) == CT
    assert command.text(0x1000) == sop
    assert command.text(0x1030) == "MOVER"
    assert command.number(0x1031) == 4
    # a string asked for as a number and the reverse: the default, not a crash
    assert command.number(0x1000, -1) == -1
    assert command.text(0x0110) == ""
    assert command.number(0x0120, 99) == 99  # absent


def test_decode_command_of_a_pynetdicom_c_get_rsp() -> None:
    primitive = C_GET()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = UID(GET_MODEL)
    primitive.Status = 0xB000
    primitive.NumberOfRemainingSuboperations = 0
    primitive.NumberOfCompletedSuboperations = 2
    primitive.NumberOfFailedSuboperations = 1
    primitive.NumberOfWarningSuboperations = 3
    # (pynetdicom leaves these two untyped: mypy takes them for None)
    primitive.ErrorComment = "partly"  # type: ignore[assignment]
    primitive.OffendingElement = [0x00100010]  # type: ignore[assignment]  # AT: skipped
    primitive.Identifier = BytesIO(b"\0" * 8)
    message = C_GET_RSP()
    message.primitive_to_message(primitive)
    command = wire.decode_command(_pynetdicom_command(message))
    assert command.field == wire.C_GET_RSP
    assert command.has_data_set
    assert (command.number(0x0120), command.number(0x0900)) == (7, 0xB000)
    subops = [command.number(e) for e in (0x1020, 0x1021, 0x1022, 0x1023)]
    assert subops == [0, 2, 1, 3]
    assert command.text(0x0902) == "partly"
    assert 0x0901 not in command.values


def test_decode_command_of_a_pydicom_dataset() -> None:
    """A command set written by pydicom alone: group length first, Implicit VR LE."""
    ds = Dataset()
    ds.CommandGroupLength = 0
    ds.AffectedSOPClassUID = CT
    ds.CommandField = wire.C_STORE_RSP
    ds.MessageIDBeingRespondedTo = 5
    ds.CommandDataSetType = wire.NO_DATA_SET
    ds.Status = 0x0000
    ds.AffectedSOPInstanceUID = "1.2.3.4.5"
    ds.CommandGroupLength = len(_implicit(ds)) - 12
    command = wire.decode_command(_implicit(ds))
    assert not command.has_data_set
    assert command.values == {
        0x0002: CT,
        0x0100: wire.C_STORE_RSP,
        0x0120: 5,
        0x0800: wire.NO_DATA_SET,
        0x0900: 0,
        0x1000: "1.2.3.4.5",
    }


def _implicit(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    return out.getvalue()


_GOOD = wire.encode_command({0x0100: wire.C_STORE_RSP, 0x0120: 1, 0x0900: 0, 0x1000: "1.2.3"})


@pytest.mark.parametrize(
    "raw",
    [
        _GOOD[:-1],  # the last element runs past the end
        _GOOD[:-4],
        _GOOD + b"\0\0\0\0",  # a truncated element header
        _GOOD + struct.pack("<HHL", 0x0008, 0x0016, 2) + b"12",  # group 0008
        _GOOD + struct.pack("<HHL", 0x0000, 0x0900, 0xFFFFFFFF),  # undefined length
        struct.pack("<HHL", 0, 0x0100, 4) + b"\1\0\0\0",  # US 4 bytes long
        struct.pack("<HHL", 0, 0x0900, 1) + b"\0",  # US 1 byte long
    ],
    ids=["cut-1", "cut-4", "stray-bytes", "not-group-0000", "undefined-length", "us-4", "us-1"],
)
def test_decode_command_refuses_malformed_command_sets(raw: bytes) -> None:
    with pytest.raises(WireError):
        wire.decode_command(raw)


# ---------------------------------------------------------------------- File Meta (PS3.10)


@pytest.mark.parametrize(
    ("sop_class", "sop", "syntax", "aet"),
    [
        (CT, "1.2.826.0.1.3680043.8.498.1", ExplicitVRLittleEndian, "PACS"),  # even, odd
        (MR, "1.2.826.0.1.3680043.8.498.12", ImplicitVRLittleEndian, "ORTHANC"),  # odd, even
        ("1.2.3", "1.2.34", "1.2.840.10008.1.2.4.90", "SIXTEEN-CHARS-AE"),
        ("1.2.840.10008.5.1.4.1.1.7", "9.9", "1.2.840.10008.1.2.1.99", "A"),
    ],
)
def test_part10_head_as_pydicom_writes_it(sop_class: str, sop: str, syntax: str, aet: str) -> None:
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop),
        transfer_syntax=UID(syntax),
        implementation_uid=UID(IMPLEMENTATION_UID),
        implementation_version=IMPLEMENTATION_VERSION,
    )
    meta.SourceApplicationEntityTitle = aet
    head = part10_head(sop_class, sop, syntax, aet)
    assert head == b"\0" * 128 + b"DICM" + encode_file_meta(meta)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_part10_head_and_a_data_set_read_back_with_pydicom(syntax: str) -> None:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.5"
    ds.PatientName = "Wire^Test"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498"
    ds.Rows = 2
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
    write_dataset(out, ds)
    head = part10_head(CT, ds.SOPInstanceUID, syntax, "ODD")
    read = pydicom.dcmread(BytesIO(head + out.getvalue()))
    meta = read.file_meta
    assert meta.MediaStorageSOPClassUID == CT
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == syntax
    assert meta.ImplementationClassUID == IMPLEMENTATION_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION
    assert meta.SourceApplicationEntityTitle == "ODD"
    assert meta.FileMetaInformationVersion == b"\0\1"
    assert (read.PatientName, read.Rows, read.StudyInstanceUID) == (
        "Wire^Test",
        2,
        ds.StudyInstanceUID,
    )


def test_context_plan_contexts_fit_the_rq() -> None:
    """A ContextPlan's contexts (tuples of tuples) go straight into associate_rq."""
    plan = ContextPlan(contexts=((GET_MODEL, (ELE, ILE)), (CT, (ELE,))), roles=(CT,))
    primitive = _decoded_rq(wire.associate_rq("GW", "PACS", plan.contexts, plan.roles, 1 << 20))
    assert [c.abstract_syntax for c in primitive.presentation_context_definition_list] == [
        GET_MODEL,
        CT,
    ]
