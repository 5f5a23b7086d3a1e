"""IHE IOCM: instances a rejection note names, and the notes, are never served by any route.

:class:`RejectionFilter` wraps a site's backend (DICOMweb or DIMSE alike) and keeps an index of
what the PACS's rejection notes hide (:mod:`.rejection_index`):

* **Index.** The KO series of the PACS (a series-level QIDO ``Modality=KO`` through the inner
  backend, in pages of :data:`PAGE`), each one's metadata read once and kept (what its notes
  hide, not the metadata) until its NumberOfSeriesRelatedInstances changes; a KO series gone
  from the answer is forgotten (a changed series: only its new documents are read, as a DIMSE
  backend's cache would give the series as first seen). Read at start-up in the background
  (:meth:`RejectionFilter.warm_up`), then again when older than the site's
  ``iocm_refresh_seconds`` (0: before every request), one refresh at a time, shared by the
  requests that wait for it. Bounded: :data:`MAX_KO_SERIES` series, :data:`MAX_HIDDEN`
  instances (beyond, the rest is not indexed and a warning is logged).
* **A failed refresh.** A PACS that cannot be reached, is busy or too slow fails the request
  as the request itself would have (502/503/504): nothing is served unchecked. A PACS that
  answers the KO query with something unusable (an error status, malformed JSON, a C-FIND
  failure) keeps the last index in use (none at first), is asked again after at most
  :data:`RETRY_SECONDS`, and is logged and counted (``iocm_refresh_failures``): a PACS that
  cannot list its KO series cannot have the gateway hide them either.
* **Filtering** what the inner backend answers: QIDO rows (instances; series and studies left
  without instances, their counts and ModalitiesInStudy), metadata, retrieves, frames and
  instance files. A study or series the index does not touch costs nothing more; one it touches
  costs one instance-level QIDO (the listing) per study in the answer, and its retrieve goes
  as a series retrieve per untouched series and an instance retrieve per instance left of the
  others. A hidden instance asked for by its UID is 404, and so is a study or series with
  nothing left.

The FHIR facade searches and reads through the same backend, so it follows;
:func:`rejected_study` lets its read tell a study whose every instance is rejected (410).
Not covered here: answers cached above the backend (the WADO metadata cache, 60 s) may still
show an instance rejected since; :attr:`RejectionFilter.generation` is there for their keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Final

from ..dicomweb.attributes import Level
from ..dicomweb.query import MatchKey, MatchKind, QidoQuery
from ..errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    GatewayError,
    NotFound,
)
from .base import Backend, DicomJson, RetrieveEvent, Scope, SearchResult, Target
from .rejection_index import (
    EMPTY,
    SERIES_UID,
    STUDY_UID,
    KoSeries,
    Listed,
    RejectionIndex,
    adjust_series_row,
    adjust_study_row,
    cut,
    documents_of,
    drop_hidden,
    ko_series_rows,
    listed,
    retrieve_plan,
    study_uids,
    text_value,
    widen,
    without_hidden_uids,
)

__all__ = [
    "MAX_HIDDEN",
    "MAX_KO_SERIES",
    "PAGE",
    "RETRY_SECONDS",
    "RejectionFilter",
    "rejected_study",
]

log = logging.getLogger(__name__)

PAGE: Final = 1000  # KO series per QIDO page
MAX_KO_SERIES: Final = 100_000
MAX_HIDDEN: Final = 200_000  # instances indexed (about 250 bytes each)
RETRY_SECONDS: Final = 5.0  # after an unusable answer, ask again this soon at the latest
_READERS: Final = 4  # KO series metadata read at once during a refresh
_UNAVAILABLE = (BackendUnreachable, BackendTimeout, BackendBusy)
_NOT_FOUND = "no such study, series or instance"

_KO_QUERY: Final = QidoQuery(
    level=Level.SERIES,
    keys=(MatchKey((0x00080060,), "CS", MatchKind.SINGLE, "KO"),),
    limit=PAGE,
)
# The instances under a study or series, with their series' Modality (ModalitiesInStudy).
_LISTING_QUERY: Final = QidoQuery(level=Level.INSTANCE, includefields=((0x00080060,),))


class RejectionFilter:
    """:class:`~ncpeh_dicomweb.backends.base.Backend` serving what ``inner`` serves, less what
    the PACS's IOCM rejection notes hide (see the module docstring)."""

    def __init__(self, inner: Backend, *, refresh_seconds: float = 30.0) -> None:
        self.inner = inner
        self._interval = refresh_seconds
        self._index = EMPTY
        self._ko: dict[str, KoSeries] = {}
        self._due = 0.0  # time.monotonic() at which the index must be read again
        self._refresh: asyncio.Task[None] | None = None
        self._warned = 0.0
        self.counters: dict[str, int] = {
            "iocm_refreshes": 0,
            "iocm_refresh_failures": 0,
            "iocm_ko_queries": 0,  # series-level KO QIDO pages asked
            "iocm_ko_reads": 0,  # KO series metadata read
            "iocm_listings": 0,  # instance listings asked to filter or retrieve
        }

    # ------------------------------------------------------------------ the index

    @property
    def index(self) -> RejectionIndex:
        """The index as last read (no refresh)."""
        return self._index

    @property
    def generation(self) -> int:
        """Changes whenever what is hidden changes: a cache of answers built through this
        backend (the metadata cache) stays right if its keys carry it."""
        return self._index.generation

    def warm_up(self) -> None:
        """Start reading the notes now, in the background (the event loop must be running),
        so that the first requests do not wait for the whole index; they share this reading
        if it is still under way. A failure is logged; the next request tries again."""
        if self._refresh is None:
            self._refresh = asyncio.get_running_loop().create_task(self._refreshed())
            self._refresh.add_done_callback(self._refresh_done)
            self._refresh.add_done_callback(self._warm_up_done)

    def _warm_up_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and isinstance(task.exception(), GatewayError):
            log.warning("IOCM: the rejection notes could not be read at start; read on demand")

    async def current(self) -> RejectionIndex:
        """The index, read again first if it is due; concurrent callers share one refresh."""
        if time.monotonic() < self._due:
            return self._index
        if self._refresh is None:
            self._refresh = asyncio.get_running_loop().create_task(self._refreshed())
            self._refresh.add_done_callback(self._refresh_done)
        await asyncio.shield(self._refresh)  # a client going away does not cancel it for the others
        return self._index

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        self._refresh = None
        if not task.cancelled():
            task.exception()  # retrieved: the awaiting requests got it

    async def _refreshed(self) -> None:
        started = time.monotonic()
        self.counters["iocm_refreshes"] += 1
        try:
            ko = await self._read_ko_series()
        except _UNAVAILABLE:
            self.counters["iocm_refresh_failures"] += 1
            raise  # the request fails as it would have: nothing goes out unchecked
        except GatewayError as exc:
            self.counters["iocm_refresh_failures"] += 1
            self._warn(f"the PACS's KO series could not be read ({exc.code}): {exc.message}")
            self._due = started + min(self._interval, RETRY_SECONDS)
            return
        except Exception:
            self.counters["iocm_refresh_failures"] += 1
            log.exception("IOCM: reading the rejection notes failed")
            raise BackendError("the PACS's rejection notes could not be read") from None
        hidden = [h for series in ko.values() for h in series.hidden]
        if len(hidden) > MAX_HIDDEN:
            self._warn(f"{len(hidden)} rejected instances: only {MAX_HIDDEN} are indexed")
            hidden = hidden[:MAX_HIDDEN]
        index = RejectionIndex(hidden, self._index.generation)
        if not index.same_as(self._index):
            index.generation += 1
        self._ko, self._index = ko, index
        self._due = started + self._interval

    async def _read_ko_series(self) -> dict[str, KoSeries]:
        rows: list[tuple[str, str, int | None]] = []
        offset = 0
        while True:
            self.counters["iocm_ko_queries"] += 1
            try:
                query = replace(_KO_QUERY, offset=offset)
                page = (await self.inner.search(query, Scope(), "")).datasets
            except NotFound:
                page = []
            rows.extend(ko_series_rows(page))
            offset += len(page)
            if len(page) < PAGE:
                break
            if offset >= MAX_KO_SERIES:
                self._warn(f"more than {MAX_KO_SERIES} KO series: the rest is not indexed")
                break
        rows = list({series: (study, series, n) for study, series, n in rows}.values())
        kept: dict[str, KoSeries] = {}
        stale: list[tuple[str, str, int | None]] = []
        for study, series, count in rows[:MAX_KO_SERIES]:
            known = self._ko.get(series)
            if known is not None and count is not None and known.count == count:
                kept[series] = known
            else:
                stale.append((study, series, count))
        gate = asyncio.Semaphore(_READERS)

        async def read(study: str, series: str, count: int | None) -> KoSeries | None:
            async with gate:
                return await self._read_one(study, series, count)

        found = await asyncio.gather(*(read(*row) for row in stale), return_exceptions=True)
        for outcome in found:
            if isinstance(outcome, BaseException):
                raise outcome  # the PACS went away meanwhile: the refresh fails
            if outcome is not None:
                kept[outcome.series] = outcome
        return kept

    async def _read_one(self, study: str, series: str, count: int | None) -> KoSeries | None:
        """What one KO series' documents hide; None if the series is gone.

        A series not read before is read whole (one metadata request); one read before, whose
        count changed, by listing its instances and reading only the new ones: a DIMSE
        backend's cache would give a series as it first saw it. A series the PACS cannot give
        now keeps its last reading (or none), to be read again next time."""
        known = self._ko.get(series)
        try:
            if known is None:
                self.counters["iocm_ko_reads"] += 1
                documents = documents_of(await self.inner.metadata(Target(study, series), ""))
                if count is None or len(documents) >= count:
                    return KoSeries(study, series, count, documents)
                known = KoSeries(study, series, None, documents)  # fewer than counted
            self.counters["iocm_listings"] += 1
            answer = await self.inner.search(_LISTING_QUERY, Scope(study, series), "")
            present = [i.sop for i in listed(answer.datasets, series)]
            if not present:
                return None
            documents = {}
            for sop in present:
                if sop in known.documents:
                    documents[sop] = known.documents[sop]
                    continue
                self.counters["iocm_ko_reads"] += 1
                try:
                    target = Target(study, series, sop)
                    documents.update(documents_of(await self.inner.metadata(target, "")))
                except NotFound:
                    continue  # deleted since the listing
            return KoSeries(study, series, count, documents)
        except NotFound:
            return None
        except _UNAVAILABLE:
            raise
        except GatewayError as exc:
            # One unreadable series does not stop the others; it is read again next time.
            self.counters["iocm_refresh_failures"] += 1
            self._warn(f"a KO series could not be read ({exc.code}): {exc.message}")
            return None if known is None else replace(known, count=None)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 300:  # at most every five minutes per site
            self._warned = now
            log.warning("IOCM: %s; rejected instances may be served", message)

    # ------------------------------------------------------------------ search

    async def search(self, query: QidoQuery, scope: Scope, base_url: str) -> SearchResult:
        index = await self.current()
        if index.empty:
            return await self.inner.search(query, scope, base_url)
        narrowed = without_hidden_uids(query, index)
        if narrowed is None:
            return SearchResult([], query.warnings)
        droppable = index.droppable(query.level, scope, study_uids(narrowed))
        if droppable == 0:
            return await self.inner.search(narrowed, scope, base_url)
        sent = widen(narrowed, droppable)
        result = await self.inner.search(sent, scope, base_url)
        rows = await self._filtered(result.datasets, narrowed, scope, index)
        return SearchResult(cut(rows, narrowed, sent), result.warnings)

    async def _filtered(
        self, rows: list[DicomJson], query: QidoQuery, scope: Scope, index: RejectionIndex
    ) -> list[DicomJson]:
        if query.level is Level.INSTANCE:
            return drop_hidden(rows, index)
        listings: dict[str, list[Listed]] = {}
        out: list[DicomJson] = []
        for row in rows:
            if query.level is Level.SERIES:
                series = text_value(row, SERIES_UID)
                study = text_value(row, STUDY_UID) or scope.study
                if study is None and series is not None:
                    study = index.study_of_series(series)
                if study is None or series is None or not index.touches(study, series):
                    out.append(row)
                    continue
                listing = await self._listing(listings, study)
                adjusted = adjust_series_row(row, study, listing, index)
            else:
                study = text_value(row, STUDY_UID)
                if study is None or not index.touches(study):
                    out.append(row)
                    continue
                listing = await self._listing(listings, study)
                adjusted = adjust_study_row(row, listing, index, query)
            if adjusted is not None:
                out.append(adjusted)
        return out

    async def _listing(
        self, listings: dict[str, list[Listed]], study: str, series: str | None = None
    ) -> list[Listed]:
        key = study if series is None else f"{study}/{series}"
        found = listings.get(key)
        if found is None:
            self.counters["iocm_listings"] += 1
            try:
                answer = await self.inner.search(_LISTING_QUERY, Scope(study, series), "")
                found = listed(answer.datasets, series)
            except NotFound:
                found = []
            listings[key] = found
        return found

    # ------------------------------------------------------------------ metadata

    async def metadata(self, target: Target, base_url: str) -> list[DicomJson]:
        index = await self.current()
        if target.instance is not None and index.hides(target.instance):
            raise NotFound(_NOT_FOUND)
        if not index.touches(target.study, target.series):
            return await self.inner.metadata(target, base_url)
        datasets = await self.inner.metadata(target, base_url)
        kept = drop_hidden(datasets, index)
        if datasets and not kept:
            raise NotFound(_NOT_FOUND)
        return kept

    # ------------------------------------------------------------------ retrieve

    async def retrieve(self, target: Target, base_url: str) -> AsyncGenerator[RetrieveEvent, None]:
        index = await self.current()
        if target.instance is not None:
            if index.hides(target.instance):
                raise NotFound(_NOT_FOUND)
            plan = [target]
        elif not index.touches(target.study, target.series):
            plan = [target]
        else:
            listing = await self._listing({}, target.study, target.series)
            plan = retrieve_plan(target, listing, index)
            if not plan:
                raise NotFound(_NOT_FOUND)
        if len(plan) == 1:
            async with aclosing(self.inner.retrieve(plan[0], base_url)) as events:
                async for event in events:
                    yield event
            return
        sent = False
        for part in plan:
            try:
                async with aclosing(self.inner.retrieve(part, base_url)) as events:
                    async for event in events:
                        sent = True
                        yield event
            except NotFound:
                continue  # gone since the listing: the others are still sent
        if not sent:
            raise NotFound(_NOT_FOUND)

    def pacs_frames(
        self, target: Target, numbers: Sequence[int], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None] | None:
        events = self.inner.pacs_frames(target, numbers, base_url)
        if events is None:
            return None  # the caller uses instance_file, which checks
        return self._checked_frames(target, events)

    async def _checked_frames(
        self, target: Target, events: AsyncGenerator[RetrieveEvent, None]
    ) -> AsyncGenerator[RetrieveEvent, None]:
        async with aclosing(events):
            index = await self.current()
            if index.touches_target(target):
                raise NotFound(_NOT_FOUND)
            async for event in events:
                yield event

    def instance_file(self, target: Target) -> AbstractAsyncContextManager[Path]:
        return self._instance_file(target)

    @asynccontextmanager
    async def _instance_file(self, target: Target) -> AsyncIterator[Path]:
        index = await self.current()
        if target.instance is not None and index.hides(target.instance):
            raise NotFound(_NOT_FOUND)
        async with self.inner.instance_file(target) as path:
            yield path

    # ------------------------------------------------------------------ plumbing

    async def ping(self) -> None:
        await self.inner.ping()

    def stats(self) -> dict[str, int]:
        return {
            **self.inner.stats(),
            **self.counters,
            "iocm_ko_series": len(self._ko),
            "iocm_hidden_instances": len(self._index),
        }

    async def close(self) -> None:
        task = self._refresh
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.inner.close()


def rejected_study(backend: Backend, study: str) -> bool:
    """Whether ``backend`` hides instances of ``study`` (as of its last refresh): after a search
    found nothing of the study, its every instance is rejected (or a note)."""
    return isinstance(backend, RejectionFilter) and backend.index.touches(study)
