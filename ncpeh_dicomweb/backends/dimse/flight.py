"""One retrieval from the PACS, shared by every request that wants its instances.

Instances land in the on-disk cache as the PACS sends them; each follower walks the list of
arrived instances from the start (replay), then waits for more. The PACS is never asked twice
for the same study at once, and no instance is held in memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable

from ...errors import GatewayError
from ..cache import CachedInstance

__all__ = ["WINDOW", "Flight"]

WINDOW = 32 << 20
"""Bytes the PACS may run ahead of the fastest client before its C-STOREs are held back."""


class Flight:
    """Arrived instances stay pinned in the cache (``release`` unpins them) until the retrieval
    has ended *and* its last follower has read them: a slow client never finds a file evicted.
    """

    def __init__(self, release: Callable[[list[CachedInstance]], None]) -> None:
        self.items: list[CachedInstance] = []
        self.done = False
        self.error: GatewayError | None = None
        self.cancel = threading.Event()  # read by the DIMSE thread: stop, C-CANCEL
        self.foreign = 0  # instances the PACS sent that were not under the target: refused
        self._release = release
        self._released = False
        self._on_cancel: Callable[[], None] | None = None
        self._on_arrival: Callable[[], None] | None = None
        self._changed = asyncio.Event()
        self._followers = 0
        # back-pressure between the DIMSE thread (arrived) and the clients (read)
        self._room = threading.Condition()
        self._arrived = 0
        self._read = 0
        self._read_moved = asyncio.Event()  # for :meth:`room`, on the event loop

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (the C-CANCEL) as soon as the flight is cancelled."""
        self._on_cancel = callback
        if self.cancel.is_set():
            callback()

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the first instance has arrived (now if one has)."""
        if self.items:
            callback()
        else:
            self._on_arrival = callback

    # ------------------------------------------------------------ producer side

    def add(self, item: CachedInstance) -> None:
        """(event loop) A new instance is in the cache, pinned for this flight."""
        if self._released:  # arrived after the end (a late C-STORE): nobody will read it
            self._release([item])
            return
        self.items.append(item)
        self._wake()
        if self._on_arrival is not None:
            arrived, self._on_arrival = self._on_arrival, None
            arrived()

    def wait_for_room(self, size: int, timeout: float) -> None:
        """(DIMSE thread) Hold the PACS back while the clients are a WINDOW behind."""
        deadline = time.monotonic() + timeout
        with self._room:
            self._arrived += size
            while self._arrived - self._read > WINDOW and not self.cancel.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return  # the PACS must get its answer before its own timeout
                self._room.wait(min(remaining, 0.5))

    async def room(self, size: int, max_wait: float) -> None:
        """(event loop) :meth:`wait_for_room` for a receiver running on the loop."""
        with self._room:
            self._arrived += size
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while self._arrived - self._read > WINDOW and not self.cancel.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return  # the PACS must get its answer before its own timeout
            self._read_moved.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._read_moved.wait()
            except TimeoutError:
                return

    def finish(self, error: GatewayError | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()
        self._release_if_idle()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _release_if_idle(self) -> None:
        if self.done and self._followers == 0 and not self._released:
            self._released = True
            self._release(self.items)

    def _progress(self, read: int) -> None:
        with self._room:
            if read > self._read:
                self._read = read
                self._room.notify_all()
        self._read_moved.set()

    # ------------------------------------------------------------ consumer side

    async def follow(
        self, wanted: Callable[[CachedInstance], bool]
    ) -> AsyncGenerator[CachedInstance, None]:
        """Each instance ``wanted`` selects, those already here first; raises any flight error."""
        self._followers += 1
        try:
            index = 0
            read = 0
            while True:
                while index < len(self.items):
                    item = self.items[index]
                    index += 1
                    if wanted(item):
                        yield item
                    read += item.size  # the client has asked for what comes next
                    self._progress(read)
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            self._followers -= 1
            if self._followers == 0 and not self.done:
                self.abandon()  # everyone who wanted it has gone: stop the PACS
            self._release_if_idle()

    def abandon(self) -> None:
        """Stop the retrieval: C-CANCEL now, refuse what still comes, never make it wait."""
        if self.cancel.is_set():
            return
        self.cancel.set()
        self._progress(self._arrived)
        if self._on_cancel is not None:
            self._on_cancel()
