"""WADO-RS metadata kept as encoded JSON, so a viewer's repeat load is cheap (PS3.18 10.4.1.1.2).

Freshness: an entry lives ``ttl`` seconds, then the PACS is asked again. Within that time a new
instance stored in the PACS is not seen: the TTL is the bound on staleness (short by default;
a study being viewed rarely changes). Each entry carries a strong ETag (a hash of its bytes)
and the time it was built (Last-Modified), so a client revalidating gets a 304 with no body.
Bounded in bytes (LRU).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MetadataCache", "MetadataEntry"]

_ABOUT = ("0020000D", "00100020", "00100021")  # StudyInstanceUID, PatientID, its issuer


@dataclass(frozen=True, slots=True)
class MetadataEntry:
    body: bytes
    etag: str
    built: float  # time.time() when built: Last-Modified
    expires: float  # time.monotonic() deadline
    # The study and patient it is about (their identifiers only), for the audit.
    about: dict[str, Any] | None = None


class MetadataCache:
    def __init__(self, max_bytes: int, ttl: float) -> None:
        self._entries: OrderedDict[tuple[str, ...], MetadataEntry] = OrderedDict()
        self._bytes = 0
        self.max_bytes, self.ttl = max_bytes, ttl
        self.hits = self.misses = 0

    def get(self, key: tuple[str, ...]) -> MetadataEntry | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires < time.monotonic():
            if entry is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(
        self, key: tuple[str, ...], body: bytes, *, about: Mapping[str, Any] | None = None
    ) -> MetadataEntry:
        """Keep ``body``; ``about``, a dataset of it, gives the identifiers the audit needs."""
        entry = MetadataEntry(
            body,
            '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"',
            time.time(),
            time.monotonic() + self.ttl,
            None if about is None else {t: about[t] for t in _ABOUT if t in about},
        )
        if key in self._entries:
            self._drop(key)
        if len(body) <= self.max_bytes and self.ttl > 0:
            self._entries[key] = entry
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        return entry

    def _drop(self, key: tuple[str, ...]) -> None:
        self._bytes -= len(self._entries.pop(key).body)
