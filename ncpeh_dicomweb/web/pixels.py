"""WADO-RS pixel resources (PS3.18 10.4.1.1.3-5): frames, bulk data, rendered, thumbnail.

Each works on the instance as stored, which the site's backend keeps as a local file
(``Backend.instance_file``); the pixel work itself is in :mod:`ncpeh_dicomweb.imaging`, the
costly part (decoding, rendering) in the bounded process pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from pathlib import Path

from aiohttp import web

from ..backends.base import Backend, PartHead, RetrieveEvent, Scope, Target
from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import first_value
from ..dicomweb.media import FrameMedia, negotiate_bulk, negotiate_frames, negotiate_rendered
from ..dicomweb.part10 import identity_of
from ..dicomweb.query import parse_qido
from ..errors import (
    BackendBusy,
    BackendTimeout,
    BackendUnreachable,
    BadRequest,
    GatewayError,
    NotAcceptable,
    NotFound,
)
from ..imaging.bulkdata import PIXEL_DATA, parse_bulk_path, read_bulk
from ..imaging.frames import PixelLayout, decode_frame, parse_frame_list, pixel_layout, read_frame
from ..imaging.pool import ImagingPool
from ..imaging.render import parse_render_params, render
from ..imaging.transcode import decodable
from .audit import note_identity
from .keys import IMAGING_POOL, SiteContext, accept_of, site_context
from .streaming import stream_parts
from .transcoding import part_syntax
from .wado import study_guard, target_of

__all__ = ["routes"]

_SERIES, _SOP = "0020000E", "00080018"
_SERIES_NUMBER, _INSTANCE_NUMBER, _ROWS = "00200011", "00200013", "00280010"


def _frame_numbers(request: web.Request) -> tuple[int, ...]:
    try:
        return parse_frame_list(request.match_info["frames"])
    except ValueError as exc:
        raise BadRequest(str(exc), detail={"parameter": "frames"}) from None


async def frames(request: web.Request) -> web.StreamResponse:
    """Frames of an instance, in the order asked (10.4.1.1.4)."""
    numbers = _frame_numbers(request)
    context = site_context(request)
    target = target_of(request)
    async with study_guard(request, context, target):
        return await _frames(request, context, target, numbers)


async def _frames(
    request: web.Request, context: SiteContext, target: Target, numbers: Sequence[int]
) -> web.StreamResponse:
    passed = await _pacs_frames(request, context.backend, target, numbers, context.base_url)
    if passed is not None:
        return passed
    async with context.backend.instance_file(target) as path:
        layout = await asyncio.to_thread(pixel_layout, path)
        note_identity(request, layout.identity)
        for number in numbers:
            _check_frame(layout, number)
        media = negotiate_frames(
            accept_of(request),
            layout.transfer_syntax,
            allow_single_part=len(numbers) == 1,
            can_decode=decodable,
        )
        location = f"{context.base_url}/{target.path()}/frames"
        return await _send_frames(request, path, layout, numbers, media, location)


async def _send_frames(
    request: web.Request,
    path: Path,
    layout: PixelLayout,
    numbers: Sequence[int],
    media: FrameMedia,
    location: str,
    *,
    per_frame: bool = True,
) -> web.StreamResponse:
    """``location`` names each part: ``{location}/{n}`` per frame, or as it is (``per_frame``
    False: the BulkDataURI a bulk data retrieve was asked by, PS3.18 10.4.3.3.5)."""
    pool = request.app[IMAGING_POOL]
    if not media.multipart:  # one frame asked for, single-part preferred
        body = await _frame(pool, path, layout, numbers[0], media)
        return web.Response(body=body, headers={"Content-Type": media.part_content_type()})
    return await stream_parts(
        request,
        _frame_parts(pool, path, layout, numbers, media, location, per_frame),
        content_type=media.content_type,
        part_type=media.part_content_type(),
        what=f"frames of {location}",
    )


async def _frame(
    pool: ImagingPool, path: Path, layout: PixelLayout, number: int, media: FrameMedia
) -> bytes:
    if media.decode:
        return await pool.run(decode_frame, path, number)
    return await asyncio.to_thread(read_frame, path, layout, number)


async def _pacs_frames(
    request: web.Request, backend: Backend, target: Target, numbers: Sequence[int], base_url: str
) -> web.StreamResponse | None:
    """The PACS's own frames, passed through when they are exactly what the gateway would send
    from the instance as stored (the syntax the client accepts, nothing to decode); None to
    let the caller work from the instance file instead (PACS refusal or failure included)."""
    events = backend.pacs_frames(target, numbers, base_url)
    if events is None:
        return None
    try:
        first = await anext(events, None)
    except (BackendUnreachable, BackendTimeout, BackendBusy):
        await events.aclose()
        raise  # the instance file would have to come from the same PACS
    except GatewayError:
        await events.aclose()
        return None
    stored = part_syntax(first) if isinstance(first, PartHead) else None
    if first is None or stored is None:
        await events.aclose()
        return None
    try:
        media = negotiate_frames(accept_of(request), stored, allow_single_part=False)
    except GatewayError:
        media = None
    if media is None or media.decode or media.transfer_syntax != stored:
        await events.aclose()
        return None
    return await stream_parts(
        request,
        _chained(first, events),
        content_type=media.content_type,
        part_type=media.part_content_type(),
        what=f"frames of {target.path()}",
    )


async def _chained(
    first: RetrieveEvent, rest: AsyncGenerator[RetrieveEvent, None]
) -> AsyncGenerator[RetrieveEvent, None]:
    async with aclosing(rest):
        yield first
        async for event in rest:
            yield event


def _check_frame(layout: PixelLayout, number: int) -> None:
    if number > layout.frames:
        raise NotFound(
            f"frame {number} is beyond the instance's {layout.frames} frame(s)",
            detail={"frame": number, "frames": layout.frames},
        )


async def _frame_parts(
    pool: ImagingPool,
    path: Path,
    layout: PixelLayout,
    numbers: Sequence[int],
    media: FrameMedia,
    location: str,
    per_frame: bool,
) -> AsyncGenerator[RetrieveEvent, None]:
    for number in numbers:
        body = await _frame(pool, path, layout, number, media)
        yield PartHead(
            {
                "content-type": media.part_content_type(),
                "content-length": str(len(body)),
                "content-location": f"{location}/{number}" if per_frame else location,
            }
        )
        yield body


async def bulkdata(request: web.Request) -> web.StreamResponse:
    """A bulk data value named by a BulkDataURI the gateway wrote (10.4.1.1.5).

    Pixel Data is answered as its frames (in the syntax negotiated as for frames); any other
    value as ``application/octet-stream``, in a multipart body or on its own as asked.
    """
    try:
        where = parse_bulk_path(request.match_info["path"])
    except ValueError as exc:
        raise BadRequest(str(exc), detail={"parameter": "bulkdata"}) from None
    context = site_context(request)
    target = target_of(request)
    accept = accept_of(request)
    async with study_guard(request, context, target), context.backend.instance_file(target) as path:
        if where == ((PIXEL_DATA, 0),):
            layout = await asyncio.to_thread(pixel_layout, path)
            note_identity(request, layout.identity)
            media = negotiate_frames(
                accept,
                layout.transfer_syntax,
                allow_single_part=layout.frames == 1,
                can_decode=decodable,
            )
            numbers = range(1, layout.frames + 1)
            location = f"{context.base_url}/{target.path()}/bulk/{request.match_info['path']}"
            return await _send_frames(
                request, path, layout, numbers, media, location, per_frame=False
            )
        bulk = negotiate_bulk(accept)
        value = await asyncio.to_thread(read_bulk, path, where)
    if not bulk.multipart:
        return web.Response(body=value, headers={"Content-Type": bulk.part_content_type()})
    return await stream_parts(
        request,
        _one_part(value, bulk.part_content_type()),
        content_type=bulk.content_type,
        part_type=bulk.part_content_type(),
        what=f"bulk data of {target.path()}",
    )


async def _one_part(value: bytes, content_type: str) -> AsyncGenerator[RetrieveEvent, None]:
    yield PartHead({"content-type": content_type, "content-length": str(len(value))})
    yield value


async def rendered(request: web.Request) -> web.Response:
    """A rendered image of a study, series, instance or frame (10.4.1.1.3)."""
    return await _render(request, thumbnail=False)


async def thumbnail(request: web.Request) -> web.Response:
    """A small rendered image of a study, series, instance or frame (10.4.1.1.3.2)."""
    return await _render(request, thumbnail=True)


async def _render(request: web.Request, *, thumbnail: bool) -> web.Response:
    media_type = negotiate_rendered(accept_of(request))
    params = parse_render_params(list(request.query.items()), media_type, thumbnail=thumbnail)
    frame = 1
    if "frames" in request.match_info:
        numbers = _frame_numbers(request)
        if len(numbers) != 1:
            raise BadRequest("a rendered frame names one frame", detail={"parameter": "frames"})
        frame = numbers[0]
    context = site_context(request)
    asked = target_of(request)
    async with study_guard(request, context, asked):
        target = await _representative(context.backend, asked, context.base_url)
        async with context.backend.instance_file(target) as path:
            body = await request.app[IMAGING_POOL].run(render, path, frame, params)
            note_identity(request, await asyncio.to_thread(identity_of, str(path)))
    return web.Response(body=body, headers={"Content-Type": media_type})


async def _representative(backend: Backend, target: Target, base_url: str) -> Target:
    """The instance that stands for a study or series: the middle image of its first series
    (by Series Number), as a viewer's thumbnail would show (PS3.18 leaves the choice open)."""
    if target.instance is not None:
        return target
    query = parse_qido(
        [("includefield", _SERIES_NUMBER), ("includefield", _INSTANCE_NUMBER)], Level.INSTANCE
    )
    found = await backend.search(query, Scope(target.study, target.series), base_url)
    images = [d for d in found.datasets if first_value(d, _ROWS) is not None]
    if not images:
        if found.datasets:
            raise NotAcceptable("nothing here can be rendered: no image", detail={})
        raise NotFound("no such study or series")
    first_series = first_value(min(images, key=lambda d: _number(d, _SERIES_NUMBER)), _SERIES)
    series = [d for d in images if first_value(d, _SERIES) == first_series]
    series.sort(key=lambda d: _number(d, _INSTANCE_NUMBER))
    chosen = series[len(series) // 2]
    return Target(target.study, str(first_series), str(first_value(chosen, _SOP)))


def _number(dataset: dict[str, object], tag: str) -> float:
    value = first_value(dataset, tag)
    try:
        return float(value) if value is not None else float("inf")
    except (TypeError, ValueError):
        return float("inf")


def routes(prefix: str) -> list[web.RouteDef]:
    study = f"{prefix}/studies/{{study:[^/]+}}"
    series = f"{study}/series/{{series:[^/]+}}"
    instance = f"{series}/instances/{{instance:[^/]+}}"
    frame_list = f"{instance}/frames/{{frames:[^/]+}}"
    out = [
        web.get(frame_list, frames),
        web.get(f"{instance}/bulk/{{path:[0-9A-Fa-f/]+}}", bulkdata),
    ]
    for resource in (study, series, instance, frame_list):
        out.append(web.get(f"{resource}/rendered", rendered))
        out.append(web.get(f"{resource}/thumbnail", thumbnail))
    return out
