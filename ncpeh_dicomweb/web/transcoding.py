"""Instances as the backend delivers them (as stored) → instances in the syntax the client chose.

A part already in the wanted syntax streams straight through. Any other part is spooled to a
temporary file, transcoded in the imaging pool (:func:`ncpeh_dicomweb.imaging.transcode.transcode`)
and streamed from the result, so memory holds one chunk, never one instance. A part the
gateway cannot convert (video, say) is sent as stored and labelled as such: whether a syntax is
producible was decided before the response started, from the table, so the stream is never cut
for it (PS3.18 8.7.3.5.2: each part says what it carries). A retrieve of one instance is the
exception: its only part is converted before anything is sent, so an instance that cannot be
given in the one syntax asked for is 406, as the client asked.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import BinaryIO

from ..backends.base import BodySpan, PartHead, RetrieveEvent
from ..backends.dimse.instances import file_chunks
from ..dicomweb.transfer_syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, TRANSFER_SYNTAXES
from ..errors import NotAcceptable
from ..imaging.pool import ImagingPool
from ..imaging.transcode import producible, transcode

__all__ = ["part_syntax", "sent_syntax", "transcoded"]

log = logging.getLogger(__name__)


def part_syntax(head: PartHead) -> str | None:
    """The ``transfer-syntax`` parameter of a part's Content-Type, if it names one."""
    content_type = head.headers.get("content-type", "")
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transfer-syntax":
            return value.strip().strip('"') or None
    return None


def sent_syntax(stored: str, wanted: str) -> str:
    """What a part stored as ``stored`` is sent as when ``wanted`` was negotiated: ``*`` keeps
    it as stored, except the syntaxes PS3.18 8.7.3 keeps off the web (Implicit VR, Big
    Endian), which become Explicit VR Little Endian."""
    if wanted != "*":
        return wanted
    info = TRANSFER_SYNTAXES.get(stored)
    return EXPLICIT_VR_LITTLE_ENDIAN if info is not None and not info.web else stored


async def transcoded(
    events: AsyncGenerator[RetrieveEvent, None],
    wanted: str,
    pool: ImagingPool,
    *,
    single: bool = False,
) -> AsyncGenerator[RetrieveEvent, None]:
    """``events`` (each part labelled with the syntax it carries) with every part that can be
    converted turned into ``wanted`` (a UID, or ``*``: as stored where the web allows).
    ``single``: the retrieve of one instance: one that cannot be converted is NotAcceptable."""
    async with aclosing(events):
        head: PartHead | None = None
        spool: _Spool | None = None
        try:
            async for event in events:
                if isinstance(event, PartHead):
                    if head is not None and spool is not None:
                        async with aclosing(_converted(head, spool, pool, single)) as out:
                            async for piece in out:
                                yield piece
                        spool.drop()
                        spool = None
                    head = event
                    stored = part_syntax(event)
                    target = wanted if stored is None else sent_syntax(stored, wanted)
                    if stored is None or stored == target or not producible(stored, target):
                        if single and stored is not None and stored != target:
                            raise _unconvertible(stored, target)
                        if stored is not None and stored != target:
                            log.warning("an instance stored as %s sent as stored", stored)
                        head = None
                        yield event
                    else:
                        spool = _Spool(target)
                elif spool is not None:
                    if isinstance(event, BodySpan):
                        async for chunk in event.chunks():
                            spool.write(chunk)
                    else:
                        spool.write(event)
                else:
                    yield event
            if head is not None and spool is not None:
                async with aclosing(_converted(head, spool, pool, single)) as out:
                    async for piece in out:
                        yield piece
        finally:
            if spool is not None:
                spool.drop()


class _Spool:
    """A temporary file one part is written to before it is transcoded."""

    def __init__(self, target: str) -> None:
        self.target = target
        fd, name = tempfile.mkstemp(prefix="ncpeh-spool-", suffix=".dcm")
        self.path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        self._file.write(data)

    def close(self) -> Path:
        if self._file is not None:
            self._file.close()
            self._file = None
        return self.path

    def drop(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _unconvertible(stored: str, target: str) -> NotAcceptable:
    return NotAcceptable(
        "the instance cannot be given in the transfer syntax asked for",
        detail={"stored": stored, "asked": target},
    )


async def _converted(
    head: PartHead, spool: _Spool, pool: ImagingPool, single: bool
) -> AsyncGenerator[RetrieveEvent, None]:
    source = spool.close()
    with _temporary() as target:
        try:
            written = await pool.run(transcode, source, target, spool.target)
        except NotAcceptable as exc:
            if single:
                raise _unconvertible(part_syntax(head) or "unknown", spool.target) from None
            # This file cannot be converted (truncated, float pixels...): it goes as stored,
            # labelled as such, rather than cutting a study that is otherwise whole.
            log.warning("an instance sent as stored: %s", exc.message)
            yield head
            async with aclosing(file_chunks(source)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        headers = dict(head.headers)
        headers["content-type"] = f"application/dicom; transfer-syntax={written}"
        headers["content-length"] = str(target.stat().st_size)
        yield PartHead(headers)
        async with aclosing(file_chunks(target)) as chunks:
            async for chunk in chunks:
                yield chunk


@contextmanager
def _temporary() -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="ncpeh-transcoded-", suffix=".dcm")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
