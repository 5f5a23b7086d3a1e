"""FHIR R5 ImagingSelection (sans-I/O): ids and building, from a DICOM Key Object Selection
document (read in :mod:`.kos`) or from a client's POST (validated in :mod:`.selection_post`).

References: FHIR R5 imagingselection.html (elements, their order and cardinality), R5
endpoint.html, R5 datatypes (id, instant), R5 json.html (no null, no empty value).

A KOS document lists instances, possibly of several series; an ImagingSelection holds one
series. So one KOS gives one selection per referenced series of its own study
(:func:`.kos.read_kos`, :func:`kos_selection_id`), built with :func:`selection_from_kos`.
"""

from __future__ import annotations

import copy
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ..dicomweb.uids import is_valid_uid
from .codes import ENDPOINT_CONNECTION_TYPE, URI_SYSTEM, Json
from .kos import KeyObjectSelection, ListedInstance

__all__ = [
    "CONTAINED_ENDPOINT_ID",
    "imaging_selection",
    "is_created_selection_id",
    "kos_selection_id",
    "new_selection_id",
    "parse_kos_selection_id",
    "selection_from_kos",
]

CONTAINED_ENDPOINT_ID: Final = "listed-instances"
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_KOS_ID = re.compile(r"([0-9.]{1,64})-([1-9][0-9]{0,8})")
_CREATED_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_ID_NAMESPACE = b"ncpeh-dicomweb/ImagingSelection"
_WADO_RS: Final = {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"}


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
