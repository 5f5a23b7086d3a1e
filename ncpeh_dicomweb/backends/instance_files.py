"""Instances of a DICOMweb PACS kept on local disk, as stored, for pixel work.

Frames, bulk data, rendered images and transcoding read a Part 10 file. Fetching it once
(``transfer-syntax=*``) and keeping it in a bounded LRU (:class:`~.cache.InstanceCache`) means a
viewer that asks for thirty frames of one instance costs the PACS one retrieve; concurrent
requests for the same instance share that retrieve (single flight).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

from ..errors import BackendError
from .base import BodySpan, PartHead, RetrieveEvent, Target
from .cache import CachedInstance, CacheStats, InstanceCache

__all__ = ["InstanceFiles"]

Fetch = Callable[[], AsyncGenerator[RetrieveEvent, None]]
_Key = tuple[str, str, str]


class InstanceFiles:
    def __init__(self, site_id: str, max_bytes: int) -> None:
        self._root = Path(tempfile.mkdtemp(prefix=f"ncpeh-instances-{site_id}-"))
        self._cache = InstanceCache(self._root, max_bytes)
        self._fetching: dict[_Key, asyncio.Task[None]] = {}
        self.fetches = 0
        self.joins = 0  # requests that waited for a fetch already under way

    @property
    def stats(self) -> CacheStats:
        return self._cache.stats

    def has(self, target: Target) -> bool:
        """Whether the instance is on disk now (it may still be evicted before use)."""
        if target.series is None or target.instance is None:
            return False
        return self._cache.get(target.study, target.series, target.instance) is not None

    @asynccontextmanager
    async def open(self, target: Target, fetch: Fetch) -> AsyncIterator[Path]:
        """The instance's file, fetched with ``fetch`` unless kept; it stays while in use."""
        if target.series is None or target.instance is None:
            raise ValueError("an instance file needs a series and an instance UID")
        item = await self._pinned((target.study, target.series, target.instance), fetch)
        try:
            yield item.path
        finally:
            self._cache.unpin([item])

    async def _pinned(self, key: _Key, fetch: Fetch) -> CachedInstance:
        for _ in range(3):  # evicted between fetch and pin only under heavy churn
            item = self._cache.get(*key, pin=True)
            if item is not None:
                return item
            task = self._fetching.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._fetch(key, fetch))
                self._fetching[key] = task
                task.add_done_callback(lambda t: self._done(key, t))
            else:
                self.joins += 1
            # Shielded: a client that goes away does not cancel a fetch others may share.
            await asyncio.shield(task)
        raise BackendError("the instance could not be kept long enough to be used")

    def _done(self, key: _Key, task: asyncio.Task[None]) -> None:
        self._fetching.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter has seen it, or none is left to

    async def _fetch(self, key: _Key, fetch: Fetch) -> None:
        self.fetches += 1
        with self._cache.writer(*key) as writer:
            parts = 0
            async with aclosing(fetch()) as events:
                async for event in events:
                    if isinstance(event, PartHead):
                        parts += 1
                        if parts > 1:
                            raise BackendError("the PACS sent more than one instance")
                    elif isinstance(event, BodySpan):
                        async for chunk in event.chunks():
                            writer.write(chunk)
                    else:
                        writer.write(event)
            if parts != 1:
                raise BackendError("the PACS sent no instance")
            writer.commit()

    async def close(self) -> None:
        for task in list(self._fetching.values()):
            task.cancel()
        if self._fetching:
            await asyncio.wait(list(self._fetching.values()))
        self._cache.close()
        shutil.rmtree(self._root, ignore_errors=True)
