"""The gateway's Storage SCP on the event loop: the C-MOVE destination (PS3.4 C.4.2, B.2).

The same policy as the pynetdicom one (:mod:`.storescp`), with the receive path of the native
C-GET (:class:`~.native.StoreIntake`): each fragment goes straight into the instance's cache
file. Only the PACS may store here (its AE title as calling AE, from its host); every storage
class it proposes is accepted, in the first of the gateway's syntaxes (compressed ones first)
the context offers: of the stored syntax with uncompressed fallbacks, the stored one, so
instances arrive as stored. C-STOREs are routed to the move that
asked for them by Move Originator AE Title and Message ID (PS3.7 9.1.1.1); one nobody asked
for is refused (0xC001). The C-MOVE requests themselves stay on pynetdicom's associations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterable

from ...config import DimseSite
from .contexts import ACCEPTED_SYNTAXES, KNOWN_STORAGE_CLASSES
from .native import MAX_PDU, StoreIntake, StoreReceiver, read_pdu
from .wire import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    C_STORE_RQ,
    P_DATA_TF,
    WireError,
    abort,
    associate_ac,
    associate_rj,
    decode_command,
    parse_associate_rq,
    pdvs,
    release_rp,
)

__all__ = ["NativeStorageSCP"]

log = logging.getLogger(__name__)

_NOT_EXPECTED = 0xC001  # "cannot understand": nobody asked for this instance
_ACCEPTANCE, _NO_ABSTRACT, _NO_SYNTAX = 0, 3, 4  # PS3.8 9.3.3.2
_MAX_ASSOCIATIONS = 10  # at once, as pynetdicom's SCP (the conformance statement says so)


class NativeStorageSCP:
    """Listens from :meth:`start` (bound at once, so a port in use fails the start); serves
    on the running event loop from the first :meth:`serving`."""

    def __init__(self, site: DimseSite) -> None:
        self._site = site
        self._routes: dict[tuple[str, int], StoreReceiver] = {}
        self._classes: set[str] = set(KNOWN_STORAGE_CLASSES)
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1] if self._sock is not None else 0

    def start(self) -> None:
        host = self._site.store_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server(
            (host, self._site.store_port), family=family, backlog=16, reuse_port=False
        )
        sock.setblocking(False)
        self._sock = sock

    async def serving(self) -> None:
        """Accept associations from now on (idempotent)."""
        if self._server is None and self._sock is not None:
            self._server = await asyncio.start_server(self._connected, sock=self._sock)

    def accept(self, classes: Iterable[str]) -> None:
        """Accept these SOP classes too (a private one a retrieve is about to bring)."""
        self._classes.update(classes)

    def register(self, message_id: int, receiver: StoreReceiver) -> None:
        self._routes[(self._site.calling_aet, message_id)] = receiver

    def unregister(self, message_id: int) -> None:
        self._routes.pop((self._site.calling_aet, message_id), None)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None

    # ------------------------------------------------------------------ one association

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._associate(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, WireError) as exc:
            log.info("storage SCP: association ended: %r", exc)
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(abort())
        except Exception:
            log.exception("storage SCP: association failed")
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(abort())
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    async def _associate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        site = self._site
        async with asyncio.timeout(site.connect_timeout * 2):
            kind, body = await read_pdu(reader)
        if kind != A_ASSOCIATE_RQ:
            raise WireError(f"PDU 0x{kind:02X} before an association")
        proposal = parse_associate_rq(body)
        if len(self._connections) > _MAX_ASSOCIATIONS:
            writer.write(associate_rj(2, 3, 2))  # transient, presentation: local limit
            return
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        # Only the PACS we move from may store here: anyone else could plant instances.
        if proposal.calling != site.called_aet or not await _is_host(address, site.host):
            log.warning("storage SCP: association from %r at %s refused", proposal.calling, address)
            writer.write(associate_rj(1, 1, 3))  # permanent, service user, calling AE
            return
        results: list[tuple[int, int, str]] = []
        accepted: dict[int, tuple[str, str]] = {}
        for context_id, abstract, syntaxes in proposal.contexts:
            # Ours in our order, compressed first: of a context offering the stored syntax
            # with uncompressed fallbacks, the stored one (as pynetdicom's SCP does).
            chosen = next((s for s in ACCEPTED_SYNTAXES if s in syntaxes), None)
            if abstract not in self._classes:
                results.append((context_id, _NO_ABSTRACT, syntaxes[0] if syntaxes else ""))
            elif chosen is None:
                results.append((context_id, _NO_SYNTAX, syntaxes[0] if syntaxes else ""))
            else:
                results.append((context_id, _ACCEPTANCE, chosen))
                accepted[context_id] = (abstract, chosen)
        writer.write(associate_ac(proposal, results, MAX_PDU))
        await self._stores(reader, writer, accepted, proposal.max_pdu)

    async def _stores(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accepted: dict[int, tuple[str, str]],
        max_pdu: int,
    ) -> None:
        def send(data: bytes) -> None:
            writer.write(data)

        intake = StoreIntake(send, accepted, max_pdu)
        command = bytearray()
        try:
            while True:
                async with asyncio.timeout(self._site.dimse_timeout):
                    kind, body = await read_pdu(reader)
                if kind == A_RELEASE_RQ:
                    writer.write(release_rp())
                    return
                if kind == A_ABORT:
                    return
                if kind != P_DATA_TF:
                    raise WireError(f"unexpected PDU 0x{kind:02X} on the storage SCP")
                for context, control, fragment in pdvs(body):
                    if not control & 0x01:
                        if not intake.receiving:
                            raise WireError("a data set with no command before it")
                        await intake.fragment(control, fragment)
                        continue
                    if intake.receiving:
                        raise WireError("a command in the middle of a C-STORE's data set")
                    command += fragment
                    if not control & 0x02:
                        continue
                    message = decode_command(command)
                    command.clear()
                    if message.field != C_STORE_RQ:
                        raise WireError(f"DIMSE command 0x{message.field:04X} on the storage SCP")
                    originator = message.text(0x1030).strip()
                    receiver = self._routes.get((originator, message.number(0x1031, -1)))
                    if receiver is None:
                        log.warning(
                            "C-STORE for no pending C-MOVE (originator %r, id %r)",
                            originator,
                            message.values.get(0x1031),
                        )
                    intake.begin(context, message, receiver, _NOT_EXPECTED)
        finally:
            intake.drop_partial()


async def _is_host(address: str, host: str) -> bool:
    """True if ``address`` (the peer's IP) is ``host`` or one of its addresses (resolved off
    the event loop: a slow DNS must not stall the retrieves)."""
    if address == host:
        return True
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError:
        return False
    return address in {str(info[4][0]) for info in infos}
