"""FHIR R5 ImagingSelection (sans-I/O): a client's ``POST [base]/ImagingSelection``
validated, kept as a :class:`PostedSelection` (the resource is built in :mod:`.selection`).

References: FHIR R5 imagingselection.html (elements and their cardinality), R5 datatypes
(id, unsignedInt), R5 json.html (no null, no empty value) and http.html#create (the server
owns ``id`` and ``meta``; 400 for a body it cannot parse, 422 for one that breaks a rule).

Decisions (beyond the standards):

* POST (:func:`parse_posted_selection`): UIDs must follow PS3.5 9.1 strictly (no leading zero
  in a component) since they may be written into DICOM; ``instance.subset`` must be frame
  numbers; ``instance.imageRegion2D`` / ``imageRegion3D`` / ``number`` / ``extension`` are
  accepted and not kept (the selection is then the whole frames); an instance-level
  ``modifierExtension`` is refused (422), as dropping it would change the meaning; only
  ``subject`` = ``Patient/{id}`` and ``derivedFrom`` = ``ImagingStudy/{id}`` references are
  accepted (422 else). Other top-level elements are kept as given after shallow checks (the
  JSON type of each element, no null, no empty value).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import orjson

from ..dicomweb.uids import is_valid_uid
from .codes import URI_SYSTEM
from .kos import _FRAME, _MAX_FRAME, ListedInstance
from .selection import _EXTRA_KEYS

__all__ = [
    "MAX_INSTANCES",
    "STATUSES",
    "PostedSelection",
    "SelectionInvalid",
    "parse_posted_selection",
]

#: ImagingSelection.status (R5 imagingselection-status, a required binding).
STATUSES: Final = ("available", "entered-in-error", "unknown")
MAX_INSTANCES: Final = 10_000  # instances one POSTed selection may list
_STRICT_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


class SelectionInvalid(ValueError):
    """A POSTed ImagingSelection the gateway does not accept. ``status`` 400 for a body that
    is not an ImagingSelection in FHIR JSON (unparseable, wrong type, wrong structure), 422 for
    a well-formed one that breaks a rule (required element missing, value outside its value
    set, a selection the gateway cannot hold); ``expression`` the FHIRPath of the element
    (R5 OperationOutcome.issue.expression)."""

    def __init__(self, message: str, expression: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        self.status = status


@dataclass(frozen=True, slots=True)
class PostedSelection:
    """A POSTed ImagingSelection as the gateway keeps it (see :func:`parse_posted_selection`).
    ``extra``: the other top-level elements as given, never ``id``, ``meta``, ``text``,
    ``contained``, ``endpoint`` or ``issued``, which the server owns."""

    study_uid: str
    series_uid: str
    instances: tuple[ListedInstance, ...]
    code: dict[str, Any] = field(hash=False)
    status: str
    subject_reference: str | None
    derived_from: tuple[str, ...]
    extra: dict[str, Any] = field(hash=False)


_ROOT = "ImagingSelection"
_SERVER_OWNED: Final = frozenset(
    {"id", "meta", "text", "contained", "endpoint", "issued", "_id", "_issued"}
)
_PROCESSED: Final = frozenset(
    {
        "resourceType",
        "status",
        "code",
        "studyUid",
        "seriesUid",
        "subject",
        "derivedFrom",
        "instance",
    }
)
_LIST_NAMES = "extension modifierExtension identifier performer basedOn category focus"
_INSTANCE_NAMES = (
    "id extension modifierExtension uid number sopClass subset imageRegion2D imageRegion3D "
    "_uid _number _subset"
)
_LIST_EXTRA: Final = frozenset(_LIST_NAMES.split())
_INSTANCE_KEYS: Final = frozenset(_INSTANCE_NAMES.split())
_MAX_DEPTH = 32  # nesting of a kept element (FHIR's deepest datatypes need about 10)
_REFERENCE = re.compile(r"(Patient|ImagingStudy)/([A-Za-z0-9\-.]{1,64})")


def _bad(message: str, expression: str) -> NoReturn:
    raise SelectionInvalid(message, expression, 400)


def _refused(message: str, expression: str) -> NoReturn:
    raise SelectionInvalid(message, expression, 422)


def _check_json(value: Any, path: str, depth: int = 0) -> None:
    """FHIR JSON rules on a kept element (R5 json.html): no null property, no empty string,
    array or object; bounded nesting."""
    if depth > _MAX_DEPTH:
        _bad("nested too deeply", path)
    if value is None:
        _bad("null is not a FHIR JSON value", path)
    if isinstance(value, str | list | dict) and not value:
        _bad("an empty value is not allowed in FHIR JSON", path)
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if item is not None:  # null aligns primitive arrays with their "_name" array
                _check_json(item, f"{path}[{i}]", depth + 1)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _bad("must be a non-empty string", path)
    return value


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _bad("must be a JSON object", path)
    return value


def _array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        _bad("must be a JSON array", path)
    return value


def _strict_uid(value: Any, path: str) -> str:
    uid = _string(value, path)
    if len(uid) > 64 or not _STRICT_UID.fullmatch(uid):
        _refused(
            "not a DICOM UID (PS3.5 9.1: digits and dots, at most 64 characters, "
            "no leading zero in a component)",
            path,
        )
    return uid


def _required(body: Mapping[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is None or value == []:
        _refused(f"{name} is required", f"{_ROOT}.{name}")
    return value


def _code(value: Any) -> dict[str, Any]:
    path = f"{_ROOT}.code"
    code = _object(value, path)
    _check_json(code, path)
    codings = code.get("coding")
    if codings is not None:
        for i, coding in enumerate(_array(codings, f"{path}.coding")):
            _object(coding, f"{path}.coding[{i}]")
    if not codings and not code.get("text"):
        _refused("code needs a coding or a text", path)
    return code


def _reference(value: Any, path: str, kind: str) -> str:
    ref = _object(value, path)
    _check_json(ref, path)
    text = ref.get("reference")
    if text is None:
        _refused(f"must reference a {kind} as {kind}/{{id}}", f"{path}.reference")
    text = _string(text, f"{path}.reference")
    m = _REFERENCE.fullmatch(text)
    if m is None or m[1] != kind:
        _refused(f"must reference a {kind} as {kind}/{{id}}", f"{path}.reference")
    return text


def _sop_class(value: Any, path: str) -> str:
    coding = _object(value, path)
    _check_json(coding, path)
    if coding.get("system") != URI_SYSTEM:
        _refused(f"sopClass.system must be {URI_SYSTEM}", f"{path}.system")
    code = _string(coding.get("code"), f"{path}.code")
    if not code.startswith("urn:oid:"):
        _refused("sopClass.code must be urn:oid:<SOP Class UID>", f"{path}.code")
    return _strict_uid(code.removeprefix("urn:oid:"), f"{path}.code")


def _frames(value: Any, path: str) -> tuple[int, ...]:
    frames: list[int] = []
    for i, item in enumerate(_array(value, path)):
        text = _string(item, f"{path}[{i}]")
        if not _FRAME.fullmatch(text) or int(text) > _MAX_FRAME:
            _refused("subset must hold frame numbers (1, 2, ...)", f"{path}[{i}]")
        if int(text) not in frames:
            frames.append(int(text))
    return tuple(frames)


def _instances(value: Any) -> tuple[ListedInstance, ...]:
    entries = _array(value, f"{_ROOT}.instance")
    if len(entries) > MAX_INSTANCES:
        _refused(f"at most {MAX_INSTANCES} instances in one selection", f"{_ROOT}.instance")
    out: list[ListedInstance] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        path = f"{_ROOT}.instance[{i}]"
        item = _object(entry, path)
        for key in item:
            if key not in _INSTANCE_KEYS:
                _bad(f"{key[:64]!r} is not an element of ImagingSelection.instance", path)
        _check_json(item, path)
        if "modifierExtension" in item:
            _refused("modifierExtension is not supported here", f"{path}.modifierExtension")
        if "uid" not in item:
            _refused("instance.uid is required", f"{path}.uid")
        uid = _strict_uid(item["uid"], f"{path}.uid")
        if uid in seen:
            _refused("this instance is listed twice", f"{path}.uid")
        seen.add(uid)
        sop_class = None
        if "sopClass" in item:
            sop_class = _sop_class(item["sopClass"], f"{path}.sopClass")
        frames = _frames(item["subset"], f"{path}.subset") if "subset" in item else ()
        out.append(ListedInstance(uid, sop_class, frames))
    return tuple(out)


def _extra(name: str, value: Any) -> Any:
    path = f"{_ROOT}.{name}"
    if name in _LIST_EXTRA:
        for i, item in enumerate(_array(value, path)):
            _object(item, f"{path}[{i}]")
    elif name == "bodySite" or name.startswith("_"):
        _object(value, path)
    elif name == "seriesNumber":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**31 - 1:
            _bad("must be an unsignedInt", path)
    elif name == "frameOfReferenceUid":
        if not is_valid_uid(_string(value, path)):
            _refused("not a DICOM UID", path)
    else:  # implicitRules, language
        _string(value, path)
    _check_json(value, path)
    return value


def parse_posted_selection(body: bytes) -> PostedSelection:
    """Validate the body of ``POST [base]/ImagingSelection`` (R5 http.html#create): FHIR JSON
    of an ImagingSelection with ``status``, ``code``, ``studyUid``, ``seriesUid`` and 1 to
    :data:`MAX_INSTANCES` instances, each a distinct ``uid``, optionally its ``sopClass``
    (``urn:ietf:rfc:3986``, ``urn:oid:<uid>``) and ``subset`` (frame numbers as strings).

    ``instance.imageRegion2D`` / ``imageRegion3D`` are accepted and ignored: the selection
    keeps the whole frames. ``id``, ``meta``, ``text``, ``contained``, ``endpoint`` and
    ``issued`` are dropped (the server owns them); an element name ImagingSelection does not
    have is a 400. Raises :class:`SelectionInvalid` (400 or 422, see there).
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        _bad("the body is not JSON", _ROOT)
    if not isinstance(parsed, dict):
        _bad("the body is not a JSON object", _ROOT)
    if parsed.get("resourceType") != _ROOT:
        _bad("the body is not an ImagingSelection", f"{_ROOT}.resourceType")
    for key, value in parsed.items():
        if key not in _SERVER_OWNED | _PROCESSED | _EXTRA_KEYS:
            _bad(f"{key[:64]!r} is not an element of ImagingSelection", f"{_ROOT}.{key[:64]}")
        if value is None:
            _bad("null is not a FHIR JSON value", f"{_ROOT}.{key}")
    status = _string(_required(parsed, "status"), f"{_ROOT}.status")
    if status not in STATUSES:
        _refused(f"status must be one of {', '.join(STATUSES)}", f"{_ROOT}.status")
    code = _code(_required(parsed, "code"))
    study_uid = _strict_uid(_required(parsed, "studyUid"), f"{_ROOT}.studyUid")
    series_uid = _strict_uid(_required(parsed, "seriesUid"), f"{_ROOT}.seriesUid")
    instances = _instances(_required(parsed, "instance"))
    subject = None
    if parsed.get("subject") is not None:
        subject = _reference(parsed["subject"], f"{_ROOT}.subject", "Patient")
    derived = [
        _reference(ref, f"{_ROOT}.derivedFrom[{i}]", "ImagingStudy")
        for i, ref in enumerate(_array(parsed.get("derivedFrom", []), f"{_ROOT}.derivedFrom"))
    ]
    extra = {key: _extra(key, value) for key, value in parsed.items() if key in _EXTRA_KEYS}
    return PostedSelection(
        study_uid=study_uid,
        series_uid=series_uid,
        instances=instances,
        code=code,
        status=status,
        subject_reference=subject,
        derived_from=tuple(dict.fromkeys(derived)),
        extra=extra,
    )
