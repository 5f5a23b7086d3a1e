"""The audit trail: every search and retrieval, allowed or denied, as a FHIR AuditEvent (IHE
BALP style), kept on disk as JSON lines and/or sent to an ATNA audit repository over syslog
(RFC 5424 over TCP or TLS, IHE ITI-20), through a bounded on-disk spool.

``events`` (pure: :class:`Access` → AuditEvent dict), ``jsonl`` and ``syslog`` (the sinks),
``spool`` (the syslog sink's disk queue), ``settings`` (``[audit]``), ``trail`` (the queue in
front of the sinks, what the app holds).
"""

from __future__ import annotations

from .base import AuditRecord, AuditSink
from .events import INTERACTIONS, Access, Patient, audit_event, interaction_for, query_names
from .jsonl import JsonlSink
from .settings import AuditSettings
from .spool import Spool, SpoolError
from .syslog import SyslogSink
from .trail import AuditTrail, sinks_for

__all__ = [
    "INTERACTIONS",
    "Access",
    "AuditRecord",
    "AuditSettings",
    "AuditSink",
    "AuditTrail",
    "JsonlSink",
    "Patient",
    "Spool",
    "SpoolError",
    "SyslogSink",
    "audit_event",
    "interaction_for",
    "query_names",
    "sinks_for",
]
