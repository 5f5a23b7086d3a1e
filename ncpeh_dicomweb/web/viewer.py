"""The OHIF viewer, served same-origin at ``/viewer/`` (so it needs no CORS).

The viewer is OHIF's prebuilt ``dist/`` (``scripts/ohif.sh`` fetches it), built for the root of
an origin: ``index.html``, the manifest, the CSS and every webpack runtime name ``/`` as their
base. Those few places (and one OHIF bug) are rewritten while the file is sent: the files on
disk are untouched and nothing big is held in memory. ``app-config.js`` is generated from the
gateway's sites (one DICOMweb data source per site), and any other path without a file
extension gets ``index.html`` (the viewer routes in the browser).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from aiohttp import web

from ..config import Settings

__all__ = ["MOUNT", "app_config", "routes"]

MOUNT = "/viewer"  # where the routes are, on this server

# Content-hashed names (``app.bundle.0f6159c501addfe9.js``, ``0ddf166f7a343eda.wasm``) never
# change: cache them for good. Everything else is revalidated (ETag / Last-Modified).
_HASHED = re.compile(r"(?:^|\.)[0-9a-f]{16}\.[a-z0-9]+$")
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
# Not left to the system's mime.types: a wasm served otherwise cannot be compiled streaming.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
}
# What is rewritten, by file suffix: group 1 of each match becomes the replacement (None: the
# viewer's base path).
_REWRITES: dict[str, tuple[tuple[re.Pattern[bytes], bytes | None], ...]] = {
    # The origin's root "/" where OHIF 3.x builds name it: HTML attributes and PUBLIC_URL,
    # webpack's public path (app bundle and each worker bundle), CSS font URLs, the manifest.
    ".html": ((re.compile(rb'(?:\s(?:href|src|content)="|window\.PUBLIC_URL=")(/)(?!/)'), None),),
    ".js": (
        (re.compile(rb'__webpack_require__\.p = "(/)"'), None),
        # OHIF bug (seen in 3.13.2): an empty ModalitiesInStudy ({"vr": "CS"}, valid DICOM
        # JSON for a study whose instances lack Modality) throws in getModalities, and the
        # whole study list fails to load.
        (
            re.compile(rb"i < (ModalitiesInStudy\.Value)\.length"),
            b"(ModalitiesInStudy.Value || [])",
        ),
    ),
    ".css": ((re.compile(rb"url\((/)(?!/)"), None),),
    ".json": ((re.compile(rb'"(?:src|start_url|scope)"\s*:\s*"(/)(?!/)'), None),),
}
_CHUNK = 256 * 1024


Edit = tuple[int, int, bytes]  # bytes [start, end) of the file are sent as this instead


@dataclass(frozen=True, slots=True)
class _Edits:
    """The edits of one version of a file."""

    mtime_ns: int
    size: int
    edits: tuple[Edit, ...]


class _Dist:
    """The viewer's files on disk, and what to rewrite in them for ``base``."""

    def __init__(self, root: Path, base: str) -> None:
        self.root = root.resolve()
        self.base = base.encode()
        self._edits: dict[Path, _Edits] = {}

    def file(self, tail: str) -> Path | None:
        """The file ``tail`` names inside the dist, or None: never a path outside it."""
        parts = tail.split("/")
        if any(not p or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            return None
        path = (self.root / tail).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    async def edits(self, path: Path, stat: os.stat_result) -> _Edits:
        rules = _REWRITES.get(path.suffix)
        if rules is None:
            return _Edits(stat.st_mtime_ns, stat.st_size, ())
        known = self._edits.get(path)
        if known is None or (known.mtime_ns, known.size) != (stat.st_mtime_ns, stat.st_size):
            # Once per file: reading the 17 MB app bundle takes a few ms, off the event loop.
            data = await asyncio.to_thread(path.read_bytes)
            found = sorted(
                (m.start(1), m.end(1), self.base if text is None else text)
                for pattern, text in rules
                for m in pattern.finditer(data)
            )
            known = _Edits(stat.st_mtime_ns, len(data), tuple(found))
            self._edits[path] = known
        return known


def _base_path(settings: Settings) -> str:
    """The path prefix the browser sees in front of ours (public_url's path, if any)."""
    return urlsplit(settings.public_url).path.rstrip("/") if settings.public_url else ""


def app_config(settings: Settings) -> dict[str, Any]:
    """OHIF's ``window.config``: one DICOMweb data source per site, same origin."""
    prefix = _base_path(settings)
    sources = []
    for site in settings.sites:
        # Relative to the origin: the viewer and the gateway are one origin.
        root = f"{prefix}/site/{site.id}/dicom-web"
        if site.id == settings.default_site:
            root = f"{prefix}/dicom-web"
        sources.append(
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": site.id,
                "configuration": {
                    "friendlyName": f"{site.id} ({site.kind})",
                    "name": site.id,
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "wadoUriRoot": root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True},
                    # Accept: multipart/related; type=application/octet-stream (unquoted)
                    "omitQuotationForMultipartRequest": True,
                },
            }
        )
    return {
        "routerBasename": f"{prefix}{MOUNT}",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": settings.default_site,
        "dataSources": sources,
    }


def routes(settings: Settings) -> list[web.RouteDef]:
    """The viewer's routes, or none when no viewer is configured."""
    if settings.viewer_dir is None:
        return []
    base = f"{_base_path(settings)}{MOUNT}/"
    dist = _Dist(Path(settings.viewer_dir), base)
    config = f"window.config = {json.dumps(app_config(settings), indent=2)};\n".encode()

    async def redirect(request: web.Request) -> web.StreamResponse:
        # OHIF itself writes /viewer?dataSources=... into the address bar: keep the query.
        query = request.rel_url.raw_query_string
        raise web.HTTPMovedPermanently(base + (f"?{query}" if query else ""))

    async def config_js(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=config,
            content_type="text/javascript",
            charset="utf-8",
            headers={"Cache-Control": _REVALIDATE, "X-Content-Type-Options": "nosniff"},
        )

    async def static(request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"] or "index.html"
        path = dist.file(tail)
        if path is None:
            if "." in tail.rsplit("/", 1)[-1]:
                raise web.HTTPNotFound()  # a missing asset, not a viewer route
            path = dist.root / "index.html"  # a route of the single-page app
        return await _send(request, dist, path)

    return [
        web.get(MOUNT, redirect),
        web.get(f"{MOUNT}/app-config.js", config_js),
        web.get(MOUNT + "/{tail:.*}", static),
    ]


async def _send(request: web.Request, dist: _Dist, path: Path) -> web.StreamResponse:
    headers = {
        "Cache-Control": _IMMUTABLE if _HASHED.search(path.name) else _REVALIDATE,
        "X-Content-Type-Options": "nosniff",
    }
    if path.suffix in _TYPES:
        headers["Content-Type"] = _TYPES[path.suffix]
    stat = await asyncio.to_thread(path.stat)
    found = await dist.edits(path, stat)
    if not found.edits:
        return web.FileResponse(path, headers=headers)
    etag = f'"{found.mtime_ns:x}-{found.size:x}-{zlib.crc32(dist.base):x}"'
    headers["ETag"] = etag
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = found.size + sum(len(t) - (e - s) for s, e, t in found.edits)
    try:
        await response.prepare(request)
        if request.method != "HEAD":
            with await asyncio.to_thread(path.open, "rb") as file:
                await _write_edited(response, file, found.edits)
    except ConnectionError:
        pass  # the browser went elsewhere (a page change): nothing to tell anyone
    return response


async def _write_edited(
    response: web.StreamResponse, file: BinaryIO, edits: Sequence[Edit]
) -> None:
    """The file, with each edit's span replaced by its text."""
    position = 0
    for start, end, text in edits:
        await _copy(response, file, start - position)
        file.seek(end)
        position = end
        await response.write(text)
    await _copy(response, file, None)


async def _copy(response: web.StreamResponse, file: BinaryIO, size: int | None) -> None:
    """``size`` bytes of ``file`` (None: the rest) to the client, a chunk at a time."""
    while size is None or size > 0:
        data = await asyncio.to_thread(file.read, _CHUNK if size is None else min(_CHUNK, size))
        if not data:
            return
        if size is not None:
            size -= len(data)
        await response.write(data)
