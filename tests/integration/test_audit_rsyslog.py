"""The audit trail against a real audit repository: Debian's rsyslogd on loopback, started by
scripts/rsyslog.sh (tests/rsyslog.py). Every AuditEvent sent arrives and parses back as a valid
FHIR AuditEvent; a repository stopped and started again mid-stream, or a gateway stopped with
SIGTERM under load, loses none."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from ncpeh_dicomweb.security.audit import (
    INTERACTIONS,
    Access,
    AuditTrail,
    JsonlSink,
    Patient,
    Spool,
    SyslogSink,
)
from ncpeh_dicomweb.security.audit.syslog import tls_context
from tests.rsyslog import Rsyslog

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STATUSES = [(200, "complete"), (200, "cut"), (200, "client-gone"), (403, None), (404, None)]


def sample_access(n: int) -> Access:
    """A varied access: each interaction, outcome and some patients and studies."""
    interaction = sorted(INTERACTIONS)[n % len(INTERACTIONS)]
    status, stream = STATUSES[n % len(STATUSES)]
    start = datetime.now(UTC)
    return Access(
        start=start,
        end=start + timedelta(milliseconds=n % 900),
        request_id=f"req-{n}",
        interaction=interaction,
        method="GET",
        route="/site/{site}/dicom-web/studies/{study}",
        status=status,
        query_names=("PatientID", "limit") if n % 2 else (),
        subject=f"user-{n % 7}" if n % 3 else None,
        client_id="ncp-portal",
        client_address="192.0.2.7",
        site="central",
        patient=Patient(f"P{n % 11}", "CZ-NCPEH") if n % 4 else None,
        studies=(f"1.2.826.0.1.3680043.8.498.{n}",),
        stream=stream,
        bytes_sent=n * 100 if stream else None,
    )


def validate(events: list[dict[str, Any]]) -> None:
    for event in events:
        AuditEvent.model_validate(event)


def duplicates(counts: Counter[str]) -> int:
    return sum(c - 1 for c in counts.values())


async def test_events_arrive_over_tcp(rsyslog: Rsyslog, tmp_path: Path) -> None:
    hostname = f"gw-{uuid.uuid4().hex[:8]}"
    sink = SyslogSink(
        "127.0.0.1",
        rsyslog.port,
        Spool(tmp_path / "spool", 16 << 20),
        hostname=hostname,
        settle=0.3,
    )
    trail = AuditTrail([JsonlSink(tmp_path / "audit.jsonl"), sink], source_id="ncp-test-gw")
    await trail.start()
    sent = [trail.record_access(sample_access(n)) for n in range(400)]
    await trail.close()

    ids = [e["id"] for e in sent]
    counts = await asyncio.to_thread(rsyslog.wait_for, ids)
    assert len(counts) == len(ids), f"{len(ids) - len(counts)} of {len(ids)} events lost"
    assert sum(counts.values()) == len(ids), f"{duplicates(counts)} duplicates"
    received = await asyncio.to_thread(rsyslog.events, ids)
    assert received == sent  # the same JSON, in order
    validate(received)
    jsonl = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert jsonl == sent

    # The header fields, as rsyslog's RFC 5424 parser read them.
    headers = [h for h in rsyslog.headers() if h[4] == hostname]
    assert len(headers) == len(ids)
    failed = sum(1 for e in sent if e["outcome"] != "0")
    assert Counter(h[0] for h in headers) == {"85": len(ids) - failed, "84": failed}
    assert {(h[1], h[2], h[3]) for h in headers} == {
        ("ncpeh-dicomweb", str(os.getpid()), "FHIR+AuditEvent")
    }


async def test_events_arrive_over_tls_with_a_client_certificate(
    rsyslog: Rsyslog, tmp_path: Path
) -> None:
    if rsyslog.tls_port is None or rsyslog.tls is None:
        pytest.skip("rsyslog's TLS driver (Debian rsyslog-openssl) is not installed")
    tls = rsyslog.tls
    context = tls_context(str(tls.ca), str(tls.client_cert), str(tls.client_key))
    sink = SyslogSink(
        "127.0.0.1",
        rsyslog.tls_port,
        Spool(tmp_path / "spool", 16 << 20),
        ssl_context=context,
        server_hostname="localhost",
        settle=0.3,
        close_timeout=10.0,
    )
    trail = AuditTrail([sink])
    await trail.start()
    sent = [trail.record_access(sample_access(n)) for n in range(200)]
    await trail.close()
    ids = [e["id"] for e in sent]
    counts = await asyncio.to_thread(rsyslog.wait_for, ids)
    assert len(counts) == len(ids), f"{len(ids) - len(counts)} of {len(ids)} events lost"
    assert sum(counts.values()) == len(ids), f"{duplicates(counts)} duplicates"
    validate(await asyncio.to_thread(rsyslog.events, ids))
    assert sink.stats()["pending_bytes"] == 0


async def test_tls_without_a_client_certificate_is_refused_and_kept(
    rsyslog: Rsyslog, tmp_path: Path
) -> None:
    """ATNA node authentication: rsyslog (x509/certvalid) refuses a node without a
    certificate; the events stay in the spool."""
    if rsyslog.tls_port is None or rsyslog.tls is None:
        pytest.skip("rsyslog's TLS driver (Debian rsyslog-openssl) is not installed")
    sink = SyslogSink(
        "127.0.0.1",
        rsyslog.tls_port,
        Spool(tmp_path / "spool", 16 << 20),
        ssl_context=tls_context(str(rsyslog.tls.ca)),
        server_hostname="localhost",
        settle=0.3,
        close_timeout=1.0,
        backoff_max=0.2,
    )
    trail = AuditTrail([sink])
    await trail.start()
    sent = [trail.record_access(sample_access(n)) for n in range(20)]
    await asyncio.sleep(0.5)
    await trail.close()
    assert rsyslog.received([e["id"] for e in sent]) == Counter()
    assert sink.stats()["pending_bytes"] > 0  # nothing lost: on disk for the next start


async def test_repository_restarted_mid_stream_loses_nothing(
    rsyslog: Rsyslog, tmp_path: Path
) -> None:
    sink = SyslogSink(
        "127.0.0.1",
        rsyslog.port,
        Spool(tmp_path / "spool", 64 << 20),
        backoff_max=0.25,  # the default settle: what production does
        close_timeout=10.0,
    )
    trail = AuditTrail([sink])
    await trail.start()
    sent: list[str] = []

    async def emit(count: int) -> None:
        for _ in range(count):
            sent.append(trail.record_access(sample_access(len(sent)))["id"])
            if len(sent) % 10 == 0:
                await asyncio.sleep(0.002)  # ~ 4000 events/s

    await emit(1000)
    await asyncio.to_thread(rsyslog.stop)  # while events flow
    await emit(1000)  # the repository is down: spooled
    assert sink.stats()["connected"] is False
    assert sink.stats()["pending_bytes"] > 0
    await asyncio.to_thread(rsyslog.start)
    await emit(1000)
    await trail.close()  # delivers the rest of the spool (half-close: the repository read it)
    assert sink.stats()["pending_bytes"] == 0

    counts = await asyncio.to_thread(rsyslog.wait_for, sent)
    lost = len(sent) - len(counts)
    assert lost == 0, f"{lost} of {len(sent)} events lost"
    # At least once: a message the repository may not have read when it went down is sent
    # again (same id); report how many.
    print(f"{len(sent)} sent, {sum(counts.values())} received, {duplicates(counts)} duplicates")
    assert sink.stats()["dropped"] == 0


CHILD = textwrap.dedent(
    """
    import asyncio, signal, sys
    from datetime import UTC, datetime

    from ncpeh_dicomweb.security.audit import (
        Access, AuditTrail, JsonlSink, Spool, SyslogSink, audit_event,
    )

    port, spool, jsonl, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

    def event(n):
        now = datetime.now(UTC)
        access = Access(
            start=now, end=now, request_id=f"r{n}", interaction="wado-retrieve",
            method="GET", route="/dicom-web/studies/{study}", status=200,
            studies=(f"1.2.3.{n}",), stream="complete", bytes_sent=n,
        )
        return audit_event(access, source_id="child", event_id=f"{prefix}-{n}")

    async def main():
        trail = AuditTrail(
            [
                SyslogSink("127.0.0.1", port, Spool(spool, 64 << 20), settle=0.5,
                           close_timeout=20.0),
                JsonlSink(jsonl),
            ]
        )
        await trail.start()
        stop = asyncio.Event()
        # What aiohttp's run_app does on SIGTERM: leave the loop, run the cleanup (close).
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        n = 0
        while not stop.is_set():
            trail.record(event(n))
            n += 1
            if n % 5 == 0:
                await asyncio.sleep(0.001)  # a busy gateway: a few thousand accesses a second
        await trail.close()
        print(f"recorded {n} lost {trail.stats()['lost']}", flush=True)

    asyncio.run(main())
    """
)


def test_sigterm_under_load_loses_nothing(rsyslog: Rsyslog, tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    prefix = uuid.uuid4().hex[:12]
    proc = subprocess.Popen(
        [
            sys.executable,
            str(child),
            str(rsyslog.port),
            str(tmp_path / "spool"),
            str(tmp_path / "audit.jsonl"),
            prefix,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # under load for a second
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    words = out.split()
    recorded, lost = int(words[words.index("recorded") + 1]), int(words[words.index("lost") + 1])
    assert recorded > 500 and lost == 0, out
    ids = [f"{prefix}-{n}" for n in range(recorded)]
    counts = rsyslog.wait_for(ids)
    assert len(counts) == recorded, f"{recorded - len(counts)} of {recorded} events lost"
    assert sum(counts.values()) == recorded, f"{duplicates(counts)} duplicates"
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == recorded
