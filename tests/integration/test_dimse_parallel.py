"""A study retrieved over DIMSE one series per C-GET / C-MOVE, several at once (issue 10).

Against the real Orthanc: the same instances, byte for byte, with ``retrieve_parallelism`` 4
as with 1 and as Orthanc's own DICOMweb; each series in the PACS's order; more than one
association used; a client leaving mid-retrieve releases every association. A pynetdicom SCP
written here fails one series: the whole retrieve fails, with that series' DIMSE status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.backends.base import Target
from ncpeh_dicomweb.backends.dimse.backend import DimseBackend
from ncpeh_dicomweb.config import DimseSite, settings_from_mapping
from ncpeh_dicomweb.errors import BackendError
from ncpeh_dicomweb.web.keys import BACKENDS
from tests.conftest import Pacs
from tests.integration.multipart_split import split_multipart
from tests.integration.test_dimse_faults import (
    SCP_AET,
    SERIES,
    STUDY,
    Scp,
    _instance,
    start_scp,
)
from tests.integration.util import after_meta, orthanc_study_files

pytestmark = pytest.mark.integration
__all__ = ["start_scp"]  # the fixture, used below


@asynccontextmanager
async def _backend(site: DimseSite) -> AsyncIterator[DimseBackend]:
    backend = DimseBackend(site)
    try:
        yield backend
    finally:
        await backend.close()


def _orthanc_site(pacs: Pacs, tmp_path: Path, name: str, **overrides: Any) -> DimseSite:
    settings: dict[str, Any] = {"calling_aet": "NCPEH-PARALLEL", "iocm": False, **overrides}
    return DimseSite(
        id=name,
        host="127.0.0.1",
        port=pacs.dicom_port,
        called_aet=pacs.aet,
        cache_dir=str(tmp_path / name),
        **settings,
    )


async def _retrieved(
    backend: DimseBackend, target: Target, most_open: list[int] | None = None
) -> list[tuple[str, str, bytes]]:
    """(series, SOP Instance UID, Part-10 file) of each instance, in the order retrieved;
    ``most_open[0]``, if given: the most associations open as they arrived."""
    out = []
    async with aclosing(backend._instances(target)) as items:
        async for item in items:
            out.append((item.series, item.sop, item.path.read_bytes()))
            if most_open is not None:
                most_open[0] = max(most_open[0], backend.stats()["associations_open"])
    return out


def _study_with_series(pacs: Pacs, at_least: int) -> dict[str, Any]:
    return next(s for s in pacs.manifest["core"]["studies"] if len(s["series"]) >= at_least)


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
async def test_parallel_retrieve_is_the_serial_one_and_orthancs(
    pacs: Pacs, tmp_path: Path, retrieve: str
) -> None:
    study = _study_with_series(pacs, 3)
    target = Target(study["study_uid"])
    extra: dict[str, Any] = {"retrieve": retrieve}
    if retrieve == "c-move":  # Orthanc knows STORESCP@127.0.0.1:11113 (orthanc.sh)
        extra |= {"calling_aet": "STORESCP", "store_port": 11113}
    serial_site = _orthanc_site(pacs, tmp_path, "serial", retrieve_parallelism=1, **extra)
    async with _backend(serial_site) as serial:
        one = await _retrieved(serial, target)
        # A native retrieve's association is its own, and the one its plan was asked on is
        # let go rather than left polling while it runs: none is left open.
        assert serial.stats()["associations_open"] == 0
    parallel_site = _orthanc_site(pacs, tmp_path, "parallel", retrieve_parallelism=4, **extra)
    async with _backend(parallel_site) as parallel:
        most_open = [0]
        four = await _retrieved(parallel, target, most_open)
        assert most_open[0] >= 2  # the series came on several
        # ... let go once done: an idle association costs CPU (two polling threads)
        assert parallel.stats()["associations_open"] == 0
        assert parallel.stats()["flights_in_progress"] == 0
        again = await _retrieved(parallel, target)  # from the cache: grouped by series
    assert sorted(one) == sorted(four)  # the same instances, the same files
    for series in study["series"]:
        in_order = [sop for se, sop, _ in one if se == series["uid"]]
        assert [sop for se, sop, _ in four if se == series["uid"]] == in_order
        assert len(in_order) == len(series["instances"])
    seen = [se for se, _, _ in again]
    assert seen == sorted(seen, key=seen.index)  # each series in one run
    own = {
        sop: after_meta(body)
        for sop, body in (await asyncio.to_thread(orthanc_study_files, pacs, target.study)).items()
    }
    assert {sop: after_meta(body) for _, sop, body in four} == own


async def test_client_leaving_mid_retrieve_releases_every_association(
    pacs: Pacs, tmp_path: Path
) -> None:
    large = pacs.manifest["large"]["studies"][0]
    site = _orthanc_site(pacs, tmp_path, "cancel", retrieve_parallelism=4, dimse_timeout=10)
    async with _backend(site) as backend:
        async with aclosing(backend._instances(Target(large["study_uid"]))) as items:
            async for _ in items:
                break  # the client leaves after the first instance
        for _ in range(500):  # C-CANCELs answered, the flight over
            if backend.stats()["flights_in_progress"] == 0:
                break
            await asyncio.sleep(0.02)
        stats = backend.stats()
        assert stats["flights_in_progress"] == 0
        assert backend._pool._leased == 0  # every association given back (or aborted)
        assert stats["instances_received"] < sum(len(s["instances"]) for s in large["series"])
        # the pool still works: a small study, whole
        small = _study_with_series(pacs, 2)
        got = await _retrieved(backend, Target(small["study_uid"]))
        assert len(got) == sum(len(s["instances"]) for s in small["series"])


AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _dimse_backend(client: TestClient[Any, Any], site: str) -> DimseBackend:
    backend: Any = client.app[BACKENDS][site]
    while not isinstance(backend, DimseBackend):
        backend = backend.inner  # the metrics (and IOCM) wrappers
    return backend


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
async def test_a_study_retrieved_in_parallel_is_then_sent_whole(
    aiohttp_client: Callable[..., Any], pacs: Pacs, tmp_path: Path, retrieve: str
) -> None:
    """Retrieved one series per operation, several at once, the study is then in the cache
    as one complete listing: asked again, it goes out whole (a Content-Length, sendfile),
    the PACS not asked, the same parts as the first (chunked) answer."""
    study = _study_with_series(pacs, 3)
    site: dict[str, Any] = {
        "id": "par",
        "kind": "dimse",
        "host": "127.0.0.1",
        "port": pacs.dicom_port,
        "called_aet": pacs.aet,
        "calling_aet": "NCPEH-PARALLEL",
        "retrieve": retrieve,
        "retrieve_parallelism": 4,
        "cache_dir": str(tmp_path / "cache"),
        "iocm": False,
    }
    if retrieve == "c-move":  # Orthanc knows STORESCP@127.0.0.1:11113 (orthanc.sh)
        site |= {"calling_aet": "STORESCP", "store_port": 11113}
    settings = settings_from_mapping(
        {
            "sites": [site],
            "state": {"sqlite": str(tmp_path / "state.sqlite3")},
            "audit": {"jsonl_path": str(tmp_path / "audit.jsonl")},
        },
        {},
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    backend = _dimse_backend(client, "par")
    parts: list[Target] = []
    sub_retrieve = backend._sub_retrieve

    async def counted(assoc: Any, part: Target, *args: Any) -> Any:
        parts.append(part)
        return await sub_retrieve(assoc, part, *args)

    backend._sub_retrieve = counted  # type: ignore[method-assign]
    path = f"/site/par/dicom-web/studies/{study['study_uid']}"
    async with client.get(path, headers={"Accept": AS_STORED}) as cold:
        cold_body = await cold.read()
        assert cold.status == 200, cold_body[:300]
    assert "Content-Length" not in cold.headers  # streamed as it arrived
    assert sorted(p.series or "" for p in parts) == sorted(s["uid"] for s in study["series"])
    stats = backend.stats()
    # The associations the split took besides the retrieve's own are let go, not left
    # idle: pynetdicom polls each every millisecond, which slowed the warm answer. A
    # native retrieve keeps none (see test_parallel_retrieve_is_the_serial_one_and_orthancs).
    assert stats["associations_open"] == 0
    assert stats["retrieves"] == 1 and stats["flights_in_progress"] == 0
    async with client.get(path, headers={"Accept": AS_STORED}) as warm:
        warm_body = await warm.read()
        assert warm.status == 200, warm_body[:300]
    assert warm.headers.get("Content-Length") == str(len(warm_body))
    assert "chunked" not in warm.headers.get("Transfer-Encoding", "")
    after = backend.stats()
    assert after["retrieves"] == 1 and after["cache_answers"] == 1  # the PACS not asked
    assert after["instances_received"] == stats["instances_received"]
    cold_parts = split_multipart(cold.headers["Content-Type"], cold_body)
    warm_parts = split_multipart(warm.headers["Content-Type"], warm_body)
    assert len(cold_parts) == sum(len(s["instances"]) for s in study["series"])
    location = lambda parts: {h["content-location"]: (h, b) for h, b in parts}  # noqa: E731
    assert location(warm_parts) == location(cold_parts)
    for headers, body in warm_parts:
        assert headers["content-length"] == str(len(body))
    seen = [h["content-location"].split("/series/")[1].split("/")[0] for h, _ in warm_parts]
    assert seen == sorted(seen, key=seen.index)  # each series in one run
    assert backend._cache.stats.pinned == 0


# ---------------------------------------------------------------------- a failing series

SECOND = f"{STUDY}.2"


def _series_answers(event: Event, scp: Scp) -> Any:
    asked = event.identifier
    scp.note(f"find-{asked.QueryRetrieveLevel}")
    if asked.QueryRetrieveLevel != "SERIES":
        yield 0x0000, None  # nothing said of the SOP classes: the fixed list is proposed
        return
    for uid in (SERIES, SECOND):
        answer = Dataset()
        answer.QueryRetrieveLevel = "SERIES"
        answer.StudyInstanceUID = STUDY
        answer.SeriesInstanceUID = uid
        yield 0xFF00, answer
    yield 0x0000, None


def _get_failing_second(event: Event, scp: Scp) -> Any:
    series = str(event.identifier.get("SeriesInstanceUID", ""))
    scp.note(f"get-{event.identifier.QueryRetrieveLevel}", event.identifier)
    if series != SECOND:
        yield 3
        for number in range(3):
            yield 0xFF00, _instance(number)
        return
    yield 1
    yield 0xA702, None  # out of resources: unable to perform sub-operations


async def test_a_failing_series_fails_the_whole_retrieve(
    start_scp: Callable[..., Scp], tmp_path: Path
) -> None:
    scp = start_scp({evt.EVT_C_FIND: _series_answers, evt.EVT_C_GET: _get_failing_second})
    site = DimseSite(
        id="faulty",
        host="127.0.0.1",
        port=scp.port,
        called_aet=SCP_AET,
        calling_aet="NCPEH-PARALLEL",
        cache_dir=str(tmp_path / "cache"),
        dimse_timeout=2,
        search_timeout=2,
        retrieve_parallelism=2,
        iocm=False,
    )
    async with _backend(site) as backend:
        with pytest.raises(BackendError) as raised:  # BackendBusy is one
            await _retrieved(backend, Target(STUDY))
        assert raised.value.detail == {"dimse_status": "0xA702"}
        assert scp.count("get-SERIES") == 2 and scp.count("get-STUDY") == 0
        assert backend.stats()["flights_in_progress"] == 0
        assert backend._pool._leased == 0
        # nothing recorded as complete: asking again goes back to the PACS
        with pytest.raises(BackendError):
            await _retrieved(backend, Target(STUDY))
        assert scp.count("get-SERIES") == 4
