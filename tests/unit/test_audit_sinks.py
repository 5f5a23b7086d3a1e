"""The audit sinks on their own: the JSON lines file (append, fsync batching), the syslog
message bytes (RFC 5424 header, RFC 6587 octet counting), the spool (bound, order, commit,
recovery), the syslog sink against a loopback TCP server, the trail's queue, the settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ncpeh_dicomweb.security.audit import (
    AuditRecord,
    AuditSettings,
    AuditTrail,
    JsonlSink,
    Spool,
    SpoolError,
    SyslogSink,
    sinks_for,
)
from ncpeh_dicomweb.security.audit import jsonl as jsonl_module
from ncpeh_dicomweb.security.audit.spool import parse_frame
from ncpeh_dicomweb.security.audit.syslog import format_message, frame, header_field

WHEN = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC).timestamp()


def record(n: int, *, failed: bool = False) -> AuditRecord:
    return AuditRecord(
        data=b'{"resourceType":"AuditEvent","id":"e%d"}' % n, failed=failed, when=WHEN
    )


# ---------------------------------------------------------------------- JSON lines


async def test_jsonl_appends_one_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    sink = JsonlSink(path, fsync_interval=0.05)
    await sink.start()
    sink.write([record(1), record(2)])
    sink.write([record(3)])
    # written straight to the kernel: visible before any close or fsync
    assert path.read_bytes().count(b"\n") == 3
    await sink.close()
    lines = path.read_bytes().splitlines()
    assert lines == [record(n).data for n in (1, 2, 3)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = JsonlSink(path, fsync_interval=0.05)  # append, never truncate
    await again.start()
    again.write([record(4)])
    await again.close()
    assert path.read_bytes().splitlines()[-1] == record(4).data
    assert len(path.read_bytes().splitlines()) == 4


async def test_jsonl_repairs_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"id":"whole"}\n{"id":"to')  # a crash mid-line
    sink = JsonlSink(path, fsync_interval=0)
    await sink.start()
    sink.write([record(5)])
    await sink.close()
    assert path.read_bytes().splitlines() == [b'{"id":"whole"}', b'{"id":"to', record(5).data]


async def test_jsonl_fsync_is_batched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(jsonl_module.os, "fsync", counting)
    sink = JsonlSink(tmp_path / "a.jsonl", fsync_interval=0.2)
    await sink.start()
    calls.clear()  # the directory's, for the new file
    for n in range(50):
        sink.write([record(n)])
        await asyncio.sleep(0.001)
    assert calls == []  # not yet: the interval has not passed
    await asyncio.sleep(0.35)
    assert len(calls) == 1  # one fsync for the 50 batches
    sink.write([record(99)])
    await sink.close()  # and the last ones at close
    assert len(calls) == 2
    assert sink.stats() == {"lines": 51, "fsyncs": 2, "errors": 0}


async def test_jsonl_fsync_every_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(jsonl_module.os, "fsync", calls.append)
    sink = JsonlSink(tmp_path / "a.jsonl", fsync_interval=0)
    await sink.start()
    calls.clear()  # the directory's, for the new file
    for n in range(3):
        sink.write([record(n), record(n + 10)])
    await sink.close()
    assert len(calls) == 3


# ---------------------------------------------------------------------- syslog bytes


def test_syslog_message_bytes() -> None:
    """RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG, facility 10."""
    message = format_message(record(1), hostname="gw01.ncp.example", procid="4242")
    assert message == (
        b"<85>1 2024-05-01T10:00:00.123456Z gw01.ncp.example ncpeh-dicomweb 4242 "
        b'FHIR+AuditEvent - {"resourceType":"AuditEvent","id":"e1"}'
    )
    failed = format_message(
        record(2, failed=True), hostname="h", app_name="app", procid="1", msgid="IHE+RFC-3881"
    )
    assert failed.startswith(b"<84>1 2024-05-01T10:00:00.123456Z h app 1 IHE+RFC-3881 - {")


def test_octet_counting_counts_bytes_not_characters() -> None:
    """RFC 6587 3.4.1: MSG-LEN SP SYSLOG-MSG, the length in octets."""
    text = '<85>1 - - - - - - {"name":"Dvořák"}'
    message = text.encode()
    assert len(message) == len(text) + 2  # ř and á are two octets each
    assert frame(message) == b"%d " % len(message) + message
    assert frame(b"x") == b"1 x"
    framed = frame(message) + frame(b"next")
    first = parse_frame(framed, 0)
    assert first == len(frame(message))
    assert parse_frame(framed, first) == len(framed)
    assert parse_frame(framed[:20], 0) is None  # incomplete
    with pytest.raises(ValueError, match="length"):
        parse_frame(b"x1 abc", 0)


@pytest.mark.parametrize("bad", ["", "two words", "é", "x" * 49, "tab\there"])
def test_header_fields_are_printable_ascii(bad: str) -> None:
    with pytest.raises(ValueError, match="APP-NAME"):
        header_field(bad, "APP-NAME", 48)


# ---------------------------------------------------------------------- spool


def frames(start: int, count: int, size: int = 100) -> list[bytes]:
    return [frame(b"%08d" % n + b"." * (size - 8)) for n in range(start, start + count)]


def test_spool_keeps_order_across_segments_and_commits(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=64 * 1024, segment_bytes=1024)
    spool.open()
    assert spool.append(frames(0, 100)) == 100
    assert len(list((tmp_path / "spool").glob("*.frames"))) > 5
    got = spool.read(10**9)
    assert [f for f, _ in got] == frames(0, 100)
    assert not spool.unread
    spool.rewind()  # a lost connection: all of it again
    assert [f for f, _ in spool.read(10**9)] == frames(0, 100)
    spool.commit(got[49][1])
    spool.rewind()
    assert [f for f, _ in spool.read(10**9)] == frames(50, 50)
    spool.commit(got[-1][1])
    assert spool.pending_bytes == 0
    assert len(list((tmp_path / "spool").glob("*.frames"))) == 1  # delivered ones deleted
    spool.close()


def test_spool_bound_drops_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=2000, segment_bytes=512)
    spool.open()
    size = len(frames(0, 1)[0])
    assert spool.append(frames(0, 30)) == 2000 // size
    assert spool.dropped == 30 - 2000 // size
    assert spool.size_bytes <= 2000
    assert "is full" in caplog.text
    kept = [f for f, _ in spool.read(10**9)]
    assert kept == frames(0, 2000 // size)  # the oldest are kept, the newest dropped
    spool.commit(spool.read_position)
    assert spool.append(frames(100, 3)) == 3  # room again once delivered
    spool.close()


def test_spool_survives_a_restart_and_a_torn_frame(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=64 * 1024, segment_bytes=2048)
    spool.open()
    spool.append(frames(0, 40))
    got = spool.read(10**9)
    spool.commit(got[9][1])
    job = spool.sync_job()
    assert job is not None
    job()  # the cursor is durable now
    spool.append(frames(40, 1))
    spool.close()
    last = max(directory.glob("*.frames"))
    with last.open("ab") as torn:
        torn.write(b"120 <85>1 half a mes")  # a crash in the middle of a frame

    again = Spool(directory, max_bytes=64 * 1024, segment_bytes=2048)
    again.open()
    assert [f for f, _ in again.read(10**9)] == frames(10, 31)
    again.close()


def test_spool_is_locked_to_one_process(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool", max_bytes=4096)
    first.open()
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path / "spool", max_bytes=4096).open()
    first.close()
    second = Spool(tmp_path / "spool", max_bytes=4096)
    second.open()
    second.close()


# ---------------------------------------------------------------------- syslog sink


class Collector:
    """A TCP syslog receiver on loopback that splits octet-counted frames."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.clients: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        buffer = b""
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                buffer += data
                while (end := parse_frame(buffer, 0)) is not None:
                    self.frames.append(buffer[:end])
                    buffer = buffer[end:]
        writer.close()

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.clients:
            writer.close()
        self.clients.clear()
        await self.server.wait_closed()


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    server = Collector()
    await server.start()
    yield server
    with contextlib.suppress(Exception):
        await server.stop()


def message_of(framed: bytes) -> bytes:
    return framed.partition(b" ")[2]


async def test_syslog_sink_sends_frames_in_order(collector: Collector, tmp_path: Path) -> None:
    sink = SyslogSink(
        "127.0.0.1", collector.port, Spool(tmp_path / "spool", 1 << 20), hostname="gw", settle=0.1
    )
    await sink.start()
    sink.write([record(n) for n in range(200)])
    await sink.close()  # the half-close tells what arrived
    assert [m.rsplit(b" - ", 1)[1] for m in map(message_of, collector.frames)] == [
        record(n).data for n in range(200)
    ]
    assert all(
        m.startswith(b"<85>1 2024-05-01T10:00:00.123456Z gw ncpeh-dicomweb ")
        for m in map(message_of, collector.frames)
    )
    assert sink.stats()["pending_bytes"] == 0


async def test_syslog_sink_spools_while_down_and_replays(tmp_path: Path) -> None:
    server = Collector()
    await server.start()
    port = server.port
    await server.stop()  # the repository is down
    sink = SyslogSink(
        "127.0.0.1",
        port,
        Spool(tmp_path / "spool", 1 << 20),
        hostname="gw",
        settle=0.1,
        backoff_max=0.2,
    )
    await sink.start()
    sink.write([record(n) for n in range(50)])
    await asyncio.sleep(0.3)
    assert sink.stats()["connected"] is False
    assert sink.stats()["pending_bytes"] > 0
    await server.start(port)  # back
    sink.write([record(n) for n in range(50, 60)])
    for _ in range(100):
        if len(server.frames) >= 60:
            break
        await asyncio.sleep(0.05)
    await sink.close()
    await server.stop()
    bodies = [m.rsplit(b" - ", 1)[1] for m in map(message_of, server.frames)]
    assert bodies == [record(n).data for n in range(60)]


async def test_syslog_sink_keeps_undelivered_events_for_the_next_start(tmp_path: Path) -> None:
    server = Collector()
    await server.start()
    port = server.port
    await server.stop()
    spool_dir = tmp_path / "spool"
    sink = SyslogSink("127.0.0.1", port, Spool(spool_dir, 1 << 20), close_timeout=0.3)
    await sink.start()
    sink.write([record(n) for n in range(5)])
    await sink.close()  # gives up after close_timeout; nothing lost: on disk
    await server.start(port)
    later = SyslogSink("127.0.0.1", port, Spool(spool_dir, 1 << 20), settle=0.1)
    await later.start()
    await later.close()
    await server.stop()
    assert [m.rsplit(b" - ", 1)[1] for m in map(message_of, server.frames)] == [
        record(n).data for n in range(5)
    ]


# ---------------------------------------------------------------------- trail


async def test_trail_spills_when_the_queue_is_full_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlSink(path, fsync_interval=0.05)], queue_size=4)
    await trail.start()
    for n in range(20):  # no await: the writer task never runs meanwhile
        trail.record({"resourceType": "AuditEvent", "id": f"e{n}", "outcome": "0"})
    assert trail.stats()["spilled"] > 0
    await trail.close()
    ids = [line.split(b'"id":"')[1].split(b'"')[0] for line in path.read_bytes().splitlines()]
    assert ids == [b"e%d" % n for n in range(20)]
    trail.record({"resourceType": "AuditEvent", "id": "late"})  # after close: counted, no raise
    assert trail.stats()["lost"] == 1


async def test_trail_close_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlSink(path)], queue_size=1000)
    await trail.start()
    for n in range(300):
        trail.record({"resourceType": "AuditEvent", "id": f"e{n}", "outcome": "4"})
    await trail.close()  # right away: the queue still holds them
    assert len(path.read_bytes().splitlines()) == 300


# ---------------------------------------------------------------------- settings


def test_settings_defaults_and_a_full_table(tmp_path: Path) -> None:
    assert AuditSettings.from_mapping({}) == AuditSettings()
    settings = AuditSettings.from_mapping(
        {
            "sinks": ["jsonl", "syslog"],
            "source_id": "ncp-cz-gw1",
            "jsonl_path": str(tmp_path / "a.jsonl"),
            "syslog_host": "arr.example",
            "syslog_transport": "tcp",
            "spool_dir": str(tmp_path / "spool"),
            "spool_max_bytes": 1 << 20,
            "fsync_interval": 0,
        }
    )
    assert settings.syslog_port == 514
    assert [s.name for s in sinks_for(settings)] == ["jsonl", "syslog"]
    assert AuditSettings.from_mapping({"sinks": ["syslog"], "syslog_host": "a"}).syslog_port == 6514


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"sinks": []}, "audit.sinks"),
        ({"sinks": ["kafka"]}, "audit.sinks"),
        ({"sinks": ["jsonl", "jsonl"]}, "audit.sinks"),
        ({"sinks": ["syslog"]}, "audit.syslog_host"),
        ({"syslog_port": 0}, "audit.syslog_port"),
        ({"syslog_port": "514"}, "audit.syslog_port"),
        ({"syslog_transport": "udp"}, "audit.syslog_transport"),
        ({"syslog_transport": "tcp", "syslog_ca_file": "/ca.pem"}, "audit.syslog_transport"),
        ({"syslog_cert_file": "/c.pem"}, "audit.syslog_key_file"),
        ({"syslog_app_name": "has space"}, "audit.syslog_app_name"),
        ({"syslog_msgid": "x" * 33}, "audit.syslog_msgid"),
        ({"spool_max_bytes": 10}, "audit.spool_max_bytes"),
        ({"fsync_interval": -1}, "audit.fsync_interval"),
        ({"queue_size": True}, "audit.queue_size"),
        ({"source_id": ""}, "audit.source_id"),
        ({"sink": ["jsonl"]}, "sink"),
    ],
)
def test_settings_errors_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        AuditSettings.from_mapping(raw)
