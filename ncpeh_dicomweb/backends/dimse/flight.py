"""One retrieval from the PACS, shared by every request that wants its instances.

Instances land in the on-disk cache as the PACS sends them; each follower walks the list of
arrived instances from the start (replay), then waits for more. The PACS is never asked twice
for the same study at once, and no instance is held in memory.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable

from ...errors import GatewayError
from ..cache import CachedInstance

__all__ = ["Flight"]


class Flight:
    """Arrived instances stay pinned in the cache (``release`` unpins them) until the retrieval
    has ended *and* its last follower has read them: a slow client never finds a file evicted.
    """

    def __init__(self, release: Callable[[list[CachedInstance]], None]) -> None:
        self.items: list[CachedInstance] = []
        self._release = release
        self._released = False
        self.done = False
        self.error: GatewayError | None = None
        self.cancel = threading.Event()  # read by the DIMSE thread
        self._changed = asyncio.Event()
        self._followers = 0
        self._on_cancel: Callable[[], None] | None = None

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) when every follower has gone before the end."""
        self._on_cancel = callback
        if self.cancel.is_set():
            callback()

    # ------------------------------------------------------------ producer side (event loop)

    def add(self, item: CachedInstance) -> None:
        self.items.append(item)
        self._wake()

    def finish(self, error: GatewayError | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()
        self._release_if_idle()

    def _release_if_idle(self) -> None:
        if self.done and self._followers == 0 and not self._released:
            self._released = True
            self._release(self.items)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ------------------------------------------------------------ consumer side

    async def follow(
        self, wanted: Callable[[CachedInstance], bool]
    ) -> AsyncGenerator[CachedInstance, None]:
        """Each instance ``wanted`` selects, those already here first; raises any flight error."""
        self._followers += 1
        try:
            index = 0
            while True:
                while index < len(self.items):
                    item = self.items[index]
                    index += 1
                    if wanted(item):
                        yield item
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            self._followers -= 1
            if self._followers == 0 and not self.done:
                # Everyone who wanted it has gone: stop the PACS sending more.
                self.abandon()
            self._release_if_idle()

    def abandon(self) -> None:
        """Stop the retrieval: the DIMSE thread sees ``cancel``, the association is aborted."""
        if not self.cancel.is_set():
            self.cancel.set()
            if self._on_cancel is not None:
                self._on_cancel()
