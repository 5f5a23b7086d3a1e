"""What the trail hands its sinks (:class:`AuditRecord`) and the interface both sinks (JSON
lines on disk, syslog to an audit repository) implement."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

__all__ = ["AuditRecord", "AuditSink"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One AuditEvent, serialised once for every sink."""

    data: bytes  # the AuditEvent JSON, one line (no raw newline)
    failed: bool  # outcome other than 0: the syslog severity is then 4 (warning), else 5
    when: float  # epoch seconds the gateway recorded it

    @classmethod
    def of(cls, event: Mapping[str, Any], when: float | None = None) -> AuditRecord:
        return cls(
            data=orjson.dumps(event),
            failed=str(event.get("outcome", "0")) != "0",
            when=time.time() if when is None else when,
        )


class AuditSink(Protocol):
    """Where audit records go. ``write`` appends to local storage (a file, the spool) and
    returns; delivery beyond that (fsync, the network) happens in the sink's own tasks."""

    name: str

    async def start(self) -> None:
        """Open files, start background tasks; raise OSError (or ValueError) if it cannot."""
        ...

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Append ``records`` in order. Called on the event loop; must not wait on the
        network."""
        ...

    async def close(self) -> None:
        """Make what was written durable (fsync; for syslog: deliver what it can within its
        close timeout, keep the rest in the spool) and release everything."""
        ...

    def stats(self) -> dict[str, int | bool]:
        """Counters for health and metrics (no PHI)."""
        ...
