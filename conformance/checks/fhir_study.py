"""NCPeH FHIR checks of the test study's ImagingStudy (its DICOM identifier, counts against QIDO,
an endpoint that serves it over WADO-RS), R5 on request, and ImagingSelection when the server
declares it. Registered after ``fhir_bundle``, so the reports keep their order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin

from ..context import Probe
from ..fhir_model import (
    DICOM_UID,
    R4,
    R5,
    codes,
    dicom_value,
    differences,
    same_origin,
    study_uids,
    validate,
)
from ..model import Failed, Level, Skipped, check
from ._fhir_common import (
    DICOM_JSON,
    FHIR_JSON,
    HTTP,
    R5_JSON,
    _capability,
    _declared,
    _fail_if,
    _matches,
    _object,
    _param,
    _patient,
    _r5_capability,
    _study,
)

__all__: list[str] = []


# ---------------------------------------------------------------- ImagingStudy content


@check(
    "fhir.imagingstudy.study-uid",
    section="NCPeH Imaging Study (an ImagingStudy SHALL reference one DICOM Study); IHE MADO",
    level=Level.MUST,
    title="The ImagingStudy names its study as identifier urn:dicom:uid / urn:oid:UID",
)
async def imagingstudy_uid(probe: Probe) -> None:
    study = await _study(probe)
    wanted = {"system": DICOM_UID, "value": f"urn:oid:{study.fixture.study}"}
    identifiers = study.resource.get("identifier") or []
    if not any(
        isinstance(i, dict) and all(i.get(k) == v for k, v in wanted.items()) for i in identifiers
    ):
        raise Failed(f"ImagingStudy/{study.resource.get('id')}: no identifier {wanted}")


@check(
    "fhir.imagingstudy.counts",
    section="FHIR R4 ImagingStudy (numberOfSeries, numberOfInstances, series)",
    level=Level.SHOULD,
    title="Series and instance counts agree with the resource's series and with QIDO",
)
async def imagingstudy_counts(probe: Probe) -> None:
    study = await _study(probe)
    resource, fixture = study.resource, study.fixture
    series = [s for s in resource.get("series") or [] if isinstance(s, dict)]
    problems = []
    for name, tag in (("numberOfSeries", "00201206"), ("numberOfInstances", "00201208")):
        value = dicom_value(fixture.study_json, tag)
        if value is not None and name in resource and str(value) != str(resource[name]):
            problems.append(f"{name} {resource[name]}, QIDO says {value}")
    if series and "numberOfSeries" in resource and len(series) != resource["numberOfSeries"]:
        problems.append(f"numberOfSeries {resource['numberOfSeries']}, {len(series)} series listed")
    listed = [n for s in series if isinstance(n := s.get("numberOfInstances"), int)]
    total = resource.get("numberOfInstances")
    if series and len(listed) == len(series) and total is not None and sum(listed) != total:
        problems.append(f"numberOfInstances {total}, the series add up to {sum(listed)}")
    for item in series:
        instances = item.get("instance")
        if instances and item.get("numberOfInstances") not in (None, len(instances)):
            problems.append(f"series {item.get('uid')}: {len(instances)} instances listed")
    answer = await probe.get(f"/studies/{fixture.study}/series", accept=DICOM_JSON)
    qido_series = answer.expect(200).json()
    rows = qido_series if isinstance(qido_series, list) else []
    known = {dicom_value(s, "0020000E") for s in rows}
    strangers = [s.get("uid") for s in series if s.get("uid") not in known]
    if strangers:
        problems.append(f"series not in the study by QIDO: {strangers[:3]}")
    _fail_if(problems)


@check(
    "fhir.imagingstudy.endpoint",
    section="FHIR R4 ImagingStudy.endpoint; IHE MADO (dicom-wado-rs)",
    level=Level.SHOULD,
    title="Its endpoint reference resolves to an Endpoint whose WADO-RS address serves the study",
)
async def imagingstudy_endpoint(probe: Probe) -> None:
    study = await _study(probe)
    references = [
        r.get("reference") for r in study.resource.get("endpoint") or [] if isinstance(r, dict)
    ]
    if not references:
        raise Failed(f"ImagingStudy/{study.resource.get('id')} has no endpoint")
    problems = []
    for reference in references:
        try:
            endpoint = await _endpoint(probe, study.resource, reference)
            await _endpoint_serves(probe, endpoint, study.fixture.study)
        except Failed as exc:
            problems.append(str(exc))
    _fail_if(problems)


async def _endpoint(probe: Probe, resource: Mapping[str, Any], reference: Any) -> dict[str, Any]:
    if not isinstance(reference, str) or not reference:
        raise Failed(f"an endpoint reference is {reference!r}")
    if reference.startswith("#"):
        contained = [c for c in resource.get("contained") or [] if isinstance(c, dict)]
        found = next((c for c in contained if c.get("id") == reference[1:]), None)
        if found is None:
            raise Failed(f"endpoint {reference}: no such contained resource")
        return validate(found, R4, f"contained {reference}")
    url = urljoin(probe.fhir(""), reference)
    if not same_origin(url, probe.fhir("")):
        raise Failed(f"endpoint {reference} names another host than the FHIR server")
    answer = (await probe.get(url, accept=FHIR_JSON)).expect(200)
    return validate(_object(answer), R4, f"GET {answer.url}")


async def _endpoint_serves(probe: Probe, endpoint: Mapping[str, Any], uid: str) -> None:
    address = endpoint.get("address")
    connection = codes(endpoint.get("connectionType"))
    if not isinstance(address, str) or not address.startswith(("http://", "https://")):
        raise Failed(f"Endpoint {endpoint.get('id')}: address {address!r} is not an absolute URL")
    if not any(code == "dicom-wado-rs" for _s, code in connection):
        return  # only a WADO-RS address can be followed to the study
    if not (same_origin(address, probe.url("")) or same_origin(address, probe.fhir(""))):
        raise Failed(f"Endpoint {endpoint.get('id')}: address {address} names another host")
    url = f"{address.rstrip('/')}/studies/{uid}/metadata"
    (await probe.get(url, accept=DICOM_JSON)).expect(200)


# ---------------------------------------------------------------- R5 and ImagingSelection


@check(
    "fhir.r5",
    section=f"{HTTP}: fhirVersion media-type parameter (R5 on request)",
    level=Level.MAY,
    title="Accept: application/fhir+json; fhirVersion=5.0 gives R5 that validates (search, read)",
)
async def r5(probe: Probe) -> None:
    if await _r5_capability(probe) is None:
        raise Skipped("the server does not offer R5 (metadata with fhirVersion=5.0)")
    fixture = await probe.fixture()
    params = [("identifier", f"{DICOM_UID}|urn:oid:{fixture.study}")]
    found = await _matches(probe, params, version=R5)
    resource = next((r for r in found if fixture.study in study_uids(r)), None)
    if resource is None:
        raise Failed(f"R5 ImagingStudy?{_param(params)} does not give the test study")
    url = probe.fhir(f"ImagingStudy/{resource.get('id')}")
    answer = (await probe.get(url, accept=R5_JSON)).expect(200)
    validate(_object(answer), R5, f"GET {answer.url} (R5)")


async def _selection_declared(probe: Probe) -> None:
    r4 = _declared(await _capability(probe), "ImagingSelection")
    if r4 is None and _declared(await _r5_capability(probe), "ImagingSelection") is None:
        raise Skipped("the CapabilityStatement does not list ImagingSelection")


async def _selections(probe: Probe) -> list[dict[str, Any]]:
    await _selection_declared(probe)
    _fixture, patient = await _patient(probe)
    params = [("patient.identifier", f"|{patient}")]
    return await _matches(probe, params, kind="ImagingSelection", version=R5)


@check(
    "fhir.selection.search",
    section="FHIR R5 ImagingSelection: search (when declared)",
    level=Level.SHOULD,
    title="ImagingSelection?patient.identifier=|ID gives an R5 searchset Bundle that validates",
)
async def selection_search(probe: Probe) -> None:
    await _selections(probe)


@check(
    "fhir.selection.read",
    section="FHIR R5 ImagingSelection: read (when declared)",
    level=Level.SHOULD,
    title="GET ImagingSelection/{id} of the search results validates (R5), holds the entry",
)
async def selection_read(probe: Probe) -> None:
    found = await _selections(probe)
    if not found:
        raise Skipped("the test patient has no ImagingSelection")
    problems = []
    for resource in found[:3]:
        url = probe.fhir(f"ImagingSelection/{resource.get('id')}")
        answer = (await probe.get(url, accept=R5_JSON)).expect(200)
        body = validate(_object(answer), R5, f"GET {answer.url}")
        if diff := differences(resource, body):
            problems.append(f"GET {answer.url} against its search entry: {'; '.join(diff[:3])}")
    _fail_if(problems)
