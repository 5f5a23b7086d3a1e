"""Requests to a site's backend, counted where handlers call it: the Backend protocol.

Each call of :class:`~ncpeh_dicomweb.backends.base.Backend` is one
``ncpeh_backend_requests_total{site, operation, outcome}``; the outcome is ``ok`` or the code of
the error the backend raised (its faults are already mapped to our error tree, so the codes are
a short fixed list: ``not-found``, ``pacs-unreachable``, ``pacs-timeout``, ``pacs-busy``,
``bad-gateway``...), ``abandoned`` for a retrieve the client left, ``internal-error`` for a bug.
A retrieve's outcome is known when its stream ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from pathlib import Path

from prometheus_client import Counter

from ..backends.base import Backend, DicomJson, RetrieveEvent, Scope, SearchResult, Target
from ..dicomweb.query import QidoQuery
from ..errors import GatewayError

__all__ = ["MeteredBackend", "outcome_of"]


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, GatewayError):
        return exc.code
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return "abandoned"
    return "internal-error"


class MeteredBackend:
    """``inner``, its calls counted in ``requests`` (labels: site, operation, outcome)."""

    def __init__(self, inner: Backend, site: str, requests: Counter) -> None:
        self.inner = inner
        self._site = site
        self._requests = requests
        self._counted: dict[tuple[str, str], Counter] = {}  # labels() looked up once each

    def _count(self, operation: str, outcome: str) -> None:
        key = (operation, outcome)
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = self._requests.labels(self._site, operation, outcome)
        child.inc()

    async def search(self, query: QidoQuery, scope: Scope, base_url: str) -> SearchResult:
        try:
            result = await self.inner.search(query, scope, base_url)
        except BaseException as exc:
            self._count("search", outcome_of(exc))
            raise
        self._count("search", "ok")
        return result

    async def metadata(self, target: Target, base_url: str) -> list[DicomJson]:
        try:
            result = await self.inner.metadata(target, base_url)
        except BaseException as exc:
            self._count("metadata", outcome_of(exc))
            raise
        self._count("metadata", "ok")
        return result

    def retrieve(self, target: Target, base_url: str) -> AsyncGenerator[RetrieveEvent, None]:
        return self._stream("retrieve", self.inner.retrieve(target, base_url))

    def pacs_frames(
        self, target: Target, numbers: Sequence[int], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None] | None:
        frames = self.inner.pacs_frames(target, numbers, base_url)
        return None if frames is None else self._stream("frames", frames)

    async def _stream(
        self, operation: str, events: AsyncGenerator[RetrieveEvent, None]
    ) -> AsyncGenerator[RetrieveEvent, None]:
        outcome = "ok"
        try:
            async with aclosing(events):
                async for event in events:
                    yield event
        except BaseException as exc:  # GeneratorExit too: the client went away
            outcome = outcome_of(exc)
            raise
        finally:
            self._count(operation, outcome)

    def instance_file(self, target: Target) -> AbstractAsyncContextManager[Path]:
        return self._instance_file(target)

    @asynccontextmanager
    async def _instance_file(self, target: Target) -> AsyncIterator[Path]:
        opened = False
        try:
            async with self.inner.instance_file(target) as path:
                opened = True
                self._count("instance_file", "ok")
                yield path
        except BaseException as exc:
            if not opened:  # what the caller does with the file is not the backend's doing
                self._count("instance_file", outcome_of(exc))
            raise

    async def ping(self) -> None:
        try:
            await self.inner.ping()
        except BaseException as exc:
            self._count("ping", outcome_of(exc))
            raise
        self._count("ping", "ok")

    def stats(self) -> dict[str, int]:
        return self.inner.stats()

    async def close(self) -> None:
        await self.inner.close()
