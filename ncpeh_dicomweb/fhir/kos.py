"""DICOM Key Object Selection documents (sans-I/O), read for FHIR R5 ImagingSelection: what
one KOS selects, series by series (the resource is built in :mod:`.selection`).

References: DICOM PS3.3 A.35.4 Key Object Selection Document IOD, C.17.2 SR Document General
(Current Requested Procedure Evidence Sequence), C.17.3 SR Document Content (Content Sequence,
IMAGE content items), PS3.16 TID 2010 "Key Object Selection" and CID 7010 / CID 7011
(document titles; IOCM rejection notes, IHE RAD TF-1 42); FHIR R5 datatypes (instant).

A KOS document lists instances, possibly of several series; an ImagingSelection holds one
series. So :func:`read_kos` gives one :class:`KeyObjectSelection` per referenced series of
the KOS's own study.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from ..backends.base import DicomJson
from ..dicomweb.uids import is_valid_uid
from .codes import DCM, Coding, code_item_coding, fhir_datetime, string, values

__all__ = [
    "KOS_SOP_CLASS",
    "REJECTION_TITLES",
    "KeyObjectSelection",
    "ListedInstance",
    "is_rejection_note",
    "read_kos",
]

KOS_SOP_CLASS: Final = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
#: Titles (DCM code values) of IOCM rejection notes (PS3.16 CID 7011).
REJECTION_TITLES: Final = frozenset({"113001", "113037", "113038", "113039"})

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
_FRAME = re.compile(r"[1-9][0-9]{0,9}")


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
