"""A bounded process pool for pixel work (decode, transcode, render).

Codecs hold the GIL and can take seconds on a large image: in worker processes they never
stall the event loop. At most ``workers`` jobs run and at most ``queue`` more wait; a request
beyond that waits for a slot, so a burst of renders cannot grow memory without bound.
Workers are started by ``forkserver``: forking a process that runs pynetdicom threads could
copy a held lock into the child. Workers are not recycled (``max_tasks_per_child``): on
Python 3.11 a pool that replaces its workers can hang for good (seen here under load).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

__all__ = ["ImagingPool"]

T = TypeVar("T")


def _quiet_worker() -> None:
    """Workers report through the exceptions they raise: pydicom's own logging (a traceback
    when a codec fails) and warnings about odd files would reach the gateway's stderr."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")


class ImagingPool:
    def __init__(self, workers: int, queue: int) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._workers = max(1, workers)
        self._slots = asyncio.Semaphore(self._workers + max(0, queue))
        self.jobs = 0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker process (``fn`` and ``args`` must pickle)."""
        async with self._slots:
            loop = asyncio.get_running_loop()
            self.jobs += 1
            return await loop.run_in_executor(self._pool(), fn, *args)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:  # started on first use: most requests need no pixels
            self._executor = ProcessPoolExecutor(
                self._workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_quiet_worker,
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
