"""A PACS that speaks only DIMSE: QIDO over C-FIND, WADO over C-GET or C-MOVE.

Retrieved instances go through the site's on-disk cache: a study asked for by several requests
(metadata, then instances) leaves the PACS once, and concurrent requests share one retrieval.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from pydicom import Dataset
from pynetdicom.association import Association

from ...config import DimseSite
from ...dicomweb.attributes import Level
from ...dicomweb.matching import matches_all
from ...dicomweb.query import MatchKey, MatchKind, QidoQuery, parse_qido
from ...errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    GatewayError,
    NotFound,
)
from ..base import (
    DicomJson,
    FileAnswer,
    FilePart,
    PartHead,
    RetrieveEvent,
    Scope,
    SearchResult,
    Target,
)
from ..cache import CachedInstance, InstanceCache
from ..relational import UID_TAG, child_query, lower_keys, page, parent_uids, restrict_to
from .contexts import GET_MODEL, MOVE_MODEL, ContextPlan, Holdings, plan_retrieve
from .flight import WINDOW, Flight
from .identifiers import FindPlan, answer_to_json, find_identifier
from .instances import file_chunks, metadata_of, stored_syntax, with_bulk_uris
from .native import NativeAssociation
from .native_scp import NativeStorageSCP
from .operations import (
    Canceller,
    FindOutcome,
    RetrieveOutcome,
    find_holdings,
    find_series,
    run_find,
    run_get,
    run_move,
)
from .pool import AssociationPool
from .receiving import CacheStore, pynetdicom_sink
from .split import Split, by_series, splits
from .status import CANCEL, SUCCESS, error_for_status
from .storescp import StorageSCP

__all__ = ["DimseBackend", "DimseCounters"]

log = logging.getLogger(__name__)

_METADATA_BYTES = 64 << 20  # DICOM JSON of instances kept in memory, at most


@dataclass
class DimseCounters:
    """What the site asked of the PACS; tests and metrics read them."""

    finds: int = 0
    retrieves: int = 0  # C-GET or C-MOVE operations started
    instances_received: int = 0
    cache_answers: int = 0  # retrieves answered from the cache alone
    shared: int = 0  # requests that joined a retrieval already under way


class DimseBackend:
    """:class:`~ncpeh_dicomweb.backends.base.Backend` over C-FIND / C-GET / C-MOVE."""

    def __init__(self, site: DimseSite) -> None:
        self._site = site
        self._pool = AssociationPool(site)
        self._own_cache_dir: str | None = None
        if site.cache_dir is None:
            self._own_cache_dir = tempfile.mkdtemp(prefix=f"ncpeh-cache-{site.id}-")
        self._cache = InstanceCache(
            Path(site.cache_dir or self._own_cache_dir or ""), site.cache_max_bytes
        )
        self._scp: StorageSCP | NativeStorageSCP | None = None
        if site.retrieve == "c-move":
            self._scp = NativeStorageSCP(site) if site.native_dimse else StorageSCP(site)
            self._scp.start()
        self._flights: dict[tuple[str, ...], Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._message_ids = itertools.cycle(range(1, 65536))
        self._id_lock = threading.Lock()
        self._metadata: OrderedDict[str, bytes] = OrderedDict()
        self._metadata_bytes = 0
        self.counters = DimseCounters()

    @classmethod
    def create(cls, site: DimseSite) -> DimseBackend:
        return cls(site)

    def _message_id(self) -> int:
        with self._id_lock:
            return next(self._message_ids)

    # ------------------------------------------------------------------ search

    async def search(self, query: QidoQuery, scope: Scope, base_url: str) -> SearchResult:
        warnings = list(query.warnings)
        if query.limit == 0:
            return SearchResult([], tuple(warnings))
        lower = lower_keys(query)
        if lower:
            datasets = await self._relational(query, lower, scope, warnings)
        else:
            datasets = await self._find(query, scope, warnings)
        for dataset in datasets:
            _add_retrieve_url(dataset, query.level, base_url)
        return SearchResult(datasets, tuple(warnings))

    async def _relational(
        self, query: QidoQuery, lower: tuple[MatchKey, ...], scope: Scope, warnings: list[str]
    ) -> list[DicomJson]:
        children = await self._find(child_query(query, lower), scope, warnings)
        batches = restrict_to(query, lower, parent_uids(children, query.level, warnings))
        datasets = [d for b in batches for d in await self._find(b, scope, warnings)]
        return page(datasets, query) if len(batches) > 1 else datasets

    async def _find(self, query: QidoQuery, scope: Scope, warnings: list[str]) -> list[DicomJson]:
        plan = find_identifier(query, scope)
        # Every answer is checked against the keys again: some SCPs (dcmqrscp) ignore keys
        # they do not index. So cancelling after `limit` answers is only safe as a first try.
        wanted = None if query.limit is None else query.offset + query.limit
        found = await self._find_once(plan.identifier, wanted)
        datasets, unchecked = _checked(
            [answer_to_json(a, query) for a in found.matches], query, plan
        )
        if wanted is not None and len(found.matches) >= wanted and len(datasets) < wanted:
            found = await self._find_once(plan.identifier, None)
            datasets, unchecked = _checked(
                [answer_to_json(a, query) for a in found.matches], query, plan
            )
        if found.warning is not None:
            warnings.append(found.warning)
        modalities = next((k for k in unchecked if k.path == (_MODALITIES_IN_STUDY,)), None)
        if modalities is not None:
            # The PACS keeps no ModalitiesInStudy: ask the series for their Modality instead.
            return await self._relational(
                _as_series_modality(query, modalities),
                (_series_modality(modalities),),
                scope,
                warnings,
            )
        for key in unchecked:
            warnings.append(
                f"the PACS does not return {key.name}: matches on it could not be checked"
            )
        return page(datasets, query)

    async def _find_once(self, identifier: Dataset, wanted: int | None) -> FindOutcome:
        self.counters.finds += 1
        try:
            return await asyncio.wait_for(
                self._find_answers(identifier, wanted), self._site.search_timeout
            )
        except TimeoutError:
            raise BackendTimeout("the PACS did not finish the C-FIND in time") from None

    async def _find_answers(self, identifier: Dataset, wanted: int | None) -> FindOutcome:
        """One C-FIND on a pooled association (cancelled once ``wanted`` answers came)."""
        async with self._pool.lease() as assoc:
            return await self._pool.run(
                run_find, assoc, identifier, self._message_id(), wanted, self._site.search_timeout
            )

    # ------------------------------------------------------------------ retrieve

    async def retrieve(self, target: Target, base_url: str) -> AsyncGenerator[RetrieveEvent, None]:
        cached = self._cached(target)
        if cached is not None:
            self.counters.cache_answers += 1
            try:
                async with aclosing(self._answer(cached, base_url)) as events:
                    async for event in events:
                        yield event
            finally:
                self._cache.unpin(cached)
            return
        async with aclosing(self._retrieved(target)) as items:
            async for item in items:
                async with aclosing(self._part(item, base_url)) as part:
                    async for event in part:
                        yield event

    async def _answer(
        self, cached: list[CachedInstance], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None]:
        """A cache hit (``cached`` pinned by the caller): every part known before the first
        byte, offered whole as a FileAnswer; parts as usual unless the consumer claims it."""
        items = [await self._with_syntax(item) for item in cached]
        parts = [
            FilePart(_part_headers(i, i.syntax or "", base_url), i.path, i.size, i.syntax or "")
            for i in items
        ]

        def hold() -> Callable[[], None]:  # the claimer's own pins: ours go when this ends
            self._cache.pin(items)
            return functools.partial(self._cache.unpin, items)

        answer = FileAnswer(parts, hold)
        for number, part in enumerate(parts):
            yield PartHead(part.headers, answer if number == 0 else None)
            if answer.claimed:
                return  # the consumer sends the files itself
            async with aclosing(file_chunks(part.path, part.size)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _part(
        self, item: CachedInstance, base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None]:
        """One instance as a part: its file as the PACS sent it, labelled with its syntax."""
        item = await self._with_syntax(item)
        yield PartHead(_part_headers(item, item.syntax or "", base_url))
        async with aclosing(file_chunks(item.path, item.size)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _with_syntax(self, item: CachedInstance) -> CachedInstance:
        """``item`` with its transfer syntax: the index's, else read from the file (once)."""
        if item.syntax is not None:
            return item
        return self._cache.note_syntax(item, await asyncio.to_thread(stored_syntax, item.path))

    async def metadata(self, target: Target, base_url: str) -> list[DicomJson]:
        out: list[DicomJson] = []
        async with aclosing(self._instances(target)) as items:
            async for item in items:
                cached = await self._metadata_json(item)
                out.append(with_bulk_uris(cached, f"{base_url}/{_instance_path(item)}"))
        return out

    def pacs_frames(
        self, target: Target, numbers: Sequence[int], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None] | None:
        return None  # DIMSE has no frame-level retrieve: frames come from the cache

    @asynccontextmanager
    async def instance_file(self, target: Target) -> AsyncIterator[Path]:
        """From the cache, or retrieved into it (shared with any retrieve under way)."""
        async with aclosing(self._instances(target)) as items:
            item = await anext(items, None)
            if item is None:
                raise NotFound("no such instance")
            yield item.path  # pinned until the generator is closed

    async def _metadata_json(self, item: CachedInstance) -> DicomJson:
        """DICOM JSON of a cached instance, kept (as JSON bytes, bounded) once built."""
        kept = self._metadata.get(item.sop)
        if kept is None:
            kept = orjson.dumps(await asyncio.to_thread(metadata_of, item.path))
            self._metadata[item.sop] = kept
            self._metadata_bytes += len(kept)
            while self._metadata_bytes > _METADATA_BYTES:
                _, dropped = self._metadata.popitem(last=False)
                self._metadata_bytes -= len(dropped)
        else:
            self._metadata.move_to_end(item.sop)
        metadata: DicomJson = orjson.loads(kept)
        return metadata

    async def _instances(self, target: Target) -> AsyncGenerator[CachedInstance, None]:
        """The target's instances, from the cache, or from a retrieval shared with others."""
        cached = self._cached(target)
        if cached is not None:
            self.counters.cache_answers += 1
            try:
                for item in cached:
                    yield item
            finally:
                self._cache.unpin(cached)
            return
        async with aclosing(self._retrieved(target)) as items:
            async for item in items:
                yield item

    async def _retrieved(self, target: Target) -> AsyncGenerator[CachedInstance, None]:
        """The target's instances from the PACS, by a retrieval shared with others."""
        flight = self._covering_flight(target)
        if flight is None:
            flight = self._launch(target)
        else:
            self.counters.shared += 1
        found = False
        async with aclosing(flight.follow(_selects(target))) as followed:
            async for item in followed:
                found = True
                yield item
        if not found:
            raise NotFound("no such study, series or instance")

    def _cached(self, target: Target) -> list[CachedInstance] | None:
        if target.instance is not None and target.series is not None:
            item = self._cache.get(target.study, target.series, target.instance, pin=True)
            return [item] if item is not None else None
        return self._cache.listing(target.study, target.series, pin=True)

    def _covering_flight(self, target: Target) -> Flight | None:
        keys: list[tuple[str, ...]] = [(target.study,)]
        if target.series is not None:
            keys.append((target.study, target.series))
            if target.instance is not None:
                keys.append((target.study, target.series, target.instance))
        return next((f for k in keys if (f := self._flights.get(k)) is not None), None)

    def _launch(self, target: Target) -> Flight:
        key = tuple(u for u in (target.study, target.series, target.instance) if u is not None)
        flight = Flight(release=self._cache.unpin)
        self._flights[key] = flight
        self.counters.retrieves += 1
        task = asyncio.get_running_loop().create_task(self._fly(key, target, flight))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    async def _fly(self, key: tuple[str, ...], target: Target, flight: Flight) -> None:
        loop = asyncio.get_running_loop()
        room_timeout = self._site.dimse_timeout / 2
        sink: Sink
        if self._site.native_dimse:
            sink = CacheStore(
                self._cache, flight, self._received, target, room_timeout, self._site.called_aet
            )
        else:
            sink = pynetdicom_sink(self._cache, loop, flight, self._received, target, room_timeout)
        error: GatewayError | None = None
        try:
            # No asyncio timeout here: the DIMSE thread keeps the deadline itself and cancels
            # cleanly; cancelling the await would leave that thread running unseen.
            outcome = await self._run_retrieve(target, sink, flight)
            error = _outcome_error(outcome, self._site.retrieve.upper())
            if error is not None and not flight.items and flight.foreign:
                error = NotFound("no such study, series or instance under that parent")
            if error is None and not flight.cancel.is_set() and target.instance is None:
                members = by_series(
                    [(i.series, i.sop) for i in flight.items if _selects(target)(i)]
                )
                if members:  # the study/series is now known complete: later asks skip the PACS
                    self._cache.record_listing(target.study, target.series, members)
        except GatewayError as exc:
            error = exc
            if not flight.items and flight.foreign:
                error = NotFound("no such study, series or instance under that parent")
            elif not flight.items and not isinstance(
                exc, BackendTimeout | BackendUnreachable | BackendBusy | NotFound
            ):
                # Some PACS (Orthanc) fail a C-GET of an unknown UID instead of sending
                # nothing: ask whether it exists, so the client gets a 404, not a 502.
                error = await self._unless_unknown(target, exc)
        except Exception:
            log.exception("retrieve failed")
            error = BackendError("the retrieve from the PACS failed")
        finally:
            self._flights.pop(key, None)
            flight.finish(error)  # unpins the instances once no follower needs them

    async def _unless_unknown(self, target: Target, error: GatewayError) -> GatewayError:
        level = (
            Level.INSTANCE if target.instance else Level.SERIES if target.series else Level.STUDY
        )
        params = [("StudyInstanceUID", target.study)]
        if target.series:
            params.append(("SeriesInstanceUID", target.series))
        if target.instance:
            params.append(("SOPInstanceUID", target.instance))
        try:
            found = await self._find(parse_qido(params, level), Scope(), [])
        except GatewayError:
            return error
        return error if found else NotFound("no such study, series or instance")

    def _received(self) -> None:
        self.counters.instances_received += 1

    async def _run_retrieve(self, target: Target, sink: Sink, flight: Flight) -> RetrieveOutcome:
        """The target's C-GET / C-MOVE: of a study, one per series, several at once."""
        deadline = time.monotonic() + self._site.operation_timeout
        plan, parts = await self._retrieve_plan(target)
        if flight.cancel.is_set():  # every client left while the PACS was asked
            return RetrieveOutcome(CANCEL, 0, 0, 0)
        if self._scp is not None:
            self._scp.accept(plan.roles)  # a class the storage SCP does not know yet (private)
        split = Split(parts, flight.cancel)
        flight.on_cancel(split.halt)
        flight.on_arrival(split.ready.set)
        extras: list[asyncio.Task[None]] = []
        try:
            async with self._lease_for(sink, plan) as assoc:
                # The first part starts now, on the association had as any operation's; the
                # others once it has brought an instance, on associations free by then.
                for _ in range(min(self._splits(), len(parts)) - 1):
                    extra = self._sub_retrieves(split, sink, plan, deadline, None)
                    extras.append(asyncio.get_running_loop().create_task(extra))
                await self._sub_retrieves(split, sink, plan, deadline, assoc)
        except GatewayError as exc:
            split.fail(exc)
        except BaseException:  # cancelled: no part may start after this
            split.halt()
            raise
        finally:
            split.ready.set()
            if extras:  # never left running: each holds an association and a pool thread
                await asyncio.gather(*extras, return_exceptions=True)
        return split.outcome()

    def _splits(self) -> int:
        site = self._site
        return splits(
            site.retrieve_parallelism, site.max_associations, site.cache_max_bytes, WINDOW
        )

    @asynccontextmanager
    async def _lease_for(
        self, sink: Sink, plan: ContextPlan, wait: float | None = None
    ) -> AsyncIterator[Association | NativeAssociation]:
        """An association to retrieve on: natively (``native_dimse``), one of its own; else
        from the pool. A C-GET's has the plan's contexts (the C-STOREs come on it), a
        C-MOVE's the query plan (they come on the PACS's own associations to the storage
        SCP)."""
        if isinstance(sink, CacheStore):
            site = self._site
            async with self._pool.slot(wait):
                native = await NativeAssociation.open(
                    site.host,
                    site.port,
                    site.calling_aet,
                    site.called_aet,
                    plan if self._scp is None else self._pool.query_plan,
                    site.connect_timeout,
                    site.connect_timeout * 2,
                )
                try:
                    yield native
                finally:
                    await native.release()
            return
        if self._scp is None:
            assert not isinstance(sink, CacheStore)  # a native C-GET has its own, above
            lease = self._pool.lease(sink=sink, plan=plan, wait=wait)
        else:
            lease = self._pool.lease(wait=wait)
        async with lease as assoc:
            yield assoc

    async def _sub_retrieves(
        self,
        split: Split,
        sink: Sink,
        plan: ContextPlan,
        deadline: float,
        assoc: Association | NativeAssociation | None,
    ) -> None:
        """Retrieve parts of ``split`` one after the other on ``assoc`` (the first part at
        once); or (None), once the first part is under way, on an association of their own
        if one is free then, released once no part is left for it (see :func:`_let_go`)."""
        if assoc is not None:
            try:
                while (part := split.next()) is not None:
                    split.record(await self._sub_retrieve(assoc, part, split, sink, deadline))
                    split.ready.set()  # the first part brought nothing: the others start
            finally:
                split.ready.set()
            return
        try:
            await split.ready.wait()
            if split.stop.is_set() or not split.pending:
                return
            async with AsyncExitStack() as stack:
                try:
                    own = await stack.enter_async_context(self._lease_for(sink, plan, wait=0))
                except BackendBusy:
                    return  # no association free now: the others take its parts
                await self._sub_retrieves(split, sink, plan, deadline, own)
                if isinstance(own, Association):  # a native one is released as it is left
                    await self._pool.run(_let_go, own)
        except GatewayError as exc:
            split.fail(exc)
        except Exception:  # a task of its own: logged here, or never
            log.exception("a part of a retrieve failed")
            split.fail(BackendError("the retrieve from the PACS failed"))

    async def _sub_retrieve(
        self,
        assoc: Association | NativeAssociation,
        part: Target,
        split: Split,
        sink: Sink,
        deadline: float,
    ) -> RetrieveOutcome:
        """One C-GET / C-MOVE; C-CANCELled when the flight is, or when another part failed."""
        message_id = self._message_id()
        identifier = _retrieve_identifier(part)
        timeout = self._site.dimse_timeout
        if isinstance(assoc, NativeAssociation):
            assert isinstance(sink, CacheStore)
            if self._scp is None:
                with split.cancelling(_NativeCancel(assoc, message_id)):
                    return await assoc.c_get(
                        identifier, message_id, sink, split.stop, deadline, timeout
                    )
            assert isinstance(self._scp, NativeStorageSCP)
            await self._scp.serving()
            self._scp.register(message_id, sink)
            try:
                with split.cancelling(_NativeCancel(assoc, message_id)):
                    return await assoc.c_move(
                        identifier,
                        self._site.calling_aet,
                        message_id,
                        split.stop,
                        deadline,
                        timeout,
                    )
            finally:
                self._scp.unregister(message_id)
        if self._scp is None:
            canceller = Canceller(assoc, message_id, GET_MODEL)
            with split.cancelling(canceller):
                return await self._pool.run(
                    run_get, canceller, identifier, split.stop, deadline, timeout
                )
        assert isinstance(self._scp, StorageSCP) and not isinstance(sink, CacheStore)
        self._scp.register(message_id, sink)
        try:
            canceller = Canceller(assoc, message_id, MOVE_MODEL)
            with split.cancelling(canceller):
                return await self._pool.run(
                    run_move,
                    canceller,
                    identifier,
                    self._site.calling_aet,
                    split.stop,
                    deadline,
                    timeout,
                )
        finally:
            self._scp.unregister(message_id)

    async def _retrieve_plan(self, target: Target) -> tuple[ContextPlan, list[Target]]:
        """The presentation contexts to retrieve ``target`` with, from what it holds, and the
        parts to retrieve it in: a study's series (if it has several and the site retrieves
        in parallel), else the target itself.

        A C-FIND asks for its SOP classes (and stored transfer syntaxes, where the PACS says);
        each syntax they may be stored in gets a context of its own, so instances arrive as
        stored (PS3.4 C.4.3, PS3.8 9.3.2.2), the gateway SCP of each class (PS3.7 D.3.3.4).
        If the PACS cannot tell, or fails the query, a fixed list of classes is proposed (and
        the target is retrieved whole); if no association can be had, the retrieve fails here
        as it would have on its own. A study's series are asked for at the same time, on
        another association (if one is free then: else the study is retrieved whole).
        """
        leased = False
        held: Holdings | None = None
        series: asyncio.Task[list[str]] | None = None
        try:
            async with self._pool.lease() as assoc:
                leased = True
                if target.series is None and self._splits() > 1:  # the PACS answers: ask both
                    series = asyncio.get_running_loop().create_task(
                        self._study_series(target.study)
                    )
                self.counters.finds += 1
                held = await self._pool.run(
                    find_holdings,
                    assoc,
                    target.study,
                    target.series,
                    target.instance,
                    self._message_id(),
                    self._site.search_timeout,
                )
                if self._site.native_dimse:
                    # The retrieve runs on an association of its own: this one, idle in the
                    # pool meanwhile, would take ~15 % of a core polling (see _let_go).
                    await self._pool.run(_let_go, assoc)
        except GatewayError as exc:
            if not leased:
                raise
            log.info("retrieve planned without knowing all it holds: %s", exc)
        finally:
            uids = await series if series is not None else []  # never left running
        parts = [Target(target.study, uid) for uid in uids] if len(uids) > 1 else [target]
        return plan_retrieve(held, self._pool.query_plan), parts

    async def _study_series(self, study: str) -> list[str]:
        """The study's series, by a C-FIND on an association free now (released after it:
        see :func:`_let_go`); none if there is no such association, or the PACS cannot say
        (the study is then retrieved whole)."""
        try:
            async with self._pool.lease(wait=0) as assoc:
                self.counters.finds += 1
                uids = await self._pool.run(
                    find_series, assoc, study, self._message_id(), self._site.search_timeout
                )
                await self._pool.run(_let_go, assoc)
                return uids
        except GatewayError as exc:
            log.info("a study retrieved whole: its series unknown (%s)", exc)
            return []

    # ------------------------------------------------------------------ plumbing

    async def ping(self) -> None:
        async with self._pool.lease() as assoc:
            status = await self._pool.run(assoc.send_c_echo)
            if "Status" not in status or int(status.Status) != SUCCESS:
                raise BackendError("the PACS did not answer a C-ECHO")

    def stats(self) -> dict[str, int]:
        cache = self._cache.stats
        return {
            **{k: v for k, v in vars(self.counters).items() if isinstance(v, int)},
            "cache_entries": cache.entries,
            "cache_bytes": cache.bytes,
            "cache_evictions": cache.evictions,
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "associations_open": self._pool.open_associations,
            "flights_in_progress": len(self._flights),
            "association_threads": _association_threads(),
        }

    async def close(self) -> None:
        for flight in list(self._flights.values()):
            flight.abandon()
        if self._tasks:  # let each retrieve abort its association and clean up
            await asyncio.wait(self._tasks, timeout=self._site.dimse_timeout)
        if isinstance(self._scp, NativeStorageSCP):
            await self._scp.stop()
        elif self._scp is not None:
            self._scp.stop()
        await self._pool.close()
        self._cache.close()
        if self._own_cache_dir is not None:
            shutil.rmtree(self._own_cache_dir, ignore_errors=True)


# ---------------------------------------------------------------------- helpers


def _association_threads() -> int:
    """Live pynetdicom association threads in the process (every site's; the pooled ones
    included): one left running after its retrieve ended is a leak. Worker pools are not
    counted: their idle threads stay by design."""
    return sum(
        1
        for thread in threading.enumerate()
        if thread.is_alive()
        and (isinstance(thread, Association) or thread.name.startswith("dimse-abort"))
    )


_MODALITIES_IN_STUDY = 0x00080061
_MODALITY = 0x00080060


def _checked(
    datasets: list[DicomJson], query: QidoQuery, plan: FindPlan
) -> tuple[list[DicomJson], list[MatchKey]]:
    """The answers that really match, and the keys no answer carried a value to check."""
    keys = [
        k
        for k in query.keys
        if k.kind is not MatchKind.UNIVERSAL
        and k not in plan.lower_keys
        and not (query.fuzzymatching and k.vr == "PN")
    ]
    seen: set[MatchKey] = set()
    kept = []
    for dataset in datasets:
        present = [k for k in keys if _first(dataset, f"{k.path[0]:08X}") is not None]
        seen.update(present)
        if matches_all(dataset, present):
            kept.append(dataset)
    unchecked = [k for k in keys if k not in seen] if datasets else []
    return kept, unchecked


def _series_modality(key: MatchKey) -> MatchKey:
    return replace(key, path=(_MODALITY,))


def _as_series_modality(query: QidoQuery, key: MatchKey) -> QidoQuery:
    """``query`` with ModalitiesInStudy as a (relational) series-level Modality key."""
    keys = tuple(_series_modality(k) if k == key else k for k in query.keys)
    return replace(query, keys=keys)


def _selects(target: Target) -> Callable[[CachedInstance], bool]:
    def wanted(item: CachedInstance) -> bool:
        return (
            item.study == target.study
            and (target.series is None or item.series == target.series)
            and (target.instance is None or item.sop == target.instance)
        )

    return wanted


def _instance_path(item: CachedInstance) -> str:
    return f"studies/{item.study}/series/{item.series}/instances/{item.sop}"


def _part_headers(item: CachedInstance, syntax: str, base_url: str) -> dict[str, str]:
    return {
        "content-type": f"application/dicom; transfer-syntax={syntax}",
        "content-location": f"{base_url}/{_instance_path(item)}",
        "content-length": str(item.size),
    }


def _add_retrieve_url(dataset: DicomJson, level: Level, base_url: str) -> None:
    uids = [_first(dataset, UID_TAG[lv]) for lv in (Level.STUDY, Level.SERIES, Level.INSTANCE)]
    parts = ["studies", "series", "instances"][: level.depth + 1]
    if any(u is None for u in uids[: level.depth + 1]):
        return
    path = "/".join(f"{p}/{u}" for p, u in zip(parts, uids, strict=False))
    dataset["00081190"] = {"vr": "UR", "Value": [f"{base_url}/{path}"]}


def _first(dataset: DicomJson, tag: str) -> str | None:
    element = dataset.get(tag)
    if isinstance(element, dict) and element.get("Value"):
        return str(element["Value"][0])
    return None


def _retrieve_identifier(target: Target) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = (
        "IMAGE" if target.instance else "SERIES" if target.series else "STUDY"
    )
    identifier.StudyInstanceUID = target.study
    if target.series:
        identifier.SeriesInstanceUID = target.series
    if target.instance:
        identifier.SOPInstanceUID = target.instance
    return identifier


Sink = Callable[[Any], int] | CacheStore
"""Where a retrieve's C-STOREs go: a pynetdicom handler, or the native C-GET's receiver."""


@dataclass(frozen=True, slots=True)
class _NativeCancel:
    """C-CANCEL a native C-GET (on the event loop: its writes never block)."""

    assoc: NativeAssociation
    message_id: int

    def soon(self) -> None:
        self.assoc.cancel(self.message_id)


def _let_go(assoc: Association) -> None:
    """Release an association a split leased beyond what a whole retrieve needs (the
    series' C-FIND, a part's own), so that the pool does not keep it: an idle pynetdicom
    association is two threads each waking every millisecond (~8% of a core), and several
    left idle after each parallel retrieve slow everything the gateway does after it (a
    warm answer sent from the cache). Released, it is never put back idle (the pool keeps
    only established ones); a failure here costs nothing (the pool then aborts it)."""
    try:
        assoc.release()
    except Exception:
        log.debug("release failed", exc_info=True)


def _outcome_error(outcome: RetrieveOutcome, operation: str) -> GatewayError | None:
    """None if the PACS delivered everything (or we cancelled); else the error to raise.

    A warning (0xB000: some sub-operations failed) is an error too: once parts have gone
    out the stream is cut, so a partial study never looks complete.
    """
    if outcome.status == CANCEL or (outcome.status == SUCCESS and outcome.failed == 0):
        return None
    return error_for_status(outcome.status, operation)
