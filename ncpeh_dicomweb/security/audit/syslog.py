"""The audit sink for an ATNA Audit Record Repository: RFC 5424 syslog messages over TCP
(RFC 6587 3.4.1 octet counting) or TLS (RFC 5425, same framing), as IHE ITI-20 Record Audit
Event sends them.

Each message (:func:`format_message`)::

    <85>1 2024-05-01T10:00:00.123456Z gw01 ncpeh-dicomweb 4242 FHIR+AuditEvent - {"resour...

* PRI: facility 10 (security/authorization, as ITI-20 asks), severity 5 (notice) for a
  successful access, 4 (warning) for a failed or denied one: ``<85>`` / ``<84>``;
* TIMESTAMP: when the gateway recorded the event, UTC, microseconds; HOSTNAME: ours;
  APP-NAME ``ncpeh-dicomweb``; PROCID: the recording process; no STRUCTURED-DATA (``-``);
* MSGID and MSG: ITI-20's ``IHE+RFC-3881`` announces a DICOM PS3.15 ``AuditMessage`` in XML;
  we send the FHIR AuditEvent in JSON instead (the BALP form, the one our JSON lines file
  holds too), so the MSGID says that: ``FHIR+AuditEvent`` by default (configurable). The JSON
  is UTF-8 without a BOM (ITI CP 477) and holds no raw newline. The repository must accept
  messages of the size of our events (rsyslog: ``maxMessageSize``; a few KB, more for a
  request naming many instances).

Every message goes through the on-disk :class:`~.spool.Spool` first (``write`` returns once
it is appended there); a sender task delivers the spool in order, reconnecting with
exponential backoff while the repository is down.

When is a message delivered? Syslog over TCP has no acknowledgement: bytes the peer's kernel
acknowledged may still be lost if the repository closes the connection before reading them.
So a message counts as delivered (and leaves the spool) once the peer's TCP acknowledged it
(``TIOCOUTQ``) and the connection stayed up ``settle`` seconds after that; or, on plain TCP,
when the repository closed the connection cleanly (FIN, not RST: a socket closed with unread
data resets) after acknowledging it; or, on close, after our half-close was answered by the
repository's (it read everything before its end). Anything else is sent again on the next
connection: delivery is at least once, duplicates carry the same AuditEvent ``id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import socket
import ssl
import struct
import termios
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from .base import AuditRecord
from .spool import Position, Spool

__all__ = [
    "DEFAULT_APP_NAME",
    "DEFAULT_MSGID",
    "FACILITY",
    "SyslogSink",
    "format_message",
    "frame",
    "header_field",
    "tls_context",
]

log = logging.getLogger(__name__)

FACILITY: Final = 10  # security/authorization messages (RFC 5424 6.2.1), as ITI-20 asks
DEFAULT_APP_NAME: Final = "ncpeh-dicomweb"
DEFAULT_MSGID: Final = "FHIR+AuditEvent"
_PRINTUSASCII = re.compile(r"[\x21-\x7e]+")
_LOG_DOWN_EVERY = 60.0


def header_field(value: str, what: str, max_length: int) -> str:
    """``value`` if it is a valid RFC 5424 header field (1 to ``max_length`` printable
    US-ASCII characters, no space); else ValueError naming ``what``."""
    if not _PRINTUSASCII.fullmatch(value) or len(value) > max_length:
        raise ValueError(f"{what} must be 1 to {max_length} printable ASCII characters, no space")
    return value


def local_hostname() -> str:
    """This machine's name as an RFC 5424 HOSTNAME (``-`` if it has none usable)."""
    name = re.sub(r"[^\x21-\x7e]", "", socket.gethostname())[:255]
    return name or "-"


def timestamp(when: float) -> str:
    """RFC 5424 TIMESTAMP: UTC, six digits of fraction (TIME-SECFRAC allows 1 to 6)."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_message(
    record: AuditRecord,
    *,
    hostname: str,
    app_name: str = DEFAULT_APP_NAME,
    procid: str | None = None,
    msgid: str = DEFAULT_MSGID,
) -> bytes:
    """The RFC 5424 SYSLOG-MSG of one audit record (see the module docstring)."""
    pri = FACILITY * 8 + (4 if record.failed else 5)
    header = (
        f"<{pri}>1 {timestamp(record.when)} {hostname} {app_name} "
        f"{procid or os.getpid()} {msgid} - "
    )
    return header.encode("ascii") + record.data


def frame(message: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


def tls_context(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A client context for RFC 5425: the repository's certificate checked against
    ``ca_file`` (the system's CAs if None), TLS 1.2 at least, and our certificate presented
    if given (ATNA's mutual node authentication)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def _unacked(fd: int) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux
    ``SIOCOUTQ``); 0 where the platform cannot tell."""
    if fd < 0:
        return 0
    try:
        raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


@dataclass(slots=True)
class _Sent:
    position: Position  # in the spool, just past the batch
    end: int  # bytes written on this connection, up to the batch's end
    acked_at: float | None = None


class _PeerClosed(ConnectionError):
    pass


class SyslogSink:
    """Audit records to a syslog audit repository (see the module docstring)."""

    name = "syslog"

    def __init__(
        self,
        host: str,
        port: int,
        spool: Spool,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        hostname: str | None = None,
        app_name: str = DEFAULT_APP_NAME,
        msgid: str = DEFAULT_MSGID,
        fsync_interval: float = 1.0,
        close_timeout: float = 5.0,
        settle: float = 2.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
        write_timeout: float = 30.0,
        batch_bytes: int = 256 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.spool = spool
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.hostname = header_field(hostname or local_hostname(), "syslog hostname", 255)
        self.app_name = header_field(app_name, "syslog app_name", 48)
        self.msgid = header_field(msgid, "syslog msgid", 32)
        self.procid = str(os.getpid())
        self.fsync_interval = fsync_interval
        self.close_timeout = close_timeout
        self.settle = settle
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.batch_bytes = batch_bytes
        # counters, for stats and tests
        self.connected = False
        self.connections = 0
        self.sent = 0  # frames written to a connection (resent ones again)
        self.errors = 0
        self._wake = asyncio.Event()  # records appended, the peer closed, or close() began
        self._closing = asyncio.Event()
        self._deadline = float("inf")
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._down_since: float | None = None
        self._last_down_log = 0.0

    # ------------------------------------------------------------------ AuditSink

    async def start(self) -> None:
        if self._task is not None:
            return
        self.spool.open()
        self._task = asyncio.create_task(self._run(), name="audit-syslog-sender")
        self._sync_task = asyncio.create_task(self._sync_loop(), name="audit-spool-sync")
        if self.spool.pending_bytes:
            self._wake.set()

    def write(self, records: Sequence[AuditRecord]) -> None:
        frames = [
            frame(
                format_message(
                    r,
                    hostname=self.hostname,
                    app_name=self.app_name,
                    procid=self.procid,
                    msgid=self.msgid,
                )
            )
            for r in records
        ]
        try:
            self.spool.append(frames)
        except OSError:
            self.errors += 1
            raise
        if self.fsync_interval == 0:
            job = self.spool.sync_job()
            if job is not None:
                job()
        self._wake.set()

    async def close(self) -> None:
        """Deliver what the spool holds for up to ``close_timeout`` seconds; what is left
        stays on disk for the next start."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.close_timeout
        self._closing.set()
        self._wake.set()
        for task in (self._task, self._sync_task):
            if task is None:
                continue
            try:
                await asyncio.wait_for(task, self.close_timeout + 5.0)
            except TimeoutError:
                log.error("audit: the syslog sender did not stop in time")
            except Exception:
                log.exception("audit: the syslog sender failed")
        self._task = self._sync_task = None
        job = self.spool.sync_job()
        if job is not None:
            await asyncio.to_thread(job)
        left = self.spool.pending_bytes
        self.spool.close()
        if left:
            log.warning(
                "audit: %d bytes of audit events not yet delivered to %s:%d stay in the spool %s",
                left,
                self.host,
                self.port,
                self.spool.directory,
            )

    def stats(self) -> dict[str, int | bool]:
        return {
            "connected": self.connected,
            "connections": self.connections,
            "sent": self.sent,
            "errors": self.errors,
            "spool_bytes": self.spool.size_bytes,
            "pending_bytes": self.spool.pending_bytes,
            "dropped": self.spool.dropped,
        }

    # ------------------------------------------------------------------ background

    async def _sync_loop(self) -> None:
        interval = self.fsync_interval or 1.0
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), interval)
            job = self.spool.sync_job()
            if job is not None:
                try:
                    await asyncio.to_thread(job)
                except OSError:
                    self.errors += 1
                    log.exception("audit: syncing the spool %s failed", self.spool.directory)

    def _past_deadline(self) -> bool:
        return asyncio.get_running_loop().time() >= self._deadline

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake when close() begins (and never past its deadline)."""
        loop = asyncio.get_running_loop()
        seconds = min(seconds, max(self._deadline - loop.time(), 0.0))
        if self._closing.is_set():
            await asyncio.sleep(min(seconds, 0.2))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            if self.spool.pending_bytes == 0:
                if self._closing.is_set():
                    return
                self._wake.clear()
                if self.spool.pending_bytes == 0:
                    await self._wake.wait()
                continue
            if self._closing.is_set() and self._past_deadline():
                return
            try:
                loop = asyncio.get_running_loop()
                budget = min(self.connect_timeout, max(self._deadline - loop.time(), 0.1))
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=self.ssl_context,
                        server_hostname=(self.server_hostname or self.host)
                        if self.ssl_context
                        else None,
                    ),
                    budget,
                )
            except (OSError, TimeoutError) as exc:
                self._note_down(exc)
                await self._pause(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            self._note_up()
            try:
                await self._session(reader, writer)
            except (OSError, TimeoutError) as exc:
                self._note_down(exc)
            finally:
                self.connected = False
                self.spool.rewind()
                writer.close()
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _note_up(self) -> None:
        self.connected = True
        self.connections += 1
        if self._down_since is not None:
            log.info(
                "audit: repository %s:%d reachable again after %.1f s; %d bytes to replay",
                self.host,
                self.port,
                time.monotonic() - self._down_since,
                self.spool.pending_bytes,
            )
        self._down_since = None

    def _note_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._last_down_log = now
            log.warning(
                "audit: repository %s:%d %s (%s); spooling to %s",
                self.host,
                self.port,
                "unreachable" if not self.connected else "connection lost",
                type(exc).__name__.lstrip("_"),
                self.spool.directory,
            )
        elif now - self._last_down_log >= _LOG_DOWN_EVERY:
            self._last_down_log = now
            log.warning(
                "audit: repository %s:%d still unreachable; %d bytes spooled, %d dropped",
                self.host,
                self.port,
                self.spool.pending_bytes,
                self.spool.dropped,
            )

    # ------------------------------------------------------------------ one connection

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = self.ssl_context is not None
        sock = writer.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        inflight: deque[_Sent] = deque()
        written = 0
        # The repository never speaks: a read ends only when it closes (or resets).
        eof: asyncio.Future[bytes] = asyncio.ensure_future(reader.read(1))
        eof.add_done_callback(lambda _: self._wake.set())
        try:
            while True:
                if eof.done():
                    if eof.result():  # it spoke after all: ignore
                        eof = asyncio.ensure_future(reader.read(1))
                        eof.add_done_callback(lambda _: self._wake.set())
                        continue
                    if not tls:  # FIN: it read everything it acknowledged (see docstring)
                        acked = written - self._buffered(writer) - _unacked(fd)
                        while inflight and inflight[0].end <= acked:
                            self.spool.commit(inflight.popleft().position)
                    raise _PeerClosed("the audit repository closed the connection")
                if self._closing.is_set() and self._past_deadline():
                    return
                self._settle(inflight, written - self._buffered(writer) - _unacked(fd))
                if self.spool.unread:
                    batch = self.spool.read(self.batch_bytes)
                    if not batch:  # a corrupt segment skipped
                        continue
                    data = b"".join(f for f, _ in batch)
                    writer.write(data)
                    written += len(data)
                    inflight.append(_Sent(batch[-1][1], written))
                    self.sent += len(batch)
                    await asyncio.wait_for(writer.drain(), self.write_timeout)
                    continue
                if self._closing.is_set():
                    if not inflight:
                        return
                    if not tls and writer.can_write_eof():
                        await self._half_close(writer, eof, inflight)
                        return
                self._wake.clear()
                if not inflight:
                    await self._wake.wait()
                else:  # poll the acknowledgements
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), min(0.05, self.settle))
        finally:
            eof.cancel()

    def _buffered(self, writer: asyncio.StreamWriter) -> int:
        """Bytes written but not yet handed to the kernel (for TLS also the ciphertext the
        underlying transport holds, through a private attribute: better a late commit)."""
        size = writer.transport.get_write_buffer_size()
        inner: Any = getattr(getattr(writer.transport, "_ssl_protocol", None), "_transport", None)
        if inner is not None:
            with contextlib.suppress(Exception):
                size += int(inner.get_write_buffer_size())
        return size

    def _settle(self, inflight: deque[_Sent], acked: int) -> None:
        """Mark what the peer acknowledged; commit what stayed acknowledged ``settle`` s."""
        now = asyncio.get_running_loop().time()
        for sent in inflight:
            if sent.end > acked:
                break
            if sent.acked_at is None:
                sent.acked_at = now
        while inflight and (at := inflight[0].acked_at) is not None and now - at >= self.settle:
            self.spool.commit(inflight.popleft().position)

    async def _half_close(
        self, writer: asyncio.StreamWriter, eof: asyncio.Future[bytes], inflight: deque[_Sent]
    ) -> None:
        """Send our FIN and wait for the repository's: it has then read all we sent."""
        await asyncio.wait_for(writer.drain(), self.write_timeout)
        writer.write_eof()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError, OSError):
            if await asyncio.wait_for(asyncio.shield(eof), max(self._deadline - loop.time(), 0.1)):
                return  # it spoke instead of closing: leave the rest to the next start
            while inflight:
                self.spool.commit(inflight.popleft().position)
