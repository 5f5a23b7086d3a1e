"""FHIR format and version negotiation (sans-I/O).

References: FHIR R4 http.html#mime-type (the FHIR media types, ``_format``, UTF-8),
http.html#version-parameter and versions.html#mt-version (the ``fhirVersion`` media type
parameter), capabilitystatement-operation-versions.html (``$versions``), RFC 9110 12.5.1
(Accept). The Accept header is parsed and matched by :mod:`ncpeh_dicomweb.dicomweb.media`
(one RFC 9110 parser for the whole gateway): this module only supplies the table of
:class:`~ncpeh_dicomweb.dicomweb.media.Offer` rows.

What is produced: FHIR JSON only, in R4 (4.0.1, the default) or R5 (5.0.0).

Decisions, beyond what the standards fix:

* The answer is always ``application/fhir+json; charset=utf-8; fhirVersion=4.0`` (or ``5.0``),
  also when the client asked for ``application/json``: http.html says the correct FHIR media
  type SHALL be used and that the charset SHALL be given; ``application/json`` and ``*/*`` are
  honoured as asking for it.
* ``fhirVersion`` is compared as written in the FHIR version list: ``4.0`` and ``5.0`` (the
  spelling versions.html uses) and the full ``4.0.1`` / ``5.0.0``. Anything else (``3.0``,
  ``4.3`` for R4B, ``6.0``) is not produced: 406.
* ``_format`` overrides the *media type* of Accept (that is what it is for: clients that cannot
  set Accept). The *version* still comes from a ``fhirVersion`` parameter of ``_format`` if it
  has one, else from the most preferred Accept range that names a version we produce
  (``_format=json`` with ``Accept: application/fhir+json; fhirVersion=5.0`` is R5 JSON), else
  R4. An Accept that does not parse at all is then ignored rather than a 400.
* ``_format=application/fhir+json`` sent unencoded arrives as ``application/fhir json`` (a
  ``+`` in a query string decodes to a space): read as ``application/fhir+json``.
* An empty ``_format`` is treated as absent. ``_format`` values of XML, Turtle and HTML
  (http.html's list) and unknown values are 406.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from ..dicomweb.media import MediaRange, Offer, negotiate, parse_accept
from ..errors import BadRequest, NotAcceptable

__all__ = [
    "DEFAULT_VERSION",
    "FHIR_JSON",
    "R4",
    "R5",
    "SUPPORTED",
    "VERSIONS",
    "FhirFormat",
    "FhirVersion",
    "VersionInfo",
    "negotiate_fhir",
    "versions_parameters",
]

FhirVersion = Literal["R4", "R5"]

FHIR_JSON: Final = "application/fhir+json"
_JSON: Final = "application/json"
_VERSION_PARAM: Final = "fhirversion"  # media.MediaRange lower-cases parameter names


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One FHIR release served: ``release`` as CapabilityStatement.fhirVersion writes it
    (``4.0.1``), ``mime`` as the ``fhirVersion`` media type parameter writes it (``4.0``,
    versions.html#mt-version)."""

    release: str
    mime: str


#: The releases served, in the server's order of preference (the first is the default).
VERSIONS: Final[Mapping[FhirVersion, VersionInfo]] = MappingProxyType(
    {"R4": VersionInfo("4.0.1", "4.0"), "R5": VersionInfo("5.0.0", "5.0")}
)
DEFAULT_VERSION: Final[FhirVersion] = "R4"

#: ``fhirVersion`` parameter value (lower-case) → release, both spellings of each.
_VERSION_BY_VALUE: Final[Mapping[str, FhirVersion]] = MappingProxyType(
    {spelled: v for v, info in VERSIONS.items() for spelled in (info.mime, info.release)}
)


@dataclass(frozen=True, slots=True)
class FhirFormat:
    """The negotiated representation of a FHIR response: JSON in ``version``."""

    version: FhirVersion

    @property
    def fhir_version(self) -> str:
        """The release, as CapabilityStatement.fhirVersion writes it: ``4.0.1`` or ``5.0.0``."""
        return VERSIONS[self.version].release

    @property
    def content_type(self) -> str:
        """Content-Type of the response (http.html#mime-type, #version-parameter):
        ``application/fhir+json; charset=utf-8; fhirVersion=4.0``."""
        return f"{FHIR_JSON}; charset=utf-8; fhirVersion={VERSIONS[self.version].mime}"


R4: Final = FhirFormat("R4")
R5: Final = FhirFormat("R5")
_FORMATS: Final[Mapping[FhirVersion, FhirFormat]] = MappingProxyType({"R4": R4, "R5": R5})

#: What can be asked for, one Accept value per row (the ``supported`` detail of a 406).
SUPPORTED: Final = tuple(
    f"{media}; fhirVersion={info.mime}"
    for info in VERSIONS.values()
    for media in (FHIR_JSON, _JSON)
)
_DEFAULT_MARK: Final[Mapping[bool, str]] = MappingProxyType({True: ", the default", False: ""})
_OFFERED: Final = (
    "offered: FHIR JSON (application/fhir+json, application/json or _format=json) with "
    + " or ".join(
        f"fhirVersion={info.mime} ({v} {info.release}{_DEFAULT_MARK[v == DEFAULT_VERSION]})"
        for v, info in VERSIONS.items()
    )
)

# The Accept table (RFC 9110 12.5.1 via media.negotiate): every media type x version x
# spelling, versions outermost so that a range without fhirVersion (``*/*``,
# ``application/json``) picks the default version by server order.
_ACCEPT_TABLE: Final = tuple(
    (
        Offer(media, params=(("charset", "utf-8"), (_VERSION_PARAM, spelled))),
        _FORMATS[version],
    )
    for version, info in VERSIONS.items()
    for media in (FHIR_JSON, _JSON)
    for spelled in (info.mime, info.release)
)

# _format values (http.html#mime-type) → the syntax they name; only "json" is produced.
_FORMAT_SYNTAX: Final[Mapping[str, str]] = MappingProxyType(
    {
        "json": "json",
        _JSON: "json",
        FHIR_JSON: "json",
        "xml": "xml",
        "text/xml": "xml",
        "application/xml": "xml",
        "application/fhir+xml": "xml",
        "ttl": "turtle",
        "application/fhir+turtle": "turtle",
        "text/turtle": "turtle",
        "html": "html",
        "text/html": "html",
    }
)
_PRODUCED_SYNTAX: Final = "json"


def negotiate_fhir(
    accept: str | None,
    format_param: str | None,
    *,
    versions: tuple[FhirVersion, ...] = ("R4", "R5"),
) -> FhirFormat:
    """Choose the representation of a FHIR response (FHIR R4 http.html#mime-type and
    #version-parameter; RFC 9110 12.5.1).

    ``accept``: the Accept header (None when absent: ``*/*``). ``format_param``: the value of
    the ``_format`` query parameter (None when absent), which overrides the media type of
    Accept. R4 unless ``fhirVersion=5.0`` (or ``5.0.0``) is asked for. Raises
    :class:`~ncpeh_dicomweb.errors.NotAcceptable` (406) naming what is offered when the
    format (XML, Turtle...) or the version (``3.0``, ``6.0``...) is not produced, and
    :class:`~ncpeh_dicomweb.errors.BadRequest` for an Accept header in which nothing parses
    (without ``_format``).

    ``versions``: the versions the resource exists in, the first the default (ImagingSelection
    is R5 only: ``("R5",)``, so an explicit ``fhirVersion=4.0`` is 406 and none is R5).
    """
    if format_param is not None and format_param.strip():
        return _by_format(format_param, accept, versions)
    try:
        return _choose(accept, versions)
    except NotAcceptable:
        raise _not_acceptable_accept(accept, versions) from None


def _choose(accept: str | None, versions: tuple[FhirVersion, ...]) -> FhirFormat:
    table = [row for row in _ACCEPT_TABLE if row[1].version in versions]
    if versions[0] != DEFAULT_VERSION:  # server order decides a range without fhirVersion
        table.sort(key=lambda row: versions.index(row[1].version))
    offers = [offer for offer, _ in table]
    return table[offers.index(negotiate(accept, offers))][1]


def _by_format(value: str, accept: str | None, versions: tuple[FhirVersion, ...]) -> FhirFormat:
    name, semicolon, rest = value.strip().partition(";")
    # An unencoded "+" in a query string decodes to a space (application/fhir json).
    name = name.strip().lower().replace(" ", "+")
    if _FORMAT_SYNTAX.get(name) != _PRODUCED_SYNTAX:
        syntax = _FORMAT_SYNTAX.get(name)
        what = f"FHIR {syntax.upper()}" if syntax else "an unknown format"
        raise NotAcceptable(
            f"_format={value.strip()[:80]} asks for {what}, which this server does not produce;"
            f" {_OFFERED}",
            detail={"parameter": "_format", "value": value[:80], "supported": list(SUPPORTED)},
        )
    if semicolon:
        # Parameters of a media type in _format: parsed by the one RFC 9110 parser.
        ranges = parse_accept(f"{FHIR_JSON};{rest}")
        range_ = ranges[0] if ranges else None
        if range_ is not None and _VERSION_PARAM in range_.params:
            version = _VERSION_BY_VALUE.get(range_.params[_VERSION_PARAM].strip().lower())
            if version is None or version not in versions:
                raise _unknown_version("_format", value, range_.params[_VERSION_PARAM], versions)
            return _FORMATS[version]
    return _FORMATS[_version_from_accept(accept, versions)]


def _version_from_accept(accept: str | None, versions: tuple[FhirVersion, ...]) -> FhirVersion:
    """The version of the most preferred Accept range that names one we produce; the default
    if none names a version; 406 if some name versions and none is produced."""
    try:
        ranges = parse_accept(accept)
    except BadRequest:
        return versions[0]  # _format is there because the client cannot set Accept
    asked = [r.params[_VERSION_PARAM] for r in ranges if _VERSION_PARAM in r.params]
    for value in asked:
        version = _VERSION_BY_VALUE.get(value.strip().lower())
        if version is not None and version in versions:
            return version
    if asked:
        raise _unknown_version("accept", accept or "", asked[0], versions)
    return versions[0]


def _only(versions: tuple[FhirVersion, ...]) -> str:
    """What a 406 adds when the resource exists in fewer versions than the server serves."""
    if len(versions) == len(VERSIONS):
        return ""
    names = " and ".join(f"{v} ({VERSIONS[v].mime})" for v in versions)
    return f"this resource type exists only in FHIR {names}; "


def _unknown_version(
    where: str, value: str, version: str, versions: tuple[FhirVersion, ...]
) -> NotAcceptable:
    detail: dict[str, object] = {"supported": list(SUPPORTED)}
    if where == "_format":
        detail |= {"parameter": "_format", "value": value[:80]}
    else:
        detail["accept"] = value[:200]
    return NotAcceptable(
        f"FHIR version {version.strip()[:20]} is not served; {_only(versions)}{_OFFERED}",
        detail=detail,
    )


def _not_acceptable_accept(accept: str | None, versions: tuple[FhirVersion, ...]) -> NotAcceptable:
    ranges: list[MediaRange] = parse_accept(accept)  # parsed already: cannot raise here
    named = [r.params[_VERSION_PARAM] for r in ranges if _VERSION_PARAM in r.params]
    unknown = [
        v.strip()[:20] for v in named if _VERSION_BY_VALUE.get(v.strip().lower()) not in versions
    ]
    why = (
        f"FHIR version {', '.join(dict.fromkeys(unknown))} is not served"
        if unknown
        else "no media type this server produces is acceptable"
    )
    return NotAcceptable(
        f"Accept: {(accept or '')[:200]}: {why}; {_only(versions)}{_OFFERED}",
        detail={"accept": (accept or "")[:200], "supported": list(SUPPORTED)},
    )


def versions_parameters() -> dict[str, Any]:
    """The answer of ``GET [base]/$versions`` (FHIR R4 capabilitystatement-operation-versions
    .html): a Parameters resource listing each served version (``major.minor``) and the
    default. The same in R4 and R5."""
    return {
        "resourceType": "Parameters",
        "parameter": [
            *({"name": "version", "valueCode": info.mime} for info in VERSIONS.values()),
            {"name": "default", "valueCode": VERSIONS[DEFAULT_VERSION].mime},
        ],
    }
