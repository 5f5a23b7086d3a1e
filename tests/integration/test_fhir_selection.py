"""FHIR R5 ImagingSelection against the real Orthanc, on a DICOMweb site and a DIMSE site, with
the gateway's store on SQLite and on PostgreSQL: selections read from the sample KOS documents,
selections created by POST (validated against the PACS), DELETE then 410, the listed-instances
retrieval equal byte for byte to the same instances retrieved one by one, and a gateway killed
with SIGKILL in the middle of POSTs leaving each selection whole or absent."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
import requests
from fhir.resources.bundle import Bundle
from fhir.resources.imagingselection import ImagingSelection
from fhir.resources.operationoutcome import OperationOutcome
from pydicom.uid import generate_uid

from tests.conftest import (
    DimseGateway,
    Pacs,
    free_port,
    running_dimse_gateway,
    start_gateway,
    stop_gateway,
    write_dimse_config,
)
from tests.integration.multipart_split import split_multipart

pytestmark = pytest.mark.integration

SITES = ["web", "get"]
R5 = {"Accept": "application/fhir+json; fhirVersion=5.0"}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
CZ_PATIENT = "456789123"


@dataclass(frozen=True)
class Store:
    work: Path  # the gateway's work dir: its SQLite store is work/state.sqlite3
    database_url: str | None  # or this PostgreSQL database


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Store:
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("module_database_url")
    return Store(tmp_path_factory.mktemp(f"selection-{request.param}"), database_url)


@pytest.fixture(scope="module")
def gateway(pacs: Pacs, store: Store) -> Iterator[DimseGateway]:
    """A gateway (sites ``web`` and ``get``) on the store of ``store``."""
    aets = ("NCPEH-SEL", "NCPEH-SEL2"), ("NCPEH-SELM", "NCPEH-SELM2")
    with running_dimse_gateway(
        pacs, store.work, "", *aets, forget_destinations=True, database_url=store.database_url
    ) as gw:
        yield gw


def _base(gw: DimseGateway, site: str) -> str:
    return f"{gw.url}/fhir" if site == "web" else f"{gw.url}/site/{site}/fhir"


def _wado(gw: DimseGateway, site: str) -> str:
    return f"{gw.url}/dicom-web" if site == "web" else gw.root(site)


def _kos(pacs: Pacs) -> list[dict[str, Any]]:
    kos: list[dict[str, Any]] = pacs.manifest["core"]["kos"]
    return kos


def _cz_kos(pacs: Pacs) -> dict[str, Any]:
    (found,) = [k for k in _kos(pacs) if k["patient_id"] == CZ_PATIENT]
    return found


def _search(gw: DimseGateway, site: str, query: str) -> dict[str, Any]:
    answer = requests.get(f"{_base(gw, site)}/ImagingSelection?{query}", timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    assert "fhirVersion=5.0" in answer.headers["Content-Type"]
    bundle: dict[str, Any] = answer.json()
    Bundle.model_validate(bundle)
    for entry in bundle.get("entry", []):
        ImagingSelection.model_validate(entry["resource"])
    return bundle


def _from_kos(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The selections of a Bundle read from KOS documents (they carry the KOS's identifier)."""
    return [e["resource"] for e in bundle.get("entry", []) if "identifier" in e["resource"]]


def _listed(resource: dict[str, Any]) -> list[str]:
    return [i["uid"] for i in resource.get("instance", [])]


def _address(resource: dict[str, Any]) -> str:
    (endpoint,) = [c for c in resource["contained"] if c["resourceType"] == "Endpoint"]
    assert resource["endpoint"] == [{"reference": f"#{endpoint['id']}"}]
    return str(endpoint["address"])


def _patient_ref(gw: DimseGateway, site: str) -> str:
    answer = requests.get(
        f"{_base(gw, site)}/ImagingStudy?patient.identifier=|{CZ_PATIENT}&_count=1", timeout=60
    )
    return str(answer.json()["entry"][0]["resource"]["subject"]["reference"])


# ---------------------------------------------------------------------- from the KOS


@pytest.mark.parametrize("site", SITES)
def test_the_sample_kos_gives_one_selection_per_referenced_series(
    gateway: DimseGateway, pacs: Pacs, site: str
) -> None:
    kos = _cz_kos(pacs)
    patient = _patient_ref(gateway, site)
    bundle = _search(gateway, site, f"patient={patient}")
    found = _from_kos(bundle)
    assert len(found) == len(kos["references"]) == 2
    by_series = {r["seriesUid"]: r for r in found}
    assert set(by_series) == set(kos["references"])
    for series_uid, sops in kos["references"].items():
        resource = by_series[series_uid]
        assert _listed(resource) == sops
        assert resource["studyUid"] == kos["study"]
        assert resource["subject"]["reference"] == patient
        assert resource["code"]["coding"][0] == {
            "system": DCM,
            "code": "113000",
            "display": "Of Interest",
        } or (resource["code"]["coding"][0]["system"], resource["code"]["coding"][0]["code"]) == (
            DCM,
            "113000",
        )
        assert {"value": f"urn:oid:{kos['sop']}"}.items() <= resource["identifier"][0].items()
        assert resource["derivedFrom"][0]["reference"].startswith("ImagingStudy/")
        assert _address(resource).startswith(_wado(gateway, site))


def test_search_parameters_narrow_the_kos_selections(gateway: DimseGateway, pacs: Pacs) -> None:
    kos = _cz_kos(pacs)
    study = kos["study"]
    assert len(_from_kos(_search(gateway, "web", f"study-uid={study}"))) == 2
    assert len(_from_kos(_search(gateway, "web", f"study-uid=urn:oid:{study}"))) == 2
    assert _from_kos(_search(gateway, "web", "study-uid=1.2.3.999")) == []
    by_identifier = _from_kos(_search(gateway, "web", f"patient.identifier=|{CZ_PATIENT}"))
    assert {r["seriesUid"] for r in by_identifier} == set(kos["references"])
    assert _from_kos(_search(gateway, "web", "patient.identifier=|nobody")) == []
    derived = _from_kos(_search(gateway, "web", f"study-uid={study}"))[0]["derivedFrom"][0]
    by_study = _search(gateway, "web", f"derived-from={derived['reference']}")
    assert len(_from_kos(by_study)) == 2
    for code in (f"{DCM}|113000", "|113000", "113000", f"{DCM}|"):
        assert len(_from_kos(_search(gateway, "web", f"study-uid={study}&code={code}"))) == 2
    assert _from_kos(_search(gateway, "web", f"study-uid={study}&code={DCM}|113037")) == []
    # Every KOS of the sample set, when nothing narrows the search.
    everything = _from_kos(_search(gateway, "web", "_count=100"))
    assert len(everything) == sum(len(k["references"]) for k in _kos(pacs))


def test_the_same_searches_give_the_same_selections_on_both_kinds_of_site(
    gateway: DimseGateway, pacs: Pacs
) -> None:
    study = _cz_kos(pacs)["study"]
    found = {
        site: sorted(
            (r["seriesUid"], tuple(_listed(r)))
            for r in _from_kos(_search(gateway, site, f"study-uid={study}"))
        )
        for site in SITES
    }
    assert found["web"] == found["get"] and len(found["web"]) == 2


@pytest.mark.parametrize("site", SITES)
def test_read_a_kos_selection_by_id(gateway: DimseGateway, pacs: Pacs, site: str) -> None:
    study = _cz_kos(pacs)["study"]
    (first, *_) = _from_kos(_search(gateway, site, f"study-uid={study}"))
    url = f"{_base(gateway, site)}/ImagingSelection/{first['id']}"
    answer = requests.get(url, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json() == first
    ImagingSelection.model_validate(answer.json())
    # R5 only: asking for R4 explicitly is 406; deleting what the PACS owns is 405.
    r4 = requests.get(url, headers={"Accept": "application/fhir+json; fhirVersion=4.0"})
    assert r4.status_code == 406
    OperationOutcome.model_validate(r4.json())
    assert requests.delete(url, timeout=60).status_code == 405
    missing = requests.get(f"{_base(gateway, site)}/ImagingSelection/1.2.3.4-1", timeout=60)
    assert missing.status_code == 404
    OperationOutcome.model_validate(missing.json())


# ---------------------------------------------------------------------- listed instances


def _parts(url: str, accept: str) -> list[tuple[str, bytes]]:
    answer = requests.get(url, headers={"Accept": accept}, timeout=300)
    assert answer.status_code == 200, answer.text[:300]
    return [
        (headers.get("content-type", ""), body)
        for headers, body in split_multipart(answer.headers["Content-Type"], answer.content)
    ]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; transfer-syntax=*',
    ],
)
def test_listed_instances_equal_the_same_instances_one_by_one(
    gateway: DimseGateway, pacs: Pacs, site: str, accept: str
) -> None:
    kos = _cz_kos(pacs)
    for resource in _from_kos(_search(gateway, site, f"study-uid={kos['study']}")):
        listed = _parts(_address(resource), accept)
        one_by_one = [
            part
            for sop in _listed(resource)
            for part in _parts(
                f"{_wado(gateway, site)}/studies/{kos['study']}/series/{resource['seriesUid']}"
                f"/instances/{sop}",
                accept,
            )
        ]
        assert len(listed) == len(_listed(resource))
        assert listed == one_by_one  # byte for byte, and each part's Content-Type


# ---------------------------------------------------------------------- created by POST


def _new_selection(pacs: Pacs, count: int = 2) -> dict[str, Any]:
    """A selection of the first ``count`` instances of the large study's largest series."""
    study = pacs.manifest["large"]["studies"][0]
    series = max(study["series"], key=lambda s: len(s["instances"]))
    assert len(series["instances"]) >= count
    return {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": DCM, "code": "113000"}], "text": "for the tumour board"},
        "studyUid": study["study_uid"],
        "seriesUid": series["uid"],
        "instance": [{"uid": uid} for uid in series["instances"][:count]],
    }


def _post(gw: DimseGateway, site: str, body: object, **kwargs: Any) -> requests.Response:
    headers = {"Content-Type": "application/fhir+json", **kwargs.pop("headers", {})}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(
        f"{_base(gw, site)}/ImagingSelection", data=data, headers=headers, timeout=120, **kwargs
    )


@pytest.mark.parametrize("site", SITES)
def test_create_read_search_retrieve_delete(gateway: DimseGateway, pacs: Pacs, site: str) -> None:
    posted = _new_selection(pacs, 3)
    created = _post(gateway, site, posted)
    assert created.status_code == 201, created.text[:500]
    resource = created.json()
    ImagingSelection.model_validate(resource)
    url = f"{_base(gateway, site)}/ImagingSelection/{resource['id']}"
    assert created.headers["Location"] == f"{url}/_history/1"
    assert created.headers["ETag"] == 'W/"1"'
    assert _listed(resource) == [i["uid"] for i in posted["instance"]]
    assert all(
        i["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2" for i in resource["instance"]
    )
    assert resource["code"] == posted["code"] and resource["subject"]["reference"].startswith(
        "Patient/"
    )
    # Read, and found by the study and by the patient.
    assert requests.get(url, timeout=60).json() == resource
    study = posted["studyUid"]
    assert resource["id"] in {
        e["resource"]["id"] for e in _search(gateway, site, f"study-uid={study}")["entry"]
    }
    patient = resource["subject"]["reference"]
    assert resource["id"] in {
        e["resource"]["id"] for e in _search(gateway, site, f"patient={patient}")["entry"]
    }
    # The listed instances, as one stream, equal the instances one by one.
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    listed = _parts(_address(resource), accept)
    one_by_one = [
        p
        for sop in _listed(resource)
        for p in _parts(
            f"{_wado(gateway, site)}/studies/{study}/series/{posted['seriesUid']}/instances/{sop}",
            accept,
        )
    ]
    assert listed == one_by_one and len(listed) == 3
    # Delete: 204, then 410 on read and on the retrieval, and gone from searches.
    assert requests.delete(url, timeout=60).status_code == 204
    gone = requests.get(url, timeout=60)
    assert gone.status_code == 410
    OperationOutcome.model_validate(gone.json())
    assert requests.get(_address(resource), timeout=60).status_code == 410
    assert resource["id"] not in {
        e["resource"]["id"] for e in _search(gateway, site, f"study-uid={study}").get("entry", [])
    }
    assert requests.delete(url, timeout=60).status_code == 204  # idempotent


def test_a_selection_is_checked_against_the_pacs(gateway: DimseGateway, pacs: Pacs) -> None:
    good = _new_selection(pacs)
    cases: list[tuple[object, int, str | None]] = [
        (
            {**good, "instance": [*good["instance"], {"uid": "1.2.3.4.5"}]},
            422,
            "ImagingSelection.instance[2].uid",
        ),
        ({**good, "studyUid": "1.2.3.4.5"}, 422, "ImagingSelection.studyUid"),
        ({**good, "seriesUid": "1.2.3.4.5"}, 422, "ImagingSelection.seriesUid"),
        (
            {**good, "subject": {"reference": "Patient/someone-else"}},
            422,
            "ImagingSelection.subject",
        ),
        (
            {
                **good,
                "instance": [
                    {
                        "uid": good["instance"][0]["uid"],
                        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{KOS_CLASS}"},
                    }
                ],
            },
            422,
            "ImagingSelection.instance[0].sopClass",
        ),
        ({**good, "resourceType": "ImagingStudy"}, 400, None),
        (b"{not json", 400, None),
    ]
    for body, status, expression in cases:
        answer = _post(gateway, "web", body)
        assert answer.status_code == status, (body, answer.text[:300])
        outcome = answer.json()
        OperationOutcome.model_validate(outcome)
        if expression is not None:
            assert outcome["issue"][0]["expression"] == [expression]
    xml = _post(
        gateway, "web", b"<ImagingSelection/>", headers={"Content-Type": "application/fhir+xml"}
    )
    assert xml.status_code == 415


# ---------------------------------------------------------------------- crash


def test_an_imaging_study_served_then_gone_is_410_on_this_store(
    gateway: DimseGateway, pacs: Pacs, store: Store
) -> None:
    """The ids the gateway served live in the store: on SQLite and on PostgreSQL alike, a study
    read once and since deleted from the PACS is 410 (an id never served stays 404)."""
    kind = "postgres" if store.database_url else "sqlite"
    ds = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["fhir-gone-study", kind, str(time.time())])
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = f"GONE-{kind}"
    out = io.BytesIO()
    ds.save_as(out)
    stored = requests.post(f"{pacs.url}/instances", data=out.getvalue(), timeout=30).json()
    url = f"{_base(gateway, 'web')}/ImagingStudy"
    bundle = requests.get(url, params={"patient.identifier": f"|GONE-{kind}"}, timeout=60).json()
    (resource_id,) = [e["resource"]["id"] for e in bundle["entry"]]
    assert requests.get(f"{url}/{resource_id}", timeout=30).status_code == 200
    assert requests.delete(f"{pacs.url}/studies/{stored['ParentStudy']}", timeout=30).ok
    gone = requests.get(f"{url}/{resource_id}", timeout=30)
    assert gone.status_code == 410, gone.text[:300]
    OperationOutcome.model_validate(gone.json())
    assert gone.json()["issue"][0]["code"] == "deleted"
    never = requests.get(f"{url}/{generate_uid()}", timeout=30)
    assert never.status_code == 404


def test_sigkill_in_the_middle_of_posts_leaves_whole_selections_or_none(
    gateway: DimseGateway, pacs: Pacs, store: Store
) -> None:
    """A second gateway on the same store takes 120-instance POSTs one after the other and is
    killed with SIGKILL at a random moment, six times; on the store after that, every
    selection a 201 announced is there, and every selection there is whole."""
    port = free_port()
    config = write_dimse_config(
        store.work,
        port,
        pacs.dicomweb_root,
        dimse_port=pacs.dicom_port,
        dimse_aet=pacs.aet,
        prefix="",
        get_aets=("NCPEH-CRASH", "NCPEH-CRASH2"),
        move_aets=("NCPEH-CRASHM", "NCPEH-CRASHM2"),
        store_ports=(free_port(), free_port()),
        database_url=store.database_url,
        config_name="crash",
    )
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(7)
    announced: list[str] = []
    cut = 0
    for trial in range(6):
        proc = start_gateway(config, store.work / f"crash-{trial}.log", url)
        stop = threading.Event()

        def post_until_killed(trial: int = trial, stop: threading.Event = stop) -> None:
            n = 0
            while not stop.is_set():
                body = _new_selection(pacs, 120)
                body["code"] = {"text": f"crash {trial}.{n}"}
                n += 1
                try:
                    answer = _post_to(url, body)
                except requests.RequestException:
                    return  # killed under this request
                if answer.status_code == 201:
                    announced.append(answer.json()["id"])

        thread = threading.Thread(target=post_until_killed)
        thread.start()
        time.sleep(rng.uniform(0.3, 1.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        thread.join(timeout=60)
        cut += 1
    assert announced, "no POST completed before the kills: the test proves nothing"
    with running_config(config, store.work / "crash-after.log", url):
        bundle = requests.get(
            f"{url}/fhir/ImagingSelection?_count=100&study-uid={_new_selection(pacs)['studyUid']}",
            timeout=120,
        ).json()
        crashed = {
            e["resource"]["id"]: e["resource"]
            for e in bundle.get("entry", [])
            if e["resource"]["code"].get("text", "").startswith("crash ")
        }
        assert set(announced) <= set(crashed)
        assert len(crashed) <= len(announced) + cut  # at most one per kill was under way
        for resource in crashed.values():
            assert len(resource["instance"]) == 120, resource["code"]
            read = requests.get(f"{url}/fhir/ImagingSelection/{resource['id']}", timeout=60)
            assert read.status_code == 200 and len(read.json()["instance"]) == 120


def _post_to(url: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{url}/fhir/ImagingSelection",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/fhir+json"},
        timeout=60,
    )


@contextlib.contextmanager
def running_config(config: Path, log: Path, url: str) -> Iterator[None]:
    proc = start_gateway(config, log, url)
    try:
        yield
    finally:
        stop_gateway(proc, log)
