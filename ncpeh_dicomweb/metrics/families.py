"""The gateway's Prometheus metrics: one :class:`GatewayMetrics` per app, in a registry of its
own (never prometheus-client's global one).

One process: values live in memory, and ``/metrics`` also has the process's own (``process_*``:
CPU, memory, open files). Several workers (``serve --workers N``): the supervisor starts each
worker with ``PROMETHEUS_MULTIPROC_DIR`` set, so prometheus-client (which reads it when first
imported) keeps every value in a file per process there, and ``/metrics`` on any worker reads
them all: counters and histograms summed over every worker that ever ran, gauges over the live
ones. ``process_*`` is left out then (per process, it has no sum).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector

from .mirror import APP, AUDIT_SINK_STATS, AUDIT_STATS, SITE_STATS, Mirror

__all__ = ["LATENCY_BUCKETS", "MULTIPROCESS_ENV", "GatewayMetrics"]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: a QIDO search takes milliseconds, a large study's retrieve minutes.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class GatewayMetrics:
    """What one worker counts, and the registry ``/metrics`` exports."""

    def __init__(self) -> None:
        # prometheus-client chose in-memory or per-process files when imported, by this
        # variable: follow the same choice.
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_ENV) or None
        own = CollectorRegistry()
        self.requests = Counter(
            "ncpeh_http_requests",
            "HTTP requests answered, by route template, method and status",
            ("route", "method", "status"),
            registry=own,
        )
        self.duration = Histogram(
            "ncpeh_http_request_duration_seconds",
            "Time from the request to its answer's last byte (a retrieve: its whole stream)",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.response_bytes = Counter(
            "ncpeh_http_response_bytes",
            "Body bytes written to clients, streams included (gzipped answers as sent)",
            ("route",),
            registry=own,
        )
        self.streams = Counter(
            "ncpeh_http_streams",
            "Multipart retrieves by how they ended: complete, client-gone, cut",
            ("route", "outcome"),
            registry=own,
        )
        self.backend_requests = Counter(
            "ncpeh_backend_requests",
            "Calls to a site's backend by operation and outcome (ok or the error code)",
            ("site", "operation", "outcome"),
            registry=own,
        )
        self.workers = Gauge(
            "ncpeh_workers", "Worker processes serving", registry=own, multiprocess_mode="livesum"
        )
        self.workers.set(1)
        self._answered: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._sent: dict[str, Counter] = {}
        mirrored = (SITE_STATS, AUDIT_STATS, AUDIT_SINK_STATS, APP)
        self.mirror = Mirror([f for table in mirrored for f in table.values()], own)
        self.registry: CollectorRegistry
        if self.multiprocess_dir is None:
            ProcessCollector(registry=own)
            self.registry = own
        else:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def observe(
        self, route: str, method: str, status: int, seconds: float, body_bytes: int
    ) -> None:
        """One request answered (or given up on)."""
        # labels() looked up once per label set (routes, methods and statuses are few).
        key = (route, method, status)
        children = self._answered.get(key)
        if children is None:
            children = self._answered[key] = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)
        if body_bytes:
            sent = self._sent.get(route)
            if sent is None:
                sent = self._sent[route] = self.response_bytes.labels(route)
            sent.inc(body_bytes)
