"""Searches and metadata of a plain-HTTP DICOMweb site go over kept-alive connections of the
gateway's own (backends/http_keepalive.py), against the real Orthanc: the same answers as
aiohttp's client gives, over one connection, and a connection Orthanc has let go (its
``Keep-Alive: timeout=1``) is not used again. The bookkeeping of an answer (its AuditEvent)
is done while the next search waits for Orthanc."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ncpeh_dicomweb.app import create_app
from ncpeh_dicomweb.backends.base import Scope, Target
from ncpeh_dicomweb.backends.dicomweb import DicomWebBackend
from ncpeh_dicomweb.config import DicomWebSite, settings_from_mapping
from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.query import parse_qido
from ncpeh_dicomweb.web import after_answer
from ncpeh_dicomweb.web.audit import AUDIT_TRAIL
from tests.conftest import Pacs

pytestmark = pytest.mark.integration

BASE = "http://gateway/dicom-web"


async def test_kept_connections_answer_as_aiohttp_does_over_one_connection(pacs: Pacs) -> None:
    site = DicomWebSite(id="x", url=pacs.dicomweb_root)
    kept, via_aiohttp = DicomWebBackend.create(site), DicomWebBackend.create(site)
    via_aiohttp._keepalive = None  # what an https:// site uses
    core = pacs.manifest["core"]["studies"]
    study, other = core[0], core[1]
    searches = [
        (Level.STUDY, [("PatientID", study["patient_id"])], Scope()),
        (
            Level.STUDY,
            [("StudyInstanceUID", f"{study['study_uid']},{other['study_uid']}")],
            Scope(),
        ),
        (Level.STUDY, [("PatientName", "*"), ("limit", "3"), ("offset", "1")], Scope()),
        (Level.SERIES, [], Scope(study=study["study_uid"])),
        (Level.INSTANCE, [("includefield", "all")], Scope(study=study["study_uid"])),
        (Level.STUDY, [("PatientID", "nobody-has-this-id")], Scope()),
    ]
    try:
        assert kept._keepalive is not None
        for level, params, scope in searches:
            query = parse_qido(params, level)
            ours = await kept.search(query, scope, BASE)
            theirs = await via_aiohttp.search(query, scope, BASE)
            assert ours == theirs, params
        assert await kept.metadata(Target(study["study_uid"]), BASE) == await via_aiohttp.metadata(
            Target(study["study_uid"]), BASE
        )
        await kept.ping()
        assert kept._keepalive.opened == 1  # every one of them on the first connection
        assert kept.stats()["pacs_requests"] == len(searches) + 2
    finally:
        await kept.close()
        await via_aiohttp.close()


async def test_a_connection_orthanc_let_go_is_not_used_again(pacs: Pacs) -> None:
    """Orthanc closes a connection idle for 1 s (it says so in Keep-Alive): the search after
    1.2 s opens a new one and is answered, with no error and no retry on the old one."""
    backend = DicomWebBackend.create(DicomWebSite(id="x", url=pacs.dicomweb_root))
    query = parse_qido(
        [("PatientID", pacs.manifest["core"]["studies"][0]["patient_id"])], Level.STUDY
    )
    try:
        assert backend._keepalive is not None
        first = await backend.search(query, Scope(), BASE)
        await asyncio.sleep(1.2)
        assert await backend.search(query, Scope(), BASE) == first and first.datasets
        assert backend._keepalive.opened == 2
    finally:
        await backend.close()


async def test_an_answers_audit_event_is_made_while_the_next_search_waits_for_orthanc(
    aiohttp_client: Callable[..., Any],
    pacs: Pacs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the lane's own timer a minute away, only the second search's wait for Orthanc can
    have run the first search's bookkeeping by the time the second is answered."""
    monkeypatch.setattr(after_answer, "_DELAY", 60.0)
    settings = settings_from_mapping(
        {
            "sites": [{"id": "main", "url": pacs.dicomweb_root, "iocm": False}],
            "state": {"sqlite": str(tmp_path / "state.sqlite3")},
            "audit": {"jsonl_path": str(tmp_path / "audit.jsonl")},
        },
        {},
    )
    app = create_app(settings)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    study = pacs.manifest["core"]["studies"][0]
    trail = app[AUDIT_TRAIL]
    first = await client.get("/dicom-web/studies", params={"PatientID": study["patient_id"]})
    assert first.status == 200 and await first.json()
    await asyncio.sleep(0.05)
    assert trail.recorded == 0  # queued in the lane, its timer a minute away
    second = await client.get(f"/dicom-web/studies/{study['study_uid']}/series")
    assert second.status == 200 and await second.json()
    assert trail.recorded == 1  # the first search's AuditEvent; the second's is still queued
