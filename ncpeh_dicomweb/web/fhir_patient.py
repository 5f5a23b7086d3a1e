"""``GET [base]/Patient/{id}``: the patient an ImagingStudy's ``subject`` references, built live
from the PACS's study-level answers (one QIDO query).

A Patient id encodes PatientID and IssuerOfPatientID (:func:`fhir.tokens.patient_resource_id`),
so reading one needs no store. The PACS is asked by PatientID (and issuer); the answers are
then matched exactly here, since a PatientID may hold ``*`` or ``?``, which QIDO reads as
wildcards. The digest form of an id (an identity too long to encode) cannot be read: 404.
A patient-bound token reads its own patient only: any other id is 404, as an unknown one.
"""

from __future__ import annotations

from aiohttp import web

from ..dicomweb.attributes import Level
from ..errors import NotFound
from ..fhir.mapping import patient
from ..fhir.negotiation import negotiate_fhir
from ..fhir.tokens import parse_patient_resource_id
from .auth import bound_qido, patient_binding
from .fhir_site import (
    MAX_CANDIDATES,
    dataset_text,
    fhir_response,
    fhir_site,
    issuers_of,
)
from .keys import accept_of

__all__ = ["routes"]

_PATIENT_ID, _ISSUER = "00100020", "00100021"
_PATIENT_TAGS = ("00100010", "00100030", "00100040", _ISSUER)


async def read(request: web.Request) -> web.Response:
    fmt = negotiate_fhir(accept_of(request), request.query.get("_format"))
    resource_id = request.match_info["id"]
    key = parse_patient_resource_id(resource_id)
    binding = patient_binding(request)
    if key is None or (binding is not None and not binding.is_patient(key)):
        raise NotFound("no such Patient", detail={"id": resource_id[:64]})
    params = [("PatientID", key.patient_id), ("limit", str(MAX_CANDIDATES))]
    if key.issuer is not None:
        params.append(("IssuerOfPatientID", key.issuer))
    params += [("includefield", tag) for tag in _PATIENT_TAGS]
    site = fhir_site(request)
    for study in await bound_qido(request, site, params, Level.STUDY):
        if dataset_text(study, _PATIENT_ID) != key.patient_id:
            continue
        if (dataset_text(study, _ISSUER) or None) != key.issuer:
            continue
        system = issuers_of(request).system_for(key.issuer)
        resource = patient(
            study, version=fmt.version, resource_id=resource_id, identifier_system=system
        )
        return fhir_response(resource, fmt)
    raise NotFound("no such Patient", detail={"id": resource_id[:64]})


def routes(prefix: str) -> list[web.RouteDef]:
    return [web.get(f"{prefix}/Patient/{{id}}", read)]
