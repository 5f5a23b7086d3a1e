"""WADO-RS handlers (PS3.18 10.4): instances of a study/series/instance, and metadata."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from email.utils import formatdate

import orjson
from aiohttp import web

from ..backends.base import Target
from ..dicomweb.media import (
    DICOM_XML_MULTIPART,
    negotiate_dicom_json,
    negotiate_instances,
)
from ..dicomweb.uids import check_uid
from ..imaging.transcode import encodable
from .audit import note_datasets, patient_peek
from .auth import patient_study
from .keys import IMAGING_POOL, METADATA_CACHE, SiteContext, accept_of, site_context
from .metrics import add_body_bytes
from .responses import dicom_response
from .streaming import stream_parts
from .transcoding import sent_syntax, transcoded

__all__ = ["routes", "study_guard", "target_of"]


def target_of(request: web.Request) -> Target:
    info = request.match_info
    series, instance = info.get("series"), info.get("instance")
    return Target(
        study=check_uid(info["study"], "StudyInstanceUID"),
        series=check_uid(series, "SeriesInstanceUID") if series else None,
        instance=check_uid(instance, "SOPInstanceUID") if instance else None,
    )


def study_guard(
    request: web.Request, context: SiteContext, target: Target
) -> AbstractAsyncContextManager[None]:
    """For a patient-bound token, the target's study must be its patient's: 404 otherwise,
    exactly as for a study that does not exist (:func:`.auth.patient_study`)."""
    return patient_study(request, context.site_id, context.backend, context.base_url, target.study)


async def retrieve(request: web.Request) -> web.StreamResponse:
    """Study, series or instance as ``multipart/related; type="application/dicom"`` (10.4.1.1.1)."""
    media = negotiate_instances(accept_of(request), can_produce=encodable)
    context = site_context(request)
    target = target_of(request)
    async with study_guard(request, context, target):
        # The backend delivers instances as stored; the gateway converts what must be.
        events = context.backend.retrieve(target, context.base_url)
        events = transcoded(
            events,
            media.transfer_syntax,
            request.app[IMAGING_POOL],
            # Strict only where the client named the syntax: the default (Explicit VR LE) of
            # an instance that cannot be decoded (video) is given as stored, labelled.
            single=target.instance is not None
            and media.transfer_syntax != "*"
            and "transfer-syntax" in (accept_of(request) or "").lower(),
        )
        return await stream_parts(
            request,
            events,
            content_type=media.content_type,
            part_type=media.part_content_type(),
            what=f"retrieve of {target.path()}",
            peek=patient_peek(request),
            as_stored=_sent_as_stored(media.transfer_syntax),
            sent=functools.partial(add_body_bytes, request),
        )


def _sent_as_stored(wanted: str) -> Callable[[str], bool]:
    """Whether a part stored in a syntax goes out unchanged when ``wanted`` was negotiated:
    exactly the parts :func:`.transcoding.transcoded` lets through."""
    return lambda stored: sent_syntax(stored, wanted) == stored


async def metadata(request: web.Request) -> web.Response:
    """Metadata of a study, series or instance as DICOM JSON (10.4.1.1.2), from the gateway's
    cache while fresh; ``If-None-Match`` answered 304, gzip when the client accepts it."""
    media_type = negotiate_dicom_json(accept_of(request))
    context = site_context(request)
    target = target_of(request)
    cache = request.app[METADATA_CACHE]
    # The rejection index's generation: a newly rejected instance never outlives it here.
    generation = str(getattr(context.backend, "generation", 0))
    key = (context.site_id, context.base_url, target.path(), generation)
    async with study_guard(request, context, target):  # before the cache: it is shared
        entry = cache.get(key)
        if entry is None:
            datasets = await context.backend.metadata(target, context.base_url)
            entry = cache.put(key, orjson.dumps(datasets), about=datasets[0] if datasets else None)
    if entry.about is not None:
        note_datasets(request, [entry.about])
    # One entity tag per representation: the XML form of the same metadata is another entity.
    etag = entry.etag if media_type != DICOM_XML_MULTIPART else entry.etag[:-1] + '-xml"'
    headers = {
        "ETag": etag,
        "Last-Modified": formatdate(entry.built, usegmt=True),
        "Cache-Control": "private, no-cache",  # revalidate each time: cheap with the ETag
        "Vary": "Accept, Accept-Encoding",
    }
    if etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    if media_type == DICOM_XML_MULTIPART:
        response = dicom_response(orjson.loads(entry.body), media_type=media_type, headers=headers)
    else:
        response = web.Response(body=entry.body, content_type=media_type, headers=headers)
    response.enable_compression()  # gzip/deflate only if Accept-Encoding asks for it
    return response


def _etags(header: str) -> set[str]:
    """Entity tags of an If-None-Match header (RFC 9110 13.1.2; weak ones compare weakly)."""
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return tags - {""}


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
