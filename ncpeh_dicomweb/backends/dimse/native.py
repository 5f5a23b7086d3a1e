"""C-GET and C-MOVE on an association of our own, on the event loop (PS3.4 C.4.2-C.4.3,
PS3.7 9.1.3-9.1.4).

pynetdicom reads each PDU with several 4 KB ``recv`` calls, queues it between two threads and
decodes it into objects: about 0.2 ms of Python per 16 KB PDU, so one association tops out
near 60-100 MB/s and the gateway's other threads wait for the GIL meanwhile. Here a retrieve's
association is a stream on the event loop: each PDU is one ``readexactly``, each fragment of a
data set goes straight into the instance's cache file, and nothing else is decoded but the
command sets. The C-MOVE's instances come to the storage SCP (:mod:`.native_scp`), on the same
path; searches stay with pynetdicom.

The C-STOREs are answered one by one once their instance is in the cache and the clients are
close enough behind (:meth:`StoreReceiver.room`): the PACS sends the next only then, so a
slow client slows the PACS. A PDU longer than we said we take is a protocol error (PS3.8
9.3.1), so memory stays bounded by ``MAX_PDU``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydicom import Dataset
from pynetdicom.dsutils import encode

from ...errors import BackendError, BackendTimeout, BackendUnreachable, GatewayError
from .contexts import GET_MODEL, MOVE_MODEL, ContextPlan
from .operations import RetrieveOutcome
from .status import CANCEL, PENDING, error_for_status, is_failure
from .wire import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    C_CANCEL_RQ,
    C_GET_RQ,
    C_GET_RSP,
    C_MOVE_RQ,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    NO_DATA_SET,
    P_DATA_TF,
    Accepted,
    Command,
    WireError,
    abort,
    associate_rq,
    command_pdvs,
    data_pdvs,
    decode_command,
    encode_command,
    parse_associate_ac,
    parse_associate_rj,
    pdu_header,
    pdvs,
    release_rp,
    release_rq,
)

__all__ = ["MAX_PDU", "NativeAssociation", "Receiving", "StoreIntake", "StoreReceiver", "read_pdu"]

log = logging.getLogger(__name__)

MAX_PDU = 1 << 20
"""The longest PDU we take (our A-ASSOCIATE-RQ says so): a PDU is read whole."""

_ILE = "1.2.840.10008.1.2"
_REFUSED = 0xA700  # Out of Resources: nobody wants it any more
_CANNOT_UNDERSTAND = 0xC000


class Receiving(Protocol):
    """One instance being received."""

    def write(self, fragment: memoryview) -> None: ...

    def finish(self) -> int:
        """It is whole: keep it; the status to answer the C-STORE with."""
        ...

    def abort(self) -> None:
        """It will never be whole: drop what was written."""
        ...


class StoreReceiver(Protocol):
    """Where the C-STOREs of a C-GET go."""

    def begin(self, sop_class: str, sop: str, syntax: str) -> Receiving | int:
        """An instance starts: where to write it, or the status refusing it."""
        ...

    async def room(self) -> None:
        """Wait (bounded) until the PACS may send more."""
        ...


class NativeAssociation:
    """One association with the PACS for C-GETs, opened by :meth:`open`; not thread-safe:
    used from the event loop only."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accepted: Accepted,
    ) -> None:
        self._reader, self._writer, self._accepted = reader, writer, accepted
        self.is_established = True
        self._cancel_for: int | None = None  # message id a C-CANCEL is due for
        self._operation_context = 0  # the presentation context of the operation running

    # ------------------------------------------------------------------ open / close

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        calling: str,
        called: str,
        plan: ContextPlan,
        connect_timeout: float,
        acse_timeout: float,
    ) -> NativeAssociation:
        """Connect and negotiate ``plan``'s contexts, the SCP role for its classes."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=2 * MAX_PDU), connect_timeout
            )
        except (OSError, TimeoutError):
            raise BackendUnreachable("the PACS cannot be reached") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:  # every DIMSE exchange stalls ~40 ms without it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        contexts = [(uid, list(syntaxes)) for uid, syntaxes in plan.contexts]
        try:
            writer.write(associate_rq(calling, called, contexts, plan.roles, MAX_PDU))
            async with asyncio.timeout(acse_timeout):
                kind, body = await read_pdu(reader)
            if kind == A_ASSOCIATE_AC:
                return cls(reader, writer, parse_associate_ac(body, contexts))
            if kind == A_ASSOCIATE_RJ:
                result, source, reason = parse_associate_rj(body)
                log.info(
                    "association rejected: result %d source %d reason %d", *(result, source, reason)
                )
                raise BackendUnreachable("the PACS rejected the gateway's association")
            raise BackendUnreachable(f"the PACS answered the association request with 0x{kind:02X}")
        except TimeoutError:
            writer.close()
            raise BackendTimeout(
                "the PACS did not answer the association request in time"
            ) from None
        except (OSError, asyncio.IncompleteReadError, WireError):
            writer.close()
            raise BackendUnreachable("the PACS broke off the association request") from None
        except BaseException:
            writer.close()
            raise

    async def release(self, max_wait: float = 5.0) -> None:
        """A-RELEASE (PS3.8 7.2); an abort if the PACS does not answer it."""
        if not self.is_established:
            return
        self.is_established = False
        try:
            self._writer.write(release_rq())
            async with asyncio.timeout(max_wait):
                while (await read_pdu(self._reader))[0] not in (A_RELEASE_RP, A_ABORT):
                    pass  # late P-DATA of a cancelled operation
        except (OSError, TimeoutError, asyncio.IncompleteReadError, WireError):
            self._send(abort())
        finally:
            await self._close()

    async def abort(self) -> None:
        self.is_established = False
        self._send(abort())
        await self._close()

    async def _close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # closed already: nothing to tell
            self._writer.write(data)

    # ------------------------------------------------------------------ C-GET

    def cancel(self, message_id: int) -> None:
        """C-CANCEL the C-GET / C-MOVE ``message_id`` running (PS3.7 9.3.2.3), once."""
        if self._cancel_for == message_id or not self.is_established:
            return
        self._cancel_for = message_id
        command = encode_command({0x0100: C_CANCEL_RQ, 0x0120: message_id, 0x0800: NO_DATA_SET})
        for pdu in command_pdvs(self._operation_context, command, self._accepted.max_pdu):
            self._send(pdu)

    def _context_of(self, abstract: str, name: str) -> int:
        for context, (uid, _) in self._accepted.contexts.items():
            if uid == abstract:
                return context
        raise BackendError(f"the PACS did not accept the {name} model")

    async def c_get(
        self,
        identifier: Dataset,
        message_id: int,
        receiver: StoreReceiver,
        stop: threading.Event,
        deadline: float,
        max_wait: float,
    ) -> RetrieveOutcome:
        """C-GET; each C-STORE it brings goes to ``receiver``. ``stop`` (set from anywhere)
        C-CANCELs it at the next message; ``deadline`` (monotonic) bounds the whole, ``max_wait``
        each wait for the PACS. Statuses map as pynetdicom's path does (:mod:`.status`)."""
        return await self._retrieve(
            _GET, identifier, message_id, {}, receiver, stop, deadline, max_wait
        )

    async def c_move(
        self,
        identifier: Dataset,
        destination: str,
        message_id: int,
        stop: threading.Event,
        deadline: float,
        max_wait: float,
    ) -> RetrieveOutcome:
        """C-MOVE to ``destination`` (our storage SCP: the instances arrive there); the rest
        as :meth:`c_get`. Only C-MOVE responses come on this association."""
        return await self._retrieve(
            _MOVE, identifier, message_id, {0x0600: destination}, None, stop, deadline, max_wait
        )

    async def _retrieve(
        self,
        kind: _Operation,
        identifier: Dataset,
        message_id: int,
        extra: dict[int, int | str],
        receiver: StoreReceiver | None,
        stop: threading.Event,
        deadline: float,
        max_wait: float,
    ) -> RetrieveOutcome:
        context = self._context_of(kind.model, kind.name)
        syntax = self._accepted.contexts[context][1]
        data = encode(identifier, syntax == _ILE, True)
        if data is None:
            raise BackendError(f"the {kind.name} identifier could not be encoded")
        values: dict[int, int | str] = {
            0x0002: kind.model,
            0x0100: kind.request,
            0x0110: message_id,
            0x0700: 0,
            0x0800: 0,
        }
        command = encode_command(values | extra)
        self._cancel_for = None
        self._operation_context = context
        for pdu in command_pdvs(context, command, self._accepted.max_pdu):
            self._writer.write(pdu)
        for pdu in data_pdvs(context, data, self._accepted.max_pdu):
            self._writer.write(pdu)
        run = _OperationRun(self, kind, message_id, receiver, stop, deadline)
        try:
            final = await run.responses(max_wait)
        except GatewayError:
            await self.abort()
            raise
        except TimeoutError:  # before OSError, whose subclass it is
            await self.abort()
            if stop.is_set():
                return RetrieveOutcome(CANCEL, 0, 0, 0)
            raise BackendTimeout(f"the PACS did not answer the {kind.name} in time") from None
        except (OSError, asyncio.IncompleteReadError, WireError) as exc:
            log.info("%s association broken: %r", kind.name, exc)
            await self.abort()
            raise BackendError(f"the PACS broke off the {kind.name}") from None
        except BaseException:  # cancelled: the association cannot be trusted mid-message
            await asyncio.shield(self.abort())
            raise
        finally:
            run.drop_partial()
        if run.late:
            raise BackendTimeout(f"the PACS did not finish the {kind.name} in time")
        code = final.number(0x0900)
        outcome = RetrieveOutcome(
            status=code,
            completed=final.number(0x1021),
            failed=final.number(0x1022),
            warning=final.number(0x1023),
        )
        if is_failure(code) and outcome.completed == 0:
            raise error_for_status(code, kind.name)
        return outcome


@dataclass(frozen=True, slots=True)
class _Operation:
    name: str
    model: str
    request: int
    response: int


_GET = _Operation("C-GET", GET_MODEL, C_GET_RQ, C_GET_RSP)
_MOVE = _Operation("C-MOVE", MOVE_MODEL, C_MOVE_RQ, C_MOVE_RSP)


class StoreIntake:
    """The C-STOREs arriving on one association (a C-GET's sub-operations, or the storage
    SCP's): each command, then its data set's fragments into a :class:`Receiving`, then the
    answer, sent once the instance is kept and the receiver has room (PS3.7 9.3.1)."""

    def __init__(
        self, send: Callable[[bytes], None], contexts: dict[int, tuple[str, str]], max_pdu: int
    ) -> None:
        self._send, self._contexts, self._max_pdu = send, contexts, max_pdu
        self._store: tuple[int, str, str, int] | None = None  # (context, class, sop, msg id)
        self._receiver: StoreReceiver | None = None
        self._current: Receiving | None = None  # the instance being written
        self._refusal = 0  # status for the C-STORE whose data set is being dropped

    @property
    def receiving(self) -> bool:
        """Whether a C-STORE's data set is under way (its fragments go to :meth:`fragment`)."""
        return self._store is not None

    def begin(
        self, context: int, command: Command, receiver: StoreReceiver | None, refusal: int
    ) -> None:
        """A C-STORE-RQ: its data set goes to ``receiver``, or (None) is refused: ``refusal``."""
        accepted = self._contexts.get(context)
        sop_class, sop = command.text(0x0002), command.text(0x1000)
        self._store = (context, sop_class, sop, command.number(0x0110))
        self._receiver, self._current = receiver, None
        if accepted is None or not sop or not command.has_data_set:
            self._refusal = _CANNOT_UNDERSTAND
            if not command.has_data_set:
                self._answer(_CANNOT_UNDERSTAND)
            return
        if receiver is None:
            self._refusal = refusal
            return
        try:
            started = receiver.begin(sop_class, sop, accepted[1])
        except Exception:  # our side (a full disk, say), not the PACS's: refuse this one
            log.exception("receiving an instance failed")
            started = _REFUSED
        if isinstance(started, int):
            self._refusal = started
        else:
            self._current, self._refusal = started, 0

    async def fragment(self, control: int, fragment: memoryview) -> None:
        current = self._current
        if current is not None:
            try:
                current.write(fragment)
            except Exception:  # as in begin: the rest of it is read past, then refused
                log.exception("writing a received instance failed")
                self.drop_partial()
                current, self._refusal = None, _REFUSED
        if not control & 0x02:
            return
        self._current = None
        status = self._refusal
        if current is not None:
            try:
                status = current.finish()
            except Exception:
                log.exception("keeping a received instance failed")
                current.abort()
                status = _REFUSED
            if status == 0 and self._receiver is not None:
                await self._receiver.room()
        self._answer(status)

    def drop_partial(self) -> None:
        if self._current is not None:
            self._current.abort()
            self._current = None

    def _answer(self, status: int) -> None:
        assert self._store is not None
        context, sop_class, sop, store_id = self._store
        self._store = None
        values: dict[int, int | str] = {
            0x0100: C_STORE_RSP,
            0x0120: store_id,
            0x0800: NO_DATA_SET,
            0x0900: status,
        }
        if sop_class:
            values[0x0002] = sop_class
        if sop:
            values[0x1000] = sop
        for pdu in command_pdvs(context, encode_command(values), self._max_pdu):
            self._send(pdu)


class _OperationRun:
    """The messages of one C-GET / C-MOVE as they come: C-STOREs to write (a C-GET's), its
    responses to count."""

    def __init__(
        self,
        assoc: NativeAssociation,
        kind: _Operation,
        message_id: int,
        receiver: StoreReceiver | None,
        stop: threading.Event,
        deadline: float,
    ) -> None:
        self._assoc, self._kind, self._id, self._receiver = assoc, kind, message_id, receiver
        self._stop, self._deadline = stop, deadline
        self.late = False
        self._command = bytearray()
        accepted = assoc._accepted
        self._intake = StoreIntake(assoc._send, accepted.contexts, accepted.max_pdu)
        self._final: Command | None = None
        self._response_data = False  # a C-GET response's data set (failed UIDs) follows

    def drop_partial(self) -> None:
        self._intake.drop_partial()

    async def responses(self, max_wait: float) -> Command:
        reader = self._assoc._reader
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(loop.time() + max_wait) as watch:
            moved = loop.time()
            # max_wait is for each wait on the PACS: pushed on after a PDU is handled (that
            # may have waited for the clients), not after every one (a timer each): at least
            # 7/8 of it is left for any wait.
            push_every = min(0.5, max_wait / 8)
            while True:
                now = loop.time()
                if now - moved > push_every:
                    watch.reschedule(now + max_wait)
                    moved = now
                kind, body = await read_pdu(reader)
                if kind == P_DATA_TF:
                    for context, control, fragment in pdvs(body):
                        if control & 0x01:
                            done = self._command_fragment(context, control, fragment)
                        elif self._intake.receiving:
                            await self._intake.fragment(control, fragment)
                            done = None
                        else:
                            done = self._response_data_fragment(control)
                        if done:
                            return done
                        if self._stop.is_set():
                            self._assoc.cancel(self._id)
                elif kind == A_RELEASE_RQ:
                    self._assoc._send(release_rp())
                    raise BackendError(
                        f"the PACS released the association in the middle of a {self._kind.name}"
                    )
                elif kind == A_ABORT:
                    raise BackendError(f"the PACS aborted the {self._kind.name}")
                else:
                    raise WireError(f"unexpected PDU 0x{kind:02X} during a {self._kind.name}")

    def _command_fragment(self, context: int, control: int, fragment: memoryview) -> Command | None:
        if self._intake.receiving:
            raise WireError("a command in the middle of a C-STORE's data set")
        self._command += fragment
        if not control & 0x02:
            return None
        command = decode_command(self._command)
        self._command.clear()
        if command.field == C_STORE_RQ and self._receiver is not None:
            receiver = None if self._stop.is_set() else self._receiver
            self._intake.begin(context, command, receiver, _REFUSED)
            return None
        if command.field != self._kind.response or command.number(0x0120) != self._id:
            raise WireError(
                f"unexpected DIMSE command 0x{command.field:04X} during a {self._kind.name}"
            )
        code = command.number(0x0900)
        if code in PENDING:
            self.late = self.late or time.monotonic() > self._deadline
            if self.late:
                self._assoc.cancel(self._id)
            self._response_data = command.has_data_set
            return None
        self._final = command
        self._response_data = command.has_data_set
        return None if self._response_data else command

    def _response_data_fragment(self, control: int) -> Command | None:
        """A C-GET response's data set (the failed SOP instances): read past."""
        if not self._response_data:
            raise WireError("a data set with no command before it")
        if control & 0x02:
            self._response_data = False
            return self._final
        return None


async def read_pdu(reader: asyncio.StreamReader) -> tuple[int, memoryview]:
    """(type, body) of the next PDU; one longer than :data:`MAX_PDU` is an error."""
    head = await reader.readexactly(6)
    kind, length = pdu_header(head)
    if length > MAX_PDU + 6 or kind not in range(1, 8):
        raise WireError(f"PDU 0x{kind:02X} of {length} bytes: not one we take")
    return kind, memoryview(await reader.readexactly(length))
