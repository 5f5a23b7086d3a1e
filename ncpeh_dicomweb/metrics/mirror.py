"""Counters the app's objects keep already (backends' ``stats()``, caches, the audit trail),
copied into Prometheus metrics when asked, instead of a second count kept beside each.

A :class:`Mirror` is told the current value of each (``update``): a gauge is set; a counter is
advanced by what it grew since the last update, so it stays a real counter (``rate()`` works)
and, in prometheus-client's multiprocess mode, the sum over the workers' files is a total that
never goes back when a worker dies (its last published values stay in its file).

The tables say which key of which ``stats()`` becomes which metric; a key in none of them is
not published (``IGNORED_*`` name those left out on purpose).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = [
    "APP",
    "AUDIT_SINK_STATS",
    "AUDIT_STATS",
    "IGNORED_AUDIT_SINK_STATS",
    "IGNORED_SITE_STATS",
    "SITE_STATS",
    "Family",
    "Mirror",
]

Kind = Literal["counter", "gauge"]


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # a counter's without "_total": prometheus-client adds it
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()


def _site(name: str, kind: Kind, help_: str) -> Family:
    return Family(name, kind, help_, ("site",))


def _sink(name: str, kind: Kind, help_: str) -> Family:
    return Family(name, kind, help_, ("sink",))


# A backend's stats() key → its metric, labelled by site. DICOMweb sites report the first
# two and the cache of instances kept for pixel work; DIMSE sites their operations and the
# instance cache every retrieve goes through; IOCM-filtered sites the iocm_ keys as well.
SITE_STATS: Mapping[str, Family] = {
    "pacs_requests": _site(
        "ncpeh_pacs_http_requests", "counter", "HTTP requests made to a DICOMweb PACS"
    ),
    "instance_fetches": _site(
        "ncpeh_instance_fetches", "counter", "Instances fetched from a DICOMweb PACS for pixel work"
    ),
    "finds": _site("ncpeh_dimse_finds", "counter", "C-FIND operations sent to a DIMSE PACS"),
    "retrieves": _site(
        "ncpeh_dimse_retrieves", "counter", "C-GET or C-MOVE operations sent to a DIMSE PACS"
    ),
    "instances_received": _site(
        "ncpeh_dimse_instances_received", "counter", "Instances a DIMSE PACS sent the gateway"
    ),
    "cache_answers": _site(
        "ncpeh_dimse_cache_answers", "counter", "Retrieves answered from the instance cache alone"
    ),
    "shared": _site(
        "ncpeh_instance_cache_joins",
        "counter",
        "Requests that joined a retrieval already under way (single flight)",
    ),
    "cache_hits": _site(
        "ncpeh_instance_cache_hits", "counter", "Instance cache lookups that found the instance"
    ),
    "cache_misses": _site(
        "ncpeh_instance_cache_misses", "counter", "Instance cache lookups that did not"
    ),
    "cache_evictions": _site(
        "ncpeh_instance_cache_evictions", "counter", "Instances evicted from the instance cache"
    ),
    "cache_bytes": _site("ncpeh_instance_cache_bytes", "gauge", "Bytes in the instance cache"),
    "cache_entries": _site("ncpeh_instance_cache_entries", "gauge", "Instances in the cache"),
    "flights_in_progress": _site(
        "ncpeh_dimse_retrievals_in_progress", "gauge", "DIMSE retrievals under way"
    ),
    "associations_open": _site(
        "ncpeh_dimse_associations_open", "gauge", "Associations open with a DIMSE PACS"
    ),
    "iocm_refreshes": _site(
        "ncpeh_iocm_refreshes", "counter", "Readings of the PACS's IOCM rejection notes"
    ),
    "iocm_refresh_failures": _site(
        "ncpeh_iocm_refresh_failures", "counter", "Readings of the rejection notes that failed"
    ),
    "iocm_ko_queries": _site(
        "ncpeh_iocm_ko_queries", "counter", "Series-level KO searches made for IOCM"
    ),
    "iocm_ko_reads": _site("ncpeh_iocm_ko_reads", "counter", "KO series' metadata read for IOCM"),
    "iocm_listings": _site(
        "ncpeh_iocm_listings", "counter", "Instance listings asked to filter rejected instances"
    ),
    "iocm_ko_series": _site("ncpeh_iocm_ko_series", "gauge", "KO series known to the IOCM filter"),
    "iocm_hidden_instances": _site(
        "ncpeh_iocm_hidden_instances", "gauge", "Instances hidden by IOCM rejection notes"
    ),
}
# Process-wide, not a site's (every DIMSE site reports the same number): not published.
IGNORED_SITE_STATS = frozenset({"association_threads"})

# The audit trail's stats() (security/audit/trail.py) ...
AUDIT_STATS: Mapping[str, Family] = {
    "recorded": Family("ncpeh_audit_events_recorded", "counter", "AuditEvents recorded"),
    "spilled": Family(
        "ncpeh_audit_events_written_through",
        "counter",
        "AuditEvents written by the request itself because the audit queue was full",
    ),
    "lost": Family("ncpeh_audit_events_lost", "counter", "AuditEvents no sink could take"),
    "queued": Family("ncpeh_audit_queue_events", "gauge", "AuditEvents waiting to be written"),
}
# ... and each sink's (its name is the label: "jsonl", "syslog").
_WRITTEN = _sink("ncpeh_audit_events_written", "counter", "AuditEvents written by a sink")
AUDIT_SINK_STATS: Mapping[str, Family] = {
    "lines": _WRITTEN,  # JSON lines appended
    "sent": _WRITTEN,  # syslog frames sent
    "errors": _sink("ncpeh_audit_sink_errors", "counter", "Write or delivery errors of a sink"),
    "dropped": _sink("ncpeh_audit_events_dropped", "counter", "AuditEvents dropped: spool full"),
    "spool_bytes": _sink("ncpeh_audit_spool_bytes", "gauge", "Bytes in the syslog spool"),
    "pending_bytes": _sink(
        "ncpeh_audit_spool_pending_bytes",
        "gauge",
        "Spooled bytes the audit repository has not acknowledged",
    ),
    "connected": _sink("ncpeh_audit_syslog_connected", "gauge", "1 while connected to the ARR"),
    "connections": _sink("ncpeh_audit_syslog_connections", "counter", "Connections to the ARR"),
}
IGNORED_AUDIT_SINK_STATS = frozenset({"fsyncs"})

# What the app itself holds.
APP: Mapping[str, Family] = {
    "streams": Family(
        "ncpeh_http_streams_in_flight", "gauge", "Multipart retrieves being streamed now"
    ),
    "metadata_hits": Family(
        "ncpeh_metadata_cache_hits", "counter", "WADO-RS metadata answered from the cache"
    ),
    "metadata_misses": Family(
        "ncpeh_metadata_cache_misses", "counter", "WADO-RS metadata not (or no longer) cached"
    ),
}


class Mirror:
    """Publishes current values of the families given, as counters and gauges."""

    def __init__(self, families: Iterable[Family], registry: CollectorRegistry) -> None:
        self._metrics: dict[str, Counter | Gauge] = {}
        for family in families:
            if family.name in self._metrics:
                continue  # several keys may feed one family (a label tells them apart)
            if family.kind == "counter":
                metric: Counter | Gauge = Counter(
                    family.name, family.help, family.labels, registry=registry
                )
            else:
                # Multiprocess mode: the sum over the live workers (a dead one's file goes).
                metric = Gauge(
                    family.name,
                    family.help,
                    family.labels,
                    registry=registry,
                    multiprocess_mode="livesum",
                )
            self._metrics[family.name] = metric
        self._seen: dict[tuple[str, tuple[str, ...]], float] = {}

    def update(self, family: Family, labels: tuple[str, ...], value: float) -> None:
        metric = self._metrics[family.name]
        child = metric.labels(*labels) if labels else metric
        if isinstance(child, Gauge):
            child.set(value)
            return
        key = (family.name, labels)
        grown = value - self._seen.get(key, 0.0)
        self._seen[key] = value
        if grown > 0:  # a source that went back (a new object) is followed from there on
            child.inc(grown)

    def update_all(
        self,
        table: Mapping[str, Family],
        stats: Mapping[str, object],
        labels: tuple[str, ...] = (),
    ) -> None:
        """Every number of ``stats`` that ``table`` names (booleans count as 0 or 1)."""
        for key, value in stats.items():
            family = table.get(key)
            if family is not None and isinstance(value, int | float):
                self.update(family, labels, float(value))
