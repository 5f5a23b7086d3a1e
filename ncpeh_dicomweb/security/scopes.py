"""SMART scopes and the scope each interaction of the gateway needs (pure, no I/O).

Scopes are SMART App Launch v2 (scopes-and-launch-context.html): ``context/Resource.ops``,
context one of ``patient``, ``user``, ``system``; ops a subset of ``cruds`` in that order
(create, read, update, delete, search); the resource a FHIR type or ``*``. v1 forms are read as
their v2 meaning: ``.read`` is ``rs``, ``.write`` is ``cud``, ``.*`` is ``cruds``. A v2
granular scope (``system/Observation.rs?category=...``) grants only part of a type, so it never
satisfies a requirement for the whole type.

A granted scope satisfies a required one when the context is the same (a ``patient/`` token
does not pass where ``system/`` is asked: patient-bound access is a separate, narrower rule),
the resource is the same or granted as ``*``, and the granted ops include every required op.
A required scope that is not in SMART form (a deployment's own, e.g. ``dicomweb/read``) is
satisfied by exactly that string.

The interaction of a request is classified from its method and path (:func:`classify`); the
path may be the concrete path or the matched route's template (``/dicom-web/studies/{study}``):
both give the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

__all__ = [
    "CONFIGURABLE",
    "DEFAULT_SCOPES",
    "Interaction",
    "SmartScope",
    "classify",
    "is_scope_token",
    "parse_scope",
    "satisfies",
]

_OPS_ORDER: Final = "cruds"
_V1_OPS: Final[Mapping[str, str]] = MappingProxyType({"read": "rs", "write": "cud", "*": "cruds"})
_SMART = re.compile(r"(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?")
# RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True, slots=True)
class SmartScope:
    """One SMART scope: ``context/resource.ops`` (ops in ``cruds`` order)."""

    context: str
    resource: str  # a FHIR resource type, or "*"
    ops: frozenset[str]
    restricted: bool = False  # a v2 granular scope (with a ``?query``): part of the type only


def is_scope_token(value: str) -> bool:
    """True if ``value`` is one OAuth scope token (RFC 6749 3.3): printable, no space, quote
    or backslash."""
    return _SCOPE_TOKEN.fullmatch(value) is not None


def _ops(text: str) -> frozenset[str] | None:
    """SMART v2 ops (a subset of ``cruds``, in order, no repeats) or a v1 word; else None."""
    if text in _V1_OPS:
        return frozenset(_V1_OPS[text])
    position = -1
    for op in text:
        index = _OPS_ORDER.find(op)
        if index <= position:  # unknown op, repeated, or out of order
            return None
        position = index
    return frozenset(text) if text else None


def parse_scope(text: str) -> SmartScope | None:
    """``text`` as a SMART scope (v2, or v1 ``.read``/``.write``/``.*``), or None if it is
    not one (``openid``, ``launch/patient``, a deployment's own scope)."""
    match = _SMART.fullmatch(text)
    if match is None:
        return None
    context, resource, ops_text, query = match.groups()
    ops = _ops(ops_text)
    if ops is None:
        return None
    return SmartScope(context, resource, ops, restricted=query is not None)


def satisfies(granted: Iterable[str], required: str) -> bool:
    """True if one of the ``granted`` scopes gives what ``required`` asks (see the module
    docstring for the rule)."""
    wanted = parse_scope(required)
    for scope in granted:
        if wanted is None or wanted.restricted:
            if scope == required:
                return True
            continue
        have = parse_scope(scope)
        if (
            have is not None
            and not have.restricted
            and have.context == wanted.context
            and have.resource in (wanted.resource, "*")
            and wanted.ops <= have.ops
        ):
            return True
    return False


class Interaction(StrEnum):
    """What a request does, as far as authorization goes. The values of the configurable
    ones are the keys of ``[auth.scopes]``."""

    PUBLIC = "public"  # no token: health, metrics, the viewer's files, FHIR capabilities
    AUTHENTICATED = "authenticated"  # a valid token, no scope: a path no route serves
    DICOMWEB = "dicomweb"  # QIDO-RS, WADO-RS, frames, rendered, bulk data, selections
    IMAGING_STUDY_SEARCH = "imaging_study_search"
    IMAGING_STUDY_READ = "imaging_study_read"  # also the vendor route /site/{id}/fhir/imaging-study
    PATIENT_READ = "patient_read"
    ENDPOINT_READ = "endpoint_read"
    IMAGING_SELECTION_SEARCH = "imaging_selection_search"
    IMAGING_SELECTION_READ = "imaging_selection_read"
    IMAGING_SELECTION_CREATE = "imaging_selection_create"
    IMAGING_SELECTION_DELETE = "imaging_selection_delete"


#: The scope each interaction needs unless the configuration says otherwise. SMART has no
#: DICOMweb scope: reading a study's images is reading the ImagingStudy.
DEFAULT_SCOPES: Final[Mapping[Interaction, str]] = MappingProxyType(
    {
        Interaction.DICOMWEB: "system/ImagingStudy.rs",
        Interaction.IMAGING_STUDY_SEARCH: "system/ImagingStudy.rs",
        Interaction.IMAGING_STUDY_READ: "system/ImagingStudy.rs",
        Interaction.PATIENT_READ: "system/Patient.r",
        Interaction.ENDPOINT_READ: "system/Endpoint.r",
        Interaction.IMAGING_SELECTION_SEARCH: "system/ImagingSelection.rs",
        Interaction.IMAGING_SELECTION_READ: "system/ImagingSelection.rs",
        Interaction.IMAGING_SELECTION_CREATE: "system/ImagingSelection.c",
        Interaction.IMAGING_SELECTION_DELETE: "system/ImagingSelection.d",
    }
)
#: The interactions whose scope ``[auth.scopes]`` may set.
CONFIGURABLE: Final = frozenset(DEFAULT_SCOPES)

_SEG = r"[^/]+"
_SITE = rf"(?:/site/{_SEG})?"
_ANY: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_GET: Final = frozenset({"GET", "HEAD"})
_POST: Final = frozenset({"POST"})

# (methods, path pattern, interaction), first match wins; a path no row matches needs a
# valid token and no scope (no route serves it: the client gets its 404/405 once known).
_TABLE: Final[tuple[tuple[frozenset[str], re.Pattern[str], Interaction], ...]] = tuple(
    (methods, re.compile(pattern), interaction)
    for methods, pattern, interaction in (
        (_ANY, r"/health(?:/.*)?", Interaction.PUBLIC),
        (_ANY, r"/metrics", Interaction.PUBLIC),
        (_ANY, r"/viewer(?:/.*)?", Interaction.PUBLIC),
        (_ANY, rf"{_SITE}/dicom-web(?:/.*)?", Interaction.DICOMWEB),
        (_GET, rf"/site/{_SEG}/fhir/imaging-study/{_SEG}", Interaction.IMAGING_STUDY_READ),
        (_GET, rf"{_SITE}/fhir/metadata", Interaction.PUBLIC),
        (_GET | _POST, rf"{_SITE}/fhir/ImagingStudy", Interaction.IMAGING_STUDY_SEARCH),
        (_POST, rf"{_SITE}/fhir/ImagingStudy/_search", Interaction.IMAGING_STUDY_SEARCH),
        (_GET, rf"{_SITE}/fhir/ImagingStudy/{_SEG}", Interaction.IMAGING_STUDY_READ),
        (_GET, rf"{_SITE}/fhir/Patient/{_SEG}", Interaction.PATIENT_READ),
        (_GET, rf"{_SITE}/fhir/Endpoint/{_SEG}", Interaction.ENDPOINT_READ),
        (_GET, rf"{_SITE}/fhir/ImagingSelection", Interaction.IMAGING_SELECTION_SEARCH),
        (_POST, rf"{_SITE}/fhir/ImagingSelection/_search", Interaction.IMAGING_SELECTION_SEARCH),
        (_POST, rf"{_SITE}/fhir/ImagingSelection", Interaction.IMAGING_SELECTION_CREATE),
        (_GET, rf"{_SITE}/fhir/ImagingSelection/{_SEG}", Interaction.IMAGING_SELECTION_READ),
        (
            frozenset({"DELETE"}),
            rf"{_SITE}/fhir/ImagingSelection/{_SEG}",
            Interaction.IMAGING_SELECTION_DELETE,
        ),
    )
)


def classify(method: str, path: str) -> Interaction:
    """The interaction of a request by its method and path (or route template)."""
    method = method.upper()
    for methods, pattern, interaction in _TABLE:
        if method in methods and pattern.fullmatch(path):
            return interaction
    return Interaction.AUTHENTICATED
