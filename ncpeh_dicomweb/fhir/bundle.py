"""Search result Bundles and their paging links (sans-I/O).

References: FHIR R4 bundle.html (``searchset``, ``total``, ``link``, ``entry.fullUrl``,
``entry.search.mode``; invariants bdl-1, bdl-2, bdl-7 and the rule that ``fullUrl`` agrees with
the resource's id), search.html#paging (``self``/``next``/``previous`` links), search.html#count
(``_count``), search.html#summary (``_summary=count``), search.html#errors (an OperationOutcome
with ``search.mode = outcome``), http.html#general; RFC 3986 2.1, 2.2 and 3.4 (query
encoding). R5 bundle.html adds ``Bundle.issues``.

Decisions, beyond what the standards fix (search.html leaves the form of paging links to the
server):

* Paging is by offset, carried in the links: ``_count`` (the page size used) and
  :data:`OFFSET_PARAMETER` ``_offset`` (the index of the page's first match), always
  after the search's own parameters, which keep their order. The name is the one
  :mod:`ncpeh_dicomweb.fhir.search` parses (one name on both sides) and the one HAPI FHIR's
  offset paging uses; FHIR R4 and R5 define no paging offset parameter (search.html#paging
  leaves links to the server). The gateway keeps no search state: a link is the whole
  search, re-run. The offset is left out when 0, so the first page's ``self`` link is the
  search as sent plus ``_count``.
* ``next`` is given while matches remain after this page; ``previous`` while the page does not
  start at 0, and from a page past the end it leads to the last page. ``_count=0``
  (``_summary=count``, search.html#count) has neither.
* A resource that is both a match and an include appears once, as a match (search.html#
  include); entries are otherwise kept in the order given.
* Query components are percent-encoded as RFC 3986 3.4 allows, except that ``|`` (not allowed
  there), ``+`` (a space to form decoders), ``&``, ``=``, ``;``, ``#``, ``%`` and non-ASCII
  are always encoded; ``:``, ``/`` and ``,`` (FHIR's OR) are kept readable.
* A search warning (an OperationOutcome) is an entry with ``search.mode = outcome`` in R4 and
  ``Bundle.issues`` in R5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import quote

from ..errors import InvalidQuery
from .negotiation import FhirVersion

__all__ = [
    "COUNT_PARAMETER",
    "OFFSET_PARAMETER",
    "BundleEntry",
    "SearchMode",
    "full_url",
    "page_links",
    "parse_offset",
    "search_url",
    "searchset",
    "summary_count",
]

#: The page size parameter (search.html#count).
COUNT_PARAMETER: Final = "_count"
#: The paging offset parameter carried in ``self``/``next``/``previous`` links.
OFFSET_PARAMETER: Final = "_offset"  # what fhir.search reads back
_PAGING: Final = frozenset({COUNT_PARAMETER, OFFSET_PARAMETER})

SearchMode = Literal["match", "include"]

# FHIR R4 datatypes.html#id; the logical id as it ends a fullUrl.
_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# RFC 3986 3.4: kept as they are in a query component; everything else is percent-encoded.
_QUERY_SAFE: Final = ":/,"


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One entry of a search Bundle (bundle.html): ``full_url`` the resource's absolute URL
    (``[base]/ImagingStudy/{id}``), ``resource`` its FHIR JSON, ``mode`` why it is there
    (``match`` or ``include``, search.html#include)."""

    full_url: str
    resource: Mapping[str, Any]
    mode: SearchMode = "match"

    def __post_init__(self) -> None:
        rtype, rid = self.resource.get("resourceType"), self.resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            raise ValueError("a search entry's resource needs resourceType and id")
        # bundle.html: fullUrl SHALL NOT disagree with the id in the resource.
        if not self.full_url.endswith(f"/{rtype}/{rid}") or "://" not in self.full_url:
            raise ValueError(f"fullUrl {self.full_url!r} does not end with /{rtype}/{rid}")

    def to_json(self) -> dict[str, Any]:
        """The entry as FHIR JSON."""
        return {
            "fullUrl": self.full_url,
            "resource": dict(self.resource),
            "search": {"mode": self.mode},
        }


def full_url(base_url: str, resource_type: str, resource_id: str) -> str:
    """The absolute URL of a resource: ``[base]/[type]/[id]`` (http.html#general), with the id
    checked against the FHIR ``id`` type (datatypes.html#id)."""
    if not _ID.fullmatch(resource_id):
        raise ValueError(f"not a FHIR id: {resource_id!r}")
    return f"{base_url.rstrip('/')}/{resource_type}/{resource_id}"


def _encode(text: str) -> str:
    return quote(text, safe=_QUERY_SAFE)


def search_url(base_url: str, params: Sequence[tuple[str, str]]) -> str:
    """``base_url`` with ``params`` as its query, in order, percent-encoded (RFC 3986 3.4);
    ``base_url`` alone when there are none. ``base_url`` (the search's own URL, already a
    valid URL) must have no query or fragment."""
    if "?" in base_url or "#" in base_url:
        raise ValueError("base_url must have no query or fragment")
    if not params:
        return base_url
    return base_url + "?" + "&".join(f"{_encode(n)}={_encode(v)}" for n, v in params)


def page_links(
    base_url: str,
    params: Sequence[tuple[str, str]],
    *,
    offset: int,
    count: int,
    total: int,
) -> tuple[str, str | None, str | None]:
    """The ``self``, ``next`` and ``previous`` links of one page of a search (FHIR R4
    search.html#paging, bundle.html ``Bundle.link``).

    ``params``: the search parameters actually used, in order (an unknown, ignored one is left
    out by the caller, search.html#errors); any ``_count`` or :data:`OFFSET_PARAMETER` among
    them is replaced by the page's own, appended last. ``offset``: index of the page's first
    match; ``count``: page size; ``total``: number of matches. ``next`` is None on the last
    page, ``previous`` on the first, both when ``count`` is 0.
    """
    if offset < 0 or count < 0 or total < 0:
        raise ValueError("offset, count and total are never negative")
    kept = [(n, v) for n, v in params if n not in _PAGING]

    def link(at: int) -> str:
        offset_param = [(OFFSET_PARAMETER, str(at))] if at else []
        return search_url(base_url, [*kept, (COUNT_PARAMETER, str(count)), *offset_param])

    last_start = (max(total - 1, 0) // count) * count if count else 0
    more = count > 0 and offset + count < total
    back = count > 0 and offset > 0
    return (
        link(offset),
        link(offset + count) if more else None,
        link(max(0, min(offset - count, last_start))) if back else None,
    )


def parse_offset(value: str | None) -> int:
    """The value of :data:`OFFSET_PARAMETER` in a request (0 when absent): a non-negative
    integer, else :class:`~ncpeh_dicomweb.errors.InvalidQuery` (400, search.html#errors)."""
    if value is None or not value.strip():
        return 0
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise InvalidQuery(
            f"{OFFSET_PARAMETER} must be a non-negative integer",
            detail={"parameter": OFFSET_PARAMETER, "value": value[:40]},
        )
    return int(text)


def _unique(entries: Sequence[BundleEntry]) -> list[BundleEntry]:
    """Each fullUrl once (bdl-7), as a match if it is one (search.html#include)."""
    by_url: dict[str, BundleEntry] = {}
    for entry in entries:
        kept = by_url.get(entry.full_url)
        if kept is None or (kept.mode != "match" and entry.mode == "match"):
            by_url[entry.full_url] = entry
    return list(by_url.values())


def _outcome_r4(bundle: dict[str, Any], outcome: Mapping[str, Any]) -> None:
    bundle.setdefault("entry", []).append(
        {"resource": dict(outcome), "search": {"mode": "outcome"}}
    )


def _outcome_r5(bundle: dict[str, Any], outcome: Mapping[str, Any]) -> None:
    bundle["issues"] = dict(outcome)


# Where a search warning goes (R4 search.html#errors; R5 bundle.html Bundle.issues).
_OUTCOME_PLACEMENT: Final = MappingProxyType({"R4": _outcome_r4, "R5": _outcome_r5})


def searchset(
    entries: Sequence[BundleEntry],
    *,
    total: int | None,
    self_url: str,
    next_url: str | None,
    previous_url: str | None,
    version: FhirVersion,
    outcome: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``searchset`` Bundle (FHIR R4 bundle.html, search.html#return).

    ``total`` (search.html#total) is left out when None; ``link`` has ``self`` and, when given,
    ``next`` and ``previous`` (see :func:`page_links`); each entry has ``fullUrl``, ``resource``
    and ``search.mode``, a resource both matched and included once, as a match.
    ``outcome``: an OperationOutcome of warnings about the search (an ignored parameter...),
    placed as an entry with ``search.mode = outcome`` in R4 and as ``Bundle.issues`` in R5.
    """
    if total is not None and total < 0:
        raise ValueError("total is never negative")
    links = (("self", self_url), ("next", next_url), ("previous", previous_url))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [{"relation": rel, "url": url} for rel, url in links if url is not None]
    unique = _unique(entries)
    if unique:
        bundle["entry"] = [e.to_json() for e in unique]
    if outcome is not None:
        _OUTCOME_PLACEMENT[version](bundle, outcome)
    return bundle


def summary_count(*, total: int, self_url: str, version: FhirVersion) -> dict[str, Any]:
    """The answer to ``_summary=count`` (search.html#summary) or ``_count=0``
    (search.html#count): a ``searchset`` with ``total``, a ``self`` link and no entries."""
    return searchset(
        (), total=total, self_url=self_url, next_url=None, previous_url=None, version=version
    )
