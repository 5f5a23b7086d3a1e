"""WADO-RS handlers (PS3.18 10.4): instances of a study/series/instance, and metadata."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing

from aiohttp import web

from ..backends.base import PartHead, RetrieveEvent, Target
from ..dicomweb import multipart
from ..dicomweb.media import InstanceMedia, negotiate_dicom_json, negotiate_instances
from ..dicomweb.uids import check_uid
from ..errors import GatewayError, NotFound
from .keys import ACTIVE_STREAMS, abort_connection, site_context
from .responses import json_response

__all__ = ["routes"]

log = logging.getLogger(__name__)


def _target(request: web.Request) -> Target:
    info = request.match_info
    series, instance = info.get("series"), info.get("instance")
    return Target(
        study=check_uid(info["study"], "StudyInstanceUID"),
        series=check_uid(series, "SeriesInstanceUID") if series else None,
        instance=check_uid(instance, "SOPInstanceUID") if instance else None,
    )


async def retrieve(request: web.Request) -> web.StreamResponse:
    """Study, series or instance as ``multipart/related; type="application/dicom"`` (10.4.1.1.1)."""
    media = negotiate_instances(request.headers.get("Accept"))
    context = site_context(request)
    target = _target(request)
    events = context.backend.retrieve(target, media, context.base_url)
    async with aclosing(events):
        # Pull the first part before sending headers: upstream 404/502/504 keep their status.
        first = await anext(events, None)
        if first is None:
            raise NotFound("no instances found", detail={"resource": target.path()})
        boundary = multipart.new_boundary()
        response = web.StreamResponse(headers={"Content-Type": media.content_type(boundary)})
        await response.prepare(request)
        streams = request.app[ACTIVE_STREAMS]
        transport = request.transport
        try:
            if transport is not None:
                streams.add(transport)
            await _stream(response, media, boundary, first, events)
        except ConnectionError:
            log.info("client went away during retrieve of %s", target.path())
        except Exception as exc:
            # Headers are gone: cut the connection so the truncated body never looks whole.
            reason = exc.message if isinstance(exc, GatewayError) else type(exc).__name__
            if not isinstance(exc, GatewayError):
                log.exception("retrieve of %s failed", target.path())
            log.warning("retrieve of %s cut short: %s", target.path(), reason)
            abort_connection(request)
        finally:
            if transport is not None:
                streams.discard(transport)
    return response


async def _stream(
    response: web.StreamResponse,
    media: InstanceMedia,
    boundary: str,
    first: RetrieveEvent,
    events: AsyncGenerator[RetrieveEvent, None],
) -> None:
    parts = 0
    event: RetrieveEvent | None = first
    while event is not None:
        if isinstance(event, PartHead):
            headers = dict(event.headers)
            # The backend names the syntax a part really carries; else, what was asked for.
            headers.setdefault("content-type", media.part_content_type())
            await response.write(
                multipart.part_header(boundary, _titled(headers), first=parts == 0)
            )
            parts += 1
        else:
            await response.write(event)
        event = await anext(events, None)
    await response.write(multipart.closing_delimiter(boundary, empty=parts == 0))
    await response.write_eof()


def _titled(headers: dict[str, str]) -> dict[str, str]:
    return {"-".join(w.capitalize() for w in k.split("-")): v for k, v in headers.items()}


async def metadata(request: web.Request) -> web.Response:
    """Metadata of a study, series or instance as DICOM JSON (10.4.1.1.2)."""
    media_type = negotiate_dicom_json(request.headers.get("Accept"))
    context = site_context(request)
    datasets = await context.backend.metadata(_target(request), context.base_url)
    return json_response(datasets, content_type=media_type)


def routes(prefix: str) -> list[web.RouteDef]:
    study = f"{prefix}/studies/{{study:[^/]+}}"
    series = f"{study}/series/{{series:[^/]+}}"
    instance = f"{series}/instances/{{instance:[^/]+}}"
    return [
        web.get(study, retrieve),
        web.get(series, retrieve),
        web.get(instance, retrieve),
        web.get(f"{study}/metadata", metadata),
        web.get(f"{series}/metadata", metadata),
        web.get(f"{instance}/metadata", metadata),
    ]
