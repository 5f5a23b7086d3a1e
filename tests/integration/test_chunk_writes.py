"""A streamed retrieve's chunks written straight to the socket (web/chunked.py) arrive whole
and in order, whatever the client's pace, and HTTP/1.0 clients get the same parts unchunked.

The client here is a raw socket with a small receive buffer that stops reading for a while:
the gateway's socket fills, its writes go through in part, and the rest waits on the
transport while later chunks queue behind it. The parts must equal Orthanc's own.
"""

from __future__ import annotations

import hashlib
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import Gateway, Pacs
from tests.integration.multipart_split import split_multipart
from tests.integration.util import pacs_json

pytestmark = pytest.mark.integration

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def large_study(pacs: Pacs) -> str:
    found = pacs_json(pacs, "studies", "PatientID=LARGE-CT-1")
    assert len(found) == 1, "the large CT study must be loaded (--load large)"
    return str(found[0]["0020000D"]["Value"][0])


def _digests(content_type: str, body: bytes) -> list[str]:
    return sorted(
        hashlib.sha256(payload).hexdigest() for _, payload in split_multipart(content_type, body)
    )


def _direct(pacs: Pacs, study: str) -> list[str]:
    response = requests.get(
        f"{pacs.dicomweb_root}/studies/{study}", headers={"Accept": AS_STORED}, timeout=300
    )
    assert response.status_code == 200
    return _digests(response.headers["Content-Type"], response.content)


def _raw_get(url: str, version: str, *, stalls: int = 0) -> tuple[str, dict[str, str], bytes]:
    """GET over a raw socket with a 16 kB receive buffer: the status line, the headers and
    the body as sent (chunk framing included). ``stalls``: times the reading stops for 0.3 s
    in the first megabytes, long enough for the gateway's socket to fill."""
    parts = urlsplit(url)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect((parts.hostname, parts.port))
        request = (
            f"GET {parts.path} HTTP/{version}\r\nHost: {parts.netloc}\r\n"
            f"Accept: {AS_STORED}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        received = bytearray()
        next_stall = 1 << 20
        while chunk := sock.recv(65536):
            received += chunk
            if stalls and len(received) >= next_stall:
                time.sleep(0.3)
                stalls -= 1
                next_stall += 3 << 20
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def _dechunked(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body decoded; asserts it ends with the last chunk."""
    out = bytearray()
    pos = 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            assert body[start:] == b"\r\n", "chunked body without its final CRLF"
            return bytes(out)
        out += body[start : start + size]
        assert body[start + size : start + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos = start + size + 2


def test_a_client_that_stalls_gets_every_part_whole_and_in_order(
    gateway: Gateway, pacs: Pacs, large_study: str
) -> None:
    status, headers, body = _raw_get(f"{gateway.dicomweb}/studies/{large_study}", "1.1", stalls=4)
    assert status.startswith("HTTP/1.1 200"), status
    assert headers["transfer-encoding"] == "chunked"
    decoded = _dechunked(body)
    assert _digests(headers["content-type"], decoded) == _direct(pacs, large_study)
    # The chunks carry whole pieces: no chunk is split into many tiny ones.
    assert body.count(b"\r\n") < len(decoded) // 2000


def test_an_http_1_0_client_gets_the_parts_unchunked(
    gateway: Gateway, pacs: Pacs, large_study: str
) -> None:
    status, headers, body = _raw_get(f"{gateway.dicomweb}/studies/{large_study}", "1.0")
    assert status.startswith("HTTP/1.0 200") or status.startswith("HTTP/1.1 200"), status
    assert "transfer-encoding" not in headers
    assert _digests(headers["content-type"], body) == _direct(pacs, large_study)
