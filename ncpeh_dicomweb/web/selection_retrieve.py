"""The "All listed instances" retrieval of the NCPeH imaging sequences: a selection's
instances, in its order, as one ``multipart/related; type="application/dicom"`` stream at
``{DICOMweb root}/selections/{id}`` (the address of the selection's contained Endpoint),
negotiated and transcoded like a study retrieve: one WADO-RS retrieve per instance after one
QIDO that checks which are still there (those gone are counted in a ``Warning``).

A patient-bound token retrieves its patient's selections only: another patient's is 404 as an
unknown one (:func:`.selections.find_selection`), and the selection's study is checked too, as a
study retrieve checks it (:func:`.auth.patient_study`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from aiohttp import web

from ..backends.base import RetrieveEvent, Scope, Target
from ..dicomweb.media import negotiate_instances
from ..errors import NotFound, warning_value
from ..imaging.transcode import encodable
from .audit import patient_peek
from .auth import patient_study
from .fhir_site import FhirSite, fhir_site
from .keys import IMAGING_POOL, accept_of
from .selections import Selection, find_selection, held_instances
from .streaming import stream_parts
from .transcoding import transcoded

__all__ = ["routes"]


async def retrieve_listed(request: web.Request) -> web.StreamResponse:
    """``GET {DICOMweb root}/selections/{id}``: the selection's instances, in its order, as one
    ``multipart/related; type="application/dicom"`` stream (the NCPeH "All listed instances"
    retrieval), negotiated and transcoded like a study retrieve. Instances the PACS no longer
    holds are left out and counted in a ``Warning``; none left is 404."""
    media = negotiate_instances(accept_of(request), can_produce=encodable)
    site = fhir_site(request)
    selection = await find_selection(request, site, request.match_info["id"])
    study = selection.study_uid
    async with patient_study(request, site.site_id, site.backend, site.wado_root, study):
        listed = [i.sop_instance_uid for i in selection.instances]
        held = await held_instances(site, Scope(study, selection.series_uid), listed)
        present = [uid for uid in listed if uid in held]
        if not present:
            raise NotFound(
                "none of the selection's instances is in the PACS any more",
                detail={"id": request.match_info["id"]},
            )
        headers = {}
        if len(present) < len(listed):
            gone = len(listed) - len(present)
            headers["Warning"] = warning_value(f"{gone} listed instance(s) no longer in the PACS")
        events = _listed_events(site, selection, present)
        events = transcoded(events, media.transfer_syntax, request.app[IMAGING_POOL])
        return await stream_parts(
            request,
            events,
            content_type=media.content_type,
            part_type=media.part_content_type(),
            what=f"retrieve of the instances of selection {request.match_info['id'][:64]}",
            headers=headers,
            peek=patient_peek(request),
        )


async def _listed_events(
    site: FhirSite, selection: Selection, uids: Sequence[str]
) -> AsyncGenerator[RetrieveEvent, None]:
    for uid in uids:
        target = Target(selection.study_uid, selection.series_uid, uid)
        async with aclosing(site.backend.retrieve(target, site.wado_root)) as events:
            async for event in events:
                yield event


def routes(prefix: str) -> list[web.RouteDef]:
    """The listed-instances retrieval under a DICOMweb root."""
    return [web.get(f"{prefix}/selections/{{id}}", retrieve_listed)]
