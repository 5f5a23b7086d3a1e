"""The one protocol every PACS backend implements; handlers never learn which one they use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..dicomweb.query import QidoQuery

__all__ = [
    "Backend",
    "BodySpan",
    "DicomJson",
    "FileAnswer",
    "FilePart",
    "PartHead",
    "RetrieveEvent",
    "Scope",
    "SearchResult",
    "Target",
]

DicomJson = dict[str, Any]
"""One dataset in the DICOM JSON model (PS3.18 F.2)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """The UIDs in a QIDO path: ``/studies/{study}/series/{series}/instances``."""

    study: str | None = None
    series: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """What a WADO-RS request names: a study, a series in it, or an instance in that."""

    study: str
    series: str | None = None
    instance: str | None = None

    def path(self) -> str:
        """The resource path relative to a DICOMweb root (PS3.18 10.4.1)."""
        out = f"studies/{self.study}"
        if self.series is not None:
            out += f"/series/{self.series}"
            if self.instance is not None:
                out += f"/instances/{self.instance}"
        return out


@dataclass(frozen=True, slots=True)
class SearchResult:
    datasets: list[DicomJson]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FilePart:
    """One part of a retrieve as a local file, sent whole: its headers, file, size, syntax."""

    headers: Mapping[str, str]
    path: Path
    size: int
    syntax: str


class FileAnswer:
    """A retrieve's whole answer known before its first byte, every part a local file (a
    cache hit): the web layer may send it with a Content-Length and ``sendfile``.

    It rides on the first :class:`PartHead`. A consumer that sends the files itself calls
    :meth:`claim` before asking for the next event: the backend's stream then ends there
    (without the bodies), and the files stay in place until the returned release is called.
    Unclaimed, the stream goes on as usual, bodies as ``bytes``.
    """

    __slots__ = ("_hold", "claimed", "parts")

    def __init__(self, parts: Sequence[FilePart], hold: Callable[[], Callable[[], None]]) -> None:
        self.parts = parts
        self.claimed = False
        self._hold = hold  # keeps the files for the claimer; returns what lets them go

    def claim(self) -> Callable[[], None]:
        self.claimed = True
        return self._hold()


@dataclass(frozen=True, slots=True)
class PartHead:
    """Starts a new part of a multipart retrieve; the ``bytes`` that follow are its body."""

    headers: Mapping[str, str] = field(default_factory=dict)
    answer: FileAnswer | None = None
    """On the first part of an answer made wholly of local files (see :class:`FileAnswer`)."""


class BodySpan(ABC):
    """The next ``size`` bytes of the current part's body: ``prefix``, read already, then
    ``left`` bytes still unread in the PACS's connection, which the web layer may have the
    kernel move to the client (``into_pipe``, then ``splice``) instead of reading them into
    Python and writing them out again.

    Whoever takes it sends the prefix and reads (``read``, ``chunks``) or moves the rest;
    bytes left when the backend is asked for the next event are read and dropped there, so
    the stream stays whole.
    """

    __slots__ = ("left", "prefix", "size")

    def __init__(self, unread: int, prefix: Sequence[bytes | memoryview] = ()) -> None:
        self.prefix = tuple(prefix)
        self.left = unread  # not yet read or moved
        self.size = unread + sum(map(len, self.prefix))

    def __len__(self) -> int:
        return self.size

    @abstractmethod
    async def read(self, most: int) -> bytes:
        """Up to ``most`` (and at most ``left``) of the bytes, as soon as some are there."""

    @abstractmethod
    async def into_pipe(self, pipe: int, most: int) -> int:
        """Moves up to ``most`` of the bytes into the pipe (its write end, non-blocking) by
        ``splice``, once some are there; returns how many."""

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        """The prefix, then what is left of the span, read."""
        for piece in self.prefix:
            yield piece
        while self.left:
            yield await self.read(min(self.left, 1 << 20))

    async def drop(self) -> None:
        """Read and drop what its taker left (the prefix is read already)."""
        while self.left:
            await self.read(min(self.left, 1 << 20))


RetrieveEvent = PartHead | bytes | memoryview | BodySpan


class Backend(Protocol):
    """A PACS as the handlers see it.

    ``base_url`` is the gateway's public DICOMweb root for the site being served: every URL
    in an answer (RetrieveURL, BulkDataURI, Content-Location) must start with it.
    Errors are raised as :mod:`ncpeh_dicomweb.errors` types, never foreign exceptions.
    """

    async def search(self, query: QidoQuery, scope: Scope, base_url: str) -> SearchResult:
        """QIDO-RS (PS3.18 10.6)."""
        ...

    def retrieve(self, target: Target, base_url: str) -> AsyncGenerator[RetrieveEvent, None]:
        """WADO-RS instances (PS3.18 10.4) as the PACS stores them: a PartHead (its
        ``content-type`` names the part's transfer syntax), its body chunks, the next PartHead...
        Converting them to what the client asked for is the gateway's job, not the backend's.
        The first PartHead may carry a :class:`FileAnswer` (the answer is local files).

        The first event must come only once the PACS has accepted the request, so that a
        404/502/504 can still be answered with a status code. The iterator is closed
        (``aclose``) when the client goes away; it then releases everything it holds.
        """
        ...

    async def metadata(self, target: Target, base_url: str) -> list[DicomJson]:
        """WADO-RS metadata (PS3.18 10.4.1.1.2): bulk data as BulkDataURI."""
        ...

    def pacs_frames(
        self, target: Target, numbers: Sequence[int], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None] | None:
        """The PACS's own frames of an instance as it stores them (PS3.18 10.4.1.1.4), each
        part labelled ``media-type; transfer-syntax=UID``; None when the backend has none to
        offer or its local copy would serve faster. A failure before the first part lets
        the caller fall back to :meth:`instance_file`."""
        ...

    def instance_file(self, target: Target) -> AbstractAsyncContextManager[Path]:
        """One instance (``target`` names study, series and instance) as a local Part 10 file,
        exactly as the PACS stores it, for pixel work (frames, bulk data, render, transcode).

        The file stays in place until the block ends. NotFound if the PACS has no such
        instance. Repeated and concurrent asks should not each reach the PACS.
        """
        ...

    async def ping(self) -> None:
        """Raise a BackendError if the PACS cannot be reached."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for operators (no patient data): what was asked of the PACS, cache use."""
        ...

    async def close(self) -> None: ...
