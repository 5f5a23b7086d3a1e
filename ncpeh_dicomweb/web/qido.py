"""QIDO-RS handlers (PS3.18 10.6): search for studies, series and instances."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from urllib.parse import parse_qsl

from aiohttp import web

from ..backends.base import DicomJson, Scope
from ..backends.relational import restrict_to
from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import first_value
from ..dicomweb.media import negotiate_dicom_json
from ..dicomweb.query import QidoQuery, parse_qido
from ..dicomweb.results import UID_TAGS, parents_needed, shaped, with_parents
from ..dicomweb.uids import check_uid
from ..errors import InvalidQuery, UriTooLong
from .after_answer import defer
from .audit import note_datasets
from .auth import bound_search
from .keys import SETTINGS, SiteContext, accept_of, site_context
from .responses import dicom_response

__all__ = ["routes"]


async def _search(request: web.Request, level: Level) -> web.Response:
    media_type = _media_type(accept_of(request))
    context = site_context(request)
    limits = request.app[SETTINGS].limits
    study = request.match_info.get("study")
    series = request.match_info.get("series")
    scope = Scope(
        study=check_uid(study, "StudyInstanceUID") if study else None,
        series=check_uid(series, "SeriesInstanceUID") if series else None,
    )
    raw = request.rel_url.raw_query_string
    if len(raw) > limits.max_query_string:
        raise UriTooLong(f"query string longer than {limits.max_query_string} characters")
    query, capped = _parsed(raw, level, limits.qido_max_results)
    warnings = list(query.warnings)
    # A patient-bound token: narrowed to its patient, and what the PACS answers filtered.
    result = await bound_search(request, context.backend, query, scope, context.base_url)
    warnings.extend(w for w in result.warnings if w not in warnings)
    scoped = Level.SERIES if scope.series else Level.STUDY if scope.study else None
    datasets = await _with_parents(context, result.datasets, level, scope, scoped)
    datasets = shaped(datasets, level, scoped)
    # The studies and (if one) patient, for the audit: read from the answer once it is sent
    # (the AuditEvent that reads them is queued after this, in the same lane).
    defer(request.app, note_datasets, request, datasets)
    if capped and len(result.datasets) >= limits.qido_max_results:
        warnings.append(
            f"only the first {limits.qido_max_results} matches are returned; "
            "use limit and offset to page through the rest"
        )
    return dicom_response(datasets, media_type=media_type, warnings=warnings)


# Clients repeat their Accept headers and, paging or polling, their searches: both are parsed
# once (bounded caches of pure functions; a refusal raises and is not kept).
@lru_cache(maxsize=64)
def _media_type(accept: str | None) -> str:
    return negotiate_dicom_json(accept)


@lru_cache(maxsize=256)
def _parsed(raw: str, level: Level, max_limit: int) -> tuple[QidoQuery, bool]:
    """The search, and whether it was capped at ``max_limit`` (it named no limit)."""
    # '+' as space, like the form encoding requests and browsers use (RFC 3986 says nothing).
    try:
        params = parse_qsl(raw, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidQuery(
            "the query string is not valid UTF-8 once percent-decoded",
            detail={"parameter": "query"},
        ) from None
    query = parse_qido(params, level, max_limit=max_limit)
    if query.limit is None:
        return replace(query, limit=max_limit), True
    return query, False


async def _with_parents(
    context: SiteContext,
    datasets: list[DicomJson],
    level: Level,
    scope: Scope,
    scoped: Level | None,
) -> list[DicomJson]:
    """``datasets`` with the study (and series) attributes a search of all series or all
    instances returns (PS3.18 10.6.3.3.2-3), asked of the PACS when its answer lacks them: one
    search per hundred parents, by UID list."""
    for parent in parents_needed(datasets, level, scoped):
        tag = UID_TAGS[parent]
        uids = list(dict.fromkeys(u for d in datasets if isinstance(u := first_value(d, tag), str)))
        # A study's series are asked under the study: the PACS's own relational rules apply.
        where = Scope(study=scope.study) if parent is Level.SERIES else Scope()
        found: list[DicomJson] = []
        for query in restrict_to(parse_qido([], parent), (), uids):
            found += (await context.backend.search(query, where, context.base_url)).datasets
        datasets = with_parents(datasets, parent, found)
    return datasets


async def search_studies(request: web.Request) -> web.Response:
    return await _search(request, Level.STUDY)


async def search_series(request: web.Request) -> web.Response:
    return await _search(request, Level.SERIES)


async def search_instances(request: web.Request) -> web.Response:
    return await _search(request, Level.INSTANCE)


def routes(prefix: str) -> list[web.RouteDef]:
    """The six QIDO-RS resources of PS3.18 Table 10.6.1-2 under ``prefix``."""
    uid = r"{%s:[^/]+}"
    study, series = uid % "study", uid % "series"
    return [
        web.get(f"{prefix}/studies", search_studies),
        web.get(f"{prefix}/series", search_series),
        web.get(f"{prefix}/instances", search_instances),
        web.get(f"{prefix}/studies/{study}/series", search_series),
        web.get(f"{prefix}/studies/{study}/instances", search_instances),
        web.get(f"{prefix}/studies/{study}/series/{series}/instances", search_instances),
    ]
