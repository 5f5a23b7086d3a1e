"""Patient-bound tokens on a gateway process in front of the real Orthanc, over a DICOMweb site
("web") and a DIMSE site ("get"): a token bound to the Czech patient 456789123 (issuer
CZ-NCPEH) sees that patient's data only, on every route (QIDO at each level, WADO retrieve,
metadata, frames, bulk data, rendered, thumbnail, FHIR ImagingStudy search/read and the vendor
route, Patient read, ImagingSelection search/read/retrieve/create/delete). Another patient's
study is answered exactly as one that does not exist; the patient's own is answered exactly as
an unbound (system) token gets it. Keys, JWK Set and tokens are made here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from fhir.resources.R4B.operationoutcome import OperationOutcome

from ncpeh_dicomweb.fhir.tokens import patient_resource_id
from tests.conftest import CZ_SYSTEM, DimseGateway, Pacs, running_dimse_gateway
from tests.integration.multipart_split import split_multipart
from tests.unit.test_security_tokens import AUDIENCE, ISSUER, claims, jwks_document, rsa_key

pytestmark = pytest.mark.integration

SITES = ["web", "get"]
KEY = rsa_key("patient-binding")
SCOPE = "system/*.cruds"
CZ_PATIENT, CZ_ISSUER = "456789123", "CZ-NCPEH"
CZ_ID = patient_resource_id(CZ_PATIENT, CZ_ISSUER)
OTHER_PATIENT, OTHER_ISSUER = "DE1000234", "KLINIKUM-NORD-MUC"
OTHER_ID = patient_resource_id(OTHER_PATIENT, OTHER_ISSUER)
UNKNOWN = ("1.2.3.4.5.6.7.8", "1.2.3.4.5.6.7.9", "1.2.3.4.5.6.7.10")
R5 = "application/fhir+json; fhirVersion=5.0"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
_PID, _ISSUER = "00100020", "00100021"
_UID_TAG = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}


def _bearer(**extra: Any) -> dict[str, str]:
    """A fresh token (five minutes) with every scope, and ``extra`` claims."""
    return {"Authorization": f"Bearer {KEY.sign(claims(scope=SCOPE, **extra))}"}


def system() -> dict[str, str]:
    return _bearer()


def bound() -> dict[str, str]:
    return _bearer(patient=CZ_ID)


@pytest.fixture(scope="module")
def gateway(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    work = tmp_path_factory.mktemp("patient-binding")
    jwks = work / "jwks.json"
    jwks.write_bytes(jwks_document(KEY))
    auth = "\n".join(
        [
            f'jwks_file = "{jwks}"',
            f'issuer = "{ISSUER}"',
            f'audience = "{AUDIENCE}"',
            'patient_identifier_claim = "patient_identifier"',
        ]
    )
    aets = ("NCPEH-PB", "NCPEH-PB2"), ("NCPEH-PBM", "NCPEH-PBM2")
    with running_dimse_gateway(pacs, work, "", *aets, forget_destinations=True, auth=auth) as gw:
        yield gw


def _dicomweb(gw: DimseGateway, site: str) -> str:
    return f"{gw.url}/dicom-web" if site == "web" else gw.root(site)


def _fhir(gw: DimseGateway, site: str) -> str:
    return f"{gw.url}/fhir" if site == "web" else f"{gw.url}/site/{site}/fhir"


def _get(url: str, headers: dict[str, str], **extra: str) -> requests.Response:
    return requests.get(url, headers={**headers, **extra}, timeout=300)


def _study(pacs: Pacs, patient: str, modality: str) -> tuple[str, str, str]:
    """(study, series, instance) UIDs of the first sample study of ``patient`` with
    ``modality``."""
    for study in pacs.manifest["core"]["studies"]:
        if study["patient_id"] == patient and modality in study["modalities"]:
            series = study["series"][0]
            return study["study_uid"], series["uid"], series["instances"][0]
    raise AssertionError(f"no {modality} study of {patient} in the sample")


def _cz(pacs: Pacs) -> tuple[str, str, str]:
    return _study(pacs, CZ_PATIENT, "CT")


def _other(pacs: Pacs) -> tuple[str, str, str]:
    return _study(pacs, OTHER_PATIENT, "CR")


def _json(response: requests.Response) -> Any:
    assert response.status_code == 200, (response.url, response.status_code, response.text[:300])
    return response.json()


def _content(response: requests.Response) -> Any:
    """A 200's content, comparable across responses (multipart boundaries differ)."""
    assert response.status_code == 200, (response.url, response.status_code, response.text[:300])
    content_type = response.headers["Content-Type"]
    if content_type.startswith("multipart/"):
        parts = split_multipart(content_type, response.content)
        return [(h.get("content-type"), h.get("content-location"), body) for h, body in parts]
    return content_type, response.content


def _not_found(response: requests.Response) -> tuple[int, str, Any]:
    """A 404's status, type and body, comparable across responses: the id the client sent,
    which DICOMweb errors echo in their ``detail``, left out."""
    assert response.status_code == 404, (response.url, response.status_code, response.text[:300])
    assert "Traceback" not in response.text
    body = response.json()
    if isinstance(body.get("detail"), dict):
        body["detail"].pop("id", None)
    return response.status_code, response.headers["Content-Type"], body


def _is_cz(dataset: dict[str, Any]) -> bool:
    patient = dataset.get(_PID, {}).get("Value"), dataset.get(_ISSUER, {}).get("Value")
    return patient == ([CZ_PATIENT], [CZ_ISSUER])


# ---------------------------------------------------------------------- the token's claims


@pytest.mark.parametrize(
    ("claim", "description"),
    [
        ({"patient": 456789123}, "the token's patient claim is not a string"),
        ({"patient": "Patient/"}, "the token's patient claim names no patient"),
        (
            {"patient_identifier": "urn:example:unknown|456789123"},
            "the token's patient identifier system is not known here",
        ),
        (
            {"patient": CZ_ID, "patient_identifier": f"{CZ_SYSTEM}|{OTHER_PATIENT}"},
            "the token's patient claims name different patients",
        ),
    ],
)
def test_a_patient_claim_that_cannot_be_read_is_an_invalid_token(
    gateway: DimseGateway, claim: dict[str, Any], description: str
) -> None:
    for url in (f"{gateway.url}/dicom-web/studies", f"{gateway.url}/fhir/ImagingStudy"):
        refused = _get(url, _bearer(**claim))
        assert refused.status_code == 401, refused.text[:300]
        assert refused.headers["WWW-Authenticate"] == (
            f'Bearer realm="ncpeh-dicomweb", error="invalid_token", '
            f'error_description="{description}"'
        )


def test_the_identifier_claim_binds_as_the_patient_claim_does(gateway: DimseGateway) -> None:
    url = f"{gateway.url}/dicom-web/studies"
    by_id = _json(_get(url, bound()))
    for claim in (
        f"{CZ_SYSTEM}|{CZ_PATIENT}",
        {"system": CZ_SYSTEM, "value": CZ_PATIENT},
    ):
        assert _json(_get(url, _bearer(patient_identifier=claim))) == by_id
    assert by_id and all(_is_cz(d) for d in by_id)
    everything = _json(_get(url, system()))
    assert len(everything) > len(by_id)  # the system token sees every patient


# ---------------------------------------------------------------------- QIDO


@pytest.mark.parametrize("site", SITES)
def test_qido_at_every_level_answers_for_the_patient_only(
    gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    root = _dicomweb(gateway, site)
    other_study, _, _ = _other(pacs)
    mine = f"PatientID={CZ_PATIENT}&IssuerOfPatientID={CZ_ISSUER}"
    for level, tag in _UID_TAG.items():
        expected = {d[tag]["Value"][0] for d in _json(_get(f"{root}/{level}?{mine}", system()))}
        assert expected
        for query in ("", "PatientID=*", f"PatientID={CZ_PATIENT}", "PatientID=4567*"):
            found = _json(_get(f"{root}/{level}?{query}", bound()))
            assert all(_is_cz(d) for d in found), (level, query)
            assert {d[tag]["Value"][0] for d in found} == expected, (level, query)
        for query in (
            f"PatientID={OTHER_PATIENT}",
            f"PatientID={OTHER_PATIENT}&IssuerOfPatientID={OTHER_ISSUER}",
            f"IssuerOfPatientID={OTHER_ISSUER}",
            f"PatientID={CZ_PATIENT}&IssuerOfPatientID={OTHER_ISSUER}",
            f"StudyInstanceUID={other_study}",
        ):
            assert _json(_get(f"{root}/{level}?{query}", bound())) == [], (level, query)
    # Paging goes over the patient's studies only.
    studies = _json(_get(f"{root}/studies?{mine}", system()))
    paged = [_json(_get(f"{root}/studies?limit=1&offset={n}", bound())) for n in range(4)]
    assert [len(p) for p in paged] == [1] * len(studies) + [0] * (4 - len(studies))
    assert {p[0]["0020000D"]["Value"][0] for p in paged if p} == {
        s["0020000D"]["Value"][0] for s in studies
    }


@pytest.mark.parametrize("site", SITES)
def test_scoped_qido_of_another_patients_study_is_empty(
    gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    root = _dicomweb(gateway, site)
    cz_study, cz_series, _ = _cz(pacs)
    other_study, other_series, _ = _other(pacs)
    unknown_study, unknown_series, _ = UNKNOWN
    for path in ("series", "instances", f"series/{other_series}/instances"):
        assert _json(_get(f"{root}/studies/{other_study}/{path}", system()))  # it is there
        refused = _get(f"{root}/studies/{other_study}/{path}", bound())
        unknown = _get(
            f"{root}/studies/{unknown_study}/{path.replace(other_series, unknown_series)}", bound()
        )
        assert _json(refused) == [] and refused.content == unknown.content, path
    # The patient's own study: what the system token gets, the patient's attributes aside.
    for path in ("series", "instances", f"series/{cz_series}/instances"):
        as_system = _json(_get(f"{root}/studies/{cz_study}/{path}", system()))
        as_patient = _json(_get(f"{root}/studies/{cz_study}/{path}", bound()))
        assert as_system and all(_is_cz(d) for d in as_patient)
        strip = [{k: v for k, v in d.items() if k not in (_PID, _ISSUER)} for d in as_system]
        assert [{k: v for k, v in d.items() if k not in (_PID, _ISSUER)} for d in as_patient] == (
            strip
        )


# ---------------------------------------------------------------------- WADO


def _wado_paths(study: str, series: str, instance: str) -> dict[str, str]:
    """Every WADO-RS resource of a study, by name."""
    s = f"studies/{study}"
    se = f"{s}/series/{series}"
    i = f"{se}/instances/{instance}"
    return {
        "retrieve study": s,
        "retrieve series": se,
        "retrieve instance": i,
        "metadata study": f"{s}/metadata",
        "metadata series": f"{se}/metadata",
        "metadata instance": f"{i}/metadata",
        "frames": f"{i}/frames/1",
        "bulk data": f"{i}/bulk/7FE00010",
        "rendered study": f"{s}/rendered",
        "rendered series": f"{se}/rendered",
        "rendered instance": f"{i}/rendered",
        "rendered frame": f"{i}/frames/1/rendered",
        "thumbnail study": f"{s}/thumbnail",
        "thumbnail instance": f"{i}/thumbnail",
    }


@pytest.mark.parametrize("site", SITES)
def test_another_patients_study_is_an_unknown_one_on_every_wado_route(
    gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    root = _dicomweb(gateway, site)
    cz_study, _, _ = _cz(pacs)
    other_study, other_series, other_instance = _other(pacs)
    other = _wado_paths(other_study, other_series, other_instance)
    unknown = _wado_paths(*UNKNOWN)
    # Another patient's series and instance under the patient's own study: unknown too.
    mixed = _wado_paths(cz_study, other_series, other_instance)
    assert _get(f"{root}/{other['metadata study']}", system()).status_code == 200  # it is there
    for name, path in other.items():
        expected = _not_found(_get(f"{root}/{unknown[name]}", bound()))
        assert _not_found(_get(f"{root}/{path}", bound())) == expected, name
        if "study" not in name:
            assert _not_found(_get(f"{root}/{mixed[name]}", bound())) == expected, name
    head = requests.head(f"{root}/{other['retrieve study']}", headers=bound(), timeout=60)
    assert head.status_code == 404


@pytest.mark.parametrize("site", SITES)
def test_the_patients_own_study_is_served_as_to_a_system_token(
    gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    root = _dicomweb(gateway, site)
    for name, path in _wado_paths(*_cz(pacs)).items():
        as_system = _content(_get(f"{root}/{path}", system()))
        assert _content(_get(f"{root}/{path}", bound())) == as_system, name


# ---------------------------------------------------------------------- FHIR


def _bundle(gw: DimseGateway, site: str, query: str, headers: dict[str, str]) -> dict[str, Any]:
    bundle: dict[str, Any] = _json(_get(f"{_fhir(gw, site)}/ImagingStudy?{query}", headers))
    assert bundle["resourceType"] == "Bundle"
    return bundle


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


@pytest.mark.parametrize("site", SITES)
def test_imaging_study_search_is_narrowed_to_the_patient(gateway: DimseGateway, site: str) -> None:
    mine = _bundle(gateway, site, f"patient.identifier=|{CZ_PATIENT}&_count=100", system())
    assert mine["total"] == 3
    everything = _bundle(gateway, site, "_count=100", bound())
    assert _ids(everything) == _ids(mine) and everything["total"] == mine["total"]
    included = _bundle(gateway, site, "_include=ImagingStudy:patient&_count=100", bound())
    patients = [e["resource"]["id"] for e in included["entry"] if e["search"]["mode"] == "include"]
    assert patients == [CZ_ID]
    theirs = _bundle(gateway, site, f"patient.identifier=|{OTHER_PATIENT}", system())
    assert theirs["total"] > 0
    for query in (
        f"patient.identifier=|{OTHER_PATIENT}",
        f"patient=Patient/{OTHER_ID}",
        f"subject={OTHER_ID}",
        "_id=" + ",".join(sorted(_ids(theirs))),
        "_summary=count&modality=CR&patient.identifier=|DE1000234",
    ):
        empty = _bundle(gateway, site, query, bound())
        assert empty["total"] == 0 and not empty.get("entry"), query


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("route", ["fhir", "vendor"])
def test_imaging_study_read_and_the_vendor_route(
    gateway: DimseGateway, site: str, route: str
) -> None:
    # The vendor route reads the ids of /site/{site}/fhir (on the default site too).
    base = _fhir(gateway, site) if route == "fhir" else f"{gateway.url}/site/{site}/fhir"

    def read(resource_id: str, headers: dict[str, str]) -> requests.Response:
        if route == "vendor":
            return _get(f"{gateway.url}/site/{site}/fhir/imaging-study/{resource_id}", headers)
        return _get(f"{base}/ImagingStudy/{resource_id}", headers)

    theirs = _ids(_json(_get(f"{base}/ImagingStudy?patient.identifier=|{OTHER_PATIENT}", system())))
    mine = _ids(_json(_get(f"{base}/ImagingStudy?patient.identifier=|{CZ_PATIENT}", system())))
    assert theirs and len(mine) == 3
    # An unknown id: a UID on the default site's FHIR base, else one no study was served as.
    default_site = route == "fhir" and site == "web"
    unknown = _not_found(read(UNKNOWN[0] if default_site else "h0", bound()))
    if route == "vendor":
        assert unknown[2] == {"message": "no such ImagingStudy", "statusCode": 404}
    else:
        OperationOutcome.model_validate(unknown[2])
    for resource_id in theirs:
        assert _json(read(resource_id, system()))["id"] == resource_id  # it is there
        assert _not_found(read(resource_id, bound())) == unknown
    for resource_id in mine:
        assert _json(read(resource_id, bound())) == _json(read(resource_id, system()))


@pytest.mark.parametrize("site", SITES)
def test_patient_read_of_another_patient_is_unknown(gateway: DimseGateway, site: str) -> None:
    base = _fhir(gateway, site)
    assert _json(_get(f"{base}/Patient/{OTHER_ID}", system()))["id"] == OTHER_ID
    unknown = _not_found(_get(f"{base}/Patient/nobody-here", bound()))
    assert _not_found(_get(f"{base}/Patient/{OTHER_ID}", bound())) == unknown
    no_issuer = patient_resource_id(CZ_PATIENT, None)  # the same PatientID, no issuer
    assert _not_found(_get(f"{base}/Patient/{no_issuer}", bound())) == unknown
    mine = _json(_get(f"{base}/Patient/{CZ_ID}", bound()))
    assert mine == _json(_get(f"{base}/Patient/{CZ_ID}", system()))


# ---------------------------------------------------------------------- ImagingSelection


def _selections(gw: DimseGateway, site: str, query: str, headers: dict[str, str]) -> list[Any]:
    url = f"{_fhir(gw, site)}/ImagingSelection?{query}"
    bundle = _json(_get(url, headers, Accept=R5))
    return [e["resource"] for e in bundle.get("entry", [])]


def _address(resource: dict[str, Any]) -> str:
    (endpoint,) = [c for c in resource["contained"] if c["resourceType"] == "Endpoint"]
    return str(endpoint["address"])


def _post(gw: DimseGateway, site: str, body: object, headers: dict[str, str]) -> requests.Response:
    return requests.post(
        f"{_fhir(gw, site)}/ImagingSelection",
        data=orjson.dumps(body),
        headers={**headers, "Content-Type": "application/fhir+json", "Accept": R5},
        timeout=120,
    )


def _new(study: str, series: str, instances: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": DCM, "code": "113000"}]},
        "studyUid": study,
        "seriesUid": series,
        "instance": [{"uid": uid} for uid in instances],
    }


@pytest.mark.parametrize("site", SITES)
def test_imaging_selections_of_another_patient_are_unknown(
    gateway: DimseGateway, site: str
) -> None:
    base = _fhir(gateway, site)
    every = _selections(gateway, site, "_count=100", system())
    mine = [s for s in every if s["subject"]["reference"] == f"Patient/{CZ_ID}"]
    theirs = [s for s in every if s["subject"]["reference"] != f"Patient/{CZ_ID}"]
    assert len(mine) >= 2 and theirs  # the sample KOS of the Czech and of the Italian patient
    seen = _selections(gateway, site, "_count=100", bound())
    assert sorted(s["id"] for s in seen) == sorted(s["id"] for s in mine)
    for other in theirs:
        query = f"patient={other['subject']['reference']}"
        assert _selections(gateway, site, query, system())
        assert _selections(gateway, site, query, bound()) == []
    unknown_kos = _not_found(_get(f"{base}/ImagingSelection/1.2.3.4-1", bound(), Accept=R5))
    unknown_created = str(uuid.uuid4())
    unknown = _not_found(_get(f"{base}/ImagingSelection/{unknown_created}", bound(), Accept=R5))
    assert unknown == unknown_kos
    unknown_listed = _not_found(_get(f"{_dicomweb(gateway, site)}/selections/h0", bound()))
    for other in theirs:
        url = f"{base}/ImagingSelection/{other['id']}"
        assert _get(url, system(), Accept=R5).status_code == 200
        assert _not_found(_get(url, bound(), Accept=R5)) == unknown
        assert _not_found(_get(_address(other), bound())) == unknown_listed
    for own in mine:
        url = f"{base}/ImagingSelection/{own['id']}"
        assert _json(_get(url, bound(), Accept=R5)) == _json(_get(url, system(), Accept=R5))
        listed = _content(_get(_address(own), bound()))
        assert listed == _content(_get(_address(own), system())) and listed


@pytest.mark.parametrize("site", SITES)
def test_creating_and_deleting_selections(gateway: DimseGateway, pacs: Pacs, site: str) -> None:
    base = _fhir(gateway, site)
    other_study, other_series, other_instance = _other(pacs)
    on_other = _new(other_study, other_series, [other_instance])
    # Another patient's study is, for a bound token, a study the PACS does not have: 422.
    refused = _post(gateway, site, on_other, bound())
    unknown = _post(gateway, site, {**on_other, "studyUid": UNKNOWN[0]}, bound())
    assert refused.status_code == unknown.status_code == 422, refused.text[:300]
    assert refused.content == unknown.content
    assert refused.json()["issue"][0]["expression"] == ["ImagingSelection.studyUid"]
    # The system token may; the bound one can then neither read nor delete it.
    created = _post(gateway, site, on_other, system())
    assert created.status_code == 201, created.text[:300]
    url = f"{base}/ImagingSelection/{created.json()['id']}"
    unknown_read = _not_found(_get(f"{base}/ImagingSelection/{uuid.uuid4()}", bound(), Accept=R5))
    assert _not_found(_get(url, bound(), Accept=R5)) == unknown_read
    assert requests.delete(url, headers=bound(), timeout=60).status_code == 404
    assert _get(url, system(), Accept=R5).status_code == 200  # still there
    assert _not_found(_get(_address(created.json()), bound()))
    # The patient's own: created, read, found, retrieved, deleted.
    cz_study, cz_series, _ = _cz(pacs)
    study = next(s for s in pacs.manifest["core"]["studies"] if s["study_uid"] == cz_study)
    own = _post(
        gateway, site, _new(cz_study, cz_series, study["series"][0]["instances"][:2]), bound()
    )
    assert own.status_code == 201, own.text[:300]
    resource = own.json()
    assert resource["subject"]["reference"] == f"Patient/{CZ_ID}"
    own_url = f"{base}/ImagingSelection/{resource['id']}"
    assert _json(_get(own_url, bound(), Accept=R5)) == resource
    assert resource["id"] in {s["id"] for s in _selections(gateway, site, "_count=100", bound())}
    assert len(_content(_get(_address(resource), bound()))) == 2
    assert requests.delete(own_url, headers=bound(), timeout=60).status_code == 204
    assert _get(own_url, bound(), Accept=R5).status_code == 410
    assert requests.delete(url, headers=system(), timeout=60).status_code == 204
    # Deleted: another patient's is still unknown to the bound token (not 410).
    assert _not_found(_get(url, bound(), Accept=R5)) == unknown_read
    assert requests.delete(url, headers=bound(), timeout=60).status_code == 404
