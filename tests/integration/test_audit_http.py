"""The audit trail of a running gateway: one AuditEvent per data request, refused ones included,
with who asked, the request id, the study and how a stream ended; received by a real rsyslogd
as by the JSON-lines file, and none lost when the gateway is stopped with SIGTERM under load."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir.resources.R4B.auditevent import AuditEvent

from tests.conftest import (
    DimseGateway,
    Pacs,
    free_port,
    running_dimse_gateway,
    start_gateway,
    write_dimse_config,
)
from tests.rsyslog import Rsyslog
from tests.unit.test_security_tokens import AUDIENCE, ISSUER, claims, jwks_document, rsa_key

pytestmark = pytest.mark.integration

KEY = rsa_key("audit-http")


def _auth(work: Path) -> str:
    jwks = work / "jwks.json"
    jwks.write_bytes(jwks_document(KEY))
    return f'jwks_file = "{jwks}"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"'


def _token(**extra: Any) -> dict[str, str]:
    signed = KEY.sign(claims(scope="system/*.rs", sub="dr-who", client_id="ncp-cz", **extra))
    return {"Authorization": f"Bearer {signed}"}


@pytest.fixture(scope="module")
def audited(
    pacs: Pacs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DimseGateway, Path]]:
    work = tmp_path_factory.mktemp("audit-http")
    log = work / "audit.jsonl"
    aets = ("NCPEH-AUD", "NCPEH-AUD2"), ("NCPEH-AUDM", "NCPEH-AUDM2")
    with running_dimse_gateway(
        pacs,
        work,
        "",
        *aets,
        forget_destinations=True,
        auth=_auth(work),
        audit=f'jsonl_path = "{log}"\nfsync_interval = 0',
    ) as gw:
        yield gw, log


def _events(log: Path, request_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The events of one request (by its X-Request-ID), waiting for them to be written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [json.loads(line) for line in _complete_lines(log) if request_id in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _written(log: Path, at_least: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The events in ``log``, waiting until it holds ``at_least`` of them: an event is written
    just after its answer is sent, so the last requests' lines may still be on their way."""
    deadline = time.monotonic() + timeout
    while True:
        lines = _complete_lines(log)
        if len(lines) >= at_least or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def _complete_lines(log: Path) -> list[str]:
    """The lines of ``log`` written whole: the sink may be half-way through the last one."""
    text = log.read_text(encoding="utf-8") if log.exists() else ""
    return text[: text.rfind("\n") + 1].splitlines()


def _request_id(event: dict[str, Any]) -> str | None:
    """The request id an AuditEvent records (its BALP XrequestId entity)."""
    for entity in event.get("entity", []):
        if entity.get("type", {}).get("code") == "XrequestId":
            return str(entity["what"]["identifier"]["value"])
    return None


def test_each_data_request_gives_one_valid_event(
    audited: tuple[DimseGateway, Path], pacs: Pacs
) -> None:
    gw, log = audited
    study = pacs.manifest["core"]["studies"][0]["study_uid"]
    cases = [
        (f"{gw.url}/dicom-web/studies?PatientID=DE1000234", _token(), 200, "0"),
        (f"{gw.url}/dicom-web/studies/{study}/metadata", _token(), 200, "0"),
        (f"{gw.url}/dicom-web/studies/{study}", _token(), 200, "0"),
        (f"{gw.url}/site/get/dicom-web/studies/{study}/series", _token(), 200, "0"),
        (f"{gw.url}/fhir/ImagingStudy?patient.identifier=|456789123", _token(), 200, "0"),
        (f"{gw.url}/dicom-web/studies/1.2.3.4.5/metadata", _token(), 404, "4"),
        (f"{gw.url}/dicom-web/studies", {}, 401, "4"),  # refused: audited too
        (f"{gw.url}/fhir/ImagingStudy", {"Authorization": "Bearer nonsense"}, 401, "4"),
    ]
    for url, headers, status, outcome in cases:
        answer = requests.get(url, headers=headers, timeout=120)
        assert answer.status_code == status, (url, answer.text[:200])
        request_id = answer.headers["X-Request-ID"]
        (event,) = _events(log, request_id)
        AuditEvent.model_validate(event)
        assert _request_id(event) == request_id
        assert event["outcome"] == outcome, url
        assert event["type"]["code"] == "rest"
        text = json.dumps(event)
        assert "|456789123" not in text and "DE1000234&" not in text  # no query values
        if headers.get("Authorization", "").startswith("Bearer ey"):
            whos = [a.get("who", {}).get("identifier", {}).get("value") for a in event["agent"]]
            assert "dr-who" in whos and "ncp-cz" in whos
    # A FHIR read names the study and its patient.
    read = requests.get(f"{gw.url}/fhir/ImagingStudy/{study}", headers=_token(), timeout=60)
    (event,) = _events(log, read.headers["X-Request-ID"])
    patients = [e for e in event["entity"] if e.get("role", {}).get("code") == "1"]
    assert patients[0]["what"]["identifier"]["value"] == "DE1000234"
    assert f"urn:oid:{study}" in json.dumps(event)
    # Health needs no audit.
    health = requests.get(f"{gw.url}/health/live", timeout=10)
    assert _events(log, health.headers.get("X-Request-ID", "absent"), timeout=0.5) == []


def _patient_of(event: dict[str, Any]) -> str | None:
    """The PatientID an event's patient entity (BALP role 1) names, or None."""
    for entity in event.get("entity", []):
        if entity.get("role", {}).get("code") == "1":
            return str(entity["what"]["identifier"]["value"])
    return None


def test_a_system_token_s_accesses_record_the_patient_the_pacs_answered_for(
    audited: tuple[DimseGateway, Path], pacs: Pacs
) -> None:
    """No patient in the token nor in the URL: the event names the patient all the same, read
    from what the PACS answered (QIDO results, metadata, the first instance streamed, the
    instance a frame or rendered image came from), on a DICOMweb site and both DIMSE sites."""
    gw, log = audited
    core = pacs.manifest["core"]["studies"][0]
    study, patient = core["study_uid"], core["patient_id"]
    series = core["series"][0]
    instance = f"{study}/series/{series['uid']}/instances/{series['instances'][0]}"
    paths = [
        f"/dicom-web/studies?StudyInstanceUID={study}",
        f"/dicom-web/studies/{study}/series",
        f"/dicom-web/studies/{study}/metadata",
        f"/dicom-web/studies/{study}",
        f"/site/get/dicom-web/studies/{study}/series/{series['uid']}",
        f"/site/move/dicom-web/studies/{instance}",
        f"/dicom-web/studies/{instance}/frames/1",
        f"/site/get/dicom-web/studies/{instance}/rendered",
    ]
    for path in paths:
        accept = "image/jpeg" if path.endswith("rendered") else "*/*"
        answer = requests.get(gw.url + path, headers={**_token(), "Accept": accept}, timeout=120)
        assert answer.status_code == 200, (path, answer.text[:200])
        (event,) = _events(log, answer.headers["X-Request-ID"])
        AuditEvent.model_validate(event)
        assert _patient_of(event) == patient, path
        assert f"urn:oid:{study}" in json.dumps(event), path
    # A search over several patients names none of them (one event is about one patient).
    many = requests.get(f"{gw.url}/dicom-web/studies", headers=_token(), timeout=60)
    (event,) = _events(log, many.headers["X-Request-ID"])
    assert _patient_of(event) is None


def test_a_retrieve_records_its_study_and_how_the_stream_ended(
    audited: tuple[DimseGateway, Path], pacs: Pacs
) -> None:
    gw, log = audited
    study = pacs.manifest["core"]["studies"][0]["study_uid"]
    answer = requests.get(f"{gw.url}/dicom-web/studies/{study}", headers=_token(), timeout=120)
    (event,) = _events(log, answer.headers["X-Request-ID"])
    assert f"urn:oid:{study}" in json.dumps(event)
    assert "complete" in json.dumps(event)
    # A client that hangs up mid-stream: recorded as cut short (outcome 4).
    large = pacs.manifest["large"]["studies"][0]["study_uid"]
    with requests.get(
        f"{gw.url}/site/get-nocache/dicom-web/studies/{large}",
        headers=_token(),
        stream=True,
        timeout=120,
    ) as streamed:
        request_id = streamed.headers["X-Request-ID"]
        next(streamed.iter_content(1 << 20))
    (cut,) = _events(log, request_id, timeout=30)
    AuditEvent.model_validate(cut)
    assert cut["outcome"] == "4" and "client-gone" in json.dumps(cut)


def test_sigterm_under_load_loses_no_event_and_rsyslog_gets_them_all(
    pacs: Pacs, rsyslog: Rsyslog, tmp_path: Path
) -> None:
    """Both sinks: the file and rsyslog over TCP. Clients keep searching while the gateway is
    sent SIGTERM; afterwards every event in the file reached rsyslog, and every answered
    request has its event."""
    port = free_port()
    jsonl = tmp_path / "audit.jsonl"
    config = write_dimse_config(
        tmp_path,
        port,
        pacs.dicomweb_root,
        dimse_port=pacs.dicom_port,
        dimse_aet=pacs.aet,
        prefix="",
        get_aets=("NCPEH-SIG", "NCPEH-SIG2"),
        move_aets=("NCPEH-SIGM", "NCPEH-SIGM2"),
        store_ports=(free_port(), free_port()),
        audit="\n".join(
            [
                'sinks = ["jsonl", "syslog"]',
                f'jsonl_path = "{jsonl}"',
                'syslog_host = "127.0.0.1"',
                f"syslog_port = {rsyslog.port}",
                'syslog_transport = "tcp"',
                f'spool_dir = "{tmp_path / "spool"}"',
                "settle = 0.5",
            ]
        ),
        config_name="sigterm",
    )
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(config, tmp_path / "sigterm.log", url)
    answered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    answer = session.get(f"{url}/dicom-web/studies?limit=5", timeout=10)
                except requests.RequestException:
                    return
                answered.append(answer.headers["X-Request-ID"])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    written = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    ids = {event["id"] for event in written}
    assert len(answered) > 50, "the load was too light to prove anything"
    assert set(answered) <= {_request_id(event) for event in written}
    received = rsyslog.wait_for(ids, timeout=30)
    assert set(received) == ids, f"{len(ids) - len(received)} of {len(ids)} events lost"


def test_events_made_while_the_audit_repository_is_down_arrive_when_it_is_back(
    pacs: Pacs, rsyslog: Rsyslog, tmp_path: Path
) -> None:
    """rsyslog stopped while clients search: the events wait in the spool; started again, it
    receives every event the file has (count sent = count received), the gateway never
    stopping to answer."""
    port = free_port()
    jsonl = tmp_path / "audit.jsonl"
    config = write_dimse_config(
        tmp_path,
        port,
        pacs.dicomweb_root,
        dimse_port=pacs.dicom_port,
        dimse_aet=pacs.aet,
        prefix="",
        get_aets=("NCPEH-RST", "NCPEH-RST2"),
        move_aets=("NCPEH-RSTM", "NCPEH-RSTM2"),
        store_ports=(free_port(), free_port()),
        audit="\n".join(
            [
                'sinks = ["jsonl", "syslog"]',
                f'jsonl_path = "{jsonl}"',
                'syslog_host = "127.0.0.1"',
                f"syslog_port = {rsyslog.port}",
                'syslog_transport = "tcp"',
                f'spool_dir = "{tmp_path / "spool"}"',
                "settle = 0.5",
                "reconnect_max_delay = 0.5",
            ]
        ),
        config_name="restart",
    )
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(config, tmp_path / "restart.log", url)
    try:
        with requests.Session() as session:

            def search(count: int) -> None:
                for _ in range(count):
                    answer = session.get(f"{url}/dicom-web/studies?limit=2", timeout=30)
                    assert answer.status_code == 200

            search(20)
            rsyslog.stop()
            try:
                search(60)  # the repository is down: answers go on
            finally:
                rsyslog.start()
            search(20)
        ids = {event["id"] for event in _written(jsonl, 100)}
        assert len(ids) >= 100
        received = rsyslog.wait_for(ids, timeout=60)
        assert set(received) == ids, f"{len(ids) - len(received)} of {len(ids)} events lost"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
