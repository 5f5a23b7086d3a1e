"""The CapabilityStatement served at ``GET [base]/metadata`` (sans-I/O).

References: FHIR R4 capabilitystatement.html (``kind = instance``, ``implementation``,
``rest.resource.interaction``, ``searchParam``, ``searchInclude``; invariants cpl-9, one entry
per resource type, and cpl-15, an ``instance`` statement has ``implementation``),
http.html#capabilities (``metadata``), search.html#table (search parameter types),
http.html#version-parameter (one endpoint, both versions). R5 adds ImagingSelection.

The statement tells the truth about *this* gateway: each ImagingStudy search parameter's
documentation says whether it is pushed down to the PACS (QIDO-RS or C-FIND) or matched by the
gateway on what the PACS answered; the versions served are named in ``rest.documentation``
(``fhirVersion`` itself can name only one: the one of the response).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from .. import __version__
from .negotiation import DEFAULT_VERSION, VERSIONS, FhirVersion

__all__ = [
    "IMAGING_SELECTION_SEARCH_PARAMS",
    "IMAGING_STUDY_INCLUDES",
    "STATEMENT_DATE",
    "SearchParamInfo",
    "SearchParamType",
    "Security",
    "capability_statement",
]

SearchParamType = Literal[
    "number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"
]
_SEARCH_PARAM_TYPES: Final = frozenset(get_args(SearchParamType))

#: When this statement's content last changed; the web layer may pass its start-up time.
STATEMENT_DATE: Final = "2025-06-01"

#: ``_include`` values honoured on ImagingStudy (search.html#include).
IMAGING_STUDY_INCLUDES: Final = ("ImagingStudy:endpoint", "ImagingStudy:patient")

_PUSHED: Final = "Pushed down to the PACS query (QIDO-RS or C-FIND)."
_FILTERED: Final = "Matched by the gateway on the PACS's answers; not sent to the PACS."
_PUSHDOWN_NOTE: Final[Mapping[bool, str]] = MappingProxyType({True: _PUSHED, False: _FILTERED})

# Interactions (http.html) per resource type; "read-only" types are the includable ones.
_IMAGING_STUDY_INTERACTIONS: Final = ("read", "search-type")
_IMAGING_SELECTION_INTERACTIONS: Final = ("read", "search-type", "create", "delete")
_READ_ONLY_TYPES: Final = frozenset({"Patient", "Endpoint"})
# Resource types that exist per version (ImagingSelection is new in R5).
_IMAGING_SELECTION_IN: Final[Mapping[FhirVersion, bool]] = MappingProxyType(
    {"R4": False, "R5": True}
)


@dataclass(frozen=True, slots=True)
class SearchParamInfo:
    """A search parameter as the statement lists it (capabilitystatement.html
    ``rest.resource.searchParam``): ``type`` from search.html#table; ``definition`` the
    canonical URL of its SearchParameter, when one is known."""

    name: str
    type: SearchParamType
    documentation: str
    definition: str | None = None

    def __post_init__(self) -> None:
        if self.type not in _SEARCH_PARAM_TYPES:
            raise ValueError(f"not a FHIR search parameter type: {self.type!r}")
        if not self.name:
            raise ValueError("a search parameter needs a name")


#: ImagingSelection search (R5 imagingselection.html#search), all matched in the gateway on
#: the Key Object Selection documents and the stored selections.
IMAGING_SELECTION_SEARCH_PARAMS: Final = (
    SearchParamInfo(
        "patient", "reference", "Who the selection is about (Patient/{id}); chained .identifier."
    ),
    SearchParamInfo("subject", "reference", "Same as patient."),
    SearchParamInfo("study-uid", "token", "The Study Instance UID the selection refers to."),
    SearchParamInfo("derived-from", "reference", "The ImagingStudy the selection is taken from."),
    SearchParamInfo("code", "token", "The purpose of the selection (KOS document title)."),
    SearchParamInfo("status", "token", "available, or a created selection's own status."),
    SearchParamInfo("_id", "token", "The ImagingSelection id."),
)


def _search_param(p: SearchParamInfo, note: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name}
    if p.definition is not None:
        out["definition"] = p.definition
    out["type"] = p.type
    out["documentation"] = f"{p.documentation} {note}" if note else p.documentation
    return out


def _resource(
    rtype: str,
    interactions: Sequence[str],
    params: Sequence[dict[str, Any]] = (),
    includes: Sequence[str] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": rtype,
        "interaction": [{"code": code} for code in interactions],
        "versioning": "no-version",
        "readHistory": False,
    }
    if includes:
        out["searchInclude"] = list(includes)
    if params:
        out["searchParam"] = list(params)
    return out


def _check_names(params: Sequence[SearchParamInfo], pushed: Collection[str]) -> None:
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"a search parameter is listed twice: {names}")
    unknown = set(pushed) - set(names)
    if unknown:
        raise ValueError(f"pushed_to_pacs names parameters not listed: {sorted(unknown)}")


def capability_statement(
    *,
    version: FhirVersion,
    base_url: str,
    search_params: Sequence[SearchParamInfo],
    pushed_to_pacs: Collection[str],
    imaging_selection: bool,
    read_types: Collection[str] = (),
    includes: Sequence[str] = IMAGING_STUDY_INCLUDES,
    imaging_selection_params: Sequence[SearchParamInfo] = IMAGING_SELECTION_SEARCH_PARAMS,
    date: str = STATEMENT_DATE,
    security: Security | None = None,
) -> dict[str, Any]:
    """This gateway's CapabilityStatement in ``version`` (FHIR R4 capabilitystatement.html,
    http.html#capabilities).

    ``status`` active, ``kind`` instance (with ``implementation.url`` = ``base_url``),
    ``fhirVersion`` 4.0.1 or 5.0.0, ``format`` json; one ``rest`` server whose resources are
    ImagingStudy (``read``, ``search-type``; ``searchInclude`` = ``includes``; one
    ``searchParam`` per ``search_params``, its documentation ending with whether the parameter
    is in ``pushed_to_pacs`` (sent to the PACS) or matched in the gateway), each of
    ``read_types`` (``Patient``, ``Endpoint``) with ``read``, and, in R5 only and when
    ``imaging_selection``, ImagingSelection (``read``, ``search-type``, ``create``,
    ``delete``; ``imaging_selection_params``). Raises ValueError for a parameter listed twice,
    a pushed-down name that is not listed, or an unknown read type. With ``security`` (the
    gateway asks for tokens), ``rest.security`` says so: SMART-on-FHIR / OAuth service, CORS,
    and the issuer and scopes in its description.
    """
    _check_names(search_params, pushed_to_pacs)
    _check_names(imaging_selection_params, ())
    if not set(read_types) <= _READ_ONLY_TYPES:
        raise ValueError(f"read_types may name only {sorted(_READ_ONLY_TYPES)}")
    study_params = [
        _search_param(p, _PUSHDOWN_NOTE[p.name in pushed_to_pacs]) for p in search_params
    ]
    resources = [_resource("ImagingStudy", _IMAGING_STUDY_INTERACTIONS, study_params, includes)]
    if imaging_selection and _IMAGING_SELECTION_IN[version]:
        selection_params = [_search_param(p, None) for p in imaging_selection_params]
        resources.append(
            _resource("ImagingSelection", _IMAGING_SELECTION_INTERACTIONS, selection_params)
        )
    resources += [_resource(t, ("read",)) for t in sorted(read_types)]
    served = " and ".join(
        f"{v} ({info.release}{', the default' if v == DEFAULT_VERSION else ''}:"
        f" Accept: application/fhir+json; fhirVersion={info.mime})"
        for v, info in VERSIONS.items()
    )
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": (
            f"FHIR versions served at this endpoint: {served}. Studies are read live"
            " from the PACS; search results are paged with _count."
        ),
        "resource": resources,
    }
    if security is not None:
        rest["security"] = _security(security)
    return {
        "resourceType": "CapabilityStatement",
        "name": "NcpehDicomwebGateway",
        "title": "ncpeh-dicomweb FHIR imaging facade",
        "status": "active",
        "experimental": False,
        "date": date,
        "kind": "instance",
        "software": {"name": "ncpeh-dicomweb", "version": __version__},
        "implementation": {
            "description": "MyHealth@EU NCPeH imaging gateway: FHIR ImagingStudy over a PACS",
            "url": base_url,
        },
        "fhirVersion": VERSIONS[version].release,
        "format": ["json"],
        "rest": [rest],
    }


@dataclass(frozen=True, slots=True)
class Security:
    """How clients authenticate (``[auth]``), as the CapabilityStatement tells them."""

    issuer: str
    scopes: Sequence[str]  # the scopes the interactions ask for
    cors: bool = False
    introspection: bool = False  # opaque tokens accepted too


_SECURITY_SERVICES = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def _security(security: Security) -> dict[str, Any]:
    tokens = "JWT access tokens signed by" + (
        " (or opaque tokens introspected at)" if security.introspection else ""
    )
    return {
        "cors": security.cors,
        "service": [
            {
                "coding": [
                    {"system": _SECURITY_SERVICES, "code": "SMART-on-FHIR"},
                    {"system": _SECURITY_SERVICES, "code": "OAuth"},
                ]
            }
        ],
        "description": (
            f"OAuth 2.0 bearer tokens (RFC 6750): {tokens} {security.issuer}, with SMART v2"
            f" scopes: {', '.join(sorted(set(security.scopes)))}. Without a valid token: 401;"
            " without the interaction's scope: 403."
        ),
    }
