"""Where an ImagingSelection comes from, and finding one by id: read live from a Key Object
Selection document in the PACS, or created by a client and kept in the gateway's store.

=======================  ===================================  ==============================
selection                id                                   interactions
=======================  ===================================  ==============================
from a KOS in the PACS   ``{KOS SOP UID}-{n}`` (n-th series   search, read; DELETE is 405:
                         referenced) or a digest on non-      the document is the PACS's
                         default sites (``fhir.selection``)
created by ``POST``      a UUID                               search, read, DELETE (then
                                                              410)
=======================  ===================================  ==============================

A KOS costs the metadata of its series (one request per KO series); IOCM rejection notes are
not selections. The selections served are remembered, so that one whose KOS the PACS loses is
410. Each selection's contained Endpoint names ``{DICOMweb root}/selections/{id}``
(:mod:`.selection_retrieve`).

A patient-bound token finds its patient's selections only (:func:`find_selection`): another
patient's is 404 exactly as an unknown id, never 410 (that would tell it exists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..backends.base import DicomJson, Scope, Target
from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import first_value
from ..errors import Gone, NotFound
from ..fhir.kos import (
    KOS_SOP_CLASS,
    KeyObjectSelection,
    ListedInstance,
    is_rejection_note,
    read_kos,
)
from ..fhir.selection import (
    is_created_selection_id,
    kos_selection_id,
    parse_kos_selection_id,
    selection_from_kos,
)
from ..fhir.tokens import parse_patient_resource_id, patient_resource_id
from ..state import StoredSelection
from .auth import bound_qido, patient_binding
from .fhir_site import FhirSite, dataset_text, qido
from .keys import STORE

__all__ = [
    "SELECTION_KIND",
    "Selection",
    "find_selection",
    "from_store",
    "held_instances",
    "kos_series_selections",
    "listed_url",
    "remember_served",
]

SELECTION_KIND = "ImagingSelection"  # in the store's record of ids served
_UID_BATCH = 100  # SOP Instance UIDs per QIDO query when checking a selection's instances
_SERIES_UID, _STUDY_UID, _SOP_UID, _SOP_CLASS = "0020000E", "0020000D", "00080018", "00080016"


@dataclass(frozen=True, slots=True)
class Selection:
    """A selection found: its resource (for this request's URLs) and what it lists."""

    resource: dict[str, Any]
    study_uid: str
    series_uid: str
    instances: tuple[ListedInstance, ...]
    patient: tuple[str, str | None] | None  # PatientID, IssuerOfPatientID when known
    kos_key: str | None  # "{KOS SOP UID}/{n}" for one read from a KOS; None if created


def listed_url(site: FhirSite, resource_id: str) -> str:
    return f"{site.wado_root}/selections/{resource_id}"


# ---------------------------------------------------------------------- from the PACS


def _from_kos(site: FhirSite, kos: KeyObjectSelection, index: int) -> Selection:
    resource_id = kos_selection_id(kos.kos_instance_uid, index, site.id_site)
    patient = (kos.patient_id, kos.issuer) if kos.patient_id is not None else None
    resource = selection_from_kos(
        kos,
        resource_id=resource_id,
        patient_id=None if patient is None else patient_resource_id(*patient),
        study_resource_id=site.resource_id(kos.study_uid),
        retrieve_url=listed_url(site, resource_id),
    )
    key = f"{kos.kos_instance_uid}/{index}"
    return Selection(resource, kos.study_uid, kos.series_uid, kos.instances, patient, key)


def _selections_of_kos(site: FhirSite, metadata: DicomJson) -> list[Selection]:
    if first_value(metadata, _SOP_CLASS) != KOS_SOP_CLASS or is_rejection_note(metadata):
        return []
    return [_from_kos(site, kos, i) for i, kos in enumerate(read_kos(metadata), start=1)]


async def kos_series_selections(site: FhirSite, series: DicomJson) -> list[Selection]:
    """The selections of every KOS in one KO series: one metadata request."""
    study, series_uid = dataset_text(series, _STUDY_UID), dataset_text(series, _SERIES_UID)
    if study is None or series_uid is None:
        return []
    try:
        metadata = await site.backend.metadata(Target(study, series_uid), site.wado_root)
    except NotFound:
        return []  # gone between the QIDO and now
    return [s for dataset in metadata for s in _selections_of_kos(site, dataset)]


# ---------------------------------------------------------------------- from the store


def from_store(site: FhirSite, stored: StoredSelection) -> Selection:
    resource = dict(stored.resource)
    # The retrieval address follows the URL the client uses now (proxy, public_url).
    resource["contained"] = [
        {**c, "address": listed_url(site, stored.resource_id)}
        if c.get("resourceType") == "Endpoint"
        else c
        for c in resource.get("contained", [])
    ]
    key = parse_patient_resource_id(stored.patient_id)
    patient = (key.patient_id, key.issuer) if key is not None else None
    instances = tuple(
        ListedInstance(i.sop_instance_uid, i.sop_class_uid, i.frames) for i in stored.instances
    )
    return Selection(resource, stored.study_uid, stored.series_uid, instances, patient, None)


async def find_selection(request: web.Request, site: FhirSite, resource_id: str) -> Selection:
    """The selection ``resource_id`` names; 404 if none, 410 if it was deleted or its KOS is
    no longer in the PACS. For a patient-bound token, 404 if it is another patient's (or if
    whose it was cannot be told: a KOS the PACS no longer has)."""
    store = request.app[STORE]
    binding = patient_binding(request)
    if is_created_selection_id(resource_id):
        stored = await store.selection(site.site_id, resource_id)
        if stored is None or (binding is not None and stored.patient_id != binding.resource_id):
            raise NotFound("no such ImagingSelection", detail={"id": resource_id})
        if stored.deleted is not None:
            raise Gone("the ImagingSelection was deleted", detail={"id": resource_id})
        return from_store(site, stored)
    key = parse_kos_selection_id(resource_id) if site.default else None
    remembered = await store.recall(site.site_id, SELECTION_KIND, resource_id)
    if key is None and remembered is not None:
        remembered_uid, _, position = remembered.rpartition("/")
        key = (remembered_uid, int(position)) if position.isdigit() else None
    if key is None:
        raise NotFound("no such ImagingSelection", detail={"id": resource_id[:64]})
    kos_uid, index = key
    params = [("SOPInstanceUID", kos_uid), ("includefield", _SERIES_UID)]
    found = await bound_qido(request, site, params, Level.INSTANCE)
    selections: list[Selection] = []
    if found:
        study, series = dataset_text(found[0], _STUDY_UID), dataset_text(found[0], _SERIES_UID)
        if study is not None and series is not None:
            try:
                target = Target(study, series, kos_uid)
                metadata = await site.backend.metadata(target, site.wado_root)
                selections = _selections_of_kos(site, metadata[0]) if metadata else []
            except NotFound:
                selections = []
    if 1 <= index <= len(selections):
        chosen = selections[index - 1]
        if binding is not None and not binding.is_patient(chosen.patient):
            raise NotFound("no such ImagingSelection", detail={"id": resource_id[:64]})
        await remember_served(request, site, [chosen])
        return chosen
    # A bound token learns the KOS is gone only if the PACS still says it is its patient's.
    if remembered is not None and (binding is None or found):
        raise Gone("the key object selection is no longer in the PACS", detail={"id": resource_id})
    raise NotFound("no such ImagingSelection", detail={"id": resource_id[:64]})


async def remember_served(request: web.Request, site: FhirSite, found: Sequence[Selection]) -> None:
    """Record the KOS selections served, so that one the PACS loses later is 410."""
    pairs = [(str(s.resource["id"]), s.kos_key) for s in found if s.kos_key is not None]
    if pairs:
        await request.app[STORE].remember(site.site_id, SELECTION_KIND, pairs)


async def held_instances(
    site: FhirSite, scope: Scope, uids: Sequence[str]
) -> dict[str, str | None]:
    """Which of ``uids`` the PACS holds in ``scope``, with their SOP Classes."""
    held: dict[str, str | None] = {}
    for start in range(0, len(uids), _UID_BATCH):
        batch = uids[start : start + _UID_BATCH]
        params = [("SOPInstanceUID", ",".join(batch)), ("includefield", _SOP_CLASS)]
        for dataset in await qido(site, params, Level.INSTANCE, scope):
            uid = dataset_text(dataset, _SOP_UID)
            if uid is not None:
                held[uid] = dataset_text(dataset, _SOP_CLASS)
    return held
