"""The DICOM Upper Layer PDUs (PS3.8 9.3) and DIMSE command sets (PS3.7 E) a retrieve needs,
as bytes: pure functions, no I/O.

Only what :mod:`.native` and :mod:`.native_scp` use: an association for a C-GET, the C-STOREs
the PACS sends on it or to the storage SCP, and their answers. pynetdicom does the rest
(searches, C-MOVE requests); this exists because its reader costs ~0.2 ms of Python per 16 KB
PDU.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "A_ABORT",
    "A_ASSOCIATE_AC",
    "A_ASSOCIATE_RJ",
    "A_ASSOCIATE_RQ",
    "A_RELEASE_RP",
    "A_RELEASE_RQ",
    "C_CANCEL_RQ",
    "C_ECHO_RQ",
    "C_ECHO_RSP",
    "C_GET_RQ",
    "C_GET_RSP",
    "C_MOVE_RQ",
    "C_MOVE_RSP",
    "C_STORE_RQ",
    "C_STORE_RSP",
    "NO_DATA_SET",
    "P_DATA_TF",
    "Accepted",
    "Command",
    "Proposal",
    "WireError",
    "abort",
    "associate_ac",
    "associate_rj",
    "associate_rq",
    "command_pdvs",
    "data_pdvs",
    "decode_command",
    "encode_command",
    "parse_associate_ac",
    "parse_associate_rj",
    "parse_associate_rq",
    "pdu_header",
    "pdvs",
    "release_rp",
    "release_rq",
]

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101  # CommandDataSetType: no data set follows (PS3.7 E.1)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
IMPLEMENTATION_UID = "2.25.333945760831396299131660715427848516688"  # ours (ISO/IEC 9834-8)
IMPLEMENTATION_VERSION = "NCPEH_DICOMWEB"
_HEADER = struct.Struct(">BxL")
_ITEM = struct.Struct(">BxH")
_PDV = struct.Struct(">LBB")
_ELEMENT = struct.Struct("<HHL")


class WireError(ValueError):
    """A PDU or command set that does not follow PS3.8 / PS3.7."""


def pdu_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(type, length of what follows) of the 6-byte PDU header."""
    kind, length = _HEADER.unpack_from(data)
    return kind, length


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, len(value)) + value


def _ae(title: str) -> bytes:
    raw = title.encode("ascii")
    if not raw or len(raw) > 16:
        raise WireError(f"AE title {title!r} must be 1 to 16 characters")
    return raw.ljust(16, b" ")


def associate_rq(
    calling: str,
    called: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    scp_roles: Sequence[str],
    max_pdu: int,
) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2): contexts numbered 1, 3, 5, ... in order; the SCP role
    asked for each class of ``scp_roles`` (with the SCU role kept, PS3.7 D.3.3.4)."""
    if len(contexts) > 128:
        raise WireError("at most 128 presentation contexts (PS3.8 9.3.2.2)")
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for index, (abstract, syntaxes) in enumerate(contexts):
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, s.encode()) for s in syntaxes)
        items.append(_item(0x20, bytes((2 * index + 1, 0, 0, 0)) + sub))
    user = [_item(0x51, struct.pack(">L", max_pdu)), _item(0x52, IMPLEMENTATION_UID.encode())]
    for uid in scp_roles:
        raw = uid.encode()
        user.append(_item(0x54, struct.pack(">H", len(raw)) + raw + b"\x01\x01"))
    user.append(_item(0x55, IMPLEMENTATION_VERSION.encode()))
    items.append(_item(0x50, b"".join(user)))
    body = struct.pack(">H2x", 1) + _ae(called) + _ae(calling) + bytes(32) + b"".join(items)
    return _HEADER.pack(A_ASSOCIATE_RQ, len(body)) + body


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the acceptor agreed to: context id → (abstract syntax, transfer syntax) for the
    accepted ones, the longest PDU it takes (0: no limit)."""

    contexts: dict[int, tuple[str, str]]
    max_pdu: int
    refused: tuple[int, ...] = field(default=())


def _items(body: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(body)
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise WireError("truncated item header")
        kind, length = _ITEM.unpack_from(view, pos)
        end = pos + 4 + length
        if end > len(view):
            raise WireError(f"item 0x{kind:02X} runs past its PDU")
        yield kind, view[pos + 4 : end]
        pos = end


def _uid(value: memoryview) -> str:
    return bytes(value).rstrip(b"\0 ").decode("ascii")


def parse_associate_ac(
    body: bytes | memoryview, proposed: Sequence[tuple[str, Sequence[str]]]
) -> Accepted:
    """The A-ASSOCIATE-AC's body (after the PDU header) against what we proposed."""
    if len(body) < 68:
        raise WireError("A-ASSOCIATE-AC shorter than its fixed fields")
    contexts: dict[int, tuple[str, str]] = {}
    refused: list[int] = []
    max_pdu = 0
    for kind, value in _items(memoryview(body)[68:]):
        if kind == 0x21:
            if len(value) < 4:
                raise WireError("presentation context item too short")
            context_id, result = value[0], value[2]
            index = (context_id - 1) // 2
            if context_id % 2 == 0 or not 0 <= index < len(proposed):
                raise WireError(f"the acceptor answered a context never proposed ({context_id})")
            syntaxes = [_uid(v) for k, v in _items(value[4:]) if k == 0x40]
            if result == 0 and syntaxes:
                contexts[context_id] = (proposed[index][0], syntaxes[0])
            else:
                refused.append(context_id)
        elif kind == 0x50:
            for sub, sub_value in _items(value):
                if sub == 0x51 and len(sub_value) == 4:
                    max_pdu = struct.unpack(">L", sub_value)[0]
    return Accepted(contexts, max_pdu, tuple(refused))


@dataclass(frozen=True, slots=True)
class Proposal:
    """An A-ASSOCIATE-RQ's content (PS3.8 9.3.2): AE titles, contexts as (id, abstract
    syntax, transfer syntaxes), the longest PDU the requestor takes (0: no limit)."""

    called: str
    calling: str
    contexts: tuple[tuple[int, str, tuple[str, ...]], ...]
    max_pdu: int


def parse_associate_rq(body: bytes | memoryview) -> Proposal:
    """The A-ASSOCIATE-RQ's body (after the PDU header)."""
    if len(body) < 68:
        raise WireError("A-ASSOCIATE-RQ shorter than its fixed fields")
    view = memoryview(body)
    called = bytes(view[4:20]).decode("ascii", "replace").strip()
    calling = bytes(view[20:36]).decode("ascii", "replace").strip()
    contexts: list[tuple[int, str, tuple[str, ...]]] = []
    max_pdu = 0
    for kind, value in _items(view[68:]):
        if kind == 0x20:
            if len(value) < 4:
                raise WireError("presentation context item too short")
            abstract, syntaxes = "", []
            for sub, sub_value in _items(value[4:]):
                if sub == 0x30:
                    abstract = _uid(sub_value)
                elif sub == 0x40:
                    syntaxes.append(_uid(sub_value))
            contexts.append((value[0], abstract, tuple(syntaxes)))
        elif kind == 0x50:
            for sub, sub_value in _items(value):
                if sub == 0x51 and len(sub_value) == 4:
                    max_pdu = struct.unpack(">L", sub_value)[0]
    return Proposal(called, calling, tuple(contexts), max_pdu)


def associate_ac(
    proposal: Proposal, results: Sequence[tuple[int, int, str]], max_pdu: int
) -> bytes:
    """A-ASSOCIATE-AC (PS3.8 9.3.3): per context (id, result, transfer syntax); result 0
    accepts, 3 abstract syntax and 4 transfer syntaxes not supported (PS3.8 9.3.3.2)."""
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for context_id, result, syntax in results:
        items.append(_item(0x21, bytes((context_id, 0, result, 0)) + _item(0x40, syntax.encode())))
    user = [
        _item(0x51, struct.pack(">L", max_pdu)),
        _item(0x52, IMPLEMENTATION_UID.encode()),
        _item(0x55, IMPLEMENTATION_VERSION.encode()),
    ]
    items.append(_item(0x50, b"".join(user)))
    fixed = struct.pack(">H2x", 1) + _ae(proposal.called or "ANY") + _ae(proposal.calling or "ANY")
    body = fixed + bytes(32) + b"".join(items)
    return _HEADER.pack(A_ASSOCIATE_AC, len(body)) + body


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent; source 1 the service user; reason
    3: calling AE title not recognised."""
    return _HEADER.pack(A_ASSOCIATE_RJ, 4) + bytes((0, result, source, reason))


def parse_associate_rj(body: bytes | memoryview) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    if len(body) < 4:
        raise WireError("A-ASSOCIATE-RJ too short")
    return body[1], body[2], body[3]


def release_rq() -> bytes:
    return _HEADER.pack(A_RELEASE_RQ, 4) + bytes(4)


def release_rp() -> bytes:
    return _HEADER.pack(A_RELEASE_RP, 4) + bytes(4)


def abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8); source 0: the service user (us)."""
    return _HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


def _pdata(
    context_id: int, data: bytes | memoryview, control: int, max_pdu: int
) -> Iterator[bytes]:
    # Each P-DATA-TF carries one PDV, at most the peer's max PDU long (PS3.8 9.3.5.1).
    room = (max_pdu or 1 << 20) - 6 - 6
    view = memoryview(data)
    pos = 0
    while True:
        chunk = view[pos : pos + room]
        pos += len(chunk)
        last = 0x02 if pos >= len(view) else 0x00
        pdv = _PDV.pack(len(chunk) + 2, context_id, control | last) + chunk
        yield _HEADER.pack(P_DATA_TF, len(pdv)) + pdv
        if last:
            return


def command_pdvs(context_id: int, command: bytes, max_pdu: int) -> Iterator[bytes]:
    """P-DATA-TF PDUs carrying a command set."""
    return _pdata(context_id, command, 0x01, max_pdu)


def data_pdvs(context_id: int, data: bytes, max_pdu: int) -> Iterator[bytes]:
    """P-DATA-TF PDUs carrying a data set."""
    return _pdata(context_id, data, 0x00, max_pdu)


def pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(context id, message control header, fragment) of each PDV of a P-DATA-TF body."""
    pos = 0
    end = len(body)
    while pos < end:
        if pos + 6 > end:
            raise WireError("truncated PDV header")
        length, context_id, control = _PDV.unpack_from(body, pos)
        stop = pos + 4 + length
        if length < 2 or stop > end:
            raise WireError("a PDV's length does not fit its PDU")
        yield context_id, control, body[pos + 6 : stop]
        pos = stop


# ------------------------------------------------------------------------ command sets

# Tag → VR of the command elements we read or write (PS3.7 E.1); the rest are skipped.
_US = {0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1020, 0x1021, 0x1022, 0x1023, 0x1031}
_UI = {0x0002, 0x1000}
_TEXT = {0x0600, 0x0902, 0x1030}  # AE, LO, AE: space padded


@dataclass(slots=True)
class Command:
    """A DIMSE command set by element number (group 0000): ints for US, str for the rest."""

    values: dict[int, int | str]

    @property
    def field(self) -> int:
        return int(self.values.get(0x0100, 0))

    @property
    def has_data_set(self) -> bool:
        return int(self.values.get(0x0800, NO_DATA_SET)) != NO_DATA_SET

    def number(self, element: int, default: int = 0) -> int:
        value = self.values.get(element, default)
        return value if isinstance(value, int) else default

    def text(self, element: int) -> str:
        value = self.values.get(element, "")
        return value if isinstance(value, str) else ""


def encode_command(values: dict[int, int | str]) -> bytes:
    """Group 0000 in Implicit VR Little Endian with its group length first (PS3.7 6.3.1)."""
    body = bytearray()
    for element in sorted(values):
        value = values[element]
        if element in _US:
            raw = struct.pack("<H", int(value))
        elif element in _UI:
            raw = str(value).encode("ascii")
            raw += b"\0" * (len(raw) % 2)
        elif element in _TEXT:
            raw = str(value).encode("ascii")
            raw += b" " * (len(raw) % 2)
        else:
            raise WireError(f"command element (0000,{element:04X}) is not one we write")
        body += _ELEMENT.pack(0, element, len(raw)) + raw
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + bytes(body)


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """A command set's elements (Implicit VR Little Endian, group 0000 only)."""
    view = memoryview(data)
    values: dict[int, int | str] = {}
    pos = 0
    while pos < len(view):
        if pos + 8 > len(view):
            raise WireError("truncated command element")
        group, element, length = _ELEMENT.unpack_from(view, pos)
        start, pos = pos + 8, pos + 8 + length
        if group != 0 or pos > len(view):
            raise WireError("a command set holds group 0000 only, each element within it")
        value = view[start:pos]
        if element in _US:
            if length != 2:
                raise WireError(f"(0000,{element:04X}) is US: 2 bytes")
            values[element] = struct.unpack("<H", value)[0]
        elif element in _UI or element in _TEXT:
            values[element] = bytes(value).rstrip(b"\0 ").decode("ascii", "replace")
    return Command(values)
