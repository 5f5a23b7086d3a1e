"""The metrics' pure parts: counters mirrored from the objects' own counts, the tables that
name every count those objects report, backend calls counted by outcome, and the settings a
worker of ``serve --workers N`` runs with."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ncpeh_dicomweb.backends.base import (
    DicomJson,
    PartHead,
    RetrieveEvent,
    Scope,
    SearchResult,
    Target,
)
from ncpeh_dicomweb.backends.dicomweb import DicomWebBackend
from ncpeh_dicomweb.backends.dimse.backend import DimseBackend
from ncpeh_dicomweb.backends.rejections import RejectionFilter
from ncpeh_dicomweb.config import ConfigError, DicomWebSite, DimseSite, Settings
from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.query import QidoQuery, parse_qido
from ncpeh_dicomweb.errors import BackendTimeout, NotFound
from ncpeh_dicomweb.metrics import GatewayMetrics, MeteredBackend
from ncpeh_dicomweb.metrics.mirror import (
    AUDIT_SINK_STATS,
    AUDIT_STATS,
    IGNORED_AUDIT_SINK_STATS,
    IGNORED_SITE_STATS,
    SITE_STATS,
    Family,
    Mirror,
)
from ncpeh_dicomweb.security.audit.settings import AuditSettings
from ncpeh_dicomweb.security.audit.trail import AuditTrail
from ncpeh_dicomweb.web.workers import check_workers, worker_settings


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry's exposition, parsed back: (name, labels) → value."""
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# ---------------------------------------------------------------------- the mirror

HITS = Family("t_hits", "counter", "hits", ("site",))
SIZE = Family("t_bytes", "gauge", "bytes", ("site",))


def test_a_counter_follows_what_its_source_counted_and_never_goes_back() -> None:
    registry = CollectorRegistry()
    mirror = Mirror([HITS, SIZE], registry)
    mirror.update(HITS, ("a",), 3)
    mirror.update(HITS, ("a",), 3)  # published twice: counted once
    mirror.update(HITS, ("b",), 1)
    mirror.update(SIZE, ("a",), 500)
    assert samples(registry)[("t_hits_total", (("site", "a"),))] == 3
    mirror.update(HITS, ("a",), 10)
    mirror.update(SIZE, ("a",), 200)  # a gauge is set, up or down
    got = samples(registry)
    assert got[("t_hits_total", (("site", "a"),))] == 10
    assert got[("t_hits_total", (("site", "b"),))] == 1
    assert got[("t_bytes", (("site", "a"),))] == 200
    # A source that starts again from 0 (a new object): followed from there, never backwards.
    mirror.update(HITS, ("a",), 2)
    mirror.update(HITS, ("a",), 5)
    assert samples(registry)[("t_hits_total", (("site", "a"),))] == 13


def test_update_all_takes_the_numbers_a_table_names() -> None:
    registry = CollectorRegistry()
    mirror = Mirror([HITS, SIZE], registry)
    table = {"hits": HITS, "bytes": SIZE, "connected": SIZE}
    mirror.update_all(table, {"hits": 4, "bytes": 9, "other": 7, "nested": {"hits": 1}}, ("x",))
    got = samples(registry)
    assert got[("t_hits_total", (("site", "x"),))] == 4
    assert got[("t_bytes", (("site", "x"),))] == 9
    mirror.update_all(table, {"connected": True}, ("y",))
    assert samples(registry)[("t_bytes", (("site", "y"),))] == 1


async def test_every_count_a_backend_reports_is_published_or_left_out_on_purpose(
    tmp_path: Path,
) -> None:
    web = DicomWebBackend.create(DicomWebSite(id="w", url="http://127.0.0.1:9/dicom-web"))
    dimse = DimseBackend.create(
        DimseSite(id="d", host="127.0.0.1", port=9, called_aet="PACS", cache_dir=str(tmp_path))
    )
    iocm = RejectionFilter(web)
    try:
        for backend in (web, dimse, iocm):
            keys = set(backend.stats())
            assert keys - set(SITE_STATS) - IGNORED_SITE_STATS == set(), type(backend)
    finally:
        await iocm.close()
        await dimse.close()


def test_every_count_the_audit_trail_reports_is_published_or_left_out_on_purpose(
    tmp_path: Path,
) -> None:
    settings = AuditSettings(
        sinks=("jsonl", "syslog"),
        jsonl_path=str(tmp_path / "audit.jsonl"),
        syslog_host="127.0.0.1",
        syslog_transport="tcp",
        spool_dir=str(tmp_path / "spool"),
    )
    trail = AuditTrail.from_settings(settings)
    stats = trail.stats()
    assert {k for k, v in stats.items() if not isinstance(v, dict)} == set(AUDIT_STATS)
    for sink in trail.sinks:
        keys = set(sink.stats())
        assert keys - set(AUDIT_SINK_STATS) - IGNORED_AUDIT_SINK_STATS == set(), sink.name


def test_the_grafana_dashboard_asks_for_metrics_the_gateway_exports() -> None:
    path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ncpeh-dicomweb.json"
    dashboard = json.loads(path.read_text())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exported = {
        family.name + suffix
        for family in GatewayMetrics().registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    expressions = [t["expr"] for p in panels for t in p["targets"]]
    used = {name for e in expressions for name in re.findall(r"\bncpeh_\w+", e)}
    assert used <= exported, used - exported
    for needed in (
        "ncpeh_http_requests_total",  # request rate by route and status
        "ncpeh_http_request_duration_seconds_bucket",  # p50/p95/p99
        "ncpeh_http_response_bytes_total",  # bytes/s streamed
        "ncpeh_backend_requests_total",  # backend errors by site
        "ncpeh_metadata_cache_hits_total",  # cache hit ratio
        "ncpeh_dimse_associations_open",  # open associations
    ):
        assert needed in used
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_gateway_metrics_live_in_a_registry_of_their_own() -> None:
    # Two apps in one process (the tests make many): neither sees the other's counts.
    first, second = GatewayMetrics(), GatewayMetrics()
    first.observe("/dicom-web/studies", "GET", 200, 0.01, 100)
    labels = (("method", "GET"), ("route", "/dicom-web/studies"), ("status", "200"))
    assert ("ncpeh_http_requests_total", labels) not in samples(second.registry)
    got = samples(first.registry)
    assert got[("ncpeh_http_requests_total", labels)] == 1
    assert got[("ncpeh_http_response_bytes_total", (("route", "/dicom-web/studies"),))] == 100
    assert got[("ncpeh_workers", ())] == 1


# ---------------------------------------------------------------------- backend calls


class Scripted:
    """A backend whose answers the test sets: found, NotFound, or a timeout mid-stream."""

    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.fail_after_first = False

    async def search(self, query: QidoQuery, scope: Scope, base_url: str) -> SearchResult:
        if self.fail:
            raise self.fail
        return SearchResult([])

    async def _events(self) -> AsyncGenerator[RetrieveEvent, None]:
        if self.fail and not self.fail_after_first:
            raise self.fail
        yield PartHead({})
        if self.fail:
            raise self.fail
        yield b"body"
        yield b"more"

    def retrieve(self, target: Target, base_url: str) -> AsyncGenerator[RetrieveEvent, None]:
        return self._events()

    async def metadata(self, target: Target, base_url: str) -> list[DicomJson]:
        raise NotFound("no such study")

    def pacs_frames(
        self, target: Target, numbers: Sequence[int], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None] | None:
        return None

    def instance_file(self, target: Target) -> AbstractAsyncContextManager[Path]:
        return self._file()

    @asynccontextmanager
    async def _file(self) -> AsyncIterator[Path]:
        if self.fail:
            raise self.fail
        yield Path("/dev/null")

    async def ping(self) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {"pacs_requests": 0}

    async def close(self) -> None:
        return None


def _calls(metrics: GatewayMetrics) -> dict[tuple[str, str], float]:
    return {
        (dict(k[1])["operation"], dict(k[1])["outcome"]): v
        for k, v in samples(metrics.registry).items()
        if k[0] == "ncpeh_backend_requests_total"
    }


async def test_backend_calls_are_counted_by_operation_and_outcome() -> None:
    metrics = GatewayMetrics()
    inner = Scripted()
    backend = MeteredBackend(inner, "main", metrics.backend_requests)
    target = Target("1.2.3")
    query = parse_qido([], Level.STUDY)
    await backend.search(query, Scope(), "")
    assert [e async for e in backend.retrieve(target, "")] == [PartHead({}), b"body", b"more"]
    with pytest.raises(NotFound):
        await backend.metadata(target, "")
    # A client that leaves after the first part: the retrieve was abandoned, not failed.
    events = backend.retrieve(target, "")
    assert await anext(events) == PartHead({})
    await events.aclose()
    # The PACS going silent in the middle of a stream.
    inner.fail, inner.fail_after_first = BackendTimeout("the PACS did not answer in time"), True
    with pytest.raises(BackendTimeout):
        _ = [e async for e in backend.retrieve(target, "")]
    inner.fail_after_first = False
    with pytest.raises(BackendTimeout):
        await backend.search(query, Scope(), "")
    with pytest.raises(BackendTimeout):
        async with backend.instance_file(target):
            pass
    inner.fail = None
    # What the caller does with the file is not the backend's doing.
    with pytest.raises(ValueError, match="caller"):
        async with backend.instance_file(target):
            raise ValueError("the caller's own failure")
    assert await backend.ping() is None
    assert backend.pacs_frames(target, [1], "") is None
    assert backend.stats() == {"pacs_requests": 0}
    assert _calls(metrics) == {
        ("search", "ok"): 1,
        ("search", "pacs-timeout"): 1,
        ("retrieve", "ok"): 1,
        ("retrieve", "abandoned"): 1,
        ("retrieve", "pacs-timeout"): 1,
        ("metadata", "not-found"): 1,
        ("instance_file", "pacs-timeout"): 1,
        ("instance_file", "ok"): 1,
        ("ping", "ok"): 1,
    }


# ---------------------------------------------------------------------- workers


def _settings(*sites: DicomWebSite | DimseSite, workers: int = 3, port: int = 8080) -> Settings:
    return Settings(sites=sites, default_site=sites[0].id, workers=workers, port=port)


WEB = DicomWebSite(id="web", url="http://pacs/dicom-web")
GET = DimseSite(id="get", host="pacs", port=104, called_aet="PACS", cache_dir="/var/cache/get")
MOVE = DimseSite(id="move", host="pacs", port=104, called_aet="PACS", retrieve="c-move")


def test_several_workers_refuse_a_c_move_site_and_port_0() -> None:
    check_workers(_settings(WEB, GET))
    check_workers(_settings(WEB, MOVE, workers=1))  # one process runs the storage SCP
    with pytest.raises(ConfigError, match=r"site 'move' retrieves with C-MOVE.*store_port 11113"):
        check_workers(_settings(WEB, MOVE))
    with pytest.raises(ConfigError, match=r"server\.port"):
        check_workers(_settings(WEB, port=0))


def test_each_worker_has_its_own_cache_and_spool() -> None:
    base = _settings(WEB, GET, replace(GET, id="tmp", cache_dir=None), workers=4)
    base = replace(
        base, audit=AuditSettings(sinks=("jsonl", "syslog"), syslog_host="arr", spool_dir="/s")
    )
    mine = worker_settings(base, 2)
    web, get, tmp = mine.sites
    assert web == WEB
    assert isinstance(get, DimseSite)
    assert get.cache_dir == "/var/cache/get/worker-2"
    assert get.cache_max_bytes == GET.cache_max_bytes // 4  # the disk bound holds for all
    assert tmp == base.sites[2]  # a temporary directory is each process's already
    assert mine.audit.spool_dir == "/s/worker-2"
    assert mine.audit.jsonl_path == base.audit.jsonl_path  # O_APPEND: shared by the workers
