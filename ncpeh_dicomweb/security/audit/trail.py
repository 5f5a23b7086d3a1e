"""The audit trail: AuditEvents in, one or two sinks out, never holding a response up.

:meth:`AuditTrail.record` serialises the event and puts it in a bounded queue; a writer task
appends batches to the sinks (the JSON lines file, the syslog spool: local disk only, the
network is the syslog sink's own task). When the queue is full, ``record`` writes the queue
and the event through to the sinks itself, in order: a short disk write on that one request
instead of an unbounded queue or a lost event. :meth:`AuditTrail.close` (the app's cleanup,
which aiohttp runs on SIGTERM/SIGINT) writes what is queued, fsyncs, and gives the syslog sink
its ``close_timeout`` to deliver; what it could not deliver stays in the spool for the next
start. Use it from the event loop's thread only.

Wiring (the app)::

    trail = AuditTrail.from_settings(settings.audit)
    await trail.start()                          # in a cleanup_ctx
    trail.record_access(Access(...))             # per request, in a middleware
    await trail.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .base import AuditRecord, AuditSink
from .events import Access, audit_event
from .jsonl import JsonlSink
from .settings import AuditSettings
from .spool import Spool
from .syslog import SyslogSink, tls_context

__all__ = ["AuditTrail", "sinks_for"]

log = logging.getLogger(__name__)

_BATCH = 512


def sinks_for(settings: AuditSettings) -> list[AuditSink]:
    """The sinks ``settings`` ask for (files are opened by ``start``, not here)."""
    sinks: list[AuditSink] = []
    if "jsonl" in settings.sinks:
        sinks.append(JsonlSink(settings.jsonl_path, fsync_interval=settings.fsync_interval))
    if "syslog" in settings.sinks:
        assert settings.syslog_host is not None  # from_mapping checks it
        context = (
            tls_context(
                settings.syslog_ca_file, settings.syslog_cert_file, settings.syslog_key_file
            )
            if settings.syslog_transport == "tls"
            else None
        )
        sinks.append(
            SyslogSink(
                settings.syslog_host,
                settings.syslog_port,
                Spool(settings.spool_dir, settings.spool_max_bytes),
                ssl_context=context,
                server_hostname=settings.syslog_server_name,
                hostname=settings.syslog_hostname,
                app_name=settings.syslog_app_name,
                msgid=settings.syslog_msgid,
                fsync_interval=settings.fsync_interval,
                close_timeout=settings.close_timeout,
                settle=settings.settle,
                backoff_max=settings.reconnect_max_delay,
            )
        )
    return sinks


class AuditTrail:
    """See the module docstring."""

    def __init__(
        self,
        sinks: Sequence[AuditSink],
        *,
        queue_size: int = 10000,
        source_id: str = "ncpeh-dicomweb",
    ) -> None:
        if not sinks:
            raise ValueError("an audit trail needs at least one sink")
        self.sinks = tuple(sinks)
        self.source_id = source_id
        self.recorded = 0
        self.spilled = 0  # written through by record() because the queue was full
        self.lost = 0  # recorded after close, or a sink failed to take them
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> AuditTrail:
        return cls(
            sinks_for(settings), queue_size=settings.queue_size, source_id=settings.source_id
        )

    async def start(self) -> None:
        """Open the sinks (an OSError if a file or the spool cannot be used) and start."""
        if self._started:
            return
        started: list[AuditSink] = []
        try:
            for sink in self.sinks:
                await sink.start()
                started.append(sink)
        except BaseException:
            for sink in reversed(started):
                with contextlib.suppress(Exception):
                    await sink.close()
            raise
        self._started = True
        self._writer = asyncio.create_task(self._write_loop(), name="audit-writer")

    def record(self, event: Mapping[str, Any]) -> None:
        """Record one AuditEvent (a FHIR JSON dict); returns at once."""
        item = AuditRecord.of(event)
        if self._closed:
            self.lost += 1
            log.error("audit: event recorded after the trail was closed; lost")
            return
        self.recorded += 1
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.spilled += 1
            if not self._started:
                self.lost += 1
                log.error("audit: queue full before the trail started; event lost")
                return
            self._write([*self._take(), item])

    def record_access(self, access: Access) -> dict[str, Any]:
        """Record the AuditEvent of ``access`` (as :func:`audit_event` makes it, with our
        ``source_id``) and return it."""
        event = audit_event(access, source_id=self.source_id)
        self.record(event)
        return event

    async def close(self) -> None:
        """Write what is queued, make it durable, stop the sinks (see the module docstring)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()  # it waits only in queue.get(): nothing is half-written
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if not self._started:
            return
        self._write(self._take())
        results = await asyncio.gather(*(s.close() for s in self.sinks), return_exceptions=True)
        for sink, result in zip(self.sinks, results, strict=True):
            if isinstance(result, BaseException):
                log.error("audit: closing the %s sink failed: %r", sink.name, result)

    def stats(self) -> dict[str, Any]:
        """Counters for health and metrics (no PHI)."""
        return {
            "recorded": self.recorded,
            "queued": self._queue.qsize(),
            "spilled": self.spilled,
            "lost": self.lost,
            **{sink.name: sink.stats() for sink in self.sinks},
        }

    def _take(self) -> list[AuditRecord]:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return items

    def _write(self, items: list[AuditRecord]) -> None:
        if not items:
            return
        for sink in self.sinks:
            try:
                sink.write(items)
            except Exception:
                self.lost += len(items)
                log.exception("audit: the %s sink lost %d events", sink.name, len(items))

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            self._write(batch)
