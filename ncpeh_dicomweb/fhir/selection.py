"""FHIR R5 ImagingSelection (sans-I/O): read from DICOM Key Object Selection documents, built,
and validated when a client POSTs one.

References: FHIR R5 imagingselection.html (elements, their order and cardinality), R5
endpoint.html, R5 datatypes (id, instant, unsignedInt), R5 json.html (no null, no empty
value) and http.html#create (the server owns ``id`` and ``meta``; 400 for a body it cannot
parse, 422 for one that breaks a rule); DICOM PS3.3 A.35.4 Key Object Selection Document IOD,
C.17.2 SR Document General (Current Requested Procedure Evidence Sequence), C.17.3 SR Document
Content (Content Sequence, IMAGE content items), PS3.16 TID 2010 "Key Object Selection" and
CID 7010 / CID 7011 (document titles; IOCM rejection notes, IHE RAD TF-1 42).

A KOS document lists instances, possibly of several series; an ImagingSelection holds one
series. So one KOS gives one selection per referenced series of its own study
(:func:`read_kos`, :func:`kos_selection_id`), built with :func:`selection_from_kos`.

Decisions (beyond the standards):

* :func:`read_kos` reads the evidence (0040,A375) for series and SOP classes and the content
  items (0040,A730) for the order and frames: IMAGE, COMPOSITE and WAVEFORM items give the
  order (the document's), IMAGE items the frames (0008,1160). An instance named only by a
  content item, absent from the evidence, is left out (the evidence names its series); one
  only in the evidence comes after those the content orders, in evidence order. An instance
  referenced both whole and by frames is the whole instance. A frame number that is not a
  positive integer is dropped; an item left without any is the whole instance.
* A KOS without a document title (0040,A043), which the IOD requires, gives no selection: the
  ImagingSelection's ``code`` is required and would have to be invented.
* An IOCM rejection note (:func:`is_rejection_note`) is read like any KOS; the caller decides
  what to do with it.
* ``issued`` is an ``instant``, which needs a time zone: from Content Date/Time (0008,0023/
  0033) only with Timezone Offset From UTC (0008,0201), else absent.
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

import copy
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import orjson

from ..backends.base import DicomJson
from ..dicomweb.uids import is_valid_uid
from .codes import (
    DCM,
    ENDPOINT_CONNECTION_TYPE,
    URI_SYSTEM,
    Coding,
    Json,
    code_item_coding,
    fhir_datetime,
    string,
    values,
)

__all__ = [
    "CONTAINED_ENDPOINT_ID",
    "KOS_SOP_CLASS",
    "MAX_INSTANCES",
    "REJECTION_TITLES",
    "STATUSES",
    "KeyObjectSelection",
    "ListedInstance",
    "PostedSelection",
    "SelectionInvalid",
    "imaging_selection",
    "is_created_selection_id",
    "is_rejection_note",
    "kos_selection_id",
    "new_selection_id",
    "parse_kos_selection_id",
    "parse_posted_selection",
    "read_kos",
    "selection_from_kos",
]

KOS_SOP_CLASS: Final = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
#: Titles (DCM code values) of IOCM rejection notes (PS3.16 CID 7011).
REJECTION_TITLES: Final = frozenset({"113001", "113037", "113038", "113039"})
#: ImagingSelection.status (R5 imagingselection-status, a required binding).
STATUSES: Final = ("available", "entered-in-error", "unknown")
MAX_INSTANCES: Final = 10_000  # instances one POSTed selection may list
CONTAINED_ENDPOINT_ID: Final = "listed-instances"
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"

# DICOM tags (PS3.6).
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
PATIENT_ID = "00100020"
ISSUER_OF_PATIENT_ID = "00100021"
CONTENT_DATE = "00080023"
CONTENT_TIME = "00080033"
TIMEZONE_OFFSET_FROM_UTC = "00080201"
CONCEPT_NAME_CODE_SEQUENCE = "0040A043"
CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE = "0040A375"
REFERENCED_SERIES_SEQUENCE = "00081115"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
REFERENCED_FRAME_NUMBER = "00081160"
CONTENT_SEQUENCE = "0040A730"
VALUE_TYPE = "0040A040"
TEXT_VALUE = "0040A160"
KEY_OBJECT_DESCRIPTION = "113012"  # DCM: the TEXT item of TID 2010

_REFERENCE_ITEMS = frozenset({"IMAGE", "COMPOSITE", "WAVEFORM"})  # TID 2010 row 3-5
_MAX_FRAME = 2**31 - 1  # IS (PS3.5 6.2)
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_KOS_ID = re.compile(r"([0-9.]{1,64})-([1-9][0-9]{0,8})")
_CREATED_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_ID_NAMESPACE = b"ncpeh-dicomweb/ImagingSelection"
_STRICT_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_FRAME = re.compile(r"[1-9][0-9]{0,9}")
_WADO_RS: Final = {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"}


@dataclass(frozen=True, slots=True)
class ListedInstance:
    """One instance of a selection: ``frames`` are Referenced Frame Numbers (1-based), ``()``
    for the whole instance."""

    sop_instance_uid: str
    sop_class_uid: str | None
    frames: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyObjectSelection:
    """One referenced series of one KOS document (PS3.3 A.35.4): what one ImagingSelection
    holds. ``series_uid`` is the referenced series, not the KOS's own; ``title`` the document
    title (0040,A043) as a FHIR Coding; ``description`` the Key Object Description (TEXT item
    113012); ``issued`` a FHIR instant or None; ``patient_id`` / ``issuer`` PatientID and
    IssuerOfPatientID of the document."""

    kos_instance_uid: str
    study_uid: str
    series_uid: str
    instances: tuple[ListedInstance, ...]
    title: Coding = field(hash=False)
    description: str | None
    issued: str | None
    patient_id: str | None
    issuer: str | None


# ---- reading KOS ---------------------------------------------------------------------------


def _uid(dataset: DicomJson, tag: str) -> str | None:
    value = string(dataset, tag)
    return value if value is not None and is_valid_uid(value) else None


def _items(dataset: DicomJson, tag: str) -> list[DicomJson]:
    return [item for item in values(dataset, tag) if isinstance(item, dict)]


def _frame(value: Any) -> int | None:
    """One Referenced Frame Number (IS: a JSON number, or a string from some PACSs)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if _FRAME.fullmatch(value) else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= _MAX_FRAME else None


def _title(metadata: DicomJson) -> Coding | None:
    items = values(metadata, CONCEPT_NAME_CODE_SEQUENCE)
    return code_item_coding(items[0]) if items else None


def _evidence(metadata: DicomJson, study_uid: str) -> dict[str, dict[str, str | None]]:
    """Series UID → {SOP Instance UID → SOP Class UID}, in evidence order, of ``study_uid``."""
    series: dict[str, dict[str, str | None]] = {}
    for study in _items(metadata, CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE):
        if _uid(study, STUDY_INSTANCE_UID) != study_uid:
            continue  # another study's evidence: not a selection of this study
        for item in _items(study, REFERENCED_SERIES_SEQUENCE):
            series_uid = _uid(item, SERIES_INSTANCE_UID)
            if series_uid is None:
                continue
            instances = series.setdefault(series_uid, {})
            for ref in _items(item, REFERENCED_SOP_SEQUENCE):
                uid = _uid(ref, REFERENCED_SOP_INSTANCE_UID)
                if uid is not None and instances.get(uid) is None:
                    instances[uid] = _uid(ref, REFERENCED_SOP_CLASS_UID)
    return {uid: instances for uid, instances in series.items() if instances}


@dataclass(slots=True)
class _Listed:
    """What the content items say of one instance: its class, and its frames (None: whole)."""

    sop_class: str | None = None
    frames: list[int] | None = field(default_factory=list)


def _content(metadata: DicomJson) -> dict[str, _Listed]:
    """SOP Instance UID → what the content items reference, in content order."""
    out: dict[str, _Listed] = {}
    for item in _items(metadata, CONTENT_SEQUENCE):
        kind = string(item, VALUE_TYPE)
        if kind not in _REFERENCE_ITEMS:
            continue
        for ref in _items(item, REFERENCED_SOP_SEQUENCE):
            uid = _uid(ref, REFERENCED_SOP_INSTANCE_UID)
            if uid is None:
                continue
            listed = out.setdefault(uid, _Listed())
            listed.sop_class = listed.sop_class or _uid(ref, REFERENCED_SOP_CLASS_UID)
            raw = values(ref, REFERENCED_FRAME_NUMBER) if kind == "IMAGE" else []
            frames = [f for f in map(_frame, raw) if f is not None]
            if not frames:
                listed.frames = None  # the whole instance
            elif listed.frames is not None:
                listed.frames.extend(f for f in frames if f not in listed.frames)
    return out


def _description(metadata: DicomJson) -> str | None:
    for item in _items(metadata, CONTENT_SEQUENCE):
        if string(item, VALUE_TYPE) != "TEXT":
            continue
        concept = _title(item)
        if concept and concept["code"] == KEY_OBJECT_DESCRIPTION and concept.get("system") == DCM:
            text = string(item, TEXT_VALUE)
            if text is not None:
                return text
    return None


def _issued(metadata: DicomJson) -> str | None:
    offset = string(metadata, TIMEZONE_OFFSET_FROM_UTC)
    if offset is None:
        return None
    moment = fhir_datetime(string(metadata, CONTENT_DATE), string(metadata, CONTENT_TIME), offset)
    return moment if moment is not None and "T" in moment else None


def read_kos(metadata: DicomJson) -> list[KeyObjectSelection]:
    """The selections of one KOS instance (its WADO-RS metadata, PS3.18 F.2), one per
    referenced series of the KOS's own study, in evidence order (see the module docstring).

    Series from Current Requested Procedure Evidence Sequence (0040,A375) > Referenced Series
    Sequence (0008,1115) > Referenced SOP Sequence (0008,1199); order and frames from the
    content items (0040,A730). Anything but a KOS, or a KOS without SOP Instance UID, Study
    Instance UID or document title, gives ``[]``; odd input never raises.
    """
    if not isinstance(metadata, dict) or _uid(metadata, SOP_CLASS_UID) != KOS_SOP_CLASS:
        return []
    kos_uid = _uid(metadata, SOP_INSTANCE_UID)
    study_uid = _uid(metadata, STUDY_INSTANCE_UID)
    title = _title(metadata)
    if kos_uid is None or study_uid is None or title is None:
        return []
    content = _content(metadata)
    description = _description(metadata)
    issued = _issued(metadata)
    patient_id = string(metadata, PATIENT_ID)
    issuer = string(metadata, ISSUER_OF_PATIENT_ID)
    out = []
    for series_uid, evidence in _evidence(metadata, study_uid).items():
        ordered = [uid for uid in content if uid in evidence]
        ordered += [uid for uid in evidence if uid not in content]
        instances = []
        for uid in ordered:
            listed = content.get(uid, _Listed())
            frames = tuple(listed.frames or ())
            instances.append(ListedInstance(uid, evidence[uid] or listed.sop_class, frames))
        out.append(
            KeyObjectSelection(
                kos_instance_uid=kos_uid,
                study_uid=study_uid,
                series_uid=series_uid,
                instances=tuple(instances),
                title=title,
                description=description,
                issued=issued,
                patient_id=patient_id,
                issuer=issuer,
            )
        )
    return out


def is_rejection_note(metadata: DicomJson) -> bool:
    """True for an IOCM rejection note: a KOS whose title is one of :data:`REJECTION_TITLES`
    (DCM, PS3.16 CID 7011)."""
    if not isinstance(metadata, dict) or _uid(metadata, SOP_CLASS_UID) != KOS_SOP_CLASS:
        return False
    title = _title(metadata)
    return title is not None and title.get("system") == DCM and title["code"] in REJECTION_TITLES


# ---- ids -----------------------------------------------------------------------------------


def kos_selection_id(kos_instance_uid: str, series_index: int, site_id: str | None) -> str:
    """The FHIR id (R5 datatypes id, ``[A-Za-z0-9\\-.]{1,64}``) of the selection of the
    ``series_index``-th (1-based) series of a KOS on ``site_id``.

    On the default site (``site_id`` None): ``{kos uid}-{index}`` when that is an id of at most
    64 characters (:func:`parse_kos_selection_id` reads it back). Else ``"k"`` + the first 48
    hex digits of SHA-256 of ``b"ncpeh-dicomweb/ImagingSelection\\0" + site + b"\\0" + uid +
    b"\\0" + index`` (as :func:`.mapping.study_id`): stable, lower case, never a UID form.
    """
    if series_index < 1:
        raise ValueError("series_index is 1-based")
    plain = f"{kos_instance_uid}-{series_index}"
    if site_id is None and _FHIR_ID.fullmatch(plain) and is_valid_uid(kos_instance_uid):
        return plain
    parts = (_ID_NAMESPACE, (site_id or "").encode(), kos_instance_uid.encode())
    digest = hashlib.sha256(b"\0".join((*parts, str(series_index).encode()))).hexdigest()
    return "k" + digest[:48]


def parse_kos_selection_id(resource_id: str) -> tuple[str, int] | None:
    """(KOS SOP Instance UID, series index) of a ``{uid}-{index}`` id of
    :func:`kos_selection_id`; None for a digest id or any other id."""
    m = _KOS_ID.fullmatch(resource_id)
    if m is None or not is_valid_uid(m[1]):
        return None
    index = int(m[2])
    return (m[1], index) if kos_selection_id(m[1], index, None) == resource_id else None


def is_created_selection_id(resource_id: str) -> bool:
    """True for the ids given to POSTed selections: a UUID version 4, canonical (RFC 9562:
    lower case, 36 characters), never a KOS id of either form."""
    return _CREATED_ID.fullmatch(resource_id) is not None


def new_selection_id() -> str:
    """A fresh id for a POSTed selection (see :func:`is_created_selection_id`)."""
    return str(uuid.uuid4())


# ---- building ------------------------------------------------------------------------------


def _contained_endpoint(retrieve_url: str) -> Json:
    """The R5 Endpoint (endpoint.html) from which the listed instances are retrieved."""
    return {
        "resourceType": "Endpoint",
        "id": CONTAINED_ENDPOINT_ID,
        "status": "active",
        "connectionType": [{"coding": [{**_WADO_RS, "display": "DICOM WADO-RS"}]}],
        "payload": [
            {
                "type": [{"text": "DICOM WADO-RS"}],
                "mimeType": ['multipart/related; type="application/dicom"'],
            }
        ],
        "address": retrieve_url,
    }


def _instance(listed: ListedInstance) -> Json:
    out: Json = {"uid": listed.sop_instance_uid}
    if listed.sop_class_uid is not None:
        out["sopClass"] = {"system": URI_SYSTEM, "code": f"urn:oid:{listed.sop_class_uid}"}
    if listed.frames:
        out["subset"] = [str(f) for f in listed.frames]
    return out


# R5 ImagingSelection elements in their order (imagingselection.html); those of _EXTRA come
# from ``extra``, the others from the arguments. Primitives: their "_name" (extensions of the
# value, R5 json.html) may be kept in ``extra`` too.
_ELEMENT_NAMES = (
    "id meta implicitRules language text contained extension modifierExtension identifier "
    "status subject issued performer basedOn category code studyUid derivedFrom endpoint "
    "seriesUid seriesNumber frameOfReferenceUid bodySite focus instance"
)
_EXTRA_NAMES = (
    "implicitRules language extension modifierExtension identifier performer basedOn category "
    "seriesNumber frameOfReferenceUid bodySite focus"
)
_PRIMITIVE_NAMES = (
    "implicitRules language status studyUid seriesUid seriesNumber frameOfReferenceUid"
)
_ELEMENTS: Final = tuple(_ELEMENT_NAMES.split())
_EXTRA: Final = frozenset(_EXTRA_NAMES.split())
_PRIMITIVES: Final = frozenset(_PRIMITIVE_NAMES.split())
_EXTRA_KEYS: Final = _EXTRA | {"_" + e for e in _PRIMITIVES}


def imaging_selection(
    *,
    resource_id: str,
    status: str,
    code: Mapping[str, Any],
    study_uid: str,
    series_uid: str,
    instances: Sequence[ListedInstance],
    patient_id: str | None,
    study_resource_id: str | None,
    retrieve_url: str,
    issued: str | None,
    identifiers: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An R5 ImagingSelection (imagingselection.html), elements in FHIR's order.

    ``subject`` = ``Patient/{patient_id}`` (a Patient resource id), ``derivedFrom`` =
    ``ImagingStudy/{study_resource_id}``, ``instance[]`` = uid, sopClass (``urn:ietf:rfc:3986``,
    ``urn:oid:<uid>``), subset (frame numbers as strings); ``endpoint`` references a contained
    R5 Endpoint (``#listed-instances``, ``dicom-wado-rs``, ``address`` = ``retrieve_url``).
    ``identifiers`` come first, then any ``identifier`` of ``extra``. ``extra`` holds the
    other elements (``implicitRules``, ``language``, ``extension``, ``modifierExtension``,
    ``performer``, ``basedOn``, ``category``, ``seriesNumber``, ``frameOfReferenceUid``,
    ``bodySite``, ``focus``, ``identifier`` and the ``_name`` of primitives); any other key in
    it raises ValueError, as does an empty ``instances``.
    """
    if not instances:
        raise ValueError("an ImagingSelection without instances")
    extra = dict(extra or {})
    unknown = sorted(set(extra) - _EXTRA_KEYS)
    if unknown:
        raise ValueError(f"not elements extra may give: {', '.join(unknown)}")
    identifier = [dict(i) for i in identifiers] + list(extra.pop("identifier", []))
    if identifier:
        extra["identifier"] = identifier
    given: dict[str, Any] = {
        "id": resource_id,
        "meta": None if meta is None else dict(meta),
        "contained": [_contained_endpoint(retrieve_url)],
        "status": status,
        "subject": None if patient_id is None else {"reference": f"Patient/{patient_id}"},
        "issued": issued,
        "code": dict(code),
        "studyUid": study_uid,
        "derivedFrom": (
            None
            if study_resource_id is None
            else [{"reference": f"ImagingStudy/{study_resource_id}"}]
        ),
        "endpoint": [{"reference": f"#{CONTAINED_ENDPOINT_ID}"}],
        "seriesUid": series_uid,
        "instance": [_instance(i) for i in instances],
    }
    out: dict[str, Any] = {"resourceType": "ImagingSelection"}
    for name in _ELEMENTS:
        value = extra.get(name) if name in _EXTRA else given.get(name)
        if value is not None:
            out[name] = copy.deepcopy(value)
        companion = extra.get("_" + name)
        if companion is not None:
            out["_" + name] = copy.deepcopy(companion)
    return out


def selection_from_kos(
    kos: KeyObjectSelection,
    *,
    resource_id: str,
    patient_id: str | None,
    study_resource_id: str | None,
    retrieve_url: str,
) -> dict[str, Any]:
    """The ImagingSelection of one series of a KOS (:func:`read_kos`): ``code`` = the document
    title (CID 7010, DCM) with ``text`` = the Key Object Description if there is one;
    ``identifier`` = the KOS SOP Instance UID (``urn:dicom:uid``, ``urn:oid:<uid>``, as IHE
    MADO names DICOM objects); ``status`` available; ``issued`` from the document."""
    code: Json = {"coding": [dict(kos.title)]}
    if kos.description is not None:
        code["text"] = kos.description
    return imaging_selection(
        resource_id=resource_id,
        status="available",
        code=code,
        study_uid=kos.study_uid,
        series_uid=kos.series_uid,
        instances=kos.instances,
        patient_id=patient_id,
        study_resource_id=study_resource_id,
        retrieve_url=retrieve_url,
        issued=kos.issued,
        identifiers=[{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{kos.kos_instance_uid}"}],
    )


# ---- POST ----------------------------------------------------------------------------------


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
