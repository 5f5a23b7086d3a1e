"""Prometheus metrics of the gateway (prometheus-client); exported at ``/metrics`` by
:mod:`ncpeh_dicomweb.web.metrics`."""

from .backend import MeteredBackend
from .families import LATENCY_BUCKETS, MULTIPROCESS_ENV, GatewayMetrics
from .mirror import Family, Mirror

__all__ = [
    "LATENCY_BUCKETS",
    "MULTIPROCESS_ENV",
    "Family",
    "GatewayMetrics",
    "MeteredBackend",
    "Mirror",
]
